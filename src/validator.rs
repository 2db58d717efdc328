//! What a validator validates: a strong entity-tag of one representation of a resource.
//!
//! Pure value types of the core. The store keeps them per key, the guard learns them from
//! responses (`guard/learn.rs`), and neither needs the other to name them.

use crate::etag::EntityTag;

/// Identifies one representation of a resource: a hash of its content type and content coding
/// (the low 32 bits) and of the query it was read through, its variant (the high 32 bits, 0 for
/// none; see [`crate::target::query_variant`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Representation(pub u64);

impl Representation {
    /// The representation described by these `Content-Type` and `Content-Encoding` values
    /// (empty when the header is absent): the media type without its parameters, in any case.
    pub fn new(content_type: &[u8], content_encoding: &[u8]) -> Self {
        // The media type's essence (RFC 9110 §8.3.1: type and subtype, case-insensitive, no
        // parameters): a PUT's `application/json` and its GET's `application/json;
        // charset=utf-8` are one representation, so a tag learned from one replaces the other.
        let essence = content_type
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        let lowered;
        let essence = if essence.iter().any(u8::is_ascii_uppercase) {
            lowered = essence.to_ascii_lowercase();
            &lowered[..]
        } else {
            essence
        };
        // Computed for every response: the one-shot hasher keeps it cheap (see `SmallHasher`).
        let mut h = crate::key::SmallHasher::new();
        h.field(essence);
        h.update(content_encoding);
        let mut out = [0u8; 8];
        out.copy_from_slice(&h.finalize().as_bytes()[..8]);
        Self(u64::from_le_bytes(out) & CONTENT_BITS)
    }

    /// This representation as read through the query with this variant.
    #[must_use]
    pub fn with_variant(self, variant: u32) -> Self {
        Self(self.0 & CONTENT_BITS | u64::from(variant) << 32)
    }

    /// The variant of the query it was read through (0: none).
    pub fn variant(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// The bits of a [`Representation`] that identify content type and coding.
const CONTENT_BITS: u64 = (1 << 32) - 1;

/// A current strong validator of one representation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validator {
    /// The strong entity-tag.
    pub tag: EntityTag,
    /// Which representation it validates.
    pub representation: Representation,
}
