//! Limits (README, "Limits"): what one peer, one identity and everyone
//! together may hold. A real server over real mTLS on 127.0.0.1; the flood
//! tests run the real binary as a child process to measure its RSS. Every
//! client call and every wait has a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::process::{self, ServerProcess};
use common::raw::*;
use common::*;
use fieldvault::client;
use fieldvault::dev::DEV_POLICY;
use fieldvault::grpc::pb::{self, FieldKind};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// A normal call must answer within this, whatever else is going on.
const NORMAL_CALL_DEADLINE: Duration = Duration::from_secs(1);
/// Bound on any single step of a test (connect, handshake, response).
const STEP: Duration = Duration::from_secs(5);

const TOKENIZE: &str = "/fieldvault.v1.Vault/Tokenize";

/// Whether the server serves calls on this connection (any gRPC status).
async fn alive(conn: &mut H2Conn) -> bool {
    grpc_status(&mut conn.send, TOKENIZE).await.is_ok()
}

/// One orders Tokenize on a fresh or given client, under the 1 s deadline.
async fn normal_call(
    client: &mut pb::vault_client::VaultClient<tonic::transport::Channel>,
) -> Duration {
    let start = Instant::now();
    let resp = timeout(
        NORMAL_CALL_DEADLINE,
        client.tokenize(pb::TokenizeRequest {
            fields: vec![field(FieldKind::Phone, "+1 202-555-0143")],
            purpose: None,
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("a normal call took more than {NORMAL_CALL_DEADLINE:?}"))
    .unwrap();
    assert!(matches!(
        resp.into_inner().results[0].outcome,
        Some(pb::tokenize_result::Outcome::Token(_))
    ));
    start.elapsed()
}

async fn orders_client(
    addr: &str,
    pki: &Pki,
) -> pb::vault_client::VaultClient<tonic::transport::Channel> {
    timeout(STEP, client::connect(addr, &pki.client_tls("orders")))
        .await
        .unwrap()
        .unwrap()
}

// ---------------------------------------------------------------------------
// The real binary, for RSS.

struct ChildVault {
    _tmp: tempfile::TempDir,
    pki: Pki,
    server: ServerProcess,
}

fn start_child(extra_config: &str) -> ChildVault {
    start_child_with(extra_config, None)
}

/// Starts the binary with `extra_config` appended to its config, under an
/// open-file limit if given.
fn start_child_with(extra_config: &str, nofile: Option<u64>) -> ChildVault {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let config_path = write_config_file(
        tmp.path(),
        &pki,
        DEV_POLICY,
        (&tmp.path().join("data"), &tmp.path().join("audit.log")),
        "",
        extra_config,
    );
    let log = tmp.path().join("server.log");
    let server = match nofile {
        None => process::start_with_config(&config_path, &log),
        Some(n) => process::start_with_config_and_open_file_limit(&config_path, &log, n),
    }
    .unwrap();
    ChildVault {
        _tmp: tmp,
        pki,
        server,
    }
}

fn rss_mib(pid: u32) -> u64 {
    proc_mib(pid, "VmRSS:")
}

/// What became of the streams of a flood.
#[derive(Debug, Default)]
struct Flood {
    opened: usize,
    /// Refused by the server (RESOURCE_EXHAUSTED or a reset).
    refused: usize,
    /// Still open, waiting for the 4 MiB they announced.
    pending: usize,
    /// Streams the connection would not open (no slot within the deadline).
    not_opened: usize,
}

/// On each of `connections` connections as `name`, opens `streams` streams,
/// each announcing a 4 MiB message and sending one byte of it, and holds
/// them open. Returns the counts and whatever must live for the streams to
/// stay open.
async fn flood(
    addr: &str,
    pki_dir: &Path,
    name: &str,
    connections: usize,
    streams: usize,
) -> (Flood, Vec<H2Conn>, Vec<h2::SendStream<Bytes>>) {
    let mut conns = Vec::new();
    for _ in 0..connections {
        conns.push(h2_connect(addr, pki_dir, name).await.unwrap());
    }
    let mut tasks = Vec::new();
    for conn in &conns {
        let send = conn.send.clone();
        tasks.push(tokio::spawn(async move {
            let mut flood = Flood::default();
            let mut bodies = Vec::new();
            let mut responses = Vec::new();
            for _ in 0..streams {
                let Ok(Ok(mut ready)) = timeout(Duration::from_secs(2), send.clone().ready()).await
                else {
                    flood.not_opened += 1;
                    continue;
                };
                let Ok((resp, mut body)) = ready.send_request(grpc_request(TOKENIZE), false) else {
                    flood.not_opened += 1;
                    continue;
                };
                // Uncompressed, 4 MiB announced, one byte sent.
                let _ = body.send_data(Bytes::from_static(&[0, 0, 0x40, 0, 0, 0x0a]), false);
                flood.opened += 1;
                bodies.push(body);
                responses.push(tokio::spawn(async move {
                    match resp.await {
                        Err(_) => "refused",
                        Ok(r) => match r.headers().get("grpc-status") {
                            Some(s) if s == "8" => "refused",
                            _ => "answered",
                        },
                    }
                }));
            }
            (flood, bodies, responses)
        }));
    }
    let mut total = Flood::default();
    let mut bodies = Vec::new();
    let mut responses = Vec::new();
    for t in tasks {
        let (f, b, r) = timeout(Duration::from_secs(30), t).await.unwrap().unwrap();
        total.opened += f.opened;
        total.not_opened += f.not_opened;
        bodies.extend(b);
        responses.extend(r);
    }
    // Streams still waiting once the count of unanswered ones has not moved
    // for a second (or after 20 s) are the ones the server holds open.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut unanswered = usize::MAX;
    let mut since = Instant::now();
    loop {
        let now = responses.iter().filter(|r| !r.is_finished()).count();
        if now != unanswered {
            unanswered = now;
            since = Instant::now();
        }
        if since.elapsed() >= Duration::from_secs(1) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for r in responses {
        if !r.is_finished() {
            total.pending += 1;
            r.abort();
            continue;
        }
        match r.await.unwrap() {
            "refused" => total.refused += 1,
            other => panic!("a half-open stream was answered: {other}"),
        }
    }
    (total, conns, bodies)
}

/// Runs a flood against a child server while an orders client calls every
/// 50 ms; returns (RSS before, peak RSS, slowest normal call, flood).
async fn flood_with_normal_calls(
    vault: &ChildVault,
    connections: usize,
) -> (u64, u64, Duration, Flood) {
    let addr = vault.server.addr.clone();
    let pid = vault.server.pid();
    let mut orders = orders_client(&addr, &vault.pki).await;
    normal_call(&mut orders).await;
    let before = rss_mib(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let caller = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut slowest = Duration::ZERO;
            let mut calls = 0;
            while !stop.load(Ordering::SeqCst) {
                slowest = slowest.max(normal_call(&mut orders).await);
                calls += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (slowest, calls)
        }
    });
    let sampler = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut peak = 0;
            while !stop.load(Ordering::SeqCst) {
                peak = peak.max(rss_mib(pid));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        }
    });
    let (result, conns, bodies) = flood(&addr, &vault.pki.dir, "intruder", connections, 1000).await;
    // Hold everything open a little longer, still calling.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let (slowest, calls) = timeout(STEP, caller).await.unwrap().unwrap();
    let peak = timeout(STEP, sampler)
        .await
        .unwrap()
        .unwrap()
        .max(rss_mib(pid));
    assert!(calls >= 5, "the normal caller made {calls} calls");
    drop(bodies);
    drop(conns);
    eprintln!(
        "flood over {connections} connection(s): RSS {before} MiB before, {peak} MiB peak; \
         slowest normal call {slowest:?}; {result:?}"
    );
    (before, peak, slowest, result)
}

