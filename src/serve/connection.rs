//! One client connection's life: a slot counted against `server.max_connections` (held by an
//! upgraded WebSocket tunnel too), the activity that decides when it is idle, and the signal
//! that closes it on shutdown.
//!
//! Idleness is measured on the socket itself (bytes read or written), so it covers HTTP/1.1
//! keep-alive, h2c (where hyper has no idle timeout) and tunnels alike. Closing is graceful:
//! HTTP/1.1 finishes the response in flight, h2c sends GOAWAY and finishes its streams.
//!
//! An HTTP/1.1 connection closed after an answer to a request whose body was not read (a
//! [`Linger`] response) lingers: its write side is shut (the client reads the answer, then the
//! end of the stream), and what the client still sends is read and discarded until it closes
//! its side, or for at most `server.body_read_timeout`. Closing a socket with unread bytes in
//! its receive buffer makes the kernel send a reset, which can reach the client before it has
//! read the answer, and fails its writes of the rest of the body.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker, ready};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::Sleep;

use super::balance::Occupant;
use crate::telemetry;

/// What a connection has done: cloned into whoever needs to know it is idle, or has never sent
/// a request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Activity(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    /// Reads and writes that moved bytes.
    moves: AtomicU64,
    /// Whether a complete request head has arrived.
    requested: AtomicBool,
    /// Whether closing the connection should linger (see the module docs).
    linger: AtomicBool,
}

/// In a response's extensions: the connection closes after this response, with a request body
/// unread, so the close lingers (see the module docs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Linger;

/// How many quiet checks make an idle connection: it is closed between 1 and 1.25 idle
/// timeouts after its last byte, with one cheap timer tick per quarter timeout.
const QUIET_CHECKS: u32 = 4;

impl Activity {
    fn bump(&self) {
        self.0.moves.fetch_add(1, Ordering::Relaxed);
    }

    /// Records that a request head arrived.
    pub(crate) fn requested(&self) {
        // A load first: most requests find it set, and then write nothing to a shared line.
        if !self.0.requested.load(Ordering::Relaxed) {
            self.0.requested.store(true, Ordering::Relaxed);
        }
    }

    /// Records that the connection's close should linger, if `response` says so.
    pub(crate) fn observe<B>(&self, response: &http::Response<B>) {
        if response.extensions().get::<Linger>().is_some() {
            self.0.linger.store(true, Ordering::Relaxed);
        }
    }

    fn lingers(&self) -> bool {
        self.0.linger.load(Ordering::Relaxed)
    }

    /// Completes if no request head has arrived within `timeout`; else never.
    async fn no_request_within(&self, timeout: Duration) {
        tokio::time::sleep(timeout).await;
        if self.0.requested.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    }

    /// Completes once no byte has moved for `timeout`.
    pub(crate) async fn idle(&self, timeout: Duration) {
        let tick = (timeout / QUIET_CHECKS).max(Duration::from_millis(1));
        let mut checks = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = self.0.moves.load(Ordering::Relaxed);
        let mut quiet = 0;
        loop {
            checks.tick().await;
            let now = self.0.moves.load(Ordering::Relaxed);
            if now == last {
                quiet += 1;
                if quiet >= QUIET_CHECKS {
                    return;
                }
            } else {
                last = now;
                quiet = 0;
            }
        }
    }
}

/// A socket that records its [`Activity`], and lingers when it is shut down after a
/// [`Linger`] response.
#[derive(Debug)]
pub(crate) struct Tracked<IO> {
    io: IO,
    activity: Activity,
    /// Longest linger.
    linger: Duration,
    /// Set once the write side is shut and the close lingers: when it ends.
    lingering: Option<Pin<Box<Sleep>>>,
}

impl<IO> Tracked<IO> {
    pub(crate) fn new(io: IO, activity: Activity, linger: Duration) -> Self {
        Self {
            io,
            activity,
            linger,
            lingering: None,
        }
    }
}

/// Lingering reads go into this much stack, discarded.
const LINGER_READ: usize = 4096;

impl<IO: AsyncRead + AsyncWrite + Unpin> Tracked<IO> {
    /// Reads and discards until the peer closes, fails, or the linger ends.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut discard = [0u8; LINGER_READ];
        loop {
            if let Some(until) = self.lingering.as_mut() {
                if until.as_mut().poll(cx).is_ready() {
                    tracing::debug!("linger ended before the client closed");
                    return Poll::Ready(Ok(()));
                }
            }
            let mut buf = ReadBuf::new(&mut discard);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => self.activity.bump(),
                // The peer is gone: nothing left to protect.
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bump();
        }
        result
    }
}

