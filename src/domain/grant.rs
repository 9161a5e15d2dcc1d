//! Grants: a workflow may reveal at most N values of some field kinds for
//! one purpose, until a deadline, once identities other than the requester
//! have approved it. What a policy rule with `requires_grant = true` asks
//! for (the rule allows nothing without one).
//!
//! A grant's decisions (request, approvals, rejection, revocation) are
//! stored with a revision, changed by compare-and-set; the reveals it has
//! allowed are a durable counter beside it (so a reveal never waits behind
//! an approval, nor the reverse). Its state is the stored one, unless its
//! deadline has passed (expired) or every unit is used (exhausted).

use super::{FieldKind, Purpose};
use std::fmt;

/// The most field kinds one grant names.
pub const MAX_GRANT_KINDS: usize = 8;
/// The most tokens a grant restricted to a token list names.
pub const MAX_GRANT_TOKENS: usize = 1000;
/// The most approvals a rule may require.
pub const MAX_APPROVALS: u32 = 10;
/// The default ceiling of a grant's `max_reveals` (config
/// `[grants] max_reveals`).
pub const DEFAULT_MAX_REVEALS: u32 = 10_000;
/// The highest ceiling a deployment may configure.
pub const MAX_MAX_REVEALS: u32 = 10_000_000;
/// The default longest `valid_for` (config `[grants] max_valid_for`): 30 days.
pub const DEFAULT_MAX_VALID_FOR_MS: u64 = 30 * 86_400_000;
/// The longest `valid_for` a deployment may configure: one year.
pub const MAX_MAX_VALID_FOR_MS: u64 = 366 * 86_400_000;
/// The default number of pending grants one workflow may have at once
/// (config `[grants] max_pending`): a bound on what requests can store.
pub const DEFAULT_MAX_PENDING: usize = 100;
/// The default number of grants one workflow may be requested per day
/// (config `[grants] max_requests_per_day`): grants are kept once ended
/// (they are the record of what was approved), so this bounds how fast
/// requests can grow the store.
pub const DEFAULT_MAX_REQUESTS_PER_DAY: u64 = 100;

/// A grant's id: a random UUID, written in its hyphenated lower-case form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantId(uuid::Uuid);

impl GrantId {
    /// A new random id.
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(uuid::Uuid::from_bytes(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// Parses a grant id as the vault writes it (36 characters, e.g.
    /// `6f1c2d3e-4b5a-4c6d-8e7f-0123456789ab`; upper-case is accepted).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("is required".into());
        }
        if text.len() != 36 {
            return Err(format!(
                "is not a grant id (a UUID of 36 characters, such as \
                 6f1c2d3e-4b5a-4c6d-8e7f-0123456789ab); got {} bytes",
                text.len()
            ));
        }
        uuid::Uuid::try_parse(text).map(Self).map_err(|_| {
            "is not a grant id (a UUID such as 6f1c2d3e-4b5a-4c6d-8e7f-0123456789ab)".into()
        })
    }
}

impl Default for GrantId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

/// Where a grant stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GrantState {
    /// Waiting for approvals.
    Pending,
    /// Approved: reveals may use it.
    Active,
    Rejected,
    Revoked,
    /// Its deadline passed (pending or active until then).
    Expired,
    /// Active, but every unit is used.
    Exhausted,
}

impl GrantState {
    pub const ALL: [GrantState; 6] = [
        GrantState::Pending,
        GrantState::Active,
        GrantState::Rejected,
        GrantState::Revoked,
        GrantState::Expired,
        GrantState::Exhausted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GrantState::Pending => "pending",
            GrantState::Active => "active",
            GrantState::Rejected => "rejected",
            GrantState::Revoked => "revoked",
            GrantState::Expired => "expired",
            GrantState::Exhausted => "exhausted",
        }
    }
}

impl fmt::Display for GrantState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for GrantState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        GrantState::ALL
            .into_iter()
            .find(|g| g.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown grant state '{s}' (expected one of: {})",
                    GrantState::ALL.map(GrantState::as_str).join(", ")
                )
            })
    }
}

/// An approval: who, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approval {
    pub by: String,
    pub at_unix_ms: u64,
}

/// Who ended a grant (rejected or revoked it), when and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    pub by: String,
    pub at_unix_ms: u64,
    /// Empty when none was given.
    pub reason: String,
}

/// What is stored of a grant's decisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decided {
    Pending,
    Active { since_unix_ms: u64 },
    Rejected(Ended),
    Revoked(Ended),
}

