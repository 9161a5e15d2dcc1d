//! A thin mTLS client for the CLI, tests and the benchmark.
//!
//! It brings its own connector (TCP, then rustls through tokio-rustls)
//! instead of tonic's TLS settings, so that a failure says what is wrong
//! rather than `transport error`:
//! - the key and the certificate are checked to belong together before
//!   anything is sent;
//! - the server certificate's verification error is rustls's own, with
//!   the certificate the server presented;
//! - in TLS 1.3 the server checks our certificate after the client has
//!   finished its side of the handshake, so a refusal (the server's alert)
//!   only shows on the first read. The connector waits for the server's
//!   first bytes (its HTTP/2 SETTINGS, which a fieldvault server sends
//!   at once) or its alert before handing the connection to HTTP/2, and
//!   adds what it can see locally: the certificate's issuer against the
//!   CA given, a missing clientAuth extended key usage, an expiry. It
//!   waits [`FIRST_BYTES_WINDOW`] (1 s) at most, or what is left of the
//!   connect deadline if that is shorter: a front end that speaks only
//!   after the client's HTTP/2 preface still gets the connection, and
//!   the call deadline bounds a server that stays silent.
//!
//! Every step of connecting (TCP, TLS, the server's first bytes, HTTP/2)
//! shares one deadline, and every call on the channel has a deadline.

use crate::grpc::pb::vault_client::VaultClient;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore,
};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

/// How long connecting may take by default: TCP, TLS and HTTP/2 together.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the connector waits, after the TLS handshake, for the server's
/// first bytes (its SETTINGS, or a TLS 1.3 alert refusing our certificate)
/// before it hands the connection to HTTP/2 anyway.
pub const FIRST_BYTES_WINDOW: Duration = Duration::from_secs(1);
/// The first-bytes window for a connect timeout of `connect_timeout`:
/// [`FIRST_BYTES_WINDOW`], or half the connect timeout if that is shorter,
/// so that a front end that speaks only after our HTTP/2 preface still
/// has time to answer it.
fn first_bytes_window(connect_timeout: Duration) -> Duration {
    FIRST_BYTES_WINDOW.min(connect_timeout / 2)
}

/// How long one call may take by default, from sending to the last byte of
/// the answer (the server's own bound, `request_timeout_secs`, is 30 s).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The PEM material a client presents and trusts.
#[derive(Clone)]
pub struct ClientTls {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: zeroize::Zeroizing<Vec<u8>>,
    /// Where each came from, for error messages.
    pub files: Option<TlsFiles>,
}

/// The files a [`ClientTls`] was read from.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls { .. }")
    }
}

/// Deadlines of a connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnectOptions {
    /// TCP connect, TLS handshake, the server's first bytes and the
    /// HTTP/2 handshake, together; also bounds each reconnection.
    pub connect_timeout: Duration,
    /// Each call on the channel; `None`: no client-side bound.
    pub call_timeout: Option<Duration>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            call_timeout: Some(DEFAULT_CALL_TIMEOUT),
        }
    }
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
    /// The server is not reachable (refused, reset, unknown host).
    #[error("connecting to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// Connecting took longer than the connect deadline.
    #[error("connecting to {addr}: {reason}")]
    ConnectTimeout { addr: String, reason: String },
    /// The server's certificate is not trusted, or the server refused our
    /// certificate.
    #[error("connecting to {addr}: {reason}")]
    Tls { addr: String, reason: String },
    /// Our CA, certificate or key file holds nothing usable, or the key
    /// does not belong to the certificate: found before connecting.
    #[error("{0}")]
    Files(String),
    /// The command line does not say how to connect.
    #[error("{0}")]
    Usage(String),
}

impl ClientError {
    /// The gRPC status code that best names this failure, so that a
    /// whole-call failure reads the same as a server-side one (`--json`).
    pub fn code(&self) -> tonic::Code {
        match self {
            Self::Read { .. } | Self::Usage(_) | Self::Files(_) => tonic::Code::InvalidArgument,
            Self::Connect { .. } => tonic::Code::Unavailable,
            Self::ConnectTimeout { .. } => tonic::Code::DeadlineExceeded,
            Self::Tls { .. } => tonic::Code::Unauthenticated,
        }
    }

    /// The same error with `hint` appended to its reason (a connect
    /// timeout names the flag that sets it, say).
    pub fn with_hint(self, hint: &str) -> Self {
        let add = |reason: String| format!("{reason} {hint}");
        match self {
            Self::Read { path, reason } => Self::Read {
                path,
                reason: add(reason),
            },
            Self::Connect { addr, reason } => Self::Connect {
                addr,
                reason: add(reason),
            },
            Self::ConnectTimeout { addr, reason } => Self::ConnectTimeout {
                addr,
                reason: add(reason),
            },
            Self::Tls { addr, reason } => Self::Tls {
                addr,
                reason: add(reason),
            },
            Self::Usage(m) => Self::Usage(add(m)),
            Self::Files(m) => Self::Files(add(m)),
        }
    }
}

/// The largest CA, certificate or key file read: PEM files are a few KB.
pub const MAX_PEM_FILE_BYTES: u64 = 1024 * 1024;

/// Reads a PEM file: a regular file (not a FIFO or a device, which could
/// block or never end) of at most [`MAX_PEM_FILE_BYTES`].
fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    use std::io::Read;
    let err = |reason: String| ClientError::Read {
        path: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err(if meta.is_dir() {
            "is a directory, not a PEM file".to_owned()
        } else {
            "is not a regular file (a device, FIFO or socket), not a PEM file".to_owned()
        }));
    }
    let too_large = || {
        err(format!(
            "is larger than {} KiB: not a PEM certificate or key",
            MAX_PEM_FILE_BYTES / 1024
        ))
    };
    if meta.len() > MAX_PEM_FILE_BYTES {
        return Err(too_large());
    }
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut out = Vec::new();
    // Bounded even if the file grows after the check.
    file.take(MAX_PEM_FILE_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| err(e.to_string()))?;
    if out.len() as u64 > MAX_PEM_FILE_BYTES {
        return Err(too_large());
    }
    Ok(out)
}

