//! The lifecycle phase (`--lifecycle`): how fast a vault deletes tokens
//! (DeleteTokens in batches of [`DELETE_BATCH`]), erases values
//! (EraseValue over phone values each held by [`RANDOM_TOKENS_PER_VALUE`]
//! random-mode tokens and one deterministic one) and sweeps expired tokens
//! (its background sweeper, timed by the server's own `sweep: expired
//! tokens deleted` log lines), and detokenize-1 before and during a sweep.
//! Each part on a vault started afresh on the run's store.

use super::{
    clients, settle_time, write_config, FreshVault, Load, Measurement, Scenario, ServerChild,
    Tuning, Values,
};
use fieldvault::client::{self, ClientTls};
use fieldvault::grpc::pb;
use fieldvault::grpc::pb::vault_client::VaultClient;
use hdrhistogram::Histogram;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Tokens per DeleteTokens call.
pub const DELETE_BATCH: usize = 100;
/// Random-mode tokens each erased value has (besides its deterministic
/// one).
pub const RANDOM_TOKENS_PER_VALUE: usize = 3;
/// Tokens each erased value has.
pub const TOKENS_PER_VALUE: usize = RANDOM_TOKENS_PER_VALUE + 1;
/// The sweeper's interval in the sweep part.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(200);
/// The log filter of a vault whose sweeper passes are read: warnings, and
/// the sweeper's INFO line.
pub const SWEEP_LOG_FILTER: &str = "warn,fieldvault::vault::lifecycle=info";
/// The message of the sweeper's line for a pass that deleted something.
const SWEEP_MESSAGE: &str = "sweep: expired tokens deleted";
/// Tokens per Tokenize call when the phase stores its tokens.
const TOKENIZE_BATCH: usize = 1000;

/// The sizes of the lifecycle phase.
#[derive(Clone, Copy, Debug)]
pub struct LifecycleOptions {
    /// Random-mode tokens deleted (N).
    pub delete_tokens: u64,
    /// Phone values erased (each with [`TOKENS_PER_VALUE`] tokens).
    pub erase_values: u64,
    /// Expired tokens swept (M), in each of the two sweeps.
    pub sweep_tokens: u64,
    /// The server's `[retention] sweep_batch`.
    pub sweep_batch: usize,
    /// The server's `[retention] sweep_rate` (records per second).
    pub sweep_rate: u32,
}

/// One pass of the server's sweeper, as its log line reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SweepPass {
    /// When the line was read.
    pub at: Instant,
    pub deleted: u64,
    pub ms: u64,
}

/// The passes read from a server's log so far.
pub type SweepLog = Arc<Mutex<Vec<SweepPass>>>;

/// `deleted` and `ms` of a sweeper log line, or `None` for any other line.
/// The line is tracing's text format:
/// `… INFO fieldvault::vault::lifecycle: sweep: expired tokens deleted deleted=500 ms=12`.
fn parse_sweep_line(line: &str) -> Option<(u64, u64)> {
    let fields = line.split_once(SWEEP_MESSAGE)?.1;
    let mut deleted = None;
    let mut ms = None;
    for word in fields.split_whitespace() {
        if let Some(n) = word.strip_prefix("deleted=") {
            deleted = n.parse().ok();
        } else if let Some(n) = word.strip_prefix("ms=") {
            ms = n.parse().ok();
        }
    }
    Some((deleted?, ms?))
}

/// Reads a server's stderr on a thread of its own: sweeper lines into
/// `sweeps`, every other line on to this process's stderr.
pub fn read_sweeps(stderr: std::process::ChildStderr, sweeps: SweepLog) {
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            match parse_sweep_line(&line) {
                Some((deleted, ms)) => {
                    sweeps
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(SweepPass {
                            at: Instant::now(),
                            deleted,
                            ms,
                        })
                }
                None => eprintln!("{line}"),
            }
        }
    });
}

