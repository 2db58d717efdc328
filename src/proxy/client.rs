//! The pooled upstream client: a tower service that sends a request and waits, bounded, for the
//! upstream's response headers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{self, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pin_project_lite::pin_project;
use tower::Service;

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
    Connect(#[source] legacy::Error),
    /// The response headers did not arrive in time.
    #[error("upstream sent no response within {0:?}")]
    Timeout(Duration),
    /// The connection failed after it was made (reset, closed early, malformed response).
    #[error("upstream request failed")]
    Request(#[source] legacy::Error),
    /// The client did not send its request body within `server.body_read_timeout`.
    #[error("the client's request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    /// The request could not be addressed to an upstream (a bug, not a network failure).
    #[error("cannot address the upstream request: {0}")]
    Internal(&'static str),
}

/// A pooled HTTP/1.1 client to the upstreams, as a tower service.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    client: Client<HttpConnector, TimedBody>,
    response_timeout: Duration,
    body_read_timeout: Duration,
}

impl UpstreamClient {
    /// A client with the connect and response timeouts and pool limits of `server`.
    pub fn new(server: &ServerConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(server.connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(server.pool_idle_timeout)
            .pool_max_idle_per_host(server.pool_max_idle_per_host)
            .build(connector);
        Self {
            client,
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
        // guard answers the client at the response timeout itself.
        let timeout = req
            .extensions()
            .get::<UpstreamDeadline>()
            .map_or(self.response_timeout, |deadline| deadline.0);
        let req = req.map(|body| TimedBody::new(body, body_read_timeout));
        ResponseFuture {
            inner: tokio::time::timeout(timeout, self.client.request(req)),
            timeout,
            body_read_timeout,
            started: Instant::now(),
            route,
        }
    }
}

pin_project! {
    /// The upstream's response, or why there is none.
    pub struct ResponseFuture {
        #[pin]
        inner: tokio::time::Timeout<legacy::ResponseFuture>,
        timeout: Duration,
        body_read_timeout: Duration,
        started: Instant,
        route: Option<Arc<RouteMetrics>>,
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<Incoming>, UpstreamError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Some(route) = this.route.take() {
            route
                .upstream_duration()
                .record(this.started.elapsed().as_secs_f64());
        }
        Poll::Ready(match result {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) if e.is_connect() => Err(UpstreamError::Connect(e)),
            Ok(Err(e)) if BodyTimedOut::caused(&e) => {
                Err(UpstreamError::BodyTimeout(*this.body_read_timeout))
            }
            Ok(Err(e)) => Err(UpstreamError::Request(e)),
            Err(_elapsed) => Err(UpstreamError::Timeout(*this.timeout)),
        })
    }
}
