//! The accept loop: connections accepted and served, HTTP/1.1 and h2c, at most
//! `max_connections` at once (503 past it), each closed once idle, and graceful shutdown.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tower::{Service, ServiceExt};

use super::balance::{Balance, Seat};
use super::client_addr::ClientAddr;
use super::connection::{Activity, Deadlines, Scope, Slot, Tracked, until_closed};
use super::head_limits::{HYPER_DEFAULT_MAX_HEADERS, HeadLimits};
use crate::config::ServerConfig;
use crate::guard::{Rejection, RejectionKind, ResponseBody};
use crate::telemetry;

/// How client connections are served: an HTTP/1.1 + h2c (prior knowledge) builder with the
/// header limits of `server`, and the connection limits. Clones share the limits: the accept
/// loops of every [worker](super::workers) count against one `max_connections`.
#[derive(Clone)]
pub(crate) struct Connections {
    builder: auto::Builder<TokioExecutor>,
    max_connections: usize,
    /// A permit per connection served.
    slots: Arc<Semaphore>,
    /// A permit per connection past `max_connections` being answered 503.
    refusals: Arc<Semaphore>,
    deadlines: Deadlines,
    /// Whether the connection metrics count these (the data plane's, not the admin API's).
    metered: bool,
    /// Shared by the accept loops of the worker threads, to spread connections evenly.
    pub(super) balance: Option<Arc<Balance>>,
}

impl Connections {
    /// Counts these connections in the connection metrics.
    pub(crate) fn metered(mut self) -> Self {
        self.metered = true;
        self
    }

    /// Spreads connections evenly over the `workers` accept loops serving these (see
    /// [`super::balance`]); each loop takes a place when it starts.
    pub(crate) fn balanced(mut self, workers: usize) -> Self {
        self.balance = (workers > 1).then(|| Balance::new(workers));
        self
    }
}

/// How [`serve_connections`] serves each connection, with the limits of `server`; hyper
/// refuses request heads over `heads` itself, with its bare 431 (the data plane passes a
/// ceiling above the configured limits, which the proxy's head limit layer enforces).
pub(crate) fn connection_builder(server: &ServerConfig, heads: HeadLimits) -> Connections {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let mut http1 = builder.http1();
    http1
        .timer(TokioTimer::new())
        // hyper 1.x also runs this timer while a keep-alive connection waits for its next
        // request: an idle HTTP/1.1 connection is closed after it.
        .header_read_timeout(server.header_read_timeout)
        .max_buf_size(heads.max_bytes);
    // At its default, hyper parses into an array on the stack; any explicit count, even the
    // same, makes it build one per request (about 1k instructions), more than 100 a heap one.
    if heads.max_headers != HYPER_DEFAULT_MAX_HEADERS {
        http1.max_headers(heads.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX));
    Connections {
        builder,
        max_connections: server.max_connections,
        slots: Arc::new(Semaphore::new(server.max_connections)),
        refusals: Arc::new(Semaphore::new(REFUSALS_ANSWERED)),
        deadlines: Deadlines {
            idle: server.idle_timeout,
            first_request: server.header_read_timeout,
            // As long as a client may take to send a body, so that it can finish sending one
            // it was answered before.
            linger: server.body_read_timeout,
        },
        metered: false,
        balance: None,
    }
}

/// Connections past `max_connections` answered 503 at once; past these too, they are closed
/// unanswered, so a flood costs no more than this many small tasks.
const REFUSALS_ANSWERED: usize = 64;