/// Calls made over a fixed set of work items (delete batches, values to
/// erase) by the run's concurrency.
#[derive(Clone, Debug)]
pub struct Drained {
    pub calls: u64,
    pub failed: u64,
    pub seconds: f64,
    /// Tokens the successful calls deleted or erased.
    pub tokens: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// The first failure, to print.
    pub first_error: Option<String>,
}

impl Drained {
    fn per_sec(&self, n: u64) -> f64 {
        n as f64 / self.seconds.max(1e-9)
    }
}

/// One sweep of `expired` tokens, timed from the server's log lines.
#[derive(Clone, Debug)]
pub struct SweepRun {
    pub passes: Vec<SweepPass>,
    /// From the moment the tokens expired to the last pass's line.
    pub wall_seconds: f64,
    /// A pass ran before the tokens were meant to expire (the preload
    /// outlasted its estimate): the sweep overlapped the preload.
    pub began_early: bool,
}

impl SweepRun {
    pub fn deleted(&self) -> u64 {
        self.passes.iter().map(|p| p.deleted).sum()
    }

    pub fn busy_seconds(&self) -> f64 {
        self.passes.iter().map(|p| p.ms).sum::<u64>() as f64 / 1000.0
    }

    /// Records swept per second of the sweeper's own passes.
    pub fn per_sec_busy(&self) -> f64 {
        self.deleted() as f64 / self.busy_seconds().max(1e-3)
    }

    /// Records swept per second from expiry to the last pass (the
    /// sweeper's pauses of `sweep_interval` included).
    pub fn per_sec_wall(&self) -> f64 {
        self.deleted() as f64 / self.wall_seconds.max(1e-3)
    }
}

/// What the lifecycle phase measured.
#[derive(Clone, Debug)]
pub struct LifecycleReport {
    pub sizes: LifecycleOptions,
    pub delete: Drained,
    pub erase: Drained,
    /// The sweep with no other load.
    pub sweep_alone: SweepRun,
    /// The sweep with detokenize-1 running beside it.
    pub sweep_loaded: SweepRun,
    /// Detokenize-1 on the sweep's vault before the loaded sweep.
    pub before: Measurement,
    /// Detokenize-1 from the tokens' expiry to the sweep's last pass.
    pub during: Measurement,
}

impl LifecycleReport {
    pub fn failed_calls(&self) -> u64 {
        self.delete.failed + self.erase.failed + self.before.failed + self.during.failed
    }

