//! `fieldvault-bench`: throughput and latency of a fieldvault server over
//! real mTLS, against a transport ceiling (the same gRPC service with no
//! work behind it). Not part of the `fieldvault` binary: it starts
//! `fieldvault serve` (found next to this executable) as a child process,
//! and the ceiling as a second child of its own.
//!
//! ```text
//! cargo build --release
//! ./target/release/fieldvault-bench --duration 5 --preload 1000000
//! # detokenize-1 with the durable audit trail, then with it on a tmpfs:
//! ./target/release/fieldvault-bench --duration 5 --preload 100000 \
//!     --scenarios detokenize-1 --compare-audit-dir /dev/shm
//! # detokenize-1 and -100 with the reader rule's quotas off, then on:
//! ./target/release/fieldvault-bench --duration 5 --preload 100000 \
//!     --scenarios detokenize-1 --compare-quotas
//! # delete, erase and sweep rates alone (no scenario):
//! ./target/release/fieldvault-bench --duration 5 --preload 100000 \
//!     --scenarios none --lifecycle
//! # detokenize without a grant (masked), then under an approved grant:
//! ./target/release/fieldvault-bench --duration 5 --preload 1000 \
//!     --scenarios none --grants
//! ```

mod ceiling;
mod load;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "fieldvault-bench",
    version,
    about = "Measure fieldvault's throughput and latency against a transport ceiling",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Internal>,
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Subcommand)]
enum Internal {
    /// The transport ceiling the benchmark starts as a child (internal).
    #[command(name = "ceiling", hide = true)]
    Ceiling {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Args)]
