//! Approved workflows: grants requested, approved, rejected and revoked,
//! and the check a detokenize under a grant passes before anything is read.
//!
//! A grant's decisions are stored by compare-and-set on its revision (two
//! approvers at once both count, once each); its use is a durable counter
//! charged with the call's quotas, all or nothing, before any value leaves
//! (so concurrent reveals never pass `max_reveals` together, not across a
//! crash either: a unit is durable before its value is answered). A
//! revocation is stored before it is answered; a detokenize reads the
//! grant before it reads anything and again once its units are charged, so
//! one found revoked (or past its deadline) then reveals nothing.

use super::{unavailable, Call, Vault, VaultError};
use crate::audit::event::Event;
use crate::audit::now_unix_ms;
use crate::domain::grant::{
    Approval, Decided, Ended, Grant, GrantId, GrantState, DEFAULT_MAX_PENDING,
    DEFAULT_MAX_REQUESTS_PER_DAY, DEFAULT_MAX_REVEALS, DEFAULT_MAX_VALID_FOR_MS,
};
use crate::domain::policy::{Denial, DeniedOn, Policy, RevealLevel};
use crate::domain::{CallerId, FieldKind, Justification, Purpose, TokenId};
use crate::store::StoreError;

/// The ceilings a deployment sets (config `[grants]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantSettings {
    /// The most reveals one grant may allow.
    pub max_reveals: u32,
    /// The longest a grant may last, from its request.
    pub max_valid_for_ms: u64,
    /// The most pending grants one workflow may have at once.
    pub max_pending: usize,
    /// The most grants one workflow may be requested per day (UTC).
    pub max_requests_per_day: u64,
}

impl Default for GrantSettings {
    fn default() -> Self {
        Self {
            max_reveals: DEFAULT_MAX_REVEALS,
            max_valid_for_ms: DEFAULT_MAX_VALID_FOR_MS,
            max_pending: DEFAULT_MAX_PENDING,
            max_requests_per_day: DEFAULT_MAX_REQUESTS_PER_DAY,
        }
    }
}

/// What RequestGrant asks for, as the wire gave it (kinds already read).
#[derive(Clone, Debug)]
pub struct GrantRequest {
    /// The workflow the grant is for; empty: the caller itself.
    pub caller: String,
    /// The kinds, or why one is not a kind.
    pub kinds: Result<Vec<FieldKind>, String>,
    pub purpose: String,
    pub max_reveals: u32,
    /// `None` when absent; `Err` when not a valid duration (why).
    pub valid_for: Option<Result<std::time::Duration, String>>,
    pub reason: String,
    pub tokens: Vec<String>,
}

/// A grant with what it has used and its state now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantView {
    pub grant: Grant,
    pub used: u64,
    pub state: GrantState,
}

impl GrantView {
    pub fn remaining(&self) -> u64 {
        u64::from(self.grant.max_reveals).saturating_sub(self.used)
    }
}

/// The most grants one ListGrants answers.
pub const MAX_LIST_GRANTS: u32 = 1000;
/// What ListGrants answers when it names no limit.
pub const DEFAULT_LIST_GRANTS: u32 = 100;

/// How many times a change of a grant is tried again when another change
/// of it came first (two approvals at once).
const RETRIES: usize = 8;

/// The counter of a grant's use (window 0: it never resets). The
/// separator cannot occur in a grant id.
pub(super) fn grant_counter(id: GrantId) -> String {
    format!("g\u{1f}{id}")
}

fn invalid(field: &'static str, reason: impl Into<String>) -> VaultError {
    VaultError::InvalidArgument {
        field,
        reason: reason.into(),
    }
}

fn denied(on: DeniedOn, message: String) -> VaultError {
    VaultError::PermissionDenied(Denial::new(on, message))
}

fn parse_id(text: &str) -> Result<GrantId, VaultError> {
    GrantId::parse(text).map_err(|reason| invalid("grant_id", reason))
}

fn store_failed(e: &StoreError, what: &str) -> VaultError {
    tracing::error!(error = %e, "{what} failed");
    unavailable(e, "nothing changed")
}

