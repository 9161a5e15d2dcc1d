//! Verifying a trail made of files: each file is checked line by line
//! ([`super::chain::verify_text`]) and the files are checked to follow each
//! other, in chain order, whatever order they are given in.
//!
//! Every file begins with an event the trail writes itself:
//! `audit.chain_start` (a new chain: sequence 0, no previous value; the
//! first file of a vault, or a new chain an operator asked for after a
//! break) or `audit.file_start` (the chain goes on from the file before:
//! a rotation, or a file renamed or removed under the server). Its details
//! carry the audit key's id, so a file of another vault is named as such.

use super::chain::{verify_text, AuditKey, ChainBreak, ChainState};
use super::event::Event;
use std::path::{Path, PathBuf};

/// The action of the first event of a new chain.
pub const CHAIN_START: &str = "audit.chain_start";
/// The action of the first event of a file that continues the chain.
pub const FILE_START: &str = "audit.file_start";
/// The detail naming the audit key's id.
pub const KEY_ID: &str = "audit_key_id";
/// The detail naming when the chain a file belongs to began (RFC 3339):
/// files sort by it, then by sequence number.
pub const CHAIN_STARTED: &str = "chain_started";

/// One file that verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSummary {
    pub path: PathBuf,
    /// The chain before the file's first event, and after its last.
    pub start: ChainState,
    pub end: ChainState,
    /// Whether the file begins a new chain (and why, from its first event).
    pub new_chain: Option<String>,
    /// When the file's chain began.
    pub chain_started: String,
    /// The first and last event times (RFC 3339).
    pub first_time: String,
    pub last_time: String,
}

impl FileSummary {
    pub fn events(&self) -> u64 {
        self.end.next_seq - self.start.next_seq
    }
}

/// Where a trail stops verifying.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {reason}", path.display(), line.map(|l| format!(", line {l}")).unwrap_or_default())]
pub struct TrailBreak {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub reason: String,
}

fn broke(path: &Path, line: Option<usize>, reason: impl Into<String>) -> TrailBreak {
    TrailBreak {
        path: path.to_path_buf(),
        line,
        reason: reason.into(),
    }
}

/// The sequence number, previous chain value and event of a line, without
/// checking its MAC; `None` when the line is not a chained event.
pub fn parse_line(line: &str) -> Option<(u64, [u8; 32], Event)> {
    #[derive(serde::Deserialize)]
    struct Line {
        seq: u64,
        prev: String,
        event: Event,
        #[allow(dead_code)]
        mac: String,
    }
    let parsed: Line = serde_json::from_str(line).ok()?;
    let mut prev = [0u8; 32];
    hex::decode_to_slice(&parsed.prev, &mut prev).ok()?;
    Some((parsed.seq, prev, parsed.event))
}

