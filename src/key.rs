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
        todo!()
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

impl fmt::Display for ResourceKey {
    /// Lowercase hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        todo!()
    }
}

impl fmt::Debug for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResourceKey({self})")
    }
}