impl ClientTls {
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self, ClientError> {
        Ok(Self {
            ca_pem: read(ca)?,
            cert_pem: read(cert)?,
            key_pem: zeroize::Zeroizing::new(read(key)?),
            files: Some(TlsFiles {
                ca: ca.to_path_buf(),
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            }),
        })
    }

    /// The dev identity `name` from `DATA_DIR/dev/` (see `serve --dev`).
    /// `name` must be a plain name (not a path); an unknown one is refused
    /// with the list of identities there.
    pub fn dev(data_dir: &Path, name: &str) -> Result<Self, ClientError> {
        let dir: PathBuf = crate::dev::dev_dir(data_dir);
        crate::dev::check_identity(data_dir, name)
            .map_err(|e| ClientError::Usage(e.to_string()))?;
        Self::from_files(
            &dir.join("ca.pem"),
            &dir.join(format!("{name}.pem")),
            &dir.join(format!("{name}.key")),
        )
    }

    fn label(&self, which: fn(&TlsFiles) -> &PathBuf, default: &str) -> String {
        self.files
            .as_ref()
            .map_or_else(|| default.to_owned(), |f| which(f).display().to_string())
    }
    fn ca_label(&self) -> String {
        self.label(|f| &f.ca, "the CA certificate")
    }
    fn cert_label(&self) -> String {
        self.label(|f| &f.cert, "the client certificate")
    }
    fn key_label(&self) -> String {
        self.label(|f| &f.key, "the client key")
    }
}

/// Connects to `addr` (`host:port`, or a full `https://` URI) over mTLS,
/// with the default deadlines.
pub async fn connect(addr: &str, tls: &ClientTls) -> Result<VaultClient<Channel>, ClientError> {
    Ok(VaultClient::new(channel(addr, tls).await?))
}

/// The Admin service (`fieldvault.v1.Admin`: frozen callers, quota use,
/// canary tokens) with one method per call. The caller's identity needs a
/// policy rule with `action = "admin"`; every call is audited. A refused
/// call comes back as the server's status (FAILED_PRECONDITION for
/// unfreezing a caller that is not frozen, INVALID_ARGUMENT naming the
/// field, PERMISSION_DENIED without an admin rule).
#[derive(Clone, Debug)]
pub struct Admin {
    client: crate::grpc::pb::admin_client::AdminClient<Channel>,
}

impl Admin {
    /// Over a channel made by [`channel`] or [`channel_heard`] (its call
    /// deadline bounds every call).
    pub fn new(channel: Channel) -> Self {
        Self {
            client: crate::grpc::pb::admin_client::AdminClient::new(channel),
        }
    }

    /// Connects to `addr` with the default deadlines.
    pub async fn connect(addr: &str, tls: &ClientTls) -> Result<Self, ClientError> {
        Ok(Self::new(channel(addr, tls).await?))
    }

    /// Every caller the policy names, or that is frozen or has a quota
    /// count: its freeze, whether it is deny-listed, its quota use now.
    pub async fn list_callers(
        &mut self,
    ) -> Result<Vec<crate::grpc::pb::CallerStatus>, tonic::Status> {
        let request = crate::grpc::pb::ListCallersRequest {};
        Ok(self
            .client
            .list_callers(request)
            .await?
            .into_inner()
            .callers)
    }

    /// Freezes `caller` (a SPIFFE ID or a common name) now, for `reason`.
    pub async fn freeze_caller(
        &mut self,
        caller: &str,
        reason: &str,
    ) -> Result<crate::grpc::pb::CallerFreeze, tonic::Status> {
        let request = crate::grpc::pb::FreezeCallerRequest {
            caller: caller.to_owned(),
            reason: reason.to_owned(),
        };
        let answer = self.client.freeze_caller(request).await?.into_inner();
        answer
            .freeze
            .ok_or_else(|| tonic::Status::internal("the server's answer holds no freeze"))
    }

    /// Lifts `caller`'s freeze; returns the freeze lifted.
    pub async fn unfreeze_caller(
        &mut self,
        caller: &str,
    ) -> Result<crate::grpc::pb::CallerFreeze, tonic::Status> {
        let request = crate::grpc::pb::UnfreezeCallerRequest {
            caller: caller.to_owned(),
        };
        let answer = self.client.unfreeze_caller(request).await?.into_inner();
        answer
            .lifted
            .ok_or_else(|| tonic::Status::internal("the server's answer holds no freeze lifted"))
    }

    /// Creates `count` canary tokens (1 to 1000) for `kind`.
    pub async fn create_canaries(
        &mut self,
        kind: crate::domain::FieldKind,
        count: u32,
    ) -> Result<Vec<String>, tonic::Status> {
        let request = crate::grpc::pb::CreateCanariesRequest {
            kind: crate::grpc::kind_to_pb(kind) as i32,
            count,
        };
        Ok(self
            .client
            .create_canaries(request)
            .await?
            .into_inner()
            .tokens)
    }

    /// Every canary token, in creation order.
    pub async fn list_canaries(&mut self) -> Result<Vec<crate::grpc::pb::Canary>, tonic::Status> {
        let request = crate::grpc::pb::ListCanariesRequest {};
        Ok(self
            .client
            .list_canaries(request)
            .await?
            .into_inner()
            .canaries)
    }
}

/// The data-lifecycle calls of the Vault service (README, "Data
/// lifecycle"), one method per call: delete tokens, describe them, erase
/// and export every token of a value. Each needs its policy action
/// (`delete`, `inspect`, `erase`, `export`); every call is audited. Batch
/// calls answer per token, in request order; a call refused as a whole
/// comes back as the server's status.
///
/// A time to live is set on the field sent to Tokenize: see [`ttl`].
#[derive(Clone, Debug)]
pub struct Lifecycle {
    client: VaultClient<Channel>,
}

