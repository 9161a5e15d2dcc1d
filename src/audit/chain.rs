//! The hash chain of the audit trail (issue 13, first part: the format and
//! its verification; the server does not write chained events yet).
//!
//! One event per line:
//!
//! ```text
//! {"seq":7,"prev":"<64 hex>","event":{…},"mac":"<64 hex>"}
//! ```
//!
//! `mac` is HMAC-SHA256, under the audit key, of a label and every byte of
//! the line before `,"mac":"`: the sequence number, the previous event's
//! `mac` (its chain value) and the event exactly as written. So an edited
//! event fails its own MAC; a deleted, inserted or reordered one breaks the
//! sequence or the link to the previous chain value; a line cut short does
//! not parse. A new file (rotation, restart) starts with the chain value
//! and the next sequence number of the last event before it, so the chain
//! runs across files. Cutting whole events off the end of the newest file
//! leaves a valid shorter chain: the verifier is given the last sequence
//! number the writer recorded elsewhere, when it has one.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use zeroize::Zeroizing;

const LABEL: &[u8] = b"fieldvault/audit-chain/v1";
/// What ends a line's signed part and begins its MAC.
const MAC_FIELD: &str = ",\"mac\":\"";

/// Where a chain stands: the sequence number of the next event and the
/// chain value (the `mac` of the last event; zeros before the first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainState {
    pub next_seq: u64,
    pub head: [u8; 32],
}

impl ChainState {
    /// The state before the first event of a new chain.
    pub const GENESIS: ChainState = ChainState {
        next_seq: 0,
        head: [0; 32],
    };
}

/// The audit key: HMAC-SHA256. Wiped on drop; `Debug` is redacted.
pub struct AuditKey(Zeroizing<[u8; 32]>);

impl AuditKey {
    pub fn new(key: [u8; 32]) -> Self {
        Self(Zeroizing::new(key))
    }

    fn mac(&self, signed: &[u8]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(LABEL);
        mac.update(signed);
        mac.finalize().into_bytes().into()
    }
}

impl AuditKey {
    /// HMAC-SHA256 of the chain's label and `data` (other records the
    /// trail keeps add a label of their own).
    pub(crate) fn mac_of(&self, data: &[u8]) -> [u8; 32] {
        self.mac(data)
    }

    /// A short public name of this key (16 hex digits), written in the
    /// first event of every file: a file made under another key (another
    /// vault's) is named as such instead of failing on its first MAC.
    pub fn id(&self) -> String {
        hex::encode(&self.mac(b"fieldvault/audit-key-id/v1")[..8])
    }
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey(<redacted>)")
    }
}

/// The line (with its newline) that appends `event_json` (one JSON object,
/// no newline) to the chain at `state`, and the state after it.
pub fn seal_line(key: &AuditKey, state: ChainState, event_json: &str) -> (String, ChainState) {
    let mut line = format!(
        "{{\"seq\":{},\"prev\":\"{}\",\"event\":{event_json}",
        state.next_seq,
        hex::encode(state.head)
    );
    let mac = key.mac(line.as_bytes());
    line.push_str(MAC_FIELD);
    line.push_str(&hex::encode(mac));
    line.push_str("\"}\n");
    (
        line,
        ChainState {
            next_seq: state.next_seq + 1,
            head: mac,
        },
    )
}

/// Why a trail does not verify: the line (from 1) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ChainBreak {
    pub line: usize,
    pub reason: String,
}