/// Accepts connections and serves `service` on each until `shutdown`; then stops accepting,
/// lets in-flight requests finish for at most `grace`, and drops what remains.
///
/// At most `max_connections` are served at once (WebSocket tunnels included); each is closed
/// once idle for `idle_timeout`, or if it sends no request head within `header_read_timeout`.
pub(crate) async fn serve_connections<S, B>(
    listener: TcpListener,
    connections: Connections,
    service: S,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let slots = connections.slots.clone();
    let refusals = connections.refusals.clone();
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let seat = connections.balance.as_ref().and_then(Balance::seat);
    loop {
        let (stream, remote) = tokio::select! {
            () = &mut shutdown => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(error) = done {
                    if error.is_panic() {
                        tracing::error!(%error, "connection task panicked");
                    }
                }
                continue;
            }
            // Accept is cancel-safe: a turn that ends unaccepted loses nothing.
            accepted = async {
                if let Some(seat) = &seat {
                    seat.turn().await;
                }
                listener.accept().await
            } => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "set_nodelay failed");
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            if connections.metered {
                metrics::counter!(telemetry::CONNECTIONS_REFUSED).increment(1);
            }
            match refusals.clone().try_acquire_owned() {
                Ok(permit) => {
                    tasks.spawn(refuse(connections.clone(), stream, remote, permit));
                }
                Err(_) => tracing::debug!(%remote, "too many connections, closed unanswered"),
            }
            continue;
        };
        let activity = Activity::default();
        let scope = Scope::new(
            Slot::new(
                permit,
                connections.metered,
                seat.as_ref().map(Seat::occupant),
            ),
            activity.clone(),
            connections.deadlines,
            stopped.clone(),
        );
        let tunnel_scope = scope.clone();
        let (requests, responses) = (activity.clone(), activity.clone());
        let client = ClientAddr::new(remote);
        let service = service
            .clone()
            .map_request(move |mut req: Request<Incoming>| {
                requests.requested();
                req.extensions_mut().insert(client.clone());
                // Only a handshake can become a tunnel that needs its connection's scope.
                if req.headers().contains_key(header::UPGRADE) {
                    req.extensions_mut().insert(tunnel_scope.clone());
                }
                req
            })
            .map_response(move |res: Response<B>| {
                responses.observe(&res);
                res
            });
        let connection = connections
            .builder
            .serve_connection_with_upgrades(
                TokioIo::new(Tracked::new(stream, activity, connections.deadlines.linger)),
                TowerToHyperService::new(service),
            )
            .into_owned();
        tasks.spawn(async move {
            let served = scope.serve(connection, |connection| connection.graceful_shutdown());
            if let Err(error) = served.await {
                tracing::debug!(%remote, %error, "connection closed with error");
            }
        });
    }
    drop(listener);
    stop.send_replace(true);
    tracing::debug!(connections = tasks.len(), "draining");
    let all = u32::try_from(connections.max_connections).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(grace, async {
        while tasks.join_next().await.is_some() {}
        // Tunnels hold their connection's slot: every slot back means every tunnel ended.
        let _ = slots.acquire_many(all).await;
    });
    if drained.await.is_err() {
        tracing::warn!(
            connections = tasks.len(),
            ?grace,
            "shutdown timeout, dropping connections"
        );
    }
    tasks.shutdown().await;
}

/// Answers a connection past `max_connections`: 503 problem+json with `Retry-After` to its
/// first request (HTTP/1.1 or h2c), then closes it; bounded by the header read timeout.
async fn refuse(
    connections: Connections,
    stream: TcpStream,
    remote: SocketAddr,
    _answering: OwnedSemaphorePermit,
) {
    let answered = Notify::new();
    let service = hyper::service::service_fn(|req: Request<Incoming>| {
        answered.notify_one();
        let response = too_many_connections(&req);
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = connections
        .builder
        .serve_connection(TokioIo::new(stream), service);
    let served = until_closed(connection, answered.notified(), |connection| {
        connection.graceful_shutdown();
    });
    match tokio::time::timeout(connections.deadlines.first_request, served).await {
        Ok(Ok(())) => tracing::debug!(%remote, "too many connections, refused"),
        Ok(Err(error)) => tracing::debug!(%remote, %error, "refused connection failed"),
        Err(_) => tracing::debug!(%remote, "refused connection timed out"),
    }
}

/// The 503 a connection past `max_connections` gets.
fn too_many_connections(req: &Request<Incoming>) -> Response<ResponseBody<Incoming>> {
    let mut response = Rejection::new(
        RejectionKind::TooManyConnections,
        StatusCode::SERVICE_UNAVAILABLE,
        req.uri().path(),
        "the proxy is serving as many connections as it may (server.max_connections); \
         retry shortly",
    )
    .into_response();
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    // HTTP/2 has no Connection header: GOAWAY closes it instead.
    if req.version() < Version::HTTP_2 {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Errors about one connection are the client's business; others (out of file descriptors)
/// would spin the loop, so they pause accepting briefly.
async fn accept_failed(error: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(%error, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}
