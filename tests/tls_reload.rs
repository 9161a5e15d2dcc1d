//! Certificates change while the server runs: the server certificate is
//! replaced, a client certificate is revoked by a CRL (file change,
//! SIGHUP, dev mode's crl.pem). New handshakes see the change within a
//! reload interval (1 s here); open connections keep working; bad files
//! keep the material in force.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::raw::{grpc_request, tls_connect};
use common::*;
use fieldvault::grpc::pb;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

/// How long a change may take to show: several reload intervals of 1 s.
const RELOAD_DEADLINE: Duration = Duration::from_secs(15);
const STEP: Duration = Duration::from_secs(5);
const HEALTH: &str = "/grpc.health.v1.Health/Check";

/// The serial number (hex) of the server certificate a TLS connection got.
fn server_serial(tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    hex::encode(cert.raw_serial())
}

/// Connects as `name` (its certificate in `dir`) and sends the HTTP/2
/// preface: the server's first bytes mean it accepted the client
/// certificate (TLS 1.3 reports a refused client certificate only on the
/// first read). `Ok(server certificate serial)` or the error.
async fn handshake(addr: &str, dir: &Path, name: &str) -> Result<String, String> {
    let mut tls = tls_connect(addr, dir, name, &[&rustls::version::TLS13]).await?;
    let serial = server_serial(&tls);
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    match timeout(STEP, tls.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Ok(serial),
        Ok(Ok(_)) => Err("closed".to_owned()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".to_owned()),
    }
}

/// Polls `check` every 100 ms until it returns true; panics naming `what`
/// past [`RELOAD_DEADLINE`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < RELOAD_DEADLINE,
            "gave up after {RELOAD_DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An HTTP/2 connection kept open across reloads, with the serial of the
/// server certificate it was made with.
struct Open {
    send: h2::client::SendRequest<Bytes>,
    serial: String,
    _driver: tokio::task::JoinHandle<()>,
}

async fn open(addr: &str, dir: &Path, name: &str) -> Open {
    let tls = tls_connect(addr, dir, name, &[&rustls::version::TLS13])
        .await
        .unwrap();
    let serial = server_serial(&tls);
    let (send, conn) = timeout(STEP, h2::client::handshake(tls))
        .await
        .unwrap()
        .unwrap();
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Open {
        send,
        serial,
        _driver: driver,
    }
}

impl Open {
    /// A health check on this very connection; its grpc-status.
    async fn health(&mut self) -> Result<String, String> {
        let mut ready = timeout(STEP, self.send.clone().ready())
            .await
            .map_err(|_| "no stream slot".to_owned())?
            .map_err(|e| format!("connection: {e}"))?;
        let (resp, mut body) = ready
            .send_request(grpc_request(HEALTH), false)
            .map_err(|e| format!("send: {e}"))?;
        body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
            .map_err(|e| format!("send data: {e}"))?;
        let resp = timeout(STEP, resp)
            .await
            .map_err(|_| "no response".to_owned())?
            .map_err(|e| format!("response: {e}"))?;
        let mut body = resp.into_body();
        while let Some(chunk) = timeout(STEP, body.data())
            .await
            .map_err(|_| "body stalled".to_owned())?
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
            .map(|s| s.to_str().unwrap().to_owned())
            .unwrap_or_default())
    }
}

/// A server reading its TLS files every second, with `crl` (in the PKI
/// dir) as its CRL when given.
async fn reloading_vault(crl: Option<&str>) -> TestVault {
    let crl = crl.map(str::to_owned);
    let vault = TestVault::start_with(|c| {
        c.tls_options.reload_interval = Duration::from_secs(1);
        if let Some(crl) = crl {
            // Written by the test once the server runs (the PKI is made
            // with the server): until then it revokes nothing.
            let pki = c.tls.client_ca.parent().unwrap().to_path_buf();
            c.tls_options.crls = vec![pki.join(crl)];
            c.tls_options.crls_may_be_missing = true;
        }
    });
    vault.await
}

