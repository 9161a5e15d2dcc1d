//! Prometheus metrics: the recorder, the scrape listener (`[metrics]
//! listen`, plain HTTP), the per-RPC tower layer and the names of every
//! metric the server emits (README, "Metrics").
//!
//! The `metrics` facade's recorder is process-global and can be installed
//! once: the first server that asks for a listener installs it, and every
//! later server in the same process (tests start several) gets a listener
//! of its own on the *same* registry. A real deployment runs one server per
//! process, so what a listener shows is that server's. Until a recorder is
//! installed every `metrics::*!` call is a no-op, and the RPC layer does
//! not even read the clock ([`enabled`]).
//!
//! No label carries user data: labels are RPC method paths from the
//! service definitions (anything else is `unknown`), status code names,
//! caller identities the policy names (anything else is `unknown`),
//! actions, fixed outcome and reason words, key purposes and versions.

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use metrics::SharedString;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tonic::body::Body;

// ---- names -------------------------------------------------------------

/// Calls per RPC and status code (counter; `rpc`, `code`).
pub const GRPC_CALLS: &str = "fieldvault_grpc_calls_total";
/// Call latency until the status is known (histogram; `rpc`, `code`).
pub const GRPC_SECONDS: &str = "fieldvault_grpc_call_duration_seconds";
/// Audited calls by decision (counter; `caller`, `action`, `outcome`).
pub const DECISIONS: &str = "fieldvault_decisions_total";
/// Batch items by outcome (counter; `action`, `outcome`).
pub const ITEMS: &str = "fieldvault_items_total";
/// Values revealed under an approved grant (counter; `caller`).
pub const GRANT_REVEALS: &str = "fieldvault_grant_reveals_total";
/// Detokenize calls refused by a rule's quota (counter; `caller`, `per`).
pub const QUOTA_REFUSALS: &str = "fieldvault_quota_refusals_total";
/// Callers frozen (counter; `trigger`).
pub const FREEZES: &str = "fieldvault_caller_freezes_total";
/// Callers frozen now (gauge).
pub const FROZEN_CALLERS: &str = "fieldvault_frozen_callers";
/// Writes per group commit (histogram).
pub const COMMIT_BATCH: &str = "fieldvault_store_commit_batch_writes";
/// One group commit: log append, fdatasync, apply (histogram).
pub const COMMIT_SECONDS: &str = "fieldvault_store_commit_duration_seconds";
/// The write-ahead log's fdatasync (histogram).
pub const WAL_SYNC_SECONDS: &str = "fieldvault_store_wal_sync_duration_seconds";
/// An audit event from offer to durable (histogram).
pub const AUDIT_WRITE_SECONDS: &str = "fieldvault_audit_write_duration_seconds";
/// Audit events the trail did not take (counter; `reason`).
pub const AUDIT_FAILURES: &str = "fieldvault_audit_write_failures_total";
/// Records (index entries) per key version (gauge; `purpose`, `version`).
pub const KEY_RECORDS: &str = "fieldvault_key_version_records";
/// Key versions per state (gauge; `purpose`, `state`).
pub const KEY_VERSIONS: &str = "fieldvault_key_versions";
/// The active key version (gauge; `purpose`).
pub const KEY_ACTIVE: &str = "fieldvault_key_active_version";
/// A key job's records moved (gauge; `job`).
pub const JOB_DONE: &str = "fieldvault_key_job_records_done";
/// A key job's records still to move (gauge; `job`).
pub const JOB_REMAINING: &str = "fieldvault_key_job_records_remaining";
/// A key job's records that failed their integrity check (gauge; `job`).
pub const JOB_FAILED: &str = "fieldvault_key_job_records_failed";
/// 1 while a key job runs (gauge; `job`).
pub const JOB_RUNNING: &str = "fieldvault_key_job_running";

/// Histogram buckets for latencies, in seconds: 0.25 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Histogram buckets for the writes of one group commit.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];
/// How often histogram samples are folded into their buckets when no one
/// scrapes (they are held until then).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);
/// Scrape connections open at once. When all are taken, a new connection
/// closes the one whose last request (or accept) is oldest, so connections
/// that send nothing, or half a request, cannot keep a scraper out.
const MAX_SCRAPE_CONNECTIONS: usize = 16;
/// A connection is not closed for a new one until it has been this long
/// without a request since its accept (or its last request): time for a
/// scraper's request to arrive, and a bound on how fast connections that
/// reconnect when closed can churn.
const SCRAPE_EVICTABLE_AFTER: Duration = Duration::from_millis(250);
/// A scrape connection that sends no complete request head within this
/// (from its accept, or from its previous answer) is closed.
const SCRAPE_HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// A scrape connection is closed this long after its accept, whatever it
/// is doing.
const SCRAPE_CONNECTION_LIFETIME: Duration = Duration::from_secs(10);

