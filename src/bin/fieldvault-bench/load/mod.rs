//! The load generator of `fieldvault-bench`: a load generator over real mTLS with gRPC status
//! checks and latency histograms, run against the vault and, in the same
//! run with the same client, against a transport ceiling (the same service
//! with no work behind it).
//!
//! By default it starts both servers itself as child processes (so their
//! RSS can be read from /proc) on a fresh data dir with a dev PKI made by
//! rcgen. With `--addr` it loads a vault that is already running instead
//! (one started with `serve --dev --data-dir DIR`, whose dev PKI it reuses);
//! the ceiling is still started here. Each scenario runs for `--duration`
//! seconds against each server: first the ceiling, after a pause that lets
//! the previous load's background work finish, then the vault.

use fieldvault::client::{self, ClientTls};
use fieldvault::grpc::pb;
use fieldvault::grpc::pb::admin_client::AdminClient;
use fieldvault::grpc::pb::key_admin_client::KeyAdminClient;
use fieldvault::grpc::pb::vault_client::VaultClient;
use hdrhistogram::Histogram;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

mod grants;
mod lifecycle;
pub use grants::{GrantsOptions, GrantsReport};
pub use lifecycle::{LifecycleOptions, LifecycleReport};

/// Settings of one benchmark run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub duration: Duration,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// HTTP/2 connections the requests are spread over.
    pub connections: usize,
    /// Tokens stored before the read scenarios run.
    pub preload: u64,
    /// Scenario names to run (empty: all).
    pub scenarios: Vec<String>,
    /// Where the servers keep their data (a temporary dir if `None`).
    pub data_dir: Option<PathBuf>,
    /// sled cache bound for the vault server.
    pub cache_capacity_mib: u64,
    /// Load this running vault instead of starting one. Needs `data_dir`:
    /// the data dir whose `dev/` PKI the vault was started with.
    pub addr: Option<String>,
    /// The purpose detokenize calls declare.
    pub purpose: String,
    /// The `fieldvault` binary to start (default: next to this one).
    pub vault_bin: Option<PathBuf>,
    /// Run the rewrap phase at this rate (records/s): detokenize-1 without
    /// and during a rewrap, then the rewrap's own top speed.
    pub rewrap_rate: Option<u32>,
    /// Where the vault writes its audit trail (`None`: the data dir).
    pub audit_dir: Option<PathBuf>,
    /// Run the audit-sink phase: detokenize-1 with the trail where it is,
    /// then with it moved here (a tmpfs such as /dev/shm), side by side.
    pub compare_audit_dir: Option<PathBuf>,
    /// Run the quota phase: detokenize with the reader rule's quotas off,
    /// then on (quotas that never bite), side by side.
    pub compare_quotas: bool,
    /// Run the lifecycle phase: delete, erase and sweep rates, and
    /// detokenize-1 before and during a sweep.
    pub lifecycle: Option<LifecycleOptions>,
    /// Run the grants phase: detokenize without a grant (masked), then
    /// under an approved grant (in full, every value charged to it).
    pub grants: Option<GrantsOptions>,
    /// The vaults it starts serve Prometheus metrics (`[metrics] listen`
    /// on a loopback port), so that a run with and one without measure
    /// what counting costs.
    pub metrics: bool,
}

#[cfg(test)]
impl BenchOptions {
    /// Options of a report made in a unit test: 5 s, 64 in flight over 4
    /// connections, 1,000 preloaded, no phase at the end.
    pub fn for_tests() -> Self {
        Self {
            duration: Duration::from_secs(5),
            concurrency: 64,
            connections: 4,
            preload: 1000,
            scenarios: Vec::new(),
            data_dir: None,
            cache_capacity_mib: 8,
            addr: None,
            purpose: "bench".into(),
            vault_bin: None,
            rewrap_rate: None,
            audit_dir: None,
            compare_audit_dir: None,
            compare_quotas: false,
            lifecycle: None,
            grants: None,
            metrics: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    TokenizeRandom,
    TokenizeDeterministic,
    TokenizeBatch100,
    Detokenize,
    DetokenizeBatch100,
    Mixed8020,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::TokenizeRandom,
        Scenario::TokenizeDeterministic,
        Scenario::TokenizeBatch100,
        Scenario::Detokenize,
        Scenario::DetokenizeBatch100,
        Scenario::Mixed8020,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::TokenizeRandom => "tokenize-1-random",
            Scenario::TokenizeDeterministic => "tokenize-1-deterministic",
            Scenario::TokenizeBatch100 => "tokenize-100",
            Scenario::Detokenize => "detokenize-1",
            Scenario::DetokenizeBatch100 => "detokenize-100",
            Scenario::Mixed8020 => "mixed-80r-20w",
        }
    }

    /// Values per call (the mixed scenario counts one per call).
    fn values_per_call(self) -> u64 {
        match self {
            Scenario::TokenizeBatch100 | Scenario::DetokenizeBatch100 => 100,
            _ => 1,
        }
    }
}

/// The measurements of one scenario against one server.
#[derive(Clone, Debug)]
pub struct Measurement {
    pub calls: u64,
    pub failed: u64,
    pub seconds: f64,
    pub values_per_call: u64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// Values this run wrote (for bytes-per-token on disk).
    pub written: u64,
}

impl Measurement {
    pub fn ops_per_sec(&self) -> f64 {
        self.calls as f64 / self.seconds
    }

    pub fn values_per_sec(&self) -> f64 {
        self.ops_per_sec() * self.values_per_call as f64
    }
}

/// One row of the report.
#[derive(Clone, Debug)]
pub struct Row {
    pub scenario: Scenario,
    pub vault: Measurement,
    pub ceiling: Measurement,
    pub vault_rss_mib: Option<f64>,
}

/// The rewrap phase: detokenize-1 without and during a rewrap, and the
/// records per second the rewrap moved at the asked rate and unthrottled.
#[derive(Clone, Debug)]
pub struct RewrapReport {
    pub rate: u32,
    pub without: Measurement,
    pub during: Measurement,
    /// Records moved per second while detokenize-1 ran beside it.
    pub moved_per_sec_under_load: f64,
    pub during_unthrottled: Measurement,
    pub moved_per_sec_unthrottled_under_load: f64,
    /// Records moved per second by an unthrottled rewrap of every record,
    /// with no other load, timed from rotation to the job's end.
    pub moved_per_sec_unthrottled: f64,
    pub records: u64,
}

/// Detokenize-1 on a freshly started vault with its audit trail in one
/// place (the audit-sink phase).
#[derive(Clone, Debug)]
pub struct AuditSinkRun {
    /// What the row is: the trail where the vault keeps it, or moved.
    pub sink: &'static str,
    pub audit_log: PathBuf,
    /// The filesystem type the trail is on (from /proc/mounts).
    pub filesystem: String,
    pub measurement: Measurement,
}

/// Detokenize on a freshly started vault with the reader rule's quotas
/// off or on (the quota phase).
#[derive(Clone, Debug)]
pub struct QuotaRun {
    pub scenario: Scenario,
    /// Whether the reader rule had its quotas.
    pub quotas_on: bool,
    pub measurement: Measurement,
}

