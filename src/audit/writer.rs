//! The chained, group-committed audit writer.
//!
//! One thread owns the audit file. Callers queue events and wait; the
//! thread takes every event queued, seals each into the chain
//! ([`super::chain`]), writes them in one `pwrite` at the end of what is
//! known good, `fdatasync`s once, and answers them all: concurrent calls
//! share one sync, as the store's group commit does.
//!
//! Fail closed, fail fast: a caller waits at most [`APPEND_DEADLINE`] (a
//! hung disk holds the thread, not the callers) and a full queue refuses at
//! once. A failed write or sync cuts the file back to the end of the last
//! good event, so no torn line is left for the next event to be glued onto,
//! and the chain does not advance. While events are refused the sink
//! reports its failure ([`SinkHealth`]) and the thread tries again every
//! half second by itself; the first event it gets durable after an outage
//! is `audit.sink_recovered`, which says since when and how many events
//! were refused, so the gap is in the chain.
//!
//! Files: before each batch the thread checks that the path still names
//! the file it holds open, at the size it wrote. A file renamed or removed
//! under the server is noted: a new file is made at the path (or an empty
//! one made there is taken), and its first event (`audit.file_start`) says
//! what happened to the one before, continuing the chain. A file cut or
//! written to under the server is moved aside as it is and noted the same
//! way. A file the server did not write found at the path (the file was
//! replaced) is never appended to: events are refused until it is moved
//! away. When the file reaches its size limit it is renamed beside itself
//! ([`super::trail::rotated_name`]) and a new one begins the same way.
//! After every batch the record of where the trail ends
//! ([`super::head`]) is rewritten.

use super::chain::{seal_line, AuditKey, ChainState};
use super::event::Event;
use super::verify::{CHAIN_START, CHAIN_STARTED, FILE_START, KEY_ID};
use super::AuditError;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a caller waits for its event to be durable: refused in time
/// for its answer to leave within a second.
pub const APPEND_DEADLINE: Duration = Duration::from_millis(800);
/// How often the thread tries again while the sink fails.
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// Events waiting for the thread at most; more are refused at once.
const QUEUE: usize = 4096;
/// Events one batch takes at most.
const MAX_BATCH: usize = 1024;
/// Bytes of events waiting for the thread at most (a 1,000-token reveal's
/// event is about 100 KB); more are refused at once.
const MAX_QUEUED_BYTES: usize = 64 << 20;

type Reply = tokio::sync::oneshot::Sender<Result<u64, String>>;

struct Request {
    /// `None`: write what is pending (a file's first event, a recovery
    /// note) and answer.
    event_json: Option<String>,
    reply: Reply,
}

