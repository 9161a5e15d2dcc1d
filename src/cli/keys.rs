//! `fieldvault keys …`: key administration against a running server (the
//! KeyAdmin service), with the client commands' connection flags. Every
//! command prints one answer on stdout (one JSON object with `--json`);
//! `keys rewrap --wait` prints its progress on stderr.

use super::conn::{CallStatus, Conn};
use super::output::{call_failed, emit, Failure, EXIT_ITEM_FAILED, EXIT_OK};
use clap::{Args, Subcommand};
use fieldvault::grpc::pb;
use fieldvault::grpc::pb::key_admin_client::KeyAdminClient;
use fieldvault::vault::MAX_REWRAP_RATE;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tonic::transport::Channel;

const EXIT_CODES_HELP: &str = "Exit codes: 0 done; 1 (keys rewrap --wait) the rewrap finished \
    and some records failed their integrity check (their tokens are listed); 2 the call failed \
    (connection, TLS, refused by the server, bad arguments; with --json, the error is a JSON \
    object on stdout). The caller needs a policy rule with action \"keys\" (the dev identity \
    rotator has one).";

#[derive(Subcommand)]
pub(crate) enum KeysCommand {
    /// Every data-key and index-key version (state, creation time, records
    /// it protects) and the rewrap and index-rebuild jobs.
    Status(KeysArgs),
    /// Make a new data-key version, active for new writes from now on
    /// (older versions stay readable until a rewrap moves their records).
    Rotate(KeysArgs),
    /// Start moving every record on an older data-key version onto the
    /// active one, in the background (harmless when it runs already).
    Rewrap(RewrapArgs),
    /// Destroy a data-key version no record uses any more (run a rewrap
    /// first): anything sealed under it never opens again.
    Retire(RetireArgs),
    /// Make a new blind-index key version; the index is rebuilt in the
    /// background (lookups by value keep working meanwhile).
    RotateIndex(KeysArgs),
    /// Re-wrap every key under a new master key, read by the server from a
    /// file on the server's machine.
    RotateMaster(RotateMasterArgs),
}

#[derive(Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub(crate) struct KeysArgs {
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub(crate) struct RewrapArgs {
    /// The most records to move per second (1 to 1000000); the server's
    /// configured default when not given. A running job takes the new rate.
    #[arg(long, value_name = "N", value_parser = rate)]
    rate: Option<u32>,
    /// Wait until the rewrap has finished, printing its progress on stderr
    /// (records done / total, rate, ETA): about once a second on a
    /// terminal, every 10 seconds otherwise. Interrupting the wait does not
    /// stop the job; without --rate, waiting on a running job keeps its
    /// rate.
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub(crate) struct RetireArgs {
    /// The data-key version to destroy (see `fieldvault keys status`).
    #[arg(value_name = "VERSION", value_parser = key_version)]
    version: u32,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub(crate) struct RotateMasterArgs {
    /// The new master key file (64 hex characters, mode 0600). The SERVER
    /// reads it, so it is a path on the server's machine: the key never
    /// travels over the network. A relative path is made absolute here
    /// (against this command's working directory) before it is sent;
    /// symbolic links are left for the server to follow (a Kubernetes
    /// secret's links differ between pods).
    #[arg(long, value_name = "FILE")]
    new_key_file: PathBuf,
    #[command(flatten)]
    conn: Conn,
}

/// `--rate`. Like every parser here, the refusal never quotes the value (a
/// value in the wrong place may be a phone number).
fn rate(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if (1..=MAX_REWRAP_RATE).contains(&n) => Ok(n),
        _ => Err(format!(
            "must be a whole number of records per second from 1 to {MAX_REWRAP_RATE}"
        )),
    }
}

/// `VERSION` of `keys retire`.
fn key_version(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "must be a key version, a whole number from 1 to {}",
            u32::MAX
        )),
    }
}

pub(crate) async fn keys(command: KeysCommand) -> ExitCode {
    match command {
        KeysCommand::Status(args) => status(args).await,
        KeysCommand::Rotate(args) => rotate(args).await,
        KeysCommand::Rewrap(args) => rewrap(args).await,
        KeysCommand::Retire(args) => retire(args).await,
        KeysCommand::RotateIndex(args) => rotate_index(args).await,
        KeysCommand::RotateMaster(args) => rotate_master(args).await,
    }
}