/// Why the audit trail did not take an event (`reason` of
/// [`AUDIT_FAILURES`]): the writer's refusals and a refusal answered
/// before the event was offered.
pub const AUDIT_FAILURE_REASONS: [&str; 6] = [
    "closed",
    "queue_full",
    "stopped",
    "timeout",
    "write_failed",
    "not_offered",
];

/// The counters alerts watch, at zero from the start: a series born at 1
/// is invisible to `increase()`, so a first freeze or a one-off audit
/// outage would not fire.
fn zero_series() {
    for trigger in crate::vault::FreezeTrigger::ALL {
        metrics::counter!(FREEZES, "trigger" => trigger.as_str()).increment(0);
    }
    for reason in AUDIT_FAILURE_REASONS {
        metrics::counter!(AUDIT_FAILURES, "reason" => reason).increment(0);
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    zero_series();
    describe_counter!(
        GRPC_CALLS,
        "gRPC calls by method path (rpc) and status code (code; \"none\": the response ended or was abandoned without a grpc-status)"
    );
    describe_histogram!(
        GRPC_SECONDS,
        Unit::Seconds,
        "gRPC call latency, from the request until its status is known, by rpc and code"
    );
    describe_counter!(
        DECISIONS,
        "Audited calls by caller (\"unknown\" for callers the policy does not name), action and outcome (allowed, denied, rejected, failed)"
    );
    describe_counter!(
        ITEMS,
        "Batch items of tokenize and detokenize calls by action and outcome (stored, full, masked, permission_denied, not_found, ...)"
    );
    describe_counter!(
        GRANT_REVEALS,
        "Values revealed under an approved grant, by caller"
    );
    describe_counter!(
        QUOTA_REFUSALS,
        "Detokenize calls refused because a rule's quota is spent, by caller and quota period (per)"
    );
    describe_counter!(
        FREEZES,
        "Callers frozen, by trigger (canary, quota_hits, unknown_tokens, operator)"
    );
    describe_gauge!(FROZEN_CALLERS, "Callers frozen now");
    describe_histogram!(
        COMMIT_BATCH,
        Unit::Count,
        "Writes made durable together by one group commit"
    );
    describe_histogram!(
        COMMIT_SECONDS,
        Unit::Seconds,
        "One group commit: the log append, its fdatasync and the writes"
    );
    describe_histogram!(
        WAL_SYNC_SECONDS,
        Unit::Seconds,
        "The fdatasync of one write-ahead log frame"
    );
    describe_histogram!(
        AUDIT_WRITE_SECONDS,
        Unit::Seconds,
        "An audit event from the call's offer until it is durable (or refused)"
    );
    describe_counter!(
        AUDIT_FAILURES,
        "Audit events the trail did not take, by reason (queue_full, closed, timeout, stopped, write_failed; not_offered: a refused call's event while the trail is known to be down, logged instead)"
    );
    describe_gauge!(
        KEY_RECORDS,
        "Records (data keys) or index entries (index keys) under each key version"
    );
    describe_gauge!(
        KEY_VERSIONS,
        "Key versions by purpose and state (active, decrypt_only, retired)"
    );
    describe_gauge!(KEY_ACTIVE, "The active key version, by purpose");
    describe_gauge!(
        JOB_DONE,
        "Records moved by the key job (rewrap, index_rebuild)"
    );
    describe_gauge!(
        JOB_REMAINING,
        "Records still on an older key version than the job's target"
    );
    describe_gauge!(
        JOB_FAILED,
        "Records the key job found corrupt (never rewritten)"
    );
    describe_gauge!(JOB_RUNNING, "1 while the key job runs, else 0");
}

// ---- recorder and listener ----------------------------------------------

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether this process has its recorder installed (some server has a
/// metrics listener): the hot paths skip their work otherwise.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics: {0}")]
    Recorder(String),
    #[error("metrics.listen {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
}

/// The process's recorder, installed on first use.
fn recorder() -> Result<metrics_exporter_prometheus::PrometheusHandle, MetricsError> {
    static HANDLE: OnceLock<Result<metrics_exporter_prometheus::PrometheusHandle, String>> =
        OnceLock::new();
    HANDLE
        .get_or_init(|| {
            use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(COMMIT_BATCH.into()), BATCH_BUCKETS)
                })
                .map_err(|e| e.to_string())?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).map_err(|e| {
                format!("another metrics recorder is installed in this process ({e})")
            })?;
            describe();
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("fieldvault-metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                })
                .map_err(|e| format!("starting the upkeep thread: {e}"))?;
            ENABLED.store(true, Ordering::SeqCst);
            Ok(handle)
        })
        .clone()
        .map_err(MetricsError::Recorder)
}