/// The documented bound (README, "Limits"): with the default limits, the
/// requests of one identity hold at most 32 MiB of announced message
/// buffers; with connection and stream state, a flood by one identity adds
/// well under 128 MiB.
const FLOOD_RSS_GROWTH_BOUND_MIB: u64 = 128;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_half_open_4_mib_streams_on_one_connection_neither_bloat_the_server_nor_slow_other_callers(
) {
    let vault = start_child("");
    let (before, peak, slowest, result) = flood_with_normal_calls(&vault, 1).await;
    assert!(
        peak < before + FLOOD_RSS_GROWTH_BOUND_MIB,
        "RSS grew from {before} to {peak} MiB"
    );
    assert!(slowest < NORMAL_CALL_DEADLINE, "{slowest:?}");
    assert_eq!(result.opened + result.not_opened, 1000);
    // The identity's byte budget (32 MiB) holds 7 messages of 4 MiB; the
    // rest were refused rather than buffered.
    assert!(result.pending <= 8, "{result:?}");
    assert!(result.refused >= 900, "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_half_open_4_mib_streams_on_each_of_several_connections_neither_bloat_the_server_nor_slow_other_callers(
) {
    let vault = start_child("");
    let (before, peak, slowest, result) = flood_with_normal_calls(&vault, 8).await;
    assert!(
        peak < before + FLOOD_RSS_GROWTH_BOUND_MIB,
        "RSS grew from {before} to {peak} MiB"
    );
    assert!(slowest < NORMAL_CALL_DEADLINE, "{slowest:?}");
    assert!(result.pending <= 8, "{result:?}");
    assert!(result.refused >= 7000, "{result:?}");
}

/// Four callers with no rule each holding what one identity may (8 streams
/// announcing 4 MiB: 32 MiB each, 128 MiB in all, the whole shared budget)
/// must not starve a caller the policy knows: callers no rule names share
/// one largest message of budget of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_rules_cannot_spend_the_budget_of_callers_the_policy_knows() {
    let vault = TestVault::start().await;
    for name in ["nobody1", "nobody2", "nobody3"] {
        vault.pki.issue_client(name, name, None);
    }
    let addr = vault.addr();
    let mut held = Vec::new();
    let mut pending = 0;
    for name in ["intruder", "nobody1", "nobody2", "nobody3"] {
        let (result, conns, bodies) = flood(&addr, &vault.pki.dir, name, 1, 8).await;
        pending += result.pending;
        held.push((conns, bodies));
    }
    // Their shared budget holds two 4 MiB messages; every other stream of
    // theirs was refused rather than buffered.
    assert!(
        pending <= 2,
        "{pending} streams of callers without rules held"
    );
    let mut orders = orders_client(&addr, &vault.pki).await;
    for _ in 0..10 {
        normal_call(&mut orders).await;
    }
    drop(held);
}

