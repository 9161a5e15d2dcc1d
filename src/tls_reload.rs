//! The server's TLS material, kept current without a restart: the server
//! certificate and key, the client CA bundle and the CRLs are read again
//! every `tls.reload_interval_secs` and on SIGHUP, and when their content
//! changed a new rustls `ServerConfig` is built and put in force for new
//! handshakes. Established connections keep the config they were
//! accepted with (rustls binds it to the connection at accept), so they
//! are never dropped by a reload.
//!
//! A bad set of files (unreadable, unsafe permissions, not PEM, a key
//! that does not match the certificate, an empty CA bundle, a CRL that
//! does not parse or that no CA in `tls.client_ca` signed) keeps the
//! material in force and is logged once, naming the setting and the file,
//! until the files change again.
//!
//! Revocation: each CRL must be signed by a CA certificate in
//! `tls.client_ca`. Only the end-entity (client) certificate is checked
//! against the CRLs, and a certificate no configured CRL covers (another
//! issuer's) is accepted: a CRL speaks only for its issuer, so demanding a
//! status for every certificate of every chain would lock out every client
//! of an issuer that publishes none (and of an intermediate whose parent's
//! CRL is not configured). An intermediate CA is withdrawn by taking it out
//! of `tls.client_ca`, which reloads the same way. A CRL past its
//! `nextUpdate` is still applied (a warning is logged): a stale list of
//! revoked certificates is better than none, and refusing every client of
//! the issuer because a CRL was not refreshed in time would turn a missed
//! cron job into an outage.

use crate::config::{Config, TlsMinVersion};
use crate::fsperm::{open_checked, Access};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use zeroize::Zeroizing;

pub use crate::tls::TlsError;

/// The files (and settings) a server's TLS config is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSources {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    pub crls: Vec<PathBuf>,
    /// A missing CRL file revokes nothing (dev mode's `crl.pem`).
    pub crls_may_be_missing: bool,
    pub min_version: TlsMinVersion,
}

impl TlsSources {
    pub fn of(config: &Config) -> Self {
        Self {
            cert: config.tls.cert.clone(),
            key: config.tls.key.clone(),
            client_ca: config.tls.client_ca.clone(),
            crls: config.tls_options.crls.clone(),
            crls_may_be_missing: config.tls_options.crls_may_be_missing,
            min_version: config.tls_options.min_version,
        }
    }

    /// Every file, in a fixed order: cert, key, client CA, then the CRLs.
    fn files(&self) -> Vec<TlsFile<'_>> {
        let mut files = vec![
            TlsFile::new("tls.cert", &self.cert, Access::NoOtherWrites),
            TlsFile::new("tls.key", &self.key, Access::OwnerOnly),
            TlsFile::new("tls.client_ca", &self.client_ca, Access::NoOtherWrites),
        ];
        for (i, crl) in self.crls.iter().enumerate() {
            files.push(TlsFile {
                name: format!("tls.crls[{i}]"),
                optional: self.crls_may_be_missing,
                ..TlsFile::new("tls.crls", crl, Access::NoOtherWrites)
            });
        }
        files
    }
}

/// One file of [`TlsSources`].
struct TlsFile<'a> {
    /// The setting that names it (`tls.crls`).
    setting: &'static str,
    /// The setting with the index of the file in it (`tls.crls[1]`).
    name: String,
    path: &'a Path,
    access: Access,
    /// A missing file counts as absent rather than as an error.
    optional: bool,
}

impl<'a> TlsFile<'a> {
    fn new(setting: &'static str, path: &'a Path, access: Access) -> Self {
        Self {
            setting,
            name: setting.to_owned(),
            path,
            access,
            optional: false,
        }
    }
}

fn file_err(setting: &str, path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid(format!("{setting}: {}: {reason}", path.display()))
}

/// One file as read: its bytes (`None`: an optional CRL that does not
/// exist), or why it could not be read.
type Read1 = Result<Option<Zeroizing<Vec<u8>>>, TlsError>;

