//! Key lifecycle: rotate the data key, rewrap records onto the active
//! version in the background, retire old versions, rotate the blind-index
//! key (the index is rebuilt in the background), rotate the master key.
//! Tokens never change: rotation happens behind the token.
//!
//! Every operation here is allowed by policy action `keys` and logged with
//! the caller and the outcome.

use super::{Call, Vault, VaultError};
use crate::audit::now_unix_ms;
use crate::crypto::{CryptoError, KeyPurpose, KeyVersion, MasterKey};
use crate::domain::policy::Action;
use crate::domain::{RecordId, TokenId};
use crate::store::{IndexEntry, Job, KeyChange, KeyInfo, Reindex, Rewrite, StoreError};
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// The highest rewrap rate a caller may ask for, records per second.
pub const MAX_REWRAP_RATE: u32 = 1_000_000;

/// What a deployment sets for the key lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeySettings {
    /// Records per second a rewrap or index rebuild moves when the caller
    /// names no rate.
    pub rewrap_rate: u32,
    /// Retire every older data-key version once a rewrap has moved all its
    /// records.
    pub retire_after_rewrap: bool,
    /// Rotate the data key once the active one is this old, and start the
    /// rewrap; `None`: only on request.
    pub rotate_every: Option<Duration>,
}

impl Default for KeySettings {
    fn default() -> Self {
        Self {
            rewrap_rate: DEFAULT_REWRAP_RATE,
            retire_after_rewrap: false,
            rotate_every: None,
        }
    }
}

/// The default rewrap rate, records per second.
pub const DEFAULT_REWRAP_RATE: u32 = 5_000;

/// The most live (not retired) versions of a data or index key: every
/// one is held in memory and listed by `keys status`.
pub const MAX_LIVE_VERSIONS: usize = 100;

/// The longest new master key path taken (it is echoed in messages).
const MAX_KEY_FILE_PATH: usize = 1024;

/// How long reading a new master key file may take.
const KEY_FILE_READ_LIMIT: Duration = Duration::from_secs(5);

/// The most records one rewrap batch moves (one group-commit write).
const MAX_BATCH: usize = 512;

/// The background jobs of this process.
#[derive(Default)]
pub(super) struct KeyJobs {
    /// Serialises key changes (rotate, retire, re-wrap under a new master
    /// key, a job's own retirements).
    admin: tokio::sync::Mutex<()>,
    /// Held while a master-key rotation runs: a second one is refused.
    master: tokio::sync::Mutex<()>,
    rewrap: JobRun,
    rebuild: JobRun,
    /// Set when the server stops: jobs end after their current batch.
    stopping: AtomicBool,
    stop: tokio::sync::Notify,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// One job kind's run in this process.
#[derive(Default)]
struct JobRun {
    running: AtomicBool,
    /// The running job's rate, records per second (changed by a second
    /// start).
    rate: AtomicU32,
    progress: Mutex<Option<(Instant, u64, u64)>>,
}

impl JobRun {
    /// Notes `done` now; the measured rate is over the run so far.
    fn note(&self, done: u64) {
        let mut p = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *p {
            Some((_, first, last)) if done >= *first => *last = done,
            _ => *p = Some((Instant::now(), done, done)),
        }
    }

    /// The job's rate now, and the batch that keeps it smooth (a twentieth
    /// of a second's worth, at most [`MAX_BATCH`]).
    fn pace(&self) -> (u32, usize) {
        let rate = self.rate.load(Ordering::SeqCst).max(1);
        (rate, (rate as usize / 20).clamp(1, MAX_BATCH))
    }

    /// After a rotation while the job ran, it counts the records moved to
    /// the new target from zero (and rates them afresh).
    fn retarget(&self, record: &mut JobRecord, target: KeyVersion) {
        if record.target != target.0 {
            record.target = target.0;
            record.done = 0;
            self.note(0);
        }
    }

    fn measured(&self) -> f64 {
        if !self.running.load(Ordering::SeqCst) {
            return 0.0;
        }
        match *self.progress.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((since, first, last)) => {
                let secs = since.elapsed().as_secs_f64();
                if secs > 0.0 {
                    last.saturating_sub(first) as f64 / secs
                } else {
                    0.0
                }
            }
            None => 0.0,
        }
    }
}

/// Where a job is: the last record (rewrap) or index entry (index
/// rebuild) it handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cursor {
    Start,
    Record(RecordId),
    Index(KeyVersion, IndexEntry),
}

/// A job's state as the store keeps it (opaque bytes to the store),
/// written atomically with each batch, so a restart resumes where the
/// last durable batch ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct JobRecord {
    pub(super) target: u32,
    pub(super) running: bool,
    pub(super) done: u64,
    pub(super) rate: u32,
    pub(super) started_ms: u64,
    pub(super) finished_ms: u64,
    pub(super) failed_count: u64,
    pub(super) failed: Vec<RecordId>,
    pub(super) cursor: Cursor,
}

const JOB_FORMAT: u8 = 1;

