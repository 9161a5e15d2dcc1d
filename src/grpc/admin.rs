//! `fieldvault.v1.Admin`: frozen callers, quota use and canary tokens on the
//! wire. The vault checks the policy (action `admin`) and the arguments and
//! audits every call; this layer converts between protobuf and vault types.

use super::error::call_status;
use super::pb;
use super::service::{answer, call_of, kind_from_pb, kind_to_pb};
use crate::store::Freeze;
use crate::vault::{CallerStatus, ItemError, Vault};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// `fieldvault.v1.Admin` over a [`Vault`].
#[derive(Clone)]
pub struct AdminService {
    vault: Arc<Vault>,
}

impl AdminService {
    pub fn new(vault: Arc<Vault>) -> Self {
        Self { vault }
    }

    pub fn into_server(self) -> pb::admin_server::AdminServer<Self> {
        pb::admin_server::AdminServer::new(self)
    }
}

fn freeze_to_pb(f: &Freeze) -> pb::CallerFreeze {
    pb::CallerFreeze {
        since_unix_ms: f.since_unix_ms,
        reason: f.reason.clone(),
        by: f.by.clone(),
    }
}

fn caller_to_pb(c: &CallerStatus) -> pb::CallerStatus {
    pb::CallerStatus {
        caller: c.caller.clone(),
        frozen: c.frozen.as_ref().map(freeze_to_pb),
        denied: c.denied,
        quotas: c
            .quotas
            .iter()
            .map(|q| pb::QuotaUse {
                rule: q.rule.clone(),
                limit: q.quota.limit,
                per: q.quota.per.as_str().to_owned(),
                used: q.used,
                resets_unix_ms: q.resets_unix_ms,
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn list_callers(
        &self,
        request: Request<pb::ListCallersRequest>,
    ) -> Result<Response<pb::ListCallersResponse>, Status> {
        let call = call_of(&request);
        let result = self.vault.list_callers(call.clone()).await;
        answer(
            &call,
            result
                .map(|callers| pb::ListCallersResponse {
                    callers: callers.iter().map(caller_to_pb).collect(),
                })
                .map_err(call_status),
        )
    }

    async fn freeze_caller(
        &self,
        request: Request<pb::FreezeCallerRequest>,
    ) -> Result<Response<pb::FreezeCallerResponse>, Status> {
        let call = call_of(&request);
        let r = request.get_ref();
        let result = self
            .vault
            .freeze_caller(call.clone(), &r.caller, &r.reason)
            .await;
        answer(
            &call,
            result
                .map(|f| pb::FreezeCallerResponse {
                    freeze: Some(freeze_to_pb(&f)),
                })
                .map_err(call_status),
        )
    }

    async fn unfreeze_caller(
        &self,
        request: Request<pb::UnfreezeCallerRequest>,
    ) -> Result<Response<pb::UnfreezeCallerResponse>, Status> {
        let call = call_of(&request);
        let result = self
            .vault
            .unfreeze_caller(call.clone(), &request.get_ref().caller)
            .await;
        answer(
            &call,
            result
                .map(|f| pb::UnfreezeCallerResponse {
                    lifted: Some(freeze_to_pb(&f)),
                })
                .map_err(call_status),
        )
    }

    async fn create_canaries(
        &self,
        request: Request<pb::CreateCanariesRequest>,
    ) -> Result<Response<pb::CreateCanariesResponse>, Status> {
        let call = call_of(&request);
        let r = request.get_ref();
        let kind = kind_from_pb(r.kind).map_err(|e| match e {
            ItemError::InvalidArgument { reason, .. } => reason,
            other => other.to_string(),
        });
        let result = self
            .vault
            .create_canaries(call.clone(), kind, r.count)
            .await;
        answer(
            &call,
            result
                .map(|tokens| pb::CreateCanariesResponse {
                    tokens: tokens.iter().map(ToString::to_string).collect(),
                })
                .map_err(call_status),
        )
    }

    async fn list_canaries(
        &self,
        request: Request<pb::ListCanariesRequest>,
    ) -> Result<Response<pb::ListCanariesResponse>, Status> {
        let call = call_of(&request);
        let result = self.vault.list_canaries(call.clone()).await;
        answer(
            &call,
            result
                .map(|canaries| pb::ListCanariesResponse {
                    canaries: canaries
                        .iter()
                        .map(|(token, c)| pb::Canary {
                            token: token.to_string(),
                            kind: kind_to_pb(c.kind) as i32,
                            created_unix_ms: c.created_unix_ms,
                            created_by: c.by.clone(),
                        })
                        .collect(),
                })
                .map_err(call_status),
        )
    }
}