/// Who may approve or reject `g`: an approver its rule listed when it was
/// requested (or, when it listed none, a caller with a `grants` rule),
/// whom the policy in force still lets approve under that rule (an
/// approver taken off the rule, or a rule taken out, approves no more);
/// never its requester or its workflow; never a deny-listed caller.
fn may_approve(policy: &Policy, caller: &CallerId, g: &Grant) -> bool {
    let listed = |approvers: &[String]| {
        if approvers.is_empty() {
            policy.administers_grants(caller)
        } else {
            approvers.iter().any(|a| a == caller.as_str())
        }
    };
    let rule_now = policy
        .rules()
        .iter()
        .find(|r| r.name == g.rule)
        .and_then(|r| r.grant.as_ref());
    !g.is_party(caller.as_str())
        && !policy.is_denied(caller)
        && listed(&g.approvers)
        && rule_now.is_some_and(|terms| listed(&terms.approvers))
}

/// Who may see `g` and revoke it: its requester, its workflow, its
/// approvers and callers with a `grants` rule.
fn may_see(policy: &Policy, caller: &CallerId, g: &Grant) -> bool {
    g.is_party(caller.as_str())
        || g.approvers.iter().any(|a| a == caller.as_str())
        || policy.administers_grants(caller)
}

/// What an approval refusal says for a caller who may not approve `g`.
fn not_an_approver(caller: &CallerId, g: &Grant, verb: &str) -> VaultError {
    if g.is_party(caller.as_str()) {
        return denied(
            DeniedOn::Caller,
            format!(
                "caller '{caller}' requested grant {} or is the workflow it is for, and may not \
                 {verb} it: approvals come from others",
                g.id
            ),
        );
    }
    let who = if g.approvers.is_empty() {
        "callers with a grants rule".to_owned()
    } else {
        g.approvers.join(", ")
    };
    denied(
        DeniedOn::Caller,
        format!(
            "caller '{caller}' may not {verb} grant {} (rule '{}' lets {who} {verb} it)",
            g.id, g.rule
        ),
    )
}

/// A FAILED_PRECONDITION naming the state that refuses `what`.
fn in_state(view: &GrantView, what: &str) -> VaultError {
    let g = &view.grant;
    let state = match view.state {
        GrantState::Pending => format!(
            "pending ({} of {} approvals)",
            g.approvals.len(),
            g.approvals_required
        ),
        GrantState::Expired => format!(
            "expired (at {})",
            crate::domain::time::rfc3339(g.expires_unix_ms)
        ),
        GrantState::Exhausted => format!(
            "exhausted ({} of {} reveals used)",
            view.used, g.max_reveals
        ),
        GrantState::Rejected | GrantState::Revoked => {
            let ended = match &g.decided {
                Decided::Rejected(e) | Decided::Revoked(e) => Some(e),
                _ => None,
            };
            match ended {
                Some(e) => format!(
                    "{} (by '{}' at {})",
                    view.state,
                    e.by,
                    crate::domain::time::rfc3339(e.at_unix_ms)
                ),
                None => view.state.to_string(),
            }
        }
        GrantState::Active => "active".to_owned(),
    };
    VaultError::FailedPrecondition(format!("grant {} is {state}; {what}", g.id))
}

/// The audit facts of a grant: its id, workflow, requester, approvers and
/// state (never a value; its tokens are named only by the request event).
fn describe(event: &mut Event, view: &GrantView) {
    let g = &view.grant;
    let approvers: Vec<serde_json::Value> =
        g.approvals.iter().map(|a| a.by.clone().into()).collect();
    for (key, value) in [
        ("grant", g.id.to_string().into()),
        ("grant_caller", g.caller.clone().into()),
        ("grant_requested_by", g.requested_by.clone().into()),
        ("grant_approvers", approvers.into()),
        ("grant_state", view.state.as_str().into()),
        ("grant_used", view.used.into()),
        ("grant_max_reveals", g.max_reveals.into()),
        ("grant_reveal", g.reveal.as_str().into()),
    ] {
        event.details.insert(key.into(), value);
    }
    event.purpose = Some(g.purpose.to_string());
    event.kinds = g.kinds.iter().map(|k| k.as_str().to_owned()).collect();
    event.rules = vec![g.rule.clone()];
}

impl Vault {
    /// Before any grant call: the deny list and freezes, and a caller no
    /// rule names (as a caller or an approver) is refused.
    async fn admit_to_grants(&self, caller: &CallerId, policy: &Policy) -> Result<(), VaultError> {
        self.admit(caller, policy).await?;
        if !policy.names(caller) {
            return Err(denied(
                DeniedOn::Caller,
                format!("no policy rule names caller '{caller}'"),
            ));
        }
        Ok(())
    }