/// A connected KeyAdmin client and how to map its failed calls.
struct Admin {
    client: KeyAdminClient<Channel>,
    status: CallStatus,
    json: bool,
}

impl Admin {
    async fn connect(conn: &Conn) -> Result<Self, ExitCode> {
        let channel = conn
            .channel()
            .await
            .map_err(|e| call_failed(conn.json, &Failure::from_client(&e), 0))?;
        Ok(Self {
            client: KeyAdminClient::new(channel),
            status: conn.call_status(),
            json: conn.json,
        })
    }

    /// Runs one call within `--timeout`; a failure is printed and becomes
    /// the exit code.
    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, ExitCode> {
        self.status
            .bound(call)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| call_failed(self.json, &Failure::from_status(&s), 0))
    }
}

async fn status(args: KeysArgs) -> ExitCode {
    let admin = match Admin::connect(&args.conn).await {
        Ok(admin) => admin,
        Err(code) => return code,
    };
    let mut client = admin.client.clone();
    let status = match admin
        .call(client.get_key_status(pb::GetKeyStatusRequest {}))
        .await
    {
        Ok(status) => status,
        Err(code) => return code,
    };
    if admin.json {
        emit!("{}", status_json(&status));
    } else {
        emit!("{}", status_text(&status));
    }
    ExitCode::from(EXIT_OK)
}

async fn rotate(args: KeysArgs) -> ExitCode {
    let admin = match Admin::connect(&args.conn).await {
        Ok(admin) => admin,
        Err(code) => return code,
    };
    let mut client = admin.client.clone();
    match admin
        .call(client.rotate_data_key(pb::RotateDataKeyRequest {}))
        .await
    {
        Ok(r) if admin.json => emit!("{}", json!({ "data_key_version": r.version })),
        Ok(r) => emit!(
            "data key version {} is now active; older versions stay readable (move their \
             records with `fieldvault keys rewrap`)",
            r.version
        ),
        Err(code) => return code,
    }
    ExitCode::from(EXIT_OK)
}

async fn retire(args: RetireArgs) -> ExitCode {
    let admin = match Admin::connect(&args.conn).await {
        Ok(admin) => admin,
        Err(code) => return code,
    };
    let mut client = admin.client.clone();
    let request = pb::RetireKeyVersionRequest {
        version: args.version,
    };
    match admin.call(client.retire_key_version(request)).await {
        Ok(_) if admin.json => emit!("{}", json!({ "retired_data_key_version": args.version })),
        Ok(_) => emit!(
            "data key version {} is retired: its key is destroyed",
            args.version
        ),
        Err(code) => return code,
    }
    ExitCode::from(EXIT_OK)
}

async fn rotate_index(args: KeysArgs) -> ExitCode {
    let admin = match Admin::connect(&args.conn).await {
        Ok(admin) => admin,
        Err(code) => return code,
    };
    let mut client = admin.client.clone();
    match admin
        .call(client.rotate_index_key(pb::RotateIndexKeyRequest {}))
        .await
    {
        Ok(r) if admin.json => emit!("{}", json!({ "index_key_version": r.version })),
        Ok(r) => emit!(
            "index key version {} is now active; the index is rebuilt in the background \
             (see `fieldvault keys status`)",
            r.version
        ),
        Err(code) => return code,
    }
    ExitCode::from(EXIT_OK)
}

/// The path sent for `--new-key-file`: absolute, links not resolved (the
/// server resolves them on its own machine, where they may differ).
fn absolute_key_file(path: &Path) -> std::io::Result<PathBuf> {
    std::path::absolute(path)
}

