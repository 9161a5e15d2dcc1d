//! The one writer: stages every write on the commit thread, logs it, hands
//! it to the apply thread, and checkpoints.
//!
//! Writes: every write goes through one commit thread ([`GroupCommit`]).
//! For each group of queued calls it decides the outcomes (deterministic
//! hits), appends the new entries — record, blind-index entry or
//! deterministic mapping, a raised sequence ceiling — as one frame to the
//! write-ahead log ([`Wal`], `fdatasync`ed), then answers the calls. An apply thread ([`Applier`])
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
//! Key writes (rare: first start, rotation) go the same way: logged in the
//! group's frame beside the records, inserted into the `keys` tree once the
//! frame is synced (on the commit thread, before the callers are answered),
//! replayed from the log like records, and followed by a checkpoint.
//!
//! Errors: a failure before the frame is synced fails the whole group; a
//! failure after it (publishing to the apply thread, inserting keys, the
//! checkpoint) does not take back what is durable — the callers get their
//! outcomes, the next start replays the frame — but stops later writes,
//! and the writer no longer checkpoints (not even at close), so the log
//! keeps every frame the trees may lack.
//!
//! [`GroupCommit`]: super::group_commit::GroupCommit
//! [`Unapplied`]: super::apply::Unapplied

use super::apply::{Applier, Staged};
use super::file::StorageFile;
use super::group_commit::{Commit, Committer};
use super::layout::{
    backend, decode_frame, encode_frame, encode_key, encode_record, epoch_key, frame_key_bytes,
    frame_record_bytes, index_entry, index_prefix, key_id, record_id_from, record_key,
    sled_failure, u64_from, Ceiling, CEILING_KEY, FORMAT_KEY, FRAME_CEILING_BYTES, STORE_FORMAT,
};
use super::wal::Wal;
use super::{NewRecord, StorageFailure, StoreError};
use crate::crypto::WrappedKey;
use crate::domain::RecordId;
use std::collections::{HashMap, HashSet};

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
    data_file: Box<dyn StorageFile>,
    /// Checkpoint once the log holds this much ([`CHECKPOINT_BYTES`];
    /// small in the power-loss test).
    checkpoint_bytes: u64,
    wal: Wal,
    trees: Trees,
    keys: sled::Tree,
    meta: sled::Tree,
    /// The sequence's durable ceiling: sequence numbers at or above it
    /// were never handed out, so a write naming one is refused.
    ceiling: u64,
    /// This process's epoch: a write naming another was not handed out by
    /// this process, and is refused.
    epoch: u64,
    applier: Applier,
    /// Set once storage failed: no checkpoint from then on.
    stopped: bool,
    #[cfg(test)]
    faults: std::sync::Arc<Faults>,
}

/// Failures a test can inject, each an OS error number (0: none), used
/// once.
#[cfg(test)]
#[derive(Default)]
pub(super) struct Faults {
    /// The next log append fails before anything is written.
    pub(super) append: std::sync::atomic::AtomicI32,
    /// The next group is synced, then handing it to the apply thread fails.
    pub(super) publish: std::sync::atomic::AtomicI32,
    /// The next group is synced, then checkpointed, and that fails.
    pub(super) checkpoint: std::sync::atomic::AtomicI32,
}

#[cfg(test)]
impl Faults {
    fn take(slot: &std::sync::atomic::AtomicI32, doing: &str) -> Result<(), StorageFailure> {
        match slot.swap(0, std::sync::atomic::Ordering::SeqCst) {
            0 => Ok(()),
            errno => Err(StorageFailure::io(
                format!("{doing} (injected by a test)"),
                &std::io::Error::from_raw_os_error(errno),
            )),
        }
    }
}

impl SledWriter {
    /// Checkpoint once the log holds `bytes` (the power-loss test makes
    /// checkpoints frequent, so power cuts land inside them).
    pub(super) fn set_checkpoint_bytes(&mut self, bytes: u64) {
        self.checkpoint_bytes = bytes;
    }

