//! The audit trail: one event per call, whatever its outcome, made durable
//! before the answer leaves (invariant 4: a reveal that cannot be audited
//! does not happen).
//!
//! - [`event`]: what an event says (never a value, full or masked).
//! - [`chain`]: each event sealed into a hash chain under the audit key.
//! - [`writer`]: one thread, group commit (one `fdatasync` per batch),
//!   rotation, fail closed within a second, recovery by itself.
//! - [`verify`], [`trail`], [`keyfile`]: checking a trail of files, where
//!   they are, the audit key beside them for the verifier.
//! - [`AuditTrail`]: the sink the server uses: at start it verifies the
//!   active file and continues its chain, or refuses to start when it does
//!   not verify (unless told to begin a new chain, which it then records).

pub mod chain;
pub mod event;
pub mod head;
pub mod keyfile;
pub mod report;
pub mod search;
pub mod trail;
pub mod verify;
pub mod writer;

use async_trait::async_trait;
use chain::{AuditKey, ChainState};
use event::Event;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use writer::{ChainWriter, Header, SinkHealth, Start};

#[derive(Debug, thiserror::Error)]
#[error("audit log unavailable: {0}")]
pub struct AuditError(pub String);

#[async_trait]
pub trait AuditSink: Send + Sync + 'static {
    /// Returns only once the event is durable; an error means the caller
    /// must not reveal anything.
    async fn record(&self, event: &Event) -> Result<(), AuditError>;

    /// Why events are refused now, if they are (health reports
    /// NOT_SERVING meanwhile).
    fn failure(&self) -> Option<String>;

    /// An event was not even offered during an outage (the call was
    /// refused at once): counted with the outage's refused events.
    fn not_offered(&self);

    /// The audit key is wrapped under a new master key now: the copy kept
    /// for the verifier follows.
    fn key_rewrapped(
        &self,
        wrapped: &crate::crypto::WrappedKey,
        master_fingerprint: [u8; 8],
    ) -> Result<(), AuditError>;
}

/// How the trail opens.
#[derive(Clone, Copy, Debug)]
pub struct TrailOptions {
    /// Rotate the active file at this size.
    pub max_file_bytes: u64,
    /// A trail that does not verify is moved aside and a new chain begun
    /// (instead of refusing to start).
    pub start_new_chain: bool,
    /// The audit key was made just now (a new store, or a store from
    /// before the chained trail): no trail is expected yet.
    pub key_is_new: bool,
}

/// The chained, durable trail at one path (see the module docs).
pub struct AuditTrail {
    path: PathBuf,
    key_id: String,
    writer: ChainWriter,
    health: std::sync::Arc<SinkHealth>,
    /// The key file beside the trail, as written last (the writer puts it
    /// back in a directory made again under the server).
    keyfile_text: Arc<std::sync::Mutex<String>>,
}

/// Where a trail opened at start goes on from.
struct Resume {
    state: ChainState,
    file_first_seq: u64,
    chain_started: String,
    header: Option<Header>,
}

fn header(new_chain: bool, reason: String) -> Option<Header> {
    Some(Header {
        new_chain,
        reason,
        details: Default::default(),
    })
}

fn new_chain(reason: String) -> Resume {
    Resume {
        state: ChainState::GENESIS,
        file_first_seq: 0,
        chain_started: event::now_rfc3339_millis(),
        header: header(true, reason),
    }
}

/// The file's text up to its last newline (a torn last line is the
/// writer's to cut), `None` when that is nothing.
fn whole_lines(path: &Path) -> Result<Option<String>, AuditError> {
    let bytes = match trail::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AuditError(format!("{}: {e}", path.display()))),
    };
    let end = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if end == 0 {
        return Ok(None);
    }
    let mut bytes = bytes;
    bytes.truncate(end);
    // Not UTF-8: the verifier below names it as not a trail.
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

