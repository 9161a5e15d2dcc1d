//! A raw HTTP/2 client over tokio-rustls, to do what a well-behaved gRPC
//! client would not (half-open streams, hand-made protobuf, old TLS), and
//! the memory of a server process. Every step has a deadline.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use super::CONNECT_DEADLINE as STEP;
use bytes::Bytes;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::time::timeout;

pub fn client_config(
    pki_dir: &Path,
    name: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki_dir.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let certs = CertificateDer::pem_file_iter(pki_dir.join(format!("{name}.pem")))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(pki_dir.join(format!("{name}.key"))).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

pub async fn tls_connect(
    addr: &str,
    pki_dir: &Path,
    name: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(client_config(pki_dir, name, versions)));
    let tcp = timeout(STEP, TcpStream::connect(addr))
        .await
        .map_err(|_| "TCP connect timed out".to_owned())?
        .map_err(|e| format!("TCP connect: {e}"))?;
    timeout(
        STEP,
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .map_err(|_| "TLS handshake timed out".to_owned())?
    .map_err(|e| format!("TLS handshake: {e}"))
}

pub struct H2Conn {
    pub send: h2::client::SendRequest<Bytes>,
    /// Ends when the connection does.
    pub driver: tokio::task::JoinHandle<()>,
}

pub async fn h2_connect(addr: &str, pki_dir: &Path, name: &str) -> Result<H2Conn, String> {
    let tls = tls_connect(addr, pki_dir, name, &[&rustls::version::TLS13]).await?;
    let (send, conn) = timeout(STEP, h2::client::handshake(tls))
        .await
        .map_err(|_| "h2 handshake timed out".to_owned())?
        .map_err(|e| format!("h2 handshake: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(H2Conn { send, driver })
}

pub fn grpc_request(path: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("https://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// A line of `/proc/PID/status` in MiB (`VmRSS:`, `VmHWM:`).
pub fn proc_mib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb / 1024
}

/// Sends one complete empty-message call on `path` and returns its
/// grpc-status (from headers or trailers), or why there was none.
pub async fn grpc_status(
    send: &mut h2::client::SendRequest<Bytes>,
    path: &str,
) -> Result<u32, String> {
    let mut ready = timeout(STEP, send.clone().ready())
        .await
        .map_err(|_| "no stream slot".to_owned())?
        .map_err(|e| format!("connection: {e}"))?;
    let (resp, mut body) = ready
        .send_request(grpc_request(path), false)
        .map_err(|e| format!("send: {e}"))?;
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .map_err(|e| format!("send data: {e}"))?;
    let resp = timeout(STEP, resp)
        .await
        .map_err(|_| "no response".to_owned())?
        .map_err(|e| format!("response: {e}"))?;
    if let Some(s) = resp.headers().get("grpc-status") {
        return Ok(s.to_str().unwrap().parse().unwrap());
    }
    let mut body = resp.into_body();
    while let Some(chunk) = timeout(STEP, body.data())
        .await
        .map_err(|_| "response body stalled".to_owned())?
    {
        chunk.map_err(|e| format!("body: {e}"))?;
    }
    let trailers = timeout(STEP, body.trailers())
        .await
        .map_err(|_| "no trailers".to_owned())?
        .map_err(|e| format!("trailers: {e}"))?
        .ok_or("no trailers")?;
    Ok(trailers
        .get("grpc-status")
        .ok_or("no grpc-status")?
        .to_str()
        .unwrap()
        .parse()
        .unwrap())
}