/// The quota phase (`--compare-quotas`): for each scenario, the run with
/// quotas off, then the run with them on.
#[derive(Clone, Debug)]
pub struct QuotaReport {
    /// The reader rule's quotas in the runs with quotas on.
    pub quotas: Vec<String>,
    pub runs: Vec<QuotaRun>,
    /// Values the runs with quotas on revealed, warm-ups included.
    pub revealed: u64,
    /// What the vault's day counter of the reader rule grew by over those
    /// runs (read with the Admin service's ListCallers).
    pub counted: u64,
    /// The day's window turned during those runs: `counted` is partial.
    pub day_turned: bool,
}

pub struct Report {
    pub rows: Vec<Row>,
    pub rewrap: Option<RewrapReport>,
    /// The audit-sink phase: the durable trail, then the trail moved.
    pub audit_sinks: Vec<AuditSinkRun>,
    /// The quota phase.
    pub quotas: Option<QuotaReport>,
    /// The lifecycle phase.
    pub lifecycle: Option<LifecycleReport>,
    /// The grants phase.
    pub grants: Option<GrantsReport>,
    pub stored_tokens: u64,
    pub store_bytes: u64,
    pub startup_seconds: Option<f64>,
    pub rss_after_restart_mib: Option<f64>,
    pub options: BenchOptions,
}

impl Report {
    pub fn failed_calls(&self) -> u64 {
        self.rows
            .iter()
            .map(|r| r.vault.failed + r.ceiling.failed)
            .sum::<u64>()
            + self.rewrap.as_ref().map_or(0, |r| {
                r.without.failed + r.during.failed + r.during_unthrottled.failed
            })
            + self
                .audit_sinks
                .iter()
                .map(|s| s.measurement.failed)
                .sum::<u64>()
            + self.quotas.as_ref().map_or(0, |q| {
                q.runs.iter().map(|r| r.measurement.failed).sum::<u64>()
            })
            + self
                .lifecycle
                .as_ref()
                .map_or(0, LifecycleReport::failed_calls)
            + self.grants.as_ref().map_or(0, GrantsReport::failed_calls)
    }

    /// The report as a Markdown table and notes.
    pub fn to_markdown(&self) -> String {
        let o = &self.options;
        let mut out = format!(
            "fieldvault bench: {}s per scenario and server, {} in flight over {} connections, {} tokens preloaded\n\n",
            o.duration.as_secs_f64(),
            o.concurrency,
            o.connections,
            o.preload
        );
        if o.metrics {
            out.push_str("the vaults serve Prometheus metrics ([metrics] listen)\n\n");
        }
        if !self.rows.is_empty() {
            out.push_str("| scenario | ops/s | values/s | p50 ms | p95 ms | p99 ms | max ms | ceiling ops/s | vs ceiling | server RSS MiB | failed |\n");
            out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        }
        for r in &self.rows {
            let v = &r.vault;
            out.push_str(&format!(
                "| {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {:.2} | {} | {} |\n",
                r.scenario.name(),
                v.ops_per_sec(),
                v.values_per_sec(),
                v.p50_us as f64 / 1000.0,
                v.p95_us as f64 / 1000.0,
                v.p99_us as f64 / 1000.0,
                v.max_us as f64 / 1000.0,
                r.ceiling.ops_per_sec(),
                v.ops_per_sec() / r.ceiling.ops_per_sec().max(1.0),
                r.vault_rss_mib.map_or("-".into(), |m| format!("{m:.0}")),
                v.failed + r.ceiling.failed,
            ));
        }
        out.push('\n');
        if let Some(r) = &self.rewrap {
            out.push_str(&format!(
                "rewrap of {} records: {:.0} records/s unthrottled with no other load (rotation to the job's end)\n",
                r.records, r.moved_per_sec_unthrottled
            ));
            out.push_str("| detokenize-1 | ops/s | p50 ms | p99 ms | max ms | failed | rewrap records/s |\n|---|---:|---:|---:|---:|---:|---:|\n");
            let during = format!("during a rewrap at {}/s", r.rate);
            for (what, m, moved) in [
                ("without a rewrap", &r.without, None),
                (during.as_str(), &r.during, Some(r.moved_per_sec_under_load)),
                (
                    "during an unthrottled rewrap",
                    &r.during_unthrottled,
                    Some(r.moved_per_sec_unthrottled_under_load),
                ),
            ] {
                out.push_str(&format!(
                    "| {what} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} |\n",
                    m.ops_per_sec(),
                    m.p50_us as f64 / 1000.0,
                    m.p99_us as f64 / 1000.0,
                    m.max_us as f64 / 1000.0,
                    m.failed,
                    moved.map_or("-".to_owned(), |v| format!("{v:.0}"))
                ));
            }
            out.push('\n');
        }
        if !self.audit_sinks.is_empty() {
            out.push_str(&self.audit_sinks_markdown());
        }
        if let Some(q) = &self.quotas {
            out.push_str(&quotas_markdown(q, o));
        }
        if let Some(l) = &self.lifecycle {
            out.push_str(&l.to_markdown(o));
        }
        if let Some(g) = &self.grants {
            out.push_str(&g.to_markdown(o));
        }
        if self.stored_tokens > 0 {
            out.push_str(&format!(
                "store: {} tokens, {:.1} MiB on disk, {:.0} bytes per token\n",
                self.stored_tokens,
                self.store_bytes as f64 / (1024.0 * 1024.0),
                self.store_bytes as f64 / self.stored_tokens as f64
            ));
        }
        if let Some(s) = self.startup_seconds {
            out.push_str(&format!(
                "restart with {} tokens stored: listening after {:.2}s, RSS {} MiB\n",
                self.stored_tokens,
                s,
                self.rss_after_restart_mib
                    .map_or("-".into(), |m| format!("{m:.0}"))
            ));
        }
        out
    }
}

impl Report {
    /// The audit-sink phase: one row per sink, and the ratio.
    fn audit_sinks_markdown(&self) -> String {
        let mut out = String::from(
            "detokenize-1 by audit sink (a fresh server on the same store for each; every \
             event fdatasync'ed before the answer, one sync per batch):\n\
             | audit trail | file | filesystem | ops/s | p50 ms | p99 ms | max ms | failed |\n\
             |---|---|---|---:|---:|---:|---:|---:|\n",
        );
        for s in &self.audit_sinks {
            let m = &s.measurement;
            out.push_str(&format!(
                "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} |\n",
                s.sink,
                s.audit_log.display(),
                s.filesystem,
                m.ops_per_sec(),
                m.p50_us as f64 / 1000.0,
                m.p99_us as f64 / 1000.0,
                m.max_us as f64 / 1000.0,
                m.failed
            ));
        }
        if let [durable, moved] = self.audit_sinks.as_slice() {
            out.push_str(&format!(
                "the trail where it is ({}) gives {:.2}x the throughput of the trail on {}\n",
                durable.filesystem,
                durable.measurement.ops_per_sec() / moved.measurement.ops_per_sec().max(1.0),
                moved.filesystem
            ));
            if durable.filesystem == "tmpfs" {
                out.push_str("note: the trail where it is sits on a tmpfs: it is not durable\n");
            }
            if moved.filesystem != "tmpfs" {
                out.push_str(&format!(
                    "note: {} is not a tmpfs ({}): use /dev/shm to compare with a memory sink\n",
                    moved.audit_log.parent().unwrap_or(Path::new("")).display(),
                    moved.filesystem
                ));
            }
        }
        out.push('\n');
        out
    }
}

