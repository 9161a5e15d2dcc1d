//! Wiring: config → master key, store, keyring, policy, audit → a tonic
//! server behind fieldvault's own mTLS accept loop.

use crate::audit::FileAuditLog;
use crate::config::{Config, MasterKeySource};
use crate::crypto::{MasterKey, MasterKeyError};
use crate::domain::policy::{Policy, PolicyError};
use crate::grpc::{pb, VaultService};
use crate::store::{SledConfig, SledStore, StoreError};
use crate::tls::TlsError;
use crate::vault::{open_keyring, KeyringSetupError, Settings, Vault};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("master_key: {0}")]
    MasterKey(#[from] MasterKeyError),
    #[error("master_key.env: environment variable {0} is not set")]
    MasterKeyEnvMissing(String),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("{0} (is this the right master key for this data_dir?)")]
    Keyring(#[from] KeyringSetupError),
    #[error("policy_file {path}: {reason}")]
    PolicyRead { path: String, reason: String },
    #[error("policy_file: {0}")]
    Policy(#[from] PolicyError),
    #[error("audit_log: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("listen {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("reflection: {0}")]
    Reflection(String),
}

/// A running server. Drop it or call [`Server::shutdown`] to stop.
pub struct Server {
    local_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    serve: JoinHandle<Result<(), tonic::transport::Error>>,
    accept: JoinHandle<()>,
    health: JoinHandle<()>,
}

impl Server {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets in-flight calls finish, and waits for the
    /// server (and so the store) to close.
    pub async fn shutdown(mut self) -> Result<(), tonic::transport::Error> {
        self.accept.abort();
        self.health.abort();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.wait_ref().await
    }

    /// Resolves when the server task ends: after [`Server::shutdown`], or on
    /// its own if it fails.
    pub async fn wait_ref(&mut self) -> Result<(), tonic::transport::Error> {
        match (&mut self.serve).await {
            Ok(result) => result,
            Err(e) => {
                tracing::error!(error = %e, "server task failed");
                Ok(())
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
        self.health.abort();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn load_master_key(
    source: &MasterKeySource,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<MasterKey, StartError> {
    match source {
        MasterKeySource::File(path) => Ok(MasterKey::from_file(path)?),
        MasterKeySource::Env(var) => {
            let text = zeroize::Zeroizing::new(
                env(var).ok_or_else(|| StartError::MasterKeyEnvMissing(var.clone()))?,
            );
            Ok(MasterKey::from_hex(
                &text,
                &format!("environment variable {var}"),
            )?)
        }
    }
}

/// Opens everything `config` names and starts serving. Fails, naming the
/// setting, if anything is missing or wrong; nothing is served then.
pub async fn start(
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Server, StartError> {
    let master = load_master_key(&config.master_key, env)?;
    let policy_text =
        std::fs::read_to_string(&config.policy_file).map_err(|e| StartError::PolicyRead {
            path: config.policy_file.display().to_string(),
            reason: e.to_string(),
        })?;
    let policy = Policy::from_toml(&policy_text)?;
    crate::domain::value::warm_up();
    let tls = crate::tls::server_config(&config.tls.cert, &config.tls.key, &config.tls.client_ca)?;
    let store = SledStore::open(&SledConfig {
        path: config.store_dir(),
        cache_capacity_bytes: config.cache_capacity_mib * 1024 * 1024,
        max_queued_writes: crate::store::DEFAULT_MAX_QUEUED_WRITES,
    })?;
    let keyring = open_keyring(&store, &master).await?;
    drop(master);
    let audit = FileAuditLog::open(&config.audit_log).await?;
    let vault = Arc::new(Vault::new(
        Arc::new(store),
        keyring,
        policy,
        Arc::new(audit),
        Settings {
            max_batch_items: config.max_batch_items,
            default_region: config.default_phone_region,
            token_modes: config.token_modes,
        },
    ));

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| StartError::Bind {
            addr: config.listen,
            reason: e.to_string(),
        })?;
    let local_addr = listener.local_addr().map_err(|e| StartError::Bind {
        addr: config.listen,
        reason: e.to_string(),
    })?;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::vault_server::VaultServer<VaultService>>()
        .await;
    let health = tokio::spawn(watch_storage(vault.clone(), health_reporter));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartError::Reflection(e.to_string()))?;

    let (incoming, accept) = crate::tls::incoming(listener, tls);
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(VaultService::new(vault).into_server());
    let serve = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, async {
                let _ = shutdown_rx.await;
            })
            .await
    });
    tracing::info!(%local_addr, "fieldvault listening (mTLS required)");
    Ok(Server {
        local_addr,
        shutdown: Some(shutdown_tx),
        serve,
        accept,
        health,
    })
}

/// Reports NOT_SERVING (for the Vault service and the server as a whole)
/// once storage has failed: a failed flush or fsync is fatal for writes.
async fn watch_storage(vault: Arc<Vault>, reporter: tonic_health::server::HealthReporter) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tick.tick().await;
        if let Some(failure) = vault.storage_failure() {
            tracing::error!(%failure, "storage failed: reporting NOT_SERVING");
            reporter
                .set_not_serving::<pb::vault_server::VaultServer<VaultService>>()
                .await;
            reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            return;
        }
    }
}
