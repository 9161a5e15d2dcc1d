//! The server side of mTLS. fieldvault owns its accept loop (rustls +
//! tokio-rustls) rather than using tonic's TLS settings: each handshake
//! takes the config in force (certificate reload and CRLs live in
//! [`crate::tls_reload`]).

use crate::domain::CallerId;
use crate::identity::{caller_from_cert_der_with, IdentityError};
use crate::limits::{ConnActivity, Identities, IdentitySlot, RefusalLog};
use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration rejected: {0}")]
    Rustls(String),
    /// A TLS file that cannot be used, naming its setting and path.
    #[error("{0}")]
    Invalid(String),
}

/// Who is on the other end of a connection: read from the client
/// certificate once, right after the handshake, and handed to every request
/// on that connection as a request extension (cheap to clone).
#[derive(Clone, Debug)]
pub struct Peer(Arc<PeerInner>);

#[derive(Debug)]
struct PeerInner {
    caller: Result<Arc<CallerId>, IdentityError>,
    activity: Arc<ConnActivity>,
    budget: Option<Arc<Semaphore>>,
}

/// The key connections are counted under: the caller, or one shared key
/// for every certificate that names none.
fn identity_key(caller: &Result<Arc<CallerId>, IdentityError>) -> String {
    match caller {
        Ok(id) => id.to_string(),
        Err(_) => "(no identity)".to_owned(),
    }
}

fn caller_of(
    tls: &TlsStream<TcpStream>,
    identity_from_cn: bool,
) -> Result<Arc<CallerId>, IdentityError> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or(IdentityError::NoCertificate)
        .and_then(|leaf| caller_from_cert_der_with(leaf, identity_from_cn))
        .map(Arc::new)
}

impl Peer {
    /// The identity the client certificate names, or why it names none.
    pub fn caller(&self) -> Result<Arc<CallerId>, IdentityError> {
        self.0.caller.clone()
    }

    /// The connection's open-stream counter.
    pub fn activity(&self) -> Arc<ConnActivity> {
        self.0.activity.clone()
    }

    /// The identity's budget of request bytes (see [`crate::limits`]).
    pub fn budget(&self) -> Option<Arc<Semaphore>> {
        self.0.budget.clone()
    }
}

/// A TLS connection that completed the mTLS handshake, with its [`Peer`].
/// It holds its place under the connection caps until dropped, and reads
/// end (EOF) once it has had no open stream for the idle timeout.
pub struct PeerStream {
    tls: TlsStream<TcpStream>,
    peer: Peer,
    idle: Option<IdleTimer>,
    _connection: Option<OwnedSemaphorePermit>,
    _identity: Option<IdentitySlot>,
}

struct IdleTimer {
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    expired: bool,
}

impl PeerStream {
    /// Whether the idle timeout has passed with no stream open; re-arms the
    /// timer otherwise. The timer's waker is the connection task's, which
    /// always has a read pending, so it is polled when the timer fires.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(idle) = &mut self.idle else {
            return false;
        };
        while !idle.expired && idle.sleep.as_mut().poll(cx).is_ready() {
            let now = tokio::time::Instant::now();
            match self.peer.0.activity.idle_since() {
                Some(since) if since.elapsed() >= idle.timeout => {
                    tracing::debug!("closing a connection idle for limits.idle_timeout_secs");
                    idle.expired = true;
                }
                Some(since) => {
                    let left = idle.timeout.saturating_sub(since.elapsed());
                    idle.sleep.as_mut().reset(now + left);
                }
                None => idle.sleep.as_mut().reset(now + idle.timeout),
            }
        }
        idle.expired
    }
}

impl PeerStream {
    /// The client's certificate chain as presented, leaf first (empty: it
    /// presented none).
    pub fn peer_certificates(&self) -> Vec<CertificateDer<'static>> {
        self.tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default()
    }
}

impl tonic::transport::server::Connected for PeerStream {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.idle_expired(cx) {
            // End of stream: hyper closes the connection.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

/// What the accept loop enforces (see [`crate::limits::Resolved`]).
#[derive(Clone, Debug)]
pub struct AcceptLimits {
    pub max_connections: usize,
    /// TLS handshakes in progress from everyone; below `max_connections`.
    pub max_pending_handshakes: usize,
    /// TLS handshakes in progress from one source IP address.
    pub max_handshakes_per_ip: usize,
    pub identities: Arc<Identities>,
    pub handshake_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    pub identity_from_cn: bool,
    pub refusals: Arc<RefusalLog>,
}

/// TLS handshakes in progress, in total and per source IP address.
#[derive(Debug)]
struct Handshakes {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One handshake in progress; see [`Handshakes`].
struct HandshakeSlot {
    handshakes: Arc<Mutex<Handshakes>>,
    ip: IpAddr,
}

fn lock_handshakes(m: &Mutex<Handshakes>) -> std::sync::MutexGuard<'_, Handshakes> {
    // Plain counters: a panic while holding the lock leaves them usable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Why a handshake was not started.
enum HandshakeRefusal {
    Total,
    PerIp,
}

fn start_handshake(
    handshakes: &Arc<Mutex<Handshakes>>,
    ip: IpAddr,
    limits: &AcceptLimits,
) -> Result<HandshakeSlot, HandshakeRefusal> {
    let mut h = lock_handshakes(handshakes);
    if h.total >= limits.max_pending_handshakes {
        return Err(HandshakeRefusal::Total);
    }
    let from_ip = h.per_ip.entry(ip).or_insert(0);
    if *from_ip >= limits.max_handshakes_per_ip {
        return Err(HandshakeRefusal::PerIp);
    }
    *from_ip += 1;
    h.total += 1;
    Ok(HandshakeSlot {
        handshakes: handshakes.clone(),
        ip,
    })
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut h = lock_handshakes(&self.handshakes);
        h.total = h.total.saturating_sub(1);
        if let Some(n) = h.per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                h.per_ip.remove(&self.ip);
            }
        }
    }
}