/// The quota phase: one row per scenario and setting, and the ratios.
fn quotas_markdown(q: &QuotaReport, o: &BenchOptions) -> String {
    let mut out = format!(
        "detokenize with quotas off and on (--compare-quotas): what charging a reveal to its \
         rule's quotas costs. Each setting on a freshly started server, on the same store with \
         the same {} preloaded tokens, {} in flight; \"on\" gives the reader rule \
         quota = [{}], limits that never bite, so every call adds its values to {} durable \
         counters before they leave.\n\
         | scenario | reader rule quotas | ops/s | values/s | p50 ms | p99 ms | max ms | failed |\n\
         |---|---|---:|---:|---:|---:|---:|---:|\n",
        o.preload,
        o.concurrency,
        q.quotas
            .iter()
            .map(|q| format!("\"{q}\""))
            .collect::<Vec<_>>()
            .join(", "),
        q.quotas.len()
    );
    let runs: Vec<(Scenario, &str, &Measurement)> = q
        .runs
        .iter()
        .map(|r| {
            let label = if r.quotas_on { "on" } else { "off" };
            (r.scenario, label, &r.measurement)
        })
        .collect();
    paired_runs(&mut out, &runs, |x| {
        format!("quotas on give {x:.2}x the throughput of quotas off")
    });
    out.push_str(&format!(
        "the vault counted {} values against the reader rule's day quota; the runs with \
         quotas on revealed {} (warm-ups included)\n",
        q.counted, q.revealed
    ));
    if q.day_turned {
        out.push_str("note: the day's window turned during the runs: the count is partial\n");
    } else if q.counted != q.revealed {
        out.push_str("note: the vault's count and the values revealed differ\n");
    }
    out.push('\n');
    out
}

/// The vault under load: started here, or already running at an address.
enum Target {
    Own(ServerChild),
    External(String),
}

impl Target {
    fn addr(&self) -> &str {
        match self {
            Target::Own(child) => &child.addr,
            Target::External(addr) => addr,
        }
    }

    fn rss_mib(&self) -> Option<f64> {
        match self {
            Target::Own(child) => child.rss_mib(),
            Target::External(_) => None,
        }
    }
}

/// A server child process and where it listens.
struct ServerChild {
    child: Child,
    addr: String,
}

impl ServerChild {
    fn spawn(exe: &Path, args: &[&str]) -> Result<(Self, Duration), String> {
        Self::spawn_logged(exe, args, None)
    }

