//! `fieldvault backup --out FILE` (a running server's store, over mTLS)
//! and `fieldvault restore --in FILE --data-dir DIR` (offline).

use super::conn::Conn;
use super::output::{call_failed, emit, Failure, EXIT_OK};
use clap::Args;
use fieldvault::grpc::pb;
use fieldvault::store::backup::{BackupError, RestoreError, Summary};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tonic::Code;

const BACKUP_HELP: &str = "The file is written beside FILE first (owner-only), its checksum \
    checked as it arrives and its whole structure checked once it is there, then synced and \
    renamed to FILE: FILE is either the previous file or the whole new backup, never half of \
    one. --timeout bounds the whole transfer: raise it for a large store (about 100 bytes a \
    record). Exit codes: 0 done; 2 failed (a path that cannot be written is refused before the \
    server is asked; connection, TLS, refused by the server; with --json, the error is a JSON \
    object on stdout). The caller needs a policy rule with action \"backup\" (the dev identity \
    admin has one); every backup is audited.";

const RESTORE_HELP: &str = "Offline: the server of DIR must not run. DIR must hold no store \
    (DIR/store); its certificates, keys and policy are left alone. Then start the server on \
    DIR with the master key of the store backed up: every token comes back (tokens of a retired \
    key version stay unreadable, as they were). The backup's audit key expects the vault's \
    audit trail: without it (a new data dir), start once with --audit-new-chain. Exit codes: 0 restored; 2 refused (DIR holds a \
    store; the file is damaged, truncated, or of an unknown format version), and nothing was \
    changed.";

#[derive(Args)]
#[command(after_help = BACKUP_HELP)]
pub(crate) struct BackupArgs {
    /// Where the backup goes (replaced once the new one is whole).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
#[command(after_help = RESTORE_HELP)]
pub(crate) struct RestoreArgs {
    /// The backup file (from `fieldvault backup`).
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
    /// The data directory to restore the store into (as DIR/store).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Print the outcome as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// A file being written beside its final path, removed unless it is
/// renamed into place.
struct Partial {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl Partial {
    /// A new owner-only file in `out`'s directory, or why not.
    fn beside(out: &Path) -> Result<Self, String> {
        use std::os::unix::fs::OpenOptionsExt;
        let name = out.file_name().filter(|_| !out.is_dir()).ok_or_else(|| {
            format!(
                "--out {}: is a directory, not a file: name a file in it, e.g. {}; nothing \
                     was backed up",
                out.display(),
                out.join("vault.fvb").display()
            )
        })?;
        // What is at `out` now: a regular file or a symlink is replaced (the
        // link itself, never its target); anything else (a device such as
        // /dev/null, a socket, a fifo) is refused, never replaced.
        if let Ok(meta) = std::fs::symlink_metadata(out) {
            let kind = meta.file_type();
            if !kind.is_file() && !kind.is_symlink() {
                return Err(format!(
                    "--out {}: is not a regular file (a device, socket or fifo); name a file \
                     to write the backup to; nothing was backed up",
                    out.display()
                ));
            }
        }
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let path = dir.join(format!(
            ".{}.partial-{}",
            name.to_string_lossy(),
            uuid::Uuid::new_v4()
        ));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| {
                format!(
                    "--out {}: cannot create a file in {} ({e}); nothing was backed up",
                    out.display(),
                    dir.display()
                )
            })?;
        Ok(Self {
            path,
            file: Some(file),
        })
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.file {
            Some(f) => f.write_all(bytes),
            None => Err(std::io::Error::other("closed")),
        }
    }