/// What identifies the content of the files: a SHA-256 per file (`None`:
/// missing or unreadable). No secret is kept: the key file's bytes are
/// dropped (and zeroed) once the config is built.
type Fingerprint = Vec<Option<[u8; 32]>>;

struct Snapshot {
    reads: Vec<Read1>,
    fingerprint: Fingerprint,
}

fn read_all(sources: &TlsSources) -> Snapshot {
    let reads: Vec<Read1> = sources.files().iter().map(read_one).collect();
    let fingerprint = reads
        .iter()
        .map(|r| match r {
            Ok(Some(bytes)) => Some(Sha256::digest(bytes.as_slice()).into()),
            _ => None,
        })
        .collect();
    Snapshot { reads, fingerprint }
}

fn read_one(file: &TlsFile<'_>) -> Read1 {
    let missing = || {
        matches!(std::fs::symlink_metadata(file.path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound)
    };
    if file.optional && missing() {
        return Ok(None);
    }
    // Opened as at start: a regular file, with the modes the setting needs.
    let mut handle = open_checked(file.setting, file.path, file.access)
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    let mut bytes = Zeroizing::new(Vec::new());
    handle
        .read_to_end(&mut bytes)
        .map_err(|e| file_err(&file.name, file.path, e))?;
    Ok(Some(bytes))
}

/// What a built config holds, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The server certificate's serial number, hex.
    pub serial: String,
    /// When the server certificate expires (RFC 2822-ish, from x509-parser).
    pub not_after: String,
    /// The same, in seconds since the Unix epoch (0 if unreadable).
    pub not_after_unix: i64,
    /// Certificates in the client CA bundle.
    pub client_cas: usize,
    /// CRLs in force (a file may hold several) and the serials they revoke.
    pub crls: usize,
    pub revoked: usize,
}

struct Built {
    config: Arc<ServerConfig>,
    summary: Summary,
}

