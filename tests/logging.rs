//! The server's logs: `[log] format = "json"` writes one JSON object per
//! line; `[log] level` applies when `RUST_LOG` is unset and `RUST_LOG`
//! wins when set; every call has one request id, the same in its answer
//! (`x-request-id`), in its log lines (the `call` span) and in its audit
//! event.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::process::start;
use common::raw::h2_connect;
use common::{channel, dev_policy_without_quotas, field, write_config_file, Pki, CALL_DEADLINE};
use fieldvault::grpc::pb;
use fieldvault::grpc::pb::vault_client::VaultClient;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_request_id_of_the_answer_and_the_audit_event() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let audit_log = tmp.path().join("audit.log");
    let config = write_config_file(
        tmp.path(),
        &pki,
        &dev_policy_without_quotas(),
        (&tmp.path().join("data"), &audit_log),
        "",
        "[log]\nformat = \"json\"\nlevel = \"warn,fieldvault=debug\"\n",
    );
    let log = tmp.path().join("server.log");
    // RUST_LOG unset: the config's level applies.
    let server = start(&["serve", "--config", config.to_str().unwrap()], "", &log).unwrap();
    let mut orders = VaultClient::new(channel(&server.addr, &pki.client_tls("orders")).await);
    let answer = tokio::time::timeout(
        CALL_DEADLINE,
        orders.tokenize(pb::TokenizeRequest {
            fields: vec![field(pb::FieldKind::Phone, "+1 202-555-0142")],
            purpose: None,
        }),
    )
    .await
    .unwrap()
    .unwrap();
    let request_id = answer
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(uuid::Uuid::parse_str(&request_id).is_ok(), "{request_id}");
    assert!(server.terminate(Duration::from_secs(60)).success());

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    // The level: fieldvault's debug lines are in, other crates' info lines
    // are not (`warn,fieldvault=debug`).
    assert!(lines.iter().any(|l| l["level"] == "DEBUG"), "{text}");
    assert!(
        lines.iter().all(
            |l| l["level"] != "INFO" || l["target"].as_str().unwrap().starts_with("fieldvault")
        ),
        "{text}"
    );
    // The call's own log line names its request id and RPC.
    let call_line = lines
        .iter()
        .find(|l| l["span"]["request_id"] == request_id.as_str())
        .unwrap_or_else(|| panic!("no log line carries request id {request_id}:\n{text}"));
    assert_eq!(
        call_line["span"]["rpc"], "/fieldvault.v1.Vault/Tokenize",
        "{call_line}"
    );
    // The audit event has the same id.
    let audit = std::fs::read_to_string(&audit_log).unwrap();
    assert!(
        audit.contains(&format!("\"request_id\":\"{request_id}\"")),
        "the audit trail has no event with request id {request_id}"
    );
    assert!(!text.contains("202555"), "the log holds the value");

    // RUST_LOG wins over the config's level, and the format stays JSON.
    std::fs::write(&log, b"").unwrap();
    let server = start(
        &["serve", "--config", config.to_str().unwrap()],
        "error",
        &log,
    )
    .unwrap();
    assert!(server.terminate(Duration::from_secs(60)).success());
    let text = std::fs::read_to_string(&log).unwrap();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(line["level"], "ERROR", "RUST_LOG=error let through {line}");
    }
}

#[test]
fn the_dev_server_logs_json_with_log_format_and_refuses_the_flag_with_a_config() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("server.log");
    let data = tmp.path().join("data");
    let server = start(
        &[
            "serve",
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--log-format",
            "json",
        ],
        "info",
        &log,
    )
    .unwrap();
    assert!(server.terminate(Duration::from_secs(60)).success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("fieldvault listening"), "{text}");
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let _: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    let out = common::process::cli(&[
        "serve",
        "--config",
        "/nonexistent/fieldvault.toml",
        "--log-format",
        "json",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("`format` under [log]"), "{err}");
}

/// A client certificate's CN is printable ASCII, so it may hold `"` and
/// `=`: in a text log it is quoted and escaped like any string field, and
/// cannot forge a field or a level of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_cn_with_quotes_is_escaped_in_text_logs_and_forges_no_field() {
    const FORGED: &str = r#"x" level=ERROR message="forged admin login"#;
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    pki.issue_client("forger", FORGED, None);
    // A rule for the forger: its calls are logged (at debug) with its
    // identity as the caller.
    let policy = format!(
        "{}\n[[rules]]\nname = \"forger\"\ncallers = ['{FORGED}']\naction = \"tokenize\"\nkinds = [\"phone\"]\n",
        dev_policy_without_quotas()
    );
    let config = write_config_file(
        tmp.path(),
        &pki,
        &policy,
        (&tmp.path().join("data"), &tmp.path().join("audit.log")),
        "",
        "[limits]\nmax_connections_per_identity = 1\n",
    );
    let log = tmp.path().join("server.log");
    let server = start(
        &["serve", "--config", config.to_str().unwrap()],
        "info,fieldvault=debug",
        &log,
    )
    .unwrap();
    // The identity's one connection: a call, logged with its caller.
    let mut forger = VaultClient::new(channel(&server.addr, &pki.client_tls("forger")).await);
    tokio::time::timeout(
        CALL_DEADLINE,
        forger.tokenize(pb::TokenizeRequest {
            fields: vec![field(pb::FieldKind::Phone, "+1 202-555-0144")],
            purpose: None,
        }),
    )
    .await
    .unwrap()
    .unwrap();
    // A second connection is refused after its handshake, and the refusal
    // names the identity.
    let _second = h2_connect(&server.addr, &pki.dir, "forger").await;
    let refusal = "connection refused: limits.max_connections_per_identity reached";
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&log).unwrap().contains(refusal) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no refusal logged:\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(server.terminate(Duration::from_secs(60)).success());
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text.lines().find(|l| l.contains(refusal)).unwrap();
    assert!(
        line.contains(r#"identity="x\" level=ERROR message=\"forged admin login""#),
        "{line}"
    );
    assert!(!line.contains(r#"identity=x" level"#), "{line}");
    let line = text
        .lines()
        .find(|l| l.contains("tokenize") && l.contains("caller="))
        .unwrap_or_else(|| panic!("no tokenize line:\n{text}"));
    assert!(
        line.contains(r#"caller="x\" level=ERROR message=\"forged admin login""#),
        "{line}"
    );
    assert!(!text.contains("202-555-0144") && !text.contains("2025550144"));
}
