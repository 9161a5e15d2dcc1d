//! Data lifecycle: token metadata, deleting tokens, erasing and exporting
//! every token of a value, and the expiry of tokens with a time to live.
//!
//! CONTRACT (being built): the signatures below are what the gRPC and CLI
//! layers call; the bodies land with the store's deletes.

use super::FieldInput;
use super::{Call, ItemError, Vault, VaultError};
use crate::domain::{FieldKind, TokenId, TokenMode};

/// What the vault holds about one token, never its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    pub token: TokenId,
    pub kind: FieldKind,
    /// `None` for a record stored before records carried their creation
    /// time.
    pub created_unix_ms: Option<u64>,
    /// `None`: never expires.
    pub expires_unix_ms: Option<u64>,
    /// The data-key version the value is sealed under now.
    pub key_version: u32,
    /// `None` for a record stored before records carried their mode.
    pub mode: Option<TokenMode>,
}

impl Vault {
    /// Deletes each token's record and index entries, durably (policy
    /// action `delete`, per token kind). Per item: the deleted token's
    /// kind, or `NotFound` (never issued, deleted already, expired, or of a
    /// kind the caller may not delete: answered alike), or
    /// `InvalidArgument` (not a token). Audited.
    pub async fn delete_tokens(
        &self,
        call: impl Into<Call>,
        tokens: Vec<String>,
    ) -> Result<Vec<Result<FieldKind, ItemError>>, VaultError> {
        let _ = (call.into(), tokens);
        Err(not_yet())
    }

    /// Each token's metadata (policy action `inspect`, per token kind);
    /// per item `NotFound` as for deletes. Audited.
    pub async fn token_info(
        &self,
        call: impl Into<Call>,
        tokens: Vec<String>,
    ) -> Result<Vec<Result<TokenInfo, ItemError>>, VaultError> {
        let _ = (call.into(), tokens);
        Err(not_yet())
    }

    /// Deletes every token of the field's canonical value (random and
    /// deterministic, under every index-key version): policy action
    /// `erase` for the field's kind. The value is validated like
    /// Tokenize's (`InvalidArgument` naming `field.…`). Returns the tokens
    /// erased (empty when there were none). Audited (tokens, never the
    /// value).
    pub async fn erase_value(
        &self,
        call: impl Into<Call>,
        field: FieldInput,
    ) -> Result<Vec<TokenId>, VaultError> {
        let _ = (call.into(), field);
        Err(not_yet())
    }

    /// Every unexpired token of the field's canonical value with its
    /// metadata (subject access): policy action `export` for the field's
    /// kind and `purpose` (required). Audited.
    pub async fn export_value(
        &self,
        call: impl Into<Call>,
        purpose: &str,
        field: FieldInput,
    ) -> Result<Vec<TokenInfo>, VaultError> {
        let _ = (call.into(), purpose, field);
        Err(not_yet())
    }
}

fn not_yet() -> VaultError {
    VaultError::Unavailable("not built yet".into())
}
