use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use tower::Service;

use super::body::{RequestBody, ResponseBody};
use super::headers::SentLines;
use super::policy::{Policy, RouteContext};
use super::response::{Rejection, RejectionKind};
use super::short_circuit::ShortCircuit;
use super::versions::Versions;
use super::writes::WritesInFlight;
use super::{read, write};
use crate::key::ResourceKey;
use crate::store::Store;
use crate::target::{normalize_path, normalize_query, query_variant};

/// A read or write that awaits the store and the inner service.
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The precondition guard around an inner service. See the [module docs](super).
#[derive(Debug, Clone)]
pub struct Precondition<S, St> {
    inner: S,
    store: St,
    policy: Arc<Policy>,
    /// The route label of requests without a route context, allocated once.
    no_route: Arc<str>,
    /// Forwarded writes in flight, shared by every clone of the layer.
    writes: WritesInFlight,
    /// Remembered representations, shared by every clone of the layer.
    versions: Versions,
}

impl<S, St> Precondition<S, St> {
    /// Guards `inner` with `store`; `policy` applies to requests without a route context.
    pub fn new(inner: S, store: St, policy: Arc<Policy>) -> Self {
        Self::sharing(inner, store, policy, WritesInFlight::default())
    }

    /// As [`Precondition::new`], drawing write permits from `writes`.
    pub(crate) fn sharing(
        inner: S,
        store: St,
        policy: Arc<Policy>,
        writes: WritesInFlight,
    ) -> Self {
        Self {
            inner,
            store,
            policy,
            no_route: Arc::from(""),
            writes,
            versions: Versions::default(),
        }
    }

    /// Remembers representations in `versions`.
    pub(crate) fn remembering(mut self, versions: Versions) -> Self {
        self.versions = versions;
        self
    }
}

/// Everything one guarded request needs besides the request itself.
pub(crate) struct Guarded<S, St> {
    /// The inner service, already driven to readiness for this request.
    pub(crate) inner: S,
    pub(crate) store: St,
    pub(crate) policy: Arc<Policy>,
    pub(crate) key: ResourceKey,
    /// The variant of the request's query (0: none), part of every validator it learns.
    pub(crate) variant: u32,
    /// The route id, for metric labels.
    pub(crate) route: Arc<str>,
    /// The request target, for problem details and revalidation.
    pub(crate) uri: Uri,
    /// Forwarded writes in flight.
    pub(crate) writes: WritesInFlight,
    /// Remembered representations.
    pub(crate) versions: Versions,
}

impl<S, St, B, RB> Service<Request<B>> for Precondition<S, St>
where
    S: Service<Request<RequestBody<B>>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: Store,
    B: Body + Send + 'static,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Send,
{
    type Response = Response<ResponseBody<RB>>;
    type Error = S::Error;
    type Future = ShortCircuit<BoxFuture<Result<Self::Response, S::Error>>, Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The readied service serves this request; the clone waits for the next poll_ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);

        let method = req.method();
        let is_read = method == Method::GET || method == Method::HEAD;
        let is_write = matches!(
            *method,
            Method::PUT | Method::PATCH | Method::DELETE | Method::POST
        );
        let unguarded = req
            .extensions()
            .get::<RouteContext>()
            .is_some_and(|route| !route.policy.guard);
        if unguarded || !is_read && !is_write {
            let miscased = (!unguarded).then(|| miscased_write(method, req.uri()));
            if let Some(rejection) = miscased.flatten() {
                return ShortCircuit::answered(rejection.into_response());
            }
            // OPTIONS, TRACE, extension methods: neither teach nor change a validator; nor does
            // anything on a route the guard is off for.
            let future = inner.call(req.map(RequestBody::new));
            return ShortCircuit::called(Box::pin(async move {
                Ok(future.await?.map(ResponseBody::upstream))
            }));
        }

        let (route, policy) = match req.extensions().get::<RouteContext>() {
            Some(route) => (route.id.clone(), route.policy.clone()),
            None => (self.no_route.clone(), self.policy.clone()),
        };
        // A write refused for its preconditions alone (400, 428) costs no key, store or box.
        let pre = if is_write {
            let instance = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
            match write::admit(req.method(), req.headers(), &policy, instance) {
                Ok(pre) => Some(pre),
                Err(mut rejection) => {
                    show_malformed(&mut rejection, req.headers());
                    return ShortCircuit::answered(rejection.into_response());
                }
            }
        } else {
            None
        };
        let uri = req.uri();
        let headers = key_headers(&policy, &req);
        let (key, variant) = resource_key(&route, &policy, uri.path(), uri.query(), headers);
        let guarded = Guarded {
            inner,
            store: self.store.clone(),
            policy,
            key,
            variant,
            route,
            uri: req.uri().clone(),
            writes: self.writes.clone(),
            versions: self.versions.clone(),
        };
        match pre {
            Some(pre) => ShortCircuit::called(Box::pin(write::write(guarded, req, pre))),
            None => ShortCircuit::called(Box::pin(read::read(guarded, req))),
        }
    }
}

/// A precondition that did not parse has no parsed form to show: the rejection says what was
/// sent on the wire instead, so the log line shows `If-Match: nope`, not nothing.
fn show_malformed(rejection: &mut Rejection, headers: &http::HeaderMap) {
    if rejection.kind == RejectionKind::MalformedPrecondition && rejection.sent.is_none() {
        rejection.sent = SentLines::capture(headers).map(|sent| sent.describe());
    }
}

/// The (name, value) pairs of the route's key headers in `req`, in the route's order.
pub(crate) fn key_headers<'a, B>(
    policy: &'a Policy,
    req: &'a Request<B>,
) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
    policy.key_headers.iter().flat_map(|name| {
        req.headers()
            .get_all(name)
            .iter()
            .map(move |value| (name.as_str().as_bytes(), value.as_bytes()))
    })
}

/// The key of the resource `path` and `query` name on `route`, normalized as the route's
/// upstream would (see [`crate::target`]), and the query's variant (0: none).
pub fn resource_key<'a>(
    route: &str,
    policy: &Policy,
    path: &str,
    query: Option<&str>,
    headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> (ResourceKey, u32) {
    let path = normalize_path(path, policy.aliases);
    let key_query = policy.query.in_key(query).map(normalize_query);
    let key = ResourceKey::new(route, &path, key_query.as_deref(), headers);
    (key, query_variant(policy.query.variant(query)))
}

/// A 400 for a write method in the wrong case: method names are case-sensitive (RFC 9110
/// §9.1), so `put` is not PUT to the guard, but some upstreams would apply it as one.
fn miscased_write(method: &Method, uri: &Uri) -> Option<Rejection> {
    let name = method.as_str();
    let standard = ["PUT", "PATCH", "DELETE", "POST"]
        .into_iter()
        .find(|standard| standard.eq_ignore_ascii_case(name))?;
    // A token of at most 6 letters (it matched one): nothing unbounded is echoed.
    let detail =
        format!("method names are case-sensitive (RFC 9110 §9.1): send {standard}, not {name}");
    let instance = uri.path_and_query().map_or("/", |pq| pq.as_str());
    Some(Rejection::new(
        RejectionKind::BadRequest,
        StatusCode::BAD_REQUEST,
        instance,
        detail,
    ))
}
