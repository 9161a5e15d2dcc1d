//! Crash-consistency harness: the real server binary under concurrent
//! tokenize load (deterministic phones, random addresses) is SIGKILLed at a
//! random moment, restarted on the same data dir, and checked:
//! - every acknowledged token detokenizes to exactly its value;
//! - a deterministic value still maps to one token, across all rounds;
//! - no token is issued twice, across every round and kill: a random-mode
//!   address token never comes back, a phone token always stands for the
//!   same phone (tokens encrypt a sequence number the store never reuses);
//! - records and indexes agree (the store's integrity check, at the end).
//!
//! Then one disk-full round, on a fresh data dir: the server runs with a
//! 1 MiB file size limit under the same load. The first write past it fails
//! (EFBIG, as on a full disk); every later write must be refused with
//! UNAVAILABLE, health must report NOT_SERVING and the process must stay up.
//! Restarted without the limit, it must hold every token acknowledged
//! before the failure, and its records and indexes must agree.
//!
//! `cargo test --test crash` runs 20 rounds; `-- --rounds N` runs more.
//! The harness is the test named `crash`: like a libtest harness it honours
//! name filters (`cargo test foo` skips it), `--exact`, `--skip`, `--list`
//! and `--ignored`. It never hangs: every call has a deadline, every wait a
//! bound, and a watchdog ends the run past `--time-limit SECS` (default
//! 60 + 15 per round) or when one phase takes longer than 180 s, printing
//! what it was waiting for, the tail of the server log and the data dir.
//! Later issues add rounds killed mid-rewrap and mid-erase: a round is
//! "start, load with a workload, kill -9, restart, verify".
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::process::{start_with_config, start_with_config_and_file_limit, ServerProcess};
use common::{bounded, write_config_file, Pki};
use fieldvault::client::ClientTls;
use fieldvault::grpc::pb::{self, FieldKind};
use fieldvault::store::{IntegrityReport, SledConfig, SledStore, Store};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const POLICY: &str = r#"
version = 1
[[rules]]
callers = ["spiffe://fieldvault.dev/orders"]
action = "tokenize"
kinds = ["phone", "address"]
[[rules]]
callers = ["spiffe://fieldvault.dev/support"]
action = "detokenize"
kinds = ["phone", "address"]
purposes = ["crash-check"]
reveal = "full"
"#;

/// How many distinct deterministic phone values the load cycles through.
const PHONE_POOL: u64 = 40;
const WRITERS: usize = 4;
/// How long a writer may take to notice that its server was killed.
const WRITER_STOP_DEADLINE: Duration = Duration::from_secs(30);

/// A small xorshift generator: rounds differ, and a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

struct Harness {
    dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    pki: Pki,
}

impl Harness {
    fn new(dir: &Path) -> Self {
        let pki = Pki::new(&dir.join("pki"));
        let config = write_config_file(
            dir,
            &pki,
            POLICY,
            (&dir.join("data"), &dir.join("data/audit.log")),
            "cache_capacity_mib = 16",
            "[token_modes]\nphone = \"deterministic\"\naddress = \"random\"",
        );
        Self {
            dir: dir.to_path_buf(),
            config,
            log: dir.join("server.log"),
            pki,
        }
    }

    fn start(&self) -> ServerProcess {
        start_with_config(&self.config, &self.log)
            .unwrap_or_else(|e| panic!("server did not start: {e}"))
    }

    fn start_with_file_limit(&self, max_file_bytes: u64) -> ServerProcess {
        start_with_config_and_file_limit(&self.config, &self.log, max_file_bytes)
            .unwrap_or_else(|e| panic!("server did not start: {e}"))
    }

    fn tls(&self, name: &str) -> ClientTls {
        self.pki.client_tls(name)
    }

    /// Opens the store (the server must be stopped) and compares records
    /// and indexes.
    async fn check_integrity(&self) -> IntegrityReport {
        let store = SledStore::open(&SledConfig {
            path: self.dir.join("data/store"),
            cache_capacity_bytes: 16 << 20,
            max_queued_writes: fieldvault::store::DEFAULT_MAX_QUEUED_WRITES,
        })
        .unwrap();
        let report = store.check_integrity().await.unwrap();
        assert!(
            report.problems.is_empty(),
            "integrity problems: {:?}",
            report.problems
        );
        report
    }
}

/// What the server acknowledged: token -> (kind, exact revealed value).
type Acked = Arc<Mutex<HashMap<String, (FieldKind, String)>>>;

fn phone_value(n: u64) -> (String, String) {
    let n = n % PHONE_POOL;
    (format!("+86 138 0000 {n:04}"), format!("+861380000{n:04}"))
}

