//! Applying logged writes to the trees off the commit path.
//!
//! Once a group's write-ahead-log frame is synced, the group is durable and
//! its callers can be answered; inserting it into the trees is only needed
//! so reads find it. So the commit thread hands each synced group to an
//! apply thread and goes on to stage and sync the next group while the
//! previous one is inserted: the disk wait of one group overlaps the tree
//! inserts of the other.
//!
//! Until a group is applied its entries sit in an [`Unapplied`] overlay
//! that every lookup consults before the trees. The apply thread inserts
//! into the trees first and only then removes the entries from the overlay,
//! so a lookup that misses the overlay and then reads the trees never
//! misses an acknowledged write.
//!
//! Bounds: the commit thread waits before staging while more than one group
//! is still unapplied, and a checkpoint (which empties the log) first waits
//! for every group to be applied. So the overlay never holds more than the
//! log since the last checkpoint (a few MiB), not per-token state.
//!
//! A failed apply is fatal for writes, like a failed sync: the group stays
//! in the overlay (reads still find it; the log replays it at the next
//! start) and [`Unapplied::failure`] reports the error.
//!
//! A rewritten record enters the overlay with its new bytes, and a deleted
//! one as a tombstone, or a lookup could read the old one from a tree the
//! apply thread has not reached yet. A record has exactly one index entry,
//! so a tombstone hides its entries too: lookups by index drop the ids
//! tombstoned. Such a lookup reads the trees while it holds the overlay
//! ([`Unapplied::read`]): the apply thread removes a tombstone only after
//! the record and its entries have left the trees, so an entry the lookup
//! found in a tree is either still there or still tombstoned.

use super::layout::index_prefix;
use super::worker::Worker;
use super::{StorageFailure, StoreError};
use crate::crypto::{BlindIndex, KeyVersion};
use crate::domain::RecordId;
use std::collections::HashMap;
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, RwLock};

/// A record decided on the commit thread: logged, then applied.
#[derive(Clone, Debug)]
pub(super) struct Staged {
    pub(super) id: RecordId,
    pub(super) index: BlindIndex,
    pub(super) deterministic: bool,
    /// The encoded record, as the `records` tree stores it.
    pub(super) record: Vec<u8>,
}

/// A record re-sealed under data-key version `to` (it was under `from`):
/// decided on the commit thread (compare-and-set on `from`), logged, then
/// applied.
#[derive(Clone, Debug)]
pub(super) struct Rewritten {
    pub(super) id: RecordId,
    pub(super) from: KeyVersion,
    pub(super) to: KeyVersion,
    /// The encoded record, as the `records` tree stores it.
    pub(super) record: Vec<u8>,
}

/// A record's index entry moved from `old` to `new` (an index rebuild).
#[derive(Clone, Debug)]
pub(super) struct Reindexed {
    pub(super) id: RecordId,
    pub(super) old: BlindIndex,
    pub(super) new: BlindIndex,
    pub(super) deterministic: bool,
}

/// A record deleted, with what it held: decided on the commit thread (the
/// record as it stood, its one index entry), logged, then applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Deleted {
    pub(super) id: RecordId,
    /// The data-key version the record was sealed under.
    pub(super) version: KeyVersion,
    /// Its expiry (its entry in the expiry tree), if it had one.
    pub(super) expires_unix_ms: Option<u64>,
    /// Its index entries (one, unless the trees were damaged), each with
    /// whether it is the value's deterministic mapping.
    pub(super) entries: Vec<(BlindIndex, bool)>,
}

/// One synced group's record changes, as the apply thread takes them.
#[derive(Clone, Debug, Default)]
pub(super) struct Batch {
    pub(super) new: Vec<Staged>,
    pub(super) rewrites: Vec<Rewritten>,
    pub(super) reindexed: Vec<Reindexed>,
    pub(super) deleted: Vec<Deleted>,
}

impl Batch {
    pub(super) fn is_empty(&self) -> bool {
        self.new.is_empty()
            && self.rewrites.is_empty()
            && self.reindexed.is_empty()
            && self.deleted.is_empty()
    }
}

/// A record as the overlay holds it: its encoded bytes, or a tombstone.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Pending {
    Stored(Vec<u8>),
    Deleted,
}