    /// A grant's use so far.
    async fn grant_used(&self, id: GrantId) -> Result<u64, VaultError> {
        self.store
            .counter(&grant_counter(id))
            .await
            .map(|c| c.map_or(0, |c| c.count))
            .map_err(|e| store_failed(&e, "reading a grant's use"))
    }

    /// The grant `id` as stored (its decisions, not its use).
    async fn read_grant(&self, id: GrantId) -> Result<Grant, VaultError> {
        self.store
            .grant(id)
            .await
            .map_err(|e| store_failed(&e, "reading a grant"))?
            .ok_or_else(|| VaultError::NotFound(format!("no grant {id}")))
    }

    /// The grant `id` with its use and state at `now`.
    async fn load_grant(&self, id: GrantId, now: u64) -> Result<GrantView, VaultError> {
        let grant = self.read_grant(id).await?;
        let used = self.grant_used(id).await?;
        let state = grant.state(now, used);
        Ok(GrantView { grant, used, state })
    }

    /// Requests a grant (pending until approved). Audited `grant.request`.
    pub async fn request_grant(
        &self,
        call: impl Into<Call>,
        request: GrantRequest,
    ) -> Result<GrantView, VaultError> {
        let call = call.into();
        let mut event = call.event("grant.request");
        let result = self.request_grant_audited(&call, &mut event, request).await;
        if let Ok(view) = &result {
            describe(&mut event, view);
            event.details.insert(
                "grant_tokens".into(),
                view.grant
                    .tokens
                    .iter()
                    .map(|t| serde_json::Value::from(t.clone()))
                    .collect::<Vec<_>>()
                    .into(),
            );
            event
                .details
                .insert("grant_reason".into(), view.grant.reason.clone().into());
        }
        self.record_call(event, result).await
    }

