//! The reverse proxy: the I/O edge around the guard.
//!
//! A request goes through [`Discard`] (what the proxy leaves unread of an HTTP/1.1 request body
//! is discarded, bounded, so that the connection carries the next request), [`HeadLimit`]
//! (431 for a head over the configured limits),
//! [`Rescue`] (errors become problem+json), the [`Router`] (host and longest path prefix pick
//! the route and its policy; 404 when none matches), the [`Precondition`](crate::Precondition)
//! guard (absent in passthrough mode), [`Forward`] (upstream URI, hop-by-hop headers, `Host`,
//! `Via`, `X-Forwarded-*`) and the pooled [`UpstreamClient`]. [`stack`] is where that order is
//! decided; [`reload`] swaps in a new route table without dropping connections or the store;
//! [`Hotspots`] counts where writers collide. The [composition root](crate::app) builds the
//! stack from the config and serves it with the [accept loop](crate::serve).
//!
//! ```no_run
//! use ifmatch::config::{Config, Overrides};
//! use ifmatch::proxy::{DiscardLimits, Mode, RouteTable, UpstreamClient, stack};
//! use ifmatch::serve::HeadLimits;
//! use ifmatch::MemoryStore;
//! use ifmatch::guard::{Versions, WritesInFlight};
//!
//! let config = Config::from_overrides(&Overrides {
//!     upstream: Some("http://127.0.0.1:3000".into()),
//!     ..Overrides::default()
//! })?;
//! let table = RouteTable::new(config.routes()?);
//! let service = stack(
//!     std::sync::Arc::new(table),
//!     UpstreamClient::new(&config.server),
//!     Mode::Guard(MemoryStore::default(), WritesInFlight::default(), Versions::default()),
//!     None,
//!     None,
//!     HeadLimits::new(&config.server),
//!     DiscardLimits::new(&config.server),
//! );
//! # let _ = service;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod client;
mod discard;
mod forward;
mod head_limit;
pub mod hotspots;
mod idempotency;
mod log_budget;
mod observe;
mod reload;
mod request_id;
mod rescue;
mod router;
mod stack;
mod timed_body;
mod upgrade;

pub use crate::guard::ShortCircuit;
pub use client::{ResponseFuture, UpstreamClient, UpstreamError, UpstreamRequest};
pub use discard::{ClientBody, Discard, DiscardFuture, DiscardLayer, DiscardLimits};
pub use forward::{Forward, ForwardFuture, ForwardLayer, strip_hop_by_hop};
pub use head_limit::{HeadLimit, HeadLimitFuture, HeadLimitLayer, head_size};
pub use hotspots::Hotspots;
pub use idempotency::{Idempotency, IdempotencyFuture, IdempotencyLayer};
pub use observe::{Observe, ObserveFuture, ObserveLayer};
pub use reload::reload;
pub use request_id::{RequestId, RequestIdFuture, RequestIdLayer, SetRequestId, X_REQUEST_ID};
pub use rescue::{Chain, Rescue, RescueFuture, RescueLayer, rescue};
pub use router::{RouteTable, Router, RouterFuture, RouterLayer, Routes, Target};
pub use stack::{Mode, ProxyBody, stack};

// The accept loop's types the layers above read: where the client is, how large a head may be.
pub use crate::serve::{ClientAddr, HeadLimits};
