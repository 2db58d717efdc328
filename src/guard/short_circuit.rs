//! The future of a layer that either calls its inner service or answers the request itself:
//! an answer that needs no I/O (the guard's 400 and 428, the router's 404, the 431) costs no
//! allocation (tower-http's `limit/future.rs` shape). Shared by the guard and the proxy's
//! layers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

pin_project! {
    /// The inner service's response, or one the layer made without calling it.
    pub struct ShortCircuit<F, R> {
        #[pin]
        kind: Kind<F, R>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, R> {
        Called { #[pin] inner: F },
        Answered { response: Option<R> },
    }
}

impl<F, R> ShortCircuit<F, R> {
    /// Waits for the inner service's `future`.
    pub(crate) fn called(inner: F) -> Self {
        Self {
            kind: Kind::Called { inner },
        }
    }

    /// Answers with `response` at once.
    pub(crate) fn answered(response: R) -> Self {
        Self {
            kind: Kind::Answered {
                response: Some(response),
            },
        }
    }
}

impl<F, R, E> Future for ShortCircuit<F, R>
where
    F: Future<Output = Result<R, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { inner } => inner.poll(cx),
            KindProj::Answered { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => panic!("ShortCircuit polled after completion"),
            },
        }
    }
}
