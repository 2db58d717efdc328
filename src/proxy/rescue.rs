//! The one place where errors that escaped the stack become responses.
//!
//! Below the rescue, services fail with [`UpstreamError`]; hyper would answer an error by
//! dropping the connection. The rescue turns each into problem+json instead: connect failure
//! 502, timeout 504, anything else 502, and logs what was not expected.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::client::UpstreamError;
use crate::guard::{Rejection, RejectionKind, ResponseBody};

/// Applies [`Rescue`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RescueLayer;

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Rescue {
            inner,
            failed: None,
        }
    }
}

/// Answers every error of the inner service with a problem response. Never fails.
#[derive(Debug)]
pub struct Rescue<S> {
    inner: S,
    failed: Option<UpstreamError>,
}

impl<S: Clone> Clone for Rescue<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            failed: None,
        }
    }
}

impl<S, B, RB> Service<Request<B>> for Rescue<S>
where
    S: Service<Request<B>, Response = Response<ResponseBody<RB>>, Error = UpstreamError>,
    RB: Body,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = RescueFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.failed.is_none() {
            if let Err(error) = std::task::ready!(self.inner.poll_ready(cx)) {
                // Answered by the next call instead of dropping the connection.
                self.failed = Some(error);
            }
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let method = req.method().clone();
        let uri = req.uri().clone();
        let kind = match self.failed.take() {
            Some(error) => Kind::Failed { error: Some(error) },
            None => Kind::Called {
                inner: self.inner.call(req),
            },
        };
        RescueFuture { kind, method, uri }
    }
}

pin_project! {
    /// The inner response, or the problem response for its error.
    pub struct RescueFuture<F> {
        #[pin]
        kind: Kind<F>,
        method: Method,
        uri: Uri,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called { #[pin] inner: F },
        Failed { error: Option<UpstreamError> },
    }
}

impl<F, RB> Future for RescueFuture<F>
where
    F: Future<Output = Result<Response<ResponseBody<RB>>, UpstreamError>>,
    RB: Body,
{
    type Output = Result<Response<ResponseBody<RB>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let error = match this.kind.project() {
            KindProj::Called { inner } => match std::task::ready!(inner.poll(cx)) {
                Ok(response) => return Poll::Ready(Ok(response)),
                Err(error) => error,
            },
            KindProj::Failed { error } => error
                .take()
                .unwrap_or(UpstreamError::Internal("future polled after completion")),
        };
        Poll::Ready(Ok(rescue(&error, this.method, this.uri)))
    }
}

/// The problem response for `error`, logged by how surprising it is.
pub fn rescue<RB: Body>(
    error: &UpstreamError,
    method: &Method,
    uri: &Uri,
) -> Response<ResponseBody<RB>> {
    let (kind, status, detail) = match error {
        UpstreamError::Request(_) if client_body_failed(error) => {
            tracing::debug!(%method, %uri, error = %Chain(error), "client request body failed");
            (
                RejectionKind::BadRequest,
                StatusCode::BAD_REQUEST,
                "the request body could not be read (malformed chunked encoding, or the client \
                 stopped sending); the upstream did not receive a complete request",
            )
        }
        UpstreamError::BodyTimeout(_) => {
            tracing::debug!(%method, %uri, error = %Chain(error), "client request body timed out");
            (
                RejectionKind::RequestTimeout,
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time (server.body_read_timeout); the upstream \
                 may have received part of it: re-read the resource before retrying",
            )
        }
        UpstreamError::Connect(_) => {
            tracing::warn!(%method, %uri, error = %Chain(error), "upstream unavailable");
            (
                RejectionKind::UpstreamUnavailable,
                StatusCode::BAD_GATEWAY,
                "the upstream could not be reached; retry later",
            )
        }
        UpstreamError::Timeout(_) => {
            tracing::warn!(%method, %uri, error = %Chain(error), "upstream timed out");
            (
                RejectionKind::UpstreamTimeout,
                StatusCode::GATEWAY_TIMEOUT,
                "the upstream did not answer in time; the request may or may not have been applied",
            )
        }
        UpstreamError::Request(_) => {
            tracing::warn!(%method, %uri, error = %Chain(error), "upstream request failed");
            (
                RejectionKind::UpstreamUnavailable,
                StatusCode::BAD_GATEWAY,
                "the connection to the upstream failed; the request may or may not have been applied",
            )
        }
        UpstreamError::Internal(_) => {
            tracing::error!(%method, %uri, error = %Chain(error), "unexpected proxy error");
            (
                RejectionKind::UpstreamUnavailable,
                StatusCode::BAD_GATEWAY,
                "the proxy could not forward the request",
            )
        }
    };
    Rejection::new(kind, status, uri.path(), detail).into_response()
}

/// Whether the upstream request failed because the client's own request body did.
///
/// hyper reports an error of the body it sends as a user error whose source is that body's
/// error. The only body the proxy sends upstream is the client's, streamed from hyper's
/// `Incoming`, whose errors are `hyper::Error`s: so a `hyper::Error` caused by another one is
/// the client's fault (a bad chunk size, a truncated upload), not the upstream's.
fn client_body_failed(error: &UpstreamError) -> bool {
    let mut source = error.source();
    while let Some(error) = source {
        if let Some(hyper) = error.downcast_ref::<hyper::Error>()
            && hyper.is_user()
            && hyper
                .source()
                .is_some_and(|cause| cause.is::<hyper::Error>())
        {
            return true;
        }
        source = error.source();
    }
    false
}

/// Displays an error with its sources: "a: b: c".
pub struct Chain<'a>(pub &'a (dyn StdError + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}
