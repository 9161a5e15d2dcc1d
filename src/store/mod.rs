//! Storage primitives. Each method is one step the vault composes; nothing
//! above this module knows which backend is in use (sled now; PostgreSQL is
//! planned, for several vault nodes).
//!
//! Durability contract: a write method returns `Ok` only once its data would
//! survive `kill -9` and power loss.

mod apply;
mod file;
#[cfg(test)]
mod fixtures;
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

use crate::crypto::{BlindIndex, SealedRecord, WrappedKey};
use crate::domain::RecordId;
use async_trait::async_trait;

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
}

impl StoreError {
    /// Whether the stored data itself is bad (tampered or corrupt), as
    /// opposed to the storage failing to read or write it now (a retry,
    /// or a restart after fixing the disk, may succeed).
    pub fn is_corruption(&self) -> bool {
        match self {
            Self::Corrupt { .. } | Self::Damaged(_) => true,
            Self::Backend(f) | Self::WritesStopped(f) => f.cause == FailureCause::Corrupt,
            Self::AlreadyExists(_) | Self::TooLarge { .. } => false,
        }
    }

    /// The typed cause of a storage failure, if this is one.
    pub fn failure(&self) -> Option<&StorageFailure> {
        match self {
            Self::Backend(f) | Self::WritesStopped(f) => Some(f),
            Self::AlreadyExists(_)
            | Self::Corrupt { .. }
            | Self::TooLarge { .. }
            | Self::Damaged(_) => None,
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
    /// this blind index, nothing is written and that record's id is
    /// returned instead.
    pub deterministic: bool,
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
    /// mapping points at an existing record. Reads everything: for
    /// operators and the crash harness, not for the request path.
    async fn check_integrity(&self) -> Result<IntegrityReport, StoreError>;

    /// Every record whose value has this blind index (random and
    /// deterministic), for erase-by-value and consistency checks.
    async fn records_by_index(&self, index: BlindIndex) -> Result<Vec<RecordId>, StoreError>;

    /// The records for `ids`, in the same order: `Ok(Some)` when found,
    /// `Ok(None)` when absent, `Err` for one record that cannot be read
    /// (its stored bytes do not decode, or the backend failed to read that
    /// key), so one bad record does not withhold the others. The call fails
    /// as a whole only when nothing could be read.
    async fn get_records(&self, ids: Vec<RecordId>) -> Result<Vec<RecordRead>, StoreError>;
}

/// One record read by [`Store::get_records`].
pub type RecordRead = Result<Option<SealedRecord>, StoreError>;
