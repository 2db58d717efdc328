use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower::Service;

use super::body::{RequestBody, ResponseBody};
use super::policy::Policy;
use crate::store::Store;

/// The precondition guard around an inner service. See the [module docs](super).
#[derive(Debug, Clone)]
pub struct Precondition<S, St> {
    inner: S,
    store: St,
    policy: Arc<Policy>,
}

impl<S, St> Precondition<S, St> {
    /// Guards `inner` with `store`; `policy` applies to requests without a route context.
    pub fn new(inner: S, store: St, policy: Arc<Policy>) -> Self {
        Self {
            inner,
            store,
            policy,
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

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
        todo!()
    }
}
