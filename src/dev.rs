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
pub const DEV_CALLERS: [&str; 8] = [
    "orders",
    "support",
    "rotator",
    "admin",
    "intruder",
    "fulfilment",
    "approver1",
    "approver2",
];
/// The SPIFFE trust domain of dev identities.
pub const DEV_TRUST_DOMAIN: &str = "fieldvault.dev";
/// The sample policy installed in dev mode.
pub const DEV_POLICY: &str = include_str!("../deploy/dev/policy.toml");

/// The dev CRL, in `DATA_DIR/dev/`: used when it exists.
pub const DEV_CRL: &str = "crl.pem";

/// Written into a data directory when dev mode makes its setup there: the
/// mark `serve --dev --reset` looks for before it deletes anything.
pub const DEV_MARKER: &str = "fieldvault-dev.txt";

const DEV_MARKER_TEXT: &str = "This data directory was made by `fieldvault serve --dev`.\n\
    `fieldvault serve --dev --reset` deletes dev/, store/ and audit.log here.\n";

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
    #[error(
        "{0} exists but {1} is missing; run `fieldvault serve --dev --reset` to start over \
         (it deletes the dev setup, the store and the audit log)"
    )]
    Incomplete(String, String),
    // The name given is not quoted: a value typed into the wrong place
    // must not end up in a log.
    #[error(
        "--dev-identity: not an identity name (a name has letters, digits, '-' and '_', and is \
         not a path); to use certificate files, give --ca, --cert and --key"
    )]
    NotAName,
    #[error(
        "--dev-identity: no dev identity of that name in {dir}; the identities there: {known}"
    )]
    UnknownIdentity { dir: String, known: String },
    #[error(
        "no dev setup in {dir} (looked in {absolute}): start `fieldvault serve --dev` in the \
         directory holding ./fieldvault-data first, or point --data-dir (or FIELDVAULT_DATA_DIR) \
         at the data directory of the dev server"
    )]
    NoSetup { dir: String, absolute: String },
    #[error("the store {0} is in use by another process (a running server?): stop it first")]
    InUse(String),
    #[error(
        "--reset: {data_dir} holds {found} but no dev setup (no {marker}, no dev CA and master \
         key), so it does not look like a dev data directory and is left alone; if it is one, \
         delete what you no longer need yourself"
    )]
    NotDev {
        data_dir: String,
        found: String,
        marker: &'static str,
    },
    #[error(
        "--reset: {0} is a symbolic link; its target is not deleted. Remove the link yourself \
         (or point --data-dir at the directory it leads to)"
    )]
    Linked(String),
    #[error(
        "{0} is a symbolic link or already holds files dev mode did not make; dev mode does not \
         write its setup through it or among them: give it a data directory of its own \
         (--data-dir)"
    )]
    ForeignDevDir(String),
    #[error(
        "--reset: {0} is not what dev mode made there (a directory for dev/ and store/, a file \
         for audit.log and store/db); nothing was deleted"
    )]
    Unexpected(String),
    #[error(
        "{data_dir} holds a store ({store}) but no dev/ setup: dev mode would make a new master \
         key that cannot open it. Serve that store with the config it was made with \
         (--config), or give dev mode a data directory of its own (--data-dir)"
    )]
    StoreWithoutSetup { data_dir: String, store: String },
    #[error(
        "{data_dir} is a dev data directory whose dev/ setup was deleted, but its store ({store}) \
         remains, encrypted under the deleted master key: run `fieldvault serve --dev --reset` \
         to start over (it deletes the store and the audit log: tokens made so far become \
         unreadable)"
    )]
    SetupDeleted { data_dir: String, store: String },
    #[error(
        "{dir}: issuing the missing dev identities ({missing}) with the dev CA failed: {reason}; \
         run `fieldvault serve --dev --reset` to start over (it deletes the dev setup, the store \
         and the audit log)"
    )]
    Upgrade {
        dir: String,
        missing: String,
        reason: String,
    },
    #[error(
        "--dev-identity {0}: that is the {0} certificate of the dev setup, not a caller; \
         the callers are the other NAME.pem/NAME.key pairs in DATA_DIR/dev/ (orders, support, …)"
    )]
    NotACaller(String),
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

/// The names of the client identities in `dir`: every `NAME.pem` with a
/// `NAME.key` beside it, the CA and the server excepted, sorted.
pub fn identities(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.strip_suffix(".pem")?.to_owned();
            let is_caller = name != "ca" && name != "server" && is_identity_name(&name);
            (is_caller && dir.join(format!("{name}.key")).exists()).then_some(name)
        })
        .collect();
    names.sort();
    names
}

