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
//! Then, on the same store and under a lighter load, the key lifecycle:
//! - rewrap rounds: rotate the data key, start a rewrap at a rate that
//!   makes it last about [`JOB_SECONDS`], kill -9 at a random moment while
//!   it runs (status running, records left), once or twice; after each
//!   restart the job must resume by itself without losing the progress it
//!   had stored (`done + remaining` unchanged), keep moving records and
//!   finish. Then no record is left on an older version (counters 0),
//!   retiring the older versions succeeds, every acknowledged token still
//!   detokenizes (their old keys are destroyed now) and the integrity
//!   check (records, indexes, key-version counters) is clean;
//! - an index-rebuild round: the same with RotateIndexKey; each pool phone
//!   tokenized again after the restart, while the rebuild runs and after
//!   it, gets the token it had; the job retires the older index key;
//! - master-key rounds: a new key file is written and the server killed
//!   before RotateMasterKey, during it or right after it (in turn). Then
//!   the server is started with the old key file and with the new one:
//!   exactly one must come up and serve every acknowledged token (the new
//!   one when the call was answered, the old one when it was never made);
//!   the other start must exit saying the master key is wrong (for the old
//!   key after a rotation: naming `rotate-master`).
//!
//! Then one disk-full round, on a fresh data dir: the server runs with a
//! 1 MiB file size limit under the same load. The first write past it fails
//! (EFBIG, as on a full disk); every later write must be refused with
//! UNAVAILABLE, health must report NOT_SERVING and the process must stay up.
//! Restarted without the limit, it must hold every token acknowledged
//! before the failure, and its records and indexes must agree.
//!
//! The audit trail (issue 13): after the rounds above, the trail they
//! wrote must verify as one chain across every kill. Then, on stores of
//! their own:
//! - audit kill rounds: concurrent clients reveal (and tokenize) while the
//!   server is SIGKILLed at a random moment, the trail rotating every
//!   64 KiB; the `x-request-id` of every call answered OK is kept. After the
//!   restart and after a clean stop, each has its event in the trail
//!   (allowed, with its tokens), every file verifies with the library
//!   verifier, no value appears, and the restarted server continued the
//!   chain (sequence numbers run on, one `audit.chain_start`);
//! - an audit full-disk round: a file-size limit set on the running server
//!   (prlimit) that the audit file reaches and the server's log is filled
//!   up to (the log shares the full disk); once reveals fill it, each
//!   is refused UNAVAILABLE within 1.5 s (the issue's 1 s, with slack for a
//!   loaded machine), reveals nothing, health reports NOT_SERVING and no
//!   torn line is left; with the limit raised, reveals work again by
//!   themselves, health reports SERVING and the trail holds an
//!   `audit.sink_recovered` event and verifies.
//!
//! Abuse controls (issue 14), on a store of their own: abuse kill rounds.
//! Support reveals under a day quota (a durable counter charged per call)
//! while an admin freezes and unfreezes callers and creates canary tokens;
//! the server is SIGKILLed at a random moment. After each restart the
//! quota count is at least every value answered (a value is counted before
//! it leaves) and at most every value asked for; each freeze target is as
//! last answered (or as the operation in flight left it); every canary
//! answered is listed. At the end the trail verifies, holds no value, and
//! the store's integrity check is clean.
//!
//! Data lifecycle (issue 15), on a store of its own: lifecycle kill rounds.
//! Tokenize load while two deleters delete acknowledged tokens and an
//! eraser erases pool phones (deterministic) and addresses (random); the
//! server is SIGKILLed at a random moment. After each restart no token
//! whose deletion was answered detokenizes, every acknowledged token never
//! deleted reveals its value, a call in flight at the kill went one way or
//! the other, and every pool phone tokenized again gets a token that was
//! never deleted. An erasure's answer must name every token of its value
//! acknowledged before it was sent. At the end the trail verifies, holds
//! no value, and the integrity check is clean.
//!
//! Approved workflows (issue 16), on a store of their own: grant kill
//! rounds. A grant of 200 reveals is requested (by an operator or by the
//! workflow) and approved by two approvers; concurrent fulfilment clients
//! reveal 1 to 5 addresses per call under it and the server is SIGKILLed
//! mid-use. After the restart the grant counts at least every value
//! answered and at most that plus the values of the calls in flight at the
//! kill; the clients go on until it is exhausted (exactly the units left
//! are answered, so the total never passes the grant) or, in one round,
//! until it is revoked (refused from the next call on, and after a kill
//! and restart too). At the end the trail verifies, every answered reveal
//! has its event naming the grant and its units, no file of the data dir
//! (nor the server log) holds a value, and the integrity check is clean.
//!
//! `cargo test --test crash` runs 20 kill rounds, then 3 rewrap rounds, 1
//! index-rebuild round, 6 master-key rounds, the disk-full round, 4 audit
//! kill rounds, the audit full-disk round, 3 abuse kill rounds, 3
//! lifecycle kill rounds and 3 grant kill rounds (about three minutes on 2
//! cores); `-- --rounds N` runs N kill rounds instead, `-- --audit-only`
//! only the audit, abuse, lifecycle and grant rounds, `-- --abuse-only`
//! only the abuse rounds, `-- --lifecycle-only` only the lifecycle rounds,
//! `-- --grants-only` only the grant rounds.
//! The harness is the test named `crash`: like a libtest harness it honours
//! name filters (`cargo test foo` skips it), `--exact`, `--skip`, `--list`
//! and `--ignored`. It never hangs: every call has a deadline, every wait a
//! bound, and a watchdog ends the run past `--time-limit SECS` (default
//! 180 + 15 per kill round) or when one phase takes longer than 180 s,
//! printing what it was waiting for, the tail of the server log and the
//! data dir. Later issues add rounds killed mid-erase: a round is "start,
//! load with a workload, kill -9, restart, verify".
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::process::{start_with_config, start_with_config_and_file_limit, ServerProcess};
use common::{bounded, write_config_file, Pki};
use fieldvault::client::ClientTls;
use fieldvault::crypto::MasterKey;
use fieldvault::grpc::pb::grants_client::GrantsClient;
use fieldvault::grpc::pb::key_admin_client::KeyAdminClient;
use fieldvault::grpc::pb::{self, FieldKind};
use fieldvault::store::{IntegrityReport, SledConfig, SledStore, Store};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
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
[[rules]]
callers = ["spiffe://fieldvault.dev/rotator"]
action = "keys"
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
    /// The config as first written, with [`FIRST_REWRAP_RATE`] and the
    /// first master key file: [`Harness::write_config`] edits a copy.
    config_text: String,
    first_master: PathBuf,
    /// The master key file the server starts with now.
    master: Mutex<PathBuf>,
    /// `[keys] rewrap_rate` now.
    rewrap_rate: Mutex<u32>,
    log: PathBuf,
    pki: Pki,
}

/// `[keys] rewrap_rate` as first written: the rate of an index rebuild
/// (RotateIndexKey names none). The index round sets its own.
const FIRST_REWRAP_RATE: u32 = 1000;

impl Harness {
    fn new(dir: &Path) -> Self {
        Self::with_tables(dir, "")
    }

    /// [`Harness::new`] with `tables` (such as `[audit]`) added to the config.
    fn with_tables(dir: &Path, tables: &str) -> Self {
        Self::with_policy(dir, POLICY, tables)
    }

    /// [`Harness::with_tables`] with another policy.
    fn with_policy(dir: &Path, policy: &str, tables: &str) -> Self {
        let pki = Pki::new(&dir.join("pki"));
        let config = write_config_file(
            dir,
            &pki,
            policy,
            (&dir.join("data"), &dir.join("data/audit.log")),
            "cache_capacity_mib = 16",
            &format!(
                "[token_modes]\nphone = \"deterministic\"\naddress = \"random\"\n\
                 [keys]\nrewrap_rate = {FIRST_REWRAP_RATE}\n{tables}"
            ),
        );
        let config_text = std::fs::read_to_string(&config).unwrap();
        let first_master = dir.join("master.key");
        assert!(config_text.contains(&Self::master_line(&first_master)));
        Self {
            dir: dir.to_path_buf(),
            config,
            config_text,
            master: Mutex::new(first_master.clone()),
            rewrap_rate: Mutex::new(FIRST_REWRAP_RATE),
            first_master,
            log: dir.join("server.log"),
            pki,
        }
    }

    fn master_line(master: &Path) -> String {
        format!("file = \"{}\"", master.display())
    }

    /// Writes the config to `path`, with `master` as the master key file
    /// and `rewrap_rate` as the default rate of the key jobs.
    fn write_config(&self, path: &Path, master: &Path, rewrap_rate: u32) {
        let text = self
            .config_text
            .replace(
                &Self::master_line(&self.first_master),
                &Self::master_line(master),
            )
            .replace(
                &format!("rewrap_rate = {FIRST_REWRAP_RATE}"),
                &format!("rewrap_rate = {rewrap_rate}"),
            );
        common::write(path, text.as_bytes());
    }

    /// From now on the server starts with `master` and `rewrap_rate`.
    fn reconfigure(&self, master: &Path, rewrap_rate: u32) {
        self.write_config(&self.config, master, rewrap_rate);
        *self.master.lock().unwrap() = master.to_path_buf();
        *self.rewrap_rate.lock().unwrap() = rewrap_rate;
    }

    fn master(&self) -> PathBuf {
        self.master.lock().unwrap().clone()
    }

    fn rewrap_rate(&self) -> u32 {
        *self.rewrap_rate.lock().unwrap()
    }

