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
//! `meta` writes — key facts, job states, and the abuse controls' durable
//! counters, freezes and canaries — go the same way as `WAL_META` entries,
//! inserted into `meta` on the commit thread before the callers are
//! answered (so they need no overlay). Charges are compare-and-set: staged
//! against the counts the group has set so far, else the tree's. The
//! frozen callers and the canaries' ids are also kept in memory, shared
//! with readers, loaded at open (after the replay) and changed after each
//! sync: a freeze check or a canary miss reads no tree.
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

use super::apply::{Applier, Batch, Deleted, Pending, Reindexed, Rewritten, Staged};
use super::file::StorageFile;
use super::grant_layout::{decode_grant, encode_grant, grant_key, GRANT_PREFIX};
use super::group_commit::{Commit, Committer};
use super::layout::{
    backend, canary_key, counter_key, decode_counter, decode_frame, decode_freeze, decode_key_info,
    decode_record, encode_canary, encode_counter, encode_counts, encode_frame, encode_freeze,
    encode_key, encode_key_info, encode_record, encoded_canary_bytes, encoded_freeze_bytes,
    encoded_record_expiry, encoded_record_version, epoch_key, expiry_key, frame_delete_bytes,
    frame_key_bytes, frame_meta_bytes, frame_record_bytes, frame_rewrite_bytes, freeze_caller,
    freeze_key, index_entry, index_prefix, job_key, key_id, key_info_key, record_id_from,
    record_key, sled_failure, u64_from, Ceiling, Changes, MetaOp, CANARY_PREFIX, CEILING_KEY,
    COUNTER_PREFIX, COUNTS_KEY, FORMAT_KEY, FRAME_CEILING_BYTES, FREEZE_PREFIX, KEY_INFO_PREFIX,
    MASTER_FILE_KEY, MASTER_PREFIX, STORE_FORMAT,
};
use super::wal::Wal;
use super::{
    Canary, Charge, Charged, Deletion, Freeze, Job, KeyChange, KeyUsage, NewRecord, Reindex,
    Rewrite, StorageFailure, StoreError,
};
use crate::crypto::{KeyPurpose, KeyVersion, WrappedKey};
use crate::domain::RecordId;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

/// The frozen callers, by caller: what the `meta` tree holds once every
/// logged group is applied, shared with readers (a freeze check is on
/// every call's path, so it reads memory only).
pub(super) type Frozen = Arc<RwLock<BTreeMap<String, Freeze>>>;

/// The ids of every canary, shared with readers: a detokenize asks about
/// each token, and nearly none is a canary, so only a hit reads `meta`.
pub(super) type CanaryIds = Arc<RwLock<HashSet<RecordId>>>;

/// The reason of a freeze whose stored bytes do not decode.
pub(super) const CORRUPT_FREEZE: &str = "the stored freeze is corrupt";

/// The log is checkpointed once it holds this much. Bounds the replay after
/// a crash (about 15k records) and the stall of one checkpoint.
const CHECKPOINT_BYTES: u64 = 4 << 20;

/// The record trees.
#[derive(Clone)]
pub(super) struct Trees {
    pub(super) records: sled::Tree,
    pub(super) blind_index: sled::Tree,
    pub(super) deterministic: sled::Tree,
    pub(super) expiry: sled::Tree,
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
    /// Records (index entries) per key version, counting every logged
    /// group; shared with readers. Written to `meta` at each checkpoint.
    usage: Arc<Mutex<KeyUsage>>,
    /// The retired key versions (purpose, version): a write naming one is
    /// refused (`StaleKey`), and the version is never made again.
    retired: HashSet<[u8; 5]>,
    /// The frozen callers, shared with readers; changed in `after_sync`,
    /// before the callers are answered.
    frozen: Frozen,
    /// The canaries' ids, shared with readers; changed in `after_sync`.
    canary_ids: CanaryIds,
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
            usage: Arc::default(),
            retired: HashSet::new(),
            frozen: Frozen::default(),
            canary_ids: CanaryIds::default(),
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
    changes: Changes,
    /// Records this group rewrites, with their new bytes.
    rewritten: HashMap<RecordId, Vec<u8>>,
    /// Index entries this group moves.
    moved: HashSet<(RecordId, [u8; 36])>,
    /// What the group changes in the key-version counters.
    deltas: BTreeMap<(KeyPurpose, KeyVersion), i64>,
    /// Key versions the group adds or destroys (`true`: added).
    key_changes: HashMap<[u8; 5], bool>,
    /// The `meta` values the group sets (`None`: removes) so far, so that
    /// a later write of the group reads them (two charges of one counter).
    pending_meta: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Callers the group freezes (`Some`) or unfreezes (`None`).
    freezes: BTreeMap<String, Option<Freeze>>,
    /// Canaries the group adds.
    canaries: HashSet<RecordId>,
    /// Records the group deletes.
    deleted: HashSet<RecordId>,
}

impl Group {
    fn count(&mut self, purpose: KeyPurpose, version: KeyVersion, by: i64) {
        *self.deltas.entry((purpose, version)).or_default() += by;
    }

    /// Logs a `meta` entry set (`Some`) or removed (`None`), readable by
    /// the rest of the group.
    fn set_meta(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.pending_meta.insert(key.clone(), value.clone());
        self.changes.meta.push(MetaOp { key, value });
    }
}

pub(super) enum Write {
    Records(Vec<NewRecord>),
    /// Raise the sequence's ceiling (never lowers it), and record the
    /// epoch of the process raising it.
    Ceiling(Ceiling),
    Rewrites(Vec<Rewrite>, Option<(Job, Vec<u8>)>),
    Reindex(Vec<Reindex>, Option<(Job, Vec<u8>)>),
    KeyChange(KeyChange),
    JobState(Job, Vec<u8>),
    /// Add to durable counters, all or none (compare-and-set on the
    /// counts the group and the `meta` tree hold).
    Charge(Vec<Charge>),
    /// Freeze a caller unless it is frozen already.
    Freeze(Freeze),
    /// Lift a caller's freeze, if it has one.
    Unfreeze(String),
    /// Add canaries, all or none.
    Canaries(Vec<Canary>),
    /// Remove counters (an absent one is skipped).
    ResetCounters(Vec<String>),
    /// Store a grant (compare-and-set on its revision: `None` adds it).
    PutGrant(Box<crate::domain::grant::Grant>, Option<u64>),
    /// Delete records with their index and expiry entries (an absent one
    /// is skipped).
    Delete(Vec<Deletion>),
    /// Write a snapshot of every tree into these (temporary) files, one
    /// per table, once every logged group is applied: the state before
    /// this group.
    Snapshot(Vec<std::fs::File>),
}