    pub(super) fn new(
        db: sled::Db,
        data_file: Box<dyn StorageFile>,
        wal: Wal,
        trees: Trees,
        keys: sled::Tree,
        meta: sled::Tree,
        applier: Applier,
    ) -> Self {
        Self {
            db,
            data_file,
            checkpoint_bytes: CHECKPOINT_BYTES,
            wal,
            trees,
            keys,
            meta,
            ceiling: 0,
            epoch: 0,
            applier,
            stopped: false,
            #[cfg(test)]
            faults: Default::default(),
        }
    }

    #[cfg(test)]
    pub(super) fn faults(&self) -> std::sync::Arc<Faults> {
        self.faults.clone()
    }
}

/// What the current group has decided but not yet applied, so later calls
/// in the same group see it.
#[derive(Default)]
struct Group {
    staged: Vec<Staged>,
    deterministic: HashMap<[u8; 36], RecordId>,
    keys: Vec<WrappedKey>,
    key_ids: HashSet<[u8; 5]>,
    ceiling: Option<Ceiling>,
}

pub(super) enum Write {
    Records(Vec<NewRecord>),
    Keys(Vec<WrappedKey>),
    /// Raise the sequence's ceiling (never lowers it), and record the
    /// epoch of the process raising it.
    Ceiling(Ceiling),
}

pub(super) enum Written {
    Records(Vec<RecordId>),
    Keys,
    Ceiling,
}

impl SledWriter {
    /// Decides one call's keys against the `keys` tree and the group so
    /// far: all or none; `AlreadyExists` if a (purpose, version) is taken,
    /// also within the call. Only the commit thread writes keys, so nothing
    /// changes between this lookup and the insert.
    fn stage_keys(&self, keys: &[WrappedKey], group: &mut Group) -> Result<(), StoreError> {
        let mut mine = HashSet::new();
        for key in keys {
            let id = key_id(key.purpose, key.version);
            if group.key_ids.contains(&id)
                || !mine.insert(id)
                || self.keys.contains_key(id).map_err(backend)?
            {
                return Err(StoreError::AlreadyExists("key version"));
            }
        }
        group.key_ids.extend(mine);
        group.keys.extend_from_slice(keys);
        Ok(())
    }

    /// Decides one call's records against the trees and the group so far:
    /// a deterministic value that already has a record gets that record's
    /// id, the rest are staged. Ids are not looked up (the sequence never
    /// hands one out twice); an id at or above the durable ceiling, or of
    /// another epoch, was not handed out by this process, and fails the
    /// call with nothing staged. Only the commit thread writes, so nothing
    /// changes between the deterministic lookup and the insert.
    fn stage_records(
        &self,
        records: Vec<NewRecord>,
        group: &mut Group,
    ) -> Result<Vec<RecordId>, StoreError> {
        let ceiling = self.ceiling.max(group.ceiling.map_or(0, |c| c.ceiling));
        if let Some(bad) = records
            .iter()
            .find(|r| r.id.seq >= ceiling || r.id.epoch != self.epoch)
        {
            return Err(StoreError::Backend(StorageFailure::internal(format!(
                "{} was never handed out by this store's sequence",
                bad.id
            ))));
        }
        let mut ids = Vec::with_capacity(records.len());
        let first_staged = group.staged.len();
        let mut mine: HashMap<[u8; 36], RecordId> = HashMap::new();
        for new in records {
            let prefix = index_prefix(&new.index);
            if new.deterministic {
                let known = match mine
                    .get(&prefix)
                    .or_else(|| group.deterministic.get(&prefix))
                    .copied()
                    .or_else(|| self.applier.shared().deterministic(&prefix))
                {
                    Some(id) => Some(id),
                    None => match self.trees.deterministic.get(prefix) {
                        Ok(Some(bytes)) => match record_id_from(&bytes) {
                            Ok(id) => Some(id),
                            Err(_) => {
                                group.staged.truncate(first_staged);
                                return Err(StoreError::Corrupt {
                                    what: "deterministic index",
                                    reason: "not a record id",
                                });
                            }
                        },
                        Ok(None) => None,
                        Err(e) => {
                            group.staged.truncate(first_staged);
                            return Err(backend(e));
                        }
                    },
                };
                if let Some(id) = known {
                    ids.push(id);
                    continue;
                }
                mine.insert(prefix, new.id);
            }
            ids.push(new.id);
            group.staged.push(Staged {
                id: new.id,
                index: new.index,
                deterministic: new.deterministic,
                record: encode_record(&new.record),
            });
        }
        group.deterministic.extend(mine);
        Ok(ids)
    }
}

