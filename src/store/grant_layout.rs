//! How a grant is stored: in `meta`, under [`GRANT_PREFIX`] ‖ its id (16
//! bytes), in the store's own encoding (no serde: the bytes are the
//! store's contract with the files it wrote).
//!
//! format (1) ‖ revision (8) ‖ caller ‖ requested by ‖ kinds (count 1,
//! codes) ‖ purpose ‖ max reveals (4) ‖ created (8) ‖ expires (8) ‖ reason ‖
//! tokens (count 4, each a string) ‖ rule ‖ reveal level (1: 1 masked, 2
//! full) ‖ approvals required (4) ‖
//! approvers (count 4, strings) ‖ approvals (count 4, each by ‖ at (8)) ‖
//! decision (1: 0 pending, 1 active ‖ since (8), 2 rejected or 3 revoked
//! ‖ by ‖ at (8) ‖ reason). Strings are a length (4) and UTF-8; integers
//! big-endian.

use super::layout::{put_str, take_as, take_str, u64_from};
use super::StoreError;
use crate::domain::grant::{Approval, Decided, Ended, Grant, GrantId};
use crate::domain::policy::RevealLevel;
use crate::domain::{FieldKind, Purpose};

/// The `meta` keys of grants start with this.
pub(super) const GRANT_PREFIX: &[u8] = b"grant/";

const GRANT_FORMAT: u8 = 1;
const WHAT: &str = "grant";

/// The `meta` key of a grant.
pub(super) fn grant_key(id: GrantId) -> Vec<u8> {
    [GRANT_PREFIX, &id.as_bytes()[..]].concat()
}

fn corrupt(reason: &'static str) -> StoreError {
    StoreError::Corrupt { what: WHAT, reason }
}

fn put_u32(out: &mut Vec<u8>, n: u32) {
    out.extend_from_slice(&n.to_be_bytes());
}

fn put_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_be_bytes());
}

fn put_count(out: &mut Vec<u8>, n: usize) {
    put_u32(out, u32::try_from(n).unwrap_or(u32::MAX));
}

pub(super) fn encode_grant(g: &Grant) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + g.tokens.iter().map(|t| t.len() + 4).sum::<usize>());
    out.push(GRANT_FORMAT);
    put_u64(&mut out, g.revision);
    put_str(&mut out, &g.caller);
    put_str(&mut out, &g.requested_by);
    out.push(u8::try_from(g.kinds.len()).unwrap_or(u8::MAX));
    out.extend(g.kinds.iter().map(|k| k.code()));
    put_str(&mut out, g.purpose.as_str());
    put_u32(&mut out, g.max_reveals);
    put_u64(&mut out, g.created_unix_ms);
    put_u64(&mut out, g.expires_unix_ms);
    put_str(&mut out, &g.reason);
    put_count(&mut out, g.tokens.len());
    for t in &g.tokens {
        put_str(&mut out, t);
    }
    put_str(&mut out, &g.rule);
    out.push(match g.reveal {
        RevealLevel::None => 0,
        RevealLevel::Masked => 1,
        RevealLevel::Full => 2,
    });
    put_u32(&mut out, g.approvals_required);
    put_count(&mut out, g.approvers.len());
    for a in &g.approvers {
        put_str(&mut out, a);
    }
    put_count(&mut out, g.approvals.len());
    for a in &g.approvals {
        put_str(&mut out, &a.by);
        put_u64(&mut out, a.at_unix_ms);
    }
    match &g.decided {
        Decided::Pending => out.push(0),
        Decided::Active { since_unix_ms } => {
            out.push(1);
            put_u64(&mut out, *since_unix_ms);
        }
        Decided::Rejected(e) | Decided::Revoked(e) => {
            out.push(if matches!(g.decided, Decided::Rejected(_)) {
                2
            } else {
                3
            });
            put_str(&mut out, &e.by);
            put_u64(&mut out, e.at_unix_ms);
            put_str(&mut out, &e.reason);
        }
    }
    out
}