    async fn request_grant_audited(
        &self,
        call: &Call,
        event: &mut Event,
        r: GrantRequest,
    ) -> Result<GrantView, VaultError> {
        let caller = call.caller()?;
        let policy = self.policy_for_call().await;
        self.admit_to_grants(caller, &policy).await?;
        let workflow = if r.caller.is_empty() {
            caller.clone()
        } else {
            CallerId::parse(&r.caller).map_err(|e| invalid("caller", e.to_string()))?
        };
        event
            .details
            .insert("grant_caller".into(), workflow.to_string().into());
        if workflow != *caller && !policy.administers_grants(caller) {
            return Err(denied(
                DeniedOn::Action,
                format!(
                    "caller '{caller}' may request grants only for itself (requesting one for \
                     '{workflow}' needs a grants rule)"
                ),
            ));
        }
        let kinds = r.kinds.map_err(|reason| invalid("kinds", reason))?;
        if kinds.is_empty() {
            return Err(invalid("kinds", "must name at least one field kind"));
        }
        for (i, k) in kinds.iter().enumerate() {
            if kinds[..i].contains(k) {
                return Err(invalid("kinds", format!("names '{k}' twice")));
            }
        }
        let purpose = Purpose::parse(&r.purpose).map_err(|e| {
            invalid(
                "purpose",
                format!("{e}; a grant is for the one purpose its reveals declare"),
            )
        })?;
        let limits = self.settings.grants;
        if r.max_reveals == 0 {
            return Err(invalid("max_reveals", "must be at least 1"));
        }
        if r.max_reveals > limits.max_reveals {
            return Err(invalid(
                "max_reveals",
                format!(
                    "is {}, over this server's ceiling of {} ([grants] max_reveals)",
                    r.max_reveals, limits.max_reveals
                ),
            ));
        }
        let valid_for = match r.valid_for {
            None => return Err(invalid("valid_for", "is required (e.g. 24h)")),
            Some(Err(why)) => return Err(invalid("valid_for", why)),
            Some(Ok(d)) => d,
        };
        let valid_for_ms = u64::try_from(valid_for.as_millis()).unwrap_or(u64::MAX);
        if valid_for_ms == 0 {
            return Err(invalid("valid_for", "must be at least one millisecond"));
        }
        if valid_for > std::time::Duration::from_millis(limits.max_valid_for_ms) {
            return Err(invalid(
                "valid_for",
                format!(
                    "is {}, over this server's maximum of {} ([grants] max_valid_for)",
                    crate::domain::time::format_duration(valid_for),
                    crate::domain::time::format_duration(std::time::Duration::from_millis(
                        limits.max_valid_for_ms
                    ))
                ),
            ));
        }
        let reason = Justification::parse(&r.reason)
            .map_err(|e| invalid("reason", e.to_string()))?
            .as_str()
            .to_owned();
        if reason.trim().is_empty() {
            return Err(invalid(
                "reason",
                "is required: say why (a ticket, a batch); approvers read it",
            ));
        }
        // Kept in the form the vault writes, so that a reveal compares
        // like with like.
        let ring = self.keyring();
        let mut tokens: Vec<String> = Vec::with_capacity(r.tokens.len());
        for (i, t) in r.tokens.iter().enumerate() {
            let field = "tokens";
            let token = t
                .parse::<TokenId>()
                .ok()
                .filter(|token| {
                    ring.record_of(token)
                        .is_some_and(|id| self.store.knows_epoch(id.epoch))
                })
                .ok_or_else(|| {
                    invalid(
                        field,
                        format!("tokens[{i}] is not a token this vault issued"),
                    )
                })?
                .to_string();
            if tokens.contains(&token) {
                return Err(invalid(field, format!("tokens[{i}] is listed twice")));
            }
            tokens.push(token);
        }
        let rule = policy
            .grant_rule_for(&workflow, &kinds, &purpose)
            .map_err(|(field, reason)| invalid(field, reason))?;
        let spec = rule.grant.clone().ok_or_else(|| {
            VaultError::Unavailable("internal error: a grant rule without its terms".into())
        })?;
        let now = now_unix_ms();
        let all = self
            .store
            .grants()
            .await
            .map_err(|e| store_failed(&e, "listing grants"))?;
        let pending = all
            .iter()
            .filter(|g| g.caller == workflow.as_str() && g.state(now, 0) == GrantState::Pending)
            .count();
        if pending >= limits.max_pending {
            return Err(VaultError::FailedPrecondition(format!(
                "caller '{workflow}' has {pending} pending grants, the most this server keeps \
                 ([grants] max_pending); approve, reject or revoke some first"
            )));
        }
        self.audit_ready()?;
        // Requests per workflow and day, counted durably (an ended grant
        // stays stored: this bounds how fast requests grow the store).
        let day = crate::domain::policy::window_start(now, 86_400_000);
        let charge = crate::store::Charge {
            counter: format!("gr\u{1f}{workflow}"),
            window_start_ms: day,
            amount: 1,
            limit: Some(limits.max_requests_per_day),
        };
        match self.store.charge(vec![charge]).await {
            Ok(crate::store::Charged::Added(_)) => {}
            Ok(crate::store::Charged::Over { count, .. }) => {
                let resets = day.saturating_add(86_400_000);
                return Err(VaultError::LimitReached {
                    message: format!(
                        "caller '{workflow}' was requested {count} grants today, the most this \
                         server takes ([grants] max_requests_per_day); nothing was stored; it \
                         resets at {}",
                        crate::domain::time::rfc3339(resets)
                    ),
                    resets_at_unix_ms: resets,
                });
            }
            Err(e) => return Err(store_failed(&e, "counting grant requests")),
        }
        let grant = Grant {
            id: GrantId::new(),
            revision: 0,
            caller: workflow.to_string(),
            requested_by: caller.to_string(),
            kinds,
            purpose,
            max_reveals: r.max_reveals,
            created_unix_ms: now,
            expires_unix_ms: now.saturating_add(valid_for_ms),
            reason,
            tokens,
            rule: rule.name.clone(),
            reveal: rule.reveal.unwrap_or(RevealLevel::None),
            approvals_required: spec.approvals,
            approvers: spec.approvers,
            approvals: Vec::new(),
            decided: Decided::Pending,
        };
        match self.store.put_grant(grant.clone(), None).await {
            Ok(_) => {}
            Err(e) => return Err(store_failed(&e, "storing a grant")),
        }
        tracing::info!(grant = %grant.id, caller = grant.caller.as_str(), requested_by = grant.requested_by.as_str(), "grant requested");
        Ok(GrantView {
            grant: Grant {
                revision: 1,
                ..grant
            },
            used: 0,
            state: GrantState::Pending,
        })
    }