/// Checks one file's text: its first event starts it, every line verifies.
pub fn verify_file_text(
    key: &AuditKey,
    path: &Path,
    text: &str,
) -> Result<FileSummary, TrailBreak> {
    if text.is_empty() {
        return Err(broke(
            path,
            None,
            "the file is empty: it holds no audit event",
        ));
    }
    let first = text.split('\n').next().unwrap_or_default();
    let Some((seq, prev, event)) = parse_line(first) else {
        let old = serde_json::from_str::<serde_json::Value>(first)
            .ok()
            .is_some_and(|v| v.get("unix_ms").is_some() && v.get("mac").is_none());
        return Err(broke(
            path,
            Some(1),
            if old {
                "an unchained audit log written by fieldvault before the hash-chained trail; \
                 it cannot be verified"
            } else {
                "not a fieldvault audit trail: its first line is not a chained audit event"
            },
        ));
    };
    let new_chain = match event.action.as_str() {
        CHAIN_START => Some(event.reason.clone().unwrap_or_default()),
        FILE_START => None,
        other => {
            return Err(broke(
                path,
                Some(1),
                format!(
                    "its first event is `{other}`, not the start of a file: events were \
                     deleted from the start of this file"
                ),
            ))
        }
    };
    let file_key = event.details.get(KEY_ID).and_then(|v| v.as_str());
    if file_key != Some(key.id().as_str()) {
        return Err(broke(
            path,
            Some(1),
            format!(
                "written under another audit key (id {}; this vault's is {}): a file of \
                 another vault, or the wrong master key",
                file_key.unwrap_or("missing"),
                key.id()
            ),
        ));
    }
    if new_chain.is_some() && (seq, prev) != (0, [0; 32]) {
        return Err(broke(
            path,
            Some(1),
            "a new chain must start at event 0 with no previous value",
        ));
    }
    let chain_started = event
        .details
        .get(CHAIN_STARTED)
        .and_then(|v| v.as_str())
        .unwrap_or(&event.time)
        .to_owned();
    let start = ChainState {
        next_seq: seq,
        head: prev,
    };
    let end = verify_text(key, start, text)
        .map_err(|ChainBreak { line, reason }| broke(path, Some(line), reason))?;
    let last = text.trim_end_matches('\n').rsplit('\n').next();
    let last_time = last
        .and_then(parse_line)
        .map(|(_, _, e)| e.time)
        .unwrap_or_default();
    Ok(FileSummary {
        path: path.to_path_buf(),
        start,
        end,
        new_chain,
        chain_started,
        first_time: event.time,
        last_time,
    })
}

/// Verifies `paths` as one trail: each file on its own, then in chain
/// order each file must begin where the one before it ended (or begin a
/// new chain). Returns the files in chain order.
pub fn verify_files(key: &AuditKey, paths: &[PathBuf]) -> Result<Vec<FileSummary>, TrailBreak> {
    verify_files_to(key, paths, None)
}

/// [`verify_files`], and the trail must reach `recorded`, the end the
/// server recorded beside it ([`super::head`]), checked on the same open
/// file as the chain.
pub fn verify_files_to(
    key: &AuditKey,
    paths: &[PathBuf],
    recorded: Option<ChainState>,
) -> Result<Vec<FileSummary>, TrailBreak> {
    // Every file is opened before any is read: a rotation while a long
    // trail is read renames the active file, and the open handle still
    // reads the file listed (a consistent snapshot, not a false gap).
    let mut opened = Vec::with_capacity(paths.len());
    for path in paths {
        let file = super::trail::open(path, super::trail::Open::Read)
            .map_err(|e| broke(path, None, e.to_string()))?;
        opened.push((path, file));
    }
    let mut files = Vec::with_capacity(paths.len());
    let mut last: Option<(usize, String)> = None;
    for (i, (path, file)) in opened.iter_mut().enumerate() {
        let mut text = Vec::new();
        std::io::Read::read_to_end(file, &mut text)
            .map_err(|e| broke(path, None, e.to_string()))?;
        let text = String::from_utf8(text)
            .map_err(|_| broke(path, None, "not a fieldvault audit trail: not UTF-8 text"))?;
        let summary = verify_file_text(key, path, &text)?;
        // Kept: the text of the file furthest along the chain so far.
        let further = last.as_ref().is_none_or(|(j, _)| {
            let before: &FileSummary = &files[*j];
            (summary.chain_started.as_str(), summary.start.next_seq)
                > (before.chain_started.as_str(), before.start.next_seq)
        });
        files.push(summary);
        if recorded.is_some() && further {
            last = Some((i, text));
        }
    }
    check_order(&mut files)?;
    if let (Some(recorded), Some((_, text)), Some(end)) = (recorded, &last, files.last()) {
        super::head::check(recorded, end.start, end.end, text)
            .map_err(|reason| broke(&end.path, None, reason))?;
    }
    Ok(files)
}

