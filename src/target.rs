//! Which request targets name one resource: normalization of the path and query that go into a
//! resource key.
//!
//! Two spellings of one resource under two keys void the guarantee: a write through one leaves
//! the other's validator current, and a stale write through the other passes. So the key is
//! computed from the target after RFC 3986 §6.2.2 normalization, which every upstream honours:
//! percent-encoded unreserved characters are decoded (`%7Euser` is `~user`), the hex digits of
//! the other percent-encodings are uppercased (`%2f` is `%2F`), and dot segments are removed
//! (`/a/./b/../c` is `/a/c`); and, since frameworks decode path parameters, every escaped
//! printable ASCII character that delimits nothing is decoded too (`%40` is `@`). Beyond the RFC, [`Aliases`] names what a route's upstream also
//! treats as one resource: runs of slashes, a trailing slash, letter case.
//!
//! Normalizing too much is safe (two resources sharing a key only serialize their writes and
//! may see spurious conflicts); too little loses updates. Hence the defaults: slashes merged and
//! a trailing slash ignored, as most frameworks route them; case kept, as most paths are
//! case-sensitive.
//!
//! ```
//! use ifmatch::target::{Aliases, normalize_path};
//! let aliases = Aliases::default();
//! assert_eq!(normalize_path("//items/./%31/", aliases), "/items/1");
//! assert_eq!(normalize_path("/items/1", aliases), "/items/1");
//! ```

use std::borrow::Cow;

/// Spellings of a path that a route's upstream treats as one resource, beyond RFC 3986.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aliases {
    /// `//a///b` is `/a/b`.
    pub merge_slashes: bool,
    /// `/a/` is `/a` (the root `/` stays).
    pub ignore_trailing_slash: bool,
    /// `/A` is `/a` (ASCII letters only).
    pub case_insensitive: bool,
}

impl Default for Aliases {
    fn default() -> Self {
        Self {
            merge_slashes: true,
            ignore_trailing_slash: true,
            case_insensitive: false,
        }
    }
}

/// The path as a key sees it: RFC 3986 §6.2.2 normalized, then `aliases` applied. Borrows
/// when nothing changes, the common case.
pub fn normalize_path(path: &str, aliases: Aliases) -> Cow<'_, str> {
    if is_normal_path(path.as_bytes(), aliases) {
        return Cow::Borrowed(path);
    }
    let decoded = normalize_percent(path.as_bytes(), Part::Path);
    let mut out = remove_dot_segments(&decoded);
    if aliases.merge_slashes {
        out.dedup_by(|b, a| *a == b'/' && *b == b'/');
    }
    if aliases.ignore_trailing_slash && out.len() > 1 && out.ends_with(b"/") {
        out.pop();
    }
    if aliases.case_insensitive {
        out.make_ascii_lowercase();
    }
    if out.is_empty() {
        out.push(b'/');
    }
    Cow::Owned(into_string(out))
}

/// The query as a key sees it: percent-encodings normalized (RFC 3986 §6.2.2.2).
pub fn normalize_query(query: &str) -> Cow<'_, str> {
    if !query.as_bytes().contains(&b'%') {
        return Cow::Borrowed(query);
    }
    Cow::Owned(into_string(normalize_percent(
        query.as_bytes(),
        Part::Query,
    )))
}

/// A 32-bit digest of a normalized query, never 0 (0 stands for "no query").
pub fn query_variant(query: Option<&str>) -> u32 {
    let Some(query) = query else { return 0 };
    let digest = blake3::hash(normalize_query(query).as_bytes());
    let bytes = digest.as_bytes();
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]).max(1)
}