    /// As [`ServerChild::spawn`]; with `sweeps`, the server also logs its
    /// sweeper's passes, which are read from its stderr into `sweeps`
    /// (every other line is passed on to this stderr).
    fn spawn_logged(
        exe: &Path,
        args: &[&str],
        sweeps: Option<lifecycle::SweepLog>,
    ) -> Result<(Self, Duration), String> {
        let started = Instant::now();
        let mut command = Command::new(exe);
        command
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if sweeps.is_some() {
            command
                .env("RUST_LOG", lifecycle::SWEEP_LOG_FILTER)
                .env("NO_COLOR", "1")
                .stderr(Stdio::piped());
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("starting {}: {e}", exe.display()))?;
        if let (Some(sweeps), Some(stderr)) = (sweeps, child.stderr.take()) {
            lifecycle::read_sweeps(stderr, sweeps);
        }
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        let elapsed = started.elapsed();
                        let addr = addr.trim().to_owned();
                        // Keep draining stdout so the child never blocks on it.
                        std::thread::spawn(move || for _ in lines {});
                        return Ok((Self { child, addr }, elapsed));
                    }
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "{} {args:?} exited before listening",
                        exe.display()
                    ));
                }
            }
        }
    }

    fn rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb: f64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }

    /// SIGTERM and wait: the server shuts down cleanly.
    fn stop(mut self) {
        // Without a signal crate: `kill -TERM` from the system, else SIGKILL.
        let pid = self.child.id().to_string();
        let terminated = Command::new("kill").args(["-TERM", &pid]).status().is_ok();
        if !terminated {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The policy rule that lets `support` reveal (its quotas are counted
/// under this name).
const READER_RULE: &str = "bench reader";

/// The bench's policy: `orders` tokenizes and deletes; `support` reveals
/// phone and email in full for purpose `bench`, under `reader_quotas`
/// (none: no quota); `rotator` administers keys and reads quota use
/// (Admin); `admin` erases by value.
/// Table rows (scenario, `label`, calls/s, values/s, p50, p99, max,
/// failed) of runs measured in pairs, a baseline then a variant, and per
/// pair a line with `ratio` (the variant's calls/s over the baseline's)
/// and both latencies; a pair with failed calls gets no ratio.
pub(super) fn paired_runs(
    out: &mut String,
    runs: &[(Scenario, &str, &Measurement)],
    ratio: impl Fn(f64) -> String,
) {
    for (scenario, label, m) in runs {
        out.push_str(&format!(
            "| {} | {label} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {} |\n",
            scenario.name(),
            m.ops_per_sec(),
            m.values_per_sec(),
            m.p50_us as f64 / 1000.0,
            m.p99_us as f64 / 1000.0,
            m.max_us as f64 / 1000.0,
            m.failed
        ));
    }
    for pair in runs.chunks(2) {
        let [(scenario, _, base), (_, _, variant)] = pair else {
            continue;
        };
        let failed = base.failed + variant.failed;
        if failed > 0 {
            out.push_str(&format!(
                "{}: no ratio: {failed} calls failed\n",
                scenario.name()
            ));
            continue;
        }
        out.push_str(&format!(
            "{}: {} (p50 {:.2} -> {:.2} ms, p99 {:.2} -> {:.2} ms)\n",
            scenario.name(),
            ratio(variant.ops_per_sec() / base.ops_per_sec().max(1e-9)),
            base.p50_us as f64 / 1000.0,
            variant.p50_us as f64 / 1000.0,
            base.p99_us as f64 / 1000.0,
            variant.p99_us as f64 / 1000.0,
        ));
    }
}

fn bench_policy(reader_quotas: &[String]) -> String {
    let quota = if reader_quotas.is_empty() {
        String::new()
    } else {
        let quoted: Vec<String> = reader_quotas.iter().map(|q| format!("\"{q}\"")).collect();
        format!("quota = [{}]\n", quoted.join(", "))
    };
    format!(
        r#"version = 1
[[rules]]
name = "bench writer"
callers = ["spiffe://fieldvault.dev/orders"]
action = "tokenize"
kinds = ["phone", "email"]
[[rules]]
name = "{READER_RULE}"
callers = ["spiffe://fieldvault.dev/support"]
action = "detokenize"
kinds = ["phone", "email"]
purposes = ["bench"]
reveal = "full"
{quota}[[rules]]
name = "bench key rotation"
callers = ["spiffe://fieldvault.dev/rotator"]
action = "keys"
[[rules]]
name = "bench quota reading"
callers = ["spiffe://fieldvault.dev/rotator"]
action = "admin"
[[rules]]
name = "bench deletion"
callers = ["spiffe://fieldvault.dev/orders"]
action = "delete"
kinds = ["phone", "email"]
[[rules]]
name = "bench erasure"
callers = ["spiffe://fieldvault.dev/admin"]
action = "erase"
kinds = ["phone", "email"]
"#
    )
}

/// The reader rule's quotas in the quota phase: the largest limits a
/// policy takes, per minute and per day, so they never bite, but each is a
/// durable counter charged before a value leaves (the realistic case: a
/// rule with a rate and a daily cap).
fn never_biting_quotas() -> Vec<String> {
    let max = fieldvault::domain::policy::MAX_QUOTA;
    vec![format!("{max}/minute"), format!("{max}/day")]
}

/// What a phase changes in the vault's config.
#[derive(Clone, Copy, Debug, Default)]
struct Tuning {
    /// Phone tokens in random mode (default: deterministic).
    phone_random: bool,
    /// `[retention]`: the sweeper's interval and batch (default: the
    /// server's defaults).
    sweep: Option<(Duration, usize, u32)>,
    /// `[grants] max_reveals`: the ceiling of a grant (default: the
    /// server's).
    grants_max_reveals: Option<u32>,
    /// `[metrics] listen` on a loopback port.
    metrics: bool,
}

/// Writes a config (`name` under `dir`) for the vault (and the ceiling)
/// using a dev PKI, phone tokens deterministic (unless `tuning` says
/// random) and email tokens random, the audit trail at `audit_log`, and
/// `policy` in a file beside it (`<name>-policy.toml`).
fn write_config(
    dir: &Path,
    name: &str,
    cache_capacity_mib: u64,
    audit_log: &Path,
    policy_text: &str,
    tuning: &Tuning,
) -> Result<PathBuf, String> {
    let (config, _) = fieldvault::dev::prepare(dir, "127.0.0.1:0".parse().map_err(|_| "addr")?)
        .map_err(|e| e.to_string())?;
    let stem = name.strip_suffix(".toml").unwrap_or(name);
    let policy = dir.join(format!("{stem}-policy.toml"));
    std::fs::write(&policy, policy_text).map_err(|e| e.to_string())?;
    let fieldvault::config::MasterKeySource::File(key) = &config.master_key else {
        return Err("dev setup has no key file".into());
    };
    let phone_mode = if tuning.phone_random {
        "random"
    } else {
        "deterministic"
    };
    let retention = match tuning.sweep {
        Some((interval, batch, rate)) => format!(
            "[retention]\nsweep_interval = \"{}ms\"\nsweep_batch = {batch}\nsweep_rate = {rate}\n",
            interval.as_millis()
        ),
        None => String::new(),
    };
    let grants = match tuning.grants_max_reveals {
        Some(n) => format!("[grants]\nmax_reveals = {n}\n"),
        None => String::new(),
    };
    let metrics = if tuning.metrics {
        "[metrics]\nlisten = \"127.0.0.1:0\"\n"
    } else {
        ""
    };
    let text = format!(
        r#"listen = "127.0.0.1:0"
data_dir = "{data}"
policy_file = "{policy}"
audit_log = "{audit}"
cache_capacity_mib = {cache_capacity_mib}
[token_modes]
phone = "{phone_mode}"
email = "random"
[tls]
cert = "{cert}"
key = "{tls_key}"
client_ca = "{ca}"
[master_key]
file = "{key}"
{retention}{grants}{metrics}"#,
        data = dir.display(),
        policy = policy.display(),
        audit = audit_log.display(),
        cert = config.tls.cert.display(),
        tls_key = config.tls.key.display(),
        ca = config.tls.client_ca.display(),
        key = key.display(),
    );
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    Ok(path)
}

/// The numbered values the load generator sends. Every value is unique
/// within a run, so writes are real writes.
struct Values {
    next: AtomicU64,
}

impl Values {
    fn email(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("user{n:010}@example.com")
    }

    /// Chinese mobile numbers (+86 139 xxxx xxxx) are all valid: 10^8 of them.
    fn phone(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed) % 100_000_000;
        format!("+86139{n:08}")
    }
}

fn email_field(v: String) -> pb::Field {
    pb::Field {
        kind: pb::FieldKind::Email as i32,
        value: v,
        ..Default::default()
    }
}

/// Everything a worker needs.
struct Load {
    writers: Vec<VaultClient<Channel>>,
    readers: Vec<VaultClient<Channel>>,
    values: Values,
    tokens: Arc<Vec<String>>,
    purpose: String,
    /// The grant detokenize calls name (empty: none).
    grant_id: String,
}

enum Call {
    Tokenize(pb::TokenizeRequest),
    Detokenize(pb::DetokenizeRequest),
}

impl Load {
    fn request(&self, scenario: Scenario, seq: u64) -> Call {
        let pick = |i: u64| {
            // A cheap spread over the preloaded tokens.
            let n = self.tokens.len() as u64;
            self.tokens[((i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 11) as usize % n as usize]
                .clone()
        };
        let detokenize = |tokens: Vec<String>| {
            Call::Detokenize(pb::DetokenizeRequest {
                tokens,
                purpose: self.purpose.clone(),
                justification: String::new(),
                grant_id: self.grant_id.clone(),
            })
        };
        match scenario {
            Scenario::TokenizeRandom => Call::Tokenize(pb::TokenizeRequest {
                fields: vec![email_field(self.values.email())],
                purpose: None,
            }),
            Scenario::TokenizeDeterministic => Call::Tokenize(pb::TokenizeRequest {
                fields: vec![pb::Field {
                    kind: pb::FieldKind::Phone as i32,
                    value: self.values.phone(),
                    ..Default::default()
                }],
                purpose: None,
            }),
            Scenario::TokenizeBatch100 => Call::Tokenize(pb::TokenizeRequest {
                fields: (0..100).map(|_| email_field(self.values.email())).collect(),
                purpose: None,
            }),
            Scenario::Detokenize => detokenize(vec![pick(seq)]),
            Scenario::DetokenizeBatch100 => {
                detokenize((0..100).map(|i| pick(seq * 100 + i)).collect())
            }
            Scenario::Mixed8020 => {
                if seq % 5 == 0 {
                    self.request(Scenario::TokenizeRandom, seq)
                } else {
                    self.request(Scenario::Detokenize, seq)
                }
            }
        }
    }
}

/// Sends one call; true when the call and every item succeeded.
async fn send(load: &Load, worker: usize, call: Call) -> bool {
    match call {
        Call::Tokenize(req) => {
            let mut client = load.writers[worker % load.writers.len()].clone();
            match client.tokenize(req).await {
                Ok(resp) => resp
                    .into_inner()
                    .results
                    .iter()
                    .all(|r| matches!(r.outcome, Some(pb::tokenize_result::Outcome::Token(_)))),
                Err(_) => false,
            }
        }
        Call::Detokenize(req) => {
            let mut client = load.readers[worker % load.readers.len()].clone();
            match client.detokenize(req).await {
                Ok(resp) => resp.into_inner().results.iter().all(|r| {
                    matches!(r.outcome, Some(pb::detokenize_result::Outcome::Revealed(_)))
                }),
                Err(_) => false,
            }
        }
    }
}

/// Runs `scenario` for `duration` with `concurrency` workers.
async fn measure(
    load: Arc<Load>,
    scenario: Scenario,
    duration: Duration,
    concurrency: usize,
) -> Measurement {
    measure_until(load, scenario, duration, None, concurrency).await
}

/// Runs `scenario` with `concurrency` workers for `duration`, or until
/// `stop` is set if that comes first.
async fn measure_until(
    load: Arc<Load>,
    scenario: Scenario,
    duration: Duration,
    stop: Option<Arc<std::sync::atomic::AtomicBool>>,
    concurrency: usize,
) -> Measurement {
    let seq = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let load = load.clone();
        let seq = seq.clone();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
            let (mut calls, mut failed) = (0u64, 0u64);
            let stopped = || stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed));
            while Instant::now() < deadline && !stopped() {
                let call = load.request(scenario, seq.fetch_add(1, Ordering::Relaxed));
                let t = Instant::now();
                let ok = send(&load, worker, call).await;
                let us = t.elapsed().as_micros() as u64;
                calls += 1;
                if !ok {
                    failed += 1;
                }
                if let Some(h) = hist.as_mut() {
                    let _ = h.record(us.max(1));
                }
            }
            (calls, failed, hist)
        }));
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
    let (mut calls, mut failed) = (0, 0);
    for w in workers {
        match w.await {
            Ok((c, f, h)) => {
                calls += c;
                failed += f;
                if let (Some(total), Some(h)) = (total.as_mut(), h) {
                    let _ = total.add(h);
                }
            }
            Err(_) => failed += 1,
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let q = |p: f64| total.as_ref().map_or(0, |h| h.value_at_quantile(p));
    let written = match scenario {
        Scenario::TokenizeRandom | Scenario::TokenizeDeterministic => calls - failed,
        Scenario::TokenizeBatch100 => (calls - failed) * 100,
        Scenario::Mixed8020 => (calls - failed) / 5,
        _ => 0,
    };
    Measurement {
        calls,
        failed,
        seconds,
        values_per_call: scenario.values_per_call(),
        p50_us: q(0.50),
        p95_us: q(0.95),
        p99_us: q(0.99),
        max_us: total.as_ref().map_or(0, |h| h.max()),
        written,
    }
}

async fn clients(
    addr: &str,
    tls: &ClientTls,
    n: usize,
) -> Result<Vec<VaultClient<Channel>>, String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(
            client::connect(addr, tls)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    Ok(out)
}

/// Preloads `n` email tokens in batches of 1000 and returns them.
async fn preload(
    writers: &[VaultClient<Channel>],
    values: &Values,
    n: u64,
) -> Result<Vec<String>, String> {
    let mut tokens = Vec::with_capacity(n as usize);
    let mut remaining = n;
    while remaining > 0 {
        // Several batches in flight, one per writer connection.
        let mut calls = Vec::new();
        for w in writers {
            if remaining == 0 {
                break;
            }
            let size = remaining.min(1000);
            remaining -= size;
            let req = pb::TokenizeRequest {
                fields: (0..size).map(|_| email_field(values.email())).collect(),
                purpose: None,
            };
            let mut client = w.clone();
            calls.push(tokio::spawn(async move { client.tokenize(req).await }));
        }
        for c in calls {
            let resp = c
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("preload: {}", e.message()))?;
            for r in resp.into_inner().results {
                match r.outcome {
                    Some(pb::tokenize_result::Outcome::Token(t)) => tokens.push(t),
                    _ => return Err("preload: an item failed".into()),
                }
            }
        }
    }
    Ok(tokens)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The pause before each ceiling measurement: half a scenario, at most 2 s.
fn settle_time(duration: Duration) -> Duration {
    (duration / 2).min(Duration::from_secs(2))
}

/// Runs the benchmark: starts the vault and the ceiling, preloads, runs
/// every scenario against both, restarts the vault to time startup.
pub async fn run(options: BenchOptions) -> Result<Report, String> {
    let own = std::env::current_exe().map_err(|e| format!("finding this executable: {e}"))?;
    let tmp;
    let dir = match (&options.data_dir, &options.addr) {
        (Some(d), _) => d.clone(),
        (None, Some(_)) => return Err(
            "--addr needs --data-dir: the data dir whose dev/ certificates the running vault uses"
                .into(),
        ),
        (None, None) => {
            tmp = tempfile_dir()?;
            tmp.clone()
        }
    };
    if options.addr.is_some() && !fieldvault::dev::dev_dir(&dir).join("ca.pem").exists() {
        return Err(format!(
            "{}: no dev PKI here; start the vault with `fieldvault serve --dev --data-dir {}` first",
            fieldvault::dev::dev_dir(&dir).display(),
            dir.display()
        ));
    }
    let audit_log = options.audit_dir.as_ref().unwrap_or(&dir).join("audit.log");
    let config = write_config(
        &dir,
        "bench.toml",
        options.cache_capacity_mib,
        &audit_log,
        &bench_policy(&[]),
        &Tuning {
            metrics: options.metrics,
            ..Tuning::default()
        },
    )?;
    let config_s = config.to_str().ok_or("non-UTF-8 path")?;
    let vault = match &options.addr {
        Some(addr) => Target::External(addr.clone()),
        None => Target::Own(
            ServerChild::spawn(
                &vault_binary(&own, options.vault_bin.as_deref())?,
                &["serve", "--config", config_s],
            )?
            .0,
        ),
    };
    // The ceiling is this binary again, in its own process like the vault.
    let (ceiling, _) = ServerChild::spawn(&own, &[CEILING_COMMAND, "--config", config_s])?;
    let writer_tls = ClientTls::dev(&dir, "orders").map_err(|e| e.to_string())?;
    let reader_tls = ClientTls::dev(&dir, "support").map_err(|e| e.to_string())?;
    let k = options.connections.max(1);

    let values = Values {
        next: AtomicU64::new(0),
    };
    let vault_writers = clients(vault.addr(), &writer_tls, k).await?;
    eprintln!("preloading {} tokens…", options.preload);
    let t = Instant::now();
    let tokens = preload(&vault_writers, &values, options.preload.max(1)).await?;
    eprintln!("preloaded in {:.1}s", t.elapsed().as_secs_f64());
    // Tokens per second, for the lifecycle phase's estimate of its own
    // preloads.
    let preload_rate = tokens.len() as f64 / t.elapsed().as_secs_f64().max(1e-3);
    let tokens = Arc::new(tokens);
    let preloaded = tokens.clone();
    let vault_load = Arc::new(Load {
        writers: vault_writers,
        readers: clients(vault.addr(), &reader_tls, k).await?,
        values,
        tokens: tokens.clone(),
        purpose: options.purpose.clone(),
        grant_id: String::new(),
    });
    let ceiling_load = Arc::new(Load {
        writers: clients(&ceiling.addr, &writer_tls, k).await?,
        readers: clients(&ceiling.addr, &reader_tls, k).await?,
        values: Values {
            next: AtomicU64::new(0),
        },
        tokens,
        purpose: options.purpose.clone(),
        grant_id: String::new(),
    });

    let mut rows = Vec::new();
    let mut stored = options.preload.max(1);
    for scenario in Scenario::ALL {
        if !options.scenarios.is_empty() && !options.scenarios.iter().any(|s| s == scenario.name())
        {
            continue;
        }
        eprintln!("running {}…", scenario.name());
        // The ceiling is the transport on a quiet machine: let the vault
        // finish what the previous load left behind (its log flusher, the
        // kernel's writeback) before measuring it, then load the vault.
        tokio::time::sleep(settle_time(options.duration)).await;
        let c = measure(
            ceiling_load.clone(),
            scenario,
            options.duration,
            options.concurrency,
        )
        .await;
        let v = measure(
            vault_load.clone(),
            scenario,
            options.duration,
            options.concurrency,
        )
        .await;
        let vault_rss_mib = vault.rss_mib();
        stored += v.written;
        rows.push(Row {
            scenario,
            vault: v,
            ceiling: c,
            vault_rss_mib,
        });
    }
    drop(ceiling_load);
    drop(ceiling);
    let rewrap = match options.rewrap_rate {
        Some(rate) => Some(
            rewrap_phase(
                &dir,
                vault.addr(),
                vault_load.clone(),
                &options,
                rate,
                stored,
            )
            .await?,
        ),
        None => None,
    };
    drop(vault_load);
    let Target::Own(vault) = vault else {
        // Not our server: its disk use and restart are not ours to measure.
        return Ok(Report {
            rows,
            rewrap,
            audit_sinks: Vec::new(),
            quotas: None,
            lifecycle: None,
            grants: None,
            stored_tokens: 0,
            store_bytes: 0,
            startup_seconds: None,
            rss_after_restart_mib: None,
            options,
        });
    };
    vault.stop();
    let store_bytes = dir_bytes(&dir.join("store"));

    // Startup with everything stored.
    let (restarted, startup) = ServerChild::spawn(
        &vault_binary(&own, options.vault_bin.as_deref())?,
        &["serve", "--config", config_s],
    )?;
    let rss_after_restart_mib = restarted.rss_mib();
    restarted.stop();

    let phases = async {
        let bin = vault_binary(&own, options.vault_bin.as_deref())?;
        let fresh = FreshVault {
            bin: &bin,
            dir: &dir,
            tokens: preloaded,
            options: &options,
        };
        let audit_sinks = match &options.compare_audit_dir {
            Some(compare) => AuditSinks(&fresh).compare(&audit_log, compare).await?,
            None => Vec::new(),
        };
        let quotas = if options.compare_quotas {
            Some(Quotas(&fresh).compare(&audit_log).await?)
        } else {
            None
        };
        let lifecycle = match &options.lifecycle {
            Some(l) => Some(lifecycle::measure(&fresh, &audit_log, l, preload_rate).await?),
            None => None,
        };
        let grants = match &options.grants {
            Some(g) => Some(grants::measure(&fresh, &audit_log, g).await?),
            None => None,
        };
        Ok::<_, String>((audit_sinks, quotas, lifecycle, grants))
    }
    .await;
    if options.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let (audit_sinks, quotas, lifecycle, grants) = phases?;
    Ok(Report {
        rows,
        rewrap,
        audit_sinks,
        quotas,
        lifecycle,
        grants,
        stored_tokens: stored,
        store_bytes,
        startup_seconds: Some(startup.as_secs_f64()),
        rss_after_restart_mib,
        options,
    })
}

/// What the phases at the end share: a vault started afresh on the run's
/// store for each measurement, loaded by `support` with the preloaded
/// tokens.
struct FreshVault<'a> {
    bin: &'a Path,
    dir: &'a Path,
    tokens: Arc<Vec<String>>,
    options: &'a BenchOptions,
}

