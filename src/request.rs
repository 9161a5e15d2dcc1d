//! One request id per call, made at the edge: every gRPC request gets a
//! random UUID before any other layer sees it. The id is a request
//! extension ([`RequestId`]) the services hand to the vault (so the call's
//! audit event carries it), the `x-request-id` of the answer, and a field
//! of the `call` span every log line of the call is written under. The
//! layer also counts the calls in flight, which a drain reports.
//!
//! Every answer carries the id: the services set `x-request-id`
//! themselves (`grpc::service::answer`); an answer without it (a method
//! path no service defines, a refusal of an outer layer) gets it here.
//!
//! A client's own `x-request-id` is not taken: the id names one audit
//! event, so the vault makes it (unique, and never text a client chose).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tracing::Instrument;

/// The id of one call: a random UUID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

/// How many calls are in flight (their answer not yet begun).
#[derive(Clone, Debug, Default)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Counts one call until its answer begins (or the call is dropped).
struct Entered(Arc<AtomicUsize>);

impl Drop for Entered {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// See the module documentation.
#[derive(Clone, Debug, Default)]
pub struct RequestLayer {
    in_flight: InFlight,
}

impl RequestLayer {
    pub fn new(in_flight: InFlight) -> Self {
        Self { in_flight }
    }
}

impl<S> tower_layer::Layer<S> for RequestLayer {
    type Service = Requests<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Requests {
            inner,
            in_flight: self.in_flight.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Requests<S> {
    inner: S,
    in_flight: InFlight,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The header every answer carries the call's [`RequestId`] in.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

impl<S, B, RB> tower_service::Service<http::Request<B>> for Requests<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let id = RequestId::new();
        // The RPC's path (`/fieldvault.v1.Vault/Tokenize`; a path no
        // service serves is answered UNIMPLEMENTED and logged as sent,
        // bounded by the header list limit) as a string value: quoted and
        // escaped in text logs (a client picks it), a plain string in JSON.
        let span = tracing::info_span!("call", request_id = %id.0, rpc = req.uri().path());
        // A UUID is a valid header value.
        let header = http::HeaderValue::from_str(&id.0).ok();
        req.extensions_mut().insert(id);
        self.in_flight.0.fetch_add(1, Ordering::SeqCst);
        let entered = Entered(self.in_flight.0.clone());
        let call = self.inner.call(req);
        Box::pin(
            async move {
                let mut answer = call.await;
                drop(entered);
                if let (Ok(response), Some(header)) = (answer.as_mut(), header) {
                    // The services' answers have it already: not twice.
                    let headers = response.headers_mut();
                    if !headers.contains_key(REQUEST_ID_HEADER) {
                        headers.insert(REQUEST_ID_HEADER, header);
                    }
                }
                answer
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_distinct_uuids() {
        let a = RequestId::new();
        let b = RequestId::new();
        assert_ne!(a, b);
        assert!(uuid::Uuid::parse_str(&a.0).is_ok());
    }
}
