//! `fieldvault.v1.Grants`: approved-workflow grants on the wire. The vault
//! checks who may do what, the arguments and the grant's state, and audits
//! every call; this layer converts between protobuf and vault types.

use super::error::call_status;
use super::pb;
use super::service::{answer, call_of, kind_from_pb, kind_to_pb, reveal_to_pb, ttl_from_pb};
use crate::domain::grant::{Decided, GrantState};
use crate::vault::{GrantRequest, GrantView, ItemError, Vault};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// `fieldvault.v1.Grants` over a [`Vault`].
#[derive(Clone)]
pub struct GrantsService {
    vault: Arc<Vault>,
}

impl GrantsService {
    pub fn new(vault: Arc<Vault>) -> Self {
        Self { vault }
    }

    pub fn into_server(self) -> pb::grants_server::GrantsServer<Self> {
        pb::grants_server::GrantsServer::new(self)
    }
}

pub(crate) fn state_to_pb(state: GrantState) -> pb::GrantState {
    match state {
        GrantState::Pending => pb::GrantState::Pending,
        GrantState::Active => pb::GrantState::Active,
        GrantState::Rejected => pb::GrantState::Rejected,
        GrantState::Revoked => pb::GrantState::Revoked,
        GrantState::Expired => pb::GrantState::Expired,
        GrantState::Exhausted => pb::GrantState::Exhausted,
    }
}

/// A filter's state (`None`: any), or why it is no state.
fn state_from_pb(state: i32) -> Result<Option<GrantState>, String> {
    Ok(match pb::GrantState::try_from(state) {
        Ok(pb::GrantState::Unspecified) => None,
        Ok(pb::GrantState::Pending) => Some(GrantState::Pending),
        Ok(pb::GrantState::Active) => Some(GrantState::Active),
        Ok(pb::GrantState::Rejected) => Some(GrantState::Rejected),
        Ok(pb::GrantState::Revoked) => Some(GrantState::Revoked),
        Ok(pb::GrantState::Expired) => Some(GrantState::Expired),
        Ok(pb::GrantState::Exhausted) => Some(GrantState::Exhausted),
        Err(_) => return Err(format!("is {state}, not a grant state")),
    })
}

/// The wire form of a grant; `with_tokens: false` leaves its token list
/// out (ListGrants).
fn grant_to_pb(v: &GrantView, with_tokens: bool) -> pb::Grant {
    let g = &v.grant;
    let (ended_by, ended_unix_ms, end_reason) = match &g.decided {
        Decided::Rejected(e) | Decided::Revoked(e) => {
            (e.by.clone(), e.at_unix_ms, e.reason.clone())
        }
        Decided::Pending | Decided::Active { .. } => (String::new(), 0, String::new()),
    };
    let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    pb::Grant {
        grant_id: g.id.to_string(),
        state: state_to_pb(v.state).into(),
        caller: g.caller.clone(),
        requested_by: g.requested_by.clone(),
        kinds: g.kinds.iter().map(|k| kind_to_pb(*k).into()).collect(),
        purpose: g.purpose.to_string(),
        max_reveals: g.max_reveals,
        used: clamp(v.used),
        remaining: clamp(v.remaining()),
        created_unix_ms: g.created_unix_ms,
        expires_unix_ms: g.expires_unix_ms,
        reason: g.reason.clone(),
        tokens: if with_tokens {
            g.tokens.clone()
        } else {
            Vec::new()
        },
        rule: g.rule.clone(),
        approvals_required: g.approvals_required,
        approvers: g.approvers.clone(),
        approvals: g
            .approvals
            .iter()
            .map(|a| pb::GrantApproval {
                approver: a.by.clone(),
                approved_unix_ms: a.at_unix_ms,
            })
            .collect(),
        activated_unix_ms: match g.decided {
            Decided::Active { since_unix_ms } => since_unix_ms,
            _ => 0,
        },
        ended_by,
        ended_unix_ms,
        end_reason,
        reveal: reveal_to_pb(g.reveal).into(),
    }
}

/// A request's field kinds, or why one is not a kind (naming `kinds[i]`).
fn kinds_from_pb(kinds: &[i32]) -> Result<Vec<crate::domain::FieldKind>, String> {
    kinds
        .iter()
        .enumerate()
        .map(|(i, k)| {
            kind_from_pb(*k).map_err(|e| match e {
                ItemError::InvalidArgument { reason, .. } => format!("kinds[{i}] {reason}"),
                other => format!("kinds[{i}]: {other}"),
            })
        })
        .collect()
}