    pub fn to_markdown(&self, o: &super::BenchOptions) -> String {
        let s = &self.sizes;
        let (d, e) = (&self.delete, &self.erase);
        let mut out = format!(
            "data lifecycle (--lifecycle): each part on a vault started afresh on the run's \
             store, {} in flight over {} connections\n\
             | operation | work | calls | seconds | rate | p50 ms | p99 ms | max ms | failed |\n\
             |---|---|---:|---:|---|---:|---:|---:|---:|\n",
            o.concurrency, o.connections
        );
        out.push_str(&format!(
            "| delete | {} random-mode tokens, DeleteTokens batches of {DELETE_BATCH} | {} | {:.2} | {:.0} tokens/s | {:.2} | {:.2} | {:.2} | {} |\n",
            s.delete_tokens,
            d.calls,
            d.seconds,
            d.per_sec(d.tokens),
            d.p50_us as f64 / 1000.0,
            d.p99_us as f64 / 1000.0,
            d.max_us as f64 / 1000.0,
            d.failed
        ));
        out.push_str(&format!(
            "| erase | {} phone values, each with {RANDOM_TOKENS_PER_VALUE} random-mode tokens + 1 deterministic, one EraseValue per value | {} | {:.2} | {:.0} values/s, {:.0} tokens/s | {:.2} | {:.2} | {:.2} | {} |\n",
            s.erase_values,
            e.calls,
            e.seconds,
            e.per_sec(e.calls - e.failed),
            e.per_sec(e.tokens),
            e.p50_us as f64 / 1000.0,
            e.p99_us as f64 / 1000.0,
            e.max_us as f64 / 1000.0,
            e.failed
        ));
        for (what, m) in [("delete", d), ("erase", e)] {
            if let Some(err) = &m.first_error {
                out.push_str(&format!("{what}: first failure: {err}\n"));
            }
        }
        out.push_str(&format!(
            "\nsweep of {} expired email tokens by the server's sweeper (sweep_batch = {}, \
             sweep_rate = {}/s, sweep_interval = {}ms), timed by its `{SWEEP_MESSAGE}` log \
             lines:\n\
             | sweep | passes | tokens deleted | sweeper busy s | records/s while sweeping | expiry to last pass s | records/s from expiry |\n\
             |---|---:|---:|---:|---:|---:|---:|\n",
            s.sweep_tokens,
            s.sweep_batch,
            s.sweep_rate,
            SWEEP_INTERVAL.as_millis()
        ));
        for (what, r) in [
            ("alone", &self.sweep_alone),
            ("beside detokenize-1", &self.sweep_loaded),
        ] {
            out.push_str(&format!(
                "| {what} | {} | {} | {:.2} | {:.0} | {:.2} | {:.0} |\n",
                r.passes.len(),
                r.deleted(),
                r.busy_seconds(),
                r.per_sec_busy(),
                r.wall_seconds,
                r.per_sec_wall()
            ));
            if r.began_early {
                out.push_str(&format!(
                    "note: the sweep {what} began before the preload ended (it outlasted \
                     its estimate): it swept beside the preload's writes\n"
                ));
            }
        }
        out.push_str(
            "\n| detokenize-1 | ops/s | p50 ms | p99 ms | max ms | seconds | failed |\n\
             |---|---:|---:|---:|---:|---:|---:|\n",
        );
        for (what, m) in [
            ("before the sweep", &self.before),
            ("during the sweep", &self.during),
        ] {
            out.push_str(&format!(
                "| {what} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |\n",
                m.ops_per_sec(),
                m.p50_us as f64 / 1000.0,
                m.p99_us as f64 / 1000.0,
                m.max_us as f64 / 1000.0,
                m.seconds,
                m.failed
            ));
        }
        out.push_str(&format!(
            "delete rate: {:.0} tokens/s; erase rate: {:.0} values/s ({:.0} tokens/s); \
             sweep rate: {:.0} records/s alone, {:.0} beside detokenize-1 (sweep_batch {}, \
             sweep_rate {}/s); \
             detokenize-1 during the sweep: {:.2}x the throughput before, p99 {:.2} -> {:.2} ms\n\n",
            d.per_sec(d.tokens),
            e.per_sec(e.calls - e.failed),
            e.per_sec(e.tokens),
            self.sweep_alone.per_sec_busy(),
            self.sweep_loaded.per_sec_busy(),
            s.sweep_batch,
            s.sweep_rate,
            self.during.ops_per_sec() / self.before.ops_per_sec().max(1.0),
            self.before.p99_us as f64 / 1000.0,
            self.during.p99_us as f64 / 1000.0,
        ));
        out
    }
}

/// A vault of the phase and its clients.
struct Started {
    vault: ServerChild,
    /// `orders` (tokenize, delete) and `support` (detokenize).
    load: Arc<Load>,
}