/// A running scrape listener. Dropping it (or [`Endpoint::stop`]) stops
/// listening; the recorder stays (it is the process's).
pub struct Endpoint {
    local_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Endpoint {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Runs `task` until the endpoint stops (the gauge refresh).
    pub fn attach(&mut self, task: tokio::task::JoinHandle<()>) {
        self.tasks.push(task);
    }

    /// Stops listening and waits for its tasks to end.
    pub async fn stop(mut self) {
        for task in std::mem::take(&mut self.tasks) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Installs the recorder (once per process) and serves the Prometheus text
/// format at `http://addr/metrics`, plain HTTP without authentication.
pub async fn listen(addr: SocketAddr) -> Result<Endpoint, MetricsError> {
    let handle = recorder()?;
    let bind_error = |e: std::io::Error| MetricsError::Bind {
        addr,
        reason: e.to_string(),
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    let task = tokio::spawn(serve(listener, handle));
    Ok(Endpoint {
        local_addr,
        tasks: vec![task],
    })
}

/// One open scrape connection, as the accept loop sees it.
struct ScrapeConn {
    /// When it was accepted or last sent a request, in milliseconds since
    /// the listener started.
    last_active_ms: std::sync::atomic::AtomicU64,
    /// Tells the connection to close (to make room for a new one).
    evict: tokio::sync::Notify,
}

/// Milliseconds since `start`.
fn millis_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

async fn serve(
    listener: tokio::net::TcpListener,
    handle: metrics_exporter_prometheus::PrometheusHandle,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPE_CONNECTIONS));
    let start = Instant::now();
    let evictable_after = u64::try_from(SCRAPE_EVICTABLE_AFTER.as_millis()).unwrap_or(u64::MAX);
    // The connections open: at most MAX_SCRAPE_CONNECTIONS live entries
    // (ended ones are dropped at every accept).
    let mut open: Vec<std::sync::Weak<ScrapeConn>> = Vec::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "metrics listener: accept failed");
                // EMFILE and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let slot = loop {
            open.retain(|c| c.strong_count() > 0);
            match slots.clone().try_acquire_owned() {
                Ok(slot) => break slot,
                Err(tokio::sync::TryAcquireError::Closed) => return,
                Err(tokio::sync::TryAcquireError::NoPermits) => {}
            }
            // Every slot is taken: close the connection idle longest once
            // it has been idle long enough; its task ends at once and gives
            // its slot back.
            let oldest = open
                .iter()
                .enumerate()
                .filter_map(|(i, c)| Some((i, c.upgrade()?)))
                .min_by_key(|(_, c)| c.last_active_ms.load(Ordering::SeqCst));
            let Some((index, oldest)) = oldest else {
                // Only ending connections: their slots come back.
                match slots.clone().acquire_owned().await {
                    Ok(slot) => break slot,
                    Err(_) => return,
                }
            };
            let idle =
                millis_since(start).saturating_sub(oldest.last_active_ms.load(Ordering::SeqCst));
            if idle >= evictable_after {
                open.swap_remove(index);
                oldest.evict.notify_one();
                match slots.clone().acquire_owned().await {
                    Ok(slot) => break slot,
                    Err(_) => return,
                }
            }
            drop(oldest);
            tokio::time::sleep(Duration::from_millis(evictable_after - idle)).await;
        };
        let conn = Arc::new(ScrapeConn {
            last_active_ms: std::sync::atomic::AtomicU64::new(millis_since(start)),
            evict: tokio::sync::Notify::new(),
        });
        open.push(Arc::downgrade(&conn));
        let handle = handle.clone();
        tokio::spawn(async move {
            let state = conn.clone();
            let service = hyper::service::service_fn(move |req| {
                state
                    .last_active_ms
                    .store(millis_since(start), Ordering::SeqCst);
                let answer = scrape(&handle, &req);
                async move { Ok::<_, std::convert::Infallible>(answer) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(SCRAPE_HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                served = tokio::time::timeout(SCRAPE_CONNECTION_LIFETIME, served) => {
                    if let Ok(Err(e)) = served {
                        tracing::debug!(error = %e, "metrics listener: connection failed");
                    }
                }
                () = conn.evict.notified() => {}
            }
            drop(slot);
        });
    }
}

fn scrape<B>(
    handle: &metrics_exporter_prometheus::PrometheusHandle,
    req: &http::Request<B>,
) -> http::Response<http_body_util::Full<Bytes>> {
    let (status, content_type, body) = if req.uri().path() != "/metrics" {
        (
            http::StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: metrics are at /metrics\n".to_owned(),
        )
    } else if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        (
            http::StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "use GET\n".to_owned(),
        )
    } else {
        (
            http::StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            handle.render(),
        )
    };
    let mut response = http::Response::new(http_body_util::Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

// ---- labels --------------------------------------------------------------

/// The label of a caller: its identity when the policy names it (in a rule,
/// as an approver or on the deny list), else `unknown` (bounded by the
/// policy, whatever certificates the CA signs).
pub fn caller_label(
    policy: &crate::domain::policy::Policy,
    caller: Option<&crate::domain::CallerId>,
) -> SharedString {
    match caller {
        Some(c) if policy.names(c) || policy.is_denied(c) => SharedString::from(c.to_string()),
        _ => SharedString::const_str("unknown"),
    }
}

/// [`caller_label`] of an identity as text (an audit event's caller).
pub fn caller_label_of(
    policy: &crate::domain::policy::Policy,
    caller: Option<&str>,
) -> SharedString {
    let parsed = caller.and_then(|c| crate::domain::CallerId::parse(c).ok());
    caller_label(policy, parsed.as_ref())
}

/// The RPCs of this server's services: the label of each, and the handles
/// of its series per status code, registered at first use (a call then
/// costs an index and two atomic updates, not a registry lookup).
struct Rpcs {
    /// Method path -> index into `labels`; 0 is `unknown`.
    index: HashMap<String, usize>,
    labels: Vec<SharedString>,
    /// `labels.len() * CODES.len()` slots.
    series: Vec<OnceLock<(metrics::Counter, metrics::Histogram)>>,
}

fn rpcs() -> &'static Rpcs {
    static RPCS: OnceLock<Rpcs> = OnceLock::new();
    RPCS.get_or_init(|| {
        let mut labels = vec![SharedString::const_str("unknown")];
        let mut index = HashMap::new();
        for path in known_rpcs() {
            index.insert(path.clone(), labels.len());
            labels.push(SharedString::from(Arc::<str>::from(path.as_str())));
        }
        let series = (0..labels.len() * CODES.len())
            .map(|_| OnceLock::new())
            .collect();
        Rpcs {
            index,
            labels,
            series,
        }
    })
}

/// The RPC of a request path: a method a service of this server defines,
/// else `unknown` (0): a client picks the path.
fn rpc_index(path: &str) -> usize {
    rpcs().index.get(path).copied().unwrap_or(0)
}

#[cfg(test)]
fn rpc_label(path: &str) -> SharedString {
    rpcs().labels[rpc_index(path)].clone()
}

/// The counter and histogram of `rpc` (an index from [`rpc_index`]) and
/// `code` (an index into [`CODES`]).
fn series(rpc: usize, code: usize) -> Option<&'static (metrics::Counter, metrics::Histogram)> {
    let rpcs = rpcs();
    let slot = rpcs.series.get(rpc * CODES.len() + code)?;
    Some(slot.get_or_init(|| {
        let labels = [
            ("rpc", rpcs.labels.get(rpc).cloned().unwrap_or_default()),
            ("code", SharedString::const_str(CODES[code % CODES.len()])),
        ];
        (
            metrics::counter!(GRPC_CALLS, &labels),
            metrics::histogram!(GRPC_SECONDS, &labels),
        )
    }))
}

/// Every method path of the services this server offers.
fn known_rpcs() -> Vec<String> {
    use prost::Message;
    let mut paths: Vec<String> = vec![
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo".into(),
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo".into(),
    ];
    for set in [
        crate::grpc::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ] {
        // Both are generated at build time from the protos: they decode.
        let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name = service.name.unwrap_or_default();
                for method in service.method {
                    paths.push(format!(
                        "/{package}.{service_name}/{}",
                        method.name.unwrap_or_default()
                    ));
                }
            }
        }
    }
    paths
}