// Reads, for the linger: a socket is always both.
impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.bump();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.bump();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.lingering.is_none() {
            ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
            if !this.activity.lingers() {
                return Poll::Ready(Ok(()));
            }
            this.lingering = Some(Box::pin(tokio::time::sleep(this.linger)));
        }
        this.poll_linger(cx)
    }
}

/// A place under `server.max_connections`, given back when the last holder (the connection,
/// or the tunnel it became) drops it.
#[derive(Debug)]
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    metered: bool,
    /// The connection's count in its worker's balance, if balanced.
    _occupant: Option<Occupant>,
}

impl Slot {
    /// Takes up `permit`, counted in the connections gauge if `metered` and in its worker's
    /// balance by `occupant`.
    pub(crate) fn new(
        permit: OwnedSemaphorePermit,
        metered: bool,
        occupant: Option<Occupant>,
    ) -> Self {
        if metered {
            metrics::gauge!(telemetry::CONNECTIONS).increment(1.0);
        }
        Self {
            _permit: permit,
            metered,
            _occupant: occupant,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.metered {
            metrics::gauge!(telemetry::CONNECTIONS).decrement(1.0);
        }
    }
}

/// When a connection is closed for doing nothing useful.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    /// No byte either way for this long.
    pub(crate) idle: Duration,
    /// No complete request head this long after it opened. hyper bounds each HTTP/1.1 head
    /// itself; this also bounds the bytes before hyper knows the protocol, and h2c's first
    /// request, which nothing else does.
    pub(crate) first_request: Duration,
    /// Longest lingering close (see the module docs).
    pub(crate) linger: Duration,
}

/// What a request knows of its connection (in its extensions), so that a tunnel made from it
/// keeps the connection's slot, idles out like it, and closes on shutdown.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    _slot: Arc<Slot>,
    activity: Activity,
    deadlines: Deadlines,
    stop: watch::Receiver<bool>,
}

impl Scope {
    pub(crate) fn new(
        slot: Slot,
        activity: Activity,
        deadlines: Deadlines,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            _slot: Arc::new(slot),
            activity,
            deadlines,
            stop,
        }
    }

    /// Completes when the connection should close: it has been idle too long, sent no request
    /// in time, or the server is shutting down.
    pub(crate) async fn closing(&self) -> Close {
        let mut stop = self.stop.clone();
        tokio::select! {
            () = self.activity.idle(self.deadlines.idle) => Close::Idle,
            () = self.activity.no_request_within(self.deadlines.first_request) => Close::NoRequest,
            _ = stop.wait_for(|stopped| *stopped) => Close::Shutdown,
        }
    }

    /// Serves `conn` until it ends or [`closing`](Self::closing) says it should: then, with no
    /// request ever made, drops it; else starts `graceful` and lets what is in flight finish.
    /// A peer that never lets a graceful close finish (an h2c client that does not acknowledge
    /// GOAWAY's ping) is dropped once idle again.
    pub(crate) async fn serve<C, E>(
        &self,
        conn: C,
        graceful: impl FnOnce(Pin<&mut C>),
    ) -> Result<(), E>
    where
        C: Future<Output = Result<(), E>>,
    {
        let mut conn = pin!(conn);
        // The connection's task wakes about twice per request, for hyper; the close branch
        // (two timers and a watch) is polled only when one of them woke it. It is polled
        // first: a connection that spent the task's whole cooperative budget would otherwise
        // leave its timers none, every time, and the connection would never close.
        let why = tokio::select! {
            biased;
            why = OnWake::new(self.closing()) => why,
            served = conn.as_mut() => return served,
        };
        tracing::debug!(?why, "closing connection");
        if why == Close::NoRequest {
            return Ok(());
        }
        graceful(conn.as_mut());
        tokio::select! {
            served = conn => served,
            () = self.activity.idle(self.deadlines.idle) => Ok(()),
        }
    }
}

pin_project! {
    /// A future polled once at first, and after that only when it woke the task itself: a
    /// branch of a `select!` that costs nothing when the other branches woke the task.
    struct OnWake<F> {
        #[pin]
        inner: F,
        flag: Arc<WakeFlag>,
        // `flag` as a waker, made once.
        waker: Waker,
    }
}

