//! Resource keys: a fixed-size blake3 digest of route, path, query and chosen request headers.
//!
//! A key costs the same memory whatever the URL, and never holds a secret in the clear
//! (an `Authorization` value used to separate per-user resources is only hashed).
//!
//! ```
//! use ifmatch::ResourceKey;
//! let a = ResourceKey::new("api", "/items/1", Some("v=2"), []);
//! let b = ResourceKey::new("api", "/items/1", None, []);
//! assert_ne!(a, b);
//! ```

use std::fmt;

/// The identity of one resource as the proxy tracks it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey([u8; 16]);

impl ResourceKey {
    /// Hashes the route id, path, query (when the route keys on it) and key headers
    /// (name, value pairs, in the route's configured order). Fields are length-prefixed so
    /// that no two different inputs share an encoding.
    pub fn new<'a>(
        route: &str,
        path: &str,
        query: Option<&str>,
        key_headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Self {
        let mut hasher = SmallHasher::new();
        hasher.field(route.as_bytes());
        hasher.field(path.as_bytes());
        // A presence flag keeps "no query" apart from an empty one (`/a` vs `/a?`).
        match query {
            None => hasher.update(&[0]),
            Some(query) => {
                hasher.update(&[1]);
                hasher.field(query.as_bytes());
            }
        }
        for (name, value) in key_headers {
            hasher.field(name);
            hasher.field(value);
        }
        let mut key = [0; 16];
        // 128 bits: collisions between live resources are out of reach, at half the memory.
        key.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
        Self(key)
    }

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Rebuilds a key from its raw bytes (as shown by [`fmt::Display`], hex-decoded).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }
}

/// blake3 over a few short fields. Up to one chunk (1 KiB), the bytes are gathered on the stack
/// and hashed in one call, which skips the incremental hasher's ~1.9 KB state: the profile of
/// a guarded GET showed that state's setup and copies costing more than the hashing. Longer
/// inputs spill into the incremental hasher. The digest is the same either way.
pub(crate) struct SmallHasher {
    buf: [u8; blake3::CHUNK_LEN],
    len: usize,
    spill: Option<Box<blake3::Hasher>>,
}

impl SmallHasher {
    pub(crate) fn new() -> Self {
        Self {
            buf: [0; blake3::CHUNK_LEN],
            len: 0,
            spill: None,
        }
    }

    /// Hashes one field with its length in front, so field boundaries cannot shift.
    pub(crate) fn field(&mut self, bytes: &[u8]) {
        // usize -> u64 never truncates on supported targets; a fixed width keeps keys equal
        // across 32- and 64-bit replicas sharing a store.
        self.update(&(bytes.len() as u64).to_le_bytes());
        self.update(bytes);
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        if let Some(hasher) = &mut self.spill {
            hasher.update(bytes);
        } else if let Some(room) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            room.copy_from_slice(bytes);
            self.len += bytes.len();
        } else {
            let mut hasher = Box::new(blake3::Hasher::new());
            hasher.update(&self.buf[..self.len]);
            hasher.update(bytes);
            self.spill = Some(hasher);
        }
    }

    pub(crate) fn finalize(&self) -> blake3::Hash {
        match &self.spill {
            Some(hasher) => hasher.finalize(),
            None => blake3::hash(&self.buf[..self.len]),
        }
    }
}

impl fmt::Display for ResourceKey {
    /// Lowercase hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// A string that is not a key's 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a resource key is 32 hex digits")]
pub struct ParseKeyError;

impl std::str::FromStr for ResourceKey {
    type Err = ParseKeyError;

    /// The inverse of [`fmt::Display`]: 32 hex digits, either case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.as_bytes();
        if digits.len() != 32 {
            return Err(ParseKeyError);
        }
        let mut key = [0u8; 16];
        for (byte, pair) in key.iter_mut().zip(digits.chunks_exact(2)) {
            let high = hex_digit(pair[0]).ok_or(ParseKeyError)?;
            let low = hex_digit(pair[1]).ok_or(ParseKeyError)?;
            *byte = high << 4 | low;
        }
        Ok(Self(key))
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    // to_digit(16) is exactly 0..=15, so the narrowing is lossless.
    char::from(c).to_digit(16).map(|d| d as u8)
}

impl fmt::Debug for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResourceKey({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Input<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        &'a [(&'a [u8], &'a [u8])],
    );

    /// The incremental blake3 encoding `SmallHasher` must reproduce byte for byte.
    fn reference(
        route: &str,
        path: &str,
        query: Option<&str>,
        headers: &[(&[u8], &[u8])],
    ) -> [u8; 16] {
        fn field(h: &mut blake3::Hasher, b: &[u8]) {
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(b);
        }
        let mut h = blake3::Hasher::new();
        field(&mut h, route.as_bytes());
        field(&mut h, path.as_bytes());
        match query {
            None => {
                h.update(&[0]);
            }
            Some(q) => {
                h.update(&[1]);
                field(&mut h, q.as_bytes());
            }
        }
        for (n, v) in headers {
            field(&mut h, n);
            field(&mut h, v);
        }
        let mut out = [0; 16];
        out.copy_from_slice(&h.finalize().as_bytes()[..16]);
        out
    }

    #[test]
    fn small_and_spilled_inputs_hash_like_the_incremental_hasher() {
        let long = "x".repeat(3000);
        let near = "y".repeat(blake3::CHUNK_LEN - 40);
        let cases: [Input<'_>; 5] = [
            ("", "/", None, &[]),
            (
                "api",
                "/items/1",
                Some("v=2"),
                &[(b"authorization", b"Bearer t")],
            ),
            ("api", &near, Some(""), &[]),
            ("api", &near, Some("q=1234567890123456789"), &[(b"a", b"b")]),
            (
                "api",
                &long,
                Some(&long),
                &[(b"authorization", long.as_bytes())],
            ),
        ];
        for (route, path, query, headers) in cases {
            let got = ResourceKey::new(route, path, query, headers.iter().copied());
            assert_eq!(
                got.as_bytes(),
                &reference(route, path, query, headers),
                "{path:.20}"
            );
        }
    }

    fn key((route, path, query, headers): Input<'_>) -> ResourceKey {
        ResourceKey::new(route, path, query, headers.iter().copied())
    }

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let k = key(("api", "/items/1", None, &[]));
        assert_eq!(k.to_string().parse::<ResourceKey>(), Ok(k));
        assert_eq!(k.to_string().to_uppercase().parse::<ResourceKey>(), Ok(k));
        for bad in [
            "",
            "abc",
            &"g".repeat(32),
            &"a".repeat(33),
            "é".repeat(16).as_str(),
        ] {
            assert_eq!(bad.parse::<ResourceKey>(), Err(ParseKeyError), "{bad:?}");
        }
    }