/// A group with at least this many records inserts its index entries on
/// two threads.
const PARALLEL_INDEX_FROM: usize = 32;

impl Trees {
    /// Inserts logged entries into the trees (on the apply thread, and for
    /// replay: every insert is idempotent). Every index entry of the group
    /// goes in before any record, so sled's own background flush can leave
    /// an index entry without its record (salvage removes those) but never
    /// a record without its index entry.
    ///
    /// Index keys are random (a MAC), so each insert lands on a leaf sled
    /// must find and rewrite: about 4× an ascending record insert at 1M
    /// records. A large group splits them over two threads (sled's trees
    /// take concurrent inserts), then inserts the records in the order they
    /// were staged (nearly ascending: calls take ids in turn).
    pub(super) fn apply(&self, staged: &[Staged]) -> Result<(), StorageFailure> {
        if staged.len() >= PARALLEL_INDEX_FROM {
            let (first, second) = staged.split_at(staged.len() / 2);
            std::thread::scope(|scope| {
                let other = scope.spawn(|| self.apply_index(second));
                let mine = self.apply_index(first);
                let other = other.join().unwrap_or_else(|_| {
                    Err(StorageFailure::internal("an index insert thread panicked"))
                });
                mine.and(other)
            })?;
        } else {
            self.apply_index(staged)?;
        }
        let failed = |e| sled_failure("inserting logged records", &e);
        for s in staged {
            self.records
                .insert(&record_key(s.id)[..], s.record.as_slice())
                .map_err(failed)?;
        }
        Ok(())
    }

    /// One index insert per record: the deterministic mapping is the index
    /// entry of a deterministic record.
    fn apply_index(&self, staged: &[Staged]) -> Result<(), StorageFailure> {
        let failed = |e| sled_failure("inserting logged index entries", &e);
        for s in staged {
            if s.deterministic {
                self.deterministic
                    .insert(&index_prefix(&s.index)[..], &record_key(s.id)[..])
                    .map_err(failed)?;
            } else {
                self.blind_index
                    .insert(&index_entry(&s.index, s.id)[..], &[][..])
                    .map_err(failed)?;
            }
        }
        Ok(())
    }
}

/// Records in `meta` that `epoch` handed out ids, with the store's layout
/// marker (idempotent).
fn record_epoch(meta: &sled::Tree, epoch: u64) -> Result<(), StorageFailure> {
    meta.insert(FORMAT_KEY, &[STORE_FORMAT][..])
        .map_err(|e| sled_failure("recording the store's layout", &e))?;
    meta.insert(epoch_key(epoch), &[][..])
        .map_err(|e| sled_failure("recording the epoch", &e))?;
    Ok(())
}

/// Raises the ceiling in `meta` to `c.ceiling`, never lowering it, and
/// records `c.epoch` (idempotent, for replay too).
fn apply_ceiling(meta: &sled::Tree, c: Ceiling) -> Result<(), StorageFailure> {
    record_epoch(meta, c.epoch)?;
    let ceiling = c.ceiling;
    let failed =
        |e: StoreError| StorageFailure::new(crate::store::FailureCause::Corrupt, e.to_string());
    let stored = match meta
        .get(CEILING_KEY)
        .map_err(|e| sled_failure("reading the sequence ceiling", &e))?
    {
        Some(bytes) => u64_from(&bytes).map_err(failed)?,
        None => 0,
    };
    if ceiling > stored {
        meta.insert(CEILING_KEY, &ceiling.to_be_bytes()[..])
            .map_err(|e| sled_failure("raising the sequence ceiling", &e))?;
    }
    Ok(())
}

