//! `fieldvault serve --dev`: everything a developer needs under
//! `DATA_DIR/dev/`, made on first start and reused afterwards.

use crate::config::{
    Config, MasterKeySource, TlsPaths, DEFAULT_CACHE_CAPACITY_MIB, DEFAULT_MAX_BATCH_ITEMS,
};
use crate::crypto::MasterKey;
use crate::devpki::DevCa;
use crate::domain::TokenModes;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The sample callers, each with a certificate `NAME.pem` / `NAME.key`.
pub const DEV_CALLERS: [&str; 4] = ["orders", "support", "rotator", "intruder"];
/// The SPIFFE trust domain of dev identities.
pub const DEV_TRUST_DOMAIN: &str = "fieldvault.dev";
/// The sample policy installed in dev mode.
pub const DEV_POLICY: &str = include_str!("../deploy/dev/policy.toml");

pub fn dev_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("dev")
}

pub fn spiffe_id(name: &str) -> String {
    format!("spiffe://{DEV_TRUST_DOMAIN}/{name}")
}

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    #[error("certificate generation failed: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("{0} exists but {1} is missing; delete {0} to regenerate the dev setup")]
    Incomplete(String, String),
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> DevError {
    DevError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), DevError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    f.write_all(contents).map_err(|e| io_err(path, e))?;
    f.sync_all().map_err(|e| io_err(path, e))
}

fn expected_files() -> Vec<String> {
    let mut files: Vec<String> = [
        "ca.pem",
        "ca.key",
        "server.pem",
        "server.key",
        "master.key",
        "policy.toml",
    ]
    .map(String::from)
    .to_vec();
    for name in DEV_CALLERS {
        files.push(format!("{name}.pem"));
        files.push(format!("{name}.key"));
    }
    files
}

/// Creates the dev CA, certificates, master key and policy unless they
/// exist, and returns the config that uses them. Returns whether anything
/// was created.
pub fn prepare(data_dir: &Path, listen: SocketAddr) -> Result<(Config, bool), DevError> {
    let dir = dev_dir(data_dir);
    let created = if dir.join("ca.pem").exists() {
        for f in expected_files() {
            if !dir.join(&f).exists() {
                return Err(DevError::Incomplete(dir.display().to_string(), f));
            }
        }
        false
    } else {
        create(&dir)?;
        true
    };
    let config = Config {
        listen,
        data_dir: data_dir.to_path_buf(),
        policy_file: dir.join("policy.toml"),
        audit_log: data_dir.join("audit.log"),
        max_batch_items: DEFAULT_MAX_BATCH_ITEMS,
        cache_capacity_mib: DEFAULT_CACHE_CAPACITY_MIB,
        default_phone_region: None,
        token_modes: TokenModes::default(),
        explicit_kind_denials: false,
        tls: TlsPaths {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            client_ca: dir.join("ca.pem"),
        },
        master_key: MasterKeySource::File(dir.join("master.key")),
        tls_options: Default::default(),
        reflection: true,
        limits: Default::default(),
    };
    Ok((config, created))
}

fn create(dir: &Path) -> Result<(), DevError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_err(dir, e))?;
    let ca = DevCa::new("fieldvault dev CA")?;
    let server = ca.issue_server(&["localhost", "127.0.0.1"])?;
    write_private(&dir.join("server.pem"), server.cert_pem.as_bytes())?;
    write_private(&dir.join("server.key"), server.key_pem.as_bytes())?;
    for name in DEV_CALLERS {
        let client = ca.issue_client(name, Some(&spiffe_id(name)))?;
        write_private(&dir.join(format!("{name}.pem")), client.cert_pem.as_bytes())?;
        write_private(&dir.join(format!("{name}.key")), client.key_pem.as_bytes())?;
    }
    write_private(
        &dir.join("master.key"),
        MasterKey::generate().to_hex().as_bytes(),
    )?;
    write_private(&dir.join("policy.toml"), DEV_POLICY.as_bytes())?;
    // The CA key is written last, with the certificate: its presence marks
    // a complete setup.
    write_private(&dir.join("ca.key"), ca.key_pem().as_bytes())?;
    write_private(&dir.join("ca.pem"), ca.cert_pem().as_bytes())?;
    Ok(())
}
