//! The client's request body as the upstream client sends it: it fails once the body has not
//! arrived in full within `server.body_read_timeout` of being forwarded.
//!
//! A write holds its resource's lease until the upstream answers, and an upstream typically
//! answers only once it has the whole body: without this bound, a client trickling its body
//! would block every other writer of the resource for as long as it likes.

use std::error::Error as StdError;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::discard::ClientBody;
use crate::guard::RequestBody;

/// The body did not arrive in time: the error the upstream request fails with.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimedOut(pub Duration);

impl BodyTimedOut {
    /// Whether `error`, or one of its sources, is a body timeout.
    pub fn caused(error: &(dyn StdError + 'static)) -> bool {
        let mut source = Some(error);
        while let Some(error) = source {
            if error.is::<Self>() {
                return true;
            }
            source = error.source();
        }
        false
    }
}

pin_project! {
    /// A request body with a deadline for its last byte.
    pub struct TimedBody {
        #[pin]
        body: RequestBody<ClientBody>,
        deadline: Instant,
        timeout: Duration,
        // Made on the first wait only: most bodies are empty or already buffered.
        sleep: Option<Pin<Box<Sleep>>>,
    }
}

impl TimedBody {
    /// `body`, which must arrive within `timeout` from now.
    pub fn new(body: RequestBody<ClientBody>, timeout: Duration) -> Self {
        Self {
            body,
            deadline: Instant::now() + timeout,
            timeout,
            sleep: None,
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    // Read errors are hyper's own, boxed as they are, so the rescue still sees the client's
    // malformed or truncated body for what it is.
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.body.poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let deadline = *this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut(*this.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
