//! `fieldvault.v1.KeyAdmin`: the key lifecycle on the wire. The vault
//! checks the policy (action `keys`) and logs every operation; this layer
//! reads the caller from the peer certificate, refuses malformed requests
//! naming the field, and converts between protobuf and vault types.

use super::error::{call_status, invalid_argument};
use super::pb;
use super::service::caller;
use crate::vault::{
    JobState, JobStatus, KeyState, KeyStatus, KeyVersionStatus, Vault, MAX_REWRAP_RATE,
};
use std::path::Path;
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

/// The rewrap rate a request asks for: `None` for the configured default;
/// 0 and rates past [`MAX_REWRAP_RATE`] are refused naming the field.
pub(crate) fn rewrap_rate(rate: Option<u32>) -> Result<Option<u32>, Status> {
    match rate {
        Some(0) => Err(invalid_argument(
            "rate_per_second",
            &format!(
                "must be at least 1 record per second (leave it unset for the server's \
                 default); at most {MAX_REWRAP_RATE}"
            ),
        )),
        Some(n) if n > MAX_REWRAP_RATE => Err(invalid_argument(
            "rate_per_second",
            &format!("{n} is more than the most allowed, {MAX_REWRAP_RATE} records per second"),
        )),
        other => Ok(other),
    }
}

/// The new master key's path: required, and absolute (a relative path
/// would depend on the server's working directory). The file itself is
/// read and checked by the vault.
pub(crate) fn new_key_file(path: &str) -> Result<&Path, Status> {
    if path.is_empty() {
        return Err(invalid_argument(
            "new_key_file",
            "is required: the absolute path of the new master key file on the server's machine",
        ));
    }
    let path = Path::new(path);
    if !path.is_absolute() {
        return Err(invalid_argument(
            "new_key_file",
            "must be an absolute path: the server reads the file, on its own machine",
        ));
    }
    Ok(path)
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
        let caller = caller(&request)?;
        let version = self
            .vault
            .rotate_data_key(&caller)
            .await
            .map_err(call_status)?;
        Ok(Response::new(pb::RotateDataKeyResponse { version }))
    }

    async fn get_key_status(
        &self,
        request: Request<pb::GetKeyStatusRequest>,
    ) -> Result<Response<pb::GetKeyStatusResponse>, Status> {
        let caller = caller(&request)?;
        let status = self.vault.key_status(&caller).await.map_err(call_status)?;
        Ok(Response::new(status_to_pb(&status)))
    }

    async fn start_rewrap(
        &self,
        request: Request<pb::StartRewrapRequest>,
    ) -> Result<Response<pb::StartRewrapResponse>, Status> {
        let caller = caller(&request)?;
        // Default deny first: a caller without the right learns nothing,
        // not even which arguments are wrong.
        self.vault
            .may_administer_keys(&caller)
            .map_err(call_status)?;
        let rate = rewrap_rate(request.get_ref().rate_per_second)?;
        let job = self
            .vault
            .start_rewrap(&caller, rate)
            .await
            .map_err(call_status)?;
        Ok(Response::new(pb::StartRewrapResponse {
            job: Some(job_to_pb(&job)),
        }))
    }

    async fn get_rewrap_status(
        &self,
        request: Request<pb::GetRewrapStatusRequest>,
    ) -> Result<Response<pb::GetRewrapStatusResponse>, Status> {
        let caller = caller(&request)?;
        let job = self
            .vault
            .rewrap_status(&caller)
            .await
            .map_err(call_status)?;
        Ok(Response::new(pb::GetRewrapStatusResponse {
            job: Some(job_to_pb(&job)),
        }))
    }

    async fn retire_key_version(
        &self,
        request: Request<pb::RetireKeyVersionRequest>,
    ) -> Result<Response<pb::RetireKeyVersionResponse>, Status> {
        let caller = caller(&request)?;
        self.vault
            .may_administer_keys(&caller)
            .map_err(call_status)?;
        let version = request.get_ref().version;
        if version == 0 {
            return Err(invalid_argument(
                "version",
                "must be set: key versions start at 1",
            ));
        }
        self.vault
            .retire_key_version(&caller, version)
            .await
            .map_err(call_status)?;
        Ok(Response::new(pb::RetireKeyVersionResponse {}))
    }

    async fn rotate_index_key(
        &self,
        request: Request<pb::RotateIndexKeyRequest>,
    ) -> Result<Response<pb::RotateIndexKeyResponse>, Status> {
        let caller = caller(&request)?;
        let version = self
            .vault
            .rotate_index_key(&caller)
            .await
            .map_err(call_status)?;
        Ok(Response::new(pb::RotateIndexKeyResponse { version }))
    }

    async fn rotate_master_key(
        &self,
        request: Request<pb::RotateMasterKeyRequest>,
    ) -> Result<Response<pb::RotateMasterKeyResponse>, Status> {
        let caller = caller(&request)?;
        self.vault
            .may_administer_keys(&caller)
            .map_err(call_status)?;
        let path = new_key_file(&request.get_ref().new_key_file)?;
        self.vault
            .rotate_master_key(&caller, path)
            .await
            .map_err(call_status)?;
        Ok(Response::new(pb::RotateMasterKeyResponse {}))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use tonic::Code;

    #[test]
    fn a_rate_of_zero_or_past_the_maximum_is_refused_naming_rate_per_second() {
        for rate in [0, MAX_REWRAP_RATE + 1, u32::MAX] {
            let status = rewrap_rate(Some(rate)).unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(
                status.message().starts_with("rate_per_second: "),
                "{status:?}"
            );
        }
        assert_eq!(rewrap_rate(None).unwrap(), None);
        assert_eq!(rewrap_rate(Some(1)).unwrap(), Some(1));
        assert_eq!(
            rewrap_rate(Some(MAX_REWRAP_RATE)).unwrap(),
            Some(MAX_REWRAP_RATE)
        );
    }

    #[test]
    fn an_empty_or_relative_key_file_is_refused_naming_new_key_file() {
        for path in ["", "master.key", "./keys/new.key"] {
            let status = new_key_file(path).unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(status.message().starts_with("new_key_file: "), "{status:?}");
        }
        assert_eq!(
            new_key_file("/etc/fieldvault/new.key").unwrap(),
            Path::new("/etc/fieldvault/new.key")
        );
    }

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
