//! The version memory: recent representations the guard has seen, by resource and validator,
//! so that a conflict response can show the current version and compare it with the one the
//! client edited (and, where the route allows it, merge the two).
//!
//! Bounded in bytes (`server.version_memory_bytes`), at most [`PER_RESOURCE`] versions per
//! resource, least recently used out first. It is an optimisation of the answer, never of the
//! guarantee: nothing is decided from it that the store has not decided (a merge is forwarded
//! only under the write's lease, at the validator the store holds), and a version that is not
//! here only makes a 409 less rich. In-process: each replica remembers what it saw.
//!
//! Invariant: `bytes` is the sum of [`Version::cost`] over the entries, and `order` holds one
//! tick per entry; both are updated together under the one lock, never held across `.await`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::etag::EntityTag;
use crate::key::ResourceKey;
use crate::telemetry;

/// At most this many versions of one resource are kept: the version a client edited is found
/// while fewer writes than this landed since it read it (on a hot resource, about one per
/// concurrent writer).
pub const PER_RESOURCE: usize = 16;

/// The default bound, 64 MiB.
pub const DEFAULT_VERSION_MEMORY_BYTES: usize = 64 * 1024 * 1024;

/// Bookkeeping charged per version on top of its body (map slots, tag, content type).
const OVERHEAD: usize = 160;

/// Who may be shown a remembered representation: a digest of the credential headers
/// (`CREDENTIAL_NAMES`) of the request it answered. A conflict response shows a version only to
/// a writer with the same credentials, so that it never discloses what an upstream that
/// authorizes reads per user would not show that writer (the route's `key_headers` already
/// separate per-user resources; this covers routes that do not set them).
pub type Audience = [u8; 16];

/// The request headers that carry credentials in the APIs ifmatch fronts: the standard ones
/// and the common API-key spellings. A route whose credentials travel in another header sets
/// it in `key_headers`, which separates the resources themselves. Names, not strings: a lookup
/// by `&str` parses the name on every call.
static CREDENTIAL_NAMES: [http::HeaderName; 7] = [
    http::header::AUTHORIZATION,
    http::header::PROXY_AUTHORIZATION,
    http::header::COOKIE,
    http::HeaderName::from_static("x-api-key"),
    http::HeaderName::from_static("api-key"),
    http::HeaderName::from_static("x-auth-token"),
    http::HeaderName::from_static("x-access-token"),
];

/// The audience of a request with `headers`.
pub fn audience(headers: &http::HeaderMap) -> Audience {
    // Most requests carry no credential header: their audience is the digest of nothing,
    // computed once (a hasher is about 2 KiB to set up).
    static ANONYMOUS: std::sync::OnceLock<Audience> = std::sync::OnceLock::new();
    if !headers.keys().any(|name| CREDENTIAL_NAMES.contains(name)) {
        return *ANONYMOUS.get_or_init(|| truncate(blake3::Hasher::new().finalize()));
    }
    let mut hasher = blake3::Hasher::new();
    for name in &CREDENTIAL_NAMES {
        for value in headers.get_all(name) {
            hasher.update(name.as_str().as_bytes());
            hasher.update(&(value.len() as u64).to_le_bytes());
            hasher.update(value.as_bytes());
        }
    }
    truncate(hasher.finalize())
}

/// The first 16 bytes of `digest`.
fn truncate(digest: blake3::Hash) -> Audience {
    let mut audience = [0u8; 16];
    audience.copy_from_slice(&digest.as_bytes()[..16]);
    audience
}

/// One remembered representation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Its strong validator.
    pub tag: EntityTag,
    /// Its `Content-Type` as sent (empty: none).
    pub content_type: Bytes,
    /// Its identity-coded bytes.
    pub body: Bytes,
    /// Who may be shown it.
    pub audience: Audience,
}

impl Version {
    fn cost(&self) -> usize {
        self.body.len() + self.content_type.len() + self.tag.opaque().len() + OVERHEAD
    }
}

