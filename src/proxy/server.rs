//! Serves a tower service on a TCP listener: HTTP/1.1 and h2c, bounded header reads, at most
//! `max_connections` at once (503 past it), idle connections closed, WebSocket upgrades, the
//! client's address in each request, and graceful shutdown.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
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

use super::client::UpstreamClient;
use super::connection::{Activity, Deadlines, Scope, Slot, Tracked, until_closed};
use super::discard::DiscardLimits;
use super::forward::ClientAddr;
use super::head_limit::{HYPER_DEFAULT_MAX_HEADERS, HeadLimits};
use super::router::{RouteTable, Routes};
use super::stack::{Mode, stack};
use crate::admin::{self, Admin, Token, serve_admin};
use crate::config::{Config, ConfigError, Route, ServerConfig};
use crate::guard::{Rejection, RejectionKind, ResponseBody};
use crate::hotspots::Hotspots;
use crate::store::{MemoryStore, Store};
use crate::telemetry;

/// Why the proxy could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Binds a listener, naming the address in the error.
///
/// # Errors
/// [`ServeError::Bind`] when the address is taken or not local.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

type MakeStore<St> = Box<dyn FnOnce(&Config) -> St + Send>;

/// The proxy, configured and ready to serve.
///
/// ```no_run
/// # async fn run(config: ifmatch::config::Config) -> Result<(), Box<dyn std::error::Error>> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// ifmatch::proxy::Server::new(config)?
///     .passthrough(true)
///     .serve(listener, std::future::pending())
///     .await?;
/// # Ok(()) }
/// ```
pub struct Server<St = MemoryStore> {
    config: Config,
    routes: Vec<Route>,
    passthrough: bool,
    make_store: MakeStore<St>,
    /// The live table: [`reload`](super::reload) swaps it while serving.
    table: Routes,
    hotspots: Hotspots,
}

impl Server<MemoryStore> {
    /// A proxy for `config`, guarding writes with the in-memory store.
    ///
    /// # Errors
    /// The config is invalid.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        let routes = config.routes()?;
        Ok(Self {
            config,
            table: Routes::new(RouteTable::new(routes.clone())),
            routes,
            passthrough: false,
            make_store: Box::new(|config| MemoryStore::new(config.store.memory())),
            hotspots: Hotspots::default(),
        })
    }
}

impl<St: Store> Server<St> {
    /// Forwards everything unchecked (no guard, no store): a baseline for benchmarks.
    #[must_use]
    pub fn passthrough(mut self, on: bool) -> Self {
        self.passthrough = on;
        self
    }

    /// Guards writes with `store` instead of the configured one.
    #[must_use]
    pub fn store<T: Store>(self, store: T) -> Server<T> {
        Server {
            config: self.config,
            routes: self.routes,
            passthrough: self.passthrough,
            make_store: Box::new(move |_| store),
            table: self.table,
            hotspots: self.hotspots,
        }
    }

    /// The configuration served.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The live route table, for [`reload`](super::reload).
    pub fn routes(&self) -> Routes {
        self.table.clone()
    }

    /// The conflict hot spots the data plane counts.
    pub fn hotspots(&self) -> Hotspots {
        self.hotspots.clone()
    }

