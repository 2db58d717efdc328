//! The admin listener: health, readiness, Prometheus metrics, and the resource API.
//!
//! | endpoint | |
//! |---|---|
//! | `GET /healthz` | the process answers (open, for probes) |
//! | `GET /readyz` | config loaded, upstreams accept connections, store answers (open) |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /admin/resources?path=..[&route=..][&host=..]` | what is known about a resource |
//! | `DELETE /admin/resources?...` | forget it: its next write revalidates |
//! | `GET /admin/hotspots?n=10` | the resources with the most conflicts |
//! | `GET /admin/idempotency?route=..&key=..` | what is held for an `Idempotency-Key` |
//!
//! With a token configured, `/metrics` and `/admin/*` require `Authorization: Bearer <token>`.
//! Answers are JSON; errors are problem+json. It never shares the data plane's port.

mod auth;
mod health;
mod hotspots;
mod idempotency;
pub mod prometheus;
mod reply;
mod resources;

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

pub use auth::Token;
pub use reply::AdminBody;

use crate::proxy::{Hotspots, Routes};
use crate::serve::{ServeError, local_addr, serve_with_defaults};
use crate::store::idempotency::{AnyRecords, IdempotencyStore};
use crate::store::{MemoryStore, Store};

/// What the admin API serves: each part is optional, so a bare health endpoint is
/// `Admin::<MemoryStore>::default()`.
#[derive(Debug, Clone)]
pub struct Admin<St = MemoryStore> {
    token: Option<Token>,
    routes: Option<Routes>,
    store: Option<St>,
    hotspots: Option<Hotspots>,
    records: Option<AnyRecords>,
    metrics: Option<PrometheusHandle>,
    probe_timeout: Duration,
}

impl<St> Default for Admin<St> {
    fn default() -> Self {
        Self {
            token: None,
            routes: None,
            store: None,
            hotspots: None,
            records: None,
            metrics: None,
            probe_timeout: Duration::from_secs(1),
        }
    }
}

impl<St: Store> Admin<St> {
    /// Requires `token` for `/metrics` and `/admin/*`.
    #[must_use]
    pub fn token(mut self, token: Option<Token>) -> Self {
        self.token = token;
        self
    }

    /// Readiness probes and resource lookups use these routes.
    #[must_use]
    pub fn routes(mut self, routes: Routes) -> Self {
        self.routes = Some(routes);
        self
    }

    /// Inspect and purge this store.
    #[must_use]
    pub fn store(mut self, store: St) -> Self {
        self.store = Some(store);
        self
    }

    /// List these hot spots.
    #[must_use]
    pub fn hotspots(mut self, hotspots: Hotspots) -> Self {
        self.hotspots = Some(hotspots);
        self
    }

    /// Look up `Idempotency-Key` records in `records`.
    #[must_use]
    pub fn records(mut self, records: AnyRecords) -> Self {
        self.records = Some(records);
        self
    }

    /// Render this recorder on `/metrics`.
    #[must_use]
    pub fn metrics(mut self, handle: Option<PrometheusHandle>) -> Self {
        self.metrics = handle;
        self
    }

    /// The longest wait for each readiness probe.
    #[must_use]
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.probe_timeout = timeout;
        self
    }

    async fn respond(&self, req: Request<Incoming>) -> Response<AdminBody> {
        let method = req.method();
        let path = req.uri().path();
        let query = req.uri().query().unwrap_or("");
        let allowed: &[Method] = match path {
            "/healthz" | "/readyz" | "/metrics" | "/admin/hotspots" | "/admin/idempotency" => {
                &[Method::GET, Method::HEAD]
            }
            "/admin/resources" => &[Method::GET, Method::HEAD, Method::DELETE],
            _ => {
                return reply::problem(
                    StatusCode::NOT_FOUND,
                    "not-found",
                    "no such admin endpoint",
                );
            }
        };
        if !allowed.contains(method) {
            return method_not_allowed(allowed);
        }
        let open = matches!(path, "/healthz" | "/readyz");
        if let (false, Some(token)) = (open, &self.token) {
            if !token.admits(req.headers()) {
                return unauthorized();
            }
        }
        match path {
            "/healthz" => health::healthz(),
            "/readyz" => {
                health::readyz(
                    self.routes.as_ref(),
                    self.store.as_ref(),
                    self.probe_timeout,
                )
                .await
            }
            "/metrics" => self.render_metrics(),
            "/admin/hotspots" => hotspots::list(self.hotspots.as_ref(), query),
            "/admin/idempotency" => {
                idempotency::handle(query, self.routes.as_ref(), self.records.as_ref()).await
            }
            _ => resources::handle(method, query, self.routes.as_ref(), self.store.as_ref()).await,
        }
    }

    fn render_metrics(&self) -> Response<AdminBody> {
        if let Some(stats) = self.store.as_ref().and_then(Store::stats) {
            prometheus::publish_store(stats);
        }
        if let Some(stats) = self.records.as_ref().and_then(IdempotencyStore::stats) {
            prometheus::publish_records(stats);
        }
        let text = self
            .metrics
            .as_ref()
            .map(PrometheusHandle::render)
            .unwrap_or_default();
        reply::with_type(
            StatusCode::OK,
            text,
            "text/plain; version=0.0.4; charset=utf-8",
        )
    }
}

fn method_not_allowed(allowed: &[Method]) -> Response<AdminBody> {
    let list = allowed
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let mut response = reply::problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        &format!("allowed: {list}"),
    );
    if let Ok(value) = HeaderValue::from_str(&list) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

fn unauthorized() -> Response<AdminBody> {
    let mut response = reply::problem(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "this endpoint requires Authorization: Bearer <admin token>",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"ifmatch-admin\""),
    );
    response
}

/// Serves the admin API on `listener` until `shutdown`.
///
/// # Errors
/// None yet; the signature leaves room for listeners that can fail.
pub async fn serve_admin<St: Store>(
    listener: TcpListener,
    admin: Admin<St>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    tracing::info!(
        addr = %local_addr(&listener),
        token = admin.token.is_some(),
        "admin listening"
    );
    // Without scrapes, histogram samples would pile up: compact them now and then.
    let upkeep = admin.metrics.clone().map(|handle| {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(prometheus::UPKEEP_EVERY);
            loop {
                every.tick().await;
                handle.run_upkeep();
            }
        })
    });
    let admin = std::sync::Arc::new(admin);
    let service = tower::service_fn(move |req: Request<Incoming>| {
        let admin = admin.clone();
        async move { Ok::<_, Infallible>(admin.respond(req).await) }
    });
    serve_with_defaults(listener, service, shutdown, Duration::from_secs(1)).await;
    if let Some(upkeep) = upkeep {
        upkeep.abort();
    }
    Ok(())
}
