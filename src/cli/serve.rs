//! `fieldvault serve` and `fieldvault store`: the server and offline store
//! maintenance.

use super::{DEFAULT_ADDR, DEFAULT_DATA_DIR};
use clap::{Args, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Development mode: create (or reuse) a dev CA, certificates for the
    /// sample callers, a master key and a sample policy under DATA_DIR/dev/.
    #[arg(long)]
    dev: bool,
    /// Config file (required without --dev). See deploy/fieldvault.toml.
    #[arg(long, conflicts_with = "dev")]
    config: Option<PathBuf>,
    /// Data directory for --dev (default ./fieldvault-data, or
    /// FIELDVAULT_DATA_DIR). With --config, data_dir is set in the file.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address to listen on in --dev mode (default 127.0.0.1:50051). With
    /// --config, listen is set in the file.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// With --dev: serve Prometheus metrics at http://ADDR/metrics (plain
    /// HTTP, no authentication: keep it on loopback, e.g. 127.0.0.1:9464).
    /// With --config, set `listen` under [metrics] in the file.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// With --dev: delete the dev setup (DATA_DIR/dev), the store and the
    /// audit log first, and start over with new certificates and a new
    /// master key. Every token made before becomes unreadable.
    #[arg(long, requires = "dev")]
    reset: bool,
    /// For this start only: if the audit trail does not verify (or is
    /// missing), move it aside and begin a new chain, recording that as the
    /// new chain's first event, instead of refusing to start. Like
    /// `start_new_chain = true` under [audit] in the config.
    #[arg(long)]
    audit_new_chain: bool,
    /// Log format in --dev mode: `text` (the default) or `json` (one object
    /// per line). With --config, set `format` under [log] in the file.
    #[arg(long, value_parser = parse_log_format)]
    log_format: Option<fieldvault::config::LogFormat>,
}

fn parse_log_format(text: &str) -> Result<fieldvault::config::LogFormat, String> {
    fieldvault::config::LogFormat::parse(text)
        .ok_or_else(|| format!("'{text}' is not a log format: use text or json"))
}

