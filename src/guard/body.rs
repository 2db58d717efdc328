//! Body types the guard puts around the inner service's bodies.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The request body the inner service sees: the client's own, empty for a request the
    /// guard makes itself (a revalidation GET), or a document the guard made (a merged write).
    #[project = RequestBodyProj]
    // Variant fields are described by their variant's docs.
    #[allow(missing_docs)]
    pub enum RequestBody<B> {
        /// The client's body, streamed.
        Client {
            #[pin]
            body: B,
        },
        /// No body.
        Empty,
        /// A whole body the guard made.
        Full {
            data: Option<Bytes>,
        },
    }
}

impl<B> RequestBody<B> {
    /// Wraps the client's body.
    pub fn new(body: B) -> Self {
        Self::Client { body }
    }

    /// A whole body the guard made.
    pub fn full(data: Bytes) -> Self {
        Self::Full {
            data: (!data.is_empty()).then_some(data),
        }
    }
}

impl<B: Body> Body for RequestBody<B>
where
    B::Data: From<Bytes>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project() {
            RequestBodyProj::Client { body } => body.poll_frame(cx),
            RequestBodyProj::Empty => Poll::Ready(None),
            RequestBodyProj::Full { data } => {
                Poll::Ready(data.take().map(|data| Ok(Frame::data(data.into()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Client { body } => body.is_end_stream(),
            Self::Empty => true,
            Self::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Client { body } => body.size_hint(),
            Self::Empty => SizeHint::with_exact(0),
            Self::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

pin_project! {
    /// The response body the guard returns: the upstream's, streamed; one the guard made
    /// (problem+json, 304); or the upstream's with a prefix the guard already read to hash it.
    #[project = ResponseBodyProj]
    #[allow(missing_docs)]
    pub enum ResponseBody<B: Body> {
        /// The upstream's body, untouched.
        Upstream {
            #[pin]
            body: B,
        },
        /// A body the guard produced (or a fully buffered upstream body).
        Full {
            data: Option<Bytes>,
        },
        /// Frames already read from the upstream, then whatever remains of it.
        Buffered {
            frames: VecDeque<Frame<Bytes>>,
            rest: Tail<B>,
        },
    }
}

/// What follows the buffered frames of a [`ResponseBody::Buffered`].
pub enum Tail<B: Body> {
    /// The rest of the upstream body (boxed: it was polled while buffering, and boxing it
    /// spares every inner body an `Unpin` bound).
    Rest(Pin<Box<B>>),
    /// The upstream body failed while it was being buffered; yield that error.
    Failed(Option<B::Error>),
    /// The upstream body was read to its end.
    Done,
}

impl<B: Body> ResponseBody<B> {
    /// The upstream's body, streamed.
    pub fn upstream(body: B) -> Self {
        Self::Upstream { body }
    }

    /// A complete body.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        Self::Full {
            data: (!data.is_empty()).then_some(data),
        }
    }

    /// No body.
    pub fn empty() -> Self {
        Self::Full { data: None }
    }

    /// Frames already read, followed by `rest`.
    pub fn buffered(frames: VecDeque<Frame<Bytes>>, rest: Tail<B>) -> Self {
        Self::Buffered { frames, rest }
    }

    /// The frames already in hand and what follows them: a layer above can read some and
    /// put the body back together with [`ResponseBody::buffered`], without nesting it.
    pub fn into_frames(self) -> (VecDeque<Frame<Bytes>>, Tail<B>) {
        match self {
            Self::Upstream { body } => (VecDeque::new(), Tail::Rest(Box::pin(body))),
            Self::Full { data } => (data.map(Frame::data).into_iter().collect(), Tail::Done),
            Self::Buffered { frames, rest } => (frames, rest),
        }
    }

    /// The whole body, when it is all in memory (read to its end to hash it, or made by the
    /// guard), in an allocation of its own: a frame may be a slice of a larger read buffer,
    /// which keeping it would keep whole.
    pub(crate) fn complete(&self) -> Option<Bytes> {
        match self {
            Self::Full { data } => Some(
                data.as_deref()
                    .map(Bytes::copy_from_slice)
                    .unwrap_or_default(),
            ),
            Self::Buffered {
                frames,
                rest: Tail::Done,
            } => {
                let mut data = frames.iter().filter_map(Frame::data_ref);
                match (data.next(), data.next()) {
                    (None, _) => Some(Bytes::new()),
                    (Some(one), None) => Some(Bytes::copy_from_slice(one)),
                    (Some(first), Some(second)) => {
                        let mut all = bytes::BytesMut::from(&first[..]);
                        all.extend_from_slice(second);
                        data.for_each(|more| all.extend_from_slice(more));
                        Some(all.freeze())
                    }
                }
            }
            _ => None,
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project() {
            ResponseBodyProj::Upstream { body } => body.poll_frame(cx),
            ResponseBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ResponseBodyProj::Buffered { frames, rest } => {
                if let Some(frame) = frames.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                match rest {
                    Tail::Rest(body) => body.as_mut().poll_frame(cx),
                    Tail::Failed(error) => Poll::Ready(error.take().map(Err)),
                    Tail::Done => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream { body } => body.is_end_stream(),
            Self::Full { data } => data.is_none(),
            Self::Buffered { frames, rest } => {
                frames.is_empty()
                    && match rest {
                        Tail::Rest(body) => body.is_end_stream(),
                        Tail::Failed(error) => error.is_none(),
                        Tail::Done => true,
                    }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream { body } => body.size_hint(),
            Self::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Self::Buffered { frames, rest } => {
                let buffered: u64 = frames
                    .iter()
                    .filter_map(|f| f.data_ref())
                    .map(|d| d.len() as u64)
                    .sum();
                match rest {
                    Tail::Rest(body) => {
                        let inner = body.size_hint();
                        let mut hint = SizeHint::new();
                        hint.set_lower(inner.lower() + buffered);
                        if let Some(upper) = inner.upper() {
                            hint.set_upper(upper + buffered);
                        }
                        hint
                    }
                    // Not exact: hyper would announce the bytes read so far as the whole body
                    // (`Content-Length`) and the client could not tell it was cut short. With no
                    // length, the error aborts the message where the client can see it.
                    Tail::Failed(Some(_)) => {
                        let mut hint = SizeHint::new();
                        hint.set_lower(buffered);
                        hint
                    }
                    Tail::Failed(None) | Tail::Done => SizeHint::with_exact(buffered),
                }
            }
        }
    }
}