fn take_u32(b: &mut &[u8]) -> Result<u32, StoreError> {
    let x = take_as(b, 4, WHAT)?;
    Ok(u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
}

fn take_u64(b: &mut &[u8]) -> Result<u64, StoreError> {
    u64_from(take_as(b, 8, WHAT)?)
}

/// A count of entries that each take at least `min` bytes: never more
/// than the bytes left could hold (a damaged count does not allocate).
fn take_count(b: &mut &[u8], min: usize) -> Result<usize, StoreError> {
    let n = take_u32(b)? as usize;
    if n.saturating_mul(min) > b.len() {
        return Err(corrupt("a count runs past the end"));
    }
    Ok(n)
}

fn take_ended(b: &mut &[u8]) -> Result<Ended, StoreError> {
    Ok(Ended {
        by: take_str(b, WHAT)?,
        at_unix_ms: take_u64(b)?,
        reason: take_str(b, WHAT)?,
    })
}

/// The grant a `grant/` entry stores.
pub(super) fn decode_grant(key: &[u8], bytes: &[u8]) -> Result<Grant, StoreError> {
    decode(key, bytes, true)
}

/// [`decode_grant`] leaving its token list out (checked, not kept).
pub(super) fn decode_grant_without_tokens(key: &[u8], bytes: &[u8]) -> Result<Grant, StoreError> {
    decode(key, bytes, false)
}

fn decode(key: &[u8], bytes: &[u8], with_tokens: bool) -> Result<Grant, StoreError> {
    let id: [u8; 16] = key
        .strip_prefix(GRANT_PREFIX)
        .and_then(|id| id.try_into().ok())
        .ok_or(corrupt("key is not a grant id"))?;
    let mut b = bytes;
    if take_as(&mut b, 1, WHAT)?[0] != GRANT_FORMAT {
        return Err(corrupt("unknown format"));
    }
    let revision = take_u64(&mut b)?;
    let caller = take_str(&mut b, WHAT)?;
    let requested_by = take_str(&mut b, WHAT)?;
    let nkinds = usize::from(take_as(&mut b, 1, WHAT)?[0]);
    let kinds = take_as(&mut b, nkinds, WHAT)?
        .iter()
        .map(|c| FieldKind::from_code(*c).ok_or(corrupt("unknown field kind")))
        .collect::<Result<Vec<_>, _>>()?;
    let purpose = Purpose::parse(&take_str(&mut b, WHAT)?).map_err(|_| corrupt("bad purpose"))?;
    let max_reveals = take_u32(&mut b)?;
    let created_unix_ms = take_u64(&mut b)?;
    let expires_unix_ms = take_u64(&mut b)?;
    let reason = take_str(&mut b, WHAT)?;
    let ntokens = take_count(&mut b, 4)?;
    let mut tokens = Vec::new();
    for _ in 0..ntokens {
        if with_tokens {
            tokens.push(take_str(&mut b, WHAT)?);
        } else {
            let len = take_u32(&mut b)? as usize;
            take_as(&mut b, len, WHAT)?;
        }
    }
    let rule = take_str(&mut b, WHAT)?;
    let reveal = match take_as(&mut b, 1, WHAT)?[0] {
        0 => RevealLevel::None,
        1 => RevealLevel::Masked,
        2 => RevealLevel::Full,
        _ => return Err(corrupt("unknown reveal level")),
    };
    let approvals_required = take_u32(&mut b)?;
    let napprovers = take_count(&mut b, 4)?;
    let approvers = (0..napprovers)
        .map(|_| take_str(&mut b, WHAT))
        .collect::<Result<Vec<_>, _>>()?;
    let napprovals = take_count(&mut b, 12)?;
    let approvals = (0..napprovals)
        .map(|_| {
            Ok(Approval {
                by: take_str(&mut b, WHAT)?,
                at_unix_ms: take_u64(&mut b)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let decided = match take_as(&mut b, 1, WHAT)?[0] {
        0 => Decided::Pending,
        1 => Decided::Active {
            since_unix_ms: take_u64(&mut b)?,
        },
        2 => Decided::Rejected(take_ended(&mut b)?),
        3 => Decided::Revoked(take_ended(&mut b)?),
        _ => return Err(corrupt("unknown decision")),
    };
    if !b.is_empty() {
        return Err(corrupt("trailing bytes"));
    }
    Ok(Grant {
        id: GrantId::from_bytes(id),
        revision,
        caller,
        requested_by,
        kinds,
        purpose,
        max_reveals,
        created_unix_ms,
        expires_unix_ms,
        reason,
        tokens,
        rule,
        reveal,
        approvals_required,
        approvers,
        approvals,
        decided,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample(decided: Decided) -> Grant {
        Grant {
            id: GrantId::new(),
            revision: 3,
            caller: "spiffe://fieldvault.dev/fulfilment".into(),
            requested_by: "spiffe://fieldvault.dev/admin".into(),
            kinds: vec![FieldKind::Address, FieldKind::Phone],
            purpose: Purpose::parse("shipping").unwrap(),
            max_reveals: 100,
            created_unix_ms: 1_700_000_000_000,
            expires_unix_ms: 1_700_086_400_000,
            reason: "batch OPS-7".into(),
            tokens: vec!["fv1_a".into(), "fv1_b".into()],
            rule: "fulfilment".into(),
            reveal: RevealLevel::Masked,
            approvals_required: 2,
            approvers: vec!["approver1".into(), "approver2".into()],
            approvals: vec![Approval {
                by: "approver1".into(),
                at_unix_ms: 1_700_000_001_000,
            }],
            decided,
        }
    }

    #[test]
    fn every_decision_of_a_grant_round_trips_through_its_stored_bytes() {
        let ended = Ended {
            by: "approver2".into(),
            at_unix_ms: 1_700_000_002_000,
            reason: "not needed".into(),
        };
        for decided in [
            Decided::Pending,
            Decided::Active {
                since_unix_ms: 1_700_000_001_500,
            },
            Decided::Rejected(ended.clone()),
            Decided::Revoked(ended),
        ] {
            let g = sample(decided);
            let bytes = encode_grant(&g);
            assert_eq!(decode_grant(&grant_key(g.id), &bytes).unwrap(), g);
            // A listing leaves the token list out and keeps the rest.
            let listed = decode_grant_without_tokens(&grant_key(g.id), &bytes).unwrap();
            assert_eq!(
                listed,
                Grant {
                    tokens: Vec::new(),
                    ..g
                }
            );
        }
    }

    #[test]
    fn a_grant_cut_short_or_with_trailing_bytes_or_a_huge_count_is_corrupt() {
        let g = sample(Decided::Pending);
        let key = grant_key(g.id);
        let bytes = encode_grant(&g);
        for cut in 0..bytes.len() {
            assert!(
                decode_grant(&key, &bytes[..cut]).is_err(),
                "cut at {cut} decoded"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_grant(&key, &longer).is_err());
        // The token count (after the reason) set to 4 billion: refused
        // before anything is allocated for it.
        let at = bytes.len()
            - (4 + g.rule.len() + 1 + 4 + 4 + 2 * (4 + 9) + 4 + (4 + 9 + 8) + 1)
            - 2 * (4 + 5)
            - 4;
        let mut huge = bytes.clone();
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_grant(&key, &huge).is_err());
        assert!(decode_grant(b"grant/short", &bytes).is_err());
    }
}
