//! The audit key beside the trail, wrapped under the master key, so that
//! `fieldvault audit verify` can check a trail without opening the store
//! (which a running server holds). The store keeps the key of record; the
//! server writes this copy at every start and after a master-key rotation.
//! It is useless without the master key, and a file swapped in by someone
//! without the master key does not unwrap.

use super::chain::AuditKey;
use super::AuditError;
use crate::crypto::{unwrap_one, KeyPurpose, KeyVersion, MasterKey, WrappedKey, NONCE_LEN};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const FORMAT: &str = "fieldvault-audit-key/v1";

#[derive(Serialize, Deserialize)]
struct KeyFile {
    format: String,
    /// The audit key's public id (as in the first event of every file).
    key_id: String,
    /// Which master key wraps it.
    master_fingerprint: String,
    nonce: String,
    wrapped: String,
}

/// Where the wrapped audit key of the trail at `audit_log` is kept:
/// `<audit_log>.key` (for `audit.log`, `audit.log.key`).
pub fn path_for(audit_log: &Path) -> PathBuf {
    let mut name = audit_log.file_name().unwrap_or_default().to_os_string();
    name.push(".key");
    audit_log.with_file_name(name)
}

/// Writes `wrapped` (the audit key under the master key with
/// `master_fingerprint`) beside the trail at `audit_log`: owner-only,
/// replaced whole (a temporary file, synced, renamed, the directory synced).
pub fn save(
    audit_log: &Path,
    key: &AuditKey,
    wrapped: &WrappedKey,
    master_fingerprint: [u8; 8],
) -> Result<String, AuditError> {
    save_wrapped(audit_log, &key.id(), wrapped, master_fingerprint)
}

/// [`save`] when only the key's id is at hand (after a master-key
/// rotation re-wrapped it).
pub fn save_wrapped(
    audit_log: &Path,
    key_id: &str,
    wrapped: &WrappedKey,
    master_fingerprint: [u8; 8],
) -> Result<String, AuditError> {
    let text = render(key_id, wrapped, master_fingerprint)?;
    write_text(audit_log, &text)?;
    Ok(text)
}

/// The key file's text.
fn render(
    key_id: &str,
    wrapped: &WrappedKey,
    master_fingerprint: [u8; 8],
) -> Result<String, AuditError> {
    let body = KeyFile {
        format: FORMAT.into(),
        key_id: key_id.to_owned(),
        master_fingerprint: hex::encode(master_fingerprint),
        nonce: hex::encode(wrapped.nonce),
        wrapped: hex::encode(&wrapped.ciphertext),
    };
    let mut text = serde_json::to_string_pretty(&body).map_err(|e| AuditError(e.to_string()))?;
    text.push('\n');
    Ok(text)
}

/// Writes a key file's `text` beside the trail at `audit_log`, replacing
/// it whole (a new directory gets it again: see the writer).
pub fn write_text(audit_log: &Path, text: &str) -> Result<(), AuditError> {
    let path = path_for(audit_log);
    let failed = |e: std::io::Error| AuditError(format!("{}: {e}", path.display()));
    let tmp = path.with_extension("key.tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(failed)?;
        file.write_all(text.as_bytes()).map_err(failed)?;
        file.sync_all().map_err(failed)?;
    }
    std::fs::rename(&tmp, &path).map_err(failed)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(failed)?;
    }
    Ok(())
}

/// Reads the audit key kept beside the trail at `audit_log` and unwraps it
/// with `master`.
pub fn load(audit_log: &Path, master: &MasterKey) -> Result<AuditKey, AuditError> {
    let path = path_for(audit_log);
    let text = super::trail::read(&path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(|e| {
            AuditError(format!(
                "{}: {e} (the server writes the wrapped audit key there when it starts; start it \
             once with this config, or give the config the trail was written with)",
                path.display()
            ))
        })?;
    let bad = |what: &str| {
        AuditError(format!(
            "{}: not a fieldvault audit key file ({what})",
            path.display()
        ))
    };
    let file: KeyFile = serde_json::from_str(&text).map_err(|_| bad("not its JSON form"))?;
    if file.format != FORMAT {
        return Err(bad("unknown format"));
    }
    let mut nonce = [0u8; NONCE_LEN];
    hex::decode_to_slice(&file.nonce, &mut nonce).map_err(|_| bad("bad nonce"))?;
    let ciphertext = hex::decode(&file.wrapped).map_err(|_| bad("bad wrapped key"))?;
    let wrapped = WrappedKey {
        purpose: KeyPurpose::Audit,
        version: KeyVersion(1),
        nonce,
        ciphertext,
    };
    let raw = unwrap_one(master, &wrapped).map_err(|_| {
        let given = hex::encode(master.fingerprint());
        AuditError(format!(
            "{}: the audit key does not unwrap under this master key (fingerprint {given}; the \
             file names {}): the wrong master key, a trail of another vault, or a file \
             swapped in",
            path.display(),
            file.master_fingerprint
        ))
    })?;
    let key = AuditKey::new(*raw);
    if key.id() != file.key_id {
        return Err(bad("its key id does not match its key"));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_audit_key_saved_beside_the_trail_unwraps_only_under_its_master_key() {
        let dir = ok(tempfile::tempdir());
        let log = dir.path().join("audit.log");
        let master = MasterKey::generate();
        let (ring, _) = ok(crate::crypto::Keyring::create(&master));
        let (ring, _) = ok(ring.with_audit_key()).unwrap_or_else(|| panic!("had an audit key"));
        let key = ring.audit_key().unwrap_or_else(|| panic!("no audit key"));
        let wrapped = ok(ring.wrapped_audit_key()).unwrap_or_else(|| panic!("no audit key"));
        ok(save(&log, &key, &wrapped, master.fingerprint()));
        assert_eq!(path_for(&log), dir.path().join("audit.log.key"));
        use std::os::unix::fs::PermissionsExt;
        let mode = ok(std::fs::metadata(path_for(&log))).permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(ok(load(&log, &master)).id(), key.id());
        let other = load(&log, &MasterKey::generate()).err().map(|e| e.0);
        assert!(
            other
                .as_deref()
                .is_some_and(|e| e.contains("does not unwrap")),
            "{other:?}"
        );
        ok(std::fs::write(path_for(&log), "hello"));
        let garbage = load(&log, &master).err().map(|e| e.0);
        assert!(
            garbage
                .as_deref()
                .is_some_and(|e| e.contains("not a fieldvault audit key file")),
            "{garbage:?}"
        );
    }
}
