//! The command line: `serve`, the client commands and offline store
//! maintenance. Each subcommand lives in its own file.

mod admin;
mod audit;
mod backup;
mod calls;
mod config;
mod conn;
mod dev;
mod grants;
mod health;
mod input;
mod keys;
mod lifecycle;
mod output;
mod parse_error;
mod policy;
mod serve;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

pub(crate) const DEFAULT_DATA_DIR: &str = "./fieldvault-data";
pub(crate) const DEFAULT_ADDR: &str = "127.0.0.1:50051";

#[derive(Parser)]
#[command(
    name = "fieldvault",
    version,
    about = "A gRPC vault for phone numbers, addresses and national IDs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(serve::ServeArgs),
    /// Swap values for tokens.
    Tokenize(calls::TokenizeArgs),
    /// Reveal the values behind tokens (audited).
    Detokenize(calls::DetokenizeArgs),
    /// Delete tokens: their records and index entries, for good (policy
    /// action "delete"; audited).
    Delete(calls::DeleteArgs),
    /// What the vault holds about tokens, never their values: kind,
    /// created, expires, key version, mode (policy action "inspect";
    /// audited).
    Info(calls::InfoArgs),
    /// Erase every token of a value, in every format it was sent in
    /// (policy action "erase"; audited): the right to be forgotten.
    Erase(lifecycle::EraseArgs),
    /// List every token of a value with its metadata, never the value
    /// (policy action "export" with a purpose; audited): subject access.
    Export(lifecycle::ExportArgs),
    /// Key administration on a running server: status, rotate, rewrap,
    /// retire, rotate-index, rotate-master (the caller needs a policy rule
    /// with action "keys").
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Check the server's grpc.health.v1 status over mTLS (an exec probe):
    /// exit 0 when SERVING.
    Health(health::HealthArgs),
    /// Offline store maintenance, with the server stopped.
    #[command(subcommand)]
    Store(serve::StoreCommand),
    /// The audit trail, offline: verify its hash chain, search its events,
    /// report on a period.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Abuse administration on a running server: list callers (frozen,
    /// deny-listed, quota use), freeze and unfreeze them (the caller needs
    /// a policy rule with action "admin").
    #[command(subcommand)]
    Callers(admin::CallersCommand),
    /// Canary tokens on a running server: create them for a kind, list
    /// them (the caller needs a policy rule with action "admin").
    #[command(subcommand)]
    Canary(admin::CanaryCommand),
    /// Approved workflows on a running server: request a grant for a
    /// workflow to reveal N values of some kinds for one purpose until a
    /// deadline, approve, reject, revoke, list and show grants (README,
    /// "Approved workflows").
    #[command(subcommand)]
    Grants(grants::GrantsCommand),
    /// A policy file, offline: check it, or explain which rule decides a
    /// call.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// A config file, offline: `config check FILE`.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// The `serve --dev` setup, offline: `dev revoke NAME` puts a dev
    /// identity's certificate on DATA_DIR/dev/crl.pem.
    #[command(subcommand)]
    Dev(dev::DevCommand),
    /// Back up a running server's whole store to a file (records stay
    /// sealed, keys wrapped; the master key is never in it). The caller
    /// needs a policy rule with action "backup".
    Backup(backup::BackupArgs),
    /// Restore a backup into a data directory that holds no store
    /// (offline).
    Restore(backup::RestoreArgs),
}

/// Installs the server's logger: `settings.format` (text or JSON lines)
/// on stderr, filtered by `RUST_LOG` when it is set, else by
/// `settings.level`.
pub(crate) fn init_logging(settings: &fieldvault::config::LogSettings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::builder().parse(&settings.level))
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(fieldvault::config::DEFAULT_LOG_LEVEL)
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr a file on a full disk)
        // is dropped. Its default reports the failure with `eprintln!`,
        // which panics when stderr cannot be written: every thread that
        // logs (a request, the audit or commit thread) would panic.
        .log_internal_errors(false);
    let installed = match settings.format {
        fieldvault::config::LogFormat::Text => tracing::subscriber::set_global_default(
            builder
                .with_ansi(colour(
                    std::io::IsTerminal::is_terminal(&std::io::stderr()),
                    std::env::var_os("NO_COLOR").as_deref(),
                ))
                .finish(),
        ),
        // One object per line: the event's fields at the top level, the
        // call's span (its request id and RPC) under "span".
        fieldvault::config::LogFormat::Json => tracing::subscriber::set_global_default(
            builder
                .with_ansi(false)
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
        ),
    };
    // Not `try_init`: that installs a plain `log` bridge of its own.
    if installed.is_ok() {
        // `log` records (rustls logs through `log`) go to tracing, through
        // the filter that demotes one harmless warning.
        use tracing_log::AsLog;
        let max = tracing::level_filters::LevelFilter::current().as_log();
        if log::set_boxed_logger(Box::new(DemoteHarmless(tracing_log::LogTracer::new()))).is_ok() {
            log::set_max_level(max);
        }
    }
}

