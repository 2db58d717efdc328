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
        Self::new(false, opaque)
    }

    /// A weak tag with the given opaque value (without quotes).
    pub fn weak(opaque: &str) -> Result<Self, EtagError> {
        Self::new(true, opaque)
    }

    /// Builds a tag after checking that every byte of `opaque` is `etagc`.
    fn new(weak: bool, opaque: &str) -> Result<Self, EtagError> {
        if !opaque.bytes().all(is_etagc) {
            return Err(EtagError::InvalidChar);
        }
        Ok(Self {
            weak,
            opaque: opaque.into(),
        })
    }

    /// Parses exactly one entity-tag, surrounded by optional whitespace.
    ///
    /// `W/` is case-sensitive, as in the RFC's ABNF (`%s"W/"`). The RFC allows any obs-text
    /// byte (%x80-FF) inside the quotes; because the opaque-tag is kept as a `str`, bytes that
    /// are not valid UTF-8 are rejected as [`EtagError::InvalidChar`].
    pub fn parse(bytes: &[u8]) -> Result<Self, EtagError> {
        let bytes = trim_ows(bytes);
        if bytes.is_empty() {
            return Err(EtagError::Empty);
        }
        let (weak, rest) = match bytes.strip_prefix(b"W/") {
            Some(rest) => (true, rest),
            None => (false, bytes),
        };
        let Some(inner) = rest.strip_prefix(b"\"") else {
            return Err(EtagError::Unquoted);
        };
        // etagc excludes DQUOTE, so the first byte outside etagc must be the closing quote.
        let close = match inner.iter().position(|&b| !is_etagc(b)) {
            Some(i) if inner[i] == b'"' => i,
            Some(_) => return Err(EtagError::InvalidChar),
            None => return Err(EtagError::Unquoted),
        };
        let (opaque, after) = (&inner[..close], &inner[close + 1..]);
        if !after.is_empty() {
            return Err(EtagError::Trailing);
        }
        let opaque = std::str::from_utf8(opaque).map_err(|_| EtagError::InvalidChar)?;
        Ok(Self {
            weak,
            opaque: opaque.into(),
        })
    }

    /// The strong tag the proxy synthesizes from a blake3 digest of a representation.
    pub fn synthesized(digest: &blake3::Hash) -> Self {
        // 128 bits are plenty to tell representations of one resource apart, and keep the
        // header short.
        let hex = digest.to_hex();
        let mut opaque = String::with_capacity(SYNTHESIZED_PREFIX.len() + SYNTHESIZED_HEX_LEN);
        opaque.push_str(SYNTHESIZED_PREFIX);
        opaque.push_str(&hex[..SYNTHESIZED_HEX_LEN]);
        Self {
            weak: false,
            opaque: opaque.into_boxed_str(),
        }
    }

    /// Whether this tag was synthesized by the proxy (the upstream cannot know it).
    pub fn is_synthesized(&self) -> bool {
        // Check the whole shape, not just the prefix, so an upstream tag that merely starts
        // with "ifm-" is still forwarded.
        !self.weak
            && self
                .opaque
                .strip_prefix(SYNTHESIZED_PREFIX)
                .is_some_and(|hex| {
                    hex.len() == SYNTHESIZED_HEX_LEN
                        && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                })
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
        !self.weak && !other.weak && self.opaque == other.opaque
    }

    /// Weak comparison: the opaque tags are identical, whatever the weakness.
    pub fn weak_eq(&self, other: &EntityTag) -> bool {
        self.opaque == other.opaque
    }
}

/// Length of the hex digest in a synthesized tag: the first 16 bytes of the blake3 hash.
const SYNTHESIZED_HEX_LEN: usize = 32;

/// `etagc = %x21 / %x23-7E / obs-text`, with `obs-text = %x80-FF`.
fn is_etagc(b: u8) -> bool {
    b == 0x21 || (0x23..=0x7E).contains(&b) || b >= 0x80
}

