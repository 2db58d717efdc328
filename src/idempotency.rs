//! `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header-07), the pure part: parsing the
//! header, the record's key and the request's fingerprint, and the decisions over what the
//! store holds. No I/O: the proxy's idempotency layer does the store calls and branches on
//! these decisions.
//!
//! - **Header** (draft §2): one field whose value is an sf-string (RFC 8941 §3.3.3): `"`,
//!   printable ASCII with `\"` and `\\` escapes, `"`. Anything else is malformed (400, §2.7).
//! - **Record key**: route, the route's key headers (hashed, so two users' keys never
//!   collide and no credential is stored) and the key.
//! - **Fingerprint** (draft §2.4): blake3 over method, request target and body: the same key
//!   with another fingerprint is a reuse (422, §2.7).
//! - **Decision** ([`decide`]): forward (the key was taken), replay the record, 409 while the
//!   first request is in flight (§2.7), 422 on a different payload, 409 when the first
//!   completed with a response too large to record.
//! - **What is recorded** ([`disposition`]): 2xx and 4xx other than 409, 412, 428 and 429; a 5xx (the
//!   proxy's 502 included) releases the key so that a retry goes through; a 504 (the write may
//!   still apply upstream), 409 or 429 (the client is told to retry) leave or release it as
//!   [`Disposition`] says.
//!
//! ```
//! use ifmatch::idempotency::{parse_key, KeyError};
//! assert_eq!(parse_key([&b"\"8e03978e-40d5\""[..]]), Ok(Some("8e03978e-40d5".to_owned())));
//! assert_eq!(parse_key(std::iter::empty::<&[u8]>()), Ok(None));
//! assert_eq!(parse_key([&b"8e03978e"[..]]), Err(KeyError::NotAString));
//! ```

use http::{Method, StatusCode};

use crate::key::ResourceKey;

/// The request header (draft §2).
pub const HEADER: &str = "idempotency-key";

/// The response header that marks an answer replayed from the record (not the draft's: the
/// draft leaves the signal to the implementation).
pub const REPLAYED_HEADER: &str = "idempotency-replayed";

/// Longest key accepted, in characters: the draft recommends a UUID or similar random value
/// (§2.2); a bound keeps a client from making record keys (and echoes) arbitrarily large.
pub const MAX_KEY_CHARS: usize = 255;

/// Why an `Idempotency-Key` field is malformed (400, draft §2.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// More than one field line: the header is a single sf-string, not a list.
    #[error("Idempotency-Key must be sent once")]
    Repeated,
    /// Not a quoted sf-string.
    #[error("Idempotency-Key must be a quoted string (RFC 8941 sf-string), e.g. \"8e03978e\"")]
    NotAString,
    /// A character an sf-string cannot hold, or a bad escape.
    #[error("Idempotency-Key holds a character or escape an sf-string cannot (RFC 8941 §3.3.3)")]
    BadCharacter,
    /// The empty string.
    #[error("Idempotency-Key must not be empty")]
    Empty,
    /// Over [`MAX_KEY_CHARS`].
    #[error("Idempotency-Key is longer than 255 characters")]
    TooLong,
}

/// The key the client sent, unescaped; `None` without the header.
///
/// # Errors
/// A repeated field or a value that is not a non-empty sf-string of at most
/// [`MAX_KEY_CHARS`] characters.
pub fn parse_key<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Option<String>, KeyError> {
    let mut values = values.into_iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(KeyError::Repeated);
    }
    // RFC 8941 §4.2: leading and trailing spaces are discarded before parsing.
    let value = value.trim_ascii();
    let inner = value
        .strip_prefix(b"\"")
        .and_then(|rest| rest.strip_suffix(b"\""))
        .ok_or(KeyError::NotAString)?;
    let mut key = String::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&byte) = bytes.next() {
        let c = match byte {
            b'\\' => match bytes.next() {
                Some(&escaped @ (b'"' | b'\\')) => escaped,
                _ => return Err(KeyError::BadCharacter),
            },
            // An unescaped quote ends the string: here, before its end.
            b'"' => return Err(KeyError::BadCharacter),
            0x20..=0x7e => byte,
            _ => return Err(KeyError::BadCharacter),
        };
        key.push(char::from(c));
    }
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_CHARS {
        return Err(KeyError::TooLong);
    }
    Ok(Some(key))
}