    /// Changes a grant by compare-and-set, trying again when another
    /// change came first: `change` checks the grant as stored now and
    /// changes it (or refuses).
    async fn change_grant(
        &self,
        call: &Call,
        event: &mut Event,
        id: &str,
        change: impl Fn(&Policy, &CallerId, &mut GrantView, u64) -> Result<(), VaultError>,
    ) -> Result<GrantView, VaultError> {
        let caller = call.caller()?;
        let policy = self.policy_for_call().await;
        self.admit_to_grants(caller, &policy).await?;
        let id = parse_id(id)?;
        event.details.insert("grant".into(), id.to_string().into());
        for _ in 0..RETRIES {
            let now = now_unix_ms();
            let mut view = self.load_grant(id, now).await?;
            // A grant the caller may not see is answered as one that does
            // not exist.
            if !may_see(&policy, caller, &view.grant) {
                return Err(VaultError::NotFound(format!("no grant {id}")));
            }
            describe(event, &view);
            let revision = view.grant.revision;
            change(&policy, caller, &mut view, now)?;
            self.audit_ready()?;
            match self
                .store
                .put_grant(view.grant.clone(), Some(revision))
                .await
            {
                Ok(true) => {
                    view.grant.revision = revision + 1;
                    view.state = view.grant.state(now, view.used);
                    describe(event, &view);
                    return Ok(view);
                }
                Ok(false) => continue,
                Err(e) => return Err(store_failed(&e, "storing a grant")),
            }
        }
        Err(VaultError::Unavailable(format!(
            "grant {id} kept changing while this call tried to change it; nothing changed, try \
             again"
        )))
    }

    /// Approves a grant (active once it has its rule's number of distinct
    /// approvals). Audited `grant.approve`.
    pub async fn approve_grant(
        &self,
        call: impl Into<Call>,
        id: &str,
    ) -> Result<GrantView, VaultError> {
        let call = call.into();
        let mut event = call.event("grant.approve");
        let result = self
            .change_grant(&call, &mut event, id, |policy, caller, view, now| {
                let g = &view.grant;
                if !may_approve(policy, caller, g) {
                    return Err(not_an_approver(caller, g, "approve"));
                }
                if let Some(a) = g.approvals.iter().find(|a| a.by == caller.as_str()) {
                    return Err(VaultError::FailedPrecondition(format!(
                        "caller '{caller}' approved grant {} already (at {}); it needs {} \
                         distinct approvals and has {}",
                        g.id,
                        crate::domain::time::rfc3339(a.at_unix_ms),
                        g.approvals_required,
                        g.approvals.len()
                    )));
                }
                if view.state != GrantState::Pending {
                    return Err(in_state(view, "only a pending grant is approved"));
                }
                view.grant.approvals.push(Approval {
                    by: caller.to_string(),
                    at_unix_ms: now,
                });
                // Only approvals the policy in force still allows count
                // (one it no longer allows is dropped; the trail keeps its
                // event), and a rule that asks more approvals now asks
                // them of this grant too.
                let g = view.grant.clone();
                view.grant.approvals.retain(|a| {
                    CallerId::parse(&a.by).is_ok_and(|by| may_approve(policy, &by, &g))
                });
                let needed = policy
                    .rules()
                    .iter()
                    .find(|r| r.name == g.rule)
                    .and_then(|r| r.grant.as_ref())
                    .map_or(g.approvals_required, |t| {
                        t.approvals.max(g.approvals_required)
                    });
                view.grant.approvals_required = needed;
                // What the rule reveals now, if less: approvers approve
                // what the rule says as they approve, never more later.
                if let Some(now_reveals) = policy
                    .rules()
                    .iter()
                    .find(|r| r.name == g.rule)
                    .and_then(|r| r.reveal)
                {
                    view.grant.reveal = view.grant.reveal.min(now_reveals);
                }
                if view.grant.approvals.len() >= needed as usize {
                    view.grant.decided = Decided::Active { since_unix_ms: now };
                }
                Ok(())
            })
            .await;
        if let Ok(view) = &result {
            if view.state == GrantState::Active {
                tracing::info!(grant = %view.grant.id, caller = view.grant.caller.as_str(), "grant approved: active");
            }
        }
        self.record_call(event, result).await
    }

