//! A thin mTLS client for the CLI, tests and the benchmark.

use crate::grpc::pb::vault_client::VaultClient;
use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The PEM material a client presents and trusts.
#[derive(Clone)]
pub struct ClientTls {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: zeroize::Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls { .. }")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
    #[error("connecting to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The command line does not say how to connect.
    #[error("{0}")]
    Usage(String),
}

impl ClientError {
    /// The gRPC status code that best names this failure, so that a
    /// whole-call failure reads the same as a server-side one (`--json`).
    pub fn code(&self) -> tonic::Code {
        match self {
            Self::Read { .. } | Self::Usage(_) => tonic::Code::InvalidArgument,
            Self::Connect { .. } => tonic::Code::Unavailable,
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| ClientError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

impl ClientTls {
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self, ClientError> {
        Ok(Self {
            ca_pem: read(ca)?,
            cert_pem: read(cert)?,
            key_pem: zeroize::Zeroizing::new(read(key)?),
        })
    }

    /// The dev identity `name` from `DATA_DIR/dev/` (see `serve --dev`).
    pub fn dev(data_dir: &Path, name: &str) -> Result<Self, ClientError> {
        let dir: PathBuf = crate::dev::dev_dir(data_dir);
        Self::from_files(
            &dir.join("ca.pem"),
            &dir.join(format!("{name}.pem")),
            &dir.join(format!("{name}.key")),
        )
    }
}

/// Connects to `addr` (`host:port`, or a full `https://` URI) over mTLS.
pub async fn connect(addr: &str, tls: &ClientTls) -> Result<VaultClient<Channel>, ClientError> {
    let channel = channel(addr, tls).await?;
    Ok(VaultClient::new(channel))
}

/// An mTLS channel, for any of the services the server offers.
pub async fn channel(addr: &str, tls: &ClientTls) -> Result<Channel, ClientError> {
    let uri = if addr.starts_with("https://") {
        addr.to_owned()
    } else {
        format!("https://{addr}")
    };
    let err = |reason: String| ClientError::Connect {
        addr: addr.to_owned(),
        reason,
    };
    let tls_config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&tls.ca_pem))
        .identity(Identity::from_pem(&tls.cert_pem, tls.key_pem.as_slice()));
    Endpoint::from_shared(uri)
        .map_err(|e| err(e.to_string()))?
        .tls_config(tls_config)
        .map_err(|e| err(e.to_string()))?
        .connect()
        .await
        .map_err(|e| err(format!("{e}: {}", source_chain(&e))))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}