/// Entries that are durable (logged) but not yet in the trees.
#[derive(Default)]
pub(super) struct Overlay {
    /// `None`: a tombstone.
    records: HashMap<RecordId, Option<Vec<u8>>>,
    deterministic: HashMap<[u8; 36], RecordId>,
    index: HashMap<[u8; 36], Vec<RecordId>>,
    /// Records whose index entry an unapplied move takes elsewhere, with
    /// how many such moves are pending.
    moved: HashMap<RecordId, usize>,
}

impl Overlay {
    /// Record `id` as unapplied writes leave it (`None`: no unapplied write
    /// touches it).
    pub(super) fn record(&self, id: RecordId) -> Option<Pending> {
        self.records.get(&id).map(|r| match r {
            Some(bytes) => Pending::Stored(bytes.clone()),
            None => Pending::Deleted,
        })
    }

    /// Whether record `id` is deleted by an unapplied write.
    pub(super) fn is_deleted(&self, id: RecordId) -> bool {
        matches!(self.records.get(&id), Some(None))
    }

    /// The unapplied deterministic record of a blind index (tombstoned ones
    /// included: see [`Overlay::is_deleted`]).
    pub(super) fn deterministic(&self, prefix: &[u8; 36]) -> Option<RecordId> {
        self.deterministic.get(prefix).copied()
    }

    /// Whether an unapplied move names record `id` (its entry in the
    /// trees is on its way to another index).
    pub(super) fn has_moved_target(&self, id: RecordId) -> bool {
        self.moved.contains_key(&id)
    }

    /// Unapplied records under a blind index (tombstoned ones included).
    pub(super) fn records_by_index(&self, prefix: &[u8; 36]) -> &[RecordId] {
        self.index.get(prefix).map_or(&[], Vec::as_slice)
    }

    fn add(&mut self, group: &Batch) {
        for s in &group.new {
            self.records.insert(s.id, Some(s.record.clone()));
            self.add_index(s.id, &s.index, s.deterministic);
        }
        for r in &group.rewrites {
            self.records.insert(r.id, Some(r.record.clone()));
        }
        // After the group's rewrites: a record rewritten and deleted in one
        // group is deleted.
        for d in &group.deleted {
            self.records.insert(d.id, None);
        }
        // The former entry stays in the tree until applied: both name the
        // same record meanwhile.
        for r in &group.reindexed {
            self.add_index(r.id, &r.new, r.deterministic);
            *self.moved.entry(r.id).or_default() += 1;
        }
    }

    fn add_index(&mut self, id: RecordId, index: &BlindIndex, deterministic: bool) {
        let prefix = index_prefix(index);
        if deterministic {
            self.deterministic.insert(prefix, id);
        }
        self.index.entry(prefix).or_default().push(id);
    }

    /// Removes an applied group's entries, each only if a later group did
    /// not replace it meanwhile (a record rewritten while its insert was
    /// applying keeps the newer bytes here until those are applied too).
    fn remove(&mut self, group: &Batch) {
        let records = group
            .new
            .iter()
            .map(|s| (s.id, Some(&s.record)))
            .chain(group.rewrites.iter().map(|r| (r.id, Some(&r.record))))
            .chain(group.deleted.iter().map(|d| (d.id, None)));
        for (id, bytes) in records {
            if self.records.get(&id).map(Option::as_ref) == Some(bytes) {
                self.records.remove(&id);
            }
        }
        for s in &group.new {
            self.remove_index(s.id, &s.index, s.deterministic);
        }
        for r in &group.reindexed {
            self.remove_index(r.id, &r.new, r.deterministic);
            if let Some(n) = self.moved.get_mut(&r.id) {
                *n -= 1;
                if *n == 0 {
                    self.moved.remove(&r.id);
                }
            }
        }
    }

    fn remove_index(&mut self, id: RecordId, index: &BlindIndex, deterministic: bool) {
        let prefix = index_prefix(index);
        if deterministic && self.deterministic.get(&prefix) == Some(&id) {
            self.deterministic.remove(&prefix);
        }
        if let Some(tokens) = self.index.get_mut(&prefix) {
            if let Some(at) = tokens.iter().position(|t| *t == id) {
                tokens.remove(at);
            }
            if tokens.is_empty() {
                self.index.remove(&prefix);
            }
        }
    }
}

#[derive(Default)]
struct Progress {
    /// Groups handed to the apply thread and not yet applied.
    queued: usize,
    failure: Option<StorageFailure>,
}

