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
        // Computed for every response, and an API answers in a handful of content types: the
        // last few computed on this thread are kept, and a repeat is a comparison, not a hash.
        RECENT
            .try_with(|recent| {
                let mut recent = recent.borrow_mut();
                if let Some(known) = recent.find(content_type, content_encoding) {
                    return known;
                }
                let computed = Self::compute(content_type, content_encoding);
                recent.keep(content_type, content_encoding, computed);
                computed
            })
            // The thread is ending and its pairs are gone: computed, as they would be anyway.
            .unwrap_or_else(|_| Self::compute(content_type, content_encoding))
    }

    fn compute(content_type: &[u8], content_encoding: &[u8]) -> Self {
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
        // The one-shot hasher keeps a miss cheap too (see `SmallHasher`).
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

thread_local! {
    static RECENT: std::cell::RefCell<Recent> = const { std::cell::RefCell::new(Recent::new()) };
}

/// How many header pairs [`Recent`] keeps.
const RECENT_PAIRS: usize = 4;

/// Longest header pair [`Recent`] keeps, in bytes: memory stays bounded whatever the
/// upstream sends (longer pairs are hashed each time).
const RECENT_MAX_LEN: usize = 128;

/// The last few `Content-Type` and `Content-Encoding` pairs seen, with their representation;
/// the oldest makes room.
struct Recent {
    pairs: [Option<(Vec<u8>, usize, Representation)>; RECENT_PAIRS],
    next: usize,
}

impl Recent {
    const fn new() -> Self {
        Self {
            pairs: [const { None }; RECENT_PAIRS],
            next: 0,
        }
    }

    fn find(&self, content_type: &[u8], content_encoding: &[u8]) -> Option<Representation> {
        self.pairs
            .iter()
            .flatten()
            .find_map(|(both, split, known)| {
                let (kept_type, kept_encoding) = both.split_at(*split);
                (kept_type == content_type && kept_encoding == content_encoding).then_some(*known)
            })
    }

    fn keep(&mut self, content_type: &[u8], content_encoding: &[u8], known: Representation) {
        if content_type.len() + content_encoding.len() > RECENT_MAX_LEN {
            return;
        }
        // The oldest pair's buffer is reused: rotating through more pairs than are kept
        // allocates nothing once every place has been filled.
        let place = &mut self.pairs[self.next];
        let (mut both, _, _) = place
            .take()
            .unwrap_or_else(|| (Vec::with_capacity(RECENT_MAX_LEN), 0, known));
        both.clear();
        both.extend_from_slice(content_type);
        both.extend_from_slice(content_encoding);
        *place = Some((both, content_type.len(), known));
        self.next = (self.next + 1) % RECENT_PAIRS;
    }
}

/// A current strong validator of one representation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validator {
    /// The strong entity-tag.
    pub tag: EntityTag,
    /// Which representation it validates.
    pub representation: Representation,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_representation_is_the_one_computed() {
        let long = vec![b'x'; RECENT_MAX_LEN + 1];
        let pairs: Vec<(&[u8], &[u8])> = vec![
            (b"application/json", b""),
            (b"application/json; charset=utf-8", b""),
            (b"Application/JSON", b"gzip"),
            (b"text/plain", b"br"),
            (b"ab", b"c"),
            (b"a", b"bc"),
            (b"", b""),
            (&long, b""),
        ];
        // Round after round, so pairs are found, evicted and kept again.
        for _ in 0..3 {
            for &(content_type, encoding) in &pairs {
                assert_eq!(
                    Representation::new(content_type, encoding),
                    Representation::compute(content_type, encoding),
                    "{:?} {:?}",
                    String::from_utf8_lossy(content_type),
                    String::from_utf8_lossy(encoding)
                );
            }
        }
        // Where the type ends and the coding begins is part of what is kept.
        assert_ne!(
            Representation::new(b"ab", b"c"),
            Representation::new(b"a", b"bc")
        );
        assert_eq!(
            Representation::new(b"application/json; charset=utf-8", b""),
            Representation::new(b"APPLICATION/json", b"")
        );
    }
}
