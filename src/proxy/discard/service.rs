//! The discard service: watches each HTTP/1.1 request body for its future.

use std::task::{Context, Poll};

use http::{Request, Response, Version};
use http_body::Body;
use tower::Service;

use super::DiscardLimits;
use super::body::{ClientBody, Returned};
use super::future::{DiscardFuture, Watch};

/// Reads and discards what the inner service left of an HTTP/1.1 request body before its
/// response goes out (see the module docs).
#[derive(Debug, Clone)]
pub struct Discard<S> {
    inner: S,
    limits: DiscardLimits,
}

impl<S> Discard<S> {
    pub(super) fn new(inner: S, limits: DiscardLimits) -> Self {
        Self { inner, limits }
    }
}

impl<S, B, RB> Service<Request<B>> for Discard<S>
where
    S: Service<Request<ClientBody<B>>, Response = Response<RB>>,
    B: Body + Unpin,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = DiscardFuture<S::Future, B, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Most requests have no body, and an HTTP/2 stream's unread body costs its connection
        // nothing (h2 resets the stream with NO_ERROR after the answer): they cost nothing here.
        if req.version() >= Version::HTTP_2 || req.body().is_end_stream() {
            return DiscardFuture::new(self.inner.call(req.map(ClientBody::new)), None);
        }
        let returned = Returned::new();
        let watch = Watch::new(req.headers(), returned.clone(), self.limits);
        let req = req.map(|body| ClientBody::watched(body, returned));
        DiscardFuture::new(self.inner.call(req), Some(watch))
    }
}