fn is_identity_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Checks that `name` is a dev identity of the setup in `data_dir`: a
/// plain name (not a path) whose certificate and key are in
/// `DATA_DIR/dev/`. The errors say which identities there are, or where
/// the setup was looked for.
pub fn check_identity(data_dir: &Path, name: &str) -> Result<(), DevError> {
    if name == "ca" || name == "server" {
        return Err(DevError::NotACaller(name.to_owned()));
    }
    if !is_identity_name(name) {
        return Err(DevError::NotAName);
    }
    let dir = dev_dir(data_dir);
    if !dir.join("ca.pem").exists() {
        let absolute = std::path::absolute(&dir).unwrap_or_else(|_| dir.clone());
        return Err(DevError::NoSetup {
            dir: dir.display().to_string(),
            absolute: absolute.display().to_string(),
        });
    }
    if dir.join(format!("{name}.pem")).exists() && dir.join(format!("{name}.key")).exists() {
        return Ok(());
    }
    let known = identities(&dir);
    Err(DevError::UnknownIdentity {
        dir: dir.display().to_string(),
        known: if known.is_empty() {
            "none".to_owned()
        } else {
            known.join(", ")
        },
    })
}

/// Whether `data_dir` was made by dev mode: it carries [`DEV_MARKER`], or
/// (a setup made before the marker existed) a master key and a CA that
/// dev mode made, by its name: file names alone could be anyone's.
fn is_dev_data_dir(data_dir: &Path) -> bool {
    let dev = dev_dir(data_dir);
    data_dir.join(DEV_MARKER).is_file()
        || (!is_link(&dev) && dev.join("master.key").is_file() && holds_dev_ca(&dev))
}

/// The subject of every dev CA starts with this.
const DEV_CA_NAME: &str = "fieldvault dev CA";

/// Whether `dir/ca.pem` is a CA certificate dev mode made.
fn holds_dev_ca(dir: &Path) -> bool {
    let path = dir.join("ca.pem");
    let small_file =
        std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() < 1 << 20);
    let Some(pem) = small_file.then(|| std::fs::read(&path).ok()).flatten() else {
        return false;
    };
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(&pem) else {
        return false;
    };
    pem.parse_x509().is_ok_and(|cert| {
        cert.subject()
            .iter_common_name()
            .any(|cn| cn.as_str().is_ok_and(|cn| cn.starts_with(DEV_CA_NAME)))
    })
}

fn is_link(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// `serve --dev --reset`: deletes the dev setup, the store and the audit
/// log of `data_dir`, so that the next start makes a new setup. Only in a
/// directory dev mode made (see [`is_dev_data_dir`]), and of `dev/` only
/// the files dev mode writes: a `dev/` folder of someone else's, or a
/// production data dir, is left alone. Refuses while a server holds the
/// store. Returns what it deleted, in words (paths).
pub fn reset(data_dir: &Path) -> Result<Vec<String>, DevError> {
    let dev = dev_dir(data_dir);
    let store = Config::store_dir_in(data_dir);
    let audit = data_dir.join("audit.log");
    if !is_dev_data_dir(data_dir) {
        let found: Vec<&str> = [(&dev, "dev/"), (&store, "store/"), (&audit, "audit.log")]
            .into_iter()
            .filter(|(path, _)| std::fs::symlink_metadata(path).is_ok())
            .map(|(_, name)| name)
            .collect();
        if found.is_empty() {
            return Ok(Vec::new());
        }
        return Err(DevError::NotDev {
            data_dir: data_dir.display().to_string(),
            found: found.join(", "),
            marker: DEV_MARKER,
        });
    }
    // A linked dev/ would have the files of its target deleted (another
    // setup's master key, say).
    if is_link(&dev) {
        return Err(DevError::Linked(dev.display().to_string()));
    }
    // Everything is checked before anything is deleted: a reset stops
    // whole or not at all.
    let kind_of = |path: &Path| std::fs::symlink_metadata(path).ok().map(|m| m.file_type());
    let db = store.join("db");
    for (path, ok) in [
        (&dev, kind_of(&dev).is_none_or(|t| t.is_dir())),
        (
            &store,
            kind_of(&store).is_none_or(|t| t.is_dir() || t.is_symlink()),
        ),
        (
            &audit,
            kind_of(&audit).is_none_or(|t| t.is_file() || t.is_symlink()),
        ),
        // Opened below for its lock: a FIFO there would block the open.
        (
            &db,
            is_link(&store) || kind_of(&db).is_none_or(|t| t.is_file()),
        ),
    ] {
        if !ok {
            return Err(DevError::Unexpected(path.display().to_string()));
        }
    }
    // sled holds an exclusive flock on store/db while the store is open.
    // Held until the store is gone, so no server opens it meanwhile.
    let _lock = match std::fs::File::open(&db) {
        Ok(file) => {
            use rustix::fs::{flock, FlockOperation};
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => Some(file),
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(DevError::InUse(store.display().to_string()))
                }
                Err(e) => return Err(io_err(&db, e)),
            }
        }
        Err(_) => None,
    };
    let mut removed = Vec::new();
    if dev.is_dir() {
        // The CRL too: signed by the CA deleted here, the new CA's server
        // would refuse it.
        for name in expected_files().into_iter().chain([DEV_CRL.to_owned()]) {
            let file = dev.join(name);
            if file.is_file() {
                std::fs::remove_file(&file).map_err(|e| io_err(&file, e))?;
            }
        }
        // Only when nothing else is in it: files dev mode did not write
        // are not ours to delete.
        if std::fs::remove_dir(&dev).is_ok() {
            removed.push(dev.display().to_string());
        } else {
            removed.push(format!(
                "the setup files in {} (the other files there stay)",
                dev.display()
            ));
        }
    }
    if store.exists() {
        std::fs::remove_dir_all(&store).map_err(|e| io_err(&store, e))?;
        removed.push(store.display().to_string());
    }
    // The trail's files: the active one, rotated ones, the wrapped audit
    // key beside them and files moved aside (a new key would not verify
    // them, and the next start would refuse them).
    let trail = crate::audit::trail::everything_of(&audit).map_err(|e| io_err(&audit, e))?;
    for file in trail {
        std::fs::remove_file(&file).map_err(|e| io_err(&file, e))?;
        removed.push(file.display().to_string());
    }
    Ok(removed)
}

