//! Storage primitives. Each method is one step the vault composes; nothing
//! above this module knows which backend is in use (sled now; PostgreSQL is
//! planned, for several vault nodes).
//!
//! Durability contract: a write method returns `Ok` only once its data would
//! survive `kill -9` and power loss.

mod apply;
pub mod backup;
#[cfg(test)]
mod delete_tests;
mod file;
#[cfg(test)]
mod fixtures;
mod grant_layout;
#[cfg(test)]
mod grant_tests;
mod group_commit;
mod integrity;
mod layout;
#[cfg(test)]
mod power_loss;
mod salvage;
mod sequence;
mod sled_store;
mod wal;
mod worker;
mod writer;

use crate::crypto::{BlindIndex, KeyPurpose, KeyVersion, SealedRecord, WrappedKey};
use crate::domain::grant::{Grant, GrantId};
use crate::domain::{FieldKind, RecordId};
use async_trait::async_trait;
use std::collections::BTreeMap;

pub use backup::Snapshot;
pub use group_commit::{
    DEFAULT_MAX_QUEUED_WRITES, MAX_GROUP_BYTES, MAX_QUEUED_BYTES, MAX_WRITE_BYTES,
};
pub use integrity::PartialEntries;
pub use salvage::{salvage, Action as SalvageAction, Dropped, SalvageError, SalvageReport};
pub use sled_store::{SledConfig, SledStore};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key already exists; nothing was written.
    #[error("{0} already exists")]
    AlreadyExists(&'static str),
    /// Stored bytes do not decode: disk corruption or tampering.
    #[error("stored {what} is corrupt: {reason}")]
    Corrupt {
        what: &'static str,
        reason: &'static str,
    },
    /// The backend failed (I/O, lock, flush or sync), with its typed
    /// cause. A write that gets this was not acknowledged.
    #[error("{0}")]
    Backend(StorageFailure),
    /// The store's files are damaged where replay cannot go on safely (a
    /// write-ahead log frame that does not verify, followed by one that
    /// does): the message names the file and the offset, and what an
    /// operator does. Only at open.
    #[error("{0}")]
    Damaged(String),
    /// An earlier storage failure (the typed cause) stopped writes: the
    /// store refuses every write until the process restarts; the failure
    /// itself was reported once, when it happened. Nothing was written.
    #[error("writes are refused since storage failed ({0}); restart after fixing the disk")]
    WritesStopped(StorageFailure),
    /// One write is larger than the store takes at once; nothing was
    /// written and later writes go on.
    #[error("one write of {bytes} bytes is more than the {limit} bytes the store logs at once")]
    TooLarge { bytes: usize, limit: usize },
    /// A write names a key version the store has retired (meanwhile), or a
    /// retirement names one it does not hold; nothing was written. Sealing
    /// again with the current keys and retrying succeeds.
    #[error("{purpose} key version {version} is not a live key of this store")]
    StaleKey { purpose: &'static str, version: u32 },
    /// A key version still in use cannot be retired; nothing changed.
    #[error("{purpose} key version {version} still protects {count} records")]
    KeyInUse {
        purpose: &'static str,
        version: u32,
        count: u64,
    },
    /// A re-wrap under a new master key did not name exactly the live
    /// keys (another key change came first); nothing changed.
    #[error("the keys changed while they were re-wrapped; nothing changed, try again")]
    KeysChanged,
    /// A counter name, caller, reason or operator name is longer than the
    /// store keeps ([`MAX_NAME_BYTES`]); nothing was written.
    #[error("{what} is {bytes} bytes, more than the {limit} bytes the store keeps")]
    TooLong {
        what: &'static str,
        bytes: usize,
        limit: usize,
    },
}

/// The longest counter name, caller, freeze reason or operator name
/// ("by") the store keeps, in bytes: room for a SPIFFE ID (at most 2048
/// bytes) and a rule name (at most 200) in one counter name.
pub const MAX_NAME_BYTES: usize = 4096;

impl StoreError {
    /// Whether the stored data itself is bad (tampered or corrupt), as
    /// opposed to the storage failing to read or write it now (a retry,
    /// or a restart after fixing the disk, may succeed).
    pub fn is_corruption(&self) -> bool {
        match self {
            Self::Corrupt { .. } | Self::Damaged(_) => true,
            Self::Backend(f) | Self::WritesStopped(f) => f.cause == FailureCause::Corrupt,
            Self::AlreadyExists(_)
            | Self::TooLarge { .. }
            | Self::StaleKey { .. }
            | Self::KeyInUse { .. }
            | Self::KeysChanged
            | Self::TooLong { .. } => false,
        }
    }

    /// The typed cause of a storage failure, if this is one.
    pub fn failure(&self) -> Option<&StorageFailure> {
        match self {
            Self::Backend(f) | Self::WritesStopped(f) => Some(f),
            Self::AlreadyExists(_)
            | Self::Corrupt { .. }
            | Self::TooLarge { .. }
            | Self::Damaged(_)
            | Self::StaleKey { .. }
            | Self::KeyInUse { .. }
            | Self::KeysChanged
            | Self::TooLong { .. } => None,
        }
    }
}

/// What kind of storage failure, so that a full disk is told from a failing
/// one (ENOSPC is not EIO).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureCause {
    /// ENOSPC or EDQUOT: the disk or the quota is full.
    StorageFull,
    /// EFBIG: a file-size limit (`RLIMIT_FSIZE`, SIGXFSZ) or the
    /// filesystem's largest file.
    FileTooLarge,
    /// EROFS: the filesystem is read-only.
    ReadOnly,
    /// Any other I/O error (EIO, …), with its kind and OS error number when
    /// known.
    Io {
        kind: std::io::ErrorKind,
        errno: Option<i32>,
    },
    /// The backend found its own files corrupt.
    Corrupt,
    /// Not the disk: a storage thread stopped or panicked, or a backend bug.
    Internal,
}