impl FreshVault<'_> {
    /// Starts a vault on a config named `name` (the audit trail at
    /// `audit_log`, `policy`), and the reader load on it.
    async fn start(
        &self,
        name: &str,
        audit_log: &Path,
        policy: &str,
    ) -> Result<(ServerChild, Arc<Load>), String> {
        let o = self.options;
        let config = write_config(
            self.dir,
            name,
            o.cache_capacity_mib,
            audit_log,
            policy,
            &Tuning {
                metrics: o.metrics,
                ..Tuning::default()
            },
        )?;
        let config = config.to_str().ok_or("non-UTF-8 path")?;
        let (vault, _) = ServerChild::spawn(self.bin, &["serve", "--config", config])?;
        let reader_tls = ClientTls::dev(self.dir, "support").map_err(|e| e.to_string())?;
        let load = Arc::new(Load {
            writers: Vec::new(),
            readers: clients(&vault.addr, &reader_tls, o.connections.max(1)).await?,
            values: Values {
                next: AtomicU64::new(0),
            },
            tokens: self.tokens.clone(),
            purpose: o.purpose.clone(),
            grant_id: String::new(),
        });
        Ok((vault, load))
    }

    /// After a pause and a short warm-up, `scenario` for the run's
    /// duration: the warm-up's measurement, then the real one.
    async fn measure(&self, load: &Arc<Load>, scenario: Scenario) -> (Measurement, Measurement) {
        let o = self.options;
        tokio::time::sleep(settle_time(o.duration)).await;
        let warm_up = (o.duration / 4).min(Duration::from_secs(1));
        let w = measure(load.clone(), scenario, warm_up, o.concurrency).await;
        let m = measure(load.clone(), scenario, o.duration, o.concurrency).await;
        (w, m)
    }
}

