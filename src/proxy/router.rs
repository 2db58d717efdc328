//! Picks a request's route by host and longest path prefix, and tells the layers below which
//! route (for the guard) and which upstream (for forwarding) it belongs to.

use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, header};
use http_body::Body;
use tower::{Layer, Service};

use crate::config::Route;
use crate::guard::ShortCircuit;
use crate::guard::{Rejection, RejectionKind, ResponseBody, RouteContext};
use crate::telemetry::RouteMetrics;

/// Where a routed request goes: put in its extensions next to the guard's [`RouteContext`].
#[derive(Debug, Clone)]
pub struct Target {
    /// The route's id.
    pub route: Arc<str>,
    /// The upstream's authority (http).
    pub upstream: Authority,
    /// Whether the upstream sees the client's `Host`.
    pub preserve_host: bool,
    /// The route's metric handles, shared by its requests.
    pub metrics: Arc<RouteMetrics>,
}

#[derive(Debug)]
struct Entry {
    host: Option<String>,
    prefix: String,
    context: RouteContext,
    target: Target,
}

/// The routes, ordered for matching: host-specific first, then longest prefix first.
#[derive(Debug)]
pub struct RouteTable {
    entries: Vec<Entry>,
    /// Whether any route names a host: if none does, requests are routed by path alone and
    /// their host is never parsed.
    has_hosts: bool,
}

impl RouteTable {
    /// A table of validated routes.
    pub fn new(routes: Vec<Route>) -> Self {
        let mut entries: Vec<Entry> = routes
            .into_iter()
            .map(|route| Entry {
                context: RouteContext {
                    id: route.id.clone(),
                    policy: route.policy,
                },
                target: Target {
                    metrics: Arc::new(RouteMetrics::new(route.id.clone())),
                    route: route.id,
                    upstream: route.upstream,
                    preserve_host: route.preserve_host,
                },
                host: route.host,
                prefix: route.path_prefix,
            })
            .collect();
        // Stable: among equals, the first in the file wins.
        entries.sort_by_key(|e| (e.host.is_none(), std::cmp::Reverse(e.prefix.len())));
        let has_hosts = entries.iter().any(|e| e.host.is_some());
        Self { entries, has_hosts }
    }

    /// The best route for a request to `host` (lowercase, without port) and `path`.
    fn find(&self, host: Option<&str>, path: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| {
            e.host.as_deref().is_none_or(|h| Some(h) == host) && prefix_matches(&e.prefix, path)
        })
    }

    /// The id of the route a request to `host` and `path` would take.
    pub fn route_for(&self, host: Option<&str>, path: &str) -> Option<&str> {
        self.context_for(host, path).map(|c| &*c.id)
    }

    /// The route (id and policy) a request to `host` and `path` would take.
    pub fn context_for(&self, host: Option<&str>, path: &str) -> Option<&RouteContext> {
        let host = host.map(str::to_ascii_lowercase);
        self.find(host.as_deref(), path).map(|e| &e.context)
    }

    /// The route named `id`.
    pub fn context_by_id(&self, id: &str) -> Option<&RouteContext> {
        self.entries
            .iter()
            .find(|e| &*e.context.id == id)
            .map(|e| &e.context)
    }

    /// Every upstream, once each, for readiness checks.
    pub fn upstreams(&self) -> Vec<Authority> {
        let mut upstreams: Vec<Authority> = Vec::new();
        for entry in &self.entries {
            if !upstreams.contains(&entry.target.upstream) {
                upstreams.push(entry.target.upstream.clone());
            }
        }
        upstreams
    }

    /// The bounds of a forwarded write (`response_timeout`, `write_outcome_timeout`) that the
    /// routes were built with: properties of the running server, the same for every route.
    pub fn write_bounds(&self) -> Option<(std::time::Duration, std::time::Duration)> {
        let policy = &self.entries.first()?.context.policy;
        Some((policy.response_timeout, policy.write_outcome_timeout))
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no route.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The live route table, shared by the router, the admin API and reload: a reload swaps in a
/// new table atomically, and requests already routed keep the table they started with.
#[derive(Debug, Clone)]
pub struct Routes(Arc<ArcSwap<RouteTable>>);

impl Routes {
    /// Shares `table`.
    pub fn new(table: RouteTable) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(table)))
    }

    /// The current table.
    pub fn load(&self) -> Arc<RouteTable> {
        self.0.load_full()
    }

    /// Replaces the table for every request routed from now on.
    pub fn replace(&self, table: RouteTable) {
        self.0.store(Arc::new(table));
    }
}

impl From<Arc<RouteTable>> for Routes {
    fn from(table: Arc<RouteTable>) -> Self {
        Self(Arc::new(ArcSwap::new(table)))
    }
}

