//! How the CLI connects, tested with the real binary against a real server
//! over real mTLS (certificates made by rcgen at test time): each
//! certificate mistake is named, a silent port times out within the
//! connect deadline, a call the server never answers fails at the call
//! deadline, and addresses without a port are refused as such.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::conn::{
    cli_in, closed_port, silent_port, slow_verdict_relay, stalling_server, stderr, stdout,
    unanswering_server, Answer,
};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

/// Every CLI run here is killed past this.
const RUN: Duration = Duration::from_secs(30);

/// The CLI with `args`, then `--addr addr` and the certificate flags
/// `--ca`, `--cert`, `--key` (the files `certs` names in `dir`), run in
/// `dir` off the async runtime.
async fn cli_with_certs(addr: &str, dir: &Path, certs: [&str; 3], args: &[&str]) -> Output {
    let file = |name: &str| dir.join(name).display().to_string();
    let [ca, cert, key] = certs;
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend([
        "--addr".into(),
        addr.into(),
        "--ca".into(),
        file(ca),
        "--cert".into(),
        file(cert),
        "--key".into(),
        file(key),
    ]);
    let cwd = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        cli_in(&cwd, &all, &[], RUN)
    })
    .await
    .unwrap()
}

/// The certificate files of orders, as the test PKI names them.
const ORDERS: [&str; 3] = ["ca.pem", "orders.pem", "orders.key"];

/// `tokenize` of one fake phone number with explicit certificate files
/// (names in `dir`) and `extra` flags, run off the async runtime.
async fn tokenize_with(addr: &str, dir: &Path, certs: [&str; 3], extra: &[&str]) -> Output {
    let mut args = vec!["tokenize", "--kind", "phone"];
    args.extend(extra);
    args.push("+1 202-555-0142");
    cli_with_certs(addr, dir, certs, &args).await
}

/// `tokenize` of one fake phone number at `vault` with the certificate
/// files `certs` of its test PKI.
async fn tokenize_at(vault: &TestVault, certs: [&str; 3]) -> Output {
    tokenize_with(&vault.addr(), &vault.pki.dir, certs, &[]).await
}

/// A [`TestVault`] whose server presents `cert_pem` and `key_pem`
/// (written to `dir` as `stem.pem` and `stem.key`); also the certificate's
/// path.
async fn vault_presenting(
    dir: &Path,
    stem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> (TestVault, PathBuf) {
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}.key"));
    write(&cert, cert_pem.as_bytes());
    write(&key, key_pem.as_bytes());
    let vault = TestVault::start_with(|c| {
        c.tls.cert = cert.clone();
        c.tls.key = key.clone();
    })
    .await;
    (vault, cert)
}