impl FailureCause {
    pub fn of_io(e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::StorageFull | K::QuotaExceeded => Self::StorageFull,
            K::FileTooLarge => Self::FileTooLarge,
            K::ReadOnlyFilesystem => Self::ReadOnly,
            kind => Self::Io {
                kind,
                errno: e.raw_os_error(),
            },
        }
    }
}

impl std::fmt::Display for FailureCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::StorageFull => f.write_str("storage full"),
            Self::FileTooLarge => f.write_str("file size limit reached"),
            Self::ReadOnly => f.write_str("storage is read-only"),
            Self::Io {
                errno: Some(errno), ..
            } => write!(f, "I/O error (os error {errno})"),
            Self::Io { kind, errno: None } => write!(f, "I/O error ({kind})"),
            Self::Corrupt => f.write_str("storage files are corrupt"),
            Self::Internal => f.write_str("internal storage error"),
        }
    }
}

/// A storage failure: its typed cause and what was being done (operations
/// and paths, never a stored value).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{cause}: {detail}")]
pub struct StorageFailure {
    pub cause: FailureCause,
    pub detail: String,
}

impl StorageFailure {
    pub fn new(cause: FailureCause, detail: impl Into<String>) -> Self {
        Self {
            cause,
            detail: detail.into(),
        }
    }

    /// An I/O error while `doing` something.
    pub fn io(doing: impl std::fmt::Display, e: &std::io::Error) -> Self {
        Self::new(FailureCause::of_io(e), format!("{doing}: {e}"))
    }

    /// Any error while `doing` something: typed by the first I/O error in
    /// its source chain, else internal.
    pub fn of_error(doing: impl std::fmt::Display, e: &(dyn std::error::Error + 'static)) -> Self {
        let mut next = Some(e);
        while let Some(err) = next {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                return Self::new(FailureCause::of_io(io), format!("{doing}: {e}"));
            }
            next = err.source();
        }
        Self::internal(format!("{doing}: {e}"))
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(FailureCause::Internal, detail)
    }
}

/// The result of [`Store::check_integrity`]. Problems name record ids,
/// never values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IntegrityReport {
    pub records: u64,
    pub index_entries: u64,
    pub deterministic_entries: u64,
    pub problems: Vec<String>,
}

