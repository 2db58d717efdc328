//! Per-route policy of the precondition guard.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};

/// What to do with a conditional write to a resource whose state is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnUnknown {
    /// GET the resource through the same inner service first (with the writer's credentials).
    #[default]
    Revalidate,
    /// Forward the write and let the upstream decide.
    Forward,
    /// Reject the write with the conflict status until the resource has been read.
    Reject,
}

/// What to do with a conditional write when the store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnStoreUnavailable {
    /// 503 with `Retry-After` (fail closed): a precondition is never trusted unchecked.
    #[default]
    Refuse,
    /// Forward it unchecked (fail open), logged at warn and marked [`FailedOpen`] on the
    /// response for metrics.
    Forward,
}

/// In a response's extensions: the write was forwarded without its precondition being
/// checked, because the store was unavailable and the policy is to fail open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailedOpen;

/// Where validators come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EtagSource {
    /// Only the upstream's strong ETags; never hash bodies.
    Upstream,
    /// Always synthesize from the body, ignoring the upstream's ETags.
    Synthesize,
    /// The upstream's strong ETag when it sends one, else synthesize.
    #[default]
    Both,
}

/// How the guard treats one route's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Status for a failed precondition on a write: 409 (default) or 412.
    pub conflict_status: StatusCode,
    /// Methods whose unconditional requests get 428 Precondition Required (empty: none).
    pub require_precondition: Vec<Method>,
    /// What to do when a conditional write targets a resource in an unknown state.
    pub on_unknown: OnUnknown,
    /// Where validators come from.
    pub etag_source: EtagSource,
    /// Largest body hashed to synthesize an ETag; larger bodies stream through unhashed.
    pub max_hash_bytes: usize,
    /// Request headers whose (hashed) values are part of the resource key.
    pub key_headers: Vec<HeaderName>,
    /// Whether the query string is part of the resource key.
    pub key_query: bool,
    /// How long a write waits for another write to the same resource to finish.
    pub lease_wait: Duration,
    /// What a conditional write gets when the store is unavailable.
    pub on_store_unavailable: OnStoreUnavailable,
}

impl Policy {
    /// The methods a `--require-if-match` route requires a precondition on.
    pub fn default_required_methods() -> Vec<Method> {
        vec![Method::PUT, Method::PATCH, Method::DELETE]
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            conflict_status: StatusCode::CONFLICT,
            require_precondition: Vec::new(),
            on_unknown: OnUnknown::Revalidate,
            etag_source: EtagSource::Both,
            max_hash_bytes: 8 * 1024 * 1024,
            key_headers: Vec::new(),
            key_query: true,
            lease_wait: Duration::from_secs(5),
            on_store_unavailable: OnStoreUnavailable::Refuse,
        }
    }
}

/// The route a request was matched to, put in its extensions by a router in front of the guard.
/// Requests without one use the layer's own policy under the route id `""`.
#[derive(Debug, Clone)]
pub struct RouteContext {
    /// Route id: part of every resource key, so routes never share state.
    pub id: Arc<str>,
    /// The route's policy.
    pub policy: Arc<Policy>,
}
