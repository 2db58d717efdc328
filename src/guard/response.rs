//! Responses the guard makes itself: RFC 9457 problem details.

use std::borrow::Cow;

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
    /// As many forwarded writes are running as the guard allows (503).
    TooManyWrites,
    /// A route that requires `Idempotency-Key` got a request without one (400).
    IdempotencyKeyMissing,
    /// An `Idempotency-Key` that is not one sf-string (400).
    IdempotencyKeyMalformed,
    /// An `Idempotency-Key` already used for another request (422).
    IdempotencyKeyReused,
    /// The first request with this `Idempotency-Key` is still in flight (409).
    IdempotencyInFlight,
    /// The first request with this `Idempotency-Key` completed, but its response was not
    /// recorded (too large) and cannot be replayed (409).
    IdempotencyNotReplayable,
    /// A request body over the bound the proxy buffers it within (413).
    BodyTooLarge,
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
            Self::TooManyWrites => "too-many-writes",
            Self::IdempotencyKeyMissing => "idempotency-key-missing",
            Self::IdempotencyKeyMalformed => "idempotency-key-malformed",
            Self::IdempotencyKeyReused => "idempotency-key-reused",
            Self::IdempotencyInFlight => "idempotency-in-flight",
            Self::IdempotencyNotReplayable => "idempotency-not-replayable",
            Self::BodyTooLarge => "body-too-large",
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
            Self::TooManyWrites => "Too many writes in flight",
            Self::IdempotencyKeyMissing => "Idempotency-Key required",
            Self::IdempotencyKeyMalformed => "Malformed Idempotency-Key",
            Self::IdempotencyKeyReused => "Idempotency-Key reused for another request",
            Self::IdempotencyInFlight => "A request with this Idempotency-Key is in progress",
            Self::IdempotencyNotReplayable => "The first response cannot be replayed",
            Self::BodyTooLarge => "Request body too large",
        }
    }
}

/// At most this many bytes of client input (a precondition, a request target) are echoed in a
/// problem body or a log line: a client must not be able to make either arbitrarily large.
pub const MAX_ECHO_BYTES: usize = 256;

/// At most this many bytes of `detail`: the guard's own words plus bounded echoes fit easily.
const MAX_DETAIL_BYTES: usize = 1024;

/// `text` cut to at most `max` bytes on a char boundary, with a marker saying how much was cut.
///
/// ```
/// use ifmatch::guard::bounded;
/// assert_eq!(bounded("short", 8), "short");
/// assert_eq!(bounded("ééééé", 5), "éé…[+6 bytes]");
/// ```
pub fn bounded(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…[+{} bytes]", &text[..end], text.len() - end))
}