    /// Synced, renamed to `out`, and the directory synced.
    fn finish(mut self, out: &Path) -> std::io::Result<()> {
        if let Some(f) = self.file.take() {
            f.sync_all()?;
        }
        std::fs::rename(&self.path, out)?;
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)?.sync_all()
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The checksum of a stream whose last 32 bytes are the SHA-256 of the
/// rest, checked as it arrives.
#[derive(Default)]
struct Checksum {
    hasher: Sha256,
    tail: Vec<u8>,
    bytes: u64,
}

impl Checksum {
    fn update(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        self.tail.extend_from_slice(chunk);
        if self.tail.len() > 32 {
            let keep = self.tail.split_off(self.tail.len() - 32);
            self.hasher.update(&self.tail);
            self.tail = keep;
        }
    }

    /// Whether the last 32 bytes are the SHA-256 of the rest.
    fn matches(&self) -> bool {
        self.tail.len() == 32 && self.hasher.clone().finalize().as_slice() == self.tail
    }
}

pub(crate) async fn backup(args: BackupArgs) -> ExitCode {
    let json = args.conn.json;
    let failed = |code: Code, message: String| call_failed(json, &Failure::new(code, message), 0);
    // Refused before the server is asked: a backup it takes for nothing
    // would pause its writes and be audited.
    let mut partial = match Partial::beside(&args.out) {
        Ok(p) => p,
        Err(message) => return failed(Code::InvalidArgument, message),
    };
    let channel = match args.conn.channel().await {
        Ok(c) => c,
        Err(e) => return call_failed(json, &Failure::from_client(&e), 0),
    };
    let status = args.conn.call_status();
    let mut client = pb::backup_service_client::BackupServiceClient::new(channel)
        .max_decoding_message_size(2 * fieldvault::grpc::BACKUP_CHUNK_BYTES);
    let transfer = async {
        let mut stream = client
            .backup(pb::BackupRequest {})
            .await
            .map_err(|s| Failure::from_status(&status.map(s)))?
            .into_inner();
        let mut sum = Checksum::default();
        while let Some(message) = stream
            .message()
            .await
            .map_err(|s| Failure::from_status(&status.map(s)))?
        {
            sum.update(&message.chunk);
            partial.write(&message.chunk).map_err(|e| {
                Failure::new(
                    Code::Unavailable,
                    format!(
                        "writing {} failed ({e}); nothing was written at {}",
                        partial.path.display(),
                        args.out.display()
                    ),
                )
            })?;
        }
        Ok::<_, Failure>(sum)
    };
    let sum = match transfer.await {
        Ok(sum) => sum,
        Err(f) => {
            let f = Failure::new(
                f.code,
                format!(
                    "{}; nothing was written at {}",
                    f.message,
                    args.out.display()
                ),
            );
            return call_failed(json, &f, 0);
        }
    };
    if !sum.matches() {
        return failed(
            Code::DataLoss,
            format!(
                "the backup received ({} bytes) does not match its checksum: it was damaged or \
                 cut short on the way; nothing was written at {}",
                sum.bytes,
                args.out.display()
            ),
        );
    }
    // The whole structure, as `restore` will read it.
    let summary = match fieldvault::store::backup::verify(&partial.path) {
        Ok(s) => s,
        Err(e) => {
            return failed(
                Code::DataLoss,
                format!(
                    "the backup received does not read: {e}; nothing was written at {}",
                    args.out.display()
                ),
            )
        }
    };
    let out = args.out.display().to_string();
    if let Err(e) = partial.finish(&args.out) {
        return failed(
            Code::Unavailable,
            format!("moving the backup into place at {out} failed: {e}"),
        );
    }
    if json {
        emit!("{}", summary_json(&summary, "file", &out));
    } else {
        emit!(
            "backup written to {out}: {} bytes, {}, sha256 {} (taken {})",
            summary.bytes,
            records(summary.records),
            summary.sha256,
            fieldvault::domain::time::rfc3339(summary.created_unix_ms)
        );
    }
    ExitCode::from(EXIT_OK)
}

/// "1 record", "2 records".
fn records(n: u64) -> String {
    if n == 1 {
        "1 record".to_owned()
    } else {
        format!("{n} records")
    }
}

fn summary_json(summary: &Summary, place: &str, path: &str) -> serde_json::Value {
    let tables: serde_json::Map<String, serde_json::Value> = summary
        .tables
        .iter()
        .map(|(t, n)| (t.clone(), json!(n)))
        .collect();
    json!({
        place: path,
        "bytes": summary.bytes,
        "records": summary.records,
        "sha256": summary.sha256,
        "created_unix_ms": summary.created_unix_ms,
        "format_version": summary.format_version,
        "tables": tables,
    })
}

fn restore_code(e: &RestoreError) -> Code {
    match e {
        RestoreError::StoreExists { .. } => Code::AlreadyExists,
        RestoreError::Backup { error, .. } => match error {
            BackupError::Read(io) if io.kind() == std::io::ErrorKind::NotFound => Code::NotFound,
            BackupError::Read(_) | BackupError::Sink(_) => Code::Unavailable,
            BackupError::NotABackup
            | BackupError::UnknownVersion { .. }
            | BackupError::UnknownTable { .. } => Code::InvalidArgument,
            BackupError::Truncated { .. }
            | BackupError::Malformed { .. }
            | BackupError::Checksum { .. }
            | BackupError::TrailingBytes { .. } => Code::DataLoss,
        },
        RestoreError::Io { .. } | RestoreError::Store(_) => Code::Unavailable,
        RestoreError::Integrity(_) => Code::DataLoss,
    }
}

pub(crate) async fn restore(args: RestoreArgs) -> ExitCode {
    // The store's files hold ciphertext and wrapped keys: owner-only, like
    // every file the server creates.
    fieldvault::fsperm::restrict_umask();
    if args.input.is_dir() {
        let message = format!(
            "--in {}: is a directory, not a backup file; nothing was changed",
            args.input.display()
        );
        return call_failed(args.json, &Failure::new(Code::InvalidArgument, message), 0);
    }
    match fieldvault::store::backup::restore(&args.input, &args.data_dir).await {
        Ok(restored) => {
            let store = restored.store_dir.display().to_string();
            if args.json {
                emit!("{}", summary_json(&restored.summary, "store", &store));
            } else {
                emit!(
                    "restored {} into {store}: {}, sha256 {} (backup taken {}); start \
                     the server on {} with the master key of the store backed up",
                    args.input.display(),
                    records(restored.summary.records),
                    restored.summary.sha256,
                    fieldvault::domain::time::rfc3339(restored.summary.created_unix_ms),
                    args.data_dir.display()
                );
                if !args.data_dir.join("audit.log").exists() {
                    emit!(
                        "{dir} holds no audit trail of this vault: the first start needs \
                         --audit-new-chain (`fieldvault serve --dev --data-dir {dir} \
                         --audit-new-chain`, or with --config: start_new_chain = true under \
                         [audit]), and the trail begins a new chain that says why",
                        dir = args.data_dir.display()
                    );
                }
            }
            ExitCode::from(EXIT_OK)
        }
        Err(e) => call_failed(args.json, &Failure::new(restore_code(&e), e.to_string()), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_is_checked_across_any_chunking_and_a_change_fails_it() {
        let body = b"FVBACKUP some bytes of a backup".to_vec();
        let mut whole = body.clone();
        whole.extend_from_slice(&Sha256::digest(&body));
        for split in [1, 5, 31, 32, 33, whole.len()] {
            let mut sum = Checksum::default();
            for chunk in whole.chunks(split) {
                sum.update(chunk);
            }
            assert!(sum.matches(), "chunks of {split}");
        }
        let mut damaged = whole.clone();
        damaged[3] ^= 1;
        let mut sum = Checksum::default();
        sum.update(&damaged);
        assert!(!sum.matches());
        let mut short = Checksum::default();
        short.update(&whole[..whole.len() - 1]);
        assert!(!short.matches());
    }
}