impl JobRecord {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = vec![JOB_FORMAT];
        out.extend_from_slice(&self.target.to_be_bytes());
        out.push(u8::from(self.running));
        out.extend_from_slice(&self.done.to_be_bytes());
        out.extend_from_slice(&self.rate.to_be_bytes());
        out.extend_from_slice(&self.started_ms.to_be_bytes());
        out.extend_from_slice(&self.finished_ms.to_be_bytes());
        out.extend_from_slice(&self.failed_count.to_be_bytes());
        out.extend_from_slice(&(self.failed.len() as u16).to_be_bytes());
        for id in &self.failed {
            out.extend_from_slice(&id.seq.to_be_bytes());
            out.extend_from_slice(&id.epoch.to_be_bytes());
        }
        match self.cursor {
            Cursor::Start => out.push(0),
            Cursor::Record(id) => {
                out.push(1);
                out.extend_from_slice(&id.seq.to_be_bytes());
                out.extend_from_slice(&id.epoch.to_be_bytes());
            }
            Cursor::Index(version, e) => {
                out.push(2);
                out.extend_from_slice(&version.0.to_be_bytes());
                out.extend_from_slice(&e.id.seq.to_be_bytes());
                out.extend_from_slice(&e.id.epoch.to_be_bytes());
                out.extend_from_slice(&e.index.version.0.to_be_bytes());
                out.extend_from_slice(&e.index.mac);
                out.push(u8::from(e.deterministic));
            }
        }
        out
    }

    pub(super) fn decode(b: &[u8]) -> Option<Self> {
        let mut r = Reader(b);
        if r.u8()? != JOB_FORMAT {
            return None;
        }
        let target = r.u32()?;
        let running = r.u8()? == 1;
        let done = r.u64()?;
        let rate = r.u32()?;
        let started_ms = r.u64()?;
        let finished_ms = r.u64()?;
        let failed_count = r.u64()?;
        let n = r.u16()?;
        let mut failed = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            failed.push(RecordId::new(r.u64()?, r.u64()?));
        }
        let cursor = match r.u8()? {
            0 => Cursor::Start,
            1 => Cursor::Record(RecordId::new(r.u64()?, r.u64()?)),
            2 => {
                let version = KeyVersion(r.u32()?);
                let id = RecordId::new(r.u64()?, r.u64()?);
                let index_version = KeyVersion(r.u32()?);
                let mac: [u8; 32] = r.take(32)?.try_into().ok()?;
                let deterministic = r.u8()? == 1;
                Cursor::Index(
                    version,
                    IndexEntry {
                        id,
                        index: crate::crypto::BlindIndex {
                            version: index_version,
                            mac,
                        },
                        deterministic,
                    },
                )
            }
            _ => return None,
        };
        r.0.is_empty().then_some(Self {
            target,
            running,
            done,
            rate,
            started_ms,
            finished_ms,
            failed_count,
            failed,
            cursor,
        })
    }

    fn fail(&mut self, id: RecordId, seen: &mut HashSet<RecordId>) {
        if seen.insert(id) {
            self.failed_count += 1;
            if self.failed.len() < MAX_FAILED_TOKENS {
                self.failed.push(id);
            }
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
    }
}

/// A storage error of a key operation as callers see it.
fn store_failed(e: &StoreError, what: &str) -> VaultError {
    tracing::error!(error = %e, "{what} failed");
    super::unavailable(e, "nothing changed")
}

fn crypto_failed(e: &CryptoError) -> VaultError {
    tracing::error!(error = %e, "key operation: crypto failed");
    VaultError::Unavailable("a key could not be made or wrapped; nothing changed".into())
}

/// Logs a key operation with its outcome (the audit trail has its event).
fn logged<T>(request_id: &str, op: &'static str, result: &Result<T, VaultError>) {
    match result {
        Ok(_) => tracing::info!(request_id, op, outcome = "ok", "key operation"),
        // Debug-escaped: a message may quote what the caller sent.
        Err(e) => {
            tracing::warn!(request_id, op, outcome = ?e.to_string(), "key operation refused")
        }
    }
}

fn versions_list(infos: &[&KeyInfo]) -> String {
    let v: Vec<String> = infos.iter().map(|k| k.version.0.to_string()).collect();
    v.join(", ")
}

impl Vault {
    /// The caller of `call` may administer keys (policy action `keys`),
    /// checked before any argument: a caller without the right learns
    /// nothing, not even which arguments are wrong. `changes`: the call
    /// would change keys, so it is refused while the audit trail refuses
    /// events (its event could not follow it).
    async fn key_admin_allowed(&self, call: &Call, changes: bool) -> Result<(), VaultError> {
        let caller = call.caller()?;
        let policy = self.policy_for_call().await;
        self.admit(caller, &policy).await?;
        policy
            .check_call(caller, Action::Keys, None, None)
            .map_err(VaultError::PermissionDenied)?;
        if changes {
            self.audit_ready()?;
        }
        Ok(())
    }