/// Segment-aware: "/api" matches "/api" and "/api/x", not "/apix".
fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The host a request is for, lowercase, without port: the target's authority (absolute-form or
/// h2 `:authority`), else the `Host` header.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    let authority = match req.uri().authority() {
        Some(authority) => authority.clone(),
        None => {
            let host = req.headers().get(header::HOST)?;
            Authority::try_from(host.as_bytes()).ok()?
        }
    };
    Some(authority.host().to_ascii_lowercase())
}

/// Applies the [`Router`].
#[derive(Debug, Clone)]
pub struct RouterLayer {
    table: Routes,
}

impl RouterLayer {
    /// Routes with `table`, or with whatever table a [`Routes`] holds at each request.
    pub fn new(table: impl Into<Routes>) -> Self {
        Self {
            table: table.into(),
        }
    }
}

impl<S> Layer<S> for RouterLayer {
    type Service = Router<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Router {
            inner,
            table: self.table.clone(),
        }
    }
}

/// Matches each request to a route, or answers 404 problem+json itself.
#[derive(Debug, Clone)]
pub struct Router<S> {
    inner: S,
    table: Routes,
}

impl<S, B, RB> Service<Request<B>> for Router<S>
where
    S: Service<Request<B>, Response = Response<ResponseBody<RB>>>,
    RB: Body,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RouterFuture<S::Future, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let rejected = |status, kind, detail: &str| {
            ShortCircuit::answered(
                Rejection::new(kind, status, req.uri().path(), detail).into_response(),
            )
        };
        if req.method() == Method::CONNECT {
            return rejected(
                StatusCode::METHOD_NOT_ALLOWED,
                RejectionKind::BadRequest,
                "CONNECT is not supported: ifmatch is a reverse proxy, not a tunnel",
            );
        }
        // A guard, not a clone: no reference count traffic per request.
        let table = self.table.0.load();
        let host = if table.has_hosts {
            request_host(&req)
        } else {
            None
        };
        let Some(entry) = table.find(host.as_deref(), req.uri().path()) else {
            tracing::debug!(host = ?host, path = req.uri().path(), "no route");
            return rejected(
                StatusCode::NOT_FOUND,
                RejectionKind::NoRoute,
                "no route of this proxy matches the request's host and path",
            );
        };
        req.extensions_mut().insert(entry.context.clone());
        req.extensions_mut().insert(entry.target.clone());
        ShortCircuit::called(self.inner.call(req))
    }
}

/// The routed request's response, or the router's own rejection.
pub type RouterFuture<F, RB> = ShortCircuit<F, Response<ResponseBody<RB>>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::Policy;

    fn route(id: &str, host: Option<&str>, prefix: &str) -> Route {
        Route {
            id: id.into(),
            host: host.map(Into::into),
            path_prefix: prefix.into(),
            upstream: "u:1".parse().unwrap(),
            preserve_host: true,
            policy: Arc::new(Policy::default()),
        }
    }

    #[test]
    fn host_then_longest_segment_prefix_wins() {
        let table = RouteTable::new(vec![
            route("root", None, "/"),
            route("api", None, "/api"),
            route("api-v2", None, "/api/v2"),
            route("example-root", Some("example.com"), "/"),
            route("example-api", Some("example.com"), "/api"),
        ]);
        for (host, path, want) in [
            (None, "/", Some("root")),
            (None, "/apix", Some("root")),
            (None, "/api", Some("api")),
            (None, "/api/", Some("api")),
            (None, "/api/v2/x", Some("api-v2")),
            (None, "/api/v20", Some("api")),
            (Some("other.com"), "/api/v2", Some("api-v2")),
            (Some("EXAMPLE.com"), "/api/v2", Some("example-api")),
            (Some("example.com"), "/x", Some("example-root")),
        ] {
            assert_eq!(table.route_for(host, path), want, "{host:?} {path}");
        }
    }

    #[test]
    fn nothing_matches_without_a_catch_all() {
        let table = RouteTable::new(vec![route("a", Some("a.example"), "/api")]);
        assert_eq!(table.route_for(Some("a.example"), "/other"), None);
        assert_eq!(table.route_for(Some("b.example"), "/api"), None);
        assert_eq!(table.route_for(None, "/api"), None);
    }

    #[test]
    fn host_comes_from_the_authority_then_the_host_header() {
        let req = Request::get("/")
            .header("host", "A.example:8080")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req).as_deref(), Some("a.example"));
        let req = Request::get("http://b.example/")
            .header("host", "a.example")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req).as_deref(), Some("b.example"));
        let req = Request::get("/")
            .header("host", "[::1]:80")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req).as_deref(), Some("[::1]"));
        let req = Request::get("/")
            .header("host", "bad host")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req), None);
    }
}
