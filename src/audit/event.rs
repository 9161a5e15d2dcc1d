//! What one audit event says: who asked for what, why, what the vault
//! decided and by which rule. Tokens are named (they are not personal data);
//! values, full or masked, never are.
//!
//! One event is written per call, whatever its outcome, and a few by the
//! trail itself (`audit.*` actions: a new chain, a new file, an outage of
//! the sink). Its JSON form is the `event` of a chained line
//! ([`super::chain`]); `fieldvault audit search` and `report` read it back.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What the vault decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The call was carried out (items of a batch may still have failed:
    /// see their outcomes).
    Allowed,
    /// Refused for who asked: the policy, or a certificate that names no
    /// identity.
    Denied,
    /// Refused for what was asked: a malformed argument, something that
    /// does not exist, or a state that does not allow it.
    Rejected,
    /// The vault could not do it now (storage or the audit trail failing).
    Failed,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Denied => "denied",
            Decision::Rejected => "rejected",
            Decision::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Decision::Allowed,
            Decision::Denied,
            Decision::Rejected,
            Decision::Failed,
        ]
        .into_iter()
        .find(|d| d.as_str() == text)
    }
}

/// One item of a batch: a field tokenized or a token asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The token asked for, or the token issued. `None` for a malformed
    /// token and for a field that was not stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `stored`, a reveal level (`full`, `masked`, `none`), or the item's
    /// error code (`not_found`, `permission_denied`, `invalid_argument`, …).
    pub outcome: String,
    /// The policy rule that decided the item, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// One audit event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// RFC 3339 UTC, to the millisecond.
    pub time: String,
    /// One per call; `None` for events the trail writes itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The identity the client certificate proved; `None` when it proved
    /// none (the reason says why) and for the trail's own events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// `tokenize`, `detokenize`, `keys.<operation>`, `audit.<event>`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub justification: Option<String>,
    /// The field kinds the call touched, distinct, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    pub decision: Decision,
    /// The status code of the answer (`ok`, `permission_denied`, …).
    pub code: String,
    /// The policy rules that decided, distinct, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
    /// Why, for anything but a plain success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<Item>,
    /// What an operation took or gave that is not an item (a key version,
    /// a rate, a job's progress; for `audit.*` events, the chain's facts).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, serde_json::Value>,
}

impl Event {
    /// An event of `action` at the current time, allowed until told
    /// otherwise.
    pub fn new(action: impl Into<String>) -> Self {
        Self {
            time: now_rfc3339_millis(),
            request_id: None,
            caller: None,
            action: action.into(),
            purpose: None,
            justification: None,
            kinds: Vec::new(),
            decision: Decision::Allowed,
            code: "ok".into(),
            rules: Vec::new(),
            reason: None,
            items: Vec::new(),
            details: BTreeMap::new(),
        }
    }

    /// Sets `kinds` and `rules` from the items and what was added to them.
    pub fn settle(&mut self) {
        for item in &self.items {
            if let Some(kind) = &item.kind {
                self.kinds.push(kind.clone());
            }
            if let Some(rule) = &item.rule {
                self.rules.push(rule.clone());
            }
        }
        self.kinds.sort();
        self.kinds.dedup();
        self.rules.sort();
        self.rules.dedup();
    }

    /// The event as one line of JSON (no newline).
    pub fn to_json(&self) -> String {
        // Serializing plain strings, numbers and maps of JSON values cannot
        // fail; an empty object would still chain, and say nothing false.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }

    /// The time as unix milliseconds, if it parses.
    pub fn unix_ms(&self) -> Option<u64> {
        humantime::parse_rfc3339_weak(&self.time)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64)
    }
}

pub fn now_rfc3339_millis() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_round_trips_through_its_json_and_leaves_empty_fields_out() {
        let mut event = Event::new("detokenize");
        event.caller = Some("spiffe://t.example/support".into());
        event.purpose = Some("callback".into());
        event.items.push(Item {
            token: Some("fv1_x".into()),
            kind: Some("phone".into()),
            outcome: "masked".into(),
            rule: Some("support-callback".into()),
        });
        event.settle();
        let json = event.to_json();
        assert!(!json.contains("justification"), "{json}");
        assert!(json.contains("\"decision\":\"allowed\""), "{json}");
        let back: Event = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, event);
        assert_eq!(back.kinds, vec!["phone".to_owned()]);
        assert_eq!(back.rules, vec!["support-callback".to_owned()]);
        assert!(back.unix_ms().is_some());
    }

    #[test]
    fn decisions_parse_from_their_names() {
        for d in [
            Decision::Allowed,
            Decision::Denied,
            Decision::Rejected,
            Decision::Failed,
        ] {
            assert_eq!(Decision::parse(d.as_str()), Some(d));
        }
        assert_eq!(Decision::parse("ok"), None);
    }
}
