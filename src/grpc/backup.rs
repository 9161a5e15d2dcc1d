//! `fieldvault.v1.BackupService`: a backup of the whole store, streamed in
//! chunks. The vault checks the policy (action `backup`), audits the call
//! and takes the snapshot; this layer reads it off a blocking thread and
//! sends it.

use super::error::call_status;
use super::pb;
use super::service::{answer, call_of};
use crate::vault::Vault;
use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// The largest chunk sent: well under the 4 MiB a client takes by default.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Chunks read ahead of the client.
const READ_AHEAD: usize = 4;

/// `fieldvault.v1.BackupService` over a [`Vault`].
#[derive(Clone)]
pub struct BackupService {
    vault: Arc<Vault>,
}

impl BackupService {
    pub fn new(vault: Arc<Vault>) -> Self {
        Self { vault }
    }

    pub fn into_server(self) -> pb::backup_service_server::BackupServiceServer<Self> {
        pb::backup_service_server::BackupServiceServer::new(self)
    }
}

type Chunks = Pin<Box<dyn Stream<Item = Result<pb::BackupResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::backup_service_server::BackupService for BackupService {
    type BackupStream = Chunks;

    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<Chunks>, Status> {
        let call = call_of(&request);
        let snapshot = match self.vault.backup(call.clone()).await {
            Ok(s) => s,
            Err(e) => return answer(&call, Err(call_status(e))),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
        let request_id = call.request_id.clone();
        tokio::task::spawn_blocking(move || {
            let mut snapshot = snapshot;
            loop {
                let mut chunk = vec![0u8; CHUNK_BYTES];
                let mut filled = 0;
                let end = loop {
                    match snapshot.read(&mut chunk[filled..]) {
                        Ok(0) => break true,
                        Ok(n) => {
                            filled += n;
                            if filled == chunk.len() {
                                break false;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            tracing::error!(%request_id, error = %e, "reading a backup snapshot failed");
                            let _ = tx.blocking_send(Err(Status::unavailable(format!(
                                "reading the backup failed ({}); the backup is incomplete",
                                crate::store::FailureCause::of_io(&e)
                            ))));
                            return;
                        }
                    }
                };
                chunk.truncate(filled);
                if !chunk.is_empty() && tx.blocking_send(Ok(pb::BackupResponse { chunk })).is_err()
                {
                    tracing::info!(%request_id, "the client went away during a backup");
                    return;
                }
                if end {
                    return;
                }
            }
        });
        let stream: Chunks = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        answer(&call, Ok(stream))
    }
}
