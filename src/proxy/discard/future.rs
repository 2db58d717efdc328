//! The discard layer's future: the inner service's response, once the body it left unread
//! is read to its end (bounded), or with `Connection: close` when it cannot be.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Buf;
use http::Response;
use http::header::{CONNECTION, EXPECT, HeaderMap, HeaderValue};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::DiscardLimits;
use super::body::{Returned, Unread};
use super::decide::{self, Decision};
use crate::serve::connection::Linger;
use crate::telemetry;

/// What the future watches of a request with a body.
pub(super) struct Watch<B> {
    returned: Arc<Returned<B>>,
    /// When the body must have arrived, counted from its head.
    deadline: Instant,
    max_bytes: u64,
    /// The client waits for `100 Continue` before it sends the body.
    expects_continue: bool,
}

impl<B> Watch<B> {
    pub(super) fn new(
        headers: &HeaderMap,
        returned: Arc<Returned<B>>,
        limits: DiscardLimits,
    ) -> Self {
        Self {
            returned,
            deadline: Instant::now() + limits.timeout,
            max_bytes: limits.max_bytes,
            expects_continue: headers
                .get(EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue")),
        }
    }
}

pin_project! {
    /// The inner service's response; see [`Discard`](super::Discard).
    pub struct DiscardFuture<F, B, RB> {
        #[pin]
        state: State<F, B, RB>,
    }
}

pin_project! {
    #[project = StateProj]
    #[project_replace = StateOwned]
    enum State<F, B, RB> {
        Called {
            #[pin]
            inner: F,
            watch: Option<Watch<B>>,
        },
        Draining {
            drain: Drain<B>,
            response: Option<Response<RB>>,
        },
        Done,
    }
}

impl<F, B, RB> DiscardFuture<F, B, RB> {
    pub(super) fn new(inner: F, watch: Option<Watch<B>>) -> Self {
        Self {
            state: State::Called { inner, watch },
        }
    }
}

impl<F, B, RB, E> Future for DiscardFuture<F, B, RB>
where
    F: Future<Output = Result<Response<RB>, E>>,
    B: Body + Unpin,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Called { inner, .. } => {
                    let response = ready!(inner.poll(cx))?;
                    // Dropping the inner future here drops whatever it still holds of the
                    // request, so an unread body is back before it is looked for.
                    let StateOwned::Called { watch, .. } =
                        state.as_mut().project_replace(State::Done)
                    else {
                        unreachable!("the state was Called")
                    };
                    match after(watch, response) {
                        Next::Respond(response) => return Poll::Ready(Ok(response)),
                        Next::Drain(drain, response) => state.set(State::Draining {
                            drain,
                            response: Some(response),
                        }),
                    }
                }
                StateProj::Draining { drain, response } => {
                    let drained = ready!(drain.poll(cx));
                    let Some(mut response) = response.take() else {
                        unreachable!("a draining future holds its response")
                    };
                    state.set(State::Done);
                    match drained {
                        Drained::Whole => {
                            metrics::counter!(telemetry::BODIES_DISCARDED).increment(1);
                        }
                        Drained::TooLarge => close(&mut response, "too_large"),
                        Drained::TooSlow => close(&mut response, "too_slow"),
                        // The client's framing is broken: hyper closes the connection itself.
                        Drained::Broken => close(&mut response, "broken"),
                    }
                    return Poll::Ready(Ok(response));
                }
                StateProj::Done => panic!("DiscardFuture polled after completion"),
            }
        }
    }
}

/// What to do once the inner service answered.
enum Next<B, RB> {
    Respond(Response<RB>),
    Drain(Drain<B>, Response<RB>),
}

/// Decides, from what came back of the body, whether `response` goes out now, with
/// `Connection: close`, or after the rest of the body is read.
fn after<B: Body, RB>(watch: Option<Watch<B>>, mut response: Response<RB>) -> Next<B, RB> {
    let Some(watch) = watch else {
        return Next::Respond(response);
    };
    // Nothing came back: the body was read to its end, or it is still the upstream client's,
    // streaming to the upstream.
    let Some(Unread { body, polled }) = watch.returned.take() else {
        return Next::Respond(response);
    };
    if body.is_end_stream() {
        return Next::Respond(response);
    }
    let known = decide::Unread {
        answer_closes: closes(&response),
        forwarded: polled,
        expects_continue: watch.expects_continue,
        announced: body.size_hint().lower(),
        max_bytes: watch.max_bytes,
    };
    match decide::decide(known) {
        Decision::Drain => Next::Drain(
            Drain {
                body,
                left: watch.max_bytes,
                deadline: watch.deadline,
                sleep: None,
            },
            response,
        ),
        Decision::Linger => {
            response.extensions_mut().insert(Linger);
            Next::Respond(response)
        }
        Decision::Close(reason) => {
            close(&mut response, reason);
            Next::Respond(response)
        }
    }
}

/// Whether `response` already says the connection closes after it.
fn closes<RB>(response: &Response<RB>) -> bool {
    response
        .headers()
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
}

/// Marks `response` as the last on its connection (RFC 9112 §9.6), which closes after it,
/// gracefully (see [`Linger`]).
fn close<RB>(response: &mut Response<RB>, reason: &'static str) {
    tracing::debug!(reason, "request body not discarded, closing the connection");
    metrics::counter!(telemetry::CONNECTIONS_CLOSED_UNDISCARDED, "reason" => reason).increment(1);
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response.extensions_mut().insert(Linger);
}

