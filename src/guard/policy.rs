//! Per-route policy of the precondition guard.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};

pub use crate::target::Aliases;

/// What to do with a conditional write to a resource whose state is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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

/// What the query string is to the resource a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueryMode {
    /// The path names the resource; each query names a view of it (`?fields=`, `?page=`),
    /// with validators of its own. A write through any query is a write to the path's resource:
    /// one lease, and every view's validator is replaced by the outcome.
    #[default]
    Variant,
    /// Each query string names a resource of its own (`/api?id=5`): its own key and lease. A
    /// query that the upstream ignores then makes an alias that the guard cannot see.
    Identity,
    /// The query is ignored: `/a?x=1` is `/a`, in every respect.
    Ignore,
}

impl QueryMode {
    /// The query as part of the resource key.
    pub(crate) fn in_key(self, query: Option<&str>) -> Option<&str> {
        match self {
            Self::Identity => query,
            Self::Variant | Self::Ignore => None,
        }
    }

    /// The query as naming a view (variant) of the resource.
    pub(crate) fn variant(self, query: Option<&str>) -> Option<&str> {
        match self {
            Self::Variant => query,
            Self::Identity | Self::Ignore => None,
        }
    }
}

/// Where validators come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EtagSource {
    /// Only the upstream's strong ETags; never hash bodies.
    Upstream,
    /// Always synthesize from the body, ignoring the upstream's ETags.
    Synthesize,
    /// The upstream's strong ETag when it sends one, else synthesize.
    #[default]
    Both,
}

/// Whether a route honours `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header-07).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdempotencyMode {
    /// The header passes through to the upstream untouched.
    #[default]
    Off,
    /// A request with a key is made idempotent; one without passes as usual.
    Optional,
    /// A request of the route's idempotency methods without a key gets 400.
    Required,
}

/// How a route treats `Idempotency-Key` (the proxy's idempotency layer reads it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyPolicy {
    /// Off, optional or required.
    pub mode: IdempotencyMode,
    /// The methods it applies to (POST and PATCH by default).
    pub methods: Vec<Method>,
    /// How long a completed request's record is kept (and replayed).
    pub retention: std::time::Duration,
    /// Largest request body buffered to fingerprint it; a larger one gets 413.
    pub max_request_bytes: usize,
    /// Largest response body recorded; a larger one streams through, and a retry gets 409
    /// (completed, cannot be replayed).
    pub max_response_bytes: usize,
    /// How long a taken key stays taken without an outcome (a crashed replica, an upstream
    /// that never answers): at least every bound of the exchange under it.
    pub hold: std::time::Duration,
}

impl Default for IdempotencyPolicy {
    fn default() -> Self {
        Self {
            mode: IdempotencyMode::Off,
            methods: vec![Method::POST, Method::PATCH],
            retention: std::time::Duration::from_secs(24 * 60 * 60),
            max_request_bytes: 1024 * 1024,
            max_response_bytes: 1024 * 1024,
            // `config::idempotency_hold` of the default timeouts: lease_wait 5 s, twice
            // response_timeout 30 s, write_outcome_timeout 60 s, four store calls of 500 ms.
            hold: std::time::Duration::from_secs(127),
        }
    }
}

impl IdempotencyPolicy {
    /// Whether requests with `method` are made idempotent on this route.
    pub fn applies_to(&self, method: &Method) -> bool {
        self.mode != IdempotencyMode::Off && self.methods.contains(method)
    }
}

/// What the conflict response to a stale write carries (problem+json extension members).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConflictBody {
    /// The current representation when the version memory has it, and for JSON a field-level
    /// comparison of the client's document with it (three-way when the version the client
    /// edited is remembered too).
    #[default]
    Remembered,
    /// As `remembered`, and when the current representation is not remembered the guard GETs
    /// it from the upstream itself (learning its validator as a revalidation does).
    Current,
    /// Only the current entity-tag and a sentence.
    Minimal,
}

/// What the guard does with a stale write whose changes could be applied to the current
/// version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnConflict {
    /// Refuse it with the conflict status.
    #[default]
    Reject,
    /// When the client's changes (from the version its `If-Match` names) and the intervening
    /// ones touch disjoint JSON members, apply the client's changes to the current version and
    /// forward that, under the same lease, at the current validator.
    Merge,
}

/// How the guard treats one route's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Whether the guard applies at all (`false`: the route's requests pass unchecked and
    /// unobserved, as through a plain proxy).
    pub guard: bool,
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
    /// What the query string is to the resource a request names.
    pub query: QueryMode,
    /// Which other spellings of a path name the same resource.
    pub aliases: Aliases,
    /// How long a write waits for another write to the same resource to finish.
    pub lease_wait: Duration,
    /// What a conditional write gets when the store is unavailable.
    pub on_store_unavailable: OnStoreUnavailable,
    /// How long the client waits for a forwarded write's response (then 504), and how long a
    /// revalidation may take, body included. A write the client stopped waiting for goes on.
    pub response_timeout: Duration,
    /// How long a forwarded write may run before the guard gives up on learning its outcome:
    /// until then its resource stays fenced, then it becomes unknown. At least
    /// `response_timeout`.
    pub write_outcome_timeout: Duration,
    /// How `Idempotency-Key` is honoured (by the proxy's idempotency layer, above the guard).
    pub idempotency: IdempotencyPolicy,
    /// What the conflict response to a stale write carries.
    pub conflict_body: ConflictBody,
    /// Whether a stale write with disjoint changes is merged and forwarded.
    pub on_conflict: OnConflict,
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
            guard: true,
            conflict_status: StatusCode::CONFLICT,
            require_precondition: Vec::new(),
            on_unknown: OnUnknown::Revalidate,
            etag_source: EtagSource::Both,
            max_hash_bytes: 8 * 1024 * 1024,
            key_headers: Vec::new(),
            query: QueryMode::Variant,
            aliases: Aliases::default(),
            lease_wait: Duration::from_secs(5),
            on_store_unavailable: OnStoreUnavailable::Refuse,
            response_timeout: Duration::from_secs(30),
            write_outcome_timeout: Duration::from_secs(60),
            idempotency: IdempotencyPolicy::default(),
            conflict_body: ConflictBody::Remembered,
            on_conflict: OnConflict::Reject,
        }
    }
}

/// In a forwarded write's extensions: how long the inner service may take to answer it. The
/// guard waits for the outcome of a write this long, whatever happens to the client, and then
/// gives up on it itself (the resource becomes unknown, counted in
/// `ifmatch_write_outcomes_abandoned_total`). A client under it should not give up on the
/// exchange sooner; the proxy's upstream client runs no timer of its own for such a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamDeadline(pub Duration);

/// The route a request was matched to, put in its extensions by a router in front of the guard.
/// Requests without one use the layer's own policy under the route id `""`.
#[derive(Debug, Clone)]
pub struct RouteContext {
    /// Route id: part of every resource key, so routes never share state.
    pub id: Arc<str>,
    /// The route's policy.
    pub policy: Arc<Policy>,
}