/// A record to add, with its blind-index entry.
#[derive(Clone, Debug)]
pub struct NewRecord {
    /// An id from [`Store::allocate`] of this store, used once.
    pub id: RecordId,
    pub record: SealedRecord,
    pub index: BlindIndex,
    /// Deterministic mode: if a deterministic record already exists for
    /// this blind index (or for one of `older_indexes`), nothing is
    /// written and that record's id is returned instead.
    pub deterministic: bool,
    /// The same value's blind index under older index-key versions that
    /// an index rebuild has not finished with: consulted for a
    /// deterministic match. Empty outside a rebuild.
    pub older_indexes: Vec<BlindIndex>,
}

/// A record to delete, with its value's blind index under every live
/// index-key version, so that its index entry is found whichever version
/// holds it (the store keeps no map from record to entry).
#[derive(Clone, Debug)]
pub struct Deletion {
    pub id: RecordId,
    pub indexes: Vec<BlindIndex>,
}

/// Per key version, how many records (data keys) or index entries (index
/// keys) use it. Kept as counters by the store, not found by a scan.
pub type KeyUsage = BTreeMap<(KeyPurpose, KeyVersion), u64>;

/// A record re-sealed under another data-key version: it replaces the
/// stored record only if that is still sealed under `from`.
#[derive(Clone, Debug)]
pub struct Rewrite {
    pub id: RecordId,
    pub from: KeyVersion,
    pub record: SealedRecord,
}

/// One blind-index entry: a value's index naming a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub id: RecordId,
    pub index: BlindIndex,
    /// The record's deterministic mapping (else a random-mode entry).
    pub deterministic: bool,
}

/// An index entry to move to `new` (same record and value, another
/// index-key version), only if the entry still exists.
#[derive(Clone, Copy, Debug)]
pub struct Reindex {
    pub entry: IndexEntry,
    pub new: BlindIndex,
}

/// A background job whose state the store keeps for the vault (opaque
/// bytes, written atomically with the job's batches).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    Rewrap,
    IndexRebuild,
}

impl Job {
    pub fn name(self) -> &'static str {
        match self {
            Job::Rewrap => "rewrap",
            Job::IndexRebuild => "index_rebuild",
        }
    }
}

/// A key version's lifecycle facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub purpose: KeyPurpose,
    pub version: KeyVersion,
    /// `None` for keys made before the store recorded this.
    pub created_unix_ms: Option<u64>,
    pub retired_unix_ms: Option<u64>,
}

/// Every key version the store has held, and the master keys it no
/// longer accepts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyCatalog {
    /// Live and retired versions, in (purpose, version) order.
    pub keys: Vec<KeyInfo>,
    /// Fingerprints of master keys replaced by a rotation, with when.
    pub replaced_masters: Vec<([u8; 8], u64)>,
    /// The file the last rotation read the master key in force from (for
    /// the message that refuses a replaced one).
    pub master_key_file: Option<String>,
}

/// A change to the stored keys, atomic and durable.
#[derive(Clone, Debug)]
pub enum KeyChange {
    /// New versions (a rotation); `AlreadyExists` if a version is taken.
    Add {
        keys: Vec<WrappedKey>,
        at_unix_ms: u64,
    },
    /// Destroys a version's wrapped key: `KeyInUse` while a record (data
    /// key) or index entry (index key) uses it; later writes naming it
    /// fail with `StaleKey`.
    Retire {
        purpose: KeyPurpose,
        version: KeyVersion,
        at_unix_ms: u64,
    },
    /// Every live key re-wrapped under a new master key (`KeysChanged`
    /// unless `keys` names exactly the live versions); `replaced` is the
    /// fingerprint of the master key they were wrapped with.
    Rewrap {
        keys: Vec<WrappedKey>,
        replaced: [u8; 8],
        at_unix_ms: u64,
        /// Where the new master key was read from (a path, not a secret).
        new_key_file: String,
    },
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Every wrapped key (data and index keys), in (purpose, version) order.
    async fn keys(&self) -> Result<Vec<WrappedKey>, StoreError>;

