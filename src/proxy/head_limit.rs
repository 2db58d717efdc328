//! Request head limits: a request whose head is over `server.max_header_bytes` or has more
//! than `server.max_headers` fields gets 431 problem+json (with an `X-Request-Id`, and
//! `Connection: close` on HTTP/1), before the proxy adds anything to it, routes it, or guards
//! or forwards it.
//!
//! hyper parses a head before any service sees it, so it is given a higher hard ceiling
//! ([`HeadLimits::ceiling`]): heads between the configured limit and the ceiling reach this
//! layer and get a problem+json answer; past the ceiling hyper still answers its own bare 431
//! and closes the connection, so a hostile client never makes the proxy buffer much more than
//! the configured limit.
//!
//! The head size counted here is the head as HTTP/1.1 serializes it: `method SP target SP
//! HTTP/1.1 CRLF`, then `name: value CRLF` per field, then the final `CRLF`; the target as
//! parsed (origin-form: path and query; absolute-form: scheme, `://`, authority, path and
//! query). It equals the bytes hyper read whenever the client wrote the canonical form (one
//! space after each colon, no trailing whitespace, CRLF line endings); whitespace the parser
//! dropped, or a bare LF line ending, is not counted. One count per field line, as hyper
//! counts them (a repeated name counts each time).
//!
//! On h2c, h2 enforces `server.max_header_bytes` itself as `SETTINGS_MAX_HEADER_LIST_SIZE`
//! (RFC 9113 counting: name + value + 32 bytes per field, pseudo-headers included, which is
//! always more than the count here): a larger header list gets h2's bare 431 and a reset
//! stream, and one over four times the limit closes the connection. The field count limit is
//! enforced here on h2c too.

use std::task::{Context, Poll};

use http::header::{CONNECTION, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use tower::{Layer, Service};

use super::request_id::{self, X_REQUEST_ID};
use crate::guard::ShortCircuit;
use crate::guard::{Rejection, RejectionKind, ResponseBody};
use crate::serve::HeadLimits;

/// Which limit `req` is over, if any. O(fields), no allocation.
fn exceeded<B>(limits: HeadLimits, req: &Request<B>) -> Option<Exceeded> {
    let fields = req.headers().len();
    if fields > limits.max_headers {
        return Some(Exceeded::Headers(fields));
    }
    let size = head_size(req);
    (size > limits.max_bytes).then_some(Exceeded::Bytes(size))
}

/// Which limit a head is over, and by what it was measured.
#[derive(Debug, Clone, Copy)]
enum Exceeded {
    Headers(usize),
    Bytes(usize),
}

/// The size of `req`'s head serialized as HTTP/1.1 (see the module docs).
pub fn head_size<B>(req: &Request<B>) -> usize {
    // "method SP target SP HTTP/1.1 CRLF"
    let request_line = req.method().as_str().len() + 1 + target_len(req.uri()) + 1 + 8 + 2;
    // "name: value CRLF" per field
    let fields: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    request_line + fields + 2
}

/// The length of the request target `uri` was parsed from.
fn target_len(uri: &Uri) -> usize {
    let origin = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(authority)) => scheme.len() + 3 + authority.as_str().len() + origin,
        (None, Some(authority)) => authority.as_str().len() + origin,
        _ => origin,
    }
}

/// Applies [`HeadLimit`].
#[derive(Debug, Clone, Copy)]
pub struct HeadLimitLayer {
    limits: HeadLimits,
}

impl HeadLimitLayer {
    /// Refuses heads over `limits`.
    pub fn new(limits: HeadLimits) -> Self {
        Self { limits }
    }
}

impl<S> Layer<S> for HeadLimitLayer {
    type Service = HeadLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HeadLimit {
            inner,
            limits: self.limits,
        }
    }
}

/// Answers a request whose head is over the limits with 431 problem+json; passes the others on.
#[derive(Debug, Clone)]
pub struct HeadLimit<S> {
    inner: S,
    limits: HeadLimits,
}

impl<S, B, RB> Service<Request<B>> for HeadLimit<S>
where
    S: Service<Request<B>, Response = Response<ResponseBody<RB>>>,
    RB: Body,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = HeadLimitFuture<S::Future, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match exceeded(self.limits, &req) {
            None => ShortCircuit::called(self.inner.call(req)),
            Some(exceeded) => ShortCircuit::answered(too_large(&req, exceeded, self.limits)),
        }
    }
}

/// The 431 for a head over `limits`; an HTTP/1 connection is closed after it, as hyper does.
fn too_large<B, RB: Body>(
    req: &Request<B>,
    exceeded: Exceeded,
    limits: HeadLimits,
) -> Response<ResponseBody<RB>> {
    let detail = match exceeded {
        Exceeded::Headers(fields) => {
            tracing::debug!(
                fields,
                limit = limits.max_headers,
                "too many request headers"
            );
            format!(
                "the request has {fields} header fields, more than server.max_headers = {}; \
                 send fewer",
                limits.max_headers
            )
        }
        Exceeded::Bytes(size) => {
            tracing::debug!(size, limit = limits.max_bytes, "request head too large");
            format!(
                "the request head is {size} bytes, more than server.max_header_bytes = {}; \
                 send a shorter target or fewer or smaller headers",
                limits.max_bytes
            )
        }
    };
    let mut response = Rejection::new(
        RejectionKind::HeadersTooLarge,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        req.uri().path(),
        detail,
    )
    .into_response();
    let headers = response.headers_mut();
    // This layer sits above the request id one (the id it adds is not the client's to
    // count), so it echoes the id itself, by the same rule.
    headers.insert(&X_REQUEST_ID, request_id::of(req.headers()).0);
    // HTTP/2 has no Connection header, and the stream's end is enough there.
    if req.version() < Version::HTTP_2 {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The inner service's response, or the 431.
pub type HeadLimitFuture<F, RB> = ShortCircuit<F, Response<ResponseBody<RB>>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_bytes: usize, max_headers: usize) -> HeadLimits {
        HeadLimits {
            max_bytes,
            max_headers,
        }
    }

    #[test]
    fn the_head_is_counted_as_it_is_written_on_the_wire() {
        let wire = "GET /items/1?x=y HTTP/1.1\r\nhost: a\r\nx-a: one\r\nx-a: two\r\n\r\n";
        let req = Request::get("/items/1?x=y")
            .header("host", "a")
            .header("x-a", "one")
            .header("x-a", "two")
            .body(())
            .unwrap();
        assert_eq!(head_size(&req), wire.len());
        let absolute = "PUT http://a:8080/p HTTP/1.1\r\n\r\n";
        let req = Request::put("http://a:8080/p").body(()).unwrap();
        assert_eq!(head_size(&req), absolute.len());
    }

    #[test]
    fn limits_are_inclusive_and_counted_per_field_line() {
        let req = Request::get("/")
            .header("x-a", "1")
            .header("x-a", "2")
            .body(())
            .unwrap();
        let size = head_size(&req);
        assert!(exceeded(limits(size, 2), &req).is_none());
        assert!(matches!(
            exceeded(limits(size - 1, 2), &req),
            Some(Exceeded::Bytes(s)) if s == size
        ));
        assert!(matches!(
            exceeded(limits(size, 1), &req),
            Some(Exceeded::Headers(2))
        ));
    }
}