/// A per-token outcome: the answer, or the item's `google.rpc.Status`
/// (NOT_FOUND, INVALID_ARGUMENT naming `tokens[i]`).
pub type ItemResult<T> = Result<T, tonic_types::Status>;

/// A time to live for [`crate::grpc::pb::Field::ttl`]: `Field { ttl:
/// Some(client::ttl(d)), .. }`. Saturates past `i64::MAX` seconds (the
/// server refuses anything over the kind's maximum anyway).
pub fn ttl(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // Under a billion: fits.
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

impl Lifecycle {
    /// Over a channel made by [`channel`] or [`channel_heard`] (its call
    /// deadline bounds every call).
    pub fn new(channel: Channel) -> Self {
        Self {
            client: VaultClient::new(channel),
        }
    }

    /// Connects to `addr` with the default deadlines.
    pub async fn connect(addr: &str, tls: &ClientTls) -> Result<Self, ClientError> {
        Ok(Self::new(channel(addr, tls).await?))
    }

    /// Deletes `tokens`; per token its kind, or NOT_FOUND (unknown,
    /// deleted already, expired, or of a kind the caller may not delete).
    pub async fn delete_tokens(
        &mut self,
        tokens: Vec<String>,
    ) -> Result<Vec<ItemResult<crate::grpc::pb::FieldKind>>, tonic::Status> {
        use crate::grpc::pb::delete_tokens_result::Outcome;
        let request = crate::grpc::pb::DeleteTokensRequest { tokens };
        let answer = self.client.delete_tokens(request).await?.into_inner();
        answer
            .results
            .into_iter()
            .map(|r| match r.outcome {
                Some(Outcome::Deleted(kind)) => Ok(Ok(crate::grpc::pb::FieldKind::try_from(kind)
                    .unwrap_or(crate::grpc::pb::FieldKind::Unspecified))),
                Some(Outcome::Error(e)) => Ok(Err(e)),
                None => Err(empty_result()),
            })
            .collect()
    }

    /// What the vault holds about `tokens` (never their values).
    pub async fn token_info(
        &mut self,
        tokens: Vec<String>,
    ) -> Result<Vec<ItemResult<crate::grpc::pb::TokenInfo>>, tonic::Status> {
        use crate::grpc::pb::get_token_info_result::Outcome;
        let request = crate::grpc::pb::GetTokenInfoRequest { tokens };
        let answer = self.client.get_token_info(request).await?.into_inner();
        answer
            .results
            .into_iter()
            .map(|r| match r.outcome {
                Some(Outcome::Info(info)) => Ok(Ok(info)),
                Some(Outcome::Error(e)) => Ok(Err(e)),
                None => Err(empty_result()),
            })
            .collect()
    }

    /// Erases every token of `field`'s canonical value; returns them.
    pub async fn erase_value(
        &mut self,
        field: crate::grpc::pb::Field,
    ) -> Result<Vec<String>, tonic::Status> {
        let request = crate::grpc::pb::EraseValueRequest { field: Some(field) };
        Ok(self
            .client
            .erase_value(request)
            .await?
            .into_inner()
            .erased_tokens)
    }

    /// Every unexpired token of `field`'s canonical value, for `purpose`.
    pub async fn export_value(
        &mut self,
        field: crate::grpc::pb::Field,
        purpose: &str,
    ) -> Result<Vec<crate::grpc::pb::TokenInfo>, tonic::Status> {
        let request = crate::grpc::pb::ExportValueRequest {
            field: Some(field),
            purpose: purpose.to_owned(),
        };
        Ok(self.client.export_value(request).await?.into_inner().tokens)
    }
}

fn empty_result() -> tonic::Status {
    tonic::Status::internal("the server sent a result with neither an answer nor an error")
}

/// An mTLS channel, for any of the services the server offers, with the
/// default deadlines.
pub async fn channel(addr: &str, tls: &ClientTls) -> Result<Channel, ClientError> {
    Ok(channel_heard(addr, tls, &ConnectOptions::default())
        .await?
        .channel)
}

/// Whether the server has sent a byte after the TLS handshake on any of a
/// channel's connections: a call that times out on a server that never
/// did is most likely not talking to a gRPC server at all.
#[derive(Clone, Debug, Default)]
pub struct Heard(Arc<std::sync::atomic::AtomicBool>);

impl Heard {
    pub fn anything(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A channel, and what the client knows of its connection.
pub struct Connected {
    pub channel: Channel,
    /// Whether the server has said anything on it yet.
    pub heard: Heard,
    /// What the client can see of its own certificate that would make a
    /// server refuse it, for a refusal that comes after connecting
    /// ([`alert_refusal`]).
    pub refusal_hints: Arc<[String]>,
}

/// An mTLS channel with chosen deadlines, and what the client knows of
/// its connection.
pub async fn channel_heard(
    addr: &str,
    tls: &ClientTls,
    options: &ConnectOptions,
) -> Result<Connected, ClientError> {
    let target = Arc::new(Target::parse(addr)?);
    let prepared = Arc::new(Prepared::new(tls)?);
    let refusal_hints = prepared.local_hints.clone();
    let stage = Arc::new(AtomicU8::new(Stage::Tcp as u8));
    let heard = Heard::default();
    let connector = Connector {
        target: target.clone(),
        prepared,
        timeout: options.connect_timeout,
        stage: stage.clone(),
        heard: heard.clone(),
    };
    let err = |reason: String| ClientError::Connect {
        addr: target.addr.clone(),
        reason,
    };
    // The connector does TLS itself: tonic sees plain `http`.
    let mut endpoint = Endpoint::from_shared(format!("http://{}", target.authority))
        .map_err(|e| err(e.to_string()))?;
    if let Some(call) = options.call_timeout {
        endpoint = endpoint.timeout(call);
    }
    match tokio::time::timeout(
        options.connect_timeout,
        endpoint.connect_with_connector(connector),
    )
    .await
    {
        Ok(Ok(channel)) => Ok(Connected {
            channel,
            heard,
            refusal_hints,
        }),
        Ok(Err(e)) => Err(find_client_error(&e).unwrap_or_else(|| err(error_chain(&e)))),
        Err(_) => Err(Stage::from(stage.load(Ordering::SeqCst))
            .timed_out(&target.addr, options.connect_timeout)),
    }
}

/// Checks that `addr` is `HOST:PORT` or an `https://` URI, before anything
/// else is read (a missing port says so, rather than "connection refused").
pub fn check_addr(addr: &str) -> Result<(), ClientError> {
    Target::parse(addr).map(|_| ())
}

/// `addr` parsed: what to connect to and which name the server's
/// certificate must carry.
#[derive(Debug)]
struct Target {
    /// As given, for messages.
    addr: String,
    /// `host:port`.
    authority: String,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
}

impl Target {
    /// Parses `addr`. Its messages do not quote it: a mistyped command line
    /// may put a value there.
    fn parse(addr: &str) -> Result<Self, ClientError> {
        let usage = |why: &str| {
            ClientError::Usage(format!(
                "--addr: {why} (give HOST:PORT, such as 127.0.0.1:50051, or https://HOST[:PORT], port 443 by default)"
            ))
        };
        // Surrounding whitespace (a pasted or quoted value) is not part
        // of it.
        let addr = addr.trim();
        let (authority, default_port) = if let Some(rest) = addr.strip_prefix("https://") {
            (rest.trim_end_matches('/'), Some(443))
        } else if addr.contains("://") {
            return Err(usage("only https:// addresses are served"));
        } else {
            (addr, None)
        };
        if authority.contains(['/', '?', '#']) {
            return Err(usage("an address has no path"));
        }
        if authority.is_empty() {
            return Err(usage("no host"));
        }
        // The port, if any: after a bracketed IPv6 address, or after the
        // last ':' of anything else.
        let (host_part, port_text) = if let Some(rest) = authority.strip_prefix('[') {
            let Some((v6, after)) = rest.split_once(']') else {
                return Err(usage("an IPv6 address without its closing ']'"));
            };
            match after {
                "" => (format!("[{v6}]"), None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (format!("[{v6}]"), Some(port)),
                    None => return Err(usage("not a host and port")),
                },
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, _)) if host.contains(':') => {
                    return Err(usage("an IPv6 address goes in brackets ([::1]:50051)"))
                }
                Some((host, port)) => (host.to_owned(), Some(port)),
                None => (authority.to_owned(), None),
            }
        };
        let port = match (port_text, default_port) {
            (Some(text), _) => {
                let valid =
                    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit());
                match text.parse::<u16>() {
                    Ok(p) if valid && p >= 1 => p,
                    _ => return Err(usage("the port is not a number from 1 to 65535")),
                }
            }
            (None, Some(p)) => p,
            (None, None) => return Err(usage("missing port")),
        };
        let parsed: http::uri::Authority = format!("{host_part}:{port}")
            .parse()
            .map_err(|_| usage("not a host and port"))?;
        if parsed.as_str().contains('@') {
            return Err(usage("not a host and port"));
        }
        let host = parsed
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(usage("no host"));
        }
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| usage("not a valid host name or IP address"))?;
        Ok(Self {
            addr: addr.to_owned(),
            authority: format!("{}:{port}", parsed.host()),
            host,
            port,
            server_name,
        })
    }
}