    /// Whether the store was never used: no record stored, no id handed
    /// out. Only such a store may be given new keys.
    async fn is_unused(&self) -> Result<bool, StoreError>;

    /// Adds wrapped keys, all or none; `AlreadyExists` if any (purpose,
    /// version) is taken. Durable when it returns.
    async fn insert_keys(&self, keys: Vec<WrappedKey>) -> Result<(), StoreError>;

    /// `n` new record ids, ascending, none ever handed out before by this
    /// store (or by any node sharing it), and none handed out again, even
    /// after a crash that lost the call that took them, or after the store
    /// was restored from a copy (the epoch differs). Cheap: the sled store
    /// takes them from memory and logs a raised ceiling once per 65,536
    /// ids; a shared database takes them from its own sequence.
    async fn allocate(&self, n: usize) -> Result<Vec<RecordId>, StoreError>;

    /// Whether ids were ever handed out under `epoch` (see [`RecordId`]):
    /// from memory, no read. A token whose epoch the store does not know
    /// was not issued by this vault.
    fn knows_epoch(&self, epoch: u64) -> bool;

    /// Adds records and their blind-index entries atomically (a crash never
    /// leaves one without the other) and returns, per record in order, the
    /// id that now stands for it: its own, or for a deterministic record
    /// whose value already has a deterministic record, that record's id
    /// (the new id then stays unused). Concurrent calls for one
    /// deterministic value agree on one id. Ids are not looked up: each
    /// must come from [`Store::allocate`] and be used once; an id the
    /// store never handed out fails the call. Durable when it returns.
    async fn insert_records(&self, records: Vec<NewRecord>) -> Result<Vec<RecordId>, StoreError>;

    /// Why the store refuses writes, if it does (a failed flush or fsync is
    /// fatal: the server reports unhealthy and stops acknowledging writes).
    fn failure(&self) -> Option<StorageFailure>;

    /// Checks that records and indexes agree: every record decodes and has
    /// exactly one blind-index entry; every index entry and deterministic
    /// mapping points at an existing record; the key-version counters
    /// match a recount. Reads everything: for operators and the crash
    /// harness, not for the request path, and with no writes running (a
    /// write between the recount and the comparison reads as a mismatch).
    async fn check_integrity(&self) -> Result<IntegrityReport, StoreError>;

    /// Every record whose value has this blind index (random and
    /// deterministic), for erase-by-value, subject access and consistency
    /// checks. Deleted records are not among them.
    async fn records_by_index(&self, index: BlindIndex) -> Result<Vec<RecordId>, StoreError>;

    /// Deletes records with their index entry and expiry entry, atomically
    /// (a crash never leaves one without the other) and durably (through
    /// the same log and overlay as every write: a deleted record is never
    /// read again, not after a crash, not by replay, not through a
    /// concurrent rewrite, which finds it gone). Per deletion, whether its
    /// record was there (deleting twice is harmless). `KeysChanged`, with
    /// nothing deleted, if a deletion's indexes do not name every live
    /// index-key version (one was added meanwhile: compute them again).
    async fn delete_records(&self, deletions: Vec<Deletion>) -> Result<Vec<bool>, StoreError>;

    /// At most `limit` records that expire at or before `now_unix_ms`, as
    /// `(expires, id)`, soonest first, after `after` (from the first when
    /// `None`): what the sweeper deletes. A record just written may show up
    /// only once its write is applied.
    async fn expired_records(
        &self,
        now_unix_ms: u64,
        after: Option<(u64, RecordId)>,
        limit: usize,
    ) -> Result<Vec<(u64, RecordId)>, StoreError>;

    /// The records for `ids`, in the same order: `Ok(Some)` when found,
    /// `Ok(None)` when absent, `Err` for one record that cannot be read
    /// (its stored bytes do not decode, or the backend failed to read that
    /// key), so one bad record does not withhold the others. The call fails
    /// as a whole only when nothing could be read.
    async fn get_records(&self, ids: Vec<RecordId>) -> Result<Vec<RecordRead>, StoreError>;