static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
static TLS13_AND_12: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn certs_in(
    setting: &str,
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(setting, path, e))?;
    if certs.is_empty() {
        return Err(file_err(setting, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The CRLs in one file: PEM (one or more `X509 CRL` blocks) or DER.
fn crls_in(
    setting: &str,
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let is_pem = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .is_some_and(|start| bytes[start..].starts_with(b"-----BEGIN"));
    if !is_pem {
        return Ok(vec![CertificateRevocationListDer::from(bytes.to_vec())]);
    }
    let crls = CertificateRevocationListDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(setting, path, e))?;
    if crls.is_empty() {
        return Err(file_err(
            setting,
            path,
            "holds no CRL (no \"BEGIN X509 CRL\" block, and not DER)",
        ));
    }
    Ok(crls)
}

/// Checks that `crl` parses and that a CA in `cas` signed it; returns
/// how many serials it revokes. Warns (does not refuse) when its
/// `nextUpdate` has passed.
fn check_crl(
    setting: &str,
    path: &Path,
    crl: &CertificateRevocationListDer<'_>,
    cas: &[CertificateDer<'static>],
) -> Result<usize, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_crl(crl.as_ref())
        .map_err(|e| file_err(setting, path, format!("not a CRL: {e}")))?;
    let issuer = parsed.issuer().as_raw();
    let mut issuer_known = false;
    for ca in cas {
        let Ok((_, ca)) = x509_parser::parse_x509_certificate(ca.as_ref()) else {
            continue;
        };
        if ca.subject().as_raw() != issuer {
            continue;
        }
        issuer_known = true;
        if parsed.verify_signature(ca.public_key()).is_ok() {
            if let Some(next) = parsed.next_update() {
                if next.timestamp() < x509_parser::time::ASN1Time::now().timestamp() {
                    tracing::warn!(
                        setting,
                        file = %path.display(),
                        next_update = %next,
                        "this CRL's next update is overdue; it is still applied: publish a fresh one"
                    );
                }
            }
            return Ok(parsed.iter_revoked_certificates().count());
        }
    }
    Err(file_err(
        setting,
        path,
        if issuer_known {
            format!(
                "the CRL of {} is not signed by that CA's key in tls.client_ca",
                parsed.issuer()
            )
        } else {
            format!(
                "the CRL's issuer ({}) is not a CA in tls.client_ca",
                parsed.issuer()
            )
        },
    ))
}

fn build(sources: &TlsSources, snapshot: Snapshot) -> Result<Built, TlsError> {
    let files = sources.files();
    let mut reads = snapshot.reads.into_iter();
    let mut next = || -> Result<Option<Zeroizing<Vec<u8>>>, TlsError> {
        reads
            .next()
            .unwrap_or_else(|| Err(TlsError::Invalid("internal: a file was not read".into())))
    };
    let required = |r: Option<Zeroizing<Vec<u8>>>, i: usize| {
        r.ok_or_else(|| file_err(&files[i].name, files[i].path, "does not exist"))
    };
    let cert_bytes = required(next()?, 0)?;
    let key_bytes = required(next()?, 1)?;
    let ca_bytes = required(next()?, 2)?;
    let chain = certs_in("tls.cert", &sources.cert, &cert_bytes)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes)
        .map_err(|e| file_err("tls.key", &sources.key, e))?;
    let cas = certs_in("tls.client_ca", &sources.client_ca, &ca_bytes)?;
    let mut roots = RootCertStore::empty();
    for ca in &cas {
        roots
            .add(ca.clone())
            .map_err(|e| file_err("tls.client_ca", &sources.client_ca, e))?;
    }
    let mut crls = Vec::new();
    let mut revoked = 0;
    for (i, path) in sources.crls.iter().enumerate() {
        let setting = &files[3 + i].name;
        let Some(bytes) = next()? else {
            continue;
        };
        for crl in crls_in(setting, path, &bytes)? {
            revoked += check_crl(setting, path, &crl, &cas)?;
            crls.push(crl);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let crl_count = crls.len();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls)
        .only_check_end_entity_revocation()
        .allow_unknown_revocation_status()
        .build()
        .map_err(|e| TlsError::Invalid(format!("tls.client_ca / tls.crls: {e}")))?;
    let summary = summarize(&chain[0], cas.len(), crl_count, revoked);
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(match sources.min_version {
            TlsMinVersion::Tls13 => TLS13_ONLY,
            TlsMinVersion::Tls12 => TLS13_AND_12,
        })
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::Invalid(format!(
                "tls.key: {}: does not belong to the certificate in tls.cert ({})",
                sources.key.display(),
                sources.cert.display()
            )),
            other => TlsError::Invalid(format!(
                "tls.cert / tls.key: {} / {}: {other}",
                sources.cert.display(),
                sources.key.display()
            )),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Built {
        config: Arc::new(config),
        summary,
    })
}

fn summarize(leaf: &CertificateDer<'_>, client_cas: usize, crls: usize, revoked: usize) -> Summary {
    let (serial, not_after, not_after_unix) =
        match x509_parser::parse_x509_certificate(leaf.as_ref()) {
            Ok((_, cert)) => (
                cert.raw_serial_as_string().replace(':', ""),
                cert.validity().not_after.to_string(),
                cert.validity().not_after.timestamp(),
            ),
            Err(_) => ("?".to_owned(), "?".to_owned(), 0),
        };
    Summary {
        serial,
        not_after,
        not_after_unix,
        client_cas,
        crls,
        revoked,
    }
}

/// Builds a server config from `sources` once (no reloading): what
/// `config check` and the transport ceiling use.
pub fn load(sources: &TlsSources) -> Result<(Arc<ServerConfig>, Summary), TlsError> {
    let built = build(sources, read_all(sources))?;
    Ok((built.config, built.summary))
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// The files are as when last read (a refused set stays refused).
    Unchanged,
    /// A new config is in force for new handshakes.
    Applied(Summary),
    /// The files changed but are not usable; the old material stays.
    Refused(String),
}

struct State {
    /// The files the config in force was built from.
    applied: Fingerprint,
    /// The last set refused (logged once).
    refused: Option<Fingerprint>,
}

/// The config in force for new handshakes, and how to renew it.
pub struct ServerTls {
    sources: TlsSources,
    current: watch::Sender<Arc<ServerConfig>>,
    state: Mutex<State>,
}

impl ServerTls {
    /// Reads and checks every file; fails (naming the setting and file) if
    /// anything is wrong, as a server start must.
    pub fn open(sources: TlsSources) -> Result<Arc<Self>, TlsError> {
        let snapshot = read_all(&sources);
        let applied = snapshot.fingerprint.clone();
        let built = build(&sources, snapshot)?;
        tracing::info!(
            server_cert_serial = %built.summary.serial,
            server_cert_not_after = %built.summary.not_after,
            client_cas = built.summary.client_cas,
            crls = built.summary.crls,
            revoked = built.summary.revoked,
            "TLS material loaded"
        );
        describe_metrics();
        metrics::gauge!("fieldvault_tls_server_cert_not_after_seconds")
            .set(built.summary.not_after_unix as f64);
        let (current, _) = watch::channel(built.config);
        Ok(Arc::new(Self {
            sources,
            current,
            state: Mutex::new(State {
                applied,
                refused: None,
            }),
        }))
    }

    /// The config new handshakes use, kept current.
    pub fn configs(&self) -> watch::Receiver<Arc<ServerConfig>> {
        self.current.subscribe()
    }

    /// Reads the files again; builds and applies a new config if their
    /// content changed (or, `forced`, in any case, as on SIGHUP). Logs
    /// what it did: a success naming what changed, a refusal naming the
    /// setting and file (once per set of files: polling an unchanged bad
    /// file says nothing more, unless `forced`).
    pub fn reload(&self, forced: bool) -> Reloaded {
        let snapshot = read_all(&self.sources);
        let fingerprint = snapshot.fingerprint.clone();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !forced && (fingerprint == state.applied || state.refused.as_ref() == Some(&fingerprint))
        {
            return Reloaded::Unchanged;
        }
        let changed: Vec<String> = self
            .sources
            .files()
            .into_iter()
            .zip(fingerprint.iter().zip(state.applied.iter()))
            .filter(|(_, (new, old))| new != old)
            .map(|(file, _)| file.name)
            .collect();
        let changed = if changed.is_empty() {
            "nothing (forced)".to_owned()
        } else {
            changed.join(", ")
        };
        match build(&self.sources, snapshot) {
            Ok(built) => {
                tracing::info!(
                    changed = %changed,
                    server_cert_serial = %built.summary.serial,
                    server_cert_not_after = %built.summary.not_after,
                    client_cas = built.summary.client_cas,
                    crls = built.summary.crls,
                    revoked = built.summary.revoked,
                    "TLS material reloaded: new handshakes use it; open connections keep theirs"
                );
                self.current.send_replace(built.config);
                metrics::counter!("fieldvault_tls_reloads_total", "outcome" => "applied")
                    .increment(1);
                metrics::gauge!("fieldvault_tls_server_cert_not_after_seconds")
                    .set(built.summary.not_after_unix as f64);
                state.applied = fingerprint;
                state.refused = None;
                Reloaded::Applied(built.summary)
            }
            Err(e) => {
                tracing::warn!(
                    changed = %changed,
                    error = %e,
                    "TLS files changed but cannot be used; the material in force stays"
                );
                metrics::counter!("fieldvault_tls_reloads_total", "outcome" => "refused")
                    .increment(1);
                state.refused = Some(fingerprint);
                Reloaded::Refused(e.to_string())
            }
        }
    }

    /// Reloads every `interval` (when the files changed) and on SIGHUP
    /// (always), until the returned future is dropped. SIGHUP is listened
    /// for from this call on, not from the first poll: a SIGHUP right
    /// after the start (a log rotation) never meets the default action,
    /// which ends the process. Call it within the Tokio runtime.
    pub fn watch(
        self: Arc<Self>,
        interval: Duration,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        use tokio::signal::unix::{signal, SignalKind};
        let hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; the TLS files are still re-read when they change");
                None
            }
        };
        self.watch_with(interval, hangup)
    }

    async fn watch_with(
        self: Arc<Self>,
        interval: Duration,
        mut hangup: Option<tokio::signal::unix::Signal>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    tracing::info!("SIGHUP: re-reading the TLS files");
                    true
                }
            };
            let this = self.clone();
            // File reads and key parsing: off the runtime's workers.
            let _ = tokio::task::spawn_blocking(move || this.reload(forced)).await;
        }
    }
}