/// The `code` label's values: gRPC status codes 0 to 16 by the names other
/// gRPC libraries print, a `grpc-status` that is none of them, and no
/// status at all.
const CODES: [&str; 19] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
    "invalid",
    "none",
];
const INVALID_CODE: usize = 17;
const NO_CODE: usize = 18;

/// The index into [`CODES`] of a `grpc-status` value.
fn code_index(code: &[u8]) -> usize {
    match code {
        [d @ b'0'..=b'9'] => usize::from(d - b'0'),
        [b'1', d @ b'0'..=b'6'] => 10 + usize::from(d - b'0'),
        _ => INVALID_CODE,
    }
}

fn status_of(headers: &http::HeaderMap) -> Option<usize> {
    headers.get("grpc-status").map(|v| code_index(v.as_bytes()))
}

// ---- the RPC layer --------------------------------------------------------

/// Counts every call and its latency by RPC and status code. The status
/// is read from the response headers (a trailers-only answer: most
/// errors) or from the trailers; a response that ends, fails or is
/// dropped without one counts as code `none`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RpcMetricsLayer;

impl<S> tower_layer::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics { inner }
    }
}

/// See [`RpcMetricsLayer`].
#[derive(Clone, Debug)]
pub struct RpcMetrics<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower_service::Service<http::Request<Body>> for RpcMetrics<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The service that was polled ready is the one called.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !enabled() {
            return Box::pin(inner.call(req));
        }
        let mut record = CallRecord {
            rpc: rpc_index(req.uri().path()),
            start: Instant::now(),
            done: false,
        };
        Box::pin(async move {
            let response = inner.call(req).await?;
            if let Some(code) = status_of(response.headers()) {
                record.finish(code);
            }
            Ok(response.map(|body| {
                if record.done {
                    body
                } else {
                    Body::new(RecordedBody {
                        inner: body,
                        record,
                    })
                }
            }))
        })
    }
}

