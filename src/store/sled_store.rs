//! The embedded sled backend.
//!
//! Layout (big-endian integers; encodings start with a format byte):
//! - `records`: token id (16 bytes) → encoded [`SealedRecord`];
//! - `blind_index`: index version (4) ‖ mac (32) ‖ token id (16) → empty,
//!   every token of a value, random or deterministic;
//! - `deterministic`: index version (4) ‖ mac (32) → token id, the one
//!   deterministic token of a value;
//! - `keys`: purpose (1) ‖ version (4) → encoded [`WrappedKey`].
//!
//! The three record trees are written in one sled transaction.
//!
//! Durability: sled's `flush` uses `sync_file_range` on Linux, which
//! survives a process kill but not power loss (sled issue #1452), so every
//! acknowledged write is followed by an `fdatasync` of sled's data file.
//! Concurrent writes share one flush + fdatasync through [`GroupCommit`].

use super::group_commit::GroupCommit;
use super::{IntegrityReport, NewRecord, Store, StoreError};
use crate::crypto::{BlindIndex, KeyPurpose, KeyVersion, SealedRecord, WrappedKey, NONCE_LEN};
use crate::domain::{FieldKind, TokenId};
use async_trait::async_trait;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const RECORD_FORMAT: u8 = 1;
const KEY_FORMAT: u8 = 1;

#[derive(Clone, Debug)]
pub struct SledConfig {
    pub path: PathBuf,
    /// sled's page cache bound in bytes (sled's own default is 1 GiB).
    pub cache_capacity_bytes: u64,
}

#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    records: sled::Tree,
    blind_index: sled::Tree,
    deterministic: sled::Tree,
    keys: sled::Tree,
    commit: GroupCommit,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SledStore {
    pub fn open(config: &SledConfig) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&config.path)
            .map_err(|e| backend(format!("{}: {e}", config.path.display())))?;
        let db = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_capacity_bytes)
            .open()
            .map_err(|e| backend(format!("opening {}: {e}", config.path.display())))?;
        let records = db.open_tree("records").map_err(backend)?;
        let blind_index = db.open_tree("blind_index").map_err(backend)?;
        let deterministic = db.open_tree("deterministic").map_err(backend)?;
        let keys = db.open_tree("keys").map_err(backend)?;
        // sled's data file, kept open to fdatasync it after each flush.
        let data_file = File::open(data_file_path(&config.path)).map_err(backend)?;
        let flusher = db.clone();
        let commit = GroupCommit::start(move || {
            flusher.flush().map_err(|e| format!("flush: {e}"))?;
            data_file.sync_data().map_err(|e| format!("fdatasync: {e}"))
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                records,
                blind_index,
                deterministic,
                keys,
                commit,
            }),
        })
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| backend(format!("storage task failed: {e}")))?
    }
}

fn data_file_path(dir: &Path) -> PathBuf {
    dir.join("db")
}

fn index_prefix(index: &BlindIndex) -> [u8; 36] {
    let mut key = [0u8; 36];
    key[..4].copy_from_slice(&index.version.0.to_be_bytes());
    key[4..].copy_from_slice(&index.mac);
    key
}

fn index_entry(index: &BlindIndex, token: &TokenId) -> [u8; 52] {
    let mut key = [0u8; 52];
    key[..36].copy_from_slice(&index_prefix(index));
    key[36..].copy_from_slice(token.as_bytes());
    key
}

fn key_id(purpose: KeyPurpose, version: KeyVersion) -> [u8; 5] {
    let mut id = [0u8; 5];
    id[0] = purpose.code();
    id[1..].copy_from_slice(&version.0.to_be_bytes());
    id
}

fn token_from(bytes: &[u8]) -> Result<TokenId, StoreError> {
    let corrupt = StoreError::Corrupt {
        what: "token reference",
        reason: "not a token id",
    };
    let array: [u8; 16] = bytes.try_into().map_err(|_| corrupt)?;
    TokenId::from_bytes(array).map_err(|_| StoreError::Corrupt {
        what: "token reference",
        reason: "not a token id",
    })
}

