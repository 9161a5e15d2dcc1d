//! Certificates change while the server runs: the server certificate is
//! replaced, a client certificate is revoked by a CRL (file change,
//! SIGHUP, dev mode's crl.pem). New handshakes see the change within a
//! reload interval (1 s here); open connections keep working; bad files
//! keep the material in force.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::raw::{grpc_status, tls_connect};
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
        grpc_status(&mut self.send, HEALTH)
            .await
            .map(|code| code.to_string())
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
async fn a_replaced_server_certificate_is_used_for_new_connections_while_open_ones_keep_working() {
    let vault = reloading_vault(None).await;
    let dir = vault.pki.dir.clone();
    let mut before = open(&vault.addr(), &dir, "orders").await;
    assert_eq!(before.health().await.unwrap(), "0");

    let new = vault
        .pki
        .ca
        .issue_server(&["localhost", "127.0.0.1"])
        .unwrap();
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
    tokens_for(
        &mut client,
        vec![field(pb::FieldKind::Phone, "+1 202-555-0143")],
    )
    .await;
}

#[tokio::test]
async fn a_server_certificate_without_its_key_keeps_the_old_one_in_force() {
    let vault = reloading_vault(None).await;
    let dir = vault.pki.dir.clone();
    let old_serial = handshake(&vault.addr(), &dir, "orders").await.unwrap();
    // A new certificate, but the key stays the old one: a mismatch.
    let new = vault
        .pki
        .ca
        .issue_server(&["localhost", "127.0.0.1"])
        .unwrap();
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
    tokens_for(
        &mut client,
        vec![field(pb::FieldKind::Phone, "+1 202-555-0144")],
    )
    .await;
    // The matching key arrives: the new certificate goes in force.
    write(&dir.join("server.key"), new.key_pem.as_bytes());
    let addr = vault.addr();
    eventually("the completed pair to go in force", || {
        let (addr, dir, old) = (addr.clone(), dir.clone(), old_serial.clone());
        async move { matches!(handshake(&addr, &dir, "orders").await, Ok(serial) if serial != old) }
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
    // A handshake under way as the CRL is applied ends with the old one
    // and its connection is closed at once (a reset); once applied, the
    // handshake itself fails.
    eventually("orders' handshakes to fail", || {
        let (addr, dir) = (addr.clone(), dir.clone());
        async move { handshake(&addr, &dir, "orders").await.is_err() }
    })
    .await;
    let refused = handshake(&addr, &dir, "orders").await.unwrap_err();
    assert!(refused.contains("CertificateRevoked"), "{refused}");
    // Others still get in; orders' connection made before the revocation
    // is closed too (open connections are checked again when the CRLs
    // change), while support's keeps working.
    assert!(handshake(&addr, &dir, "support").await.is_ok());
    let mut support = open(&addr, &dir, "support").await;
    assert_eq!(support.health().await.unwrap(), "0");
    let started = std::time::Instant::now();
    while orders_open.health().await.is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "orders' connection opened before its revocation still answers"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(support.health().await.unwrap(), "0");
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

/// How many times `needle` is in the server's log.
fn log_count(log: &Path, needle: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(needle)
        .count()
}

async fn eventually_logged(log: &Path, needle: &str) {
    eventually(&format!("the log to say {needle}"), || async {
        log_count(log, needle) > 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_a_new_crl_at_once_and_rereads_the_policy_too() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    pki.write_crl("crl.pem", &[]);
    let data = tmp.path().join("data");
    let path = write_config_file(
        tmp.path(),
        &pki,
        fieldvault::dev::DEV_POLICY,
        (&data, &data.join("audit.log")),
        "",
        "[limits]\nrefusal_log_lines_per_minute = 1000\n",
    );
    // An hour between polls: only SIGHUP can apply the change in time.
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[tls]\n",
        &format!(
            "[tls]\ncrls = [\"{}\"]\nreload_interval_secs = 3600\n",
            pki.dir.join("crl.pem").display()
        ),
    );
    write(&path, text.as_bytes());
    let log = tmp.path().join("server.log");
    let server = process::start_with_config(&path, &log).unwrap();
    let (addr, dir) = (server.addr.clone(), pki.dir.clone());
    assert!(handshake(&addr, &dir, "orders").await.is_ok());

    pki.write_crl("crl.pem", &["orders"]);
    assert!(handshake(&addr, &dir, "orders").await.is_ok());
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    eventually("orders' handshakes to fail after SIGHUP", || {
        let (addr, dir) = (addr.clone(), dir.clone());
        async move { handshake(&addr, &dir, "orders").await.is_err() }
    })
    .await;
    let refused = handshake(&addr, &dir, "orders").await.unwrap_err();
    assert!(refused.contains("CertificateRevoked"), "{refused}");
    assert!(handshake(&addr, &dir, "support").await.is_ok());
    // Both SIGHUP listeners got the signal: the TLS files' and the
    // policy file's.
    eventually_logged(&log, "SIGHUP: re-reading the TLS files").await;
    eventually_logged(&log, "SIGHUP: re-reading the policy file").await;
    eventually_logged(&log, "TLS material reloaded").await;

    // Every refusal is logged with its peer and a short reason.
    let now = time::OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    pki.issue_client_valid("expired", "orders", now - 30 * day, now - day);
    pki.issue_client_valid("early", "orders", now + day, now + 30 * day);
    for name in ["expired", "early", "stranger"] {
        assert!(handshake(&addr, &dir, name).await.is_err(), "{name}");
    }
    for reason in ["revoked", "expired", "not_yet_valid", "unknown_ca"] {
        eventually_logged(&log, &format!("reason=\"{reason}\"")).await;
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("TLS handshake refused") && l.contains("reason=\"revoked\""))
        .unwrap();
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_revoke_puts_an_identity_on_the_dev_crl_which_the_dev_server_applies() {
    let dev = cli::Dev::start();
    let dir = dev.data.join("dev");
    let log = dev.tmp.path().join("server.log");
    let addr = dev.server.addr.clone();
    assert!(handshake(&addr, &dir, "orders").await.is_ok());
    let data = dev.data.to_str().unwrap();

    let out = cli::run_to_exit(0, &["dev", "revoke", "orders", "--data-dir", data], "");
    assert!(
        cli::stdout(&out).contains("revoked orders"),
        "{}",
        cli::show(&out)
    );
    assert!(dir.join("crl.pem").is_file());
    eventually("orders' handshakes to fail", || {
        let (addr, dir) = (addr.clone(), dir.clone());
        async move {
            matches!(handshake(&addr, &dir, "orders").await, Err(e) if e.contains("CertificateRevoked"))
        }
    })
    .await;
    assert!(handshake(&addr, &dir, "support").await.is_ok());
    let again = cli::run_to_exit(0, &["dev", "revoke", "orders", "--data-dir", data], "");
    assert!(
        cli::stdout(&again).contains("already revoked"),
        "{}",
        cli::show(&again)
    );
    // A second identity joins the first on the same CRL.
    cli::run_to_exit(0, &["dev", "revoke", "intruder", "--data-dir", data], "");
    eventually("intruder's handshakes to fail", || {
        let (addr, dir) = (addr.clone(), dir.clone());
        async move { handshake(&addr, &dir, "intruder").await.is_err() }
    })
    .await;
    assert!(handshake(&addr, &dir, "orders").await.is_err());
    for bad in ["ca", "nobody", "../orders"] {
        let out = cli::run_to_exit(2, &["dev", "revoke", bad, "--data-dir", data], "");
        assert!(
            cli::stderr(&out).contains("dev revoke"),
            "{}",
            cli::show(&out)
        );
    }

    // A crl.pem that does not parse: refused, logged once (not at every
    // poll), and the CRL in force stays.
    write(
        &dir.join("crl.pem"),
        b"-----BEGIN X509 CRL-----\nnot base64\n",
    );
    let refused = "TLS files changed but cannot be used";
    eventually_logged(&log, refused).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(log_count(&log, refused), 1);
    assert!(handshake(&addr, &dir, "orders").await.is_err());
    // Deleted: nothing is revoked.
    std::fs::remove_file(dir.join("crl.pem")).unwrap();
    eventually("orders to get in again", || {
        let (addr, dir) = (addr.clone(), dir.clone());
        async move { handshake(&addr, &dir, "orders").await.is_ok() }
    })
    .await;
}