/// The audit-sink phase: detokenize-1 on a freshly started vault with its
/// audit trail where it is, then with the trail moved elsewhere.
struct AuditSinks<'a>(&'a FreshVault<'a>);

impl AuditSinks<'_> {
    /// Measures with the trail at `audit_log`, then with it moved into a
    /// directory of its own under `compare` (removed afterwards; the trail
    /// is moved back, its chain whole).
    async fn compare(&self, audit_log: &Path, compare: &Path) -> Result<Vec<AuditSinkRun>, String> {
        let durable = self
            .detokenize("where the vault keeps it", audit_log)
            .await?;
        let moved_dir = private_dir(compare, "fieldvault-bench-audit")?;
        let moved_log = moved_dir.join("audit.log");
        let moved = match move_trail(audit_log, &moved_log) {
            Ok(()) => {
                let run = self
                    .detokenize("moved (--compare-audit-dir)", &moved_log)
                    .await;
                move_trail(&moved_log, audit_log).and(run)
            }
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_dir_all(&moved_dir);
        Ok(vec![durable, moved?])
    }

    /// Detokenize-1 for the run's duration (after a short warm-up) on a
    /// vault started with its audit trail at `audit_log`.
    async fn detokenize(
        &self,
        sink: &'static str,
        audit_log: &Path,
    ) -> Result<AuditSinkRun, String> {
        eprintln!(
            "running detokenize-1 with the audit trail at {}…",
            audit_log.display()
        );
        let (vault, load) = self
            .0
            .start("bench-audit-sink.toml", audit_log, &bench_policy(&[]))
            .await?;
        let (_, measurement) = self.0.measure(&load, Scenario::Detokenize).await;
        vault.stop();
        Ok(AuditSinkRun {
            sink,
            audit_log: audit_log.to_path_buf(),
            filesystem: filesystem_of(audit_log.parent().unwrap_or(Path::new("/"))),
            measurement,
        })
    }
}

/// The quota phase: detokenize on a freshly started vault whose reader
/// rule has no quota, then on one whose reader rule has quotas that never
/// bite; the same store, tokens and load.
struct Quotas<'a>(&'a FreshVault<'a>);

/// The detokenize scenarios a phase at the end runs: those of
/// detokenize-1 and detokenize-100 that `asked` (`--scenarios`) names,
/// else both.
fn detokenize_scenarios(asked: &[String]) -> Vec<Scenario> {
    let both = [Scenario::Detokenize, Scenario::DetokenizeBatch100];
    let named: Vec<Scenario> = both
        .into_iter()
        .filter(|s| asked.iter().any(|a| a == s.name()))
        .collect();
    if named.is_empty() {
        both.to_vec()
    } else {
        named
    }
}

/// Values revealed by the successful calls of `m`.
fn values_revealed(m: &Measurement) -> u64 {
    (m.calls - m.failed) * m.values_per_call
}