/// A grant as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub id: GrantId,
    /// Set by the store: 1 when created, one more at each change.
    pub revision: u64,
    /// The workflow identity that may use it.
    pub caller: String,
    /// Who asked for it (the workflow itself or an operator).
    pub requested_by: String,
    /// Distinct, in the order requested.
    pub kinds: Vec<FieldKind>,
    pub purpose: Purpose,
    pub max_reveals: u32,
    pub created_unix_ms: u64,
    pub expires_unix_ms: u64,
    pub reason: String,
    /// Empty: any token of its kinds.
    pub tokens: Vec<String>,
    /// The policy rule that required it, as of the request.
    pub rule: String,
    /// How much that rule revealed then: the most the grant reveals, even
    /// if the rule is edited since.
    pub reveal: super::policy::RevealLevel,
    pub approvals_required: u32,
    /// Who may approve it (empty: callers with a `grants` policy rule).
    pub approvers: Vec<String>,
    pub approvals: Vec<Approval>,
    pub decided: Decided,
}

impl Grant {
    /// Its state at `now`, with `used` units consumed.
    pub fn state(&self, now_unix_ms: u64, used: u64) -> GrantState {
        match &self.decided {
            Decided::Rejected(_) => GrantState::Rejected,
            Decided::Revoked(_) => GrantState::Revoked,
            _ if now_unix_ms >= self.expires_unix_ms => GrantState::Expired,
            Decided::Pending => GrantState::Pending,
            Decided::Active { .. } if used >= u64::from(self.max_reveals) => GrantState::Exhausted,
            Decided::Active { .. } => GrantState::Active,
        }
    }

    /// Whether `who` is the grant's requester or its workflow (neither may
    /// approve it).
    pub fn is_party(&self, who: &str) -> bool {
        self.requested_by == who || self.caller == who
    }

    /// Whether `who` has approved it.
    pub fn approved_by(&self, who: &str) -> bool {
        self.approvals.iter().any(|a| a.by == who)
    }

    /// Whether it names `token` (a grant without a token list names all).
    pub fn covers_token(&self, token: &str) -> bool {
        self.tokens.is_empty() || self.tokens.iter().any(|t| t == token)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn grant(decided: Decided) -> Grant {
        Grant {
            id: GrantId::new(),
            revision: 1,
            caller: "fulfilment".into(),
            requested_by: "fulfilment".into(),
            kinds: vec![FieldKind::Address],
            purpose: Purpose::parse("shipping").unwrap(),
            max_reveals: 3,
            created_unix_ms: 1_000,
            expires_unix_ms: 2_000,
            reason: "batch 7".into(),
            tokens: Vec::new(),
            rule: "fulfilment".into(),
            reveal: super::super::policy::RevealLevel::Full,
            approvals_required: 2,
            approvers: vec!["approver1".into(), "approver2".into()],
            approvals: Vec::new(),
            decided,
        }
    }

    #[test]
    fn a_grants_state_reads_its_decision_then_its_deadline_then_its_units() {
        let active = grant(Decided::Active {
            since_unix_ms: 1_500,
        });
        assert_eq!(active.state(1_999, 2), GrantState::Active);
        assert_eq!(active.state(1_999, 3), GrantState::Exhausted);
        assert_eq!(active.state(2_000, 0), GrantState::Expired);
        let pending = grant(Decided::Pending);
        assert_eq!(pending.state(1_999, 0), GrantState::Pending);
        assert_eq!(pending.state(2_000, 0), GrantState::Expired);
        let ended = Ended {
            by: "approver1".into(),
            at_unix_ms: 1_200,
            reason: String::new(),
        };
        // An ended grant stays ended after its deadline.
        assert_eq!(
            grant(Decided::Revoked(ended.clone())).state(5_000, 0),
            GrantState::Revoked
        );
        assert_eq!(
            grant(Decided::Rejected(ended)).state(5_000, 0),
            GrantState::Rejected
        );
    }

    #[test]
    fn grant_ids_parse_only_as_uuids_and_print_in_lower_case() {
        let id = GrantId::new();
        assert_eq!(GrantId::parse(&id.to_string()), Ok(id));
        assert_eq!(
            GrantId::parse(&id.to_string().to_uppercase()),
            Ok(id),
            "upper case is the same id"
        );
        assert!(GrantId::parse("").unwrap_err().contains("required"));
        assert!(GrantId::parse("grant-1").unwrap_err().contains("36"));
        assert!(GrantId::parse("zzzzzzzz-4b5a-4c6d-8e7f-0123456789ab")
            .unwrap_err()
            .contains("not a grant id"));
    }

    #[test]
    fn only_a_listed_token_is_covered_when_the_grant_lists_tokens() {
        let mut g = grant(Decided::Pending);
        assert!(g.covers_token("tok_anything"));
        g.tokens = vec!["tok_a".into()];
        assert!(g.covers_token("tok_a"));
        assert!(!g.covers_token("tok_b"));
        assert!(g.is_party("fulfilment"));
        assert!(!g.is_party("approver1"));
    }
}
