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
//! Writes: every write goes through one commit thread ([`GroupCommit`]).
//! For each group of queued calls it decides the outcomes (deterministic
//! hits, taken tokens), appends the new entries — record, blind-index entry,
//! deterministic mapping — as one frame to the write-ahead log ([`Wal`],
//! `fdatasync`ed), then answers the calls. An apply thread ([`Applier`])
//! inserts each synced group into the three trees while the commit thread
//! goes on with the next group; until then lookups find the group in an
//! overlay ([`Unapplied`]). After a crash the log is replayed on open, so
//! the trees never keep a record without its index entries or the reverse,
//! and every acknowledged token is there.
//!
//! A checkpoint — sled `flush` plus an `fdatasync` of sled's data file
//! (sled's flush uses `sync_file_range`, which does not survive power loss:
//! sled issue #1452) — makes the trees durable on their own and empties the
//! log. It runs when the log passes [`CHECKPOINT_BYTES`], after key writes,
//! after a replay, and on close.
//!
//! Key writes (rare: first start, rotation) use a sled transaction on the
//! `keys` tree followed by a checkpoint.

use super::apply::{index_prefix, Applier, Staged, Unapplied};
use super::group_commit::{Committer, GroupCommit};
use super::wal::Wal;
use super::{IntegrityReport, NewRecord, Store, StoreError};
use crate::crypto::{BlindIndex, KeyPurpose, KeyVersion, SealedRecord, WrappedKey, NONCE_LEN};
use crate::domain::{FieldKind, TokenId};
use async_trait::async_trait;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const RECORD_FORMAT: u8 = 1;
const KEY_FORMAT: u8 = 1;
/// Write-ahead log entry tag: a new record with its index entries.
const WAL_NEW_RECORD: u8 = 1;
/// The log is checkpointed once it holds this much. Bounds the replay after
/// a crash (about 15k records) and the stall of one checkpoint.
const CHECKPOINT_BYTES: u64 = 4 << 20;

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
    trees: Trees,
    keys: sled::Tree,
    /// Acknowledged writes the apply thread has not inserted yet.
    unapplied: Arc<Unapplied>,
    commit: GroupCommit<SledWriter>,
}

/// The record trees.
#[derive(Clone)]
struct Trees {
    records: sled::Tree,
    blind_index: sled::Tree,
    deterministic: sled::Tree,
}

/// The one writer: owns the write-ahead log and the apply thread, and runs
/// every write on the commit thread (see [`GroupCommit`]).
struct SledWriter {
    db: sled::Db,
    /// sled's data file, kept open to fdatasync it at checkpoints.
    data_file: File,
    wal: Wal,
    trees: Trees,
    keys: sled::Tree,
    applier: Applier,
}

/// What the current group has decided but not yet applied, so later calls
/// in the same group see it.
#[derive(Default)]
struct Group {
    staged: Vec<Staged>,
    tokens: HashSet<[u8; 16]>,
    deterministic: HashMap<[u8; 36], TokenId>,
}

enum Write {
    Records(Vec<NewRecord>),
    Keys(Vec<WrappedKey>),
}

enum Written {
    Tokens(Vec<TokenId>),
    Keys,
}

