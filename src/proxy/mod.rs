//! The reverse proxy: the I/O edge around the guard.
//!
//! A request goes through [`Discard`] (what the proxy leaves unread of an HTTP/1.1 request body
//! is discarded, bounded, so that the connection carries the next request), [`HeadLimit`]
//! (431 for a head over the configured limits),
//! [`Rescue`] (errors become problem+json), the [`Router`] (host and longest path prefix pick
//! the route and its policy; 404 when none matches), the [`Precondition`](crate::Precondition)
//! guard (absent in passthrough mode), [`Forward`] (upstream URI, hop-by-hop headers, `Host`,
//! `Via`, `X-Forwarded-*`) and the pooled [`UpstreamClient`]. [`stack`] is where that order is
//! decided; [`Server`] serves it on a listener with graceful shutdown, next to the
//! [admin API](crate::admin), and [`reload`]
//! swaps in a new route table without dropping connections or the store.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use ifmatch::config::{Config, Overrides};
//! use ifmatch::proxy::Server;
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

mod client;
mod connection;
mod discard;
mod forward;
mod head_limit;
mod log_budget;
mod observe;
mod reload;
mod request_id;
mod rescue;
mod router;
mod server;
mod stack;
mod timed_body;
mod upgrade;

pub use crate::guard::ShortCircuit;
pub use client::{ResponseFuture, UpstreamClient, UpstreamError, UpstreamRequest};
pub use discard::{ClientBody, Discard, DiscardFuture, DiscardLayer, DiscardLimits};
pub use forward::{ClientAddr, Forward, ForwardFuture, ForwardLayer, strip_hop_by_hop};
pub use head_limit::{HeadLimit, HeadLimitFuture, HeadLimitLayer, HeadLimits, head_size};
pub use observe::{Observe, ObserveFuture, ObserveLayer};
pub use reload::reload;
pub use request_id::{RequestId, RequestIdFuture, RequestIdLayer, SetRequestId, X_REQUEST_ID};
pub use rescue::{Chain, Rescue, RescueFuture, RescueLayer, rescue};
pub use router::{RouteTable, Router, RouterFuture, RouterLayer, Routes, Target};
pub use server::{ServeError, Server, bind};
pub(crate) use server::{connection_builder, local_addr, serve_connections};
pub use stack::{Mode, ProxyBody, stack};