fn refuse_broken(path: &Path, why: &str) -> AuditError {
    AuditError(format!(
        "the audit trail does not verify: {why}. Nothing was changed and the server does not \
         start: find out what happened to the trail (`fieldvault audit verify`). To keep the \
         file aside and begin a new chain, recorded as the new chain's first event, set \
         start_new_chain = true under [audit] in the config, or start once with \
         --audit-new-chain added to the serve command (`fieldvault serve --dev \
         --audit-new-chain`, `fieldvault serve --config FILE --audit-new-chain`) (the trail \
         at {})",
        path.display()
    ))
}

impl AuditTrail {
    /// Opens the trail at `path` under `key` (whose wrapped form,
    /// `wrapped` under the master key with `master_fingerprint`, is kept
    /// beside it for the verifier).
    pub async fn open(
        path: &Path,
        key: AuditKey,
        wrapped: &crate::crypto::WrappedKey,
        master_fingerprint: [u8; 8],
        options: TrailOptions,
    ) -> Result<Self, AuditError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| AuditError(format!("{}: {e}", parent.display())))?;
        }
        let keyfile_text = Arc::new(std::sync::Mutex::new(keyfile::save(
            path,
            &key,
            wrapped,
            master_fingerprint,
        )?));
        let resume = Self::resume(path, &key, options)?;
        let key_id = key.id();
        let writer = ChainWriter::open(
            path,
            key,
            Start {
                state: resume.state,
                file_first_seq: resume.file_first_seq,
                chain_started: resume.chain_started,
                header: resume.header.clone(),
                max_file_bytes: options.max_file_bytes,
                keyfile_text: Some(keyfile_text.clone()),
            },
        )?;
        if let Some(h) = &resume.header {
            writer.sync_pending().await?;
            tracing::info!(
                path = %path.display(),
                new_chain = h.new_chain,
                reason = %h.reason,
                "audit trail: a new file begins"
            );
        } else {
            tracing::info!(
                path = %path.display(),
                next_event = resume.state.next_seq,
                "audit trail verified; its chain goes on"
            );
        }
        let health = writer.health();
        Ok(Self {
            path: path.to_path_buf(),
            key_id,
            writer,
            health,
            keyfile_text,
        })
    }

    /// Decides where the chain goes on from, moving a broken or old file
    /// aside when that is allowed. Nothing is deleted unless it provably
    /// holds nothing the server acknowledged.
    fn resume(path: &Path, key: &AuditKey, options: TrailOptions) -> Result<Resume, AuditError> {
        let now = now_unix_ms();
        // A trail that does not verify: refused, or (when told) the file
        // moved aside and a new chain begun that says why.
        let broken = |reason: String, file: Option<&Path>| -> Result<Resume, AuditError> {
            tracing::error!(%reason, "the audit trail does not verify");
            if !options.start_new_chain {
                return Err(refuse_broken(path, &reason));
            }
            let moved = match file.filter(|f| f.exists()) {
                Some(f) => {
                    let to = trail::aside_name(path, "broken", now);
                    std::fs::rename(f, &to)
                        .map_err(|e| AuditError(format!("moving {} aside: {e}", f.display())))?;
                    format!(": the file was moved to {}", to.display())
                }
                None => String::new(),
            };
            tracing::warn!("start_new_chain is set: a new audit chain begins");
            Ok(new_chain(format!(
                "the trail did not verify at start ({reason}); start_new_chain was set{moved}; \
                 this new chain begins"
            )))
        };
        // Where the writer recorded the trail's end. A new audit key has
        // written nothing yet: whatever record is there is not its own.
        let recorded = if options.key_is_new {
            None
        } else {
            match head::read(path, key) {
                Ok(Some(r)) => Some(r),
                Ok(None) => {
                    return broken(
                        format!(
                            "{} is missing: the record of where the trail ends was deleted, so \
                             events cut off the end could not be told",
                            head::path_for(path).display()
                        ),
                        Some(path),
                    )
                }
                Err(e) => {
                    return broken(
                        format!("the record of where the trail ends is damaged: {e}"),
                        Some(path),
                    )
                }
            }
        };

        if let Some(text) = whole_lines(path)? {
            let summary = match verify::verify_file_text(key, path, &text) {
                Ok(summary) => summary,
                // An upgrade: only when this vault's audit key is new.
                Err(brk)
                    if options.key_is_new && brk.reason.starts_with("an unchained audit log") =>
                {
                    let to = trail::aside_name(path, "unchained", now);
                    std::fs::rename(path, &to)
                        .map_err(|e| AuditError(format!("moving {} aside: {e}", path.display())))?;
                    tracing::warn!(moved_to = %to.display(), "an audit log written before the chained trail was moved aside");
                    return Ok(new_chain(format!(
                        "an audit log written by an earlier fieldvault, without a chain, was \
                         moved to {}",
                        to.display()
                    )));
                }
                Err(brk) => return broken(brk.to_string(), Some(path)),
            };
            if let Some(r) = recorded {
                if let Err(reason) = head::check(r, summary.start, summary.end, &text) {
                    return broken(format!("{}: {reason}", path.display()), Some(path));
                }
            }
            return Ok(Resume {
                state: summary.end,
                file_first_seq: summary.start.next_seq,
                chain_started: summary.chain_started,
                header: None,
            });
        }

        // No whole event in an active file (missing, empty, or its first
        // write cut short): fine only where the trail provably ends
        // before it: at the end of the newest rotated file, or before the
        // first event.
        let rotated = trail::files_of(path)
            .map_err(|e| AuditError(format!("{}: {e}", path.display())))?
            .into_iter()
            .filter(|f| f != path)
            .collect::<Vec<_>>();
        let base = match rotated.last() {
            None => None,
            Some(last) => {
                let text = whole_lines(last)?.unwrap_or_default();
                match verify::verify_file_text(key, last, &text) {
                    Ok(summary) => Some(summary),
                    Err(brk) => return broken(brk.to_string(), None),
                }
            }
        };
        let base_state = base.as_ref().map_or(ChainState::GENESIS, |s| s.end);
        let begins_where_it_ended = match recorded {
            Some(r) => r == base_state,
            None => options.key_is_new,
        };
        if !begins_where_it_ended {
            let what = if path.exists() {
                "holds no whole event"
            } else {
                "is missing"
            };
            let reason = match recorded {
                Some(r) if r.next_seq > base_state.next_seq => format!(
                    "the active file {} {what}, but the server recorded events up to {}: \
                     events {}..{} are missing",
                    path.display(),
                    r.next_seq - 1,
                    base_state.next_seq,
                    r.next_seq - 1
                ),
                _ => format!(
                    "the active file {} {what}, and the trail does not end where the server \
                     recorded",
                    path.display()
                ),
            };
            return broken(reason, Some(path));
        }
        if path.exists() {
            // Its only line, if any, was never acknowledged (the record of
            // the end says nothing was written after `base_state`): an
            // empty file goes, bytes are kept aside (they were not ours to
            // destroy).
            let empty = std::fs::symlink_metadata(path).is_ok_and(|m| m.len() == 0);
            let gone = if empty {
                std::fs::remove_file(path)
            } else {
                let to = trail::aside_name(path, "altered", now);
                tracing::warn!(moved_to = %to.display(), "an audit file without a whole event was moved aside");
                std::fs::rename(path, &to)
            };
            gone.map_err(|e| AuditError(format!("{}: {e}", path.display())))?;
        }
        Ok(match base {
            None => new_chain("a new trail".into()),
            Some(summary) => Resume {
                state: summary.end,
                file_first_seq: summary.end.next_seq,
                chain_started: summary.chain_started,
                header: header(
                    false,
                    format!(
                        "the active file was missing or empty at start (a rotation or a first \
                         write cut short) after event {} of {}",
                        summary.end.next_seq.saturating_sub(1),
                        rotated
                            .last()
                            .and_then(|l| l.file_name())
                            .unwrap_or_default()
                            .to_string_lossy()
                    ),
                ),
            },
        })
    }

    /// Holds the writer before its next write until dropped (tests: a hung
    /// disk).
    #[cfg(test)]
    pub(crate) fn stall(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.stall()
    }
}