    /// How many records or index entries each key version protects, from
    /// the store's counters (no scan, no I/O).
    fn key_usage(&self) -> KeyUsage;

    /// Every key version's lifecycle facts, and the replaced master keys.
    async fn key_catalog(&self) -> Result<KeyCatalog, StoreError>;

    /// Applies a key change atomically; durable when it returns.
    async fn change_keys(&self, change: KeyChange) -> Result<(), StoreError>;

    /// At most `limit` records in id order, after `after` (from the first
    /// when `None`), each decoded or with its error (a record that does not
    /// decode is reported, not skipped). For background jobs: the records
    /// the trees hold, so a caller that must see every record checks the
    /// counters ([`Store::key_usage`]) after a pass.
    async fn scan_records(
        &self,
        after: Option<RecordId>,
        limit: usize,
    ) -> Result<Vec<(RecordId, RecordRead)>, StoreError>;

    /// Replaces each record that is still sealed under its `from` version
    /// (compare-and-set: a record changed or deleted meanwhile is left
    /// alone), through the same log and overlay as every write, with the
    /// job's new state in the same atomic write. Per rewrite, whether it
    /// was applied. `StaleKey` if a record is sealed under a version the
    /// store does not hold.
    async fn rewrite_records(
        &self,
        rewrites: Vec<Rewrite>,
        job: Option<(Job, Vec<u8>)>,
    ) -> Result<Vec<bool>, StoreError>;

    /// At most `limit` index entries made with index-key `version`, after
    /// `after` (random-mode entries first, then deterministic mappings).
    async fn scan_index(
        &self,
        version: KeyVersion,
        after: Option<IndexEntry>,
        limit: usize,
    ) -> Result<Vec<IndexEntry>, StoreError>;

    /// Moves each entry that still exists to its new index (compare-and-
    /// set), with the job's new state, atomically. Per move, whether it was
    /// applied.
    async fn reindex(
        &self,
        moves: Vec<Reindex>,
        job: Option<(Job, Vec<u8>)>,
    ) -> Result<Vec<bool>, StoreError>;

    /// A job's last stored state.
    async fn job_state(&self, job: Job) -> Result<Option<Vec<u8>>, StoreError>;

    /// A job's last stored state and the counters, as of one moment: the
    /// batch that stored the state is counted, and no later one.
    async fn job_progress(&self, job: Job) -> Result<(Option<Vec<u8>>, KeyUsage), StoreError>;

    /// Stores a job's state; durable when it returns.
    async fn set_job_state(&self, job: Job, state: Vec<u8>) -> Result<(), StoreError>;

    /// Adds each amount to its counter, all or none, atomically with every
    /// other charge (concurrent charges of one counter never pass its
    /// limit together); durable when it returns `Added`. Nothing is
    /// written when it returns `Over`.
    async fn charge(&self, charges: Vec<Charge>) -> Result<Charged, StoreError>;

    /// Removes counters (an unknown name is skipped); durable when it
    /// returns.
    async fn reset_counters(&self, counters: Vec<String>) -> Result<(), StoreError>;

    /// Every stored counter (of any window; the caller knows which windows
    /// are current).
    async fn counters(&self) -> Result<Vec<CounterValue>, StoreError>;

    /// One stored counter, if it exists.
    async fn counter(&self, name: &str) -> Result<Option<CounterValue>, StoreError>;

    /// Stores a grant's decisions, durably. `expect: None` adds a new grant
    /// (`AlreadyExists` if its id is taken); `Some(revision)` replaces the
    /// stored grant only if its revision is still that one (compare-and-
    /// set: `Ok(false)`, nothing written, when it changed meanwhile or is
    /// absent). The store sets the revision (1, then one more per change);
    /// `grant.revision` is ignored. What a grant has revealed is not here:
    /// that is a counter ([`Store::charge`]), so reveals and decisions
    /// never wait for each other.
    async fn put_grant(&self, grant: Grant, expect: Option<u64>) -> Result<bool, StoreError>;