    /// Starts the server with the master key file `master` instead of the
    /// current one; its log (and, on failure, the error) holds only this
    /// start's lines, and is appended to the server log afterwards.
    fn try_start_with_master(&self, master: &Path, what: &str) -> Result<ServerProcess, String> {
        let config = self.dir.join("fieldvault-attempt.toml");
        self.write_config(&config, master, self.rewrap_rate());
        let log = self.dir.join("attempt.log");
        let _ = std::fs::remove_file(&log);
        let started = start_with_config(&config, &log);
        let lines = std::fs::read_to_string(&log).unwrap_or_default();
        let mut server_log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        use std::io::Write;
        writeln!(server_log, "--- crash harness: start with {what}\n{lines}").unwrap();
        started
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
/// write), waiting `pause` after each call; records every acknowledged
/// token. Returns the number of calls acknowledged and the status of the
/// call that failed.
async fn writer(
    addr: String,
    tls: ClientTls,
    seed: u64,
    acked: Acked,
    pause: Duration,
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
        {
            let mut acked = acked.lock().unwrap();
            for (result, value) in response.into_inner().results.into_iter().zip(expected) {
                match result.outcome {
                    Some(pb::tokenize_result::Outcome::Token(t)) => {
                        note_answer(&mut acked, t, value)
                    }
                    other => panic!("an item failed while the server was up: {other:?}"),
                }
            }
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
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

type Writers = Vec<tokio::task::JoinHandle<(u64, Option<tonic::Status>)>>;

/// Starts `WRITERS` concurrent [`writer`]s against `server`, each waiting
/// `pause` between its calls.
fn spawn_writers(
    harness: &Harness,
    server: &ServerProcess,
    rng: &mut Rng,
    acked: &Acked,
    pause: Duration,
) -> Writers {
    (0..WRITERS)
        .map(|w| {
            tokio::spawn(writer(
                server.addr.clone(),
                harness.tls("orders"),
                rng.next() ^ w as u64,
                acked.clone(),
                pause,
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
                grant_id: String::new(),
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
/// is UNAVAILABLE for its item, or its whole call is UNAVAILABLE because
/// the audit trail (under the same file-size limit) has no room for the
/// call's event (nothing is revealed then); returns how many of each.
async fn verify_while_writes_fail(
    addr: &str,
    tls: &ClientTls,
    acked: &HashMap<String, (FieldKind, String)>,
) -> (usize, usize, usize) {
    let (mut revealed, mut unavailable, mut unaudited) = (0, 0, 0);
    let mut client = common::connect(addr, tls).await;
    let tokens: Vec<&String> = acked.keys().collect();
    for chunk in tokens.chunks(500) {
        let response = client
            .detokenize(pb::DetokenizeRequest {
                tokens: chunk.iter().map(|t| (*t).clone()).collect(),
                purpose: "crash-check".into(),
                justification: "crash harness".into(),
                grant_id: String::new(),
            })
            .await;
        let results = match response {
            Ok(response) => response.into_inner().results,
            Err(status)
                if status.code() == tonic::Code::Unavailable
                    && status.message().contains("audit trail") =>
            {
                unaudited += chunk.len();
                continue;
            }
            Err(status) => panic!("a detokenize call failed while writes fail: {status:?}"),
        };
        for (token, result) in chunk.iter().zip(results) {
            match result.outcome {
                Some(pb::detokenize_result::Outcome::Revealed(v)) => {
                    assert_eq!(&v.value, &acked[*token].1, "{token} revealed another value");
                    revealed += 1;
                }
                Some(pb::detokenize_result::Outcome::Error(e))
                    if e.code == tonic::Code::Unavailable as i32 =>
                {
                    unavailable += 1;
                }
                other => panic!("acknowledged token {token}, storage failed: {other:?}"),
            }
        }
    }
    (revealed, unavailable, unaudited)
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
    List { listed: bool },
    /// Filtered out (a name filter that does not match, `--skip`, `--ignored`).
    Skip,
    Run {
        rounds: u32,
        time_limit: Duration,
        /// `--audit-only`: only the audit rounds.
        audit_only: bool,
        /// `--abuse-only`: only the abuse-control rounds.
        abuse_only: bool,
        /// `--lifecycle-only`: only the data-lifecycle rounds.
        lifecycle_only: bool,
        /// `--grants-only`: only the grant rounds.
        grants_only: bool,
    },
}

/// Reads libtest's arguments (filters, `--exact`, `--skip`, `--list`,
/// `--ignored`; the rest are accepted and ignored) and the harness's own
/// (`--rounds N`, `--time-limit SECS`, `--audit-only`).
fn parse_args(args: &[String]) -> Result<Mode, String> {
    let mut filters = Vec::new();
    let mut skips = Vec::new();
    let (mut exact, mut list, mut only_ignored, mut audit_only) = (false, false, false, false);
    let (mut abuse_only, mut lifecycle_only, mut grants_only) = (false, false, false);
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
            "--audit-only" => audit_only = true,
            "--abuse-only" => abuse_only = true,
            "--lifecycle-only" => lifecycle_only = true,
            "--grants-only" => grants_only = true,
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
    let time_limit = time_limit.unwrap_or(Duration::from_secs(180 + 15 * u64::from(rounds)));
    Ok(Mode::Run {
        rounds,
        time_limit,
        audit_only,
        abuse_only,
        lifecycle_only,
        grants_only,
    })
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
        let log_tail = log_tails(&dir, 20);
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

/// The last `n` lines of the server logs under `dir`.
fn log_tails(dir: &Path, n: usize) -> String {
    let mut log_tail = String::new();
    for name in [
        "server.log",
        "disk-full/server.log",
        "audit-kill/server.log",
        "audit-full/server.log",
        "abuse-kill/server.log",
        "lifecycle-kill/server.log",
        "grants-kill/server.log",
    ] {
        if let Ok(log) = std::fs::read_to_string(dir.join(name)) {
            let lines: Vec<&str> = log.lines().collect();
            // A line is cut short: one may hold a whole audit event.
            let tail = lines[lines.len().saturating_sub(n)..]
                .iter()
                .map(|l| match l.char_indices().nth(400) {
                    Some((i, _)) => format!("{}…", &l[..i]),
                    None => (*l).to_owned(),
                })
                .collect::<Vec<_>>()
                .join("\n");
            log_tail.push_str(&format!("--- last lines of {name}:\n{tail}\n"));
        }
    }
    log_tail
}

/// On a failed check (a panic of the harness's main thread): the default
/// report, then the tail of the server logs and the data dir, which is
/// kept for a post-mortem.
fn report_failures_with_logs(dir: PathBuf) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        if std::thread::current().name() == Some("main") {
            eprintln!(
                "crash harness FAILED; data dir kept: {}\n{}",
                dir.display(),
                log_tails(&dir, 40)
            );
        }
    }));
}

/// The summary of a run of one kind of rounds only (`flag`), and each
/// round's line.
fn print_only(kind: &str, flag: &str, rounds: u32, started: Instant, lines: Vec<String>) {
    println!(
        "crash: only the {kind} rounds ({flag}): {rounds} {kind} kill rounds passed; 0 failed; \
         {:.1}s",
        started.elapsed().as_secs_f64()
    );
    for line in lines {
        println!("  {line}");
    }
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
    let (rounds, time_limit, audit_only, abuse_only, lifecycle_only, grants_only) = match mode {
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
        Mode::Run {
            rounds,
            time_limit,
            audit_only,
            abuse_only,
            lifecycle_only,
            grants_only,
        } => (
            rounds,
            time_limit,
            audit_only,
            abuse_only,
            lifecycle_only,
            grants_only,
        ),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(
        rounds,
        time_limit,
        audit_only,
        abuse_only,
        lifecycle_only,
        grants_only,
    ));
}

async fn run(
    rounds: u32,
    time_limit: Duration,
    audit_only: bool,
    abuse_only: bool,
    lifecycle_only: bool,
    grants_only: bool,
) {
    // Kept when a check fails; removed at the end of a run that passes.
    let tmp = tempfile::tempdir().unwrap().keep();
    start_watchdog(time_limit, tmp.clone());
    report_failures_with_logs(tmp.clone());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let rounds = if audit_only || abuse_only || lifecycle_only || grants_only {
        0
    } else {
        rounds
    };
    println!("crash harness: {rounds} rounds, seed {seed}");
    let mut rng = Rng(seed | 1);
    let started = Instant::now();
    let mut lines = Vec::new();
    if grants_only {
        let grants = grant_kill_rounds(&tmp.join("grants-kill"), &mut rng).await;
        std::fs::remove_dir_all(&tmp).unwrap();
        print_only("grant", "--grants-only", GRANT_KILL_ROUNDS, started, grants);
        return;
    }
    if lifecycle_only {
        let lifecycle = lifecycle_kill_rounds(&tmp.join("lifecycle-kill"), &mut rng).await;
        std::fs::remove_dir_all(&tmp).unwrap();
        print_only(
            "lifecycle",
            "--lifecycle-only",
            LIFECYCLE_KILL_ROUNDS,
            started,
            lifecycle,
        );
        return;
    }
    if !audit_only && !abuse_only {
        lines = store_rounds(&tmp, rounds, &mut rng).await;
    }
    if abuse_only {
        let abuse = abuse_kill_rounds(&tmp.join("abuse-kill"), &mut rng).await;
        std::fs::remove_dir_all(&tmp).unwrap();
        print_only("abuse", "--abuse-only", ABUSE_KILL_ROUNDS, started, abuse);
        return;
    }

    let audit_started = Instant::now();
    phase("audit kill rounds: certificates and config");
    let audit_harness = Harness::with_tables(
        &tmp.join("audit-kill"),
        &format!("[audit]\nmax_file_bytes = {AUDIT_ROTATE_BYTES}"),
    );
    lines.extend(audit_kill_rounds(&audit_harness, &mut rng).await);
    phase("audit full-disk round: certificates and config");
    let audit_full_line = audit_full_round(&Harness::new(&tmp.join("audit-full"))).await;
    println!("{audit_full_line}");
    lines.push(audit_full_line);
    let audit_took = audit_started.elapsed();
    lines.extend(abuse_kill_rounds(&tmp.join("abuse-kill"), &mut rng).await);
    lines.extend(lifecycle_kill_rounds(&tmp.join("lifecycle-kill"), &mut rng).await);
    lines.extend(grant_kill_rounds(&tmp.join("grants-kill"), &mut rng).await);
    std::fs::remove_dir_all(&tmp).unwrap();
    let store = if audit_only {
        "the store's rounds skipped (--audit-only)".to_owned()
    } else {
        format!(
            "{rounds} kill rounds passed; {REWRAP_ROUNDS} rewrap rounds, {INDEX_ROUNDS} \
             index-rebuild round(s) and {MASTER_ROUNDS} master-key rounds passed; disk-full \
             round passed"
        )
    };
    println!(
        "crash: {store}; {AUDIT_KILL_ROUNDS} audit kill rounds and the audit full-disk round \
         passed ({:.1}s); {ABUSE_KILL_ROUNDS} abuse kill rounds passed; \
         {LIFECYCLE_KILL_ROUNDS} lifecycle kill rounds passed; {GRANT_KILL_ROUNDS} grant kill \
         rounds passed; 0 failed; {:.1}s",
        audit_took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    for line in lines {
        println!("  {line}");
    }
}

/// The kill rounds, the key rounds and the disk-full round of the store
/// (see the module doc), under `tmp`; returns the lines for the summary.
async fn store_rounds(tmp: &Path, rounds: u32, rng: &mut Rng) -> Vec<String> {
    phase("making the certificates and config");
    let harness = Harness::new(tmp);

    let acked: Acked = Arc::new(Mutex::new(HashMap::new()));
    let started = Instant::now();
    for round in 0..rounds {
        phase(format!("round {round}: the server to start"));
        let server = harness.start();
        let acked_before = acked.lock().unwrap().len();
        let writers = spawn_writers(&harness, &server, rng, &acked, Duration::ZERO);
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

    let mut lines = key_rounds(&harness, rng, &acked).await;

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

    // The trail of every kill above: whole, one chain.
    phase("the audit trail of the kill and key rounds");
    let trail = check_trail(
        &tmp.join("data/audit.log"),
        &harness.master(),
        &[],
        "the audit trail of the kill and key rounds",
    );
    let trail_line = format!(
        "the kill and key rounds' audit trail: {} events verify, one chain across every kill",
        trail.events
    );
    println!("{trail_line}");
    lines.push(trail_line);

    phase("disk-full round: certificates and config");
    disk_full_round(&Harness::new(&tmp.join("disk-full")), rng).await;

    lines
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
    let writers = spawn_writers(harness, &server, rng, &acked, Duration::ZERO);
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
    // The audit trail is under the same limit: when it has no room for a
    // call's event, the whole call is UNAVAILABLE and reveals nothing.
    let snapshot = acked.lock().unwrap().clone();
    phase(format!(
        "disk-full round: detokenize of {} acknowledged tokens before the restart",
        snapshot.len()
    ));
    let (revealed, unavailable, unaudited) =
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
        "disk-full round: while writes failed, {revealed} acknowledged tokens revealed, \
         {unavailable} unavailable for now, {unaudited} refused for want of room in the audit \
         trail"
    );
    println!(
        "disk-full round: {calls} calls acknowledged before the 1 MiB file limit; then writes \
         refused with UNAVAILABLE, health NOT_SERVING, server up; after a restart {} tokens \
         verified, {} records, integrity clean",
        snapshot.len(),
        report.records
    );
}

/// Rounds killed mid rewrap on the same store as the kill rounds.
const REWRAP_ROUNDS: u32 = 3;
/// Rounds killed mid index rebuild.
const INDEX_ROUNDS: u32 = 1;
/// Rounds killed around a master-key rotation: before the call, during it
/// or right after it, in turn.
const MASTER_ROUNDS: u32 = 6;
/// During the key rounds each writer waits this long between its calls:
/// live traffic, without the store growing by thousands of records a
/// second while a job runs.
const KEY_ROUND_LOAD_PAUSE: Duration = Duration::from_millis(100);
/// How long a key job should take at the rate the harness gives it, so
/// that a kill at a random moment lands mid-job.
const JOB_SECONDS: u64 = 6;
/// The fewest records a job round moves (the harness tokenizes more first
/// when the store holds fewer).
const MIN_JOB_RECORDS: usize = 1000;
/// The longest a job may take to finish after its last restart.
const JOB_FINISH_LIMIT: Duration = Duration::from_secs(120);
/// The longest a running job may go without moving a record (at 100
/// records/s or more, it moves a batch every 50 ms).
const JOB_STALL_LIMIT: Duration = Duration::from_secs(15);

/// The rate (records/s) at which a job over `records` takes about
/// [`JOB_SECONDS`].
fn job_rate(records: u64) -> u32 {
    (records / JOB_SECONDS).clamp(100, 5000) as u32
}

/// A uniformly random fraction in [0, 1).
fn fraction(rng: &mut Rng) -> f64 {
    (rng.next() % 1_000_000) as f64 / 1_000_000.0
}

async fn admin(addr: &str, harness: &Harness) -> KeyAdminClient<Channel> {
    KeyAdminClient::new(common::channel(addr, &harness.tls("rotator")).await)
}

async fn key_status(client: &mut KeyAdminClient<Channel>) -> pb::GetKeyStatusResponse {
    client
        .get_key_status(pb::GetKeyStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Waits until at least `n` tokens are acknowledged in all.
async fn acked_at_least(acked: &Acked, n: usize) {
    bounded(
        Duration::from_secs(60),
        "tokens to be acknowledged",
        async {
            while acked.lock().unwrap().len() < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        },
    )
    .await;
}

/// Waits for writers whose server was killed to notice; returns the calls
/// they had acknowledged.
async fn writers_stopped(label: &str, writers: Writers) -> u64 {
    let mut calls = 0;
    for (i, w) in writers.into_iter().enumerate() {
        phase(format!("{label}: writer {i} to stop after the kill"));
        calls += bounded(WRITER_STOP_DEADLINE, "a writer to stop after the kill", w)
            .await
            .unwrap()
            .0;
    }
    calls
}

/// Stops writers whose server is up. A call cut off this way was never
/// acknowledged, so it is not counted.
async fn abort_writers(writers: Writers) {
    for w in writers {
        w.abort();
        let _ = w.await;
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum KeyJob {
    Rewrap,
    IndexRebuild,
}

impl KeyJob {
    fn of(self, status: &pb::GetKeyStatusResponse) -> pb::JobStatus {
        match self {
            Self::Rewrap => status.rewrap.clone(),
            Self::IndexRebuild => status.index_rebuild.clone(),
        }
        .expect("GetKeyStatus reports both jobs")
    }

    fn versions(self, status: &pb::GetKeyStatusResponse) -> &[pb::KeyVersionStatus] {
        match self {
            Self::Rewrap => &status.data_keys,
            Self::IndexRebuild => &status.index_keys,
        }
    }
}

/// Reads the job's status until its done + remaining is `total` (one
/// batch may show in the counters before it shows in the job's stored
/// progress: a read in between comes up short). `Err` with every status
/// read when none of 20 reads, 25 ms apart, adds up; also returns how many
/// reads came up short.
async fn job_status_with_total(
    keys: &mut KeyAdminClient<Channel>,
    job: KeyJob,
    total: u64,
) -> (Result<pb::JobStatus, Vec<pb::JobStatus>>, u32) {
    let mut seen = Vec::new();
    for _ in 0..20 {
        let now = KeyJob::of(job, &key_status(keys).await);
        if now.done + now.remaining == total {
            return (Ok(now), seen.len() as u32);
        }
        seen.push(now);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let short = seen.len() as u32;
    (Err(seen), short)
}

/// Tokenizes every pool phone once more: each phone acknowledged before
/// must get the token it had (a deterministic token never changes, not
/// during an index rebuild, not after it). Returns how many kept theirs.
async fn check_pool_phones(label: &str, addr: &str, harness: &Harness, acked: &Acked) -> usize {
    let mut client = common::connect(addr, &harness.tls("orders")).await;
    let fields = (0..PHONE_POOL)
        .map(|n| pb::Field {
            kind: FieldKind::Phone as i32,
            value: phone_value(n).0,
            ..Default::default()
        })
        .collect();
    let results = client
        .tokenize(pb::TokenizeRequest {
            fields,
            purpose: None,
        })
        .await
        .unwrap_or_else(|s| panic!("{label}: tokenizing the pool phones failed: {s:?}"))
        .into_inner()
        .results;
    let mut acked = acked.lock().unwrap();
    let known: HashMap<String, String> = acked
        .iter()
        .filter(|(_, (kind, _))| *kind == FieldKind::Phone)
        .map(|(token, (_, value))| (value.clone(), token.clone()))
        .collect();
    let mut kept = 0;
    let mut changed = Vec::new();
    for (n, result) in (0..PHONE_POOL).zip(results) {
        let Some(pb::tokenize_result::Outcome::Token(token)) = result.outcome else {
            changed.push(format!(
                "pool phone {n} did not tokenize: {:?}",
                result.outcome
            ));
            continue;
        };
        let canonical = phone_value(n).1;
        match known.get(&canonical) {
            Some(before) if *before == token => kept += 1,
            Some(before) => {
                changed.push(format!("pool phone {n}: {before} before, now {token}"));
            }
            None => note_answer(&mut acked, token, (FieldKind::Phone, canonical)),
        }
    }
    // Not while holding the lock: the writers still need it.
    drop(acked);
    assert!(
        changed.is_empty(),
        "{label}: deterministic tokens changed: {changed:#?}"
    );
    kept
}

/// A round killed mid-job: under load, rotate the data key and start a
/// rewrap (or rotate the index key, which starts the rebuild), kill -9 at
/// a random moment while it runs (once or twice), restart; the job must
/// resume by itself, keep its stored progress and counters, and finish.
/// Then no record (index entry) is left on an older version, the older
/// versions retire, every acknowledged token detokenizes to its value and
/// the store's integrity check is clean. Returns the status at the end and
/// a line for the summary.
async fn job_round(
    harness: &Harness,
    label: &str,
    job: KeyJob,
    rng: &mut Rng,
    acked: &Acked,
) -> (pb::GetKeyStatusResponse, String) {
    let started = Instant::now();
    phase(format!("{label}: the server to start"));
    let mut server = harness.start();
    if acked.lock().unwrap().len() < MIN_JOB_RECORDS {
        phase(format!(
            "{label}: {MIN_JOB_RECORDS} tokens in the store before the job"
        ));
        let fill = spawn_writers(harness, &server, rng, acked, Duration::ZERO);
        acked_at_least(acked, MIN_JOB_RECORDS).await;
        abort_writers(fill).await;
    }
    let mut writers = spawn_writers(harness, &server, rng, acked, KEY_ROUND_LOAD_PAUSE);
    phase(format!("{label}: tokens acknowledged before the rotation"));
    let before_round = acked.lock().unwrap().len();
    acked_at_least(acked, before_round + MIN_ACKED_PER_ROUND).await;
    let mut keys = admin(&server.addr, harness).await;

    phase(format!("{label}: rotate and start the job"));
    let (target, rate) = match job {
        KeyJob::Rewrap => {
            let target = keys
                .rotate_data_key(pb::RotateDataKeyRequest {})
                .await
                .unwrap()
                .into_inner()
                .version;
            let status = key_status(&mut keys).await;
            let older: u64 = status
                .data_keys
                .iter()
                .filter(|k| k.version != target)
                .map(|k| k.records)
                .sum();
            let rate = job_rate(older);
            let job = keys
                .start_rewrap(pb::StartRewrapRequest {
                    rate_per_second: Some(rate),
                })
                .await
                .unwrap()
                .into_inner()
                .job
                .unwrap();
            assert_eq!(job.state(), pb::JobState::Running, "{label}: {job:?}");
            (target, rate)
        }
        KeyJob::IndexRebuild => {
            let target = keys
                .rotate_index_key(pb::RotateIndexKeyRequest {})
                .await
                .unwrap()
                .into_inner()
                .version;
            (target, harness.rewrap_rate())
        }
    };

    let kills = 1 + rng.next() % 2;
    let mut last = None;
    let mut phones_while_running = 0;
    let mut calls = 0;
    // What the job moves in all: done + remaining, one snapshot (the job's
    // stored progress and the counters are read as of one moment).
    let mut total = 0;
    for _ in 0..5 {
        let now = KeyJob::of(job, &key_status(&mut keys).await);
        total = total.max(now.done + now.remaining);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut short_reads = 0;
    for kill in 0..kills {
        let now = KeyJob::of(job, &key_status(&mut keys).await);
        // A random moment while it runs: within the first 60% of what is
        // left at its rate.
        let left = now.remaining as f64 / f64::from(rate);
        let wait = left * (0.05 + 0.55 * fraction(rng));
        phase(format!("{label}: {wait:.2}s of the job before kill {kill}"));
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        let (before, short) = job_status_with_total(&mut keys, job, total).await;
        short_reads += short;
        let before = before.unwrap_or_else(|seen| {
            panic!("{label}: before kill {kill}, done + remaining is not {total}: {seen:?}")
        });
        assert_eq!(
            before.state(),
            pb::JobState::Running,
            "{label}: the job ended before kill {kill} (rate {rate}/s): {before:?}"
        );
        assert!(
            before.remaining > 0 && before.target_version == target,
            "{label}: no kill mid-job: {before:?}"
        );
        phase(format!("{label}: kill -9 {kill} of the server mid-job"));
        server.kill9();
        calls += writers_stopped(label, writers).await;

        phase(format!("{label}: the server to restart after kill {kill}"));
        server = harness.start();
        keys = admin(&server.addr, harness).await;
        let (after, short) = job_status_with_total(&mut keys, job, total).await;
        short_reads += short;
        let after = match after {
            Ok(after) => after,
            Err(seen) => {
                // Which is off: the counters or the job's stored progress?
                // The integrity check recounts the trees (and fails first
                // if the counters disagree with them).
                let log_tail = log_tails(&harness.dir, 30);
                drop(server);
                harness.check_integrity().await;
                panic!(
                    "{label}: done + remaining changed across kill {kill} (no record was added \
                     to or removed from an older version): {before:?}, then after the restart \
                     {seen:#?}; the integrity check is clean (the counters agree with the \
                     trees), so the job's stored progress misses records it moved.\n{log_tail}"
                );
            }
        };
        assert!(
            matches!(
                after.state(),
                pb::JobState::Running | pb::JobState::Finished
            ),
            "{label}: after kill {kill} the job neither resumed nor finished: {after:?}"
        );
        assert_eq!(after.target_version, target, "{label}: {after:?}");
        assert!(
            after.done >= before.done,
            "{label}: the job lost progress it had reported before kill {kill}: \
             {before:?} then {after:?}"
        );
        writers = spawn_writers(harness, &server, rng, acked, KEY_ROUND_LOAD_PAUSE);
        if job == KeyJob::IndexRebuild {
            check_pool_phones(label, &server.addr, harness, acked).await;
            if after.state() == pb::JobState::Running {
                phones_while_running += 1;
            }
        }
        last = Some((before, after));
        if KeyJob::of(job, &key_status(&mut keys).await).state() != pb::JobState::Running {
            break;
        }
    }
    let (before, after) = last.expect("at least one kill");

    phase(format!("{label}: the resumed job to finish"));
    let mut seen = after.done;
    let mut progressed_at = Instant::now();
    let finished = bounded(JOB_FINISH_LIMIT, "the resumed job to finish", async {
        loop {
            let now = KeyJob::of(job, &key_status(&mut keys).await);
            assert!(
                now.done >= seen,
                "{label}: the job's done went back: {seen} then {now:?}"
            );
            if now.done > seen {
                progressed_at = Instant::now();
            }
            // One snapshot: a read a batch short means the status mixed
            // two moments (counted below, and the round fails on it).
            let sum = now.done + now.remaining;
            let batch = u64::from(rate / 20).clamp(1, 512);
            assert!(
                sum <= total && total - sum <= 2 * batch,
                "{label}: done + remaining is {sum}, not {total} (nor a batch or two of \
                 {batch} short): {now:?}"
            );
            if sum != total {
                short_reads += 1;
            }
            assert!(
                progressed_at.elapsed() < JOB_STALL_LIMIT,
                "{label}: the job says it runs, but moved nothing for {JOB_STALL_LIMIT:?} \
                 after the restart (it did not resume?): {now:?}"
            );
            seen = now.done;
            match now.state() {
                pb::JobState::Finished => return now,
                pb::JobState::Running => {}
                other => panic!("{label}: the resumed job is {other:?}: {now:?}"),
            }
            if job == KeyJob::IndexRebuild {
                check_pool_phones(label, &server.addr, harness, acked).await;
                phones_while_running += 1;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    abort_writers(writers).await;
    assert_eq!(finished.target_version, target, "{label}: {finished:?}");
    assert_eq!(
        (finished.remaining, finished.failed),
        (0, 0),
        "{label}: the finished job left records behind: {finished:?}"
    );
    assert_eq!(
        finished.done, total,
        "{label}: the job did not move each record exactly once: {before:?} then {finished:?}"
    );
    if after.remaining > 0 {
        assert!(
            finished.done > after.done,
            "{label}: the job did not go on after the restart: {after:?} then {finished:?}"
        );
    }

    phase(format!("{label}: counters and retirement"));
    let mut status = key_status(&mut keys).await;
    for key in KeyJob::versions(job, &status) {
        if key.version == target {
            assert_eq!(key.state(), pb::KeyState::Active, "{label}: {key:?}");
            assert!(key.records > 0, "{label}: {key:?}");
        } else {
            assert_eq!(
                key.records, 0,
                "{label}: an older version still counts records after the job: {key:?}"
            );
        }
    }
    let mut retired_now = Vec::new();
    match job {
        KeyJob::Rewrap => {
            for key in &status.data_keys {
                if key.state() == pb::KeyState::DecryptOnly {
                    keys.retire_key_version(pb::RetireKeyVersionRequest {
                        version: key.version,
                    })
                    .await
                    .unwrap_or_else(|s| {
                        panic!("{label}: retiring version {} failed: {s:?}", key.version)
                    });
                    retired_now.push(key.version);
                }
            }
            assert!(
                !retired_now.is_empty(),
                "{label}: no version to retire: {status:?}"
            );
            status = key_status(&mut keys).await;
        }
        KeyJob::IndexRebuild => {
            check_pool_phones(label, &server.addr, harness, acked).await;
            assert!(
                phones_while_running > 0,
                "{label}: the pool phones were never tokenized while the rebuild ran"
            );
        }
    }
    for key in KeyJob::versions(job, &status) {
        if key.version != target {
            assert_eq!(
                key.state(),
                pb::KeyState::Retired,
                "{label}: an older version is not retired: {key:?}"
            );
        }
    }

    // The older keys are destroyed now: a record left on one would not
    // open.
    let snapshot = acked.lock().unwrap().clone();
    phase(format!(
        "{label}: detokenize of {} acknowledged tokens",
        snapshot.len()
    ));
    verify(&server.addr, &harness.tls("support"), &snapshot).await;
    drop(server);
    phase(format!("{label}: the integrity check of the store"));
    harness.check_integrity().await;
    assert_eq!(
        short_reads, 0,
        "{label}: the status mixed two moments {short_reads} times (done + remaining short)"
    );
    let line = format!(
        "{label}: {} to version {target} at {rate}/s, killed {kills}x mid-job (last at {}/{}), \
         resumed and finished; {calls} calls acknowledged before the kills; {} retired; {} \
         tokens verified; integrity clean; {short_reads} status reads a batch short; {:.1}s",
        match job {
            KeyJob::Rewrap => "rewrap",
            KeyJob::IndexRebuild => "index rebuild",
        },
        before.done,
        before.done + before.remaining,
        if retired_now.is_empty() {
            "the older index key was".to_owned()
        } else {
            format!("data-key versions {retired_now:?}")
        },
        snapshot.len(),
        started.elapsed().as_secs_f64()
    );
    (status, line)
}

/// Starts the server with the master key file `master`; if it comes up,
/// every acknowledged token must detokenize to its value. `Err` holds what
/// the refused start printed.
async fn start_with_master(
    harness: &Harness,
    master: &Path,
    what: &str,
    acked: &HashMap<String, (FieldKind, String)>,
) -> Result<(), String> {
    let server = harness.try_start_with_master(master, what)?;
    verify(&server.addr, &harness.tls("support"), acked).await;
    drop(server);
    Ok(())
}

/// A round killed around a master-key rotation (see the module doc).
/// Returns which key the server starts with afterwards and when it was
/// killed.
async fn master_round(
    harness: &Harness,
    round: u32,
    rng: &mut Rng,
    acked: &Acked,
) -> (&'static str, &'static str) {
    let label = format!("master round {round}");
    let old = harness.master();
    let new = harness.dir.join(format!("master-{round}.key"));
    common::write(&new, MasterKey::generate().to_hex().as_bytes());
    phase(format!("{label}: the server to start"));
    let server = harness.start();
    let writers = spawn_writers(harness, &server, rng, acked, KEY_ROUND_LOAD_PAUSE);
    let before_round = acked.lock().unwrap().len();
    acked_at_least(acked, before_round + MIN_ACKED_PER_ROUND).await;
    let mut keys = admin(&server.addr, harness).await;
    let request = pb::RotateMasterKeyRequest {
        new_key_file: new.to_str().unwrap().to_owned(),
    };
    phase(format!("{label}: kill -9 around RotateMasterKey"));
    // (when, whether the rotation was asked for, whether it was answered)
    let (when, requested, answered) = match round % 3 {
        0 => {
            tokio::time::sleep(Duration::from_millis(rng.next() % 200)).await;
            server.kill9();
            ("before the call", false, false)
        }
        1 => {
            let call = tokio::spawn(async move { keys.rotate_master_key(request).await });
            tokio::time::sleep(Duration::from_micros(rng.next() % 20_000)).await;
            server.kill9();
            let outcome = bounded(
                common::CALL_DEADLINE + Duration::from_secs(5),
                "RotateMasterKey to end after the kill",
                call,
            )
            .await
            .unwrap();
            ("during the call", true, outcome.is_ok())
        }
        _ => {
            keys.rotate_master_key(request)
                .await
                .unwrap_or_else(|s| panic!("{label}: RotateMasterKey failed: {s:?}"));
            tokio::time::sleep(Duration::from_millis(rng.next() % 300)).await;
            server.kill9();
            ("right after the call", true, true)
        }
    };
    writers_stopped(&label, writers).await;

    let snapshot = acked.lock().unwrap().clone();
    phase(format!("{label}: a start with the old master key"));
    let with_old = start_with_master(harness, &old, "the old master key", &snapshot).await;
    phase(format!("{label}: a start with the new master key"));
    let with_new = start_with_master(harness, &new, "the new master key", &snapshot).await;
    let refused_clearly = |refusal: &str| {
        assert!(
            !refusal.contains("not listening after"),
            "{label}: a start with the wrong master key hung instead of exiting:\n{refusal}"
        );
        assert!(
            refusal.contains("master key"),
            "{label}: the refused start does not say the master key is wrong:\n{refusal}"
        );
    };
    match (with_old, with_new) {
        (Ok(()), Err(refusal)) => {
            assert!(
                !answered,
                "{label}: RotateMasterKey was answered OK (killed {when}), yet the old master \
                 key opens the store and the new one does not:\n{refusal}"
            );
            refused_clearly(&refusal);
            ("old", when)
        }
        (Err(refusal), Ok(())) => {
            assert!(
                requested,
                "{label}: the new master key opens the store, but no rotation was asked for"
            );
            refused_clearly(&refusal);
            assert!(
                refusal.contains("rotate-master"),
                "{label}: the old master key is refused without naming `rotate-master`:\n{refusal}"
            );
            harness.reconfigure(&new, harness.rewrap_rate());
            ("new", when)
        }
        (Ok(()), Ok(())) => panic!(
            "{label}: the server starts with both the old and the new master key (killed {when})"
        ),
        (Err(old), Err(new)) => panic!(
            "{label}: the server starts with neither master key (killed {when}).\n\
             --- with the old key:\n{old}\n--- with the new key:\n{new}"
        ),
    }
}

/// The rewrap, index-rebuild and master-key rounds, on the kill rounds'
/// store; returns the lines for the summary.
async fn key_rounds(harness: &Harness, rng: &mut Rng, acked: &Acked) -> Vec<String> {
    let mut lines = Vec::new();
    let mut status = None;
    for round in 0..REWRAP_ROUNDS {
        let (s, line) = job_round(
            harness,
            &format!("rewrap round {round}"),
            KeyJob::Rewrap,
            rng,
            acked,
        )
        .await;
        println!("{line}");
        lines.push(line);
        status = Some(s);
    }
    for round in 0..INDEX_ROUNDS {
        // RotateIndexKey names no rate: the config's sets it, so that the
        // rebuild takes a while.
        let entries: u64 = status
            .as_ref()
            .map(|s| s.index_keys.iter().map(|k| k.records).sum())
            .unwrap_or(MIN_JOB_RECORDS as u64);
        harness.reconfigure(&harness.master(), job_rate(entries));
        let (_, line) = job_round(
            harness,
            &format!("index round {round}"),
            KeyJob::IndexRebuild,
            rng,
            acked,
        )
        .await;
        println!("{line}");
        lines.push(line);
    }
    harness.reconfigure(&harness.master(), FIRST_REWRAP_RATE);
    let mut outcomes: Vec<String> = Vec::new();
    for round in 0..MASTER_ROUNDS {
        let (key, when) = master_round(harness, round, rng, acked).await;
        let line = format!(
            "master round {round}: killed {when}: the server starts with the {key} master key \
             only and serves every acknowledged token"
        );
        println!("{line}");
        outcomes.push(format!("{when}: {key}"));
    }
    lines.push(format!(
        "master-key rounds: exactly one key opens the store each time ({})",
        outcomes.join("; ")
    ));
    lines
}

// ---------------------------------------------------------------------------
// The audit trail under kill -9 and a full disk (issue 13).

/// Kill rounds of the audit trail, on a store of their own.
const AUDIT_KILL_ROUNDS: u32 = 4;
/// Concurrent clients of an audit kill round (each reveals, and now and
/// then tokenizes).
const AUDIT_CLIENTS: usize = 4;
/// Reveals each audit kill round waits for before its random wait and the
/// kill.
const MIN_REVEALS_PER_ROUND: usize = 30;
/// The audit trail's rotation size in the audit kill rounds (the smallest
/// the config allows): files rotate every hundred events or so, under the
/// load and across the kills.
const AUDIT_ROTATE_BYTES: u64 = 65_536;
/// How long a refused call may take: the issue asks for an answer within
/// 1 s; half a second of slack for a loaded 2-core machine running a debug
/// build.
const REFUSAL_DEADLINE: Duration = Duration::from_millis(1500);

/// A fake phone number `+1 202-555-01nn` and its E.164 form.
fn fake_phone(n: u64) -> (String, String) {
    let n = n % 100;
    (format!("+1 202-555-01{n:02}"), format!("+120255501{n:02}"))
}

/// Texts no audit file may hold: parts of every value the audit rounds
/// send (phones, E.164 or not, and addresses)
/// (and the kill rounds': `+86 138 0000 nnnn`).
const AUDIT_ROUND_VALUE_PARTS: [&str; 6] = [
    "202-555",
    "+1202555",
    "2025550",
    "Fakestreet",
    "138 0000",
    "1380000",
];

/// A call answered OK: its request id (`x-request-id`), its action and the
/// tokens it named (asked for, or issued), in order.
#[derive(Clone, Debug)]
struct Answered {
    request_id: String,
    action: &'static str,
    tokens: Vec<String>,
}

type AnsweredLog = Arc<Mutex<Vec<Answered>>>;

/// The request id an answer (or a status) carries; `None` for a status the
/// server never sent (the connection broke: it was killed).
fn request_id(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    metadata
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A token the audit rounds know the value of.
#[derive(Clone, Debug)]
struct Known {
    token: String,
    /// The value as revealed (E.164 for a phone).
    value: String,
}

/// Tokenizes the 100 fake phones (deterministic mode: the same 100 tokens
/// every time).
async fn fake_phone_pool(addr: &str, harness: &Harness) -> Vec<Known> {
    let mut client = common::connect(addr, &harness.tls("orders")).await;
    let fields = (0..100)
        .map(|n| pb::Field {
            kind: FieldKind::Phone as i32,
            value: fake_phone(n).0,
            ..Default::default()
        })
        .collect();
    let tokens = common::tokens_for(&mut client, fields).await;
    tokens
        .into_iter()
        .zip(0..)
        .map(|(token, n)| Known {
            token,
            value: fake_phone(n).1,
        })
        .collect()
}

/// Reveals 1 to 5 pool tokens at a time and now and then tokenizes new
/// addresses, until the server is gone (a status without a request id: the
/// connection broke); records every call answered OK. A call the server
/// refused (it carries a request id) is counted and the loop goes on.
/// Returns (calls answered OK, calls refused).
async fn audited_client(
    addr: String,
    harness_tls: (ClientTls, ClientTls),
    seed: u64,
    pool: Arc<Vec<Known>>,
    answered: AnsweredLog,
) -> (u64, u64) {
    let (support, orders) = harness_tls;
    let (Ok(reader), Ok(writer)) = (
        common::try_channel(&addr, &support).await,
        common::try_channel(&addr, &orders).await,
    ) else {
        return (0, 0);
    };
    let mut reader = pb::vault_client::VaultClient::new(reader);
    let mut writer = pb::vault_client::VaultClient::new(writer);
    let mut rng = Rng(seed | 1);
    let (mut ok, mut refused) = (0, 0);
    loop {
        let outcome = if rng.next() % 4 == 0 {
            let fields = (0..1 + rng.next() % 3)
                .map(|_| pb::Field {
                    kind: FieldKind::Address as i32,
                    value: format!("{} Fakestreet Lane, Audittown", rng.next() % 10_000),
                    ..Default::default()
                })
                .collect();
            writer
                .tokenize(pb::TokenizeRequest {
                    fields,
                    purpose: None,
                })
                .await
                .map(|response| {
                    let id = request_id(response.metadata());
                    let tokens = response
                        .into_inner()
                        .results
                        .into_iter()
                        .map(|r| match r.outcome {
                            Some(pb::tokenize_result::Outcome::Token(t)) => t,
                            other => panic!("an address did not tokenize: {other:?}"),
                        })
                        .collect();
                    (id, "tokenize", tokens)
                })
        } else {
            let picked: Vec<&Known> = (0..1 + rng.next() % 5)
                .map(|_| &pool[(rng.next() % pool.len() as u64) as usize])
                .collect();
            reader
                .detokenize(pb::DetokenizeRequest {
                    tokens: picked.iter().map(|k| k.token.clone()).collect(),
                    purpose: "crash-check".into(),
                    justification: "audit crash round".into(),
                    grant_id: String::new(),
                })
                .await
                .map(|response| {
                    let id = request_id(response.metadata());
                    let results = response.into_inner().results;
                    assert_eq!(results.len(), picked.len());
                    for (result, known) in results.iter().zip(&picked) {
                        match &result.outcome {
                            Some(pb::detokenize_result::Outcome::Revealed(v)) => {
                                assert_eq!(
                                    v.value, known.value,
                                    "{} revealed another value",
                                    known.token
                                )
                            }
                            other => panic!("pool token {} did not reveal: {other:?}", known.token),
                        }
                    }
                    (
                        id,
                        "detokenize",
                        picked.iter().map(|k| k.token.clone()).collect(),
                    )
                })
        };
        match outcome {
            Ok((id, action, tokens)) => {
                let request_id =
                    id.unwrap_or_else(|| panic!("a {action} answer without x-request-id"));
                answered.lock().unwrap().push(Answered {
                    request_id,
                    action,
                    tokens,
                });
                ok += 1;
            }
            Err(status) if request_id(status.metadata()).is_some() => refused += 1,
            // The connection broke: the server was killed.
            Err(_) => return (ok, refused),
        }
    }
}

/// What the trail held when it was checked.
struct TrailFacts {
    /// Request id -> sequence number of its event.
    seq_of: HashMap<String, u64>,
    events: u64,
    files: usize,
    /// Sequence numbers of the `audit.sink_recovered` events, and the
    /// events they say were refused.
    recovered: Vec<(u64, u64)>,
}

/// Checks the trail at `audit_log` (every file of it): it verifies with
/// the library verifier under the audit key kept beside it (unwrapped with
/// `master`); every line is a chained event (no torn line); sequence
/// numbers run 0, 1, 2, … across the files with one `audit.chain_start`
/// (a restart continued the chain); no value the rounds sent appears;
/// every call in `expected` has exactly one event, allowed, with its
/// action and tokens.
fn check_trail(audit_log: &Path, master: &Path, expected: &[Answered], when: &str) -> TrailFacts {
    use fieldvault::audit::{event::Decision, keyfile, trail, verify};
    let master = MasterKey::from_file(master).unwrap();
    let key = keyfile::load(audit_log, &master).unwrap_or_else(|e| panic!("{when}: {e}"));
    let files = trail::files_of(audit_log).unwrap();
    assert!(
        !files.is_empty(),
        "{when}: no audit file at {}",
        audit_log.display()
    );
    let summaries = verify::verify_files(&key, &files)
        .unwrap_or_else(|b| panic!("{when}: the audit trail does not verify: {b}"));
    let mut seq_of = HashMap::new();
    let mut seqs = Vec::new();
    let mut chain_starts = 0;
    let mut recovered = Vec::new();
    let mut events_of = HashMap::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(
            text.ends_with('\n'),
            "{when}: {} ends in a torn line",
            file.display()
        );
        for part in AUDIT_ROUND_VALUE_PARTS {
            assert!(
                !text.contains(part),
                "{when}: {} holds a value ({part}…)",
                file.display()
            );
        }
        for (i, line) in text.lines().enumerate() {
            let (seq, _, event) = verify::parse_line(line).unwrap_or_else(|| {
                panic!(
                    "{when}: {} line {} is not a chained event: {line}",
                    file.display(),
                    i + 1
                )
            });
            seqs.push(seq);
            match event.action.as_str() {
                verify::CHAIN_START => chain_starts += 1,
                "audit.sink_recovered" => recovered.push((
                    seq,
                    event
                        .details
                        .get("refused_events")
                        .and_then(|v| v.as_u64())
                        .unwrap_or(0),
                )),
                _ => {}
            }
            if let Some(id) = event.request_id.clone() {
                assert!(
                    seq_of.insert(id.clone(), seq).is_none(),
                    "{when}: two events for request {id}"
                );
                events_of.insert(id, event);
            }
        }
    }
    let events = seqs.len() as u64;
    seqs.sort_unstable();
    assert!(
        seqs.iter().copied().eq(0..events),
        "{when}: the sequence numbers do not run 0..{events} across the files (a gap, a \
         repeat, or a second chain)"
    );
    assert_eq!(
        chain_starts, 1,
        "{when}: the trail has {chain_starts} chain starts: a restart began a new chain"
    );
    assert_eq!(
        summaries.iter().map(|s| s.events()).sum::<u64>(),
        events,
        "{when}: the verifier and the lines disagree on the number of events"
    );
    for call in expected {
        let event = events_of.get(&call.request_id).unwrap_or_else(|| {
            panic!(
                "{when}: the {} answered OK with request id {} has no event in the trail",
                call.action, call.request_id
            )
        });
        assert_eq!(event.action, call.action, "{when}: {event:?}");
        assert_eq!(event.decision, Decision::Allowed, "{when}: {event:?}");
        let tokens: Vec<&str> = event
            .items
            .iter()
            .map(|i| i.token.as_deref().unwrap_or("-"))
            .collect();
        assert_eq!(tokens, call.tokens, "{when}: {event:?}");
    }
    TrailFacts {
        seq_of,
        events,
        files: files.len(),
        recovered,
    }
}

/// Detokenizes `tokens` once: the request id and, within
/// [`REFUSAL_DEADLINE`] or not, how long it took; panics unless it is
/// answered OK with the values in `known` or refused UNAVAILABLE.
async fn reveal_once(
    client: &mut pb::vault_client::VaultClient<Channel>,
    known: &[Known],
) -> (Result<String, tonic::Status>, Duration) {
    let started = Instant::now();
    let outcome = client
        .detokenize(pb::DetokenizeRequest {
            tokens: known.iter().map(|k| k.token.clone()).collect(),
            purpose: "crash-check".into(),
            justification: "audit full-disk round".into(),
            grant_id: String::new(),
        })
        .await;
    let took = started.elapsed();
    match outcome {
        Ok(response) => {
            let id = request_id(response.metadata()).expect("an answer without x-request-id");
            for (result, k) in response.into_inner().results.iter().zip(known) {
                match &result.outcome {
                    Some(pb::detokenize_result::Outcome::Revealed(v)) => {
                        assert_eq!(v.value, k.value, "{} revealed another value", k.token)
                    }
                    other => panic!("{} did not reveal: {other:?}", k.token),
                }
            }
            (Ok(id), took)
        }
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            assert!(
                request_id(status.metadata()).is_some(),
                "a refusal without x-request-id (not from the server?): {status:?}"
            );
            assert!(status.message().contains("audit"), "{status:?}");
            // A refusal reveals nothing: no value in its message or details.
            for k in known {
                assert!(!status.message().contains(&k.value), "{status:?}");
            }
            for part in AUDIT_ROUND_VALUE_PARTS {
                assert!(
                    !status.message().contains(part)
                        && !String::from_utf8_lossy(status.details()).contains(part),
                    "{status:?}"
                );
            }
            (Err(status), took)
        }
    }
}

/// One kill round of the audit trail (see [`audit_kill_rounds`]). Returns
/// a line for the summary.
async fn audit_kill_round(
    harness: &Harness,
    round: u32,
    rng: &mut Rng,
    pool: &mut Option<Arc<Vec<Known>>>,
    all_answered: &mut Vec<Answered>,
) -> String {
    let label = format!("audit kill round {round}");
    let audit_log = harness.dir.join("data/audit.log");
    phase(format!("{label}: the server to start"));
    let server = harness.start();
    let pool = match pool {
        Some(pool) => pool.clone(),
        None => pool
            .insert(Arc::new(fake_phone_pool(&server.addr, harness).await))
            .clone(),
    };
    let answered: AnsweredLog = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..AUDIT_CLIENTS)
        .map(|c| {
            tokio::spawn(audited_client(
                server.addr.clone(),
                (harness.tls("support"), harness.tls("orders")),
                rng.next() ^ c as u64,
                pool.clone(),
                answered.clone(),
            ))
        })
        .collect();
    phase(format!(
        "{label}: {MIN_REVEALS_PER_ROUND} reveals answered and a rotation before the kill"
    ));
    let reveals = |answered: &AnsweredLog| {
        answered
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.action == "detokenize")
            .count()
    };
    // And a rotation under this round's load, so the kill lands in a trail
    // of several files.
    let files = || {
        fieldvault::audit::trail::files_of(&audit_log)
            .unwrap()
            .len()
    };
    let files_at_start = files();
    bounded(
        Duration::from_secs(60),
        "the first reveals of the round and a rotation",
        async {
            while reveals(&answered) < MIN_REVEALS_PER_ROUND || files() == files_at_start {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        },
    )
    .await;
    phase(format!("{label}: load before the kill"));
    tokio::time::sleep(Duration::from_millis(rng.next() % 500)).await;
    phase(format!("{label}: kill -9 of the server"));
    server.kill9();
    let mut refused = 0;
    for (i, c) in clients.into_iter().enumerate() {
        phase(format!("{label}: client {i} to stop after the kill"));
        refused += bounded(WRITER_STOP_DEADLINE, "a client to stop after the kill", c)
            .await
            .unwrap()
            .1;
    }
    let answered = std::mem::take(&mut *answered.lock().unwrap());
    let (reveals, tokenizes) = (
        answered.iter().filter(|a| a.action == "detokenize").count(),
        answered.iter().filter(|a| a.action == "tokenize").count(),
    );
    all_answered.extend(answered);

    phase(format!(
        "{label}: the server to restart (it verifies the trail)"
    ));
    let server = harness.start();
    phase(format!("{label}: the trail after the restart"));
    let before = check_trail(
        &audit_log,
        &harness.master(),
        all_answered,
        &format!("{label}, after the restart"),
    );
    let last_before = all_answered
        .iter()
        .map(|a| before.seq_of[&a.request_id])
        .max()
        .unwrap();
    // The restarted server goes on: a reveal now comes after every event
    // answered before the kill, in the same chain.
    phase(format!("{label}: a reveal after the restart"));
    let mut client = common::connect(&server.addr, &harness.tls("support")).await;
    let (after, _) = reveal_once(&mut client, &pool[..3]).await;
    let after = after.unwrap_or_else(|s| panic!("{label}: a reveal after the restart: {s:?}"));
    drop(client);
    phase(format!("{label}: the server to stop"));
    let status = server.terminate(Duration::from_secs(30));
    assert!(status.success(), "{label}: the server exited {status:?}");
    phase(format!("{label}: the trail after the stop"));
    let stopped = check_trail(
        &audit_log,
        &harness.master(),
        all_answered,
        &format!("{label}, after the stop"),
    );
    let continued = stopped.seq_of[&after];
    assert!(
        continued > last_before && continued >= before.events,
        "{label}: the reveal after the restart is event {continued}, but the trail had \
         {} events (the last answered before the kill: {last_before})",
        before.events
    );
    format!(
        "{label}: {reveals} reveals and {tokenizes} tokenize calls answered before the kill \
         ({refused} refused), each with its event; {} events in {} files verify, one chain, \
         the restart went on at event {continued}",
        stopped.events, stopped.files
    )
}

/// Audit kill rounds (a store of their own, the trail rotating at
/// [`AUDIT_ROTATE_BYTES`]): concurrent clients reveal and tokenize while
/// the server is killed with SIGKILL at a random moment. After the restart
/// and after a clean stop, every call answered OK before the kill has its
/// event in the trail, the trail (every rotated file too) verifies, and
/// the restarted server continued the chain: sequence numbers go on, no
/// second chain starts.
async fn audit_kill_rounds(harness: &Harness, rng: &mut Rng) -> Vec<String> {
    let mut pool = None;
    let mut answered = Vec::new();
    let mut lines = Vec::new();
    for round in 0..AUDIT_KILL_ROUNDS {
        let line = audit_kill_round(harness, round, rng, &mut pool, &mut answered).await;
        println!("{line}");
        lines.push(line);
    }
    let rotated = fieldvault::audit::trail::files_of(&harness.dir.join("data/audit.log"))
        .unwrap()
        .len();
    assert!(
        rotated > AUDIT_KILL_ROUNDS as usize,
        "the trail rotated too little to prove anything ({rotated} files)"
    );
    lines
}

/// The file-size limit (RLIMIT_FSIZE, bytes) of process `pid`, as
/// /proc/PID/limits says (`None`: unlimited).
fn file_size_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max file size"))
        .unwrap();
    line["Max file size".len()..]
        .split_whitespace()
        .next()
        .and_then(|soft| soft.parse().ok())
}

/// Sets the soft file-size limit of process `pid` (`None`: unlimited) with
/// `prlimit` (util-linux); the hard limit stays as it is.
fn set_file_size_limit(pid: u32, limit: Option<u64>) {
    let soft = limit.map_or("unlimited".to_owned(), |b| b.to_string());
    let out = common::process::output_within(
        {
            let mut c = std::process::Command::new("prlimit");
            c.args(["--pid", &pid.to_string(), &format!("--fsize={soft}:")]);
            c
        },
        Duration::from_secs(10),
    );
    assert!(
        out.status.success(),
        "prlimit (util-linux) could not set the file-size limit of the server: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(file_size_limit(pid), limit, "prlimit did not take");
}

/// Appends to `path` until it holds `size` bytes: a line saying why, then
/// dots.
fn fill_up_to(path: &Path, size: u64) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    let note = b"--- crash harness: this log is filled up to the server's file-size limit \
                 (the log shares the full disk) ---\n";
    let len = file.metadata().unwrap().len();
    assert!(
        len + note.len() as u64 + 1 < size,
        "the log is already near the limit"
    );
    file.write_all(note).unwrap();
    let dots = size - len - note.len() as u64 - 1;
    file.write_all(&vec![b'.'; dots as usize]).unwrap();
    file.write_all(b"\n").unwrap();
    assert_eq!(file.metadata().unwrap().len(), size);
}

/// The largest file under `dir`.
fn largest_file(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                largest_file(&e.path())
            } else {
                meta.len()
            }
        })
        .max()
        .unwrap_or(0)
}

/// The audit trail on a full disk: the server runs under a file-size limit
/// (RLIMIT_FSIZE, set on the running process: a write past it fails with
/// EFBIG, as on a full disk) that the audit file reaches (reveals write
/// nothing to the store) and the server's log (stderr, a file here) is
/// filled up to: a log line it cannot write must not trip it. Concurrent reveals of 100 tokens each fill the
/// audit file up to the limit; from then on every refused reveal must be
/// answered UNAVAILABLE within [`REFUSAL_DEADLINE`] and reveal nothing,
/// health must report NOT_SERVING, and the file must hold no torn line
/// (every line an event, the trail verifies). Then the limit is raised on
/// the running process: reveals must work again within a few seconds,
/// health must report SERVING, and the trail must record the outage
/// (`audit.sink_recovered`) and verify, with every reveal answered OK in
/// it.
async fn audit_full_round(harness: &Harness) -> String {
    let label = "audit full-disk round";
    let audit_log = harness.dir.join("data/audit.log");
    phase(format!("{label}: the server to start"));
    let mut server = harness.start();
    let pid = server.pid();
    let pool = Arc::new(fake_phone_pool(&server.addr, harness).await);
    let mut client = common::connect(&server.addr, &harness.tls("support")).await;
    let mut ok_ids = Vec::new();
    let (first, _) = reveal_once(&mut client, &pool).await;
    ok_ids.push(first.unwrap_or_else(|s| panic!("{label}: a reveal with room: {s:?}")));
    // Let the store's background work end, then limit every file the
    // server writes to what the largest one holds now and 512 KiB more: of
    // its files only the audit file still grows.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let limit = (largest_file(&harness.dir) + (512 << 10)).next_multiple_of(4096);
    phase(format!(
        "{label}: the file-size limit ({limit} bytes) to be reached"
    ));
    set_file_size_limit(pid, Some(limit));
    // The server's log shares the full disk: it is filled up to the limit
    // (by this process, which has none), so every line the server logs
    // from now on fails to be written.
    fill_up_to(&harness.log, limit);

    // Four clients reveal the 100 tokens over and over until told to stop;
    // each call's outcome and how long it took are kept.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    type Outcomes = Arc<Mutex<Vec<(Result<String, tonic::Status>, Duration)>>>;
    let outcomes: Outcomes = Arc::new(Mutex::new(Vec::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, outcomes, pool) = (stop.clone(), outcomes.clone(), pool.clone());
        let mut client = common::connect(&server.addr, &harness.tls("support")).await;
        load.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let outcome = reveal_once(&mut client, &pool).await;
                outcomes.lock().unwrap().push(outcome);
            }
        }));
    }
    // Until the last 20 calls were all refused (a refused call's event may
    // still fit where a reveal's does not, so refusals and a recovery may
    // alternate for a moment first).
    let steady = |outcomes: &Outcomes| {
        let o = outcomes.lock().unwrap();
        o.len() >= 20 && o[o.len() - 20..].iter().all(|(r, _)| r.is_err())
    };
    bounded(
        Duration::from_secs(120),
        "reveals to be refused steadily at the file-size limit",
        async {
            while !steady(&outcomes) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        },
    )
    .await;
    assert!(server.is_running(), "{label}: the server died at the limit");
    // Health, while the refusals go on.
    phase(format!("{label}: health to report NOT_SERVING"));
    let mut health_client =
        HealthClient::new(common::channel(&server.addr, &harness.tls("support")).await);
    bounded(
        Duration::from_secs(10),
        "health to report NOT_SERVING",
        async {
            loop {
                let reported = [
                    health(&mut health_client, "").await,
                    health(&mut health_client, "fieldvault.v1.Vault").await,
                ];
                if reported == [ServingStatus::NotServing as i32; 2] {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        bounded(common::CALL_DEADLINE, "a client to stop", task)
            .await
            .unwrap();
    }
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let refused: Vec<Duration> = outcomes
        .iter()
        .filter(|(r, _)| r.is_err())
        .map(|(_, took)| *took)
        .collect();
    let slowest = refused.iter().max().copied().unwrap_or_default();
    assert!(
        slowest <= REFUSAL_DEADLINE,
        "{label}: a refused reveal took {slowest:?} (at most {REFUSAL_DEADLINE:?}): {refused:?}"
    );
    let revealed_before = outcomes.iter().filter(|(r, _)| r.is_ok()).count();
    assert!(
        revealed_before > 0,
        "{label}: the limit bit before any reveal under load"
    );
    ok_ids.extend(outcomes.into_iter().filter_map(|(r, _)| r.ok()));

    // No torn line: the file ends with a whole event and every line is
    // one (a failed write is cut back at once; a read can only race it by
    // microseconds, so one that ends torn is read again).
    phase(format!("{label}: the audit file at the limit"));
    let mut text = String::new();
    for _ in 0..5 {
        text = std::fs::read_to_string(&audit_log).unwrap();
        if text.ends_with('\n') {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(text.len() as u64 <= limit, "{label}: {} bytes", text.len());
    assert!(
        (text.len() as u64) > limit - 100 * 1024,
        "{label}: the audit file ({} bytes) is far from the limit ({limit}): was it the audit \
         file that failed?",
        text.len()
    );
    let at_limit = check_trail(
        &audit_log,
        &harness.master(),
        &[],
        &format!("{label}, at the limit"),
    );

    // Still refused right before the limit is raised.
    let (still, took) = reveal_once(&mut client, &pool).await;
    assert!(
        still.is_err(),
        "{label}: a reveal at the limit was answered"
    );
    assert!(took <= REFUSAL_DEADLINE, "{label}: {took:?}");

    phase(format!(
        "{label}: reveals to work again once the limit is raised"
    ));
    set_file_size_limit(pid, None);
    let raised = Instant::now();
    let recovered_id = bounded(
        Duration::from_secs(10),
        "a reveal after the limit was raised",
        async {
            loop {
                if let (Ok(id), _) = reveal_once(&mut client, &pool).await {
                    return id;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    )
    .await;
    let recovered_after = raised.elapsed();
    assert!(
        recovered_after <= Duration::from_secs(5),
        "{label}: reveals came back {recovered_after:?} after the limit was raised"
    );
    ok_ids.push(recovered_id.clone());
    phase(format!("{label}: health to report SERVING again"));
    bounded(
        Duration::from_secs(10),
        "health to report SERVING again",
        async {
            loop {
                let reported = [
                    health(&mut health_client, "").await,
                    health(&mut health_client, "fieldvault.v1.Vault").await,
                ];
                if reported == [ServingStatus::Serving as i32; 2] {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    )
    .await;
    let serving_after = raised.elapsed();
    drop(client);
    phase(format!("{label}: the server to stop"));
    let status = server.terminate(Duration::from_secs(30));
    assert!(status.success(), "{label}: the server exited {status:?}");

    phase(format!("{label}: the trail after the recovery"));
    let expected: Vec<Answered> = ok_ids
        .iter()
        .map(|id| Answered {
            request_id: id.clone(),
            action: "detokenize",
            tokens: pool.iter().map(|k| k.token.clone()).collect(),
        })
        .collect();
    let facts = check_trail(
        &audit_log,
        &harness.master(),
        &expected,
        &format!("{label}, at the end"),
    );
    let recovered_seq = facts.seq_of[&recovered_id];
    let (last_recovery, refused_events) = facts
        .recovered
        .iter()
        .copied()
        .filter(|(seq, _)| *seq < recovered_seq)
        .max()
        .unwrap_or_else(|| {
            panic!("{label}: no audit.sink_recovered event before the first reveal after the raise")
        });
    assert!(
        last_recovery >= at_limit.events && refused_events > 0,
        "{label}: the recovery event ({last_recovery}, {refused_events} refused) is not the one \
         after the limit was raised (the trail had {} events at the limit)",
        at_limit.events
    );
    format!(
        "{label}: audit file limited to {limit} bytes: {revealed_before} reveals answered, then \
         {} refused UNAVAILABLE (slowest {:.0} ms), health NOT_SERVING, no torn line; limit raised: \
         reveals back after {:.1}s, SERVING after {:.1}s, audit.sink_recovered ({refused_events} \
         refused) and {} events verify",
        refused.len(),
        slowest.as_secs_f64() * 1000.0,
        recovered_after.as_secs_f64(),
        serving_after.as_secs_f64(),
        facts.events
    )
}

// ---------------------------------------------------------------------------
// Abuse controls (issue 14): quota counters, freezes and canaries are store
// writes like records; each is killed mid-flight here.

const ABUSE_POLICY: &str = r#"
version = 1
[freeze]
quota_hits = { count = 0 }
unknown_tokens = { count = 0 }
[[rules]]
callers = ["spiffe://fieldvault.dev/orders"]
action = "tokenize"
kinds = ["phone"]
[[rules]]
name = "support crash-check"
callers = ["spiffe://fieldvault.dev/support"]
action = "detokenize"
kinds = ["phone"]
purposes = ["crash-check"]
reveal = "full"
quota = ["100000000/day"]
[[rules]]
name = "operators"
callers = ["spiffe://fieldvault.dev/admin"]
action = "admin"
"#;

const ABUSE_KILL_ROUNDS: u32 = 3;
/// Concurrent revealers (each a quota charge per call).
const ABUSE_REVEALERS: usize = 3;
/// Callers each round's admin freezes and unfreezes, in turn.
const FREEZE_TARGETS: usize = 4;

/// Values asked for and values answered, across every round (one UTC day).
#[derive(Default)]
struct Reveals {
    asked: u64,
    answered: u64,
}

/// What the admin knows of a freeze target: its state as last answered,
/// and the operation in flight (sent, not answered: it may or may not
/// have happened when the server died).
#[derive(Clone, Copy, Default, Debug)]
struct TargetState {
    frozen: bool,
    in_flight: Option<bool>,
}

/// Reveals 1 to 5 pool tokens per call until the server is gone; counts
/// every value asked for before the call and every value answered.
async fn quota_revealer(
    addr: String,
    tls: ClientTls,
    seed: u64,
    pool: Arc<Vec<Known>>,
    reveals: Arc<Mutex<Reveals>>,
) {
    let Ok(channel) = common::try_channel(&addr, &tls).await else {
        return;
    };
    let mut client = pb::vault_client::VaultClient::new(channel);
    let mut rng = Rng(seed | 1);
    loop {
        let n = 1 + (rng.next() % 5) as usize;
        let start = (rng.next() % (pool.len() - n) as u64) as usize;
        let known = &pool[start..start + n];
        reveals.lock().unwrap().asked += n as u64;
        match client
            .detokenize(pb::DetokenizeRequest {
                tokens: known.iter().map(|k| k.token.clone()).collect(),
                purpose: "crash-check".into(),
                justification: String::new(),
                grant_id: String::new(),
            })
            .await
        {
            Ok(response) => {
                let results = response.into_inner().results;
                for (r, k) in results.iter().zip(known) {
                    match &r.outcome {
                        Some(pb::detokenize_result::Outcome::Revealed(v)) => {
                            assert_eq!(v.value, k.value)
                        }
                        other => panic!("{} did not reveal: {other:?}", k.token),
                    }
                }
                reveals.lock().unwrap().answered += n as u64;
            }
            Err(status) if request_id(status.metadata()).is_none() => return,
            Err(status) => panic!("a reveal was refused: {status:?}"),
        }
    }
}

/// Freezes and unfreezes its targets in turn until the server is gone,
/// keeping each target's answered state and the operation in flight.
async fn freezer(
    addr: String,
    tls: ClientTls,
    targets: Vec<String>,
    states: Arc<Mutex<HashMap<String, TargetState>>>,
    canaries: Arc<Mutex<Vec<String>>>,
) {
    let Ok(channel) = common::try_channel(&addr, &tls).await else {
        return;
    };
    let mut admin = pb::admin_client::AdminClient::new(channel);
    for step in 0.. {
        let target = &targets[step % targets.len()];
        let freeze = !states.lock().unwrap()[target].frozen;
        states.lock().unwrap().get_mut(target).unwrap().in_flight = Some(freeze);
        let outcome = if freeze {
            admin
                .freeze_caller(pb::FreezeCallerRequest {
                    caller: target.clone(),
                    reason: format!("crash round step {step}"),
                })
                .await
                .map(|_| ())
        } else {
            admin
                .unfreeze_caller(pb::UnfreezeCallerRequest {
                    caller: target.clone(),
                })
                .await
                .map(|_| ())
        };
        match outcome {
            Ok(()) => {
                let mut states = states.lock().unwrap();
                let s = states.get_mut(target).unwrap();
                s.frozen = freeze;
                s.in_flight = None;
            }
            Err(status) if request_id(status.metadata()).is_none() => return,
            Err(status) => panic!("freezing {target} ({freeze}) was refused: {status:?}"),
        }
        // Now and then a canary.
        if step % 3 == 0 {
            match admin
                .create_canaries(pb::CreateCanariesRequest {
                    kind: FieldKind::Phone as i32,
                    count: 2,
                })
                .await
            {
                Ok(r) => canaries.lock().unwrap().extend(r.into_inner().tokens),
                Err(status) if request_id(status.metadata()).is_none() => return,
                Err(status) => panic!("creating canaries was refused: {status:?}"),
            }
        }
    }
}

async fn abuse_kill_round(
    harness: &Harness,
    round: u32,
    rng: &mut Rng,
    pool: &mut Option<Arc<Vec<Known>>>,
    reveals: &Arc<Mutex<Reveals>>,
    all_canaries: &Arc<Mutex<Vec<String>>>,
) -> String {
    let label = format!("abuse kill round {round}");
    phase(format!("{label}: the server to start"));
    let server = harness.start();
    let pool = match pool {
        Some(pool) => pool.clone(),
        None => pool
            .insert(Arc::new(fake_phone_pool(&server.addr, harness).await))
            .clone(),
    };
    let targets: Vec<String> = (0..FREEZE_TARGETS)
        .map(|i| format!("crash-target-{round}-{i}"))
        .collect();
    let states: Arc<Mutex<HashMap<String, TargetState>>> = Arc::new(Mutex::new(
        targets
            .iter()
            .map(|t| (t.clone(), TargetState::default()))
            .collect(),
    ));
    let (answered_before, canaries_before) = (
        reveals.lock().unwrap().answered,
        all_canaries.lock().unwrap().len(),
    );
    let mut tasks: Vec<tokio::task::JoinHandle<()>> = (0..ABUSE_REVEALERS)
        .map(|c| {
            tokio::spawn(quota_revealer(
                server.addr.clone(),
                harness.tls("support"),
                rng.next() ^ c as u64,
                pool.clone(),
                reveals.clone(),
            ))
        })
        .collect();
    tasks.push(tokio::spawn(freezer(
        server.addr.clone(),
        harness.tls("admin"),
        targets.clone(),
        states.clone(),
        all_canaries.clone(),
    )));
    phase(format!(
        "{label}: reveals, freezes and canaries before the kill"
    ));
    bounded(Duration::from_secs(60), "load before the kill", async {
        loop {
            let revealed = reveals.lock().unwrap().answered - answered_before;
            let canaries = all_canaries.lock().unwrap().len() - canaries_before;
            if revealed >= 50 && canaries >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(rng.next() % 400)).await;
    phase(format!("{label}: kill -9 of the server"));
    server.kill9();
    for t in tasks {
        bounded(WRITER_STOP_DEADLINE, "a client to stop after the kill", t)
            .await
            .unwrap();
    }

    phase(format!("{label}: the server to restart"));
    let server = harness.start();
    let mut admin = pb::admin_client::AdminClient::new(
        common::channel(&server.addr, &harness.tls("admin")).await,
    );
    let callers = admin
        .list_callers(pb::ListCallersRequest {})
        .await
        .unwrap()
        .into_inner()
        .callers;
    // The quota count: every value answered was counted before it left,
    // and nothing counted was never asked for.
    let used = callers
        .iter()
        .find(|c| c.caller == "spiffe://fieldvault.dev/support")
        .and_then(|c| c.quotas.first())
        .map(|q| q.used)
        .unwrap_or(0);
    let (asked, answered) = {
        let r = reveals.lock().unwrap();
        (r.asked, r.answered)
    };
    let same_day = {
        let day = |ms: u128| ms / 86_400_000;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        day(now) == day(now - 120_000)
    };
    if same_day {
        assert!(
            answered <= used && used <= asked,
            "{label}: the quota counts {used} values; {answered} were answered and {asked} asked for"
        );
    }
    // Each freeze target is as last answered, or as the operation in
    // flight at the kill left it.
    let frozen: HashMap<&str, bool> = callers
        .iter()
        .map(|c| (c.caller.as_str(), c.frozen.is_some()))
        .collect();
    let states = states.lock().unwrap().clone();
    let mut in_flight = 0;
    for (target, s) in &states {
        let now = frozen.get(target.as_str()).copied().unwrap_or(false);
        assert!(
            now == s.frozen || Some(now) == s.in_flight,
            "{label}: {target} is {} after the restart; answered {:?}",
            if now { "frozen" } else { "not frozen" },
            s
        );
        in_flight += usize::from(s.in_flight.is_some());
    }
    // Every canary answered is kept.
    let listed: std::collections::HashSet<String> = admin
        .list_canaries(pb::ListCanariesRequest {})
        .await
        .unwrap()
        .into_inner()
        .canaries
        .into_iter()
        .map(|c| c.token)
        .collect();
    let canaries = all_canaries.lock().unwrap().clone();
    for c in &canaries {
        assert!(
            listed.contains(c),
            "{label}: canary {c} was answered but is gone"
        );
    }
    drop(admin);
    phase(format!("{label}: the server to stop"));
    let status = server.terminate(Duration::from_secs(30));
    assert!(status.success(), "{label}: the server exited {status:?}");
    format!(
        "{label}: quota counts {used} values ({answered} answered, {asked} asked); \
         {FREEZE_TARGETS} freeze targets as answered ({in_flight} in flight at the kill); \
         {} canaries kept",
        canaries.len()
    )
}

/// Abuse kill rounds (a store of their own): support reveals under a quota
/// while an admin freezes and unfreezes callers and creates canaries; the
/// server is SIGKILLed at a random moment. After each restart the quota
/// count is at least every value answered (a value is counted before it
/// leaves) and at most every value asked; each freeze is as answered (or
/// as the operation in flight left it); every canary answered is there;
/// at the end the trail verifies and holds no value.
async fn abuse_kill_rounds(dir: &Path, rng: &mut Rng) -> Vec<String> {
    phase("abuse kill rounds: certificates and config");
    let harness = Harness::with_policy(dir, ABUSE_POLICY, "");
    harness
        .pki
        .issue_client("admin", "admin", Some("spiffe://fieldvault.dev/admin"));
    let reveals = Arc::new(Mutex::new(Reveals::default()));
    let canaries = Arc::new(Mutex::new(Vec::new()));
    let mut pool = None;
    let mut lines = Vec::new();
    for round in 0..ABUSE_KILL_ROUNDS {
        let line = abuse_kill_round(&harness, round, rng, &mut pool, &reveals, &canaries).await;
        println!("{line}");
        lines.push(line);
    }
    phase("abuse kill rounds: the trail and the store");
    let audit_log = dir.join("data/audit.log");
    let key = fieldvault::audit::keyfile::load(
        &audit_log,
        &MasterKey::from_file(&harness.master()).unwrap(),
    )
    .unwrap();
    let files = fieldvault::audit::trail::files_of(&audit_log).unwrap();
    fieldvault::audit::verify::verify_files(&key, &files)
        .unwrap_or_else(|e| panic!("the abuse rounds' trail does not verify: {e}"));
    for file in fieldvault::audit::trail::everything_of(&audit_log).unwrap_or_default() {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for part in AUDIT_ROUND_VALUE_PARTS {
            assert!(!text.contains(part), "{} holds a value", file.display());
        }
    }
    harness.check_integrity().await;
    lines
}

// ---------------------------------------------------------------------------
// Data lifecycle (issue 15): deletes and erasures are store writes
// (tombstones through the log and the overlay); each is killed mid-flight
// here, under tokenize load.

const LIFECYCLE_POLICY: &str = r#"
version = 1
[freeze]
unknown_tokens = { count = 0 }
[[rules]]
callers = ["spiffe://fieldvault.dev/orders"]
action = "tokenize"
kinds = ["phone", "address"]
[[rules]]
callers = ["spiffe://fieldvault.dev/orders"]
action = "delete"
kinds = ["phone", "address"]
[[rules]]
callers = ["spiffe://fieldvault.dev/support"]
action = "detokenize"
kinds = ["phone", "address"]
purposes = ["crash-check"]
reveal = "full"
[[rules]]
callers = ["spiffe://fieldvault.dev/admin"]
action = "erase"
kinds = ["phone", "address"]
"#;

const LIFECYCLE_KILL_ROUNDS: u32 = 3;

/// What the deleters and erasers know, across every round: tokens whose
/// deletion was answered (they must never detokenize again), and what was
/// in flight at the kill (sent, not answered: either outcome is right).
#[derive(Default)]
struct Deletions {
    gone: std::collections::HashSet<String>,
    /// Tokens of delete calls in flight.
    maybe_tokens: std::collections::HashSet<String>,
    /// Values (kind, canonical) of erase calls in flight.
    maybe_values: std::collections::HashSet<(i32, String)>,
    /// Delete calls answered; erase calls answered; tokens they removed.
    deletes: u64,
    erases: u64,
    removed: u64,
}

/// Deletes 1 to 4 acknowledged tokens per call until the server is gone.
async fn deleter(
    addr: String,
    tls: ClientTls,
    seed: u64,
    acked: Acked,
    state: Arc<Mutex<Deletions>>,
) {
    let Ok(channel) = common::try_channel(&addr, &tls).await else {
        return;
    };
    let mut client = pb::vault_client::VaultClient::new(channel);
    let mut rng = Rng(seed | 1);
    loop {
        let picked: Vec<String> = {
            let acked = acked.lock().unwrap();
            let state = state.lock().unwrap();
            let live: Vec<&String> = acked.keys().filter(|t| !state.gone.contains(*t)).collect();
            if live.len() < 10 {
                Vec::new()
            } else {
                let n = 1 + (rng.next() % 4) as usize;
                (0..n)
                    .map(|_| live[(rng.next() % live.len() as u64) as usize].clone())
                    .collect()
            }
        };
        if picked.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        state
            .lock()
            .unwrap()
            .maybe_tokens
            .extend(picked.iter().cloned());
        match client
            .delete_tokens(pb::DeleteTokensRequest {
                tokens: picked.clone(),
            })
            .await
        {
            Ok(response) => {
                let mut state = state.lock().unwrap();
                for (token, r) in picked.iter().zip(response.into_inner().results) {
                    match r.outcome {
                        Some(pb::delete_tokens_result::Outcome::Deleted(_)) => {
                            state.removed += 1;
                        }
                        // Named twice in the call, or erased meanwhile:
                        // absent either way.
                        Some(pb::delete_tokens_result::Outcome::Error(e))
                            if e.code == tonic::Code::NotFound as i32 => {}
                        other => panic!("deleting {token} failed: {other:?}"),
                    }
                    state.gone.insert(token.clone());
                    state.maybe_tokens.remove(token);
                }
                state.deletes += 1;
            }
            Err(status) if request_id(status.metadata()).is_none() => return,
            Err(status) => panic!("a delete was refused: {status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Erases pool phones (deterministic) and acknowledged addresses (random)
/// until the server is gone. Every token of the value acknowledged before
/// the erase was sent must be in its answer (or gone already).
async fn eraser(
    addr: String,
    tls: ClientTls,
    seed: u64,
    acked: Acked,
    state: Arc<Mutex<Deletions>>,
) {
    let Ok(channel) = common::try_channel(&addr, &tls).await else {
        return;
    };
    let mut client = pb::vault_client::VaultClient::new(channel);
    let mut rng = Rng(seed | 1);
    loop {
        let (kind, raw, canonical) = if rng.next() % 2 == 0 {
            let (raw, canonical) = phone_value(rng.next());
            (FieldKind::Phone, raw, canonical)
        } else {
            let picked = {
                let acked = acked.lock().unwrap();
                let addresses: Vec<&String> = acked
                    .values()
                    .filter(|(k, _)| *k == FieldKind::Address)
                    .map(|(_, v)| v)
                    .collect();
                (!addresses.is_empty())
                    .then(|| addresses[(rng.next() % addresses.len() as u64) as usize].clone())
            };
            let Some(v) = picked else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            (FieldKind::Address, v.clone(), v)
        };
        let before: Vec<String> = acked
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, (k, v))| *k == kind && *v == canonical)
            .map(|(t, _)| t.clone())
            .collect();
        let key = (kind as i32, canonical.clone());
        state.lock().unwrap().maybe_values.insert(key.clone());
        match client
            .erase_value(pb::EraseValueRequest {
                field: Some(pb::Field {
                    kind: kind as i32,
                    value: raw,
                    ..Default::default()
                }),
            })
            .await
        {
            Ok(response) => {
                let erased = response.into_inner().erased_tokens;
                let mut state = state.lock().unwrap();
                // A token a deleter deleted first is gone already, also
                // when that delete's answer is not noted yet (in flight).
                for t in &before {
                    assert!(
                        erased.contains(t)
                            || state.gone.contains(t)
                            || state.maybe_tokens.contains(t),
                        "an erase missed {t}, a token of its value acknowledged before it"
                    );
                }
                state.removed += erased.len() as u64;
                state.gone.extend(erased);
                state.erases += 1;
                state.maybe_values.remove(&key);
            }
            Err(status) if request_id(status.metadata()).is_none() => return,
            Err(status) => panic!("an erase was refused: {status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// Tokenizes addresses with a 300 ms time to live, 1 to 5 a call, until
/// the server is gone, so the sweeper deletes records all along; returns
/// the tokens acknowledged.
async fn expiring_writer(addr: String, tls: ClientTls, seed: u64) -> Vec<String> {
    let Ok(channel) = common::try_channel(&addr, &tls).await else {
        return Vec::new();
    };
    let mut client = pb::vault_client::VaultClient::new(channel);
    let mut rng = Rng(seed | 1);
    let mut tokens = Vec::new();
    loop {
        let n = 1 + (rng.next() % 5) as usize;
        let fields = (0..n)
            .map(|_| pb::Field {
                kind: FieldKind::Address as i32,
                value: format!("{} Fakestreet Short Lane, Testville", rng.next() % 10_000),
                ttl: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 300_000_000,
                }),
                ..Default::default()
            })
            .collect();
        match client
            .tokenize(pb::TokenizeRequest {
                fields,
                purpose: None,
            })
            .await
        {
            Ok(r) => {
                for result in r.into_inner().results {
                    match result.outcome {
                        Some(pb::tokenize_result::Outcome::Token(t)) => tokens.push(t),
                        other => {
                            panic!("an expiring item failed while the server was up: {other:?}")
                        }
                    }
                }
            }
            Err(_) => return tokens,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// After a restart: a token whose deletion was answered is not found; one
/// touched by a call in flight at the kill may be either (and is settled
/// now); every other acknowledged token reveals exactly its value.
/// Returns how many tokens live and how many were in doubt.
async fn check_lifecycle(
    label: &str,
    addr: &str,
    harness: &Harness,
    acked: &Acked,
    state: &Arc<Mutex<Deletions>>,
) -> (usize, usize) {
    let acked = acked.lock().unwrap().clone();
    let (gone, maybe_tokens, maybe_values) = {
        let s = state.lock().unwrap();
        (
            s.gone.clone(),
            s.maybe_tokens.clone(),
            s.maybe_values.clone(),
        )
    };
    let (mut live, mut doubtful) = (0, 0);
    let mut settled_gone = Vec::new();
    let mut problems = Vec::new();
    detokenize_acked(addr, &harness.tls("support"), &acked, |token, outcome| {
        let (kind, value) = &acked[token];
        let in_doubt =
            maybe_tokens.contains(token) || maybe_values.contains(&(*kind as i32, value.clone()));
        let revealed = match outcome {
            Some(pb::detokenize_result::Outcome::Revealed(v)) => {
                if v.value != *value {
                    problems.push(format!("{token} revealed another value"));
                }
                true
            }
            Some(pb::detokenize_result::Outcome::Error(e))
                if e.code == tonic::Code::NotFound as i32 =>
            {
                false
            }
            other => {
                problems.push(format!("{token}: {other:?}"));
                return;
            }
        };
        if gone.contains(token) {
            if revealed {
                problems.push(format!("{token} was deleted and came back"));
            }
        } else if in_doubt {
            doubtful += 1;
            if !revealed {
                settled_gone.push(token.to_owned());
            } else {
                live += 1;
            }
        } else if revealed {
            live += 1;
        } else {
            problems.push(format!(
                "{token} was acknowledged, never deleted, and is lost"
            ));
        }
    })
    .await;
    assert!(problems.is_empty(), "{label}: {problems:?}");
    let gone = {
        let mut s = state.lock().unwrap();
        s.gone.extend(settled_gone);
        s.maybe_tokens.clear();
        s.maybe_values.clear();
        s.gone.clone()
    };
    // A deterministic value whose token was deleted or erased gets a new
    // one: tokenize every pool phone; none may answer a deleted token.
    let mut orders = common::connect(addr, &harness.tls("orders")).await;
    let fields = (0..PHONE_POOL)
        .map(|n| pb::Field {
            kind: FieldKind::Phone as i32,
            value: phone_value(n).0,
            ..Default::default()
        })
        .collect();
    for token in common::tokens_for(&mut orders, fields).await {
        assert!(
            !gone.contains(&token),
            "{label}: a pool phone was answered with its deleted token {token}"
        );
    }
    (live, doubtful)
}

async fn lifecycle_kill_round(
    harness: &Harness,
    round: u32,
    rng: &mut Rng,
    acked: &Acked,
    state: &Arc<Mutex<Deletions>>,
) -> String {
    let label = format!("lifecycle kill round {round}");
    phase(format!("{label}: the server to start"));
    let server = harness.start();
    let (deletes_before, erases_before) = {
        let s = state.lock().unwrap();
        (s.deletes, s.erases)
    };
    let writers = spawn_writers(harness, &server, rng, acked, Duration::from_millis(2));
    let mut tasks: Vec<tokio::task::JoinHandle<()>> = (0..2)
        .map(|d| {
            tokio::spawn(deleter(
                server.addr.clone(),
                harness.tls("orders"),
                rng.next() ^ d,
                acked.clone(),
                state.clone(),
            ))
        })
        .collect();
    tasks.push(tokio::spawn(eraser(
        server.addr.clone(),
        harness.tls("admin"),
        rng.next(),
        acked.clone(),
        state.clone(),
    )));
    let expiring = tokio::spawn(expiring_writer(
        server.addr.clone(),
        harness.tls("orders"),
        rng.next(),
    ));
    phase(format!(
        "{label}: deletes and erasures under load before the kill"
    ));
    bounded(
        Duration::from_secs(90),
        "deletes and erasures before the kill",
        async {
            loop {
                let (deletes, erases) = {
                    let s = state.lock().unwrap();
                    (s.deletes - deletes_before, s.erases - erases_before)
                };
                if deletes >= 30 && erases >= 5 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(rng.next() % 300)).await;
    phase(format!("{label}: kill -9 of the server"));
    server.kill9();
    for t in tasks {
        bounded(WRITER_STOP_DEADLINE, "a deleter to stop after the kill", t)
            .await
            .unwrap();
    }
    writers_stopped(&label, writers).await;
    let expiring = bounded(
        WRITER_STOP_DEADLINE,
        "the expiring writer to stop",
        expiring,
    )
    .await
    .unwrap();
    let in_doubt = {
        let s = state.lock().unwrap();
        (s.maybe_tokens.len(), s.maybe_values.len())
    };

    phase(format!(
        "{label}: the server to restart and every token checked"
    ));
    let server = harness.start();
    let (live, doubtful) = check_lifecycle(&label, &server.addr, harness, acked, state).await;
    // Expired by now (300 ms after they were answered): unknown, whether
    // the sweeper reached them before the kill or not.
    let expired: HashMap<String, (FieldKind, String)> = expiring
        .iter()
        .map(|t| (t.clone(), (FieldKind::Address, String::new())))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    detokenize_acked(&server.addr, &harness.tls("support"), &expired, |token, outcome| {
        assert!(
            matches!(&outcome, Some(pb::detokenize_result::Outcome::Error(e)) if e.code == tonic::Code::NotFound as i32),
            "{label}: {token} expired but answered {outcome:?}"
        );
    })
    .await;
    phase(format!("{label}: the server to stop"));
    let status = server.terminate(Duration::from_secs(30));
    assert!(status.success(), "{label}: the server exited {status:?}");
    let s = state.lock().unwrap();
    format!(
        "{label}: {} deletes and {} erasures answered ({} tokens removed in all), {} tokens \
         deleted so far never came back; {live} live tokens all reveal; {doubtful} tokens in \
         doubt ({} delete tokens, {} erase values in flight at the kill); {} tokens with a \
         300 ms ttl all expired",
        s.deletes - deletes_before,
        s.erases - erases_before,
        s.removed,
        s.gone.len(),
        in_doubt.0,
        in_doubt.1,
        expiring.len()
    )
}

/// Lifecycle kill rounds (a store of their own): tokenize load while
/// deleters delete acknowledged tokens and an eraser erases phones and
/// addresses; the server is SIGKILLed at a random moment. After each
/// restart no token whose deletion was answered detokenizes, every
/// acknowledged token not deleted does, and calls in flight at the kill
/// went one way or the other; an erasure's answer names every token of its
/// value acknowledged before it. At the end the integrity check is clean
/// and the trail verifies and holds no value.
async fn lifecycle_kill_rounds(dir: &Path, rng: &mut Rng) -> Vec<String> {
    phase("lifecycle kill rounds: certificates and config");
    let harness = Harness::with_policy(
        dir,
        LIFECYCLE_POLICY,
        "[retention]\nsweep_interval = \"100ms\"\nsweep_batch = 50",
    );
    harness
        .pki
        .issue_client("admin", "admin", Some("spiffe://fieldvault.dev/admin"));
    let acked: Acked = Arc::new(Mutex::new(HashMap::new()));
    let state = Arc::new(Mutex::new(Deletions::default()));
    let mut lines = Vec::new();
    for round in 0..LIFECYCLE_KILL_ROUNDS {
        let line = lifecycle_kill_round(&harness, round, rng, &acked, &state).await;
        println!("{line}");
        lines.push(line);
    }
    phase("lifecycle kill rounds: the trail and the store");
    let audit_log = dir.join("data/audit.log");
    let key = fieldvault::audit::keyfile::load(
        &audit_log,
        &MasterKey::from_file(&harness.master()).unwrap(),
    )
    .unwrap();
    let files = fieldvault::audit::trail::files_of(&audit_log).unwrap();
    fieldvault::audit::verify::verify_files(&key, &files)
        .unwrap_or_else(|e| panic!("the lifecycle rounds' trail does not verify: {e}"));
    for file in fieldvault::audit::trail::everything_of(&audit_log).unwrap_or_default() {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(
            !text.contains("Fakestreet") && !text.contains("+86138"),
            "{} holds a value",
            file.display()
        );
    }
    let report = harness.check_integrity().await;
    let log = std::fs::read_to_string(&harness.log).unwrap_or_default();
    let sweeps = log.matches("sweep: expired tokens deleted").count();
    assert!(
        sweeps > 0,
        "the sweeper never deleted anything during the rounds"
    );
    lines.push(format!(
        "lifecycle rounds' store: {} records, integrity clean, trail verifies; {sweeps} \
         sweeper passes deleted expired records between the kills",
        report.records
    ));
    lines
}

// ---------------------------------------------------------------------------
// Approved workflows (issue 16): a grant's use is a durable counter charged
// before any value leaves; each round kills the server while a workflow
// reveals under a grant.

const GRANTS_POLICY: &str = r#"
version = 1
[[rules]]
callers = ["spiffe://fieldvault.dev/orders"]
action = "tokenize"
kinds = ["address"]
[[rules]]
name = "fulfilment ships under a grant"
callers = ["spiffe://fieldvault.dev/fulfilment"]
action = "detokenize"
kinds = ["address"]
purposes = ["shipping"]
reveal = "full"
requires_grant = true
approvals = 2
approvers = ["spiffe://fieldvault.dev/approver1", "spiffe://fieldvault.dev/approver2"]
[[rules]]
name = "operators"
callers = ["spiffe://fieldvault.dev/admin"]
action = "grants"
"#;

const GRANT_KILL_ROUNDS: u32 = 3;
/// The round that also revokes its grant (after the kill, mid-use).
const GRANT_REVOKE_ROUND: u32 = 1;
/// Concurrent fulfilment clients revealing under one grant.
const GRANT_CLIENTS: usize = 4;
/// Each round's grant allows this many reveals.
const GRANT_MAX_REVEALS: u32 = 200;
/// Addresses the grant rounds tokenize (once) and reveal.
const GRANT_POOL: u64 = 30;
const FULFILMENT: &str = "spiffe://fieldvault.dev/fulfilment";
const APPROVERS: [&str; 2] = [
    "spiffe://fieldvault.dev/approver1",
    "spiffe://fieldvault.dev/approver2",
];
/// Texts no file of the grant rounds may hold: parts of every address they
/// tokenize.
const GRANT_ROUND_VALUE_PARTS: [&str; 2] = ["Example Street", "Springfield"];

/// A fake address.
fn example_address(n: u64) -> String {
    format!("{n} Example Street, Springfield")
}

/// How a grant client stopped.
#[derive(Debug)]
enum GrantStop {
    /// The server went away; `in_flight` values were asked by the call it
    /// cut off (sent, never answered: its units may or may not be used).
    Killed { in_flight: u64 },
    /// FAILED_PRECONDITION naming the grant's state (exhausted, revoked).
    Refused(String),
    /// The clients were answered more values than the grant had left.
    Over { answered: u64, left: u64 },
}

/// What one grant client saw.
#[derive(Debug)]
struct GrantClientEnd {
    /// Calls answered OK, each with its request id and tokens.
    answered: Vec<Answered>,
    /// Values those calls revealed.
    values: u64,
    /// Calls refused because fewer units were left than they asked.
    short: u64,
    stop: GrantStop,
}

/// Reveals 1 to 5 pool addresses per call under `grant_id` until the
/// server is gone or the grant refuses (exhausted, revoked); adds every
/// value answered to `progress`, and stops at once when that passes
/// `left` (the units the grant had left: more were revealed). A call
/// refused because fewer units are left than it asked makes the client
/// ask one at a time from then on.
async fn grant_client(
    addr: String,
    tls: ClientTls,
    seed: u64,
    pool: Arc<Vec<Known>>,
    grant_id: String,
    (progress, left): (Arc<std::sync::atomic::AtomicU64>, u64),
) -> GrantClientEnd {
    let mut end = GrantClientEnd {
        answered: Vec::new(),
        values: 0,
        short: 0,
        stop: GrantStop::Killed { in_flight: 0 },
    };
    let Ok(channel) = common::try_channel(&addr, &tls).await else {
        return end;
    };
    let mut client = pb::vault_client::VaultClient::new(channel);
    let mut rng = Rng(seed | 1);
    let mut most = 5;
    loop {
        let picked: Vec<&Known> = (0..1 + rng.next() % most)
            .map(|_| &pool[(rng.next() % pool.len() as u64) as usize])
            .collect();
        let n = picked.len() as u64;
        let outcome = client
            .detokenize(pb::DetokenizeRequest {
                tokens: picked.iter().map(|k| k.token.clone()).collect(),
                purpose: "shipping".into(),
                justification: String::new(),
                grant_id: grant_id.clone(),
            })
            .await;
        match outcome {
            Ok(response) => {
                let request_id =
                    request_id(response.metadata()).expect("an answer without x-request-id");
                let results = response.into_inner().results;
                assert_eq!(results.len(), picked.len());
                for (result, known) in results.iter().zip(&picked) {
                    match &result.outcome {
                        Some(pb::detokenize_result::Outcome::Revealed(v)) => {
                            assert!(
                                v.value == known.value,
                                "{} revealed another value",
                                known.token
                            )
                        }
                        other => {
                            panic!("{} did not reveal under the grant: {other:?}", known.token)
                        }
                    }
                }
                end.answered.push(Answered {
                    request_id,
                    action: "detokenize",
                    tokens: picked.iter().map(|k| k.token.clone()).collect(),
                });
                end.values += n;
                let answered = progress.fetch_add(n, std::sync::atomic::Ordering::SeqCst) + n;
                if answered > left {
                    end.stop = GrantStop::Over { answered, left };
                    return end;
                }
            }
            Err(status) if request_id(status.metadata()).is_none() => {
                end.stop = GrantStop::Killed { in_flight: n };
                return end;
            }
            Err(status) => {
                for part in GRANT_ROUND_VALUE_PARTS {
                    assert!(!status.message().contains(part), "{status:?}");
                }
                assert_eq!(
                    status.code(),
                    tonic::Code::FailedPrecondition,
                    "a reveal under grant {grant_id} was refused: {status:?}"
                );
                if status.message().contains("reveals left") {
                    end.short += 1;
                    most = 1;
                    continue;
                }
                end.stop = GrantStop::Refused(status.message().to_owned());
                return end;
            }
        }
    }
}

type GrantClients = Vec<tokio::task::JoinHandle<GrantClientEnd>>;

fn spawn_grant_clients(
    harness: &Harness,
    server: &ServerProcess,
    rng: &mut Rng,
    pool: &Arc<Vec<Known>>,
    grant_id: &str,
    (progress, left): (&Arc<std::sync::atomic::AtomicU64>, u64),
) -> GrantClients {
    (0..GRANT_CLIENTS)
        .map(|c| {
            tokio::spawn(grant_client(
                server.addr.clone(),
                harness.tls("fulfilment"),
                rng.next() ^ c as u64,
                pool.clone(),
                grant_id.to_owned(),
                (progress.clone(), left),
            ))
        })
        .collect()
}

/// Waits (bounded) for every client to stop; fails when they were
/// answered more values than the grant had left.
async fn grant_clients_stopped(label: &str, clients: GrantClients) -> Vec<GrantClientEnd> {
    let mut ends = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        phase(format!("{label}: grant client {i} to stop"));
        ends.push(
            bounded(WRITER_STOP_DEADLINE, "a grant client to stop", c)
                .await
                .unwrap(),
        );
    }
    for end in &ends {
        if let GrantStop::Over { answered, left } = end.stop {
            panic!("{label}: the clients were answered {answered} values under a grant with {left} left");
        }
    }
    ends
}

/// Tokenizes the [`GRANT_POOL`] addresses (random mode: new tokens).
async fn address_pool(addr: &str, harness: &Harness) -> Vec<Known> {
    let mut client = common::connect(addr, &harness.tls("orders")).await;
    let fields = (0..GRANT_POOL)
        .map(|n| pb::Field {
            kind: FieldKind::Address as i32,
            value: example_address(n),
            ..Default::default()
        })
        .collect();
    let tokens = common::tokens_for(&mut client, fields).await;
    tokens
        .into_iter()
        .zip(0..)
        .map(|(token, n)| Known {
            token,
            value: example_address(n),
        })
        .collect()
}

async fn grants_client(addr: &str, harness: &Harness, who: &str) -> GrantsClient<Channel> {
    GrantsClient::new(common::channel(addr, &harness.tls(who)).await)
}

/// The grant as the server has it now (read by the workflow itself).
async fn grant_now(addr: &str, harness: &Harness, grant_id: &str) -> pb::Grant {
    grants_client(addr, harness, "fulfilment")
        .await
        .get_grant(pb::GetGrantRequest {
            grant_id: grant_id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap()
}

/// One detokenize under `grant_id` that must be refused FAILED_PRECONDITION
/// naming `state`.
async fn refused_under_grant(
    label: &str,
    addr: &str,
    harness: &Harness,
    pool: &[Known],
    grant_id: &str,
    state: &str,
) {
    let mut client = common::connect(addr, &harness.tls("fulfilment")).await;
    let status = client
        .detokenize(pb::DetokenizeRequest {
            tokens: vec![pool[0].token.clone()],
            purpose: "shipping".into(),
            justification: String::new(),
            grant_id: grant_id.to_owned(),
        })
        .await
        .expect_err("a reveal under an ended grant was answered");
    assert_eq!(
        status.code(),
        tonic::Code::FailedPrecondition,
        "{label}: {status:?}"
    );
    assert!(
        status.message().contains(state) && status.message().contains(grant_id),
        "{label}: the refusal does not name the grant and its state {state}: {status:?}"
    );
}

/// What a grant round leaves for the trail check.
struct GrantRound {
    grant_id: String,
    requested_by: String,
    /// Its use as the server counts it at the end of the round.
    used: u64,
    answered: Vec<Answered>,
}

/// Sums what the clients saw: (values answered, values in flight at the
/// kill, calls refused for too few units left).
fn tally_grant_clients(ends: &[GrantClientEnd], answered: &mut Vec<Answered>) -> (u64, u64, u64) {
    let (mut values, mut in_flight, mut short) = (0, 0, 0);
    for end in ends {
        values += end.values;
        short += end.short;
        if let GrantStop::Killed { in_flight: n } = end.stop {
            in_flight += n;
        }
        answered.extend(end.answered.iter().cloned());
    }
    (values, in_flight, short)
}

async fn grant_kill_round(
    harness: &Harness,
    round: u32,
    rng: &mut Rng,
    pool: &mut Option<Arc<Vec<Known>>>,
) -> (String, GrantRound) {
    let label = format!("grant kill round {round}");
    phase(format!("{label}: the server to start"));
    let server = harness.start();
    let pool = match pool {
        Some(pool) => pool.clone(),
        None => pool
            .insert(Arc::new(address_pool(&server.addr, harness).await))
            .clone(),
    };
    let n = u64::from(GRANT_MAX_REVEALS);

    // Requested by the workflow itself or by an operator, in turn; then
    // approved by both approvers.
    phase(format!("{label}: a grant requested and approved"));
    let requester = if round % 2 == 0 {
        "admin"
    } else {
        "fulfilment"
    };
    let grant = grants_client(&server.addr, harness, requester)
        .await
        .request_grant(pb::RequestGrantRequest {
            caller: if requester == "admin" {
                FULFILMENT.into()
            } else {
                String::new()
            },
            kinds: vec![FieldKind::Address as i32],
            purpose: "shipping".into(),
            max_reveals: GRANT_MAX_REVEALS,
            valid_for: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            reason: format!("crash harness, grant round {round}"),
            tokens: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    assert_eq!(grant.state, pb::GrantState::Pending as i32, "{grant:?}");
    assert_eq!(grant.caller, FULFILMENT);
    let grant_id = grant.grant_id.clone();
    for (i, approver) in ["approver1", "approver2"].into_iter().enumerate() {
        let g = grants_client(&server.addr, harness, approver)
            .await
            .approve_grant(pb::ApproveGrantRequest {
                grant_id: grant_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .grant
            .unwrap();
        let expected = if i == 0 {
            pb::GrantState::Pending
        } else {
            pb::GrantState::Active
        };
        assert_eq!(g.state, expected as i32, "{label}: {g:?}");
    }

    // Concurrent reveals under it, killed at a random number of units
    // (between a fifth and three fifths of the grant): mid-use.
    let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let clients = spawn_grant_clients(harness, &server, rng, &pool, &grant_id, (&progress, n));
    let target = n / 5 + rng.next() % (2 * n / 5);
    phase(format!(
        "{label}: {target} values revealed under the grant before the kill"
    ));
    bounded(Duration::from_secs(60), "reveals before the kill", async {
        while progress.load(std::sync::atomic::Ordering::SeqCst) < target {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    phase(format!("{label}: kill -9 of the server"));
    server.kill9();
    let ends = grant_clients_stopped(&label, clients).await;
    for end in &ends {
        assert!(
            matches!(end.stop, GrantStop::Killed { .. }),
            "{label}: a client stopped before the kill: {:?}",
            end.stop
        );
    }
    let mut answered = Vec::new();
    let (before, in_flight, short_before) = tally_grant_clients(&ends, &mut answered);

    // After the restart: every value answered was counted before it left;
    // nothing counted was never asked for.
    phase(format!("{label}: the server to restart"));
    let server = harness.start();
    let g = grant_now(&server.addr, harness, &grant_id).await;
    let used = u64::from(g.used);
    assert!(
        before <= used && used <= before + in_flight,
        "{label}: the grant counts {used} values used; {before} were answered and {in_flight} \
         asked by calls in flight at the kill"
    );
    assert!(used <= n, "{label}: {used} used of {n}");
    assert_eq!(u64::from(g.remaining), n - used, "{label}: {g:?}");
    assert_eq!(g.state, pb::GrantState::Active as i32, "{label}: {g:?}");

    // The clients go on.
    let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let clients = spawn_grant_clients(
        harness,
        &server,
        rng,
        &pool,
        &grant_id,
        (&progress, n - used),
    );
    let (after, short_after, end_state, final_used) = if round == GRANT_REVOKE_ROUND {
        // Revoked mid-use: the clients are refused from their next call,
        // and so is everyone after a restart.
        phase(format!("{label}: reveals after the restart, then a revoke"));
        bounded(
            Duration::from_secs(60),
            "reveals before the revoke",
            async {
                while progress.load(std::sync::atomic::Ordering::SeqCst) < 10 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            },
        )
        .await;
        let revoked = grants_client(&server.addr, harness, "approver1")
            .await
            .revoke_grant(pb::RevokeGrantRequest {
                grant_id: grant_id.clone(),
                reason: "crash harness: revoked mid-use".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .grant
            .unwrap();
        assert_eq!(revoked.state, pb::GrantState::Revoked as i32);
        let ends = grant_clients_stopped(&label, clients).await;
        for end in &ends {
            assert!(
                matches!(&end.stop, GrantStop::Refused(m) if m.contains("revoked")),
                "{label}: a client did not stop at the revocation: {:?}",
                end.stop
            );
        }
        let (after, _, short) = tally_grant_clients(&ends, &mut answered);
        refused_under_grant(&label, &server.addr, harness, &pool, &grant_id, "revoked").await;
        let g = grant_now(&server.addr, harness, &grant_id).await;
        let revoked_used = u64::from(g.used);
        // A call in flight at the revocation may have been charged and then
        // refused ("it changed while this call ran"): at most one call of
        // at most 5 values per client spent units without an answer.
        let unanswered = revoked_used.saturating_sub(used + after);
        assert!(
            before + after <= revoked_used
                && revoked_used >= used + after
                && unanswered <= 5 * GRANT_CLIENTS as u64,
            "{label}: {revoked_used} used at the revocation; {before} answered before the kill, \
             {used} counted after it, {after} answered since"
        );
        // The revocation is durable: killed right after, it holds.
        phase(format!("{label}: kill -9 after the revoke, and a restart"));
        server.kill9();
        let server = harness.start();
        refused_under_grant(&label, &server.addr, harness, &pool, &grant_id, "revoked").await;
        let g = grant_now(&server.addr, harness, &grant_id).await;
        assert_eq!(g.state, pb::GrantState::Revoked as i32, "{label}: {g:?}");
        assert_eq!(u64::from(g.used), revoked_used, "{label}: {g:?}");
        assert_eq!(u64::from(g.remaining), n - revoked_used, "{label}: {g:?}");
        phase(format!("{label}: the server to stop"));
        let status = server.terminate(Duration::from_secs(30));
        assert!(status.success(), "{label}: the server exited {status:?}");
        (after, short, "revoked", revoked_used)
    } else {
        // Until the grant is exhausted: every unit left after the restart
        // is answered, none more.
        phase(format!(
            "{label}: reveals after the restart until the grant is exhausted"
        ));
        let ends = bounded(
            Duration::from_secs(90),
            "the clients to exhaust the grant",
            grant_clients_stopped(&label, clients),
        )
        .await;
        for end in &ends {
            assert!(
                matches!(&end.stop, GrantStop::Refused(m) if m.contains("exhausted")),
                "{label}: a client stopped before the grant was exhausted: {:?}",
                end.stop
            );
        }
        let (after, _, short) = tally_grant_clients(&ends, &mut answered);
        assert_eq!(
            after,
            n - used,
            "{label}: {used} units were used at the restart; {after} values were answered \
             after it, of the {} left",
            n - used
        );
        let g = grant_now(&server.addr, harness, &grant_id).await;
        assert_eq!(g.state, pb::GrantState::Exhausted as i32, "{label}: {g:?}");
        assert_eq!((u64::from(g.used), g.remaining), (n, 0), "{label}: {g:?}");
        phase(format!("{label}: the server to stop"));
        let status = server.terminate(Duration::from_secs(30));
        assert!(status.success(), "{label}: the server exited {status:?}");
        (after, short, "exhausted", n)
    };
    let total = before + after;
    assert!(
        total <= n,
        "{label}: {total} values were revealed under a grant of {n}"
    );
    let line = format!(
        "{label}: requested by {requester}; {before} values answered before the kill ({in_flight} \
         in flight), {used} counted after the restart; {after} more answered, then {end_state} \
         ({total} revealed, {final_used} used of {n}; {} calls asked for more than was left)",
        short_before + short_after
    );
    let facts = GrantRound {
        grant_id,
        requested_by: match requester {
            "admin" => "spiffe://fieldvault.dev/admin".to_owned(),
            _ => FULFILMENT.to_owned(),
        },
        used: final_used,
        answered,
    };
    (line, facts)
}

/// Every event of the trail at `audit_log`, in chain order.
fn trail_events(audit_log: &Path) -> Vec<fieldvault::audit::event::Event> {
    let mut events = Vec::new();
    for file in fieldvault::audit::trail::files_of(audit_log).unwrap() {
        let text = std::fs::read_to_string(&file).unwrap();
        for line in text.lines() {
            let (_, _, event) = fieldvault::audit::verify::parse_line(line)
                .unwrap_or_else(|| panic!("{}: not a chained event: {line}", file.display()));
            events.push(event);
        }
    }
    events
}

/// Files under `dir` (recursively) that hold one of `needles`.
fn files_holding(dir: &Path, needles: &[&str]) -> Vec<String> {
    let mut hits = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return hits;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            hits.extend(files_holding(&path, needles));
        } else if let Ok(bytes) = std::fs::read(&path) {
            for needle in needles {
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    hits.push(format!("{} holds {needle:?}", path.display()));
                }
            }
        }
    }
    hits
}

/// Grant kill rounds (a store of their own): a grant of
/// [`GRANT_MAX_REVEALS`] is requested (by an operator or the workflow) and
/// approved twice; concurrent fulfilment clients reveal under it and the
/// server is SIGKILLed mid-use. After the restart the grant's count is at
/// least every value answered and at most that plus the values of calls
/// in flight; the clients go on until the grant is exhausted (every unit
/// left answered, none more) or, in one round, revoked (refused from then
/// on, across a restart). At the end the trail verifies with an event
/// naming the grant for every answered reveal, no file holds a value, and
/// the integrity check is clean.
async fn grant_kill_rounds(dir: &Path, rng: &mut Rng) -> Vec<String> {
    phase("grant kill rounds: certificates and config");
    let harness = Harness::with_policy(dir, GRANTS_POLICY, "");
    let mut pool = None;
    let mut lines = Vec::new();
    let mut rounds = Vec::new();
    for round in 0..GRANT_KILL_ROUNDS {
        let (line, facts) = grant_kill_round(&harness, round, rng, &mut pool).await;
        println!("{line}");
        lines.push(line);
        rounds.push(facts);
    }

    phase("grant kill rounds: the trail and the store");
    let audit_log = dir.join("data/audit.log");
    let answered: Vec<Answered> = rounds.iter().flat_map(|r| r.answered.clone()).collect();
    let trail = check_trail(
        &audit_log,
        &harness.master(),
        &answered,
        "the grant rounds' trail",
    );
    let events = trail_events(&audit_log);
    let by_request: HashMap<&str, &fieldvault::audit::event::Event> = events
        .iter()
        .filter_map(|e| e.request_id.as_deref().map(|id| (id, e)))
        .collect();
    let approvers = serde_json::Value::from(APPROVERS.to_vec());
    for r in &rounds {
        let when = format!("grant {}", r.grant_id);
        // Every answered reveal: its event names the grant, who asked for
        // it and who approved it, and the units it used.
        for call in &r.answered {
            let e = by_request[call.request_id.as_str()];
            let detail = |name: &str| e.details.get(name).cloned().unwrap_or_default();
            assert_eq!(detail("grant"), r.grant_id.as_str(), "{when}: {e:?}");
            assert_eq!(
                detail("grant_requested_by"),
                r.requested_by.as_str(),
                "{when}: {e:?}"
            );
            assert_eq!(detail("grant_approvers"), approvers, "{when}: {e:?}");
            assert_eq!(
                detail("grant_units"),
                call.tokens.len() as u64,
                "{when}: {e:?}"
            );
        }
        // Units the trail says were used: no more than the grant counts
        // (an event is written after its units are), and its lifecycle.
        let naming: Vec<&fieldvault::audit::event::Event> = events
            .iter()
            .filter(|e| {
                e.details.get("grant").and_then(|g| g.as_str()) == Some(r.grant_id.as_str())
            })
            .collect();
        let units: u64 = naming
            .iter()
            .filter(|e| {
                e.action == "detokenize"
                    && e.decision == fieldvault::audit::event::Decision::Allowed
            })
            .filter_map(|e| e.details.get("grant_units").and_then(|u| u.as_u64()))
            .sum();
        let answered: u64 = r.answered.iter().map(|a| a.tokens.len() as u64).sum();
        assert!(
            answered <= units && units <= r.used,
            "{when}: the trail has {units} units used; {answered} values were answered and the \
             grant counts {}",
            r.used
        );
        let ops: Vec<&str> = naming
            .iter()
            .filter(|e| e.action.starts_with("grant.") && e.action != "grant.get")
            .map(|e| e.action.as_str())
            .collect();
        assert!(
            ops.starts_with(&["grant.request", "grant.approve", "grant.approve"]),
            "{when}: {ops:?}"
        );
    }
    let mut hits = files_holding(&dir.join("data"), &GRANT_ROUND_VALUE_PARTS);
    let log = std::fs::read_to_string(&harness.log).unwrap_or_default();
    for part in GRANT_ROUND_VALUE_PARTS {
        if log.contains(part) {
            hits.push(format!("the server log holds {part:?}"));
        }
    }
    assert!(hits.is_empty(), "a value was written in clear: {hits:?}");
    let report = harness.check_integrity().await;
    lines.push(format!(
        "grant rounds' store: {} records, integrity clean; the trail verifies ({} events), every \
         answered reveal's event names its grant, no file holds a value",
        report.records, trail.events
    ));
    lines
}
