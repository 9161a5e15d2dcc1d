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

/// A client that takes no chunk for this long has its backup ended (the
/// stream closes short of its digest, which the client sees as a cut-short
/// backup): a stalled client cannot hold the backup, its thread and its
/// temporary files for ever.
pub const STALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

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
        let backup = match self.vault.backup(call.clone()).await {
            Ok(b) => b,
            Err(e) => return answer(&call, Err(call_status(e))),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
        let request_id = call.request_id.clone();
        let runtime = tokio::runtime::Handle::current();
        // Set when the client stalled: the stream then ends with an error
        // after what it buffered, not with OK.
        let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stalled_here = stalled.clone();
        // Each chunk waits at most STALL_LIMIT for the client to take it.
        let send = move |item: Result<pb::BackupResponse, Status>| {
            runtime.block_on(async {
                match tokio::time::timeout(STALL_LIMIT, tx.send(item)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err("the client went away during a backup"),
                    Err(_) => {
                        stalled_here.store(true, std::sync::atomic::Ordering::SeqCst);
                        Err("the client took no chunk of its backup for a minute; ended")
                    }
                }
            })
        };
        // A thread of its own, not the shared blocking pool: a slow client
        // holds this thread only, never the store's reads.
        let spawned = std::thread::Builder::new()
            .name("fieldvault-backup".into())
            .spawn(move || {
            // Dropped with the thread: the next backup may start.
            let mut backup = backup;
            let snapshot = &mut backup.snapshot;
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
                            let _ = send(Err(Status::unavailable(format!(
                                "reading the backup failed ({}); the backup is incomplete",
                                crate::store::FailureCause::of_io(&e)
                            ))));
                            return;
                        }
                    }
                };
                chunk.truncate(filled);
                if !chunk.is_empty() {
                    if let Err(why) = send(Ok(pb::BackupResponse { chunk })) {
                        tracing::info!(%request_id, "{why}");
                        return;
                    }
                }
                if end {
                    return;
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "starting a backup thread failed");
            return answer(
                &call,
                Err(Status::unavailable(
                    "the server could not start the backup's thread; no backup was sent",
                )),
            );
        }
        let stream: Chunks = Box::pin(EndsInError {
            chunks: tokio_stream::wrappers::ReceiverStream::new(rx),
            stalled: Some(stalled),
        });
        answer(&call, Ok(stream))
    }
}

/// The chunks, then, if the client stalled past [`STALL_LIMIT`], an error
/// (so a client that reads on later sees a failed call, not a short
/// backup answered OK).
struct EndsInError {
    chunks: tokio_stream::wrappers::ReceiverStream<Result<pb::BackupResponse, Status>>,
    stalled: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl Stream for EndsInError {
    type Item = Result<pb::BackupResponse, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        match Pin::new(&mut self.chunks).poll_next(cx) {
            Poll::Ready(None) => {
                let stalled = self
                    .stalled
                    .take()
                    .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst));
                Poll::Ready(stalled.then(|| {
                    Err(Status::deadline_exceeded(
                        "the backup was ended: the client took no chunk for a minute; the \
                         chunks sent are not a whole backup",
                    ))
                }))
            }
            other => other,
        }
    }
}