/// Tokenizes until a call fails (the server was killed, or refused the
/// write); records every acknowledged token. Returns the number of calls
/// acknowledged and the status of the call that failed.
async fn writer(
    addr: String,
    tls: ClientTls,
    seed: u64,
    acked: Acked,
) -> (u64, Option<tonic::Status>) {
    let Ok(channel) = common::try_channel(&addr, &tls).await else {
        return (0, None);
    };
    let mut client = pb::vault_client::VaultClient::new(channel);
    let mut rng = Rng(seed | 1);
    let mut calls = 0;
    loop {
        let n = 1 + (rng.next() % 5) as usize;
        let mut expected = Vec::with_capacity(n);
        let mut fields = Vec::with_capacity(n);
        for _ in 0..n {
            if rng.next() % 2 == 0 {
                let (raw, canonical) = phone_value(rng.next());
                fields.push(pb::Field {
                    kind: FieldKind::Phone as i32,
                    value: raw,
                    ..Default::default()
                });
                expected.push((FieldKind::Phone, canonical));
            } else {
                let value = format!(
                    "{} Fakestreet Lane, Testville {}",
                    rng.next() % 10_000,
                    seed
                );
                fields.push(pb::Field {
                    kind: FieldKind::Address as i32,
                    value: value.clone(),
                    ..Default::default()
                });
                expected.push((FieldKind::Address, value));
            }
        }
        let request = pb::TokenizeRequest {
            fields,
            purpose: None,
        };
        let response = match client.tokenize(request).await {
            Ok(response) => response,
            // Unacknowledged: its values prove nothing.
            Err(status) => return (calls, Some(status)),
        };
        calls += 1;
        let mut acked = acked.lock().unwrap();
        for (result, value) in response.into_inner().results.into_iter().zip(expected) {
            match result.outcome {
                Some(pb::tokenize_result::Outcome::Token(t)) => note_answer(&mut acked, t, value),
                other => panic!("an item failed while the server was up: {other:?}"),
            }
        }
    }
}

/// Records one answered token, across every round and kill: a token is
/// never issued twice. An address (random mode) gets a new token on every
/// call, so any address token seen before was issued twice; a phone
/// (deterministic mode) keeps its token, so a phone token seen before must
/// stand for the same phone.
fn note_answer(
    acked: &mut HashMap<String, (FieldKind, String)>,
    token: String,
    value: (FieldKind, String),
) {
    match acked.get(&token) {
        None => {
            acked.insert(token, value);
        }
        Some(previous) if previous.0 == FieldKind::Phone && *previous == value => {}
        Some(previous) => panic!(
            "token {token} was issued twice: for a {:?} and now for a {:?}",
            previous.0, value.0
        ),
    }
}

/// Starts `WRITERS` concurrent [`writer`]s against `server`.
fn spawn_writers(
    harness: &Harness,
    server: &ServerProcess,
    rng: &mut Rng,
    acked: &Acked,
) -> Vec<tokio::task::JoinHandle<(u64, Option<tonic::Status>)>> {
    (0..WRITERS)
        .map(|w| {
            tokio::spawn(writer(
                server.addr.clone(),
                harness.tls("orders"),
                rng.next() ^ w as u64,
                acked.clone(),
            ))
        })
        .collect()
}

/// Detokenizes every acknowledged token, 500 a call, and hands each one
/// with its outcome to `check`.
async fn detokenize_acked(
    addr: &str,
    tls: &ClientTls,
    acked: &HashMap<String, (FieldKind, String)>,
    mut check: impl FnMut(&str, Option<pb::detokenize_result::Outcome>),
) {
    let mut client = common::connect(addr, tls).await;
    let tokens: Vec<&String> = acked.keys().collect();
    for chunk in tokens.chunks(500) {
        let response = client
            .detokenize(pb::DetokenizeRequest {
                tokens: chunk.iter().map(|t| (*t).clone()).collect(),
                purpose: "crash-check".into(),
                justification: "crash harness".into(),
            })
            .await
            .unwrap()
            .into_inner();
        for (token, result) in chunk.iter().zip(response.results) {
            check(token, result.outcome);
        }
    }
}

