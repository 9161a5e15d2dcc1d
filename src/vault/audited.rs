//! One audit event per call, whatever its outcome: who called (or why the
//! certificate proved no one), the request id, what was asked, what was
//! decided, by which rule, and why. Calls refused for their identity or
//! their arguments are audited like any other.
//!
//! A call that reveals values or changes keys is answered only once its
//! event is durable; when the trail cannot take it the call fails with
//! UNAVAILABLE and nothing is revealed. A refusal is answered as a refusal
//! even when its event could not be written (it is logged instead).

use super::{Vault, VaultError};
use crate::audit::event::{Decision, Event};
use crate::domain::CallerId;
use std::sync::Arc;

/// Who made a call and its request id: what the call's audit event starts
/// from. Made at the edge (the gRPC layer) for every request.
#[derive(Clone, Debug)]
pub struct Call {
    pub request_id: String,
    /// The identity the client certificate proved, or why it proved none.
    pub caller: Result<Arc<CallerId>, String>,
}

/// A new request id (a random UUID).
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Call {
    pub fn new(request_id: String, caller: Result<Arc<CallerId>, String>) -> Self {
        Self { request_id, caller }
    }

    /// The proven caller; UNAUTHENTICATED when the certificate named none.
    pub(super) fn caller(&self) -> Result<&CallerId, VaultError> {
        self.caller
            .as_deref()
            .map_err(|why| VaultError::Unauthenticated(why.clone()))
    }

    /// An event of `action` for this call.
    pub(super) fn event(&self, action: &str) -> Event {
        let mut event = Event::new(action);
        event.request_id = Some(self.request_id.clone());
        event.caller = self.caller.as_ref().ok().map(|c| c.to_string());
        event
    }
}

/// A call by `caller` with a new request id (the vault's own callers: its
/// scheduler, tests).
impl From<&CallerId> for Call {
    fn from(caller: &CallerId) -> Self {
        Self::new(new_request_id(), Ok(Arc::new(caller.clone())))
    }
}

impl VaultError {
    /// How the audit trail files this refusal, and its status code.
    pub(super) fn decision(&self) -> (Decision, &'static str) {
        match self {
            VaultError::InvalidArgument { .. } => (Decision::Rejected, "invalid_argument"),
            VaultError::PermissionDenied(_) => (Decision::Denied, "permission_denied"),
            VaultError::Unauthenticated(_) => (Decision::Denied, "unauthenticated"),
            VaultError::Unavailable(_) => (Decision::Failed, "unavailable"),
            VaultError::NotFound(_) => (Decision::Rejected, "not_found"),
            VaultError::FailedPrecondition(_) => (Decision::Rejected, "failed_precondition"),
            VaultError::Frozen { .. } => (Decision::Denied, "failed_precondition"),
            VaultError::QuotaExceeded { .. } => (Decision::Denied, "resource_exhausted"),
            VaultError::LimitReached { .. } => (Decision::Rejected, "resource_exhausted"),
        }
    }
}

