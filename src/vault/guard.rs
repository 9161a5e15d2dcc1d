//! Abuse controls, on top of the policy's rules: the deny list and frozen
//! callers are refused before anything else; reveals are counted against
//! their rule's quotas; a canary token, repeated quota refusals or a scan of
//! unknown tokens freeze the caller.
//!
//! Counts and freezes are durable store writes (through the same log as
//! records), so a restart neither resets a day's count nor thaws a caller.
//! A quota is charged, durably, before a value leaves: a crash can only
//! count a value that was not answered, never answer one that was not
//! counted.
//!
//! Every freeze writes one alert line to the server log, in a stable format
//! that log-based alerting can match ([`alert_line`]), and an audit event
//! (`caller.frozen`).

use super::{Call, Vault, VaultError};
use crate::audit::event::Event;
use crate::audit::now_unix_ms;
use crate::domain::policy::{Policy, Quota, Trigger};
use crate::domain::time::rfc3339;
use crate::domain::{CallerId, RecordId};
use crate::store::{Canary, Charge, Charged, Freeze};

/// The log target of alert lines.
pub const ALERT_TARGET: &str = "fieldvault::alert";

/// Who froze a caller automatically (an operator's freeze names the
/// operator).
pub const BY_VAULT: &str = "vault";

/// What froze a caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreezeTrigger {
    Canary,
    QuotaHits,
    UnknownTokens,
    Operator,
}

impl FreezeTrigger {
    pub const ALL: [FreezeTrigger; 4] = [
        FreezeTrigger::Canary,
        FreezeTrigger::QuotaHits,
        FreezeTrigger::UnknownTokens,
        FreezeTrigger::Operator,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FreezeTrigger::Canary => "canary",
            FreezeTrigger::QuotaHits => "quota_hits",
            FreezeTrigger::UnknownTokens => "unknown_tokens",
            FreezeTrigger::Operator => "operator",
        }
    }
}

/// The alert line of a freeze (the message of a WARN record with target
/// [`ALERT_TARGET`]). Stable: `ALERT caller_frozen` then `key=value` pairs
/// in this order, string values quoted with `"` (a `"` or `\` inside is
/// escaped with `\`):
///
/// `ALERT caller_frozen caller="…" trigger=canary|quota_hits|unknown_tokens|operator
/// since=<RFC 3339 UTC> by="…" request_id=<uuid> reason="…"`
pub fn alert_line(freeze: &Freeze, trigger: FreezeTrigger, request_id: &str) -> String {
    format!(
        "ALERT caller_frozen caller={} trigger={} since={} by={} request_id={} reason={}",
        quoted(&freeze.caller),
        trigger.as_str(),
        rfc3339(freeze.since_unix_ms),
        quoted(&freeze.by),
        request_id,
        quoted(&freeze.reason),
    )
}

fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        if c.is_control() {
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out.push('"');
    out
}

/// What a caller frozen automatically is told: which control froze it is
/// for the operators (the alert line, the audit trail, `callers list`), so
/// that a caller cannot learn which token was a canary.
pub const AUTOMATIC_FREEZE_REASON: &str =
    "an abuse control of the vault froze it (its operators know which)";

/// The refusal every call of a frozen caller gets: an operator's reason
/// as given (it is meant for the caller), an automatic freeze's in
/// general terms.
pub(super) fn frozen_refusal(freeze: &Freeze) -> VaultError {
    let reason = if freeze.by == BY_VAULT {
        AUTOMATIC_FREEZE_REASON.to_owned()
    } else {
        freeze.reason.clone()
    };
    VaultError::Frozen {
        caller: freeze.caller.clone(),
        since_unix_ms: freeze.since_unix_ms,
        reason,
    }
}

/// The counters of a caller. The separator (a control character) cannot
/// occur in an identity or a rule name.
const SEP: char = '\u{1f}';

pub(super) fn quota_counter(caller: &CallerId, rule: &str, quota: &Quota) -> String {
    format!("q{SEP}{caller}{SEP}{}{SEP}{rule}", quota.per.as_str())
}

fn hits_counter(caller: &CallerId) -> String {
    format!("h{SEP}{caller}")
}

