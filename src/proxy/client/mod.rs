//! The upstream client: a tower service that sends a request over a pooled HTTP/1.1
//! connection ([`pool`]) and waits, bounded, for the upstream's response headers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::task::Unconstrained;
use tokio::time::Sleep;
use tower::Service;

mod pool;
#[cfg(test)]
mod tests;

pub use pool::ConnectError;
use pool::Pool;

use super::discard::ClientBody;
use super::router::Target;
use super::timed_body::{BodyTimedOut, TimedBody};
use crate::config::ServerConfig;
use crate::guard::{RequestBody, UpstreamDeadline};
use crate::telemetry::RouteMetrics;

/// The request the client sends: the client's body, or none for a request the guard makes.
pub type UpstreamRequest = Request<RequestBody<ClientBody>>;

/// Why the upstream gave no response. The rescue service turns each into a problem response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable, connect timeout).
    #[error("cannot connect to upstream")]
    Connect(#[source] ConnectError),
    /// The response headers did not arrive in time.
    #[error("upstream sent no response within {0:?}")]
    Timeout(Duration),
    /// The connection failed after it was made (reset, closed early, malformed response).
    #[error("upstream request failed")]
    Request(#[source] hyper::Error),
    /// The client did not send its request body within `server.body_read_timeout`.
    #[error("the client's request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    /// The request could not be addressed to an upstream (a bug, not a network failure).
    #[error("cannot address the upstream request: {0}")]
    Internal(&'static str),
}

/// A pooled HTTP/1.1 client to the upstreams, as a tower service (clones share the pool).
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    pool: Arc<Pool>,
    response_timeout: Duration,
    body_read_timeout: Duration,
}

impl UpstreamClient {
    /// A client with the connect and response timeouts and pool limits of `server`.
    pub fn new(server: &ServerConfig) -> Self {
        Self {
            pool: Arc::new(Pool::new(
                server.pool_max_idle_per_host,
                server.pool_idle_timeout,
                server.connect_timeout,
            )),
            response_timeout: server.response_timeout,
            body_read_timeout: server.body_read_timeout,
        }
    }
}

impl Service<UpstreamRequest> for UpstreamClient {
    type Response = Response<Incoming>;
    type Error = UpstreamError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pool makes connections on demand: there is no back-pressure to wait for.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: UpstreamRequest) -> Self::Future {
        let route = req.extensions().get::<Target>().map(|t| t.metrics.clone());
        let body_read_timeout = self.body_read_timeout;
        // A guarded write's exchange runs to its outcome, whoever stops waiting for it: the
        // guard bounds it by `write_outcome_timeout` itself (and answers the client at the
        // response timeout). A timer of our own with that same bound would race the guard's
        // and win, and the guard would not see that it gave up on the write.
        let deadline = match req.extensions().get::<UpstreamDeadline>() {
            Some(_) => None,
            // Unconstrained, as tokio's own timeout polls its timer: an exchange that spent the
            // task's cooperative budget does not push the deadline back.
            None => Some(tokio::task::unconstrained(tokio::time::sleep(
                self.response_timeout,
            ))),
        };
        let req = req.map(|body| TimedBody::new(body, body_read_timeout));
        let exchange: Exchange = Box::pin(exchange(self.pool.clone(), req));
        ResponseFuture {
            exchange,
            deadline,
            timeout: self.response_timeout,
            body_read_timeout,
            started: Instant::now(),
            route,
        }
    }
}

pin_project! {
    /// The upstream's response, or why there is none.
    pub struct ResponseFuture {
        exchange: Exchange,
        // When the response timeout ends the wait; none for a write the guard bounds.
        #[pin]
        deadline: Option<Unconstrained<Sleep>>,
        timeout: Duration,
        body_read_timeout: Duration,
        started: Instant,
        // Taken when the duration is recorded.
        route: Option<Arc<RouteMetrics>>,
    }

    impl PinnedDrop for ResponseFuture {
        // A write the guard gave up on is dropped unfinished at the guard's bound: its
        // exchange still took that long, and leaving it out would hide the slowest ones.
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if this.deadline.is_none() {
                record_duration(this.route, *this.started);
            }
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<Incoming>, UpstreamError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // `None`: the deadline passed first.
        let result = match this.exchange.as_mut().poll(cx) {
            Poll::Ready(result) => Some(result),
            Poll::Pending => match this.deadline.as_pin_mut().map(|d| d.poll(cx)) {
                Some(Poll::Ready(())) => None,
                _ => return Poll::Pending,
            },
        };
        record_duration(this.route, *this.started);
        Poll::Ready(match result {
            Some(Ok(response)) => Ok(response),
            Some(Err(Failure::Connect(e))) => Err(UpstreamError::Connect(e)),
            Some(Err(Failure::Request(e))) if BodyTimedOut::caused(&e) => {
                Err(UpstreamError::BodyTimeout(*this.body_read_timeout))
            }
            Some(Err(Failure::Request(e))) => Err(UpstreamError::Request(e)),
            Some(Err(Failure::Internal(what))) => Err(UpstreamError::Internal(what)),
            None => Err(UpstreamError::Timeout(*this.timeout)),
        })
    }
}

/// Records the exchange's duration in its route's histogram, once: `route` is taken.
fn record_duration(route: &mut Option<Arc<RouteMetrics>>, started: Instant) {
    if let Some(route) = route.take() {
        route
            .upstream_duration()
            .record(started.elapsed().as_secs_f64());
    }
}

/// One request's way to its response head: a connection, the request sent, the head read.
type Exchange = Pin<Box<dyn Future<Output = Result<Response<Incoming>, Failure>> + Send>>;

/// Why an exchange failed, before the timeouts are known.
enum Failure {
    Connect(ConnectError),
    Request(hyper::Error),
    Internal(&'static str),
}

/// Sends `req` (absolute-form, as addressed) over a kept connection to its upstream, or a new
/// one. A kept connection that the upstream closed before the request was written to it (its
/// keep-alive timeout raced this request) gives the request back, and the next is tried, then
/// a new one: such a request was never sent, so sending it again is safe whatever its method.
async fn exchange(
    pool: Arc<Pool>,
    mut req: Request<TimedBody>,
) -> Result<Response<Incoming>, Failure> {
    let Some(authority) = req.uri().authority().cloned() else {
        return Err(Failure::Internal("the upstream request has no authority"));
    };
    let origin = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(origin);
    while let Some(mut sender) = pool.checkout(&authority) {
        match sender.try_send_request(req).await {
            Ok(response) => {
                pool.checkin(authority, sender);
                return Ok(response);
            }
            Err(mut error) => match error.take_message() {
                Some(unsent) => req = unsent,
                None => return Err(Failure::Request(error.into_error())),
            },
        }
    }
    let mut sender = pool.connect(&authority).await.map_err(Failure::Connect)?;
    match sender.try_send_request(req).await {
        Ok(response) => {
            pool.checkin(authority, sender);
            Ok(response)
        }
        Err(error) => Err(Failure::Request(error.into_error())),
    }
}