/// One call being counted; counted once, at its status or when dropped.
struct CallRecord {
    /// See [`rpc_index`].
    rpc: usize,
    start: Instant,
    done: bool,
}

impl CallRecord {
    /// `code`: an index into [`CODES`].
    fn finish(&mut self, code: usize) {
        if self.done {
            return;
        }
        self.done = true;
        if let Some((calls, seconds)) = series(self.rpc, code) {
            calls.increment(1);
            seconds.record(self.start.elapsed().as_secs_f64());
        }
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.finish(NO_CODE);
    }
}

/// A response body that reads the status from its trailers.
struct RecordedBody {
    inner: Body,
    record: CallRecord,
}

impl HttpBody for RecordedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_of) {
                    self.record.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => self.record.finish(NO_CODE),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn every_rpc_of_the_services_has_a_label_and_other_paths_are_unknown() {
        assert_eq!(
            rpc_label("/fieldvault.v1.Vault/Tokenize").as_ref(),
            "/fieldvault.v1.Vault/Tokenize"
        );
        assert_eq!(
            rpc_label("/grpc.health.v1.Health/Check").as_ref(),
            "/grpc.health.v1.Health/Check"
        );
        assert_eq!(
            rpc_label("/fieldvault.v1.Vault/+1 202-555-0100").as_ref(),
            "unknown"
        );
        assert!(known_rpcs().len() > 10, "{:?}", known_rpcs());
    }

    fn record() -> CallRecord {
        CallRecord {
            rpc: rpc_index("/fieldvault.v1.Vault/Detokenize"),
            start: Instant::now(),
            done: false,
        }
    }

    #[test]
    fn a_call_counts_once_with_the_code_of_its_trailers_or_as_none_without_one() {
        use http_body_util::BodyExt;
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                // Trailers with a status: that code, once.
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("5"));
                let inner = http_body_util::Empty::<Bytes>::new().with_trailers(async move {
                    Some(Ok::<_, std::convert::Infallible>(trailers))
                });
                let body = RecordedBody {
                    inner: Body::new(inner),
                    record: record(),
                };
                body.collect().await.unwrap();
                // A body that ends without trailers, and one dropped unread.
                let body = RecordedBody {
                    inner: Body::empty(),
                    record: record(),
                };
                body.collect().await.unwrap();
                drop(RecordedBody {
                    inner: Body::empty(),
                    record: record(),
                });
            });
        });
        let text = handle.render();
        assert!(
            text.contains(
                "fieldvault_grpc_calls_total{rpc=\"/fieldvault.v1.Vault/Detokenize\",code=\"NotFound\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "fieldvault_grpc_calls_total{rpc=\"/fieldvault.v1.Vault/Detokenize\",code=\"none\"} 2\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn status_codes_are_named_and_anything_else_is_invalid() {
        let name = |code: &[u8]| CODES[code_index(code)];
        assert_eq!(name(b"0"), "OK");
        assert_eq!(name(b"7"), "PermissionDenied");
        assert_eq!(name(b"16"), "Unauthenticated");
        assert_eq!(name(b"17"), "invalid");
        assert_eq!(name(b"07"), "invalid");
        assert_eq!(name(b"+7"), "invalid");
        assert_eq!(name(b"+1 202-555-0100"), "invalid");
        assert_eq!(CODES[NO_CODE], "none");
    }
}