/// The client's TLS material, parsed and checked once.
struct Prepared {
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    certified: Arc<CertifiedKey>,
    /// What to say when the server refuses our certificate.
    local_hints: Arc<[String]>,
    ca_label: String,
}

impl Prepared {
    fn new(tls: &ClientTls) -> Result<Self, ClientError> {
        // Local mistakes in the files given: nothing was sent.
        let bad = ClientError::Files;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cas = CertificateDer::pem_slice_iter(&tls.ca_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                bad(format!(
                    "{}: not a PEM certificate: {}",
                    tls.ca_label(),
                    pem_error(&e)
                ))
            })?;
        if cas.is_empty() {
            return Err(bad(format!("{}: holds no PEM certificate", tls.ca_label())));
        }
        let mut roots = RootCertStore::empty();
        for ca in &cas {
            roots.add(ca.clone()).map_err(|e| {
                bad(format!(
                    "{}: not a usable CA certificate: {e}",
                    tls.ca_label()
                ))
            })?;
        }
        let chain = CertificateDer::pem_slice_iter(&tls.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                bad(format!(
                    "{}: not a PEM certificate: {}",
                    tls.cert_label(),
                    pem_error(&e)
                ))
            })?;
        if chain.is_empty() {
            return Err(bad(format!(
                "{}: holds no PEM certificate",
                tls.cert_label()
            )));
        }
        let key = PrivateKeyDer::from_pem_slice(&tls.key_pem).map_err(|e| {
            bad(format!(
                "{}: not a PEM private key: {}",
                tls.key_label(),
                pem_error(&e)
            ))
        })?;
        let leaf = chain[0].clone();
        let intermediates = chain[1..].to_vec();
        let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => bad(format!(
                "the private key {} does not match the certificate {} (a key and a certificate \
                 of different identities?); nothing was sent",
                tls.key_label(),
                tls.cert_label()
            )),
            e => bad(format!(
                "{} with {}: {e}",
                tls.cert_label(),
                tls.key_label()
            )),
        })?;
        let local_hints = local_hints(
            &leaf,
            &intermediates,
            &cas,
            &provider,
            &tls.cert_label(),
            &tls.ca_label(),
        );
        Ok(Self {
            provider,
            roots: Arc::new(roots),
            certified: Arc::new(certified),
            local_hints: local_hints.into(),
            ca_label: tls.ca_label(),
        })
    }

    /// A fresh client config for one connection attempt, whose verifier
    /// keeps the certificate the server presented if it fails.
    fn config(&self) -> Result<(Arc<ClientConfig>, Arc<Recording>), String> {
        let inner =
            WebPkiServerVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .build()
                .map_err(|e| e.to_string())?;
        let verifier = Arc::new(Recording {
            inner,
            presented: Mutex::new(None),
        });
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_cert_resolver(Arc::new(SingleCert(self.certified.clone())));
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok((Arc::new(config), verifier))
    }
}