/// Every acknowledged token must come back with exactly its value, and each
/// deterministic value must have exactly one token.
async fn verify(addr: &str, tls: &ClientTls, acked: &HashMap<String, (FieldKind, String)>) {
    detokenize_acked(addr, tls, acked, |token, outcome| {
        let (kind, value) = &acked[token];
        match outcome {
            Some(pb::detokenize_result::Outcome::Revealed(v)) => {
                assert_eq!(v.kind, *kind as i32, "{token}");
                assert_eq!(&v.value, value, "acknowledged token {token} lost its value");
            }
            other => panic!("acknowledged token {token} did not survive: {other:?}"),
        }
    })
    .await;
    let mut per_phone: HashMap<&str, &str> = HashMap::new();
    for (token, (kind, value)) in acked {
        if *kind == FieldKind::Phone {
            let first = per_phone.entry(value.as_str()).or_insert(token.as_str());
            assert_eq!(
                *first,
                token.as_str(),
                "a deterministic value has two tokens"
            );
        }
    }
}

/// After a storage failure: each acknowledged token reveals its value or
/// is UNAVAILABLE for its item; returns how many of each.
async fn verify_while_writes_fail(
    addr: &str,
    tls: &ClientTls,
    acked: &HashMap<String, (FieldKind, String)>,
) -> (usize, usize) {
    let (mut revealed, mut unavailable) = (0, 0);
    detokenize_acked(addr, tls, acked, |token, outcome| match outcome {
        Some(pb::detokenize_result::Outcome::Revealed(v)) => {
            assert_eq!(&v.value, &acked[token].1, "{token} revealed another value");
            revealed += 1;
        }
        Some(pb::detokenize_result::Outcome::Error(e))
            if e.code == tonic::Code::Unavailable as i32 =>
        {
            unavailable += 1;
        }
        other => panic!("acknowledged token {token}, storage failed: {other:?}"),
    })
    .await;
    (revealed, unavailable)
}

/// Tokens each kill round waits for before its random wait and the kill.
const MIN_ACKED_PER_ROUND: usize = 20;

/// The one test this harness runs, as libtest would name it.
const TEST_NAME: &str = "crash";
/// Longest a single phase (start, load, kill, verify, ...) may take.
const PHASE_LIMIT: Duration = Duration::from_secs(180);

#[derive(Debug, PartialEq)]
enum Mode {
    /// `--list`: print the test like libtest, run nothing.
    List {
        listed: bool,
    },
    /// Filtered out (a name filter that does not match, `--skip`, `--ignored`).
    Skip,
    Run {
        rounds: u32,
        time_limit: Duration,
    },
}

/// Reads libtest's arguments (filters, `--exact`, `--skip`, `--list`,
/// `--ignored`; the rest are accepted and ignored) and the harness's own
/// (`--rounds N`, `--time-limit SECS`).
fn parse_args(args: &[String]) -> Result<Mode, String> {
    let mut filters = Vec::new();
    let mut skips = Vec::new();
    let (mut exact, mut list, mut only_ignored) = (false, false, false);
    let (mut rounds, mut time_limit) = (20u32, None);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .cloned()
                .ok_or_else(|| format!("{name} takes a value"))
        };
        match arg.as_str() {
            "--rounds" => {
                rounds = value("--rounds")?
                    .parse()
                    .map_err(|e| format!("--rounds: {e}"))?
            }
            "--time-limit" => {
                let secs: u64 = value("--time-limit")?
                    .parse()
                    .map_err(|e| format!("--time-limit: {e}"))?;
                time_limit = Some(Duration::from_secs(secs));
            }
            "--exact" => exact = true,
            "--list" => list = true,
            "--ignored" => only_ignored = true,
            "--skip" => skips.push(value("--skip")?),
            a if a.starts_with("--skip=") => skips.push(a["--skip=".len()..].to_owned()),
            // libtest options with a value.
            "--test-threads" | "--color" | "--format" | "--logfile" | "-Z" | "--shuffle-seed" => {
                value(arg)?;
            }
            a if a.starts_with('-') => {} // other libtest flags: --nocapture, -q, ...
            filter => filters.push(filter.to_owned()),
        }
    }
    let matches = |pattern: &String| {
        if exact {
            TEST_NAME == pattern
        } else {
            TEST_NAME.contains(pattern.as_str())
        }
    };
    let selected = (filters.is_empty() || filters.iter().any(matches))
        && !skips.iter().any(matches)
        && !only_ignored; // the harness is not an ignored test
    if list {
        return Ok(Mode::List { listed: selected });
    }
    if !selected {
        return Ok(Mode::Skip);
    }
    let time_limit = time_limit.unwrap_or(Duration::from_secs(60 + 15 * u64::from(rounds)));
    Ok(Mode::Run { rounds, time_limit })
}

/// What the harness is doing now, for the watchdog.
static PHASE: Mutex<Option<(String, Instant)>> = Mutex::new(None);

