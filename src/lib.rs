//! ifmatch: optimistic concurrency for any HTTP API, without touching its code.
//!
//! Two clients read a record, both change it, the second save silently wipes the first: a lost
//! update. HTTP's cure is the entity-tag (`ETag`) and `If-Match`, but most APIs never implemented
//! it. ifmatch learns each resource's current entity-tag from the traffic it sees (or synthesizes
//! a strong one from a blake3 hash of the body) and rejects a write whose `If-Match` is stale with
//! `409 Conflict` *before it reaches the backend*. Of N concurrent writers holding the same tag,
//! exactly one gets through.
//!
//! The crate has a pure core ([`etag`], [`precondition`], [`key`], [`target`]), a tower
//! middleware ([`guard`], over any [`store::Store`]), and an I/O edge: the accept loop
//! ([`serve`]), the proxy's layers ([`proxy`]) and the [`admin`] API, wired together from a
//! [`config::Config`] by the composition root, [`app`], which the `ifmatch` binary runs.
//! Dependencies point one way, from the edge inwards (ARCHITECTURE.md).
//!
//! ```
//! use ifmatch::{MemoryStore, PreconditionLayer, Policy};
//! use tower::ServiceBuilder;
//!
//! let store = MemoryStore::default();
//! let layer = PreconditionLayer::new(store).policy(Policy::default());
//! let svc = ServiceBuilder::new().layer(layer).service(tower::service_fn(
//!     |_req: http::Request<ifmatch::RequestBody<http_body_util::Empty<bytes::Bytes>>>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
//!     },
//! ));
//! # let _ = svc;
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod config;
pub mod demo;
pub mod etag;
pub mod guard;
pub mod idempotency;
pub mod key;
pub mod merge;
pub mod precondition;
pub mod proxy;
pub mod quick_hash;
pub mod serve;
pub mod store;
pub mod storm;
pub mod target;
pub mod telemetry;
pub mod validator;

pub use etag::EntityTag;
pub use guard::{Policy, Precondition, PreconditionLayer, Rejection, RequestBody, ResponseBody};
pub use key::ResourceKey;
pub use store::{MemoryStore, Store};