/// A PEM reading error in words that quote nothing of the file (the
/// library's own Display lists the bytes of the offending line, which may
/// be anything, personal data included).
fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { .. } => "a PEM section without its END line".to_owned(),
        Error::IllegalSectionStart { .. } => {
            "a malformed PEM section (its BEGIN line is not \"-----BEGIN LABEL-----\")".to_owned()
        }
        Error::Base64Decode(_) => "a PEM section whose body is not valid base64".to_owned(),
        Error::NoItemsFound => "holds no PEM section of the expected kind".to_owned(),
        Error::SectionTooLarge => "a PEM section that is too large".to_owned(),
        Error::Io(io) => format!("could not be read ({})", io.kind()),
        _ => "not readable as PEM".to_owned(),
    }
}

/// What we can tell about our own certificate that would make a server
/// refuse it.
fn local_hints(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    cas: &[CertificateDer<'_>],
    provider: &Arc<CryptoProvider>,
    cert_label: &str,
    ca_label: &str,
) -> Vec<String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let mut hints = Vec::new();
    let Ok((_, cert)) = X509Certificate::from_der(leaf) else {
        return hints;
    };
    if let Ok(Some(eku)) = cert.extended_key_usage() {
        let eku = eku.value;
        if !eku.client_auth && !eku.any {
            let mut allowed = Vec::new();
            if eku.server_auth {
                allowed.push("serverAuth");
            }
            if eku.code_signing {
                allowed.push("codeSigning");
            }
            if eku.email_protection {
                allowed.push("emailProtection");
            }
            let allowed = if allowed.is_empty() {
                String::new()
            } else {
                format!(" (it allows {} only)", allowed.join(", "))
            };
            hints.push(format!(
                "{cert_label} is not a client certificate: its extended key usage lacks \
                 clientAuth{allowed}"
            ));
        }
    }
    let issuer = cert.issuer().to_string();
    let ca_subjects: Vec<String> = cas
        .iter()
        .filter_map(|ca| X509Certificate::from_der(ca).ok())
        .map(|(_, ca)| ca.subject().to_string())
        .collect();
    // Verified as a server would, with the --ca certificates as roots: a
    // dev CA of another data dir carries the same name, so comparing
    // names alone would miss it.
    // Only a signature that fails (or an issuer not found) means another
    // CA; an extended key usage or a validity period is said on its own.
    let chain_error = verify_as_client(leaf, intermediates, cas, provider).filter(|e| {
        matches!(
            e,
            rustls::Error::InvalidCertificate(
                CertificateError::BadSignature | CertificateError::UnknownIssuer
            )
        )
    });
    if !ca_subjects.is_empty() && !ca_subjects.contains(&issuer) {
        hints.push(format!(
            "{cert_label} was issued by \"{issuer}\", not by the CA in {ca_label} (\"{}\"), \
             which the server usually trusts",
            ca_subjects.join("\", \"")
        ));
    } else if let Some(e) = chain_error {
        hints.push(format!(
            "{cert_label} names \"{issuer}\" as its issuer but does not verify against the CA \
             in {ca_label} ({e}): it was issued by another CA of the same name (a dev setup of \
             another data dir, or one made before a reset?)"
        ));
    }
    if !cert.validity().is_valid() {
        hints.push(format!(
            "{cert_label} is valid only from {} to {}",
            cert.validity().not_before,
            cert.validity().not_after
        ));
    }
    hints
}

/// Why a server trusting only `cas` would refuse `leaf` as a client
/// certificate, if it would (checked with webpki, as the server does).
fn verify_as_client(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    cas: &[CertificateDer<'_>],
    provider: &Arc<CryptoProvider>,
) -> Option<rustls::Error> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca.clone()).ok()?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .ok()?;
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .err()
}

/// One client certificate for every server.
#[derive(Debug)]
struct SingleCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for SingleCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// The webpki verifier, keeping the certificate it refused.
#[derive(Debug)]
struct Recording {
    inner: Arc<WebPkiServerVerifier>,
    presented: Mutex<Option<CertificateDer<'static>>>,
}