/// Resolves a reference found in a response (`Location`, `Content-Location`) against the
/// request's path, per RFC 3986 §5.2: the path and query it names, whatever its authority.
/// `None` for references that name no path on an HTTP server (`mailto:`, empty, garbage).
pub fn resolve_reference<'a>(
    base_path: &str,
    reference: &'a str,
) -> Option<(String, Option<&'a str>)> {
    let reference = reference.trim();
    let reference = reference.split_once('#').map_or(reference, |(r, _)| r);
    if reference.is_empty() {
        return None;
    }
    // `//authority/path?query`: the authority is not compared (see the callers).
    let network_path = match strip_http_scheme(reference) {
        Some(after_scheme) => Some(after_scheme.strip_prefix("//")?),
        None => reference.strip_prefix("//"),
    };
    let rest = if let Some(after) = network_path {
        let start = after.find(['/', '?']).unwrap_or(after.len());
        let rest = &after[start..];
        if !rest.starts_with('/') {
            // An empty path after an authority is the root (§6.2.3).
            let (_, query) = rest.split_once('?').unwrap_or(("", ""));
            let query = (!rest.is_empty()).then_some(query);
            return rest
                .bytes()
                .all(|b| b.is_ascii_graphic())
                .then(|| ("/".to_owned(), query));
        }
        rest
    } else if reference.contains(':')
        && reference.find(':') < reference.find(['/', '?']).or(Some(reference.len()))
    {
        // Another scheme (`mailto:`, `urn:`): not a resource of this server.
        return None;
    } else {
        reference
    };
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    if !rest.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let path = if path.starts_with('/') {
        path.to_owned()
    } else if path.is_empty() {
        base_path.to_owned()
    } else {
        // Merge (§5.2.3): the base path up to its last slash, then the reference.
        let dir = base_path.rfind('/').map_or("/", |i| &base_path[..=i]);
        format!("{dir}{path}")
    };
    let path = if path.is_empty() {
        "/".to_owned()
    } else {
        path
    };
    Some((path, query))
}