    /// One grant, if stored.
    async fn grant(&self, id: GrantId) -> Result<Option<Grant>, StoreError>;

    /// Every grant, in id order, each without its token list (`tokens`
    /// empty: [`Store::grant`] has it), so that a listing holds a few
    /// hundred bytes per grant whatever the lists hold. A grant whose
    /// stored bytes do not decode is left out (logged; the integrity check
    /// reports it), so one bad grant does not stop every listing.
    async fn grants(&self) -> Result<Vec<Grant>, StoreError>;

    /// Freezes a caller; durable when it returns. A caller already frozen
    /// stays frozen as it was: its freeze is returned and nothing changes.
    async fn freeze(&self, freeze: Freeze) -> Result<Option<Freeze>, StoreError>;

    /// Unfreezes a caller; durable when it returns. The freeze lifted, or
    /// `None` (nothing written) when the caller was not frozen.
    async fn unfreeze(&self, caller: &str) -> Result<Option<Freeze>, StoreError>;

    /// The caller's freeze, if frozen. On every call's path: cheap.
    async fn frozen(&self, caller: &str) -> Result<Option<Freeze>, StoreError>;

    /// Every frozen caller, in caller order.
    async fn freezes(&self) -> Result<Vec<Freeze>, StoreError>;

    /// Stores canaries, all or none; durable when it returns. Each id must
    /// come from [`Store::allocate`] of this store and be used once, as a
    /// record's (an id the store never handed out fails the call).
    async fn add_canaries(&self, canaries: Vec<Canary>) -> Result<(), StoreError>;

    /// The canary of each id, in order (`None`: not a canary).
    async fn canaries_of(&self, ids: Vec<RecordId>) -> Result<Vec<Option<Canary>>, StoreError>;

    /// Every canary, in id order.
    async fn canaries(&self) -> Result<Vec<Canary>, StoreError>;

    /// A consistent snapshot of the whole store in the backup format
    /// ([`backup`]): every write acknowledged before the call, no part of
    /// one acknowledged after it; records stay sealed, keys stay wrapped
    /// (the master key is never in it). Writes wait while it is taken; it
    /// is then read in chunks, from a temporary copy, without holding them.
    async fn snapshot(&self) -> Result<Snapshot, StoreError>;
}

/// An amount to add to a durable counter of the current window (values a
/// caller revealed under a quota, its quota refusals, the unknown tokens it
/// sent). Counter names are chosen by the vault and carry no value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charge {
    pub counter: String,
    /// The start of the window this amount counts in: a stored count of an
    /// earlier window is dropped first (the window has passed); one of a
    /// later window (a clock that went back) is kept and added to.
    pub window_start_ms: u64,
    pub amount: u64,
    /// The call adds nothing if the count would pass this.
    pub limit: Option<u64>,
}

/// What [`Store::charge`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Charged {
    /// Every amount was added: the new counts, in order.
    Added(Vec<u64>),
    /// Nothing was added: the charge at `index` would pass its limit; its
    /// counter holds `count` in that window.
    Over { index: usize, count: u64 },
}

/// A counter as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterValue {
    pub counter: String,
    pub window_start_ms: u64,
    pub count: u64,
}

/// A frozen caller: every call from it is refused until an operator
/// unfreezes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Freeze {
    /// The caller's identity (a SPIFFE ID or a common name).
    pub caller: String,
    pub since_unix_ms: u64,
    /// Why (no value: the trigger and the rule or operator).
    pub reason: String,
    /// Who froze it: `vault` for an automatic freeze, else the operator.
    pub by: String,
}

/// A canary token's record id: issued by [`Store::allocate`] like a
/// record's, so its token looks like any other, but no value is behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canary {
    pub id: RecordId,
    pub kind: FieldKind,
    pub created_unix_ms: u64,
    /// The operator who created it.
    pub by: String,
}

/// One record read by [`Store::get_records`].
pub type RecordRead = Result<Option<SealedRecord>, StoreError>;