struct BenchArgs {
    /// Seconds per scenario and server.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections per server and identity.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Tokens stored before the scenarios run (read scenarios pick from them).
    #[arg(long, default_value_t = 100_000)]
    preload: u64,
    /// Run only these scenarios (comma-separated): tokenize-1-random,
    /// tokenize-1-deterministic, tokenize-100, detokenize-1, detokenize-100,
    /// mixed-80r-20w; `none` for none (only the phases at the end).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Keep the servers' data here instead of a temporary directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// sled cache bound of the vault server, MiB.
    #[arg(long, default_value_t = fieldvault::config::DEFAULT_CACHE_CAPACITY_MIB)]
    cache_capacity_mib: u64,
    /// Load a vault that is already running at HOST:PORT instead of
    /// starting one. Needs --data-dir: the data dir of that vault's
    /// `serve --dev`, whose dev certificates the load generator uses.
    #[arg(long, requires = "data_dir")]
    addr: Option<String>,
    /// Purpose declared by detokenize calls (`callback` for a
    /// `serve --dev` vault's sample policy).
    #[arg(long, default_value = "bench")]
    purpose: String,
    /// The `fieldvault` server binary to start (default: the one next to
    /// this executable).
    #[arg(long)]
    vault_bin: Option<PathBuf>,
    /// After the scenarios, measure detokenize-1 without and during a
    /// rewrap at this rate (records/s), then the rewrap's top speed.
    #[arg(long)]
    rewrap_rate: Option<u32>,
    /// Where the vault writes its audit trail (default: the data dir).
    #[arg(long, conflicts_with = "addr")]
    audit_dir: Option<PathBuf>,
    /// At the end, measure detokenize-1 on a freshly started vault with its
    /// audit trail where it is (--audit-dir or the data dir), then with the
    /// trail moved to this directory (/dev/shm for a tmpfs sink), and print
    /// both side by side. The trail is moved back afterwards.
    #[arg(long, conflicts_with = "addr")]
    compare_audit_dir: Option<PathBuf>,
    /// At the end, measure detokenize-1 and detokenize-100 (those of them
    /// --scenarios names, else both) on a freshly started vault whose
    /// reader rule has no quota, then on one whose reader rule has quotas
    /// that never bite (two durable counters charged per call), and print
    /// both side by side.
    #[arg(long, conflicts_with = "addr")]
    compare_quotas: bool,
    /// At the end, on vaults started afresh on the run's store: the delete
    /// rate (DeleteTokens in batches of 100), the erase rate (EraseValue of
    /// phone values with 3 random-mode tokens and 1 deterministic each),
    /// the sweep rate of the server's sweeper (alone and beside
    /// detokenize-1, every 200ms), and detokenize-1 before and during a
    /// sweep.
    #[arg(long, conflicts_with = "addr")]
    lifecycle: bool,
    /// Tokens the lifecycle phase deletes.
    #[arg(long, default_value_t = 100_000, requires = "lifecycle")]
    delete_tokens: u64,
    /// Phone values the lifecycle phase erases (4 tokens each).
    #[arg(long, default_value_t = 25_000, requires = "lifecycle")]
    erase_values: u64,
    /// Expired tokens the lifecycle phase has swept, twice (alone, then
    /// beside detokenize-1).
    #[arg(long, default_value_t = 100_000, requires = "lifecycle")]
    sweep_tokens: u64,
    /// The server's `[retention] sweep_batch` in the lifecycle phase.
    #[arg(long, default_value_t = fieldvault::domain::retention::DEFAULT_SWEEP_BATCH, requires = "lifecycle")]
    sweep_batch: usize,
    /// The server's `[retention] sweep_rate` in the lifecycle phase
    /// (records per second; 1000000 measures the sweeper unthrottled).
    #[arg(long, default_value_t = fieldvault::domain::retention::DEFAULT_SWEEP_RATE, requires = "lifecycle")]
    sweep_rate: u32,
    /// At the end, on a vault started afresh on the run's store: what a
    /// reveal under an approved-workflow grant costs. Addresses are
    /// tokenized; detokenize-1 and detokenize-100 (those of them
    /// --scenarios names, else both) run as `support` (masked for
    /// `callback`, no grant: the baseline), then as `fulfilment` (in full
    /// for `shipping` under a grant approved by `approver1` and
    /// `approver2`, every value charged to it durably). The run fails
    /// unless the grant's `used` equals the values revealed under it. The
    /// grant has 10,000,000 reveals (the most a config allows): about 30 s
    /// of detokenize-100 at 300,000 values/s; past them its calls fail.
    #[arg(long, conflicts_with = "addr")]
    grants: bool,
    /// The vaults this starts serve Prometheus metrics (`[metrics] listen`
    /// on a loopback port, not scraped): run once with and once without to
    /// see what counting costs.
    #[arg(long, conflicts_with = "addr")]
    metrics: bool,
    /// Addresses the grants phase tokenizes and reveals.
    #[arg(long, default_value_t = 10_000, requires = "grants")]
    grant_addresses: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fieldvault-bench: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(Internal::Ceiling { config }) => {
                let config = fieldvault::config::Config::load(&config, &|k| std::env::var(k).ok())
                    .map_err(|e| e.to_string())?;
                ceiling::serve(&config).await.map(|()| ExitCode::SUCCESS)
            }
            None => bench(cli.bench).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("fieldvault-bench: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(args: BenchArgs) -> Result<ExitCode, String> {
    if args.duration <= 0.0 || args.concurrency == 0 {
        return Err("--duration and --concurrency must be positive".into());
    }
    if args.grants && args.grant_addresses == 0 {
        return Err("--grant-addresses must be positive: the grants phase reveals them".into());
    }
    for s in &args.scenarios {
        if s != "none" && !load::Scenario::ALL.iter().any(|k| k.name() == s) {
            return Err(format!("unknown scenario '{s}'"));
        }
    }
    let report = load::run(load::BenchOptions {
        duration: std::time::Duration::from_secs_f64(args.duration),
        concurrency: args.concurrency,
        connections: args.connections,
        preload: args.preload,
        scenarios: args.scenarios,
        data_dir: args.data_dir,
        cache_capacity_mib: args.cache_capacity_mib,
        addr: args.addr,
        purpose: args.purpose,
        vault_bin: args.vault_bin,
        rewrap_rate: args.rewrap_rate,
        audit_dir: args.audit_dir,
        compare_audit_dir: args.compare_audit_dir,
        compare_quotas: args.compare_quotas,
        lifecycle: args.lifecycle.then_some(load::LifecycleOptions {
            delete_tokens: args.delete_tokens,
            erase_values: args.erase_values,
            sweep_tokens: args.sweep_tokens,
            sweep_batch: args.sweep_batch,
            sweep_rate: args.sweep_rate,
        }),
        grants: args.grants.then_some(load::GrantsOptions {
            addresses: args.grant_addresses,
        }),
        metrics: args.metrics,
    })
    .await?;
    print!("{}", report.to_markdown());
    let failed = report.failed_calls();
    if failed > 0 {
        eprintln!("fieldvault-bench: {failed} calls failed");
        return Ok(ExitCode::FAILURE);
    }
    if let Some(g) = report.grants.as_ref().filter(|g| !g.counted_exactly()) {
        eprintln!(
            "fieldvault-bench: grant {} counts {} values used, but {} were revealed under it",
            g.grant_id, g.used, g.revealed
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