fn strip_http_scheme(reference: &str) -> Option<&str> {
    let (scheme, rest) = reference.split_once(':')?;
    (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")).then_some(rest)
}

/// Whether `path` is already in normal form, checked in one pass.
fn is_normal_path(path: &[u8], aliases: Aliases) -> bool {
    if path.first() != Some(&b'/') {
        return false;
    }
    let mut previous = 0u8;
    for (i, &b) in path.iter().enumerate() {
        match b {
            b'%' => return false,
            b'/' if previous == b'/' && aliases.merge_slashes => return false,
            b'.' if previous == b'/' => {
                // "/." followed by "/", "./" or the end is a dot segment.
                let next = path.get(i + 1..).unwrap_or_default();
                if next.is_empty()
                    || next[0] == b'/'
                    || (next[0] == b'.' && (next.len() == 1 || next[1] == b'/'))
                {
                    return false;
                }
            }
            b'A'..=b'Z' if aliases.case_insensitive => return false,
            _ => {}
        }
        previous = b;
    }
    !(aliases.ignore_trailing_slash && path.len() > 1 && previous == b'/')
}

/// Decodes percent-encodings and uppercases the hex of those it keeps (RFC 3986 §2.3,
/// §6.2.2.1-2). Beyond the RFC's unreserved characters, every printable ASCII character is
/// decoded except the delimiters whose escaping changes what the target says (`/`, `?`, `#`,
/// `%`, and in a query `&`, `=`, `+`, `;`): frameworks decode `%40` in a path parameter to `@`,
/// so both spellings must be one key. Bytes past ASCII stay escaped (a raw one cannot appear
/// in a request target). Malformed escapes are kept as sent.
fn normalize_percent(input: &[u8], part: Part) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == b'%' {
            if let (Some(hi), Some(lo)) = (
                input.get(i + 1).copied().and_then(hex),
                input.get(i + 2).copied().and_then(hex),
            ) {
                let decoded = hi << 4 | lo;
                if part.decodes(decoded) {
                    out.push(decoded);
                } else {
                    out.push(b'%');
                    out.push(input[i + 1].to_ascii_uppercase());
                    out.push(input[i + 2].to_ascii_uppercase());
                }
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    out
}

/// RFC 3986 §5.2.4, on a path that starts with `/` or is empty.
fn remove_dot_segments(path: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(path.len());
    let mut input = path;
    while !input.is_empty() {
        if let Some(rest) = input.strip_prefix(b"../") {
            input = rest;
        } else if let Some(rest) = input.strip_prefix(b"./") {
            input = rest;
        } else if input.starts_with(b"/./") {
            input = &input[2..];
        } else if input == b"/." {
            input = b"/";
        } else if input.starts_with(b"/../") || input == b"/.." {
            input = if input.len() == 3 { b"/" } else { &input[3..] };
            let cut = out.iter().rposition(|&b| b == b'/').unwrap_or(0);
            out.truncate(cut);
        } else if input == b"." || input == b".." {
            input = b"";
        } else {
            let start = usize::from(input[0] == b'/');
            let end = input[start..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(input.len(), |p| p + start);
            out.extend_from_slice(&input[..end]);
            input = &input[end..];
        }
    }
    out
}

/// The part of a request target being normalized.
#[derive(Clone, Copy)]
enum Part {
    Path,
    Query,
}

impl Part {
    /// Whether an escaped byte is decoded for the key: printable ASCII that delimits nothing
    /// in this part.
    fn decodes(self, b: u8) -> bool {
        let delimits = match self {
            Self::Path => matches!(b, b'/' | b'?' | b'#' | b'%'),
            Self::Query => matches!(b, b'#' | b'%' | b'&' | b'=' | b'+' | b';'),
        };
        b.is_ascii_graphic() && !delimits
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Bytes that came from a `&str` with only ASCII bytes replaced by ASCII bytes (decoded
/// escapes are unreserved ASCII), so they are UTF-8; lossy conversion is only a safety net.
fn into_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC: Aliases = Aliases {
        merge_slashes: false,
        ignore_trailing_slash: false,
        case_insensitive: false,
    };

    #[test]
    fn rfc_3986_normalization() {
        let cases = [
            ("/items/1", "/items/1"),
            ("/items/%31", "/items/1"),
            ("/%7Euser/%2f", "/~user/%2F"),
            ("/users/a%40b.com", "/users/a@b.com"),
            ("/a%2Cb%3Ac%24", "/a,b:c$"),
            ("/a%3fb%23c%25d%20e", "/a%3Fb%23c%25d%20e"),
            ("/a%2Fb", "/a%2Fb"),
            ("/a/./b/../c", "/a/c"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/../a", "/a"),
            ("/%2E%2E/a", "/a"),
            ("/a/%2e/b", "/a/b"),
            ("/.hidden/x", "/.hidden/x"),
            ("/a/..b/c", "/a/..b/c"),
            ("/bad%zz", "/bad%zz"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/", "/"),
            ("//a", "//a"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_path(input, RFC), want, "{input}");
        }
    }

    #[test]
    fn route_aliases() {
        let default = Aliases::default();
        let cases = [
            (default, "//items//1", "/items/1"),
            (default, "/items/1/", "/items/1"),
            (default, "/", "/"),
            (default, "//", "/"),
            (default, "/Items/1", "/Items/1"),
            (
                Aliases {
                    case_insensitive: true,
                    ..default
                },
                "/Items/%7E",
                "/items/~",
            ),
            (
                Aliases {
                    ignore_trailing_slash: false,
                    ..default
                },
                "/items/",
                "/items/",
            ),
        ];
        for (aliases, input, want) in cases {
            assert_eq!(normalize_path(input, aliases), want, "{input} {aliases:?}");
        }
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for path in ["/", "/items/1", "/a.b/c..d/.e", "/~x"] {
            assert!(matches!(
                normalize_path(path, Aliases::default()),
                Cow::Borrowed(_)
            ));
        }
    }

    #[test]
    fn queries_and_variants() {
        assert_eq!(normalize_query("a=%7e&b=%2f"), "a=~&b=/");
        assert_eq!(normalize_query("a=%26%3d%2b&b=%40"), "a=%26%3D%2B&b=@");
        assert_eq!(query_variant(None), 0);
        assert_ne!(query_variant(Some("")), 0);
        assert_eq!(query_variant(Some("x=%31")), query_variant(Some("x=1")));
        assert_ne!(query_variant(Some("x=1")), query_variant(Some("x=2")));
    }

    #[test]
    fn references_resolve_against_the_request_path() {
        type Resolved<'a> = Option<(&'a str, Option<&'a str>)>;
        let cases: [(&str, &str, Resolved<'_>); 11] = [
            ("/items", "/items/2", Some(("/items/2", None))),
            (
                "/items",
                "http://api.example/items/2?v=1",
                Some(("/items/2", Some("v=1"))),
            ),
            (
                "/items",
                "HTTPS://x//items/2#frag",
                Some(("//items/2", None)),
            ),
            ("/items/", "2", Some(("/items/2", None))),
            ("/items", "2", Some(("/2", None))),
            ("/a/b", "../c", Some(("/a/../c", None))),
            ("/items", "//cdn.example/x", Some(("/x", None))),
            ("/items", "http://host", Some(("/", None))),
            ("/items", "mailto:a@b", None),
            ("/items", "", None),
            ("/items", "/bad path", None),
        ];
        for (base, reference, want) in cases {
            let got = resolve_reference(base, reference);
            let got = got.as_ref().map(|(p, q)| (p.as_str(), *q));
            assert_eq!(got, want, "{base} + {reference}");
        }
    }
}
