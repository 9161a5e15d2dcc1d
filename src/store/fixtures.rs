//! Test records, blind indexes, keys and stores shared by the store's
//! unit tests.

use super::sled_store::{SledConfig, SledStore};
use super::NewRecord;
use crate::crypto::{BlindIndex, KeyPurpose, KeyVersion, SealedRecord, WrappedKey, NONCE_LEN};
use crate::domain::{FieldKind, RecordId};
use std::path::Path;

/// The value of a result a test expects to succeed (its error printed).
pub(super) fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// The store in `dir` (made if absent), with an 8 MiB cache.
pub(super) fn open(dir: &Path) -> SledStore {
    ok(SledStore::reopen_in_test(&SledConfig {
        path: dir.to_path_buf(),
        cache_capacity_bytes: 8 << 20,
        max_queued_writes: super::DEFAULT_MAX_QUEUED_WRITES,
    }))
}

/// A new record of `kind` under id `id`, indexed as value `idx`.
pub(super) fn new_record(id: RecordId, kind: FieldKind, idx: u8, deterministic: bool) -> NewRecord {
    NewRecord {
        id,
        record: record(kind),
        index: index(idx),
        deterministic,
        older_indexes: Vec::new(),
    }
}

/// A wrapped key of `purpose` and `version` (fixed bytes).
pub(super) fn wrapped(purpose: KeyPurpose, version: u32) -> WrappedKey {
    WrappedKey {
        purpose,
        version: KeyVersion(version),
        nonce: [3; NONCE_LEN],
        ciphertext: vec![4; 48],
    }
}

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