/// `--data-dir`, else `FIELDVAULT_DATA_DIR`, else `./fieldvault-data`.
fn dev_data_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| {
        std::env::var_os("FIELDVAULT_DATA_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
    .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}

/// `--listen` and `--data-dir` configure --dev only: with --config the
/// file is the one place these are set, so a flag that would be ignored
/// is refused instead.
fn refuse_dev_flags_with_config(
    config: &std::path::Path,
    flags: &[(&str, bool)],
) -> Result<(), String> {
    let given: Vec<&str> = flags
        .iter()
        .filter(|(_, given)| *given)
        .map(|(name, _)| *name)
        .collect();
    if given.is_empty() {
        return Ok(());
    }
    let settings: Vec<String> = given
        .iter()
        .map(|f| match *f {
            "--log-format" => "`format` under [log]".to_owned(),
            f => format!("`{}`", f.trim_start_matches("--").replace('-', "_")),
        })
        .collect();
    Err(format!(
        "{} appl{} to --dev only; with --config, set {} in {}",
        given.join(" and "),
        if given.len() == 1 { "ies" } else { "y" },
        settings.join(" and "),
        config.display()
    ))
}

/// SIGXFSZ, from the platform's own headers (through rustix).
const SIGXFSZ: i32 = rustix::process::Signal::XFSZ.as_raw();

pub(crate) async fn serve(args: ServeArgs) -> Result<ExitCode, String> {
    // A file-size limit (RLIMIT_FSIZE) sends SIGXFSZ to a process whose
    // write would cross it, and the default action kills the process.
    // With a handler installed the write fails with EFBIG instead, which
    // the store reports as a storage failure ("file size limit reached"):
    // writes stop, health reports NOT_SERVING, reads go on. Installed
    // before the store opens; the stream is kept (and drained) for the
    // life of the server.
    let mut xfsz = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(SIGXFSZ))
        .map_err(|e| format!("installing a SIGXFSZ handler: {e}"))?;
    tokio::spawn(async move {
        while xfsz.recv().await.is_some() {
            tracing::debug!("SIGXFSZ: a write crossed the file-size limit and fails with EFBIG");
        }
    });
    // Handlers first, before anything slow (verifying the audit trail,
    // replaying the write-ahead log): a SIGHUP (`systemctl reload`, a
    // certificate renewal hook) during startup must not kill the process
    // with its default action, and a SIGTERM or SIGINT then is kept and
    // drains the server as soon as it serves. Once a handler is installed
    // for a signal, its default action is gone for the life of the
    // process; the policy and TLS watchers listen for SIGHUP themselves.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    drop(tokio::signal::unix::signal(
        tokio::signal::unix::SignalKind::hangup(),
    ));
    let env = |k: &str| std::env::var(k).ok();
    let config = if args.dev {
        // Logging first: preparing the dev setup logs what it created.
        let log = fieldvault::config::LogSettings {
            format: args.log_format.unwrap_or_default(),
            ..Default::default()
        };
        super::init_logging(&log);
        let data_dir = dev_data_dir(args.data_dir);
        let listen = match args.listen {
            Some(addr) => addr,
            None => DEFAULT_ADDR
                .parse()
                .map_err(|e| format!("default listen address {DEFAULT_ADDR}: {e}"))?,
        };
        if args.reset {
            let removed = fieldvault::dev::reset(&data_dir).map_err(|e| e.to_string())?;
            if removed.is_empty() {
                println!("reset: nothing to delete in {}", data_dir.display());
            }
            for what in removed {
                println!("reset: deleted {what}");
            }
        }
        let (mut config, created) =
            fieldvault::dev::prepare(&data_dir, listen).map_err(|e| e.to_string())?;
        config.log = log;
        config.metrics.listen = args.metrics_listen;
        let dir = fieldvault::dev::dev_dir(&data_dir);
        println!(
            "fieldvault dev mode ({} {})",
            if created { "created" } else { "reusing" },
            dir.display()
        );
        println!("  CA certificate : {}", dir.join("ca.pem").display());
        println!(
            "  server         : {} (localhost, 127.0.0.1, ::1)",
            dir.join("server.pem").display()
        );
        for name in fieldvault::dev::DEV_CALLERS {
            println!(
                "  caller {name:<8}: {0}.pem / {0}.key  ({1})",
                dir.join(name).display(),
                fieldvault::dev::spiffe_id(name)
            );
        }
        println!("  master key     : {}", dir.join("master.key").display());
        println!("  policy         : {}", config.policy_file.display());
        println!("  store          : {}", config.store_dir().display());
        println!(
            "  audit trail    : {}  (check it: fieldvault audit verify --data-dir {})",
            config.audit_log.display(),
            config.data_dir.display()
        );
        config
    } else {
        let path = args
            .config
            .ok_or("serve needs --config FILE (or --dev for a development setup)")?;
        if args.reset {
            return Err(format!(
                "--reset applies to --dev only: a store served with --config is never deleted \
                 by fieldvault (its data_dir is set in {})",
                path.display()
            ));
        }
        refuse_dev_flags_with_config(
            &path,
            &[
                ("--listen", args.listen.is_some()),
                ("--data-dir", args.data_dir.is_some()),
                ("--log-format", args.log_format.is_some()),
            ],
        )?;
        if args.metrics_listen.is_some() {
            return Err(format!(
                "--metrics-listen applies to --dev only; with --config, set `listen` under \
                 [metrics] in {}",
                path.display()
            ));
        }
        let config = fieldvault::config::Config::load(&path, &env).map_err(|e| e.to_string())?;
        super::init_logging(&config.log);
        config
    };
    let mut config = config;
    if args.audit_new_chain {
        config.audit.start_new_chain = true;
    }
    let mut server = fieldvault::app::start(&config, &env)
        .await
        .map_err(|e| match e {
            // A master key a rotation replaced: in dev mode, the way out is
            // the new key in dev/master.key.
            fieldvault::app::StartError::Keyring(ref k)
                if args.dev && k.replaced_by().is_some() =>
            {
                format!(
                    "{e}; in dev mode: mv {} {}",
                    k.replaced_by().unwrap_or_default(),
                    fieldvault::dev::dev_dir(&config.data_dir)
                        .join("master.key")
                        .display()
                )
            }
            // A dev store under another master key, or one that lost its
            // keys: the other way out is a reset. (An old-format store's
            // message says so itself.)
            fieldvault::app::StartError::Keyring(ref k) if args.dev && !k.is_old_format() => {
                format!(
                    "{e}; or start the dev setup over with `fieldvault serve --dev --reset` \
                     (deletes the store: tokens made so far become unreadable)"
                )
            }
            fieldvault::app::StartError::Bind { addr, reason }
                if reason.starts_with("Address already in use") =>
            {
                format!(
                    "listen {addr}: the address is in use (another fieldvault server, or another \
                     program, listens there?); choose another with {}",
                    if args.dev {
                        "--listen ADDR"
                    } else {
                        "`listen` in the config file"
                    }
                )
            }
            // The message says the store is in use: sled's errno adds nothing.
            fieldvault::app::StartError::Store(fieldvault::store::StoreError::Backend(f))
                if matches!(
                    f.cause,
                    fieldvault::store::FailureCause::Io {
                        kind: std::io::ErrorKind::WouldBlock,
                        ..
                    }
                ) =>
            {
                format!("storage: {}", f.detail)
            }
            e => e.to_string(),
        })?;
    if let Some(addr) = server.metrics_addr() {
        println!("metrics on http://{addr}/metrics (plain HTTP, no authentication)");
    }
    println!("listening on {}", server.local_addr());
    let shutdown = async {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            match s.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = recv(&mut int) => {}
            _ = recv(&mut term) => {}
        }
    };
    // Either way, `shutdown` waits for every task holding the store, so it
    // is closed and checkpointed before the process exits; a server task
    // that failed or panicked makes the exit code non-zero.
    let ended_on_its_own = tokio::select! {
        result = server.wait_ref() => Some(result),
        _ = shutdown => None,
    };
    match ended_on_its_own {
        None => {
            tracing::info!("shutting down: finishing in-flight calls");
            let drained = server
                .drain(Some(config.shutdown.drain_timeout))
                .await
                .map_err(|e| format!("server failed: {e}"))?;
            // Every call answered before this line was durable before it
            // was answered; a call cut off was never answered.
            tracing::info!(
                took_ms = drained.took.as_millis() as u64,
                cut_off = drained.cut_off,
                "shut down: the store is closed and checkpointed"
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(result) => {
            let closed = server.shutdown().await;
            let failure = match result {
                Err(e) => e,
                Ok(()) => match closed {
                    Err(e) => e,
                    Ok(()) => return Err("server stopped on its own".into()),
                },
            };
            Err(format!("server failed: {failure}"))
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum StoreCommand {
    /// Rescue a damaged write-ahead log (the server refused to start
    /// naming it): keep every frame that verifies, report what is dropped,
    /// keep the original beside it. Restoring a backup is the alternative;
    /// see README, Durability.
    Salvage(StoreArgs),
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("setup").required(true).args(["config", "dev"])))]
pub(crate) struct StoreArgs {
    /// The server's config file (its data_dir holds the store).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The store of a `serve --dev` setup.
    #[arg(long)]
    dev: bool,
    /// Data directory for --dev (default ./fieldvault-data, or
    /// FIELDVAULT_DATA_DIR).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

pub(crate) fn store_command(command: StoreCommand) -> Result<ExitCode, String> {
    let StoreCommand::Salvage(args) = command;
    // The salvaged log and the copy of the original hold ciphertext and
    // wrapped keys: owner-only, like every file the server creates.
    fieldvault::fsperm::restrict_umask();
    let store_dir = match args.config {
        Some(path) => {
            refuse_dev_flags_with_config(&path, &[("--data-dir", args.data_dir.is_some())])?;
            fieldvault::config::Config::load(&path, &|k| std::env::var(k).ok())
                .map_err(|e| e.to_string())?
                .store_dir()
        }
        None => fieldvault::config::Config::store_dir_in(&dev_data_dir(args.data_dir)),
    };
    let report = fieldvault::store::salvage(&store_dir).map_err(|e| e.to_string())?;
    print!("{report}");
    Ok(ExitCode::SUCCESS)
}