/// Why a TLS handshake failed, as a short fixed string: the `reason` label
/// of `fieldvault_tls_handshake_failures_total` and of the log line.
pub mod reason {
    /// The client certificate is on a CRL.
    pub const REVOKED: &str = "revoked";
    /// The client certificate's notAfter has passed.
    pub const EXPIRED: &str = "expired";
    /// The client certificate's notBefore has not come yet.
    pub const NOT_YET_VALID: &str = "not_yet_valid";
    /// The client certificate does not chain to a CA in `tls.client_ca`.
    pub const UNKNOWN_CA: &str = "unknown_ca";
    /// The client sent no certificate.
    pub const NO_CERTIFICATE: &str = "no_certificate";
    /// The client certificate is otherwise unacceptable (bad signature,
    /// wrong key usage, undecodable).
    pub const BAD_CERTIFICATE: &str = "bad_certificate";
    /// The client refused the server (an alert: often its trust in the
    /// server certificate, e.g. after a rotation to a CA it lacks).
    pub const PEER_ALERT: &str = "peer_alert";
    /// Not TLS, no common version, cipher suite or ALPN protocol (h2), or
    /// a malformed or unexpected message.
    pub const PROTOCOL: &str = "protocol";
    /// The handshake did not finish within `limits.handshake_timeout_secs`.
    pub const TIMEOUT: &str = "timeout";
    /// The client closed or reset the connection mid-handshake (TCP
    /// health checks, port scans).
    pub const CLOSED: &str = "closed";
    /// Anything else.
    pub const OTHER: &str = "other";
    /// Every reason, for dashboards and tests.
    pub const ALL: [&str; 11] = [
        REVOKED,
        EXPIRED,
        NOT_YET_VALID,
        UNKNOWN_CA,
        NO_CERTIFICATE,
        BAD_CERTIFICATE,
        PEER_ALERT,
        PROTOCOL,
        TIMEOUT,
        CLOSED,
        OTHER,
    ];
}

