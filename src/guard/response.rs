//! Responses the guard makes itself: RFC 9457 problem details.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, ETAG};
use http::{HeaderValue, Response, StatusCode};
use http_body::Body;

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

    /// The `application/problem+json` body: `type`, `title`, `status`, `detail`, `instance`,
    /// `current_etag` when known, then the extension members, as compact JSON.
    ///
    /// Written directly rather than through a serializer: the constant parts are copied, only
    /// the strings are escaped (exactly as `serde_json` escapes them, which a test checks), so a
    /// rejection costs less than the upstream round trip it saves.
    pub fn to_json(&self) -> String {
        let title = self.kind.title();
        let mut out = String::with_capacity(
            96 + title.len() + self.detail.len() + self.instance.len() + 2 * MAX_TAG_GUESS,
        );
        // Slugs are lowercase ASCII letters and dashes: nothing to escape.
        out.push_str("{\"type\":\"urn:ifmatch:problem:");
        out.push_str(self.kind.slug());
        out.push_str("\",\"title\":");
        push_json_str(&mut out, title);
        out.push_str(",\"status\":");
        out.push_str(self.status.as_str());
        out.push_str(",\"detail\":");
        push_json_str(&mut out, &self.detail);
        out.push_str(",\"instance\":");
        push_json_str(&mut out, &self.instance);
        if let Some(tag) = &self.current_etag {
            out.push_str(",\"current_etag\":\"");
            if tag.is_weak() {
                out.push_str("W/");
            }
            out.push_str("\\\"");
            push_json_escaped(&mut out, tag.opaque());
            out.push_str("\\\"\"");
        }
        if let Some(members) = self.members.0.as_deref() {
            for (name, value) in members {
                out.push(',');
                push_json_str(&mut out, name);
                out.push(':');
                // Serializing a JSON value cannot fail.
                out.push_str(&serde_json::to_string(value).unwrap_or_default());
            }
        }
        out.push('}');
        out
    }

    /// The response: problem+json body, `ETag` header when the current tag is known, and the
    /// rejection itself in the extensions.
    pub fn into_response<B: Body>(self) -> Response<ResponseBody<B>> {
        let mut response = Response::new(ResponseBody::full(self.to_json()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, PROBLEM_JSON.clone());
        if let Some(value) = self.current_etag.as_ref().and_then(etag_value) {
            headers.insert(ETAG, value);
        }
        response.extensions_mut().insert(self);
        response
    }
}

/// `application/problem+json`, built once.
static PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

/// Room reserved for a tag in a problem body (a guess: the buffer grows if needed).
const MAX_TAG_GUESS: usize = 24;

/// `tag` as an `ETag` header value, without going through `Display` and a `String`.
pub(crate) fn etag_value(tag: &EntityTag) -> Option<HeaderValue> {
    let opaque = tag.opaque().as_bytes();
    let mut value = Vec::with_capacity(opaque.len() + 4);
    if tag.is_weak() {
        value.extend_from_slice(b"W/");
    }
    value.push(b'"');
    value.extend_from_slice(opaque);
    value.push(b'"');
    HeaderValue::from_maybe_shared(Bytes::from(value)).ok()
}

/// Appends `text` as a JSON string, quotes included.
fn push_json_str(out: &mut String, text: &str) {
    out.push('"');
    push_json_escaped(out, text);
    out.push('"');
}

/// Appends `text` escaped for the inside of a JSON string, byte for byte as `serde_json` does:
/// `"` and `\` backslashed, `\b \f \n \r \t` short, other control characters as `\u00XX`
/// (lowercase hex), everything else (DEL and non-ASCII included) as is.
///
/// Eight bytes at a time: a word with no byte to escape is skipped whole, and in one that has
/// some, the first is found from the mask without looking at the bytes before it.
fn push_json_escaped(out: &mut String, text: &str) {
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let mask = escape_mask(u64::from_le_bytes(word));
        if mask == 0 {
            i += 8;
            continue;
        }
        // The mask's lowest flag is exact (see `escape_mask`); a lowest set bit is a byte's
        // bit 7, so this is that byte's index in the word.
        let at = i + (mask.trailing_zeros() / 8) as usize;
        push_escaped_byte(out, text, start, at);
        start = at + 1;
        i = at + 1;
    }
    for (at, &byte) in bytes.iter().enumerate().skip(i) {
        if byte < 0x20 || byte == b'"' || byte == b'\\' {
            push_escaped_byte(out, text, start, at);
            start = at + 1;
        }
    }
    out.push_str(&text[start..]);
}