impl Recording {
    /// Subject and issuer of the certificate the server presented, if it
    /// was refused.
    fn presented(&self) -> Option<String> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let der = self.presented.lock().ok()?.clone()?;
        let (_, cert) = X509Certificate::from_der(&der).ok()?;
        Some(format!(
            "the server presented \"{}\", issued by \"{}\"",
            cert.subject(),
            cert.issuer()
        ))
    }
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        if verdict.is_err() {
            if let Ok(mut presented) = self.presented.lock() {
                *presented = Some(end_entity.clone().into_owned());
            }
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Where connecting is, for the message when the deadline passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Stage {
    Tcp = 0,
    Tls = 1,
    FirstBytes = 2,
    Http2 = 3,
}

impl From<u8> for Stage {
    fn from(v: u8) -> Self {
        match v {
            0 => Self::Tcp,
            1 => Self::Tls,
            2 => Self::FirstBytes,
            _ => Self::Http2,
        }
    }
}

impl Stage {
    fn timed_out(self, addr: &str, after: Duration) -> ClientError {
        let what = match self {
            Self::Tcp => "no TCP connection",
            Self::Tls => {
                "the TCP connection was accepted but the TLS handshake did not complete \
                 (is this a fieldvault server, and is it overloaded?)"
            }
            Self::FirstBytes => {
                "the TLS handshake completed but the server sent nothing (is this a fieldvault \
                 server?)"
            }
            Self::Http2 => "the HTTP/2 connection was not established",
        };
        ClientError::ConnectTimeout {
            addr: addr.to_owned(),
            reason: format!(
                "timed out after {} (the connect timeout): {what}",
                format_duration(after)
            ),
        }
    }
}

pub use crate::domain::time::format_duration;

/// Parses `10`, `10s`, `500ms`, `2m`, `1h`, `1.5s`: a bare number is
/// seconds. The result is whole milliseconds, from 1 ms to a day. The
/// message never quotes the text (it may be a value given in the wrong
/// place).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| "not a duration (such as 10s, 500ms, 2m, 1h)".to_owned())?;
    let ms = match unit.trim() {
        "" | "s" => value * 1000.0,
        "ms" => value,
        "m" | "min" => value * 60_000.0,
        "h" => value * 3_600_000.0,
        _ => return Err("unknown unit (use ms, s, m or h)".to_owned()),
    };
    // At least 1 ms as given, then rounded to whole milliseconds: what is
    // printed is what is used.
    if !(1.0..=86_400_000.0).contains(&ms) {
        return Err("out of range (from 1ms to a day)".to_owned());
    }
    // In range and whole: the conversion is exact.
    Ok(Duration::from_millis(ms.round() as u64))
}

/// Makes connections for tonic: TCP, TLS, and the server's first bytes.
#[derive(Clone)]
struct Connector {
    target: Arc<Target>,
    prepared: Arc<Prepared>,
    timeout: Duration,
    stage: Arc<AtomicU8>,
    heard: Heard,
}

type ConnectFuture =
    Pin<Box<dyn Future<Output = Result<hyper_util::rt::TokioIo<Stream>, ClientError>> + Send>>;

impl tower_service::Service<http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<Stream>;
    type Error = ClientError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let deadline = Instant::now() + this.timeout;
            let stream = this.connect(deadline).await?;
            this.stage.store(Stage::Http2 as u8, Ordering::SeqCst);
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

impl Connector {
    fn set(&self, stage: Stage) {
        self.stage.store(stage as u8, Ordering::SeqCst);
    }

    async fn connect(&self, deadline: Instant) -> Result<Stream, ClientError> {
        let addr = &self.target.addr;
        let timed_out = |stage: Stage| stage.timed_out(addr, self.timeout);
        let unreachable = |reason: String| ClientError::Connect {
            addr: addr.clone(),
            reason,
        };
        let tls_err = |reason: String| ClientError::Tls {
            addr: addr.clone(),
            reason,
        };
        self.set(Stage::Tcp);
        let tcp = tokio::time::timeout_at(
            deadline,
            TcpStream::connect((self.target.host.as_str(), self.target.port)),
        )
        .await
        .map_err(|_| timed_out(Stage::Tcp))?
        .map_err(|e| unreachable(tcp_reason(&e)))?;
        let _ = tcp.set_nodelay(true);

        self.set(Stage::Tls);
        let (config, verifier) = self.prepared.config().map_err(tls_err)?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let mut tls = tokio::time::timeout_at(
            deadline,
            connector.connect(self.target.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| timed_out(Stage::Tls))?
        .map_err(|e| self.handshake_error(&e, &verifier))?;

        // TLS 1.3: the server judges our certificate after our side of the
        // handshake is done; its verdict is its first bytes or an alert.
        // Waited for a short window only: an HTTP/2 front end (a proxy)
        // may wait for our preface before it says anything, so a quiet
        // server gets the connection anyway (the call deadline bounds it
        // if it stays silent). Reading is cancel-safe: nothing is lost.
        self.set(Stage::FirstBytes);
        let window = (Instant::now() + first_bytes_window(self.timeout)).min(deadline);
        let mut first = vec![0u8; 16 * 1024];
        let n = match tokio::time::timeout_at(window, tls.read(&mut first)).await {
            Ok(read) => read.map_err(|e| self.handshake_error(&e, &verifier))?,
            Err(_) if window < deadline => {
                return Ok(Stream {
                    first: Vec::new(),
                    pos: 0,
                    inner: tls,
                    heard: self.heard.clone(),
                })
            }
            Err(_) => return Err(timed_out(Stage::FirstBytes)),
        };
        if n == 0 {
            return Err(unreachable(
                "the server closed the connection right after the TLS handshake without a \
                 word (over a connection limit? the server's log says why)"
                    .to_owned(),
            ));
        }
        first.truncate(n);
        self.heard.set();
        Ok(Stream {
            first,
            pos: 0,
            inner: tls,
            heard: self.heard.clone(),
        })
    }

    /// Says what a failed handshake (or first read) means from here.
    fn handshake_error(&self, e: &std::io::Error, verifier: &Recording) -> ClientError {
        let addr = self.target.addr.clone();
        let Some(rustls_err) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return ClientError::Connect {
                addr,
                reason: format!("the server closed the connection during the TLS handshake ({e})"),
            };
        };
        let presented = verifier
            .presented()
            .map(|p| format!("; {p}"))
            .unwrap_or_default();
        let reason = match rustls_err {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
                "the server's certificate is not signed by the CA in {}{presented}",
                self.prepared.ca_label
            ),
            // Its issuer has the name of our CA, but not its key.
            rustls::Error::InvalidCertificate(CertificateError::BadSignature) => format!(
                "the server's certificate is not signed by the CA in {}: its issuer has the same \
                 name but another key (a CA of another setup, such as a dev data dir made \
                 elsewhere or before a reset){presented}",
                self.prepared.ca_label
            ),
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => format!(
                "the server's certificate is not valid for {} ({rustls_err}){presented}",
                self.target.host
            ),
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            ) => format!("the server's certificate has expired ({rustls_err}){presented}"),
            rustls::Error::InvalidCertificate(other) => {
                format!(
                    "{}{presented}",
                    certificate_refused(other, &self.prepared.ca_label)
                )
            }
            rustls::Error::AlertReceived(alert) => self.refused(*alert),
            other => format!("TLS handshake failed: {other}"),
        };
        ClientError::Tls { addr, reason }
    }

    /// The server sent `alert`: it refused us.
    fn refused(&self, alert: AlertDescription) -> String {
        refusal(alert, &self.prepared.local_hints)
    }
}

