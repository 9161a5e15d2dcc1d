//! The server's TLS material, kept current without a restart: the server
//! certificate and key, the client CA bundle and the CRLs are read again
//! every `tls.reload_interval_secs` and on SIGHUP, and when their content
//! changed a new rustls `ServerConfig` is built and put in force for new
//! handshakes. A new server certificate never drops an open connection;
//! a change of the CAs or CRLs is also checked against every open
//! connection (see [`crate::drain::Connections::recheck`]).
//!
//! The material is two parts, each applied or refused on its own: the
//! server's certificate and key, and the client CAs with the CRLs (a
//! broken CRL must not hold back a certificate renewal). A bad part
//! (unreadable, unsafe permissions, not PEM, a key that does not match the
//! certificate, a server certificate expired or not yet valid, an empty CA
//! bundle, a CRL that does not parse or that no CA in `tls.client_ca`
//! signed) keeps its material in force and is logged once, naming the
//! setting and the file, until its files change again.
//!
//! Revocation: each CRL must be signed by a CA certificate in
//! `tls.client_ca`; the CRL of a CA taken out of the bundle while the
//! server runs stays in force (a certificate of that CA may still chain to
//! a root in the bundle), any other unsigned one is refused. Only the end-entity (client) certificate is checked against
//! the CRLs, and a certificate no configured CRL covers (another issuer's)
//! is accepted: a CRL speaks only for its issuer, so demanding a status for
//! every certificate of every chain would lock out every client of an
//! issuer that publishes none. A CRL past its `nextUpdate` is still
//! applied (a warning is logged, and its `nextUpdate` is a gauge): a stale
//! list of revoked certificates is better than none, and refusing every
//! client of the issuer because a CRL was not refreshed in time would turn
//! a missed cron job into an outage.

use crate::config::{Config, TlsMinVersion};
use crate::fsperm::{open_checked, Access};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
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

/// The server's own certificate chain and key, checked.
struct Identity {
    key: Arc<CertifiedKey>,
    serial: String,
    not_after: String,
    not_after_unix: i64,
}

/// What client certificates are checked against: the CA bundle and the
/// CRLs.
struct Trust {
    verifier: Arc<dyn ClientCertVerifier>,
    /// The subjects (DER) of the CAs in the bundle and of the CAs taken out
    /// of it while this server runs: a CRL of one of those that the bundle
    /// no longer holds is left out on every reload, not only the first.
    ca_subjects: Vec<Vec<u8>>,
    client_cas: usize,
    crls: usize,
    revoked: usize,
    /// The earliest `nextUpdate` of the CRLs in force.
    next_update_unix: Option<i64>,
}

struct Built {
    config: Arc<ServerConfig>,
    summary: Summary,
    identity: Identity,
    trust: Trust,
}

static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
static TLS13_AND_12: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// At start, how far the server certificate's `notBefore` may be ahead of
/// this host's clock (there is no other certificate to serve: one issued a
/// moment ago elsewhere is not refused for a clock a few seconds off). A
/// reload allows none: the certificate in force stays until the new one is
/// valid, and the new one is tried again then.
const START_CLOCK_SKEW_SECS: i64 = 300;

fn now_unix() -> i64 {
    x509_parser::time::ASN1Time::now().timestamp()
}

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

/// What [`check_crl`] found.
enum CrlCheck {
    /// Signed by a CA in the bundle: how many serials it revokes, and its
    /// `nextUpdate`.
    InForce {
        revoked: usize,
        next_update: Option<i64>,
    },
    /// Its issuer was taken out of `tls.client_ca` while this server runs:
    /// it stays in force (a certificate of that CA may still chain to a CA
    /// in the bundle, an intermediate's root; its signature is then checked
    /// against the issuer in the client's chain at the handshake). It can
    /// only refuse more, never less.
    OfWithdrawnCa { revoked: usize },
}