/// Appends `text[start..at]` and then the escape of the ASCII byte at `at`, one that needs
/// escaping (so both slices end on char boundaries).
fn push_escaped_byte(out: &mut String, text: &str, start: usize, at: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push_str(&text[start..at]);
    let byte = text.as_bytes()[at];
    match byte {
        b'"' => out.push_str("\\\""),
        b'\\' => out.push_str("\\\\"),
        0x08 => out.push_str("\\b"),
        0x0c => out.push_str("\\f"),
        b'\n' => out.push_str("\\n"),
        b'\r' => out.push_str("\\r"),
        b'\t' => out.push_str("\\t"),
        _ => {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
    }
}

/// Bit 7 of each byte of `word` that is a control character, `"` or `\\`, with false flags
/// possible only above the lowest true one (the usual "has a zero byte" and "has a byte less
/// than" bit tricks: a borrow runs upward only from a flagged byte, and a byte of 0x80 or more
/// is never flagged on its own). So the mask is 0 exactly when no byte needs escaping, and its
/// lowest flag is the first byte that does.
fn escape_mask(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let below = |n: u64| word.wrapping_sub(ONES * n) & !word & HIGHS;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    below(0x20) | zero(word ^ (ONES * u64::from(b'"'))) | zero(word ^ (ONES * u64::from(b'\\')))
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

    /// The body as `serde_json` renders the problem object: what `to_json` must equal.
    fn reference_json(rejection: &Rejection) -> String {
        #[derive(serde::Serialize)]
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
        serde_json::to_string(&ProblemJson {
            type_: format!("urn:ifmatch:problem:{}", rejection.kind.slug()),
            title: rejection.kind.title(),
            status: rejection.status.as_u16(),
            detail: &rejection.detail,
            instance: &rejection.instance,
            current_etag: rejection.current_etag.as_ref().map(ToString::to_string),
            members: rejection.members.0.as_deref(),
        })
        .unwrap()
    }

    #[test]
    fn the_body_is_byte_for_byte_what_serde_json_writes() {
        let tricky = "quote \" backslash \\ nl \n cr \r tab \t bs \u{8} ff \u{c} nul \u{0} \
                      us \u{1f} del \u{7f} é 日本 😀 </script>";
        let mut cases = Vec::new();
        for kind in every_kind() {
            cases.push(Rejection::new(
                kind,
                StatusCode::CONFLICT,
                "/a?b=c",
                "plain detail",
            ));
        }
        cases.push(
            Rejection::new(
                RejectionKind::StalePrecondition,
                StatusCode::PRECONDITION_FAILED,
                format!("/items/{tricky}"),
                format!("If-Match: \"stale\" does not match \"v1\" {tricky}"),
            )
            .with_current_etag(Some(EntityTag::strong("v1").unwrap())),
        );
        cases.push(
            Rejection::new(RejectionKind::AlreadyExists, StatusCode::CONFLICT, "/", "")
                .with_current_etag(Some(EntityTag::weak("w-é").unwrap()))
                .with_member(
                    "current",
                    serde_json::json!({"a": [1, "x\"y", null], "b": 1.5e300}),
                )
                .with_member("conflicts", serde_json::json!(["/a", tricky]))
                .with_member("type", serde_json::json!("ignored")),
        );
        for rejection in &cases {
            assert_eq!(rejection.to_json(), reference_json(rejection));
        }
    }

    proptest::proptest! {
        #[test]
        fn strings_are_escaped_as_serde_json_escapes_them(text in "\\PC*|[\\x00-\\x7f]*") {
            let mut out = String::new();
            push_json_str(&mut out, &text);
            proptest::prop_assert_eq!(out, serde_json::to_string(&text).unwrap());
        }
    }

    #[test]
    fn eight_bytes_need_escaping_exactly_when_one_does() {
        for byte in 0..=255u8 {
            let escaped = byte < 0x20 || byte == b'"' || byte == b'\\';
            for at in 0..8 {
                // Around it: plain bytes, and bytes of 0x80 or more, which never need it.
                for fill in [b'a', 0xff, 0x80, 0x21] {
                    let mut word = [fill; 8];
                    word[at] = byte;
                    assert_eq!(
                        escape_mask(u64::from_le_bytes(word)) != 0,
                        escaped,
                        "{byte:#x} at {at}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_lowest_flag_is_the_first_byte_to_escape() {
        let escaped = |byte: u8| byte < 0x20 || byte == b'"' || byte == b'\\';
        // Two bytes of every kind at every pair of places, over fills of both kinds: the one
        // placed first decides, whatever a borrow does above it.
        let kinds = [0x00, 0x01, 0x1f, 0x20, b'"', b'\\', b'a', 0x7f, 0x80, 0xff];
        for first in kinds {
            for second in kinds {
                for a in 0..8 {
                    for b in a + 1..8 {
                        for fill in [b'a', 0xff, 0x80, 0x21] {
                            let mut word = [fill; 8];
                            word[a] = first;
                            word[b] = second;
                            let expected = word.iter().position(|&byte| escaped(byte));
                            let mask = escape_mask(u64::from_le_bytes(word));
                            let found = (mask != 0).then(|| (mask.trailing_zeros() / 8) as usize);
                            assert_eq!(found, expected, "{word:x?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_etag_header_is_the_tag_on_the_wire() {
        for tag in [
            EntityTag::strong("v1").unwrap(),
            EntityTag::weak("x").unwrap(),
        ] {
            assert_eq!(etag_value(&tag).unwrap(), tag.to_string().as_str());
        }
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
