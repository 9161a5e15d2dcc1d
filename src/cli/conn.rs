//! How the client commands reach the server: address, certificates,
//! deadlines.

use super::DEFAULT_ADDR;
use super::DEFAULT_DATA_DIR;
use clap::Args;
use fieldvault::client::{ClientError, ClientTls};
use fieldvault::grpc::pb::vault_client::VaultClient;
use std::path::PathBuf;
use tonic::transport::Channel;

#[derive(Args)]
pub(crate) struct Conn {
    /// Server address, host:port.
    #[arg(long, default_value = DEFAULT_ADDR, env = "FIELDVAULT_ADDR")]
    addr: String,
    /// CA certificate that signed the server certificate (PEM).
    #[arg(long, requires_all = ["cert", "key"], conflicts_with = "dev_identity")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long, requires_all = ["ca", "key"])]
    cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, requires_all = ["ca", "cert"])]
    key: Option<PathBuf>,
    /// Use the dev identity NAME (orders, support, rotator, intruder) from
    /// DATA_DIR/dev/ made by `serve --dev`.
    #[arg(long, value_name = "NAME")]
    dev_identity: Option<String>,
    /// Data directory holding dev/ for --dev-identity.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Print one JSON object per item instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

impl Conn {
    /// An mTLS client of the Vault service at `--addr`.
    pub(crate) async fn connect(&self) -> Result<VaultClient<Channel>, ClientError> {
        let tls = self.tls().map_err(ClientError::Usage)?;
        fieldvault::client::connect(&self.addr, &tls).await
    }

    /// An mTLS channel to `--addr`, for the other services (health).
    pub(crate) async fn channel(&self) -> Result<Channel, ClientError> {
        let tls = self.tls().map_err(ClientError::Usage)?;
        fieldvault::client::channel(&self.addr, &tls).await
    }

    fn tls(&self) -> Result<ClientTls, String> {
        match (&self.dev_identity, &self.ca, &self.cert, &self.key) {
            (Some(name), None, None, None) => {
                ClientTls::dev(&self.data_dir, name).map_err(|e| e.to_string())
            }
            (None, Some(ca), Some(cert), Some(key)) => {
                ClientTls::from_files(ca, cert, key).map_err(|e| e.to_string())
            }
            _ => Err("give either --dev-identity NAME or all of --ca, --cert and --key".into()),
        }
    }
}