/// Whether an [`OnWake`] future woke its task since it was last polled, and that task.
#[derive(Debug)]
struct WakeFlag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl<F> OnWake<F> {
    fn new(inner: F) -> Self {
        let flag = Arc::new(WakeFlag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(Arc::clone(&flag));
        Self { inner, flag, waker }
    }
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> Future for OnWake<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Registered before the flag is read, so a wake-up between the two is not lost.
        this.flag.task.register(cx.waker());
        if !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.inner.poll(&mut Context::from_waker(this.waker))
    }
}

/// Why a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Close {
    /// No byte moved for `idle_timeout`.
    Idle,
    /// No request head within `header_read_timeout` of opening.
    NoRequest,
    /// The server is shutting down.
    Shutdown,
}

/// Runs `conn` to its end; when `close` completes first, starts `graceful` on it and lets it
/// finish what is in flight.
pub(crate) async fn until_closed<C: Future>(
    conn: C,
    close: impl Future<Output = ()>,
    graceful: impl FnOnce(Pin<&mut C>),
) -> C::Output {
    let mut conn = pin!(conn);
    tokio::select! {
        output = conn.as_mut() => return output,
        () = close => graceful(conn.as_mut()),
    }
    conn.await
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Counts its polls and keeps the last waker it was given; ready once `done` is set.
    #[derive(Default)]
    struct Probe {
        polls: Mutex<u32>,
        waker: Mutex<Option<Waker>>,
        done: AtomicBool,
    }

    struct Probed(Arc<Probe>);

    impl Future for Probed {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            *self.0.polls.lock().unwrap() += 1;
            *self.0.waker.lock().unwrap() = Some(cx.waker().clone());
            if self.0.done.load(Ordering::Relaxed) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    /// Counts the wake-ups of the task.
    #[derive(Default)]
    struct TaskWakes(AtomicU64);

    impl Wake for TaskWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A connection that spends its task's whole cooperative budget on every poll (as an h2c
    /// peer that keeps the socket full can make it) must not starve the close branch: with the
    /// connection polled first, the close branch's timers would always find the budget empty.
    #[tokio::test]
    async fn a_connection_that_spends_its_whole_budget_still_closes_on_time() {
        let permit = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        let deadlines = Deadlines {
            idle: Duration::from_secs(3600),
            first_request: Duration::from_millis(10),
            linger: Duration::from_secs(1),
        };
        let (_stop, stopped) = watch::channel(false);
        let scope = Scope::new(
            Slot::new(permit, false, None),
            Activity::default(),
            deadlines,
            stopped,
        );
        let busy = Arc::new(AtomicBool::new(true));
        let spinning = Arc::clone(&busy);
        let served = tokio::spawn(async move {
            let conn = async move {
                while spinning.load(Ordering::Relaxed) {
                    tokio::task::consume_budget().await;
                }
                Ok::<(), ()>(())
            };
            scope.serve(conn, |_| {}).await
        });
        let closed = tokio::time::timeout(Duration::from_secs(10), served).await;
        busy.store(false, Ordering::Relaxed);
        assert!(
            matches!(closed, Ok(Ok(Ok(())))),
            "the no-request deadline never fired: {closed:?}"
        );
    }

    #[test]
    fn a_wrapped_future_is_polled_first_and_then_only_after_its_own_wake_up() {
        let probe = Arc::new(Probe::default());
        let task = Arc::new(TaskWakes::default());
        let task_waker = Waker::from(Arc::clone(&task));
        let mut cx = Context::from_waker(&task_waker);
        let mut wrapped = pin!(OnWake::new(Probed(Arc::clone(&probe))));
        let polls = || *probe.polls.lock().unwrap();

        assert!(wrapped.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls(), 1, "the first poll reaches the inner future");

        // The task woke for something else: the inner future is not polled.
        assert!(wrapped.as_mut().poll(&mut cx).is_pending());
        assert!(wrapped.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls(), 1, "polled without a wake-up of its own");

        // The inner future wakes: the task is woken, and the next poll reaches it.
        probe.done.store(true, Ordering::Relaxed);
        let inner_waker = probe.waker.lock().unwrap().take().unwrap();
        inner_waker.wake();
        assert_eq!(task.0.load(Ordering::Relaxed), 1, "the task was woken");
        assert!(wrapped.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls(), 2);
    }
}
