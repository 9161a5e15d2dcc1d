//! What one peer, one identity and everyone together may hold: the `[limits]`
//! settings resolved into numbers, the budget of request bytes that tonic
//! may buffer, open-stream tracking for the idle timeout, per-identity
//! connection slots and rate-limited logging of refusals.
//!
//! Why a byte budget: tonic reserves a buffer of the length a gRPC message
//! *announces* (its 5-byte prefix) as soon as it reads the prefix. Without a
//! budget, one byte of payload buys up to `max_message_bytes` of memory per
//! stream. The budget counts announced bytes, per identity and in total,
//! before tonic sees them; a stream that would exceed it fails with
//! RESOURCE_EXHAUSTED and nothing is reserved.

use crate::config::{Config, ConfigError, TlsMinVersion};
use crate::domain::value::{MAX_PART_BYTES, MAX_STREET_LINES, MAX_VALUE_BYTES};
use crate::domain::{Justification, Purpose};
use bytes::Buf;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::Status;

/// File descriptors kept free for everything but client connections (the
/// listener, the store and its log, the audit log, tokio's own, sockets
/// accepted only to be closed at once).
pub const RESERVED_FDS: u64 = 64;
/// `limits.max_connections` when unset (and the fd limit allows it).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;
/// `limits.max_pending_handshakes` when unset (and a quarter of
/// `max_connections` is not lower).
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 256;
/// `limits.max_request_bytes_per_identity` when unset (at least one
/// largest legal message).
pub const DEFAULT_REQUEST_BYTES_PER_IDENTITY: u64 = 32 * 1024 * 1024;
/// `limits.max_request_bytes` when unset.
pub const DEFAULT_REQUEST_BYTES: u64 = 128 * 1024 * 1024;
/// Largest message the health and reflection services accept (their
/// requests are a service name or a symbol).
pub const SMALL_SERVICE_MESSAGE_BYTES: usize = 64 * 1024;
/// HTTP/2 header list bound (SETTINGS_MAX_HEADER_LIST_SIZE).
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// Raw text may be longer than its normalised form (whitespace runs
/// collapse, NFKC composes): a part is legal up to twice its normalised
/// bound, here.
const RAW_PART_BYTES: usize = 2 * MAX_PART_BYTES;
/// A region code is two letters; some room for surrounding whitespace.
const RAW_REGION_BYTES: usize = 16;
/// A token is 26 ASCII characters; some room for surrounding whitespace.
const RAW_TOKEN_BYTES: usize = 64;
/// Tags, lengths and fields added to the protocol later.
const MESSAGE_SLACK_BYTES: usize = 4096;

fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

/// A length-delimited protobuf field (string or message) of `n` bytes.
fn delimited(n: usize) -> usize {
    1 + varint_len(n) + n
}

/// A protobuf enum field at its longest (a negative int32 is 10 bytes).
const ENUM_FIELD: usize = 11;

/// The largest legal `Field` of a Tokenize request, encoded: every part at
/// its longest, whichever kind it is.
pub fn max_field_bytes() -> usize {
    let address = (7 + MAX_STREET_LINES) * delimited(RAW_PART_BYTES);
    ENUM_FIELD // kind
        + delimited(MAX_VALUE_BYTES)
        + delimited(RAW_REGION_BYTES)
        + ENUM_FIELD // scheme
        + delimited(address)
}

/// The largest legal request (and the bound for responses): a Tokenize of
/// `max_batch_items` fields at their longest, or a Detokenize of as many
/// tokens, plus purpose, justification and slack. Derived from the value
/// validators' bounds, not tonic's 4 MiB default.
pub fn max_message_bytes(max_batch_items: usize) -> usize {
    let tokenize = max_batch_items * delimited(max_field_bytes()) + delimited(Purpose::MAX_LEN);
    let detokenize = max_batch_items * delimited(RAW_TOKEN_BYTES)
        + delimited(Purpose::MAX_LEN)
        + delimited(Justification::MAX_LEN);
    tokenize.max(detokenize) + MESSAGE_SLACK_BYTES
}