/// The [`reason`] of a failed server-side handshake (`tokio_rustls`'s
/// accept error).
pub fn failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::CertificateError as C;
    use std::io::ErrorKind as K;
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let Some(err) = rustls_error else {
        return match e.kind() {
            K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
                reason::CLOSED
            }
            K::InvalidData => reason::PROTOCOL,
            _ => reason::OTHER,
        };
    };
    match err {
        rustls::Error::InvalidCertificate(c) => match c {
            C::Revoked => reason::REVOKED,
            C::Expired | C::ExpiredContext { .. } => reason::EXPIRED,
            C::NotValidYet | C::NotValidYetContext { .. } => reason::NOT_YET_VALID,
            C::UnknownIssuer => reason::UNKNOWN_CA,
            _ => reason::BAD_CERTIFICATE,
        },
        rustls::Error::NoCertificatesPresented => reason::NO_CERTIFICATE,
        rustls::Error::AlertReceived(_) => reason::PEER_ALERT,
        rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. }
        | rustls::Error::InvalidMessage(_)
        | rustls::Error::PeerIncompatible(_)
        | rustls::Error::PeerMisbehaved(_)
        | rustls::Error::NoApplicationProtocol
        | rustls::Error::DecryptError => reason::PROTOCOL,
        _ => reason::OTHER,
    }
}

