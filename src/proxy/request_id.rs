//! `X-Request-Id`: the client's, when it is sane, or a fresh one; sent upstream, returned to
//! the client, and put in the request's extensions for logs.

use std::future::Future;
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

/// A fresh id: 32 hex digits, unique per process (a counter) and across processes (a seed from
/// the clock and the pid, hashed so ids do not reveal either).
pub fn generate() -> RequestId {
    static SEED: OnceLock<[u8; 32]> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = SEED.get_or_init(|| {
        let mut hasher = blake3::Hasher::new();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        hasher.update(&now.as_nanos().to_le_bytes());
        hasher.update(&std::process::id().to_le_bytes());
        *hasher.finalize().as_bytes()
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let digest = blake3::keyed_hash(seed, &n.to_le_bytes());
    let hex = digest.to_hex();
    // Hex digits are always a valid header value.
    RequestId(HeaderValue::from_str(&hex[..32]).unwrap_or(HeaderValue::from_static("0")))
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
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(is_valid(&a.0));
        assert_eq!(a.as_str().len(), 32);
    }
}
