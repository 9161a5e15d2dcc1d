//! Backups of a running vault (policy action `backup`): a consistent
//! snapshot of the whole store, records sealed and keys wrapped, the master
//! key never in it. Audited (`backup`), allowed or refused; a frozen or
//! deny-listed caller is refused like every call.

use super::{Call, Vault, VaultError};
use crate::domain::policy::Action;
use crate::store::Snapshot;

impl Vault {
    /// A snapshot of the whole store in the backup format
    /// ([`crate::store::backup`]), to be read in chunks. The audit event
    /// (`backup`, with records and bytes) is written before the snapshot
    /// is handed over: no event, no backup.
    pub async fn backup(&self, call: impl Into<Call>) -> Result<Snapshot, VaultError> {
        let call = call.into();
        let result = async {
            let caller = call.caller()?;
            let policy = self.policy_for_call().await;
            self.admit(caller, &policy).await?;
            policy
                .check_call(caller, Action::Backup, None, None)
                .map_err(VaultError::PermissionDenied)?;
            self.audit_ready()?;
            self.store.snapshot().await.map_err(|e| {
                tracing::error!(error = %e, "taking a backup snapshot failed");
                super::unavailable(&e, "no backup was taken")
            })
        }
        .await;
        let mut event = call.event("backup");
        if let Ok(snapshot) = &result {
            event
                .details
                .insert("records".into(), serde_json::json!(snapshot.records()));
            event
                .details
                .insert("bytes".into(), serde_json::json!(snapshot.size()));
        }
        match &result {
            Ok(s) => tracing::info!(
                request_id = %call.request_id,
                records = s.records(),
                bytes = s.size(),
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
