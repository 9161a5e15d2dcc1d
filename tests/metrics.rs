//! The Prometheus endpoint (`[metrics] listen`, `serve --dev
//! --metrics-listen`) over a real server and real mTLS: counters move by
//! what the calls did, with the labels they should have, and the endpoint
//! shows no value and no token.
//!
//! The recorder is process-global: only
//! [`calls_move_the_counters_by_what_they_did_and_the_endpoint_shows_no_value_or_token`]
//! makes calls in this process (the other tests run the server binary or
//! only scrape a listener of their own), and it
//! compares scrapes before and after its own calls, with labels no other
//! test's calls carry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine;
use common::process::{self, ServerProcess};
use common::*;
use fieldvault::dev::{spiffe_id, DEV_POLICY};
use fieldvault::grpc::pb::{self, FieldKind};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const PHONE: &str = "+1 202-555-0147";
const ADDRESS: &str = "1 Example Way, Springfield, ZZ 00000";
/// A method path no service defines, with a test number in it: counted
/// as `unknown`, never as itself.
const BOGUS_PATH: &str = "/fieldvault.v1.Vault/Reveal2025550199";

/// How long a scrape, or a wait for a gauge's refresh, may take.
const SCRAPE_DEADLINE: Duration = Duration::from_secs(10);
const GAUGE_DEADLINE: Duration = Duration::from_secs(30);

/// GET `path` over plain HTTP/1.1; (status line, body).
async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    bounded(SCRAPE_DEADLINE, "a scrape", async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_owned(), body.to_owned())
    })
    .await
}

async fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    body
}

/// Every sample of the exposition: (name, sorted labels) -> value.
type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

fn parse(body: &str) -> Samples {
    let mut samples = Samples::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap();
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), Vec::new()),
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').unwrap();
                let mut labels: Vec<(String, String)> = inner
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once("=\"").unwrap();
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                labels.sort();
                (name.to_owned(), labels)
            }
        };
        samples.insert((name, labels), value);
    }
    samples
}

fn get(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut want: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    want.sort();
    samples
        .get(&(name.to_owned(), want))
        .copied()
        .unwrap_or(0.0)
}

/// The sum of `name` over every label set.
fn total(samples: &Samples, name: &str) -> f64 {
    samples
        .iter()
        .filter(|((n, _), _)| n == name)
        .map(|(_, v)| v)
        .sum()
}