fn unknown_counter(caller: &CallerId) -> String {
    format!("u{SEP}{caller}")
}

/// A quota counter's parts: (caller, period, rule).
pub(super) fn parse_quota_counter(name: &str) -> Option<(&str, &str, &str)> {
    let mut parts = name.splitn(4, SEP);
    if parts.next()? != "q" {
        return None;
    }
    Some((parts.next()?, parts.next()?, parts.next()?))
}

/// The values a detokenize is about to reveal under one rule.
pub(super) struct RuleUse {
    pub rule: String,
    pub quotas: Vec<Quota>,
    pub values: u64,
}

impl Vault {
    /// Before any rule: a deny-listed caller is refused (PERMISSION_DENIED),
    /// a frozen one too (FAILED_PRECONDITION), whatever it asks.
    pub(super) async fn admit(&self, caller: &CallerId, policy: &Policy) -> Result<(), VaultError> {
        policy
            .check_deny_list(caller)
            .map_err(VaultError::PermissionDenied)?;
        match self.store.frozen(caller.as_str()).await {
            Ok(None) => Ok(()),
            Ok(Some(freeze)) => Err(frozen_refusal(&freeze)),
            Err(e) => {
                tracing::error!(error = %e, "reading the caller's freeze failed");
                Err(super::unavailable(&e, "nothing was done"))
            }
        }
    }

    /// Freezes `caller` (durably), then raises the alert and audits it. A
    /// caller frozen already stays as it was (no second alert). Returns
    /// the freeze in force.
    pub(super) async fn freeze(
        &self,
        call: &Call,
        caller: &str,
        trigger: FreezeTrigger,
        reason: String,
        by: &str,
    ) -> Result<Freeze, VaultError> {
        let freeze = Freeze {
            caller: caller.to_owned(),
            since_unix_ms: now_unix_ms(),
            reason,
            by: by.to_owned(),
        };
        match self.store.freeze(freeze.clone()).await {
            Ok(Some(earlier)) => Ok(earlier),
            Ok(None) => {
                metrics::counter!(crate::metrics::FREEZES, "trigger" => trigger.as_str())
                    .increment(1);
                tracing::warn!(target: ALERT_TARGET, "{}", alert_line(&freeze, trigger, &call.request_id));
                let mut event = call.event("caller.frozen");
                for (key, value) in [
                    ("frozen", freeze.caller.as_str()),
                    ("trigger", trigger.as_str()),
                    ("reason", freeze.reason.as_str()),
                    ("by", freeze.by.as_str()),
                ] {
                    event.details.insert(key.into(), value.into());
                }
                self.record_happened(event).await;
                Ok(freeze)
            }
            Err(e) => {
                tracing::error!(error = %e, "freezing a caller failed");
                Err(super::unavailable(&e, "nothing was revealed"))
            }
        }
    }

