//! The composition root: a [`Config`] becomes a running proxy.
//!
//! This is the one module that knows every other: it turns the config into the store
//! (in-memory or Redis, per `[store] kind`), the route table, the limits and the upstream
//! client; orders them with [`proxy::stack`]; and serves the data plane and the
//! [admin API](crate::admin) on their listeners with the [accept loop](crate::serve). Nothing
//! below imports it, so the layers it wires never know of each other.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use ifmatch::app::Server;
//! use ifmatch::config::{Config, Overrides};
//!
//! let config = Config::from_overrides(&Overrides {
//!     upstream: Some("http://127.0.0.1:3000".into()),
//!     ..Overrides::default()
//! })?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! Server::new(config)?
//!     .serve(listener, async { tokio::signal::ctrl_c().await.ok(); })
//!     .await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use futures_util::FutureExt;
use tokio::net::TcpListener;

use crate::admin::{self, Admin, Token, serve_admin};
use crate::config::{Config, ConfigError, Overrides, Route, StoreConfig, StoreKind};
use crate::guard::{Versions, WritesInFlight};
use crate::proxy::{
    self, DiscardLimits, Hotspots, IdempotencyLayer, Mode, RouteTable, Routes, UpstreamClient,
    stack,
};
use crate::serve::{
    Draining, HeadLimits, ServeError, bind, connection_builder, local_addr, on_workers,
    serve_connections,
};
use crate::store::idempotency::{AnyRecords, MemoryRecords};
use crate::store::{AnyStore, BoxError, MemoryStore, Store};
use crate::telemetry;