/// Whether the sink works, shared by the thread, the callers and health.
#[derive(Default)]
pub struct SinkHealth {
    outage: Mutex<Option<Outage>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Outage {
    since_ms: u64,
    cause: String,
    refused: u64,
}

impl SinkHealth {
    /// Why events are refused now, if they are.
    pub fn failure(&self) -> Option<String> {
        self.lock().as_ref().map(|o| {
            format!(
                "since {}: {} ({} events refused)",
                crate::domain::time::rfc3339(o.since_ms),
                o.cause,
                o.refused
            )
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Outage>> {
        // The guarded value is replaced whole; a panic cannot leave it half set.
        self.outage.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refused(&self, cause: &str, events: u64) {
        let mut outage = self.lock();
        match outage.as_mut() {
            Some(o) => o.refused += events,
            None => {
                tracing::error!(
                    cause,
                    "audit trail failing: events (and reveals) are refused"
                );
                *outage = Some(Outage {
                    since_ms: super::now_unix_ms(),
                    cause: cause.to_owned(),
                    refused: events,
                });
            }
        }
    }

    /// Counts a refused event in the outage under way, if there is one.
    pub(crate) fn count_refused(&self) {
        if let Some(o) = self.lock().as_mut() {
            o.refused += 1;
        }
    }

    fn snapshot(&self) -> Option<Outage> {
        self.lock().clone()
    }

    /// Ends the outage `seen` was taken of (not a later one).
    fn recovered(&self, seen: &Outage) {
        let mut outage = self.lock();
        if outage.as_ref().is_some_and(|o| o.since_ms == seen.since_ms) {
            tracing::info!(
                refused = seen.refused,
                "audit trail works again: events are recorded"
            );
            *outage = None;
        }
    }
}

/// The first event of a new file.
#[derive(Clone, Debug)]
pub struct Header {
    /// `audit.chain_start` (sequence 0) or `audit.file_start`.
    pub new_chain: bool,
    pub reason: String,
    pub details: BTreeMap<String, serde_json::Value>,
}

/// Where a writer begins.
pub struct Start {
    /// The chain after the file's last event (or before the header).
    pub state: ChainState,
    /// The sequence number of the file's first event.
    pub file_first_seq: u64,
    /// When the chain began (RFC 3339), carried into every file.
    pub chain_started: String,
    /// The file is new: its first event, written before any other.
    pub header: Option<Header>,
    /// A file this large is rotated before the next batch (0: never).
    pub max_file_bytes: u64,
    /// The wrapped audit key's file, put back beside a new file when it is
    /// gone (a directory removed and made again under the server).
    pub keyfile_text: Option<Arc<Mutex<String>>>,
}

pub struct ChainWriter {
    queue: Option<SyncSender<Request>>,
    thread: Option<std::thread::JoinHandle<u64>>,
    health: Arc<SinkHealth>,
    /// Bytes of events queued and not yet taken by the thread.
    queued: Arc<AtomicUsize>,
    /// Held by a test, it holds the thread just before it writes: a hung
    /// disk.
    #[cfg(test)]
    stall: Arc<Mutex<()>>,
}

/// The thread's side.
struct Owner {
    path: PathBuf,
    file: File,
    /// (device, inode) of the open file.
    identity: (u64, u64),
    /// Where the last durable event ends.
    end: u64,
    key: AuditKey,
    state: ChainState,
    file_first_seq: u64,
    chain_started: String,
    /// The open file is new and this is its first event, still to write.
    header: Option<Header>,
    max_file_bytes: u64,
    health: Arc<SinkHealth>,
    queued: Arc<AtomicUsize>,
    /// Where the trail ends, rewritten after every batch ([`super::head`]).
    head_file: Option<File>,
    /// Writing it failed (said once).
    head_failing: bool,
    keyfile_text: Option<Arc<Mutex<String>>>,
    #[cfg(test)]
    stall: Arc<Mutex<()>>,
}

impl ChainWriter {
    /// Opens (or creates, 0600) the audit file at `path` and starts the
    /// thread. Whatever follows the last whole line (a write torn by a
    /// crash) is cut off first.
    pub fn open(path: &Path, key: AuditKey, start: Start) -> Result<Self, AuditError> {
        let failed = |e: std::io::Error| AuditError(format!("{}: {e}", path.display()));
        let file = open_file(path, false).map_err(failed)?;
        let meta = file.metadata().map_err(failed)?;
        let end = whole_lines_end(&file, meta.len()).map_err(failed)?;
        if end < meta.len() {
            tracing::warn!(
                path = %path.display(),
                bytes = meta.len() - end,
                "cut a torn last line off the audit file (a write the server never acknowledged)"
            );
            file.set_len(end).map_err(failed)?;
            file.sync_data().map_err(failed)?;
        }
        // The record of the end is written (and synced, with its
        // directory) before anything is served: from now on the trail is
        // never without one.
        let head_path = super::head::path_for(path);
        let head_file = super::head::open(path)
            .and_then(|f| {
                super::head::write(&f, &key, start.state)?;
                f.sync_data()?;
                sync_dir_of(&head_path)?;
                Ok(f)
            })
            .map_err(|e| AuditError(format!("{}: {e}", head_path.display())))?;
        let health = Arc::new(SinkHealth::default());
        let queued = Arc::new(AtomicUsize::new(0));
        #[cfg(test)]
        let stall = Arc::new(Mutex::new(()));
        let owner = Owner {
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
            file,
            end,
            key,
            state: start.state,
            file_first_seq: start.file_first_seq,
            chain_started: start.chain_started,
            header: start.header,
            max_file_bytes: start.max_file_bytes,
            health: health.clone(),
            queued: queued.clone(),
            head_file: Some(head_file),
            head_failing: false,
            keyfile_text: start.keyfile_text,
            #[cfg(test)]
            stall: stall.clone(),
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("fieldvault-audit".into())
            .spawn(move || run(owner, rx))
            .map_err(|e| AuditError(format!("starting the audit thread: {e}")))?;
        Ok(Self {
            queue: Some(tx),
            thread: Some(thread),
            health,
            queued,
            #[cfg(test)]
            stall,
        })
    }

    /// Holds the thread before its next write until dropped (tests: a
    /// hung disk).
    #[cfg(test)]
    pub(crate) fn stall(&self) -> std::sync::MutexGuard<'_, ()> {
        self.stall.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the sink works (for health and the vault).
    pub fn health(&self) -> Arc<SinkHealth> {
        self.health.clone()
    }

    /// Appends one event (a JSON object); its sequence number once it is
    /// durable. Fails within [`APPEND_DEADLINE`] when it cannot be.
    pub async fn append(&self, event_json: String) -> Result<u64, AuditError> {
        self.send(Some(event_json)).await
    }

    /// Makes what is pending durable (a new file's first event); the next
    /// sequence number.
    pub async fn sync_pending(&self) -> Result<u64, AuditError> {
        self.send(None).await
    }

    async fn send(&self, event_json: Option<String>) -> Result<u64, AuditError> {
        let started = std::time::Instant::now();
        let (result, failure) = self.send_timed(event_json).await;
        metrics::histogram!(crate::metrics::AUDIT_WRITE_SECONDS)
            .record(started.elapsed().as_secs_f64());
        if let Some(reason) = failure {
            metrics::counter!(crate::metrics::AUDIT_FAILURES, "reason" => reason).increment(1);
        }
        result
    }

    /// [`ChainWriter::send`], and why it failed in one fixed word (a
    /// metric's label).
    async fn send_timed(
        &self,
        event_json: Option<String>,
    ) -> (Result<u64, AuditError>, Option<&'static str>) {
        let refused = |cause: String| {
            self.health.refused(&cause, 1);
            AuditError(cause)
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let Some(queue) = self.queue.as_ref() else {
            return (
                Err(refused("the audit writer is closed".into())),
                Some("closed"),
            );
        };
        let bytes = event_json.as_ref().map_or(0, String::len);
        if self.queued.fetch_add(bytes, Ordering::SeqCst) + bytes > MAX_QUEUED_BYTES {
            self.queued.fetch_sub(bytes, Ordering::SeqCst);
            return (
                Err(refused(
                    "the audit writer is behind (its queue is full); nothing was recorded".into(),
                )),
                Some("queue_full"),
            );
        }
        if let Err(e) = queue.try_send(Request { event_json, reply }) {
            self.queued.fetch_sub(bytes, Ordering::SeqCst);
            return match e {
                TrySendError::Full(_) => (
                    Err(refused(
                        "the audit writer is behind (its queue is full); nothing was recorded"
                            .into(),
                    )),
                    Some("queue_full"),
                ),
                TrySendError::Disconnected(_) => (
                    Err(refused("the audit writer stopped".into())),
                    Some("stopped"),
                ),
            };
        }
        match tokio::time::timeout(APPEND_DEADLINE, answer).await {
            Err(_) => (
                Err(refused(format!(
                    "an audit event was not durable within {} ms (a hung disk?)",
                    APPEND_DEADLINE.as_millis()
                ))),
                Some("timeout"),
            ),
            Ok(Err(_)) => (
                Err(refused("the audit writer stopped".into())),
                Some("stopped"),
            ),
            // The thread counted this refusal with its batch.
            Ok(Ok(Ok(seq))) => (Ok(seq), None),
            Ok(Ok(Err(e))) => (Err(AuditError(e)), Some("write_failed")),
        }
    }
}

/// How long closing the writer waits for its thread to write what is
/// queued; a thread held longer by a hung disk is left behind (the process
/// is about to exit) instead of hanging the shutdown.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

impl Drop for ChainWriter {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let deadline = std::time::Instant::now() + CLOSE_WAIT;
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                tracing::error!(
                    "the audit thread is still writing after {} s (a hung disk?); closing \
                     without it",
                    CLOSE_WAIT.as_secs()
                );
            }
        }
    }
}

/// Opens the audit file at `path` for reading and writing, owner-only,
/// never through a link; `new`: it must not exist yet.
fn open_file(path: &Path, new: bool) -> std::io::Result<File> {
    use super::trail::Open;
    super::trail::open(path, if new { Open::New } else { Open::Write })
}

/// Whether `path` names an empty regular file (not through a link).
fn is_empty_regular_file(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file() && m.len() == 0)
}

/// Syncs the directory holding `path`, so a rename or a new file in it
/// survives a power loss.
fn sync_dir_of(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

/// The end of the last whole line (a newline) within the first `len` bytes.
fn whole_lines_end(file: &File, len: u64) -> std::io::Result<u64> {
    let mut end = len;
    let mut buf = [0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        file.read_exact_at(&mut buf[..n], start)?;
        if let Some(i) = buf[..n].iter().rposition(|b| *b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Writes batches until the queue closes; how many it synced.
fn run(mut owner: Owner, rx: Receiver<Request>) -> u64 {
    let mut synced = 0;
    loop {
        let first = if owner.health.snapshot().is_some() {
            match rx.recv_timeout(RETRY_EVERY) {
                Ok(first) => Some(first),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(first) => Some(first),
                Err(_) => break,
            }
        };
        let mut batch: Vec<Request> = first.into_iter().collect();
        while !batch.is_empty() && batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let taken: usize = batch
            .iter()
            .map(|r| r.event_json.as_ref().map_or(0, String::len))
            .sum();
        owner.queued.fetch_sub(taken, Ordering::SeqCst);
        // A caller that gave up (its deadline passed) was answered
        // UNAVAILABLE and revealed nothing: its event is not written.
        batch.retain(|r| !r.reply.is_closed());
        let outcome = owner.commit(&batch);
        match &outcome {
            Ok(_) => synced += 1,
            Err(e) => {
                let live = batch.iter().filter(|r| r.event_json.is_some()).count() as u64;
                owner.health.refused(e, live);
            }
        }
        for (i, request) in batch.into_iter().enumerate() {
            let answer = match &outcome {
                Ok(seqs) => Ok(seqs.get(i).copied().unwrap_or(owner.state.next_seq)),
                Err(e) => Err(e.clone()),
            };
            // A caller that gave up no longer listens.
            let _ = request.reply.send(answer);
        }
    }
    synced
}

/// What became of the file at the path.
enum AtPath {
    Ours,
    Gone,
    Other,
}

impl Owner {
    /// Writes and syncs a batch: the sequence number of each request's
    /// event (or, for a request without one, the next).
    fn commit(&mut self, batch: &[Request]) -> Result<Vec<u64>, String> {
        self.ensure_file()?;
        let outage = self.health.snapshot();
        let mut state = self.state;
        let mut bytes = String::new();
        let mut seal = |json: &str, state: &mut ChainState| {
            let (line, next) = seal_line(&self.key, *state, json);
            bytes.push_str(&line);
            let seq = state.next_seq;
            *state = next;
            seq
        };
        if let Some(header) = &self.header {
            let json = self.header_event(header).to_json();
            seal(&json, &mut state);
        }
        if let Some(outage) = &outage {
            seal(&recovered_event(outage).to_json(), &mut state);
        }
        let seqs: Vec<u64> = batch
            .iter()
            .map(|r| match &r.event_json {
                Some(json) => seal(json, &mut state),
                None => state.next_seq,
            })
            .collect();
        if bytes.is_empty() {
            return Ok(seqs);
        }
        #[cfg(test)]
        let _stalled = self.stall.lock().unwrap_or_else(|p| p.into_inner());
        let written = self
            .file
            .write_all_at(bytes.as_bytes(), self.end)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // No torn line stays for the next event to be glued onto.
            let cut = self
                .file
                .set_len(self.end)
                .and_then(|()| self.file.sync_data());
            return Err(match cut {
                Ok(()) => format!("writing the audit file failed: {e}; nothing was recorded"),
                Err(cut) => format!(
                    "writing the audit file failed: {e}, and cutting back its partial write \
                     failed too: {cut}"
                ),
            });
        }
        self.end += bytes.len() as u64;
        self.state = state;
        self.header = None;
        // The events are durable; a record of the end that cannot be
        // written makes the next start refuse the trail (it ends past the
        // record... or the record is missing): said once, not per batch.
        let recorded = match &self.head_file {
            Some(file) => super::head::write(file, &self.key, state).map_err(|e| e.to_string()),
            None => Err("it could not be opened".into()),
        };
        match (recorded, self.head_failing) {
            (Err(e), false) => {
                tracing::error!(error = %e, "could not record where the audit trail ends; the next start may refuse the trail until this is fixed");
                self.head_failing = true;
                self.head_file = super::head::open(&self.path).ok();
            }
            (Err(_), true) => self.head_file = super::head::open(&self.path).ok(),
            (Ok(()), true) => {
                tracing::info!("the record of where the audit trail ends is written again");
                self.head_failing = false;
            }
            (Ok(()), false) => {}
        }
        if let Some(outage) = &outage {
            self.health.recovered(outage);
        }
        Ok(seqs)
    }

    /// Whether the open file's size is not what the server wrote.
    fn size_changed(&self) -> Result<bool, String> {
        self.file
            .metadata()
            .map(|m| m.len() != self.end)
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }

    fn at_path(&self) -> AtPath {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.identity => AtPath::Ours,
            Ok(_) => AtPath::Other,
            Err(_) => AtPath::Gone,
        }
    }

    /// Makes sure the path names the file the next events go to: the open
    /// one, or a new one after a rotation or after the open one was renamed
    /// or removed. `Err` when a file the server did not write is there.
    fn ensure_file(&mut self) -> Result<(), String> {
        // An empty file someone made in place of the one renamed away
        // (logrotate's `create`) holds nothing to keep: it becomes the new
        // file. Anything else there is never appended to.
        let mut adopt = false;
        let reason = match self.at_path() {
            AtPath::Other if is_empty_regular_file(&self.path) => {
                adopt = true;
                format!(
                    "the file before was renamed or removed under the running server after \
                     event {}; the empty file made in its place is this one",
                    self.state.next_seq.saturating_sub(1)
                )
            }
            AtPath::Other => {
                return Err(format!(
                    "the audit file {} was replaced under the server by a file it did not \
                     write; nothing is recorded (or revealed) until that file is moved away",
                    self.path.display()
                ))
            }
            AtPath::Ours if self.size_changed()? => {
                // Cut (`> audit.log`, logrotate's copytruncate) or written
                // to by someone else: never written over, never appended
                // to. Moved aside as it is; a new file notes it, and the
                // events it lost show as a gap to `audit verify`.
                let held = self.file.metadata().map(|m| m.len()).unwrap_or(0);
                let to = super::trail::aside_name(&self.path, "altered", super::now_unix_ms());
                std::fs::rename(&self.path, &to)
                    .and_then(|()| sync_dir_of(&self.path))
                    .map_err(|e| {
                        format!(
                            "the audit file {} was changed under the server, and moving it \
                             aside failed: {e}; nothing is recorded (or revealed)",
                            self.path.display()
                        )
                    })?;
                tracing::error!(
                    path = %self.path.display(),
                    written = self.end,
                    held,
                    moved_to = %to.display(),
                    "the audit file was cut or written to under the server; it was moved aside and a new one begins"
                );
                format!(
                    "the file before was changed under the running server (the server had \
                     written {} bytes, it held {held}) and was moved to {}",
                    self.end,
                    to.file_name().unwrap_or_default().to_string_lossy()
                )
            }
            AtPath::Ours if self.max_file_bytes > 0 && self.end >= self.max_file_bytes => {
                let to = super::trail::rotated_name(
                    &self.path,
                    super::now_unix_ms(),
                    self.file_first_seq,
                );
                std::fs::rename(&self.path, &to)
                    .and_then(|()| sync_dir_of(&self.path))
                    .map_err(|e| {
                        format!("rotating the audit file to {} failed: {e}", to.display())
                    })?;
                tracing::info!(to = %to.display(), "rotated the audit file");
                format!(
                    "rotation: the file before reached {} bytes and was renamed {}",
                    self.end,
                    to.file_name().unwrap_or_default().to_string_lossy()
                )
            }
            AtPath::Ours => return Ok(()),
            AtPath::Gone if self.header.is_some() => {
                // A new file not yet begun went away: begin it again.
                self.header
                    .as_ref()
                    .map(|h| h.reason.clone())
                    .unwrap_or_default()
            }
            AtPath::Gone => {
                // Logged once the new file exists (its creation may fail
                // and be tried again every half second).
                format!(
                    "the file before was renamed or removed under the running server after \
                     event {}",
                    self.state.next_seq.saturating_sub(1)
                )
            }
        };
        let file = open_file(&self.path, !adopt)
            .and_then(|f| {
                if adopt && f.metadata()?.len() != 0 {
                    return Err(std::io::Error::other("it is no longer empty"));
                }
                Ok(f)
            })
            .and_then(|f| sync_dir_of(&self.path).map(|()| f))
            .map_err(|e| {
                format!(
                    "creating the audit file {} failed: {e}; nothing is recorded (or revealed)",
                    self.path.display()
                )
            })?;
        let meta = file
            .metadata()
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        if reason.starts_with("rotation") {
            tracing::info!(path = %self.path.display(), %reason, "a new audit file begins");
        } else {
            tracing::warn!(path = %self.path.display(), %reason, "a new audit file begins");
        }
        let new_chain = self.header.as_ref().is_some_and(|h| h.new_chain);
        let details = self.header.take().map(|h| h.details).unwrap_or_default();
        self.file = file;
        self.identity = (meta.dev(), meta.ino());
        self.end = 0;
        // A directory made again needs its record of the end again, and
        // the key file for the verifier.
        self.head_file = super::head::open(&self.path).ok();
        if let Some(text) = &self.keyfile_text {
            if !super::keyfile::path_for(&self.path).exists() {
                let text = text.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if let Err(e) = super::keyfile::write_text(&self.path, &text) {
                    tracing::warn!(error = %e, "could not put the audit key file back beside the trail");
                }
            }
        }
        self.file_first_seq = self.state.next_seq;
        self.header = Some(Header {
            new_chain,
            reason,
            details,
        });
        Ok(())
    }

    fn header_event(&self, header: &Header) -> Event {
        let mut event = Event::new(if header.new_chain {
            CHAIN_START
        } else {
            FILE_START
        });
        event.reason = Some(header.reason.clone());
        event.details = header.details.clone();
        event
            .details
            .insert(KEY_ID.into(), serde_json::Value::String(self.key.id()));
        event.details.insert(
            CHAIN_STARTED.into(),
            serde_json::Value::String(self.chain_started.clone()),
        );
        event
    }
}

/// The note that ends an outage: since when, why, how many events were
/// refused (none of them was answered with a value).
fn recovered_event(outage: &Outage) -> Event {
    let mut event = Event::new("audit.sink_recovered");
    event.reason = Some(outage.cause.clone());
    event.details.insert(
        "failed_since".into(),
        serde_json::Value::String(crate::domain::time::rfc3339(outage.since_ms)),
    );
    event.details.insert(
        "refused_events".into(),
        serde_json::Value::from(outage.refused),
    );
    event
}

#[cfg(test)]
mod tests {
    use super::super::chain::verify_text;
    use super::*;
    use std::sync::Arc;

    fn key() -> AuditKey {
        AuditKey::new([3; 32])
    }

    fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    fn start(state: ChainState) -> Start {
        Start {
            state,
            file_first_seq: state.next_seq,
            chain_started: "2026-11-27T00:00:00.000Z".into(),
            header: None,
            max_file_bytes: 0,
            keyfile_text: None,
        }
    }

    fn event(n: usize) -> String {
        format!("{{\"action\":\"detokenize\",\"n\":{n}}}")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_events_share_syncs_and_the_trail_verifies_across_a_reopen() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("audit.log");
        let writer = Arc::new(ok(ChainWriter::open(
            &path,
            key(),
            start(ChainState::GENESIS),
        )));
        let mut calls = Vec::new();
        for n in 0..200 {
            let writer = writer.clone();
            calls.push(tokio::spawn(async move { writer.append(event(n)).await }));
        }
        let mut seqs = Vec::new();
        for call in calls {
            seqs.push(ok(ok(call.await)));
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (0..200).collect::<Vec<u64>>());
        drop(writer);

        let text = ok(std::fs::read_to_string(&path));
        let state = ok(verify_text(&key(), ChainState::GENESIS, &text));
        assert_eq!(state.next_seq, 200);
        // A restart continues the chain.
        let writer = ok(ChainWriter::open(&path, key(), start(state)));
        assert_eq!(ok(writer.append(event(200)).await), 200);
        drop(writer);
        let text = ok(std::fs::read_to_string(&path));
        assert_eq!(
            verify_text(&key(), ChainState::GENESIS, &text).map(|s| s.next_seq),
            Ok(201)
        );
    }

    #[test]
    fn events_queued_while_the_thread_is_busy_are_written_and_synced_as_one_batch() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("audit.log");
        let file = ok(std::fs::File::create(&path));
        let meta = ok(file.metadata());
        let owner = Owner {
            path: path.clone(),
            identity: (meta.dev(), meta.ino()),
            file,
            end: 0,
            key: key(),
            state: ChainState::GENESIS,
            file_first_seq: 0,
            chain_started: String::new(),
            header: None,
            max_file_bytes: 0,
            health: Arc::default(),
            queued: Arc::default(),
            head_file: None,
            head_failing: false,
            keyfile_text: None,
            stall: Arc::default(),
        };
        // Fifty events queued before the thread looks: one batch, one sync.
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let mut answers = Vec::new();
        for n in 0..50 {
            let (reply, answer) = tokio::sync::oneshot::channel();
            ok(tx.send(Request {
                event_json: Some(event(n)),
                reply,
            }));
            answers.push(answer);
        }
        drop(tx);
        assert_eq!(run(owner, rx), 1, "one batch, one sync");
        for (n, mut answer) in answers.into_iter().enumerate() {
            assert_eq!(answer.try_recv().ok(), Some(Ok(n as u64)));
        }
        let text = ok(std::fs::read_to_string(&path));
        assert_eq!(
            verify_text(&key(), ChainState::GENESIS, &text).map(|s| s.next_seq),
            Ok(50)
        );
    }

    #[tokio::test]
    async fn a_torn_last_line_is_cut_off_at_open_so_no_event_is_glued_onto_it() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("audit.log");
        let writer = ok(ChainWriter::open(&path, key(), start(ChainState::GENESIS)));
        ok(writer.append(event(0)).await);
        drop(writer);
        let good = ok(std::fs::read_to_string(&path));
        let state = ok(verify_text(&key(), ChainState::GENESIS, &good));
        // A crash in the middle of the next write.
        ok(std::fs::write(
            &path,
            format!("{good}{{\"seq\":1,\"prev\":\"ab"),
        ));
        let writer = ok(ChainWriter::open(&path, key(), start(state)));
        ok(writer.append(event(1)).await);
        drop(writer);
        let text = ok(std::fs::read_to_string(&path));
        assert_eq!(
            verify_text(&key(), ChainState::GENESIS, &text).map(|s| s.next_seq),
            Ok(2)
        );
    }

    #[tokio::test]
    async fn a_file_renamed_under_the_writer_is_noted_in_a_new_one_and_a_stranger_is_never_appended_to(
    ) {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("audit.log");
        let writer = ok(ChainWriter::open(&path, key(), start(ChainState::GENESIS)));
        ok(writer.append(event(0)).await);
        let moved = dir.path().join("moved.log");
        ok(std::fs::rename(&path, &moved));
        // The next event goes to a new file that says what happened.
        assert_eq!(ok(writer.append(event(1)).await), 2);
        let text = ok(std::fs::read_to_string(&path));
        let first = text.lines().next().unwrap_or_default();
        assert!(
            first.contains(FILE_START) && first.contains("renamed or removed"),
            "{first}"
        );
        // Both files verify and follow each other.
        let old = ok(std::fs::read_to_string(&moved));
        let state = ok(verify_text(&key(), ChainState::GENESIS, &old));
        assert_eq!(verify_text(&key(), state, &text).map(|s| s.next_seq), Ok(3));

        // A file the server did not write, put at the path: refused, and
        // left untouched; once it is moved away, events go on.
        ok(std::fs::rename(&path, dir.path().join("second.log")));
        ok(std::fs::write(&path, b"not ours\n"));
        let e = writer.append(event(3)).await.err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains("replaced")),
            "{e:?}"
        );
        assert!(writer.health().failure().is_some());
        assert_eq!(ok(std::fs::read_to_string(&path)), "not ours\n");
        ok(std::fs::remove_file(&path));
        // The thread retries by itself: the outage ends without a caller.
        for _ in 0..50 {
            if writer.health().failure().is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(writer.health().failure(), None);
        let text = ok(std::fs::read_to_string(&path));
        assert!(text.contains("audit.sink_recovered"), "{text}");
        assert!(text.contains("\"refused_events\":1"), "{text}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(clippy::await_holding_lock)]
    async fn a_hung_disk_refuses_callers_at_the_deadline_and_the_trail_records_the_outage_after() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("audit.log");
        let writer = ok(ChainWriter::open(&path, key(), start(ChainState::GENESIS)));
        ok(writer.append(event(0)).await);
        {
            let _hung = writer.stall();
            let e = writer.append(event(1)).await.err().map(|e| e.to_string());
            assert!(
                e.as_deref()
                    .is_some_and(|e| e.contains("not durable within")),
                "{e:?}"
            );
            assert!(writer.health().failure().is_some());
            // Behind a hung write, the next caller is refused too, and its
            // event is not written later (it gave up first).
            assert!(writer.append(event(2)).await.is_err());
        }
        for _ in 0..50 {
            if writer.health().failure().is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(writer.health().failure(), None);
        ok(writer.append(event(3)).await);
        drop(writer);
        let text = ok(std::fs::read_to_string(&path));
        ok(verify_text(&key(), ChainState::GENESIS, &text));
        // The event whose write hung may land (the trail may over-report a
        // refused call, never miss an answered one); the one queued behind
        // it, whose caller gave up, does not.
        assert!(!text.contains("\"n\":2"), "{text}");
        assert!(text.contains("\"n\":3"));
        assert!(text.contains("audit.sink_recovered"), "{text}");
    }

    #[tokio::test]
    async fn an_empty_file_made_in_place_of_a_renamed_one_becomes_the_new_file() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("audit.log");
        let writer = ok(ChainWriter::open(&path, key(), start(ChainState::GENESIS)));
        ok(writer.append(event(0)).await);
        // logrotate: rename, then `create`.
        ok(std::fs::rename(&path, dir.path().join("audit.log.1")));
        ok(std::fs::write(&path, b""));
        assert_eq!(ok(writer.append(event(1)).await), 2);
        drop(writer);
        let text = ok(std::fs::read_to_string(&path));
        let first = text.lines().next().unwrap_or_default();
        assert!(
            first.contains("the empty file made in its place"),
            "{first}"
        );
        let old = ok(std::fs::read_to_string(dir.path().join("audit.log.1")));
        let state = ok(verify_text(&key(), ChainState::GENESIS, &old));
        assert_eq!(verify_text(&key(), state, &text).map(|s| s.next_seq), Ok(3));
    }

    #[tokio::test]
    async fn a_file_cut_or_written_to_under_the_writer_is_moved_aside_and_never_written_over() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("audit.log");
        let writer = ok(ChainWriter::open(&path, key(), start(ChainState::GENESIS)));
        ok(writer.append(event(0)).await);
        ok(writer.append(event(1)).await);
        // logrotate's copytruncate.
        ok(std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(0)));
        assert_eq!(ok(writer.append(event(2)).await), 3);
        let text = ok(std::fs::read_to_string(&path));
        assert!(!text.contains('\0'), "written over a hole");
        let first = text.lines().next().unwrap_or_default();
        assert!(
            first.contains(FILE_START) && first.contains("changed under the running server"),
            "{first}"
        );
        // Bytes appended by someone else: the same.
        ok(std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"junk\n")));
        ok(writer.append(event(3)).await);
        drop(writer);
        let aside: Vec<String> = ok(std::fs::read_dir(dir.path()))
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".altered-"))
            .collect();
        assert_eq!(aside.len(), 2, "{aside:?}");
        let junk = aside
            .iter()
            .map(|n| ok(std::fs::read_to_string(dir.path().join(n))))
            .find(|t| t.ends_with("junk\n"));
        assert!(
            junk.is_some(),
            "the appended bytes were not kept as they were"
        );
        let text = ok(std::fs::read_to_string(&path));
        assert!(text.lines().nth(1).is_some_and(|l| l.contains("\"n\":3")));
    }

    #[tokio::test]
    async fn a_full_file_is_rotated_and_the_chain_runs_on_in_the_new_one() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("audit.log");
        let mut s = start(ChainState::GENESIS);
        s.max_file_bytes = 300;
        let writer = ok(ChainWriter::open(&path, key(), s));
        for n in 0..10 {
            ok(writer.append(event(n)).await);
        }
        drop(writer);
        let files = ok(super::super::trail::files_of(&path));
        assert!(files.len() >= 3, "{files:?}");
        let mut state = ChainState::GENESIS;
        let mut events = 0;
        for file in &files {
            let text = ok(std::fs::read_to_string(file));
            state = ok(verify_text(&key(), state, &text));
            events += text.lines().filter(|l| l.contains("\"n\":")).count();
        }
        assert_eq!(events, 10);
    }
}
