//! Connections spread evenly over the [worker threads](super::workers).
//!
//! Every worker accepts from the one listening socket, and the first awake wins: a burst of
//! new connections (a load test starting, clients reconnecting after a restart) can all go to
//! one worker, which then serves most of the load while the other idles, for as long as those
//! connections live. So a worker that holds more connections than the least loaded one (by
//! more than [`SLACK`]) stops accepting until that is no longer so, and the others take the
//! new connections. A connection counts for as long as its slot under `max_connections`
//! lives: a WebSocket tunnel it became counts until it closes.
//!
//! The least loaded worker always may accept, so connections wait for a worker, not for the
//! balance. Two cases where that worker is not accepting are covered: a loop that has not
//! started, or has ended, is not counted (a worker that failed to start holds no one back),
//! and a loop held back for [`HOLD`] accepts freely from then on, until it is within the slack
//! again (a worker stalled in a long computation, merging a large document, does not throttle
//! the others). Only a loop held back is ever woken: counting a connection touches one atomic
//! and, unless a loop waits, nothing else shared.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// How many connections more than the least loaded worker one may hold and still accept.
pub(crate) const SLACK: usize = 1;

/// The longest a loop holds back for the others before it accepts anyway.
pub(crate) const HOLD: Duration = Duration::from_millis(50);

/// The count of a place no accept loop holds.
const VACANT: usize = usize::MAX;

/// The connection counts of a set of workers, shared by their accept loops.
#[derive(Debug)]
pub(crate) struct Balance {
    /// Per place, the connections its loop holds, or [`VACANT`].
    counts: Box<[AtomicUsize]>,
    /// Seats handed out so far.
    seated: AtomicUsize,
    /// Notified when a count changes while a loop is held back.
    changed: Notify,
    /// Loops held back now: a count changes without touching `changed` when none is.
    held: AtomicUsize,
    /// See [`HOLD`].
    hold: Duration,
}

impl Balance {
    /// Counts for `workers` accept loops.
    pub(crate) fn new(workers: usize) -> Arc<Self> {
        Self::holding(workers, HOLD)
    }

    fn holding(workers: usize, hold: Duration) -> Arc<Self> {
        Arc::new(Self {
            counts: (0..workers.max(1))
                .map(|_| AtomicUsize::new(VACANT))
                .collect(),
            seated: AtomicUsize::new(0),
            changed: Notify::new(),
            held: AtomicUsize::new(0),
            hold,
        })
    }

    /// The next accept loop's place, in turn; `None` past the number of workers (such a loop
    /// is not balanced).
    pub(crate) fn seat(self: &Arc<Self>) -> Option<Seat> {
        let index = self.seated.fetch_add(1, Ordering::SeqCst);
        let count = self.counts.get(index)?;
        count.store(0, Ordering::SeqCst);
        self.changed.notify_waiters();
        Some(Seat {
            balance: Arc::clone(self),
            index,
            held_since: Mutex::new(None),
        })
    }