impl SledWriter {
    /// Adds wrapped keys in one transaction, all or none.
    fn write_keys(&self, keys: &[WrappedKey]) -> Result<(), StoreError> {
        self.keys
            .transaction(|tx| {
                for key in keys {
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
    }

    /// Decides one call's records against the trees and the group so far:
    /// a deterministic value that already has a token gets that token, the
    /// rest are staged. All or nothing: a taken token stages none of them.
    /// Only the commit thread writes, so nothing changes between this
    /// lookup and the insert.
    fn stage_records(
        &self,
        records: &[NewRecord],
        group: &mut Group,
    ) -> Result<Vec<TokenId>, StoreError> {
        let mut tokens = Vec::with_capacity(records.len());
        let mut staged: Vec<Staged> = Vec::new();
        let mut new_tokens: HashSet<[u8; 16]> = HashSet::new();
        let mut mine: HashMap<[u8; 36], TokenId> = HashMap::new();
        for new in records {
            let prefix = index_prefix(&new.index);
            if new.deterministic {
                let known = match mine
                    .get(&prefix)
                    .or_else(|| group.deterministic.get(&prefix))
                    .copied()
                    .or_else(|| self.applier.shared().deterministic(&prefix))
                {
                    Some(token) => Some(token),
                    None => match self.trees.deterministic.get(prefix).map_err(backend)? {
                        Some(bytes) => {
                            Some(token_from(&bytes).map_err(|_| StoreError::Corrupt {
                                what: "deterministic index",
                                reason: "not a token id",
                            })?)
                        }
                        None => None,
                    },
                };
                if let Some(token) = known {
                    tokens.push(token);
                    continue;
                }
                mine.insert(prefix, new.token);
            }
            let id = new.token.as_bytes();
            if group.tokens.contains(id)
                || !new_tokens.insert(*id)
                || self.applier.shared().has_token(&new.token)
                || self.trees.records.contains_key(id).map_err(backend)?
            {
                return Err(StoreError::AlreadyExists("token"));
            }
            staged.push(Staged {
                token: new.token,
                index: new.index,
                deterministic: new.deterministic,
                record: encode_record(&new.record),
            });
            tokens.push(new.token);
        }
        group.tokens.extend(new_tokens);
        group.deterministic.extend(mine);
        group.staged.extend(staged);
        Ok(tokens)
    }
}

impl Trees {
    /// Inserts logged entries into the trees (on the apply thread, and for
    /// replay: every insert is idempotent).
    fn apply(&self, staged: &[Staged]) -> Result<(), StoreError> {
        for s in staged {
            let id = s.token.as_bytes();
            if s.deterministic {
                self.deterministic
                    .insert(&index_prefix(&s.index)[..], &id[..])
                    .map_err(backend)?;
            }
            self.blind_index
                .insert(&index_entry(&s.index, &s.token)[..], &[][..])
                .map_err(backend)?;
            self.records
                .insert(&id[..], s.record.as_slice())
                .map_err(backend)?;
        }
        Ok(())
    }
}

impl SledWriter {
    /// Makes the trees durable on their own, then empties the log. Waits
    /// for every logged group to be applied first: the log is their only
    /// durable copy until this flush.
    fn checkpoint(&mut self) -> Result<(), String> {
        let (start, log_bytes) = (std::time::Instant::now(), self.wal.len());
        self.applier.shared().wait_until(0)?;
        let applied = start.elapsed();
        self.db.flush().map_err(|e| format!("flush: {e}"))?;
        self.data_file
            .sync_data()
            .map_err(|e| format!("fdatasync: {e}"))?;
        self.wal.reset().map_err(|e| e.to_string())?;
        tracing::debug!(
            log_bytes,
            wait_for_apply_ms = applied.as_millis() as u64,
            total_ms = start.elapsed().as_millis() as u64,
            "checkpoint"
        );
        Ok(())
    }

    /// Applies the frames a crash left in the log, then checkpoints.
    fn replay(&mut self, frames: &[Vec<u8>]) -> Result<(), StoreError> {
        let mut entries = 0;
        for frame in frames {
            let staged = decode_frame(frame)?;
            entries += staged.len();
            self.trees.apply(&staged)?;
        }
        self.checkpoint().map_err(backend)?;
        tracing::info!(
            frames = frames.len(),
            records = entries,
            "replayed the write-ahead log"
        );
        Ok(())
    }
}

fn encode_frame(staged: &[Staged]) -> Vec<u8> {
    let mut out = Vec::with_capacity(staged.len() * 128);
    for s in staged {
        out.push(WAL_NEW_RECORD);
        out.extend_from_slice(s.token.as_bytes());
        out.extend_from_slice(&index_prefix(&s.index));
        out.push(u8::from(s.deterministic));
        out.extend_from_slice(&(s.record.len() as u32).to_be_bytes());
        out.extend_from_slice(&s.record);
    }
    out
}

/// Splits `n` bytes off the front of `b`.
fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], StoreError> {
    if b.len() < n {
        return Err(StoreError::Corrupt {
            what: "write-ahead log entry",
            reason: "cut short",
        });
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

fn decode_frame(mut b: &[u8]) -> Result<Vec<Staged>, StoreError> {
    let corrupt = |reason| StoreError::Corrupt {
        what: "write-ahead log entry",
        reason,
    };
    let mut out = Vec::new();
    while !b.is_empty() {
        if take(&mut b, 1)?[0] != WAL_NEW_RECORD {
            return Err(corrupt("unknown entry type"));
        }
        let token = token_from(take(&mut b, 16)?)?;
        let prefix = take(&mut b, 36)?;
        let mut mac = [0u8; 32];
        mac.copy_from_slice(&prefix[4..]);
        let index = BlindIndex {
            version: KeyVersion(u32::from_be_bytes([
                prefix[0], prefix[1], prefix[2], prefix[3],
            ])),
            mac,
        };
        let deterministic = match take(&mut b, 1)?[0] {
            0 => false,
            1 => true,
            _ => return Err(corrupt("bad flag")),
        };
        let len = take(&mut b, 4)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let record = take(&mut b, len)?.to_vec();
        decode_record(&record)?;
        out.push(Staged {
            token,
            index,
            deterministic,
            record,
        });
    }
    Ok(out)
}

impl Committer for SledWriter {
    type Write = Write;
    type Output = Written;

    fn commit(&mut self, writes: Vec<Write>) -> Result<Vec<Result<Written, StoreError>>, String> {
        // One group may still be applying while this one is staged and
        // synced; a second would only grow the overlay.
        self.applier.shared().wait_until(1)?;
        let mut group = Group::default();
        let mut keys_written = false;
        let outcomes = writes
            .into_iter()
            .map(|w| match w {
                Write::Records(records) => self
                    .stage_records(&records, &mut group)
                    .map(Written::Tokens),
                Write::Keys(keys) => {
                    let written = self.write_keys(&keys);
                    keys_written |= written.is_ok();
                    written.map(|()| Written::Keys)
                }
            })
            .collect();
        if !group.staged.is_empty() {
            self.wal
                .append(&encode_frame(&group.staged))
                .map_err(|e| e.to_string())?;
            // Logged and durable: the callers can be answered. If applying
            // fails later, the replay at the next start repairs it, but this
            // process stops writing.
            self.applier.publish(group.staged)?;
        }
        if keys_written || self.wal.len() >= CHECKPOINT_BYTES {
            self.checkpoint()?;
        }
        Ok(outcomes)
    }

    fn close(&mut self) {
        if let Err(e) = self.checkpoint() {
            tracing::error!(error = %e, "checkpoint at close failed; the next start replays the log");
        }
    }
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
        let trees = Trees {
            records,
            blind_index,
            deterministic,
        };
        let (wal, frames) = Wal::open(&config.path.join(WAL_FILE)).map_err(backend)?;
        let apply_trees = trees.clone();
        let applier = Applier::start(move |group| apply_trees.apply(group))?;
        let unapplied = applier.shared().clone();
        let mut writer = SledWriter {
            data_file: File::open(data_file_path(&config.path)).map_err(backend)?,
            db,
            wal,
            trees: trees.clone(),
            keys: keys.clone(),
            applier,
        };
        if !frames.is_empty() {
            writer.replay(&frames)?;
        }
        let commit = GroupCommit::start(writer)?;
        Ok(Self {
            inner: Arc::new(Inner {
                trees,
                keys,
                unapplied,
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

/// The write-ahead log, beside sled's own files.
const WAL_FILE: &str = "fieldvault.wal";

fn data_file_path(dir: &Path) -> PathBuf {
    dir.join("db")
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
        match self.inner.commit.submit(Write::Keys(keys)).await? {
            Written::Keys => Ok(()),
            Written::Tokens(_) => Err(backend("a key write returned tokens")),
        }
    }

    async fn insert_records(&self, records: Vec<NewRecord>) -> Result<Vec<TokenId>, StoreError> {
        match self.inner.commit.submit(Write::Records(records)).await? {
            Written::Tokens(tokens) => Ok(tokens),
            Written::Keys => Err(backend("a record write returned no tokens")),
        }
    }

    fn failure(&self) -> Option<String> {
        self.inner
            .commit
            .failure()
            .or_else(|| self.inner.unapplied.failure())
    }

    async fn check_integrity(&self) -> Result<IntegrityReport, StoreError> {
        self.blocking(|inner| {
            // Compare the trees once every acknowledged write is in them.
            inner.unapplied.wait_until(0).map_err(backend)?;
            let mut report = IntegrityReport::default();
            // token -> number of blind-index entries naming it
            let mut indexed: HashMap<[u8; 16], u32> = HashMap::new();
            for entry in inner.trees.records.iter() {
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
            for key in inner.trees.blind_index.iter().keys() {
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
            for entry in inner.trees.deterministic.iter() {
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
                } else if !inner
                    .trees
                    .blind_index
                    .contains_key(&entry)
                    .map_err(backend)?
                {
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
            let prefix = index_prefix(&index);
            // Overlay first: an entry leaves it only once it is in the tree.
            let mut tokens = inner.unapplied.tokens_by_index(&prefix);
            for key in inner.trees.blind_index.scan_prefix(prefix).keys() {
                tokens.push(token_from(&key.map_err(backend)?[36..])?);
            }
            // An entry applied during the scan shows up in both.
            tokens.sort_unstable();
            tokens.dedup();
            Ok(tokens)
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
        .map(|t| {
            // Overlay first: an entry leaves it only once it is in the tree.
            if let Some(bytes) = inner.unapplied.record(t) {
                return decode_record(&bytes).map(Some);
            }
            match inner.trees.records.get(t.as_bytes()).map_err(backend)? {
                Some(bytes) => decode_record(&bytes).map(Some),
                None => Ok(None),
            }
        })
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
        // The same new token twice in one call is refused too.
        let c = TokenId::new_random();
        let err = store
            .insert_records(vec![
                new(c, FieldKind::Phone, 4, false),
                new(c, FieldKind::Email, 5, false),
            ])
            .await;
        assert!(matches!(err, Err(StoreError::AlreadyExists("token"))));
        assert_eq!(ok(store.get_records(vec![c]).await), vec![None]);
        assert!(ok(store.tokens_by_index(index(2)).await).is_empty());
    }

    /// Back-to-back writes: each call is staged while the previous group
    /// may still be applying, so lookups go through the overlay as often as
    /// through the trees. Either way every write is readable once answered
    /// and a deterministic value keeps one token.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answered_writes_are_visible_whether_or_not_applied_yet() {
        let dir = ok(tempfile::tempdir().map_err(backend));
        let store = open(dir.path());
        let mut first: HashMap<u8, TokenId> = HashMap::new();
        for round in 0..300u32 {
            let value = (round % 7) as u8;
            let (det, random) = (TokenId::new_random(), TokenId::new_random());
            let got = ok(store
                .insert_records(vec![
                    new(det, FieldKind::Phone, value, true),
                    new(random, FieldKind::Phone, value, false),
                ])
                .await);
            let det_token = *first.entry(value).or_insert(det);
            assert_eq!(got, vec![det_token, random], "round {round}");
            let read = ok(store.get_records(vec![det_token, random]).await);
            assert!(read.iter().all(Option::is_some), "round {round}");
            assert!(ok(store.tokens_by_index(index(value)).await).contains(&random));
        }
        let report = ok(store.check_integrity().await);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.records, 300 + 7);
        assert_eq!(report.deterministic_entries, 7);
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
    async fn logged_writes_that_never_reached_the_trees_are_replayed_on_open() {
        let dir = ok(tempfile::tempdir().map_err(backend));
        let (a, b, c) = (
            TokenId::new_random(),
            TokenId::new_random(),
            TokenId::new_random(),
        );
        // A clean store holding `a`.
        drop(open(dir.path()));
        {
            let store = open(dir.path());
            ok(store
                .insert_records(vec![new(a, FieldKind::Phone, 1, true)])
                .await);
        }
        // As if the process died after logging two groups but before
        // applying them: the frames are in the log, the trees lack them.
        {
            let (mut wal, frames) = ok(Wal::open(&dir.path().join(WAL_FILE)).map_err(backend));
            assert!(frames.is_empty(), "a clean close leaves an empty log");
            let staged = |t: TokenId, idx: u8, det: bool| Staged {
                token: t,
                index: index(idx),
                deterministic: det,
                record: encode_record(&record(FieldKind::Email)),
            };
            ok(wal
                .append(&encode_frame(&[staged(b, 2, true)]))
                .map_err(backend));
            ok(wal
                .append(&encode_frame(&[staged(c, 3, false), staged(a, 1, true)]))
                .map_err(backend));
        }
        let store = open(dir.path());
        let got = ok(store.get_records(vec![a, b, c]).await);
        assert!(got.iter().all(Option::is_some), "{got:?}");
        assert_eq!(ok(store.tokens_by_index(index(2)).await), vec![b]);
        // A replayed deterministic mapping is honoured by later writes.
        let d = TokenId::new_random();
        assert_eq!(
            ok(store
                .insert_records(vec![new(d, FieldKind::Phone, 2, true)])
                .await),
            vec![b]
        );
        let report = ok(store.check_integrity().await);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(
            (report.records, report.deterministic_entries),
            (3, 2),
            "replaying `a` again changed nothing"
        );
        drop(store);
        let (_, frames) = ok(Wal::open(&dir.path().join(WAL_FILE)).map_err(backend));
        assert!(frames.is_empty(), "the replay was checkpointed");
    }

    #[test]
    fn a_logged_frame_round_trips_and_damage_is_reported() {
        let token = TokenId::new_random();
        let staged = Staged {
            token,
            index: index(4),
            deterministic: true,
            record: encode_record(&record(FieldKind::Address)),
        };
        let frame = encode_frame(&[staged]);
        let back = ok(decode_frame(&frame));
        assert_eq!(back.len(), 1);
        assert_eq!(
            (back[0].token, back[0].index, back[0].deterministic),
            (token, index(4), true)
        );
        assert!(decode_frame(&frame[..frame.len() - 1]).is_err());
        let mut bad = frame.clone();
        bad[0] = 9;
        assert!(decode_frame(&bad).is_err());
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
        // Damage the trees once the apply thread has filled them.
        ok(store.inner.unapplied.wait_until(0).map_err(backend));
        let trees = &store.inner.trees;
        ok(trees
            .blind_index
            .remove(index_entry(&index(1), &a))
            .map_err(backend));
        ok(trees.records.remove(b.as_bytes()).map_err(backend));
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
