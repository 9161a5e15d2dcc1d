use std::fmt;
use std::path::Path;
use zeroize::Zeroizing;

/// The 256-bit key-encryption key. It only wraps and unwraps data keys.
/// Memory is wiped on drop; `Debug` is redacted.
pub struct MasterKey(Zeroizing<[u8; 32]>);

#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    #[error("master key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// Open to group or others, or unreadable.
    #[error("{0}")]
    File(#[from] crate::fsperm::PermError),
    #[error(
        "master key {origin}: {found}; it must hold the key as 64 hex characters \
         (32 bytes), as `openssl rand -hex 32` prints"
    )]
    Format { origin: String, found: String },
}

impl MasterKey {
    /// A new random key (dev mode and tests).
    pub fn generate() -> Self {
        use aes_gcm::aead::rand_core::RngCore;
        let mut key = Zeroizing::new([0u8; 32]);
        aes_gcm::aead::OsRng.fill_bytes(key.as_mut());
        Self(key)
    }

    /// Parses 64 hex characters, surrounding whitespace ignored. `origin`
    /// names where the text came from, for the error message.
    pub fn from_hex(text: &str, origin: &str) -> Result<Self, MasterKeyError> {
        let mut key = Zeroizing::new([0u8; 32]);
        let text = text.trim();
        hex::decode_to_slice(text, key.as_mut()).map_err(|_| MasterKeyError::Format {
            origin: origin.to_owned(),
            found: if text.chars().all(|c| c.is_ascii_hexdigit()) {
                format!("holds {} hex characters", text.chars().count())
            } else {
                "holds characters that are not hex digits".to_owned()
            },
        })?;
        Ok(Self(key))
    }

    /// Reads a key file written by [`MasterKey::to_hex`]. Refuses a file that
    /// others can access or group can write, and a group-readable one unless
    /// its group is one this process runs in and its owner root or this
    /// process's user ([`crate::fsperm::check_key_file`]: a Kubernetes
    /// Secret mounted with `fsGroup` is root-owned, mode 0440). The file is opened once: its mode is
    /// checked on that handle and the key read from it, so the file checked
    /// is the file read. The text lands in a fixed, wiped buffer (no
    /// reallocation leaves a copy behind).
    pub fn from_file(path: &Path) -> Result<Self, MasterKeyError> {
        let file =
            crate::fsperm::open_checked("master_key.file", path, crate::fsperm::Access::OwnerOnly)?;
        Self::read_from(file, path)
    }

    /// [`MasterKey::from_file`] for a key named at run time (a master-key
    /// rotation): also refused when another user owns the file or a
    /// directory above it lets others replace it
    /// ([`crate::fsperm::open_checked_strict`]).
    pub fn from_new_file(path: &Path) -> Result<Self, MasterKeyError> {
        let file = crate::fsperm::open_checked_strict("file", path)?;
        Self::read_from(file, path)
    }

    fn read_from(mut file: std::fs::File, path: &Path) -> Result<Self, MasterKeyError> {
        use std::io::Read;
        // 64 hex characters and a little whitespace; anything longer is not
        // a key file.
        let mut buf = Zeroizing::new([0u8; 256]);
        let mut len = 0;
        while len < buf.len() {
            let n = file
                .read(&mut buf[len..])
                .map_err(|source| MasterKeyError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
            if n == 0 {
                break;
            }
            len += n;
        }
        let origin = format!("file {}", path.display());
        // Never echoed: a binary file may be the key itself, raw.
        let text = std::str::from_utf8(&buf[..len]).map_err(|_| MasterKeyError::Format {
            origin: origin.clone(),
            found: if len == buf.len() {
                format!("holds binary data (at least {len} bytes), not text")
            } else {
                format!("holds {len} bytes of binary data, not text")
            },
        })?;
        Self::from_hex(text, &origin)
    }

    /// Hex form, for writing a new key file.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0.as_ref()))
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A short public name for this key (8 bytes of an HMAC under it):
    /// tells two master keys apart in messages and in the store's record
    /// of replaced keys, and reveals nothing of the key.
    pub fn fingerprint(&self) -> [u8; 8] {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(self.0.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(b"fieldvault/master-key-fingerprint/v1");
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; 8];
        out.copy_from_slice(&full[..8]);
        out
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_open_to_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("master.key");
        let key = MasterKey::generate();
        std::fs::write(&path, key.to_hex().as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        // The same message, from the same helper, as for the TLS key. A
        // file readable by its own group (this process's, as a new file's
        // group is) is accepted: fsperm's tests cover the other groups.
        for (mode, what) in [
            (0o644, "readable by group and others"),
            (0o604, "readable by others"),
            (0o660, "readable and writable by group"),
            (0o620, "writable by group"),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .unwrap_or_else(|e| panic!("{e}"));
            let err = MasterKey::from_file(&path)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            let shown = path.display();
            assert_eq!(
                err,
                format!(
                    "master_key.file {shown}: mode {mode:04o} is {what}; run: chmod 600 {shown} \
                     (or 400; or 440 with the file's group one the server runs in and its \
                     owner root or the server's user, as a Kubernetes Secret mounted with \
                     fsGroup is)"
                )
            );
        }
        for fine in [0o600, 0o400, 0o440, 0o640] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(fine))
                .unwrap_or_else(|e| panic!("{e}"));
            let loaded = MasterKey::from_file(&path).unwrap_or_else(|e| panic!("{fine:o}: {e}"));
            assert_eq!(loaded.bytes(), key.bytes());
        }
    }

    #[test]
    fn a_key_file_is_read_whole_with_its_newline_and_an_oversized_one_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("master.key");
        let key = MasterKey::generate();
        let write = |text: &[u8]| {
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400))
                .unwrap_or_else(|e| panic!("{e}"));
        };
        write(format!("{}\n", key.to_hex().as_str()).as_bytes());
        let loaded = MasterKey::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.bytes(), key.bytes());
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("{e}"));
        // The key followed by 300 more hex characters: not a key file, and
        // not echoed.
        let long = format!("{}{}", key.to_hex().as_str(), "ab".repeat(150));
        write(long.as_bytes());
        let err = MasterKey::from_file(&path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("64 hex characters") && !err.contains(&key.to_hex()[..16]),
            "{err}"
        );
    }

    #[test]
    fn a_binary_key_file_is_refused_saying_what_it_must_hold() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("master.key");
        // 32 raw bytes, not valid UTF-8: the key in binary form.
        let raw: Vec<u8> = (0..32u8).map(|i| 0x80 | i).collect();
        std::fs::write(&path, &raw).unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = MasterKey::from_file(&path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("holds 32 bytes of binary data, not text")
                && err.contains("64 hex characters")
                && err.contains("openssl rand -hex 32")
                && !err.contains("UTF-8"),
            "{err}"
        );
    }

    #[test]
    fn the_aes_key_schedule_is_wiped_on_drop() {
        // Compiles only when `aes` is built with its `zeroize` feature.
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        wiped_on_drop::<aes::Aes256>();
    }

    #[test]
    fn bad_key_text_is_refused_without_echoing_it() {
        let err = MasterKey::from_hex("00112233", "env FIELDVAULT_MASTER_KEY")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("64 hex characters") && !err.contains("00112233"),
            "{err}"
        );
        assert_eq!(
            format!("{:?}", MasterKey::generate()),
            "MasterKey(<redacted>)"
        );
    }
}