/// Checks every line of `text` against the chain at `start` (the state the
/// file began with: [`ChainState::GENESIS`] for the first file, the last
/// state of the file before it otherwise); the state after its last event,
/// or the first break.
pub fn verify_text(
    key: &AuditKey,
    start: ChainState,
    text: &str,
) -> Result<ChainState, ChainBreak> {
    let mut state = start;
    let mut rest = text;
    let mut line_no = 0;
    while !rest.is_empty() {
        line_no += 1;
        let brk = |reason: String| ChainBreak {
            line: line_no,
            reason,
        };
        let Some(end) = rest.find('\n') else {
            return Err(brk(
                "is cut short (no newline): a write was torn, or the file truncated".into(),
            ));
        };
        let line = &rest[..end];
        rest = &rest[end + 1..];
        let Some(at) = line.rfind(MAC_FIELD) else {
            return Err(brk("is not a chained audit event (no mac)".into()));
        };
        let (signed, tail) = line.split_at(at);
        let Some(mac_hex) = tail
            .strip_prefix(MAC_FIELD)
            .and_then(|t| t.strip_suffix("\"}"))
        else {
            return Err(brk("its mac field is malformed".into()));
        };
        let mut mac = [0u8; 32];
        if hex::decode_to_slice(mac_hex, &mut mac).is_err() {
            return Err(brk("its mac is not 64 hex characters".into()));
        }
        let parsed: serde_json::Value =
            serde_json::from_str(line).map_err(|e| brk(format!("is not a JSON object ({e})")))?;
        let seq = parsed.get("seq").and_then(serde_json::Value::as_u64);
        let prev = parsed.get("prev").and_then(serde_json::Value::as_str);
        let (Some(seq), Some(prev)) = (seq, prev) else {
            return Err(brk("has no seq or prev".into()));
        };
        if key.mac(signed.as_bytes()) != mac {
            return Err(brk(format!(
                "event {seq} does not verify: edited, or made under another audit key"
            )));
        }
        if seq != state.next_seq {
            return Err(brk(format!(
                "event {seq} where event {} was due: events were deleted, inserted or reordered",
                state.next_seq
            )));
        }
        if prev != hex::encode(state.head) {
            return Err(brk(format!(
                "event {seq} does not follow the event before it: inserted, reordered, or \
                 the file does not continue the one before it"
            )));
        }
        state = ChainState {
            next_seq: seq + 1,
            head: mac,
        };
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AuditKey {
        AuditKey::new([7; 32])
    }

    /// A trail of `n` events from `start`, as lines, and the state after.
    fn trail(start: ChainState, n: u64) -> (Vec<String>, ChainState) {
        let mut state = start;
        let mut lines = Vec::new();
        for i in 0..n {
            let event = format!(
                "{{\"action\":\"detokenize\",\"caller\":\"spiffe://t.example/support\",\"n\":{i}}}"
            );
            let (line, next) = seal_line(&key(), state, &event);
            lines.push(line);
            state = next;
        }
        (lines, state)
    }

    fn verify(lines: &[String]) -> Result<ChainState, ChainBreak> {
        verify_text(&key(), ChainState::GENESIS, &lines.concat())
    }

    #[test]
    fn an_intact_trail_verifies_to_its_last_state() {
        let (lines, end) = trail(ChainState::GENESIS, 5);
        assert_eq!(verify(&lines), Ok(end));
        assert_eq!(end.next_seq, 5);
        assert_eq!(verify(&[]), Ok(ChainState::GENESIS));
    }

    #[test]
    fn an_edited_event_is_named() {
        let (mut lines, _) = trail(ChainState::GENESIS, 5);
        lines[2] = lines[2].replace("support", "orders!");
        let e = verify(&lines).err();
        assert_eq!(e.as_ref().map(|e| e.line), Some(3), "{e:?}");
        assert!(e.is_some_and(|e| e.reason.contains("does not verify")));
    }

    #[test]
    fn a_deleted_inserted_or_swapped_event_is_named() {
        let (lines, _) = trail(ChainState::GENESIS, 5);
        let mut deleted = lines.clone();
        deleted.remove(2);
        assert_eq!(verify(&deleted).map_err(|e| e.line), Err(3));

        // An event sealed properly elsewhere in the chain (a replay).
        let mut inserted = lines.clone();
        inserted.insert(2, lines[4].clone());
        assert_eq!(verify(&inserted).map_err(|e| e.line), Err(3));

        let mut swapped = lines.clone();
        swapped.swap(1, 2);
        assert_eq!(verify(&swapped).map_err(|e| e.line), Err(2));
    }

    #[test]
    fn a_line_cut_short_or_foreign_is_named() {
        let (lines, _) = trail(ChainState::GENESIS, 3);
        let mut text = lines.concat();
        text.truncate(text.len() - 10);
        let e = verify_text(&key(), ChainState::GENESIS, &text).err();
        assert_eq!(e.as_ref().map(|e| e.line), Some(3), "{e:?}");
        assert!(e.is_some_and(|e| e.reason.contains("cut short")));

        let e = verify_text(&key(), ChainState::GENESIS, "{\"unix_ms\":1}\n").err();
        assert!(e.is_some_and(|e| e.line == 1 && e.reason.contains("not a chained")));
        let e = verify_text(&key(), ChainState::GENESIS, "not json at all\n").err();
        assert!(e.is_some_and(|e| e.line == 1));
    }

    #[test]
    fn the_chain_runs_across_files_and_a_file_out_of_place_is_named() {
        let (first, mid) = trail(ChainState::GENESIS, 3);
        let (second, end) = trail(mid, 2);
        assert_eq!(verify(&first), Ok(mid));
        assert_eq!(verify_text(&key(), mid, &second.concat()), Ok(end));
        // The second file alone, as if it were the first.
        assert_eq!(
            verify_text(&key(), ChainState::GENESIS, &second.concat()).map_err(|e| e.line),
            Err(1)
        );
    }

    #[test]
    fn another_audit_key_does_not_verify_a_trail() {
        let (lines, _) = trail(ChainState::GENESIS, 2);
        let e = verify_text(
            &AuditKey::new([8; 32]),
            ChainState::GENESIS,
            &lines.concat(),
        );
        assert_eq!(e.map_err(|e| e.line), Err(1));
        assert_eq!(format!("{:?}", key()), "AuditKey(<redacted>)");
    }
}