async fn rotate_master(args: RotateMasterArgs) -> ExitCode {
    let json = args.conn.json;
    if args.new_key_file.as_os_str().is_empty() {
        let f = Failure::invalid("--new-key-file", "is empty: give the new master key file");
        return call_failed(json, &f, 0);
    }
    let path = match absolute_key_file(&args.new_key_file) {
        Ok(path) => path,
        Err(e) => {
            let f = Failure::invalid("--new-key-file", &format!("cannot be made absolute: {e}"));
            return call_failed(json, &f, 0);
        }
    };
    let Some(text) = path.to_str() else {
        let f = Failure::invalid("--new-key-file", "is not valid UTF-8");
        return call_failed(json, &f, 0);
    };
    let admin = match Admin::connect(&args.conn).await {
        Ok(admin) => admin,
        Err(code) => return code,
    };
    let mut client = admin.client.clone();
    let request = pb::RotateMasterKeyRequest {
        new_key_file: text.to_owned(),
    };
    match admin.call(client.rotate_master_key(request)).await {
        Ok(_) if json => emit!("{}", json!({ "new_key_file": text })),
        Ok(_) => emit!(
            "master key rotated: every key is now wrapped under the key in {text} (on the \
             server). Start the server with that key from now on: point master_key in its \
             config at it, or move it over the old key file (serve --dev: mv {text} \
             DATA_DIR/dev/master.key); the old key is refused. Backups made before now need \
             the old key: keep it as long as you keep them."
        ),
        Err(code) => return code,
    }
    ExitCode::from(EXIT_OK)
}

/// How often `keys rewrap --wait` asks for the job's progress.
const POLL: Duration = Duration::from_secs(1);
/// Without a terminal on stderr (a log file, CI), a progress line every
/// this many polls, besides the first and the last.
const PLAIN_PROGRESS_EVERY: u64 = 10;

async fn rewrap(args: RewrapArgs) -> ExitCode {
    let admin = match Admin::connect(&args.conn).await {
        Ok(admin) => admin,
        Err(code) => return code,
    };
    let json = admin.json;
    let mut client = admin.client.clone();
    let request = pb::StartRewrapRequest {
        rate_per_second: args.rate,
    };
    let started = match admin.call(client.start_rewrap(request)).await {
        Ok(r) => r.job.unwrap_or_default(),
        Err(code) => return code,
    };
    if !args.wait {
        if json {
            emit!("{}", job_json(&started));
        } else {
            emit!("rewrap: {}", job_line(&started));
        }
        return ExitCode::from(EXIT_OK);
    }
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut job = started;
    let mut polls: u64 = 0;
    let mut last = (std::time::Instant::now(), job.done);
    let mut rate = 0.0;
    while !finished(&job) {
        let local = {
            let (at, done) = last;
            let secs = at.elapsed().as_secs_f64();
            (secs > 0.0).then(|| job.done.saturating_sub(done) as f64 / secs)
        };
        // The server's measured rate; this client's own when it has none.
        rate = if job.measured_per_second > 0.0 {
            job.measured_per_second
        } else {
            local.unwrap_or(rate)
        };
        last = (std::time::Instant::now(), job.done);
        if terminal {
            eprint!("\r{}\x1b[K", progress_line(&job, rate));
        } else if polls % PLAIN_PROGRESS_EVERY == 0 {
            eprintln!("{}", progress_line(&job, rate));
        }
        polls += 1;
        tokio::time::sleep(POLL).await;
        job = match admin
            .call(client.get_rewrap_status(pb::GetRewrapStatusRequest {}))
            .await
        {
            Ok(r) => r.job.unwrap_or_default(),
            Err(code) => {
                if terminal {
                    eprintln!();
                }
                if !json {
                    eprintln!(
                        "fieldvault: stopped waiting; the rewrap itself goes on on the server \
                         (or resumes when it starts again): follow it with `fieldvault keys \
                         rewrap --wait`, which does not start a second one"
                    );
                }
                return code;
            }
        };
    }
    if terminal {
        eprint!("\r{}\x1b[K\n", progress_line(&job, rate));
    } else {
        eprintln!("{}", progress_line(&job, rate));
    }
    if json {
        emit!("{}", job_json(&job));
    } else {
        emit!("rewrap: {}", job_line(&job));
    }
    if job.failed > 0 {
        if !json {
            eprint!("{}", failed_records(&job));
        }
        return ExitCode::from(EXIT_ITEM_FAILED);
    }
    ExitCode::from(EXIT_OK)
}

/// What `keys rewrap --wait` says on stderr when records failed their
/// integrity check: how many, and their tokens (the first of them when the
/// server lists only some).
fn failed_records(job: &pb::JobStatus) -> String {
    let listed = job.failed_tokens.len();
    let mut out = format!(
        "fieldvault: the rewrap finished, but {} record(s) failed their integrity check and \
         were left as they are (their key version cannot be retired while they remain){}\n",
        job.failed,
        if listed as u64 == job.failed {
            ":".to_owned()
        } else {
            format!("; the first {listed}:")
        }
    );
    for token in &job.failed_tokens {
        out.push_str(&format!("  {token}\n"));
    }
    out
}