    /// Rejects a pending grant. Audited `grant.reject`.
    pub async fn reject_grant(
        &self,
        call: impl Into<Call>,
        id: &str,
        reason: &str,
    ) -> Result<GrantView, VaultError> {
        self.end_grant(
            call.into(),
            "grant.reject",
            id,
            reason,
            |policy, caller, view| {
                if !may_approve(policy, caller, &view.grant) {
                    return Err(not_an_approver(caller, &view.grant, "reject"));
                }
                if view.state != GrantState::Pending {
                    return Err(in_state(view, "only a pending grant is rejected"));
                }
                Ok(Decided::Rejected)
            },
        )
        .await
    }

    /// Revokes a pending or active grant: the next detokenize naming it is
    /// refused. Audited `grant.revoke`.
    pub async fn revoke_grant(
        &self,
        call: impl Into<Call>,
        id: &str,
        reason: &str,
    ) -> Result<GrantView, VaultError> {
        let result = self
            .end_grant(
                call.into(),
                "grant.revoke",
                id,
                reason,
                |policy, caller, view| {
                    if !may_see(policy, caller, &view.grant) {
                        return Err(denied(
                            DeniedOn::Caller,
                            format!(
                                "caller '{caller}' may not revoke grant {} (its requester, its \
                             workflow, its approvers and callers with a grants rule may)",
                                view.grant.id
                            ),
                        ));
                    }
                    if !matches!(
                        view.state,
                        GrantState::Pending | GrantState::Active | GrantState::Exhausted
                    ) {
                        return Err(in_state(view, "only a pending or active grant is revoked"));
                    }
                    Ok(Decided::Revoked)
                },
            )
            .await;
        if let Ok(view) = &result {
            tracing::info!(grant = %view.grant.id, caller = view.grant.caller.as_str(), "grant revoked");
        }
        result
    }

    /// Ends a grant (`action`: its audit event) with `reason`, once
    /// `check` allows the caller to and says how it ends.
    async fn end_grant(
        &self,
        call: Call,
        action: &str,
        id: &str,
        reason: &str,
        check: impl Fn(&Policy, &CallerId, &GrantView) -> Result<fn(Ended) -> Decided, VaultError>,
    ) -> Result<GrantView, VaultError> {
        let mut event = call.event(action);
        let result = match Justification::parse(reason) {
            Err(e) => Err(invalid("reason", e.to_string())),
            Ok(reason) => {
                // Optional: blanks are none.
                let reason = reason.as_str().trim().to_owned();
                self.change_grant(&call, &mut event, id, |policy, caller, view, now| {
                    let end = check(policy, caller, view)?;
                    view.grant.decided = end(Ended {
                        by: caller.to_string(),
                        at_unix_ms: now,
                        reason: reason.clone(),
                    });
                    Ok(())
                })
                .await
            }
        };
        self.record_call(event, result).await
    }

    /// One grant, with its use. Audited `grant.get`.
    pub async fn get_grant(
        &self,
        call: impl Into<Call>,
        id: &str,
    ) -> Result<GrantView, VaultError> {
        let call = call.into();
        let mut event = call.event("grant.get");
        let result = async {
            let caller = call.caller()?;
            let policy = self.policy_for_call().await;
            self.admit_to_grants(caller, &policy).await?;
            let id = parse_id(id)?;
            event.details.insert("grant".into(), id.to_string().into());
            let view = self.load_grant(id, now_unix_ms()).await?;
            // Answered as a grant that does not exist.
            if !may_see(&policy, caller, &view.grant) {
                return Err(VaultError::NotFound(format!("no grant {id}")));
            }
            describe(&mut event, &view);
            Ok(view)
        }
        .await;
        self.record_call(event, result).await
    }

