//! Serving a tower service on a TCP listener, for every listener the crate has (the data
//! plane, the admin API, the demo API): HTTP/1.1 and h2c, bounded header reads, at most
//! `max_connections` at once (503 past it), idle connections closed, the client's address in
//! each request, lingering closes, and graceful shutdown; on the caller's runtime or on
//! worker threads of their own.
//!
//! This module knows sockets and hyper, not what is served: the proxy's stack, the admin API
//! and the demo API are services handed to its accept loop by their callers, above it.

mod accept;
mod balance;
mod client_addr;
pub(crate) mod connection;
mod head_limits;
mod workers;

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tower::Service;

pub(crate) use accept::{connection_builder, serve_connections};
pub use client_addr::ClientAddr;
pub use head_limits::HeadLimits;
pub(crate) use workers::{Draining, on_workers};

use crate::config::ServerConfig;

/// Why a listener could not serve.
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
    /// The worker threads could not be started.
    #[error("cannot start {workers} worker threads")]
    Workers {
        /// How many were asked for.
        workers: usize,
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

/// The listener's address, for logs.
pub fn local_addr(listener: &TcpListener) -> String {
    listener.local_addr().map_or_else(
        |error| format!("unknown ({error})"),
        |addr| addr.to_string(),
    )
}

/// Serves `service` on `listener` with the default server limits until `shutdown`, then lets
/// in-flight requests finish for at most `grace`: the side listeners (admin API, demo API),
/// which have no configured limits of their own.
pub(crate) async fn serve_with_defaults<S, B>(
    listener: TcpListener,
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
    let server = ServerConfig::default();
    serve_connections(
        listener,
        connection_builder(&server, HeadLimits::new(&server)),
        service,
        shutdown,
        grace,
    )
    .await;
}