    /// Serves the data plane on `listener` until `shutdown` completes, then drains in-flight
    /// requests for at most `server.shutdown_timeout`.
    ///
    /// # Errors
    /// None yet: accept errors are logged and retried. (A networked store will fail here.)
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let (store, plane) = self.split();
        plane.serve(store, listener, shutdown).await
    }

    /// Serves the data plane on `listener` and the admin API on `admin` until `shutdown`,
    /// sharing one store, route table and hot-spot tracker.
    ///
    /// # Errors
    /// As [`Server::serve`].
    pub async fn serve_with_admin(
        self,
        listener: TcpListener,
        admin: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let (store, plane) = self.split();
        let metrics = admin::prometheus::handle();
        // Every documented series from the first scrape on, at zero.
        telemetry::register(plane.routes.iter().map(|route| &*route.id));
        let mut api = Admin::default()
            .token(plane.config.admin.token.as_deref().map(Token::new))
            .routes(plane.table.clone())
            .hotspots(plane.hotspots.clone())
            .metrics(metrics)
            .probe_timeout(plane.config.server.connect_timeout);
        if let Some(store) = &store {
            api = api.store(store.clone());
        }
        let shutdown = shutdown.shared();
        tokio::try_join!(
            plane.serve(store, listener, shutdown.clone()),
            serve_admin(admin, api, shutdown)
        )?;
        Ok(())
    }

    /// Binds `server.listen` and `server.admin_listen` and serves both until `shutdown`.
    ///
    /// # Errors
    /// A listener cannot be bound.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServeError> {
        let listener = bind(self.config.server.listen).await?;
        let admin = bind(self.config.server.admin_listen).await?;
        self.serve_with_admin(listener, admin, shutdown).await
    }

    /// The store (none in passthrough mode), and everything else the data plane needs.
    fn split(self) -> (Option<St>, Plane) {
        let store = (!self.passthrough).then(|| (self.make_store)(&self.config));
        let plane = Plane {
            config: self.config,
            routes: self.routes,
            passthrough: self.passthrough,
            table: self.table,
            hotspots: self.hotspots,
        };
        (store, plane)
    }
}

/// The data plane, without its store.
struct Plane {
    config: Config,
    routes: Vec<Route>,
    passthrough: bool,
    table: Routes,
    hotspots: Hotspots,
}

impl Plane {
    async fn serve<St: Store>(
        self,
        store: Option<St>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let server = &self.config.server;
        for route in &self.routes {
            tracing::info!(
                route = %route.id,
                host = route.host.as_deref().unwrap_or("*"),
                path_prefix = %route.path_prefix,
                upstream = %route.upstream,
                "route"
            );
        }
        let mode = match store {
            Some(store) => Mode::Guard(store),
            None => Mode::Passthrough,
        };
        let limits = HeadLimits::new(server);
        let service = stack(
            self.table.clone(),
            UpstreamClient::new(server),
            mode,
            Some(self.hotspots.clone()),
            limits,
            DiscardLimits::new(server),
        );
        tracing::info!(
            addr = %local_addr(&listener),
            passthrough = self.passthrough,
            "proxy listening"
        );
        serve_connections(
            listener,
            connection_builder(server, limits.ceiling()).metered(),
            service,
            shutdown,
            server.shutdown_timeout,
        )
        .await;
        tracing::info!("proxy stopped");
        Ok(())
    }
}

/// The listener's address, for logs.
pub(crate) fn local_addr(listener: &TcpListener) -> String {
    listener.local_addr().map_or_else(
        |error| format!("unknown ({error})"),
        |addr| addr.to_string(),
    )
}

/// How client connections are served: an HTTP/1.1 + h2c (prior knowledge) builder with the
/// header limits of `server`, and the connection limits.
#[derive(Clone)]
pub(crate) struct Connections {
    builder: auto::Builder<TokioExecutor>,
    max_connections: usize,
    deadlines: Deadlines,
    /// Whether the connection metrics count these (the data plane's, not the admin API's).
    metered: bool,
}

impl Connections {
    /// Counts these connections in the connection metrics.
    pub(crate) fn metered(mut self) -> Self {
        self.metered = true;
        self
    }
}

/// How [`serve_connections`] serves each connection, with the limits of `server`; hyper
/// refuses request heads over `heads` itself, with its bare 431 (the data plane passes a
/// ceiling above the configured limits, which [`HeadLimit`](super::HeadLimit) enforces).
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
        deadlines: Deadlines {
            idle: server.idle_timeout,
            first_request: server.header_read_timeout,
            // As long as a client may take to send a body, so that it can finish sending one
            // it was answered before.
            linger: server.body_read_timeout,
        },
        metered: false,
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
    let slots = Arc::new(Semaphore::new(connections.max_connections));
    let refusals = Arc::new(Semaphore::new(REFUSALS_ANSWERED));
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
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
            accepted = listener.accept() => match accepted {
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
            Slot::new(permit, connections.metered),
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
