//! Wiring: config → master key, store, keyring, policy, audit → a tonic
//! server behind fieldvault's own mTLS accept loop.

use crate::audit::{AuditTrail, TrailOptions};
use crate::config::{Config, MasterKeySource};
use crate::crypto::{MasterKey, MasterKeyError};
use crate::domain::policy::PolicyError;
use crate::grpc::{pb, AdminService, BackupService, GrantsService, KeyAdminService, VaultService};
use crate::store::{SledConfig, SledStore, StoreError};
use crate::tls::TlsError;
use crate::vault::{ensure_audit_key, open_keyring, KeyringSetupError, Settings, Vault};
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
    #[error("{0}{hint}", hint = if .0.is_wrong_master_key() {
        " (is this the right master key for this data_dir?)"
    } else {
        ""
    })]
    Keyring(#[from] KeyringSetupError),
    #[error("policy_file: {0}")]
    Policy(#[from] PolicyError),
    #[error("{0}")]
    Files(#[from] crate::fsperm::PermError),
    #[error("audit_log: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("listen {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Metrics(#[from] crate::metrics::MetricsError),
}

/// Why the server stopped on its own, or failed to stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("the server task panicked")]
    Panicked,
    #[error("the server task was cancelled")]
    Cancelled,
}

/// A running server. Drop it or call [`Server::shutdown`] to stop.
pub struct Server {
    local_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    /// `None` once [`Server::wait_ref`] has seen it end.
    serve: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    accept: JoinHandle<()>,
    health: JoinHandle<()>,
    /// For stopping its background jobs (rewrap, index rebuild, schedule)
    /// at shutdown: they hold the store.
    vault: Option<Arc<Vault>>,
    /// The metrics listener (`[metrics] listen`) and its gauge refresh.
    metrics: Option<crate::metrics::Endpoint>,
    /// What a drain reports NOT_SERVING through (once the task that
    /// reports storage and audit failures has stopped).
    reporter: tonic_health::server::HealthReporter,
    in_flight: crate::request::InFlight,
    /// Every open connection, to cut off at the end of a drain.
    connections: crate::drain::Connections,
}

/// How long a drain keeps health statuses after the GOAWAY before it
/// clears them to end the health watches (see [`Server::drain`]).
const HEALTH_CLEAR_DELAY: std::time::Duration = std::time::Duration::from_millis(500);

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drained {
    /// Calls still in flight at the deadline, cut off unanswered.
    pub cut_off: usize,
    /// How long the drain took.
    pub took: std::time::Duration,
}

/// Every service health reports on, by its gRPC name, and the server as a
/// whole ("").
fn health_names() -> [&'static str; 6] {
    use tonic::server::NamedService;
    [
        "",
        <pb::vault_server::VaultServer<VaultService> as NamedService>::NAME,
        <pb::key_admin_server::KeyAdminServer<KeyAdminService> as NamedService>::NAME,
        <pb::admin_server::AdminServer<AdminService> as NamedService>::NAME,
        <pb::backup_service_server::BackupServiceServer<BackupService> as NamedService>::NAME,
        <pb::grants_server::GrantsServer<GrantsService> as NamedService>::NAME,
    ]
}

impl Server {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound address of the metrics listener, if there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|m| m.local_addr())
    }

    /// Stops accepting, lets in-flight calls finish, and waits for every
    /// task of the server, so that the store they hold is closed (and
    /// checkpointed) when this returns. Reports how the server task ended:
    /// an error if it failed or panicked, now or before.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.drain(None).await.map(|_| ())
    }

    /// A drain (SIGTERM): health answers NOT_SERVING (for the server and
    /// every service; health watches get it, then end, after the GOAWAY),
    /// no new connection is accepted and no new call taken (HTTP/2
    /// GOAWAY), calls in flight
    /// finish; those still running after `deadline` (if any) are cut off
    /// unanswered. Then the background jobs stop and the store closes
    /// (a checkpoint) before this returns.
    pub async fn drain(
        mut self,
        deadline: Option<std::time::Duration>,
    ) -> Result<Drained, ServerError> {
        let started = std::time::Instant::now();
        self.health.abort();
        let _ = (&mut self.health).await;
        for name in health_names() {
            self.reporter
                .set_service_status(name, tonic_health::ServingStatus::NotServing)
                .await;
        }
        // Closes the listening socket: a new connection is refused.
        self.accept.abort();
        let _ = (&mut self.accept).await;
        let in_flight = self.in_flight.get();
        tracing::info!(
            in_flight,
            deadline_secs = deadline.map(|d| d.as_secs()),
            "draining: health reports NOT_SERVING, no new connection or call is taken, calls in flight finish"
        );
        // GOAWAY first: a client stops opening calls on its connection.
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let signalled = std::time::Instant::now();
        // Then health watches end (their status is gone), so they do not
        // hold the drain open. Not before the GOAWAY and a round trip for
        // the calls a client sent before it saw the GOAWAY: a Check until
        // then answers NOT_SERVING, not NOT_FOUND ("service not
        // registered"). A server with no watch open may finish sooner.
        let early = tokio::select! {
            served = self.wait_ref() => Some(served),
            () = tokio::time::sleep(deadline.map_or(HEALTH_CLEAR_DELAY, |d| d.min(HEALTH_CLEAR_DELAY))) => None,
        };
        for name in health_names() {
            self.reporter.clear_service_status(name).await;
        }
        let mut cut_off = 0;
        let served = match (early, deadline) {
            (Some(served), _) => served,
            (None, None) => self.wait_ref().await,
            (None, Some(limit)) => match tokio::time::timeout(
                limit.saturating_sub(signalled.elapsed()),
                self.wait_ref(),
            )
            .await
            {
                Ok(served) => served,
                Err(_) => {
                    cut_off = self.in_flight.get();
                    tracing::warn!(
                        cut_off,
                        deadline_secs = limit.as_secs(),
                        "drain deadline (shutdown.drain_timeout_secs) passed: cutting off the calls still in flight, unanswered"
                    );
                    self.connections.cut_all();
                    self.wait_ref().await
                }
            },
        };
        // Scrapes work until the calls are done.
        if let Some(metrics) = self.metrics.take() {
            metrics.stop().await;
        }
        // Jobs end after their current batch; their state is stored and
        // they resume at the next start.
        if let Some(vault) = self.vault.take() {
            vault.stop_background().await;
        }
        served.map(|()| Drained {
            cut_off,
            took: started.elapsed(),
        })
    }

    /// Resolves when the server task ends: after [`Server::shutdown`], or on
    /// its own if it fails or panics (an error then). Cancel-safe; once it
    /// has resolved, later calls return `Ok(())` at once.
    pub async fn wait_ref(&mut self) -> Result<(), ServerError> {
        let Some(serve) = self.serve.as_mut() else {
            return Ok(());
        };
        let joined = serve.await;
        self.serve = None;
        match joined {
            Ok(result) => Ok(result?),
            Err(e) if e.is_panic() => {
                tracing::error!("the server task panicked");
                Err(ServerError::Panicked)
            }
            Err(_) => Err(ServerError::Cancelled),
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

/// Opens the audit trail at `config.audit_log` under the keyring's audit
/// key: verifies the active file and continues its chain, or refuses.
async fn open_audit_trail(
    config: &Config,
    keyring: &crate::crypto::Keyring,
    key_is_new: bool,
) -> Result<AuditTrail, StartError> {
    let missing = || crate::audit::AuditError("the keyring has no audit key".into());
    let key = keyring.audit_key().ok_or_else(missing)?;
    let wrapped = keyring
        .wrapped_audit_key()
        .map_err(|e| crate::audit::AuditError(e.to_string()))?
        .ok_or_else(missing)?;
    Ok(AuditTrail::open(
        &config.audit_log,
        key,
        &wrapped,
        keyring.master_fingerprint(),
        TrailOptions {
            max_file_bytes: config.audit.max_file_bytes,
            start_new_chain: config.audit.start_new_chain,
            key_is_new,
        },
    )
    .await?)
}

pub fn load_master_key(
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
    crate::fsperm::prepare_for_start(config)?;
    let master = load_master_key(&config.master_key, env)?;
    let (policy_file, policy) = crate::policy_file::PolicyFile::open(&config.policy_file)?;
    let policy_file = Arc::new(policy_file);
    crate::domain::value::warm_up();
    let limits = crate::limits::Resolved::new(config, crate::limits::nofile_soft_limit())?;
    // The metrics recorder first: what opening the TLS files records (the
    // server certificate's expiry, every handshake-failure reason at zero)
    // is then in the registry from the first scrape; and a metrics address
    // in use is refused before the store is opened.
    let mut metrics = match config.metrics.listen {
        Some(addr) => Some(crate::metrics::listen(addr).await?),
        None => None,
    };
    let tls = crate::tls_reload::ServerTls::open(crate::tls_reload::TlsSources::of(config))?;
    let store = SledStore::open(&SledConfig {
        path: config.store_dir(),
        cache_capacity_bytes: config.cache_capacity_mib * 1024 * 1024,
        max_queued_writes: config.limits.max_queued_writes,
    })?;
    // Files an earlier run made under a looser umask become owner-only.
    crate::fsperm::tighten_tree("data_dir", &config.store_dir())?;
    let keyring = open_keyring(&store, &master).await?;
    let (keyring, audit_key_is_new) = ensure_audit_key(&store, keyring).await?;
    drop(master);
    let audit = open_audit_trail(config, &keyring, audit_key_is_new).await?;
    let vault = Arc::new(Vault::new(
        Arc::new(store),
        keyring,
        policy,
        Arc::new(audit),
        Settings {
            max_batch_items: config.max_batch_items,
            default_region: config.default_phone_region,
            token_modes: config.token_modes,
            explicit_kind_denials: config.explicit_kind_denials,
            keys: config.keys,
            retention: config.retention,
            grants: config.grants,
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
    let reporter = health_reporter.clone();
    for name in health_names() {
        health_reporter
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    vault.watch_policy(policy_file.clone());
    let watched = vault.clone();
    let tls_files = tls.clone().watch(config.tls_options.reload_interval);
    let connections = crate::drain::Connections::new();
    let rechecked = recheck_connections(connections.clone(), tls.verifiers());
    let health = tokio::spawn(async move {
        tokio::join!(
            watch_storage(watched.clone(), health_reporter),
            watch_policy(watched, policy_file),
            tls_files,
            rechecked
        );
    });
    let health_service =
        health_service.max_decoding_message_size(crate::limits::SMALL_SERVICE_MESSAGE_BYTES);
    // Reflection in both versions: v1alpha for grpcurl before 1.8.7 and
    // Python's grpcio-reflection. The descriptor set includes
    // google/rpc/error_details.proto (build.rs).
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (reflection, reflection_v1alpha) = if config.reflection {
        (
            Some(
                reflection()
                    .build_v1()
                    .map_err(|e| StartError::Reflection(e.to_string()))?
                    .max_decoding_message_size(crate::limits::SMALL_SERVICE_MESSAGE_BYTES),
            ),
            Some(
                reflection()
                    .build_v1alpha()
                    .map_err(|e| StartError::Reflection(e.to_string()))?
                    .max_decoding_message_size(crate::limits::SMALL_SERVICE_MESSAGE_BYTES),
            ),
        )
    } else {
        (None, None)
    };
    // Callers no rule names get a small budget of their own (limits.rs).
    let rules_of = vault.clone();
    let rule_check: crate::limits::RuleCheck =
        Arc::new(move |caller| rules_of.policy().names(caller));
    // Key administration: requests are a number or a path, answers a few
    // hundred bytes per key version (and at most 100 failed tokens).
    let key_admin_service = KeyAdminService::new(vault.clone())
        .into_server()
        .max_decoding_message_size(crate::limits::SMALL_SERVICE_MESSAGE_BYTES);
    // Abuse administration: small requests, answers of a few hundred bytes
    // per caller or canary.
    let admin_service = AdminService::new(vault.clone())
        .into_server()
        .max_decoding_message_size(crate::limits::SMALL_SERVICE_MESSAGE_BYTES);
    // Backups: an empty request, an answer of 1 MiB chunks.
    let backup_service = BackupService::new(vault.clone())
        .into_server()
        .max_decoding_message_size(crate::limits::SMALL_SERVICE_MESSAGE_BYTES);
    // Grants: a request names at most 1000 tokens (about 30 KiB); a list
    // answers at most 1000 grants without their token lists.
    let grants_service = GrantsService::new(vault.clone())
        .into_server()
        .max_decoding_message_size(crate::limits::SMALL_SERVICE_MESSAGE_BYTES);
    // The refresh of the key and freeze gauges holds the vault only while
    // it reads (a weak reference).
    if let Some(endpoint) = metrics.as_mut() {
        endpoint.attach(crate::vault::refresh_gauges(Arc::downgrade(&vault)));
    }
    // Nothing below can fail: resume the jobs a crash or restart
    // interrupted and run the rotation schedule (once per server).
    vault.start_background();
    let background = vault.clone();
    let vault_service = VaultService::new(vault)
        .into_server()
        .max_decoding_message_size(limits.max_message_bytes)
        .max_encoding_message_size(limits.max_message_bytes);
    // Requests are counted against max_batch_items before they are decoded.
    let vault_service = crate::grpc::codec::BatchLimit::new(vault_service, config.max_batch_items);

    let (incoming, accept) =
        crate::tls::incoming_with(listener, tls.configs(), accept_limits(&limits));
    let registry = connections.clone();
    let verifiers = tls.verifiers();
    let incoming = tokio_stream::StreamExt::map(incoming, move |conn| {
        conn.map(|c| {
            let certs = c.peer_certificates();
            let verifier = verifiers.borrow().clone();
            registry.wrap_checked(c, certs, verifier.as_ref())
        })
    });
    let in_flight = crate::request::InFlight::default();
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let router = server_builder(&limits, Some(rule_check), in_flight.clone())
        .add_service(health_service)
        .add_optional_service(reflection)
        .add_optional_service(reflection_v1alpha)
        .add_service(vault_service)
        .add_service(key_admin_service)
        .add_service(admin_service)
        .add_service(backup_service)
        .add_service(grants_service);
    let serve = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, async {
                let _ = shutdown_rx.await;
            })
            .await
    });
    // Every setting in force, defaults and environment overrides applied
    // (a config holds no secret: the master key only as its source).
    tracing::info!(config = ?config, "effective config");
    tracing::info!(
        %local_addr,
        max_connections = limits.max_connections,
        max_connections_per_identity = limits.max_connections_per_identity,
        max_concurrent_streams = limits.max_concurrent_streams,
        max_message_bytes = limits.max_message_bytes,
        max_request_bytes = limits.max_request_bytes,
        "fieldvault listening (mTLS required)"
    );
    if let Some(m) = &metrics {
        tracing::info!(metrics_addr = %m.local_addr(), "metrics at http://{}/metrics (plain HTTP, no authentication)", m.local_addr());
    }
    Ok(Server {
        local_addr,
        shutdown: Some(shutdown_tx),
        serve: Some(serve),
        accept,
        health,
        vault: Some(background),
        reporter,
        in_flight,
        connections,
        metrics,
    })
}

/// What the accept loop enforces under `limits`: the vault's and the
/// bench ceiling's.
pub fn accept_limits(limits: &crate::limits::Resolved) -> crate::tls::AcceptLimits {
    crate::tls::AcceptLimits {
        max_connections: limits.max_connections,
        max_pending_handshakes: limits.max_pending_handshakes,
        max_handshakes_per_ip: limits.max_handshakes_per_ip,
        identities: crate::limits::Identities::new(
            limits.max_connections_per_identity,
            limits.max_request_bytes_per_identity,
        ),
        handshake_timeout: limits.handshake_timeout,
        idle_timeout: Some(limits.idle_timeout),
        identity_from_cn: limits.identity_from_cn,
        refusals: Arc::new(crate::limits::RefusalLog::new(
            limits.refusal_log_lines_per_minute,
        )),
    }
}

/// The layers every call goes through, outermost first: metrics, the
/// request id, the guard (byte budget, stream tracking, request timeout).
pub type ServerLayers = tower_layer::Stack<
    crate::limits::GuardLayer,
    tower_layer::Stack<
        crate::request::RequestLayer,
        tower_layer::Stack<crate::metrics::RpcMetricsLayer, tower_layer::Identity>,
    >,
>;

/// The tonic server settings and layers under `limits` (HTTP/2 streams,
/// windows, headers, keepalive; the byte budget, stream tracking and the
/// request timeout): the vault's and the bench ceiling's, so the two differ
/// only in the service behind them. Services keep their own message bounds
/// (`limits.max_message_bytes` for the Vault service).
/// `rule_check` tells callers the policy knows from those it names in no
/// rule (see [`crate::limits::GuardLayer::with_rule_check`]); the ceiling
/// has no policy and passes `None`. Every call gets its request id first
/// ([`crate::request`]), counted in `in_flight`.
pub fn server_builder(
    limits: &crate::limits::Resolved,
    rule_check: Option<crate::limits::RuleCheck>,
    in_flight: crate::request::InFlight,
) -> tonic::transport::Server<ServerLayers> {
    let mut guard =
        crate::limits::GuardLayer::new(limits.max_request_bytes, limits.max_message_bytes)
            .with_request_timeout(limits.request_timeout);
    if let Some(check) = rule_check {
        guard = guard.with_rule_check(check);
    }
    tonic::transport::Server::builder()
        // Outermost: it sees every answer, the guard's refusals too.
        .layer(crate::metrics::RpcMetricsLayer)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .initial_stream_window_size(limits.stream_window_bytes)
        .initial_connection_window_size(limits.connection_window_bytes)
        .http2_max_header_list_size(crate::limits::MAX_HEADER_LIST_BYTES)
        .http2_keepalive_interval(limits.keepalive_interval)
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .layer(crate::request::RequestLayer::new(in_flight))
        .layer(guard)
}

/// Re-reads the policy file once a second if it changed (calls see a
/// change at once: they check too, and audit it before they go on) and on
/// SIGHUP, and audits every reload (`policy.reload`), applied or rejected.
async fn watch_policy(vault: Arc<Vault>, file: Arc<crate::policy_file::PolicyFile>) {
    let mut reread =
        crate::reread::Reread::new(std::time::Duration::from_secs(1), "the policy file is");
    loop {
        let forced = reread.next().await;
        if forced {
            tracing::info!(policy_file = %file.path().display(), "SIGHUP: re-reading the policy file");
        }
        file.reload_into(forced, &|p| vault.replace_policy(p));
        vault.audit_policy_reloads().await;
    }
}

/// How often open connections are checked again when the CAs and CRLs
/// have not changed: a client certificate that expires while connected is
/// closed within this.
const RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Checks every open connection's client certificate against the CAs and
/// CRLs in force whenever they change and every [`RECHECK_EVERY`], and
/// closes those that fail: a revocation is in force for open connections
/// too, not only for new handshakes.
async fn recheck_connections(
    connections: crate::drain::Connections,
    mut verifiers: tokio::sync::watch::Receiver<
        Arc<dyn rustls::server::danger::ClientCertVerifier>,
    >,
) {
    let mut tick = tokio::time::interval(RECHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            changed = verifiers.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tick.tick() => {}
        }
        let verifier = verifiers.borrow_and_update().clone();
        let connections = connections.clone();
        // Signature checks, one chain per connection: off the workers.
        let closed = tokio::task::spawn_blocking(move || connections.recheck(verifier.as_ref()))
            .await
            .unwrap_or_default();
        if !closed.is_empty() {
            let reasons = closed
                .iter()
                .map(|(reason, n)| format!("{reason}={n}"))
                .collect::<Vec<_>>()
                .join(" ");
            tracing::warn!(
                closed = closed.iter().map(|(_, n)| n).sum::<usize>(),
                reasons = %reasons,
                "closed open connections whose client certificate the CAs and CRLs in force no longer accept"
            );
        }
    }
}

/// Reports NOT_SERVING (for the Vault, KeyAdmin and Admin services and the server
/// as a whole) once storage has failed (a failed flush or fsync is fatal
/// for writes, for good), and while the audit trail refuses events (it
/// recovers by itself: SERVING again once it does).
async fn watch_storage(vault: Arc<Vault>, reporter: tonic_health::server::HealthReporter) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
    let mut serving = true;
    loop {
        tick.tick().await;
        let storage = vault.storage_failure();
        let audit = vault.audit_failure();
        let healthy = storage.is_none() && audit.is_none();
        if healthy == serving {
            continue;
        }
        serving = healthy;
        let status = if healthy {
            tracing::info!("the audit trail works again: reporting SERVING");
            tonic_health::ServingStatus::Serving
        } else {
            match (&storage, &audit) {
                (Some(failure), _) => {
                    tracing::error!(%failure, "storage failed: reporting NOT_SERVING")
                }
                (None, Some(failure)) => {
                    tracing::error!(%failure, "the audit trail refuses events: reporting NOT_SERVING")
                }
                (None, None) => {}
            }
            tonic_health::ServingStatus::NotServing
        };
        for name in health_names() {
            reporter.set_service_status(name, status).await;
        }
        if storage.is_some() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    /// A server whose serve task is `serve` and whose other tasks idle.
    fn server_with_task(
        serve: JoinHandle<Result<(), tonic::transport::Error>>,
    ) -> (Server, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let server = Server {
            local_addr: "127.0.0.1:9".parse().unwrap(),
            shutdown: Some(tx),
            serve: Some(serve),
            accept: tokio::spawn(std::future::pending()),
            health: tokio::spawn(std::future::pending()),
            vault: None,
            reporter: tonic_health::server::health_reporter().0,
            in_flight: Default::default(),
            connections: Default::default(),
            metrics: None,
        };
        (server, rx)
    }

    #[tokio::test]
    async fn wait_reports_an_error_when_the_server_task_panics() {
        let (mut server, _rx) = server_with_task(tokio::spawn(async {
            tokio::task::yield_now().await;
            panic!("a bug in the server task");
        }));
        let waited = server.wait_ref().await;
        assert!(matches!(waited, Err(ServerError::Panicked)), "{waited:?}");
        // Seen once: a later wait returns at once, shutdown still closes.
        assert!(server.wait_ref().await.is_ok());
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_reports_an_error_when_the_server_task_panics_on_the_way_down() {
        let (tx, rx) = oneshot::channel::<()>();
        let (mut server, _unused) = server_with_task(tokio::spawn(async move {
            let _ = rx.await;
            panic!("a bug in the server task at shutdown");
        }));
        server.shutdown = Some(tx);
        let shut = server.shutdown().await;
        assert!(matches!(shut, Err(ServerError::Panicked)), "{shut:?}");
    }

    #[tokio::test]
    async fn shutdown_returns_only_once_the_store_is_closed() {
        let tmp = tempfile::tempdir().unwrap();
        let (config, _) = crate::dev::prepare(tmp.path(), "127.0.0.1:0".parse().unwrap()).unwrap();
        let server = start(&config, &no_env).await.unwrap();
        server.shutdown().await.unwrap();
        // sled locks its files while open: this fails if anything still
        // holds the store.
        let reopened = SledStore::open(&SledConfig {
            path: config.store_dir(),
            cache_capacity_bytes: 1 << 20,
            max_queued_writes: 1,
        });
        assert!(reopened.is_ok(), "{:?}", reopened.err());
    }
}