/// Sorts verified files into chain order and checks that they follow each
/// other.
pub fn check_order(files: &mut [FileSummary]) -> Result<(), TrailBreak> {
    // Chain order: chains by when they began, then by sequence number.
    files.sort_by(|a, b| {
        (a.chain_started.as_str(), a.start.next_seq)
            .cmp(&(b.chain_started.as_str(), b.start.next_seq))
    });
    for pair in files.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        if after.new_chain.is_some() && after.chain_started == before.chain_started {
            return Err(broke(
                &after.path,
                Some(1),
                format!(
                    "begins the same chain as {}: two files hold the same events (a copy \
                     of one of the trail's files?)",
                    before.path.display()
                ),
            ));
        }
        if after.new_chain.is_some() {
            continue;
        }
        if after.start != before.end {
            let reason = if after.start.next_seq > before.end.next_seq {
                format!(
                    "begins at event {} but {} ends at event {}: events {}..{} are missing \
                     (a file deleted, or events cut off the end of the one before)",
                    after.start.next_seq,
                    before.path.display(),
                    before.end.next_seq.saturating_sub(1),
                    before.end.next_seq,
                    after.start.next_seq - 1,
                )
            } else {
                format!(
                    "does not continue {}: it begins at event {} with another chain value",
                    before.path.display(),
                    after.start.next_seq
                )
            };
            return Err(broke(&after.path, Some(1), reason));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::chain::seal_line;
    use super::*;

    fn key() -> AuditKey {
        AuditKey::new([5; 32])
    }

    fn start_event(action: &str, key: &AuditKey) -> String {
        let mut e = Event::new(action);
        e.details
            .insert(KEY_ID.into(), serde_json::Value::String(key.id()));
        e.details.insert(
            CHAIN_STARTED.into(),
            serde_json::Value::String("2026-11-27T00:00:00.000Z".into()),
        );
        e.to_json()
    }

    /// A file of `n` events after its start event, from `state`.
    fn file(key: &AuditKey, state: ChainState, first: &str, n: usize) -> (String, ChainState) {
        let (mut text, mut state) = seal_line(key, state, &start_event(first, key));
        for i in 0..n {
            let mut e = Event::new("detokenize");
            e.request_id = Some(format!("r{i}"));
            let (line, next) = seal_line(key, state, &e.to_json());
            text.push_str(&line);
            state = next;
        }
        (text, state)
    }

    #[test]
    fn files_verify_in_chain_order_whatever_order_they_are_given_in() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (a, s) = file(&key(), ChainState::GENESIS, CHAIN_START, 3);
        let (b, _) = file(&key(), s, FILE_START, 2);
        let (pa, pb) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&pa, a).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&pb, b).unwrap_or_else(|e| panic!("{e}"));
        let files = verify_files(&key(), &[pb.clone(), pa.clone()]);
        let files = files.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].path, pa);
        assert_eq!(files[1].end.next_seq, 4 + 3);
        // Without the first file, the second alone verifies; with a file
        // missing between two, the gap is named.
        let (c, _) = file(&key(), files[1].end, FILE_START, 1);
        let pc = dir.path().join("c");
        std::fs::write(&pc, c).unwrap_or_else(|e| panic!("{e}"));
        let e = verify_files(&key(), &[pa, pc.clone()]).err();
        assert!(
            e.as_ref()
                .is_some_and(|e| e.path == pc && e.reason.contains("are missing")),
            "{e:?}"
        );
    }

    #[test]
    fn empty_foreign_old_and_headless_files_are_named_precisely() {
        let p = Path::new("x.log");
        let reason = |text: &str| {
            verify_file_text(&key(), p, text)
                .err()
                .map(|e| e.reason)
                .unwrap_or_default()
        };
        assert!(reason("").contains("empty"));
        assert!(reason("hello\n").contains("not a fieldvault audit trail"));
        assert!(reason("{\"unix_ms\":1,\"caller\":\"a\"}\n").contains("unchained"));
        let (other, _) = file(&AuditKey::new([6; 32]), ChainState::GENESIS, CHAIN_START, 1);
        assert!(reason(&other).contains("another audit key"));
        let (text, _) = file(&key(), ChainState::GENESIS, CHAIN_START, 2);
        let headless: String = text.split_inclusive('\n').skip(1).collect();
        assert!(reason(&headless).contains("deleted from the start"));
    }
}