/// Why a record transaction gave up.
enum Abort {
    TokenTaken,
    Corrupt,
}

#[async_trait]
impl Store for SledStore {
    async fn keys(&self) -> Result<Vec<WrappedKey>, StoreError> {
        self.blocking(|inner| {
            inner
                .keys
                .iter()
                .values()
                .map(|v| decode_key(&v.map_err(backend)?))
                .collect()
        })
        .await
    }

    async fn insert_keys(&self, keys: Vec<WrappedKey>) -> Result<(), StoreError> {
        self.inner.commit.check_writable()?;
        self.blocking(move |inner| {
            inner
                .keys
                .transaction(|tx| {
                    for key in &keys {
                        let id = key_id(key.purpose, key.version);
                        if tx.get(id)?.is_some() {
                            return Err(ConflictableTransactionError::Abort(()));
                        }
                        tx.insert(&id[..], encode_key(key))?;
                    }
                    Ok(())
                })
                .map_err(|e| match e {
                    TransactionError::Abort(()) => StoreError::AlreadyExists("key version"),
                    TransactionError::Storage(e) => backend(e),
                })
        })
        .await?;
        self.inner.commit.durable().await
    }

    async fn insert_records(&self, records: Vec<NewRecord>) -> Result<Vec<TokenId>, StoreError> {
        self.inner.commit.check_writable()?;
        let tokens = self
            .blocking(move |inner| {
                let encoded: Vec<Vec<u8>> =
                    records.iter().map(|r| encode_record(&r.record)).collect();
                (&inner.records, &inner.blind_index, &inner.deterministic)
                    .transaction(|(rec, idx, det)| {
                        let mut tokens = Vec::with_capacity(records.len());
                        for (new, bytes) in records.iter().zip(&encoded) {
                            let prefix = index_prefix(&new.index);
                            if new.deterministic {
                                if let Some(existing) = det.get(prefix)? {
                                    let token = token_from(&existing).map_err(|_| {
                                        ConflictableTransactionError::Abort(Abort::Corrupt)
                                    })?;
                                    tokens.push(token);
                                    continue;
                                }
                                det.insert(&prefix[..], &new.token.as_bytes()[..])?;
                            }
                            if rec.get(new.token.as_bytes())?.is_some() {
                                return Err(ConflictableTransactionError::Abort(Abort::TokenTaken));
                            }
                            rec.insert(new.token.as_bytes(), bytes.as_slice())?;
                            idx.insert(&index_entry(&new.index, &new.token)[..], &[][..])?;
                            tokens.push(new.token);
                        }
                        Ok(tokens)
                    })
                    .map_err(|e| match e {
                        TransactionError::Abort(Abort::TokenTaken) => {
                            StoreError::AlreadyExists("token")
                        }
                        TransactionError::Abort(Abort::Corrupt) => StoreError::Corrupt {
                            what: "deterministic index",
                            reason: "not a token id",
                        },
                        TransactionError::Storage(e) => backend(e),
                    })
            })
            .await?;
        // The write is applied; answer only once it is on disk. A
        // deterministic hit on another call's fresh write waits too: that
        // write was applied before this one read it, so this sync covers it.
        self.inner.commit.durable().await?;
        Ok(tokens)
    }

    fn failure(&self) -> Option<String> {
        self.inner.commit.failure()
    }