    /// Wakes the loops held back, if any. Each count change is made (`SeqCst`) before this
    /// reads `held`, and a loop counts itself in `held` (`SeqCst`) before it reads the counts:
    /// either this sees the loop, or the loop sees the change.
    fn changed(&self) {
        if self.held.load(Ordering::SeqCst) > 0 {
            self.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
impl Balance {
    /// Completes once every place has been taken.
    pub(crate) async fn all_seated(&self) {
        loop {
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            if self.seated.load(Ordering::SeqCst) >= self.counts.len() {
                return;
            }
            changed.await;
        }
    }
}

/// One accept loop's place in a [`Balance`].
#[derive(Debug)]
pub(crate) struct Seat {
    balance: Arc<Balance>,
    index: usize,
    /// Since when this loop has been held back, if it is: once [`HOLD`] has passed, it
    /// accepts freely until it is within the slack again (the least loaded loop is stalled,
    /// and holding back again would throttle this one to an accept per hold).
    held_since: Mutex<Option<Instant>>,
}

impl Seat {
    /// Whether this loop may accept now: it holds at most [`SLACK`] connections more than the
    /// least loaded.
    pub(crate) fn may_accept(&self) -> bool {
        let counts = &self.balance.counts;
        let mine = counts[self.index].load(Ordering::SeqCst);
        let least = counts
            .iter()
            .map(|count| count.load(Ordering::SeqCst))
            .filter(|&count| count != VACANT)
            .min()
            .unwrap_or(mine);
        mine <= least + SLACK
    }

    /// Completes once this loop may accept: at once if it may now, when the others catch up,
    /// or once it has been held back for [`HOLD`] (counted from when it first was, however
    /// often the wait is started again).
    pub(crate) async fn turn(&self) {
        if self.may_accept() {
            self.held_since_set(None);
            return;
        }
        let since = {
            let mut held_since = self
                .held_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *held_since.get_or_insert_with(Instant::now)
        };
        let deadline = since + self.balance.hold;
        let _held = Held::new(&self.balance);
        loop {
            // Registered before the check, so a change between the two is not missed.
            let changed = self.balance.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            if self.may_accept() {
                self.held_since_set(None);
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return;
            }
        }
    }

    fn held_since_set(&self, value: Option<Instant>) {
        *self
            .held_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = value;
    }

    /// Counts one connection of this loop, for as long as the [`Occupant`] lives.
    pub(crate) fn occupant(&self) -> Occupant {
        self.balance.counts[self.index].fetch_add(1, Ordering::SeqCst);
        self.balance.changed();
        Occupant {
            balance: Arc::clone(&self.balance),
            index: self.index,
        }
    }
}

impl Drop for Seat {
    /// A loop that ends holds no one back.
    fn drop(&mut self) {
        self.balance.counts[self.index].store(VACANT, Ordering::SeqCst);
        self.balance.changed.notify_waiters();
    }
}

/// A loop counted in [`Balance::held`] while it lives.
struct Held<'a>(&'a Balance);

impl<'a> Held<'a> {
    fn new(balance: &'a Balance) -> Self {
        balance.held.fetch_add(1, Ordering::SeqCst);
        Self(balance)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One connection counted in its accept loop's place: held by the connection's slot, so a
/// tunnel the connection becomes is counted until it closes.
#[derive(Debug)]
pub(crate) struct Occupant {
    balance: Arc<Balance>,
    index: usize,
}

impl Drop for Occupant {
    fn drop(&mut self) {
        // A place its loop has left stays vacant.
        let count = &self.balance.counts[self.index];
        let left = count.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n != VACANT).then(|| n.saturating_sub(1))
        });
        debug_assert!(
            left.map_or(true, |n| n > 0),
            "an occupant of an empty place"
        );
        self.balance.changed();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn only_loops_within_the_slack_of_the_least_loaded_may_accept() {
        let balance = Balance::new(2);
        let a = balance.seat().expect("a place");
        // Alone (b has not started): never held back.
        let mut a_held: Vec<Occupant> = (0..5).map(|_| a.occupant()).collect();
        assert!(a.may_accept());
        let b = balance.seat().expect("a place");
        assert!(!a.may_accept(), "a holds more than the slack over b");
        assert!(b.may_accept(), "the least loaded always may");
        let b_held: Vec<Occupant> = (0..4).map(|_| b.occupant()).collect();
        assert!(a.may_accept() && b.may_accept());
        a_held.clear();
        assert!(a.may_accept() && !b.may_accept());
        // A loop that ends holds no one back, and its connections ending leave it vacant.
        drop(a);
        assert!(b.may_accept());
        drop(b_held);
        // Past the number of workers, no place.
        assert!(balance.seat().is_none());
    }

    #[tokio::test]
    async fn a_loop_waiting_its_turn_is_woken_when_the_others_catch_up() {
        // No hold: only the others catching up can end the wait.
        let balance = Balance::holding(2, Duration::from_secs(3600));
        let (a, b) = (balance.seat().expect("a"), balance.seat().expect("b"));
        let _a_held = (a.occupant(), a.occupant());
        let waiting = tokio::spawn(async move {
            a.turn().await;
            a
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let _b_held = b.occupant();
        let a = tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("woken")
            .expect("the task");
        assert!(a.may_accept());
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_held_back_accepts_freely_after_the_hold_until_within_the_slack() {
        let balance = Balance::new(2);
        let (a, b) = (balance.seat().expect("a"), balance.seat().expect("b"));
        let mut held = vec![a.occupant(), a.occupant()];
        // b is stalled: a waits once, for the hold...
        let started = Instant::now();
        a.turn().await;
        assert_eq!(started.elapsed(), HOLD);
        // ...then takes a burst at once, however often it asks, while still ahead.
        for _ in 0..40 {
            a.turn().await;
            held.push(a.occupant());
        }
        assert_eq!(
            started.elapsed(),
            HOLD,
            "not throttled to one accept per hold"
        );
        // Once back within the slack (b caught up), a is held back again.
        let _b_held: Vec<Occupant> = (0..42).map(|_| b.occupant()).collect();
        assert!(a.may_accept());
        a.turn().await;
        held.extend([a.occupant(), a.occupant()]);
        let again = Instant::now();
        a.turn().await;
        assert_eq!(again.elapsed(), HOLD);
    }

    #[tokio::test]
    async fn a_connection_counts_until_the_tunnel_it_became_closes() {
        use crate::serve::connection::{Activity, Deadlines, Scope, Slot};

        let balance = Balance::holding(2, Duration::from_secs(3600));
        let (a, _b) = (balance.seat().expect("a"), balance.seat().expect("b"));
        let permits = Arc::new(tokio::sync::Semaphore::new(1));
        let permit = permits.try_acquire_owned().expect("a permit");
        let deadlines = Deadlines {
            idle: Duration::from_secs(60),
            first_request: Duration::from_secs(60),
            linger: Duration::from_secs(60),
        };
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        // As the accept loop builds a connection's scope; a WebSocket tunnel keeps a clone.
        let slot = Slot::new(permit, false, Some(a.occupant()));
        let connection = Scope::new(slot, Activity::default(), deadlines, stopped);
        let _another = a.occupant();
        assert!(!a.may_accept(), "two connections against none");
        let tunnel = connection.clone();
        // The HTTP connection is done (101): its task ends, the tunnel goes on.
        drop(connection);
        assert!(!a.may_accept(), "the tunnel still counts");
        drop(tunnel);
        assert!(a.may_accept());
    }
}

#[cfg(test)]
mod on_workers {
    //! The balance in the accept loops of real worker threads, on a real socket.
    use std::convert::Infallible;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::Response;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use crate::config::ServerConfig;
    use crate::serve::HeadLimits;
    use crate::serve::{Draining, connection_builder, on_workers, serve_connections};

    #[tokio::test]
    async fn a_burst_of_connections_is_spread_evenly_over_the_workers() {
        const CONNECTIONS: usize = 40;
        let server = ServerConfig::default();
        let mut connections = connection_builder(&server, HeadLimits::new(&server).ceiling());
        // No hold: on a loaded machine a worker may take longer than HOLD to wake.
        connections.balance = Some(super::Balance::holding(2, Duration::from_secs(3600)));
        // Answers the name of the thread that serves the connection.
        let service = tower::service_fn(|_req| async {
            let name = std::thread::current().name().unwrap_or("?").to_owned();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name))))
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let balance = connections.balance.clone().expect("balanced");
        let serve = move |listener, draining: Draining| {
            let connections = connections.clone();
            async move {
                serve_connections(
                    listener,
                    connections,
                    service,
                    draining.started(),
                    Duration::from_secs(1),
                )
                .await;
            }
        };
        let served = tokio::spawn(on_workers(
            listener,
            2,
            async {
                let _ = stopped.await;
            },
            serve,
        ));

        // A loop alone is never held back: the burst comes once both have started.
        tokio::time::timeout(Duration::from_secs(30), balance.all_seated())
            .await
            .expect("both workers started");
        // Every connection opened, and kept open, before any request: a burst.
        let mut streams = Vec::new();
        for _ in 0..CONNECTIONS {
            streams.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let mut served_by = std::collections::HashMap::<String, usize>::new();
        for stream in &mut streams {
            let exchange = async {
                stream
                    .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
                    .await
                    .expect("write");
                let mut answer = Vec::new();
                let mut buf = [0u8; 512];
                while !answer.ends_with(b"ifmatch-worker-0")
                    && !answer.ends_with(b"ifmatch-worker-1")
                {
                    let n = stream.read(&mut buf).await.expect("read");
                    assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
                    answer.extend_from_slice(&buf[..n]);
                }
                answer
            };
            let answer = tokio::time::timeout(Duration::from_secs(30), exchange)
                .await
                .expect("answered in time");
            let text = String::from_utf8_lossy(&answer);
            let worker = text.rsplit("\r\n").next().unwrap_or_default().to_owned();
            *served_by.entry(worker).or_default() += 1;
        }
        // A loop takes a connection only while it holds at most SLACK more than the other, and
        // none closes: the two end at most SLACK + 1 apart.
        let counts: Vec<usize> = served_by.values().copied().collect();
        assert_eq!(counts.len(), 2, "{served_by:?}");
        assert!(
            counts.iter().all(|&n| n >= CONNECTIONS / 2 - 2),
            "{served_by:?}"
        );
        drop(streams);
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(30), served)
            .await
            .expect("stopped in time")
            .expect("the task")
            .expect("served");
    }
}
