//! Where the trail ends, kept beside it (`<audit_log>.head`): the chain
//! state after the last durable event, with a MAC under the audit key.
//!
//! A chain alone cannot tell that whole events were cut off its end: a
//! shorter chain is still a valid chain. The writer rewrites this record
//! in place after every batch (one small `pwrite`, no sync of its own: a
//! `kill -9` keeps it; after a power loss it may lag, and a lagging record
//! is still a bound the trail must reach). At start the server refuses a
//! trail that ends before the record, or whose event there is not the one
//! recorded; `fieldvault audit verify` checks the same. Someone who cuts
//! the trail must also put back a copy of this file from that time, and
//! cannot forge one without the audit key.

use super::chain::{AuditKey, ChainState};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The record's fixed size: rewritten whole, in place, in one write.
pub const LEN: usize = 192;
const LABEL: &[u8] = b"fieldvault/audit-head/v1";

/// `<audit_log>.head`.
pub fn path_for(audit_log: &Path) -> PathBuf {
    let mut name = audit_log.file_name().unwrap_or_default().to_os_string();
    name.push(".head");
    audit_log.with_file_name(name)
}

fn tag(key: &AuditKey, state: ChainState) -> String {
    let mut signed = LABEL.to_vec();
    signed.extend_from_slice(&state.next_seq.to_be_bytes());
    signed.extend_from_slice(&state.head);
    hex::encode(key.mac_of(&signed))
}

/// The record of `state`, padded with spaces to [`LEN`] bytes.
pub fn encode(key: &AuditKey, state: ChainState) -> [u8; LEN] {
    let text = format!(
        "{{\"next_seq\":{},\"head\":\"{}\",\"tag\":\"{}\"}}",
        state.next_seq,
        hex::encode(state.head),
        tag(key, state)
    );
    let mut out = [b' '; LEN];
    let n = text.len().min(LEN - 1);
    out[..n].copy_from_slice(&text.as_bytes()[..n]);
    out[LEN - 1] = b'\n';
    out
}

/// The state a record names, when its MAC holds under `key`.
pub fn decode(key: &AuditKey, bytes: &[u8]) -> Result<ChainState, String> {
    #[derive(serde::Deserialize)]
    struct Head {
        next_seq: u64,
        head: String,
        tag: String,
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "not text".to_owned())?;
    let parsed: Head =
        serde_json::from_str(text.trim()).map_err(|_| "not a head record".to_owned())?;
    let mut head = [0u8; 32];
    hex::decode_to_slice(&parsed.head, &mut head).map_err(|_| "bad chain value".to_owned())?;
    let state = ChainState {
        next_seq: parsed.next_seq,
        head,
    };
    if tag(key, state) != parsed.tag {
        return Err("its MAC does not verify (edited, or made under another audit key)".into());
    }
    Ok(state)
}

/// Reads the record beside the trail at `audit_log`: `Ok(None)` when there
/// is none.
pub fn read(audit_log: &Path, key: &AuditKey) -> Result<Option<ChainState>, String> {
    let path = path_for(audit_log);
    match super::trail::read(&path) {
        Ok(bytes) => decode(key, &bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The record file, open for rewriting in place (created 0600; never
/// through a link).
pub fn open(audit_log: &Path) -> std::io::Result<File> {
    super::trail::open(&path_for(audit_log), super::trail::Open::Write)
}

/// Rewrites the record in `file` with `state`.
pub fn write(file: &File, key: &AuditKey, state: ChainState) -> std::io::Result<()> {
    file.write_all_at(&encode(key, state), 0)
}

/// Whether the trail whose active file `text` ends at `end` reaches the
/// recorded head `recorded`: `Err` names the events cut off, or the event
/// that is not the one recorded. `start` is the state before the file's
/// first event.
pub fn check(
    recorded: ChainState,
    start: ChainState,
    end: ChainState,
    text: &str,
) -> Result<(), String> {
    if recorded.next_seq > end.next_seq {
        return Err(format!(
            "the trail ends at event {} but the server recorded event {} as written: events \
             {}..{} were cut off its end",
            end.next_seq.saturating_sub(1),
            recorded.next_seq - 1,
            end.next_seq,
            recorded.next_seq - 1
        ));
    }
    if recorded.next_seq <= start.next_seq {
        // Recorded in an earlier (rotated) file: this file goes past it.
        return Ok(());
    }
    let line = (recorded.next_seq - 1 - start.next_seq) as usize;
    let mac = text
        .lines()
        .nth(line)
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v.get("mac").and_then(|m| m.as_str()).map(str::to_owned));
    if mac.as_deref() != Some(hex::encode(recorded.head).as_str()) {
        return Err(format!(
            "event {} is not the one the server recorded as written: the end of the trail \
             was replaced",
            recorded.next_seq - 1
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_under_its_key_only_and_is_fixed_size() {
        let key = AuditKey::new([9; 32]);
        let state = ChainState {
            next_seq: u64::MAX,
            head: [0xab; 32],
        };
        let bytes = encode(&key, state);
        assert_eq!(bytes.len(), LEN);
        assert_eq!(decode(&key, &bytes), Ok(state));
        assert!(decode(&AuditKey::new([8; 32]), &bytes).is_err());
        let mut edited = bytes;
        edited[13] = b'9';
        assert!(decode(&key, &edited).is_err());
    }

    #[test]
    fn a_trail_that_ends_before_its_record_is_named_as_cut() {
        let state = |n| ChainState {
            next_seq: n,
            head: [1; 32],
        };
        let e = check(state(10), state(0), state(7), "").err();
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("7..9 were cut off")),
            "{e:?}"
        );
        assert_eq!(check(state(3), state(5), state(7), ""), Ok(()));
    }
}