/// `valid_for`: `None` when absent; a reason when it is not a positive
/// duration.
fn valid_for_from_pb(
    d: Option<prost_types::Duration>,
) -> Option<Result<std::time::Duration, String>> {
    let d = d?;
    if d.seconds < 0 || d.nanos < 0 || (d.seconds == 0 && d.nanos == 0) {
        return Some(Err(
            "must be more than zero (how long the grant lasts from now)".into(),
        ));
    }
    Some(ttl_from_pb(d).map_err(|e| match e {
        ItemError::InvalidArgument { reason, .. } => reason,
        other => other.to_string(),
    }))
}

#[tonic::async_trait]
impl pb::grants_server::Grants for GrantsService {
    async fn request_grant(
        &self,
        request: Request<pb::RequestGrantRequest>,
    ) -> Result<Response<pb::RequestGrantResponse>, Status> {
        let call = call_of(&request);
        let r = request.into_inner();
        let kinds = kinds_from_pb(&r.kinds);
        let result = self
            .vault
            .request_grant(
                call.clone(),
                GrantRequest {
                    caller: r.caller,
                    kinds,
                    purpose: r.purpose,
                    max_reveals: r.max_reveals,
                    valid_for: valid_for_from_pb(r.valid_for),
                    reason: r.reason,
                    tokens: r.tokens,
                },
            )
            .await;
        answer(
            &call,
            result
                .map(|v| pb::RequestGrantResponse {
                    grant: Some(grant_to_pb(&v, true)),
                })
                .map_err(call_status),
        )
    }

    async fn approve_grant(
        &self,
        request: Request<pb::ApproveGrantRequest>,
    ) -> Result<Response<pb::ApproveGrantResponse>, Status> {
        let call = call_of(&request);
        let result = self
            .vault
            .approve_grant(call.clone(), &request.get_ref().grant_id)
            .await;
        answer(
            &call,
            result
                .map(|v| pb::ApproveGrantResponse {
                    grant: Some(grant_to_pb(&v, true)),
                })
                .map_err(call_status),
        )
    }

    async fn reject_grant(
        &self,
        request: Request<pb::RejectGrantRequest>,
    ) -> Result<Response<pb::RejectGrantResponse>, Status> {
        let call = call_of(&request);
        let r = request.get_ref();
        let result = self
            .vault
            .reject_grant(call.clone(), &r.grant_id, &r.reason)
            .await;
        answer(
            &call,
            result
                .map(|v| pb::RejectGrantResponse {
                    grant: Some(grant_to_pb(&v, true)),
                })
                .map_err(call_status),
        )
    }

    async fn revoke_grant(
        &self,
        request: Request<pb::RevokeGrantRequest>,
    ) -> Result<Response<pb::RevokeGrantResponse>, Status> {
        let call = call_of(&request);
        let r = request.get_ref();
        let result = self
            .vault
            .revoke_grant(call.clone(), &r.grant_id, &r.reason)
            .await;
        answer(
            &call,
            result
                .map(|v| pb::RevokeGrantResponse {
                    grant: Some(grant_to_pb(&v, true)),
                })
                .map_err(call_status),
        )
    }

    async fn list_grants(
        &self,
        request: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::ListGrantsResponse>, Status> {
        let call = call_of(&request);
        let r = request.get_ref();
        let result = self
            .vault
            .list_grants(call.clone(), state_from_pb(r.state), &r.caller, r.limit)
            .await;
        answer(
            &call,
            result
                .map(|views| pb::ListGrantsResponse {
                    grants: views.iter().map(|v| grant_to_pb(v, false)).collect(),
                })
                .map_err(call_status),
        )
    }

    async fn get_grant(
        &self,
        request: Request<pb::GetGrantRequest>,
    ) -> Result<Response<pb::GetGrantResponse>, Status> {
        let call = call_of(&request);
        let result = self
            .vault
            .get_grant(call.clone(), &request.get_ref().grant_id)
            .await;
        answer(
            &call,
            result
                .map(|v| pb::GetGrantResponse {
                    grant: Some(grant_to_pb(&v, true)),
                })
                .map_err(call_status),
        )
    }
}