/// The version memory, shared by every route and clone of the guard (see the module docs).
#[derive(Debug, Clone)]
pub struct Versions {
    inner: Arc<Mutex<Inner>>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Inner {
    resources: HashMap<ResourceKey, Vec<(u64, Version)>>,
    /// Tick of last use -> whose version: the oldest first out.
    order: BTreeMap<u64, (ResourceKey, EntityTag)>,
    tick: u64,
    bytes: usize,
}

impl Default for Versions {
    fn default() -> Self {
        Self::new(DEFAULT_VERSION_MEMORY_BYTES)
    }
}

impl Versions {
    /// A memory of at most `capacity` bytes (0: remembers nothing).
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner::default())),
            capacity,
        }
    }

    /// Whether it remembers anything at all.
    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// Bytes held (bodies plus bookkeeping).
    pub fn bytes(&self) -> usize {
        self.lock().map_or(0, |inner| inner.bytes)
    }

    /// Remembers `version` of `key` (a body too large for the whole memory is not kept).
    pub fn remember(&self, key: ResourceKey, version: Version) {
        let cost = version.cost();
        if cost > self.capacity {
            return;
        }
        let Some(mut inner) = self.lock() else { return };
        inner.remove(key, &version.tag);
        inner.tick += 1;
        let tick = inner.tick;
        inner.order.insert(tick, (key, version.tag.clone()));
        inner.bytes += cost;
        let list = inner.resources.entry(key).or_default();
        list.push((tick, version));
        if list.len() > PER_RESOURCE {
            // The least recently used of this resource's versions.
            let oldest = list
                .iter()
                .map(|(tick, v)| (*tick, v.tag.clone()))
                .min_by_key(|(t, _)| *t);
            if let Some((_, tag)) = oldest {
                inner.remove(key, &tag);
            }
        }
        while inner.bytes > self.capacity {
            let Some((_, (key, tag))) = inner.order.pop_first() else {
                break;
            };
            inner.remove(key, &tag);
        }
        metrics::gauge!(telemetry::VERSION_MEMORY_BYTES).set(inner.bytes as f64);
    }

    /// The version of `key` whose validator is `tag`, if remembered (and now most recently
    /// used).
    pub fn get(&self, key: ResourceKey, tag: &EntityTag) -> Option<Version> {
        let found = self.lock().and_then(|mut inner| {
            inner.tick += 1;
            let tick = inner.tick;
            let Inner {
                resources, order, ..
            } = &mut *inner;
            let (used, version) = resources
                .get_mut(&key)?
                .iter_mut()
                .find(|(_, v)| v.tag.strong_eq(tag))?;
            order.remove(used);
            order.insert(tick, (key, version.tag.clone()));
            *used = tick;
            Some(version.clone())
        });
        let name = if found.is_some() {
            telemetry::VERSION_MEMORY_HITS
        } else {
            telemetry::VERSION_MEMORY_MISSES
        };
        metrics::counter!(name).increment(1);
        found
    }

    fn lock(&self) -> Option<std::sync::MutexGuard<'_, Inner>> {
        // Poisoned: a panic while it was held; the memory is then only unavailable (empty), as
        // it may always be.
        self.inner.lock().ok()
    }
}

impl Inner {
    /// Forgets `key`'s version `tag`, if held.
    fn remove(&mut self, key: ResourceKey, tag: &EntityTag) {
        let Some(list) = self.resources.get_mut(&key) else {
            return;
        };
        if let Some(at) = list.iter().position(|(_, v)| v.tag.strong_eq(tag)) {
            let (tick, version) = list.swap_remove(at);
            self.order.remove(&tick);
            self.bytes -= version.cost();
        }
        if list.is_empty() {
            self.resources.remove(&key);
        }
    }
}

