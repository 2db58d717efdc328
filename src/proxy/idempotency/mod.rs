//! `Idempotency-Key` enforced in front of an API that does not implement it
//! (draft-ietf-httpapi-idempotency-key-header-07): a retried POST or PATCH is answered with the
//! first attempt's response instead of being applied twice.
//!
//! Per route (`idempotency = "off" | "optional" | "required"`, for `idempotency_methods`,
//! POST and PATCH by default), a request with the header:
//!
//! 1. **Admit** (no I/O): the key must be one sf-string (draft §2, RFC 8941 §3.3.3), else
//!    400; a `required` route answers a request without one with 400 (draft §2.7).
//! 2. **Buffer** the body, bounded by `idempotency_max_request_bytes` (larger: 413, nothing
//!    taken) and `server.body_read_timeout` (slower: 408, nothing taken), and fingerprint
//!    method, target and body (draft §2.4). A client that goes away meanwhile took nothing.
//! 3. **Take the key** in the records store (one atomic step, also across replicas on Redis),
//!    for at most the route's hold (every bound of the exchange under it), or find what is
//!    held: the same fingerprint in flight gets 409 with `Retry-After` (draft §2.7); a
//!    different one 422 (draft §2.7); a completed one the recorded response, byte for byte,
//!    with `Idempotency-Replayed: true`, and the upstream never sees it; a completion whose
//!    response was too large to record 409. The store unreachable: the route's
//!    `failure_policy` (closed: 503 + `Retry-After`, nothing forwarded; open: forwarded without
//!    idempotency).
//! 4. **Forward** through the guard below, then, by the status ([`disposition`]): 2xx/3xx/4xx
//!    other than 409, 412, 428 and 429 are **recorded** (for `idempotency_retention`); 409,
//!    412, 428, 429 and a
//!    5xx, a transport error included, **release** the key so a retry goes through; a 504
//!    (the write may still apply upstream) **holds** it until its expiry, so that no retry runs
//!    beside it. This step runs to its end whatever the client does: a client that goes away
//!    after its request was forwarded leaves the rest to a task of its own
//!    ([`Detachable`](crate::guard::Detachable)), so the key is recorded or released only once
//!    the upstream's answer says which, never early.
//!
//! It sits below the router (it needs the route's policy and key headers) and above the guard
//! (a replay must reach neither the guard nor the upstream).

mod exchange;
mod response;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use http::{Request, Response, StatusCode};
use http_body::Body;
use tower::{Layer, Service};

use super::discard::ClientBody;
use crate::guard::{
    IdempotencyMode, Rejection, RejectionKind, ResponseBody, RouteContext, ShortCircuit,
};
use crate::idempotency::{HEADER, parse_key};
use crate::store::idempotency::IdempotencyStore;

/// Applies [`Idempotency`].
#[derive(Debug, Clone)]
pub struct IdempotencyLayer<R> {
    records: R,
    body_read_timeout: Duration,
}

impl<R> IdempotencyLayer<R> {
    /// Keeps records in `records`; a request body must arrive within `body_read_timeout`
    /// (`server.body_read_timeout`) to be fingerprinted.
    pub fn new(records: R, body_read_timeout: Duration) -> Self {
        Self {
            records,
            body_read_timeout,
        }
    }
}

impl<S, R: Clone> Layer<S> for IdempotencyLayer<R> {
    type Service = Idempotency<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency {
            inner,
            records: self.records.clone(),
            body_read_timeout: self.body_read_timeout,
        }
    }
}

/// Makes requests with an `Idempotency-Key` idempotent. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Idempotency<S, R> {
    inner: S,
    records: R,
    body_read_timeout: Duration,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The inner service's future, a boxed idempotent exchange, or an answer made at once.
pub type IdempotencyFuture<F, T, E> = ShortCircuit<Either<F, BoxFuture<Result<T, E>>>, T>;

impl<S, R, B, RB> Service<Request<ClientBody<B>>> for Idempotency<S, R>
where
    S: Service<Request<ClientBody<B>>, Response = Response<ResponseBody<RB>>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: IdempotencyStore,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = IdempotencyFuture<S::Future, S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ClientBody<B>>) -> Self::Future {
        let route = match req.extensions().get::<RouteContext>() {
            Some(route) if route.policy.idempotency.applies_to(req.method()) => route.clone(),
            _ => return ShortCircuit::called(Either::Left(self.inner.call(req))),
        };
        let instance = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let values = req.headers().get_all(HEADER).iter().map(|v| v.as_bytes());
        let key = match parse_key(values) {
            Ok(Some(key)) => key,
            Ok(None) if route.policy.idempotency.mode == IdempotencyMode::Required => {
                let detail = format!(
                    "{} to this resource requires an Idempotency-Key header (a unique \
                     sf-string per operation, e.g. Idempotency-Key: \"8e03978e-40d5-43e8\"), \
                     reused only to retry the same request",
                    req.method()
                );
                let rejection = Rejection::new(
                    RejectionKind::IdempotencyKeyMissing,
                    StatusCode::BAD_REQUEST,
                    instance,
                    detail,
                );
                return ShortCircuit::answered(rejection.into_response());
            }
            Ok(None) => return ShortCircuit::called(Either::Left(self.inner.call(req))),
            Err(error) => {
                let rejection = Rejection::new(
                    RejectionKind::IdempotencyKeyMalformed,
                    StatusCode::BAD_REQUEST,
                    instance,
                    format!("{error} (draft-ietf-httpapi-idempotency-key-header §2)"),
                );
                return ShortCircuit::answered(rejection.into_response());
            }
        };
        // The readied service serves this request; the clone waits for the next poll_ready.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let exchange = exchange::Exchange {
            inner,
            records: self.records.clone(),
            route: route.id,
            policy: Arc::clone(&route.policy),
            key,
            body_read_timeout: self.body_read_timeout,
        };
        ShortCircuit::called(Either::Right(Box::pin(exchange.run(req))))
    }
}