/// Scrapes until `ready` holds (at most [`GAUGE_DEADLINE`]): gauges are
/// refreshed every few seconds.
async fn scrape_until(addr: SocketAddr, what: &str, ready: impl Fn(&Samples) -> bool) -> Samples {
    let started = Instant::now();
    loop {
        let samples = parse(&scrape(addr).await);
        if ready(&samples) {
            return samples;
        }
        assert!(
            started.elapsed() < GAUGE_DEADLINE,
            "gave up after {GAUGE_DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn assert_shows_nothing_sensitive(body: &str, tokens: &[String]) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut forbidden: Vec<String> = vec![
        PHONE.into(),
        "+12025550147".into(),
        "2025550147".into(),
        ADDRESS.into(),
        "Example Way".into(),
        "2025550199".into(),
        "Reveal".into(),
    ];
    for value in [PHONE, "+12025550147", ADDRESS] {
        forbidden.push(b64.encode(value));
        forbidden.push(b64url.encode(value));
        forbidden.push(hex::encode(value));
    }
    for token in tokens {
        forbidden.push(token.clone());
        // The token's body without its prefix, and its encodings.
        forbidden.push(token.trim_start_matches("fv1_").to_owned());
        forbidden.push(b64.encode(token));
        forbidden.push(b64url.encode(token));
        forbidden.push(hex::encode(token));
    }
    for f in forbidden {
        assert!(!body.contains(&f), "{f:?} is in the metrics:\n{body}");
    }
}

#[tokio::test]
async fn calls_move_the_counters_by_what_they_did_and_the_endpoint_shows_no_value_or_token() {
    // A quota of 2 phone numbers a minute for support, to see a refusal.
    let policy = DEV_POLICY.replace("\"100/minute\"", "\"2/minute\"");
    assert_ne!(policy, DEV_POLICY);
    let vault = TestVault::start_with(|c| {
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
        write(&c.policy_file, policy.as_bytes());
    })
    .await;
    let metrics = vault.server.as_ref().unwrap().metrics_addr().unwrap();
    assert!(metrics.ip().is_loopback());
    let (status, _) = http_get(metrics, "/").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    let before = parse(&scrape(metrics).await);

    let orders_id = spiffe_id("orders");
    let support_id = spiffe_id("support");

    // Tokenize two values.
    let mut orders = vault.client("orders").await;
    let tokens = tokens_for(
        &mut orders,
        vec![
            field(FieldKind::Phone, PHONE),
            field(FieldKind::Address, ADDRESS),
        ],
    )
    .await;
    // Detokenize, allowed: the phone in full, the address masked.
    let mut support = vault.client("support").await;
    let got = detokenize(&mut support, "callback", &tokens).await.unwrap();
    assert!(got.iter().all(|r| r.is_ok()), "{got:?}");
    // Detokenize, denied: a purpose no rule lists.
    let denied = detokenize(&mut support, "marketing", &tokens)
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    // Detokenize by a caller the policy does not name.
    let mut intruder = vault.client("intruder").await;
    let stranger = detokenize(&mut intruder, "callback", &tokens)
        .await
        .unwrap_err();
    assert_eq!(stranger.code(), Code::PermissionDenied, "{stranger:?}");
    // A failed call: no purpose.
    let invalid = detokenize(&mut support, "", &tokens).await.unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument, "{invalid:?}");
    // Over the quota: two more phone numbers than the 2 a minute allow.
    let over = detokenize(
        &mut support,
        "callback",
        &[tokens[0].clone(), tokens[0].clone()],
    )
    .await
    .unwrap_err();
    assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
    // A method no service defines.
    let mut grpc =
        tonic::client::Grpc::new(channel(&vault.addr(), &vault.pki.client_tls("orders")).await);
    bounded(CALL_DEADLINE, "the channel", grpc.ready())
        .await
        .unwrap();
    let bogus: Result<tonic::Response<pb::TokenizeResponse>, tonic::Status> = grpc
        .unary(
            tonic::Request::new(pb::TokenizeRequest::default()),
            http::uri::PathAndQuery::from_static(BOGUS_PATH),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    assert_eq!(bogus.unwrap_err().code(), Code::Unimplemented);
    // An operator freezes the caller the policy does not name.
    let mut admin = pb::admin_client::AdminClient::new(
        channel(&vault.addr(), &vault.pki.client_tls("admin")).await,
    );
    admin
        .freeze_caller(pb::FreezeCallerRequest {
            caller: spiffe_id("intruder"),
            reason: "metrics test".into(),
        })
        .await
        .unwrap();

    // An address revealed under a grant two approvers approved.
    let mut requester = pb::grants_client::GrantsClient::new(
        channel(&vault.addr(), &vault.pki.client_tls("fulfilment")).await,
    );
    let grant_id = requester
        .request_grant(pb::RequestGrantRequest {
            caller: String::new(),
            kinds: vec![FieldKind::Address as i32],
            purpose: "shipping".into(),
            max_reveals: 5,
            valid_for: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            reason: "labels for batch TEST-7".into(),
            tokens: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap()
        .grant_id;
    for approver in ["approver1", "approver2"] {
        pb::grants_client::GrantsClient::new(
            channel(&vault.addr(), &vault.pki.client_tls(approver)).await,
        )
        .approve_grant(pb::ApproveGrantRequest {
            grant_id: grant_id.clone(),
        })
        .await
        .unwrap();
    }
    let mut fulfilment = vault.client("fulfilment").await;
    let shipped = fulfilment
        .detokenize(pb::DetokenizeRequest {
            tokens: vec![tokens[1].clone()],
            purpose: "shipping".into(),
            justification: String::new(),
            grant_id: grant_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        matches!(
            shipped.results[0].outcome,
            Some(pb::detokenize_result::Outcome::Revealed(_))
        ),
        "{shipped:?}"
    );

    let body = scrape(metrics).await;
    assert_shows_nothing_sensitive(&body, &tokens);
    assert!(
        !body.contains(&grant_id),
        "the grant id is in the metrics:\n{body}"
    );
    let after = parse(&body);
    let moved = |name: &str, labels: &[(&str, &str)]| {
        get(&after, name, labels) - get(&before, name, labels)
    };

    // Calls and latency per RPC and code.
    let calls = "fieldvault_grpc_calls_total";
    let seconds = "fieldvault_grpc_call_duration_seconds_count";
    let tokenize = "/fieldvault.v1.Vault/Tokenize";
    let detokenize_rpc = "/fieldvault.v1.Vault/Detokenize";
    for (rpc, code, n) in [
        (tokenize, "OK", 1.0),
        (detokenize_rpc, "OK", 2.0),
        (detokenize_rpc, "PermissionDenied", 2.0),
        (detokenize_rpc, "InvalidArgument", 1.0),
        (detokenize_rpc, "ResourceExhausted", 1.0),
        ("unknown", "Unimplemented", 1.0),
        ("/fieldvault.v1.Admin/FreezeCaller", "OK", 1.0),
    ] {
        let labels = [("rpc", rpc), ("code", code)];
        assert_eq!(moved(calls, &labels), n, "{calls} {labels:?}\n{body}");
        assert_eq!(moved(seconds, &labels), n, "{seconds} {labels:?}");
    }
    assert!(
        body.contains("# TYPE fieldvault_grpc_call_duration_seconds histogram"),
        "{body}"
    );
    assert!(
        body.contains("fieldvault_grpc_call_duration_seconds_bucket{rpc=\"/fieldvault.v1.Vault/Tokenize\",code=\"OK\",le=\"0.005\"}"),
        "ms-scale buckets: {body}"
    );

    // Decisions per caller, action and outcome; the stranger is `unknown`.
    let decisions = "fieldvault_decisions_total";
    for (caller, action, outcome, n) in [
        (orders_id.as_str(), "tokenize", "allowed", 1.0),
        (support_id.as_str(), "detokenize", "allowed", 1.0),
        (support_id.as_str(), "detokenize", "denied", 2.0),
        (support_id.as_str(), "detokenize", "rejected", 1.0),
        ("unknown", "detokenize", "denied", 1.0),
    ] {
        let labels = [("caller", caller), ("action", action), ("outcome", outcome)];
        assert_eq!(moved(decisions, &labels), n, "{labels:?}\n{body}");
    }
    assert!(!body.contains(&spiffe_id("intruder")), "{body}");
    // Items by outcome.
    let items = "fieldvault_items_total";
    assert_eq!(
        moved(items, &[("action", "tokenize"), ("outcome", "stored")]),
        2.0
    );
    assert_eq!(
        moved(items, &[("action", "detokenize"), ("outcome", "full")]),
        2.0
    );
    assert_eq!(
        moved(items, &[("action", "detokenize"), ("outcome", "masked")]),
        1.0
    );
    assert_eq!(
        moved(
            items,
            &[("action", "detokenize"), ("outcome", "over_quota")]
        ),
        2.0
    );
    // Grant reveals, quota refusals and freezes.
    assert_eq!(
        moved(
            "fieldvault_grant_reveals_total",
            &[("caller", &spiffe_id("fulfilment"))]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "fieldvault_quota_refusals_total",
            &[("caller", &support_id), ("per", "minute")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "fieldvault_caller_freezes_total",
            &[("trigger", "operator")]
        ),
        1.0
    );
    // The store's group commit, its log's fdatasync and the audit writes:
    // at least one commit for the tokenize; an audit write per call.
    for name in [
        "fieldvault_store_commit_batch_writes_count",
        "fieldvault_store_commit_duration_seconds_count",
        "fieldvault_store_wal_sync_duration_seconds_count",
    ] {
        assert!(
            total(&after, name) - total(&before, name) >= 1.0,
            "{name}\n{body}"
        );
    }
    assert!(
        total(&after, "fieldvault_audit_write_duration_seconds_count")
            - total(&before, "fieldvault_audit_write_duration_seconds_count")
            >= 7.0,
        "{body}"
    );
    assert_eq!(
        total(&after, "fieldvault_audit_write_failures_total"),
        total(&before, "fieldvault_audit_write_failures_total")
    );

    // The gauges, from their refresh: one active data key holding the two
    // records, no job running, one caller frozen.
    let gauges = scrape_until(metrics, "the key and freeze gauges", |s| {
        get(s, "fieldvault_frozen_callers", &[]) == 1.0
            && get(
                s,
                "fieldvault_key_version_records",
                &[("purpose", "data"), ("version", "1")],
            ) == 2.0
    })
    .await;
    assert_eq!(
        get(
            &gauges,
            "fieldvault_key_versions",
            &[("purpose", "data"), ("state", "active")]
        ),
        1.0
    );
    assert_eq!(
        get(
            &gauges,
            "fieldvault_key_active_version",
            &[("purpose", "data")]
        ),
        1.0
    );
    assert_eq!(
        get(&gauges, "fieldvault_key_job_running", &[("job", "rewrap")]),
        0.0
    );
    assert_eq!(
        get(
            &gauges,
            "fieldvault_key_job_records_remaining",
            &[("job", "rewrap")]
        ),
        0.0
    );

    // A second server in this process shares the recorder: its own
    // listener shows the same registry.
    let second = TestVault::start_with(|c| {
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let second_addr = second.server.as_ref().unwrap().metrics_addr().unwrap();
    assert_ne!(second_addr, metrics);
    let shared = parse(&scrape(second_addr).await);
    assert!(
        get(&shared, calls, &[("rpc", tokenize), ("code", "OK")])
            >= get(&after, calls, &[("rpc", tokenize), ("code", "OK")])
    );

    // Stopping a server stops its listener.
    let mut vault = vault;
    vault.stop().await;
    let refused = bounded(
        SCRAPE_DEADLINE,
        "a connection to a stopped listener",
        tokio::net::TcpStream::connect(metrics),
    )
    .await;
    assert!(
        refused.is_err(),
        "the stopped server's listener still accepts"
    );
    assert_shows_nothing_sensitive(&scrape(second_addr).await, &tokens);
}

/// The TCP sockets `pid` listens on (from /proc: its socket inodes among
/// the LISTEN entries of /proc/net/tcp and tcp6).
fn listening_sockets(pid: u32) -> usize {
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let Ok(target) = std::fs::read_link(entry.unwrap().path()) else {
            continue;
        };
        let target = target.to_string_lossy().to_string();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
        {
            inodes.insert(inode.to_owned());
        }
    }
    let mut listening = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if fields.len() > 9 && fields[3] == "0A" && inodes.contains(fields[9]) {
                listening += 1;
            }
        }
    }
    listening
}

fn metrics_addr_printed(server: &ServerProcess) -> Option<SocketAddr> {
    server.stdout.lines().find_map(|l| {
        l.strip_prefix("metrics on http://")
            .and_then(|rest| rest.split_once("/metrics"))
            .map(|(addr, _)| addr.parse().unwrap())
    })
}

#[tokio::test]
async fn without_metrics_listen_the_server_listens_on_its_grpc_port_only() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("server.log");
    let server = process::start_dev(&tmp.path().join("data"), &log).unwrap();
    assert_eq!(metrics_addr_printed(&server), None, "{}", server.stdout);
    assert_eq!(listening_sockets(server.pid()), 1);
    let status = server.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");

    // With the flag: a second listener, printed in the banner, serving
    // the Prometheus text format.
    let data_dir = tmp.path().join("data");
    let server = process::start(
        &[
            "serve",
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        "info",
        &log,
    )
    .unwrap();
    let addr = metrics_addr_printed(&server).unwrap_or_else(|| panic!("{}", server.stdout));
    assert_eq!(listening_sockets(server.pid()), 2);
    // From the first scrape of a new process: the TLS material's series
    // (the recorder is in place before the TLS files are opened) and the
    // counters alerts watch, at zero.
    let first = scrape(addr).await;
    for series in [
        "fieldvault_tls_server_cert_not_after_seconds ",
        "fieldvault_tls_handshake_failures_total{reason=\"revoked\"} 0",
        "fieldvault_caller_freezes_total{trigger=\"canary\"} 0",
        "fieldvault_audit_write_failures_total{reason=\"write_failed\"} 0",
    ] {
        assert!(
            first.contains(series),
            "no {series:?} in the first scrape:\n{first}"
        );
    }
    let samples = scrape_until(addr, "the key gauges", |s| {
        get(
            s,
            "fieldvault_key_versions",
            &[("purpose", "data"), ("state", "active")],
        ) == 1.0
    })
    .await;
    assert_eq!(get(&samples, "fieldvault_frozen_callers", &[]), 0.0);
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains(&format!("metrics at http://{addr}/metrics")),
        "{logs}"
    );
    let status = server.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
}

#[test]
fn metrics_listen_on_the_command_line_is_refused_with_a_config_file() {
    let out = process::cli(&[
        "serve",
        "--config",
        "/nonexistent/fieldvault.toml",
        "--metrics-listen",
        "127.0.0.1:9464",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "--metrics-listen applies to --dev only; with --config, set `listen` under [metrics]"
        ),
        "{stderr}"
    );
}

#[test]
fn config_check_names_a_bad_metrics_address_and_notes_a_listener_off_loopback() {
    use common::cli::{run_to_exit, stderr, stdout};
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let data = tmp.path().join("data");
    let config = |tables: &str| {
        write_config_file(
            tmp.path(),
            &pki,
            DEV_POLICY,
            (&data, &data.join("audit.log")),
            "",
            tables,
        )
    };
    let path = config("[metrics]\nlisten = \"nowhere\"\n");
    let out = run_to_exit(1, &["config", "check", path.to_str().unwrap()], "");
    assert!(
        stderr(&out).contains("metrics.listen: 'nowhere' is not an address:port"),
        "{}",
        stderr(&out)
    );
    let path = config("[metrics]\nlisten = \"127.0.0.1:9464\"\n");
    let out = run_to_exit(0, &["config", "check", path.to_str().unwrap()], "");
    assert!(!stdout(&out).contains("note:"), "{}", stdout(&out));
    // The gRPC port on all addresses (here through FIELDVAULT_LISTEN): the
    // same port on loopback could not be bound.
    for grpc in ["0.0.0.0:9464", "127.0.0.1:9464"] {
        let out = common::conn::cli_in(
            tmp.path(),
            &["config", "check", path.to_str().unwrap()],
            &[("FIELDVAULT_LISTEN", grpc)],
            Duration::from_secs(60),
        );
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!(
                "metrics.listen: 127.0.0.1:9464 takes the port of the gRPC listen address {grpc}"
            )),
            "{}",
            stderr(&out)
        );
    }
    let path = config("[metrics]\nlisten = \"0.0.0.0:9464\"\n");
    let out = run_to_exit(0, &["config", "check", path.to_str().unwrap()], "");
    assert!(
        stdout(&out).contains(
            "note: metrics.listen: 0.0.0.0:9464 is not a loopback address; the metrics endpoint \
             is plain HTTP without authentication"
        ),
        "{}",
        stdout(&out)
    );
}

/// Connections that send half a request line and reconnect as soon as
/// they are closed (more than the listener's 16 connections) do not keep
/// a scraper out: each scrape is answered within a second, well before
/// the listener's 2 s header timeout would free a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_holding_half_a_request_do_not_keep_scrapes_out() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let endpoint = fieldvault::metrics::listen("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = endpoint.local_addr();
    let stopped = Arc::new(AtomicBool::new(false));
    let held = Arc::new(AtomicUsize::new(0));
    let mut holders = Vec::new();
    for _ in 0..24 {
        let stopped = stopped.clone();
        let held = held.clone();
        holders.push(tokio::spawn(async move {
            while !stopped.load(Ordering::SeqCst) {
                let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if stream.write_all(b"GET /metr").await.is_err() {
                    continue;
                }
                held.fetch_add(1, Ordering::SeqCst);
                // Held until the listener closes it (or the test ends).
                let mut byte = [0u8; 1];
                let _ = tokio::time::timeout(SCRAPE_DEADLINE, stream.read(&mut byte)).await;
            }
        }));
    }
    let started = Instant::now();
    while held.load(Ordering::SeqCst) < 24 {
        assert!(
            started.elapsed() < SCRAPE_DEADLINE,
            "the holders never connected"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..5 {
        let answered = tokio::time::timeout(Duration::from_secs(1), scrape(addr)).await;
        assert!(
            answered.is_ok(),
            "a scrape waited more than 1 s behind connections holding half a request"
        );
    }
    stopped.store(true, Ordering::SeqCst);
    for holder in holders {
        holder.abort();
    }
    endpoint.stop().await;
}
