//! How the CLI connects, tested with the real binary against a real server
//! over real mTLS (certificates made by rcgen at test time): each
//! certificate mistake is named, a silent port times out within the
//! connect deadline, a call the server never answers fails at the call
//! deadline, and addresses without a port are refused as such.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::conn::{
    cli_in, silent_port, stalling_server, stderr, stdout, unanswering_server, Answer,
};
use common::*;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

/// Every CLI run here is killed past this.
const RUN: Duration = Duration::from_secs(30);

/// `tokenize` of one fake phone number with explicit certificate files
/// (names in `dir`) and `extra` flags, run off the async runtime.
async fn tokenize_with(
    addr: &str,
    dir: &Path,
    ca: &str,
    cert: &str,
    key: &str,
    extra: &[&str],
) -> Output {
    let file = |name: &str| dir.join(name).display().to_string();
    let mut args: Vec<String> = vec![
        "tokenize".into(),
        "--addr".into(),
        addr.into(),
        "--ca".into(),
        file(ca),
        "--cert".into(),
        file(cert),
        "--key".into(),
        file(key),
        "--kind".into(),
        "phone".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("+1 202-555-0142".into());
    let cwd = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli_in(&cwd, &args, &[], RUN)
    })
    .await
    .unwrap()
}

fn assert_failed_with(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert!(!out.status.success(), "succeeded: {}{err}", stdout(out));
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
    assert!(
        !err.contains("transport error") && !err.contains("operation was canceled"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_certificates_tokenize() {
    let vault = TestVault::start().await;
    let out = tokenize_with(
        &vault.addr(),
        &vault.pki.dir,
        "ca.pem",
        "orders.pem",
        "orders.key",
        &[],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("fv1_"), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_is_refused_naming_the_alert_and_its_issuer() {
    let vault = TestVault::start().await;
    // stranger.pem: issued by "some other CA" to "orders".
    let out = tokenize_with(
        &vault.addr(),
        &vault.pki.dir,
        "ca.pem",
        "stranger.pem",
        "stranger.key",
        &[],
    )
    .await;
    assert_failed_with(
        &out,
        &[
            "the server refused our certificate",
            "it does not trust the CA that issued our certificate",
            "TLS alert UnknownCA",
            "stranger.pem was issued by \"CN=some other CA\", not by the CA in",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_of_the_same_name_is_named_as_such() {
    let vault = TestVault::start().await;
    // twin.pem: issued by a CA named like the server's, with another key
    // (the dev CA of another data dir): names alone do not tell them apart.
    let out = tokenize_with(
        &vault.addr(),
        &vault.pki.dir,
        "ca.pem",
        "twin.pem",
        "twin.key",
        &[],
    )
    .await;
    assert_failed_with(
        &out,
        &[
            "the server refused our certificate",
            "twin.pem names \"CN=fieldvault test CA\" as its issuer but does not verify against the CA in",
            "issued by another CA of the same name",
        ],
    );
    assert!(!stderr(&out).contains("a key that does not match"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_auth_only_certificate_is_refused_naming_the_missing_client_auth_usage() {
    let vault = TestVault::start().await;
    // server.pem: same CA, extended key usage serverAuth only.
    let out = tokenize_with(
        &vault.addr(),
        &vault.pki.dir,
        "ca.pem",
        "server.pem",
        "server.key",
        &[],
    )
    .await;
    assert_failed_with(
        &out,
        &[
            "the server refused our certificate",
            "TLS alert UnsupportedCertificate",
            "server.pem is not a client certificate: its extended key usage lacks clientAuth (it allows serverAuth only)",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_another_identity_is_refused_before_connecting() {
    // Nothing listens there: the mismatch is found before any connection.
    let vault = TestVault::start().await;
    let dead = silent_port(Duration::from_secs(1));
    let out = tokenize_with(
        &dead,
        &vault.pki.dir,
        "ca.pem",
        "orders.pem",
        "support.key",
        &[],
    )
    .await;
    assert_failed_with(
        &out,
        &[
            "support.key does not match the certificate",
            "orders.pem",
            "nothing was sent",
        ],
    );
    // And against the real server, the same.
    let out = tokenize_with(
        &vault.addr(),
        &vault.pki.dir,
        "ca.pem",
        "orders.pem",
        "support.key",
        &[],
    )
    .await;
    assert_failed_with(&out, &["support.key does not match the certificate"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_another_ca_is_refused_as_not_signed_by_the_given_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let other = fieldvault::devpki::DevCa::new("an unrelated CA").unwrap();
    let server = other.issue_server(&["localhost", "127.0.0.1"]).unwrap();
    let cert = tmp.path().join("other-server.pem");
    let key = tmp.path().join("other-server.key");
    write(&cert, server.cert_pem.as_bytes());
    write(&key, server.key_pem.as_bytes());
    let vault = TestVault::start_with(|c| {
        c.tls.cert = cert.clone();
        c.tls.key = key.clone();
    })
    .await;
    let out = tokenize_with(
        &vault.addr(),
        &vault.pki.dir,
        "ca.pem",
        "orders.pem",
        "orders.key",
        &[],
    )
    .await;
    assert_failed_with(
        &out,
        &[
            "the server's certificate is not signed by the CA in",
            "ca.pem",
            "issued by \"CN=an unrelated CA\"",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_another_ca_of_the_same_name_is_refused_as_not_signed_by_it() {
    let tmp = tempfile::tempdir().unwrap();
    let twin = fieldvault::devpki::DevCa::new("fieldvault test CA").unwrap();
    let server = twin.issue_server(&["localhost", "127.0.0.1"]).unwrap();
    let cert = tmp.path().join("twin-server.pem");
    let key = tmp.path().join("twin-server.key");
    write(&cert, server.cert_pem.as_bytes());
    write(&key, server.key_pem.as_bytes());
    let vault = TestVault::start_with(|c| {
        c.tls.cert = cert.clone();
        c.tls.key = key.clone();
    })
    .await;
    let out = tokenize_with(
        &vault.addr(),
        &vault.pki.dir,
        "ca.pem",
        "orders.pem",
        "orders.key",
        &[],
    )
    .await;
    assert_failed_with(
        &out,
        &[
            "the server's certificate is not signed by the CA in",
            "its issuer has the same name but another key",
        ],
    );
}

#[test]
fn a_silent_port_times_out_within_the_connect_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let addr = silent_port(Duration::from_secs(40));
    let dir = pki.dir.display().to_string();
    let files = [
        format!("{dir}/ca.pem"),
        format!("{dir}/orders.pem"),
        format!("{dir}/orders.key"),
    ];
    // The flag, then the environment variable.
    for (flag, env) in [
        (Some("1s"), None),
        (None, Some(("FIELDVAULT_CONNECT_TIMEOUT", "1"))),
    ] {
        let mut args = vec![
            "tokenize", "--addr", &addr, "--ca", &files[0], "--cert", &files[1], "--key",
            &files[2], "--kind", "phone",
        ];
        if let Some(t) = flag {
            args.extend(["--connect-timeout", t]);
        }
        args.push("+1 202-555-0143");
        let env: Vec<(&str, &str)> = env.into_iter().collect();
        let started = Instant::now();
        // Killed (and the test failed) if it hangs.
        let out = cli_in(tmp.path(), &args, &env, RUN);
        let took = started.elapsed();
        assert_failed_with(
            &out,
            &[
                "timed out after 1s (the connect timeout)",
                "the TLS handshake did not complete",
                "--connect-timeout or FIELDVAULT_CONNECT_TIMEOUT",
            ],
        );
        assert!(took >= Duration::from_millis(900), "{took:?}");
        // Generous for a loaded 2-core machine; without a deadline it hangs.
        assert!(took < Duration::from_secs(8), "{took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_server_never_answers_fails_at_the_call_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let addr = unanswering_server(&pki.dir).await;
    let started = Instant::now();
    let out = tokenize_with(
        &addr,
        &pki.dir,
        "ca.pem",
        "orders.pem",
        "orders.key",
        &["--timeout", "1s"],
    )
    .await;
    let took = started.elapsed();
    assert_failed_with(
        &out,
        &[
            "no answer within 1s (the call timeout",
            "--timeout or FIELDVAULT_TIMEOUT",
        ],
    );
    assert!(took < Duration::from_secs(8), "{took:?}");
}

/// The CLI with `args`, then the certificate flags of orders (files in
/// `dir`), run off the async runtime.
async fn cli_with_files(addr: &str, dir: &Path, args: &[&str]) -> Output {
    let file = |name: &str| dir.join(name).display().to_string();
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend([
        "--addr".into(),
        addr.into(),
        "--ca".into(),
        file("ca.pem"),
        "--cert".into(),
        file("orders.pem"),
        "--key".into(),
        file("orders.key"),
    ]);
    let cwd = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        cli_in(&cwd, &all, &[], RUN)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_whose_body_never_completes_fails_at_the_call_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let commands: [&[&str]; 3] = [
        &["health", "--json"],
        &["tokenize", "--json", "--kind", "phone", "+1 202-555-0146"],
        &[
            "detokenize",
            "--json",
            "--purpose",
            "callback",
            "fv1_AAAAAAAAAAAAAAAAAAAAAA",
        ],
    ];
    for answer in [Answer::HeadersThenStall, Answer::HeadersThenTrickle] {
        let addr = stalling_server(&pki.dir, answer).await;
        let runs = commands.map(|args| {
            let mut args = args.to_vec();
            args.extend(["--timeout", "2s"]);
            let (addr, dir) = (addr.clone(), pki.dir.clone());
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            tokio::spawn(async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let started = Instant::now();
                let out = cli_with_files(&addr, &dir, &args).await;
                (out, started.elapsed())
            })
        });
        for (run, args) in runs.into_iter().zip(commands) {
            let (out, took) = run.await.unwrap();
            assert_eq!(
                out.status.code(),
                Some(2),
                "{answer:?} {args:?}: {}",
                stderr(&out)
            );
            let json: serde_json::Value = serde_json::from_str(stdout(&out).trim())
                .unwrap_or_else(|e| panic!("{answer:?} {args:?}: {e}: {}", stdout(&out)));
            assert_eq!(json["error"]["code"], "DEADLINE_EXCEEDED", "{json}");
            assert!(
                json["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("no answer within 2s (the call timeout"),
                "{json}"
            );
            // Generous for a loaded 2-core machine; without the bound on
            // the body it hangs until killed.
            assert!(
                took < Duration::from_secs(15),
                "{answer:?} {args:?}: {took:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_end_that_waits_for_the_preface_gets_the_connection_and_a_silent_one_is_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    // Speaks HTTP/2 only after our preface: connecting succeeds after the
    // first-bytes window (1 s), well before the connect deadline, and the
    // call (never answered) ends at the call deadline.
    let addr = stalling_server(&pki.dir, Answer::AfterPrefaceNever).await;
    let started = Instant::now();
    let out = cli_with_files(
        &addr,
        &pki.dir,
        &[
            "health",
            "--json",
            "--connect-timeout",
            "20s",
            "--timeout",
            "2s",
        ],
    )
    .await;
    let took = started.elapsed();
    let json: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(json["error"]["code"], "DEADLINE_EXCEEDED", "{json}");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("(the call timeout"),
        "{json}"
    );
    assert!(took < Duration::from_secs(15), "{took:?}");

    // Never a word after TLS: bounded by the deadlines all the same.
    let addr = stalling_server(&pki.dir, Answer::Silent).await;
    let started = Instant::now();
    let out = cli_with_files(
        &addr,
        &pki.dir,
        &[
            "health",
            "--json",
            "--connect-timeout",
            "3s",
            "--timeout",
            "2s",
        ],
    )
    .await;
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(json["error"]["code"], "DEADLINE_EXCEEDED", "{json}");
    assert!(took < Duration::from_secs(15), "{took:?}");
}

#[test]
fn an_address_without_a_port_is_refused_as_missing_its_port() {
    let tmp = tempfile::tempdir().unwrap();
    let out = cli_in(
        tmp.path(),
        &[
            "tokenize",
            "--addr",
            "127.0.0.1",
            "--ca",
            "ca.pem",
            "--cert",
            "c.pem",
            "--key",
            "c.key",
            "--kind",
            "phone",
            "+1 202-555-0144",
        ],
        &[],
        RUN,
    );
    assert_failed_with(&out, &["--addr: missing port"]);
    assert!(!stderr(&out).contains("refused"), "{}", stderr(&out));
}

#[test]
fn a_refused_connection_is_said_once_without_repeated_prefixes() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    // A port nothing listens on: bound, then closed.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let dir = pki.dir.display().to_string();
    let out = cli_in(
        tmp.path(),
        &[
            "tokenize",
            "--addr",
            &addr,
            "--ca",
            &format!("{dir}/ca.pem"),
            "--cert",
            &format!("{dir}/orders.pem"),
            "--key",
            &format!("{dir}/orders.key"),
            "--kind",
            "phone",
            "+1 202-555-0145",
        ],
        &[],
        RUN,
    );
    assert_failed_with(
        &out,
        &["connection refused: is the server running and listening there?"],
    );
    let err = stderr(&out);
    assert_eq!(err.matches("onnection refused").count(), 2, "{err}");
    assert!(!err.contains("tcp connect error"), "{err}");
}
