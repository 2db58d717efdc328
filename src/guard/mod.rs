//! The precondition guard: a tower middleware that enforces `If-Match` on writes.
//!
//! Reads (GET/HEAD) pass through and teach the guard each resource's current validator: the
//! upstream's strong `ETag`, or one synthesized from a blake3 hash of the body. Writes
//! (PUT/PATCH/DELETE/POST) take the resource's write lease, have their preconditions evaluated
//! against what is known (revalidating with a GET when nothing is), and are rejected with 409
//! (or 412) before they reach the inner service when stale. The outcome of every forwarded
//! write updates what is known.
//!
//! The guard never touches sockets: it works in any tower stack, in front of an axum app as
//! well as in front of a proxy client. It needs a tokio runtime: a forwarded write runs to its
//! outcome in a task of its own, so that a client that goes away cannot end its lease early.

mod body;
mod conflict;
mod exchange;
mod hash;
mod headers;
mod layer;
mod learn;
mod outcome;
mod policy;
mod read;
mod resolve;
mod response;
mod revalidate;
mod service;
mod short_circuit;
mod versions;
mod write;
mod writes;

pub use body::{RequestBody, ResponseBody, Tail};
pub(crate) use exchange::{Detachable, LateOutcome};
pub use layer::PreconditionLayer;
pub use policy::{
    Aliases, ConflictBody, EtagSource, FailedOpen, IdempotencyMode, IdempotencyPolicy, OnConflict,
    OnStoreUnavailable, OnUnknown, Policy, QueryMode, RouteContext, UpstreamDeadline,
};
pub use resolve::MERGED_HEADER;
pub use response::{MAX_ECHO_BYTES, ProblemMembers, Rejection, RejectionKind, bounded};
pub use service::{Precondition, resource_key};
pub use short_circuit::ShortCircuit;
pub use versions::{
    Audience, DEFAULT_VERSION_MEMORY_BYTES, PER_RESOURCE, Version, Versions, audience,
};
pub use writes::{DEFAULT_MAX_WRITES_IN_FLIGHT, WritesInFlight};
