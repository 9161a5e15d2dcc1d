//! The command line: `serve`, the client commands and offline store
//! maintenance. Each subcommand lives in its own file.

mod calls;
mod conn;
mod health;
mod input;
mod output;
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
    /// Check the server's grpc.health.v1 status over mTLS (an exec probe):
    /// exit 0 when SERVING.
    Health(health::HealthArgs),
    /// Offline store maintenance, with the server stopped.
    #[command(subcommand)]
    Store(serve::StoreCommand),
}

/// The log filter when `RUST_LOG` is unset. The HTTP/2 and TLS libraries
/// log a WARN line per misbehaving peer (a rapid-reset client made `h2`
/// write 200 lines in 15 s), which the server's own rate-limited refusal
/// lines already cover: only their errors are shown.
const DEFAULT_LOG_FILTER: &str = "info,h2=error,hyper=error,rustls=error,tower=error";

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

pub(crate) async fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => {
            init_logging();
            serve::serve(args).await
        }
        Command::Tokenize(args) => Ok(calls::tokenize(args).await),
        Command::Detokenize(args) => Ok(calls::detokenize(args).await),
        Command::Health(args) => Ok(health::health(args).await),
        Command::Store(command) => serve::store_command(command),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("fieldvault: {message}");
            ExitCode::FAILURE
        }
    }
}
