//! Cutting connections off: at the end of a drain, and when the client
//! CAs and CRLs in force no longer accept a connection's certificate.
//!
//! A SIGTERM lets calls in flight finish (HTTP/2 GOAWAY: no new call is
//! taken); the ones still running at `shutdown.drain_timeout_secs` are cut
//! off by closing their connections, so that every task holding the store
//! ends and the store closes (and checkpoints) before the process exits. A
//! call cut off was never answered, so nothing it did was acknowledged.
//!
//! A revocation is in force for connections already open too: every open
//! connection's client certificate chain is checked again when the CAs or
//! CRLs change (and once a minute, for certificates that expire while
//! connected), and a connection that fails is closed at once (its calls
//! in flight are cut off; the client's next handshake fails).

use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The open connections, each with its client certificate chain and a way
/// to close it.
#[derive(Clone, Debug, Default)]
pub struct Connections(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    /// Cancelled at the end of a drain: closes every connection.
    all: CancellationToken,
    next: AtomicU64,
    open: Mutex<HashMap<u64, Open>>,
}

#[derive(Debug)]
struct Open {
    /// The client's certificate chain, leaf first (empty: none).
    certs: Vec<CertificateDer<'static>>,
    cut: CancellationToken,
}

impl Inner {
    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Open>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Connections {
    pub fn new() -> Self {
        Self::default()
    }

    /// `stream`, whose client presented `certs` (leaf first), closed when
    /// [`Connections::cut_all`] is called or a [`Connections::recheck`]
    /// finds its certificate no longer accepted.
    pub fn wrap<S>(&self, stream: S, certs: Vec<CertificateDer<'static>>) -> Cuttable<S> {
        let cut = self.0.all.child_token();
        let id = self.0.next.fetch_add(1, Ordering::Relaxed);
        self.0.open().insert(
            id,
            Open {
                certs,
                cut: cut.clone(),
            },
        );
        Cuttable {
            inner: stream,
            cut: Box::pin(cut.clone().cancelled_owned()),
            token: cut,
            _registered: Some(Registered {
                id,
                connections: self.0.clone(),
            }),
        }
    }

    /// [`Connections::wrap`], closed at once if `verifier` (the CAs and
    /// CRLs in force now) does not accept `certs`: a handshake that began
    /// before a revocation was applied ends with the old verifier, and
    /// would otherwise hold its connection until the next recheck.
    pub fn wrap_checked<S>(
        &self,
        stream: S,
        certs: Vec<CertificateDer<'static>>,
        verifier: &dyn ClientCertVerifier,
    ) -> Cuttable<S> {
        let refused = certs.split_first().and_then(|(leaf, intermediates)| {
            verifier
                .verify_client_cert(leaf, intermediates, UnixTime::now())
                .err()
        });
        let wrapped = self.wrap(stream, certs);
        if let Some(e) = refused {
            let reason = crate::tls_reload::rustls_reason(&e);
            tracing::warn!(
                reason,
                "closed a connection whose handshake ended after its client certificate stopped being accepted"
            );
            metrics::counter!("fieldvault_tls_connections_closed_total", "reason" => reason)
                .increment(1);
            wrapped.cut_now();
        }
        wrapped
    }

    /// Every connection fails its next read and write (and a read waiting
    /// for data fails now).
    pub fn cut_all(&self) {
        self.0.all.cancel();
    }

    /// How many connections are open.
    pub fn len(&self) -> usize {
        self.0.open().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks every open connection's client certificate chain against
    /// `verifier` (the CAs and CRLs in force) as a handshake would now, and
    /// closes each that fails. Returns how many were closed, by reason.
    pub fn recheck(&self, verifier: &dyn ClientCertVerifier) -> Vec<(&'static str, usize)> {
        let now = UnixTime::now();
        let mut closed: Vec<(&'static str, usize)> = Vec::new();
        // Verified outside the lock: connections open and close meanwhile.
        let open: Vec<(Vec<CertificateDer<'static>>, CancellationToken)> = self
            .0
            .open()
            .values()
            .filter(|o| !o.cut.is_cancelled())
            .map(|o| (o.certs.clone(), o.cut.clone()))
            .collect();
        for (certs, cut) in open {
            let Some((leaf, intermediates)) = certs.split_first() else {
                continue;
            };
            if let Err(e) = verifier.verify_client_cert(leaf, intermediates, now) {
                cut.cancel();
                let reason = crate::tls_reload::rustls_reason(&e);
                match closed.iter_mut().find(|(r, _)| *r == reason) {
                    Some((_, n)) => *n += 1,
                    None => closed.push((reason, 1)),
                }
            }
        }
        for (reason, n) in &closed {
            metrics::counter!("fieldvault_tls_connections_closed_total", "reason" => *reason)
                .increment(*n as u64);
        }
        closed
    }
}

/// Removes its connection from [`Connections`] when the connection ends.
#[derive(Debug)]
struct Registered {
    id: u64,
    connections: Arc<Inner>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.connections.open().remove(&self.id);
    }
}

/// A connection [`Connections`] can close.
pub struct Cuttable<S> {
    inner: S,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
    token: CancellationToken,
    _registered: Option<Registered>,
}

impl<S> Cuttable<S> {
    /// Closes this connection: its next read and write fail.
    fn cut_now(&self) {
        self.token.cancel();
    }
}

fn cut_off() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "closed by the server: the drain deadline passed, or the client certificate is no longer accepted",
    )
}

impl<S> Cuttable<S> {
    fn is_cut(&mut self, cx: &mut Context<'_>) -> bool {
        self.cut.as_mut().poll(cx).is_ready()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Cuttable<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Cuttable<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(cut_off()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Cuttable<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(cut_off()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(cut_off()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(cut_off()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A verifier of `ca` whose CRL revokes `revoked`, and the two client
    /// chains: one revoked, one not.
    fn verifier_and_clients() -> (
        Arc<dyn ClientCertVerifier>,
        CertificateDer<'static>,
        CertificateDer<'static>,
    ) {
        use rustls_pki_types::pem::PemObject;
        let ca = crate::devpki::DevCa::new("drain test CA").unwrap_or_else(|e| panic!("{e}"));
        let der = |pem: &str| {
            CertificateDer::from_pem_slice(pem.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
        };
        let issue = |name: &str| {
            let issued = ca
                .issue_client(name, Some(&crate::dev::spiffe_id(name)))
                .unwrap_or_else(|e| panic!("{e}"));
            der(&issued.cert_pem)
        };
        let (revoked, kept) = (issue("orders"), issue("support"));
        let serial = x509_parser::parse_x509_certificate(revoked.as_ref())
            .unwrap_or_else(|e| panic!("{e}"))
            .1
            .raw_serial()
            .to_vec();
        let crl = ca
            .revocation_list(&[serial], 1, std::time::Duration::from_secs(3600))
            .unwrap_or_else(|e| panic!("{e}"));
        let crl = rustls_pki_types::CertificateRevocationListDer::from_pem_slice(crl.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(der(ca.cert_pem()))
            .unwrap_or_else(|e| panic!("{e}"));
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .with_crls(vec![crl])
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
        (verifier, revoked, kept)
    }

    #[tokio::test]
    async fn a_connection_the_verifier_in_force_refuses_is_closed_as_it_is_registered_or_rechecked()
    {
        let (verifier, revoked, kept) = verifier_and_clients();
        let connections = Connections::new();
        // Registered after a handshake that ended with an older verifier.
        let (a, _a_peer) = tokio::io::duplex(64);
        let mut late = connections.wrap_checked(a, vec![revoked.clone()], verifier.as_ref());
        let mut byte = [0u8; 1];
        let read = late.read(&mut byte).await;
        assert_eq!(
            read.err().map(|e| e.kind()),
            Some(std::io::ErrorKind::ConnectionAborted)
        );
        // Registered before the CRL: closed by the recheck; the other stays.
        let (b, _b_peer) = tokio::io::duplex(64);
        let (c, mut c_peer) = tokio::io::duplex(64);
        let mut open = connections.wrap(b, vec![revoked]);
        let mut other = connections.wrap(c, vec![kept]);
        assert_eq!(connections.recheck(verifier.as_ref()), vec![("revoked", 1)]);
        let read = open.read(&mut byte).await;
        assert_eq!(
            read.err().map(|e| e.kind()),
            Some(std::io::ErrorKind::ConnectionAborted)
        );
        c_peer
            .write_all(b"x")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        other
            .read_exact(&mut byte)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(connections.recheck(verifier.as_ref()).is_empty());
    }

    #[tokio::test]
    async fn a_cut_fails_a_pending_read_and_every_later_write() {
        let (a, mut b) = tokio::io::duplex(64);
        let connections = Connections::new();
        let mut a = connections.wrap(a, Vec::new());
        assert_eq!(connections.len(), 1);
        b.write_all(b"x").await.unwrap_or_else(|e| panic!("{e}"));
        let mut one = [0u8; 1];
        a.read_exact(&mut one)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1];
            let read = a.read(&mut buf).await;
            (a, read)
        });
        connections.cut_all();
        let (mut a, read) = tokio::time::timeout(std::time::Duration::from_secs(10), reader)
            .await
            .unwrap_or_else(|_| panic!("the pending read did not end"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            read.err().map(|e| e.kind()),
            Some(std::io::ErrorKind::ConnectionAborted)
        );
        let written = a.write_all(b"y").await;
        assert_eq!(
            written.err().map(|e| e.kind()),
            Some(std::io::ErrorKind::ConnectionAborted)
        );
        // A connection leaves the registry when it ends.
        drop(a);
        assert!(connections.is_empty());
    }
}
