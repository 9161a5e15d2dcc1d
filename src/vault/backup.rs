//! Backups of a running vault (policy action `backup`): a consistent
//! snapshot of the whole store, records sealed and keys wrapped, the master
//! key never in it. Audited (`backup`), allowed or refused; a frozen or
//! deny-listed caller is refused like every call.

use super::{Call, Vault, VaultError};
use crate::domain::policy::Action;
use crate::store::Snapshot;

/// A backup being handed over: its snapshot, and the right to run it (one
/// backup at a time: the next is refused until this one is dropped).
#[derive(Debug)]
pub struct Backup {
    pub snapshot: Snapshot,
    _running: tokio::sync::OwnedSemaphorePermit,
}

impl Vault {
    /// A snapshot of the whole store in the backup format
    /// ([`crate::store::backup`]), to be read in chunks. The audit event
    /// (`backup`, with records and bytes) is written before the snapshot
    /// is handed over: no event, no backup. One backup runs at a time (each
    /// pauses writes while it is taken): another call meanwhile is refused
    /// with `FailedPrecondition`, until the running one is dropped.
    pub async fn backup(&self, call: impl Into<Call>) -> Result<Backup, VaultError> {
        let call = call.into();
        let result: Result<Backup, VaultError> = async {
            let caller = call.caller()?;
            let policy = self.policy_for_call().await;
            self.admit(caller, &policy).await?;
            policy
                .check_call(caller, Action::Backup, None, None)
                .map_err(VaultError::PermissionDenied)?;
            let running = self.backups.clone().try_acquire_owned().map_err(|_| {
                VaultError::FailedPrecondition(
                    "a backup is already running; try again when it has ended".into(),
                )
            })?;
            self.audit_ready()?;
            let snapshot = self.store.snapshot().await.map_err(|e| {
                tracing::error!(error = %e, "taking a backup snapshot failed");
                super::unavailable(&e, "no backup was taken")
            })?;
            Ok(Backup {
                snapshot,
                _running: running,
            })
        }
        .await;
        let mut event = call.event("backup");
        if let Ok(Backup { snapshot, .. }) = &result {
            event
                .details
                .insert("records".into(), serde_json::json!(snapshot.records()));
            event
                .details
                .insert("bytes".into(), serde_json::json!(snapshot.size()));
        }
        match &result {
            Ok(b) => tracing::info!(
                request_id = %call.request_id,
                records = b.snapshot.records(),
                bytes = b.snapshot.size(),
                "backup snapshot handed over"
            ),
            // Quoted: the message may hold a caller's common name.
            Err(e) => tracing::info!(
                request_id = %call.request_id,
                error = ?e.to_string(),
                "backup refused"
            ),
        }
        self.record_call(event, result).await
    }
}