/// Checks that `crl` parses and that a CA in `cas` signed it. A CRL of a
/// CA in `withdrawn` (taken out of the bundle while this server runs)
/// stays in force; any other CRL no CA in the bundle signed is refused:
/// applying the rest without it would let certificates it revokes in
/// again. Warns (does not refuse) when its `nextUpdate` has passed.
fn check_crl(
    setting: &str,
    path: &Path,
    crl: &CertificateRevocationListDer<'_>,
    cas: &[CertificateDer<'static>],
    withdrawn: &[Vec<u8>],
) -> Result<CrlCheck, TlsError> {
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
            let next_update = parsed.next_update().map(|n| n.timestamp());
            if let Some(next) = parsed.next_update() {
                if next.timestamp() < now_unix() {
                    tracing::warn!(
                        setting,
                        file = %path.display(),
                        next_update = %next,
                        "this CRL's next update is overdue; it is still applied: publish a fresh one"
                    );
                }
            }
            return Ok(CrlCheck::InForce {
                revoked: parsed.iter_revoked_certificates().count(),
                next_update,
            });
        }
    }
    if !issuer_known && withdrawn.iter().any(|w| w.as_slice() == issuer) {
        tracing::warn!(
            setting,
            file = %path.display(),
            issuer = %parsed.issuer(),
            "this CRL's CA was taken out of tls.client_ca: the CRL stays in force (a certificate of that CA may still chain to a CA in the bundle); before the next restart, remove it from tls.crls or put its CA back"
        );
        return Ok(CrlCheck::OfWithdrawnCa {
            revoked: parsed.iter_revoked_certificates().count(),
        });
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
                "the CRL's issuer ({}) is not a CA in tls.client_ca: remove this CRL (from \
                 the file, or the file from tls.crls) or add its CA to tls.client_ca",
                parsed.issuer()
            )
        },
    ))
}

fn required(read: Read1, setting: &str, path: &Path) -> Result<Zeroizing<Vec<u8>>, TlsError> {
    read?.ok_or_else(|| file_err(setting, path, "does not exist"))
}

/// The server certificate and key from their files: the key must belong
/// to the certificate, and the certificate must be valid now (an expired
/// one would be refused by every client).
/// Why a server certificate and key were refused; `valid_from`: the
/// certificate is fine but not valid yet (try it again then).
struct IdentityRefused {
    error: TlsError,
    valid_from: Option<i64>,
}

impl From<TlsError> for IdentityRefused {
    fn from(error: TlsError) -> Self {
        Self {
            error,
            valid_from: None,
        }
    }
}

fn build_identity(
    sources: &TlsSources,
    cert: Read1,
    key: Read1,
    skew_secs: i64,
) -> Result<Identity, IdentityRefused> {
    let cert_bytes = required(cert, "tls.cert", &sources.cert)?;
    let key_bytes = required(key, "tls.key", &sources.key)?;
    let chain = certs_in("tls.cert", &sources.cert, &cert_bytes)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes)
        .map_err(|e| file_err("tls.key", &sources.key, e))?;
    let leaf = x509_parser::parse_x509_certificate(chain[0].as_ref())
        .map_err(|e| file_err("tls.cert", &sources.cert, format!("not a certificate: {e}")))?
        .1;
    let validity = leaf.validity();
    let now = now_unix();
    if validity.not_after.timestamp() < now {
        return Err(file_err(
            "tls.cert",
            &sources.cert,
            format!(
                "the certificate expired on {}: every client would refuse it",
                validity.not_after
            ),
        )
        .into());
    }
    if validity.not_before.timestamp() > now + skew_secs {
        return Err(IdentityRefused {
            error: file_err(
                "tls.cert",
                &sources.cert,
                format!(
                    "the certificate is not valid until {}: every client would refuse it",
                    validity.not_before
                ),
            ),
            valid_from: Some(validity.not_before.timestamp()),
        });
    }
    let serial = leaf.raw_serial_as_string().replace(':', "");
    let not_after = validity.not_after.to_string();
    let not_after_unix = validity.not_after.timestamp();
    let provider = rustls::crypto::ring::default_provider();
    let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
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
    Ok(Identity {
        key: Arc::new(key),
        serial,
        not_after,
        not_after_unix,
    })
}

