//! `fieldvault config check FILE`: a config file read as the server reads
//! it (environment overrides included), then every file it names opened as
//! the server opens it: the TLS files, the policy (parsed too) and the
//! master key (read too; never printed). Offline: no server is asked.

use super::output::emit;
use clap::{Args, Subcommand};
use fieldvault::config::{Config, MasterKeySource};
use fieldvault::fsperm::{open_checked, read_checked, Access};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

/// The file is a config the server would start with.
const EXIT_OK: u8 = 0;
/// It is not: the problems are printed, each naming its setting.
const EXIT_NO: u8 = 1;

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Check a config file offline, as `serve --config FILE` would read
    /// it: every setting (a bad one is named by its path, such as
    /// retention.sweep_batch), and every file it names (exists, is a regular
    /// file, has safe permissions; the policy parses; the master key
    /// reads). Exit 0: it would start; 1: it would not (each problem on a
    /// line).
    Check(CheckArgs),
}

#[derive(Args)]
pub struct CheckArgs {
    /// The config file.
    file: PathBuf,
    /// One JSON object: {"file", "valid", "problems": [...]}.
    #[arg(long)]
    json: bool,
}

pub fn config(command: ConfigCommand) -> ExitCode {
    match command {
        ConfigCommand::Check(args) => check(args),
    }
}

/// What would stop a server started with this config, each naming the
/// setting (never a secret's value).
fn problems_of(config: &Config, env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    let mut problems = Vec::new();
    let tls = &config.tls;
    for (setting, path, access) in [
        ("tls.cert", &tls.cert, Access::NoOtherWrites),
        ("tls.key", &tls.key, Access::OwnerOnly),
        ("tls.client_ca", &tls.client_ca, Access::NoOtherWrites),
    ] {
        if let Err(e) = open_checked(setting, path, access) {
            problems.push(e.to_string());
        }
    }
    for path in &config.tls_options.crls {
        if let Err(e) = open_checked("tls.crls", path, Access::NoOtherWrites) {
            problems.push(e.to_string());
        }
    }
    // Every TLS file readable: parsed as the server does (the key matches
    // the certificate, each CRL parses and a CA in tls.client_ca signed it).
    if problems.is_empty() {
        let sources = fieldvault::tls_reload::TlsSources::of(config);
        if let Err(e) = fieldvault::tls_reload::load(&sources) {
            problems.push(e.to_string());
        }
    }
    match read_checked("policy_file", &config.policy_file, Access::NoOtherWrites) {
        Err(e) => problems.push(e.to_string()),
        Ok(text) => {
            if let Err(e) = fieldvault::domain::policy::Policy::from_toml(&text) {
                problems.push(format!("policy_file {}: {e}", config.policy_file.display()));
            }
        }
    }
    match &config.master_key {
        MasterKeySource::File(path) => {
            use fieldvault::crypto::MasterKeyError;
            match fieldvault::crypto::MasterKey::from_file(path) {
                Ok(_) => {}
                // "master_key.file PATH: mode 0644 is readable by …".
                Err(MasterKeyError::File(e)) => problems.push(e.to_string()),
                Err(e) => problems.push(format!("master_key.file: {e}")),
            }
        }
        MasterKeySource::Env(var) => match env(var) {
            None => problems.push(format!(
                "master_key.env: the environment variable {var} is not set here"
            )),
            Some(hex) => {
                let origin = format!("from ${var}");
                if let Err(e) = fieldvault::crypto::MasterKey::from_hex(&hex, &origin) {
                    problems.push(format!("master_key.env: {var}: {e}"));
                }
            }
        },
    }
    // The same port on the same address, or on any address when either
    // listens on all of them (0.0.0.0, ::): the second bind would fail.
    let overlaps = |m: std::net::SocketAddr, g: std::net::SocketAddr| {
        m.port() == g.port()
            && m.port() != 0
            && (m.ip() == g.ip() || m.ip().is_unspecified() || g.ip().is_unspecified())
    };
    if let Some(m) = config
        .metrics
        .listen
        .filter(|m| overlaps(*m, config.listen))
    {
        problems.push(format!(
            "metrics.listen: {m} takes the port of the gRPC listen address {}; give the metrics listener a port of its own",
            config.listen
        ));
    }
    problems
}

/// What is allowed but worth saying: a metrics listener off loopback
/// serves plain HTTP to anyone who can reach it.
fn notes_of(config: &Config) -> Vec<String> {
    match config.metrics.listen {
        Some(addr) if !addr.ip().is_loopback() => vec![format!(
            "metrics.listen: {addr} is not a loopback address; the metrics endpoint is plain HTTP \
             without authentication (it shows callers, RPCs and key versions, never values): \
             let only the scraper reach it (a firewall, a NetworkPolicy)"
        )],
        _ => Vec::new(),
    }
}

fn check(args: CheckArgs) -> ExitCode {
    let file = args.file.display().to_string();
    let env = |k: &str| std::env::var(k).ok();
    let (problems, notes) = match Config::load(&args.file, &env) {
        Err(e) => (vec![e.to_string()], Vec::new()),
        Ok(config) => (problems_of(&config, &env), notes_of(&config)),
    };
    let valid = problems.is_empty();
    if args.json {
        emit!(
            "{}",
            json!({
                "file": file,
                "valid": valid,
                "problems": problems,
                "notes": notes,
                "overridden_by_environment": fieldvault::config::ENV_OVERRIDES
                    .iter()
                    .filter(|(var, _)| env(var).is_some())
                    .map(|(var, setting)| json!({ "setting": setting, "variable": var }))
                    .collect::<Vec<_>>(),
            })
        );
    } else if valid {
        emit!("{file}: a valid config; every file it names is readable and safe");
        for note in &notes {
            emit!("  note: {note}");
        }
        for (var, setting) in fieldvault::config::ENV_OVERRIDES {
            if env(var).is_some() {
                emit!("  {setting}: overridden by the environment ({var})");
            }
        }
    } else {
        for p in &problems {
            eprintln!("fieldvault: {file}: {p}");
        }
    }
    ExitCode::from(if valid { EXIT_OK } else { EXIT_NO })
}