impl Vault {
    /// Records `event` for a call that ended with `result`, and returns
    /// what the caller gets: `result`, or UNAVAILABLE for a success whose
    /// event is not durable.
    pub(super) async fn record_call<T>(
        &self,
        mut event: Event,
        result: Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        if let Err(e) = &result {
            let (decision, code) = e.decision();
            event.decision = decision;
            event.code = code.into();
            event.reason = Some(e.to_string());
        }
        event.settle();
        if crate::metrics::enabled() {
            self.count_decision(&event);
        }
        // While the trail is known to refuse events, a refusal is not held
        // behind it (a hung disk would hold every refused call for the
        // whole deadline): it goes to the server log instead.
        if result.is_err() && self.audit.failure().is_some() {
            self.audit.not_offered();
            metrics::counter!(crate::metrics::AUDIT_FAILURES, "reason" => "not_offered")
                .increment(1);
            self.log_unrecorded(&event);
            return result;
        }
        let recorded = self.audit.record(&event).await;
        match (recorded, result) {
            (Ok(()), result) => result,
            (Err(e), Ok(_)) => {
                // A key operation, a deletion or an erasure took effect:
                // its event (tokens, never a value) is at least in the
                // server log, and the caller is told it happened. A reveal
                // or a tokenize did not (nothing left the vault); the
                // outage is logged once by the trail, not once per call.
                let action = event.action.as_str();
                let grant_change = matches!(
                    action,
                    "grant.request" | "grant.approve" | "grant.reject" | "grant.revoke"
                );
                if action.starts_with("keys.")
                    || matches!(action, "delete" | "erase")
                    || grant_change
                {
                    tracing::error!(error = %e, event = %event.to_json(), "a change took effect but the audit trail did not take its event");
                    return Err(VaultError::Unavailable(format!(
                        "the {} took effect, but the audit trail is unavailable and did not take \
                         its event (the server log has it); nothing is returned",
                        match action {
                            "erase" => "erasure",
                            "delete" => "deletion",
                            _ if grant_change => "grant change",
                            _ => "key operation",
                        }
                    )));
                }
                tracing::debug!(error = %e, "the audit trail did not take this call's event; the call fails");
                Err(VaultError::Unavailable(
                    "the audit trail is unavailable; nothing was revealed or returned".into(),
                ))
            }
            (Err(e), Err(refusal)) => {
                tracing::debug!(error = %e, "the audit trail did not take a refused call's event");
                self.log_unrecorded(&event);
                Err(refusal)
            }
        }
    }

    /// Counts a call's decision (and a batch's items by outcome): caller
    /// identities the policy does not name count as `unknown`; actions and
    /// outcomes are the audit trail's fixed words.
    fn count_decision(&self, event: &Event) {
        use crate::metrics::{caller_label_of, DECISIONS, ITEMS};
        let caller = caller_label_of(&self.policy(), event.caller.as_deref());
        metrics::counter!(
            DECISIONS,
            "caller" => caller,
            "action" => event.action.clone(),
            "outcome" => event.decision.as_str()
        )
        .increment(1);
        if matches!(event.action.as_str(), "tokenize" | "detokenize") {
            for item in &event.items {
                metrics::counter!(
                    ITEMS,
                    "action" => event.action.clone(),
                    "outcome" => if item.outcome.is_empty() {
                        metrics::SharedString::const_str("none")
                    } else {
                        metrics::SharedString::from(item.outcome.clone())
                    }
                )
                .increment(1);
            }
        }
    }

    /// A refused call's event the trail could not take, in the server log
    /// (it holds no value), at most 60 a minute with a count of the rest:
    /// a caller probing while the trail is down still leaves a trace.
    fn log_unrecorded(&self, event: &Event) {
        if let Some(suppressed) = self.unrecorded_log.admit() {
            tracing::warn!(
                event = event.to_json().as_str(),
                not_logged_before = suppressed,
                "a refused call's audit event could not be written (the trail is unavailable)"
            );
        }
    }

    /// UNAVAILABLE while the trail refuses events: a call that would change
    /// or reveal something is refused before it does (and before it waits
    /// for a trail known to be stuck).
    pub(super) fn audit_ready(&self) -> Result<(), VaultError> {
        match self.audit.failure() {
            None => Ok(()),
            Some(why) => Err(VaultError::Unavailable(format!(
                "the audit trail is unavailable ({why}); nothing was done"
            ))),
        }
    }

    /// Records an event of the vault's own (not a call's answer: a
    /// freeze, a policy reload). What it records has happened already, so
    /// an event the trail does not take goes to the server log instead
    /// (it holds no value).
    pub(super) async fn record_happened(&self, mut event: Event) {
        event.settle();
        if let Err(e) = self.audit.record(&event).await {
            tracing::error!(error = %e, event = %event.to_json(), "the audit trail did not take an event of something that happened");
        }
    }

    /// Why the audit trail refuses events now, if it does (health).
    pub fn audit_failure(&self) -> Option<String> {
        self.audit.failure()
    }
}