#[async_trait]
impl AuditSink for AuditTrail {
    async fn record(&self, event: &Event) -> Result<(), AuditError> {
        self.writer.append(event.to_json()).await.map(|_| ())
    }

    fn failure(&self) -> Option<String> {
        self.health.failure()
    }

    fn not_offered(&self) {
        self.health.count_refused();
    }

    fn key_rewrapped(
        &self,
        wrapped: &crate::crypto::WrappedKey,
        master_fingerprint: [u8; 8],
    ) -> Result<(), AuditError> {
        // The key itself is unchanged; only its wrapping is new.
        let text = keyfile::save_wrapped(&self.path, &self.key_id, wrapped, master_fingerprint)?;
        *self.keyfile_text.lock().unwrap_or_else(|p| p.into_inner()) = text;
        Ok(())
    }
}

pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    fn keys() -> (AuditKey, crate::crypto::WrappedKey) {
        let master = crate::crypto::MasterKey::generate();
        let (ring, _) = ok(crate::crypto::Keyring::create(&master));
        let (ring, wrapped) = ok(ring.with_audit_key()).unwrap_or_else(|| panic!("had one"));
        (ring.audit_key().unwrap_or_else(|| panic!("none")), wrapped)
    }

    async fn open(
        path: &Path,
        key_is_new: bool,
        start_new_chain: bool,
    ) -> Result<AuditTrail, AuditError> {
        let (key, wrapped) = keys();
        open_with(path, key, &wrapped, key_is_new, start_new_chain).await
    }

    async fn open_with(
        path: &Path,
        key: AuditKey,
        wrapped: &crate::crypto::WrappedKey,
        key_is_new: bool,
        start_new_chain: bool,
    ) -> Result<AuditTrail, AuditError> {
        AuditTrail::open(
            path,
            key,
            wrapped,
            [0; 8],
            TrailOptions {
                max_file_bytes: 0,
                start_new_chain,
                key_is_new,
            },
        )
        .await
    }

    fn first_event(path: &Path) -> Event {
        let text = ok(std::fs::read_to_string(path));
        let line = text.lines().next().unwrap_or_default();
        verify::parse_line(line)
            .map(|(_, _, e)| e)
            .unwrap_or_else(|| panic!("{line}"))
    }

    #[tokio::test]
    async fn an_unchained_log_of_an_earlier_version_is_moved_aside_and_a_new_chain_says_where() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("audit.log");
        let old = "{\"unix_ms\":1,\"caller\":\"spiffe://t.example/support\",\"items\":[]}\n";
        ok(std::fs::write(&path, old));
        drop(ok(open(&path, true, false).await));
        let first = first_event(&path);
        assert_eq!(first.action, verify::CHAIN_START);
        assert!(
            first
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("unchained-")),
            "{first:?}"
        );
        let aside: Vec<_> = ok(std::fs::read_dir(dir.path()))
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("unchained-"))
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(ok(std::fs::read_to_string(aside[0].path())), old);
    }

    #[tokio::test]
    async fn a_missing_trail_of_a_vault_that_wrote_one_stops_the_start_unless_told() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("audit.log");
        let e = open(&path, false, false).await.err().map(|e| e.0);
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("audit.log.head is missing")),
            "{e:?}"
        );
        assert!(!path.exists());
        drop(ok(open(&path, false, true).await));
        let first = first_event(&path);
        assert_eq!(first.action, verify::CHAIN_START);
        assert!(first
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("missing")));
    }

    /// A trail of `n` calls under `raw`, as a vault whose audit key is new
    /// makes it; closed again.
    async fn a_trail(path: &Path, raw: [u8; 32], n: usize) {
        let (_, wrapped) = keys();
        let trail = ok(open_with(path, AuditKey::new(raw), &wrapped, true, false).await);
        for _ in 0..n {
            ok(trail.record(&Event::new("detokenize")).await);
        }
    }

    /// Opens the trail as the next start of that vault does.
    async fn reopen(path: &Path, raw: [u8; 32]) -> Result<AuditTrail, AuditError> {
        let (_, wrapped) = keys();
        open_with(path, AuditKey::new(raw), &wrapped, false, false).await
    }

    #[tokio::test]
    async fn a_trail_cut_at_the_end_with_its_record_deleted_or_emptied_stops_the_start() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("audit.log");
        let raw = [3u8; 32];
        a_trail(&path, raw, 4).await;
        let text = ok(std::fs::read_to_string(&path));
        let cut: String = text.split_inclusive('\n').take(2).collect();
        ok(std::fs::write(&path, &cut));
        ok(std::fs::remove_file(head::path_for(&path)));
        let e = reopen(&path, raw).await.err().map(|e| e.0);
        assert!(
            e.as_deref().is_some_and(|e| e.contains("is missing")),
            "{e:?}"
        );
        ok(std::fs::write(head::path_for(&path), b""));
        let e = reopen(&path, raw).await.err().map(|e| e.0);
        assert!(e.as_deref().is_some_and(|e| e.contains("damaged")), "{e:?}");
        // Nothing was changed.
        assert_eq!(ok(std::fs::read_to_string(&path)), cut);
    }

    #[tokio::test]
    async fn a_start_and_stop_without_a_call_leaves_a_trail_the_next_start_takes() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("audit.log");
        let raw = [4u8; 32];
        a_trail(&path, raw, 0).await;
        drop(ok(reopen(&path, raw).await));
        drop(ok(reopen(&path, raw).await));
    }

    #[tokio::test]
    async fn an_active_file_emptied_or_replaced_by_an_unchained_line_is_refused_and_kept() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("audit.log");
        let raw = [5u8; 32];
        a_trail(&path, raw, 3).await;
        ok(std::fs::write(&path, b""));
        let e = reopen(&path, raw).await.err().map(|e| e.0);
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("events 0..3 are missing")),
            "{e:?}"
        );
        assert!(path.exists(), "the emptied file was deleted");
        // A line posing as the log of an earlier version, in a vault whose
        // audit key is not new: not an upgrade.
        let old = "{\"unix_ms\":1,\"caller\":\"spiffe://t.example/support\",\"items\":[]}\n";
        ok(std::fs::write(&path, old));
        let e = reopen(&path, raw).await.err().map(|e| e.0);
        assert!(
            e.as_deref().is_some_and(|e| e.contains("unchained")),
            "{e:?}"
        );
        assert_eq!(ok(std::fs::read_to_string(&path)), old);
    }

    #[tokio::test]
    async fn an_active_file_missing_after_a_rotation_goes_on_from_the_rotated_one() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("audit.log");
        // The wrapped copy beside the trail does not matter here.
        let (_, wrapped) = keys();
        let raw = [7u8; 32];
        let trail = ok(open_with(&path, AuditKey::new(raw), &wrapped, true, false).await);
        ok(trail.record(&Event::new("detokenize")).await);
        drop(trail);
        // A crash between the rotation's rename and the new file.
        let rotated = trail::rotated_name(&path, now_unix_ms(), 0);
        ok(std::fs::rename(&path, &rotated));
        let trail = ok(open_with(&path, AuditKey::new(raw), &wrapped, false, false).await);
        ok(trail.record(&Event::new("detokenize")).await);
        drop(trail);
        let first = first_event(&path);
        assert_eq!(first.action, verify::FILE_START);
        let files = ok(verify::verify_files(
            &AuditKey::new(raw),
            &ok(trail::files_of(&path)),
        ));
        assert_eq!(files.len(), 2);
        assert_eq!(files[1].end.next_seq, 4);
    }
}
