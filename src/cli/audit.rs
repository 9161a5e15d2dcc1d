//! `fieldvault audit verify|search|report`: the audit trail, offline. They
//! read the trail's files (the server may be running); `verify` and
//! `report` also need the audit key, kept beside the trail wrapped under
//! the master key, so they take the master key the way the server does:
//! from the config, or from a `serve --dev` data directory.

use super::output::{call_failed, emit, Failure};
use clap::{Args, Subcommand, ValueEnum};
use fieldvault::audit::chain::AuditKey;
use fieldvault::audit::event::{Decision, Event};
use fieldvault::audit::report::{self, Verification};
use fieldvault::audit::search::{self, Filter, Found};
use fieldvault::audit::verify::{
    parse_line, verify_files, verify_files_to, FileSummary, TrailBreak, CHAIN_START, FILE_START,
    KEY_ID,
};
use fieldvault::config::{Config, MasterKeySource};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The trail is intact (verify), or the report was made over a trail that
/// verified (report), or the search ran.
const EXIT_INTACT: u8 = 0;
/// The trail does not verify: the first broken event is named.
const EXIT_BROKEN: u8 = 1;
/// Nothing was verified: bad arguments, no key, a wrong master key, a file
/// that cannot be read, is empty, is not an audit trail, or is another
/// vault's.
const EXIT_FAILED: u8 = 2;

const VERIFY_HELP: &str = "Exit codes: 0 the trail is intact; 1 it is not: the first broken \
    event is printed with its file, line and why (an event edited, deleted, inserted, \
    reordered or cut short; a file of the trail missing); 2 nothing could be verified: bad \
    arguments, no audit key file beside the trail, a master key that does not unwrap it, a file \
    that cannot be read, an empty file, a file that is not an audit trail, or a trail of another \
    vault.\n\nWith no AUDIT_FILE, the whole trail is verified: the config's audit_log and the \
    rotated files beside it, which must begin with the start of a chain, and must reach the \
    end the server recorded beside them (audit.log.head: whole events cut off the end are named \
    too).";

const SEARCH_HELP: &str = "Needs no key: events are read, not verified (run `fieldvault audit \
    verify` for that); lines that are not events are skipped and counted on stderr. Times are \
    RFC 3339 with a zone (2026-11-27T10:00:00Z) or a date (2026-11-27: midnight UTC); --since \
    is included, --until excluded.\n\nExit codes: 0 the search ran (whether or not an event \
    matched); 2 it could not (bad arguments, a file that cannot be read).";

const REPORT_HELP: &str = "Counts the events of the period: reveals by caller, purpose, field \
    kind and level; tokenized values; refused calls by reason and refused items by code; key \
    operations; the busiest callers; grants (who requested and approved each, its state \
    changes, the values revealed under it, the reveals naming it that were refused); and \
    whether the whole trail verified. --since is included, \
    --until excluded (--since 2026-11-01 --until 2026-12-01 is November).\n\nExit codes: 0 the \
    report is printed and the trail verified; 1 the report is printed and says where the \
    trail does not verify; 2 no report (bad arguments, no audit key, a file that cannot be \
    read, is not an audit trail, or is another vault's).";

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Check the hash chain of the audit trail: exit 0 only when every
    /// event is intact and in order.
    #[command(after_help = VERIFY_HELP)]
    Verify(VerifyArgs),
    /// Print the events that match every filter given, one a line.
    #[command(after_help = SEARCH_HELP)]
    Search(SearchArgs),
    /// The compliance report over a period: who saw what, why, what was
    /// refused, key operations, grants and their use, and whether the
    /// trail verified.
    #[command(after_help = REPORT_HELP)]
    Report(ReportArgs),
}

/// Where the trail and its key are.
#[derive(Args)]
pub(crate) struct Source {
    /// The server's config file: its audit_log names the trail, its
    /// master_key (file or environment variable) unwraps the audit key.
    #[arg(long, value_name = "FILE", conflicts_with = "data_dir")]
    config: Option<PathBuf>,
    /// The data directory of a `serve --dev` setup (default
    /// ./fieldvault-data, or FIELDVAULT_DATA_DIR): the trail is
    /// DATA_DIR/audit.log, the master key DATA_DIR/dev/master.key.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Audit files to read instead of the whole trail, in any order (they
    /// are put in chain order). verify and report still take the audit key
    /// from beside the config's audit_log.
    #[arg(value_name = "AUDIT_FILE")]
    files: Vec<PathBuf>,
}

#[derive(Args)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    source: Source,
}

