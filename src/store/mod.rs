//! Storage primitives. Each method is one step the vault composes; nothing
//! above this module knows which backend is in use (sled now; PostgreSQL is
//! planned, for several vault nodes).
//!
//! Durability contract: a write method returns `Ok` only once its data would
//! survive `kill -9` and power loss.

mod apply;
mod group_commit;
mod integrity;
mod layout;
mod sled_store;
mod wal;
mod worker;
mod writer;

use crate::crypto::{BlindIndex, SealedRecord, WrappedKey};
use crate::domain::TokenId;
use async_trait::async_trait;

pub use sled_store::{SledConfig, SledStore};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key already exists; nothing was written.
    #[error("{0} already exists")]
    AlreadyExists(&'static str),
    /// Stored bytes do not decode: disk corruption or tampering.
    #[error("stored {what} is corrupt: {reason}")]
    Corrupt {
        what: &'static str,
        reason: &'static str,
    },
    /// The backend failed (I/O, lock, flush or sync). Writes are not
    /// acknowledged when this happens.
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// An earlier write failed, so the store refuses every write until the
    /// process restarts; the failure itself was reported once, when it
    /// happened. Nothing was written.
    #[error(
        "writes are refused since a storage write failed ({0}); restart after fixing the disk"
    )]
    WritesStopped(String),
}

/// The result of [`Store::check_integrity`]. Problems name tokens, never
/// values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IntegrityReport {
    pub records: u64,
    pub index_entries: u64,
    pub deterministic_entries: u64,
    pub problems: Vec<String>,
}

/// A record to add, with its blind-index entry.
#[derive(Clone, Debug)]
pub struct NewRecord {
    pub token: TokenId,
    pub record: SealedRecord,
    pub index: BlindIndex,
    /// Deterministic mode: if a deterministic token already exists for this
    /// blind index, nothing is written and that token is returned instead.
    pub deterministic: bool,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Every wrapped key (data and index keys), in (purpose, version) order.
    async fn keys(&self) -> Result<Vec<WrappedKey>, StoreError>;

    /// Adds wrapped keys, all or none; `AlreadyExists` if any (purpose,
    /// version) is taken. Durable when it returns.
    async fn insert_keys(&self, keys: Vec<WrappedKey>) -> Result<(), StoreError>;

    /// Adds records and their blind-index entries atomically (a crash never
    /// leaves one without the other) and returns, per record in order, the
    /// token that now stands for it: its own, or for a deterministic record
    /// whose value already has a deterministic token, that token. Concurrent
    /// calls for one deterministic value agree on one token.
    /// `AlreadyExists` if a new token is taken (nothing written then).
    /// Durable when it returns.
    async fn insert_records(&self, records: Vec<NewRecord>) -> Result<Vec<TokenId>, StoreError>;

    /// Why the store refuses writes, if it does (a failed flush or fsync is
    /// fatal: the server reports unhealthy and stops acknowledging writes).
    fn failure(&self) -> Option<String>;

    /// Checks that records and indexes agree: every record decodes and has
    /// exactly one blind-index entry; every index entry and deterministic
    /// mapping points at an existing record. Reads everything: for
    /// operators and the crash harness, not for the request path.
    async fn check_integrity(&self) -> Result<IntegrityReport, StoreError>;

    /// Every token whose value has this blind index (random and
    /// deterministic), for erase-by-value and consistency checks.
    async fn tokens_by_index(&self, index: BlindIndex) -> Result<Vec<TokenId>, StoreError>;

    /// The records for `tokens`, in the same order (`None` when absent).
    async fn get_records(
        &self,
        tokens: Vec<TokenId>,
    ) -> Result<Vec<Option<SealedRecord>>, StoreError>;
}