    async fn check_integrity(&self) -> Result<IntegrityReport, StoreError> {
        self.blocking(|inner| {
            use std::collections::HashMap;
            let mut report = IntegrityReport::default();
            // token -> number of blind-index entries naming it
            let mut indexed: HashMap<[u8; 16], u32> = HashMap::new();
            for entry in inner.records.iter() {
                let (key, value) = entry.map_err(backend)?;
                report.records += 1;
                match token_from(&key) {
                    Ok(token) => {
                        if decode_record(&value).is_err() {
                            report
                                .problems
                                .push(format!("record {token} does not decode"));
                        }
                        indexed.insert(*token.as_bytes(), 0);
                    }
                    Err(_) => report
                        .problems
                        .push("a record key is not a token id".into()),
                }
            }
            for key in inner.blind_index.iter().keys() {
                let key = key.map_err(backend)?;
                report.index_entries += 1;
                match key.get(36..).map(token_from) {
                    Some(Ok(token)) => match indexed.get_mut(token.as_bytes()) {
                        Some(n) => *n += 1,
                        None => report
                            .problems
                            .push(format!("blind index names {token}, which has no record")),
                    },
                    _ => report
                        .problems
                        .push("a blind-index key is malformed".into()),
                }
            }
            for (token, n) in &indexed {
                if *n != 1 {
                    let token =
                        TokenId::from_bytes(*token).map_or_else(|_| "?".into(), |t| t.to_string());
                    report
                        .problems
                        .push(format!("record {token} has {n} blind-index entries"));
                }
            }
            for entry in inner.deterministic.iter() {
                let (prefix, token) = entry.map_err(backend)?;
                report.deterministic_entries += 1;
                let Ok(token) = token_from(&token) else {
                    report
                        .problems
                        .push("a deterministic entry is malformed".into());
                    continue;
                };
                let mut entry = prefix.to_vec();
                entry.extend_from_slice(token.as_bytes());
                if !indexed.contains_key(token.as_bytes()) {
                    report.problems.push(format!(
                        "deterministic entry names {token}, which has no record"
                    ));
                } else if !inner.blind_index.contains_key(&entry).map_err(backend)? {
                    report.problems.push(format!(
                        "deterministic token {token} is not under the same blind index"
                    ));
                }
            }
            Ok(report)
        })
        .await
    }

    async fn tokens_by_index(&self, index: BlindIndex) -> Result<Vec<TokenId>, StoreError> {
        self.blocking(move |inner| {
            inner
                .blind_index
                .scan_prefix(index_prefix(&index))
                .keys()
                .map(|k| token_from(&k.map_err(backend)?[36..]))
                .collect()
        })
        .await
    }

    async fn get_records(
        &self,
        tokens: Vec<TokenId>,
    ) -> Result<Vec<Option<SealedRecord>>, StoreError> {
        // A few point reads are a few microseconds from sled's cache (at
        // worst a page-cache `pread`): cheaper inline than the thread hop of
        // `spawn_blocking`, which cost ~10% of a single-token detokenize.
        // Larger batches go to the blocking pool so they cannot stall the
        // runtime's workers.
        if tokens.len() <= INLINE_READS {
            return read_records(&self.inner, &tokens);
        }
        self.blocking(move |inner| read_records(inner, &tokens))
            .await
    }
}

/// Batches up to this many tokens are read on the calling task.
const INLINE_READS: usize = 8;

fn read_records(
    inner: &Inner,
    tokens: &[TokenId],
) -> Result<Vec<Option<SealedRecord>>, StoreError> {
    tokens
        .iter()
        .map(
            |t| match inner.records.get(t.as_bytes()).map_err(backend)? {
                Some(bytes) => decode_record(&bytes).map(Some),
                None => Ok(None),
            },
        )
        .collect()
}

fn encode_record(r: &SealedRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 1 + 4 + NONCE_LEN + r.ciphertext.len());
    out.push(RECORD_FORMAT);
    out.push(r.kind.code());
    out.extend_from_slice(&r.key_version.0.to_be_bytes());
    out.extend_from_slice(&r.nonce);
    out.extend_from_slice(&r.ciphertext);
    out
}