impl Quotas<'_> {
    /// The detokenize scenarios the phase runs: those `--scenarios` names,
    /// else both.
    fn scenarios(&self) -> Vec<Scenario> {
        detokenize_scenarios(&self.0.options.scenarios)
    }

    async fn compare(&self, audit_log: &Path) -> Result<QuotaReport, String> {
        let scenarios = self.scenarios();
        let quotas = never_biting_quotas();
        let off = self.detokenize(audit_log, &[], &scenarios).await?;
        let on = self.detokenize(audit_log, &quotas, &scenarios).await?;
        let revealed = on.warm_up.iter().chain(&on.runs).map(values_revealed).sum();
        let (before, after) = on.day_use.ok_or("the quota'd runs read no quota use")?;
        let day_turned = before.resets_unix_ms != after.resets_unix_ms;
        let counted = if day_turned {
            after.used
        } else {
            after.used.saturating_sub(before.used)
        };
        let mut runs = Vec::new();
        for ((scenario, off), on) in scenarios.iter().zip(off.runs).zip(on.runs) {
            for (quotas_on, measurement) in [(false, off), (true, on)] {
                runs.push(QuotaRun {
                    scenario: *scenario,
                    quotas_on,
                    measurement,
                });
            }
        }
        Ok(QuotaReport {
            quotas,
            runs,
            revealed,
            counted,
            day_turned,
        })
    }

    /// Each of `scenarios` on a vault started with the reader rule's
    /// `quotas`; with quotas, the reader's day quota use before and after.
    async fn detokenize(
        &self,
        audit_log: &Path,
        quotas: &[String],
        scenarios: &[Scenario],
    ) -> Result<QuotaRuns, String> {
        let (name, setting) = if quotas.is_empty() {
            ("bench-quotas-off.toml", "off")
        } else {
            ("bench-quotas-on.toml", "on")
        };
        let (vault, load) = self.0.start(name, audit_log, &bench_policy(quotas)).await?;
        let mut admin = if quotas.is_empty() {
            None
        } else {
            let tls = ClientTls::dev(self.0.dir, "rotator").map_err(|e| e.to_string())?;
            let channel = client::channel(&vault.addr, &tls)
                .await
                .map_err(|e| e.to_string())?;
            Some(AdminClient::new(channel))
        };
        let before = match admin.as_mut() {
            Some(admin) => Some(reader_day_use(admin).await?),
            None => None,
        };
        let (mut warm_up, mut runs) = (Vec::new(), Vec::new());
        for scenario in scenarios {
            eprintln!("running {} with quotas {setting}…", scenario.name());
            let (w, m) = self.0.measure(&load, *scenario).await;
            warm_up.push(w);
            runs.push(m);
        }
        let day_use = match (admin.as_mut(), before) {
            (Some(admin), Some(before)) => Some((before, reader_day_use(admin).await?)),
            _ => None,
        };
        vault.stop();
        Ok(QuotaRuns {
            warm_up,
            runs,
            day_use,
        })
    }
}

/// One setting of the quota phase: per scenario, the warm-up and the
/// measurement; with quotas, the reader's day quota use before and after.
struct QuotaRuns {
    warm_up: Vec<Measurement>,
    runs: Vec<Measurement>,
    day_use: Option<(pb::QuotaUse, pb::QuotaUse)>,
}

/// The `support` caller's use of the reader rule's day quota, as the
/// vault's Admin service lists it.
async fn reader_day_use(admin: &mut AdminClient<Channel>) -> Result<pb::QuotaUse, String> {
    let caller = fieldvault::dev::spiffe_id("support");
    let callers = admin
        .list_callers(pb::ListCallersRequest {})
        .await
        .map_err(|e| format!("reading the reader's quota use: {}", e.message()))?
        .into_inner()
        .callers;
    callers
        .into_iter()
        .filter(|c| c.caller == caller)
        .flat_map(|c| c.quotas)
        .find(|q| q.rule == READER_RULE && q.per == "day")
        .ok_or_else(|| {
            format!(
                "the vault lists no day quota of rule '{READER_RULE}' for {caller}: the \
                 quotas are not in force"
            )
        })
}

/// Moves the audit trail at `from` (every file the server keeps for it:
/// its files, the audit key and the record of its end beside them) to
/// `to`, whose name must be the same: copied, then the originals removed
/// (`to` may be on another filesystem).
fn move_trail(from: &Path, to: &Path) -> Result<(), String> {
    use fieldvault::audit::trail;
    let to_dir = to.parent().ok_or("the audit log has no directory")?;
    std::fs::create_dir_all(to_dir).map_err(|e| format!("{}: {e}", to_dir.display()))?;
    let files = trail::everything_of(from).map_err(|e| format!("{}: {e}", from.display()))?;
    for file in &files {
        let target = to_dir.join(file.file_name().ok_or("a trail file without a name")?);
        std::fs::copy(file, &target)
            .map_err(|e| format!("copying {} to {}: {e}", file.display(), target.display()))?;
    }
    for file in &files {
        std::fs::remove_file(file).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    Ok(())
}

/// The type of the filesystem holding `path` (`ext4`, `tmpfs`, …), from
/// the longest mount point in /proc/mounts that contains it.
fn filesystem_of(path: &Path) -> String {
    let (Ok(path), Ok(mounts)) = (path.canonicalize(), std::fs::read_to_string("/proc/mounts"))
    else {
        return "?".into();
    };
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, mount_point, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            // Spaces in mount points are escaped as \040.
            let mount_point = PathBuf::from(mount_point.replace("\\040", " "));
            path.starts_with(&mount_point)
                .then(|| (mount_point.as_os_str().len(), fstype.to_owned()))
        })
        // The last of the longest: a later mount hides an earlier one.
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "?".into(), |(_, fstype)| fstype)
}

/// The rewrap job as the server reports it.
async fn rewrap_job(admin: &mut KeyAdminClient<Channel>) -> Result<pb::JobStatus, String> {
    Ok(admin
        .get_rewrap_status(pb::GetRewrapStatusRequest {})
        .await
        .map_err(|e| format!("rewrap status: {}", e.message()))?
        .into_inner()
        .job
        .ok_or("rewrap status: no job")?)
}

/// Records the rewrap has moved so far, and those left.
async fn rewrap_done(admin: &mut KeyAdminClient<Channel>) -> Result<(u64, u64), String> {
    let job = rewrap_job(admin).await?;
    Ok((job.done, job.remaining))
}

/// Rotates the data key and starts a rewrap of every record at `rate`.
async fn rotate_and_rewrap(admin: &mut KeyAdminClient<Channel>, rate: u32) -> Result<(), String> {
    admin
        .rotate_data_key(pb::RotateDataKeyRequest {})
        .await
        .map_err(|e| format!("rotate: {}", e.message()))?;
    admin
        .start_rewrap(pb::StartRewrapRequest {
            rate_per_second: Some(rate),
        })
        .await
        .map_err(|e| format!("start rewrap: {}", e.message()))?;
    Ok(())
}

/// Detokenize-1 while a rewrap of every record runs at `rate`, and the
/// records per second the rewrap moved meanwhile.
async fn detokenize_during_rewrap(
    admin: &mut KeyAdminClient<Channel>,
    load: Arc<Load>,
    options: &BenchOptions,
    rate: u32,
) -> Result<(Measurement, f64), String> {
    rotate_and_rewrap(admin, rate).await?;
    let (before, _) = rewrap_done(admin).await?;
    let t = Instant::now();
    let during = measure(
        load,
        Scenario::Detokenize,
        options.duration,
        options.concurrency,
    )
    .await;
    let (after, remaining) = rewrap_done(admin).await?;
    if remaining == 0 {
        eprintln!("(the rewrap finished before the load did: its rate is a lower bound)");
    }
    Ok((during, (after - before) as f64 / t.elapsed().as_secs_f64()))
}