/// Strips optional whitespace (`OWS = *( SP / HTAB )`) from both ends.
pub(crate) fn trim_ows(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

impl EntityTag {
    /// Appends the tag as it goes on the wire (what `Display` writes, without the formatter).
    pub(crate) fn push_wire(&self, out: &mut String) {
        if self.weak {
            out.push_str("W/");
        }
        out.push('"');
        out.push_str(&self.opaque);
        out.push('"');
    }
}

impl fmt::Display for EntityTag {
    /// Formats as it goes on the wire: `"opaque"` or `W/"opaque"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.weak {
            f.write_str("W/")?;
        }
        write!(f, "\"{}\"", self.opaque)
    }
}

impl FromStr for EntityTag {
    type Err = EtagError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strong(s: &str) -> EntityTag {
        EntityTag::strong(s).unwrap()
    }

    fn weak(s: &str) -> EntityTag {
        EntityTag::weak(s).unwrap()
    }

    #[test]
    fn parse_valid() {
        let cases: &[(&[u8], EntityTag)] = &[
            (b"\"xyzzy\"", strong("xyzzy")),
            (b"W/\"xyzzy\"", weak("xyzzy")),
            // Empty opaque-tag: `*etagc` allows zero characters.
            (b"\"\"", strong("")),
            (b"W/\"\"", weak("")),
            // OWS around the tag is trimmed.
            (b"  \"a\"\t", strong("a")),
            (b"\t W/\"a\" ", weak("a")),
            // Commas, `W/`, `*` and `!` are all etagc.
            (b"\"a,b\"", strong("a,b")),
            (b"\"W/x\"", strong("W/x")),
            (b"\"*\"", strong("*")),
            (b"\"!#~\"", strong("!#~")),
            // obs-text that happens to be UTF-8.
            ("\"caf\u{e9}\"".as_bytes(), strong("caf\u{e9}")),
        ];
        for (input, want) in cases {
            let got = EntityTag::parse(input);
            assert_eq!(
                got.as_ref(),
                Ok(want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn parse_invalid() {
        use EtagError::*;
        let cases: &[(&[u8], EtagError)] = &[
            (b"", Empty),
            (b"   ", Empty),
            (b"\t", Empty),
            (b"xyzzy", Unquoted),
            (b"*", Unquoted),
            // `W/` is case-sensitive.
            (b"w/\"xyzzy\"", Unquoted),
            (b"W/", Unquoted),
            (b"W/xyzzy", Unquoted),
            (b"W/ \"xyzzy\"", Unquoted),
            (b"W\"xyzzy\"", Unquoted),
            // Missing closing quote.
            (b"\"xyzzy", Unquoted),
            (b"\"", Unquoted),
            (b"W/\"", Unquoted),
            // Bytes outside etagc inside the quotes.
            (b"\"a b\"", InvalidChar),
            (b"\"a\tb\"", InvalidChar),
            (b"\"a\x00b\"", InvalidChar),
            (b"\"a\x1fb\"", InvalidChar),
            (b"\"a\x7fb\"", InvalidChar),
            (b"\"a\r\nb\"", InvalidChar),
            (b"\"a b", InvalidChar),
            // obs-text that is not UTF-8.
            (b"\"\xff\"", InvalidChar),
            (b"\"\xc3\"", InvalidChar),
            // Trailing bytes after the closing quote.
            (b"\"a\"b", Trailing),
            (b"\"a\"\"", Trailing),
            (b"\"a\" \"b\"", Trailing),
            (b"\"a\", \"b\"", Trailing),
            (b"\"a\"W/", Trailing),
            (b"W/\"a\"\"b\"", Trailing),
        ];
        for (input, want) in cases {
            let got = EntityTag::parse(input);
            assert_eq!(
                got,
                Err(want.clone()),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn constructors_validate_opaque() {
        assert_eq!(EntityTag::strong("a b"), Err(EtagError::InvalidChar));
        assert_eq!(EntityTag::weak("a\"b"), Err(EtagError::InvalidChar));
        assert_eq!(EntityTag::strong("a\x7f"), Err(EtagError::InvalidChar));
        assert!(EntityTag::strong("").is_ok());
        assert!(EntityTag::weak("caf\u{e9}").is_ok());
    }

    #[test]
    fn from_str_and_accessors() {
        let t: EntityTag = "W/\"v1\"".parse().unwrap();
        assert!(t.is_weak());
        assert_eq!(t.opaque(), "v1");
        let t: EntityTag = "\"v1\"".parse().unwrap();
        assert!(!t.is_weak());
        assert_eq!(t.opaque(), "v1");
    }

    /// RFC 9110 §8.8.3.2, the comparison table.
    #[test]
    fn comparison_table() {
        // (a, b, strong, weak)
        let cases = [
            (weak("1"), weak("1"), false, true),
            (weak("1"), weak("2"), false, false),
            (weak("1"), strong("1"), false, true),
            (strong("1"), strong("1"), true, true),
            // Not in the table, but follows from it.
            (strong("1"), strong("2"), false, false),
            (strong(""), strong(""), true, true),
        ];
        for (a, b, strong_eq, weak_eq) in cases {
            assert_eq!(a.strong_eq(&b), strong_eq, "{a} strong {b}");
            assert_eq!(b.strong_eq(&a), strong_eq, "{b} strong {a}");
            assert_eq!(a.weak_eq(&b), weak_eq, "{a} weak {b}");
            assert_eq!(b.weak_eq(&a), weak_eq, "{b} weak {a}");
        }
    }

    #[test]
    fn display_round_trips() {
        for (tag, wire) in [
            (strong("xyzzy"), "\"xyzzy\""),
            (weak("xyzzy"), "W/\"xyzzy\""),
            (strong(""), "\"\""),
            (weak("a,b"), "W/\"a,b\""),
        ] {
            assert_eq!(tag.to_string(), wire);
            let mut pushed = String::from("x");
            tag.push_wire(&mut pushed);
            assert_eq!(pushed, format!("x{wire}"));
            assert_eq!(wire.parse::<EntityTag>().unwrap(), tag);
        }
    }

    #[test]
    fn synthesized_tags() {
        let digest = blake3::hash(b"hello");
        let tag = EntityTag::synthesized(&digest);
        assert!(!tag.is_weak());
        assert!(tag.is_synthesized());
        let hex = digest.to_hex();
        assert_eq!(tag.opaque(), format!("{SYNTHESIZED_PREFIX}{}", &hex[..32]));
        assert_eq!(tag, EntityTag::synthesized(&blake3::hash(b"hello")));
        assert_ne!(tag, EntityTag::synthesized(&blake3::hash(b"hello!")));
        // A synthesized tag survives a trip over the wire.
        assert!(
            tag.to_string()
                .parse::<EntityTag>()
                .unwrap()
                .is_synthesized()
        );
    }

    #[test]
    fn is_synthesized_checks_the_whole_shape() {
        let hex32 = "0123456789abcdef0123456789abcdef";
        let cases = [
            (strong(&format!("ifm-{hex32}")), true),
            (weak(&format!("ifm-{hex32}")), false),
            (strong(hex32), false),
            (strong("ifm-"), false),
            (strong(&format!("ifm-{}", &hex32[..31])), false),
            (strong(&format!("ifm-{hex32}0")), false),
            (strong(&format!("ifm-{}", hex32.to_uppercase())), false),
            (strong(&format!("ifm-{}g", &hex32[..31])), false),
            (strong(&format!("IFM-{hex32}")), false),
            (strong("ifm-upstream-tag"), false),
        ];
        for (tag, want) in cases {
            assert_eq!(tag.is_synthesized(), want, "{tag}");
        }
    }
}
