//! Entity-tags (RFC 9110 §8.8.3): parsing, formatting, and strong/weak comparison.
//!
//! ```
//! use ifmatch::EntityTag;
//! let a: EntityTag = "\"xyzzy\"".parse().unwrap();
//! let b: EntityTag = "W/\"xyzzy\"".parse().unwrap();
//! assert!(a.weak_eq(&b));
//! assert!(!a.strong_eq(&b));
//! ```

use std::fmt;
use std::str::FromStr;

/// Prefix of the opaque part of every tag the proxy synthesizes, so a synthesized tag can be
/// recognised (and stripped before forwarding) without consulting the store.
pub const SYNTHESIZED_PREFIX: &str = "ifm-";

/// An entity-tag: an opaque validator, strong or weak.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EntityTag {
    weak: bool,
    /// The opaque-tag without its quotes.
    opaque: Box<str>,
}

/// Why a byte string is not an entity-tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtagError {
    /// The value is empty (after trimming optional whitespace).
    #[error("empty entity-tag")]
    Empty,
    /// The opaque-tag is not enclosed in double quotes.
    #[error("entity-tag is not quoted")]
    Unquoted,
    /// A byte outside `etagc` (%x21 / %x23-7E / obs-text) appears inside the quotes.
    #[error("invalid character in entity-tag")]
    InvalidChar,
    /// Bytes follow the closing quote.
    #[error("trailing bytes after entity-tag")]
    Trailing,
}

impl EntityTag {
    /// A strong tag with the given opaque value (without quotes).
    pub fn strong(opaque: &str) -> Result<Self, EtagError> {
        todo!()
    }

    /// A weak tag with the given opaque value (without quotes).
    pub fn weak(opaque: &str) -> Result<Self, EtagError> {
        todo!()
    }

    /// Parses exactly one entity-tag, surrounded by optional whitespace.
    pub fn parse(bytes: &[u8]) -> Result<Self, EtagError> {
        todo!()
    }

    /// The strong tag the proxy synthesizes from a blake3 digest of a representation.
    pub fn synthesized(digest: &blake3::Hash) -> Self {
        todo!()
    }

    /// Whether this tag was synthesized by the proxy (the upstream cannot know it).
    pub fn is_synthesized(&self) -> bool {
        todo!()
    }

    /// Whether the tag is weak (`W/` prefix).
    pub fn is_weak(&self) -> bool {
        self.weak
    }

    /// The opaque-tag without quotes.
    pub fn opaque(&self) -> &str {
        &self.opaque
    }

    /// Strong comparison: both strong and the opaque tags are identical.
    pub fn strong_eq(&self, other: &EntityTag) -> bool {
        todo!()
    }

    /// Weak comparison: the opaque tags are identical, whatever the weakness.
    pub fn weak_eq(&self, other: &EntityTag) -> bool {
        todo!()
    }
}

impl fmt::Display for EntityTag {
    /// Formats as it goes on the wire: `"opaque"` or `W/"opaque"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        todo!()
    }
}

impl FromStr for EntityTag {
    type Err = EtagError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s.as_bytes())
    }
}