/// Waits for the running rewrap to finish (polling every 100 ms).
async fn rewrap_finished(admin: &mut KeyAdminClient<Channel>) -> Result<(), String> {
    loop {
        let job = rewrap_job(admin).await?;
        if job.remaining == 0 && job.state == pb::JobState::Finished as i32 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Detokenize-1 without a rewrap, during a rewrap at `rate` and during an
/// unthrottled one; then an unthrottled rewrap alone, timed to its end.
async fn rewrap_phase(
    dir: &Path,
    addr: &str,
    load: Arc<Load>,
    options: &BenchOptions,
    rate: u32,
    records: u64,
) -> Result<RewrapReport, String> {
    let tls = ClientTls::dev(dir, "rotator").map_err(|e| e.to_string())?;
    let mut admin = KeyAdminClient::new(
        client::channel(addr, &tls)
            .await
            .map_err(|e| e.to_string())?,
    );
    let top = fieldvault::vault::MAX_REWRAP_RATE;
    eprintln!("running detokenize-1 without a rewrap…");
    tokio::time::sleep(settle_time(options.duration)).await;
    let without = measure(
        load.clone(),
        Scenario::Detokenize,
        options.duration,
        options.concurrency,
    )
    .await;
    eprintln!("running detokenize-1 during a rewrap at {rate} records/s…");
    let (during, moved_per_sec_under_load) =
        detokenize_during_rewrap(&mut admin, load.clone(), options, rate).await?;
    eprintln!("running detokenize-1 during an unthrottled rewrap…");
    admin
        .start_rewrap(pb::StartRewrapRequest {
            rate_per_second: Some(top),
        })
        .await
        .map_err(|e| format!("raise the rewrap rate: {}", e.message()))?;
    rewrap_finished(&mut admin).await?;
    tokio::time::sleep(settle_time(options.duration)).await;
    let (during_unthrottled, moved_per_sec_unthrottled_under_load) =
        detokenize_during_rewrap(&mut admin, load, options, top).await?;
    rewrap_finished(&mut admin).await?;
    eprintln!("an unthrottled rewrap of every record, alone…");
    tokio::time::sleep(settle_time(options.duration)).await;
    let t = Instant::now();
    rotate_and_rewrap(&mut admin, top).await?;
    rewrap_finished(&mut admin).await?;
    let moved_per_sec_unthrottled = records as f64 / t.elapsed().as_secs_f64();
    Ok(RewrapReport {
        rate,
        without,
        during,
        during_unthrottled,
        moved_per_sec_under_load,
        moved_per_sec_unthrottled_under_load,
        moved_per_sec_unthrottled,
        records,
    })
}

/// The hidden command of this binary that serves the transport ceiling.
pub const CEILING_COMMAND: &str = "ceiling";

/// The `fieldvault` server binary: `explicit`, else the one next to this
/// executable (`cargo build --release` puts both in target/release/).
fn vault_binary(own: &Path, explicit: Option<&Path>) -> Result<PathBuf, String> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => own.with_file_name("fieldvault"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{}: no fieldvault server binary there; build both with `cargo build --release` \
             or name it with --vault-bin",
            path.display()
        ))
    }
}

/// A fresh private directory for a run without `--data-dir`.
fn tempfile_dir() -> Result<PathBuf, String> {
    private_dir(&std::env::temp_dir(), "fieldvault-bench")
}

/// A fresh private directory `<prefix>-<pid>-<nanos>` under `parent`.
fn private_dir(parent: &Path, prefix: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = parent.join(format!("{prefix}-{}-{nanos}", std::process::id()));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn measurement(calls: u64, failed: u64, seconds: f64, values_per_call: u64) -> Measurement {
        Measurement {
            calls,
            failed,
            seconds,
            values_per_call,
            p50_us: 2000,
            p95_us: 3000,
            p99_us: 4000,
            max_us: 9000,
            written: 0,
        }
    }

    /// A report of the quota phase alone, detokenize-1 with `off` and
    /// `on` as its two runs.
    fn quota_report(off: Measurement, on: Measurement) -> Report {
        let revealed = values_revealed(&on);
        Report {
            rows: Vec::new(),
            rewrap: None,
            audit_sinks: Vec::new(),
            quotas: Some(QuotaReport {
                quotas: never_biting_quotas(),
                runs: vec![
                    QuotaRun {
                        scenario: Scenario::Detokenize,
                        quotas_on: false,
                        measurement: off,
                    },
                    QuotaRun {
                        scenario: Scenario::Detokenize,
                        quotas_on: true,
                        measurement: on,
                    },
                ],
                revealed,
                counted: revealed,
                day_turned: false,
            }),
            lifecycle: None,
            grants: None,
            stored_tokens: 0,
            store_bytes: 0,
            startup_seconds: None,
            rss_after_restart_mib: None,
            options: BenchOptions {
                compare_quotas: true,
                ..BenchOptions::for_tests()
            },
        }
    }

    #[test]
    fn failed_calls_with_quotas_on_fail_the_run_and_leave_no_ratio() {
        let report = quota_report(
            measurement(1000, 0, 1.0, 1),
            measurement(1000, 1000, 1.0, 1),
        );
        assert_eq!(report.failed_calls(), 1000);
        let text = report.to_markdown();
        assert!(
            text.contains("detokenize-1: no ratio: 1000 calls failed"),
            "{text}"
        );
        assert!(!text.contains("quotas on give"), "{text}");
    }

    #[test]
    fn the_quota_table_has_both_settings_and_their_ratio() {
        let report = quota_report(measurement(1000, 0, 1.0, 1), measurement(800, 0, 1.0, 1));
        assert_eq!(report.failed_calls(), 0);
        let text = report.to_markdown();
        assert!(
            text.contains("| detokenize-1 | off | 1000 | 1000 | 2.00 | 4.00 | 9.00 | 0 |"),
            "{text}"
        );
        assert!(
            text.contains("| detokenize-1 | on | 800 | 800 | 2.00 | 4.00 | 9.00 | 0 |"),
            "{text}"
        );
        assert!(
            text.contains("detokenize-1: quotas on give 0.80x the throughput of quotas off"),
            "{text}"
        );
        assert!(
            text.contains(r#"quota = ["1000000000/minute", "1000000000/day"]"#),
            "{text}"
        );
        assert!(text.contains("the vault counted 800 values"), "{text}");
    }

    #[test]
    fn the_policy_with_quotas_gives_only_the_reader_rule_its_quotas() {
        let off = bench_policy(&[]);
        let on = bench_policy(&never_biting_quotas());
        assert!(!off.contains("quota ="), "{off}");
        let reader = on
            .split("[[rules]]")
            .find(|r| r.contains(READER_RULE))
            .unwrap();
        assert!(
            reader.contains(r#"quota = ["1000000000/minute", "1000000000/day"]"#),
            "{on}"
        );
        assert_eq!(on.matches("quota =").count(), 1, "{on}");
        for policy in [off, on] {
            fieldvault::domain::policy::Policy::from_toml(&policy).unwrap();
        }
    }
}
