//! The chained, group-committed audit writer (issue 13, second part; the
//! server does not use it yet).
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
//! and the chain does not advance. Before each batch the thread checks that
//! the path still names the file it holds open: an audit file renamed,
//! removed or replaced under the server stops every later event (and so
//! every reveal) with a message saying so.

use super::chain::{seal_line, AuditKey, ChainState};
use super::AuditError;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::Duration;

/// How long a caller waits for its event to be durable.
pub const APPEND_DEADLINE: Duration = Duration::from_secs(1);
/// Events waiting for the thread at most; more are refused at once.
const QUEUE: usize = 4096;
/// Events one batch takes at most.
const MAX_BATCH: usize = 1024;

type Reply = tokio::sync::oneshot::Sender<Result<u64, String>>;

struct Request {
    event_json: String,
    reply: Reply,
}

pub struct ChainWriter {
    queue: Option<SyncSender<Request>>,
    thread: Option<std::thread::JoinHandle<u64>>,
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
}

impl ChainWriter {
    /// Opens (or creates, 0600) the audit file at `path`, whose events end
    /// the chain at `state` (verified by the caller), and starts the thread.
    /// Whatever follows the last whole line (a write torn by a crash) is cut
    /// off first.
    pub fn open(path: &Path, key: AuditKey, state: ChainState) -> Result<Self, AuditError> {
        let failed = |e: std::io::Error| AuditError(format!("{}: {e}", path.display()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(failed)?;
        let meta = file.metadata().map_err(failed)?;
        let end = whole_lines_end(&file, meta.len()).map_err(failed)?;
        if end < meta.len() {
            file.set_len(end).map_err(failed)?;
            file.sync_data().map_err(failed)?;
        }
        let owner = Owner {
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
            file,
            end,
            key,
            state,
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("fieldvault-audit".into())
            .spawn(move || run(owner, rx))
            .map_err(|e| AuditError(format!("starting the audit thread: {e}")))?;
        Ok(Self {
            queue: Some(tx),
            thread: Some(thread),
        })
    }

    /// Appends one event (a JSON object); its sequence number once it is
    /// durable. Fails within [`APPEND_DEADLINE`] when it cannot be.
    pub async fn append(&self, event_json: String) -> Result<u64, AuditError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let queue = self
            .queue
            .as_ref()
            .ok_or_else(|| AuditError("the audit writer is closed".into()))?;
        match queue.try_send(Request { event_json, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(AuditError(
                    "the audit writer is behind (its queue is full); nothing was recorded".into(),
                ))
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(AuditError("the audit writer stopped".into()))
            }
        }
        match tokio::time::timeout(APPEND_DEADLINE, answer).await {
            Err(_) => Err(AuditError(format!(
                "the audit event was not durable within {} ms (a hung disk?)",
                APPEND_DEADLINE.as_millis()
            ))),
            Ok(Err(_)) => Err(AuditError("the audit writer stopped".into())),
            Ok(Ok(outcome)) => outcome.map_err(AuditError),
        }
    }
}

impl Drop for ChainWriter {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
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
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let outcome = owner.commit(&batch);
        synced += u64::from(outcome.is_ok());
        for (i, request) in batch.into_iter().enumerate() {
            let answer = match &outcome {
                Ok(first_seq) => Ok(first_seq + i as u64),
                Err(e) => Err(e.clone()),
            };
            // A caller that gave up no longer listens.
            let _ = request.reply.send(answer);
        }
    }
    synced
}

impl Owner {
    /// Writes and syncs a batch; the sequence number of its first event.
    fn commit(&mut self, batch: &[Request]) -> Result<u64, String> {
        self.check_identity()?;
        let first = self.state.next_seq;
        let mut state = self.state;
        let mut bytes = String::new();
        for request in batch {
            let (line, next) = seal_line(&self.key, state, &request.event_json);
            bytes.push_str(&line);
            state = next;
        }
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
        Ok(first)
    }

    /// `Err` when the path no longer names the file this writer holds
    /// (renamed, removed or replaced).
    fn check_identity(&self) -> Result<(), String> {
        match std::fs::metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.identity => Ok(()),
            Ok(_) => Err(format!(
                "the audit file {} was replaced under the server; nothing is recorded (or \
                 revealed) until it is restarted",
                self.path.display()
            )),
            Err(e) => Err(format!(
                "the audit file {} is gone ({e}); nothing is recorded (or revealed) until the \
                 server is restarted",
                self.path.display()
            )),
        }
    }
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

    fn event(n: usize) -> String {
        format!("{{\"action\":\"detokenize\",\"n\":{n}}}")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_events_share_syncs_and_the_trail_verifies_across_a_reopen() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("audit.log");
        let writer = Arc::new(ok(ChainWriter::open(&path, key(), ChainState::GENESIS)));
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
        let writer = ok(ChainWriter::open(&path, key(), state));
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
        };
        // Fifty events queued before the thread looks: one batch, one sync.
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let mut answers = Vec::new();
        for n in 0..50 {
            let (reply, answer) = tokio::sync::oneshot::channel();
            ok(tx.send(Request {
                event_json: event(n),
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
        let writer = ok(ChainWriter::open(&path, key(), ChainState::GENESIS));
        ok(writer.append(event(0)).await);
        drop(writer);
        let good = ok(std::fs::read_to_string(&path));
        let state = ok(verify_text(&key(), ChainState::GENESIS, &good));
        // A crash in the middle of the next write.
        ok(std::fs::write(
            &path,
            format!("{good}{{\"seq\":1,\"prev\":\"ab"),
        ));
        let writer = ok(ChainWriter::open(&path, key(), state));
        ok(writer.append(event(1)).await);
        drop(writer);
        let text = ok(std::fs::read_to_string(&path));
        assert_eq!(
            verify_text(&key(), ChainState::GENESIS, &text).map(|s| s.next_seq),
            Ok(2)
        );
    }

    #[tokio::test]
    async fn an_audit_file_renamed_or_removed_under_the_writer_stops_every_event() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("audit.log");
        let writer = ok(ChainWriter::open(&path, key(), ChainState::GENESIS));
        ok(writer.append(event(0)).await);
        ok(std::fs::rename(&path, dir.path().join("moved.log")));
        let e = writer.append(event(1)).await.err().map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.contains("is gone")), "{e:?}");
        // A new file at the path is not the one the chain is in.
        ok(std::fs::write(&path, b""));
        let e = writer.append(event(2)).await.err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains("replaced")),
            "{e:?}"
        );
        // Nothing was written to either.
        let moved = ok(std::fs::read_to_string(dir.path().join("moved.log")));
        assert_eq!(moved.lines().count(), 1);
        assert_eq!(ok(std::fs::read_to_string(&path)), "");
    }
}