/// Describes the TLS metrics and makes every series exist at zero, so
/// that alerts on their rate work before the first failure.
fn describe_metrics() {
    metrics::describe_counter!(
        "fieldvault_tls_handshake_failures_total",
        "TLS handshakes that failed, by reason (revoked, expired, unknown_ca, ...)"
    );
    metrics::describe_counter!(
        "fieldvault_tls_reloads_total",
        "Reloads of the TLS files after a change or SIGHUP: applied, or refused (the old material stays)"
    );
    metrics::describe_gauge!(
        "fieldvault_tls_server_cert_not_after_seconds",
        "When the server certificate in force expires, in seconds since the Unix epoch"
    );
    for reason in reason::ALL {
        metrics::counter!("fieldvault_tls_handshake_failures_total", "reason" => reason)
            .increment(0);
    }
    for outcome in ["applied", "refused"] {
        metrics::counter!("fieldvault_tls_reloads_total", "outcome" => outcome).increment(0);
    }
}

/// Counts a failed handshake under `reason` in
/// `fieldvault_tls_handshake_failures_total`.
pub fn count_failure(reason: &'static str) {
    metrics::counter!("fieldvault_tls_handshake_failures_total", "reason" => reason).increment(1);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::devpki::DevCa;
    use std::os::unix::fs::PermissionsExt;

    fn write(path: &Path, contents: &[u8]) {
        std::fs::write(path, contents).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// A CA, a server certificate and key, and sources naming them (and
    /// `crl.pem` beside them when `crl`).
    struct Files {
        dir: tempfile::TempDir,
        ca: DevCa,
        sources: TlsSources,
    }

    impl Files {
        fn new(crl: bool) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let ca = DevCa::new("reload test CA").unwrap();
            let p = |f: &str| dir.path().join(f);
            write(&p("ca.pem"), ca.cert_pem().as_bytes());
            let server = ca.issue_server(&["localhost"]).unwrap();
            write(&p("server.pem"), server.cert_pem.as_bytes());
            write(&p("server.key"), server.key_pem.as_bytes());
            let sources = TlsSources {
                cert: p("server.pem"),
                key: p("server.key"),
                client_ca: p("ca.pem"),
                crls: if crl { vec![p("crl.pem")] } else { vec![] },
                crls_may_be_missing: false,
                min_version: TlsMinVersion::Tls13,
            };
            if crl {
                let empty = ca
                    .revocation_list(&[], 1, Duration::from_secs(3600))
                    .unwrap();
                write(&p("crl.pem"), empty.as_bytes());
            }
            Self { dir, ca, sources }
        }

        fn path(&self, f: &str) -> PathBuf {
            self.dir.path().join(f)
        }
    }

    fn refused(r: Reloaded) -> String {
        match r {
            Reloaded::Refused(why) => why,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn unchanged_files_are_not_reloaded_and_a_new_certificate_is() {
        let f = Files::new(false);
        let tls = ServerTls::open(f.sources.clone()).unwrap();
        let before = tls.configs().borrow().clone();
        assert_eq!(tls.reload(false), Reloaded::Unchanged);
        assert!(Arc::ptr_eq(&before, &tls.configs().borrow()));
        let server = f.ca.issue_server(&["localhost"]).unwrap();
        write(&f.path("server.key"), server.key_pem.as_bytes());
        write(&f.path("server.pem"), server.cert_pem.as_bytes());
        assert!(matches!(tls.reload(false), Reloaded::Applied(_)));
        assert!(!Arc::ptr_eq(&before, &tls.configs().borrow()));
        // Forced (SIGHUP): rebuilt even though nothing changed.
        assert!(matches!(tls.reload(true), Reloaded::Applied(_)));
    }

    #[test]
    fn a_key_that_does_not_match_keeps_the_old_config_and_is_reported_once() {
        let f = Files::new(false);
        let tls = ServerTls::open(f.sources.clone()).unwrap();
        let before = tls.configs().borrow().clone();
        let other = f.ca.issue_server(&["localhost"]).unwrap();
        write(&f.path("server.pem"), other.cert_pem.as_bytes());
        let why = refused(tls.reload(false));
        assert!(
            why.contains("tls.key") && why.contains("server.key"),
            "{why}"
        );
        assert!(why.contains("does not belong"), "{why}");
        assert!(Arc::ptr_eq(&before, &tls.configs().borrow()));
        // The same bad files: nothing more to say.
        assert_eq!(tls.reload(false), Reloaded::Unchanged);
        // The matching key arrives: applied.
        write(&f.path("server.key"), other.key_pem.as_bytes());
        assert!(matches!(tls.reload(false), Reloaded::Applied(_)));
        assert!(!Arc::ptr_eq(&before, &tls.configs().borrow()));
    }

    #[test]
    fn an_empty_ca_bundle_or_an_unreadable_certificate_is_refused_naming_its_setting() {
        let f = Files::new(false);
        let tls = ServerTls::open(f.sources.clone()).unwrap();
        write(&f.path("ca.pem"), b"");
        let why = refused(tls.reload(false));
        assert!(
            why.contains("tls.client_ca") && why.contains("no PEM certificate"),
            "{why}"
        );
        // Back to what is in force: nothing to do.
        write(&f.path("ca.pem"), f.ca.cert_pem().as_bytes());
        assert_eq!(tls.reload(false), Reloaded::Unchanged);
        std::fs::remove_file(f.path("server.pem")).unwrap();
        let why = refused(tls.reload(false));
        assert!(why.contains("tls.cert"), "{why}");
        // A key others can read is refused as at start.
        let server = f.ca.issue_server(&["localhost"]).unwrap();
        write(&f.path("server.pem"), server.cert_pem.as_bytes());
        write(&f.path("server.key"), server.key_pem.as_bytes());
        std::fs::set_permissions(f.path("server.key"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let why = refused(tls.reload(false));
        assert!(why.contains("tls.key"), "{why}");
        assert!(ServerTls::open(f.sources.clone()).is_err());
    }

    #[test]
    fn a_crl_that_does_not_parse_or_that_another_ca_signed_is_refused() {
        let f = Files::new(true);
        let tls = ServerTls::open(f.sources.clone()).unwrap();
        write(&f.path("crl.pem"), b"not a CRL at all");
        let why = refused(tls.reload(false));
        assert!(
            why.contains("tls.crls[0]") && why.contains("crl.pem"),
            "{why}"
        );
        let stranger = DevCa::new("another CA").unwrap();
        let foreign = stranger
            .revocation_list(&[vec![1, 2, 3]], 1, Duration::from_secs(3600))
            .unwrap();
        write(&f.path("crl.pem"), foreign.as_bytes());
        let why = refused(tls.reload(false));
        assert!(
            why.contains("tls.crls[0]") && why.contains("not a CA in tls.client_ca"),
            "{why}"
        );
        // Same name, another key: the signature does not verify.
        let twin = DevCa::new("reload test CA").unwrap();
        let forged = twin
            .revocation_list(&[vec![1, 2, 3]], 1, Duration::from_secs(3600))
            .unwrap();
        write(&f.path("crl.pem"), forged.as_bytes());
        let why = refused(tls.reload(false));
        assert!(why.contains("not signed by that CA's key"), "{why}");
        // The CA's own CRL, as DER: applied.
        let good =
            f.ca.revocation_list(&[vec![1, 2, 3], vec![4, 5]], 2, Duration::from_secs(3600))
                .unwrap();
        let der = CertificateRevocationListDer::from_pem_slice(good.as_bytes()).unwrap();
        write(&f.path("crl.pem"), der.as_ref());
        match tls.reload(false) {
            Reloaded::Applied(summary) => {
                assert_eq!((summary.crls, summary.revoked), (1, 2));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_crl_is_an_error_unless_the_crl_may_be_missing() {
        let f = Files::new(true);
        std::fs::remove_file(f.path("crl.pem")).unwrap();
        let err = ServerTls::open(f.sources.clone())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("tls.crls") && err.contains("crl.pem"), "{err}");
        let sources = TlsSources {
            crls_may_be_missing: true,
            ..f.sources.clone()
        };
        let tls = ServerTls::open(sources).unwrap();
        // Made after the start: picked up.
        let crl =
            f.ca.revocation_list(&[vec![9]], 1, Duration::from_secs(3600))
                .unwrap();
        write(&f.path("crl.pem"), crl.as_bytes());
        match tls.reload(false) {
            Reloaded::Applied(summary) => assert_eq!(summary.revoked, 1),
            other => panic!("{other:?}"),
        }
        // Deleted again: nothing revoked.
        std::fs::remove_file(f.path("crl.pem")).unwrap();
        match tls.reload(false) {
            Reloaded::Applied(summary) => assert_eq!((summary.crls, summary.revoked), (0, 0)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn handshake_failures_are_classified_into_the_fixed_reasons() {
        use rustls::CertificateError as C;
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let cases = [
            (
                io(rustls::Error::InvalidCertificate(C::Revoked)),
                reason::REVOKED,
            ),
            (
                io(rustls::Error::InvalidCertificate(C::Expired)),
                reason::EXPIRED,
            ),
            (
                io(rustls::Error::InvalidCertificate(C::NotValidYet)),
                reason::NOT_YET_VALID,
            ),
            (
                io(rustls::Error::InvalidCertificate(C::UnknownIssuer)),
                reason::UNKNOWN_CA,
            ),
            (
                io(rustls::Error::InvalidCertificate(C::BadSignature)),
                reason::BAD_CERTIFICATE,
            ),
            (
                io(rustls::Error::NoCertificatesPresented),
                reason::NO_CERTIFICATE,
            ),
            (
                io(rustls::Error::AlertReceived(
                    rustls::AlertDescription::UnknownCA,
                )),
                reason::PEER_ALERT,
            ),
            (io(rustls::Error::NoApplicationProtocol), reason::PROTOCOL),
            (
                std::io::Error::new(std::io::ErrorKind::InvalidData, "not TLS"),
                reason::PROTOCOL,
            ),
            (
                std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                reason::CLOSED,
            ),
            (
                std::io::Error::from(std::io::ErrorKind::ConnectionReset),
                reason::CLOSED,
            ),
            (std::io::Error::other("?"), reason::OTHER),
        ];
        for (err, want) in cases {
            assert_eq!(failure_reason(&err), want, "{err}");
            assert!(reason::ALL.contains(&want));
        }
    }

    #[test]
    fn failures_reloads_and_the_server_certificate_expiry_are_measured() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let f = Files::new(false);
        metrics::with_local_recorder(&recorder, || {
            let tls = ServerTls::open(f.sources.clone()).unwrap();
            count_failure(reason::REVOKED);
            count_failure(reason::REVOKED);
            let other = f.ca.issue_server(&["localhost"]).unwrap();
            write(&f.path("server.pem"), other.cert_pem.as_bytes());
            assert!(matches!(tls.reload(false), Reloaded::Refused(_)));
        });
        let text = handle.render();
        for line in [
            "fieldvault_tls_handshake_failures_total{reason=\"revoked\"} 2",
            "fieldvault_tls_handshake_failures_total{reason=\"expired\"} 0",
            "fieldvault_tls_reloads_total{outcome=\"refused\"} 1",
            "fieldvault_tls_reloads_total{outcome=\"applied\"} 0",
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
        let expiry = text
            .lines()
            .find_map(|l| l.strip_prefix("fieldvault_tls_server_cert_not_after_seconds "))
            .unwrap();
        // rcgen's default validity ends in 4096: far in the future.
        assert!(expiry.parse::<f64>().unwrap() > 4.0e9, "{expiry}");
    }
}