// ---------------------------------------------------------------------------
// Connection caps, idle timeout, TLS and identity options: in-process.

#[tokio::test]
async fn the_server_announces_its_stream_limit_and_holds_clients_to_it() {
    let vault = TestVault::start_with(|c| c.limits.max_concurrent_streams = 7).await;
    let mut conn = h2_connect(&vault.addr(), &vault.pki.dir, "orders")
        .await
        .unwrap();
    // One exchange, so the server's SETTINGS have been read.
    assert!(alive(&mut conn).await);
    assert_eq!(conn.send.current_max_send_streams(), 7);
    // Seven calls that wait for their message hold every slot.
    let mut waiting = Vec::new();
    for _ in 0..7 {
        let mut send = timeout(STEP, conn.send.clone().ready())
            .await
            .unwrap()
            .unwrap();
        let (resp, mut body) = send.send_request(grpc_request(TOKENIZE), false).unwrap();
        body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), false)
            .unwrap();
        waiting.push((resp, body));
    }
    // A complete eighth call is not served (the client queues it) ...
    let mut send = timeout(STEP, conn.send.clone().ready())
        .await
        .unwrap()
        .unwrap();
    let (eighth, mut body) = send.send_request(grpc_request(TOKENIZE), false).unwrap();
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    let mut eighth = std::pin::pin!(eighth);
    assert!(
        timeout(Duration::from_millis(500), &mut eighth)
            .await
            .is_err(),
        "an 8th stream was served past the limit of 7"
    );
    // ... until one of the seven ends.
    let (first, mut body) = waiting.remove(0);
    body.send_data(Bytes::new(), true).unwrap();
    timeout(STEP, first).await.unwrap().unwrap();
    timeout(STEP, eighth).await.unwrap().unwrap();
}