/// What has been acknowledged but not yet applied; shared by the commit
/// thread, the apply thread and readers.
#[derive(Default)]
pub(super) struct Unapplied {
    overlay: RwLock<Overlay>,
    progress: Mutex<Progress>,
    changed: Condvar,
}

impl Unapplied {
    // The locks guard plain maps and counters that no code path leaves
    // half-updated, so a poisoned lock (a panic elsewhere) is still sound.
    fn overlay(&self) -> std::sync::RwLockReadGuard<'_, Overlay> {
        self.overlay.read().unwrap_or_else(|p| p.into_inner())
    }

    fn overlay_mut(&self) -> std::sync::RwLockWriteGuard<'_, Overlay> {
        self.overlay.write().unwrap_or_else(|p| p.into_inner())
    }

    fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record `id` as unapplied writes leave it (`None`: read the tree).
    pub(super) fn record(&self, id: RecordId) -> Option<Pending> {
        self.overlay().record(id)
    }

    /// Whether nothing is waiting to be applied.
    pub(super) fn is_empty(&self) -> bool {
        self.overlay().records.is_empty()
    }

    /// Runs `f` with the overlay held: the apply thread cannot take a
    /// tombstone away meanwhile, so a tree read inside `f` that finds an
    /// entry of a deleted record also finds its tombstone. `f` must not
    /// call back into this `Unapplied` (the lock is not re-entrant).
    pub(super) fn read<R>(&self, f: impl FnOnce(&Overlay) -> R) -> R {
        f(&self.overlay())
    }

    /// Why applying stopped, if it did.
    pub(super) fn failure(&self) -> Option<StorageFailure> {
        self.progress().failure.clone()
    }

    /// Stops applying: waiters and later groups fail with `failure`.
    fn fail(&self, failure: StorageFailure) {
        self.progress().failure.get_or_insert(failure);
        self.changed.notify_all();
    }

    /// Blocks until at most `queued` groups are unapplied; `Err` once an
    /// apply has failed.
    pub(super) fn wait_until(&self, queued: usize) -> Result<(), StorageFailure> {
        let mut progress = self.progress();
        loop {
            if let Some(e) = &progress.failure {
                return Err(StorageFailure::new(
                    e.cause,
                    format!("applying logged writes failed: {}", e.detail),
                ));
            }
            if progress.queued <= queued {
                return Ok(());
            }
            progress = self
                .changed
                .wait(progress)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// The apply thread and the handle that feeds it.
pub(super) struct Applier {
    queue: Option<mpsc::Sender<Batch>>,
    thread: Worker,
    shared: Arc<Unapplied>,
}

impl Applier {
    /// Starts the apply thread; `apply` inserts one group into the trees
    /// (idempotently).
    pub(super) fn start<F>(apply: F) -> Result<Self, StoreError>
    where
        F: FnMut(&Batch) -> Result<(), StorageFailure> + Send + 'static,
    {
        let shared = Arc::new(Unapplied::default());
        let (tx, rx) = mpsc::channel();
        let (thread_shared, panic_shared) = (shared.clone(), shared.clone());
        // A panic is reported as a failure, so the commit thread and
        // checkpoints waiting on it fail instead of waiting forever.
        let thread = Worker::spawn(
            "fieldvault-apply",
            move || run(rx, apply, &thread_shared),
            move || panic_shared.fail(StorageFailure::internal("the apply thread panicked")),
        )?;
        Ok(Self {
            queue: Some(tx),
            thread,
            shared,
        })
    }

    pub(super) fn shared(&self) -> &Arc<Unapplied> {
        &self.shared
    }

    /// Makes a logged group visible to lookups and queues it for applying.
    /// A failure stops applying (see [`Unapplied::wait_until`]): the group
    /// stays in the overlay and the log.
    pub(super) fn publish(&self, group: Batch) -> Result<(), StorageFailure> {
        if group.is_empty() {
            return Ok(());
        }
        self.shared.overlay_mut().add(&group);
        self.shared.progress().queued += 1;
        let sent = match &self.queue {
            Some(queue) => queue.send(group).map_err(|_| "the apply thread is gone"),
            None => Err("the apply thread is stopping"),
        };
        sent.map_err(|e| {
            let failure = StorageFailure::internal(e);
            self.shared.fail(failure.clone());
            failure
        })
    }
}

fn run<F>(rx: mpsc::Receiver<Batch>, mut apply: F, shared: &Unapplied)
where
    F: FnMut(&Batch) -> Result<(), StorageFailure>,
{
    while let Ok(group) = rx.recv() {
        if shared.failure().is_some() {
            // Stopped: later groups stay in the overlay and the log.
            continue;
        }
        let outcome = apply(&group);
        if outcome.is_ok() {
            shared.overlay_mut().remove(&group);
        }
        let mut progress = shared.progress();
        match outcome {
            Ok(()) => progress.queued -= 1,
            Err(e) => {
                tracing::error!(error = %e, "applying logged writes failed: refusing writes from now on");
                progress.failure = Some(e);
            }
        }
        drop(progress);
        shared.changed.notify_all();
    }
}

impl Drop for Applier {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has applied what was
        // queued; joining releases its tree handles.
        self.queue.take();
        self.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staged(mac: u8, deterministic: bool) -> Staged {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Staged {
            id: RecordId::new(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed), 1),
            index: BlindIndex {
                version: KeyVersion(1),
                mac: [mac; 32],
            },
            deterministic,
            record: vec![mac; 8],
        }
    }

    /// An apply function that waits for a go-ahead per group and records
    /// what it applied.
    #[allow(clippy::type_complexity)]
    fn gated(
        fail: bool,
    ) -> (
        impl FnMut(&Batch) -> Result<(), StorageFailure> + Send + 'static,
        mpsc::Sender<()>,
        Arc<Mutex<Vec<RecordId>>>,
    ) {
        let (go, wait) = mpsc::channel::<()>();
        let applied = Arc::new(Mutex::new(Vec::new()));
        let seen = applied.clone();
        let apply = move |group: &Batch| {
            let _ = wait.recv();
            if fail {
                return Err(StorageFailure::new(
                    crate::store::FailureCause::StorageFull,
                    "inserting into sled",
                ));
            }
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.extend(group.new.iter().map(|s| s.id));
            Ok(())
        };
        (apply, go, applied)
    }

    fn batch(new: Vec<Staged>) -> Batch {
        Batch {
            new,
            ..Batch::default()
        }
    }

    fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_published_delete_hides_its_record_until_applied_even_behind_its_own_insert() {
        let (apply, go, _) = gated(false);
        let applier = ok(Applier::start(apply));
        let u = applier.shared().clone();
        let s = staged(4, true);
        // The record's insert is still unapplied when its delete comes.
        ok(applier.publish(batch(vec![s.clone()])));
        ok(applier.publish(Batch {
            deleted: vec![Deleted {
                id: s.id,
                version: KeyVersion(1),
                expires_unix_ms: None,
                entries: vec![(s.index, true)],
            }],
            ..Batch::default()
        }));
        assert_eq!(u.record(s.id), Some(Pending::Deleted));
        assert!(u.read(|o| o.is_deleted(s.id)));
        // The insert's apply leaves the tombstone, which is newer.
        ok(go.send(()));
        ok(u.wait_until(1));
        assert_eq!(u.record(s.id), Some(Pending::Deleted));
        ok(go.send(()));
        ok(u.wait_until(0));
        assert_eq!(u.record(s.id), None, "the trees have it deleted now");
        assert!(u.is_empty());
    }

    #[test]
    fn published_entries_are_found_until_applied_then_leave_the_overlay() {
        let (apply, go, applied) = gated(false);
        let applier = ok(Applier::start(apply));
        let (random, det) = (staged(1, false), staged(2, true));
        let same_value = staged(2, false);
        ok(applier.publish(batch(vec![random.clone(), det.clone(), same_value.clone()])));
        let u = applier.shared().clone();
        assert_eq!(u.record(random.id), Some(Pending::Stored(vec![1; 8])));
        assert!(u.record(det.id).is_some());
        let prefix = index_prefix(&det.index);
        assert_eq!(u.read(|o| o.deterministic(&prefix)), Some(det.id));
        assert_eq!(
            u.read(|o| o.deterministic(&index_prefix(&random.index))),
            None
        );
        assert_eq!(
            u.read(|o| o.records_by_index(&prefix).to_vec()),
            vec![det.id, same_value.id]
        );

        ok(go.send(()));
        ok(u.wait_until(0));
        assert_eq!(applied.lock().map(|a| a.len()).unwrap_or(0), 3);
        assert_eq!(u.record(random.id), None, "applied entries leave");
        assert_eq!(u.read(|o| o.deterministic(&prefix)), None);
        assert!(u.read(|o| o.records_by_index(&prefix).to_vec()).is_empty());
        assert!(u.failure().is_none());
    }

    #[test]
    fn a_rewrite_published_while_its_insert_is_applying_keeps_the_newer_bytes_visible() {
        let (apply, go, _) = gated(false);
        let applier = ok(Applier::start(apply));
        // Dropped before the applier, so a failed assertion ends the test
        // instead of leaving the apply thread waiting for a go-ahead.
        let go = go;
        let inserted = staged(5, false);
        ok(applier.publish(batch(vec![inserted.clone()])));
        let newer = vec![6; 8];
        ok(applier.publish(Batch {
            rewrites: vec![Rewritten {
                id: inserted.id,
                from: KeyVersion(1),
                to: KeyVersion(2),
                record: newer.clone(),
            }],
            ..Batch::default()
        }));
        let u = applier.shared().clone();
        assert_eq!(u.record(inserted.id), Some(Pending::Stored(newer.clone())));
        // The insert is applied (its older bytes reach the tree); the
        // rewrite is not yet.
        ok(go.send(()));
        ok(u.wait_until(1));
        assert_eq!(
            u.record(inserted.id),
            Some(Pending::Stored(newer)),
            "the older group's apply leaves the newer bytes in the overlay"
        );
        assert!(!u.is_empty());
        ok(go.send(()));
        ok(u.wait_until(0));
        assert_eq!(
            u.record(inserted.id),
            None,
            "gone once the rewrite is applied"
        );
        assert!(u.is_empty());
    }

    #[test]
    fn a_moved_index_entry_is_found_under_its_new_index_until_applied() {
        let (apply, go, _) = gated(false);
        let applier = ok(Applier::start(apply));
        let go = go;
        let (random, det) = (staged(7, false), staged(8, true));
        let moved = |s: &Staged, mac: u8| Reindexed {
            id: s.id,
            old: s.index,
            new: BlindIndex {
                version: KeyVersion(2),
                mac: [mac; 32],
            },
            deterministic: s.deterministic,
        };
        let moves = vec![moved(&random, 9), moved(&det, 10)];
        ok(applier.publish(Batch {
            reindexed: moves.clone(),
            ..Batch::default()
        }));
        let u = applier.shared().clone();
        let (random_new, det_new) = (index_prefix(&moves[0].new), index_prefix(&moves[1].new));
        assert_eq!(
            u.read(|o| o.records_by_index(&random_new).to_vec()),
            vec![random.id]
        );
        assert_eq!(u.read(|o| o.deterministic(&random_new)), None);
        assert_eq!(
            u.read(|o| o.records_by_index(&det_new).to_vec()),
            vec![det.id]
        );
        assert_eq!(u.read(|o| o.deterministic(&det_new)), Some(det.id));
        ok(go.send(()));
        ok(u.wait_until(0));
        assert!(u
            .read(|o| o.records_by_index(&random_new).to_vec())
            .is_empty());
        assert!(u.read(|o| o.records_by_index(&det_new).to_vec()).is_empty());
        assert_eq!(u.read(|o| o.deterministic(&det_new)), None);
    }

    #[test]
    fn a_failed_apply_is_reported_and_keeps_its_entries_readable() {
        let (apply, go, _) = gated(true);
        let applier = ok(Applier::start(apply));
        let s = staged(3, false);
        ok(applier.publish(batch(vec![s.clone()])));
        ok(go.send(()));
        let u = applier.shared().clone();
        let err = u
            .wait_until(0)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with("storage full"), "{err}");
        assert!(u.failure().is_some());
        assert_eq!(
            u.record(s.id),
            Some(Pending::Stored(vec![3; 8])),
            "still readable"
        );
    }

    #[test]
    fn a_panicking_apply_thread_fails_waiters_instead_of_hanging_them() {
        let applier = ok(Applier::start(|_: &Batch| -> Result<(), StorageFailure> {
            panic!("sled bug (expected in this test)")
        }));
        ok(applier.publish(batch(vec![staged(4, false)])));
        let err = applier
            .shared()
            .wait_until(0)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("panicked"), "{err}");
    }
}