    #[test]
    fn same_input_same_key() {
        let input: Input<'_> = ("api", "/items/1", Some("v=2"), &[(b"authorization", b"t")]);
        assert_eq!(key(input), key(input));
    }

    /// Pairs of inputs that a naive concatenation would confuse.
    #[test]
    fn keys_separate() {
        let cases: &[(Input<'_>, Input<'_>)] = &[
            // Route / path boundary.
            (("api", "/items", None, &[]), ("api/", "items", None, &[])),
            (("a", "b/c", None, &[]), ("ab", "/c", None, &[])),
            (("", "/x", None, &[]), ("/x", "", None, &[])),
            // Path / query boundary.
            (("api", "/a?b", None, &[]), ("api", "/a", Some("b"), &[])),
            (("api", "/a", Some(""), &[]), ("api", "/a?", None, &[])),
            // No query vs an empty one.
            (("api", "/a", None, &[]), ("api", "/a", Some(""), &[])),
            (
                ("api", "/a", Some("x=1"), &[]),
                ("api", "/a", Some("x=2"), &[]),
            ),
            // Routes and paths alone.
            (("api", "/a", None, &[]), ("web", "/a", None, &[])),
            (("api", "/a", None, &[]), ("api", "/b", None, &[])),
            // Header name / value boundary.
            (
                ("api", "/a", None, &[(b"ab", b"c")]),
                ("api", "/a", None, &[(b"a", b"bc")]),
            ),
            // Header values.
            (
                ("api", "/a", None, &[(b"authorization", b"alice")]),
                ("api", "/a", None, &[(b"authorization", b"bob")]),
            ),
            // A header vs none, and an empty header vs none.
            (
                ("api", "/a", None, &[]),
                ("api", "/a", None, &[(b"authorization", b"")]),
            ),
            (("api", "/a", None, &[]), ("api", "/a", None, &[(b"", b"")])),
            // Header order is significant: the route fixes it.
            (
                ("api", "/a", None, &[(b"x", b"1"), (b"y", b"2")]),
                ("api", "/a", None, &[(b"y", b"2"), (b"x", b"1")]),
            ),
            // Header bytes vs query bytes.
            (
                ("api", "/a", Some("q"), &[]),
                ("api", "/a", None, &[(b"q", b"")]),
            ),
        ];
        for (a, b) in cases {
            assert_ne!(key(*a), key(*b), "{a:?} vs {b:?}");
        }
    }

    /// Replicas sharing a store must agree on keys: pin the encoding.
    #[test]
    fn encoding_is_stable() {
        let mut encoded = Vec::new();
        for field in [&b"api"[..], b"/items/1"] {
            encoded.extend_from_slice(&(field.len() as u64).to_le_bytes());
            encoded.extend_from_slice(field);
        }
        encoded.push(1);
        encoded.extend_from_slice(&3u64.to_le_bytes());
        encoded.extend_from_slice(b"v=2");
        for field in [&b"authorization"[..], b"Bearer t"] {
            encoded.extend_from_slice(&(field.len() as u64).to_le_bytes());
            encoded.extend_from_slice(field);
        }
        let digest = blake3::hash(&encoded);
        let got = key((
            "api",
            "/items/1",
            Some("v=2"),
            &[(b"authorization", b"Bearer t")],
        ));
        assert_eq!(got.as_bytes()[..], digest.as_bytes()[..16]);
        assert_eq!(got.to_string(), digest.to_hex()[..32]);
    }

    #[test]
    fn display_is_32_lowercase_hex() {
        let k = key(("api", "/items/1", None, &[]));
        let s = k.to_string();
        assert_eq!(s.len(), 32);
        assert!(
            s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{s}"
        );
        assert_eq!(format!("{k:?}"), format!("ResourceKey({s})"));
        let bytes = ResourceKey::from_bytes([0xab; 16]);
        assert_eq!(bytes.to_string(), "ab".repeat(16));
        let bytes = ResourceKey::from_bytes([0x01; 16]);
        assert_eq!(bytes.to_string(), "01".repeat(16));
    }

    #[test]
    fn bytes_round_trip() {
        let k = key(("api", "/items/1", Some("a=1"), &[]));
        assert_eq!(ResourceKey::from_bytes(*k.as_bytes()), k);
    }

    #[test]
    fn key_is_a_plain_16_byte_value() {
        assert_eq!(std::mem::size_of::<ResourceKey>(), 16);
    }
}