/// Colour codes only for a person at a terminal: never into a file, a pipe
/// or journald, and never when `NO_COLOR` is set to anything but empty
/// (no-color.org).
fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// rustls warns, once per connection, when a client sends an IP address
/// as SNI (Node.js does when it connects to 127.0.0.1). That is expected
/// and harmless (the name is ignored and the certificate still checked),
/// so it is logged at debug level instead.
struct DemoteHarmless(tracing_log::LogTracer);

const SNI_IP_WARNING: &str = "Illegal SNI extension: ignoring IP address";

fn demoted(record: &log::Record<'_>) -> Option<log::Level> {
    let harmless = record.level() == log::Level::Warn
        && record.target().starts_with("rustls")
        && record.args().to_string().starts_with(SNI_IP_WARNING);
    harmless.then_some(log::Level::Debug)
}

impl log::Log for DemoteHarmless {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        match demoted(record) {
            Some(level) => self.0.log(
                &log::Record::builder()
                    .args(*record.args())
                    .level(level)
                    .target(record.target())
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build(),
            ),
            None => self.0.log(record),
        }
    }

    fn flush(&self) {
        self.0.flush()
    }
}

/// The command line parsed. A mistake the parser finds is reported like
/// any other argument mistake (INVALID_ARGUMENT, exit 2; one JSON object on
/// stdout when `--json` is among the arguments) and never quotes the
/// rejected value: a value in the wrong place may be a phone number.
fn parse() -> Result<Cli, ExitCode> {
    use clap::{CommandFactory, FromArgMatches};
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let json = args.iter().skip(1).any(|a| a == "--json");
    let result = unset_empty_env(Cli::command())
        .try_get_matches_from(&args)
        .and_then(|m| Cli::from_arg_matches(&m));
    let e = match result {
        Ok(cli) => return Ok(cli),
        Err(e) => e,
    };
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        _ => {}
    }
    let message = parse_error::message(&e, &args, &|k| std::env::var_os(k));
    if json {
        let failure = output::Failure::new(tonic::Code::InvalidArgument, message);
        return Err(output::call_failed(true, &failure, 0));
    }
    if parse_error::clap_words_are_safe(e.kind()) {
        // Clap's own words quote no value for these: kept, with its usage.
        let _ = e.print();
    } else {
        eprintln!("fieldvault: INVALID_ARGUMENT: {message}");
    }
    Err(ExitCode::from(output::EXIT_CALL_FAILED))
}

/// An environment variable set to the empty string is treated as unset,
/// as `serve` does (a flag's default then applies).
fn unset_empty_env(mut cmd: clap::Command) -> clap::Command {
    let empty: Vec<clap::Id> = cmd
        .get_arguments()
        .filter(|a| {
            a.get_env()
                .and_then(std::env::var_os)
                .is_some_and(|v| v.is_empty())
        })
        .map(|a| a.get_id().clone())
        .collect();
    for id in empty {
        cmd = cmd.mut_arg(id, |a| a.env(None::<&str>));
    }
    let subcommands: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    for name in subcommands {
        cmd = cmd.mut_subcommand(name, unset_empty_env);
    }
    cmd
}

pub(crate) async fn run() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let result = match cli.command {
        Command::Serve(args) => serve::serve(args).await,
        Command::Tokenize(args) => Ok(calls::tokenize(args).await),
        Command::Detokenize(args) => Ok(calls::detokenize(args).await),
        Command::Delete(args) => Ok(calls::delete(args).await),
        Command::Info(args) => Ok(calls::info(args).await),
        Command::Erase(args) => Ok(lifecycle::erase(args).await),
        Command::Export(args) => Ok(lifecycle::export(args).await),
        Command::Health(args) => Ok(health::health(args).await),
        Command::Keys(command) => Ok(keys::keys(command).await),
        Command::Store(command) => serve::store_command(command),
        Command::Audit(command) => Ok(audit::audit(command)),
        Command::Callers(command) => Ok(admin::callers(command).await),
        Command::Canary(command) => Ok(admin::canary(command).await),
        Command::Grants(command) => Ok(grants::grants(command).await),
        Command::Policy(command) => Ok(policy::policy(command)),
        Command::Config(command) => Ok(config::config(command)),
        Command::Dev(command) => Ok(dev::dev(command)),
        Command::Backup(args) => Ok(backup::backup(args).await),
        Command::Restore(args) => Ok(backup::restore(args).await),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("fieldvault: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
    }

    #[test]
    fn the_sni_ip_address_warning_is_demoted_to_debug_and_others_are_not() {
        let sni = format_args!(
            "Illegal SNI extension: ignoring IP address presented as hostname (3132372e302e302e31)"
        );
        let record = log::Record::builder()
            .args(sni)
            .level(log::Level::Warn)
            .target("rustls::msgs::handshake")
            .build();
        assert_eq!(demoted(&record), Some(log::Level::Debug));
        let other = format_args!("Illegal SNI extension: duplicate host_name received");
        let record = log::Record::builder()
            .args(other)
            .level(log::Level::Warn)
            .target("rustls::msgs::handshake")
            .build();
        assert_eq!(demoted(&record), None);
    }
}