/// Starts a vault on the run's store with `tuning` (its sweeper's passes
/// read into `sweeps`, if given).
async fn start(
    fresh: &FreshVault<'_>,
    name: &str,
    audit_log: &Path,
    tuning: &Tuning,
    sweeps: Option<SweepLog>,
) -> Result<Started, String> {
    let o = fresh.options;
    let config = write_config(
        fresh.dir,
        name,
        o.cache_capacity_mib,
        audit_log,
        &super::bench_policy(&[]),
        tuning,
    )?;
    let config = config.to_str().ok_or("non-UTF-8 path")?;
    let (vault, _) = ServerChild::spawn_logged(fresh.bin, &["serve", "--config", config], sweeps)?;
    let k = o.connections.max(1);
    let writer_tls = ClientTls::dev(fresh.dir, "orders").map_err(|e| e.to_string())?;
    let reader_tls = ClientTls::dev(fresh.dir, "support").map_err(|e| e.to_string())?;
    let load = Arc::new(Load {
        writers: clients(&vault.addr, &writer_tls, k).await?,
        readers: clients(&vault.addr, &reader_tls, k).await?,
        values: Values {
            next: AtomicU64::new(0),
        },
        tokens: fresh.tokens.clone(),
        purpose: o.purpose.clone(),
        grant_id: String::new(),
    });
    Ok(Started { vault, load })
}

/// Tokenizes the fields `fields` yields, [`TOKENIZE_BATCH`] per call, one
/// call in flight per writer connection; the tokens in order. A field is
/// made just before its call is sent (a time to live counts from then).
pub(super) async fn tokenize_all(
    writers: &[VaultClient<Channel>],
    mut fields: impl Iterator<Item = pb::Field>,
) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    loop {
        let mut calls = Vec::new();
        for w in writers {
            let batch: Vec<pb::Field> = fields.by_ref().take(TOKENIZE_BATCH).collect();
            if batch.is_empty() {
                break;
            }
            let req = pb::TokenizeRequest {
                fields: batch,
                purpose: None,
            };
            let mut client = w.clone();
            calls.push(tokio::spawn(async move { client.tokenize(req).await }));
        }
        if calls.is_empty() {
            return Ok(tokens);
        }
        for c in calls {
            let resp = c
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("tokenize: {}", e.message()))?;
            for r in resp.into_inner().results {
                match r.outcome {
                    Some(pb::tokenize_result::Outcome::Token(t)) => tokens.push(t),
                    Some(pb::tokenize_result::Outcome::Error(e)) => {
                        return Err(format!("tokenize: an item failed: {}", e.message))
                    }
                    None => return Err("tokenize: an item has no outcome".into()),
                }
            }
        }
    }
}

/// Runs `call` once per item of `items` with `concurrency` workers, until
/// every item is done; `call` gives the tokens it deleted or erased.
async fn drain<T, F, Fut>(items: Vec<T>, concurrency: usize, call: F) -> Drained
where
    T: Send + 'static,
    F: Fn(usize, T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<u64, String>> + Send + 'static,
{
    let queue = Arc::new(Mutex::new(items.into_iter()));
    let call = Arc::new(call);
    let start = Instant::now();
    let mut workers = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let (queue, call) = (queue.clone(), call.clone());
        workers.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
            let (mut calls, mut failed, mut tokens, mut error) = (0u64, 0u64, 0u64, None);
            loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                let Some(item) = next else { break };
                let t = Instant::now();
                let outcome = call(worker, item).await;
                if let Some(h) = hist.as_mut() {
                    let _ = h.record((t.elapsed().as_micros() as u64).max(1));
                }
                calls += 1;
                match outcome {
                    Ok(n) => tokens += n,
                    Err(e) => {
                        failed += 1;
                        error.get_or_insert(e);
                    }
                }
            }
            (calls, failed, tokens, error, hist)
        }));
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
    let mut out = Drained {
        calls: 0,
        failed: 0,
        seconds: 0.0,
        tokens: 0,
        p50_us: 0,
        p99_us: 0,
        max_us: 0,
        first_error: None,
    };
    for w in workers {
        match w.await {
            Ok((calls, failed, tokens, error, hist)) => {
                out.calls += calls;
                out.failed += failed;
                out.tokens += tokens;
                if out.first_error.is_none() {
                    out.first_error = error;
                }
                if let (Some(total), Some(h)) = (total.as_mut(), hist) {
                    let _ = total.add(h);
                }
            }
            Err(e) => {
                out.failed += 1;
                out.first_error
                    .get_or_insert(format!("a worker failed: {e}"));
            }
        }
    }
    out.seconds = start.elapsed().as_secs_f64();
    let q = |p: f64| total.as_ref().map_or(0, |h| h.value_at_quantile(p));
    out.p50_us = q(0.50);
    out.p99_us = q(0.99);
    out.max_us = total.as_ref().map_or(0, |h| h.max());
    out
}

