//! The Admin service's use cases (policy action `admin`): who is frozen and
//! how much of their quotas callers used, freezing and unfreezing, canary
//! tokens. Every call is audited (`admin.<op>`), allowed or refused.

use super::guard::{parse_quota_counter, FreezeTrigger};
use super::{Call, Vault, VaultError};
use crate::audit::now_unix_ms;
use crate::domain::policy::{Action, Policy, Quota};
use crate::domain::{CallerId, FieldKind, TokenId};
use crate::store::{Canary, Freeze};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The most canaries one call creates.
pub const MAX_CANARIES_PER_CALL: u32 = 1000;

/// The longest reason an operator may give for a freeze.
pub const MAX_FREEZE_REASON: usize = 200;

/// A caller as the Admin service lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallerStatus {
    pub caller: String,
    pub frozen: Option<Freeze>,
    pub denied: bool,
    pub quotas: Vec<QuotaUse>,
}

/// One quota of a rule naming a caller, with its use in the current window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaUse {
    pub rule: String,
    pub quota: Quota,
    pub used: u64,
    pub resets_unix_ms: u64,
}

fn identity(caller: &str) -> Result<CallerId, VaultError> {
    CallerId::parse(caller).map_err(|e| VaultError::InvalidArgument {
        field: "caller",
        reason: if caller.is_empty() {
            "must name a caller (a SPIFFE ID or a certificate common name)".into()
        } else {
            format!("is neither a SPIFFE ID nor a common name: {e}")
        },
    })
}

fn freeze_reason(reason: &str) -> Result<String, VaultError> {
    let bad = |why: &str| VaultError::InvalidArgument {
        field: "reason",
        reason: why.into(),
    };
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(bad("must say why the caller is frozen"));
    }
    if reason.chars().count() > MAX_FREEZE_REASON {
        return Err(bad("is longer than 200 characters"));
    }
    // It is written to the log's alert line and the audit trail as it is:
    // nothing in it may change how those lines read.
    if reason.chars().any(crate::domain::breaks_a_line) {
        return Err(bad(
            "must not hold control, format or line-separator characters",
        ));
    }
    Ok(reason.to_owned())
}

impl Vault {
    /// The caller of `call` may use the Admin service (policy action
    /// `admin`), checked before any argument.
    async fn admin_allowed(&self, call: &Call, changes: bool) -> Result<Arc<Policy>, VaultError> {
        let caller = call.caller()?;
        let policy = self.policy_for_call().await;
        self.admit(caller, &policy).await?;
        policy
            .check_call(caller, Action::Admin, None, None)
            .map_err(VaultError::PermissionDenied)?;
        if changes {
            self.audit_ready()?;
        }
        Ok(policy)
    }