#[tokio::test]
async fn one_identity_over_its_connection_cap_cannot_stop_another_identitys_calls() {
    let vault = TestVault::start_with(|c| c.limits.max_connections_per_identity = 4).await;
    let mut intruder = Vec::new();
    let mut refused = 0;
    for _ in 0..12 {
        match h2_connect(&vault.addr(), &vault.pki.dir, "intruder").await {
            Ok(mut conn) => {
                if alive(&mut conn).await {
                    intruder.push(conn);
                } else {
                    refused += 1;
                }
            }
            Err(_) => refused += 1,
        }
    }
    assert_eq!(intruder.len(), 4, "the cap is 4");
    assert_eq!(refused, 8);
    // orders is another identity: its connections and calls go through.
    let mut orders = Vec::new();
    for _ in 0..4 {
        let mut c = orders_client(&vault.addr(), &vault.pki).await;
        normal_call(&mut c).await;
        orders.push(c);
    }
    // A slot freed by the intruder can be taken again.
    drop(intruder.pop());
    let deadline = Instant::now() + STEP;
    loop {
        if let Ok(mut conn) = h2_connect(&vault.addr(), &vault.pki.dir, "intruder").await {
            if alive(&mut conn).await {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the freed slot never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in &mut intruder {
        assert!(alive(c).await, "connections under the cap were harmed");
    }
}

#[tokio::test]
async fn connections_past_the_global_cap_are_closed_at_once_and_existing_ones_keep_working() {
    let vault = TestVault::start_with(|c| {
        c.limits.max_connections = Some(6);
        c.limits.max_connections_per_identity = 6;
        // The connection cap, not the handshake caps, is under test.
        c.limits.max_pending_handshakes = Some(5);
        c.limits.max_handshakes_per_ip = 5;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = h2_connect(&vault.addr(), &vault.pki.dir, "intruder")
            .await
            .unwrap();
        assert!(alive(&mut conn).await);
        held.push(conn);
    }
    let mut orders = orders_client(&vault.addr(), &vault.pki).await;
    normal_call(&mut orders).await;
    // Two more slots, then the cap: raw TCP sockets that never say hello
    // take the last two slots, and 50 more are closed at once.
    let mut silent = Vec::new();
    for _ in 0..52 {
        silent.push(
            timeout(STEP, TcpStream::connect(vault.addr()))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let mut closed = 0;
    for s in &mut silent {
        let mut buf = [0u8; 1];
        match timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
            Ok(Ok(_)) => panic!("the server spoke first"),
            Err(_) => {}
        }
    }
    assert_eq!(closed, 50, "connections past the cap are closed at once");
    // The established ones are untouched.
    normal_call(&mut orders).await;
    for c in &mut held {
        assert!(alive(c).await);
    }
    // A new connection is refused while the cap is reached...
    match h2_connect(&vault.addr(), &vault.pki.dir, "orders").await {
        Err(_) => {}
        Ok(mut conn) => assert!(!alive(&mut conn).await, "a 7th connection was served"),
    }
    // ... and accepted once a slot is free.
    drop(silent);
    let deadline = Instant::now() + STEP;
    loop {
        if let Ok(mut conn) = h2_connect(&vault.addr(), &vault.pki.dir, "orders").await {
            if alive(&mut conn).await {
                break;
            }
        }
        assert!(Instant::now() < deadline, "slots never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_under_a_low_descriptor_limit_exhausts_no_descriptors() {
    // 200 open files: the default cap becomes 200 - 64 = 136 connections.
    // The connection cap is under test, not the handshake caps below it.
    let vault = start_child_with(
        "[limits]\nhandshake_timeout_secs = 2\nmax_pending_handshakes = 135\n\
         max_handshakes_per_ip = 135\n",
        Some(200),
    );
    let addr = vault.server.addr.clone();
    let mut orders = orders_client(&addr, &vault.pki).await;
    normal_call(&mut orders).await;
    let mut silent = Vec::new();
    for _ in 0..400 {
        silent.push(
            timeout(STEP, TcpStream::connect(&addr))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    normal_call(&mut orders).await;
    let fds = std::fs::read_dir(format!("/proc/{}/fd", vault.server.pid()))
        .unwrap()
        .count();
    assert!(fds < 200, "the server holds {fds} descriptors");
    // Past the handshake timeout (2 s) the server has closed every silent
    // socket, though the client still holds them: a new client gets in.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut fresh = orders_client(&addr, &vault.pki).await;
    normal_call(&mut fresh).await;
    drop(silent);
    let log = std::fs::read_to_string(&vault.server.log_path).unwrap();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(
        log.contains("limits.max_connections reached"),
        "refusals are logged"
    );
    let refusal_lines = log
        .lines()
        .filter(|l| l.contains("limits.max_connections reached"))
        .count();
    assert!(
        refusal_lines <= 10,
        "{refusal_lines} refusal lines: not rate-limited"
    );
}

#[tokio::test]
async fn a_call_whose_body_never_finishes_gets_deadline_exceeded_after_the_request_timeout() {
    let vault = TestVault::start_with(|c| c.limits.request_timeout_secs = 1).await;
    let conn = h2_connect(&vault.addr(), &vault.pki.dir, "orders")
        .await
        .unwrap();
    let mut ready = timeout(STEP, conn.send.clone().ready())
        .await
        .unwrap()
        .unwrap();
    let (resp, mut body) = ready.send_request(grpc_request(TOKENIZE), false).unwrap();
    // A prefix announcing 9 bytes, and one of them: the body never ends.
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 9, 1]), false)
        .unwrap();
    let start = Instant::now();
    let resp = timeout(STEP, resp).await.unwrap().unwrap();
    let waited = start.elapsed();
    let status = match resp.headers().get("grpc-status") {
        Some(s) => s.to_str().unwrap().to_owned(),
        None => {
            let mut body = resp.into_body();
            while let Some(chunk) = timeout(STEP, body.data()).await.unwrap() {
                chunk.unwrap();
            }
            let trailers = timeout(STEP, body.trailers()).await.unwrap().unwrap();
            trailers.unwrap()["grpc-status"]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(
        status,
        (tonic::Code::DeadlineExceeded as i32).to_string(),
        "answered after {waited:?}"
    );
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
}

/// A TCP connection from `source` (any 127.x address reaches a server on
/// 127.0.0.1) that never says anything.
async fn silent_socket_from(source: &str, addr: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    timeout(STEP, socket.connect(addr.parse().unwrap()))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn silent_sockets_from_one_address_past_its_handshake_cap_cannot_keep_another_client_out() {
    let vault = TestVault::start_with(|c| {
        c.limits.max_connections = Some(16);
        c.limits.max_pending_handshakes = Some(8);
        c.limits.max_handshakes_per_ip = 4;
    })
    .await;
    let addr = vault.addr();
    // 40 silent sockets from one host: without the per-address cap they
    // would hold all 16 connection slots until the handshake timeout (10 s).
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(silent_socket_from("127.0.0.2", &addr).await);
    }
    let mut closed = 0;
    for s in &mut silent {
        let mut buf = [0u8; 1];
        match timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
            Ok(Ok(_)) => panic!("the server spoke first"),
            Err(_) => {}
        }
    }
    assert_eq!(
        closed, 36,
        "past 4 handshakes from one address, closed at once"
    );
    // Another host's client connects and calls, well within the handshake
    // timeout the silent sockets could otherwise have held slots for.
    let mut orders = orders_client(&addr, &vault.pki).await;
    normal_call(&mut orders).await;
    drop(silent);
}

#[tokio::test]
async fn a_connection_with_no_open_stream_is_closed_after_the_idle_timeout() {
    let vault = TestVault::start_with(|c| c.limits.idle_timeout_secs = 1).await;
    let mut idle = h2_connect(&vault.addr(), &vault.pki.dir, "orders")
        .await
        .unwrap();
    assert!(alive(&mut idle).await);
    let mut busy = h2_connect(&vault.addr(), &vault.pki.dir, "orders")
        .await
        .unwrap();
    let start = Instant::now();
    // busy calls every 300 ms for 2.5 s: never idle for 1 s.
    while start.elapsed() < Duration::from_millis(2500) {
        assert!(alive(&mut busy).await, "a busy connection was closed");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        idle.driver.is_finished(),
        "the idle connection is still open"
    );
    // A connection whose only stream stays open is not idle.
    let mut waiting = h2_connect(&vault.addr(), &vault.pki.dir, "orders")
        .await
        .unwrap();
    let mut ready = timeout(STEP, waiting.send.clone().ready())
        .await
        .unwrap()
        .unwrap();
    let (_resp, mut body) = ready.send_request(grpc_request(TOKENIZE), false).unwrap();
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 9]), false)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!waiting.driver.is_finished(), "closed with a stream open");
    assert!(alive(&mut waiting).await);
}

#[tokio::test]
async fn a_tls_1_2_client_is_refused_by_default_and_accepted_when_allowed() {
    let vault = TestVault::start().await;
    let err = tls_connect(
        &vault.addr(),
        &vault.pki.dir,
        "orders",
        &[&rustls::version::TLS12],
    )
    .await
    .err()
    .unwrap_or_default();
    assert!(
        err.contains("ProtocolVersion") || err.contains("version"),
        "{err}"
    );
    let mut tls13 = tls_connect(
        &vault.addr(),
        &vault.pki.dir,
        "orders",
        &[&rustls::version::TLS13],
    )
    .await
    .unwrap();
    tls13
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();

    let vault = TestVault::start_with(|c| {
        c.tls_options.min_version = fieldvault::config::TlsMinVersion::Tls12;
    })
    .await;
    let mut tls12 = tls_connect(
        &vault.addr(),
        &vault.pki.dir,
        "orders",
        &[&rustls::version::TLS12],
    )
    .await
    .unwrap();
    assert_eq!(
        tls12.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    tls12
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = timeout(STEP, tls12.read(&mut buf)).await.unwrap().unwrap();
    assert!(n > 0, "the server answers a TLS 1.2 client when allowed");
}

#[tokio::test]
async fn a_certificate_without_a_spiffe_id_is_refused_when_the_cn_fallback_is_off() {
    let vault = TestVault::start_with(|c| c.tls_options.identity_from_cn = false).await;
    vault.pki.issue_client("billing", "billing", None);
    let mut billing = h2_connect(&vault.addr(), &vault.pki.dir, "billing")
        .await
        .unwrap();
    assert_eq!(
        grpc_status(&mut billing.send, TOKENIZE).await,
        Ok(tonic::Code::Unauthenticated as u32)
    );
    let mut client = timeout(
        STEP,
        client::connect(&vault.addr(), &vault.pki.client_tls("billing")),
    )
    .await
    .unwrap()
    .unwrap();
    let err = timeout(
        STEP,
        client.tokenize(pb::TokenizeRequest {
            fields: vec![field(FieldKind::Phone, "+1 202-555-0144")],
            purpose: None,
        }),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(
        err.message().contains("tls.identity_from_cn"),
        "{}",
        err.message()
    );
    // SPIFFE identities are unaffected.
    normal_call(&mut orders_client(&vault.addr(), &vault.pki).await).await;
}

const REFLECTION: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";

#[tokio::test]
async fn server_reflection_is_absent_when_turned_off() {
    let on = TestVault::start().await;
    let mut conn = h2_connect(&on.addr(), &on.pki.dir, "orders").await.unwrap();
    // An empty request message: reflection answers (OK or a stream error),
    // but not UNIMPLEMENTED.
    let status = grpc_status(&mut conn.send, REFLECTION).await.unwrap();
    assert_ne!(status, tonic::Code::Unimplemented as u32);

    let off = TestVault::start_with(|c| c.reflection = false).await;
    let mut conn = h2_connect(&off.addr(), &off.pki.dir, "orders")
        .await
        .unwrap();
    assert_eq!(
        grpc_status(&mut conn.send, REFLECTION).await,
        Ok(tonic::Code::Unimplemented as u32)
    );
}

#[test]
fn the_defaults_documented_in_the_example_config_are_the_real_defaults() {
    // Uncomment every commented `key = value` line except the master key's
    // alternative: the result must parse to the defaults.
    let text = std::fs::read_to_string("deploy/fieldvault.toml").unwrap();
    let uncommented: String = text
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest.split_once(" = ").is_some_and(|(k, _)| {
                    k != "env" && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                }) =>
            {
                rest
            }
            _ => line,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(uncommented.len() < text.len(), "nothing was uncommented");
    let documented = fieldvault::config::Config::from_toml(&uncommented, &no_env).unwrap();
    let plain = fieldvault::config::Config::from_toml(&text, &no_env).unwrap();
    assert_eq!(documented.tls_options, plain.tls_options);
    assert_eq!(documented.reflection, plain.reflection);
    let d = fieldvault::config::Limits::default();
    // Derived when unset; the example shows what they come to.
    assert_eq!(documented.limits.max_connections, Some(1000));
    assert_eq!(
        documented.limits.max_request_bytes_per_identity,
        Some(fieldvault::limits::DEFAULT_REQUEST_BYTES_PER_IDENTITY)
    );
    assert_eq!(
        documented.limits.max_request_bytes,
        Some(fieldvault::limits::DEFAULT_REQUEST_BYTES)
    );
    assert_eq!(documented.limits.max_pending_handshakes, Some(256));
    let derived = fieldvault::config::Limits {
        max_connections: None,
        max_pending_handshakes: None,
        max_request_bytes_per_identity: None,
        max_request_bytes: None,
        ..documented.limits.clone()
    };
    assert_eq!(derived, d);
    assert_eq!(plain.limits, d);
    // The README's figure for 1000 items.
    assert_eq!(fieldvault::limits::max_message_bytes(1000), 8_802_162);
}

/// The headers of one complete empty-message call on `path`.
async fn answer_headers(send: &mut h2::client::SendRequest<Bytes>, path: &str) -> http::HeaderMap {
    let mut ready = timeout(STEP, send.clone().ready()).await.unwrap().unwrap();
    let (resp, mut body) = ready.send_request(grpc_request(path), false).unwrap();
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    timeout(STEP, resp)
        .await
        .unwrap()
        .unwrap()
        .headers()
        .clone()
}

#[tokio::test]
async fn an_unimplemented_method_is_answered_with_one_request_id_like_every_other_call() {
    let vault = TestVault::start().await;
    let mut conn = h2_connect(&vault.addr(), &vault.pki.dir, "orders")
        .await
        .unwrap();
    let unknown = answer_headers(&mut conn.send, "/fieldvault.v1.Vault/NoSuchMethod").await;
    assert_eq!(
        unknown.get("grpc-status").map(|s| s.to_str().unwrap()),
        Some("12"),
        "{unknown:?}"
    );
    let ids: Vec<_> = unknown.get_all("x-request-id").iter().collect();
    assert_eq!(ids.len(), 1, "{unknown:?}");
    assert!(uuid::Uuid::parse_str(ids[0].to_str().unwrap()).is_ok());
    // A service's own answer (a refusal, here: an empty request) keeps the
    // one id the service set, not a second.
    let served = answer_headers(&mut conn.send, TOKENIZE).await;
    let ids: Vec<_> = served.get_all("x-request-id").iter().collect();
    assert_eq!(ids.len(), 1, "{served:?}");
}