/// Email fields with a fresh value each.
fn emails(values: &Values) -> impl Iterator<Item = pb::Field> + '_ {
    std::iter::repeat_with(|| super::email_field(values.email()))
}

/// The erased phone values: Chinese mobile numbers on another prefix than
/// the scenarios' (+86 137 instead of 139), so no other token shares them.
fn erase_value(n: u64) -> String {
    format!("+86137{:08}", n % 100_000_000)
}

fn phone_field(value: String) -> pb::Field {
    pb::Field {
        kind: pb::FieldKind::Phone as i32,
        value,
        ..Default::default()
    }
}

/// Preloads `n` random-mode tokens, then deletes them all with
/// DeleteTokens in batches of [`DELETE_BATCH`].
async fn delete_part(fresh: &FreshVault<'_>, audit_log: &Path, n: u64) -> Result<Drained, String> {
    let s = start(
        fresh,
        "bench-lifecycle.toml",
        audit_log,
        &Tuning::default(),
        None,
    )
    .await?;
    eprintln!("lifecycle: preloading {n} tokens to delete…");
    let tokens = tokenize_all(&s.load.writers, emails(&s.load.values).take(n as usize)).await?;
    tokio::time::sleep(settle_time(fresh.options.duration)).await;
    eprintln!("lifecycle: deleting them in batches of {DELETE_BATCH}…");
    let batches: Vec<Vec<String>> = tokens.chunks(DELETE_BATCH).map(<[_]>::to_vec).collect();
    let writers = Arc::new(s.load.writers.clone());
    let drained = drain(
        batches,
        fresh.options.concurrency,
        move |worker, batch: Vec<String>| {
            let mut client = writers[worker % writers.len()].clone();
            async move {
                let n = batch.len();
                let answer = client
                    .delete_tokens(pb::DeleteTokensRequest { tokens: batch })
                    .await
                    .map_err(|e| format!("DeleteTokens: {}", e.message()))?
                    .into_inner();
                let deleted = answer
                    .results
                    .iter()
                    .filter(|r| {
                        matches!(
                            r.outcome,
                            Some(pb::delete_tokens_result::Outcome::Deleted(_))
                        )
                    })
                    .count();
                if deleted == n {
                    Ok(n as u64)
                } else {
                    Err(format!(
                        "DeleteTokens: {} of {n} tokens not deleted",
                        n - deleted
                    ))
                }
            }
        },
    )
    .await;
    s.vault.stop();
    Ok(drained)
}