/// Whether there is nothing more to wait for: the job finished, or none
/// runs (idle: never started, or a rotation came after it finished; a
/// wait would never end).
fn finished(job: &pb::JobStatus) -> bool {
    matches!(
        pb::JobState::try_from(job.state),
        Ok(pb::JobState::Finished | pb::JobState::Idle)
    )
}

/// `rewrap to v3: 1200/5000 records (24.0%), 480/s, ETA 8s`
fn progress_line(job: &pb::JobStatus, rate: f64) -> String {
    let total = job.done.saturating_add(job.remaining);
    let percent = if total == 0 {
        100.0
    } else {
        job.done as f64 * 100.0 / total as f64
    };
    let eta = if job.remaining == 0 {
        "0s".to_owned()
    } else if rate > 0.0 {
        format_secs((job.remaining as f64 / rate).ceil() as u64)
    } else {
        "unknown".to_owned()
    };
    let mut line = format!(
        "rewrap to v{}: {}/{} records ({percent:.1}%), {rate:.0}/s, ETA {eta}",
        job.target_version, job.done, total
    );
    if job.failed > 0 {
        line.push_str(&format!(", {} failed", job.failed));
    }
    line
}

/// `1h02m`, `3m05s`, `42s`.
fn format_secs(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// A time the server sent (Unix ms, 0 for unknown) as RFC 3339 UTC to the
/// second, or `None`.
fn rfc3339(unix_ms: u64) -> Option<String> {
    (unix_ms != 0).then(|| fieldvault::domain::time::rfc3339(unix_ms))
}

fn key_state_name(state: i32) -> String {
    match pb::KeyState::try_from(state) {
        Ok(pb::KeyState::Active) => "active".into(),
        Ok(pb::KeyState::DecryptOnly) => "decrypt_only".into(),
        Ok(pb::KeyState::Retired) => "retired".into(),
        _ => format!("unknown({state})"),
    }
}

fn job_state_name(state: i32) -> String {
    match pb::JobState::try_from(state) {
        Ok(pb::JobState::Idle) => "idle".into(),
        Ok(pb::JobState::Running) => "running".into(),
        Ok(pb::JobState::Finished) => "finished".into(),
        _ => format!("unknown({state})"),
    }
}

/// A time for JSON: both the Unix ms and RFC 3339, `null` when unknown.
fn time_json(unix_ms: u64) -> (Value, Value) {
    match rfc3339(unix_ms) {
        Some(text) => (json!(unix_ms), json!(text)),
        None => (Value::Null, Value::Null),
    }
}

fn version_json(v: &pb::KeyVersionStatus) -> Value {
    let (created_ms, created) = time_json(v.created_unix_ms);
    let (retired_ms, retired) = time_json(v.retired_unix_ms);
    json!({
        "version": v.version,
        "state": key_state_name(v.state),
        "created_unix_ms": created_ms,
        "created": created,
        "retired_unix_ms": retired_ms,
        "retired": retired,
        "records": v.records,
    })
}

fn job_json(job: &pb::JobStatus) -> Value {
    let (started_ms, started) = time_json(job.started_unix_ms);
    let (finished_ms, finished) = time_json(job.finished_unix_ms);
    json!({
        "state": job_state_name(job.state),
        "target_version": job.target_version,
        "done": job.done,
        "remaining": job.remaining,
        "total": job.done.saturating_add(job.remaining),
        "rate_per_second": job.rate_per_second,
        "measured_per_second": job.measured_per_second,
        "started_unix_ms": started_ms,
        "started": started,
        "finished_unix_ms": finished_ms,
        "finished": finished,
        "failed": job.failed,
        "failed_tokens": job.failed_tokens,
    })
}

fn status_json(s: &pb::GetKeyStatusResponse) -> Value {
    let (master_ms, master) = time_json(s.master_rotated_unix_ms);
    let default = pb::JobStatus::default();
    json!({
        "data_keys": s.data_keys.iter().map(version_json).collect::<Vec<_>>(),
        "index_keys": s.index_keys.iter().map(version_json).collect::<Vec<_>>(),
        "rewrap": job_json(s.rewrap.as_ref().unwrap_or(&default)),
        "index_rebuild": job_json(s.index_rebuild.as_ref().unwrap_or(&default)),
        "master_rotated_unix_ms": master_ms,
        "master_rotated": master,
    })
}

/// A table of key versions under `title`.
fn versions_table(title: &str, versions: &[pb::KeyVersionStatus]) -> String {
    let mut rows = vec![[
        "VERSION".to_owned(),
        "STATE".to_owned(),
        "CREATED".to_owned(),
        "RECORDS".to_owned(),
    ]];
    for v in versions {
        rows.push([
            v.version.to_string(),
            key_state_name(v.state),
            rfc3339(v.created_unix_ms).unwrap_or_else(|| "unknown".into()),
            v.records.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = format!("{title}\n");
    if versions.is_empty() {
        out.push_str("  (none)\n");
        return out;
    }
    for row in rows {
        // Numbers to the right, words to the left.
        let line = format!(
            "  {:>w0$}  {:<w1$}  {:<w2$}  {:>w3$}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `running to v3: 1200/5000 done, limit 500/s (measured 480/s), started …`
fn job_line(job: &pb::JobStatus) -> String {
    let state = job_state_name(job.state);
    let total = job.done.saturating_add(job.remaining);
    let mut line = match pb::JobState::try_from(job.state) {
        Ok(pb::JobState::Idle) => format!("{state} ({} to move)", job.remaining),
        _ => format!(
            "{state}, to v{}: {}/{total} done, {} remaining",
            job.target_version, job.done, job.remaining
        ),
    };
    if job.state == pb::JobState::Running as i32 {
        line.push_str(&format!(
            ", limit {}/s (measured {:.0}/s)",
            job.rate_per_second, job.measured_per_second
        ));
    }
    if let Some(t) = rfc3339(job.started_unix_ms) {
        line.push_str(&format!(", started {t}"));
    }
    if let Some(t) = rfc3339(job.finished_unix_ms) {
        line.push_str(&format!(", finished {t}"));
    }
    if job.failed > 0 {
        line.push_str(&format!(
            ", {} failed the integrity check: {}",
            job.failed,
            job.failed_tokens.join(" ")
        ));
    }
    line
}

fn status_text(s: &pb::GetKeyStatusResponse) -> String {
    let default = pb::JobStatus::default();
    let mut out = versions_table("Data keys", &s.data_keys);
    out.push_str(&versions_table("Index keys", &s.index_keys));
    out.push_str(&format!(
        "Rewrap: {}\n",
        job_line(s.rewrap.as_ref().unwrap_or(&default))
    ));
    out.push_str(&format!(
        "Index rebuild: {}\n",
        job_line(s.index_rebuild.as_ref().unwrap_or(&default))
    ));
    out.push_str(&format!(
        "Master key: {}",
        rfc3339(s.master_rotated_unix_ms)
            .map_or_else(|| "never rotated".to_owned(), |t| format!("rotated {t}"))
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: pb::JobState, done: u64, remaining: u64) -> pb::JobStatus {
        pb::JobStatus {
            state: state as i32,
            target_version: 2,
            done,
            remaining,
            rate_per_second: 500,
            ..Default::default()
        }
    }

    #[test]
    fn times_print_as_rfc3339_utc_and_zero_as_unknown() {
        assert_eq!(
            rfc3339(1_764_236_700_123).as_deref(),
            Some("2025-11-27T09:45:00Z")
        );
        assert_eq!(rfc3339(0), None);
        assert_eq!(time_json(0), (Value::Null, Value::Null));
    }

    #[test]
    fn progress_says_done_total_rate_and_eta() {
        let j = job(pb::JobState::Running, 1200, 3800);
        assert_eq!(
            progress_line(&j, 475.0),
            "rewrap to v2: 1200/5000 records (24.0%), 475/s, ETA 8s"
        );
        assert_eq!(
            progress_line(&j, 0.0),
            "rewrap to v2: 1200/5000 records (24.0%), 0/s, ETA unknown"
        );
        let mut j = job(pb::JobState::Running, 10, 7_200_000);
        j.failed = 2;
        assert_eq!(
            progress_line(&j, 1000.0),
            "rewrap to v2: 10/7200010 records (0.0%), 1000/s, ETA 2h00m, 2 failed"
        );
        assert_eq!(format_secs(185), "3m05s");
    }

    #[test]
    fn failed_records_are_counted_and_listed_by_token() {
        let mut j = job(pb::JobState::Finished, 3, 0);
        j.failed = 2;
        j.failed_tokens = vec![
            "fv1_AAAAAAAAAAAAAAAAAAAAAA".into(),
            "fv1_BBBBBBBBBBBBBBBBBBBBBA".into(),
        ];
        assert_eq!(
            failed_records(&j),
            "fieldvault: the rewrap finished, but 2 record(s) failed their integrity check and \
             were left as they are (their key version cannot be retired while they remain):\n  \
             fv1_AAAAAAAAAAAAAAAAAAAAAA\n  fv1_BBBBBBBBBBBBBBBBBBBBBA\n"
        );
        j.failed = 250;
        assert!(failed_records(&j).contains("remain); the first 2:\n"));
    }

    #[test]
    fn a_wait_ends_when_the_job_finished_or_none_runs() {
        assert!(finished(&job(pb::JobState::Finished, 5, 0)));
        assert!(finished(&job(pb::JobState::Idle, 0, 0)));
        // Idle with records to move: a rotation came after the job; no
        // job runs, so waiting would never end.
        assert!(finished(&job(pb::JobState::Idle, 0, 3)));
        assert!(!finished(&job(pb::JobState::Running, 5, 0)));
        assert!(!finished(&job(pb::JobState::Unspecified, 5, 0)));
    }

    #[test]
    fn the_status_table_lists_versions_states_times_and_records() {
        let status = pb::GetKeyStatusResponse {
            data_keys: vec![
                pb::KeyVersionStatus {
                    version: 1,
                    state: pb::KeyState::DecryptOnly as i32,
                    created_unix_ms: 0,
                    retired_unix_ms: 0,
                    records: 12345,
                },
                pb::KeyVersionStatus {
                    version: 2,
                    state: pb::KeyState::Active as i32,
                    created_unix_ms: 1_764_236_700_000,
                    retired_unix_ms: 0,
                    records: 7,
                },
            ],
            index_keys: vec![],
            rewrap: Some(job(pb::JobState::Running, 100, 12245)),
            index_rebuild: Some(job(pb::JobState::Idle, 0, 0)),
            master_rotated_unix_ms: 0,
        };
        let text = status_text(&status);
        let expected = "Data keys
  VERSION  STATE         CREATED               RECORDS
        1  decrypt_only  unknown                 12345
        2  active        2025-11-27T09:45:00Z        7
Index keys
  (none)
Rewrap: running, to v2: 100/12345 done, 12245 remaining, limit 500/s (measured 0/s)
Index rebuild: idle (0 to move)
Master key: never rotated";
        assert_eq!(text, expected);
        let json = status_json(&status);
        assert_eq!(json["data_keys"][0]["state"], "decrypt_only");
        assert_eq!(json["data_keys"][0]["created"], Value::Null);
        assert_eq!(json["data_keys"][1]["created"], "2025-11-27T09:45:00Z");
        assert_eq!(json["rewrap"]["total"], 12345);
        assert_eq!(json["master_rotated"], Value::Null);
    }

    #[test]
    fn a_refused_rate_or_version_is_not_quoted() {
        // One message whatever was given.
        for bad in ["0", "1000001", "+12025550123", "-1", "x"] {
            assert_eq!(
                rate(bad),
                Err("must be a whole number of records per second from 1 to 1000000".into())
            );
        }
        assert_eq!(rate("1000000"), Ok(1_000_000));
        for bad in ["0", "12025550123", "+12025550123"] {
            assert_eq!(
                key_version(bad),
                Err("must be a key version, a whole number from 1 to 4294967295".into())
            );
        }
        assert_eq!(key_version("3"), Ok(3));
    }

    fn ok_dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_relative_key_file_is_sent_absolute() {
        let sent = absolute_key_file(Path::new("no-such-dir/new.key")).unwrap_or_default();
        assert!(sent.is_absolute(), "{sent:?}");
        assert!(sent.ends_with("no-such-dir/new.key"), "{sent:?}");
        // Links are the server's to follow: not resolved here.
        let dir = ok_dir();
        let link = dir.path().join("link.key");
        let _ = std::os::unix::fs::symlink("..data/new.key", &link);
        assert_eq!(absolute_key_file(&link).unwrap_or_default(), link);
    }
}
