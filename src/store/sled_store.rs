//! The embedded sled backend.
//!
//! Layout: tree `records` maps the 16 token-id bytes to an encoded
//! [`SealedRecord`]; tree `data_keys` maps a big-endian key version to an
//! encoded [`WrappedDataKey`]. Encodings start with a format byte.
//!
//! Durability: sled's `flush` uses `sync_file_range` on Linux, which
//! survives a process kill but not power loss (sled issue #1452), so every
//! acknowledged write is followed by an `fdatasync` of sled's data file.

use super::{Store, StoreError};
use crate::crypto::{KeyVersion, SealedRecord, WrappedDataKey, NONCE_LEN};
use crate::domain::{FieldKind, TokenId};
use async_trait::async_trait;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const RECORD_FORMAT: u8 = 1;
const DATA_KEY_FORMAT: u8 = 1;

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
    db: sled::Db,
    records: sled::Tree,
    data_keys: sled::Tree,
    /// sled's data file, kept open to `fdatasync` it after each flush.
    data_file: File,
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
        let data_keys = db.open_tree("data_keys").map_err(backend)?;
        let data_file = File::open(data_file_path(&config.path)).map_err(backend)?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                records,
                data_keys,
                data_file,
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

impl Inner {
    /// Makes every write so far durable: sled flush, then fdatasync.
    fn make_durable(&self) -> Result<(), StoreError> {
        self.db
            .flush()
            .map_err(|e| backend(format!("flush: {e}")))?;
        self.data_file
            .sync_data()
            .map_err(|e| backend(format!("fdatasync: {e}")))
    }
}

#[async_trait]
impl Store for SledStore {
    async fn data_keys(&self) -> Result<Vec<WrappedDataKey>, StoreError> {
        self.blocking(|inner| {
            inner
                .data_keys
                .iter()
                .values()
                .map(|v| decode_data_key(&v.map_err(backend)?))
                .collect()
        })
        .await
    }

    async fn insert_data_key(&self, key: WrappedDataKey) -> Result<(), StoreError> {
        self.blocking(move |inner| {
            let swapped = inner
                .data_keys
                .compare_and_swap(
                    key.version.0.to_be_bytes(),
                    None::<&[u8]>,
                    Some(encode_data_key(&key)),
                )
                .map_err(backend)?;
            if swapped.is_err() {
                return Err(StoreError::AlreadyExists("data key version"));
            }
            inner.make_durable()
        })
        .await
    }

    async fn insert_records(
        &self,
        records: Vec<(TokenId, SealedRecord)>,
    ) -> Result<(), StoreError> {
        self.blocking(move |inner| {
            let encoded: Vec<([u8; 16], Vec<u8>)> = records
                .iter()
                .map(|(t, r)| (*t.as_bytes(), encode_record(r)))
                .collect();
            inner
                .records
                .transaction(|tx| {
                    for (key, value) in &encoded {
                        if tx.get(key)?.is_some() {
                            return Err(ConflictableTransactionError::Abort(()));
                        }
                        tx.insert(key, value.as_slice())?;
                    }
                    Ok(())
                })
                .map_err(|e| match e {
                    TransactionError::Abort(()) => StoreError::AlreadyExists("token"),
                    TransactionError::Storage(e) => backend(e),
                })?;
            inner.make_durable()
        })
        .await
    }

    async fn get_records(
        &self,
        tokens: Vec<TokenId>,
    ) -> Result<Vec<Option<SealedRecord>>, StoreError> {
        self.blocking(move |inner| {
            tokens
                .iter()
                .map(
                    |t| match inner.records.get(t.as_bytes()).map_err(backend)? {
                        Some(bytes) => decode_record(&bytes).map(Some),
                        None => Ok(None),
                    },
                )
                .collect()
        })
        .await
    }
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

fn encode_data_key(k: &WrappedDataKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 4 + NONCE_LEN + k.ciphertext.len());
    out.push(DATA_KEY_FORMAT);
    out.extend_from_slice(&k.version.0.to_be_bytes());
    out.extend_from_slice(&k.nonce);
    out.extend_from_slice(&k.ciphertext);
    out
}

fn decode_data_key(b: &[u8]) -> Result<WrappedDataKey, StoreError> {
    let corrupt = |reason| StoreError::Corrupt {
        what: "data key",
        reason,
    };
    if b.len() < 1 + 4 + NONCE_LEN + 16 {
        return Err(corrupt("too short"));
    }
    if b[0] != DATA_KEY_FORMAT {
        return Err(corrupt("unknown format"));
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&b[5..5 + NONCE_LEN]);
    Ok(WrappedDataKey {
        version: KeyVersion(u32::from_be_bytes([b[1], b[2], b[3], b[4]])),
        nonce,
        ciphertext: b[5 + NONCE_LEN..].to_vec(),
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

    #[tokio::test]
    async fn records_round_trip_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (a, b) = (TokenId::new_random(), TokenId::new_random());
        {
            let store = open(dir.path());
            store
                .insert_records(vec![
                    (a, record(FieldKind::Phone)),
                    (b, record(FieldKind::Address)),
                ])
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let store = open(dir.path());
        let got = store
            .get_records(vec![b, TokenId::new_random(), a])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            got,
            vec![
                Some(record(FieldKind::Address)),
                None,
                Some(record(FieldKind::Phone))
            ]
        );
    }

    #[tokio::test]
    async fn a_taken_token_fails_the_whole_batch() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = open(dir.path());
        let (a, b) = (TokenId::new_random(), TokenId::new_random());
        store
            .insert_records(vec![(a, record(FieldKind::Phone))])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let err = store
            .insert_records(vec![
                (b, record(FieldKind::Phone)),
                (a, record(FieldKind::NationalId)),
            ])
            .await;
        assert!(matches!(err, Err(StoreError::AlreadyExists("token"))));
        let got = store
            .get_records(vec![a, b])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, vec![Some(record(FieldKind::Phone)), None]);
    }

    #[tokio::test]
    async fn data_keys_are_insert_once() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = open(dir.path());
        let key = WrappedDataKey {
            version: KeyVersion(1),
            nonce: [3; NONCE_LEN],
            ciphertext: vec![4; 48],
        };
        store
            .insert_data_key(key.clone())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            store.insert_data_key(key.clone()).await,
            Err(StoreError::AlreadyExists(_))
        ));
        assert_eq!(
            store.data_keys().await.unwrap_or_else(|e| panic!("{e}")),
            vec![key]
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
