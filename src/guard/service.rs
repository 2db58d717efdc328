use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, Uri};
use http_body::Body;
use tower::Service;

use super::body::{RequestBody, ResponseBody};
use super::headers::SentLines;
use super::policy::{Policy, RouteContext};
use super::response::{Rejection, RejectionKind};
use super::{read, write};
use crate::key::ResourceKey;
use crate::store::Store;

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
    /// The route id, for metric labels.
    pub(crate) route: Arc<str>,
    /// The request target, for problem details and revalidation.
    pub(crate) uri: Uri,
}

impl<S, St, B, RB> Service<Request<B>> for Precondition<S, St>
where
    S: Service<Request<RequestBody<B>>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
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
            // OPTIONS, TRACE, extension methods: neither teach nor change a validator.
            let future = inner.call(req.map(RequestBody::new));
            return Box::pin(async move { Ok(future.await?.map(ResponseBody::upstream)) });
        }

        let (route, policy) = match req.extensions().get::<RouteContext>() {
            Some(route) => (route.id.clone(), route.policy.clone()),
            None => (self.no_route.clone(), self.policy.clone()),
        };
        let key = resource_key(&route, &policy, &req);
        let guarded = Guarded {
            inner,
            store: self.store.clone(),
            policy,
            key,
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

fn resource_key<B>(route: &str, policy: &Policy, req: &Request<B>) -> ResourceKey {
    let uri = req.uri();
    let query = if policy.key_query { uri.query() } else { None };
    let headers = policy.key_headers.iter().flat_map(|name| {
        req.headers()
            .get_all(name)
            .iter()
            .map(move |value| (name.as_str().as_bytes(), value.as_bytes()))
    });
    ResourceKey::new(route, uri.path(), query, headers)
}
