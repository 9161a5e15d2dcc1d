//! `fieldvault.v1.KeyAdmin`: the key lifecycle on the wire. The vault
//! checks the policy (action `keys`) and the arguments, and audits every
//! call; this layer reads the caller from the peer certificate and converts
//! between protobuf and vault types.

use super::error::call_status;
use super::pb;
use super::service::{answer, call_of};
use crate::vault::{JobState, JobStatus, KeyState, KeyStatus, KeyVersionStatus, Vault};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// `fieldvault.v1.KeyAdmin` over a [`Vault`].
#[derive(Clone)]
pub struct KeyAdminService {
    vault: Arc<Vault>,
}

impl KeyAdminService {
    pub fn new(vault: Arc<Vault>) -> Self {
        Self { vault }
    }

    pub fn into_server(self) -> pb::key_admin_server::KeyAdminServer<Self> {
        pb::key_admin_server::KeyAdminServer::new(self)
    }
}

fn state_to_pb(state: KeyState) -> pb::KeyState {
    match state {
        KeyState::Active => pb::KeyState::Active,
        KeyState::DecryptOnly => pb::KeyState::DecryptOnly,
        KeyState::Retired => pb::KeyState::Retired,
    }
}

fn job_state_to_pb(state: JobState) -> pb::JobState {
    match state {
        JobState::Idle => pb::JobState::Idle,
        JobState::Running => pb::JobState::Running,
        JobState::Finished => pb::JobState::Finished,
    }
}

fn version_to_pb(v: &KeyVersionStatus) -> pb::KeyVersionStatus {
    pb::KeyVersionStatus {
        version: v.version,
        state: state_to_pb(v.state) as i32,
        created_unix_ms: v.created_unix_ms.unwrap_or(0),
        retired_unix_ms: v.retired_unix_ms.unwrap_or(0),
        records: v.records,
    }
}

pub(crate) fn job_to_pb(job: &JobStatus) -> pb::JobStatus {
    pb::JobStatus {
        state: job_state_to_pb(job.state) as i32,
        target_version: job.target_version,
        done: job.done,
        remaining: job.remaining,
        rate_per_second: job.rate_per_second,
        measured_per_second: job.measured_per_second,
        started_unix_ms: job.started_unix_ms.unwrap_or(0),
        finished_unix_ms: job.finished_unix_ms.unwrap_or(0),
        failed: job.failed,
        failed_tokens: job.failed_tokens.iter().map(ToString::to_string).collect(),
    }
}

fn status_to_pb(status: &KeyStatus) -> pb::GetKeyStatusResponse {
    pb::GetKeyStatusResponse {
        data_keys: status.data_keys.iter().map(version_to_pb).collect(),
        index_keys: status.index_keys.iter().map(version_to_pb).collect(),
        rewrap: Some(job_to_pb(&status.rewrap)),
        index_rebuild: Some(job_to_pb(&status.index_rebuild)),
        master_rotated_unix_ms: status.master_rotated_unix_ms.unwrap_or(0),
    }
}

#[tonic::async_trait]
impl pb::key_admin_server::KeyAdmin for KeyAdminService {
    async fn rotate_data_key(
        &self,
        request: Request<pb::RotateDataKeyRequest>,
    ) -> Result<Response<pb::RotateDataKeyResponse>, Status> {
        let call = call_of(&request);
        let result = self.vault.rotate_data_key(call.clone()).await;
        answer(
            &call,
            result
                .map(|version| pb::RotateDataKeyResponse { version })
                .map_err(call_status),
        )
    }

    async fn get_key_status(
        &self,
        request: Request<pb::GetKeyStatusRequest>,
    ) -> Result<Response<pb::GetKeyStatusResponse>, Status> {
        let call = call_of(&request);
        let result = self.vault.key_status(call.clone()).await;
        answer(
            &call,
            result.map(|s| status_to_pb(&s)).map_err(call_status),
        )
    }

    async fn start_rewrap(
        &self,
        request: Request<pb::StartRewrapRequest>,
    ) -> Result<Response<pb::StartRewrapResponse>, Status> {
        let call = call_of(&request);
        let rate = request.get_ref().rate_per_second;
        let result = self.vault.start_rewrap(call.clone(), rate).await;
        answer(
            &call,
            result
                .map(|job| pb::StartRewrapResponse {
                    job: Some(job_to_pb(&job)),
                })
                .map_err(call_status),
        )
    }

    async fn get_rewrap_status(
        &self,
        request: Request<pb::GetRewrapStatusRequest>,
    ) -> Result<Response<pb::GetRewrapStatusResponse>, Status> {
        let call = call_of(&request);
        let result = self.vault.rewrap_status(call.clone()).await;
        answer(
            &call,
            result
                .map(|job| pb::GetRewrapStatusResponse {
                    job: Some(job_to_pb(&job)),
                })
                .map_err(call_status),
        )
    }

    async fn retire_key_version(
        &self,
        request: Request<pb::RetireKeyVersionRequest>,
    ) -> Result<Response<pb::RetireKeyVersionResponse>, Status> {
        let call = call_of(&request);
        let version = request.get_ref().version;
        let result = self.vault.retire_key_version(call.clone(), version).await;
        answer(
            &call,
            result
                .map(|()| pb::RetireKeyVersionResponse {})
                .map_err(call_status),
        )
    }

    async fn rotate_index_key(
        &self,
        request: Request<pb::RotateIndexKeyRequest>,
    ) -> Result<Response<pb::RotateIndexKeyResponse>, Status> {
        let call = call_of(&request);
        let result = self.vault.rotate_index_key(call.clone()).await;
        answer(
            &call,
            result
                .map(|version| pb::RotateIndexKeyResponse { version })
                .map_err(call_status),
        )
    }

    async fn rotate_master_key(
        &self,
        request: Request<pb::RotateMasterKeyRequest>,
    ) -> Result<Response<pb::RotateMasterKeyResponse>, Status> {
        let call = call_of(&request);
        let path = std::path::PathBuf::from(&request.get_ref().new_key_file);
        let result = self.vault.rotate_master_key(call.clone(), &path).await;
        answer(
            &call,
            result
                .map(|()| pb::RotateMasterKeyResponse {})
                .map_err(call_status),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn unknown_times_are_sent_as_zero_and_failed_tokens_as_their_text() {
        let token = crate::domain::TokenId::from_bytes([7; 16]);
        let job = JobStatus {
            state: JobState::Running,
            target_version: 3,
            done: 10,
            remaining: 5,
            rate_per_second: 100,
            measured_per_second: 99.5,
            started_unix_ms: Some(1_700_000_000_000),
            finished_unix_ms: None,
            failed: 1,
            failed_tokens: vec![token],
        };
        let pb = job_to_pb(&job);
        assert_eq!(pb.state, pb::JobState::Running as i32);
        assert_eq!(pb.started_unix_ms, 1_700_000_000_000);
        assert_eq!(pb.finished_unix_ms, 0);
        assert_eq!(pb.failed_tokens, [token.to_string()]);
        let v = version_to_pb(&KeyVersionStatus {
            version: 1,
            state: KeyState::DecryptOnly,
            created_unix_ms: None,
            retired_unix_ms: None,
            records: 7,
        });
        assert_eq!(v.state, pb::KeyState::DecryptOnly as i32);
        assert_eq!((v.created_unix_ms, v.records), (0, 7));
    }
}