#[tokio::test]
async fn a_replaced_server_certificate_is_used_for_new_connections_while_open_ones_keep_working()
{
    let vault = reloading_vault(None).await;
    let dir = vault.pki.dir.clone();
    let mut before = open(&vault.addr(), &dir, "orders").await;
    assert_eq!(before.health().await.unwrap(), "0");

    let new = vault.pki.ca.issue_server(&["localhost", "127.0.0.1"]).unwrap();
    // The key first, then the certificate: in between, the pair does not
    // match and the old one stays in force.
    write(&dir.join("server.key"), new.key_pem.as_bytes());
    write(&dir.join("server.pem"), new.cert_pem.as_bytes());
    let new_serial = {
        let (_, pem) = x509_parser::pem::parse_x509_pem(new.cert_pem.as_bytes()).unwrap();
        hex::encode(pem.parse_x509().unwrap().raw_serial())
    };
    assert_ne!(new_serial, before.serial);

    let addr = vault.addr();
    eventually("new connections to get the new certificate", || {
        let (addr, dir, want) = (addr.clone(), dir.clone(), new_serial.clone());
        async move { handshake(&addr, &dir, "orders").await.ok() == Some(want) }
    })
    .await;
    // The connection made before the swap: still served, on its old
    // certificate.
    assert_eq!(before.health().await.unwrap(), "0");
    assert_eq!(before.health().await.unwrap(), "0");
    // And a gRPC client works on the new one.
    let mut client = vault.client("orders").await;
    tokens_for(&mut client, vec![field(pb::FieldKind::Phone, "+1 202-555-0143")]).await;
}

#[tokio::test]
async fn a_server_certificate_without_its_key_keeps_the_old_one_in_force() {
    let vault = reloading_vault(None).await;
    let dir = vault.pki.dir.clone();
    let old_serial = handshake(&vault.addr(), &dir, "orders").await.unwrap();
    // A new certificate, but the key stays the old one: a mismatch.
    let new = vault.pki.ca.issue_server(&["localhost", "127.0.0.1"]).unwrap();
    write(&dir.join("server.pem"), new.cert_pem.as_bytes());
    // Three reload intervals: the server has read the bad pair (and
    // refused it) by then.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for _ in 0..3 {
        assert_eq!(
            handshake(&vault.addr(), &dir, "orders").await.unwrap(),
            old_serial
        );
    }
    let mut client = vault.client("orders").await;
    tokens_for(&mut client, vec![field(pb::FieldKind::Phone, "+1 202-555-0144")]).await;
    // The matching key arrives: the new certificate goes in force.
    write(&dir.join("server.key"), new.key_pem.as_bytes());
    let addr = vault.addr();
    eventually("the completed pair to go in force", || {
        let (addr, dir, old) = (addr.clone(), dir.clone(), old_serial.clone());
        async move {
            matches!(handshake(&addr, &dir, "orders").await, Ok(serial) if serial != old)
        }
    })
    .await;
}

#[tokio::test]
async fn a_client_added_to_the_crl_fails_its_next_handshakes_while_others_connect() {
    let vault = reloading_vault(Some("crl.pem")).await;
    let (addr, dir) = (vault.addr(), vault.pki.dir.clone());
    vault.pki.write_crl("crl.pem", &[]);
    let mut orders_open = open(&addr, &dir, "orders").await;
    assert!(handshake(&addr, &dir, "orders").await.is_ok());

    vault.pki.write_crl("crl.pem", &["orders"]);
    eventually("orders' handshakes to fail", || {
        let (addr, dir) = (addr.clone(), dir.clone());
        async move {
            match handshake(&addr, &dir, "orders").await {
                Ok(_) => false,
                Err(e) => {
                    assert!(e.contains("CertificateRevoked"), "{e}");
                    true
                }
            }
        }
    })
    .await;
    // Others still get in; orders' connection made before stays (a CRL
    // bites at the handshake).
    assert!(handshake(&addr, &dir, "support").await.is_ok());
    let mut support = open(&addr, &dir, "support").await;
    assert_eq!(support.health().await.unwrap(), "0");
    assert_eq!(orders_open.health().await.unwrap(), "0");
    // A CRL another CA signed is refused: orders stays revoked.
    let other = fieldvault::devpki::DevCa::new("some other CA").unwrap();
    let forged = other
        .revocation_list(&[], 99, Duration::from_secs(3600))
        .unwrap();
    write(&dir.join("crl.pem"), forged.as_bytes());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(handshake(&addr, &dir, "orders").await.is_err());
    // Taken off the CRL (another revoked instead): back in.
    vault.pki.write_crl("crl.pem", &["intruder"]);
    eventually("orders to get in again", || {
        let (addr, dir) = (addr.clone(), dir.clone());
        async move { handshake(&addr, &dir, "orders").await.is_ok() }
    })
    .await;
    let refused = handshake(&addr, &dir, "intruder").await.unwrap_err();
    assert!(refused.contains("CertificateRevoked"), "{refused}");
}