/// `text` bounded to `max` bytes, reusing the allocation when it fits.
fn bound_owned(text: String, max: usize) -> String {
    match bounded(&text, max) {
        Cow::Borrowed(_) => text,
        Cow::Owned(cut) => cut,
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
    /// The precondition the client sent (e.g. `If-Match: "a"`), for logs; at most
    /// [`MAX_ECHO_BYTES`] of it.
    pub sent: Option<String>,
    /// Further members of the problem object (RFC 9457 §3.2): on a conflict, the current
    /// representation and the fields in conflict (see the README, "A 409 that resolves it").
    pub members: ProblemMembers,
}

/// Extension members of a problem object, in addition to the ones every rejection has (boxed:
/// most rejections have none).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProblemMembers(pub Option<Box<serde_json::Map<String, serde_json::Value>>>);

// JSON values hold no NaN (serde_json numbers are finite), so equality is reflexive.
impl Eq for ProblemMembers {}

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
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    members: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

impl Rejection {
    /// A rejection of `kind` with `status`, about `instance`. The instance (the client's request
    /// target) is cut to [`MAX_ECHO_BYTES`] and the detail to 1 KiB, so neither a long path nor a
    /// precondition the detail quotes makes the response (or its log line) large.
    pub fn new(
        kind: RejectionKind,
        status: StatusCode,
        instance: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            status,
            detail: bound_owned(detail.into(), MAX_DETAIL_BYTES),
            instance: bound_owned(instance.into(), MAX_ECHO_BYTES),
            current_etag: None,
            sent: None,
            members: ProblemMembers::default(),
        }
    }

    /// Attaches the precondition the client sent, cut to [`MAX_ECHO_BYTES`].
    pub fn with_sent(mut self, sent: Option<String>) -> Self {
        self.sent = sent.map(|sent| bound_owned(sent, MAX_ECHO_BYTES));
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

    /// Adds the problem member `name` (one of the standard members' names is ignored).
    pub fn with_member(mut self, name: &str, value: serde_json::Value) -> Self {
        const STANDARD: [&str; 6] = [
            "type",
            "title",
            "status",
            "detail",
            "instance",
            "current_etag",
        ];
        if !STANDARD.contains(&name) {
            self.members
                .0
                .get_or_insert_with(Box::default)
                .insert(name.to_owned(), value);
        }
        self
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
            members: self.members.0.as_deref(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind, by a match that stops compiling when a kind is added.
    fn every_kind() -> Vec<RejectionKind> {
        use RejectionKind::*;
        let all = [
            MalformedPrecondition,
            PreconditionRequired,
            StalePrecondition,
            ResourceAbsent,
            AlreadyExists,
            LeaseTimeout,
            UnknownState,
            TooLargeToHash,
            StoreUnavailable,
            UpstreamUnavailable,
            UpstreamTimeout,
            NoRoute,
            BadRequest,
            HeadersTooLarge,
            RequestTimeout,
            TooManyConnections,
            TooManyWrites,
            IdempotencyKeyMissing,
            IdempotencyKeyMalformed,
            IdempotencyKeyReused,
            IdempotencyInFlight,
            IdempotencyNotReplayable,
            BodyTooLarge,
        ];
        for kind in all {
            match kind {
                MalformedPrecondition
                | PreconditionRequired
                | StalePrecondition
                | ResourceAbsent
                | AlreadyExists
                | LeaseTimeout
                | UnknownState
                | TooLargeToHash
                | StoreUnavailable
                | UpstreamUnavailable
                | UpstreamTimeout
                | NoRoute
                | BadRequest
                | HeadersTooLarge
                | RequestTimeout
                | TooManyConnections
                | TooManyWrites
                | IdempotencyKeyMissing
                | IdempotencyKeyMalformed
                | IdempotencyKeyReused
                | IdempotencyInFlight
                | IdempotencyNotReplayable
                | BodyTooLarge => {}
            }
        }
        all.to_vec()
    }

    /// The conflict reasons registered at start are exactly the conflicts' slugs.
    #[test]
    fn conflict_reasons_are_the_conflict_slugs() {
        let conflicts: Vec<&str> = every_kind()
            .into_iter()
            .filter(|&kind| Rejection::new(kind, StatusCode::CONFLICT, "/", "").is_conflict())
            .map(RejectionKind::slug)
            .collect();
        assert_eq!(conflicts, crate::telemetry::CONFLICT_REASONS);
    }

    #[test]
    fn bounded_cuts_on_a_char_boundary_with_a_marker() {
        let cases: &[(&str, usize, &str)] = &[
            ("", 0, ""),
            ("abc", 3, "abc"),
            ("abcd", 3, "abc…[+1 bytes]"),
            ("abc", 0, "…[+3 bytes]"),
            // 'é' is two bytes: a cut inside it backs off to the boundary before.
            ("aé", 2, "a…[+2 bytes]"),
            ("aé", 3, "aé"),
            ("日本語", 4, "日…[+6 bytes]"),
        ];
        for (text, max, want) in cases {
            assert_eq!(bounded(text, *max), *want, "{text:?} at {max}");
        }
    }

    #[test]
    fn client_input_in_a_rejection_is_bounded() {
        let long = "x".repeat(50_000);
        let rejection = Rejection::new(
            RejectionKind::StalePrecondition,
            StatusCode::CONFLICT,
            format!("/{long}"),
            format!("If-Match: {long} does not match"),
        )
        .with_sent(Some(format!("If-Match: {long}")));
        assert!(rejection.instance.len() < MAX_ECHO_BYTES + 32);
        assert!(rejection.sent.as_ref().unwrap().len() < MAX_ECHO_BYTES + 32);
        assert!(rejection.detail.len() < MAX_DETAIL_BYTES + 32);
        assert!(
            rejection.to_json().len() < 2048,
            "{}",
            rejection.to_json().len()
        );
        // Short input is kept as is.
        let short = Rejection::new(RejectionKind::NoRoute, StatusCode::NOT_FOUND, "/a", "d")
            .with_sent(Some("If-Match: \"a\"".to_owned()));
        assert_eq!(short.instance, "/a");
        assert_eq!(short.sent.as_deref(), Some("If-Match: \"a\""));
    }
}
