//! SIGTERM drains the real server: health reports NOT_SERVING (a watch
//! sees it, then ends), no new connection is accepted, calls in flight
//! finish and are answered, no acknowledged token is lost, and the process
//! exits 0 after closing (checkpointing) the store. A call still in flight
//! at `shutdown.drain_timeout_secs` is cut off unanswered and the server
//! still exits 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::process::{start_with_config, ServerProcess};
use common::raw::{grpc_request, h2_connect};
use common::{
    bounded, channel, detokenize, dev_policy_without_quotas, field, try_channel, write_config_file,
    Pki, CALL_DEADLINE,
};
use fieldvault::grpc::pb;
use fieldvault::grpc::pb::vault_client::VaultClient;
use prost::Message;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const TOKENIZE: &str = "/fieldvault.v1.Vault/Tokenize";
/// How long the server may take to exit after SIGTERM in these tests.
const EXIT_DEADLINE: Duration = Duration::from_secs(60);

/// Obviously fake numbers: +1 202-555-0100 … 0199.
fn phone(i: usize) -> String {
    format!("+1 202-555-01{:02}", i % 100)
}

fn canonical(i: usize) -> String {
    format!("+120255501{:02}", i % 100)
}

struct Setup {
    _tmp: tempfile::TempDir,
    pki: Pki,
    config: PathBuf,
    log: PathBuf,
}

