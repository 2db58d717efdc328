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
use super::{read, write};
use crate::key::ResourceKey;
use crate::store::Store;
use crate::target::{normalize_path, normalize_query, query_variant};

/// The precondition guard around an inner service. See the [module docs](super).
#[derive(Debug, Clone)]
pub struct Precondition<S, St> {
    inner: S,
    store: St,
    policy: Arc<Policy>,
    /// The route label of requests without a route context, allocated once.
    no_route: Arc<str>,
}

impl<S, St> Precondition<S, St> {
    /// Guards `inner` with `store`; `policy` applies to requests without a route context.
    pub fn new(inner: S, store: St, policy: Arc<Policy>) -> Self {
        Self {
            inner,
            store,
            policy,
            no_route: Arc::from(""),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

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
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

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
        if !is_read && !is_write {
            if let Some(rejection) = miscased_write(method, req.uri()) {
                return Box::pin(async move { Ok(rejection.into_response()) });
            }
            // OPTIONS, TRACE, extension methods: neither teach nor change a validator.
            let future = inner.call(req.map(RequestBody::new));
            return Box::pin(async move { Ok(future.await?.map(ResponseBody::upstream)) });
        }

        let (route, policy) = match req.extensions().get::<RouteContext>() {
            Some(route) => (route.id.clone(), route.policy.clone()),
            None => (self.no_route.clone(), self.policy.clone()),
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
        };
        if is_read {
            return Box::pin(read::read(guarded, req));
        }
        match SentLines::capture(req.headers()) {
            None => Box::pin(write::write(guarded, req)),
            Some(sent) => {
                let written = write::write(guarded, req);
                Box::pin(async move {
                    let mut response = written.await?;
                    show_malformed(&mut response, &sent);
                    Ok(response)
                })
            }
        }
    }
}

/// A precondition that did not parse has no parsed form to show: the rejection says what was
/// sent on the wire instead, so the log line shows `If-Match: nope`, not nothing.
fn show_malformed<B>(response: &mut Response<B>, sent: &SentLines) {
    if let Some(rejection) = response.extensions_mut().get_mut::<Rejection>()
        && rejection.kind == RejectionKind::MalformedPrecondition
        && rejection.sent.is_none()
    {
        rejection.sent = Some(sent.describe());
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