/// `[limits]` resolved into the numbers the server runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub max_connections: usize,
    pub max_connections_per_identity: usize,
    pub max_pending_handshakes: usize,
    pub max_handshakes_per_ip: usize,
    pub max_concurrent_streams: u32,
    pub stream_window_bytes: u32,
    pub connection_window_bytes: u32,
    pub max_message_bytes: usize,
    pub max_request_bytes_per_identity: u64,
    pub max_request_bytes: u64,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
    pub handshake_timeout: Duration,
    pub refusal_log_lines_per_minute: u32,
    pub tls_min_version: TlsMinVersion,
    pub identity_from_cn: bool,
    /// The soft RLIMIT_NOFILE the connection cap was checked against.
    pub nofile_soft_limit: Option<u64>,
}

fn field_err(field: &'static str, reason: String) -> ConfigError {
    ConfigError::Field { field, reason }
}

/// The soft limit on open files, if the platform tells it.
pub fn nofile_soft_limit() -> Option<u64> {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .ok()
        .map(|(soft, _hard)| soft)
}

impl Resolved {
    /// Resolves `config.limits` against `max_batch_items` and the process's
    /// file-descriptor limit (`nofile_soft_limit`, `None` if unknown).
    pub fn new(config: &Config, nofile_soft_limit: Option<u64>) -> Result<Self, ConfigError> {
        let l = &config.limits;
        let fd_room = nofile_soft_limit.map(|soft| soft.saturating_sub(RESERVED_FDS));
        let max_connections = match (l.max_connections, fd_room) {
            (Some(n), Some(room)) if n as u64 > room => {
                return Err(field_err(
                    "limits.max_connections",
                    format!(
                        "{n} does not fit under the file-descriptor limit (RLIMIT_NOFILE {} \
                         less {RESERVED_FDS} for the server itself): lower it or raise \
                         the limit (LimitNOFILE= in systemd, ulimit -n)",
                        nofile_soft_limit.unwrap_or_default()
                    ),
                ))
            }
            (Some(n), _) => n,
            (None, Some(room)) => DEFAULT_MAX_CONNECTIONS.min(room as usize),
            (None, None) => DEFAULT_MAX_CONNECTIONS,
        };
        if max_connections == 0 {
            return Err(field_err(
                "limits.max_connections",
                format!(
                    "the file-descriptor limit (RLIMIT_NOFILE {}) leaves no room for \
                     connections: raise it",
                    nofile_soft_limit.unwrap_or_default()
                ),
            ));
        }
        let max_connections_per_identity = l.max_connections_per_identity.min(max_connections);
        let max_pending_handshakes = match l.max_pending_handshakes {
            Some(n) if n >= max_connections => {
                return Err(field_err(
                    "limits.max_pending_handshakes",
                    format!(
                        "{n} must be below limits.max_connections ({max_connections}), so \
                         connections that finished their handshake keep slots"
                    ),
                ))
            }
            Some(n) => n,
            None => DEFAULT_MAX_PENDING_HANDSHAKES.min((max_connections / 4).max(1)),
        };
        let max_handshakes_per_ip = l.max_handshakes_per_ip.min(max_pending_handshakes);
        let max_message_bytes = max_message_bytes(config.max_batch_items);
        let message = max_message_bytes as u64;
        let per_identity = match l.max_request_bytes_per_identity {
            Some(n) if n < message => {
                return Err(field_err(
                    "limits.max_request_bytes_per_identity",
                    format!(
                        "{n} is below the largest legal message ({message} bytes for \
                         max_batch_items = {})",
                        config.max_batch_items
                    ),
                ))
            }
            Some(n) => n,
            None => DEFAULT_REQUEST_BYTES_PER_IDENTITY.max(message),
        };
        let total = match l.max_request_bytes {
            Some(n) if n < per_identity => {
                return Err(field_err(
                    "limits.max_request_bytes",
                    format!("{n} is below limits.max_request_bytes_per_identity ({per_identity})"),
                ))
            }
            Some(n) => n,
            None => DEFAULT_REQUEST_BYTES.max(per_identity),
        };
        Ok(Self {
            max_connections,
            max_connections_per_identity,
            max_pending_handshakes,
            max_handshakes_per_ip,
            max_concurrent_streams: l.max_concurrent_streams,
            stream_window_bytes: l.stream_window_bytes,
            connection_window_bytes: l.connection_window_bytes,
            max_message_bytes,
            max_request_bytes_per_identity: per_identity,
            max_request_bytes: total,
            request_timeout: Duration::from_secs(l.request_timeout_secs),
            idle_timeout: Duration::from_secs(l.idle_timeout_secs),
            keepalive_interval: (l.keepalive_interval_secs > 0)
                .then(|| Duration::from_secs(l.keepalive_interval_secs)),
            keepalive_timeout: Duration::from_secs(l.keepalive_timeout_secs),
            handshake_timeout: Duration::from_secs(l.handshake_timeout_secs),
            refusal_log_lines_per_minute: l.refusal_log_lines_per_minute,
            tls_min_version: config.tls_options.min_version,
            identity_from_cn: config.tls_options.identity_from_cn,
            nofile_soft_limit,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain counters behind,
    // still consistent enough to go on with.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// At most `per_minute` lines a minute; the rest are counted, and the count
/// is handed to the next line that may be logged.
#[derive(Debug)]
pub struct RefusalLog {
    per_minute: u32,
    state: Mutex<LogWindow>,
}

#[derive(Debug)]
struct LogWindow {
    start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl RefusalLog {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            state: Mutex::new(LogWindow {
                start: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)`: log this event, and say that `n` earlier ones were not.
    /// `None`: do not log it (it is counted).
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    /// Takes the count of events not logged so far (for a periodic line, so
    /// a burst that stops is still reported).
    pub fn take_suppressed(&self) -> u64 {
        std::mem::take(&mut lock(&self.state).suppressed)
    }

    /// [`RefusalLog::admit`] at a given time.
    pub fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut w = lock(&self.state);
        let window_over = w
            .start
            .is_none_or(|start| now.saturating_duration_since(start) >= Duration::from_secs(60));
        if window_over {
            w.start = Some(now);
            w.logged = 0;
        }
        if w.logged < self.per_minute {
            w.logged += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

/// Logs a refused connection through `log` at INFO, with the count of the
/// ones not logged before it.
#[macro_export]
#[doc(hidden)]
macro_rules! log_refusal {
    ($log:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $log.admit() {
            tracing::info!(not_logged_before = suppressed, $($arg)+);
        }
    };
}

/// Streams open on one connection, and since when it has had none.
#[derive(Debug)]
pub struct ConnActivity {
    open: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Default for ConnActivity {
    fn default() -> Self {
        Self {
            open: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        }
    }
}

impl ConnActivity {
    /// Counts a stream as open until the guard drops.
    pub fn stream_opened(self: &Arc<Self>) -> StreamGuard {
        // Under the lock, like the decrement in `StreamGuard::drop`, so
        // `idle_since` sees the count and the time together.
        let _since = lock(&self.idle_since);
        self.open.fetch_add(1, Ordering::SeqCst);
        StreamGuard(self.clone())
    }

    /// When the connection last became idle, or `None` while streams are open.
    pub fn idle_since(&self) -> Option<Instant> {
        let since = lock(&self.idle_since);
        (self.open.load(Ordering::SeqCst) == 0).then_some(*since)
    }

    pub fn open_streams(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

/// One open stream; see [`ConnActivity::stream_opened`].
#[derive(Debug)]
pub struct StreamGuard(Arc<ConnActivity>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut since = lock(&self.0.idle_since);
        if self.0.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            *since = Instant::now();
        }
    }
}

/// Connections per identity, and each identity's budget of request bytes.
#[derive(Debug)]
pub struct Identities {
    max_connections: usize,
    budget_bytes: usize,
    map: Mutex<HashMap<String, IdentityEntry>>,
}

#[derive(Debug)]
struct IdentityEntry {
    connections: usize,
    budget: Arc<Semaphore>,
}

impl Identities {
    pub fn new(max_connections: usize, budget_bytes: u64) -> Arc<Self> {
        Arc::new(Self {
            max_connections,
            budget_bytes: usize::try_from(budget_bytes)
                .unwrap_or(usize::MAX)
                .min(Semaphore::MAX_PERMITS),
            map: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a connection slot for `identity`, or says how many it holds.
    pub fn enter(self: &Arc<Self>, identity: &str) -> Result<IdentitySlot, usize> {
        let mut map = lock(&self.map);
        let entry = map
            .entry(identity.to_owned())
            .or_insert_with(|| IdentityEntry {
                connections: 0,
                budget: Arc::new(Semaphore::new(self.budget_bytes)),
            });
        if entry.connections >= self.max_connections {
            return Err(entry.connections);
        }
        entry.connections += 1;
        Ok(IdentitySlot {
            registry: self.clone(),
            identity: identity.to_owned(),
            budget: entry.budget.clone(),
        })
    }

    /// Open connections of `identity`.
    pub fn connections(&self, identity: &str) -> usize {
        lock(&self.map).get(identity).map_or(0, |e| e.connections)
    }
}

/// One connection of one identity; releases its slot on drop.
#[derive(Debug)]
pub struct IdentitySlot {
    registry: Arc<Identities>,
    identity: String,
    budget: Arc<Semaphore>,
}

impl IdentitySlot {
    /// The identity's budget of announced request bytes.
    pub fn budget(&self) -> Arc<Semaphore> {
        self.budget.clone()
    }
}

impl Drop for IdentitySlot {
    fn drop(&mut self) {
        let mut map = lock(&self.registry.map);
        if let Some(entry) = map.get_mut(&self.identity) {
            entry.connections = entry.connections.saturating_sub(1);
            if entry.connections == 0 {
                map.remove(&self.identity);
            }
        }
    }
}

/// Whether a caller has any rule in the policy in force (see
/// [`GuardLayer::with_rule_check`]).
pub type RuleCheck = Arc<dyn Fn(&crate::domain::CallerId) -> bool + Send + Sync>;

/// The tower layer that enforces the byte budget and counts open streams.
#[derive(Clone)]
pub struct GuardLayer {
    total: Arc<Semaphore>,
    /// The budget of callers no policy rule names (and of certificates
    /// that name no identity), shared by all of them: one largest message.
    /// They can be refused only, so they never take from `total`, and any
    /// number of them cannot starve the callers the policy knows.
    unprivileged: Arc<Semaphore>,
    rule_check: Option<RuleCheck>,
    max_message_bytes: usize,
    /// A call that has not answered within this long gets
    /// DEADLINE_EXCEEDED (`limits.request_timeout_secs`).
    request_timeout: Option<Duration>,
}

impl std::fmt::Debug for GuardLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardLayer")
            .field("total_available", &self.total.available_permits())
            .field(
                "unprivileged_available",
                &self.unprivileged.available_permits(),
            )
            .field("rule_check", &self.rule_check.is_some())
            .field("max_message_bytes", &self.max_message_bytes)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl GuardLayer {
    pub fn new(total_bytes: u64, max_message_bytes: usize) -> Self {
        Self {
            total: Arc::new(Semaphore::new(
                usize::try_from(total_bytes)
                    .unwrap_or(usize::MAX)
                    .min(Semaphore::MAX_PERMITS),
            )),
            unprivileged: Arc::new(Semaphore::new(
                (max_message_bytes + 5).min(Semaphore::MAX_PERMITS),
            )),
            rule_check: None,
            max_message_bytes,
            request_timeout: None,
        }
    }

    /// Callers for whom `has_rules` is false (the policy names them in no
    /// rule, so every call of theirs is refused) draw from a small budget
    /// of their own instead of the shared one: a handful of certificates
    /// with no rights can no longer hold every byte of
    /// `limits.max_request_bytes`. Without a check every caller counts as
    /// known (the bench's ceiling has no policy).
    pub fn with_rule_check(mut self, has_rules: RuleCheck) -> Self {
        self.rule_check = Some(has_rules);
        self
    }

    /// Answers DEADLINE_EXCEEDED to a call that has not answered within
    /// `timeout` (tonic's own `Server::timeout` answers CANCELLED).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }
}

impl<S> tower_layer::Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`GuardLayer`].
#[derive(Clone, Debug)]
pub struct Guard<S> {
    inner: S,
    layer: GuardLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower_service::Service<http::Request<Body>> for Guard<S>
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
        let peer = req.extensions().get::<crate::tls::Peer>().cloned();
        let stream = peer.as_ref().map(|p| p.activity().stream_opened());
        let identity = peer.as_ref().and_then(|p| p.budget());
        let layer = self.layer.clone();
        let known = match (&layer.rule_check, peer.as_ref().map(|p| p.caller())) {
            (None, _) => true,
            (Some(has_rules), Some(Ok(caller))) => has_rules(&caller),
            (Some(_), _) => false,
        };
        let pool = if known {
            layer.total.clone()
        } else {
            layer.unprivileged.clone()
        };
        let req = req.map(|body| {
            Body::new(BudgetedBody {
                inner: body,
                header: [0; 5],
                header_len: 0,
                body_left: 0,
                held: 0,
                permits: Vec::new(),
                identity,
                total: pool,
                known,
                max_message_bytes: layer.max_message_bytes,
            })
        });
        // The service that was polled ready is the one called.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let timeout = self.layer.request_timeout;
        Box::pin(async move {
            let call = inner.call(req);
            let response = match timeout {
                Some(limit) => match tokio::time::timeout(limit, call).await {
                    Ok(response) => response?,
                    Err(_) => {
                        return Ok(Status::deadline_exceeded(format!(
                            "the call did not finish within limits.request_timeout_secs ({}s)",
                            limit.as_secs()
                        ))
                        .into_http())
                    }
                },
                None => call.await?,
            };
            Ok(response.map(|body| {
                Body::new(TrackedBody {
                    inner: body,
                    _stream: stream,
                })
            }))
        })
    }
}

/// A request body that takes budget for each message its prefix announces
/// before passing the prefix on.
struct BudgetedBody {
    inner: Body,
    header: [u8; 5],
    header_len: usize,
    body_left: usize,
    /// Bytes held from the budgets: the largest message announced so far
    /// (tonic's buffer grows to it and stays).
    held: usize,
    permits: Vec<OwnedSemaphorePermit>,
    identity: Option<Arc<Semaphore>>,
    total: Arc<Semaphore>,
    /// `total` is the shared pool of the callers the policy knows (false:
    /// the small pool of callers it names in no rule).
    known: bool,
    max_message_bytes: usize,
}

impl BudgetedBody {
    /// Walks the gRPC framing in `data`; takes budget for each prefix.
    fn account(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(data.len());
                self.body_left -= n;
                data.advance(n);
                continue;
            }
            let n = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            data.advance(n);
            if self.header_len < 5 {
                continue;
            }
            self.header_len = 0;
            let len = u32::from_be_bytes([
                self.header[1],
                self.header[2],
                self.header[3],
                self.header[4],
            ]) as usize;
            self.body_left = len;
            // Longer than any service accepts: tonic refuses it (OUT_OF_RANGE)
            // without reserving anything.
            if len > self.max_message_bytes {
                continue;
            }
            let need = len + 5;
            if need > self.held {
                self.reserve(need - self.held)?;
                self.held = need;
            }
        }
        Ok(())
    }

    fn reserve(&mut self, extra: usize) -> Result<(), Status> {
        let n = u32::try_from(extra).unwrap_or(u32::MAX);
        if let Some(identity) = &self.identity {
            let permit = identity.clone().try_acquire_many_owned(n).map_err(|_| {
                Status::resource_exhausted(
                    "this identity's requests in progress hold all the bytes \
                     limits.max_request_bytes_per_identity allows; retry later",
                )
            })?;
            self.permits.push(permit);
        }
        let known = self.known;
        let permit = self.total.clone().try_acquire_many_owned(n).map_err(|_| {
            Status::resource_exhausted(if known {
                "requests in progress hold all the bytes limits.max_request_bytes \
                 allows; retry later"
            } else {
                "callers the policy names in no rule share a budget of one largest \
                 message, which requests in progress hold; retry later"
            })
        })?;
        self.permits.push(permit);
        Ok(())
    }
}

impl HttpBody for BudgetedBody {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, Status>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            if let Err(status) = self.account(data) {
                return Poll::Ready(Some(Err(status)));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its stream counted as open until it is done.
struct TrackedBody {
    inner: Body,
    _stream: Option<StreamGuard>,
}

impl HttpBody for TrackedBody {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
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
    use super::*;

    #[test]
    fn the_message_bound_grows_with_the_batch_and_holds_the_largest_legal_batch() {
        let one = max_message_bytes(1);
        let thousand = max_message_bytes(1000);
        assert!(one < thousand);
        // 1000 addresses of 15 parts at 256 normalised bytes cannot fit in
        // tonic's 4 MiB default; the bound is derived, not that default.
        assert!(thousand > 1000 * 15 * MAX_PART_BYTES);
        assert!(thousand > 4 * 1024 * 1024);
        assert!(thousand < 16 * 1024 * 1024, "{thousand}");
    }

    #[test]
    fn refusal_logging_is_capped_per_minute_and_counts_what_it_skipped() {
        let log = RefusalLog::new(2);
        let t0 = Instant::now();
        assert_eq!(log.admit_at(t0), Some(0));
        assert_eq!(log.admit_at(t0), Some(0));
        assert_eq!(log.admit_at(t0 + Duration::from_secs(1)), None);
        assert_eq!(log.admit_at(t0 + Duration::from_secs(59)), None);
        assert_eq!(log.admit_at(t0 + Duration::from_secs(60)), Some(2));
        assert_eq!(log.admit_at(t0 + Duration::from_secs(61)), Some(0));
        assert_eq!(log.admit_at(t0 + Duration::from_secs(62)), None);
        assert_eq!(log.take_suppressed(), 1);
        assert_eq!(log.take_suppressed(), 0);
    }

    #[test]
    fn an_identity_gets_no_more_connections_than_its_cap_and_slots_come_back() {
        let ids = Identities::new(2, 1024);
        let a = ids.enter("a");
        let b = ids.enter("a");
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(ids.enter("a").err(), Some(2));
        assert!(ids.enter("b").is_ok(), "another identity is not affected");
        drop(a);
        assert!(ids.enter("a").is_ok());
    }

    #[test]
    fn a_prefix_takes_budget_for_the_length_it_announces_and_refuses_past_it() {
        let identity = Arc::new(Semaphore::new(100));
        let mut body = BudgetedBody {
            inner: Body::empty(),
            header: [0; 5],
            header_len: 0,
            body_left: 0,
            held: 0,
            permits: Vec::new(),
            identity: Some(identity.clone()),
            total: Arc::new(Semaphore::new(1000)),
            known: true,
            max_message_bytes: 1 << 20,
        };
        // A prefix split over two frames announcing 60 bytes, one byte of it.
        assert!(body.account(&[0, 0, 0]).is_ok());
        assert_eq!(identity.available_permits(), 100);
        assert!(body.account(&[0, 60, 7]).is_ok());
        assert_eq!(identity.available_permits(), 35);
        // The rest of it, then a second message of 140: 145 needed, 65 held,
        // 35 left.
        assert!(body.account(&[7; 59]).is_ok());
        let err = body.account(&[0, 0, 0, 0, 140]).err();
        assert_eq!(err.map(|s| s.code()), Some(tonic::Code::ResourceExhausted));
        drop(body);
        assert_eq!(identity.available_permits(), 100, "dropping returns it all");
    }
}