/// Creates the dev CA, certificates, master key and policy unless they
/// exist, and returns the config that uses them. Returns whether anything
/// was created.
pub fn prepare(data_dir: &Path, listen: SocketAddr) -> Result<(Config, bool), DevError> {
    let dir = dev_dir(data_dir);
    let store = Config::store_dir_in(data_dir);
    if !dir.join("ca.pem").exists() && store.exists() {
        // A new setup here would put a new master key beside a store it
        // cannot open.
        let marked = data_dir.join(DEV_MARKER).is_file();
        let (data_dir, store) = (data_dir.display().to_string(), store.display().to_string());
        return Err(if marked {
            DevError::SetupDeleted { data_dir, store }
        } else {
            DevError::StoreWithoutSetup { data_dir, store }
        });
    }
    let created = if dir.join("ca.pem").exists() {
        if !is_dev_data_dir(data_dir) {
            return Err(DevError::ForeignDevDir(dir.display().to_string()));
        }
        upgrade(&dir)?;
        note_missing_lifecycle_rules(&dir.join("policy.toml"));
        for f in expected_files() {
            if !dir.join(&f).exists() {
                return Err(DevError::Incomplete(dir.display().to_string(), f));
            }
        }
        false
    } else {
        let marker = data_dir.join(DEV_MARKER);
        clear_for_setup(&dir, marker.is_file())?;
        // Marked before the setup is written, so that a creation cut short
        // is recognised as dev mode's own next time.
        mark(data_dir)?;
        create(&dir)?;
        true
    };
    // A setup made before the marker existed gets one.
    mark(data_dir)?;
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
        // DATA_DIR/dev/crl.pem (`fieldvault dev revoke NAME` writes it)
        // is applied once it exists; changes show within a second.
        tls_options: crate::config::TlsOptions {
            crls: vec![dir.join(DEV_CRL)],
            crls_may_be_missing: true,
            reload_interval: std::time::Duration::from_secs(1),
            ..Default::default()
        },
        reflection: true,
        limits: Default::default(),
        keys: Default::default(),
        audit: Default::default(),
        grants: Default::default(),
        log: Default::default(),
        shutdown: Default::default(),
        metrics: Default::default(),
        // Expired tokens go within a second, so `tokenize --ttl 5s` can be
        // watched to the end.
        retention: crate::domain::Retention {
            sweep_interval: std::time::Duration::from_secs(1),
            ..Default::default()
        },
    };
    Ok((config, created))
}