fn phase(what: impl Into<String>) {
    if let Ok(mut p) = PHASE.lock() {
        *p = Some((what.into(), Instant::now()));
    }
}

/// Ends the process, loudly, if the run takes longer than `limit` or one
/// phase longer than [`PHASE_LIMIT`]: prints what it was waiting for and
/// the tail of the server log, kills the servers, exits non-zero.
fn start_watchdog(limit: Duration, dir: PathBuf) {
    let started = Instant::now();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(250));
        let (what, since) = PHASE
            .lock()
            .ok()
            .and_then(|p| p.clone())
            .unwrap_or_else(|| ("starting".to_owned(), started));
        let why = if started.elapsed() > limit {
            format!("the run took longer than its time limit of {limit:?}")
        } else if since.elapsed() > PHASE_LIMIT {
            format!("one phase took longer than {PHASE_LIMIT:?}")
        } else {
            continue;
        };
        let mut log_tail = String::new();
        for name in ["server.log", "disk-full/server.log"] {
            if let Ok(log) = std::fs::read_to_string(dir.join(name)) {
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(20)..].join("\n");
                log_tail.push_str(&format!("--- last lines of {name}:\n{tail}\n"));
            }
        }
        eprintln!(
            "crash harness FAILED: {why}.\n  waiting for: {what} (for {:.1}s, {:.1}s into the run)\n  \
             data dir kept: {}\n{log_tail}",
            since.elapsed().as_secs_f64(),
            started.elapsed().as_secs_f64(),
            dir.display()
        );
        common::process::kill_live_servers();
        std::process::exit(2);
    });
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match parse_args(&args) {
        Ok(mode) => mode,
        Err(e) => {
            eprintln!("crash harness: {e}");
            std::process::exit(2);
        }
    };
    let (rounds, time_limit) = match mode {
        Mode::List { listed } => {
            if listed {
                println!("{TEST_NAME}: test");
            }
            return;
        }
        Mode::Skip => {
            println!("\nrunning 0 tests\n\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 1 filtered out\n");
            return;
        }
        Mode::Run { rounds, time_limit } => (rounds, time_limit),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(rounds, time_limit));
}

