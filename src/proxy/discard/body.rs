//! The client's request body as every layer below [`Discard`](super::Discard) sees it: dropped
//! before its end, it goes back to the discard layer instead of to hyper, which would give up
//! on the connection.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// A body dropped before its end, with what the discard layer needs to know about it.
pub(super) struct Unread<B> {
    pub(super) body: B,
    /// Whether anyone read from it (only the upstream client does, forwarding it).
    pub(super) polled: bool,
}

/// Where a watched body goes when it is dropped before its end; shared by the body and the
/// discard layer's future.
pub(super) struct Returned<B>(Mutex<Option<Unread<B>>>);

impl<B> Returned<B> {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self(Mutex::new(None)))
    }

    /// The body, if it came back unread.
    pub(super) fn take(&self) -> Option<Unread<B>> {
        // A poisoned lock means a panic while a body was put back; then there is nothing to
        // discard, and hyper closes the connection as it would without this layer.
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }

    pub(super) fn put(&self, unread: Unread<B>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(unread);
        }
    }
}

/// The client's request body: streamed as it is; if it is dropped before its end (the proxy
/// answered without it), handed back to the [`Discard`](super::Discard) layer, which reads and
/// discards the rest so that the connection can carry the next request.
pub struct ClientBody<B = Incoming> {
    /// `None` once dropped, or for a body buffered by a layer above.
    body: Option<B>,
    /// A body a layer above already read whole (to fingerprint it), yielded first.
    buffered: Option<Bytes>,
    /// Where the body goes if dropped before its end; `None` when nobody waits for it (an
    /// HTTP/2 stream, an empty body) or once the body ended.
    returned: Option<Arc<Returned<B>>>,
    polled: bool,
}

impl<B> ClientBody<B> {
    /// `body`, passed through; dropped unread, it is simply dropped.
    pub fn new(body: B) -> Self {
        Self {
            body: Some(body),
            buffered: None,
            returned: None,
            polled: false,
        }
    }

    /// A body already read whole (its trailers, if any, are not kept).
    pub fn buffered(data: Bytes) -> Self {
        Self {
            body: None,
            buffered: (!data.is_empty()).then_some(data),
            returned: None,
            polled: false,
        }
    }

    /// `body`, which goes to `returned` if dropped before its end.
    pub(super) fn watched(body: B, returned: Arc<Returned<B>>) -> Self {
        Self {
            body: Some(body),
            buffered: None,
            returned: Some(returned),
            polled: false,
        }
    }
}

impl<B: Body + Unpin> Body for ClientBody<B>
where
    B::Data: From<Bytes>,
{
    type Data = B::Data;
    // The client's own errors (hyper's), so the rescue still tells a truncated body from others.
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(data) = this.buffered.take() {
            return Poll::Ready(Some(Ok(Frame::data(data.into()))));
        }
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        this.polled = true;
        let frame = ready!(Pin::new(body).poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            // Its end, or an error: nothing is left to discard.
            this.returned = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.buffered.is_none() && self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(data) = &self.buffered {
            return SizeHint::with_exact(data.len() as u64);
        }
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl<B> Drop for ClientBody<B> {
    fn drop(&mut self) {
        if let (Some(returned), Some(body)) = (self.returned.take(), self.body.take()) {
            returned.put(Unread {
                body,
                polled: self.polled,
            });
        }
    }
}

impl<B> std::fmt::Debug for ClientBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBody")
            .field("watched", &self.returned.is_some())
            .field("polled", &self.polled)
            .finish_non_exhaustive()
    }
}
