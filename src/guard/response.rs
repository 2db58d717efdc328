//! Responses the guard makes itself: RFC 9457 problem details.

use http::header::{CONTENT_TYPE, ETAG};
use http::{HeaderValue, Response, StatusCode};
use http_body::Body;
use serde::Serialize;

use super::body::ResponseBody;
use crate::etag::EntityTag;

/// Why the guard (or the proxy around it) refused a request. Put in the response's extensions
/// so an embedding application can log or reshape it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    /// A precondition header could not be parsed (400).
    MalformedPrecondition,
    /// A write without the precondition the route requires (428).
    PreconditionRequired,
    /// `If-Match` (or `If-Unmodified-Since`) no longer matches the resource.
    StalePrecondition,
    /// `If-Match` names a resource that does not exist.
    ResourceAbsent,
    /// `If-None-Match: *` (create-only) on a resource that exists, or a matching tag.
    AlreadyExists,
    /// Another write to the same resource held the lease past the wait bound.
    LeaseTimeout,
    /// The resource's state is unknown and the route rejects such writes.
    UnknownState,
    /// The resource's representation is too large to hash, so its state cannot be established.
    TooLargeToHash,
    /// The validator store could not be reached.
    StoreUnavailable,
    /// The upstream could not be reached (502).
    UpstreamUnavailable,
    /// The upstream did not answer in time (504).
    UpstreamTimeout,
    /// No route matches the request (404).
    NoRoute,
    /// The request itself is unacceptable (e.g. a body that cannot be read).
    BadRequest,
    /// The request head is over the proxy's size or field count limit (431).
    HeadersTooLarge,
    /// The client did not send its request body in time (408).
    RequestTimeout,
    /// The proxy serves as many connections as it may (503).
    TooManyConnections,
}

impl RejectionKind {
    /// Short, stable slug used in the problem `type` URI and in logs and metrics.
    pub fn slug(self) -> &'static str {
        match self {
            Self::MalformedPrecondition => "malformed-precondition",
            Self::PreconditionRequired => "precondition-required",
            Self::StalePrecondition => "stale-precondition",
            Self::ResourceAbsent => "resource-absent",
            Self::AlreadyExists => "already-exists",
            Self::LeaseTimeout => "update-in-progress",
            Self::UnknownState => "unknown-state",
            Self::TooLargeToHash => "too-large-to-hash",
            Self::StoreUnavailable => "store-unavailable",
            Self::UpstreamUnavailable => "upstream-unavailable",
            Self::UpstreamTimeout => "upstream-timeout",
            Self::NoRoute => "no-route",
            Self::BadRequest => "bad-request",
            Self::HeadersTooLarge => "headers-too-large",
            Self::RequestTimeout => "request-timeout",
            Self::TooManyConnections => "too-many-connections",
        }
    }

    /// One-line human title.
    pub fn title(self) -> &'static str {
        match self {
            Self::MalformedPrecondition => "Malformed precondition header",
            Self::PreconditionRequired => "Precondition required",
            Self::StalePrecondition => "The resource was changed by someone else",
            Self::ResourceAbsent => "The resource does not exist",
            Self::AlreadyExists => "The resource already exists",
            Self::LeaseTimeout => "Another update to this resource is in progress",
            Self::UnknownState => "The resource's current state is unknown",
            Self::TooLargeToHash => "The resource is too large to validate",
            Self::StoreUnavailable => "Validator store unavailable",
            Self::UpstreamUnavailable => "Upstream unavailable",
            Self::UpstreamTimeout => "Upstream timed out",
            Self::NoRoute => "No route for this request",
            Self::BadRequest => "Bad request",
            Self::HeadersTooLarge => "Request header fields too large",
            Self::RequestTimeout => "Request body timed out",
            Self::TooManyConnections => "Too many connections",
        }
    }
}

/// A refusal made by the guard or the proxy, rendered as `application/problem+json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// What kind of refusal.
    pub kind: RejectionKind,
    /// The response status.
    pub status: StatusCode,
    /// What was sent, what is current, and what to do.
    pub detail: String,
    /// The request target the refusal is about.
    pub instance: String,
    /// The resource's current validator, when known.
    pub current_etag: Option<EntityTag>,
    /// The precondition the client sent (e.g. `If-Match: "a"`), for logs.
    pub sent: Option<String>,
}

#[derive(Serialize)]
struct ProblemJson<'a> {
    #[serde(rename = "type")]
    type_: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    instance: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    current_etag: Option<String>,
}

impl Rejection {
    /// A rejection of `kind` with `status`, about `instance`.
    pub fn new(
        kind: RejectionKind,
        status: StatusCode,
        instance: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            status,
            detail: detail.into(),
            instance: instance.into(),
            current_etag: None,
            sent: None,
        }
    }

    /// Attaches the precondition the client sent.
    pub fn with_sent(mut self, sent: Option<String>) -> Self {
        self.sent = sent;
        self
    }

    /// Whether this is a conflict: a write refused because of the resource's state (stale
    /// precondition, create-only on an existing resource, lease timeout, unknown state...).
    pub fn is_conflict(&self) -> bool {
        use RejectionKind::*;
        matches!(
            self.kind,
            StalePrecondition
                | ResourceAbsent
                | AlreadyExists
                | LeaseTimeout
                | UnknownState
                | TooLargeToHash
        )
    }

    /// Attaches the resource's current validator.
    pub fn with_current_etag(mut self, tag: Option<EntityTag>) -> Self {
        self.current_etag = tag;
        self
    }

    /// The `application/problem+json` body.
    pub fn to_json(&self) -> String {
        let problem = ProblemJson {
            type_: format!("urn:ifmatch:problem:{}", self.kind.slug()),
            title: self.kind.title(),
            status: self.status.as_u16(),
            detail: &self.detail,
            instance: &self.instance,
            current_etag: self.current_etag.as_ref().map(ToString::to_string),
        };
        // Serializing plain strings and integers cannot fail.
        serde_json::to_string(&problem).unwrap_or_default()
    }

    /// The response: problem+json body, `ETag` header when the current tag is known, and the
    /// rejection itself in the extensions.
    pub fn into_response<B: Body>(self) -> Response<ResponseBody<B>> {
        let mut response = Response::new(ResponseBody::full(self.to_json()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(tag) = &self.current_etag {
            if let Ok(value) = HeaderValue::from_str(&tag.to_string()) {
                headers.insert(ETAG, value);
            }
        }
        response.extensions_mut().insert(self);
        response
    }
}