    /// Charges what a detokenize is about to reveal to its rules' quotas,
    /// all or nothing. Over a limit: RESOURCE_EXHAUSTED naming the limit
    /// and when it resets; the refusal counts as a quota hit, and the hit
    /// that reaches the policy's threshold freezes the caller.
    ///
    /// With a grant, the values revealed under it are charged in the same
    /// all-or-nothing write (at most its `max_reveals` in all): fewer units
    /// left than asked refuses the call with FAILED_PRECONDITION, and
    /// nothing is charged; the event records the units and the new count.
    pub(super) async fn charge_quotas(
        &self,
        call: &Call,
        caller: &CallerId,
        policy: &Policy,
        uses: &[RuleUse],
        grant: Option<(&super::GrantView, u64)>,
        event: &mut Event,
    ) -> Result<(), VaultError> {
        let now = now_unix_ms();
        let mut charges = Vec::new();
        let mut which = Vec::new();
        let grant = grant.filter(|(_, units)| *units > 0);
        if let Some((g, units)) = grant {
            charges.push(Charge {
                counter: super::grants::grant_counter(g.grant.id),
                window_start_ms: 0,
                amount: units,
                limit: Some(u64::from(g.grant.max_reveals)),
            });
        }
        let skip = charges.len();
        for u in uses.iter().filter(|u| u.values > 0) {
            for q in &u.quotas {
                charges.push(Charge {
                    counter: quota_counter(caller, &u.rule, q),
                    window_start_ms: q.window_start(now),
                    amount: u.values,
                    limit: Some(q.limit),
                });
                which.push((u, *q));
            }
        }
        if charges.is_empty() {
            return Ok(());
        }
        let over = match self.store.charge(charges).await {
            Ok(Charged::Added(counts)) => {
                if let (Some((_, units)), Some(count)) = (grant, counts.first()) {
                    event.details.insert("grant_units".into(), units.into());
                    event.details.insert("grant_used".into(), (*count).into());
                }
                return Ok(());
            }
            Ok(Charged::Over { index, count }) if index < skip => {
                let Some((g, units)) = grant else {
                    return Err(VaultError::Unavailable("internal error".into()));
                };
                let left = u64::from(g.grant.max_reveals).saturating_sub(count);
                return Err(VaultError::FailedPrecondition(if left == 0 {
                    format!(
                        "grant {} is exhausted ({count} of {} reveals used); nothing was revealed",
                        g.grant.id, g.grant.max_reveals
                    )
                } else {
                    format!(
                        "grant {} has {left} of {} reveals left and this call would reveal \
                         {units}; nothing was revealed (ask for at most {left})",
                        g.grant.id, g.grant.max_reveals
                    )
                }));
            }
            Ok(Charged::Over { index, count }) => (index - skip, count),
            Err(e) => {
                tracing::error!(error = %e, "charging quotas failed");
                return Err(super::unavailable(&e, "nothing was revealed"));
            }
        };
        let (index, used) = over;
        let Some((u, quota)) = which.get(index) else {
            return Err(VaultError::Unavailable("internal error".into()));
        };
        if crate::metrics::enabled() {
            metrics::counter!(
                crate::metrics::QUOTA_REFUSALS,
                "caller" => crate::metrics::caller_label(policy, Some(caller)),
                "per" => quota.per.as_str()
            )
            .increment(1);
        }
        let refusal = VaultError::QuotaExceeded {
            caller: caller.to_string(),
            rule: u.rule.clone(),
            quota: *quota,
            used,
            asked: u.values,
            resets_at_unix_ms: quota.resets_at(now),
        };
        let trigger = policy.freeze_rules().quota_hits;
        if let Some(count) = self.count_toward(&hits_counter(caller), trigger, 1).await? {
            self.freeze(
                call,
                caller.as_str(),
                FreezeTrigger::QuotaHits,
                format!(
                    "hit its quotas {count} times within {} (last: rule '{}', {quota})",
                    trigger_window(trigger),
                    u.rule
                ),
                BY_VAULT,
            )
            .await?;
        }
        Err(refusal)
    }

    /// Counts `n` tokens that name no stored value; more than the policy's
    /// threshold within its window freezes the caller, and then the call
    /// is refused as frozen.
    pub(super) async fn count_unknown(
        &self,
        call: &Call,
        caller: &CallerId,
        policy: &Policy,
        n: u64,
    ) -> Result<(), VaultError> {
        if n == 0 {
            return Ok(());
        }
        let trigger = policy.freeze_rules().unknown_tokens;
        if trigger.is_off() {
            return Ok(());
        }
        // More than `count`: the threshold is reached at count + 1.
        let reach = Trigger {
            count: trigger.count.saturating_add(1),
            window_ms: trigger.window_ms,
        };
        if let Some(count) = self
            .count_toward(&unknown_counter(caller), reach, n)
            .await?
        {
            let freeze = self
                .freeze(
                    call,
                    caller.as_str(),
                    FreezeTrigger::UnknownTokens,
                    format!(
                        "sent {count} unknown tokens within {} (more than {})",
                        trigger_window(trigger),
                        trigger.count
                    ),
                    BY_VAULT,
                )
                .await?;
            return Err(frozen_refusal(&freeze));
        }
        Ok(())
    }

