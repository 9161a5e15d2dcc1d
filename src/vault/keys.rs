//! Key lifecycle: rotate the data key, rewrap records onto the active
//! version in the background, retire old versions, rotate the blind-index
//! key (the index is rebuilt in the background), rotate the master key.
//! Tokens never change: rotation happens behind the token.
//!
//! Every operation here is allowed by policy action `keys` and logged with
//! the caller and the outcome.

use super::{Vault, VaultError};
use crate::domain::{CallerId, TokenId};
use std::path::Path;
use std::sync::Arc;

/// The state of one key version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    /// New writes use it (the highest live version).
    Active,
    /// Records sealed under it (or index entries made with it) are still
    /// read; nothing new is written with it.
    DecryptOnly,
    /// Its wrapped key is destroyed: nothing sealed under it opens again.
    Retired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::DecryptOnly => "decrypt_only",
            KeyState::Retired => "retired",
        }
    }
}

/// One data-key or index-key version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyVersionStatus {
    pub version: u32,
    pub state: KeyState,
    /// When the version was made; `None` for keys made before this was
    /// recorded.
    pub created_unix_ms: Option<u64>,
    pub retired_unix_ms: Option<u64>,
    /// Data keys: records sealed under this version. Index keys: index
    /// entries made with it. From counters the store keeps, not a scan.
    pub records: u64,
}

/// What a background job (a rewrap, an index rebuild) is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Never started on this store.
    Idle,
    Running,
    Finished,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Idle => "idle",
            JobState::Running => "running",
            JobState::Finished => "finished",
        }
    }
}

/// The state and progress of a rewrap (or an index rebuild).
#[derive(Clone, Debug, PartialEq)]
pub struct JobStatus {
    pub state: JobState,
    /// The version records are moved to.
    pub target_version: u32,
    /// Records (index entries) moved so far by this job.
    pub done: u64,
    /// Records (index entries) still on an older live version, from the
    /// store's counters: `done + remaining` is the total.
    pub remaining: u64,
    /// The job's limit, records per second.
    pub rate_per_second: u32,
    /// The rate measured over the last seconds (0 when not running).
    pub measured_per_second: f64,
    pub started_unix_ms: Option<u64>,
    pub finished_unix_ms: Option<u64>,
    /// Records that failed their integrity check: never rewritten, never
    /// skipped silently. `failed` is the count; `failed_tokens` the first
    /// of them (at most [`MAX_FAILED_TOKENS`]).
    pub failed: u64,
    pub failed_tokens: Vec<TokenId>,
}

/// Failed records a job lists by token; beyond this they are counted.
pub const MAX_FAILED_TOKENS: usize = 100;

/// Every key version and the background jobs.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyStatus {
    pub data_keys: Vec<KeyVersionStatus>,
    pub index_keys: Vec<KeyVersionStatus>,
    pub rewrap: JobStatus,
    pub index_rebuild: JobStatus,
    /// When the master key was last rotated, if ever.
    pub master_rotated_unix_ms: Option<u64>,
}

impl Vault {
    /// Makes a new data-key version, active for new writes from now on.
    pub async fn rotate_data_key(&self, caller: &CallerId) -> Result<u32, VaultError> {
        let _ = caller;
        Err(VaultError::Unavailable("not yet built".into()))
    }

    pub async fn key_status(&self, caller: &CallerId) -> Result<KeyStatus, VaultError> {
        let _ = caller;
        Err(VaultError::Unavailable("not yet built".into()))
    }

    /// Starts the rewrap job (harmless when it runs already: the running
    /// job's status is returned, with `rate` applied when given). `rate`:
    /// records per second, 1..=[`MAX_REWRAP_RATE`]; `None` for the
    /// configured default.
    pub async fn start_rewrap(
        self: &Arc<Self>,
        caller: &CallerId,
        rate: Option<u32>,
    ) -> Result<JobStatus, VaultError> {
        let _ = (caller, rate);
        Err(VaultError::Unavailable("not yet built".into()))
    }

    pub async fn rewrap_status(&self, caller: &CallerId) -> Result<JobStatus, VaultError> {
        let _ = caller;
        Err(VaultError::Unavailable("not yet built".into()))
    }

    /// Destroys data-key version `version`. FAILED_PRECONDITION while a
    /// record uses it or when it is the active version; NOT_FOUND for a
    /// version that never existed.
    pub async fn retire_key_version(
        &self,
        caller: &CallerId,
        version: u32,
    ) -> Result<(), VaultError> {
        let _ = (caller, version);
        Err(VaultError::Unavailable("not yet built".into()))
    }

    /// Makes a new blind-index key version and starts the index rebuild.
    pub async fn rotate_index_key(self: &Arc<Self>, caller: &CallerId) -> Result<u32, VaultError> {
        let _ = caller;
        Err(VaultError::Unavailable("not yet built".into()))
    }

    /// Re-wraps every key under the master key in `new_key_file` (read by
    /// the server; 64 hex characters, owner-only permissions).
    pub async fn rotate_master_key(
        &self,
        caller: &CallerId,
        new_key_file: &Path,
    ) -> Result<(), VaultError> {
        let _ = (caller, new_key_file);
        Err(VaultError::Unavailable("not yet built".into()))
    }

    /// Resumes the background jobs a crash or a restart interrupted, and
    /// runs the rotation schedule. Called once by the server at start.
    pub fn start_background(self: &Arc<Self>) {}
}

/// The highest rewrap rate a caller may ask for, records per second.
pub const MAX_REWRAP_RATE: u32 = 1_000_000;
