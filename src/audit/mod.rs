//! The audit trail of reveals. Every Detokenize call writes one event before
//! any value leaves the vault; if the write fails, nothing is revealed
//! (invariant 4: fail closed).
//!
//! This first version appends JSON lines to a file and flushes each event to
//! the operating system before answering (it survives `kill -9`; it is not
//! yet fsynced per event). Hash chaining, `fieldvault audit verify` and
//! group-committed fsync come with the audit-trail issue.
//!
//! Events hold identities, purposes, tokens, field kinds and outcomes —
//! never a value.

pub mod chain;
pub mod event;
pub mod keyfile;
pub mod report;
pub mod search;
pub mod trail;
pub mod verify;
pub mod writer;

use async_trait::async_trait;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuditEvent {
    pub unix_ms: u64,
    pub caller: String,
    pub action: &'static str,
    pub purpose: Option<String>,
    pub justification: Option<String>,
    /// `ok`, or why the whole call was refused.
    pub outcome: String,
    pub items: Vec<AuditItem>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuditItem {
    /// The token as sent when it parsed; `None` for a malformed one.
    pub token: Option<String>,
    pub kind: Option<&'static str>,
    /// `full`, `masked`, or the error code (`not_found`, `permission_denied`, …).
    pub outcome: &'static str,
    pub rule: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("audit log unavailable: {0}")]
pub struct AuditError(pub String);

#[async_trait]
pub trait AuditSink: Send + Sync + 'static {
    /// Returns only once the event is written; an error means the caller must
    /// not reveal anything.
    async fn record(&self, event: &AuditEvent) -> Result<(), AuditError>;
}

/// Appends one JSON object per line to a file.
pub struct FileAuditLog {
    path: PathBuf,
    /// Opened in append mode; each event is one `write(2)` of a whole line,
    /// so lines never interleave and there is no user-space buffer to lose.
    file: Mutex<std::fs::File>,
}

impl FileAuditLog {
    pub async fn open(path: &Path) -> Result<Self, AuditError> {
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| AuditError(format!("{}: {e}", parent.display())))?;
        }
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| AuditError(format!("{}: {e}", path.display())))?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
impl AuditSink for FileAuditLog {
    async fn record(&self, event: &AuditEvent) -> Result<(), AuditError> {
        let mut line = serde_json::to_vec(event).map_err(|e| AuditError(e.to_string()))?;
        line.push(b'\n');
        // A short, non-blocking-in-practice page-cache write: done inline
        // rather than through a blocking-pool hop. A poisoned lock only
        // means another writer panicked; the file handle is still sound.
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(&line)
            .map_err(|e| AuditError(format!("{}: {e}", self.path.display())))
    }
}

pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_are_appended_as_json_lines() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("audit/audit.log");
        let log = FileAuditLog::open(&path)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let event = AuditEvent {
            unix_ms: 1,
            caller: "spiffe://t.example/support".into(),
            action: "detokenize",
            purpose: Some("callback".into()),
            justification: None,
            outcome: "ok".into(),
            items: vec![AuditItem {
                token: Some("fv1_x".into()),
                kind: Some("phone"),
                outcome: "full",
                rule: Some("r".into()),
            }],
        };
        log.record(&event).await.unwrap_or_else(|e| panic!("{e}"));
        log.record(&event).await.unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(text.lines().count(), 2);
        assert!(text.lines().all(|l| l.contains("\"purpose\":\"callback\"")));
    }
}