/// A setup made by an older version lacks the identities added since
/// (`admin`): they are issued with the setup's own CA (so every other file
/// stays as it is), and the user's policy is left alone, with a log line
/// when it has no rule for them. Does nothing without the CA key (the
/// check for missing files then names it).
fn upgrade(dir: &Path) -> Result<(), DevError> {
    // Issued when its certificate is missing; a key without its
    // certificate is the remains of an issue cut short and is replaced.
    let missing: Vec<&str> = DEV_CALLERS
        .into_iter()
        .filter(|name| !dir.join(format!("{name}.pem")).exists())
        .collect();
    if missing.is_empty() || !dir.join("ca.key").exists() {
        return Ok(());
    }
    let failed = |reason: String| DevError::Upgrade {
        dir: dir.display().to_string(),
        missing: missing.join(", "),
        reason,
    };
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| failed(format!("{}: {e}", path.display())))
    };
    let ca_key = zeroize::Zeroizing::new(read("ca.key")?);
    let ca = DevCa::load(&read("ca.pem")?, &ca_key).map_err(|e| failed(e.to_string()))?;
    for name in &missing {
        let client = ca.issue_client(name, Some(&spiffe_id(name)))?;
        let key = dir.join(format!("{name}.key"));
        if key.is_file() {
            std::fs::remove_file(&key).map_err(|e| io_err(&key, e))?;
        }
        // The key first: the certificate marks the identity complete.
        write_private(&key, client.key_pem.as_bytes())?;
        write_private(&dir.join(format!("{name}.pem")), client.cert_pem.as_bytes())?;
    }
    tracing::info!(
        dir = %dir.display(),
        "dev setup: issued the dev identities it lacked ({}) with its dev CA",
        missing.join(", ")
    );
    let policy = dir.join("policy.toml");
    if !has_admin_rule(&policy) {
        tracing::warn!(
            "dev setup: {} predates the admin rule and quotas of this version's dev policy and \
             is left as it is: run `fieldvault serve --dev --reset` to start over with the new \
             one, or compare it with deploy/dev/policy.toml",
            policy.display()
        );
    }
    Ok(())
}

/// A dev policy made before the data-lifecycle and backup rules (issue 15)
/// or the approved-workflow rules (issue 16) is left as it is (it is the
/// user's file): one log line says what it lacks.
fn note_missing_lifecycle_rules(policy: &Path) {
    use crate::domain::policy::Action;
    let (orders, admin) = (spiffe_id("orders"), spiffe_id("admin"));
    let fulfilment = spiffe_id("fulfilment");
    let Some(p) = std::fs::read_to_string(policy)
        .ok()
        .and_then(|text| crate::domain::policy::Policy::from_toml(&text).ok())
    else {
        return;
    };
    let has = |action: Action, who: &str| {
        p.rules().iter().any(|r| {
            r.action == action
                && r.callers.iter().any(|c| c == who)
                && (who != fulfilment || r.requires_grant())
        })
    };
    let missing: Vec<&str> = [
        (Action::Delete, &orders, "orders: delete"),
        (Action::Inspect, &orders, "orders: inspect"),
        (Action::Erase, &admin, "admin: erase"),
        (Action::Export, &admin, "admin: export"),
        (Action::Backup, &admin, "admin: backup"),
        (
            Action::Detokenize,
            &fulfilment,
            "fulfilment: detokenize under a grant",
        ),
        (Action::Grants, &admin, "admin: grants"),
    ]
    .into_iter()
    .filter(|(action, who, _)| !has(*action, who))
    .map(|(_, _, what)| what)
    .collect();
    if !missing.is_empty() {
        tracing::warn!(
            "dev setup: {} predates rules of this version's dev policy (data lifecycle, \
             approved workflows: it lacks {}) and is left as it is: those calls are denied until \
             you add the rules of deploy/dev/policy.toml (the server reloads the file) or start \
             over with `fieldvault serve --dev --reset`",
            policy.display(),
            missing.join(", ")
        );
    }
}

/// Whether the policy file at `path` gives the dev identity `admin` an
/// admin rule (a file that cannot be read or parsed does not).
fn has_admin_rule(path: &Path) -> bool {
    let admin = spiffe_id("admin");
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| crate::domain::policy::Policy::from_toml(&text).ok())
        .is_some_and(|p| {
            p.rules().iter().any(|r| {
                r.action == crate::domain::policy::Action::Admin && r.callers.contains(&admin)
            })
        })
}

fn mark(data_dir: &Path) -> Result<(), DevError> {
    let marker = data_dir.join(DEV_MARKER);
    if marker.exists() {
        return Ok(());
    }
    // Private from the start (0700, as `serve` would set it anyway), so a
    // first start has nothing to warn about.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(data_dir)
        .map_err(|e| io_err(data_dir, e))?;
    write_private(&marker, DEV_MARKER_TEXT.as_bytes())
}