fn decode_record(b: &[u8]) -> Result<SealedRecord, StoreError> {
    let corrupt = |reason| StoreError::Corrupt {
        what: "record",
        reason,
    };
    if b.len() < 1 + 1 + 4 + NONCE_LEN + 16 {
        return Err(corrupt("too short"));
    }
    if b[0] != RECORD_FORMAT {
        return Err(corrupt("unknown format"));
    }
    let kind = FieldKind::from_code(b[1]).ok_or(corrupt("unknown field kind"))?;
    let version = u32::from_be_bytes([b[2], b[3], b[4], b[5]]);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&b[6..6 + NONCE_LEN]);
    Ok(SealedRecord {
        kind,
        key_version: KeyVersion(version),
        nonce,
        ciphertext: b[6 + NONCE_LEN..].to_vec(),
    })
}

fn encode_key(k: &WrappedKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + 4 + NONCE_LEN + k.ciphertext.len());
    out.push(KEY_FORMAT);
    out.push(k.purpose.code());
    out.extend_from_slice(&k.version.0.to_be_bytes());
    out.extend_from_slice(&k.nonce);
    out.extend_from_slice(&k.ciphertext);
    out
}

fn decode_key(b: &[u8]) -> Result<WrappedKey, StoreError> {
    let corrupt = |reason| StoreError::Corrupt {
        what: "wrapped key",
        reason,
    };
    if b.len() < 2 + 4 + NONCE_LEN + 16 {
        return Err(corrupt("too short"));
    }
    if b[0] != KEY_FORMAT {
        return Err(corrupt("unknown format"));
    }
    let purpose = KeyPurpose::from_code(b[1]).ok_or(corrupt("unknown key purpose"))?;
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&b[6..6 + NONCE_LEN]);
    Ok(WrappedKey {
        purpose,
        version: KeyVersion(u32::from_be_bytes([b[2], b[3], b[4], b[5]])),
        nonce,
        ciphertext: b[6 + NONCE_LEN..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> SledStore {
        SledStore::open(&SledConfig {
            path: dir.to_path_buf(),
            cache_capacity_bytes: 8 << 20,
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn record(kind: FieldKind) -> SealedRecord {
        SealedRecord {
            kind,
            key_version: KeyVersion(7),
            nonce: [9; NONCE_LEN],
            ciphertext: vec![1; 40],
        }
    }

    fn index(byte: u8) -> BlindIndex {
        BlindIndex {
            version: KeyVersion(1),
            mac: [byte; 32],
        }
    }

    fn new(token: TokenId, kind: FieldKind, idx: u8, deterministic: bool) -> NewRecord {
        NewRecord {
            token,
            record: record(kind),
            index: index(idx),
            deterministic,
        }
    }

    fn ok<T>(r: Result<T, StoreError>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn records_round_trip_and_survive_reopening() {
        let dir = ok(tempfile::tempdir().map_err(backend));
        let (a, b) = (TokenId::new_random(), TokenId::new_random());
        {
            let store = open(dir.path());
            let got = ok(store
                .insert_records(vec![
                    new(a, FieldKind::Phone, 1, false),
                    new(b, FieldKind::Address, 2, false),
                ])
                .await);
            assert_eq!(got, vec![a, b]);
        }
        let store = open(dir.path());
        let got = ok(store.get_records(vec![b, TokenId::new_random(), a]).await);
        assert_eq!(
            got,
            vec![
                Some(record(FieldKind::Address)),
                None,
                Some(record(FieldKind::Phone))
            ]
        );
        assert_eq!(ok(store.tokens_by_index(index(1)).await), vec![a]);
    }

    #[tokio::test]
    async fn a_taken_token_fails_the_whole_batch() {
        let dir = ok(tempfile::tempdir().map_err(backend));
        let store = open(dir.path());
        let (a, b) = (TokenId::new_random(), TokenId::new_random());
        ok(store
            .insert_records(vec![new(a, FieldKind::Phone, 1, false)])
            .await);
        let err = store
            .insert_records(vec![
                new(b, FieldKind::Phone, 2, false),
                new(a, FieldKind::NationalId, 3, false),
            ])
            .await;
        assert!(matches!(err, Err(StoreError::AlreadyExists("token"))));
        let got = ok(store.get_records(vec![a, b]).await);
        assert_eq!(got, vec![Some(record(FieldKind::Phone)), None]);
        assert!(ok(store.tokens_by_index(index(2)).await).is_empty());
    }

    #[tokio::test]
    async fn a_deterministic_value_keeps_its_first_token_and_random_ones_add_up() {
        let dir = ok(tempfile::tempdir().map_err(backend));
        let store = open(dir.path());
        let (a, b, c, d) = (
            TokenId::new_random(),
            TokenId::new_random(),
            TokenId::new_random(),
            TokenId::new_random(),
        );
        // Within one batch and across batches, the first deterministic token wins.
        let got = ok(store
            .insert_records(vec![
                new(a, FieldKind::Phone, 5, true),
                new(b, FieldKind::Phone, 5, true),
            ])
            .await);
        assert_eq!(got, vec![a, a]);
        assert_eq!(
            ok(store
                .insert_records(vec![new(c, FieldKind::Phone, 5, true)])
                .await),
            vec![a]
        );
        assert_eq!(ok(store.get_records(vec![b, c]).await), vec![None, None]);
        // A random token of the same value is indexed beside it.
        assert_eq!(
            ok(store
                .insert_records(vec![new(d, FieldKind::Phone, 5, false)])
                .await),
            vec![d]
        );
        let mut all = ok(store.tokens_by_index(index(5)).await);
        all.sort();
        let mut expected = vec![a, d];
        expected.sort();
        assert_eq!(all, expected);
        let report = ok(store.check_integrity().await);
        assert_eq!(
            (
                report.records,
                report.index_entries,
                report.deterministic_entries
            ),
            (2, 2, 1)
        );
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }

    #[tokio::test]
    async fn the_integrity_check_finds_a_record_without_its_index_entry() {
        let dir = ok(tempfile::tempdir().map_err(backend));
        let store = open(dir.path());
        let (a, b) = (TokenId::new_random(), TokenId::new_random());
        ok(store
            .insert_records(vec![
                new(a, FieldKind::Phone, 1, true),
                new(b, FieldKind::Phone, 2, false),
            ])
            .await);
        ok(store
            .inner
            .blind_index
            .remove(index_entry(&index(1), &a))
            .map_err(backend));
        ok(store.inner.records.remove(b.as_bytes()).map_err(backend));
        let report = ok(store.check_integrity().await);
        assert_eq!(report.problems.len(), 3, "{:?}", report.problems);
    }

    #[tokio::test]
    async fn keys_are_insert_once() {
        let dir = ok(tempfile::tempdir().map_err(backend));
        let store = open(dir.path());
        let key = |purpose| WrappedKey {
            purpose,
            version: KeyVersion(1),
            nonce: [3; NONCE_LEN],
            ciphertext: vec![4; 48],
        };
        ok(store
            .insert_keys(vec![key(KeyPurpose::Data), key(KeyPurpose::Index)])
            .await);
        assert!(matches!(
            store.insert_keys(vec![key(KeyPurpose::Index)]).await,
            Err(StoreError::AlreadyExists(_))
        ));
        assert_eq!(
            ok(store.keys().await),
            vec![key(KeyPurpose::Data), key(KeyPurpose::Index)]
        );
    }

    #[test]
    fn truncated_or_unknown_bytes_are_reported_corrupt() {
        assert!(decode_record(&[1, 1, 0]).is_err());
        let mut bytes = encode_record(&record(FieldKind::Phone));
        bytes[1] = 99;
        assert!(matches!(
            decode_record(&bytes),
            Err(StoreError::Corrupt { .. })
        ));
        bytes[0] = 2;
        assert!(matches!(
            decode_record(&bytes),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