    /// Adds `n` to a freeze trigger's counter; `Some(count)` once the count
    /// reaches the trigger's.
    async fn count_toward(
        &self,
        counter: &str,
        trigger: Trigger,
        n: u64,
    ) -> Result<Option<u64>, VaultError> {
        if trigger.is_off() {
            return Ok(None);
        }
        let charge = Charge {
            counter: counter.to_owned(),
            window_start_ms: trigger.window_start(now_unix_ms()),
            amount: n,
            limit: None,
        };
        match self.store.charge(vec![charge]).await {
            Ok(Charged::Added(counts)) => {
                let count = counts.first().copied().unwrap_or(0);
                Ok((count >= trigger.count).then_some(count))
            }
            Ok(Charged::Over { .. }) => Ok(None),
            Err(e) => {
                tracing::error!(error = %e, "counting toward a freeze failed");
                Err(super::unavailable(&e, "nothing was revealed"))
            }
        }
    }

    /// Starts a caller's freeze counters (quota refusals, unknown tokens)
    /// from zero, so that an unfrozen caller is not frozen again by what
    /// froze it.
    pub(super) async fn reset_freeze_counters(&self, caller: &CallerId) -> Result<(), VaultError> {
        self.store
            .reset_counters(vec![hits_counter(caller), unknown_counter(caller)])
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "resetting freeze counters failed");
                super::unavailable(&e, "the caller is unfrozen but its freeze counters stay")
            })
    }

    /// The canary of each id (none are when `ids` is empty: no read).
    pub(super) async fn canaries_among(
        &self,
        ids: &[RecordId],
    ) -> Result<Vec<Option<Canary>>, VaultError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.store.canaries_of(ids.to_vec()).await.map_err(|e| {
            tracing::error!(error = %e, "looking up canaries failed");
            super::unavailable(&e, "nothing was revealed")
        })
    }

    /// A canary token was asked for (to `action` it): freeze the caller,
    /// whatever its policy says; the call is refused as frozen and reveals
    /// nothing.
    pub(super) async fn canary_tripped(
        &self,
        call: &Call,
        caller: &CallerId,
        event: &mut Event,
        action: crate::domain::policy::Action,
    ) -> VaultError {
        match self
            .freeze(
                call,
                caller.as_str(),
                FreezeTrigger::Canary,
                format!("asked to {action} a canary token"),
                BY_VAULT,
            )
            .await
        {
            Ok(freeze) => {
                event.details.insert("canary".into(), true.into());
                frozen_refusal(&freeze)
            }
            Err(e) => e,
        }
    }
}

fn trigger_window(t: Trigger) -> humantime::FormattedDuration {
    humantime::format_duration(std::time::Duration::from_millis(t.window_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alert_line_has_its_documented_shape() {
        let freeze = Freeze {
            caller: "spiffe://fieldvault.dev/support".into(),
            since_unix_ms: 1_795_790_426_500,
            reason: "asked to detokenize a canary token".into(),
            by: "vault".into(),
        };
        assert_eq!(
            alert_line(
                &freeze,
                FreezeTrigger::Canary,
                "0e6f6d1c-0000-4000-8000-000000000000"
            ),
            "ALERT caller_frozen caller=\"spiffe://fieldvault.dev/support\" trigger=canary \
             since=2026-11-27T14:40:26Z by=\"vault\" \
             request_id=0e6f6d1c-0000-4000-8000-000000000000 \
             reason=\"asked to detokenize a canary token\""
        );
        let odd = Freeze {
            caller: "cn \"x\"".into(),
            reason: "a\\b\nc".into(),
            ..freeze
        };
        let line = alert_line(&odd, FreezeTrigger::Operator, "r");
        assert!(line.contains("caller=\"cn \\\"x\\\"\""), "{line}");
        assert!(line.contains("reason=\"a\\\\b c\""), "{line}");
    }

    #[test]
    fn quota_counters_name_caller_period_and_rule() {
        let caller = CallerId::common_name("support").unwrap_or_else(|e| panic!("{e}"));
        let q: Quota = "100/minute".parse().unwrap_or_else(|e| panic!("{e}"));
        let name = quota_counter(&caller, "support: callback", &q);
        assert_eq!(
            parse_quota_counter(&name),
            Some(("support", "minute", "support: callback"))
        );
        assert_eq!(parse_quota_counter(&hits_counter(&caller)), None);
    }
}