/// Before a setup is made in `dir` (it has no `ca.pem`, written last): in
/// a data dir dev mode did not make (`marked` false), any file there is
/// someone else's and the setup is refused. In one it made, the files a
/// setup writes are the remains of a creation cut short and are removed;
/// other files (the user's own) stay.
fn clear_for_setup(dir: &Path, marked: bool) -> Result<(), DevError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    // Through a link, the files would be another directory's, marker or
    // not: the setup is not written through it (as reset does not delete
    // through it).
    if is_link(dir) {
        return Err(DevError::ForeignDevDir(dir.display().to_string()));
    }
    let ours = expected_files();
    let mut leftovers = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        if !marked {
            return Err(DevError::ForeignDevDir(dir.display().to_string()));
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().is_ok_and(|t| t.is_file()) && ours.contains(&name) {
            leftovers.push(entry.path());
        }
    }
    for path in leftovers {
        std::fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
    }
    Ok(())
}

fn create(dir: &Path) -> Result<(), DevError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_err(dir, e))?;
    // Named apart from the CA of any other dev setup, so that a
    // certificate of another data dir is told apart by name too.
    let ca = DevCa::new(&format!(
        "{DEV_CA_NAME} {}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ))?;
    let server = ca.issue_server(&["localhost", "127.0.0.1", "::1"])?;
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

/// What [`revoke`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Revoked {
    /// The identity's certificate is now on `DATA_DIR/dev/crl.pem`, which
    /// revokes this many certificates in all.
    Added { total: usize, crl: PathBuf },
    /// It was on the CRL already; nothing was written.
    Already { crl: PathBuf },
}

/// How long a dev CRL is current (its `nextUpdate`); a server applies an
/// overdue one anyway, with a warning.
const DEV_CRL_VALIDITY: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// `fieldvault dev revoke NAME`: puts the certificate of dev identity
/// `name` on `DATA_DIR/dev/crl.pem` (made, or extended, and signed by the
/// dev CA). A running dev server applies it within a second: that
/// identity's new handshakes fail ("revoked"). Deleting crl.pem revokes
/// nothing again.
pub fn revoke(data_dir: &Path, name: &str) -> Result<Revoked, DevError> {
    check_identity(data_dir, name)?;
    let dir = dev_dir(data_dir);
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))
    };
    let ca_pem = read("ca.pem")?;
    let ca_key = zeroize::Zeroizing::new(read("ca.key")?);
    let ca = DevCa::load(&ca_pem, &ca_key).map_err(|e| io_err(&dir.join("ca.key"), e))?;
    let cert_path = dir.join(format!("{name}.pem"));
    let serial = serial_of(&read(&format!("{name}.pem"))?).map_err(|e| io_err(&cert_path, e))?;
    let crl = dir.join(DEV_CRL);
    let (mut serials, number) = if crl.exists() {
        revoked_in(&read(DEV_CRL)?).map_err(|e| io_err(&crl, e))?
    } else {
        (Vec::new(), 0)
    };
    if serials.contains(&serial) {
        return Ok(Revoked::Already { crl });
    }
    serials.push(serial);
    let pem = ca.revocation_list(&serials, number + 1, DEV_CRL_VALIDITY)?;
    // A new file renamed over the old one: a server never reads half of it.
    let tmp = dir.join(format!("{DEV_CRL}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    write_private(&tmp, pem.as_bytes())?;
    std::fs::rename(&tmp, &crl).map_err(|e| io_err(&crl, e))?;
    Ok(Revoked::Added {
        total: serials.len(),
        crl,
    })
}

/// The serial number (DER bytes) of the certificate in `pem`.
fn serial_of(pem: &str) -> Result<Vec<u8>, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
    let cert = pem.parse_x509().map_err(|e| e.to_string())?;
    Ok(cert.raw_serial().to_vec())
}

/// The serials a PEM CRL revokes, and its CRL number (0 without one).
fn revoked_in(pem: &str) -> Result<(Vec<Vec<u8>>, u64), String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
    let (_, crl) = x509_parser::parse_x509_crl(&pem.contents).map_err(|e| e.to_string())?;
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| r.raw_serial().to_vec())
        .collect();
    let number = crl
        .crl_number()
        .and_then(|n| u64::try_from(n.clone()).ok())
        .unwrap_or(0);
    Ok((serials, number))
}