async fn run(rounds: u32, time_limit: Duration) {
    let tmp = tempfile::tempdir().unwrap();
    start_watchdog(time_limit, tmp.path().to_path_buf());
    phase("making the certificates and config");
    let harness = Harness::new(tmp.path());

    let acked: Acked = Arc::new(Mutex::new(HashMap::new()));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("crash harness: {rounds} rounds, seed {seed}");
    let mut rng = Rng(seed | 1);
    let started = Instant::now();
    for round in 0..rounds {
        phase(format!("round {round}: the server to start"));
        let server = harness.start();
        let acked_before = acked.lock().unwrap().len();
        let writers = spawn_writers(&harness, &server, &mut rng, &acked);
        // Let the load run until the round has something to lose (a round
        // killed before its first answer checks nothing new), then a random
        // while longer, then kill -9 mid-flight.
        phase(format!(
            "round {round}: {MIN_ACKED_PER_ROUND} tokens acknowledged before the kill"
        ));
        bounded(
            Duration::from_secs(60),
            "the first acknowledged tokens of the round",
            async {
                while acked.lock().unwrap().len() < acked_before + MIN_ACKED_PER_ROUND {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        )
        .await;
        phase(format!("round {round}: load before the kill"));
        tokio::time::sleep(Duration::from_millis(rng.next() % 500)).await;
        phase(format!("round {round}: kill -9 of the server"));
        server.kill9();
        let mut calls = 0;
        for (i, w) in writers.into_iter().enumerate() {
            phase(format!("round {round}: writer {i} to stop after the kill"));
            calls += bounded(WRITER_STOP_DEADLINE, "a writer to stop after the kill", w)
                .await
                .unwrap()
                .0;
        }

        phase(format!("round {round}: the server to restart"));
        let server = harness.start();
        let snapshot = acked.lock().unwrap().clone();
        phase(format!(
            "round {round}: detokenize of {} acknowledged tokens",
            snapshot.len()
        ));
        verify(&server.addr, &harness.tls("support"), &snapshot).await;
        drop(server);
        println!(
            "round {round}: {calls} calls acknowledged before the kill; {} tokens verified",
            snapshot.len()
        );
    }

    // Finally, the store itself: records and indexes agree.
    phase("the integrity check of the store");
    let report = harness.check_integrity().await;
    let acked = acked.lock().unwrap().len();
    assert!(report.records as usize >= acked);
    assert!(
        acked > rounds as usize,
        "the load acknowledged too little to prove anything"
    );
    println!(
        "crash harness: {acked} acknowledged tokens, {} records, {} index entries, {} deterministic; {:.1}s",
        report.records,
        report.index_entries,
        report.deterministic_entries,
        started.elapsed().as_secs_f64()
    );

    phase("disk-full round: certificates and config");
    disk_full_round(&Harness::new(&tmp.path().join("disk-full")), &mut rng).await;
    println!("crash: {rounds} passed, 0 failed; disk-full round passed");
}

/// The health status the server reports for `service` ("" for the whole
/// server).
async fn health(client: &mut HealthClient<tonic::transport::Channel>, service: &str) -> i32 {
    client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

/// See the module doc: a failed write is fatal for writes, never for the
/// process, and loses nothing that was acknowledged.
async fn disk_full_round(harness: &Harness, rng: &mut Rng) {
    let acked: Acked = Arc::new(Mutex::new(HashMap::new()));
    phase("disk-full round: the server to start with a 1 MiB file size limit");
    let mut server = harness.start_with_file_limit(1 << 20);
    let writers = spawn_writers(harness, &server, rng, &acked);
    // Each writer runs until its first refused call.
    let mut calls = 0;
    for (i, w) in writers.into_iter().enumerate() {
        phase(format!(
            "disk-full round: writer {i} to be refused once the file size limit is reached"
        ));
        let (n, refused) = bounded(
            Duration::from_secs(120),
            "the file size limit to stop the writes",
            w,
        )
        .await
        .unwrap();
        calls += n;
        let status = refused.expect("a writer could not connect");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    }
    assert!(calls > 0, "nothing was acknowledged before the limit");
    assert!(server.is_running(), "a failed write stopped the server");

    phase("disk-full round: health to report NOT_SERVING");
    let tls = harness.tls("orders");
    let mut health_client = HealthClient::new(common::channel(&server.addr, &tls).await);
    let mut reported = Vec::new();
    for _ in 0..40 {
        reported = vec![
            health(&mut health_client, "").await,
            health(&mut health_client, "fieldvault.v1.Vault").await,
        ];
        if reported
            .iter()
            .all(|s| *s == ServingStatus::NotServing as i32)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        reported,
        vec![ServingStatus::NotServing as i32; 2],
        "health still reports serving after a failed write"
    );
    let one_address = || pb::TokenizeRequest {
        fields: vec![pb::Field {
            kind: FieldKind::Address as i32,
            value: "1 Fakestreet Lane, Testville".into(),
            ..Default::default()
        }],
        purpose: None,
    };
    phase("disk-full round: a write after the failure");
    let mut client = common::connect(&server.addr, &tls).await;
    let status = client
        .tokenize(one_address())
        .await
        .expect_err("a write was accepted after a failed write");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    // The server handled SIGXFSZ and typed the EFBIG it got.
    assert!(
        status.message().contains("file size limit reached"),
        "{status:?}"
    );
    // Reads go on: every acknowledged token reveals its value, or (where
    // the failed storage cannot read it now) answers UNAVAILABLE for that
    // item. Never DATA_LOSS: nothing is lost, a restart brings it back.
    let snapshot = acked.lock().unwrap().clone();
    phase(format!(
        "disk-full round: detokenize of {} acknowledged tokens before the restart",
        snapshot.len()
    ));
    let (revealed, unavailable) =
        verify_while_writes_fail(&server.addr, &harness.tls("support"), &snapshot).await;
    server.kill9();

    // Restarted with room on the disk: everything acknowledged is there,
    // and writes work again.
    phase("disk-full round: the server to restart without the limit");
    let server = harness.start();
    let snapshot = acked.lock().unwrap().clone();
    phase(format!(
        "disk-full round: detokenize of {} acknowledged tokens",
        snapshot.len()
    ));
    verify(&server.addr, &harness.tls("support"), &snapshot).await;
    phase("disk-full round: a write after the restart");
    let mut client = common::connect(&server.addr, &tls).await;
    client
        .tokenize(one_address())
        .await
        .expect("writes work again after a restart");
    drop(server);
    phase("disk-full round: the integrity check of the store");
    let report = harness.check_integrity().await;
    assert!(report.records as usize > snapshot.len());
    println!(
        "disk-full round: while writes failed, {revealed} acknowledged tokens revealed and \
         {unavailable} unavailable for now"
    );
    println!(
        "disk-full round: {calls} calls acknowledged before the 1 MiB file limit; then writes \
         refused with UNAVAILABLE, health NOT_SERVING, server up; after a restart {} tokens \
         verified, {} records, integrity clean",
        snapshot.len(),
        report.records
    );
}
