//! `X-Request-Id`: the client's, when it is sane, or a fresh one; sent upstream, returned to
//! the client, and put in the request's extensions for logs.

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

/// The `X-Request-Id` header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-supplied id kept; longer ones are replaced (they would bloat every log line).
const MAX_LEN: usize = 128;

/// A request's id, in its extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub HeaderValue);

impl RequestId {
    /// The id as text (always visible ASCII).
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

/// Whether a client's id is worth keeping: 1 to 128 visible ASCII characters, so it cannot
/// inject anything into logs or headers.
pub fn is_valid(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_LEN && bytes.iter().all(|b| b.is_ascii_graphic())
}

/// The request's id: the client's `X-Request-Id` if it is sane, else a new one.
pub fn of(headers: &http::HeaderMap) -> RequestId {
    match headers.get(&X_REQUEST_ID) {
        Some(value) if is_valid(value) => RequestId(value.clone()),
        Some(_) => {
            tracing::debug!("invalid x-request-id replaced");
            generate()
        }
        None => generate(),
    }
}

/// A fresh id: 32 hex digits, revealing neither the clock, the pid nor how many requests came
/// before, and distinct from every other id with overwhelming probability.
///
/// Two 64-bit halves, each a keyed hash (SipHash-1-3, the standard library's, with keys drawn
/// once per process from the operating system) of a counter: a pseudo-random function, so
/// nothing about the counter can be read back from an id without the keys. A few hundred
/// instructions, where a keyed blake3 hash, its hex and a validated header value cost about
/// 1,100.
pub fn generate() -> RequestId {
    static KEYS: OnceLock<[RandomState; 2]> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let [high, low] = KEYS.get_or_init(|| [RandomState::new(), RandomState::new()]);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut hex = [0u8; 32];
    put_hex(&mut hex[..16], high.hash_one(n));
    put_hex(&mut hex[16..], low.hash_one(n));
    // Hex digits are always a valid header value.
    RequestId(
        HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(&hex))
            .unwrap_or(HeaderValue::from_static("0")),
    )
}

/// `value` as 16 lowercase hex digits into `out`.
fn put_hex(out: &mut [u8], value: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = HEX[(value >> (60 - 4 * i)) as usize & 0xf];
    }
}

/// Applies [`SetRequestId`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = SetRequestId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SetRequestId { inner }
    }
}

/// Gives every request an `X-Request-Id` (the client's if valid) and echoes it in the response.
#[derive(Debug, Clone)]
pub struct SetRequestId<S> {
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for SetRequestId<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = of(req.headers());
        // One value only: a second, different id would reach the upstream otherwise.
        req.headers_mut().insert(&X_REQUEST_ID, id.0.clone());
        let value = id.0.clone();
        req.extensions_mut().insert(id);
        RequestIdFuture {
            inner: self.inner.call(req),
            id: Some(value),
        }
    }
}

pin_project! {
    /// The inner response, with the request id set.
    pub struct RequestIdFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, RB, E> Future for RequestIdFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        if let Some(id) = this.id.take() {
            response.headers_mut().insert(&X_REQUEST_ID, id);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_visible_ascii_ids_are_kept() {
        for (value, valid) in [
            ("abc-123", true),
            ("x".repeat(128).as_str(), true),
            ("x".repeat(129).as_str(), false),
            ("", false),
            ("has space", false),
            ("tab\there", false),
        ] {
            let header = HeaderValue::from_str(value).unwrap();
            assert_eq!(is_valid(&header), valid, "{value:?}");
        }
        assert!(!is_valid(&HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()));
    }

    #[test]
    fn generated_ids_are_distinct_and_valid() {
        let ids: std::collections::HashSet<_> = (0..10_000)
            .map(|_| generate().as_str().to_owned())
            .collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(100) {
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
        }
        // Neither half counts visibly: consecutive ids differ in many digits.
        let (a, b) = (generate(), generate());
        let same = a
            .as_str()
            .bytes()
            .zip(b.as_str().bytes())
            .filter(|(x, y)| x == y);
        assert!(same.count() < 16, "{a:?} {b:?}");
    }

    #[test]
    fn hex_is_big_endian() {
        let mut out = [0u8; 16];
        put_hex(&mut out, 0x0123_4567_89ab_cdef);
        assert_eq!(&out, b"0123456789abcdef");
    }
}