/// The durable ceiling in `meta` (0 for a new store).
pub(super) fn stored_ceiling(meta: &sled::Tree) -> Result<u64, StoreError> {
    match meta.get(CEILING_KEY).map_err(backend)? {
        Some(bytes) => u64_from(&bytes),
        None => Ok(0),
    }
}

/// Inserts logged keys into the `keys` tree (idempotent, for replay too).
fn apply_keys(tree: &sled::Tree, keys: &[WrappedKey]) -> Result<(), StorageFailure> {
    for key in keys {
        tree.insert(&key_id(key.purpose, key.version)[..], encode_key(key))
            .map_err(|e| sled_failure("inserting logged keys", &e))?;
    }
    Ok(())
}

impl SledWriter {
    /// Makes the trees durable on their own, then empties the log. Waits
    /// for every logged group to be applied first: the log is their only
    /// durable copy until this flush.
    fn checkpoint(&mut self) -> Result<(), StorageFailure> {
        let (start, log_bytes) = (std::time::Instant::now(), self.wal.len());
        self.applier.shared().wait_until(0)?;
        let applied = start.elapsed();
        #[cfg(test)]
        Faults::take(&self.faults.checkpoint, "checkpoint")?;
        self.db
            .flush()
            .map_err(|e| sled_failure("flushing sled", &e))?;
        self.data_file
            .sync_data()
            .map_err(|e| StorageFailure::io("fdatasync of sled's data file", &e))?;
        self.wal
            .reset()
            .map_err(|e| StorageFailure::of_error("resetting the write-ahead log", &e))?;
        tracing::debug!(
            log_bytes,
            wait_for_apply_ms = applied.as_millis() as u64,
            total_ms = start.elapsed().as_millis() as u64,
            "checkpoint"
        );
        Ok(())
    }

    /// The durable ceiling, once the log is replayed, and this process's
    /// epoch: records at or above the ceiling, or of another epoch, are
    /// refused.
    pub(super) fn set_sequence(&mut self, ceiling: u64, epoch: u64) {
        self.ceiling = ceiling;
        self.epoch = epoch;
    }

    /// Removes what half-applied groups left in the trees (see
    /// [`integrity::remove_partial_entries`]), then checkpoints so the
    /// removal is durable. For a store opened with an operator's empty log.
    ///
    /// [`integrity::remove_partial_entries`]: super::integrity::remove_partial_entries
    pub(super) fn reconcile(&mut self) -> Result<super::PartialEntries, StoreError> {
        let removed = super::integrity::remove_partial_entries(&self.trees)?;
        self.checkpoint().map_err(StoreError::Backend)?;
        Ok(removed)
    }

    /// Applies the frames a crash left in the log, then checkpoints.
    pub(super) fn replay(&mut self, frames: &[Vec<u8>]) -> Result<(), StoreError> {
        let (mut records, mut keys) = (0, 0);
        for frame in frames {
            let frame = decode_frame(frame)?;
            records += frame.records.len();
            keys += frame.keys.len();
            for ceiling in &frame.ceilings {
                apply_ceiling(&self.meta, *ceiling).map_err(StoreError::Backend)?;
            }
            // The frame that raised the ceiling recorded these epochs; a
            // salvage may have dropped it while keeping frames of records
            // under them, which must stay readable.
            let epochs: HashSet<u64> = frame.records.iter().map(|r| r.id.epoch).collect();
            for epoch in epochs {
                record_epoch(&self.meta, epoch).map_err(StoreError::Backend)?;
            }
            apply_keys(&self.keys, &frame.keys).map_err(StoreError::Backend)?;
            self.trees
                .apply(&frame.records)
                .map_err(StoreError::Backend)?;
        }
        self.checkpoint().map_err(StoreError::Backend)?;
        tracing::info!(
            frames = frames.len(),
            records,
            keys,
            "replayed the write-ahead log"
        );
        Ok(())
    }