/// The record's key: route, key headers (name, value pairs, in the route's order) and the
/// idempotency key. It is a [`ResourceKey`] digest under a path no request has (request paths
/// start with `/`), so it never names a resource, and it lives in the records' own namespace.
pub fn record_key<'a>(
    route: &str,
    key: &str,
    key_headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> ResourceKey {
    ResourceKey::new(route, "idempotency-key", Some(key), key_headers)
}

/// A request's fingerprint (draft §2.4): blake3 over method, target and body.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Hashes `method`, `target` (path and query as sent) and `body`, each length-prefixed so
    /// that no two requests share an encoding.
    pub fn new(method: &Method, target: &str, body: &[u8]) -> Self {
        let mut hasher = blake3::Hasher::new();
        for field in [method.as_str().as_bytes(), target.as_bytes(), body] {
            hasher.update(&(field.len() as u64).to_le_bytes());
            hasher.update(field);
        }
        Self(*hasher.finalize().as_bytes())
    }

    /// Lowercase hex, 64 digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// From 64 hex digits.
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 || !hex.is_ascii() {
            return None;
        }
        let mut bytes = [0; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(bytes))
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

/// What the store held for the key when the request tried to take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Nothing: the request took the key.
    Taken,
    /// A request with this fingerprint holds the key and has no outcome yet.
    InFlight(Fingerprint),
    /// A request with this fingerprint completed; `replayable` if its response was recorded.
    Done {
        /// The first request's fingerprint.
        fingerprint: Fingerprint,
        /// Whether the response was recorded (else it was too large, or its body failed).
        replayable: bool,
    },
}

/// What to do with a request carrying a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The key is ours: forward, then record or release.
    Forward,
    /// Answer from the record.
    Replay,
    /// 422: the key was used for another request (draft §2.7).
    Reused,
    /// 409 with `Retry-After`: the first request is still in flight (draft §2.7).
    InFlight,
    /// 409: the first request completed but its response cannot be replayed.
    NotReplayable,
}

/// Decides over what the store held (pure; the table of draft §2.7).
pub fn decide(found: Found, fingerprint: Fingerprint) -> Decision {
    match found {
        Found::Taken => Decision::Forward,
        Found::InFlight(first) if first != fingerprint => Decision::Reused,
        Found::InFlight(_) => Decision::InFlight,
        Found::Done {
            fingerprint: first, ..
        } if first != fingerprint => Decision::Reused,
        Found::Done {
            replayable: true, ..
        } => Decision::Replay,
        Found::Done { .. } => Decision::NotReplayable,
    }
}

/// What becomes of a taken key once the response's status is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The outcome is final: record the response (a retry gets it replayed).
    Record,
    /// Give the key back: the request failed in a way a retry may fix, and the upstream did
    /// not apply it or says it failed (5xx, 409, 412, 428, 429).
    Release,
    /// Keep the key taken until its expiry: the request may still apply upstream (504: the
    /// upstream did not answer in time), so a retry must not be forwarded beside it.
    Hold,
}