/// Why the proxy could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The configured store could not be built.
    #[error("cannot set up the store")]
    Store(#[source] BoxError),
    /// A listener could not serve.
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// The store `config` (validated) describes. A Redis store connects lazily, so Redis need not
/// be up yet: until it is, the store is unavailable. Must be called within a tokio runtime.
///
/// # Errors
/// The Redis URL is invalid, or this build has no Redis support.
pub fn store(config: &StoreConfig) -> Result<AnyStore, BoxError> {
    match config.kind {
        StoreKind::Memory => Ok(AnyStore::Memory(MemoryStore::new(config.memory()))),
        #[cfg(feature = "redis")]
        StoreKind::Redis => Ok(AnyStore::Redis(crate::store::RedisStore::new(
            config.redis(),
        )?)),
        #[cfg(not(feature = "redis"))]
        StoreKind::Redis => Err("this build has no redis support".into()),
    }
}

/// The idempotency records beside `store`: in memory (bounded as `config` says), or on the
/// same Redis as the validators, so that replicas share them.
pub fn records(config: &StoreConfig, store: &AnyStore) -> AnyRecords {
    match store {
        AnyStore::Memory(_) => AnyRecords::Memory(MemoryRecords::new(config.memory_records())),
        #[cfg(feature = "redis")]
        AnyStore::Redis(store) => AnyRecords::Redis(crate::store::RedisRecords::new(store)),
    }
}

/// The proxy, configured and ready to serve: the data plane, and beside it the admin API,
/// sharing one store, route table and hot-spot tracker.
///
/// ```no_run
/// # async fn run(config: ifmatch::config::Config) -> Result<(), Box<dyn std::error::Error>> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// ifmatch::app::Server::new(config)?
///     .passthrough(true)
///     .serve(listener, std::future::pending())
///     .await?;
/// # Ok(()) }
/// ```
pub struct Server<St = AnyStore> {
    config: Config,
    routes: Vec<Route>,
    passthrough: bool,
    store: St,
    /// The `Idempotency-Key` records, beside the validators.
    records: AnyRecords,
    /// The live table: [`reload`](proxy::reload) swaps it while serving.
    table: Routes,
    hotspots: Hotspots,
}

impl Server<AnyStore> {
    /// A proxy for `config`, guarding writes with the store its `[store]` section configures.
    /// Must be called within a tokio runtime (a Redis store starts its connection manager).
    ///
    /// # Errors
    /// The config is invalid ([`Error::Config`]), or its store cannot be built
    /// ([`Error::Store`]).
    pub fn new(config: Config) -> Result<Self, Error> {
        let routes = config.routes()?;
        let store = store(&config.store).map_err(Error::Store)?;
        let records = records(&config.store, &store);
        tracing::info!(kind = ?config.store.kind, key_prefix = %config.store.key_prefix, "store");
        Ok(Self {
            config,
            table: Routes::new(RouteTable::new(routes.clone())),
            routes,
            passthrough: false,
            store,
            records,
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
            store,
            records: self.records,
            table: self.table,
            hotspots: self.hotspots,
        }
    }

    /// Keeps `Idempotency-Key` records in `records` instead of the configured ones.
    #[must_use]
    pub fn records(mut self, records: AnyRecords) -> Self {
        self.records = records;
        self
    }

    /// The configuration served.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The live route table, for [`reload`](proxy::reload).
    pub fn routes(&self) -> Routes {
        self.table.clone()
    }

    /// The conflict hot spots the data plane counts.
    pub fn hotspots(&self) -> Hotspots {
        self.hotspots.clone()
    }

    /// Serves the data plane on `listener` until `shutdown` completes, then drains in-flight
    /// requests for at most `server.shutdown_timeout`. It runs on `server.workers` threads of
    /// its own (one per CPU unless set; 0: on the caller's runtime); dropping the future
    /// stops them.
    ///
    /// # Errors
    /// None yet: accept errors are logged and retried.
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
        if let Some(records) = &plane.records {
            api = api.records(records.clone());
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
        let store = (!self.passthrough).then_some(self.store);
        let plane = Plane {
            records: (!self.passthrough).then_some(self.records),
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
    /// None in passthrough mode.
    records: Option<AnyRecords>,
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
        let writes = WritesInFlight::default();
        // One memory for every route, kept across reloads (they swap the route table only).
        let versions = Versions::new(server.version_memory_bytes);
        let mode = match store {
            Some(store) => Mode::Guard(store, writes.clone(), versions),
            None => Mode::Passthrough,
        };
        let limits = HeadLimits::new(server);
        // Clones share the connection limit: every worker's accept loop counts against it.
        let workers = server.worker_threads();
        let connections = connection_builder(server, limits.ceiling())
            .metered()
            .balanced(workers);
        tracing::info!(
            addr = %local_addr(&listener),
            passthrough = self.passthrough,
            workers,
            "proxy listening"
        );
        // Each accept loop builds its own stack, so that the upstream client's pooled
        // connections belong to the runtime that drives them; all share the state.
        let table = self.table.clone();
        let records = self.records.clone();
        let hotspots = self.hotspots.clone();
        let server = server.clone();
        let accept_loop = move |listener: TcpListener, stop: Draining| {
            let service = stack(
                table.clone(),
                UpstreamClient::new(&server),
                mode.clone(),
                records
                    .clone()
                    .map(|records| IdempotencyLayer::new(records, server.body_read_timeout)),
                Some(hotspots.clone()),
                limits,
                DiscardLimits::new(&server),
            );
            let (connections, writes) = (connections.clone(), writes.clone());
            let (grace, bound) = (server.shutdown_timeout, server.write_outcome_timeout);
            async move {
                serve_connections(listener, connections, service, stop.started(), grace).await;
                // A write whose client is gone may still be running upstream, on this loop's
                // runtime: its outcome decides its resource's state, so it is awaited (each
                // ends within write_outcome_timeout).
                drain_writes(&writes, bound).await;
            }
        };
        if workers == 0 {
            let (stop, draining) = Draining::on(shutdown);
            tokio::join!(stop, accept_loop(listener, draining));
        } else {
            on_workers(listener, workers, shutdown, accept_loop)
                .await
                .map_err(|source| ServeError::Workers { workers, source })?;
        }
        tracing::info!("proxy stopped");
        Ok(())
    }
}

/// Waits, for at most `bound`, until no forwarded write is in flight.
async fn drain_writes(writes: &WritesInFlight, bound: std::time::Duration) {
    if writes.in_flight() == 0 {
        return;
    }
    tracing::info!(
        writes = writes.in_flight(),
        "waiting for forwarded writes to finish"
    );
    if tokio::time::timeout(bound, writes.drained()).await.is_err() {
        tracing::warn!(
            writes = writes.in_flight(),
            "forwarded writes still running at exit"
        );
    }
}

/// Reloads routes and policies from `path` into `routes` on each SIGHUP (with the same
/// command-line `overrides` as at start); a bad file is logged and ignored.
pub async fn reload_on_sighup(path: PathBuf, overrides: Overrides, routes: Routes) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for sighup: reload disabled");
                return;
            }
        };
        tracing::info!(file = %path.display(), "send SIGHUP to reload routes and policies");
        while hangups.recv().await.is_some() {
            // reload() logs both outcomes.
            let _ = proxy::reload(&path, &overrides, &routes);
        }
    }
    #[cfg(not(unix))]
    let _ = (path, overrides, routes);
}

/// `ifmatch demo`: the bundled [demo API](crate::demo) on `api_listen` and, unless
/// `api_only`, the proxy in front of it as `proxy` configures it (its upstream is the demo
/// API), with its admin API, until `shutdown`.
///
/// # Errors
/// A listener cannot be bound, or the proxy's config is invalid.
pub async fn demo(
    api_listen: SocketAddr,
    proxy: Overrides,
    api_only: bool,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let shutdown = shutdown.shared();
    let api = bind(api_listen).await?;
    let api_url = format!("http://{}", local_addr(&api));
    if api_only {
        tracing::info!(api = %api_url, hint = %format!("curl -i {api_url}/items/1"), "demo api only");
        crate::demo::serve(api, shutdown).await;
        return Ok(());
    }
    let config = Config::from_overrides(&Overrides {
        upstream: Some(api_url.clone()),
        ..proxy
    })?;
    let listener = bind(config.server.listen).await?;
    let admin = bind(config.server.admin_listen).await?;
    let proxy_url = format!("http://{}", local_addr(&listener));
    let server = Server::new(config)?;
    tracing::info!(
        api = %api_url,
        proxy = %proxy_url,
        hint = %format!("curl -i {proxy_url}/items/1"),
        "demo running"
    );
    let (_, served) = tokio::join!(
        crate::demo::serve(api, shutdown.clone()),
        server.serve_with_admin(listener, admin, shutdown),
    );
    Ok(served?)
}