/// What the server's `alert` refusing our certificate means, with `hints`:
/// what we can tell locally about our certificate.
fn refusal(alert: AlertDescription, hints: &[String]) -> String {
    let meaning = match alert {
        AlertDescription::UnknownCA => {
            "it does not trust the CA that issued our certificate".to_owned()
        }
        AlertDescription::UnsupportedCertificate => {
            "our certificate is not meant for a client (extended key usage)".to_owned()
        }
        AlertDescription::CertificateExpired => "our certificate has expired".to_owned(),
        AlertDescription::CertificateRevoked => "our certificate is revoked".to_owned(),
        AlertDescription::CertificateRequired => "it requires a client certificate".to_owned(),
        AlertDescription::BadCertificate => "it found our certificate invalid".to_owned(),
        // Our key matches our certificate (checked before connecting),
        // so the signature that failed is most likely the one on our
        // certificate: a CA of the same name but another key.
        AlertDescription::DecryptError => {
            "a signature did not verify (on our certificate: issued by another CA with the \
             name of the one it trusts?)"
                .to_owned()
        }
        AlertDescription::ProtocolVersion => {
            "we share no TLS version (the server may require TLS 1.3)".to_owned()
        }
        AlertDescription::NoApplicationProtocol => {
            "we share no application protocol (the server speaks HTTP/2, h2)".to_owned()
        }
        other => format!("for a reason it did not say ({other:?})"),
    };
    let mut out = format!("the server refused our certificate: {meaning} (TLS alert {alert:?})");
    if !hints.is_empty() {
        out.push_str("; ");
        out.push_str(&hints.join("; "));
    }
    out
}

/// The server's refusal of our certificate, if `e` (or an error in its
/// chain) is a TLS alert it sent: in TLS 1.3 a slow server's alert may
/// come after the connector handed the connection to HTTP/2, and the call
/// then fails with it. Worded as when connecting, with `hints` (see
/// [`Connected::refusal_hints`]).
pub fn alert_refusal(e: &(dyn std::error::Error + 'static), hints: &[String]) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        // An io::Error's source() skips the error it wraps: look inside.
        let rustls_err = err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::AlertReceived(alert)) = rustls_err {
            return Some(refusal(*alert, hints));
        }
        // h2 keeps an I/O error's kind and text only: rustls's words.
        if let Some(alert) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| alert_named(&io.to_string()))
        {
            return Some(refusal(alert, hints));
        }
        cur = err.source();
    }
    None
}

/// The alert in rustls's words for it, `received fatal alert: UnknownCA`.
fn alert_named(text: &str) -> Option<AlertDescription> {
    let name = text.strip_prefix("received fatal alert: ")?;
    (0..=u8::MAX)
        .map(AlertDescription::from)
        .find(|a| format!("{a:?}") == name)
}

/// Why the server's certificate was refused, in words, for the cases the
/// connector does not name itself; rustls's own description (Display, not
/// Debug) otherwise. `ca_label` names the CA file.
fn certificate_refused(e: &CertificateError, ca_label: &str) -> String {
    let text = e.to_string();
    match e {
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => format!(
            "the server's certificate is not valid yet (is this machine's clock right?) ({text})"
        ),
        CertificateError::Revoked => "the server's certificate is revoked".to_owned(),
        CertificateError::BadEncoding => {
            "the server sent a certificate that is not valid DER".to_owned()
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "the server's certificate is not meant for a server (its extended key usage lacks \
             serverAuth)"
                .to_owned()
        }
        CertificateError::UnhandledCriticalExtension => {
            "the server's certificate has a critical extension this client does not know".to_owned()
        }
        CertificateError::UnknownRevocationStatus => {
            "the server's certificate has no known revocation status".to_owned()
        }
        CertificateError::ExpiredRevocationList
        | CertificateError::ExpiredRevocationListContext { .. } => {
            "the certificate revocation list has expired".to_owned()
        }
        CertificateError::UnsupportedSignatureAlgorithmContext { .. }
        | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            "the server's certificate is signed with an algorithm this client does not support"
                .to_owned()
        }
        CertificateError::InvalidOcspResponse => {
            "the server sent an invalid OCSP response for its certificate".to_owned()
        }
        CertificateError::Other(_) if text.contains("CaUsedAsEndEntity") => format!(
            "the server presented a CA certificate as its own (a self-signed certificate?): it \
             must present a server certificate issued by the CA in {ca_label}"
        ),
        // rustls's Display of the rest is its Debug output; of `Other`,
        // the wrapped error says more than the wrapper.
        CertificateError::Other(other) => {
            format!("the server's certificate was refused ({})", other.0)
        }
        _ => format!("the server's certificate was refused ({text})"),
    }
}

fn tcp_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => {
            format!("connection refused: is the server running and listening there? ({e})")
        }
        _ => e.to_string(),
    }
}

