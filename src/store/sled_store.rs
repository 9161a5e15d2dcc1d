//! The embedded sled backend: [`SledStore`] and its [`Store`] methods.
//!
//! The parts: [`layout`](super::layout) (tree keys and byte encodings),
//! [`writer`](super::writer) (the commit thread's writer: log, apply,
//! checkpoint, replay), [`integrity`](super::integrity) (the check).
//! Reads consult the overlay of acknowledged but unapplied writes first,
//! then the trees.

use super::apply::{Applier, Pending, Unapplied};
use super::file::{FileSystem, RealFs};
use super::grant_layout::{decode_grant, decode_grant_without_tokens, grant_key, GRANT_PREFIX};
use super::group_commit::GroupCommit;
use super::integrity;
use super::layout::{
    backend, canary_key, counter_name, data_file_path, decode_canary, decode_counter,
    decode_counts, decode_key, decode_key_info, decode_record, expiry_from, expiry_key,
    index_entry, index_from, index_prefix, job_key, key_id, record_id_from, record_key,
    sled_failure, u64_from, Ceiling, CANARY_PREFIX, CEILING_KEY, COUNTER_PREFIX, COUNTS_KEY,
    EPOCH_PREFIX, FORMAT_KEY, KEY_INFO_PREFIX, MASTER_FILE_KEY, MASTER_PREFIX, OLD_LAYOUT,
    STORE_FORMAT, WAL_FILE,
};
use super::sequence::Sequence;
use super::wal::{Wal, WalError};
use super::writer::{stored_ceiling, CanaryIds, Frozen, SledWriter, Trees, Write, Written};
use super::{
    Canary, Charge, Charged, CounterValue, Deletion, FailureCause, Freeze, IndexEntry,
    IntegrityReport, Job, KeyCatalog, KeyChange, KeyInfo, KeyUsage, NewRecord, RecordRead, Reindex,
    Rewrite, StorageFailure, Store, StoreError, MAX_NAME_BYTES,
};
use crate::crypto::{BlindIndex, KeyPurpose, KeyVersion, WrappedKey};
use crate::domain::grant::{Grant, GrantId};
use crate::domain::RecordId;
use async_trait::async_trait;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug)]
pub struct SledConfig {
    pub path: PathBuf,
    /// sled's page cache bound in bytes (sled's own default is 1 GiB).
    pub cache_capacity_bytes: u64,
    /// At most this many write calls wait for the commit thread at once;
    /// more wait (asynchronously) for a place. Default
    /// [`DEFAULT_MAX_QUEUED_WRITES`]; 0 counts as 1.
    pub max_queued_writes: usize,
}

#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The store's directory (backups' temporary files go there).
    dir: PathBuf,
    trees: Trees,
    keys: sled::Tree,
    meta: sled::Tree,
    /// Acknowledged writes the apply thread has not inserted yet.
    unapplied: Arc<Unapplied>,
    sequence: Sequence,
    /// Every epoch that ever handed out ids, this process's included.
    epochs: HashSet<u64>,
    /// Records (index entries) per key version (the writer counts).
    usage: Arc<Mutex<KeyUsage>>,
    /// The frozen callers (the writer keeps them).
    frozen: Frozen,
    /// The canaries' ids (the writer keeps them).
    canary_ids: CanaryIds,
    commit: GroupCommit<SledWriter>,
    #[cfg(test)]
    faults: Arc<super::writer::Faults>,
}

/// How a store reaches its files: the real ones, or in the power-loss
/// test a file system that loses unsynced writes at a power cut.
pub(crate) struct StoreIo<'a> {
    pub(crate) fs: &'a dyn FileSystem,
    /// Checkpoint threshold, when not the default.
    pub(crate) checkpoint_bytes: Option<u64>,
    /// sled's own periodic flush (default 500 ms); the power-loss test
    /// turns it off so that sled's files change only between checkpoints.
    pub(crate) sled_flush_every_ms: Option<u64>,
}

/// sled's error when another process holds the store's lock is an
/// `Other` I/O error ("could not acquire lock on …: Os { code: 11, … }"):
/// say what it means.
fn open_failure(path: &str, e: &sled::Error) -> StorageFailure {
    match e {
        sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock") => {
            StorageFailure::new(
                FailureCause::Io {
                    kind: std::io::ErrorKind::WouldBlock,
                    errno: Some(rustix::io::Errno::WOULDBLOCK.raw_os_error()),
                },
                format!(
                    "opening {path}: the store is in use by another process (another fieldvault \
                     server on the same data_dir?); stop it, or give this server its own data_dir"
                ),
            )
        }
        e => sled_failure(&format!("opening {path}"), e),
    }
}

/// Whether opening failed because another handle holds the store's lock
/// (as [`open_failure`] reports it).
fn is_lock_conflict(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Backend(StorageFailure {
            cause: FailureCause::Io {
                kind: std::io::ErrorKind::WouldBlock,
                ..
            },
            ..
        })
    )
}

impl SledStore {
    pub fn open(config: &SledConfig) -> Result<Self, StoreError> {
        Self::open_with(
            config,
            &StoreIo {
                fs: &RealFs,
                checkpoint_bytes: None,
                sled_flush_every_ms: Some(500),
            },
        )
    }