/// Gives each of `values` phone values [`RANDOM_TOKENS_PER_VALUE`]
/// random-mode tokens (a vault with phone tokens random) and one
/// deterministic one (a vault with them deterministic, as the bench's
/// config has them), then erases each value with EraseValue on the latter.
async fn erase_part(
    fresh: &FreshVault<'_>,
    audit_log: &Path,
    values: u64,
) -> Result<Drained, String> {
    let random = Tuning {
        phone_random: true,
        ..Tuning::default()
    };
    let s = start(
        fresh,
        "bench-lifecycle-random.toml",
        audit_log,
        &random,
        None,
    )
    .await?;
    eprintln!(
        "lifecycle: {values} phone values, {RANDOM_TOKENS_PER_VALUE} random-mode tokens each…"
    );
    let random_fields = (0..RANDOM_TOKENS_PER_VALUE as u64)
        .flat_map(|_| (0..values).map(|n| phone_field(erase_value(n))));
    tokenize_all(&s.load.writers, random_fields).await?;
    s.vault.stop();

    let s = start(
        fresh,
        "bench-lifecycle.toml",
        audit_log,
        &Tuning::default(),
        None,
    )
    .await?;
    eprintln!("lifecycle: and a deterministic token each…");
    tokenize_all(
        &s.load.writers,
        (0..values).map(|n| phone_field(erase_value(n))),
    )
    .await?;
    let admin_tls = ClientTls::dev(fresh.dir, "admin").map_err(|e| e.to_string())?;
    let erasers =
        Arc::new(clients(&s.vault.addr, &admin_tls, fresh.options.connections.max(1)).await?);
    tokio::time::sleep(settle_time(fresh.options.duration)).await;
    eprintln!("lifecycle: erasing every value…");
    let drained = drain(
        (0..values).collect(),
        fresh.options.concurrency,
        move |worker, n: u64| {
            let mut client = erasers[worker % erasers.len()].clone();
            async move {
                let erased = client
                    .erase_value(pb::EraseValueRequest {
                        field: Some(phone_field(erase_value(n))),
                    })
                    .await
                    .map_err(|e| format!("EraseValue: {}", e.message()))?
                    .into_inner()
                    .erased_tokens
                    .len();
                if erased == TOKENS_PER_VALUE {
                    Ok(erased as u64)
                } else {
                    Err(format!(
                        "EraseValue erased {erased} tokens of a value, not {TOKENS_PER_VALUE}"
                    ))
                }
            }
        },
    )
    .await;
    s.vault.stop();
    Ok(drained)
}

/// How long after the start of a preload of `n` tokens its tokens should
/// expire: three times the preload at `rate` tokens/s, and 2 s.
fn expiry_budget(n: u64, rate: f64) -> Duration {
    Duration::from_secs(2) + Duration::from_secs_f64(3.0 * n as f64 / rate.max(100.0))
}