    /// The grants the caller may see, newest first, filtered. Audited
    /// `grant.list`.
    pub async fn list_grants(
        &self,
        call: impl Into<Call>,
        state: Result<Option<GrantState>, String>,
        of_caller: &str,
        limit: u32,
    ) -> Result<Vec<GrantView>, VaultError> {
        let call = call.into();
        let mut event = call.event("grant.list");
        let result = async {
            let caller = call.caller()?;
            let policy = self.policy_for_call().await;
            self.admit_to_grants(caller, &policy).await?;
            let state = state.map_err(|reason| invalid("state", reason))?;
            if limit > MAX_LIST_GRANTS {
                return Err(invalid(
                    "limit",
                    format!("is {limit}; at most {MAX_LIST_GRANTS}"),
                ));
            }
            let limit = if limit == 0 {
                DEFAULT_LIST_GRANTS
            } else {
                limit
            };
            let of_caller = if of_caller.is_empty() {
                None
            } else {
                Some(CallerId::parse(of_caller).map_err(|e| invalid("caller", e.to_string()))?)
            };
            let grants = self
                .store
                .grants()
                .await
                .map_err(|e| store_failed(&e, "listing grants"))?;
            let counters = self
                .store
                .counters()
                .await
                .map_err(|e| store_failed(&e, "reading grants' use"))?;
            let used: std::collections::HashMap<&str, u64> = counters
                .iter()
                .map(|c| (c.counter.as_str(), c.count))
                .collect();
            let now = now_unix_ms();
            let mut views: Vec<GrantView> = grants
                .into_iter()
                .filter(|g| may_see(&policy, caller, g))
                .filter(|g| of_caller.as_ref().is_none_or(|c| g.caller == c.as_str()))
                .map(|grant| {
                    let used = used
                        .get(grant_counter(grant.id).as_str())
                        .copied()
                        .unwrap_or(0);
                    let state = grant.state(now, used);
                    GrantView { grant, used, state }
                })
                .filter(|v| state.is_none_or(|s| v.state == s))
                .collect();
            views.sort_by(|a, b| {
                b.grant
                    .created_unix_ms
                    .cmp(&a.grant.created_unix_ms)
                    .then(b.grant.id.cmp(&a.grant.id))
            });
            views.truncate(limit as usize);
            event.details.insert("grants".into(), views.len().into());
            Ok(views)
        }
        .await;
        self.record_call(event, result).await
    }

    /// The grant a detokenize names, if it may use it now: its own, for the
    /// call's purpose, active (not pending, rejected, revoked, expired or
    /// exhausted). The event names it, its requester and approvers.
    pub(super) async fn usable_grant(
        &self,
        caller: &CallerId,
        policy: &Policy,
        purpose: &Purpose,
        grant_id: &str,
        event: &mut Event,
    ) -> Result<GrantView, VaultError> {
        let id = parse_id(grant_id)?;
        event.details.insert("grant".into(), id.to_string().into());
        // The policy first: a caller no rule requiring a grant names learns
        // nothing about grants (not even whether this one exists).
        let grant_rules = policy.rules().iter().any(|r| {
            r.action == crate::domain::policy::Action::Detokenize
                && r.requires_grant()
                && r.callers.iter().any(|c| c == caller.as_str())
        });
        if !grant_rules {
            return Err(denied(
                DeniedOn::Grant,
                format!(
                    "no policy rule that requires a grant names caller '{caller}'; a grant_id \
                     is for workflows whose rules require one"
                ),
            ));
        }
        let view = self.load_grant(id, now_unix_ms()).await?;
        let g = &view.grant;
        for (key, value) in [
            ("grant_requested_by", g.requested_by.clone().into()),
            (
                "grant_approvers",
                g.approvals
                    .iter()
                    .map(|a| serde_json::Value::from(a.by.clone()))
                    .collect::<Vec<_>>()
                    .into(),
            ),
        ] {
            event.details.insert(key.into(), value);
        }
        // Another workflow's grant is answered as one that does not exist.
        if g.caller != caller.as_str() {
            return Err(VaultError::NotFound(format!("no grant {id}")));
        }
        if g.purpose != *purpose {
            return Err(denied(
                DeniedOn::Purpose,
                format!(
                    "grant {id} is for purpose '{}'; this call declares '{purpose}'",
                    g.purpose
                ),
            ));
        }
        if view.state != GrantState::Active {
            return Err(in_state(&view, "nothing was revealed"));
        }
        Ok(view)
    }

    /// After its units are charged: whether the grant is still active (a
    /// revocation stored meanwhile, or its deadline, stops the call; the
    /// units it took stay spent, which never lets more values out).
    /// Its decisions only: the call's own charge already kept its use
    /// within bounds, so the count is not read again.
    pub(super) async fn grant_still_active(&self, id: GrantId) -> Result<(), VaultError> {
        let now = now_unix_ms();
        let grant = self.read_grant(id).await?;
        let state = grant.state(now, 0);
        if state == GrantState::Active {
            return Ok(());
        }
        let view = GrantView {
            grant,
            used: 0,
            state,
        };
        Err(in_state(
            &view,
            "it changed while this call ran; nothing was revealed",
        ))
    }
}