    pub(crate) fn open_with(config: &SledConfig, io: &StoreIo<'_>) -> Result<Self, StoreError> {
        let path = config.path.display();
        std::fs::create_dir_all(&config.path)
            .map_err(|e| StoreError::Backend(StorageFailure::io(&path, &e)))?;
        // A damaged log refuses the start before sled opens (and writes
        // its own files), so the store is left exactly as it was.
        // The log is read again by `Wal::open` once sled's lock is held:
        // the bytes read here, before the lock, could be stale by then (a
        // server that ran and stopped in between), and the second read of
        // at most one checkpoint's worth of log costs milliseconds.
        let store_exists = data_file_path(&config.path).exists();
        let operator_log = super::wal::check(io.fs, &config.path.join(WAL_FILE), store_exists)
            .map_err(wal_error)?
            && store_exists;
        let db = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_capacity_bytes)
            .flush_every_ms(io.sled_flush_every_ms)
            .open()
            .map_err(|e| StoreError::Backend(open_failure(&path.to_string(), &e)))?;
        let records = db.open_tree("records").map_err(backend)?;
        let blind_index = db.open_tree("blind_index").map_err(backend)?;
        let deterministic = db.open_tree("deterministic").map_err(backend)?;
        let keys = db.open_tree("keys").map_err(backend)?;
        let meta = db.open_tree("meta").map_err(backend)?;
        let expiry = db.open_tree("expiry").map_err(backend)?;
        let trees = Trees {
            records,
            blind_index,
            deterministic,
            expiry,
        };
        let (wal, frames) = Wal::open(io.fs, &config.path.join(WAL_FILE)).map_err(wal_error)?;
        let generation = wal.generation();
        // sled never fsyncs a directory: make its files' entries, and the
        // store directory's own, durable (power loss, not only kill -9).
        for dir in [Some(config.path.as_path()), config.path.parent()]
            .into_iter()
            .flatten()
        {
            io.fs.sync_dir(dir).map_err(|e| {
                StoreError::Backend(StorageFailure::io(
                    format!("fsync of directory {}", dir.display()),
                    &e,
                ))
            })?;
        }
        let apply_trees = trees.clone();
        let applier = Applier::start(move |group| apply_trees.apply(group))?;
        let unapplied = applier.shared().clone();
        let mut writer = SledWriter::new(
            db,
            io.fs
                .open_existing(&data_file_path(&config.path))
                .map_err(|e| {
                    StoreError::Backend(StorageFailure::io(
                        format!("opening {}", data_file_path(&config.path).display()),
                        &e,
                    ))
                })?,
            wal,
            trees.clone(),
            keys.clone(),
            meta.clone(),
            applier,
        );
        if let Some(bytes) = io.checkpoint_bytes {
            writer.set_checkpoint_bytes(bytes);
        }
        // The counters as the last checkpoint left them; they include the
        // log's frames when that checkpoint stopped before emptying it.
        let counts = match meta.get(COUNTS_KEY).map_err(backend)? {
            Some(bytes) => match decode_counts(&bytes) {
                Ok(counts) => Some(counts),
                Err(e) => {
                    tracing::warn!(error = %e, "the key-version counters do not decode: counting again");
                    None
                }
            },
            None => None,
        };
        let counted = counts.as_ref().is_some_and(|(g, _)| *g == generation);
        let mut recount = counts.is_none();
        writer.set_usage(counts.map(|(_, usage)| usage).unwrap_or_default());
        if !frames.is_empty() {
            writer.replay(&frames, counted)?;
        } else if counted {
            // The counters name this log's generation: a crash cut the last
            // checkpoint's reset short of the next one. Move on to a new
            // generation before logging anything, or the next start would
            // take new frames for counted ones.
            writer.fresh_generation()?;
        }
        if operator_log {
            // An operator put an empty log in place of a lost one, to go on
            // with what sled holds. sled writes its trees on its own, so a
            // crash may have left a group half-stored: an index entry or a
            // deterministic mapping without its record (a deterministic
            // Tokenize would answer that dead token for ever). Remove them,
            // as salvage does, before serving.
            let removed = writer.reconcile()?;
            recount = true;
            if !removed.is_empty() {
                tracing::warn!(
                    index_entries = removed.index_entries,
                    deterministic_entries = removed.deterministic_entries,
                    expiry_entries = removed.expiry_entries,
                    unindexed_records = removed.unindexed_records.len(),
                    "the write-ahead log was replaced by an empty one: removed what a crash had \
                     left half-stored in the store"
                );
            }
        }
        if recount {
            // A store of an earlier build, or one whose trees an operator's
            // empty log left ahead of the counters: count once.
            let usage = integrity::count_usage(&trees)?;
            tracing::info!(
                versions = usage.len(),
                "counted the records and index entries of each key version"
            );
            writer.set_usage(usage);
        }
        writer.load_retired_keys()?;
        writer.load_freezes()?;
        writer.load_canary_ids()?;
        let usage = writer.usage();
        let frozen = writer.frozen();
        let canary_ids = writer.canary_ids();
        let mut epochs = stored_epochs(&meta)?;
        let (next, ceiling) = open_sequence(&trees, &meta, &epochs)?;
        let epoch = new_epoch(&epochs);
        epochs.insert(epoch);
        writer.set_sequence(ceiling, epoch);
        let sequence = Sequence::new(next, ceiling, epoch);
        #[cfg(test)]
        let faults = writer.faults();
        let commit = GroupCommit::start(writer, config.max_queued_writes)?;
        Ok(Self {
            inner: Arc::new(Inner {
                dir: config.path.clone(),
                trees,
                keys,
                meta,
                unapplied,
                sequence,
                epochs,
                usage,
                frozen,
                canary_ids,
                commit,
                #[cfg(test)]
                faults,
            }),
        })
    }

    /// [`SledStore::open`] for a store this process (or one that just
    /// exited) has just closed: sled's background log writes can hold its
    /// file lock for a moment after the last handle is gone, so a lock
    /// conflict is retried (at most 100 times, 20 ms apart).
    pub(crate) fn reopen(config: &SledConfig) -> Result<Self, StoreError> {
        let mut tries = 0;
        loop {
            match Self::open(config) {
                Err(e) if tries < 100 && is_lock_conflict(&e) => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn reopen_in_test(config: &SledConfig) -> Result<Self, StoreError> {
        Self::reopen(config)
    }

    /// Removes the remnants of dropped log frames (see
    /// [`integrity::remove_partial_entries`]); they are durable once the
    /// store is closed (its checkpoint). For `store salvage`, offline.
    pub(crate) fn remove_partial_entries(&self) -> Result<integrity::PartialEntries, StoreError> {
        self.inner
            .unapplied
            .wait_until(0)
            .map_err(StoreError::Backend)?;
        let removed = integrity::remove_partial_entries(&self.inner.trees)?;
        // Dropped frames may have left whole records the counters never
        // saw: count again (the close's checkpoint stores the result).
        *self.inner.usage.lock().unwrap_or_else(|p| p.into_inner()) =
            integrity::count_usage(&self.inner.trees)?;
        Ok(removed)
    }

    /// Waits until every acknowledged write is in the trees (tests that
    /// read what only the trees hold, such as the expiry index).
    #[cfg(test)]
    pub(crate) fn wait_applied(&self) {
        self.inner
            .unapplied
            .wait_until(0)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Test fault: the checkpoint after the next group's log sync fails
    /// with OS error `errno`.
    #[cfg(test)]
    pub(crate) fn fail_next_checkpoint(&self, errno: i32) {
        self.inner
            .faults
            .checkpoint
            .store(errno, std::sync::atomic::Ordering::SeqCst);
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| {
                StoreError::Backend(StorageFailure::internal(format!(
                    "storage task failed: {e}"
                )))
            })?
    }
}

/// `TooLong` if `text` (a counter name, a caller, …) is longer than the
/// store keeps.
fn check_len(what: &'static str, text: &str) -> Result<(), StoreError> {
    if text.len() > MAX_NAME_BYTES {
        return Err(StoreError::TooLong {
            what,
            bytes: text.len(),
            limit: MAX_NAME_BYTES,
        });
    }
    Ok(())
}

/// The canary of each id: `None` from memory for an id that is not one,
/// the canary from `meta` for one that is.
fn read_canaries(inner: &Inner, ids: &[RecordId]) -> Result<Vec<Option<Canary>>, StoreError> {
    let hits: Vec<bool> = {
        let canaries = inner.canary_ids.read().unwrap_or_else(|p| p.into_inner());
        ids.iter().map(|id| canaries.contains(id)).collect()
    };
    ids.iter()
        .zip(hits)
        .map(|(&id, hit)| {
            if !hit {
                return Ok(None);
            }
            let key = canary_key(id);
            match inner.meta.get(&key).map_err(backend)? {
                Some(bytes) => decode_canary(&key, &bytes).map(Some),
                None => Ok(None),
            }
        })
        .collect()
}

#[async_trait]
impl Store for SledStore {
    async fn charge(&self, charges: Vec<Charge>) -> Result<Charged, StoreError> {
        for c in &charges {
            check_len("counter name", &c.counter)?;
        }
        if charges.is_empty() {
            return Ok(Charged::Added(Vec::new()));
        }
        match self.inner.commit.submit(Write::Charge(charges)).await? {
            Written::Charged(charged) => Ok(charged),
            _ => Err(unexpected("a charge")),
        }
    }

    async fn reset_counters(&self, counters: Vec<String>) -> Result<(), StoreError> {
        for c in &counters {
            check_len("counter name", c)?;
        }
        if counters.is_empty() {
            return Ok(());
        }
        match self
            .inner
            .commit
            .submit(Write::ResetCounters(counters))
            .await?
        {
            Written::Changed => Ok(()),
            _ => Err(unexpected("a counter reset")),
        }
    }

    async fn counters(&self) -> Result<Vec<CounterValue>, StoreError> {
        // Counters change in `meta` before a charge is answered: no overlay.
        self.blocking(|inner| {
            let mut out = Vec::new();
            for entry in inner.meta.scan_prefix(COUNTER_PREFIX) {
                let (key, value) = entry.map_err(backend)?;
                let (window_start_ms, count) = decode_counter(&value)?;
                out.push(CounterValue {
                    counter: counter_name(&key)?,
                    window_start_ms,
                    count,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn counter(&self, name: &str) -> Result<Option<CounterValue>, StoreError> {
        check_len("counter name", name)?;
        let key = super::layout::counter_key(name);
        let name = name.to_owned();
        self.blocking(move |inner| {
            inner
                .meta
                .get(&key)
                .map_err(backend)?
                .map(|value| {
                    let (window_start_ms, count) = decode_counter(&value)?;
                    Ok(CounterValue {
                        counter: name,
                        window_start_ms,
                        count,
                    })
                })
                .transpose()
        })
        .await
    }

    async fn put_grant(&self, grant: Grant, expect: Option<u64>) -> Result<bool, StoreError> {
        for (what, text) in [
            ("grant caller", &grant.caller),
            ("grant requester", &grant.requested_by),
            ("grant reason", &grant.reason),
            ("grant rule", &grant.rule),
        ] {
            check_len(what, text)?;
        }
        match self
            .inner
            .commit
            .submit(Write::PutGrant(Box::new(grant), expect))
            .await?
        {
            Written::Applied(put) => Ok(put.first().copied().unwrap_or(false)),
            _ => Err(unexpected("a grant write")),
        }
    }

    async fn grant(&self, id: GrantId) -> Result<Option<Grant>, StoreError> {
        // Grants change in `meta` before a write is answered: no overlay.
        self.blocking(move |inner| {
            let key = grant_key(id);
            inner
                .meta
                .get(&key)
                .map_err(backend)?
                .map(|value| decode_grant(&key, &value))
                .transpose()
        })
        .await
    }

    async fn grants(&self) -> Result<Vec<Grant>, StoreError> {
        self.blocking(|inner| {
            inner
                .meta
                .scan_prefix(GRANT_PREFIX)
                // One grant that does not decode is left out (and logged;
                // the integrity check reports it), so that it does not
                // take every listing and request down with it.
                .filter_map(|entry| match entry.map_err(backend) {
                    Err(e) => Some(Err(e)),
                    Ok((key, value)) => match decode_grant_without_tokens(&key, &value) {
                        Ok(grant) => Some(Ok(grant)),
                        Err(e) => {
                            let key: String = key.iter().map(|b| format!("{b:02x}")).collect();
                            tracing::error!(key = %key, error = %e, "a stored grant does not decode; it is left out of listings");
                            None
                        }
                    },
                })
                .collect()
        })
        .await
    }

    async fn freeze(&self, freeze: Freeze) -> Result<Option<Freeze>, StoreError> {
        check_len("caller", &freeze.caller)?;
        check_len("freeze reason", &freeze.reason)?;
        check_len("freeze `by`", &freeze.by)?;
        match self.inner.commit.submit(Write::Freeze(freeze)).await? {
            Written::Freeze(existing) => Ok(existing),
            _ => Err(unexpected("a freeze")),
        }
    }

    async fn unfreeze(&self, caller: &str) -> Result<Option<Freeze>, StoreError> {
        check_len("caller", caller)?;
        match self
            .inner
            .commit
            .submit(Write::Unfreeze(caller.to_owned()))
            .await?
        {
            Written::Freeze(lifted) => Ok(lifted),
            _ => Err(unexpected("an unfreeze")),
        }
    }

    async fn frozen(&self, caller: &str) -> Result<Option<Freeze>, StoreError> {
        // Memory only: the writer changes the map before it answers a
        // freeze or an unfreeze.
        Ok(self
            .inner
            .frozen
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(caller)
            .cloned())
    }

    async fn freezes(&self) -> Result<Vec<Freeze>, StoreError> {
        Ok(self
            .inner
            .frozen
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect())
    }

    async fn add_canaries(&self, canaries: Vec<Canary>) -> Result<(), StoreError> {
        for c in &canaries {
            check_len("canary `by`", &c.by)?;
        }
        if canaries.is_empty() {
            return Ok(());
        }
        match self.inner.commit.submit(Write::Canaries(canaries)).await? {
            Written::Changed => Ok(()),
            _ => Err(unexpected("a canary write")),
        }
    }

    async fn canaries_of(&self, ids: Vec<RecordId>) -> Result<Vec<Option<Canary>>, StoreError> {
        // On the detokenize path: ids that are no canary are answered from
        // memory; a few point reads of canaries inline, as `get_records`
        // does.
        if ids.len() <= INLINE_READS {
            return read_canaries(&self.inner, &ids);
        }
        self.blocking(move |inner| read_canaries(inner, &ids)).await
    }

    async fn snapshot(&self) -> Result<super::Snapshot, StoreError> {
        let files = self
            .blocking(|inner| super::backup::temp_files(&inner.dir))
            .await?;
        match self.inner.commit.submit(Write::Snapshot(files)).await? {
            Written::Snapshot(snapshot) => Ok(snapshot),
            _ => Err(unexpected("a snapshot")),
        }
    }

    async fn canaries(&self) -> Result<Vec<Canary>, StoreError> {
        self.blocking(|inner| {
            inner
                .meta
                .scan_prefix(CANARY_PREFIX)
                .map(|entry| {
                    let (key, value) = entry.map_err(backend)?;
                    decode_canary(&key, &value)
                })
                .collect()
        })
        .await
    }
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
        self.change_keys(KeyChange::Add {
            keys,
            at_unix_ms: crate::audit::now_unix_ms(),
        })
        .await
    }

    async fn allocate(&self, n: usize) -> Result<Vec<RecordId>, StoreError> {
        let n = n as u64;
        let sequence = &self.inner.sequence;
        loop {
            if let Some(first) = sequence.take(n)? {
                let epoch = sequence.epoch();
                return Ok((first..first + n)
                    .map(|seq| RecordId::new(seq, epoch))
                    .collect());
            }
            // One raise at a time; a caller that waited here usually finds
            // the ceiling raised and takes its ids at once.
            let _raising = sequence.raising().await;
            let Some(ceiling) = sequence.wanted_ceiling(n)? else {
                continue;
            };
            let raise = Ceiling {
                ceiling,
                epoch: sequence.epoch(),
            };
            match self.inner.commit.submit(Write::Ceiling(raise)).await? {
                Written::Ceiling => sequence.raised(ceiling),
                _ => return Err(unexpected("a ceiling write")),
            }
        }
    }

    async fn is_unused(&self) -> Result<bool, StoreError> {
        self.blocking(|inner| {
            Ok(inner.trees.records.is_empty()
                && inner.unapplied.is_empty()
                && inner.meta.get(CEILING_KEY).map_err(backend)?.is_none())
        })
        .await
    }

    fn knows_epoch(&self, epoch: u64) -> bool {
        self.inner.epochs.contains(&epoch)
    }

    async fn insert_records(&self, records: Vec<NewRecord>) -> Result<Vec<RecordId>, StoreError> {
        match self.inner.commit.submit(Write::Records(records)).await? {
            Written::Records(ids) => Ok(ids),
            _ => Err(unexpected("a record write")),
        }
    }

    fn failure(&self) -> Option<StorageFailure> {
        self.inner
            .commit
            .failure()
            .or_else(|| self.inner.unapplied.failure())
    }

    async fn check_integrity(&self) -> Result<IntegrityReport, StoreError> {
        self.blocking(|inner| {
            // Compare the trees once every acknowledged write is in them.
            inner.unapplied.wait_until(0).map_err(StoreError::Backend)?;
            let kept = inner
                .usage
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let mut report = integrity::check(
                &inner.trees,
                stored_ceiling(&inner.meta)?,
                &stored_epochs(&inner.meta)?,
            )?;
            report
                .problems
                .extend(integrity::check_abuse_controls(&inner.meta, &inner.trees)?);
            let counted = integrity::count_usage(&inner.trees)?;
            if counted != kept {
                report.problems.push(format!(
                    "the key-version counters ({}) disagree with the trees ({})",
                    integrity::describe_usage(&kept),
                    integrity::describe_usage(&counted)
                ));
            }
            Ok(report)
        })
        .await
    }

    async fn records_by_index(&self, index: BlindIndex) -> Result<Vec<RecordId>, StoreError> {
        self.blocking(move |inner| {
            let prefix = index_prefix(&index);
            // Overlay first: an entry leaves it only once it is in the
            // tree. Held while the trees are read, so a deleted record's
            // entry is seen with its tombstone.
            inner.unapplied.read(|overlay| {
                let mut ids = overlay.records_by_index(&prefix).to_vec();
                for key in inner.trees.blind_index.scan_prefix(prefix).keys() {
                    ids.push(record_id_from(&key.map_err(backend)?[36..])?);
                }
                if let Some(id) = inner.trees.deterministic.get(prefix).map_err(backend)? {
                    ids.push(record_id_from(&id)?);
                }
                ids.retain(|id| !overlay.is_deleted(*id));
                // An entry applied during the scan shows up in both.
                ids.sort_unstable();
                ids.dedup();
                Ok(ids)
            })
        })
        .await
    }

    async fn delete_records(&self, deletions: Vec<Deletion>) -> Result<Vec<bool>, StoreError> {
        match self.inner.commit.submit(Write::Delete(deletions)).await? {
            Written::Applied(deleted) => Ok(deleted),
            _ => Err(unexpected("a deletion")),
        }
    }

    async fn expired_records(
        &self,
        now_unix_ms: u64,
        after: Option<(u64, RecordId)>,
        limit: usize,
    ) -> Result<Vec<(u64, RecordId)>, StoreError> {
        self.blocking(move |inner| {
            use std::ops::Bound::{Excluded, Included, Unbounded};
            let start = match after {
                Some((at, id)) => Excluded(expiry_key(at, id).to_vec()),
                None => Unbounded,
            };
            let end = Included(expiry_key(now_unix_ms, RecordId::new(u64::MAX, u64::MAX)).to_vec());
            // Held while the tree is read: a record deleted but not yet
            // applied is left out (its entry is on its way out).
            inner.unapplied.read(|overlay| {
                let mut out = Vec::with_capacity(limit.min(4096));
                for key in inner.trees.expiry.range((start, end)).keys() {
                    if out.len() == limit {
                        break;
                    }
                    let (at, id) = expiry_from(&key.map_err(backend)?)?;
                    if !overlay.is_deleted(id) {
                        out.push((at, id));
                    }
                }
                Ok(out)
            })
        })
        .await
    }

    async fn get_records(&self, tokens: Vec<RecordId>) -> Result<Vec<RecordRead>, StoreError> {
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

    fn key_usage(&self) -> KeyUsage {
        self.inner
            .usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn key_catalog(&self) -> Result<KeyCatalog, StoreError> {
        self.blocking(|inner| {
            let mut keys = std::collections::BTreeMap::new();
            for key in inner.keys.iter().values() {
                let key = decode_key(&key.map_err(backend)?)?;
                keys.insert(
                    key_id(key.purpose, key.version),
                    KeyInfo {
                        purpose: key.purpose,
                        version: key.version,
                        created_unix_ms: None,
                        retired_unix_ms: None,
                    },
                );
            }
            for entry in inner.meta.scan_prefix(KEY_INFO_PREFIX) {
                let (k, v) = entry.map_err(backend)?;
                let Some(id) = k
                    .get(KEY_INFO_PREFIX.len()..)
                    .and_then(|id| <[u8; 5]>::try_from(id).ok())
                else {
                    continue;
                };
                let Some(purpose) = KeyPurpose::from_code(id[0]) else {
                    continue;
                };
                let version = KeyVersion(u32::from_be_bytes([id[1], id[2], id[3], id[4]]));
                let (created, retired) = decode_key_info(&v)?;
                let info = keys.entry(id).or_insert(KeyInfo {
                    purpose,
                    version,
                    created_unix_ms: None,
                    retired_unix_ms: None,
                });
                info.created_unix_ms = Some(created).filter(|c| *c != 0);
                info.retired_unix_ms = retired;
            }
            let mut replaced_masters = Vec::new();
            for entry in inner.meta.scan_prefix(MASTER_PREFIX) {
                let (k, v) = entry.map_err(backend)?;
                if let Ok(fp) = <[u8; 8]>::try_from(&k[MASTER_PREFIX.len()..]) {
                    replaced_masters.push((fp, u64_from(&v)?));
                }
            }
            let master_key_file = inner
                .meta
                .get(MASTER_FILE_KEY)
                .map_err(backend)?
                .map(|v| String::from_utf8_lossy(&v).into_owned());
            Ok(KeyCatalog {
                keys: keys.into_values().collect(),
                replaced_masters,
                master_key_file,
            })
        })
        .await
    }

    async fn change_keys(&self, change: KeyChange) -> Result<(), StoreError> {
        match self.inner.commit.submit(Write::KeyChange(change)).await? {
            Written::Changed => Ok(()),
            _ => Err(unexpected("a key change")),
        }
    }

    async fn scan_records(
        &self,
        after: Option<RecordId>,
        limit: usize,
    ) -> Result<Vec<(RecordId, RecordRead)>, StoreError> {
        self.blocking(move |inner| {
            let range = match after {
                Some(id) => inner.trees.records.range((
                    std::ops::Bound::Excluded(record_key(id)),
                    std::ops::Bound::Unbounded,
                )),
                None => inner.trees.records.iter(),
            };
            let mut out = Vec::with_capacity(limit.min(4096));
            for entry in range.take(limit) {
                let (key, value) = entry.map_err(backend)?;
                let id = record_id_from(&key)?;
                // A record deleted but not yet applied is gone.
                if matches!(inner.unapplied.record(id), Some(Pending::Deleted)) {
                    continue;
                }
                out.push((id, decode_record(&value).map(Some)));
            }
            Ok(out)
        })
        .await
    }

    async fn rewrite_records(
        &self,
        rewrites: Vec<Rewrite>,
        job: Option<(Job, Vec<u8>)>,
    ) -> Result<Vec<bool>, StoreError> {
        match self
            .inner
            .commit
            .submit(Write::Rewrites(rewrites, job))
            .await?
        {
            Written::Applied(applied) => Ok(applied),
            _ => Err(unexpected("a rewrite")),
        }
    }

    async fn scan_index(
        &self,
        version: KeyVersion,
        after: Option<IndexEntry>,
        limit: usize,
    ) -> Result<Vec<IndexEntry>, StoreError> {
        self.blocking(move |inner| {
            use std::ops::Bound::{Excluded, Included};
            let prefix = version.0.to_be_bytes();
            let mut out = Vec::with_capacity(limit.min(4096));
            let random_done = after.is_some_and(|a| a.deterministic);
            if !random_done {
                let start = match after {
                    Some(a) => Excluded(index_entry(&a.index, a.id).to_vec()),
                    None => Included(prefix.to_vec()),
                };
                let range = inner
                    .trees
                    .blind_index
                    .range((start, std::ops::Bound::Unbounded));
                for key in range.keys() {
                    let key = key.map_err(backend)?;
                    if !key.starts_with(&prefix) || out.len() == limit {
                        break;
                    }
                    if key.len() != 52 {
                        return Err(StoreError::Corrupt {
                            what: "blind index",
                            reason: "entry of the wrong length",
                        });
                    }
                    out.push(IndexEntry {
                        id: record_id_from(&key[36..])?,
                        index: index_from(&key[..36]),
                        deterministic: false,
                    });
                }
            }
            let start = match after.filter(|a| a.deterministic) {
                Some(a) => Excluded(index_prefix(&a.index).to_vec()),
                None => Included(prefix.to_vec()),
            };
            let range = inner
                .trees
                .deterministic
                .range((start, std::ops::Bound::Unbounded));
            for entry in range {
                if out.len() == limit {
                    break;
                }
                let (key, id) = entry.map_err(backend)?;
                if !key.starts_with(&prefix) {
                    break;
                }
                if key.len() != 36 {
                    return Err(StoreError::Corrupt {
                        what: "deterministic index",
                        reason: "entry of the wrong length",
                    });
                }
                out.push(IndexEntry {
                    id: record_id_from(&id)?,
                    index: index_from(&key),
                    deterministic: true,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn reindex(
        &self,
        moves: Vec<Reindex>,
        job: Option<(Job, Vec<u8>)>,
    ) -> Result<Vec<bool>, StoreError> {
        match self.inner.commit.submit(Write::Reindex(moves, job)).await? {
            Written::Applied(applied) => Ok(applied),
            _ => Err(unexpected("an index move")),
        }
    }

    async fn job_state(&self, job: Job) -> Result<Option<Vec<u8>>, StoreError> {
        self.blocking(move |inner| {
            Ok(inner
                .meta
                .get(job_key(job))
                .map_err(backend)?
                .map(|v| v.to_vec()))
        })
        .await
    }

    async fn job_progress(&self, job: Job) -> Result<(Option<Vec<u8>>, KeyUsage), StoreError> {
        self.blocking(move |inner| {
            // The writer changes both under this lock.
            let usage = inner.usage.lock().unwrap_or_else(|p| p.into_inner());
            let state = inner
                .meta
                .get(job_key(job))
                .map_err(backend)?
                .map(|v| v.to_vec());
            Ok((state, usage.clone()))
        })
        .await
    }

    async fn set_job_state(&self, job: Job, state: Vec<u8>) -> Result<(), StoreError> {
        match self
            .inner
            .commit
            .submit(Write::JobState(job, state))
            .await?
        {
            Written::Changed => Ok(()),
            _ => Err(unexpected("a job state")),
        }
    }
}

/// A write that came back with another kind of outcome: a bug.
fn unexpected(what: &str) -> StoreError {
    StoreError::Backend(StorageFailure::internal(format!(
        "{what} returned another kind of outcome"
    )))
}

/// Where the sequence starts after open: `(next, ceiling)`, with the
/// store's layout and recorded epochs checked against its records. The
/// durable ceiling bounds every sequence number handed out before, so the
/// sequence goes on from there. A record at or above it (the ceiling lost
/// or tampered with) is stepped over, with a warning: this process's new
/// epoch keeps its ids apart from any handed out before anyway.
///
/// Refused: records without the layout marker (an earlier development
/// layout, or the `meta` tree lost), and a newest record whose epoch the
/// store never recorded (the `meta` tree damaged: every token would read
/// as one this vault never issued).
fn open_sequence(
    trees: &Trees,
    meta: &sled::Tree,
    epochs: &HashSet<u64>,
) -> Result<(u64, u64), StoreError> {
    let ceiling = stored_ceiling(meta)?;
    let Some((key, _)) = trees.records.last().map_err(backend)? else {
        return Ok((ceiling, ceiling));
    };
    match meta.get(FORMAT_KEY).map_err(backend)? {
        Some(format) if format.as_ref() == [STORE_FORMAT] => {}
        Some(_) => {
            return Err(StoreError::Damaged(
                "the store's layout is not one this version reads (made by a newer version?)"
                    .into(),
            ))
        }
        // Records of this layout without the marker: the tree is lost.
        None if record_id_from(&key).is_ok() => {
            return Err(StoreError::Damaged(META_LOST.to_owned()))
        }
        None => return Err(StoreError::Damaged(OLD_LAYOUT.to_owned())),
    }
    let last = record_id_from(&key)?;
    // The oldest and the newest record: a cheap check that catches a lost
    // tree (a full one would read every record key at every start).
    let first = match trees.records.first().map_err(backend)? {
        Some((key, _)) => record_id_from(&key)?,
        None => last,
    };
    if let Some(id) = [first, last]
        .into_iter()
        .find(|id| !epochs.contains(&id.epoch))
    {
        return Err(StoreError::Damaged(format!(
            "the store holds {id}, of an epoch its `meta` tree never recorded: {META_LOST}"
        )));
    }
    if last.seq < ceiling {
        return Ok((ceiling, ceiling));
    }
    tracing::warn!(
        ceiling,
        last = last.seq,
        "the store holds a record at or above its sequence ceiling; new records start after it"
    );
    let next = last.seq.checked_add(1).ok_or_else(|| {
        StoreError::Backend(StorageFailure::internal(
            "the record-id sequence is exhausted",
        ))
    })?;
    // Not durable yet: the first allocation logs a ceiling above it.
    Ok((next, next))
}

/// Why a store whose `meta` tree is lost or damaged is refused.
const META_LOST: &str = "the store's `meta` tree (sequence ceiling and epochs) is lost or \
     damaged, and every token would read as one this vault never issued; restore the store \
     from a backup";

/// Every epoch the store has recorded.
fn stored_epochs(meta: &sled::Tree) -> Result<HashSet<u64>, StoreError> {
    let mut epochs = HashSet::new();
    for key in meta.scan_prefix(EPOCH_PREFIX).keys() {
        let key = key.map_err(backend)?;
        epochs.insert(u64_from(&key[EPOCH_PREFIX.len()..])?);
    }
    Ok(epochs)
}

/// A random epoch below [`RecordId::EPOCH_LIMIT`] that `known` does not
/// hold.
fn new_epoch(known: &HashSet<u64>) -> u64 {
    loop {
        let epoch = crate::crypto::random_u64() % RecordId::EPOCH_LIMIT;
        if !known.contains(&epoch) {
            return epoch;
        }
    }
}

/// Batches up to this many tokens are read on the calling task.
const INLINE_READS: usize = 8;

/// Reads each record on its own: a corrupt one, or a read error for one
/// key, fails that item only.
/// A log that cannot be opened: an I/O failure, or damage (whose own
/// message says it all, with no cause prefix).
fn wal_error(e: WalError) -> StoreError {
    match e {
        WalError::Io { .. } => StoreError::Backend(e.failure()),
        _ => StoreError::Damaged(e.to_string()),
    }
}

fn read_records(inner: &Inner, ids: &[RecordId]) -> Result<Vec<RecordRead>, StoreError> {
    Ok(ids
        .iter()
        .map(|&id| {
            // Overlay first: an entry leaves it only once it is in the tree.
            match inner.unapplied.record(id) {
                Some(Pending::Stored(bytes)) => return decode_record(&bytes).map(Some),
                Some(Pending::Deleted) => return Ok(None),
                None => {}
            }
            match inner.trees.records.get(record_key(id)).map_err(backend)? {
                Some(bytes) => decode_record(&bytes).map(Some),
                None => Ok(None),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{KeyPurpose, KeyVersion, SealedRecord, NONCE_LEN};
    use crate::domain::FieldKind;
    use crate::store::apply::{Reindexed, Rewritten, Staged};
    use crate::store::fixtures::{index, new_record as new, ok, open, record, wrapped};
    use crate::store::layout::{
        encode_counts, encode_frame, encode_key_info, encode_record, key_info_key, record_key,
        Changes, MetaOp,
    };

    use std::collections::HashMap;
    use std::path::Path;

    /// `N` new ids from the store's sequence.
    async fn ids<const N: usize>(store: &SledStore) -> [RecordId; N] {
        let ids = ok(store.allocate(N).await);
        ids.try_into()
            .unwrap_or_else(|_| panic!("allocate returned another count"))
    }

    #[tokio::test]
    async fn records_round_trip_and_survive_reopening() {
        let dir = ok(tempfile::tempdir());
        let [a, b, absent];
        {
            let store = open(dir.path());
            [a, b, absent] = ids(&store).await;
            let got = ok(store
                .insert_records(vec![
                    new(a, FieldKind::Phone, 1, false),
                    new(b, FieldKind::Address, 2, false),
                ])
                .await);
            assert_eq!(got, vec![a, b]);
        }
        let store = open(dir.path());
        let got = read(&store, vec![b, absent, a]).await;
        assert_eq!(
            got,
            vec![
                Some(record(FieldKind::Address)),
                None,
                Some(record(FieldKind::Phone))
            ]
        );
        assert_eq!(ok(store.records_by_index(index(1)).await), vec![a]);
    }

    #[tokio::test]
    async fn an_id_the_sequence_never_handed_out_fails_its_call_and_stores_nothing_of_it() {
        let dir = ok(tempfile::tempdir());
        let store = open(dir.path());
        let [a] = ids(&store).await;
        let beyond = RecordId::new(a.seq + super::super::sequence::CEILING_STEP + 1, a.epoch);
        let refused = store
            .insert_records(vec![
                new(a, FieldKind::Phone, 1, false),
                new(beyond, FieldKind::Phone, 2, false),
            ])
            .await;
        assert!(
            matches!(&refused, Err(StoreError::Backend(f)) if f.detail.contains("never handed out")),
            "{refused:?}"
        );
        assert_eq!(read(&store, vec![a, beyond]).await, vec![None, None]);
        assert!(store.failure().is_none(), "the store goes on");
        assert_eq!(
            ok(store
                .insert_records(vec![new(a, FieldKind::Phone, 1, false)])
                .await),
            vec![a]
        );
    }

    #[tokio::test]
    async fn ids_ascend_and_none_is_handed_out_again_after_a_reopen_even_unused_ones() {
        let dir = ok(tempfile::tempdir());
        let mut seen = std::collections::HashSet::new();
        let mut last = None;
        for round in 0..3 {
            let store = open(dir.path());
            // More than one ceiling step, in calls of several sizes: the
            // ceiling is raised while calls take ids.
            let mut calls = Vec::new();
            for n in [1usize, 7, 1000, 40_000, 30_000] {
                let store = store.clone();
                calls.push(tokio::spawn(async move { store.allocate(n).await }));
            }
            for call in calls {
                let got = ok(ok(call.await));
                assert!(
                    got.windows(2).all(|w| w[1].seq == w[0].seq + 1),
                    "one call's ids are consecutive"
                );
                for id in got {
                    assert!(seen.insert(id), "round {round}: {id} handed out twice");
                }
            }
            // Use one id only; the rest are lost with the process.
            let [used] = ids(&store).await;
            assert!(seen.insert(used));
            assert!(
                last.is_none_or(|l: RecordId| used > l),
                "ids ascend across reopens"
            );
            last = Some(used);
            ok(store
                .insert_records(vec![new(used, FieldKind::Email, round, false)])
                .await);
            let report = ok(store.check_integrity().await);
            assert!(report.problems.is_empty(), "{:?}", report.problems);
        }
        assert_eq!(seen.len(), 3 * (1 + 7 + 1000 + 40_000 + 30_000 + 1));
    }

    /// Back-to-back writes: each call is staged while the previous group
    /// may still be applying, so lookups go through the overlay as often as
    /// through the trees. Either way every write is readable once answered
    /// and a deterministic value keeps one token.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answered_writes_are_visible_whether_or_not_applied_yet() {
        let dir = ok(tempfile::tempdir());
        let store = open(dir.path());
        let mut first: HashMap<u8, RecordId> = HashMap::new();
        for round in 0..300u32 {
            let value = (round % 7) as u8;
            let [det, random] = ids(&store).await;
            let got = ok(store
                .insert_records(vec![
                    new(det, FieldKind::Phone, value, true),
                    new(random, FieldKind::Phone, value, false),
                ])
                .await);
            let det_token = *first.entry(value).or_insert(det);
            assert_eq!(got, vec![det_token, random], "round {round}");
            let read = read(&store, vec![det_token, random]).await;
            assert!(read.iter().all(Option::is_some), "round {round}");
            assert!(ok(store.records_by_index(index(value)).await).contains(&random));
        }
        let report = ok(store.check_integrity().await);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.records, 300 + 7);
        assert_eq!(report.deterministic_entries, 7);
    }

    #[tokio::test]
    async fn a_deterministic_value_keeps_its_first_token_and_random_ones_add_up() {
        let dir = ok(tempfile::tempdir());
        let store = open(dir.path());
        let [a, b, c, d] = ids(&store).await;
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
        assert_eq!(read(&store, vec![b, c]).await, vec![None, None]);
        // A random token of the same value is indexed beside it.
        assert_eq!(
            ok(store
                .insert_records(vec![new(d, FieldKind::Phone, 5, false)])
                .await),
            vec![d]
        );
        let mut all = ok(store.records_by_index(index(5)).await);
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
            (2, 1, 1),
            "a deterministic record's one index entry is its mapping"
        );
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }

    #[tokio::test]
    async fn logged_writes_that_never_reached_the_trees_are_replayed_on_open() {
        let dir = ok(tempfile::tempdir());
        let [a, b, c];
        // A clean store holding `a`; `b` and `c` were handed out too.
        drop(open(dir.path()));
        {
            let store = open(dir.path());
            [a, b, c] = ids(&store).await;
            ok(store
                .insert_records(vec![new(a, FieldKind::Phone, 1, true)])
                .await);
        }
        // As if the process died after logging two groups (records, and a
        // key) but before applying them: the frames are in the log, the
        // trees lack them.
        {
            let (mut wal, frames) = ok(Wal::open(
                &super::super::file::RealFs,
                &dir.path().join(WAL_FILE),
            ));
            assert!(frames.is_empty(), "a clean close leaves an empty log");
            let staged = |id: RecordId, idx: u8, det: bool| Staged {
                id,
                index: index(idx),
                deterministic: det,
                record: encode_record(&record(FieldKind::Email)),
            };
            ok(wal.append(&encode_frame(
                None,
                &[],
                &[staged(b, 2, true)],
                &Default::default(),
            )));
            ok(wal.append(&encode_frame(
                None,
                &[wrapped(KeyPurpose::Data, 2)],
                &[staged(c, 3, false)],
                &Default::default(),
            )));
        }
        let store = open(dir.path());
        let got = read(&store, vec![a, b, c]).await;
        assert!(got.iter().all(Option::is_some), "{got:?}");
        assert_eq!(ok(store.records_by_index(index(2)).await), vec![b]);
        assert_eq!(
            ok(store.keys().await),
            vec![wrapped(KeyPurpose::Data, 2)],
            "a logged key is replayed"
        );
        // A replayed deterministic mapping is honoured by later writes.
        let [d] = ids(&store).await;
        assert_eq!(
            ok(store
                .insert_records(vec![new(d, FieldKind::Phone, 2, true)])
                .await),
            vec![b]
        );
        let report = ok(store.check_integrity().await);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!((report.records, report.deterministic_entries), (3, 2));
        drop(store);
        let (_, frames) = ok(Wal::open(
            &super::super::file::RealFs,
            &dir.path().join(WAL_FILE),
        ));
        assert!(frames.is_empty(), "the replay was checkpointed");
    }

    #[tokio::test]
    async fn the_integrity_check_finds_a_record_without_its_index_entry() {
        let dir = ok(tempfile::tempdir());
        let store = open(dir.path());
        let [a, b] = ids(&store).await;
        ok(store
            .insert_records(vec![
                new(a, FieldKind::Phone, 1, true),
                new(b, FieldKind::Phone, 2, false),
            ])
            .await);
        // Damage the trees once the apply thread has filled them.
        ok(store.inner.unapplied.wait_until(0));
        let trees = &store.inner.trees;
        ok(trees.deterministic.remove(index_prefix(&index(1))));
        ok(trees.records.remove(record_key(b)));
        let report = ok(store.check_integrity().await);
        assert_eq!(
            report.problems,
            vec![
                format!("blind index names {b}, which does not exist"),
                format!("{a} has 0 index entries"),
                "the key-version counters (data v7: 2, index v1: 2) disagree with the trees \
                 (data v7: 1, index v1: 1)"
                    .to_owned(),
            ]
        );
    }

    /// Reads records, failing the test on any unreadable one.
    async fn read(store: &SledStore, tokens: Vec<RecordId>) -> Vec<Option<SealedRecord>> {
        ok(store.get_records(tokens).await)
            .into_iter()
            .map(ok)
            .collect()
    }

    fn inject(slot: &std::sync::atomic::AtomicI32, errno: i32) {
        slot.store(errno, std::sync::atomic::Ordering::SeqCst);
    }

    #[tokio::test]
    async fn a_batch_whose_checkpoint_fails_after_its_log_sync_gets_its_tokens_and_they_are_there_after_a_restart(
    ) {
        let dir = ok(tempfile::tempdir());
        let [a, b, later];
        {
            let store = open(dir.path());
            [a, b, later] = ids(&store).await;
            // EIO from the checkpoint that follows the next group's sync.
            inject(&store.inner.faults.checkpoint, 5);
            let got = store
                .insert_records(vec![
                    new(a, FieldKind::Phone, 1, true),
                    new(b, FieldKind::Email, 2, false),
                ])
                .await;
            assert_eq!(ok(got), vec![a, b], "a durable batch gets its tokens");
            // Later writes are refused, with the typed cause.
            let refused = store
                .insert_records(vec![new(later, FieldKind::Phone, 3, false)])
                .await;
            let eio = FailureCause::Io {
                kind: std::io::ErrorKind::Other,
                errno: Some(5),
            };
            assert!(
                matches!(&refused, Err(StoreError::WritesStopped(f)) if f.cause.to_string() == eio.to_string()),
                "{refused:?}"
            );
            assert!(store.failure().is_some());
            // Reads in this process still find the batch.
            let read = read(&store, vec![a, b]).await;
            assert!(read.iter().all(Option::is_some), "{read:?}");
        }
        let store = open(dir.path());
        let read = read(&store, vec![a, b, later]).await;
        assert_eq!(
            read,
            vec![
                Some(record(FieldKind::Phone)),
                Some(record(FieldKind::Email)),
                None
            ]
        );
        assert_eq!(ok(store.records_by_index(index(1)).await), vec![a]);
        let report = ok(store.check_integrity().await);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert!(store.failure().is_none(), "a restart writes again");
    }

    #[tokio::test]
    async fn a_failed_publish_after_the_log_sync_answers_with_the_tokens_and_stops_later_writes_with_the_cause(
    ) {
        let dir = ok(tempfile::tempdir());
        let [a, later];
        {
            let store = open(dir.path());
            [a, later] = ids(&store).await;
            // ENOSPC when handing the synced group to the apply thread.
            inject(&store.inner.faults.publish, 28);
            let got = store
                .insert_records(vec![new(a, FieldKind::Phone, 1, false)])
                .await;
            assert_eq!(ok(got), vec![a]);
            for refused in [
                store
                    .insert_records(vec![new(later, FieldKind::Phone, 2, false)])
                    .await
                    .err(),
                store
                    .insert_keys(vec![wrapped(KeyPurpose::Data, 9)])
                    .await
                    .err(),
            ] {
                assert!(
                    matches!(&refused, Some(StoreError::WritesStopped(f)) if f.cause == FailureCause::StorageFull),
                    "{refused:?}"
                );
            }
            assert_eq!(
                store.failure().map(|f| f.cause),
                Some(FailureCause::StorageFull)
            );
        }
        // The log kept the group (no checkpoint after the failure, not even
        // at close): the restart replays it.
        let store = open(dir.path());
        let read = read(&store, vec![a, later]).await;
        assert_eq!(read, vec![Some(record(FieldKind::Phone)), None]);
        assert!(ok(store.keys().await).is_empty());
        let report = ok(store.check_integrity().await);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }

    #[tokio::test]
    async fn a_key_write_whose_log_append_fails_leaves_no_key_behind() {
        let dir = ok(tempfile::tempdir());
        {
            let store = open(dir.path());
            inject(&store.inner.faults.append, 28);
            let failed = store
                .insert_keys(vec![
                    wrapped(KeyPurpose::Data, 1),
                    wrapped(KeyPurpose::Index, 1),
                ])
                .await;
            assert!(
                matches!(&failed, Err(StoreError::Backend(f)) if f.cause == FailureCause::StorageFull),
                "{failed:?}"
            );
            assert!(ok(store.keys().await).is_empty(), "nothing in this process");
        }
        let store = open(dir.path());
        assert!(ok(store.keys().await).is_empty(), "nothing after a restart");
        // The store writes again after the restart, keys included.
        ok(store.insert_keys(vec![wrapped(KeyPurpose::Data, 1)]).await);
        assert_eq!(ok(store.keys().await), vec![wrapped(KeyPurpose::Data, 1)]);
    }

    #[tokio::test]
    async fn a_record_that_does_not_decode_fails_alone() {
        let dir = ok(tempfile::tempdir());
        let store = open(dir.path());
        let [a, b, absent] = ids(&store).await;
        ok(store
            .insert_records(vec![
                new(a, FieldKind::Phone, 1, false),
                new(b, FieldKind::Phone, 2, false),
            ])
            .await);
        ok(store.inner.unapplied.wait_until(0));
        ok(store
            .inner
            .trees
            .records
            .insert(record_key(a), &[9u8, 9, 9][..]));
        let got = ok(store.get_records(vec![a, b, absent]).await);
        assert!(
            matches!(got[0], Err(StoreError::Corrupt { what: "record", .. })),
            "{:?}",
            got[0]
        );
        assert_eq!(got[1].as_ref().ok(), Some(&Some(record(FieldKind::Phone))));
        assert_eq!(got[2].as_ref().ok(), Some(&None));
    }

    #[tokio::test]
    async fn a_store_whose_log_is_gone_refuses_to_open_until_an_empty_log_is_put_back() {
        let dir =
            ok(tempfile::tempdir()
                .map_err(|e| StoreError::Backend(StorageFailure::io("tempdir", &e))));
        let a;
        {
            let store = open(dir.path());
            [a] = ids(&store).await;
            ok(store
                .insert_records(vec![new(a, FieldKind::Phone, 1, false)])
                .await);
        }
        let log = dir.path().join(WAL_FILE);
        ok(std::fs::remove_file(&log)
            .map_err(|e| StoreError::Backend(StorageFailure::io("rm", &e))));
        let config = SledConfig {
            path: dir.path().to_path_buf(),
            cache_capacity_bytes: 8 << 20,
            max_queued_writes: 1,
        };
        let refused = SledStore::reopen(&config).err().map(|e| e.to_string());
        assert!(
            refused
                .as_deref()
                .is_some_and(|e| e.contains("the write-ahead log is missing")),
            "{refused:?}"
        );
        assert!(!log.exists(), "the refusal created nothing");
        // The operator's way on: an empty log, as the message says.
        ok(std::fs::write(&log, b"")
            .map_err(|e| StoreError::Backend(StorageFailure::io("touch", &e))));
        let store = open(dir.path());
        assert!(matches!(
            ok(store.get_records(vec![a]).await)[0],
            Ok(Some(_))
        ));
    }

    #[tokio::test]
    async fn a_store_restored_from_a_copy_never_hands_out_an_id_issued_after_the_copy() {
        let dir = ok(tempfile::tempdir());
        let (live, copy) = (dir.path().join("live"), dir.path().join("copy"));
        let before;
        {
            let store = open(&live);
            [before] = ids(&store).await;
            ok(store
                .insert_records(vec![new(before, FieldKind::Phone, 1, false)])
                .await);
        }
        ok(std::fs::create_dir(&copy));
        for entry in ok(std::fs::read_dir(&live)) {
            let entry = ok(entry);
            if entry.path().is_file() {
                ok(std::fs::copy(entry.path(), copy.join(entry.file_name())));
            }
        }
        // Issued after the copy was taken.
        let after;
        {
            let store = open(&live);
            [after] = ids(&store).await;
            ok(store
                .insert_records(vec![new(after, FieldKind::Email, 2, false)])
                .await);
        }
        // The copy is restored: its ceiling is the old one, so the same
        // sequence numbers come again, under a new epoch.
        let store = open(&copy);
        let [again] = ids(&store).await;
        assert_eq!(again.seq, after.seq, "the sequence went back with the copy");
        assert_ne!(again, after);
        assert!(!store.knows_epoch(after.epoch), "the copy never saw it");
        assert!(store.knows_epoch(before.epoch) && store.knows_epoch(again.epoch));
        ok(store
            .insert_records(vec![new(again, FieldKind::Phone, 3, false)])
            .await);
        assert_eq!(
            read(&store, vec![after, before]).await,
            vec![None, Some(record(FieldKind::Phone))],
            "an id issued after the copy finds no record, not the new one"
        );
        let report = ok(store.check_integrity().await);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }

    #[tokio::test]
    async fn an_empty_log_put_in_place_after_a_crash_leaves_no_mapping_without_its_record() {
        let dir = ok(tempfile::tempdir());
        let (stored, lost);
        {
            let store = open(dir.path());
            [stored, lost] = ids(&store).await;
            ok(store
                .insert_records(vec![new(stored, FieldKind::Phone, 1, true)])
                .await);
        }
        // As a crash leaves a group sled stored in part: the mapping of
        // value 2 and an index entry of value 3, without their records;
        // then the log is lost and an operator puts an empty one back.
        edit_closed(dir.path(), |db| {
            let deterministic = ok(db.open_tree("deterministic"));
            ok(deterministic.insert(index_prefix(&index(2)), &record_key(lost)[..]));
            let blind_index = ok(db.open_tree("blind_index"));
            ok(blind_index.insert(crate::store::layout::index_entry(&index(3), lost), &[][..]));
        });
        ok(std::fs::write(dir.path().join(WAL_FILE), b""));
        let store = open(dir.path());
        let report = ok(store.check_integrity().await);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        // Value 2 gets a token of its own that reveals, not the dead one.
        let [fresh] = ids(&store).await;
        assert_eq!(
            ok(store
                .insert_records(vec![new(fresh, FieldKind::Phone, 2, true)])
                .await),
            vec![fresh]
        );
        assert_eq!(ok(store.records_by_index(index(3)).await), vec![]);
        assert_eq!(
            read(&store, vec![stored, fresh]).await,
            vec![
                Some(record(FieldKind::Phone)),
                Some(record(FieldKind::Phone))
            ]
        );
    }

    #[tokio::test]
    async fn a_store_whose_record_of_epochs_is_lost_is_refused_not_opened_with_every_token_unknown()
    {
        let dir = ok(tempfile::tempdir());
        one_record(dir.path()).await;
        edit_closed(dir.path(), |db| {
            let meta = ok(db.open_tree("meta"));
            for key in meta.scan_prefix(EPOCH_PREFIX).keys() {
                ok(meta.remove(ok(key)));
            }
        });
        let refused = refusal(dir.path());
        assert!(
            refused.contains("never recorded") && refused.contains("restore the store"),
            "{refused}"
        );
        assert!(
            !refused.contains("--reset"),
            "a reset would destroy what a backup restores"
        );
        assert!(refused.contains("meta"), "{refused}");
    }

    #[tokio::test]
    async fn a_store_whose_meta_tree_is_lost_is_told_to_restore_not_to_reset() {
        let dir = ok(tempfile::tempdir());
        one_record(dir.path()).await;
        edit_closed(dir.path(), |db| ok(ok(db.open_tree("meta")).clear()));
        let refused = refusal(dir.path());
        assert!(
            refused.contains("`meta` tree") && refused.contains("restore the store from a backup"),
            "{refused}"
        );
        assert!(!refused.contains("--reset"), "{refused}");
    }

    #[test]
    fn a_store_whose_records_are_keyed_by_token_is_refused_with_what_to_do() {
        let dir = ok(tempfile::tempdir());
        edit_closed(dir.path(), |db| {
            ok(ok(db.open_tree("records")).insert([7u8; 16], &[1u8; 40][..]));
        });
        ok(std::fs::write(dir.path().join(WAL_FILE), b""));
        let refused = refusal(dir.path());
        assert!(
            refused.contains("before this layout") && refused.contains("--reset"),
            "{refused}"
        );
    }

    /// Leaves a closed store in `dir` holding one random-mode record.
    async fn one_record(dir: &Path) {
        let store = open(dir);
        let [a] = ids(&store).await;
        ok(store
            .insert_records(vec![new(a, FieldKind::Phone, 1, false)])
            .await);
    }

    /// Edits the closed store in `dir` with sled directly, as damage or a
    /// crash would leave it.
    fn edit_closed(dir: &Path, edit: impl FnOnce(&sled::Db)) {
        let db = ok(sled::Config::new().path(dir).open());
        edit(&db);
        ok(db.flush());
    }

    /// Why opening the store in `dir` is refused ("" if it opens).
    fn refusal(dir: &Path) -> String {
        SledStore::reopen(&SledConfig {
            path: dir.to_path_buf(),
            cache_capacity_bytes: 8 << 20,
            max_queued_writes: 1,
        })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
    }

    #[test]
    fn reopen_waits_for_a_handle_that_still_holds_the_lock() {
        let dir = ok(tempfile::tempdir());
        let config = SledConfig {
            path: dir.path().to_path_buf(),
            cache_capacity_bytes: 8 << 20,
            max_queued_writes: 1,
        };
        let held = ok(SledStore::open(&config));
        assert!(
            SledStore::open(&config)
                .err()
                .is_some_and(|e| is_lock_conflict(&e)),
            "a second open while the first holds the lock is a lock conflict"
        );
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(held);
        });
        let reopened = SledStore::reopen(&config);
        ok(release.join().map_err(|_| "the releasing thread panicked"));
        assert!(
            reopened.is_ok(),
            "{:?}",
            reopened.err().map(|e| e.to_string())
        );
    }

    // Key lifecycle: rewrites, index moves, key changes, job states and the
    // key-version counters.

    /// A record of `kind` sealed under data-key `version` (`byte` tells
    /// one sealing from another).
    fn sealed(kind: FieldKind, version: u32, byte: u8) -> SealedRecord {
        SealedRecord {
            key_version: KeyVersion(version),
            ciphertext: vec![byte; 40],
            ..record(kind)
        }
    }

    /// Blind index `version` of the value numbered `byte`.
    fn index_v(version: u32, byte: u8) -> BlindIndex {
        BlindIndex {
            version: KeyVersion(version),
            mac: [byte; 32],
        }
    }

    /// `id` re-sealed from data-key version `from` to `to`.
    fn rewrite(id: RecordId, from: u32, to: u32, byte: u8) -> Rewrite {
        Rewrite {
            id,
            from: KeyVersion(from),
            record: sealed(FieldKind::Phone, to, byte),
        }
    }

    fn usage(entries: &[(KeyPurpose, u32, u64)]) -> KeyUsage {
        entries
            .iter()
            .map(|(p, v, n)| ((*p, KeyVersion(*v)), *n))
            .collect()
    }

    fn retire(purpose: KeyPurpose, version: u32, at_unix_ms: u64) -> KeyChange {
        KeyChange::Retire {
            purpose,
            version: KeyVersion(version),
            at_unix_ms,
        }
    }

    /// A key of the same version wrapped anew (other bytes).
    fn rewrapped(purpose: KeyPurpose, version: u32) -> WrappedKey {
        WrappedKey {
            ciphertext: vec![5; 48],
            ..wrapped(purpose, version)
        }
    }

    async fn assert_clean(store: &SledStore) {
        let report = ok(store.check_integrity().await);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }

    fn key_info(catalog: &KeyCatalog, purpose: KeyPurpose, version: u32) -> Option<&KeyInfo> {
        catalog
            .keys
            .iter()
            .find(|k| k.purpose == purpose && k.version == KeyVersion(version))
    }

    #[tokio::test]
    async fn a_rewrite_replaces_only_a_record_still_under_its_from_version_and_moves_the_counters()
    {
        let dir = ok(tempfile::tempdir());
        let [a, b, absent];
        let moved = usage(&[
            (KeyPurpose::Data, 7, 1),
            (KeyPurpose::Data, 8, 1),
            (KeyPurpose::Index, 1, 2),
        ]);
        let expected = vec![
            Some(sealed(FieldKind::Phone, 8, 1)),
            Some(record(FieldKind::Phone)),
            None,
        ];
        {
            let store = open(dir.path());
            [a, b, absent] = ids(&store).await;
            ok(store
                .insert_records(vec![
                    new(a, FieldKind::Phone, 1, false),
                    new(b, FieldKind::Phone, 2, true),
                ])
                .await);
            let applied = ok(store
                .rewrite_records(
                    vec![
                        rewrite(a, 7, 8, 1),
                        rewrite(b, 6, 8, 2),
                        rewrite(absent, 7, 8, 3),
                    ],
                    None,
                )
                .await);
            assert_eq!(applied, vec![true, false, false]);
            assert_eq!(read(&store, vec![a, b, absent]).await, expected);
            assert_eq!(
                ok(store.rewrite_records(vec![rewrite(a, 7, 8, 4)], None).await),
                vec![false],
                "a record already moved is left alone"
            );
            assert_eq!(read(&store, vec![a]).await, expected[..1].to_vec());
            assert_eq!(store.key_usage(), moved);
            assert_clean(&store).await;
        }
        let store = open(dir.path());
        assert_eq!(read(&store, vec![a, b, absent]).await, expected);
        assert_eq!(store.key_usage(), moved);
        assert_clean(&store).await;
    }

    #[tokio::test]
    async fn a_rewrite_acknowledged_before_a_failed_checkpoint_is_replayed_with_its_counters_and_job_state(
    ) {
        let dir = ok(tempfile::tempdir());
        let [a, b];
        {
            let store = open(dir.path());
            [a, b] = ids(&store).await;
            ok(store
                .insert_records(vec![
                    new(a, FieldKind::Phone, 1, false),
                    new(b, FieldKind::Phone, 2, true),
                ])
                .await);
            // The checkpoint after the rewrite's log sync fails (EIO): the
            // writer stops, nothing is checkpointed (not even at close), so
            // the next start replays the log as after a crash.
            store.fail_next_checkpoint(5);
            let applied = store
                .rewrite_records(
                    vec![rewrite(a, 7, 8, 1)],
                    Some((Job::Rewrap, b"cursor a".to_vec())),
                )
                .await;
            assert_eq!(ok(applied), vec![true]);
            assert!(store.failure().is_some());
        }
        let store = open(dir.path());
        assert_eq!(
            read(&store, vec![a, b]).await,
            vec![
                Some(sealed(FieldKind::Phone, 8, 1)),
                Some(record(FieldKind::Phone))
            ]
        );
        assert_eq!(
            ok(store.job_state(Job::Rewrap).await),
            Some(b"cursor a".to_vec())
        );
        assert_eq!(
            store.key_usage(),
            usage(&[
                (KeyPurpose::Data, 7, 1),
                (KeyPurpose::Data, 8, 1),
                (KeyPurpose::Index, 1, 2),
            ])
        );
        assert_clean(&store).await;
    }

    /// What [`crashed_during_key_work`] leaves, once replayed.
    fn after_key_work() -> KeyUsage {
        usage(&[
            (KeyPurpose::Data, 7, 2),
            (KeyPurpose::Data, 8, 1),
            (KeyPurpose::Index, 1, 1),
            (KeyPurpose::Index, 2, 2),
        ])
    }

    /// A closed store with data keys v6, v7, v8 and index keys v1, v2, and
    /// three records under data v7 and index v1: `a` random (value 1), `b`
    /// deterministic (value 2), `c` random (value 3). Then, as a crash
    /// before the checkpoint leaves it, two logged frames the trees never
    /// got: `a` re-sealed under v8, `b` and `c` moved to index v2, data v7
    /// re-wrapped, data v6 retired and destroyed, the rewrap job's state
    /// set, the index rebuild's set then removed. Returns the records and
    /// the log's generation.
    async fn crashed_during_key_work(dir: &Path) -> ([RecordId; 3], u64) {
        let [a, b, c];
        {
            let store = open(dir);
            ok(store
                .insert_keys(vec![
                    wrapped(KeyPurpose::Data, 6),
                    wrapped(KeyPurpose::Data, 7),
                    wrapped(KeyPurpose::Data, 8),
                    wrapped(KeyPurpose::Index, 1),
                    wrapped(KeyPurpose::Index, 2),
                ])
                .await);
            [a, b, c] = ids(&store).await;
            ok(store
                .insert_records(vec![
                    new(a, FieldKind::Phone, 1, false),
                    new(b, FieldKind::Phone, 2, true),
                    new(c, FieldKind::Phone, 3, false),
                ])
                .await);
        }
        let first = Changes {
            rewrites: vec![Rewritten {
                id: a,
                from: KeyVersion(7),
                to: KeyVersion(8),
                record: encode_record(&sealed(FieldKind::Phone, 8, 1)),
            }],
            reindexed: vec![
                Reindexed {
                    id: b,
                    old: index(2),
                    new: index_v(2, 2),
                    deterministic: true,
                },
                Reindexed {
                    id: c,
                    old: index(3),
                    new: index_v(2, 3),
                    deterministic: false,
                },
            ],
            rewrapped_keys: vec![rewrapped(KeyPurpose::Data, 7)],
            dropped_keys: vec![(KeyPurpose::Data, KeyVersion(6))],
            meta: vec![
                MetaOp {
                    key: key_info_key(KeyPurpose::Data, KeyVersion(6)),
                    value: Some(encode_key_info(1000, Some(2000))),
                },
                MetaOp {
                    key: job_key(Job::Rewrap),
                    value: Some(b"done".to_vec()),
                },
                MetaOp {
                    key: job_key(Job::IndexRebuild),
                    value: Some(b"running".to_vec()),
                },
            ],
            deleted: Vec::new(),
        };
        let second = Changes {
            meta: vec![MetaOp {
                key: job_key(Job::IndexRebuild),
                value: None,
            }],
            ..Changes::default()
        };
        let (mut wal, frames) = ok(Wal::open(&super::super::file::RealFs, &dir.join(WAL_FILE)));
        assert!(frames.is_empty(), "a clean close leaves an empty log");
        ok(wal.append(&encode_frame(None, &[], &[], &first)));
        ok(wal.append(&encode_frame(None, &[], &[], &second)));
        ([a, b, c], wal.generation())
    }

    /// Checks the store [`crashed_during_key_work`] left, replayed.
    async fn assert_key_work_replayed(store: &SledStore, [a, b, c]: [RecordId; 3]) {
        assert_eq!(
            read(store, vec![a, b, c]).await,
            vec![
                Some(sealed(FieldKind::Phone, 8, 1)),
                Some(record(FieldKind::Phone)),
                Some(record(FieldKind::Phone)),
            ]
        );
        assert_eq!(ok(store.records_by_index(index_v(2, 2)).await), vec![b]);
        assert_eq!(ok(store.records_by_index(index_v(2, 3)).await), vec![c]);
        assert!(ok(store.records_by_index(index(2)).await).is_empty());
        assert!(ok(store.records_by_index(index(3)).await).is_empty());
        assert_eq!(store.key_usage(), after_key_work());
        let keys = ok(store.keys().await);
        assert!(keys.contains(&rewrapped(KeyPurpose::Data, 7)), "{keys:?}");
        assert!(!keys.contains(&wrapped(KeyPurpose::Data, 7)));
        assert!(!keys.iter().any(|k| k.version == KeyVersion(6)));
        assert_eq!(keys.len(), 4);
        let catalog = ok(store.key_catalog().await);
        assert_eq!(
            key_info(&catalog, KeyPurpose::Data, 6).map(|k| k.retired_unix_ms),
            Some(Some(2000))
        );
        assert_eq!(
            ok(store.job_state(Job::Rewrap).await),
            Some(b"done".to_vec())
        );
        assert_eq!(ok(store.job_state(Job::IndexRebuild).await), None);
        assert_clean(store).await;
    }

    #[tokio::test]
    async fn key_work_logged_before_a_crash_is_replayed_with_its_counters() {
        let dir = ok(tempfile::tempdir());
        let (records, _) = crashed_during_key_work(dir.path()).await;
        {
            let store = open(dir.path());
            assert_key_work_replayed(&store, records).await;
            // The retired version stays retired after the replay.
            let [d] = ids(&store).await;
            let refused = store
                .insert_records(vec![NewRecord {
                    record: sealed(FieldKind::Phone, 6, 1),
                    ..new(d, FieldKind::Phone, 4, false)
                }])
                .await;
            assert!(
                matches!(
                    refused,
                    Err(StoreError::StaleKey {
                        purpose: "data",
                        version: 6
                    })
                ),
                "{refused:?}"
            );
            // The moved deterministic mapping answers for its value.
            assert_eq!(
                ok(store
                    .insert_records(vec![NewRecord {
                        index: index_v(2, 2),
                        ..new(d, FieldKind::Phone, 2, true)
                    }])
                    .await),
                vec![records[1]]
            );
        }
        // Counted once: a second start replays nothing and adds nothing.
        let store = open(dir.path());
        assert_key_work_replayed(&store, records).await;
    }

    #[tokio::test]
    async fn a_replayed_frame_that_the_stored_counters_already_include_is_not_counted_again() {
        let dir = ok(tempfile::tempdir());
        let (records, generation) = crashed_during_key_work(dir.path()).await;
        // As a crash between a checkpoint's counters and its log reset
        // leaves it: the counters include every frame of the log.
        edit_closed(dir.path(), |db| {
            let meta = ok(db.open_tree("meta"));
            ok(meta.insert(COUNTS_KEY, encode_counts(generation, &after_key_work())));
        });
        let store = open(dir.path());
        assert_key_work_replayed(&store, records).await;
    }

    #[tokio::test]
    async fn a_data_key_version_is_retired_only_once_no_record_uses_it_and_never_comes_back() {
        let dir = ok(tempfile::tempdir());
        let a;
        {
            let store = open(dir.path());
            ok(store
                .change_keys(KeyChange::Add {
                    keys: vec![
                        wrapped(KeyPurpose::Data, 7),
                        wrapped(KeyPurpose::Data, 8),
                        wrapped(KeyPurpose::Index, 1),
                    ],
                    at_unix_ms: 1000,
                })
                .await);
            [a] = ids(&store).await;
            ok(store
                .insert_records(vec![new(a, FieldKind::Phone, 1, false)])
                .await);
            let refused = store.change_keys(retire(KeyPurpose::Data, 7, 2000)).await;
            assert!(
                matches!(
                    refused,
                    Err(StoreError::KeyInUse {
                        purpose: "data",
                        version: 7,
                        count: 1
                    })
                ),
                "{refused:?}"
            );
            assert_eq!(ok(store.keys().await).len(), 3, "nothing changed");
            assert_eq!(
                key_info(&ok(store.key_catalog().await), KeyPurpose::Data, 7)
                    .and_then(|k| k.retired_unix_ms),
                None
            );
            assert_eq!(
                ok(store.rewrite_records(vec![rewrite(a, 7, 8, 1)], None).await),
                vec![true]
            );
            ok(store.change_keys(retire(KeyPurpose::Data, 7, 2000)).await);
            assert_retired(&store, a).await;
        }
        let store = open(dir.path());
        assert_retired(&store, a).await;
        assert_clean(&store).await;
    }

    /// Data key v7 is retired (created at 1000, retired at 2000); `a` is
    /// sealed under v8 and indexed under index v1.
    async fn assert_retired(store: &SledStore, a: RecordId) {
        assert_eq!(
            ok(store.keys().await),
            vec![wrapped(KeyPurpose::Data, 8), wrapped(KeyPurpose::Index, 1)],
            "the wrapped key is destroyed"
        );
        let catalog = ok(store.key_catalog().await);
        assert_eq!(
            key_info(&catalog, KeyPurpose::Data, 7),
            Some(&KeyInfo {
                purpose: KeyPurpose::Data,
                version: KeyVersion(7),
                created_unix_ms: Some(1000),
                retired_unix_ms: Some(2000),
            })
        );
        assert_eq!(
            key_info(&catalog, KeyPurpose::Data, 8).map(|k| k.retired_unix_ms),
            Some(None)
        );
        let before = store.key_usage();
        fn stale<T>(r: &Result<T, StoreError>) -> bool {
            matches!(
                r,
                Err(StoreError::StaleKey {
                    purpose: "data",
                    version: 7
                })
            )
        }
        // A record sealed under the retired version is refused, with
        // nothing stored.
        let [b] = ids(store).await;
        let refused = store
            .insert_records(vec![NewRecord {
                record: sealed(FieldKind::Phone, 7, 2),
                ..new(b, FieldKind::Phone, 5, false)
            }])
            .await;
        assert!(stale(&refused), "{refused:?}");
        assert_eq!(read(store, vec![b]).await, vec![None]);
        assert!(ok(store.records_by_index(index(5)).await).is_empty());
        let refused = store.rewrite_records(vec![rewrite(a, 8, 7, 3)], None).await;
        assert!(stale(&refused), "{refused:?}");
        assert_eq!(
            read(store, vec![a]).await,
            vec![Some(sealed(FieldKind::Phone, 8, 1))]
        );
        assert_eq!(store.key_usage(), before);
        // Never made again, whichever way.
        for again in [
            store.insert_keys(vec![wrapped(KeyPurpose::Data, 7)]).await,
            store
                .change_keys(KeyChange::Add {
                    keys: vec![wrapped(KeyPurpose::Data, 7)],
                    at_unix_ms: 3000,
                })
                .await,
        ] {
            assert!(
                matches!(again, Err(StoreError::AlreadyExists(_))),
                "{again:?}"
            );
        }
        // Retiring it again, or a version that never existed.
        let again = store.change_keys(retire(KeyPurpose::Data, 7, 3000)).await;
        assert!(stale(&again), "{again:?}");
        let never = store.change_keys(retire(KeyPurpose::Data, 99, 3000)).await;
        assert!(
            matches!(
                never,
                Err(StoreError::StaleKey {
                    purpose: "data",
                    version: 99
                })
            ),
            "{never:?}"
        );
        // An index key in use is refused the same way.
        let in_use = store.change_keys(retire(KeyPurpose::Index, 1, 3000)).await;
        assert!(
            matches!(
                in_use,
                Err(StoreError::KeyInUse {
                    purpose: "index",
                    version: 1,
                    count: 1
                })
            ),
            "{in_use:?}"
        );
        assert_eq!(ok(store.keys().await).len(), 2);
    }

    #[tokio::test]
    async fn a_master_key_rewrap_replaces_exactly_the_live_keys_and_remembers_the_old_master() {
        let dir = ok(tempfile::tempdir());
        let live = [
            (KeyPurpose::Data, 7),
            (KeyPurpose::Index, 1),
            (KeyPurpose::Token, 1),
        ];
        let originals: Vec<WrappedKey> = live.iter().map(|(p, v)| wrapped(*p, *v)).collect();
        let renewed: Vec<WrappedKey> = live.iter().map(|(p, v)| rewrapped(*p, *v)).collect();
        {
            let store = open(dir.path());
            let mut keys = originals.clone();
            keys.push(wrapped(KeyPurpose::Data, 6));
            ok(store.insert_keys(keys).await);
            // A retired version is not a live key: not named in a rewrap.
            ok(store.change_keys(retire(KeyPurpose::Data, 6, 2000)).await);
            let rewrap = |keys: Vec<WrappedKey>| KeyChange::Rewrap {
                keys,
                replaced: [1; 8],
                at_unix_ms: 5000,
                new_key_file: "/keys/new.key".into(),
            };
            let wrong = [
                renewed[..2].to_vec(),
                [renewed.clone(), vec![rewrapped(KeyPurpose::Data, 6)]].concat(),
                [renewed.clone(), vec![rewrapped(KeyPurpose::Data, 8)]].concat(),
                [renewed[..2].to_vec(), vec![renewed[0].clone()]].concat(),
            ];
            for keys in wrong {
                let refused = store.change_keys(rewrap(keys)).await;
                assert!(
                    matches!(refused, Err(StoreError::KeysChanged)),
                    "{refused:?}"
                );
            }
            assert_eq!(ok(store.keys().await), originals, "nothing changed");
            assert!(ok(store.key_catalog().await).replaced_masters.is_empty());
            ok(store.change_keys(rewrap(renewed.clone())).await);
            assert_eq!(ok(store.keys().await), renewed);
            assert_eq!(
                ok(store.key_catalog().await).replaced_masters,
                vec![([1; 8], 5000)]
            );
        }
        let store = open(dir.path());
        assert_eq!(ok(store.keys().await), renewed);
        let catalog = ok(store.key_catalog().await);
        assert_eq!(catalog.replaced_masters, vec![([1; 8], 5000)]);
        assert_eq!(catalog.master_key_file.as_deref(), Some("/keys/new.key"));
        assert_eq!(catalog.keys.len(), 4, "live and retired versions");
    }

    #[tokio::test]
    async fn scan_records_pages_through_every_record_in_id_order_and_reports_one_that_does_not_decode(
    ) {
        let dir = ok(tempfile::tempdir());
        let store = open(dir.path());
        let all: [RecordId; 5] = ids(&store).await;
        // Two calls, the later ids first.
        ok(store
            .insert_records(
                all[3..]
                    .iter()
                    .map(|id| new(*id, FieldKind::Phone, 1, false))
                    .collect(),
            )
            .await);
        ok(store
            .insert_records(
                all[..3]
                    .iter()
                    .map(|id| new(*id, FieldKind::Phone, 1, false))
                    .collect(),
            )
            .await);
        ok(store.inner.unapplied.wait_until(0));
        let (mut seen, mut after) = (Vec::new(), None);
        for _ in 0..10 {
            let page = ok(store.scan_records(after, 2).await);
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 2);
            for (id, got) in page {
                assert_eq!(ok(got), Some(record(FieldKind::Phone)));
                seen.push(id);
                after = Some(id);
            }
        }
        assert_eq!(seen, all.to_vec());
        ok(store
            .inner
            .trees
            .records
            .insert(record_key(all[2]), &[9u8, 9, 9][..]));
        let page = ok(store.scan_records(Some(all[0]), 10).await);
        let got: Vec<(RecordId, bool)> = page.iter().map(|(id, r)| (*id, r.is_ok())).collect();
        assert_eq!(
            got,
            vec![
                (all[1], true),
                (all[2], false),
                (all[3], true),
                (all[4], true)
            ],
            "reported, not skipped"
        );
    }

    #[tokio::test]
    async fn scan_index_pages_through_random_then_deterministic_entries_of_one_version_only() {
        let dir = ok(tempfile::tempdir());
        let store = open(dir.path());
        let [r1, r2, r3, r4, d1, d2, other_r, other_d] = ids(&store).await;
        let entry = |id, index, deterministic| IndexEntry {
            id,
            index,
            deterministic,
        };
        ok(store
            .insert_records(vec![
                new(d2, FieldKind::Phone, 5, true),
                new(r3, FieldKind::Phone, 3, false),
                // A random entry whose index sorts after the deterministic
                // ones: paging on from those must not come back to it.
                new(r4, FieldKind::Phone, 6, false),
                new(r1, FieldKind::Phone, 1, false),
                new(r2, FieldKind::Phone, 1, false),
                new(d1, FieldKind::Phone, 4, true),
                NewRecord {
                    index: index_v(2, 1),
                    ..new(other_r, FieldKind::Phone, 1, false)
                },
                NewRecord {
                    index: index_v(2, 4),
                    ..new(other_d, FieldKind::Phone, 4, true)
                },
            ])
            .await);
        ok(store.inner.unapplied.wait_until(0));
        let (mut seen, mut after, mut pages) = (Vec::new(), None, 0);
        for _ in 0..10 {
            let page = ok(store.scan_index(KeyVersion(1), after, 2).await);
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 2);
            pages += 1;
            after = page.last().copied();
            seen.extend(page);
        }
        assert_eq!(
            seen,
            vec![
                entry(r1, index(1), false),
                entry(r2, index(1), false),
                entry(r3, index(3), false),
                entry(r4, index(6), false),
                entry(d1, index(4), true),
                entry(d2, index(5), true),
            ]
        );
        assert_eq!(pages, 3);
        assert_eq!(
            ok(store.scan_index(KeyVersion(2), None, 10).await),
            vec![
                entry(other_r, index_v(2, 1), false),
                entry(other_d, index_v(2, 4), true)
            ]
        );
        assert!(ok(store.scan_index(KeyVersion(3), None, 10).await).is_empty());
        assert!(ok(store.scan_index(KeyVersion(1), None, 0).await).is_empty());
    }

    #[tokio::test]
    async fn reindex_moves_entries_to_the_new_index_once_and_a_deterministic_value_is_found_under_an_older_index(
    ) {
        let dir = ok(tempfile::tempdir());
        let [a, b, c, d];
        let moved = usage(&[
            (KeyPurpose::Data, 7, 3),
            (KeyPurpose::Index, 1, 1),
            (KeyPurpose::Index, 2, 2),
        ]);
        {
            let store = open(dir.path());
            [a, b, c, d] = ids(&store).await;
            ok(store
                .insert_records(vec![
                    new(a, FieldKind::Phone, 1, false),
                    new(b, FieldKind::Phone, 2, true),
                    new(c, FieldKind::Phone, 9, true),
                ])
                .await);
            let moves = vec![
                Reindex {
                    entry: IndexEntry {
                        id: a,
                        index: index(1),
                        deterministic: false,
                    },
                    new: index_v(2, 1),
                },
                Reindex {
                    entry: IndexEntry {
                        id: b,
                        index: index(2),
                        deterministic: true,
                    },
                    new: index_v(2, 2),
                },
            ];
            let job = Some((Job::IndexRebuild, b"after b".to_vec()));
            assert_eq!(
                ok(store.reindex(moves.clone(), job).await),
                vec![true, true]
            );
            assert_eq!(
                ok(store.reindex(moves.clone(), None).await),
                vec![false, false],
                "a second move of the same entries, maybe before they are applied"
            );
            ok(store.inner.unapplied.wait_until(0));
            assert_eq!(
                ok(store.reindex(moves, None).await),
                vec![false, false],
                "a second move of the same entries, applied"
            );
            let never = Reindex {
                entry: IndexEntry {
                    id: d,
                    index: index(7),
                    deterministic: false,
                },
                new: index_v(2, 7),
            };
            assert_eq!(ok(store.reindex(vec![never], None).await), vec![false]);
            assert_eq!(store.key_usage(), moved);
            assert_eq!(
                ok(store.job_state(Job::IndexRebuild).await),
                Some(b"after b".to_vec())
            );
            // Value 9 is not moved yet: an insert under the new index
            // version, naming the old one, finds its record.
            let got = store
                .insert_records(vec![NewRecord {
                    index: index_v(2, 9),
                    older_indexes: vec![index(9)],
                    ..new(d, FieldKind::Phone, 9, true)
                }])
                .await;
            assert_eq!(ok(got), vec![c]);
            // Value 2 is moved: found under the new index.
            let got = store
                .insert_records(vec![NewRecord {
                    index: index_v(2, 2),
                    older_indexes: vec![index(2)],
                    ..new(d, FieldKind::Phone, 2, true)
                }])
                .await;
            assert_eq!(ok(got), vec![b]);
            assert_eq!(read(&store, vec![d]).await, vec![None]);
            assert_eq!(store.key_usage(), moved, "nothing was added");
            assert_clean(&store).await;
        }
        let store = open(dir.path());
        for (idx, found) in [
            (index_v(2, 1), vec![a]),
            (index_v(2, 2), vec![b]),
            (index(1), vec![]),
            (index(2), vec![]),
            (index(9), vec![c]),
        ] {
            assert_eq!(ok(store.records_by_index(idx).await), found, "{idx:?}");
        }
        assert_eq!(store.key_usage(), moved);
        assert_clean(&store).await;
    }

    #[tokio::test]
    async fn a_record_named_twice_in_one_rewrite_call_is_rewritten_once() {
        let dir = ok(tempfile::tempdir());
        let store = open(dir.path());
        let [a] = ids(&store).await;
        ok(store
            .insert_records(vec![new(a, FieldKind::Phone, 1, false)])
            .await);
        let applied = ok(store
            .rewrite_records(vec![rewrite(a, 7, 8, 1), rewrite(a, 7, 9, 2)], None)
            .await);
        assert_eq!(applied, vec![true, false], "the second finds it moved");
        assert_eq!(
            read(&store, vec![a]).await,
            vec![Some(sealed(FieldKind::Phone, 8, 1))]
        );
        assert_eq!(
            store.key_usage(),
            usage(&[(KeyPurpose::Data, 8, 1), (KeyPurpose::Index, 1, 1)])
        );
        assert_clean(&store).await;
    }

    #[tokio::test]
    async fn an_entry_named_twice_in_one_reindex_call_is_moved_once() {
        let dir = ok(tempfile::tempdir());
        let store = open(dir.path());
        let [a, b] = ids(&store).await;
        ok(store
            .insert_records(vec![
                new(a, FieldKind::Phone, 1, false),
                new(b, FieldKind::Phone, 2, true),
            ])
            .await);
        let moves = |id, idx, deterministic| {
            let m = Reindex {
                entry: IndexEntry {
                    id,
                    index: index(idx),
                    deterministic,
                },
                new: index_v(2, idx),
            };
            [m, m]
        };
        let applied = ok(store
            .reindex([moves(a, 1, false), moves(b, 2, true)].concat(), None)
            .await);
        assert_eq!(applied, vec![true, false, true, false]);
        assert_eq!(
            store.key_usage(),
            usage(&[(KeyPurpose::Data, 7, 2), (KeyPurpose::Index, 2, 2)])
        );
        assert_clean(&store).await;
    }

    #[tokio::test]
    async fn counters_stored_with_the_current_log_generation_still_count_the_frames_logged_after_them(
    ) {
        let dir = ok(tempfile::tempdir());
        one_record(dir.path()).await;
        // As a crash between a checkpoint's counters and its log reset
        // leaves it, with no frame in the log: the counters name the log's
        // generation.
        let generation = ok(Wal::open(
            &super::super::file::RealFs,
            &dir.path().join(WAL_FILE),
        ))
        .0
        .generation();
        let one = usage(&[(KeyPurpose::Data, 7, 1), (KeyPurpose::Index, 1, 1)]);
        edit_closed(dir.path(), |db| {
            let meta = ok(db.open_tree("meta"));
            ok(meta.insert(COUNTS_KEY, encode_counts(generation, &one)));
        });
        {
            let store = open(dir.path());
            assert_eq!(store.key_usage(), one);
            let [b] = ids(&store).await;
            // No checkpoint from here on (EIO): the next start replays.
            store.fail_next_checkpoint(5);
            ok(store
                .insert_records(vec![new(b, FieldKind::Phone, 2, false)])
                .await);
        }
        let store = open(dir.path());
        assert_eq!(
            store.key_usage(),
            usage(&[(KeyPurpose::Data, 7, 2), (KeyPurpose::Index, 1, 2)]),
            "the replayed record is counted"
        );
        assert_clean(&store).await;
    }

    #[tokio::test]
    async fn an_index_key_version_is_retired_once_its_entries_moved_and_nothing_moves_to_a_retired_one(
    ) {
        let dir = ok(tempfile::tempdir());
        let store = open(dir.path());
        ok(store
            .insert_keys(vec![
                wrapped(KeyPurpose::Index, 1),
                wrapped(KeyPurpose::Index, 2),
                wrapped(KeyPurpose::Index, 3),
            ])
            .await);
        let [a, b, c] = ids(&store).await;
        ok(store
            .insert_records(vec![
                new(a, FieldKind::Phone, 1, false),
                new(b, FieldKind::Phone, 2, true),
            ])
            .await);
        let refused = store.change_keys(retire(KeyPurpose::Index, 1, 2000)).await;
        assert!(
            matches!(
                refused,
                Err(StoreError::KeyInUse {
                    purpose: "index",
                    version: 1,
                    count: 2
                })
            ),
            "{refused:?}"
        );
        let moves = [(a, 1, false), (b, 2, true)]
            .into_iter()
            .map(|(id, idx, deterministic)| Reindex {
                entry: IndexEntry {
                    id,
                    index: index(idx),
                    deterministic,
                },
                new: index_v(2, idx),
            })
            .collect();
        assert_eq!(ok(store.reindex(moves, None).await), vec![true, true]);
        ok(store.change_keys(retire(KeyPurpose::Index, 1, 2000)).await);
        ok(store.change_keys(retire(KeyPurpose::Index, 3, 2000)).await);
        // Nothing moves to, or is indexed under, a retired version.
        let to_retired = store
            .reindex(
                vec![Reindex {
                    entry: IndexEntry {
                        id: a,
                        index: index_v(2, 1),
                        deterministic: false,
                    },
                    new: index_v(3, 1),
                }],
                None,
            )
            .await;
        assert!(
            matches!(
                to_retired,
                Err(StoreError::StaleKey {
                    purpose: "index",
                    version: 3
                })
            ),
            "{to_retired:?}"
        );
        let under_retired = store
            .insert_records(vec![new(c, FieldKind::Phone, 3, false)])
            .await;
        assert!(
            matches!(
                under_retired,
                Err(StoreError::StaleKey {
                    purpose: "index",
                    version: 1
                })
            ),
            "{under_retired:?}"
        );
        assert_eq!(ok(store.records_by_index(index_v(2, 1)).await), vec![a]);
        assert_eq!(read(&store, vec![c]).await, vec![None]);
        assert_eq!(
            store.key_usage(),
            usage(&[(KeyPurpose::Data, 7, 2), (KeyPurpose::Index, 2, 2)])
        );
        assert_eq!(ok(store.keys().await), vec![wrapped(KeyPurpose::Index, 2)]);
        assert_clean(&store).await;
    }

    #[tokio::test]
    async fn a_job_state_is_kept_per_job_and_survives_reopening() {
        let dir = ok(tempfile::tempdir());
        {
            let store = open(dir.path());
            assert_eq!(ok(store.job_state(Job::Rewrap).await), None);
            ok(store.set_job_state(Job::Rewrap, b"first".to_vec()).await);
            ok(store.set_job_state(Job::Rewrap, b"second".to_vec()).await);
            ok(store
                .set_job_state(Job::IndexRebuild, b"other".to_vec())
                .await);
            assert_eq!(
                ok(store.job_state(Job::Rewrap).await),
                Some(b"second".to_vec())
            );
        }
        let store = open(dir.path());
        assert_eq!(
            ok(store.job_state(Job::Rewrap).await),
            Some(b"second".to_vec())
        );
        assert_eq!(
            ok(store.job_state(Job::IndexRebuild).await),
            Some(b"other".to_vec())
        );
    }

    /// Back-to-back: each rewrite and move is staged while the group that
    /// inserted (or moved) its record may still be applying, so its
    /// compare-and-set reads the overlay as often as the trees.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rewrites_and_moves_right_after_their_insert_see_it_whether_or_not_applied_yet() {
        let dir = ok(tempfile::tempdir());
        let store = open(dir.path());
        let rounds = 150u8;
        for value in 0..rounds {
            let [r, d] = ids(&store).await;
            ok(store
                .insert_records(vec![
                    new(r, FieldKind::Phone, value, false),
                    new(d, FieldKind::Phone, value, true),
                ])
                .await);
            // The commit thread stages a write while at most the group
            // before it is unapplied: alternate which one follows the
            // insert.
            if value % 2 == 0 {
                assert_eq!(
                    ok(store
                        .rewrite_records(vec![rewrite(r, 7, 8, value)], None)
                        .await),
                    vec![true],
                    "round {value}"
                );
            }
            let moves: Vec<Reindex> = [(r, false), (d, true)]
                .into_iter()
                .map(|(id, deterministic)| Reindex {
                    entry: IndexEntry {
                        id,
                        index: index(value),
                        deterministic,
                    },
                    new: index_v(2, value),
                })
                .collect();
            assert_eq!(
                ok(store.reindex(moves.clone(), None).await),
                vec![true, true],
                "round {value}"
            );
            assert_eq!(
                ok(store.reindex(moves, None).await),
                vec![false, false],
                "round {value}"
            );
            if value % 2 == 1 {
                assert_eq!(
                    ok(store
                        .rewrite_records(vec![rewrite(r, 7, 8, value)], None)
                        .await),
                    vec![true],
                    "round {value}"
                );
            }
            assert_eq!(
                read(&store, vec![r]).await,
                vec![Some(sealed(FieldKind::Phone, 8, value))],
                "round {value}"
            );
            let mut found = ok(store.records_by_index(index_v(2, value)).await);
            found.sort();
            assert_eq!(found, vec![r, d], "round {value}");
        }
        let n = u64::from(rounds);
        assert_eq!(
            store.key_usage(),
            usage(&[
                (KeyPurpose::Data, 7, n),
                (KeyPurpose::Data, 8, n),
                (KeyPurpose::Index, 2, 2 * n),
            ])
        );
        assert_clean(&store).await;
    }

    #[tokio::test]
    async fn a_record_that_does_not_decode_is_never_rewritten() {
        let dir = ok(tempfile::tempdir());
        let store = open(dir.path());
        let [a] = ids(&store).await;
        ok(store
            .insert_records(vec![new(a, FieldKind::Phone, 1, false)])
            .await);
        ok(store.inner.unapplied.wait_until(0));
        // Its format byte damaged; its key version still reads as 7.
        let mut damaged = encode_record(&record(FieldKind::Phone));
        damaged[0] = 9;
        ok(store
            .inner
            .trees
            .records
            .insert(record_key(a), damaged.clone()));
        assert_eq!(
            ok(store.rewrite_records(vec![rewrite(a, 7, 8, 1)], None).await),
            vec![false]
        );
        ok(store.inner.unapplied.wait_until(0));
        assert_eq!(
            ok(store.inner.trees.records.get(record_key(a))).map(|b| b.to_vec()),
            Some(damaged),
            "left as it was, for the operator"
        );
        assert_eq!(
            store.key_usage(),
            usage(&[(KeyPurpose::Data, 7, 1), (KeyPurpose::Index, 1, 1)])
        );
    }

    #[tokio::test]
    async fn the_key_version_counters_survive_a_clean_reopen_and_are_recounted_when_lost() {
        let dir = ok(tempfile::tempdir());
        let expected = usage(&[
            (KeyPurpose::Data, 7, 1),
            (KeyPurpose::Data, 8, 2),
            (KeyPurpose::Index, 1, 2),
            (KeyPurpose::Index, 2, 1),
        ]);
        {
            let store = open(dir.path());
            let [a, b, c] = ids(&store).await;
            ok(store
                .insert_records(vec![
                    new(a, FieldKind::Phone, 1, false),
                    NewRecord {
                        record: sealed(FieldKind::Phone, 8, 1),
                        ..new(b, FieldKind::Phone, 2, true)
                    },
                    NewRecord {
                        record: sealed(FieldKind::Phone, 8, 2),
                        index: index_v(2, 3),
                        ..new(c, FieldKind::Phone, 3, false)
                    },
                ])
                .await);
            assert_eq!(store.key_usage(), expected);
        }
        drop(open(dir.path()));
        let store = open(dir.path());
        assert_eq!(store.key_usage(), expected, "after two clean reopens");
        drop(store);
        edit_closed(dir.path(), |db| {
            let meta = ok(db.open_tree("meta"));
            assert!(ok(meta.remove(COUNTS_KEY)).is_some());
        });
        let store = open(dir.path());
        assert_eq!(store.key_usage(), expected, "recounted");
        assert_clean(&store).await;
    }

    #[tokio::test]
    async fn keys_are_insert_once() {
        let dir = ok(tempfile::tempdir());
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

    // Durable counters, freezes and canaries (issue 14).

    fn charge(counter: &str, window_start_ms: u64, amount: u64, limit: Option<u64>) -> Charge {
        Charge {
            counter: counter.to_owned(),
            window_start_ms,
            amount,
            limit,
        }
    }

    fn counter(name: &str, window_start_ms: u64, count: u64) -> CounterValue {
        CounterValue {
            counter: name.to_owned(),
            window_start_ms,
            count,
        }
    }

    fn freeze_of(caller: &str, since_unix_ms: u64, reason: &str) -> Freeze {
        Freeze {
            caller: caller.to_owned(),
            since_unix_ms,
            reason: reason.to_owned(),
            by: "vault".to_owned(),
        }
    }

    fn canary(id: RecordId, kind: FieldKind) -> Canary {
        Canary {
            id,
            kind,
            created_unix_ms: 1_700_000_000_000 + id.seq,
            by: "admin".to_owned(),
        }
    }

    #[tokio::test]
    async fn a_charge_adds_each_amount_to_its_counter_and_returns_the_new_counts() {
        let dir = ok(tempfile::tempdir());
        let store = open(dir.path());
        assert!(ok(store.counters().await).is_empty());
        assert_eq!(
            ok(store
                .charge(vec![
                    charge("reveal/support/callback/minute", 60_000, 3, Some(60)),
                    charge("reveal/support/callback/day", 0, 3, Some(2000)),
                ])
                .await),
            Charged::Added(vec![3, 3])
        );
        assert_eq!(
            ok(store
                .charge(vec![
                    charge("reveal/support/callback/minute", 60_000, 57, Some(60)),
                    charge("reveal/support/callback/day", 0, 57, None),
                ])
                .await),
            Charged::Added(vec![60, 60]),
            "a count may reach its limit"
        );
        assert_eq!(
            ok(store.counters().await),
            vec![
                counter("reveal/support/callback/day", 0, 60),
                counter("reveal/support/callback/minute", 60_000, 60),
            ]
        );
        assert_eq!(
            ok(store.charge(Vec::new()).await),
            Charged::Added(Vec::new())
        );
    }

    #[tokio::test]
    async fn a_reset_counter_starts_from_zero_and_stays_reset_after_a_reopen() {
        let dir = ok(tempfile::tempdir());
        {
            let store = open(dir.path());
            ok(store
                .charge(vec![
                    charge("hits/support", 0, 3, None),
                    charge("unknown/support", 0, 7, None),
                    charge("q/support", 0, 5, None),
                ])
                .await);
            ok(store
                .reset_counters(vec![
                    "hits/support".into(),
                    "unknown/support".into(),
                    "absent".into(),
                ])
                .await);
            assert_eq!(ok(store.counters().await), vec![counter("q/support", 0, 5)]);
            assert_eq!(
                ok(store
                    .charge(vec![charge("hits/support", 0, 1, Some(1))])
                    .await),
                Charged::Added(vec![1])
            );
            ok(store.reset_counters(Vec::new()).await);
        }
        let store = open(dir.path());
        assert_eq!(
            ok(store.counters().await),
            vec![counter("hits/support", 0, 1), counter("q/support", 0, 5)]
        );
    }

    #[tokio::test]
    async fn a_charge_over_its_limit_adds_nothing_of_the_call_and_names_the_charge_and_its_count() {
        let dir = ok(tempfile::tempdir());
        let store = open(dir.path());
        ok(store
            .charge(vec![charge("minute", 60_000, 58, Some(60))])
            .await);
        // The second charge passes its limit: the first adds nothing either.
        assert_eq!(
            ok(store
                .charge(vec![
                    charge("day", 0, 5, Some(2000)),
                    charge("minute", 60_000, 3, Some(60)),
                ])
                .await),
            Charged::Over {
                index: 1,
                count: 58
            }
        );
        assert_eq!(
            ok(store.counters().await),
            vec![counter("minute", 60_000, 58)]
        );
        // Two charges of one counter in one call see each other; over, the
        // count named is what the counter holds (nothing of the call).
        assert_eq!(
            ok(store
                .charge(vec![
                    charge("minute", 60_000, 1, Some(60)),
                    charge("minute", 60_000, 2, Some(60)),
                ])
                .await),
            Charged::Over {
                index: 1,
                count: 58
            }
        );
        assert_eq!(
            ok(store
                .charge(vec![
                    charge("minute", 60_000, 1, Some(60)),
                    charge("minute", 60_000, 1, Some(60)),
                ])
                .await),
            Charged::Added(vec![59, 60])
        );
        assert_eq!(
            ok(store
                .charge(vec![charge("minute", 60_000, 1, Some(60))])
                .await),
            Charged::Over {
                index: 0,
                count: 60
            }
        );
        assert_eq!(
            ok(store.counters().await),
            vec![counter("minute", 60_000, 60)]
        );
    }

    #[tokio::test]
    async fn a_charge_of_a_later_window_starts_from_zero_and_one_of_an_earlier_window_adds_to_the_later(
    ) {
        let dir = ok(tempfile::tempdir());
        let store = open(dir.path());
        ok(store
            .charge(vec![charge("minute", 60_000, 60, Some(60))])
            .await);
        assert_eq!(
            ok(store
                .charge(vec![charge("minute", 120_000, 5, Some(60))])
                .await),
            Charged::Added(vec![5]),
            "the earlier window's count is dropped"
        );
        // A clock that went back: the stored later window is kept.
        assert_eq!(
            ok(store
                .charge(vec![charge("minute", 60_000, 2, Some(60))])
                .await),
            Charged::Added(vec![7])
        );
        assert_eq!(
            ok(store.counters().await),
            vec![counter("minute", 120_000, 7)]
        );
        // Over the limit in a new window: the count named is that window's.
        assert_eq!(
            ok(store
                .charge(vec![charge("minute", 180_000, 61, Some(60))])
                .await),
            Charged::Over { index: 0, count: 0 }
        );
        assert_eq!(
            ok(store.counters().await),
            vec![counter("minute", 120_000, 7)]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_charges_of_one_counter_never_pass_its_limit_together() {
        let dir = ok(tempfile::tempdir());
        let store = open(dir.path());
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut added = 0u64;
                for _ in 0..10 {
                    let got = store
                        .charge(vec![
                            charge("shared", 60_000, 1, Some(100)),
                            charge("total", 0, 1, None),
                        ])
                        .await;
                    match got {
                        Ok(Charged::Added(counts)) => {
                            assert!(counts[0] <= 100, "{counts:?}");
                            added += 1;
                        }
                        Ok(Charged::Over { index: 0, count }) => assert_eq!(count, 100),
                        other => panic!("{other:?}"),
                    }
                }
                added
            }));
        }
        let mut added = 0;
        for t in tasks {
            added += ok(t.await);
        }
        assert_eq!(added, 100, "exactly the limit's worth was added");
        assert_eq!(
            ok(store.counters().await),
            vec![counter("shared", 60_000, 100), counter("total", 0, 100)],
            "an over-limit call added nothing to its other counter"
        );
    }

    #[tokio::test]
    async fn freezing_a_frozen_caller_returns_its_first_freeze_and_changes_nothing() {
        let dir = ok(tempfile::tempdir());
        let store = open(dir.path());
        let first = freeze_of("spiffe://example.org/support", 1000, "quota hit 3 times");
        assert_eq!(ok(store.frozen(&first.caller).await), None);
        assert_eq!(ok(store.freeze(first.clone()).await), None);
        assert_eq!(
            ok(store
                .freeze(freeze_of(&first.caller, 2000, "canary token"))
                .await),
            Some(first.clone())
        );
        assert_eq!(ok(store.frozen(&first.caller).await), Some(first.clone()));
        assert_eq!(ok(store.freezes().await), vec![first.clone()]);
        // Frozen in one group with a second freeze of the same caller.
        let (a, b) = tokio::join!(
            store.freeze(freeze_of("courier", 5, "scan")),
            store.freeze(freeze_of("courier", 6, "scan"))
        );
        let (a, b) = (ok(a), ok(b));
        assert!(
            a.is_none() != b.is_none(),
            "one freezes, the other finds it: {a:?} {b:?}"
        );
        let kept = ok(store.frozen("courier").await);
        assert!(kept.is_some() && a.or(b) == kept, "{kept:?}");
        assert_eq!(
            ok(store.freezes().await)
                .into_iter()
                .map(|f| f.caller)
                .collect::<Vec<_>>(),
            vec!["courier".to_owned(), first.caller.clone()],
            "in caller order"
        );
    }

    #[tokio::test]
    async fn unfreeze_lifts_a_freeze_and_returns_none_for_a_caller_that_is_not_frozen() {
        let dir = ok(tempfile::tempdir());
        let store = open(dir.path());
        assert_eq!(ok(store.unfreeze("support").await), None);
        let f = freeze_of("support", 1000, "canary token");
        ok(store.freeze(f.clone()).await);
        assert_eq!(ok(store.unfreeze("support").await), Some(f));
        assert_eq!(ok(store.frozen("support").await), None);
        assert!(ok(store.freezes().await).is_empty());
        assert_eq!(ok(store.unfreeze("support").await), None);
        // Frozen again afterwards, with the new freeze.
        let again = freeze_of("support", 3000, "scan");
        assert_eq!(ok(store.freeze(again.clone()).await), None);
        assert_eq!(ok(store.frozen("support").await), Some(again));
    }

    #[tokio::test]
    async fn canaries_of_answers_in_order_with_none_for_ids_that_are_not_canaries() {
        let dir = ok(tempfile::tempdir());
        let store = open(dir.path());
        let [a, b, c, record_id] = ids(&store).await;
        ok(store
            .insert_records(vec![new(record_id, FieldKind::Phone, 1, false)])
            .await);
        // Added out of id order, in two calls.
        ok(store.add_canaries(vec![canary(c, FieldKind::Email)]).await);
        ok(store.add_canaries(vec![canary(a, FieldKind::Phone)]).await);
        assert_eq!(
            ok(store.canaries_of(vec![c, record_id, a, b]).await),
            vec![
                Some(canary(c, FieldKind::Email)),
                None,
                Some(canary(a, FieldKind::Phone)),
                None
            ]
        );
        assert_eq!(
            ok(store.canaries().await),
            vec![canary(a, FieldKind::Phone), canary(c, FieldKind::Email)],
            "in id order"
        );
        // A batch larger than the inline reads answers the same.
        let many: Vec<RecordId> = std::iter::repeat_n([a, b], 10).flatten().collect();
        let got = ok(store.canaries_of(many).await);
        assert_eq!(got.len(), 20);
        assert!(got
            .chunks(2)
            .all(|p| p == [Some(canary(a, FieldKind::Phone)), None]));
    }

    #[tokio::test]
    async fn a_canary_whose_id_was_never_handed_out_or_is_taken_fails_its_call_and_stores_nothing()
    {
        let dir = ok(tempfile::tempdir());
        let store = open(dir.path());
        let [a, b, taken] = ids(&store).await;
        let beyond = RecordId::new(a.seq + 10 * super::super::sequence::CEILING_STEP, a.epoch);
        let other_epoch = RecordId::new(a.seq, (a.epoch + 1) % RecordId::EPOCH_LIMIT);
        for bad in [beyond, other_epoch] {
            let refused = store
                .add_canaries(vec![
                    canary(a, FieldKind::Phone),
                    canary(bad, FieldKind::Phone),
                ])
                .await;
            assert!(
                matches!(&refused, Err(StoreError::Backend(f)) if f.detail.contains("never handed out")),
                "{bad} {a} {refused:?}"
            );
        }
        let twice = store
            .add_canaries(vec![
                canary(a, FieldKind::Phone),
                canary(a, FieldKind::Email),
            ])
            .await;
        assert!(
            matches!(twice, Err(StoreError::AlreadyExists("canary"))),
            "{twice:?}"
        );
        ok(store
            .insert_records(vec![new(taken, FieldKind::Phone, 1, false)])
            .await);
        let record = store
            .add_canaries(vec![
                canary(a, FieldKind::Phone),
                canary(taken, FieldKind::Phone),
            ])
            .await;
        assert!(
            matches!(record, Err(StoreError::AlreadyExists(_))),
            "{record:?}"
        );
        assert!(ok(store.canaries().await).is_empty(), "nothing was stored");
        ok(store.add_canaries(vec![canary(b, FieldKind::Phone)]).await);
        let again = store
            .add_canaries(vec![
                canary(a, FieldKind::Phone),
                canary(b, FieldKind::Phone),
            ])
            .await;
        assert!(
            matches!(again, Err(StoreError::AlreadyExists("canary"))),
            "{again:?}"
        );
        assert_eq!(
            ok(store.canaries().await),
            vec![canary(b, FieldKind::Phone)]
        );
        assert!(store.failure().is_none(), "the store goes on");
    }

    #[tokio::test]
    async fn a_name_longer_than_the_store_keeps_is_refused_with_its_field_and_nothing_is_written() {
        let dir = ok(tempfile::tempdir());
        let store = open(dir.path());
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        let just = "y".repeat(MAX_NAME_BYTES);
        let too_long = |r: Result<(), StoreError>, field: &str| match r {
            Err(StoreError::TooLong { what, bytes, limit }) => {
                assert_eq!(
                    (what, bytes, limit),
                    (field, MAX_NAME_BYTES + 1, MAX_NAME_BYTES)
                );
            }
            other => panic!("{field}: {other:?}"),
        };
        too_long(
            store
                .charge(vec![charge("ok", 0, 1, None), charge(&long, 0, 1, None)])
                .await
                .map(drop),
            "counter name",
        );
        too_long(
            store.freeze(freeze_of(&long, 1, "scan")).await.map(drop),
            "caller",
        );
        too_long(
            store.freeze(freeze_of("support", 1, &long)).await.map(drop),
            "freeze reason",
        );
        too_long(
            store
                .freeze(Freeze {
                    by: long.clone(),
                    ..freeze_of("support", 1, "scan")
                })
                .await
                .map(drop),
            "freeze `by`",
        );
        too_long(store.unfreeze(&long).await.map(drop), "caller");
        let [a] = ids(&store).await;
        too_long(
            store
                .add_canaries(vec![Canary {
                    by: long.clone(),
                    ..canary(a, FieldKind::Phone)
                }])
                .await,
            "canary `by`",
        );
        assert!(ok(store.counters().await).is_empty());
        assert!(ok(store.freezes().await).is_empty());
        assert!(ok(store.canaries().await).is_empty());
        // At the bound, they are kept.
        ok(store.charge(vec![charge(&just, 0, 1, None)]).await);
        ok(store.freeze(freeze_of(&just, 1, &just)).await);
        assert_eq!(ok(store.counters().await), vec![counter(&just, 0, 1)]);
        assert_eq!(
            ok(store.frozen(&just).await),
            Some(freeze_of(&just, 1, &just))
        );
    }

    /// What `abuse_state` writes, as read back.
    async fn assert_abuse_state(store: &SledStore, [a, b]: [RecordId; 2], when: &str) {
        assert_eq!(
            ok(store.counters().await),
            vec![counter("day", 0, 7), counter("minute", 60_000, 5)],
            "{when}"
        );
        assert_eq!(
            ok(store.frozen("support").await),
            Some(freeze_of("support", 1000, "quota hit 3 times")),
            "{when}"
        );
        assert_eq!(ok(store.frozen("courier").await), None, "{when}");
        assert_eq!(
            ok(store.freezes().await),
            vec![freeze_of("support", 1000, "quota hit 3 times")],
            "{when}"
        );
        assert_eq!(
            ok(store.canaries_of(vec![a, b]).await),
            vec![
                Some(canary(a, FieldKind::Phone)),
                Some(canary(b, FieldKind::Email))
            ],
            "{when}"
        );
        // The counts go on from where they were.
        assert_eq!(
            ok(store
                .charge(vec![charge("minute", 60_000, 1, Some(5))])
                .await),
            Charged::Over { index: 0, count: 5 },
            "{when}"
        );
    }

    /// Charges, two freezes (one lifted) and two canaries.
    async fn abuse_state(store: &SledStore) -> [RecordId; 2] {
        let [a, b] = ids(store).await;
        ok(store
            .charge(vec![
                charge("minute", 60_000, 3, Some(5)),
                charge("day", 0, 3, None),
            ])
            .await);
        ok(store
            .charge(vec![
                charge("minute", 60_000, 2, Some(5)),
                charge("day", 0, 4, None),
            ])
            .await);
        ok(store
            .freeze(freeze_of("support", 1000, "quota hit 3 times"))
            .await);
        ok(store.freeze(freeze_of("courier", 1000, "scan")).await);
        ok(store.unfreeze("courier").await);
        ok(store
            .add_canaries(vec![
                canary(a, FieldKind::Phone),
                canary(b, FieldKind::Email),
            ])
            .await);
        [a, b]
    }

    #[tokio::test]
    async fn counts_freezes_and_canaries_survive_a_clean_reopen() {
        let dir = ok(tempfile::tempdir());
        let ids = {
            let store = open(dir.path());
            abuse_state(&store).await
        };
        let store = open(dir.path());
        assert_abuse_state(&store, ids, "after a reopen").await;
    }

    #[tokio::test]
    async fn counts_freezes_and_canaries_logged_before_a_crash_are_replayed_on_open() {
        let dir = ok(tempfile::tempdir());
        let ids = {
            let store = open(dir.path());
            let ids = abuse_state(&store).await;
            // The checkpoint after one more write fails: the writer stops,
            // nothing is checkpointed (not even at close), so the log keeps
            // every frame since the open, as a crash leaves it.
            store.fail_next_checkpoint(5);
            ok(store.charge(vec![charge("day", 0, 0, None)]).await);
            assert!(store.failure().is_some());
            ids
        };
        // As if the process died before sled wrote the `meta` tree: only
        // the log holds the state.
        edit_closed(dir.path(), |db| {
            let meta = ok(db.open_tree("meta"));
            for prefix in [&b"counter/"[..], b"freeze/", b"canary/"] {
                for key in meta.scan_prefix(prefix).keys() {
                    ok(meta.remove(ok(key)));
                }
            }
        });
        let store = open(dir.path());
        assert_abuse_state(&store, ids, "after the log's replay").await;
        drop(store);
        let store = open(dir.path());
        assert_abuse_state(&store, ids, "after a second reopen").await;
    }

    #[test]
    fn the_group_cost_of_a_charge_freeze_unfreeze_or_canary_is_its_bytes_in_the_frame() {
        use crate::store::group_commit::Committer;
        use crate::store::layout::{
            canary_key, counter_key, encode_canary, encode_counter, encode_freeze, freeze_key,
        };
        let frame_bytes = |ops: Vec<MetaOp>| {
            encode_frame(
                None,
                &[],
                &[],
                &Changes {
                    meta: ops,
                    ..Changes::default()
                },
            )
            .len()
        };
        let charges = vec![
            charge("reveal/support/callback/minute", 60_000, 3, Some(60)),
            charge("unknown-tokens/support", 0, 1, None),
        ];
        let ops = charges
            .iter()
            .map(|c| MetaOp {
                key: counter_key(&c.counter),
                value: Some(encode_counter(c.window_start_ms, 3)),
            })
            .collect();
        assert_eq!(SledWriter::cost(&Write::Charge(charges)), frame_bytes(ops));
        let f = freeze_of("spiffe://example.org/support", 1000, "canary token");
        let op = MetaOp {
            key: freeze_key(&f.caller),
            value: Some(encode_freeze(&f)),
        };
        assert_eq!(
            SledWriter::cost(&Write::Freeze(f.clone())),
            frame_bytes(vec![op])
        );
        let op = MetaOp {
            key: freeze_key(&f.caller),
            value: None,
        };
        assert_eq!(
            SledWriter::cost(&Write::Unfreeze(f.caller.clone())),
            frame_bytes(vec![op])
        );
        let canaries = vec![
            canary(RecordId::new(1, 2), FieldKind::Phone),
            canary(RecordId::new(3, 2), FieldKind::Email),
        ];
        let ops = canaries
            .iter()
            .map(|c| MetaOp {
                key: canary_key(c.id),
                value: Some(encode_canary(c)),
            })
            .collect();
        assert_eq!(
            SledWriter::cost(&Write::Canaries(canaries)),
            frame_bytes(ops)
        );
    }

    #[tokio::test]
    async fn damaged_counters_freezes_and_canaries_are_reported_and_a_damaged_freeze_stays_frozen()
    {
        let dir = ok(tempfile::tempdir());
        let [a, record_id] = {
            let store = open(dir.path());
            let [a, record_id] = ids(&store).await;
            ok(store
                .insert_records(vec![new(record_id, FieldKind::Phone, 1, false)])
                .await);
            ok(store.charge(vec![charge("minute", 60_000, 1, None)]).await);
            ok(store.freeze(freeze_of("support", 1000, "scan")).await);
            ok(store.add_canaries(vec![canary(a, FieldKind::Phone)]).await);
            assert_clean(&store).await;
            [a, record_id]
        };
        edit_closed(dir.path(), |db| {
            let meta = ok(db.open_tree("meta"));
            for key in [
                crate::store::layout::counter_key("minute"),
                crate::store::layout::freeze_key("support"),
                crate::store::layout::canary_key(a),
            ] {
                ok(meta.insert(key, &[9u8, 9][..]));
            }
            // A canary on a record's id.
            let c = canary(record_id, FieldKind::Phone);
            ok(meta.insert(
                crate::store::layout::canary_key(record_id),
                crate::store::layout::encode_canary(&c),
            ));
        });
        let store = open(dir.path());
        let report = ok(store.check_integrity().await);
        assert_eq!(
            report.problems,
            vec![
                "counter \"minute\": stored counter is corrupt: unknown format".to_owned(),
                "the freeze of \"support\": stored freeze is corrupt: unknown format".to_owned(),
                "a canary: stored canary is corrupt: unknown format".to_owned(),
                format!("canary {record_id} is also a record"),
            ]
        );
        // Fail closed: the caller stays frozen until an operator lifts it.
        let kept = ok(store.frozen("support").await);
        assert_eq!(
            kept.as_ref().map(|f| f.reason.as_str()),
            Some(super::super::writer::CORRUPT_FREEZE)
        );
        assert_eq!(ok(store.unfreeze("support").await), kept);
        assert_eq!(ok(store.frozen("support").await), None);
        let charged = store.charge(vec![charge("minute", 60_000, 1, None)]).await;
        assert!(
            matches!(
                charged,
                Err(StoreError::Corrupt {
                    what: "counter",
                    ..
                })
            ),
            "{charged:?}"
        );
        let read = store.canaries_of(vec![a]).await;
        assert!(
            matches!(read, Err(StoreError::Corrupt { what: "canary", .. })),
            "{read:?}"
        );
        assert!(store.failure().is_none(), "the store goes on");
    }
}