/// The TLS stream with the server's first bytes put back in front.
pub struct Stream {
    first: Vec<u8>,
    pos: usize,
    inner: tokio_rustls::client::TlsStream<TcpStream>,
    heard: Heard,
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.first.len() {
            let n = (this.first.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.first[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.first.len() {
                this.first = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.heard.set();
        }
        read
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Our own error, if connecting failed in the connector.
fn find_client_error(e: &(dyn std::error::Error + 'static)) -> Option<ClientError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(found) = err.downcast_ref::<ClientError>() {
            return Some(found.clone());
        }
        cur = err.source();
    }
    None
}

/// An error and its sources, each said once: libraries often repeat their
/// source's text in their own (`tcp connect error: tcp connect error: …`).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        let repeated = parts.iter().any(|p| p.contains(&text));
        if !text.is_empty() && !repeated {
            // A part that merely wraps this one adds nothing.
            parts.retain(|p| !text.contains(p.as_str()));
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn an_address_without_a_port_is_refused_as_missing_its_port() {
        let e = Target::parse("127.0.0.1").unwrap_err().to_string();
        assert!(e.contains("missing port"), "{e}");
        assert!(Target::parse("localhost:50051").is_ok());
        let v6 = Target::parse("[::1]:50051").unwrap();
        assert_eq!(
            (v6.host.as_str(), v6.authority.as_str()),
            ("::1", "[::1]:50051")
        );
        assert!(http::Uri::try_from(format!("http://{}", v6.authority)).is_ok());
        assert_eq!(Target::parse("https://vault.example").unwrap().port, 443);
        assert!(Target::parse("http://127.0.0.1:1").is_err());
    }

    #[test]
    fn a_port_that_is_not_a_number_from_1_to_65535_is_named_as_such() {
        for bad in [
            "localhost:abc",
            "localhost:99999",
            "127.0.0.1:+50771",
            "127.0.0.1:0",
            "127.0.0.1:",
            "[::1]:x",
        ] {
            let e = Target::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("the port is not a number from 1 to 65535"),
                "{bad}: {e}"
            );
        }
        assert_eq!(Target::parse("localhost:65535").unwrap().port, 65535);
        assert_eq!(Target::parse("https://[::1]").unwrap().port, 443);
        let e = Target::parse("::1:50051").unwrap_err().to_string();
        assert!(e.contains("in brackets"), "{e}");
        // The message does not quote what was given.
        let e = Target::parse("+1 202-555-0123").unwrap_err().to_string();
        assert!(!e.contains("202"), "{e}");
    }

    #[test]
    fn an_address_with_a_path_is_refused_as_such_and_whitespace_around_it_is_dropped() {
        for bad in [
            "https://127.0.0.1:50801/path",
            "127.0.0.1:50801/v1",
            "https://vault.example/x",
            "https://vault.example?x",
        ] {
            let e = Target::parse(bad).unwrap_err().to_string();
            assert!(e.contains("an address has no path"), "{bad}: {e}");
        }
        let t = Target::parse(" 127.0.0.1:50801 \n").unwrap();
        assert_eq!((t.authority.as_str(), t.port), ("127.0.0.1:50801", 50801));
        assert_eq!(Target::parse("\thttps://[::1]/ ").unwrap().port, 443);
    }

    #[test]
    fn durations_read_as_seconds_milliseconds_or_minutes() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("ten").is_err());
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("25h").is_err());
        assert!(parse_duration("5d").is_err());
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_secs(10)), "10s");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
    }

    #[test]
    fn a_duration_below_a_millisecond_is_refused_and_messages_quote_no_text() {
        for tiny in ["0.0000000001", "0.5ms", "0.0001s"] {
            let e = parse_duration(tiny).unwrap_err();
            assert!(e.contains("from 1ms to a day"), "{tiny}: {e}");
        }
        assert_eq!(parse_duration("1ms").unwrap(), Duration::from_millis(1));
        assert_eq!(parse_duration("1.4ms").unwrap(), Duration::from_millis(1));
        for bad in ["+1 202-555-0123", "2025550123x", "1e3"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(!e.contains("202") && !e.contains("1e3"), "{e}");
        }
    }

    #[test]
    fn certificate_errors_are_said_in_words_and_never_as_debug_output() {
        let said = |e: CertificateError| certificate_refused(&e, "ca.pem");
        assert!(said(CertificateError::NotValidYet).contains("not valid yet"));
        assert_eq!(
            said(CertificateError::Revoked),
            "the server's certificate is revoked"
        );
        assert!(said(CertificateError::InvalidPurpose).contains("lacks serverAuth"));
        assert!(said(CertificateError::UnknownRevocationStatus).contains("revocation status"));
        let other = said(CertificateError::Other(rustls::OtherError(Arc::new(
            std::io::Error::other("a reason"),
        ))));
        assert_eq!(other, "the server's certificate was refused (a reason)");
    }

    #[test]
    fn a_tls_alert_in_an_error_chain_is_worded_as_a_refusal_with_the_hints() {
        // As h2 hands it on: an I/O error with rustls's words only.
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "received fatal alert: UnknownCA",
        );
        let said = alert_refusal(&io, &["a hint".to_owned()]).unwrap();
        assert!(
            said.starts_with("the server refused our certificate: it does not trust the CA")
                && said.ends_with("(TLS alert UnknownCA); a hint"),
            "{said}"
        );
        let wrapped = std::io::Error::other(rustls::Error::AlertReceived(
            AlertDescription::CertificateExpired,
        ));
        assert!(alert_refusal(&wrapped, &[])
            .unwrap()
            .contains("has expired"));
        let other = std::io::Error::other("received fatal alert: Nonsense");
        assert!(alert_refusal(&other, &[]).is_none());
        assert!(alert_refusal(&std::io::Error::other("reset"), &[]).is_none());
    }

    #[test]
    fn an_error_chain_says_each_part_once() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let e = E(
            "tcp connect error",
            Some(Box::new(E(
                "tcp connect error",
                Some(Box::new(E("Connection refused (os error 111)", None))),
            ))),
        );
        assert_eq!(
            error_chain(&e),
            "tcp connect error: Connection refused (os error 111)"
        );
    }
}