/// Which statuses are recorded: 2xx and 4xx other than 409, 412, 428 and 429 (and 3xx: final
/// too); a 504 holds the key; other 5xx, 409, 412, 428 and 429 release it.
pub fn disposition(status: StatusCode) -> Disposition {
    match status.as_u16() {
        504 => Disposition::Hold,
        // 412 and 428: the method was not applied (RFC 9110 §13.1, RFC 6585 §3), and the
        // client is told to retry with (another) precondition: the same operation, same key.
        409 | 412 | 428 | 429 | 500..=599 => Disposition::Release,
        // 1xx never reaches a service's response; a final answer otherwise.
        _ => Disposition::Record,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Result<Option<String>, KeyError> {
        parse_key([value.as_bytes()])
    }

    #[test]
    fn keys_are_sf_strings() {
        let cases: &[(&str, Result<Option<&str>, KeyError>)] = &[
            ("\"abc\"", Ok(Some("abc"))),
            ("  \"abc\"  ", Ok(Some("abc"))),
            ("\"a b-c_1:2\"", Ok(Some("a b-c_1:2"))),
            (r#""a\"b""#, Ok(Some("a\"b"))),
            (r#""a\\b""#, Ok(Some("a\\b"))),
            ("abc", Err(KeyError::NotAString)),
            ("\"abc", Err(KeyError::NotAString)),
            ("abc\"", Err(KeyError::NotAString)),
            ("\"", Err(KeyError::NotAString)),
            ("\"\"", Err(KeyError::Empty)),
            (r#""a\b""#, Err(KeyError::BadCharacter)),
            (r#""a\""#, Err(KeyError::BadCharacter)),
            ("\"a\"b\"", Err(KeyError::BadCharacter)),
            ("\"a\tb\"", Err(KeyError::BadCharacter)),
            ("\"é\"", Err(KeyError::BadCharacter)),
            ("\"a\", \"b\"", Err(KeyError::BadCharacter)),
        ];
        for (value, want) in cases {
            let want = want.map(|key| key.map(str::to_owned));
            assert_eq!(parse(value), want, "{value:?}");
        }
        let long = format!("\"{}\"", "k".repeat(MAX_KEY_CHARS));
        assert!(parse(&long).is_ok());
        let longer = format!("\"{}\"", "k".repeat(MAX_KEY_CHARS + 1));
        assert_eq!(parse(&longer), Err(KeyError::TooLong));
        assert_eq!(
            parse_key([&b"\"a\""[..], &b"\"a\""[..]]),
            Err(KeyError::Repeated)
        );
        assert_eq!(parse_key([&b"\"\xff\""[..]]), Err(KeyError::BadCharacter));
    }

    #[test]
    fn fingerprints_separate_method_target_and_body() {
        let base = Fingerprint::new(&Method::POST, "/items", b"{}");
        assert_eq!(base, Fingerprint::new(&Method::POST, "/items", b"{}"));
        for other in [
            Fingerprint::new(&Method::PATCH, "/items", b"{}"),
            Fingerprint::new(&Method::POST, "/items?x", b"{}"),
            Fingerprint::new(&Method::POST, "/items", b"{ }"),
            // Field boundaries cannot shift.
            Fingerprint::new(&Method::POST, "/items{", b"}"),
        ] {
            assert_ne!(base, other);
        }
        assert_eq!(Fingerprint::from_hex(&base.to_hex()), Some(base));
        assert_eq!(Fingerprint::from_hex("zz"), None);
    }

    #[test]
    fn record_keys_are_scoped_by_route_headers_and_key() {
        let alice: [(&[u8], &[u8]); 1] = [(b"authorization", b"alice")];
        let bob: [(&[u8], &[u8]); 1] = [(b"authorization", b"bob")];
        let a = record_key("api", "k", alice);
        assert_eq!(a, record_key("api", "k", alice));
        assert_ne!(a, record_key("api", "k", bob));
        assert_ne!(a, record_key("other", "k", alice));
        assert_ne!(a, record_key("api", "k2", alice));
        // Never a resource's key.
        assert_ne!(
            record_key("api", "k", []),
            ResourceKey::new("api", "/idempotency-key", Some("k"), [])
        );
    }

    #[test]
    fn decisions_follow_the_draft() {
        let (a, b) = (
            Fingerprint::new(&Method::POST, "/a", b""),
            Fingerprint::new(&Method::POST, "/b", b""),
        );
        let done = |fingerprint, replayable| Found::Done {
            fingerprint,
            replayable,
        };
        let cases = [
            (Found::Taken, a, Decision::Forward),
            (Found::InFlight(a), a, Decision::InFlight),
            (Found::InFlight(a), b, Decision::Reused),
            (done(a, true), a, Decision::Replay),
            (done(a, true), b, Decision::Reused),
            (done(a, false), a, Decision::NotReplayable),
            (done(a, false), b, Decision::Reused),
        ];
        for (found, fingerprint, want) in cases {
            assert_eq!(decide(found, fingerprint), want, "{found:?}");
        }
    }

    #[test]
    fn recorded_statuses() {
        for (status, want) in [
            (200, Disposition::Record),
            (201, Disposition::Record),
            (204, Disposition::Record),
            (303, Disposition::Record),
            (400, Disposition::Record),
            (404, Disposition::Record),
            (422, Disposition::Record),
            (409, Disposition::Release),
            (412, Disposition::Release),
            (428, Disposition::Release),
            (429, Disposition::Release),
            (500, Disposition::Release),
            (502, Disposition::Release),
            (503, Disposition::Release),
            (504, Disposition::Hold),
        ] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(disposition(status), want, "{status}");
        }
    }
}
