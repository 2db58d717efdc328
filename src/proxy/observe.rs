//! Per-request metrics, the one log line of each refused write (at most
//! [`REJECTION_LINES_PER_SEC`] a second, then a count of the suppressed), and hot-spot counting, read
//! from the response: the guard's [`Rejection`] in its extensions says what happened, so
//! nothing is derived twice.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use metrics::SharedString;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::hotspots::Hotspots;
use super::log_budget::{Admit, LogBudget, REJECTION_LINES_PER_SEC};
use super::request_id::RequestId;
use super::router::Target;
use crate::guard::{FailedOpen, MAX_ECHO_BYTES, Rejection, RejectionKind, RouteContext, bounded};
use crate::telemetry::{self, RouteMetrics, method_label, status_class};

/// Applies [`Observe`].
#[derive(Debug, Clone, Default)]
pub struct ObserveLayer {
    hotspots: Option<Hotspots>,
}

impl ObserveLayer {
    /// Observes requests, counting conflicts in `hotspots` if given.
    pub fn new(hotspots: Option<Hotspots>) -> Self {
        Self { hotspots }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            hotspots: self.hotspots.clone(),
        }
    }
}

/// Records each routed request's outcome. Sits below the router (it needs the route).
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    hotspots: Option<Hotspots>,
}

impl<S, B, RB> Service<Request<B>> for Observe<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let seen = Seen {
            route: req.extensions().get::<RouteContext>().map(|c| c.id.clone()),
            metrics: req.extensions().get::<Target>().map(|t| t.metrics.clone()),
            method: method_label(req.method()),
            request_id: req.extensions().get::<RequestId>().cloned(),
            hotspots: self.hotspots.clone(),
        };
        ObserveFuture {
            inner: self.inner.call(req),
            seen: Some(seen),
        }
    }
}

/// What the request looked like, kept for its response.
struct Seen {
    route: Option<Arc<str>>,
    /// The route's metric handles (none: not routed by the router, so looked up by name).
    metrics: Option<Arc<RouteMetrics>>,
    method: &'static str,
    request_id: Option<RequestId>,
    hotspots: Option<Hotspots>,
}

impl Seen {
    fn route_label(&self) -> SharedString {
        match &self.route {
            // An Arc clone: no allocation per request.
            Some(route) => SharedString::from(route.clone()),
            None => SharedString::const_str(""),
        }
    }

    fn record(self, status: &'static str, rejection: Option<&Rejection>) {
        match &self.metrics {
            Some(handles) => handles.request(self.method, status).increment(1),
            None => metrics::counter!(
                telemetry::REQUESTS,
                "route" => self.route_label(),
                "method" => self.method,
                "status" => status
            )
            .increment(1),
        }
        if let Some(rejection) = rejection {
            self.rejected(rejection);
        }
    }

    fn rejected(&self, rejection: &Rejection) {
        // Below the info level no line is written, so none is counted against the budget.
        let admit = if tracing::enabled!(tracing::Level::INFO) {
            LogBudget::rejections().admit()
        } else {
            Admit::Suppress
        };
        match admit {
            Admit::Log { suppressed } => {
                if suppressed > 0 {
                    tracing::info!(
                        suppressed,
                        per_sec = REJECTION_LINES_PER_SEC,
                        "write rejected lines suppressed (counted in /metrics)"
                    );
                }
                self.log_rejection(rejection);
            }
            Admit::Suppress => {}
        }
        match rejection.kind {
            RejectionKind::PreconditionRequired => {
                let label = self.route_label();
                metrics::counter!(telemetry::PRECONDITION_REQUIRED, "route" => label).increment(1);
            }
            RejectionKind::MalformedPrecondition => {
                let label = self.route_label();
                metrics::counter!(telemetry::MALFORMED_PRECONDITION, "route" => label).increment(1);
            }
            _ if rejection.is_conflict() => {
                let reason = rejection.kind.slug();
                match self.metrics.as_ref().and_then(|m| m.conflict(reason)) {
                    Some(counter) => counter.increment(1),
                    None => metrics::counter!(
                        telemetry::CONFLICTS,
                        "route" => self.route_label(),
                        "reason" => reason
                    )
                    .increment(1),
                }
                if let (Some(hotspots), Some(route)) = (&self.hotspots, &self.route) {
                    hotspots.record(route, &rejection.instance);
                }
            }
            _ => {}
        }
    }
}

impl Seen {
    /// The one line of a refused write. Client input in it (resource, sent) is bounded by the
    /// [`Rejection`]; the upstream's tag is bounded here.
    fn log_rejection(&self, rejection: &Rejection) {
        let route = self.route.as_deref().unwrap_or("");
        let current = rejection
            .current_etag
            .as_ref()
            .map_or_else(|| "unknown".to_owned(), ToString::to_string);
        tracing::info!(
            route,
            resource = %rejection.instance,
            sent = rejection.sent.as_deref().unwrap_or("none"),
            current = %bounded(&current, MAX_ECHO_BYTES),
            reason = rejection.kind.slug(),
            status = rejection.status.as_u16(),
            request_id = self.request_id.as_ref().map_or("", RequestId::as_str),
            "write rejected"
        );
    }
}

pin_project! {
    /// The inner response, observed when it completes.
    pub struct ObserveFuture<F> {
        #[pin]
        inner: F,
        seen: Option<Seen>,
    }
}

impl<F, RB, E> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Some(seen) = this.seen.take() {
            match &result {
                Ok(response) => {
                    if response.extensions().get::<FailedOpen>().is_some() {
                        let route = seen.route_label();
                        metrics::counter!(telemetry::STORE_FAILED_OPEN, "route" => route)
                            .increment(1);
                    }
                    seen.record(
                        status_class(response.status()),
                        response.extensions().get::<Rejection>(),
                    )
                }
                // The rescue layer above turns every escaped error into a 502 or 504.
                Err(_) => seen.record("5xx", None),
            }
        }
        Poll::Ready(result)
    }
}