/// Accepts TCP connections and completes TLS handshakes concurrently; only
/// connections that presented a valid client certificate come out of the
/// stream. Abort the returned task to stop accepting. At `max_connections` open (TLS
/// handshakes included), a new TCP connection is closed at once; so is one
/// past `max_pending_handshakes` handshakes in progress, or past
/// `max_handshakes_per_ip` of them from its source address; a
/// connection whose identity already holds its
/// `limits.max_connections_per_identity` is closed right after the
/// handshake. Refusals are logged at most
/// `limits.refusal_log_lines_per_minute` times a minute.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    limits: AcceptLimits,
) -> (
    ReceiverStream<Result<PeerStream, std::io::Error>>,
    JoinHandle<()>,
) {
    // The sender goes: the receiver keeps answering with this config.
    let (_, configs) = tokio::sync::watch::channel(config);
    incoming_with(listener, configs, limits)
}

/// [`incoming`] whose new handshakes use the config `configs` holds at
/// the time (see [`crate::tls_reload::ServerTls`]); established
/// connections keep the one they were accepted with. A failed handshake
/// is logged (rate-limited) with its peer address and a short reason
/// ([`crate::tls_reload::reason`]), and counted in
/// `fieldvault_tls_handshake_failures_total{reason}`.
pub fn incoming_with(
    listener: TcpListener,
    configs: tokio::sync::watch::Receiver<Arc<ServerConfig>>,
    limits: AcceptLimits,
) -> (
    ReceiverStream<Result<PeerStream, std::io::Error>>,
    JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(256);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let handshakes = Arc::new(Mutex::new(Handshakes {
        total: 0,
        per_ip: HashMap::new(),
    }));
    let task = tokio::spawn(async move {
        let mut report = tokio::time::interval(Duration::from_secs(60));
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = report.tick() => {
                    let not_logged = limits.refusals.take_suppressed();
                    if not_logged > 0 {
                        tracing::info!(not_logged, "refused connections not logged in the last minute");
                    }
                    continue;
                }
            };
            let (tcp, peer) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and the like: wait for descriptors to come back.
                    crate::log_refusal!(limits.refusals, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                break;
            }
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                drop(tcp);
                crate::log_refusal!(
                    limits.refusals,
                    %peer,
                    max_connections = limits.max_connections,
                    "connection refused: limits.max_connections reached"
                );
                continue;
            };
            let handshake = match start_handshake(&handshakes, peer.ip(), &limits) {
                Ok(handshake) => handshake,
                Err(HandshakeRefusal::Total) => {
                    drop(tcp);
                    crate::log_refusal!(
                        limits.refusals,
                        %peer,
                        max_pending_handshakes = limits.max_pending_handshakes,
                        "connection refused: limits.max_pending_handshakes reached"
                    );
                    continue;
                }
                Err(HandshakeRefusal::PerIp) => {
                    drop(tcp);
                    crate::log_refusal!(
                        limits.refusals,
                        %peer,
                        max_handshakes_per_ip = limits.max_handshakes_per_ip,
                        "connection refused: limits.max_handshakes_per_ip reached for this address"
                    );
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(configs.borrow().clone());
            let tx = tx.clone();
            let limits = limits.clone();
            tokio::spawn(async move {
                let handshaken =
                    tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await;
                drop(handshake);
                let tls = match handshaken {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        let reason = crate::tls_reload::failure_reason(&e);
                        crate::tls_reload::count_failure(reason);
                        crate::log_refusal!(limits.refusals, %peer, reason, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        let reason = crate::tls_reload::reason::TIMEOUT;
                        crate::tls_reload::count_failure(reason);
                        crate::log_refusal!(limits.refusals, %peer, reason, "TLS handshake timed out");
                        return;
                    }
                };
                let caller = caller_of(&tls, limits.identity_from_cn);
                let key = identity_key(&caller);
                let identity = match limits.identities.enter(&key) {
                    Ok(identity) => identity,
                    Err(open) => {
                        crate::log_refusal!(
                            limits.refusals,
                            %peer,
                            identity = key.as_str(),
                            open,
                            "connection refused: limits.max_connections_per_identity reached"
                        );
                        return;
                    }
                };
                let peer = Peer(Arc::new(PeerInner {
                    caller,
                    activity: Arc::new(ConnActivity::default()),
                    budget: Some(identity.budget()),
                }));
                let idle = limits.idle_timeout.map(|timeout| IdleTimer {
                    timeout,
                    sleep: Box::pin(tokio::time::sleep(timeout)),
                    expired: false,
                });
                let _ = tx
                    .send(Ok(PeerStream {
                        tls,
                        peer,
                        idle,
                        _connection: Some(slot),
                        _identity: Some(identity),
                    }))
                    .await;
            });
        }
    });
    (ReceiverStream::new(rx), task)
}