/// The client CA bundle and the CRLs from their files (`reads`: the CA
/// bundle, then one per CRL file). `before`: the subjects of the CAs in
/// force until now; a CRL of one of them that the new bundle no longer
/// holds belongs to a withdrawn CA and is left out.
fn build_trust(
    sources: &TlsSources,
    reads: Vec<Read1>,
    before: &[Vec<u8>],
) -> Result<Trust, TlsError> {
    let files = sources.files();
    let mut reads = reads.into_iter();
    let ca_read = reads
        .next()
        .unwrap_or_else(|| Err(TlsError::Invalid("internal: a file was not read".into())));
    let ca_bytes = required(ca_read, "tls.client_ca", &sources.client_ca)?;
    let cas = certs_in("tls.client_ca", &sources.client_ca, &ca_bytes)?;
    let mut roots = RootCertStore::empty();
    let mut ca_subjects = Vec::new();
    for ca in &cas {
        roots
            .add(ca.clone())
            .map_err(|e| file_err("tls.client_ca", &sources.client_ca, e))?;
        if let Ok((_, parsed)) = x509_parser::parse_x509_certificate(ca.as_ref()) {
            ca_subjects.push(parsed.subject().as_raw().to_vec());
        }
    }
    let mut crls = Vec::new();
    let mut revoked = 0;
    let mut next_update_unix: Option<i64> = None;
    for (i, path) in sources.crls.iter().enumerate() {
        let setting = &files[3 + i].name;
        let read = reads
            .next()
            .unwrap_or_else(|| Err(TlsError::Invalid("internal: a file was not read".into())));
        let Some(bytes) = read? else {
            continue;
        };
        for crl in crls_in(setting, path, &bytes)? {
            match check_crl(setting, path, &crl, &cas, before)? {
                CrlCheck::InForce {
                    revoked: n,
                    next_update,
                } => {
                    revoked += n;
                    if let Some(next) = next_update {
                        next_update_unix = Some(next_update_unix.map_or(next, |e| e.min(next)));
                    }
                    crls.push(crl);
                }
                CrlCheck::OfWithdrawnCa { revoked: n } => {
                    revoked += n;
                    crls.push(crl);
                }
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let crl_count = crls.len();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .with_crls(crls)
        .only_check_end_entity_revocation()
        .allow_unknown_revocation_status()
        .build()
        .map_err(|e| TlsError::Invalid(format!("tls.client_ca / tls.crls: {e}")))?;
    // CAs withdrawn before stay known as withdrawn.
    for subject in before {
        if !ca_subjects.contains(subject) {
            ca_subjects.push(subject.clone());
        }
    }
    Ok(Trust {
        verifier,
        ca_subjects,
        client_cas: cas.len(),
        crls: crl_count,
        revoked,
        next_update_unix,
    })
}

/// A server config of `identity` checking clients against `trust`.
fn assemble(
    sources: &TlsSources,
    identity: &Identity,
    trust: &Trust,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(match sources.min_version {
            TlsMinVersion::Tls13 => TLS13_ONLY,
            TlsMinVersion::Tls12 => TLS13_AND_12,
        })
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_client_cert_verifier(trust.verifier.clone())
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(identity.key.clone())));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn summarize(identity: &Identity, trust: &Trust) -> Summary {
    Summary {
        serial: identity.serial.clone(),
        not_after: identity.not_after.clone(),
        not_after_unix: identity.not_after_unix,
        client_cas: trust.client_cas,
        crls: trust.crls,
        revoked: trust.revoked,
    }
}

/// Every file read, checked and built into a config: what a start needs.
fn build(sources: &TlsSources, snapshot: Snapshot) -> Result<Built, TlsError> {
    let mut reads = snapshot.reads;
    let trust_reads = reads.split_off(2);
    let mut pair = reads.into_iter();
    let missing = || Err(TlsError::Invalid("internal: a file was not read".into()));
    let cert = pair.next().unwrap_or_else(missing);
    let key = pair.next().unwrap_or_else(missing);
    let identity =
        build_identity(sources, cert, key, START_CLOCK_SKEW_SECS).map_err(|r| r.error)?;
    let trust = build_trust(sources, trust_reads, &[])?;
    let config = assemble(sources, &identity, &trust)?;
    Ok(Built {
        config,
        summary: summarize(&identity, &trust),
        identity,
        trust,
    })
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
    /// A new config is in force for new handshakes (a part refused at the
    /// same time is logged and keeps its old material).
    Applied(Summary),
    /// The files changed but are not usable; the old material stays.
    Refused(String),
}

/// One part of the material (the server's certificate and key, or the
/// client CAs and CRLs), kept apart so that a bad file of one does not
/// hold back the other (a broken CRL must not stop a server certificate
/// renewal).
struct Part<T> {
    /// In force.
    current: T,
    /// The files `current` was built from.
    applied: Fingerprint,
    /// The last set refused (logged once).
    refused: Option<Fingerprint>,
    /// When the refused set becomes worth building again (a server
    /// certificate not valid yet).
    retry_at: Option<i64>,
}

impl<T> Part<T> {
    fn new(current: T, applied: Fingerprint) -> Self {
        Self {
            current,
            applied,
            refused: None,
            retry_at: None,
        }
    }

    /// Whether `fingerprint` is worth building: new, and not refused
    /// already (unless `forced`, as on SIGHUP, or its time has come).
    fn changed(&self, fingerprint: &Fingerprint, forced: bool) -> bool {
        *fingerprint != self.applied
            && (forced
                || self.refused.as_ref() != Some(fingerprint)
                || self.retry_at.is_some_and(|t| now_unix() >= t))
    }

    fn refuse(&mut self, fingerprint: Fingerprint, retry_at: Option<i64>) {
        self.refused = Some(fingerprint);
        self.retry_at = retry_at;
    }
}

struct State {
    identity: Part<Identity>,
    trust: Part<Trust>,
    /// The files as last read when they differed from what is in force: a
    /// change is applied once two reads in a row agree (a file written in
    /// place, a CA bundle half appended, is not applied half written).
    settling: Option<Fingerprint>,
}

/// The config in force for new handshakes, and how to renew it.
pub struct ServerTls {
    sources: TlsSources,
    current: watch::Sender<Arc<ServerConfig>>,
    verifiers: watch::Sender<Arc<dyn ClientCertVerifier>>,
    state: Mutex<State>,
}

impl ServerTls {
    /// Reads and checks every file; fails (naming the setting and file) if
    /// anything is wrong, as a server start must.
    pub fn open(sources: TlsSources) -> Result<Arc<Self>, TlsError> {
        let snapshot = read_all(&sources);
        let mut fingerprint = snapshot.fingerprint.clone();
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
        set_gauges(&built.identity, &built.trust);
        let (current, _) = watch::channel(built.config);
        let (verifiers, _) = watch::channel(built.trust.verifier.clone());
        let trust_fp = fingerprint.split_off(2);
        Ok(Arc::new(Self {
            sources,
            current,
            verifiers,
            state: Mutex::new(State {
                identity: Part::new(built.identity, fingerprint),
                trust: Part::new(built.trust, trust_fp),
                settling: None,
            }),
        }))
    }

    /// The config new handshakes use, kept current.
    pub fn configs(&self) -> watch::Receiver<Arc<ServerConfig>> {
        self.current.subscribe()
    }

    /// The client certificate verifier in force (the CA bundle and CRLs),
    /// kept current: open connections are checked again when it changes.
    pub fn verifiers(&self) -> watch::Receiver<Arc<dyn ClientCertVerifier>> {
        self.verifiers.subscribe()
    }

    /// Reads the files again; builds and applies what changed (or, when
    /// `forced` as on SIGHUP, also what was refused before). The server's
    /// certificate and key are one part, the client CAs and CRLs another:
    /// each is applied or refused on its own. Logs what it did: a success
    /// naming what changed, a refusal naming the setting and file (once per
    /// set of files, unless `forced`).
    pub fn reload(&self, forced: bool) -> Reloaded {
        let snapshot = read_all(&self.sources);
        let mut fingerprint = snapshot.fingerprint;
        let whole = fingerprint.clone();
        let trust_fp = fingerprint.split_off(2);
        let identity_fp = fingerprint;
        let mut reads = snapshot.reads;
        let trust_reads = reads.split_off(2);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let identity_changed = state.identity.changed(&identity_fp, forced);
        let trust_changed = state.trust.changed(&trust_fp, forced);
        if !identity_changed && !trust_changed {
            state.settling = None;
            if forced {
                tracing::info!("SIGHUP: the TLS files are the ones in force");
            }
            return Reloaded::Unchanged;
        }
        // A change counts once two reads in a row agree (SIGHUP: at once).
        if !forced && state.settling.as_ref() != Some(&whole) {
            state.settling = Some(whole);
            return Reloaded::Unchanged;
        }
        state.settling = None;
        let names: Vec<String> = self.sources.files().into_iter().map(|f| f.name).collect();
        let changed_names = |new: &Fingerprint, old: &Fingerprint, names: &[String]| {
            names
                .iter()
                .zip(new.iter().zip(old.iter()))
                .filter(|(_, (n, o))| n != o)
                .map(|(name, _)| name.clone())
                .collect::<Vec<_>>()
        };
        let mut changed = Vec::new();
        let mut refusals = Vec::new();
        let mut new_identity = None;
        if identity_changed {
            let mut pair = reads.into_iter();
            let missing = || Err(TlsError::Invalid("internal: a file was not read".into()));
            let cert = pair.next().unwrap_or_else(missing);
            let key = pair.next().unwrap_or_else(missing);
            let names_here = changed_names(&identity_fp, &state.identity.applied, &names[..2]);
            match build_identity(&self.sources, cert, key, 0) {
                Ok(identity) => {
                    changed.extend(names_here);
                    new_identity = Some(identity);
                }
                Err(r) => {
                    refusals.push((names_here.join(", "), r.error.to_string()));
                    state.identity.refuse(identity_fp.clone(), r.valid_from);
                }
            }
        }
        let mut new_trust = None;
        if trust_changed {
            let before = state.trust.current.ca_subjects.clone();
            let names_here = changed_names(&trust_fp, &state.trust.applied, &names[2..]);
            match build_trust(&self.sources, trust_reads, &before) {
                Ok(trust) => {
                    changed.extend(names_here);
                    new_trust = Some(trust);
                }
                Err(e) => {
                    refusals.push((names_here.join(", "), e.to_string()));
                    state.trust.refuse(trust_fp.clone(), None);
                }
            }
        }
        for (what, error) in &refusals {
            tracing::warn!(
                changed = %what,
                error = %error,
                "TLS files changed but cannot be used; the material in force for them stays"
            );
            metrics::counter!("fieldvault_tls_reloads_total", "outcome" => "refused").increment(1);
        }
        if new_identity.is_none() && new_trust.is_none() {
            let why = refusals
                .into_iter()
                .map(|(_, e)| e)
                .collect::<Vec<_>>()
                .join("; ");
            return Reloaded::Refused(why);
        }
        let identity = new_identity.as_ref().unwrap_or(&state.identity.current);
        let trust = new_trust.as_ref().unwrap_or(&state.trust.current);
        let config = match assemble(&self.sources, identity, trust) {
            Ok(config) => config,
            Err(e) => {
                tracing::warn!(error = %e, "TLS files changed but cannot be used; the material in force stays");
                metrics::counter!("fieldvault_tls_reloads_total", "outcome" => "refused")
                    .increment(1);
                return Reloaded::Refused(e.to_string());
            }
        };
        let summary = summarize(identity, trust);
        tracing::info!(
            changed = %if changed.is_empty() { "nothing".to_owned() } else { changed.join(", ") },
            server_cert_serial = %summary.serial,
            server_cert_not_after = %summary.not_after,
            client_cas = summary.client_cas,
            crls = summary.crls,
            revoked = summary.revoked,
            "TLS material reloaded: new handshakes use it; open connections are checked again against the CAs and CRLs in force"
        );
        metrics::counter!("fieldvault_tls_reloads_total", "outcome" => "applied").increment(1);
        set_gauges(identity, trust);
        self.current.send_replace(config);
        if let Some(identity) = new_identity {
            state.identity = Part::new(identity, identity_fp);
        }
        if let Some(trust) = new_trust {
            self.verifiers.send_replace(trust.verifier.clone());
            state.trust = Part::new(trust, trust_fp);
        }
        Reloaded::Applied(summary)
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
        let mut reread = crate::reread::Reread::new(interval, "the TLS files are");
        async move {
            // The files were just read.
            reread.skip_first_tick().await;
            loop {
                let forced = reread.next().await;
                if forced {
                    tracing::info!("SIGHUP: re-reading the TLS files");
                }
                let this = self.clone();
                // File reads and key parsing: off the runtime's workers.
                let _ = tokio::task::spawn_blocking(move || this.reload(forced)).await;
            }
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
    rustls_reason(err)
}

/// The [`reason`] of a rustls error: a handshake's, or a connection's
/// client certificate checked again.
pub fn rustls_reason(err: &rustls::Error) -> &'static str {
    use rustls::CertificateError as C;
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
    metrics::describe_gauge!(
        "fieldvault_tls_crl_next_update_seconds",
        "The earliest nextUpdate of the CRLs in force, in seconds since the Unix epoch (a CRL past it is stale: publish a fresh one)"
    );
    metrics::describe_counter!(
        "fieldvault_tls_connections_closed_total",
        "Open connections closed because the CAs and CRLs in force no longer accept their client certificate, by reason (revoked, expired, unknown_ca, ...)"
    );
    for reason in reason::ALL {
        metrics::counter!("fieldvault_tls_handshake_failures_total", "reason" => reason)
            .increment(0);
        metrics::counter!("fieldvault_tls_connections_closed_total", "reason" => reason)
            .increment(0);
    }
    for outcome in ["applied", "refused"] {
        metrics::counter!("fieldvault_tls_reloads_total", "outcome" => outcome).increment(0);
    }
}

/// The gauges of the material in force: when the server certificate
/// expires, and when the earliest CRL is due for its next update (absent
/// without CRLs).
fn set_gauges(identity: &Identity, trust: &Trust) {
    metrics::gauge!("fieldvault_tls_server_cert_not_after_seconds")
        .set(identity.not_after_unix as f64);
    if let Some(next) = trust.next_update_unix {
        metrics::gauge!("fieldvault_tls_crl_next_update_seconds").set(next as f64);
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

    /// A reload as the watcher does it: a change is applied once two reads
    /// in a row agree.
    fn settled(tls: &ServerTls) -> Reloaded {
        match tls.reload(false) {
            Reloaded::Unchanged => tls.reload(false),
            other => other,
        }
    }

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
        assert_eq!(settled(&tls), Reloaded::Unchanged);
        assert!(Arc::ptr_eq(&before, &tls.configs().borrow()));
        let server = f.ca.issue_server(&["localhost"]).unwrap();
        write(&f.path("server.key"), server.key_pem.as_bytes());
        write(&f.path("server.pem"), server.cert_pem.as_bytes());
        // The first read of a change only notes it: a second read that
        // agrees applies it (a file written in place is not applied half
        // written).
        assert_eq!(tls.reload(false), Reloaded::Unchanged);
        assert!(Arc::ptr_eq(&before, &tls.configs().borrow()));
        assert!(matches!(tls.reload(false), Reloaded::Applied(_)));
        assert!(!Arc::ptr_eq(&before, &tls.configs().borrow()));
        // Forced (SIGHUP) with nothing changed: nothing to apply.
        assert_eq!(tls.reload(true), Reloaded::Unchanged);
    }

    /// A self-signed server certificate and its key (PEM), valid from
    /// `not_before` to `not_after`.
    fn server_pair(
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_before = not_before;
        params.not_after = not_after;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn an_expired_or_not_yet_valid_server_certificate_is_refused_and_the_old_one_stays() {
        let f = Files::new(false);
        let tls = ServerTls::open(f.sources.clone()).unwrap();
        let before = tls.configs().borrow().clone();
        let day = time::Duration::days(1);
        let now = time::OffsetDateTime::now_utc();
        for (from, to, says) in [
            (now - day * 10, now - day, "expired on"),
            (now + day, now + day * 10, "is not valid until"),
        ] {
            let (cert, key) = server_pair(from, to);
            write(&f.path("server.key"), key.as_bytes());
            write(&f.path("server.pem"), cert.as_bytes());
            let why = refused(settled(&tls));
            assert!(why.contains("tls.cert") && why.contains(says), "{why}");
            assert!(Arc::ptr_eq(&before, &tls.configs().borrow()));
            // And at start (and in config check, which loads the same way).
            let Err(e) = load(&f.sources) else {
                panic!("a server certificate that {says} was loaded")
            };
            assert!(e.to_string().contains(says), "{e}");
        }
    }

    #[test]
    fn a_server_certificate_not_valid_yet_is_applied_once_it_is() {
        let f = Files::new(false);
        let tls = ServerTls::open(f.sources.clone()).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let (cert, key) = server_pair(
            now + time::Duration::seconds(2),
            now + time::Duration::days(1),
        );
        write(&f.path("server.key"), key.as_bytes());
        write(&f.path("server.pem"), cert.as_bytes());
        let why = refused(settled(&tls));
        assert!(why.contains("is not valid until"), "{why}");
        assert_eq!(settled(&tls), Reloaded::Unchanged, "refused once only");
        // Tried again once valid, without a SIGHUP.
        std::thread::sleep(Duration::from_millis(2500));
        assert!(matches!(settled(&tls), Reloaded::Applied(_)));
    }

    #[test]
    fn a_broken_crl_does_not_hold_back_a_new_server_certificate_nor_the_reverse() {
        let f = Files::new(true);
        let tls = ServerTls::open(f.sources.clone()).unwrap();
        let verifier = tls.verifiers().borrow().clone();
        // A CRL with the CA's name but another key's signature, and a new
        // server certificate, at once.
        let impostor = DevCa::new("reload test CA").unwrap();
        let bad = impostor
            .revocation_list(&[vec![1]], 2, Duration::from_secs(3600))
            .unwrap();
        write(&f.path("crl.pem"), bad.as_bytes());
        let server = f.ca.issue_server(&["localhost"]).unwrap();
        write(&f.path("server.key"), server.key_pem.as_bytes());
        write(&f.path("server.pem"), server.cert_pem.as_bytes());
        let Reloaded::Applied(summary) = settled(&tls) else {
            panic!("the new server certificate was held back by the bad CRL")
        };
        let (_, expected) = load(&TlsSources {
            crls: vec![],
            ..f.sources.clone()
        })
        .unwrap();
        assert_eq!(summary.serial, expected.serial);
        // The CAs and CRLs in force stay.
        assert!(Arc::ptr_eq(&verifier, &tls.verifiers().borrow()));
        assert_eq!(settled(&tls), Reloaded::Unchanged, "refused once only");
        // A broken server key does not hold back a CRL either.
        write(&f.path("server.key"), b"not a key");
        let good =
            f.ca.revocation_list(&[vec![1]], 3, Duration::from_secs(3600))
                .unwrap();
        write(&f.path("crl.pem"), good.as_bytes());
        let Reloaded::Applied(summary) = settled(&tls) else {
            panic!("the new CRL was held back by the bad key")
        };
        assert_eq!(summary.revoked, 1);
        assert!(!Arc::ptr_eq(&verifier, &tls.verifiers().borrow()));
    }

    #[test]
    fn taking_a_ca_out_of_the_bundle_applies_and_keeps_its_crl_in_force() {
        let f = Files::new(true);
        let tls = ServerTls::open(f.sources.clone()).unwrap();
        let successor = DevCa::new("the next CA").unwrap();
        write(&f.path("ca.pem"), successor.cert_pem().as_bytes());
        let Reloaded::Applied(summary) = settled(&tls) else {
            panic!("withdrawing a CA was refused because of its CRL")
        };
        // Its CRL stays in force: a certificate of the withdrawn CA may
        // still chain to a CA in the bundle (an intermediate's root), and
        // what the CRL revokes must stay revoked.
        assert_eq!((summary.client_cas, summary.crls), (1, 1));
        // Later changes of the CAs or CRLs still apply, that CRL still in
        // force (the successor's CRL is listed with it).
        let both = format!(
            "{}{}",
            f.ca.revocation_list(&[vec![7]], 5, Duration::from_secs(3600))
                .unwrap(),
            successor
                .revocation_list(&[vec![8]], 1, Duration::from_secs(3600))
                .unwrap()
        );
        write(&f.path("crl.pem"), both.as_bytes());
        let Reloaded::Applied(summary) = settled(&tls) else {
            panic!("a reload after a CA withdrawal was refused because of its CRL")
        };
        assert_eq!((summary.crls, summary.revoked), (2, 2));
        // A CRL of a CA that was never in the bundle is still refused (a
        // wrong file must not drop the revocations in force).
        let stranger = DevCa::new("a stranger CA").unwrap();
        let foreign = stranger
            .revocation_list(&[], 1, Duration::from_secs(3600))
            .unwrap();
        write(&f.path("crl.pem"), foreign.as_bytes());
        let why = refused(settled(&tls));
        assert!(why.contains("is not a CA in tls.client_ca"), "{why}");
    }

    #[test]
    fn a_key_that_does_not_match_keeps_the_old_config_and_is_reported_once() {
        let f = Files::new(false);
        let tls = ServerTls::open(f.sources.clone()).unwrap();
        let before = tls.configs().borrow().clone();
        let other = f.ca.issue_server(&["localhost"]).unwrap();
        write(&f.path("server.pem"), other.cert_pem.as_bytes());
        let why = refused(settled(&tls));
        assert!(
            why.contains("tls.key") && why.contains("server.key"),
            "{why}"
        );
        assert!(why.contains("does not belong"), "{why}");
        assert!(Arc::ptr_eq(&before, &tls.configs().borrow()));
        // The same bad files: nothing more to say.
        assert_eq!(settled(&tls), Reloaded::Unchanged);
        // The matching key arrives: applied.
        write(&f.path("server.key"), other.key_pem.as_bytes());
        assert!(matches!(settled(&tls), Reloaded::Applied(_)));
        assert!(!Arc::ptr_eq(&before, &tls.configs().borrow()));
    }

    #[test]
    fn an_empty_ca_bundle_or_an_unreadable_certificate_is_refused_naming_its_setting() {
        let f = Files::new(false);
        let tls = ServerTls::open(f.sources.clone()).unwrap();
        write(&f.path("ca.pem"), b"");
        let why = refused(settled(&tls));
        assert!(
            why.contains("tls.client_ca") && why.contains("no PEM certificate"),
            "{why}"
        );
        // Back to what is in force: nothing to do.
        write(&f.path("ca.pem"), f.ca.cert_pem().as_bytes());
        assert_eq!(settled(&tls), Reloaded::Unchanged);
        std::fs::remove_file(f.path("server.pem")).unwrap();
        let why = refused(settled(&tls));
        assert!(why.contains("tls.cert"), "{why}");
        // A key others can read is refused as at start.
        let server = f.ca.issue_server(&["localhost"]).unwrap();
        write(&f.path("server.pem"), server.cert_pem.as_bytes());
        write(&f.path("server.key"), server.key_pem.as_bytes());
        std::fs::set_permissions(f.path("server.key"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let why = refused(settled(&tls));
        assert!(why.contains("tls.key"), "{why}");
        assert!(ServerTls::open(f.sources.clone()).is_err());
    }

    #[test]
    fn a_crl_that_does_not_parse_or_that_another_ca_signed_is_refused() {
        let f = Files::new(true);
        let tls = ServerTls::open(f.sources.clone()).unwrap();
        write(&f.path("crl.pem"), b"not a CRL at all");
        let why = refused(settled(&tls));
        assert!(
            why.contains("tls.crls[0]") && why.contains("crl.pem"),
            "{why}"
        );
        let stranger = DevCa::new("another CA").unwrap();
        let foreign = stranger
            .revocation_list(&[vec![1, 2, 3]], 1, Duration::from_secs(3600))
            .unwrap();
        write(&f.path("crl.pem"), foreign.as_bytes());
        let why = refused(settled(&tls));
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
        let why = refused(settled(&tls));
        assert!(why.contains("not signed by that CA's key"), "{why}");
        // The CA's own CRL, as DER: applied.
        let good =
            f.ca.revocation_list(&[vec![1, 2, 3], vec![4, 5]], 2, Duration::from_secs(3600))
                .unwrap();
        let der = CertificateRevocationListDer::from_pem_slice(good.as_bytes()).unwrap();
        write(&f.path("crl.pem"), der.as_ref());
        match settled(&tls) {
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
        match settled(&tls) {
            Reloaded::Applied(summary) => assert_eq!(summary.revoked, 1),
            other => panic!("{other:?}"),
        }
        // Deleted again: nothing revoked.
        std::fs::remove_file(f.path("crl.pem")).unwrap();
        match settled(&tls) {
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
            assert!(matches!(settled(&tls), Reloaded::Refused(_)));
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