    /// Records the event of key operation `op` (`keys.<op>`) with
    /// `details`, and logs it.
    async fn key_call_done<T>(
        &self,
        call: &Call,
        op: &'static str,
        details: Vec<(&'static str, serde_json::Value)>,
        result: Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        logged(&call.request_id, op, &result);
        let mut event = call.event(&format!("keys.{op}"));
        for (name, value) in details {
            event.details.insert(name.into(), value);
        }
        self.record_call(event, result).await
    }

    /// Records the event of a key operation the `[keys]` schedule made
    /// (no caller: `details.by` says who).
    async fn scheduled_done<T>(
        &self,
        op: &'static str,
        details: Vec<(&'static str, serde_json::Value)>,
        result: Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        let call = Call::new(super::new_request_id(), Err("the [keys] schedule".into()));
        logged(&call.request_id, op, &result);
        let mut event = call.event(&format!("keys.{op}"));
        event
            .details
            .insert("by".into(), "the [keys] schedule".into());
        for (name, value) in details {
            event.details.insert(name.into(), value);
        }
        self.record_call(event, result).await
    }

    /// Makes a new data-key version, active for new writes from now on.
    pub async fn rotate_data_key(&self, call: impl Into<Call>) -> Result<u32, VaultError> {
        let call = call.into();
        let result = async {
            self.key_admin_allowed(&call, true).await?;
            self.rotate(KeyPurpose::Data).await
        }
        .await;
        let details = result
            .as_ref()
            .map_or(Vec::new(), |v| vec![("version", (*v).into())]);
        self.key_call_done(&call, "rotate_data_key", details, result)
            .await
    }

    /// Adds a version of `purpose` (one above every version the store ever
    /// held, retired ones too) and makes it active.
    pub(super) async fn rotate(&self, purpose: KeyPurpose) -> Result<u32, VaultError> {
        let _admin = self.key_jobs.admin.lock().await;
        let catalog = self
            .store
            .key_catalog()
            .await
            .map_err(|e| store_failed(&e, "reading the key catalog"))?;
        let live = catalog
            .keys
            .iter()
            .filter(|k| k.purpose == purpose && k.retired_unix_ms.is_none())
            .count();
        if live >= MAX_LIVE_VERSIONS {
            return Err(VaultError::FailedPrecondition(format!(
                "{live} versions of this key are live (at most {MAX_LIVE_VERSIONS}): rewrap and \
                 retire older versions before rotating again"
            )));
        }
        let highest = catalog
            .keys
            .iter()
            .filter(|k| k.purpose == purpose)
            .map(|k| k.version.0)
            .max()
            .unwrap_or(0);
        let version = KeyVersion(highest.checked_add(1).ok_or_else(|| {
            VaultError::FailedPrecondition("no key version is left above the highest one".into())
        })?);
        let ring = self.keyring();
        let (next, wrapped) = ring
            .with_new_key(purpose, version)
            .map_err(|e| crypto_failed(&e))?;
        self.store
            .change_keys(KeyChange::Add {
                keys: vec![wrapped],
                at_unix_ms: now_unix_ms(),
            })
            .await
            .map_err(|e| store_failed(&e, "storing a new key version"))?;
        self.replace_keyring(next);
        Ok(version.0)
    }

    pub async fn key_status(&self, call: impl Into<Call>) -> Result<KeyStatus, VaultError> {
        let call = call.into();
        let result = async {
            self.key_admin_allowed(&call, false).await?;
            self.key_status_now().await
        }
        .await;
        self.key_call_done(&call, "get_key_status", Vec::new(), result)
            .await
    }

    pub(super) async fn key_status_now(&self) -> Result<KeyStatus, VaultError> {
        let catalog = self
            .store
            .key_catalog()
            .await
            .map_err(|e| super::unavailable(&e, "no status"))?;
        let usage = self.store.key_usage();
        let ring = self.keyring();
        let of = |purpose: KeyPurpose, active: KeyVersion| {
            catalog
                .keys
                .iter()
                .filter(|k| k.purpose == purpose)
                .map(|k| KeyVersionStatus {
                    version: k.version.0,
                    state: if k.retired_unix_ms.is_some() {
                        KeyState::Retired
                    } else if k.version == active {
                        KeyState::Active
                    } else {
                        KeyState::DecryptOnly
                    },
                    created_unix_ms: k.created_unix_ms,
                    retired_unix_ms: k.retired_unix_ms,
                    records: usage.get(&(purpose, k.version)).copied().unwrap_or(0),
                })
                .collect()
        };
        Ok(KeyStatus {
            data_keys: of(KeyPurpose::Data, ring.active_version()),
            index_keys: of(KeyPurpose::Index, ring.active_index_version()),
            rewrap: self.job_status(Job::Rewrap).await?,
            index_rebuild: self.job_status(Job::IndexRebuild).await?,
            master_rotated_unix_ms: catalog.replaced_masters.iter().map(|(_, at)| *at).max(),
        })
    }

    fn run_of(&self, job: Job) -> &JobRun {
        match job {
            Job::Rewrap => &self.key_jobs.rewrap,
            Job::IndexRebuild => &self.key_jobs.rebuild,
        }
    }

    async fn job_record(&self, job: Job) -> Result<Option<JobRecord>, VaultError> {
        let bytes = self
            .store
            .job_state(job)
            .await
            .map_err(|e| super::unavailable(&e, "no status"))?;
        Ok(decode_job(job, bytes))
    }

    /// Records (index entries) still on an older live version than
    /// `target`.
    fn remaining(&self, purpose: KeyPurpose, target: KeyVersion) -> u64 {
        remaining_in(&self.store.key_usage(), purpose, target)
    }

    async fn job_status(&self, job: Job) -> Result<JobStatus, VaultError> {
        // The job's state and the counters from one moment, so that done
        // and remaining add up.
        let (bytes, usage) = self
            .store
            .job_progress(job)
            .await
            .map_err(|e| super::unavailable(&e, "no status"))?;
        let record = decode_job(job, bytes);
        let run = self.run_of(job);
        let purpose = match job {
            Job::Rewrap => KeyPurpose::Data,
            Job::IndexRebuild => KeyPurpose::Index,
        };
        let remaining = |target| remaining_in(&usage, purpose, target);
        let ring = self.keyring();
        let active = match job {
            Job::Rewrap => ring.active_version(),
            Job::IndexRebuild => ring.active_index_version(),
        };
        let idle = || JobStatus {
            state: JobState::Idle,
            target_version: active.0,
            done: 0,
            remaining: remaining(active),
            rate_per_second: 0,
            measured_per_second: 0.0,
            started_unix_ms: None,
            finished_unix_ms: None,
            failed: 0,
            failed_tokens: Vec::new(),
        };
        Ok(match record {
            None => idle(),
            // A job that finished before a later rotation says nothing
            // about the records now to move: idle, with those.
            Some(r) if !r.running && r.target != active.0 => idle(),
            Some(r) => JobStatus {
                state: if r.running {
                    JobState::Running
                } else {
                    JobState::Finished
                },
                target_version: r.target,
                done: r.done,
                remaining: remaining(KeyVersion(r.target)),
                // A running job's rate may have been changed by a second
                // start since its state was stored.
                rate_per_second: match run.rate.load(Ordering::SeqCst) {
                    rate if r.running && rate > 0 => rate,
                    _ => r.rate,
                },
                measured_per_second: run.measured(),
                started_unix_ms: Some(r.started_ms).filter(|t| *t != 0),
                finished_unix_ms: Some(r.finished_ms).filter(|t| *t != 0),
                failed: r.failed_count,
                failed_tokens: r.failed.iter().map(|id| ring.token_of(*id)).collect(),
            },
        })
    }

    /// Starts the rewrap job (harmless when it runs already: the running
    /// job's status is returned, with `rate` applied when given). `rate`:
    /// records per second, 1..=[`MAX_REWRAP_RATE`]; `None` for the
    /// configured default.
    pub async fn start_rewrap(
        self: &Arc<Self>,
        call: impl Into<Call>,
        rate: Option<u32>,
    ) -> Result<JobStatus, VaultError> {
        let call = call.into();
        let result = async {
            self.key_admin_allowed(&call, true).await?;
            let rate = check_rate(rate)?;
            self.start_job(Job::Rewrap, rate).await?;
            self.job_status(Job::Rewrap).await
        }
        .await;
        let details = rate.map_or(Vec::new(), |r| vec![("rate_per_second", r.into())]);
        self.key_call_done(&call, "start_rewrap", details, result)
            .await
    }

    /// Starts `job` at `rate` (`None`: the configured default) unless it
    /// runs; a running job takes a rate given, and keeps its own when none
    /// is (following a job with `keys rewrap --wait` changes nothing).
    async fn start_job(self: &Arc<Self>, job: Job, rate: Option<u32>) -> Result<(), VaultError> {
        let _admin = self.key_jobs.admin.lock().await;
        let run = self.run_of(job);
        if run.running.load(Ordering::SeqCst) {
            if let Some(rate) = rate {
                run.rate.store(rate, Ordering::SeqCst);
            }
            return Ok(());
        }
        let rate = rate.unwrap_or(self.settings.keys.rewrap_rate).max(1);
        run.rate.store(rate, Ordering::SeqCst);
        let ring = self.keyring();
        let target = match job {
            Job::Rewrap => ring.active_version(),
            Job::IndexRebuild => ring.active_index_version(),
        };
        let record = JobRecord {
            target: target.0,
            running: true,
            done: 0,
            rate,
            started_ms: now_unix_ms(),
            finished_ms: 0,
            failed_count: 0,
            failed: Vec::new(),
            cursor: Cursor::Start,
        };
        self.store
            .set_job_state(job, record.encode())
            .await
            .map_err(|e| store_failed(&e, "starting a job"))?;
        self.spawn_job(job, record);
        Ok(())
    }

    fn spawn_job(self: &Arc<Self>, job: Job, record: JobRecord) {
        let run = self.run_of(job);
        if run.running.swap(true, Ordering::SeqCst) {
            return;
        }
        if run.rate.load(Ordering::SeqCst) == 0 {
            run.rate.store(record.rate.max(1), Ordering::SeqCst);
        }
        *run.progress.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let vault = self.clone();
        let task = tokio::spawn(async move {
            let outcome = match job {
                Job::Rewrap => vault.run_rewrap(record).await,
                Job::IndexRebuild => vault.run_rebuild(record).await,
            };
            vault.run_of(job).running.store(false, Ordering::SeqCst);
            match outcome {
                Ok(true) => tracing::info!(job = job.name(), "job finished"),
                Ok(false) => tracing::info!(
                    job = job.name(),
                    "job paused: the server is stopping; it resumes at the next start"
                ),
                Err(e) => {
                    tracing::error!(job = job.name(), error = %e, "job stopped; it resumes at the next start")
                }
            }
        });
        let mut tasks = self
            .key_jobs
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    pub(super) fn stopping(&self) -> bool {
        self.key_jobs.stopping.load(Ordering::SeqCst)
    }

    /// Waits until `until`, or less when the server stops.
    pub(super) async fn pause_until(&self, until: Instant) {
        // Registered before the flag is read, so a stop between the two
        // still wakes this wait.
        let stop = self.key_jobs.stop.notified();
        tokio::pin!(stop);
        stop.as_mut().enable();
        let now = Instant::now();
        if until > now && !self.stopping() {
            tokio::select! {
                _ = tokio::time::sleep(until - now) => {}
                _ = stop => {}
            }
        }
    }

    /// Stores a job as finished; `Ok(false)` when the server stops first.
    async fn finish(&self, job: Job, record: &mut JobRecord) -> Result<bool, StoreError> {
        record.running = false;
        record.finished_ms = now_unix_ms();
        let state = record.encode();
        Ok(self
            .retry_store("finishing a job", || {
                self.store.set_job_state(job, state.clone())
            })
            .await?
            .is_some())
    }

    /// Waits so that `n` records more keep a job at `rate` per second; a
    /// job that fell behind (slow batches) does not burst to catch up.
    async fn throttle(&self, next_at: &mut Instant, n: usize, rate: u32) {
        *next_at += Duration::from_secs_f64(n as f64 / f64::from(rate));
        let now = Instant::now();
        if *next_at < now {
            *next_at = now;
        }
        self.pause_until(*next_at).await;
    }

    /// A store call of a job, retried while storage fails for a moment
    /// (never past a stop, never once writes stopped for good).
    async fn retry_store<T, F, Fut>(&self, what: &str, mut call: F) -> Result<Option<T>, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        loop {
            match call().await {
                Ok(v) => return Ok(Some(v)),
                Err(e @ StoreError::StaleKey { .. }) => return Err(e),
                Err(e) if self.store.failure().is_some() || e.is_corruption() => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "{what} failed; retrying in a second");
                    self.pause_until(Instant::now() + Duration::from_secs(1))
                        .await;
                    if self.stopping() {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Moves every record on an older data-key version to the active one,
    /// batch by batch, throttled to the job's rate. `Ok(true)` when done,
    /// `Ok(false)` when the server stops first.
    async fn run_rewrap(self: &Arc<Self>, mut record: JobRecord) -> Result<bool, StoreError> {
        let run = &self.key_jobs.rewrap;
        let mut seen_failed: HashSet<RecordId> = HashSet::new();
        let mut progressed = false;
        // Only a pass from the first record, moving nothing, shows that
        // what remains cannot be moved (a resumed pass began midway).
        let mut full_pass = record.cursor == Cursor::Start;
        let mut next_at = Instant::now();
        run.note(record.done);
        loop {
            if self.stopping() {
                return Ok(false);
            }
            let (rate, batch) = run.pace();
            let ring = self.keyring();
            let target = ring.active_version();
            run.retarget(&mut record, target);
            let after = match record.cursor {
                Cursor::Record(id) => Some(id),
                _ => None,
            };
            let Some(page) = self
                .retry_store("reading records to rewrap", || {
                    self.store.scan_records(after, batch)
                })
                .await?
            else {
                return Ok(false);
            };
            let Some((last, _)) = page.last() else {
                // A pass is over. Records written under an older key while
                // it ran, or moved by a rotation meanwhile, need another.
                let remaining = self.remaining(KeyPurpose::Data, target);
                if remaining > 0 && (progressed || !full_pass) {
                    progressed = false;
                    full_pass = true;
                    record.cursor = Cursor::Start;
                    continue;
                }
                record.cursor = Cursor::Start;
                if !self.finish(Job::Rewrap, &mut record).await? {
                    return Ok(false);
                }
                tracing::info!(
                    target_version = target.0,
                    done = record.done,
                    failed = record.failed_count,
                    remaining,
                    "rewrap finished"
                );
                if self.settings.keys.retire_after_rewrap {
                    self.retire_unused(KeyPurpose::Data, "rewrap job").await;
                }
                return Ok(true);
            };
            let last = *last;
            let mut rewrites = Vec::new();
            for (id, read) in &page {
                match read {
                    Ok(Some(sealed)) if sealed.key_version == target => {}
                    Ok(Some(sealed)) => match ring.reseal(*id, sealed) {
                        Ok(resealed) => rewrites.push(Rewrite {
                            id: *id,
                            from: sealed.key_version,
                            record: resealed,
                        }),
                        Err(e) => {
                            tracing::error!(token = %ring.token_of(*id), error = %e, "rewrap: record failed its integrity check; left as it is");
                            record.fail(*id, &mut seen_failed);
                        }
                    },
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(token = %ring.token_of(*id), error = %e, "rewrap: record does not decode; left as it is");
                        record.fail(*id, &mut seen_failed);
                    }
                }
            }
            let n = rewrites.len();
            let mut next = record.clone();
            next.cursor = Cursor::Record(last);
            next.done += n as u64;
            let state = next.encode();
            let applied = if n == 0 {
                match self
                    .retry_store("saving the rewrap's place", || {
                        self.store.set_job_state(Job::Rewrap, state.clone())
                    })
                    .await?
                {
                    Some(()) => Vec::new(),
                    None => return Ok(false),
                }
            } else {
                let rewrites = &rewrites;
                match self
                    .retry_store("rewrapping records", || {
                        self.store
                            .rewrite_records(rewrites.clone(), Some((Job::Rewrap, state.clone())))
                    })
                    .await
                {
                    Ok(Some(applied)) => applied,
                    Ok(None) => return Ok(false),
                    // The target was retired or replaced meanwhile: this
                    // batch again, with the keys now in force.
                    Err(StoreError::StaleKey { .. }) => continue,
                    Err(e) => return Err(e),
                }
            };
            let moved = applied.iter().filter(|a| **a).count() as u64;
            progressed |= moved > 0;
            record.cursor = Cursor::Record(last);
            record.done += moved;
            run.note(record.done);
            // Throttle on records moved: the rate bounds the write load the
            // job adds to live traffic.
            self.throttle(&mut next_at, n, rate).await;
        }
    }

    /// Retires every live version of `purpose` except the active one that
    /// protects nothing (after a finished rewrap or index rebuild).
    async fn retire_unused(&self, purpose: KeyPurpose, by: &'static str) {
        let ring = self.keyring();
        let active = match purpose {
            KeyPurpose::Index => ring.active_index_version(),
            _ => ring.active_version(),
        };
        let usage = self.store.key_usage();
        for version in ring.versions(purpose) {
            if version == active || usage.get(&(purpose, version)).copied().unwrap_or(0) > 0 {
                continue;
            }
            match self.retire(purpose, version).await {
                Ok(()) => {
                    tracing::info!(by, purpose = ?purpose, version = version.0, "retired a key version no record uses")
                }
                Err(e) => {
                    tracing::warn!(by, purpose = ?purpose, version = version.0, error = %e, "could not retire a key version")
                }
            }
        }
    }

    pub async fn rewrap_status(&self, call: impl Into<Call>) -> Result<JobStatus, VaultError> {
        let call = call.into();
        let result = async {
            self.key_admin_allowed(&call, false).await?;
            self.job_status(Job::Rewrap).await
        }
        .await;
        self.key_call_done(&call, "get_rewrap_status", Vec::new(), result)
            .await
    }

    /// Destroys data-key version `version`. FAILED_PRECONDITION while a
    /// record uses it or when it is the active version; NOT_FOUND for a
    /// version that never existed.
    pub async fn retire_key_version(
        &self,
        call: impl Into<Call>,
        version: u32,
    ) -> Result<(), VaultError> {
        let call = call.into();
        let result = async {
            self.key_admin_allowed(&call, true).await?;
            if version == 0 {
                return Err(VaultError::InvalidArgument {
                    field: "version",
                    reason: "must be set: key versions start at 1".into(),
                });
            }
            self.retire(KeyPurpose::Data, KeyVersion(version)).await
        }
        .await;
        self.key_call_done(
            &call,
            "retire_key_version",
            vec![("version", version.into())],
            result,
        )
        .await
    }

    async fn retire(&self, purpose: KeyPurpose, version: KeyVersion) -> Result<(), VaultError> {
        let _admin = self.key_jobs.admin.lock().await;
        let catalog = self
            .store
            .key_catalog()
            .await
            .map_err(|e| store_failed(&e, "reading the key catalog"))?;
        let of_purpose: Vec<&KeyInfo> = catalog
            .keys
            .iter()
            .filter(|k| k.purpose == purpose)
            .collect();
        let what = match purpose {
            KeyPurpose::Index => "index key",
            _ => "data key",
        };
        let Some(info) = of_purpose.iter().find(|k| k.version == version) else {
            return Err(VaultError::NotFound(format!(
                "{what} version {} does not exist (versions: {})",
                version.0,
                versions_list(&of_purpose)
            )));
        };
        if let Some(at) = info.retired_unix_ms {
            return Err(VaultError::FailedPrecondition(format!(
                "{what} version {} was already retired at {}",
                version.0,
                crate::domain::time::rfc3339(at)
            )));
        }
        let ring = self.keyring();
        let active = match purpose {
            KeyPurpose::Index => ring.active_index_version(),
            _ => ring.active_version(),
        };
        if version == active {
            return Err(VaultError::FailedPrecondition(format!(
                "{what} version {} is the active version; rotate first (`fieldvault keys rotate`), \
                 rewrap, then retire it",
                version.0
            )));
        }
        let in_use = |count: u64| {
            VaultError::FailedPrecondition(format!(
                "{what} version {} still protects {count} records; run a rewrap first \
                 (`fieldvault keys rewrap --wait`), then retire it",
                version.0
            ))
        };
        let count = self
            .store
            .key_usage()
            .get(&(purpose, version))
            .copied()
            .unwrap_or(0);
        if count > 0 {
            return Err(in_use(count));
        }
        match self
            .store
            .change_keys(KeyChange::Retire {
                purpose,
                version,
                at_unix_ms: now_unix_ms(),
            })
            .await
        {
            Ok(()) => {}
            Err(StoreError::KeyInUse { count, .. }) => return Err(in_use(count)),
            Err(e) => return Err(store_failed(&e, "retiring a key version")),
        }
        let next = ring
            .without(purpose, version)
            .map_err(|e| crypto_failed(&e))?;
        self.replace_keyring(next);
        Ok(())
    }

    /// Makes a new blind-index key version and starts the index rebuild.
    pub async fn rotate_index_key(
        self: &Arc<Self>,
        call: impl Into<Call>,
    ) -> Result<u32, VaultError> {
        let call = call.into();
        let result = async {
            self.key_admin_allowed(&call, true).await?;
            let version = self.rotate(KeyPurpose::Index).await?;
            self.start_job(Job::IndexRebuild, None).await?;
            Ok(version)
        }
        .await;
        let details = result
            .as_ref()
            .map_or(Vec::new(), |v| vec![("version", (*v).into())]);
        self.key_call_done(&call, "rotate_index_key", details, result)
            .await
    }

    /// Moves every index entry made with an older index key to the active
    /// one; retires each older version once nothing uses it.
    async fn run_rebuild(self: &Arc<Self>, mut record: JobRecord) -> Result<bool, StoreError> {
        let run = &self.key_jobs.rebuild;
        let mut seen_failed: HashSet<RecordId> = HashSet::new();
        let mut progressed = false;
        let mut full_pass = record.cursor == Cursor::Start;
        let mut next_at = Instant::now();
        run.note(record.done);
        loop {
            if self.stopping() {
                return Ok(false);
            }
            let (rate, batch) = run.pace();
            let ring = self.keyring();
            let target = ring.active_index_version();
            run.retarget(&mut record, target);
            let older: Vec<KeyVersion> = ring
                .versions(KeyPurpose::Index)
                .into_iter()
                .filter(|v| *v != target)
                .collect();
            // The version being scanned and where: from the cursor, or the
            // first older version.
            let (version, after) = match record.cursor {
                Cursor::Index(v, e) if older.contains(&v) => (Some(v), Some(e)),
                _ => (older.first().copied(), None),
            };
            let Some(version) = version else {
                // Nothing older is left.
                record.cursor = Cursor::Start;
                if !self.finish(Job::IndexRebuild, &mut record).await? {
                    return Ok(false);
                }
                tracing::info!(
                    target_version = target.0,
                    done = record.done,
                    "index rebuild finished"
                );
                return Ok(true);
            };
            let Some(page) = self
                .retry_store("reading index entries", || {
                    self.store.scan_index(version, after, batch)
                })
                .await?
            else {
                return Ok(false);
            };
            let Some(last) = page.last().copied() else {
                // This version's pass is over.
                let left = self
                    .store
                    .key_usage()
                    .get(&(KeyPurpose::Index, version))
                    .copied()
                    .unwrap_or(0);
                if left == 0 {
                    // Lookups need it no more: destroy it.
                    if let Err(e) = self.retire(KeyPurpose::Index, version).await {
                        tracing::warn!(version = version.0, error = %e, "could not retire the former index key; retrying");
                        self.pause_until(Instant::now() + Duration::from_secs(1))
                            .await;
                    }
                    record.cursor = Cursor::Start;
                    continue;
                }
                if progressed || !full_pass {
                    progressed = false;
                    full_pass = true;
                    record.cursor = Cursor::Start;
                    continue;
                }
                // Entries that cannot be moved (their record fails its
                // check): the job ends, the old key stays for them.
                if !self.finish(Job::IndexRebuild, &mut record).await? {
                    return Ok(false);
                }
                tracing::warn!(
                    version = version.0,
                    left,
                    failed = record.failed_count,
                    "index rebuild finished with entries it could not move"
                );
                return Ok(true);
            };
            let ids: Vec<RecordId> = page.iter().map(|e| e.id).collect();
            let Some(reads) = self
                .retry_store("reading records to re-index", || {
                    self.store.get_records(ids.clone())
                })
                .await?
            else {
                return Ok(false);
            };
            let mut moves = Vec::new();
            for (entry, read) in page.iter().zip(reads) {
                let sealed = match read {
                    Ok(Some(sealed)) => sealed,
                    // An entry without its record: not this job's to fix.
                    Ok(None) => continue,
                    Err(_) => {
                        record.fail(entry.id, &mut seen_failed);
                        continue;
                    }
                };
                let new = ring
                    .open(entry.id, &sealed)
                    .and_then(|value| ring.blind_index_under(target, sealed.kind, &value));
                match new {
                    Ok(new) => moves.push(Reindex { entry: *entry, new }),
                    Err(e) => {
                        tracing::error!(token = %ring.token_of(entry.id), error = %e, "index rebuild: record failed its integrity check; its entry stays");
                        record.fail(entry.id, &mut seen_failed);
                    }
                }
            }
            let n = moves.len();
            let mut next = record.clone();
            next.cursor = Cursor::Index(version, last);
            next.done += n as u64;
            let state = next.encode();
            let moves = &moves;
            let applied = match self
                .retry_store("moving index entries", || {
                    self.store
                        .reindex(moves.clone(), Some((Job::IndexRebuild, state.clone())))
                })
                .await
            {
                Ok(Some(applied)) => applied,
                Ok(None) => return Ok(false),
                Err(StoreError::StaleKey { .. }) => continue,
                Err(e) => return Err(e),
            };
            let moved = applied.iter().filter(|a| **a).count() as u64;
            progressed |= moved > 0;
            record.cursor = Cursor::Index(version, last);
            record.done += moved;
            run.note(record.done);
            self.throttle(&mut next_at, n.max(1), rate).await;
        }
    }

    /// Re-wraps every key under the master key in `new_key_file` (read by
    /// the server; 64 hex characters, owner-only permissions).
    pub async fn rotate_master_key(
        &self,
        call: impl Into<Call>,
        new_key_file: &Path,
    ) -> Result<(), VaultError> {
        let call = call.into();
        let result = async {
            self.key_admin_allowed(&call, true).await?;
            if new_key_file.as_os_str().is_empty() {
                return Err(VaultError::InvalidArgument {
                    field: "new_key_file",
                    reason: "is required: the absolute path of the new master key file on the \
                             server's machine"
                        .into(),
                });
            }
            let Ok(_running) = self.key_jobs.master.try_lock() else {
                return Err(VaultError::FailedPrecondition(
                    "a master-key rotation is already running; wait for it to finish".into(),
                ));
            };
            let bad = |reason: String| VaultError::InvalidArgument {
                field: "new_key_file",
                reason,
            };
            if new_key_file.as_os_str().len() > MAX_KEY_FILE_PATH {
                return Err(bad(format!(
                    "is longer than {MAX_KEY_FILE_PATH} bytes; give a plain path"
                )));
            }
            if new_key_file
                .to_str()
                .is_none_or(|p| p.chars().any(crate::domain::breaks_a_line))
            {
                return Err(bad(
                    "holds control, invisible or bidirectional formatting characters, or is \
                     not UTF-8; give a plain path"
                        .into(),
                ));
            }
            if !new_key_file.is_absolute() {
                return Err(bad("must be an absolute path (the server reads it)".into()));
            }
            // Off the runtime's threads and bounded: a file on a hung
            // mount must not hold a worker (a FIFO is refused unread).
            let path = new_key_file.to_path_buf();
            let read = tokio::task::spawn_blocking(move || MasterKey::from_new_file(&path));
            let new = match tokio::time::timeout(KEY_FILE_READ_LIMIT, read).await {
                Err(_) => {
                    return Err(bad(format!(
                        "could not be read within {} s (a hung file system?); nothing changed",
                        KEY_FILE_READ_LIMIT.as_secs()
                    )))
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "reading the new master key failed");
                    return Err(VaultError::Unavailable(
                        "the new master key could not be read; nothing changed".into(),
                    ));
                }
                Ok(Ok(read)) => read.map_err(|e| bad(e.to_string()))?,
            };
            let _admin = self.key_jobs.admin.lock().await;
            let ring = self.keyring();
            if new.fingerprint() == ring.master_fingerprint() {
                return Err(bad("is the master key in use now; give a new one".into()));
            }
            let catalog = self
                .store
                .key_catalog()
                .await
                .map_err(|e| store_failed(&e, "reading the key catalog"))?;
            if catalog
                .replaced_masters
                .iter()
                .any(|(fp, _)| *fp == new.fingerprint())
            {
                return Err(bad(
                    "is a master key this store used before and replaced; give a new one".into(),
                ));
            }
            let (next, wrapped) = ring.rewrapped(&new).map_err(|e| crypto_failed(&e))?;
            self.store
                .change_keys(KeyChange::Rewrap {
                    keys: wrapped,
                    replaced: ring.master_fingerprint(),
                    at_unix_ms: now_unix_ms(),
                    new_key_file: new_key_file.display().to_string(),
                })
                .await
                .map_err(|e| match e {
                    StoreError::KeysChanged => VaultError::FailedPrecondition(e.to_string()),
                    e => store_failed(&e, "re-wrapping the keys"),
                })?;
            // The copy of the audit key kept for the verifier follows.
            let audit_key = next.wrapped_audit_key().ok().flatten();
            self.replace_keyring(next);
            if let Some(wrapped) = audit_key {
                if let Err(e) = self.audit.key_rewrapped(&wrapped, new.fingerprint()) {
                    tracing::error!(error = %e, "could not update the audit key kept beside the trail; `fieldvault audit verify` needs the old master key until the next start");
                }
            }
            tracing::warn!(
                new_fingerprint = %hex::encode(new.fingerprint()),
                "every key is now wrapped by the new master key: start the server with the new \
                 key file from now on (the old master key is refused)"
            );
            Ok(())
        }
        .await;
        let fingerprint = self.keyring().master_fingerprint();
        let details = match &result {
            Ok(()) => vec![("new_master_fingerprint", hex::encode(fingerprint).into())],
            Err(_) => Vec::new(),
        };
        self.key_call_done(&call, "rotate_master_key", details, result)
            .await
    }

    /// Holds the lock a master-key rotation takes (tests).
    #[cfg(test)]
    pub(super) async fn key_jobs_master_lock_for_test(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.key_jobs.master.lock().await
    }

    /// Resumes the background jobs a crash or a restart interrupted, and
    /// runs the rotation schedule. Called once by the server at start;
    /// [`Vault::stop_background`] ends them.
    pub fn start_background(self: &Arc<Self>) {
        let vault = self.clone();
        let task = tokio::spawn(async move {
            for job in [Job::Rewrap, Job::IndexRebuild] {
                match vault.job_record(job).await {
                    Ok(Some(record)) if record.running => {
                        tracing::info!(
                            job = job.name(),
                            done = record.done,
                            "resuming an interrupted job"
                        );
                        vault
                            .run_of(job)
                            .rate
                            .store(record.rate.max(1), Ordering::SeqCst);
                        vault.spawn_job(job, record);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(job = job.name(), error = %e, "could not read the job's state; it does not resume")
                    }
                }
            }
            // A rotation whose job never got stored (a crash between the
            // key and the job's first state): the index key has no other
            // way to finish; a scheduled rotation's rewrap neither.
            let ring = vault.keyring();
            let orphans = [
                (
                    Job::IndexRebuild,
                    ring.versions(KeyPurpose::Index).len() > 1,
                ),
                (
                    Job::Rewrap,
                    vault.settings.keys.rotate_every.is_some()
                        && vault.remaining(KeyPurpose::Data, ring.active_version()) > 0,
                ),
            ];
            for (job, pending) in orphans {
                if pending && !vault.run_of(job).running.load(Ordering::SeqCst) {
                    tracing::info!(job = job.name(), "starting a job a crash left unstarted");
                    if let Err(e) = vault.start_job(job, None).await {
                        tracing::error!(job = job.name(), error = %e, "could not start the job");
                    }
                }
            }
            if let Some(every) = vault.settings.keys.rotate_every {
                vault.run_schedule(every).await;
            }
        });
        let sweeper = self.clone();
        let sweep = tokio::spawn(async move { sweeper.run_sweeper().await });
        self.key_jobs
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
        self.key_jobs
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(sweep);
    }

    /// Rotates the data key whenever the active one is `every` old, then
    /// starts the rewrap. A key of unknown age counts from this start.
    async fn run_schedule(self: &Arc<Self>, every: Duration) {
        let started = now_unix_ms();
        let check = (every / 10).clamp(Duration::from_millis(100), Duration::from_secs(3600));
        // Not a certificate identity: no certificate can name itself so.
        loop {
            if self.stopping() {
                return;
            }
            let active = self.keyring().active_version();
            let created = match self.store.key_catalog().await {
                Ok(c) => c
                    .keys
                    .iter()
                    .find(|k| k.purpose == KeyPurpose::Data && k.version == active)
                    .and_then(|k| k.created_unix_ms)
                    .unwrap_or(started),
                Err(e) => {
                    tracing::warn!(error = %e, "key schedule: could not read the key catalog");
                    started
                }
            };
            let due = created.saturating_add(every.as_millis() as u64);
            // Never a rotation while the rewrap of the last one runs: a
            // period shorter than a rewrap would chase a moving target and
            // pile up versions.
            let rewrapping = self.key_jobs.rewrap.running.load(Ordering::SeqCst);
            if now_unix_ms() >= due && !rewrapping {
                let rotated = self.rotate(KeyPurpose::Data).await;
                let details = rotated
                    .as_ref()
                    .map_or(Vec::new(), |v| vec![("version", (*v).into())]);
                let rotated = self
                    .scheduled_done("rotate_data_key", details, rotated)
                    .await;
                if rotated.is_ok() {
                    let started = self.start_job(Job::Rewrap, None).await;
                    let _ = self
                        .scheduled_done("start_rewrap", Vec::new(), started)
                        .await;
                }
            }
            self.pause_until(Instant::now() + check).await;
        }
    }

    /// Ends the background jobs after their current batch (their state is
    /// stored; they resume at the next start) and waits for them.
    pub async fn stop_background(&self) {
        self.key_jobs.stopping.store(true, Ordering::SeqCst);
        self.key_jobs.stop.notify_waiters();
        loop {
            let task = self
                .key_jobs
                .tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop();
            let Some(task) = task else { return };
            // Notified once; a task that was not waiting yet sees the flag.
            self.key_jobs.stop.notify_waiters();
            let _ = task.await;
        }
    }
}

/// A stored job state, decoded (`None`, logged, when it does not decode:
/// the job then starts afresh).
fn decode_job(job: Job, bytes: Option<Vec<u8>>) -> Option<JobRecord> {
    bytes.and_then(|b| {
        let record = JobRecord::decode(&b);
        if record.is_none() {
            tracing::error!(
                job = job.name(),
                "stored job state does not decode; starting the job afresh"
            );
        }
        record
    })
}

/// Records (index entries) on versions of `purpose` other than `target`.
fn remaining_in(usage: &crate::store::KeyUsage, purpose: KeyPurpose, target: KeyVersion) -> u64 {
    usage
        .iter()
        .filter(|((p, v), _)| *p == purpose && *v != target)
        .map(|(_, n)| *n)
        .sum()
}

/// The caller's rate, checked (`None`: none given).
fn check_rate(rate: Option<u32>) -> Result<Option<u32>, VaultError> {
    match rate {
        None => Ok(None),
        Some(0) => Err(VaultError::InvalidArgument {
            field: "rate_per_second",
            reason: format!(
                "must be at least 1 record per second (leave it unset for the server's \
                 default); at most {MAX_REWRAP_RATE}"
            ),
        }),
        Some(r) if r > MAX_REWRAP_RATE => Err(VaultError::InvalidArgument {
            field: "rate_per_second",
            reason: format!(
                "{r} is more than the {MAX_REWRAP_RATE} records per second a rewrap may run at"
            ),
        }),
        Some(r) => Ok(Some(r)),
    }
}