/// Reads a body to its end and discards it, within a byte budget and a deadline.
pub(super) struct Drain<B> {
    body: B,
    /// Bytes that may still be read.
    left: u64,
    deadline: Instant,
    // Made on the first wait only: a body that is already buffered needs no timer.
    sleep: Option<Pin<Box<Sleep>>>,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drained {
    /// Read to its end: the connection can carry the next request.
    Whole,
    /// More bytes than the budget.
    TooLarge,
    /// Not all there by the deadline.
    TooSlow,
    /// The body failed (malformed chunks, the client went away).
    Broken,
}

impl<B: Body + Unpin> Drain<B> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Drained> {
        loop {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let len = frame.data_ref().map_or(0, |data| data.remaining() as u64);
                    match self.left.checked_sub(len) {
                        Some(left) => self.left = left,
                        None => return Poll::Ready(Drained::TooLarge),
                    }
                }
                Poll::Ready(None) => return Poll::Ready(Drained::Whole),
                Poll::Ready(Some(Err(_))) => return Poll::Ready(Drained::Broken),
                Poll::Pending => {
                    let deadline = self.deadline;
                    let sleep = self
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    return match sleep.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Drained::TooSlow),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{Full, StreamBody};

    fn limits(max_bytes: u64) -> DiscardLimits {
        DiscardLimits {
            max_bytes,
            timeout: std::time::Duration::from_secs(5),
        }
    }

    fn watch_of<B>(
        request: http::request::Builder,
        max_bytes: u64,
    ) -> (Watch<B>, Arc<Returned<B>>) {
        let request = request.body(()).expect("request");
        let returned = Returned::new();
        (
            Watch::new(request.headers(), returned.clone(), limits(max_bytes)),
            returned,
        )
    }

    fn response() -> Response<()> {
        Response::new(())
    }

    fn returned<B>(returned: &Returned<B>, body: B, polled: bool) {
        returned.put(Unread { body, polled });
    }

    #[test]
    fn a_body_that_did_not_come_back_is_not_waited_for() {
        let (watch, _) = watch_of::<Full<Bytes>>(http::Request::put("/"), 10);
        assert!(matches!(after(Some(watch), response()), Next::Respond(r) if !closes(&r)));
    }

    #[test]
    fn an_unread_body_within_the_budget_is_drained() {
        let (watch, slot) = watch_of(http::Request::put("/"), 10);
        returned(&slot, Full::new(Bytes::from_static(b"0123456789")), false);
        assert!(matches!(after(Some(watch), response()), Next::Drain(..)));
    }

    #[test]
    fn a_body_announced_over_the_budget_closes_at_once() {
        let (watch, slot) = watch_of(http::Request::put("/"), 9);
        returned(&slot, Full::new(Bytes::from_static(b"0123456789")), false);
        let Next::Respond(r) = after(Some(watch), response()) else {
            panic!("not answered at once")
        };
        assert!(closes(&r));
        assert!(r.extensions().get::<Linger>().is_some());
    }

    #[test]
    fn a_client_still_waiting_for_100_continue_is_closed_on() {
        let request = http::Request::put("/").header("expect", "100-Continue");
        let (watch, slot) = watch_of(request, 10);
        returned(&slot, Full::new(Bytes::from_static(b"01")), false);
        assert!(matches!(after(Some(watch), response()), Next::Respond(r) if closes(&r)));
    }

    #[test]
    fn a_body_the_upstream_client_gave_up_on_is_not_waited_for() {
        let (watch, slot) = watch_of(http::Request::put("/"), 10);
        returned(&slot, Full::new(Bytes::from_static(b"01")), true);
        assert!(matches!(after(Some(watch), response()), Next::Respond(r) if closes(&r)));
    }

    #[test]
    fn an_answer_that_closes_anyway_is_not_drained_for() {
        let (watch, slot) = watch_of(http::Request::put("/"), 10);
        returned(&slot, Full::new(Bytes::from_static(b"01")), false);
        let mut closing = response();
        closing
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("upgrade, Close"));
        let Next::Respond(r) = after(Some(watch), closing) else {
            panic!("drained")
        };
        assert!(r.extensions().get::<Linger>().is_some());
    }

    fn chunks(chunks: &[&'static [u8]]) -> impl Body<Data = Bytes, Error = std::io::Error> + Unpin {
        let frames: Vec<Result<_, std::io::Error>> = chunks
            .iter()
            .map(|c| Ok(http_body::Frame::data(Bytes::from_static(c))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    fn drain<B: Body + Unpin>(body: B, left: u64) -> Drained {
        let mut drain = Drain {
            body,
            left,
            deadline: Instant::now() + std::time::Duration::from_secs(5),
            sleep: None,
        };
        let waker = std::task::Waker::noop();
        match drain.poll(&mut Context::from_waker(waker)) {
            Poll::Ready(drained) => drained,
            Poll::Pending => panic!("pending"),
        }
    }

    #[test]
    fn a_drain_counts_bytes_whatever_the_length_says() {
        assert_eq!(drain(chunks(&[b"abc", b"defg"]), 7), Drained::Whole);
        assert_eq!(drain(chunks(&[b"abc", b"defg"]), 6), Drained::TooLarge);
        assert_eq!(drain(chunks(&[]), 0), Drained::Whole);
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_gives_up_at_its_deadline() {
        let mut drain = Drain {
            body: StreamBody::new(futures_util::stream::pending::<
                Result<http_body::Frame<Bytes>, std::io::Error>,
            >()),
            left: 10,
            deadline: Instant::now() + std::time::Duration::from_millis(50),
            sleep: None,
        };
        let drained = std::future::poll_fn(|cx| drain.poll(cx)).await;
        assert_eq!(drained, Drained::TooSlow);
    }
}
