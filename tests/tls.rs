//! Who gets in: the handshake demands a client certificate chained to the
//! configured client CA, and the identity comes from that certificate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use fieldvault::grpc::pb::{self, vault_client::VaultClient, FieldKind};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Tries one Tokenize with the given TLS settings; returns whether the call
/// reached the service (any gRPC answer from the vault) or failed in transport.
async fn attempt(addr: &str, tls: ClientTlsConfig) -> Result<pb::TokenizeResponse, String> {
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(CONNECT_DEADLINE)
        .timeout(CALL_DEADLINE);
    let channel = bounded(CONNECT_DEADLINE * 2, "connecting", channel.connect())
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let mut client = VaultClient::new(channel);
    client
        .tokenize(pb::TokenizeRequest {
            fields: vec![field(FieldKind::Phone, "+1 202-555-0142")],
            purpose: None,
        })
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// A bare TLS client (no gRPC): completes the client side of the handshake
/// and reads, so the server's verdict on the client certificate (an alert)
/// surfaces. Returns the alert, or "accepted" if the server let it in.
async fn raw_handshake(vault: &TestVault, client_cert: Option<&str>) -> String {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(vault.pki.dir.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client_cert {
        None => builder.with_no_client_auth(),
        Some(name) => {
            let certs = CertificateDer::pem_file_iter(vault.pki.dir.join(format!("{name}.pem")))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key =
                PrivateKeyDer::from_pem_file(vault.pki.dir.join(format!("{name}.key"))).unwrap();
            builder.with_client_auth_cert(certs, key).unwrap()
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = bounded(
        CONNECT_DEADLINE,
        "TCP connect",
        tokio::net::TcpStream::connect(vault.addr()),
    )
    .await
    .unwrap();
    let mut tls = match bounded(
        CONNECT_DEADLINE,
        "the TLS handshake",
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    {
        Ok(tls) => tls,
        Err(e) => return e.to_string(),
    };
    // HTTP/2 preface; the server answers with its SETTINGS if it accepted us.
    if let Err(e) = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await {
        return e.to_string();
    }
    let mut buf = [0u8; 64];
    match bounded(
        CALL_DEADLINE,
        "the server's first bytes",
        tls.read(&mut buf),
    )
    .await
    {
        Ok(n) if n > 0 => "accepted".to_owned(),
        Ok(_) => "closed".to_owned(),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn the_handshake_itself_refuses_missing_and_foreign_certificates() {
    let vault = TestVault::start().await;
    assert_eq!(raw_handshake(&vault, Some("orders")).await, "accepted");
    let none = raw_handshake(&vault, None).await;
    assert!(none.contains("CertificateRequired"), "{none}");
    let foreign = raw_handshake(&vault, Some("stranger")).await;
    assert!(
        foreign.contains("UnknownCA") || foreign.contains("BadCertificate"),
        "{foreign}"
    );
}

fn ca(vault: &TestVault) -> Certificate {
    Certificate::from_pem(std::fs::read(vault.pki.dir.join("ca.pem")).unwrap())
}

fn identity(vault: &TestVault, name: &str) -> Identity {
    Identity::from_pem(
        std::fs::read(vault.pki.dir.join(format!("{name}.pem"))).unwrap(),
        std::fs::read(vault.pki.dir.join(format!("{name}.key"))).unwrap(),
    )
}

#[tokio::test]
async fn server_accepts_a_client_certificate_from_its_ca() {
    let vault = TestVault::start().await;
    let tls = ClientTlsConfig::new()
        .ca_certificate(ca(&vault))
        .identity(identity(&vault, "orders"));
    let resp = attempt(&vault.addr(), tls).await.unwrap();
    assert_eq!(resp.results.len(), 1);
}

#[tokio::test]
async fn a_client_without_a_certificate_fails_in_the_handshake() {
    let vault = TestVault::start().await;
    let tls = ClientTlsConfig::new().ca_certificate(ca(&vault));
    let err = attempt(&vault.addr(), tls).await.unwrap_err();
    // The service never answered: the error is a transport failure, not a
    // gRPC status from the vault.
    assert!(
        !err.starts_with("PermissionDenied") && !err.starts_with("Unauthenticated"),
        "{err}"
    );
    assert!(
        err.starts_with("connect") || err.starts_with("Unavailable") || err.starts_with("Unknown"),
        "{err}"
    );
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_fails_in_the_handshake() {
    let vault = TestVault::start().await;
    // "stranger" claims the orders SPIFFE ID, but another CA signed it.
    let tls = ClientTlsConfig::new()
        .ca_certificate(ca(&vault))
        .identity(identity(&vault, "stranger"));
    let err = attempt(&vault.addr(), tls).await.unwrap_err();
    assert!(
        err.starts_with("connect") || err.starts_with("Unavailable") || err.starts_with("Unknown"),
        "{err}"
    );
}

#[tokio::test]
async fn a_client_refuses_a_server_it_does_not_trust() {
    let vault = TestVault::start().await;
    let other = fieldvault::devpki::DevCa::new("unrelated CA").unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(other.cert_pem()))
        .identity(identity(&vault, "orders"));
    assert!(attempt(&vault.addr(), tls).await.is_err());
}

#[tokio::test]
async fn without_a_spiffe_id_the_common_name_is_the_caller() {
    let vault = TestVault::start_with(|c| {
        // A policy that names a CN-only caller.
        let policy = "version = 1\n[[rules]]\ncallers = [\"billing\"]\naction = \"tokenize\"\nkinds = [\"phone\"]\n";
        let path = c.data_dir.with_file_name("cn-policy.toml");
        write(&path, policy.as_bytes());
        c.policy_file = path;
    })
    .await;
    vault.pki.issue_client("billing", "billing", None);
    vault.pki.issue_client(
        "billing-spiffe",
        "billing",
        Some("spiffe://fieldvault.dev/billing"),
    );

    let tls = ClientTlsConfig::new()
        .ca_certificate(ca(&vault))
        .identity(identity(&vault, "billing"));
    let resp = attempt(&vault.addr(), tls).await.unwrap();
    assert!(matches!(
        resp.results[0].outcome,
        Some(pb::tokenize_result::Outcome::Token(_))
    ));

    // Same CN, but a SPIFFE ID takes precedence, and no rule names it.
    let tls = ClientTlsConfig::new()
        .ca_certificate(ca(&vault))
        .identity(identity(&vault, "billing-spiffe"));
    let err = attempt(&vault.addr(), tls).await.unwrap_err();
    assert!(
        err.starts_with("PermissionDenied") && err.contains("spiffe://fieldvault.dev/billing"),
        "{err}"
    );
}

#[tokio::test]
async fn expired_and_not_yet_valid_client_certificates_fail_in_the_handshake() {
    let vault = TestVault::start().await;
    let now = time::OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    // The same caller, the same CA: only the validity differs.
    vault
        .pki
        .issue_client_valid("current", "orders", now - day, now + day);
    vault
        .pki
        .issue_client_valid("expired", "orders", now - 30 * day, now - day);
    vault
        .pki
        .issue_client_valid("early", "orders", now + day, now + 30 * day);
    assert_eq!(raw_handshake(&vault, Some("current")).await, "accepted");
    // rustls answers both with the certificate_expired alert.
    let expired = raw_handshake(&vault, Some("expired")).await;
    assert!(expired.contains("CertificateExpired"), "{expired}");
    let early = raw_handshake(&vault, Some("early")).await;
    assert!(early.contains("CertificateExpired"), "{early}");
    // And through a gRPC client: a transport failure, never a vault answer.
    for name in ["expired", "early"] {
        let tls = ClientTlsConfig::new()
            .ca_certificate(ca(&vault))
            .identity(identity(&vault, name));
        let err = attempt(&vault.addr(), tls).await.unwrap_err();
        assert!(
            err.starts_with("connect")
                || err.starts_with("Unavailable")
                || err.starts_with("Unknown"),
            "{name}: {err}"
        );
    }
}

#[tokio::test]
async fn certificates_from_another_ca_or_a_ca_of_the_same_name_fail_in_the_handshake() {
    let vault = TestVault::start().await;
    let stranger = raw_handshake(&vault, Some("stranger")).await;
    assert!(stranger.contains("UnknownCA"), "{stranger}");
    // "twin": a CA of the same name as the vault's with another key; its
    // signature does not verify (rustls says decrypt_error).
    let twin = raw_handshake(&vault, Some("twin")).await;
    assert!(
        ["DecryptError", "BadCertificate", "UnknownCA"]
            .iter()
            .any(|alert| twin.contains(alert)),
        "{twin}"
    );
    assert_eq!(raw_handshake(&vault, Some("orders")).await, "accepted");
}