/// Remembers what a response established for `key`: its validator and, when the guard holds
/// the whole body (it read it to hash it), that body. Only the plain path's representation:
/// a query view's body is not the document a write replaces.
pub(crate) fn remember<B: http_body::Body>(
    versions: &Versions,
    (key, audience): (ResourceKey, Audience),
    validator: &crate::validator::Validator,
    headers: &http::HeaderMap,
    body: &super::body::ResponseBody<B>,
) {
    if !versions.enabled() {
        return;
    }
    let coded = headers
        .get(http::header::CONTENT_ENCODING)
        .is_some_and(|coding| !coding.as_bytes().eq_ignore_ascii_case(b"identity"));
    if coded {
        return;
    }
    let Some(bytes) = body.complete() else { return };
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .map_or_else(Bytes::new, |v| Bytes::copy_from_slice(v.as_bytes()));
    versions.remember(
        key,
        Version {
            tag: validator.tag.clone(),
            content_type,
            body: bytes,
            audience,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credential_names_are_the_credential_headers() {
        let names: Vec<&str> = CREDENTIAL_NAMES.iter().map(|n| n.as_str()).collect();
        let want = [
            "authorization",
            "proxy-authorization",
            "cookie",
            "x-api-key",
            "api-key",
            "x-auth-token",
            "x-access-token",
        ];
        assert_eq!(names, want);
        // The shortcut for requests without credentials gives the digest the hasher gives.
        let empty = http::HeaderMap::new();
        assert_eq!(audience(&empty), truncate(blake3::Hasher::new().finalize()));
    }

    #[test]
    fn the_audience_is_the_credentials() {
        let mut headers = http::HeaderMap::new();
        let anonymous = audience(&headers);
        headers.insert("accept", http::HeaderValue::from_static("*/*"));
        assert_eq!(audience(&headers), anonymous);
        headers.insert("authorization", http::HeaderValue::from_static("Bearer a"));
        let alice = audience(&headers);
        assert_ne!(alice, anonymous);
        headers.insert("authorization", http::HeaderValue::from_static("Bearer b"));
        assert_ne!(audience(&headers), alice);
        headers.remove("authorization");
        headers.insert("cookie", http::HeaderValue::from_static("Bearer a"));
        assert_ne!(audience(&headers), alice, "the header name counts");
    }

    fn version(tag: &str, body: &str) -> Version {
        Version {
            tag: EntityTag::strong(tag).unwrap(),
            content_type: Bytes::from_static(b"application/json"),
            body: Bytes::from(body.to_owned()),
            audience: [0; 16],
        }
    }

    fn key(i: u32) -> ResourceKey {
        ResourceKey::new("r", &format!("/items/{i}"), None, [])
    }

    /// Whether `versions` holds resource `i`'s version `tag`.
    fn holds(versions: &Versions, i: u32, tag: &str) -> bool {
        versions
            .get(key(i), &EntityTag::strong(tag).unwrap())
            .is_some()
    }

    #[test]
    fn remembers_and_finds_by_resource_and_tag() {
        let versions = Versions::new(1 << 20);
        versions.remember(key(1), version("a", "{}"));
        assert_eq!(
            versions
                .get(key(1), &EntityTag::strong("a").unwrap())
                .unwrap()
                .body,
            "{}"
        );
        assert!(!holds(&versions, 2, "a"));
        assert!(!holds(&versions, 1, "b"));
        // Remembering the same version again replaces it, and costs nothing more.
        let before = versions.bytes();
        versions.remember(key(1), version("a", "{}"));
        assert_eq!(versions.bytes(), before);
    }

    #[test]
    fn keeps_a_few_versions_per_resource_least_recently_used_out() {
        let versions = Versions::new(1 << 20);
        for i in 0..PER_RESOURCE {
            versions.remember(key(1), version(&format!("v{i}"), "{}"));
        }
        // v0 used: v1 is now the least recently used.
        assert!(holds(&versions, 1, "v0"));
        versions.remember(key(1), version("new", "{}"));
        assert!(holds(&versions, 1, "v0"));
        assert!(!holds(&versions, 1, "v1"));
        assert!(holds(&versions, 1, "new"));
    }

    #[test]
    fn stays_within_its_bytes_dropping_the_least_recently_used() {
        let body = "x".repeat(1000);
        let cost = version("k0000", &body).cost();
        let versions = Versions::new(cost * 10);
        for i in 0..1000 {
            versions.remember(key(i), version(&format!("k{i:04}"), &body));
            assert!(versions.bytes() <= cost * 10);
        }
        assert_eq!(versions.bytes(), cost * 10);
        assert!(holds(&versions, 999, "k0999"));
        assert!(!holds(&versions, 0, "k0000"));
        // A body larger than the whole memory is not kept, and evicts nothing.
        versions.remember(key(5000), version("k9999", &"y".repeat(cost * 11)));
        assert_eq!(versions.bytes(), cost * 10);
        // Disabled: nothing is kept.
        let off = Versions::new(0);
        off.remember(key(1), version("a", "{}"));
        assert_eq!(off.bytes(), 0);
        assert!(!off.enabled());
    }
}
