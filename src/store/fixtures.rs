//! Test records and blind indexes shared by the store's unit tests.

use crate::crypto::{BlindIndex, KeyVersion, SealedRecord, NONCE_LEN};
use crate::domain::FieldKind;

/// A sealed record of `kind` (fixed bytes: the store never opens it).
pub(super) fn record(kind: FieldKind) -> SealedRecord {
    SealedRecord {
        kind,
        key_version: KeyVersion(7),
        nonce: [9; NONCE_LEN],
        ciphertext: vec![1; 40],
        meta: Some(crate::crypto::RecordMeta {
            created_unix_ms: 1_700_000_000_000,
            expires_unix_ms: None,
            deterministic: false,
        }),
    }
}

/// Blind index version 1 of the value numbered `byte`.
pub(super) fn index(byte: u8) -> BlindIndex {
    BlindIndex {
        version: KeyVersion(1),
        mac: [byte; 32],
    }
}
