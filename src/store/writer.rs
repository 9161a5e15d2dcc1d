//! The one writer: stages every write on the commit thread, logs it, hands
//! it to the apply thread, and checkpoints.
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
//!
//! [`GroupCommit`]: super::group_commit::GroupCommit
//! [`Unapplied`]: super::apply::Unapplied

use super::apply::{Applier, Staged};
use super::group_commit::Committer;
use super::layout::{
    backend, decode_frame, encode_frame, encode_key, encode_record, index_entry, index_prefix,
    key_id, token_from,
};
use super::wal::Wal;
use super::{NewRecord, StoreError};
use crate::crypto::WrappedKey;
use crate::domain::TokenId;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use std::collections::{HashMap, HashSet};
use std::fs::File;

/// The log is checkpointed once it holds this much. Bounds the replay after
/// a crash (about 15k records) and the stall of one checkpoint.
const CHECKPOINT_BYTES: u64 = 4 << 20;

/// The record trees.
#[derive(Clone)]
pub(super) struct Trees {
    pub(super) records: sled::Tree,
    pub(super) blind_index: sled::Tree,
    pub(super) deterministic: sled::Tree,
}

/// The one writer: owns the write-ahead log and the apply thread, and runs
/// every write on the commit thread (see [`GroupCommit`]).
pub(super) struct SledWriter {
    db: sled::Db,
    /// sled's data file, kept open to fdatasync it at checkpoints.
    data_file: File,
    wal: Wal,
    trees: Trees,
    keys: sled::Tree,
    applier: Applier,
}

impl SledWriter {
    pub(super) fn new(
        db: sled::Db,
        data_file: File,
        wal: Wal,
        trees: Trees,
        keys: sled::Tree,
        applier: Applier,
    ) -> Self {
        Self {
            db,
            data_file,
            wal,
            trees,
            keys,
            applier,
        }
    }
}

/// What the current group has decided but not yet applied, so later calls
/// in the same group see it.
#[derive(Default)]
struct Group {
    staged: Vec<Staged>,
    tokens: HashSet<[u8; 16]>,
    deterministic: HashMap<[u8; 36], TokenId>,
}

pub(super) enum Write {
    Records(Vec<NewRecord>),
    Keys(Vec<WrappedKey>),
}

pub(super) enum Written {
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
    pub(super) fn apply(&self, staged: &[Staged]) -> Result<(), StoreError> {
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
    pub(super) fn replay(&mut self, frames: &[Vec<u8>]) -> Result<(), StoreError> {
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
