//! `fieldvault dev revoke NAME`: revocation in a minute with the dev
//! setup of `serve --dev`, no openssl needed.

use super::output::emit;
use super::DEFAULT_DATA_DIR;
use clap::{Args, Subcommand};
use fieldvault::dev::Revoked;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum DevCommand {
    /// Revoke a dev identity's certificate: puts it on DATA_DIR/dev/crl.pem
    /// (signed by the dev CA). A running `serve --dev` applies the CRL
    /// within two seconds: that identity's new connections fail the TLS
    /// handshake (logged with reason "revoked") and the connections it
    /// already has are closed. Delete crl.pem to revoke nothing again. Exit 0:
    /// revoked (now or before); 2: not done (the error says why).
    Revoke(RevokeArgs),
}

#[derive(Args)]
pub struct RevokeArgs {
    /// The dev identity (orders, support, …: a NAME.pem in DATA_DIR/dev/).
    name: String,
    /// The dev server's data directory.
    #[arg(long, default_value = DEFAULT_DATA_DIR, env = "FIELDVAULT_DATA_DIR")]
    data_dir: PathBuf,
}

pub fn dev(command: DevCommand) -> ExitCode {
    match command {
        DevCommand::Revoke(args) => match fieldvault::dev::revoke(&args.data_dir, &args.name) {
            Ok(Revoked::Added { total, crl }) => {
                emit!(
                    "revoked {}: {} now revokes {total} certificate(s); a running dev server applies it within two seconds",
                    args.name,
                    crl.display()
                );
                ExitCode::SUCCESS
            }
            Ok(Revoked::Already { crl }) => {
                emit!("{} is already revoked by {}", args.name, crl.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fieldvault: dev revoke: {e}");
                ExitCode::from(2)
            }
        },
    }
}