fn setup(drain_timeout_secs: u64) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"));
    let config = write_config_file(
        tmp.path(),
        &pki,
        &dev_policy_without_quotas(),
        (&tmp.path().join("data"), &tmp.path().join("audit.log")),
        "",
        &format!("[shutdown]\ndrain_timeout_secs = {drain_timeout_secs}\n"),
    );
    let log = tmp.path().join("server.log");
    Setup {
        _tmp: tmp,
        pki,
        config,
        log,
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits (bounded) until the server's log holds `needle`.
async fn log_shows(path: &Path, needle: &str) {
    let started = Instant::now();
    while !read_log(path).contains(needle) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the log never showed {needle:?}:\n{}",
            read_log(path)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One Tokenize call as gRPC frames its request: a 5-byte prefix and the
/// message.
fn tokenize_frame(value: &str) -> Vec<u8> {
    let message = pb::TokenizeRequest {
        fields: vec![field(pb::FieldKind::Phone, value)],
        purpose: None,
    }
    .encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    frame
}

/// A Tokenize call whose request is sent in part: the server has taken it
/// and waits for the rest of its message (a call in flight).
struct HalfSent {
    response: h2::client::ResponseFuture,
    body: h2::SendStream<Bytes>,
    rest: Bytes,
    _conn: common::raw::H2Conn,
}

async fn half_sent_call(addr: &str, pki: &Path, value: &str) -> HalfSent {
    let conn = h2_connect(addr, pki, "orders").await.unwrap();
    let mut send = bounded(CALL_DEADLINE, "a stream slot", conn.send.clone().ready())
        .await
        .unwrap();
    let (response, mut body) = send.send_request(grpc_request(TOKENIZE), false).unwrap();
    let frame = tokenize_frame(value);
    let (head, rest) = frame.split_at(8);
    body.send_data(Bytes::copy_from_slice(head), false).unwrap();
    HalfSent {
        response,
        body,
        rest: Bytes::copy_from_slice(rest),
        _conn: conn,
    }
}

/// Sends the rest of the call and reads its answer: the token, or why
/// there was none.
async fn finish(mut call: HalfSent) -> Result<String, String> {
    call.body
        .send_data(call.rest, true)
        .map_err(|e| format!("send: {e}"))?;
    let response = bounded(CALL_DEADLINE, "the answer", call.response)
        .await
        .map_err(|e| format!("response: {e}"))?;
    if let Some(status) = response.headers().get("grpc-status") {
        return Err(format!("answered grpc-status {status:?} without a message"));
    }
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = bounded(CALL_DEADLINE, "the answer's body", body.data()).await {
        bytes.extend_from_slice(&chunk.map_err(|e| format!("body: {e}"))?);
    }
    let trailers = bounded(CALL_DEADLINE, "the trailers", body.trailers())
        .await
        .map_err(|e| format!("trailers: {e}"))?
        .ok_or("no trailers")?;
    let status = trailers
        .get("grpc-status")
        .map(|s| s.to_str().unwrap().to_owned());
    if status.as_deref() != Some("0") {
        return Err(format!("grpc-status {status:?}"));
    }
    let answer = pb::TokenizeResponse::decode(bytes.get(5..).ok_or("short answer")?)
        .map_err(|e| format!("decoding the answer: {e}"))?;
    match answer.results.first().and_then(|r| r.outcome.clone()) {
        Some(pb::tokenize_result::Outcome::Token(t)) => Ok(t),
        other => Err(format!("no token: {other:?}")),
    }
}

/// Tokenizes until a call fails; returns every (token, value index) a call
/// answered, and the failure.
async fn load(
    mut client: VaultClient<tonic::transport::Channel>,
    worker: usize,
    stopped: Arc<AtomicBool>,
) -> (Vec<(String, usize)>, Option<tonic::Status>) {
    let mut acknowledged = Vec::new();
    let mut n = worker * 1000;
    loop {
        if stopped.load(Ordering::SeqCst) {
            return (acknowledged, None);
        }
        let batch: Vec<usize> = (n..n + 10).collect();
        n += 10;
        let fields = batch
            .iter()
            .map(|&i| field(pb::FieldKind::Phone, &phone(i)))
            .collect();
        let answer = tokio::time::timeout(
            CALL_DEADLINE,
            client.tokenize(pb::TokenizeRequest {
                fields,
                purpose: None,
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("a tokenize call hung during the drain"));
        match answer {
            Ok(answer) => {
                for (result, i) in answer.into_inner().results.into_iter().zip(batch) {
                    match result.outcome {
                        Some(pb::tokenize_result::Outcome::Token(t)) => acknowledged.push((t, i)),
                        other => panic!("tokenize item failed: {other:?}"),
                    }
                }
            }
            Err(status) => return (acknowledged, Some(status)),
        }
    }
}

/// Every acknowledged token reveals its value after a restart.
async fn all_revealed(server: &ServerProcess, pki: &Pki, acknowledged: &[(String, usize)]) {
    let mut support = VaultClient::new(channel(&server.addr, &pki.client_tls("support")).await);
    for chunk in acknowledged.chunks(500) {
        let tokens: Vec<String> = chunk.iter().map(|(t, _)| t.clone()).collect();
        let revealed = detokenize(&mut support, "callback", &tokens).await.unwrap();
        for ((token, i), got) in chunk.iter().zip(revealed) {
            let got = got.unwrap_or_else(|e| panic!("acknowledged token {token} lost: {e:?}"));
            assert_eq!(got.value, canonical(*i), "token {token}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_load_finishes_calls_in_flight_refuses_new_ones_and_loses_no_acknowledged_token(
) {
    let s = setup(30);
    let server = start_with_config(&s.config, &s.log).unwrap();
    let addr = server.addr.clone();

    // A health watch, open before the signal.
    let mut health = HealthClient::new(channel(&addr, &s.pki.client_tls("orders")).await);
    let mut watch = bounded(
        CALL_DEADLINE,
        "a health watch",
        health.watch(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .unwrap()
    .into_inner();
    let first = bounded(CALL_DEADLINE, "the first status", watch.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    // A call in flight at the signal: its message is half sent.
    let in_flight = half_sent_call(&addr, &s.pki.dir, &phone(7)).await;

    // Tokenizing clients, each on its own connection.
    let stopped = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..4 {
        let client = VaultClient::new(channel(&addr, &s.pki.client_tls("orders")).await);
        workers.push(tokio::spawn(load(client, worker, stopped.clone())));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;

    server.signal_term();
    log_shows(&s.log, "draining").await;

    // Health: NOT_SERVING to the watch, which then ends (it does not hold
    // the drain open).
    let mut statuses = Vec::new();
    while let Some(status) = bounded(CALL_DEADLINE, "the health watch", watch.message())
        .await
        .unwrap_or(None)
    {
        statuses.push(status.status);
    }
    assert!(
        statuses.contains(&(ServingStatus::NotServing as i32)),
        "the watch saw {statuses:?}"
    );

    // No new connection.
    let refused = try_channel(&addr, &s.pki.client_tls("orders")).await;
    assert!(
        refused.is_err(),
        "a new connection was accepted while draining"
    );

    // The call in flight is answered, with a token.
    let token = finish(in_flight).await.unwrap();

    // The load ends: calls refused from the signal on, none hung.
    let mut acknowledged = vec![(token, 7)];
    for worker in workers {
        let (tokens, failure) = bounded(CALL_DEADLINE, "a load worker", worker)
            .await
            .unwrap();
        assert!(!tokens.is_empty(), "a worker never got an answer");
        if let Some(status) = failure {
            // Refused by the drain: the connection closed (UNAVAILABLE,
            // UNKNOWN, CANCELLED), or a call sent as the GOAWAY arrived,
            // which tonic reports as INTERNAL "h2 protocol error" (h2's
            // NO_ERROR reason maps to INTERNAL).
            let refused = matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
            ) || (status.code() == tonic::Code::Internal
                && status.message().contains("h2 protocol error"));
            assert!(refused, "a call failed otherwise than refused: {status:?}");
        }
        acknowledged.extend(tokens);
    }
    stopped.store(true, Ordering::SeqCst);

    let status = server.wait_exit(EXIT_DEADLINE);
    let logs = read_log(&s.log);
    assert!(status.success(), "{status:?}\n{logs}");
    // The store closed with a checkpoint before the server said it had.
    let closed = logs.find("storage closed: checkpointed");
    let said = logs.find("shut down: the store is closed and checkpointed");
    assert!(
        closed.is_some() && said.is_some() && closed < said,
        "{logs}"
    );
    assert!(logs.contains("cut_off=0"), "{logs}");

    // Every answered token is there after a restart.
    let server = start_with_config(&s.config, &s.log).unwrap();
    all_revealed(&server, &s.pki, &acknowledged).await;
    let status = server.terminate(EXIT_DEADLINE);
    assert!(status.success(), "{status:?}");
    let logs = read_log(&s.log);
    for i in 0..100 {
        assert!(!logs.contains(&canonical(i)), "the log holds a value");
    }
}

/// One health Check on `send`: its grpc-status and, when OK, the status
/// it reports; `None` once the connection takes no more calls.
async fn check_once(send: &h2::client::SendRequest<Bytes>) -> Option<(u32, Option<i32>)> {
    use tonic_health::pb::HealthCheckResponse;
    let mut ready = bounded(CALL_DEADLINE, "a stream slot", send.clone().ready())
        .await
        .ok()?;
    let (response, mut body) = ready
        .send_request(grpc_request("/grpc.health.v1.Health/Check"), false)
        .ok()?;
    // An empty HealthCheckRequest: the server as a whole.
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .ok()?;
    let response = bounded(CALL_DEADLINE, "the check's answer", response)
        .await
        .ok()?;
    let code = |v: &http::HeaderValue| v.to_str().unwrap().parse::<u32>().unwrap();
    if let Some(status) = response.headers().get("grpc-status") {
        return Some((code(status), None));
    }
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = bounded(CALL_DEADLINE, "the check's body", body.data()).await {
        bytes.extend_from_slice(&chunk.ok()?);
    }
    let trailers = bounded(CALL_DEADLINE, "the check's trailers", body.trailers())
        .await
        .ok()??;
    let status = HealthCheckResponse::decode(bytes.get(5..)?).ok()?.status;
    Some((code(trailers.get("grpc-status")?), Some(status)))
}

/// A Check sent on a connection opened before SIGTERM, until the server
/// takes no more calls on it, is answered SERVING or NOT_SERVING; never
/// NOT_FOUND ("service not registered": the statuses are cleared to end
/// the health watches, which must come after the GOAWAY).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_on_an_open_connection_during_a_drain_never_answer_not_found() {
    let s = setup(30);
    let server = start_with_config(&s.config, &s.log).unwrap();
    let conn = h2_connect(&server.addr, &s.pki.dir, "orders")
        .await
        .unwrap();
    let stopped = Arc::new(AtomicBool::new(false));
    let mut checkers = Vec::new();
    for _ in 0..4 {
        let send = conn.send.clone();
        let stopped = stopped.clone();
        checkers.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            while !stopped.load(Ordering::SeqCst) {
                match check_once(&send).await {
                    Some(answer) => answers.push(answer),
                    None => break,
                }
            }
            answers
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.signal_term();
    let status = tokio::task::spawn_blocking(move || server.wait_exit(EXIT_DEADLINE))
        .await
        .unwrap();
    stopped.store(true, Ordering::SeqCst);
    let logs = read_log(&s.log);
    assert!(status.success(), "{status:?}\n{logs}");
    let mut answers = Vec::new();
    for checker in checkers {
        answers.extend(bounded(CALL_DEADLINE, "a checker", checker).await.unwrap());
    }
    let serving = Some(ServingStatus::Serving as i32);
    let not_serving = Some(ServingStatus::NotServing as i32);
    assert!(answers.contains(&(0, serving)), "{answers:?}");
    // Checks the server took between the signal and its final GOAWAY.
    assert!(answers.contains(&(0, not_serving)), "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|a| *a == (0, serving) || *a == (0, not_serving)),
        "a check during the drain answered otherwise: {:?}",
        answers
            .iter()
            .filter(|a| **a != (0, serving) && **a != (0, not_serving))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_past_the_drain_deadline_is_cut_off_and_the_server_exits_zero() {
    let s = setup(1);
    let server = start_with_config(&s.config, &s.log).unwrap();
    let stalled = half_sent_call(&server.addr, &s.pki.dir, &phone(3)).await;
    // The server has the call (its request id is counted) before the signal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    server.signal_term();
    let status = tokio::task::spawn_blocking(move || server.wait_exit(EXIT_DEADLINE))
        .await
        .unwrap();
    let logs = read_log(&s.log);
    assert!(status.success(), "{status:?}\n{logs}");
    assert!(
        logs.contains("drain deadline (shutdown.drain_timeout_secs) passed"),
        "{logs}"
    );
    assert!(logs.contains("cut_off=1"), "{logs}");
    // It waited for the call, about the deadline.
    assert!(signalled.elapsed() >= Duration::from_secs(1));
    // Never answered.
    assert!(finish(stalled).await.is_err());
    // The store closed whole: the next start serves.
    let server = start_with_config(&s.config, &s.log).unwrap();
    let mut orders = VaultClient::new(channel(&server.addr, &s.pki.client_tls("orders")).await);
    let token = common::tokens_for(&mut orders, vec![field(pb::FieldKind::Phone, &phone(3))]).await;
    assert_eq!(token.len(), 1);
    assert!(server.terminate(EXIT_DEADLINE).success());
}

/// A SIGHUP during startup (a certificate hook's `systemctl reload`) does
/// not kill the server, and a SIGTERM then is not lost: the server drains
/// as soon as it serves and exits 0.
#[test]
fn a_sighup_and_a_sigterm_during_startup_neither_kill_the_server_nor_get_lost() {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = std::fs::File::create(tmp.path().join("server.log")).unwrap();
    let mut child = std::process::Command::new(common::process::BIN)
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let signal = |name: &str| {
        assert!(std::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .unwrap()
            .success());
    };
    // The banner comes before the store and the audit trail are opened.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let banner = lines.next().unwrap().unwrap();
    assert!(banner.starts_with("fieldvault dev mode"), "{banner}");
    signal("-HUP");
    signal("-TERM");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > EXIT_DEADLINE {
            let _ = child.kill();
            panic!("the server did not exit after SIGTERM during startup");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let printed: Vec<String> = lines.map_while(Result::ok).collect();
    let logs = read_log(&tmp.path().join("server.log"));
    assert!(status.success(), "{status:?}\n{printed:?}\n{logs}");
    assert!(logs.contains("draining"), "{logs}");
}