#[derive(Args)]
pub(crate) struct SearchArgs {
    /// Events of this caller identity (exactly as in the trail, e.g.
    /// spiffe://fieldvault.dev/support).
    #[arg(long, value_name = "ID")]
    caller: Option<String>,
    /// Events naming this token among their items.
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Events of this action (tokenize, detokenize, keys.rotate_data_key,
    /// audit.chain_start, …), or of every action with a prefix ending in
    /// `.` or `*` (keys.*).
    #[arg(long, value_name = "ACTION")]
    action: Option<String>,
    /// Events with this decision.
    #[arg(long, value_name = "DECISION", value_parser = decision)]
    decision: Option<Decision>,
    /// Events with this declared purpose.
    #[arg(long, value_name = "PURPOSE")]
    purpose: Option<String>,
    /// The event of the call whose answer carried this x-request-id.
    #[arg(long, value_name = "ID")]
    request_id: Option<String>,
    /// Events at or after this time: RFC 3339 with a zone
    /// (2026-11-27T10:00:00Z) or a date (2026-11-27: midnight UTC).
    #[arg(long, value_name = "TIME", value_parser = time)]
    since: Option<u64>,
    /// Events before this time, written as --since is.
    #[arg(long, value_name = "TIME", value_parser = time)]
    until: Option<u64>,
    /// One JSON object a line: {"seq":N,"file":…,"line":N,"event":{…}}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    source: Source,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    Md,
    Csv,
    Json,
}

#[derive(Args)]
pub(crate) struct ReportArgs {
    /// The start of the period (included): RFC 3339 with a zone
    /// (2026-11-27T10:00:00Z) or a date (2026-11-27: midnight UTC).
    #[arg(long, value_name = "TIME", value_parser = time)]
    since: u64,
    /// The end of the period (excluded), written as --since is.
    #[arg(long, value_name = "TIME", value_parser = time)]
    until: u64,
    /// md: Markdown, to read or hand over as is; csv: one row shape
    /// (section,time,caller,purpose,action,kind,outcome,code,reason,count);
    /// json: one object.
    #[arg(long, value_enum, default_value = "md")]
    format: Format,
    #[command(flatten)]
    source: Source,
}

fn time(text: &str) -> Result<u64, String> {
    search::parse_time(text)
}

fn decision(text: &str) -> Result<Decision, String> {
    Decision::parse(text)
        .ok_or_else(|| "expected one of: allowed, denied, rejected, failed".to_owned())
}

pub(crate) fn audit(command: AuditCommand) -> ExitCode {
    match command {
        AuditCommand::Verify(args) => verify(args),
        AuditCommand::Search(args) => search_command(args),
        AuditCommand::Report(args) => report_command(args),
    }
}

fn failed(what: &str, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("fieldvault: audit {what}: {message}");
    ExitCode::from(EXIT_FAILED)
}

/// The trail the source names: its active file (`audit_log`) and where
/// its master key comes from.
struct Trail {
    audit_log: PathBuf,
    master_key: MasterKeySource,
    /// What `--data-dir` resolved to, for messages.
    dev_data_dir: Option<PathBuf>,
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

fn trail_of(source: &Source) -> Result<Trail, String> {
    if let Some(path) = &source.config {
        let config = Config::load(path, &env).map_err(|e| e.to_string())?;
        return Ok(Trail {
            audit_log: config.audit_log,
            master_key: config.master_key,
            dev_data_dir: None,
        });
    }
    let data_dir = source
        .data_dir
        .clone()
        .or_else(|| {
            std::env::var_os("FIELDVAULT_DATA_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(super::DEFAULT_DATA_DIR));
    Ok(Trail {
        audit_log: data_dir.join("audit.log"),
        master_key: MasterKeySource::File(fieldvault::dev::dev_dir(&data_dir).join("master.key")),
        dev_data_dir: Some(data_dir),
    })
}

impl Trail {
    /// The audit key, unwrapped with the master key.
    fn key(&self) -> Result<AuditKey, String> {
        if let (Some(data_dir), MasterKeySource::File(path)) =
            (&self.dev_data_dir, &self.master_key)
        {
            if !path.exists() {
                return Err(format!(
                    "{}: no dev master key there: {} is not the data directory of a \
                     `fieldvault serve --dev` setup (give --data-dir DIR, or --config FILE for a \
                     server run with a config)",
                    path.display(),
                    data_dir.display()
                ));
            }
        }
        let master =
            fieldvault::app::load_master_key(&self.master_key, &env).map_err(|e| e.to_string())?;
        fieldvault::audit::keyfile::load(&self.audit_log, &master).map_err(|e| e.0)
    }

    /// The files to read: those given, or the whole trail (and whether it
    /// is the whole trail).
    fn files(&self, given: &[PathBuf]) -> Result<(Vec<PathBuf>, bool), String> {
        if !given.is_empty() {
            return Ok((given.to_vec(), false));
        }
        let files = fieldvault::audit::trail::readable_files_of(&self.audit_log).map_err(|e| {
            format!(
                "{}: cannot list the trail's files: {e}",
                self.audit_log.display()
            )
        })?;
        if files.is_empty() {
            return Err(format!(
                "{}: no audit trail there (no such file, and no rotated file beside it)",
                self.audit_log.display()
            ));
        }
        Ok((files, true))
    }
}

/// What a file is, before its chain is checked: `Err` when it is no trail
/// of this vault at all (exit 2), a break when its damage shows before the
/// chain is checked.
fn precheck(key: &AuditKey, path: &Path) -> Result<Option<TrailBreak>, String> {
    let bytes = fieldvault::audit::trail::read(path)
        .map_err(|e| format!("{}: cannot read it: {e}", path.display()))?;
    if bytes.is_empty() {
        return Err(format!(
            "{}: the file is empty: it holds no audit event (not a trail file, or one cut to \
             nothing)",
            path.display()
        ));
    }
    let line_of = |b: &[u8]| {
        std::str::from_utf8(b)
            .ok()
            .and_then(|l| parse_line(l.trim_end_matches('\n')))
    };
    let mut lines = bytes.split(|b| *b == b'\n');
    let first = lines.next().and_then(line_of);
    let Some((_, _, event)) = first else {
        if lines.any(|l| line_of(l).is_some()) {
            return Ok(Some(TrailBreak {
                path: path.to_path_buf(),
                line: Some(1),
                reason: "is not a chained audit event while the lines after it are: the file's \
                         first event was edited, damaged or cut short"
                    .into(),
            }));
        }
        let first_line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
        let old = serde_json::from_slice::<serde_json::Value>(first_line)
            .ok()
            .is_some_and(|v| v.get("unix_ms").is_some() && v.get("mac").is_none());
        return Err(if old {
            format!(
                "{}: an unchained audit log, written by fieldvault before the hash-chained \
                 trail: it has no chain to verify",
                path.display()
            )
        } else {
            format!(
                "{}: not a fieldvault audit trail: none of its lines is a chained audit event",
                path.display()
            )
        });
    };
    if [CHAIN_START, FILE_START].contains(&event.action.as_str()) {
        let ours = key.id();
        if let Some(id) = event.details.get(KEY_ID).and_then(|v| v.as_str()) {
            if id != ours {
                return Err(format!(
                    "{}: a trail of another vault: written under audit key {}, and this \
                     vault's audit key is {ours} (give the --config or --data-dir of the vault \
                     that wrote it)",
                    path.display(),
                    search::printable(id)
                ));
            }
        }
    }
    if let Err(e) = std::str::from_utf8(&bytes) {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        return Ok(Some(TrailBreak {
            path: path.to_path_buf(),
            line: Some(line),
            reason: "is not UTF-8 text: edited or damaged".into(),
        }));
    }
    Ok(None)
}

/// A trail checked.
struct Checked {
    /// The files, in chain order.
    files: Vec<PathBuf>,
    verification: Verification,
    /// Each file, when the trail verified.
    summaries: Option<Vec<FileSummary>>,
}

/// How long a file whose last line has no newline yet is waited for (a
/// running server may be writing it), in steps of [`UNFINISHED_STEP`].
const UNFINISHED_STEPS: u32 = 20;
const UNFINISHED_STEP: std::time::Duration = std::time::Duration::from_millis(50);

/// Waits (briefly) while `path` ends in a line without its newline: an
/// event being written as the file is read. A file still cut short after
/// that is checked as it is (and named as cut short).
fn wait_for_unfinished_line(path: &Path) {
    use std::io::{Read, Seek, SeekFrom};
    let ends_unfinished = || {
        let mut file =
            fieldvault::audit::trail::open(path, fieldvault::audit::trail::Open::Read).ok()?;
        file.seek(SeekFrom::End(-1)).ok()?;
        let mut last = [0u8; 1];
        file.read_exact(&mut last).ok()?;
        Some(last[0] != b'\n')
    };
    for _ in 0..UNFINISHED_STEPS {
        if ends_unfinished() != Some(true) {
            return;
        }
        std::thread::sleep(UNFINISHED_STEP);
    }
}

/// Checks the trail, or says why nothing could be verified. The whole
/// trail is checked again, once, when a rotation changed its files while
/// they were read.
fn check(source: &Source) -> Result<Checked, String> {
    let trail = trail_of(source)?;
    let key = trail.key()?;
    let (mut files, whole) = trail.files(&source.files)?;
    if !whole {
        return check_files(&key, files, None);
    }
    // A live trail: a rotation between listing the files, reading the
    // record of the end and opening them shows as a file missing or a gap.
    // Listed again and checked again while the listing changes.
    let mut attempts = 0;
    loop {
        attempts += 1;
        // Where the server recorded the trail's end, read before the
        // files are opened (the record follows the trail, so it never runs
        // ahead of what is opened after it).
        let recorded = match fieldvault::audit::head::read(&trail.audit_log, &key) {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(format!(
                "{} is missing: the server writes it beside the trail (where the trail ends); \
                 without it, events cut off the end cannot be told",
                fieldvault::audit::head::path_for(&trail.audit_log).display()
            )),
            Err(e) => Err(format!(
                "the record of where the trail ends is damaged: {e}"
            )),
        };
        let checked = check_files(&key, files.clone(), Some(recorded));
        let intact = matches!(&checked, Ok(c) if c.verification.is_verified());
        if intact || attempts >= 5 {
            return checked;
        }
        match trail.files(&source.files) {
            Ok((now, _)) if now != files => files = now,
            _ => return checked,
        }
    }
}

/// Checks `files`; `recorded`: the whole trail, which must also reach the
/// end the server recorded beside it (or why that record cannot be read).
fn check_files(
    key: &AuditKey,
    files: Vec<PathBuf>,
    recorded: Option<Result<fieldvault::audit::chain::ChainState, String>>,
) -> Result<Checked, String> {
    let whole = recorded.is_some();
    for path in &files {
        wait_for_unfinished_line(path);
    }
    let mut early_break = None;
    for path in &files {
        if let Some(b) = precheck(key, path)? {
            early_break.get_or_insert(b);
        }
    }
    if let Some(b) = early_break {
        let ordered = search::chain_order(&files).map_err(|e| e.to_string())?;
        return Ok(Checked {
            files: ordered,
            verification: Verification::broken(&b),
            summaries: None,
        });
    }
    let result = match &recorded {
        None => verify_files(key, &files),
        Some(Ok(end)) => verify_files_to(key, &files, Some(*end)),
        Some(Err(why)) => verify_files(key, &files).and_then(|summaries| {
            let last = summaries.last().map(|s| s.path.clone()).unwrap_or_default();
            Err(TrailBreak {
                path: last,
                line: None,
                reason: why.clone(),
            })
        }),
    };
    if let Err(b) = &result {
        // The file changed or vanished since it was read above; a trail
        // short of its recorded end is a break (exit 1).
        let about_the_recorded_end = whole && b.reason.contains("record");
        if b.line.is_none() && !about_the_recorded_end {
            return Err(b.to_string());
        }
    }
    let verification = Verification::of(result.clone(), whole);
    match result {
        Ok(summaries) => Ok(Checked {
            files: summaries.iter().map(|s| s.path.clone()).collect(),
            verification,
            summaries: Some(summaries),
        }),
        Err(_) => {
            let ordered = search::chain_order(&files).map_err(|e| e.to_string())?;
            Ok(Checked {
                files: ordered,
                verification,
                summaries: None,
            })
        }
    }
}

/// The event on `line` of `path`, as one line, if it reads.
fn event_at(path: &Path, line: usize) -> Option<String> {
    let text = fieldvault::audit::trail::read(path).ok()?;
    let raw = text.split(|b| *b == b'\n').nth(line.checked_sub(1)?)?;
    let (seq, _, event) = parse_line(std::str::from_utf8(raw).ok()?)?;
    Some(search::one_line(&Found {
        path: path.to_path_buf(),
        line,
        seq,
        event,
    }))
}

fn verify(args: VerifyArgs) -> ExitCode {
    let Checked {
        verification,
        summaries,
        ..
    } = match check(&args.source) {
        Ok(checked) => checked,
        Err(message) => return failed("verify", message),
    };
    match &verification {
        Verification::Broken { file, line, reason } => {
            emit!(
                "BROKEN: {}{}: {}",
                search::printable(file),
                line.map(|l| format!(", line {l}")).unwrap_or_default(),
                search::printable(reason)
            );
            if let Some(at) = line.and_then(|l| event_at(Path::new(file), l)) {
                emit!("  the event there: {at}");
            }
            ExitCode::from(EXIT_BROKEN)
        }
        Verification::Verified {
            files,
            events,
            first_seq,
            last_seq,
            first_time,
            last_time,
            new_chains,
            from_chain_start,
        } => {
            emit!(
                "intact: {files} file{}, {events} events (sequence {first_seq} to {last_seq}), \
                 {} to {}",
                if *files == 1 { "" } else { "s" },
                search::printable(first_time),
                search::printable(last_time)
            );
            for s in summaries.iter().flatten() {
                let mut line = format!(
                    "  {}: events {} to {}, {} to {}",
                    search::printable(&s.path.display().to_string()),
                    s.start.next_seq,
                    s.end.next_seq.saturating_sub(1),
                    search::printable(&s.first_time),
                    search::printable(&s.last_time)
                );
                if let Some(why) = &s.new_chain {
                    line.push_str(", a new chain");
                    if !why.is_empty() {
                        line.push_str(&format!(" ({})", search::printable(why)));
                    }
                }
                emit!("{line}");
            }
            if !from_chain_start {
                emit!("  the events before {first_seq} are in files not given");
            }
            emit!("new chains: {}", new_chains.len());
            ExitCode::from(EXIT_INTACT)
        }
    }
}

fn search_command(args: SearchArgs) -> ExitCode {
    let json = args.json;
    let fail = |code: tonic::Code, message: String| {
        if json {
            call_failed(true, &Failure::new(code, message), 0)
        } else {
            failed("search", message)
        }
    };
    if let (Some(since), Some(until)) = (args.since, args.until) {
        if since >= until {
            return fail(
                tonic::Code::InvalidArgument,
                "--since must be before --until (the period is [since, until))".into(),
            );
        }
    }
    let trail = match trail_of(&args.source) {
        Ok(t) => t,
        Err(m) => return fail(tonic::Code::FailedPrecondition, m),
    };
    let files = match trail
        .files(&args.source.files)
        .and_then(|(f, _)| search::chain_order(&f).map_err(|e| e.to_string()))
    {
        Ok(f) => f,
        Err(m) => return fail(tonic::Code::NotFound, m),
    };
    let filter = Filter {
        caller: args.caller,
        token: args.token,
        action: args.action,
        decision: args.decision,
        purpose: args.purpose,
        since_ms: args.since,
        until_ms: args.until,
        request_id: args.request_id,
    };
    let mut matched = 0u64;
    let stats = search::search(&files, &filter, |found| {
        matched += 1;
        if json {
            #[derive(serde::Serialize)]
            struct Out<'a> {
                seq: u64,
                file: String,
                line: usize,
                event: &'a Event,
            }
            let out = Out {
                seq: found.seq,
                file: found.path.display().to_string(),
                line: found.line,
                event: &found.event,
            };
            emit!("{}", serde_json::to_string(&out).unwrap_or_default());
        } else {
            emit!("{}", search::one_line(&found));
        }
    });
    let stats = match stats {
        Ok(s) => s,
        Err(e) => return fail(tonic::Code::NotFound, e.to_string()),
    };
    if !json {
        eprintln!(
            "fieldvault: {matched} of {} event{} matched, in {} file{}",
            stats.events,
            if stats.events == 1 { "" } else { "s" },
            stats.files,
            if stats.files == 1 { "" } else { "s" }
        );
    }
    if stats.skipped_lines > 0 {
        eprintln!(
            "fieldvault: {} line{} skipped: not audit events (a torn or damaged line; run \
             `fieldvault audit verify`)",
            stats.skipped_lines,
            if stats.skipped_lines == 1 { "" } else { "s" }
        );
    }
    ExitCode::from(EXIT_INTACT)
}

fn report_command(args: ReportArgs) -> ExitCode {
    if args.since >= args.until {
        return failed(
            "report",
            "--since must be before --until (the period is [since, until))",
        );
    }
    let Checked {
        files,
        verification,
        ..
    } = match check(&args.source) {
        Ok(checked) => checked,
        Err(message) => return failed("report", message),
    };
    let verified = verification.is_verified();
    let report = match report::build(&files, args.since, args.until, verification) {
        Ok(r) => r,
        Err(e) => return failed("report", e),
    };
    let text = match args.format {
        Format::Md => report.markdown(),
        Format::Csv => report.csv(),
        Format::Json => report.json(),
    };
    emit!("{}", text.trim_end_matches('\n'));
    ExitCode::from(if verified { EXIT_INTACT } else { EXIT_BROKEN })
}