    /// Logs the group's frame and syncs it: from then on it is durable.
    fn log(&mut self, group: &Group) -> Result<(), StorageFailure> {
        #[cfg(test)]
        Faults::take(&self.faults.append, "appending to the write-ahead log")?;
        self.wal
            .append(&encode_frame(group.ceiling, &group.keys, &group.staged))
            .map_err(|e| StorageFailure::of_error("appending to the write-ahead log", &e))
    }

    /// What follows the sync of a group's frame: make it visible (records
    /// to the overlay and the apply thread, keys into their tree), then
    /// checkpoint when due. Both visibility steps are tried even if one
    /// fails (reads find as much as possible); a failure of either skips
    /// the checkpoint, so the log keeps the group.
    fn after_sync(&mut self, group: Group) -> Result<(), StorageFailure> {
        let keys_written = !group.keys.is_empty();
        #[cfg(test)]
        let injected = Faults::take(
            &self.faults.publish,
            "handing logged writes to the apply thread",
        );
        #[cfg(not(test))]
        let injected = Ok(());
        let published = injected.and_then(|()| self.applier.publish(group.staged));
        let keys = apply_keys(&self.keys, &group.keys);
        let ceiling = match group.ceiling {
            Some(c) => apply_ceiling(&self.meta, c).map(|()| {
                self.ceiling = self.ceiling.max(c.ceiling);
            }),
            None => Ok(()),
        };
        published?;
        keys?;
        ceiling?;
        #[cfg(test)]
        let forced = self
            .faults
            .checkpoint
            .load(std::sync::atomic::Ordering::SeqCst)
            != 0;
        #[cfg(not(test))]
        let forced = false;
        if forced || keys_written || self.wal.len() >= self.checkpoint_bytes {
            self.checkpoint()?;
        }
        Ok(())
    }
}

impl Committer for SledWriter {
    type Write = Write;
    type Output = Written;

    fn commit(&mut self, writes: Vec<Write>) -> Commit<Written> {
        // One group may still be applying while this one is staged and
        // synced; a second would only grow the overlay.
        if let Err(e) = self.applier.shared().wait_until(1) {
            self.stopped = true;
            return Commit::Failed(e);
        }
        let mut group = Group::default();
        let outcomes = writes
            .into_iter()
            .map(|w| match w {
                Write::Records(records) => self
                    .stage_records(records, &mut group)
                    .map(Written::Records),
                Write::Keys(keys) => self.stage_keys(&keys, &mut group).map(|()| Written::Keys),
                Write::Ceiling(c) => {
                    if c.epoch != self.epoch {
                        return Err(StoreError::Backend(StorageFailure::internal(
                            "a ceiling raise of another epoch",
                        )));
                    }
                    if c.ceiling > self.ceiling
                        && group.ceiling.is_none_or(|g| g.ceiling < c.ceiling)
                    {
                        group.ceiling = Some(c);
                    }
                    Ok(Written::Ceiling)
                }
            })
            .collect();
        if group.staged.is_empty() && group.keys.is_empty() && group.ceiling.is_none() {
            return Commit::Done(outcomes);
        }
        if let Err(e) = self.log(&group) {
            self.stopped = true;
            return Commit::Failed(e);
        }
        // Logged and durable: the callers get their outcomes whatever
        // fails from here, and the next start replays the frame.
        match self.after_sync(group) {
            Ok(()) => Commit::Done(outcomes),
            Err(e) => {
                self.stopped = true;
                Commit::DoneThenFailed(outcomes, e)
            }
        }
    }

    fn cost(write: &Write) -> usize {
        match write {
            Write::Records(records) => records.iter().map(|r| frame_record_bytes(&r.record)).sum(),
            Write::Keys(keys) => keys.iter().map(frame_key_bytes).sum(),
            Write::Ceiling(_) => FRAME_CEILING_BYTES,
        }
    }

    fn close(&mut self) {
        if self.stopped {
            tracing::warn!("storage failed earlier: no checkpoint at close; the next start replays the write-ahead log");
            return;
        }
        if let Err(e) = self.checkpoint() {
            tracing::error!(error = %e, "checkpoint at close failed; the next start replays the log");
        }
    }
}