/// A [`TestVault`] whose server certificate (for localhost and
/// 127.0.0.1) is issued by a new CA named `ca_name`, not by the CA its
/// clients trust; and the folder holding that certificate.
async fn vault_with_a_server_certificate_from(ca_name: &str) -> (TestVault, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let ca = fieldvault::devpki::DevCa::new(ca_name).unwrap();
    let server = ca.issue_server(&["localhost", "127.0.0.1"]).unwrap();
    let (vault, _) =
        vault_presenting(tmp.path(), "server", &server.cert_pem, &server.key_pem).await;
    (vault, tmp)
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
    let out = tokenize_at(&vault, ORDERS).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("fv1_"), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_is_refused_naming_the_alert_and_its_issuer() {
    let vault = TestVault::start().await;
    // stranger.pem: issued by "some other CA" to "orders".
    let out = tokenize_at(&vault, ["ca.pem", "stranger.pem", "stranger.key"]).await;
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
async fn a_refusal_of_our_certificate_after_the_first_bytes_window_is_unauthenticated_not_unavailable(
) {
    let vault = TestVault::start().await;
    // The server's alert comes 1.5 s after our Finished: after the
    // connector's 1 s window, so the call itself fails with it.
    let relay = slow_verdict_relay(vault.addr(), Duration::from_millis(1500)).await;
    for (command, extra) in [
        ("tokenize", &["--json"][..]),
        ("health", &["--json"][..]),
        ("keys", &["status", "--json"][..]),
    ] {
        let out = if command == "tokenize" {
            tokenize_with(
                &relay,
                &vault.pki.dir,
                ["ca.pem", "stranger.pem", "stranger.key"],
                extra,
            )
            .await
        } else {
            let mut args = vec![command];
            args.extend(extra);
            cli_with_certs(
                &relay,
                &vault.pki.dir,
                ["ca.pem", "stranger.pem", "stranger.key"],
                &args,
            )
            .await
        };
        assert_eq!(out.status.code(), Some(2), "{command}: {}", stderr(&out));
        let json: serde_json::Value = serde_json::from_str(stdout(&out).trim())
            .unwrap_or_else(|e| panic!("{command}: {e}: {}", stdout(&out)));
        assert_eq!(
            json["error"]["code"],
            "UNAUTHENTICATED",
            "{command}: {json} {}",
            stderr(&out)
        );
        let message = json["error"]["message"].as_str().unwrap();
        for needle in [
            "the server refused our certificate",
            "TLS alert UnknownCA",
            "stranger.pem was issued by \"CN=some other CA\"",
        ] {
            assert!(
                message.contains(needle),
                "{command}: {needle:?} not in {message}"
            );
        }
        assert!(!message.contains("may or may not"), "{command}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_of_the_same_name_is_named_as_such() {
    let vault = TestVault::start().await;
    // twin.pem: issued by a CA named like the server's, with another key
    // (the dev CA of another data dir): names alone do not tell them apart.
    let out = tokenize_at(&vault, ["ca.pem", "twin.pem", "twin.key"]).await;
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
    let out = tokenize_at(&vault, ["ca.pem", "server.pem", "server.key"]).await;
    assert_failed_with(
        &out,
        &[
            "the server refused our certificate",
            "TLS alert UnsupportedCertificate",
            "server.pem is not a client certificate: its extended key usage lacks clientAuth (it allows serverAuth only)",
        ],
    );
    // Its CA is the right one: no hint of another CA.
    assert!(!stderr(&out).contains("another CA"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_another_identity_is_refused_before_connecting() {
    // Nothing listens there: the mismatch is found before any connection.
    let vault = TestVault::start().await;
    let dead = silent_port(Duration::from_secs(1));
    let out = tokenize_with(
        &dead,
        &vault.pki.dir,
        ["ca.pem", "orders.pem", "support.key"],
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
    let out = tokenize_at(&vault, ["ca.pem", "orders.pem", "support.key"]).await;
    assert_failed_with(&out, &["support.key does not match the certificate"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_another_ca_is_refused_as_not_signed_by_the_given_ca() {
    let (vault, _tmp) = vault_with_a_server_certificate_from("an unrelated CA").await;
    let out = tokenize_at(&vault, ORDERS).await;
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
    let (vault, _tmp) = vault_with_a_server_certificate_from("fieldvault test CA").await;
    let out = tokenize_at(&vault, ORDERS).await;
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
    let out = tokenize_with(&addr, &pki.dir, ORDERS, &["--timeout", "1s"]).await;
    let took = started.elapsed();
    assert_failed_with(
        &out,
        &[
            "no answer within 1s (the call timeout",
            "--timeout or FIELDVAULT_TIMEOUT",
            "the server may have stored the values of this call",
        ],
    );
    assert!(took < Duration::from_secs(8), "{took:?}");
    // A reveal past its deadline may have happened (and been audited).
    let out = cli_with_files(
        &addr,
        &pki.dir,
        &[
            "detokenize",
            "--purpose",
            "callback",
            "--timeout",
            "1s",
            "fv1_AAAAAAAAAAAAAAAAAAAAAA",
        ],
    )
    .await;
    assert_failed_with(
        &out,
        &[
            "no answer within 1s (the call timeout",
            "the server may have revealed the tokens of this call (and audited the reveal)",
        ],
    );
}

/// The CLI with `args`, then the certificate flags of orders (files in
/// `dir`), run off the async runtime.
async fn cli_with_files(addr: &str, dir: &Path, args: &[&str]) -> Output {
    cli_with_certs(addr, dir, ORDERS, args).await
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
async fn a_health_answer_larger_than_any_health_answer_is_refused_at_once_in_words() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    // Announces 1 MiB (under tonic's default 4 MiB limit), never sends it.
    let addr = stalling_server(&pki.dir, Answer::HeadersThenLarge).await;
    let out = cli_with_files(&addr, &pki.dir, &["health", "--json", "--timeout", "10s"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(json["error"]["code"], "OUT_OF_RANGE", "{json}");
    let message = json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("larger than a health answer can be (4096 bytes at most)"),
        "{json}"
    );
    assert!(!message.contains("decoded message length"), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_end_that_waits_for_the_preface_gets_the_connection_with_a_short_connect_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let addr = stalling_server(&pki.dir, Answer::AfterPrefaceNever).await;
    // The first-bytes window (half of 1 s here) leaves time for HTTP/2:
    // connecting succeeds and the call (never answered) meets its own
    // deadline, rather than "the server sent nothing".
    let out = cli_with_files(
        &addr,
        &pki.dir,
        &[
            "health",
            "--json",
            "--connect-timeout",
            "1s",
            "--timeout",
            "1s",
        ],
    )
    .await;
    let json: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(json["error"]["code"], "DEADLINE_EXCEEDED", "{json}");
    let message = json["error"]["message"].as_str().unwrap();
    assert!(message.contains("(the call timeout"), "{json}");
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
    let message = json["error"]["message"].as_str().unwrap();
    assert!(message.contains("(the call timeout"), "{json}");
    // It spoke HTTP/2: not "sent nothing".
    assert!(!message.contains("sent nothing"), "{json}");
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
    // Said as such: nothing at all came from it.
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the server sent nothing at all after the TLS handshake"),
        "{json}"
    );
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
    let addr = closed_port();
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

/// A fake number, given where a flag's value belongs.
const NUMBER: &str = "+1 202-555-0147";

fn assert_quotes_no_number(out: &Output) {
    let all = format!("{}{}", stdout(out), stderr(out));
    assert!(
        !all.contains("202") && !all.contains("0147"),
        "the value was echoed: {all}"
    );
}

/// The one JSON object a `--json` run printed.
fn json_object(out: &Output) -> serde_json::Value {
    let text = stdout(out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "stdout: {text}\nstderr: {}", stderr(out));
    serde_json::from_str(lines[0]).unwrap()
}

#[test]
fn a_rejected_flag_value_is_never_echoed_and_with_json_the_error_is_json() {
    let tmp = tempfile::tempdir().unwrap();
    let id = ["--dev-identity", "orders"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["tokenize", "--kind", NUMBER, "x"],
            "invalid value for --kind: ",
        ),
        (
            vec!["tokenize", "--kind", "national_id", "--scheme", NUMBER, "x"],
            "invalid value for --scheme: ",
        ),
        (
            vec!["tokenize", "--kind", "phone", "--batch-size", NUMBER, "x"],
            "invalid value for --batch-size: ",
        ),
        (
            vec!["tokenize", "--kind", "phone", "--timeout", NUMBER, "x"],
            "invalid value for --timeout: ",
        ),
        (
            vec!["health", "--connect-timeout", NUMBER],
            "invalid value for --connect-timeout: ",
        ),
        (vec!["health", NUMBER], "unexpected argument"),
        (
            vec!["tokenize", "--kind", "phone", "--addr", NUMBER, "x"],
            "--addr: ",
        ),
        (vec![NUMBER], "unrecognized subcommand"),
    ];
    for (args, expected) in cases {
        let mut args = args.clone();
        args.extend(id);
        let out = cli_in(tmp.path(), &args, &[], RUN);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert_quotes_no_number(&out);
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(stdout(&out).is_empty(), "{args:?}: {}", stdout(&out));
        // With --json: one object on stdout, the same words.
        args.push("--json");
        let out = cli_in(tmp.path(), &args, &[], RUN);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert_quotes_no_number(&out);
        let json = json_object(&out);
        assert_eq!(json["error"]["code"], "INVALID_ARGUMENT", "{json}");
        assert!(
            json["error"]["message"]
                .as_str()
                .unwrap()
                .contains(expected),
            "{args:?}: {json}"
        );
        assert_eq!(json["unanswered_from"], 0, "{json}");
    }
    // A parser error that names only arguments, as JSON too.
    let out = cli_in(tmp.path(), &["tokenize", "--json", "x"], &[], RUN);
    let json = json_object(&out);
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--kind"),
        "{json}"
    );
    // Help and version are printed as they are, exit 0.
    let out = cli_in(tmp.path(), &["tokenize", "--help", "--json"], &[], RUN);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("Usage:"), "{}", stdout(&out));
}

#[test]
fn batch_size_and_durations_take_sane_values_and_a_bad_variable_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let base = ["health", "--dev-identity", "orders"];
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = base.to_vec();
        args.extend(extra);
        cli_in(tmp.path(), &args, env, RUN)
    };
    let out = cli_in(
        tmp.path(),
        &["tokenize", "--kind", "phone", "--batch-size", "10001", "x"],
        &[],
        RUN,
    );
    assert!(
        stderr(&out)
            .contains("invalid value for --batch-size: must be a whole number from 1 to 10000"),
        "{}",
        stderr(&out)
    );
    for tiny in ["0.0000000001", "0.5ms"] {
        let out = run(&["--timeout", tiny], &[]);
        assert!(
            stderr(&out).contains("invalid value for --timeout: out of range (from 1ms to a day)"),
            "{tiny}: {}",
            stderr(&out)
        );
    }
    // An hour is a duration: the command goes on (to the missing dev setup).
    let out = run(&["--timeout", "1h", "--connect-timeout", "1h"], &[]);
    assert!(!stderr(&out).contains("invalid value"), "{}", stderr(&out));
    let out = run(&[], &[("FIELDVAULT_TIMEOUT", "abc")]);
    assert!(
        stderr(&out)
            .contains("invalid value for --timeout (from FIELDVAULT_TIMEOUT): not a duration"),
        "{}",
        stderr(&out)
    );
    // The flag given on the command line: the variable is not named.
    let out = run(&["--timeout", "abc"], &[("FIELDVAULT_TIMEOUT", "abc")]);
    assert!(
        stderr(&out).contains("invalid value for --timeout: not a duration"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn ports_must_be_numbers_from_1_to_65535_and_empty_variables_count_as_unset() {
    let tmp = tempfile::tempdir().unwrap();
    for addr in [
        "localhost:abc",
        "localhost:99999",
        "127.0.0.1:+50771",
        "127.0.0.1:0",
    ] {
        let out = cli_in(
            tmp.path(),
            &["health", "--addr", addr, "--dev-identity", "orders"],
            &[],
            RUN,
        );
        assert_failed_with(&out, &["--addr: the port is not a number from 1 to 65535"]);
    }
    // Empty FIELDVAULT_ADDR and FIELDVAULT_DATA_DIR: their defaults apply,
    // so the command gets as far as the (missing) dev setup in
    // ./fieldvault-data.
    let out = cli_in(
        tmp.path(),
        &["health", "--dev-identity", "orders"],
        &[("FIELDVAULT_ADDR", ""), ("FIELDVAULT_DATA_DIR", "")],
        RUN,
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        !err.contains("no host") && !err.contains("a value is required"),
        "{err}"
    );
    assert!(err.contains("fieldvault-data"), "{err}");
}

#[test]
fn local_certificate_file_mistakes_are_invalid_arguments_and_reads_are_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let dir = pki.dir.display().to_string();
    let health = |ca: &str, cert: &str| {
        cli_in(
            tmp.path(),
            &[
                "health",
                "--json",
                "--addr",
                "127.0.0.1:9",
                "--ca",
                ca,
                "--cert",
                cert,
                "--key",
                &format!("{dir}/orders.key"),
            ],
            &[],
            RUN,
        )
    };
    let ca = format!("{dir}/ca.pem");
    // A key file given as the certificate: a local mistake, nothing sent.
    let json = json_object(&health(&ca, &format!("{dir}/orders.key")));
    assert_eq!(json["error"]["code"], "INVALID_ARGUMENT", "{json}");
    let message = json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("orders.key: holds no PEM certificate"),
        "{json}"
    );
    assert!(!message.contains("connecting to"), "{json}");

    // A FIFO would block, a device never end, a huge file fill memory.
    let fifo = tmp.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let big = tmp.path().join("big.pem");
    std::fs::write(&big, vec![b'A'; 2 * 1024 * 1024]).unwrap();
    for (path, reason) in [
        (fifo.display().to_string(), "is not a regular file"),
        (big.display().to_string(), "is larger than 1024 KiB"),
        ("/dev/zero".to_owned(), "is not a regular file"),
        (dir.clone(), "is a directory"),
    ] {
        let started = Instant::now();
        let json = json_object(&health(&path, &format!("{dir}/orders.pem")));
        assert_eq!(json["error"]["code"], "INVALID_ARGUMENT", "{json}");
        let message = json["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("{path}: {reason}")), "{json}");
        assert!(started.elapsed() < Duration::from_secs(15));
    }
}

#[test]
fn a_malformed_pem_file_is_named_and_no_byte_of_it_is_quoted() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let good = |name: &str| pki.dir.join(name).display().to_string();
    let bad = tmp.path().join("bad.pem");
    let bad = bad.display().to_string();
    for content in [
        // A BEGIN line that is not one.
        "-----BEGIN X+1 202-555-0123\n",
        // A section without its END line (the label is quoted in it).
        "-----BEGIN +1 202-555-0123-----\nAAAA\n",
        // A body that is not base64.
        "-----BEGIN CERTIFICATE-----\n+1 202-555-0123\n-----END CERTIFICATE-----\n",
    ] {
        std::fs::write(&bad, content).unwrap();
        for (flag, what) in [
            ("--ca", "not a PEM certificate"),
            ("--cert", "not a PEM certificate"),
            ("--key", "not a PEM private key"),
        ] {
            let mut files = [
                ("--ca", good("ca.pem")),
                ("--cert", good("orders.pem")),
                ("--key", good("orders.key")),
            ];
            files.iter_mut().find(|(f, _)| *f == flag).unwrap().1 = bad.clone();
            let mut args = vec!["health", "--json", "--addr", "127.0.0.1:9"];
            for (f, path) in &files {
                args.push(f);
                args.push(path);
            }
            let out = cli_in(tmp.path(), &args, &[], RUN);
            let json = json_object(&out);
            assert_eq!(json["error"]["code"], "INVALID_ARGUMENT", "{json}");
            let message = json["error"]["message"].as_str().unwrap();
            assert!(message.starts_with(&format!("{bad}: {what}: ")), "{json}");
            // Neither the text nor its bytes ("202" is 50, 48, 50); the
            // paths aside (a temporary name may hold digits).
            let said = format!("{message}{}", stderr(&out))
                .replace(&bad, "")
                .replace(&pki.dir.display().to_string(), "");
            for quoted in ["202", "50, 48, 50", "[", "0123"] {
                assert!(!said.contains(quoted), "{flag} {content:?}: {said}");
            }
        }
    }
}

#[test]
fn dev_identity_with_certificate_files_names_the_conflict() {
    let tmp = tempfile::tempdir().unwrap();
    let out = cli_in(
        tmp.path(),
        &["health", "--dev-identity", "orders", "--cert", "orders.pem"],
        &[],
        RUN,
    );
    assert_failed_with(
        &out,
        &["give either --dev-identity or --ca/--cert/--key, not both"],
    );
    let out = cli_in(
        tmp.path(),
        &["health", "--cert", "orders.pem", "--key", "orders.key"],
        &[],
        RUN,
    );
    assert_failed_with(&out, &["--ca missing: --ca, --cert and --key go together"]);
}

#[test]
fn address_json_with_another_kind_is_a_whole_call_error_with_unanswered_from() {
    let tmp = tempfile::tempdir().unwrap();
    let out = cli_in(
        tmp.path(),
        &[
            "tokenize",
            "--json",
            "--kind",
            "phone",
            "--address-json",
            r#"{"country":"US"}"#,
            "--dev-identity",
            "orders",
        ],
        &[],
        RUN,
    );
    assert_eq!(out.status.code(), Some(2));
    let json = json_object(&out);
    assert_eq!(json["error"]["code"], "INVALID_ARGUMENT", "{json}");
    assert_eq!(json["unanswered_from"], 0, "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_server_certificate_is_named_in_words() {
    let tmp = tempfile::tempdir().unwrap();
    // The server presents a CA certificate (self-signed) as its own, and
    // the client trusts exactly that certificate.
    let own = fieldvault::devpki::DevCa::new("a self-signed server").unwrap();
    let (vault, cert) = vault_presenting(tmp.path(), "self", own.cert_pem(), &own.key_pem()).await;
    // The client trusts that certificate itself (an absolute path).
    let out = cli_with_certs(
        &vault.addr(),
        &vault.pki.dir,
        [cert.to_str().unwrap(), "orders.pem", "orders.key"],
        &["health"],
    )
    .await;
    assert_failed_with(
        &out,
        &["the server presented a CA certificate as its own (a self-signed certificate?)"],
    );
    assert!(!stderr(&out).contains("OtherError"), "{}", stderr(&out));
}
