//! Worker threads: one listener served by several threads, each running a single-threaded
//! tokio runtime with an accept loop of its own, as nginx's worker processes share one
//! listening socket.
//!
//! A connection, its requests and its pooled upstream connections then stay on the thread
//! that accepted it: no work stealing, and no wake-up crosses threads on the request path
//! (what the data plane's [`Workers`] setting buys, measured in BENCHMARKS.md). What the
//! threads share (the store, the route table, the connection limit) is shared as before,
//! behind its own locks.
//!
//! Every worker accepts from a duplicate of the one listening socket; the kernel hands each
//! connection to one of the accept calls waiting. Dropping [`on_workers`]'s future before it
//! completes stops the workers at once, as dropping an accept loop's future would.

use std::future::Future;
use std::io;
use std::net::TcpListener as StdListener;
use std::thread;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

/// How far the workers are told to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Serving,
    /// Stop accepting, finish what is in flight (the serve future's own grace).
    Draining,
    /// Stop now: the caller is gone.
    Abort,
}

/// Completes once the workers are told to stop accepting (the caller's shutdown completed).
pub(crate) struct Draining(watch::Receiver<Stage>);

impl Draining {
    /// The signal for an accept loop on the caller's runtime: it is set once the first
    /// future, which awaits `shutdown`, completes.
    pub(crate) fn on(shutdown: impl Future<Output = ()>) -> (impl Future<Output = ()>, Self) {
        let (stage, staged) = watch::channel(Stage::Serving);
        let stop = async move {
            shutdown.await;
            stage.send_replace(Stage::Draining);
        };
        (stop, Self(staged))
    }

    /// Completes when draining starts (or the caller is gone).
    pub(crate) async fn started(mut self) {
        let _ = self.0.wait_for(|stage| *stage != Stage::Serving).await;
    }
}

/// Serves `listener` on `workers` threads until `shutdown` completes: each thread runs the
/// future `serve` makes from its duplicate of the listener and a [`Draining`] signal, on a
/// single-threaded runtime of its own, and this completes once every one has returned.
///
/// # Errors
/// The listener cannot be duplicated, or a runtime or thread cannot be started (nothing is
/// served then).
pub(crate) async fn on_workers<F, Fut>(
    listener: TcpListener,
    workers: usize,
    shutdown: impl Future<Output = ()>,
    serve: F,
) -> io::Result<()>
where
    F: Fn(TcpListener, Draining) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()>,
{
    let listener = listener.into_std()?;
    let (stage, staged) = watch::channel(Stage::Serving);
    let mut stopper = Stopper(Some(stage));
    let mut done = Vec::with_capacity(workers);
    for index in 0..workers.max(1) {
        let socket = listener.try_clone()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (finished, finishing) = oneshot::channel::<()>();
        let staged = staged.clone();
        let serve = serve.clone();
        thread::Builder::new()
            .name(format!("ifmatch-worker-{index}"))
            .spawn(move || {
                runtime.block_on(worker(socket, staged, serve));
                // The runtime's remaining tasks are dropped with it, before the caller hears.
                drop(runtime);
                drop(finished);
            })?;
        done.push(finishing);
    }
    drop(listener);
    shutdown.await;
    stopper.stage(Stage::Draining);
    for finishing in done {
        // An error is a worker that ended (or panicked, and said so) without a word.
        let _ = finishing.await;
    }
    stopper.0 = None;
    Ok(())
}

/// One worker: its listener registered with its own runtime, served until told to abort.
async fn worker<F, Fut>(socket: StdListener, mut staged: watch::Receiver<Stage>, serve: F)
where
    F: Fn(TcpListener, Draining) -> Fut,
    Fut: Future<Output = ()>,
{
    let listener = match TcpListener::from_std(socket) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "worker cannot listen");
            return;
        }
    };
    let draining = Draining(staged.clone());
    tokio::select! {
        biased;
        _ = staged.wait_for(|stage| *stage == Stage::Abort) => {}
        () = serve(listener, draining) => {}
    }
}

/// Tells the workers to abort unless told otherwise first: a caller that stops waiting for
/// [`on_workers`] takes its workers with it.
struct Stopper(Option<watch::Sender<Stage>>);

impl Stopper {
    fn stage(&mut self, stage: Stage) {
        if let Some(sender) = &self.0 {
            sender.send_replace(stage);
        }
    }
}

impl Drop for Stopper {
    fn drop(&mut self) {
        self.stage(Stage::Abort);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::mpsc;

    use super::*;

    async fn answer(addr: std::net::SocketAddr) -> String {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut name = String::new();
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_string(&mut name));
        read.await.expect("answered in time").expect("read");
        name
    }

    #[tokio::test]
    async fn every_worker_serves_the_one_listener_until_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Each worker answers one connection with its thread's name, then blocks its thread
        // until the other has answered one too: the second connection can only be accepted by
        // the worker that did not take the first.
        let both = Arc::new(Barrier::new(2));
        let serve = move |listener: TcpListener, draining: Draining| {
            let both = both.clone();
            async move {
                let (mut stream, _) = listener.accept().await.expect("accept");
                let name = thread::current().name().unwrap_or("?").to_owned();
                stream.write_all(name.as_bytes()).await.expect("write");
                drop(stream);
                both.wait();
                draining.started().await;
            }
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(on_workers(
            listener,
            2,
            async move {
                let _ = stopped.await;
            },
            serve,
        ));
        let names = HashSet::from([answer(addr).await, answer(addr).await]);
        assert_eq!(
            names,
            HashSet::from(["ifmatch-worker-0".to_owned(), "ifmatch-worker-1".to_owned()])
        );
        let _ = stop.send(());
        served.await.expect("joined").expect("served");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener is closed once every worker returned"
        );
    }

    #[tokio::test]
    async fn dropping_the_future_aborts_the_workers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (ready, mut readied) = mpsc::channel::<()>(2);
        // Every worker's serve future holds a sender: all gone means every worker ended.
        let (alive, mut gone) = mpsc::channel::<()>(1);
        let serve = move |listener: TcpListener, _: Draining| {
            let (ready, alive) = (ready.clone(), alive.clone());
            async move {
                let _alive = alive;
                let _listener = listener;
                let _ = ready.send(()).await;
                std::future::pending::<()>().await;
            }
        };
        let served = tokio::spawn(on_workers(listener, 2, std::future::pending(), serve));
        for _ in 0..2 {
            readied.recv().await.expect("a worker started");
        }
        served.abort();
        let _ = served.await;
        assert!(gone.recv().await.is_none(), "every worker ended");
        // The last listener went with the last worker.
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