/// The passes logged since the `from`th until they have deleted
/// `expected` tokens (bounded: an error past 60 s and 2 ms per token).
async fn swept(sweeps: &SweepLog, from: usize, expected: u64) -> Result<Vec<SweepPass>, String> {
    let bound = Duration::from_secs(60) + Duration::from_millis(expected.saturating_mul(2));
    let deadline = Instant::now() + bound;
    loop {
        // The log only grows: `from` is within it.
        let passes: Vec<SweepPass> = sweeps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(from..)
            .unwrap_or_default()
            .to_vec();
        let deleted: u64 = passes.iter().map(|p| p.deleted).sum();
        if deleted >= expected {
            return Ok(passes);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the sweeper deleted {deleted} of {expected} expired tokens within {}s",
                bound.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Preloads `m` email tokens whose time to live ends at one moment, after
/// the preload (estimated at `rate` tokens/s); waits for that moment.
/// Returns the moment, the index of the first pass after the preload
/// began, and the preload's own rate.
async fn expiring(
    load: &Load,
    sweeps: &SweepLog,
    m: u64,
    rate: f64,
) -> Result<(Instant, usize, f64), String> {
    let from = sweeps.lock().unwrap_or_else(|p| p.into_inner()).len();
    let began = Instant::now();
    let expiry = began + expiry_budget(m, rate);
    let fields = emails(&load.values).take(m as usize).map(|mut f| {
        let left = expiry.saturating_duration_since(Instant::now());
        f.ttl = Some(client::ttl(left.max(Duration::from_millis(1))));
        f
    });
    let tokens = tokenize_all(&load.writers, fields).await?;
    let own_rate = tokens.len() as f64 / began.elapsed().as_secs_f64().max(1e-3);
    tokio::time::sleep_until(expiry.into()).await;
    Ok((expiry, from, own_rate))
}

fn sweep_run(expiry: Instant, passes: Vec<SweepPass>) -> SweepRun {
    let last = passes.last().map_or(expiry, |p| p.at);
    SweepRun {
        began_early: passes.iter().any(|p| p.at < expiry),
        wall_seconds: last.saturating_duration_since(expiry).as_secs_f64(),
        passes,
    }
}

/// The sweep part: on a vault whose sweeper runs every
/// [`SWEEP_INTERVAL`], `m` tokens expire at once and are swept with no
/// other load; then detokenize-1 runs for the run's duration; then `m`
/// more expire and detokenize-1 runs from their expiry until the sweep's
/// last pass.
async fn sweep_part(
    fresh: &FreshVault<'_>,
    audit_log: &Path,
    sizes: &LifecycleOptions,
    preload_rate: f64,
) -> Result<(SweepRun, SweepRun, Measurement, Measurement), String> {
    let m = sizes.sweep_tokens;
    let tuning = Tuning {
        sweep: Some((SWEEP_INTERVAL, sizes.sweep_batch, sizes.sweep_rate)),
        ..Tuning::default()
    };
    let sweeps: SweepLog = Arc::default();
    let s = start(
        fresh,
        "bench-lifecycle-sweep.toml",
        audit_log,
        &tuning,
        Some(sweeps.clone()),
    )
    .await?;
    let result = async {
        eprintln!("lifecycle: {m} tokens expiring at once, swept with no other load…");
        let (expiry, from, rate) = expiring(&s.load, &sweeps, m, preload_rate).await?;
        let alone = sweep_run(expiry, swept(&sweeps, from, m).await?);

        eprintln!("lifecycle: detokenize-1 before a sweep…");
        let (_, before) = fresh.measure(&s.load, Scenario::Detokenize).await;

        eprintln!("lifecycle: {m} more expiring, swept beside detokenize-1…");
        let (expiry, from, _) = expiring(&s.load, &sweeps, m, rate).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let during = tokio::spawn(super::measure_until(
            s.load.clone(),
            Scenario::Detokenize,
            // Bounded as the wait for the sweep is.
            Duration::from_secs(3600),
            Some(stop.clone()),
            fresh.options.concurrency,
        ));
        let passes = swept(&sweeps, from, m).await;
        stop.store(true, Ordering::Relaxed);
        let during = during.await.map_err(|e| e.to_string())?;
        let loaded = sweep_run(expiry, passes?);
        Ok((alone, loaded, before, during))
    }
    .await;
    s.vault.stop();
    result
}

/// Runs the lifecycle phase: delete, erase, sweep. `preload_rate` is the
/// run's preload speed (tokens/s), to time the sweep's preloads.
pub async fn measure(
    fresh: &FreshVault<'_>,
    audit_log: &Path,
    sizes: &LifecycleOptions,
    preload_rate: f64,
) -> Result<LifecycleReport, String> {
    let delete = delete_part(fresh, audit_log, sizes.delete_tokens).await?;
    let erase = erase_part(fresh, audit_log, sizes.erase_values).await?;
    let (sweep_alone, sweep_loaded, before, during) =
        sweep_part(fresh, audit_log, sizes, preload_rate).await?;
    Ok(LifecycleReport {
        sizes: *sizes,
        delete,
        erase,
        sweep_alone,
        sweep_loaded,
        before,
        during,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_sweeper_line_gives_its_count_and_time_and_other_lines_nothing() {
        let line = "2026-11-27T17:50:00.123456Z  INFO fieldvault::vault::lifecycle: \
                    sweep: expired tokens deleted deleted=500 ms=12";
        assert_eq!(parse_sweep_line(line), Some((500, 12)));
        assert_eq!(
            parse_sweep_line(
                "2026-11-27T17:50:00Z  WARN fieldvault::vault::lifecycle: sweep: stopped early; \
                 trying again later error=unavailable"
            ),
            None
        );
        assert_eq!(
            parse_sweep_line("INFO x: sweep: expired tokens deleted deleted=5"),
            None
        );
    }
}