pub(super) enum Written {
    Records(Vec<RecordId>),
    Ceiling,
    Applied(Vec<bool>),
    Changed,
    Charged(Charged),
    /// The freeze found (freeze: the one already in force; unfreeze: the
    /// one lifted).
    Freeze(Option<Freeze>),
    Snapshot(super::backup::Snapshot),
}

/// The `meta` entry of a job's state.
fn job_op(job: Job, state: Vec<u8>) -> MetaOp {
    MetaOp {
        key: job_key(job),
        value: Some(state),
    }
}

fn purpose_name(purpose: KeyPurpose) -> &'static str {
    match purpose {
        KeyPurpose::Data => "data",
        KeyPurpose::Index => "index",
        KeyPurpose::Token => "token",
        KeyPurpose::Audit => "audit",
    }
}

/// Adds a group's (or a replayed frame's) counter changes.
fn add_deltas(usage: &mut KeyUsage, deltas: &BTreeMap<(KeyPurpose, KeyVersion), i64>) {
    for (at, by) in deltas {
        let n = usage.entry(*at).or_default();
        *n = n.saturating_add_signed(*by);
        if *n == 0 {
            usage.remove(at);
        }
    }
}

/// The counter changes of a logged frame's records.
fn frame_deltas(records: &[Staged], changes: &Changes) -> BTreeMap<(KeyPurpose, KeyVersion), i64> {
    let mut d: BTreeMap<(KeyPurpose, KeyVersion), i64> = BTreeMap::new();
    for s in records {
        *d.entry((KeyPurpose::Data, encoded_record_version(&s.record)))
            .or_default() += 1;
        *d.entry((KeyPurpose::Index, s.index.version)).or_default() += 1;
    }
    for r in &changes.rewrites {
        *d.entry((KeyPurpose::Data, r.from)).or_default() -= 1;
        *d.entry((KeyPurpose::Data, r.to)).or_default() += 1;
    }
    for r in &changes.reindexed {
        *d.entry((KeyPurpose::Index, r.old.version)).or_default() -= 1;
        *d.entry((KeyPurpose::Index, r.new.version)).or_default() += 1;
    }
    for x in &changes.deleted {
        *d.entry((KeyPurpose::Data, x.version)).or_default() -= 1;
        for (index, _) in &x.entries {
            *d.entry((KeyPurpose::Index, index.version)).or_default() -= 1;
        }
    }
    d
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
                || self.retired.contains(&id)
                || self.keys.contains_key(id).map_err(backend)?
            {
                return Err(StoreError::AlreadyExists("key version"));
            }
        }
        for id in &mine {
            group.key_changes.insert(*id, true);
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
        for r in &records {
            self.check_live(KeyPurpose::Data, r.record.key_version, group)?;
            self.check_live(KeyPurpose::Index, r.index.version, group)?;
        }
        // Decided here, then added to the group only if the whole call
        // succeeds (a failed read stages nothing of it).
        let mut ids = Vec::with_capacity(records.len());
        let mut staged = Vec::with_capacity(records.len());
        let mut expired: Vec<Deleted> = Vec::new();
        let mut mine: HashMap<[u8; 36], RecordId> = HashMap::new();
        for new in records {
            let prefix = index_prefix(&new.index);
            if new.deterministic {
                let mut known = None;
                for index in std::iter::once(&new.index).chain(&new.older_indexes) {
                    if let Some(id) = self.deterministic_of(&index_prefix(index), &mine, group)? {
                        known = Some((id, *index));
                        break;
                    }
                }
                if let Some((id, index)) = known {
                    // A value's token that has expired is answered as
                    // unknown from then on: it is deleted here, and the
                    // value gets a new token.
                    let now = new.record.meta.map_or(0, |m| m.created_unix_ms);
                    let gone = expired.iter().any(|d| d.id == id);
                    match self.expired_mapping(id, index, now, group)? {
                        None if !gone => {
                            ids.push(id);
                            continue;
                        }
                        None => {}
                        Some(deleted) => expired.push(deleted),
                    }
                }
                mine.insert(prefix, new.id);
            }
            ids.push(new.id);
            staged.push(Staged {
                id: new.id,
                index: new.index,
                deterministic: new.deterministic,
                record: encode_record(&new.record),
            });
        }
        for d in expired {
            self.stage_deleted(d, group);
        }
        for s in &staged {
            group.count(KeyPurpose::Data, encoded_record_version(&s.record), 1);
            group.count(KeyPurpose::Index, s.index.version, 1);
        }
        group.staged.extend(staged);
        group.deterministic.extend(mine);
        Ok(ids)
    }

    /// The deletion of a value's deterministic record `id` (mapped from
    /// `index`) if it has expired at `now_unix_ms`, else `None`. A record
    /// staged by this group is never expired.
    fn expired_mapping(
        &self,
        id: RecordId,
        index: crate::crypto::BlindIndex,
        now_unix_ms: u64,
        group: &Group,
    ) -> Result<Option<Deleted>, StoreError> {
        if group.staged.iter().any(|s| s.id == id) {
            return Ok(None);
        }
        let Some(bytes) = self.current_record(id, group)? else {
            return Ok(None);
        };
        let record = decode_record(&bytes)?;
        if !record.is_expired(now_unix_ms) {
            return Ok(None);
        }
        Ok(Some(Deleted {
            id,
            version: record.key_version,
            expires_unix_ms: record.expires_unix_ms(),
            entries: vec![(index, true)],
        }))
    }

    /// Adds a decided deletion to the group: counted, logged, and seen by
    /// the group's later writes.
    fn stage_deleted(&self, d: Deleted, group: &mut Group) {
        group.count(KeyPurpose::Data, d.version, -1);
        for (index, deterministic) in &d.entries {
            group.count(KeyPurpose::Index, index.version, -1);
            let prefix = index_prefix(index);
            if *deterministic && group.deterministic.get(&prefix) == Some(&d.id) {
                group.deterministic.remove(&prefix);
            }
        }
        group.deleted.insert(d.id);
        group.changes.deleted.push(d);
    }

    /// Whether record `id` is deleted by the group or an unapplied one.
    fn is_deleted(&self, id: RecordId, group: &Group) -> bool {
        group.deleted.contains(&id) || self.applier.shared().read(|o| o.is_deleted(id))
    }

    /// The live index-key versions, as the group leaves them.
    fn live_index_versions(&self, group: &Group) -> Result<HashSet<KeyVersion>, StoreError> {
        let mut live = HashSet::new();
        for key in self.keys.scan_prefix([KeyPurpose::Index.code()]).keys() {
            let key = key.map_err(backend)?;
            if let Ok(id) = <[u8; 5]>::try_from(&key[..]) {
                live.insert(id);
            }
        }
        for (id, added) in &group.key_changes {
            if *added {
                live.insert(*id);
            } else {
                live.remove(id);
            }
        }
        Ok(live
            .into_iter()
            .filter(|id| id[0] == KeyPurpose::Index.code() && !self.retired.contains(id))
            .map(|id| KeyVersion(u32::from_be_bytes([id[1], id[2], id[3], id[4]])))
            .collect())
    }

    /// Record `id`'s index entry under `index`, if it has one now (`Some`:
    /// whether it is the deterministic mapping). The newest state wins:
    /// the group's moves, then the overlay (new records and move targets),
    /// then the trees.
    fn entry_of(
        &self,
        id: RecordId,
        index: &crate::crypto::BlindIndex,
        group: &Group,
    ) -> Result<Option<bool>, StoreError> {
        let prefix = index_prefix(index);
        if group.moved.contains(&(id, prefix)) {
            return Ok(None);
        }
        if let Some(m) = group
            .changes
            .reindexed
            .iter()
            .find(|m| m.id == id && m.new == *index)
        {
            return Ok(Some(m.deterministic));
        }
        let (in_overlay, moved_elsewhere) = self.applier.shared().read(|o| {
            let here = if o.deterministic(&prefix) == Some(id) {
                Some(true)
            } else if o.records_by_index(&prefix).contains(&id) {
                Some(false)
            } else {
                None
            };
            (here, o.has_moved_target(id))
        });
        if in_overlay.is_some() {
            return Ok(in_overlay);
        }
        if moved_elsewhere {
            // An unapplied move takes this record's entry to another
            // index: the trees' older entry is on its way out.
            return Ok(None);
        }
        let mapped = self.trees.deterministic.get(prefix).map_err(backend)?;
        if mapped.is_some_and(|b| record_id_from(&b).ok() == Some(id)) {
            return Ok(Some(true));
        }
        let random = self
            .trees
            .blind_index
            .contains_key(index_entry(index, id))
            .map_err(backend)?;
        Ok(random.then_some(false))
    }

    /// Stages each deletion whose record exists now, with its index entry
    /// (found under one of its `indexes`) and its expiry entry; per
    /// deletion, whether its record was there. `KeysChanged` (nothing
    /// staged) if a deletion's indexes do not cover every live index-key
    /// version: its entry might be under the one not named.
    fn stage_deletes(
        &self,
        deletions: Vec<Deletion>,
        group: &mut Group,
    ) -> Result<Vec<bool>, StoreError> {
        let live = self.live_index_versions(group)?;
        if deletions.iter().any(|d| {
            let named: HashSet<KeyVersion> = d.indexes.iter().map(|i| i.version).collect();
            !live.is_subset(&named)
        }) {
            return Err(StoreError::KeysChanged);
        }
        let mut decided = Vec::with_capacity(deletions.len());
        let mut mine = HashSet::new();
        for d in &deletions {
            if !mine.insert(d.id) {
                decided.push(None);
                continue;
            }
            let Some(bytes) = self.current_record(d.id, group)? else {
                decided.push(None);
                continue;
            };
            let record = decode_record(&bytes)?;
            let mut entries = Vec::new();
            for index in &d.indexes {
                if let Some(deterministic) = self.entry_of(d.id, index, group)? {
                    entries.push((*index, deterministic));
                }
            }
            entries.truncate(super::layout::MAX_DELETED_ENTRIES);
            decided.push(Some(Deleted {
                id: d.id,
                version: record.key_version,
                expires_unix_ms: record.expires_unix_ms(),
                entries,
            }));
        }
        let applied = decided.iter().map(Option::is_some).collect();
        for d in decided.into_iter().flatten() {
            self.stage_deleted(d, group);
        }
        Ok(applied)
    }

    /// The deterministic record of an index prefix: this call's, the
    /// group's, the overlay's, or the tree's.
    fn deterministic_of(
        &self,
        prefix: &[u8; 36],
        mine: &HashMap<[u8; 36], RecordId>,
        group: &Group,
    ) -> Result<Option<RecordId>, StoreError> {
        if let Some(id) = mine.get(prefix).or_else(|| group.deterministic.get(prefix)) {
            return Ok(Some(*id));
        }
        // The overlay is held while the tree is read, so a mapping of a
        // deleted record is seen with its tombstone (see `Unapplied::read`).
        let found = self.applier.shared().read(|o| {
            let id = match o.deterministic(prefix) {
                Some(id) => id,
                None => match self.trees.deterministic.get(prefix).map_err(backend)? {
                    Some(bytes) => record_id_from(&bytes).map_err(|_| StoreError::Corrupt {
                        what: "deterministic index",
                        reason: "not a record id",
                    })?,
                    None => return Ok(None),
                },
            };
            Ok(Some(id).filter(|id| !o.is_deleted(*id)))
        })?;
        Ok(found.filter(|id| !group.deleted.contains(id)))
    }

    /// `StaleKey` if this key version is retired (or the group retires it):
    /// a record sealed under it, or an index entry made with it, would
    /// never be read again.
    fn check_live(
        &self,
        purpose: KeyPurpose,
        version: KeyVersion,
        group: &Group,
    ) -> Result<(), StoreError> {
        let id = key_id(purpose, version);
        let live = group
            .key_changes
            .get(&id)
            .copied()
            .unwrap_or_else(|| !self.retired.contains(&id));
        if live {
            Ok(())
        } else {
            Err(StoreError::StaleKey {
                purpose: purpose_name(purpose),
                version: version.0,
            })
        }
    }

    /// The encoded record `id` as the group, the overlay or the tree hold
    /// it now.
    fn current_record(&self, id: RecordId, group: &Group) -> Result<Option<Vec<u8>>, StoreError> {
        if group.deleted.contains(&id) {
            return Ok(None);
        }
        if let Some(bytes) = group.rewritten.get(&id) {
            return Ok(Some(bytes.clone()));
        }
        match self.applier.shared().record(id) {
            Some(Pending::Stored(bytes)) => return Ok(Some(bytes)),
            Some(Pending::Deleted) => return Ok(None),
            None => {}
        }
        Ok(self
            .trees
            .records
            .get(record_key(id))
            .map_err(backend)?
            .map(|b| b.to_vec()))
    }

    /// Stages each rewrite whose record is still sealed under `from`
    /// (compare-and-set), with the job's state. Reads come first, so a
    /// failure stages nothing of the call.
    fn stage_rewrites(
        &self,
        rewrites: Vec<Rewrite>,
        job: Option<(Job, Vec<u8>)>,
        group: &mut Group,
    ) -> Result<Vec<bool>, StoreError> {
        for r in &rewrites {
            self.check_live(KeyPurpose::Data, r.record.key_version, group)?;
        }
        let current = rewrites
            .iter()
            .map(|r| self.current_record(r.id, group))
            .collect::<Result<Vec<_>, _>>()?;
        let mut applied = Vec::with_capacity(rewrites.len());
        for (r, now) in rewrites.into_iter().zip(current) {
            // A record this call rewrote already is compared as rewritten.
            let now = group.rewritten.get(&r.id).cloned().or(now);
            let still = now
                .and_then(|b| decode_record(&b).ok())
                .is_some_and(|rec| rec.key_version == r.from);
            applied.push(still);
            if !still {
                continue;
            }
            let to = r.record.key_version;
            let bytes = encode_record(&r.record);
            group.count(KeyPurpose::Data, r.from, -1);
            group.count(KeyPurpose::Data, to, 1);
            group.rewritten.insert(r.id, bytes.clone());
            group.changes.rewrites.push(Rewritten {
                id: r.id,
                from: r.from,
                to,
                record: bytes,
            });
        }
        if let Some((job, state)) = job {
            group.changes.meta.push(job_op(job, state));
        }
        Ok(applied)
    }

    /// Whether an index entry exists now and was not moved already.
    fn entry_exists(&self, m: &Reindex, group: &Group) -> Result<bool, StoreError> {
        let old = index_prefix(&m.entry.index);
        let id = m.entry.id;
        if group.moved.contains(&(id, old)) || self.is_deleted(id, group) {
            return Ok(false);
        }
        let (moved, here) = self.applier.shared().read(|o| {
            (
                o.records_by_index(&index_prefix(&m.new)).contains(&id),
                o.records_by_index(&old).contains(&id),
            )
        });
        if moved {
            return Ok(false);
        }
        if here {
            return Ok(true);
        }
        if m.entry.deterministic {
            let mapped = self.trees.deterministic.get(old).map_err(backend)?;
            Ok(mapped.is_some_and(|b| record_id_from(&b).ok() == Some(id)))
        } else {
            self.trees
                .blind_index
                .contains_key(index_entry(&m.entry.index, id))
                .map_err(backend)
        }
    }

    /// Stages each move whose entry still exists (compare-and-set), with
    /// the job's state. Reads come first.
    fn stage_reindex(
        &self,
        moves: Vec<Reindex>,
        job: Option<(Job, Vec<u8>)>,
        group: &mut Group,
    ) -> Result<Vec<bool>, StoreError> {
        for m in &moves {
            self.check_live(KeyPurpose::Index, m.new.version, group)?;
        }
        let mut exists = moves
            .iter()
            .map(|m| self.entry_exists(m, group))
            .collect::<Result<Vec<_>, _>>()?;
        for (m, exists) in moves.iter().zip(&mut exists) {
            // An entry this call moved already is gone from where it was.
            *exists &= !group
                .moved
                .contains(&(m.entry.id, index_prefix(&m.entry.index)));
            if !*exists {
                continue;
            }
            let old = m.entry.index;
            group.moved.insert((m.entry.id, index_prefix(&old)));
            group.count(KeyPurpose::Index, old.version, -1);
            group.count(KeyPurpose::Index, m.new.version, 1);
            if m.entry.deterministic {
                group.deterministic.insert(index_prefix(&m.new), m.entry.id);
            }
            group.changes.reindexed.push(Reindexed {
                id: m.entry.id,
                old,
                new: m.new,
                deterministic: m.entry.deterministic,
            });
        }
        if let Some((job, state)) = job {
            group.changes.meta.push(job_op(job, state));
        }
        Ok(exists)
    }

    /// A counter's `(window start, count)` as the group or the `meta` tree
    /// holds it now.
    fn current_counter(&self, key: &[u8], group: &Group) -> Result<Option<(u64, u64)>, StoreError> {
        let bytes = match group.pending_meta.get(key) {
            Some(pending) => pending.clone(),
            None => self.meta.get(key).map_err(backend)?.map(|b| b.to_vec()),
        };
        bytes.map(|b| decode_counter(&b)).transpose()
    }

    /// Stages charges, all or none: each adds to its counter's count in
    /// the charge's window (a count of an earlier window is dropped first;
    /// one of a later window, a clock that went back, is kept and added
    /// to). A charge that would pass its limit stages nothing of the call.
    /// Reads and writes happen on the commit thread only, so the counts
    /// read here are the counts the group's frame changes.
    fn stage_charges(&self, charges: &[Charge], group: &mut Group) -> Result<Charged, StoreError> {
        // This call's new values, over the group's and the tree's.
        let mut mine: BTreeMap<Vec<u8>, (u64, u64)> = BTreeMap::new();
        let mut counts = Vec::with_capacity(charges.len());
        // `(window, count)` as a charge of window `start` finds it.
        let in_window = |now: Option<(u64, u64)>, start: u64| match now {
            Some((window, count)) if window >= start => (window, count),
            _ => (start, 0),
        };
        for (index, c) in charges.iter().enumerate() {
            let key = counter_key(&c.counter);
            let stored = self.current_counter(&key, group)?;
            let (window, count) = in_window(mine.get(&key).copied().or(stored), c.window_start_ms);
            let added = count.saturating_add(c.amount);
            if c.limit.is_some_and(|limit| added > limit) {
                // Nothing of the call is added: the counter holds what it
                // held before the call.
                let (_, held) = in_window(stored, c.window_start_ms);
                return Ok(Charged::Over { index, count: held });
            }
            mine.insert(key, (window, added));
            counts.push(added);
        }
        for (key, (window, count)) in mine {
            group.set_meta(key, Some(encode_counter(window, count)));
        }
        Ok(Charged::Added(counts))
    }

    /// Stages a grant: a new one (`expect: None`; `AlreadyExists` if its
    /// id is stored) or a change to the stored one whose revision is still
    /// `expect` (`Ok(false)`, nothing staged, otherwise). Read and written
    /// on the commit thread only, like a charge, so two changes of one
    /// grant never both pass.
    fn stage_grant(
        &self,
        mut grant: crate::domain::grant::Grant,
        expect: Option<u64>,
        group: &mut Group,
    ) -> Result<bool, StoreError> {
        let key = grant_key(grant.id);
        let stored = match group.pending_meta.get(&key) {
            Some(pending) => pending.clone(),
            None => self.meta.get(&key).map_err(backend)?.map(|b| b.to_vec()),
        };
        let revision = stored
            .map(|b| decode_grant(&key, &b).map(|g| g.revision))
            .transpose()?;
        grant.revision = match (expect, revision) {
            (None, Some(_)) => return Err(StoreError::AlreadyExists("grant")),
            (None, None) => 1,
            (Some(e), Some(r)) if e == r => r.saturating_add(1),
            (Some(_), _) => return Ok(false),
        };
        group.set_meta(key, Some(encode_grant(&grant)));
        Ok(true)
    }

    /// A caller's freeze as the group or the writer's map holds it now.
    fn current_freeze(&self, caller: &str, group: &Group) -> Option<Freeze> {
        match group.freezes.get(caller) {
            Some(change) => change.clone(),
            None => self
                .frozen
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(caller)
                .cloned(),
        }
    }

    /// Stages a freeze unless the caller is frozen already (then its freeze
    /// is returned and nothing is staged).
    fn stage_freeze(&self, freeze: Freeze, group: &mut Group) -> Option<Freeze> {
        if let Some(existing) = self.current_freeze(&freeze.caller, group) {
            return Some(existing);
        }
        group.set_meta(freeze_key(&freeze.caller), Some(encode_freeze(&freeze)));
        group.freezes.insert(freeze.caller.clone(), Some(freeze));
        None
    }

    /// Stages the lifting of a caller's freeze: the freeze lifted, or
    /// `None` (nothing staged) if the caller is not frozen.
    fn stage_unfreeze(&self, caller: String, group: &mut Group) -> Option<Freeze> {
        let existing = self.current_freeze(&caller, group)?;
        group.set_meta(freeze_key(&caller), None);
        group.freezes.insert(caller, None);
        Some(existing)
    }

    /// Stages canaries, all or none. Like a record's, a canary's id must
    /// have been handed out by this process's sequence (below the durable
    /// ceiling, of this epoch); an id named twice, already a canary, or
    /// already a record's, fails the call (`AlreadyExists`).
    fn stage_canaries(&self, canaries: &[Canary], group: &mut Group) -> Result<(), StoreError> {
        let ceiling = self.ceiling.max(group.ceiling.map_or(0, |c| c.ceiling));
        if let Some(bad) = canaries
            .iter()
            .find(|c| c.id.seq >= ceiling || c.id.epoch != self.epoch)
        {
            return Err(StoreError::Backend(StorageFailure::internal(format!(
                "{} was never handed out by this store's sequence",
                bad.id
            ))));
        }
        let mut mine = HashSet::with_capacity(canaries.len());
        for c in canaries {
            if !mine.insert(c.id)
                || group.canaries.contains(&c.id)
                || self
                    .canary_ids
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(&c.id)
            {
                return Err(StoreError::AlreadyExists("canary"));
            }
            if group.staged.iter().any(|s| s.id == c.id)
                || self.current_record(c.id, group)?.is_some()
            {
                return Err(StoreError::AlreadyExists("record with a canary's id"));
            }
        }
        for c in canaries {
            group.set_meta(canary_key(c.id), Some(encode_canary(c)));
        }
        group.canaries.extend(mine);
        Ok(())
    }

    /// Records (index entries) using a key version, counting the group.
    fn usage_of(&self, purpose: KeyPurpose, version: KeyVersion, group: &Group) -> u64 {
        let stored = self
            .usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(purpose, version))
            .copied()
            .unwrap_or(0);
        let pending = group.deltas.get(&(purpose, version)).copied().unwrap_or(0);
        stored.saturating_add_signed(pending)
    }

    /// Stages a key change: all or nothing.
    fn stage_key_change(&self, change: KeyChange, group: &mut Group) -> Result<(), StoreError> {
        match change {
            KeyChange::Add { keys, at_unix_ms } => {
                self.stage_keys(&keys, group)?;
                for k in &keys {
                    group.changes.meta.push(MetaOp {
                        key: key_info_key(k.purpose, k.version),
                        value: Some(encode_key_info(at_unix_ms, None)),
                    });
                }
            }
            KeyChange::Retire {
                purpose,
                version,
                at_unix_ms,
            } => {
                if matches!(purpose, KeyPurpose::Token | KeyPurpose::Audit) {
                    // Every token is the token key's, every file of the
                    // trail the audit key's: they are never destroyed.
                    return Err(StoreError::StaleKey {
                        purpose: purpose_name(purpose),
                        version: version.0,
                    });
                }
                let id = key_id(purpose, version);
                let exists = match group.key_changes.get(&id) {
                    Some(added) => *added,
                    None => self.keys.contains_key(id).map_err(backend)?,
                };
                if !exists {
                    return Err(StoreError::StaleKey {
                        purpose: purpose_name(purpose),
                        version: version.0,
                    });
                }
                let count = self.usage_of(purpose, version, group);
                if count > 0 {
                    return Err(StoreError::KeyInUse {
                        purpose: purpose_name(purpose),
                        version: version.0,
                        count,
                    });
                }
                let info = key_info_key(purpose, version);
                let created = match self.meta.get(&info).map_err(backend)? {
                    Some(b) => decode_key_info(&b)?.0,
                    None => 0,
                };
                group.key_changes.insert(key_id(purpose, version), false);
                group.changes.dropped_keys.push((purpose, version));
                group.changes.meta.push(MetaOp {
                    key: info,
                    value: Some(encode_key_info(created, Some(at_unix_ms.max(1)))),
                });
            }
            KeyChange::Rewrap {
                keys,
                replaced,
                at_unix_ms,
                new_key_file,
            } => {
                let named: HashSet<[u8; 5]> =
                    keys.iter().map(|k| key_id(k.purpose, k.version)).collect();
                let mut live = HashSet::new();
                for key in self.keys.iter().keys() {
                    let key = key.map_err(backend)?;
                    if let Ok(id) = <[u8; 5]>::try_from(&key[..]) {
                        live.insert(id);
                    }
                }
                if !group.key_changes.is_empty()
                    || !group.changes.rewrapped_keys.is_empty()
                    || named != live
                    || named.len() != keys.len()
                {
                    return Err(StoreError::KeysChanged);
                }
                group.changes.rewrapped_keys.extend(keys);
                let mut key = MASTER_PREFIX.to_vec();
                key.extend_from_slice(&replaced);
                group.changes.meta.push(MetaOp {
                    key,
                    value: Some(at_unix_ms.to_be_bytes().to_vec()),
                });
                group.changes.meta.push(MetaOp {
                    key: MASTER_FILE_KEY.to_vec(),
                    value: Some(new_key_file.into_bytes()),
                });
            }
        }
        Ok(())
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
    pub(super) fn apply(&self, batch: &Batch) -> Result<(), StorageFailure> {
        let staged = &batch.new;
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
        self.apply_moves(&batch.reindexed)?;
        let failed = |e| sled_failure("inserting logged records", &e);
        for s in staged {
            self.records
                .insert(&record_key(s.id)[..], s.record.as_slice())
                .map_err(failed)?;
        }
        for r in &batch.rewrites {
            self.records
                .insert(&record_key(r.id)[..], r.record.as_slice())
                .map_err(failed)?;
        }
        self.apply_deletes(&batch.deleted)
    }

    /// Deletes records, then their entries (idempotent, for replay too):
    /// sled's own flush may leave an entry without its record (salvage
    /// removes those), never a record without its entry. A deterministic
    /// mapping goes only if it still names the record (a new record of the
    /// same value may have taken it).
    fn apply_deletes(&self, deleted: &[Deleted]) -> Result<(), StorageFailure> {
        let failed = |e| sled_failure("applying logged deletions", &e);
        for d in deleted {
            self.records.remove(&record_key(d.id)[..]).map_err(failed)?;
            for (index, deterministic) in &d.entries {
                if *deterministic {
                    self.deterministic
                        .compare_and_swap(
                            index_prefix(index),
                            Some(&record_key(d.id)[..]),
                            None as Option<&[u8]>,
                        )
                        .map_err(failed)?
                        .ok();
                } else {
                    self.blind_index
                        .remove(&index_entry(index, d.id)[..])
                        .map_err(failed)?;
                }
            }
            if let Some(at) = d.expires_unix_ms {
                self.expiry
                    .remove(&expiry_key(at, d.id)[..])
                    .map_err(failed)?;
            }
        }
        Ok(())
    }

    /// Moves index entries: the new one goes in before the old one goes,
    /// so a lookup always finds the record under one of them.
    fn apply_moves(&self, moves: &[Reindexed]) -> Result<(), StorageFailure> {
        let failed = |e| sled_failure("moving logged index entries", &e);
        for m in moves {
            if m.deterministic {
                let old = index_prefix(&m.old);
                self.deterministic
                    .insert(&index_prefix(&m.new)[..], &record_key(m.id)[..])
                    .map_err(failed)?;
                // Only this record's mapping goes (idempotent on replay).
                self.deterministic
                    .compare_and_swap(old, Some(&record_key(m.id)[..]), None as Option<&[u8]>)
                    .map_err(failed)?
                    .ok();
            } else {
                self.blind_index
                    .insert(&index_entry(&m.new, m.id)[..], &[][..])
                    .map_err(failed)?;
                self.blind_index
                    .remove(&index_entry(&m.old, m.id)[..])
                    .map_err(failed)?;
            }
        }
        Ok(())
    }

    /// One index insert per record: the deterministic mapping is the index
    /// entry of a deterministic record.
    fn apply_index(&self, staged: &[Staged]) -> Result<(), StorageFailure> {
        let failed = |e| sled_failure("inserting logged index entries", &e);
        for s in staged {
            if let Some(at) = encoded_record_expiry(&s.record) {
                self.expiry
                    .insert(&expiry_key(at, s.id)[..], &[][..])
                    .map_err(failed)?;
            }
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

/// Applies logged key and `meta` changes to their trees (idempotent, for
/// replay too).
fn apply_key_changes(
    keys: &sled::Tree,
    meta: &sled::Tree,
    changes: &Changes,
) -> Result<(), StorageFailure> {
    apply_keys(keys, &changes.rewrapped_keys)?;
    for (purpose, version) in &changes.dropped_keys {
        keys.remove(&key_id(*purpose, *version)[..])
            .map_err(|e| sled_failure("destroying a retired key", &e))?;
    }
    for m in &changes.meta {
        match &m.value {
            Some(v) => meta.insert(&m.key[..], &v[..]).map(|_| ()),
            None => meta.remove(&m.key[..]).map(|_| ()),
        }
        .map_err(|e| sled_failure("writing logged key facts and job states", &e))?;
    }
    Ok(())
}

impl SledWriter {
    /// The key-version counters, shared with readers.
    pub(super) fn usage(&self) -> Arc<Mutex<KeyUsage>> {
        self.usage.clone()
    }

    /// The frozen callers, shared with readers.
    pub(super) fn frozen(&self) -> Frozen {
        self.frozen.clone()
    }

    /// The canaries' ids, shared with readers.
    pub(super) fn canary_ids(&self) -> CanaryIds {
        self.canary_ids.clone()
    }

    /// The canaries' ids, from their keys in `meta` (after a replay). A
    /// key that is not a record id names no token: skipped (the integrity
    /// check reports it).
    pub(super) fn load_canary_ids(&mut self) -> Result<(), StoreError> {
        let mut ids = HashSet::new();
        for key in self.meta.scan_prefix(CANARY_PREFIX).keys() {
            let key = key.map_err(backend)?;
            if let Ok(id) = record_id_from(&key[CANARY_PREFIX.len()..]) {
                ids.insert(id);
            }
        }
        *self.canary_ids.write().unwrap_or_else(|p| p.into_inner()) = ids;
        Ok(())
    }

    /// The frozen callers, from their freezes in `meta` (after a replay).
    /// A freeze that does not decode keeps its caller frozen (fail closed:
    /// an operator unfreezes it), with a warning; the integrity check
    /// reports it too.
    pub(super) fn load_freezes(&mut self) -> Result<(), StoreError> {
        let mut frozen = BTreeMap::new();
        for entry in self.meta.scan_prefix(FREEZE_PREFIX) {
            let (key, value) = entry.map_err(backend)?;
            let Ok(caller) = freeze_caller(&key) else {
                // No caller identity (a `String`) can match it.
                tracing::warn!("a stored freeze names a caller that is not UTF-8: ignored");
                continue;
            };
            let freeze = decode_freeze(caller.clone(), &value).unwrap_or_else(|e| {
                tracing::warn!(
                    caller,
                    error = %e,
                    "a stored freeze does not decode: the caller stays frozen until an \
                     operator unfreezes it"
                );
                Freeze {
                    caller: caller.clone(),
                    since_unix_ms: 0,
                    reason: CORRUPT_FREEZE.to_owned(),
                    by: "store".to_owned(),
                }
            });
            frozen.insert(caller, freeze);
        }
        *self.frozen.write().unwrap_or_else(|p| p.into_inner()) = frozen;
        Ok(())
    }

    /// Starts counting from the stored counters: `Some((generation,
    /// usage))` as the last checkpoint wrote them. Frames replayed later are
    /// added unless the counters already include their generation.
    pub(super) fn set_usage(&mut self, usage: KeyUsage) {
        *self.usage.lock().unwrap_or_else(|p| p.into_inner()) = usage;
    }

    /// Checkpoints, so that the log moves to its next generation.
    pub(super) fn fresh_generation(&mut self) -> Result<(), StoreError> {
        self.checkpoint().map_err(StoreError::Backend)
    }

    /// The retired key versions, from their facts in `meta` (after a
    /// replay).
    pub(super) fn load_retired_keys(&mut self) -> Result<(), StoreError> {
        self.retired.clear();
        for entry in self.meta.scan_prefix(KEY_INFO_PREFIX) {
            let (key, value) = entry.map_err(backend)?;
            if decode_key_info(&value)?.1.is_none() {
                continue;
            }
            if let Ok(id) = <[u8; 5]>::try_from(&key[KEY_INFO_PREFIX.len()..]) {
                self.retired.insert(id);
            }
        }
        Ok(())
    }

    /// Makes the trees durable on their own, then empties the log. Waits
    /// for every logged group to be applied first: the log is their only
    /// durable copy until this flush.
    fn checkpoint(&mut self) -> Result<(), StorageFailure> {
        let (start, log_bytes) = (std::time::Instant::now(), self.wal.len());
        self.applier.shared().wait_until(0)?;
        let applied = start.elapsed();
        #[cfg(test)]
        Faults::take(&self.faults.checkpoint, "checkpoint")?;
        // The counters as of every frame of this generation, flushed with
        // the trees they count.
        let counts = encode_counts(
            self.wal.generation(),
            &self.usage.lock().unwrap_or_else(|p| p.into_inner()),
        );
        self.meta
            .insert(COUNTS_KEY, counts)
            .map_err(|e| sled_failure("writing the key-version counters", &e))?;
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

    /// A snapshot of every tree (see [`super::backup`]), once every logged
    /// group is applied; writes wait meanwhile (this is the commit thread).
    fn snapshot(&self, files: Vec<std::fs::File>) -> Result<super::backup::Snapshot, StoreError> {
        let start = std::time::Instant::now();
        self.applier
            .shared()
            .wait_until(0)
            .map_err(StoreError::Backend)?;
        let snapshot = super::backup::write_snapshot(&self.db, files)?;
        tracing::info!(
            records = snapshot.records(),
            bytes = snapshot.size(),
            writes_paused_ms = start.elapsed().as_millis() as u64,
            "backup snapshot taken"
        );
        Ok(snapshot)
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
    pub(super) fn replay(&mut self, frames: &[Vec<u8>], counted: bool) -> Result<(), StoreError> {
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
            apply_key_changes(&self.keys, &self.meta, &frame.changes)
                .map_err(StoreError::Backend)?;
            if !counted {
                let deltas = frame_deltas(&frame.records, &frame.changes);
                add_deltas(
                    &mut self.usage.lock().unwrap_or_else(|p| p.into_inner()),
                    &deltas,
                );
            }
            let batch = Batch {
                new: frame.records,
                rewrites: frame.changes.rewrites,
                reindexed: frame.changes.reindexed,
                deleted: frame.changes.deleted,
            };
            self.trees.apply(&batch).map_err(StoreError::Backend)?;
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
            .append(&encode_frame(
                group.ceiling,
                &group.keys,
                &group.staged,
                &group.changes,
            ))
            .map_err(|e| StorageFailure::of_error("appending to the write-ahead log", &e))
    }

    /// What follows the sync of a group's frame: make it visible (records
    /// to the overlay and the apply thread, keys into their tree), then
    /// checkpoint when due. Both visibility steps are tried even if one
    /// fails (reads find as much as possible); a failure of either skips
    /// the checkpoint, so the log keeps the group.
    fn after_sync(&mut self, group: Group) -> Result<(), StorageFailure> {
        for (id, live) in &group.key_changes {
            if *live {
                self.retired.remove(id);
            } else {
                self.retired.insert(*id);
            }
        }
        let keys_written = !group.keys.is_empty()
            || !group.changes.rewrapped_keys.is_empty()
            || !group.changes.dropped_keys.is_empty();
        #[cfg(test)]
        let injected = Faults::take(
            &self.faults.publish,
            "handing logged writes to the apply thread",
        );
        #[cfg(not(test))]
        let injected = Ok(());
        let Changes {
            rewrites,
            reindexed,
            rewrapped_keys,
            dropped_keys,
            meta,
            deleted,
        } = group.changes;
        let published = injected.and_then(|()| {
            self.applier.publish(Batch {
                new: group.staged,
                rewrites,
                reindexed,
                deleted,
            })
        });
        // The counters and the job states change together, under the
        // counters' lock: a reader of both (`job_progress`) sees one group
        // whole or not at all.
        let usage = self.usage.clone();
        let mut counters = usage.lock().unwrap_or_else(|p| p.into_inner());
        let keys = apply_keys(&self.keys, &group.keys).and_then(|()| {
            apply_key_changes(
                &self.keys,
                &self.meta,
                &Changes {
                    rewrapped_keys,
                    dropped_keys,
                    meta,
                    ..Changes::default()
                },
            )
        });
        add_deltas(&mut counters, &group.deltas);
        drop(counters);
        // Acknowledged, so in force, even if the `meta` insert failed (the
        // next start replays the frame).
        if !group.canaries.is_empty() {
            self.canary_ids
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .extend(&group.canaries);
        }
        if !group.freezes.is_empty() {
            let mut frozen = self.frozen.write().unwrap_or_else(|p| p.into_inner());
            for (caller, freeze) in group.freezes {
                match freeze {
                    Some(f) => frozen.insert(caller, f),
                    None => frozen.remove(&caller),
                };
            }
        }
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
                Write::Rewrites(rewrites, job) => self
                    .stage_rewrites(rewrites, job, &mut group)
                    .map(Written::Applied),
                Write::Reindex(moves, job) => self
                    .stage_reindex(moves, job, &mut group)
                    .map(Written::Applied),
                Write::KeyChange(change) => self
                    .stage_key_change(change, &mut group)
                    .map(|()| Written::Changed),
                Write::JobState(job, state) => {
                    group.changes.meta.push(job_op(job, state));
                    Ok(Written::Changed)
                }
                Write::Charge(charges) => self
                    .stage_charges(&charges, &mut group)
                    .map(Written::Charged),
                Write::Freeze(freeze) => Ok(Written::Freeze(self.stage_freeze(freeze, &mut group))),
                Write::Unfreeze(caller) => {
                    Ok(Written::Freeze(self.stage_unfreeze(caller, &mut group)))
                }
                Write::Canaries(canaries) => self
                    .stage_canaries(&canaries, &mut group)
                    .map(|()| Written::Changed),
                Write::ResetCounters(names) => {
                    for name in names {
                        group.set_meta(counter_key(&name), None);
                    }
                    Ok(Written::Changed)
                }
                Write::PutGrant(grant, expect) => self
                    .stage_grant(*grant, expect, &mut group)
                    .map(|put| Written::Applied(vec![put])),
                Write::Delete(deletions) => self
                    .stage_deletes(deletions, &mut group)
                    .map(Written::Applied),
                Write::Snapshot(files) => self.snapshot(files).map(Written::Snapshot),
            })
            .collect();
        if group.staged.is_empty()
            && group.keys.is_empty()
            && group.ceiling.is_none()
            && group.changes.is_empty()
        {
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
            Write::Ceiling(_) => FRAME_CEILING_BYTES,
            Write::Rewrites(rewrites, job) => {
                rewrites
                    .iter()
                    .map(|r| frame_rewrite_bytes(&r.record))
                    .sum::<usize>()
                    + job.as_ref().map_or(0, |(_, s)| 64 + s.len())
            }
            Write::Reindex(moves, job) => {
                moves.len() * (1 + 16 + 36 + 36 + 1) + job.as_ref().map_or(0, |(_, s)| 64 + s.len())
            }
            Write::KeyChange(KeyChange::Add { keys, .. } | KeyChange::Rewrap { keys, .. }) => {
                keys.iter().map(|k| frame_key_bytes(k) + 64).sum()
            }
            Write::KeyChange(KeyChange::Retire { .. }) => 128,
            Write::JobState(_, state) => 64 + state.len(),
            Write::Charge(charges) => charges
                .iter()
                .map(|c| frame_meta_bytes(COUNTER_PREFIX.len() + c.counter.len(), Some(17)))
                .sum(),
            Write::Freeze(f) => frame_meta_bytes(
                FREEZE_PREFIX.len() + f.caller.len(),
                Some(encoded_freeze_bytes(f)),
            ),
            Write::Unfreeze(caller) => frame_meta_bytes(FREEZE_PREFIX.len() + caller.len(), None),
            Write::Canaries(canaries) => canaries
                .iter()
                .map(|c| frame_meta_bytes(CANARY_PREFIX.len() + 16, Some(encoded_canary_bytes(c))))
                .sum(),
            Write::ResetCounters(names) => names
                .iter()
                .map(|n| frame_meta_bytes(COUNTER_PREFIX.len() + n.len(), None))
                .sum(),
            Write::PutGrant(grant, _) => {
                frame_meta_bytes(GRANT_PREFIX.len() + 16, Some(encode_grant(grant).len()))
            }
            // At most one entry per record is logged; room for all named.
            Write::Delete(deletions) => deletions
                .iter()
                .map(|d| {
                    frame_delete_bytes(d.indexes.len().min(super::layout::MAX_DELETED_ENTRIES))
                })
                .sum(),
            Write::Snapshot(_) => 0,
        }
    }

    fn close(&mut self) {
        if self.stopped {
            tracing::warn!("storage failed earlier: no checkpoint at close; the next start replays the write-ahead log");
            return;
        }
        match self.checkpoint() {
            Ok(()) => tracing::info!("storage closed: checkpointed (the write-ahead log is empty)"),
            Err(e) => {
                tracing::error!(error = %e, "checkpoint at close failed; the next start replays the log")
            }
        }
    }
}