    async fn admin_done<T>(
        &self,
        call: &Call,
        op: &str,
        details: Vec<(&'static str, serde_json::Value)>,
        result: Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        let mut event = call.event(&format!("admin.{op}"));
        for (name, value) in details {
            event.details.insert(name.into(), value);
        }
        match &result {
            Ok(_) => tracing::info!(request_id = %call.request_id, op, "admin call done"),
            Err(e) => {
                // Quoted: the message may hold a caller's common name.
                tracing::info!(request_id = %call.request_id, op, error = ?e.to_string(), "admin call refused")
            }
        }
        self.record_call(event, result).await
    }

    /// Every caller the policy names, or that is frozen or has a quota
    /// count, with its freeze and its quota use now; in caller order.
    pub async fn list_callers(
        &self,
        call: impl Into<Call>,
    ) -> Result<Vec<CallerStatus>, VaultError> {
        let call = call.into();
        let result = async {
            let policy = self.admin_allowed(&call, false).await?;
            let failed = |e: crate::store::StoreError| {
                tracing::error!(error = %e, "reading callers' state failed");
                super::unavailable(&e, "nothing was listed")
            };
            let freezes = self.store.freezes().await.map_err(failed)?;
            let counters = self.store.counters().await.map_err(failed)?;
            let now = now_unix_ms();
            let mut by_caller: BTreeMap<String, CallerStatus> = BTreeMap::new();
            let status = |caller: &str| CallerStatus {
                caller: caller.to_owned(),
                frozen: None,
                denied: policy.deny_list().iter().any(|d| d == caller),
                quotas: Vec::new(),
            };
            for c in policy.identities() {
                by_caller.entry(c.clone()).or_insert_with(|| status(&c));
            }
            for f in freezes {
                let caller = f.caller.clone();
                by_caller
                    .entry(caller.clone())
                    .or_insert_with(|| status(&caller))
                    .frozen = Some(f);
            }
            let counts: HashMap<&str, (u64, u64)> = counters
                .iter()
                .map(|c| (c.counter.as_str(), (c.window_start_ms, c.count)))
                .collect();
            for c in &counters {
                if let Some((caller, _, _)) = parse_quota_counter(&c.counter) {
                    by_caller
                        .entry(caller.to_owned())
                        .or_insert_with(|| status(caller));
                }
            }
            for (name, s) in by_caller.iter_mut() {
                let Ok(id) = identity(name) else { continue };
                for rule in policy
                    .rules()
                    .iter()
                    .filter(|r| r.action == Action::Detokenize && r.callers.contains(name))
                {
                    for q in &rule.quotas {
                        let counter = super::guard::quota_counter(&id, &rule.name, q);
                        let used = match counts.get(counter.as_str()) {
                            Some((start, count)) if *start == q.window_start(now) => *count,
                            _ => 0,
                        };
                        s.quotas.push(QuotaUse {
                            rule: rule.name.clone(),
                            quota: *q,
                            used,
                            resets_unix_ms: q.resets_at(now),
                        });
                    }
                }
            }
            Ok(by_caller.into_values().collect())
        }
        .await;
        self.admin_done(&call, "callers.list", Vec::new(), result)
            .await
    }

    /// Freezes `caller` now (FAILED_PRECONDITION if it is frozen already).
    pub async fn freeze_caller(
        &self,
        call: impl Into<Call>,
        caller: &str,
        reason: &str,
    ) -> Result<Freeze, VaultError> {
        let call = call.into();
        let target = identity(caller).ok().map(|c| c.to_string());
        let result = async {
            self.admin_allowed(&call, true).await?;
            let target = identity(caller)?;
            let reason = freeze_reason(reason)?;
            let by = call.caller()?.to_string();
            if target.as_str() == by {
                // It could not unfreeze itself, nor list who is frozen.
                return Err(VaultError::InvalidArgument {
                    field: "caller",
                    reason: "is the caller's own identity; another admin must freeze it".into(),
                });
            }
            if let Some(f) = self.frozen_now(target.as_str()).await? {
                return Err(already_frozen(&f));
            }
            let freeze = self
                .freeze(&call, target.as_str(), FreezeTrigger::Operator, reason, &by)
                .await?;
            if freeze.by != by {
                // Frozen automatically meanwhile.
                return Err(already_frozen(&freeze));
            }
            Ok(freeze)
        }
        .await;
        let details = vec![("target", serde_json::json!(target))];
        self.admin_done(&call, "callers.freeze", details, result)
            .await
    }

    /// Lifts `caller`'s freeze (FAILED_PRECONDITION if it is not frozen)
    /// and resets its freeze counters.
    pub async fn unfreeze_caller(
        &self,
        call: impl Into<Call>,
        caller: &str,
    ) -> Result<Freeze, VaultError> {
        let call = call.into();
        let target = identity(caller).ok().map(|c| c.to_string());
        let result = async {
            self.admin_allowed(&call, true).await?;
            let target = identity(caller)?;
            if self.frozen_now(target.as_str()).await?.is_none() {
                return Err(VaultError::FailedPrecondition(format!(
                    "caller '{target}' is not frozen"
                )));
            }
            // Its trigger counts start again from zero before it can call
            // again (while it is frozen no call of it counts), so what froze
            // it does not freeze it again at once.
            self.reset_freeze_counters(&target).await?;
            let lifted = self.store.unfreeze(target.as_str()).await.map_err(|e| {
                tracing::error!(error = %e, "unfreezing a caller failed");
                super::unavailable(&e, "nothing changed")
            })?;
            let lifted = lifted.ok_or_else(|| {
                VaultError::FailedPrecondition(format!("caller '{target}' is not frozen"))
            })?;
            tracing::info!(caller = ?target.as_str(), by = ?call.caller()?.as_str(), "caller unfrozen");
            Ok(lifted)
        }
        .await;
        let details = vec![("target", serde_json::json!(target))];
        self.admin_done(&call, "callers.unfreeze", details, result)
            .await
    }

    async fn frozen_now(&self, caller: &str) -> Result<Option<Freeze>, VaultError> {
        self.store.frozen(caller).await.map_err(|e| {
            tracing::error!(error = %e, "reading a caller's freeze failed");
            super::unavailable(&e, "nothing changed")
        })
    }

    /// Creates `count` canary tokens for `kind` (1 to 1000; 0 means 1).
    pub async fn create_canaries(
        &self,
        call: impl Into<Call>,
        kind: Result<FieldKind, String>,
        count: u32,
    ) -> Result<Vec<TokenId>, VaultError> {
        let call = call.into();
        let audited_kind = kind.as_ref().ok().map(|k| k.as_str());
        let result = async {
            self.admin_allowed(&call, true).await?;
            let kind = kind.clone().map_err(|reason| VaultError::InvalidArgument {
                field: "kind",
                reason,
            })?;
            let count = count.max(1);
            if count > MAX_CANARIES_PER_CALL {
                return Err(VaultError::InvalidArgument {
                    field: "count",
                    reason: format!(
                        "{count} is more than the {MAX_CANARIES_PER_CALL} canaries one call \
                         creates"
                    ),
                });
            }
            let by = call.caller()?.to_string();
            let failed = |e: crate::store::StoreError| {
                tracing::error!(error = %e, "storing canaries failed");
                super::unavailable(&e, "no canary was created")
            };
            let ids = self.store.allocate(count as usize).await.map_err(failed)?;
            let now = now_unix_ms();
            let canaries = ids
                .iter()
                .map(|id| Canary {
                    id: *id,
                    kind,
                    created_unix_ms: now,
                    by: by.clone(),
                })
                .collect();
            self.store.add_canaries(canaries).await.map_err(failed)?;
            let ring = self.keyring();
            Ok(ids.iter().map(|id| ring.token_of(*id)).collect())
        }
        .await;
        let details = vec![
            ("kind", serde_json::json!(audited_kind)),
            ("count", serde_json::json!(count.max(1))),
        ];
        self.admin_done(&call, "canary.create", details, result)
            .await
    }

    /// Every canary, with its token, in creation order.
    pub async fn list_canaries(
        &self,
        call: impl Into<Call>,
    ) -> Result<Vec<(TokenId, Canary)>, VaultError> {
        let call = call.into();
        let result = async {
            self.admin_allowed(&call, false).await?;
            let canaries = self.store.canaries().await.map_err(|e| {
                tracing::error!(error = %e, "reading canaries failed");
                super::unavailable(&e, "nothing was listed")
            })?;
            let ring = self.keyring();
            Ok(canaries
                .into_iter()
                .map(|c| (ring.token_of(c.id), c))
                .collect())
        }
        .await;
        self.admin_done(&call, "canary.list", Vec::new(), result)
            .await
    }
}

fn already_frozen(f: &Freeze) -> VaultError {
    VaultError::FailedPrecondition(format!(
        "caller '{}' is frozen already (since {}, by {}, reason: {})",
        f.caller,
        crate::domain::time::rfc3339(f.since_unix_ms),
        f.by,
        f.reason
    ))
}
