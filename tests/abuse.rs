//! Protocol abuse over raw TCP: request smuggling shapes and malformed framing, written byte for
//! byte to the proxy in front of a recording backend. Nothing ambiguous reaches the backend; a
//! well-formed canary request sent afterwards proves the backend was up and shows exactly what
//! it saw.
//!
//! What each shape gets (measured with hyper 1.x):
//!
//! | shape                                        | answer                                    |
//! |----------------------------------------------|-------------------------------------------|
//! | two different `Content-Length`s, or a list   | 400, empty body (hyper)                   |
//! | two identical `Content-Length`s              | accepted as one length, forwarded once    |
//! | `Content-Length` + `Transfer-Encoding`       | framed by chunked, CL dropped, conn closed|
//! | `Transfer-Encoding` not ending in `chunked`  | 400, empty body (hyper)                   |
//! | obs-fold, bare CR, no colon, space before `:`| 400, empty body (hyper)                   |
//! | bare LF line ending                          | accepted as CRLF (RFC 9112 §2.2)          |
//! | invalid chunk size                           | 400 problem+json; never complete upstream |
//! | header block > `max_header_bytes`            | 431 problem+json (ifmatch), conn closed   |
//! | ... and > twice `max_header_bytes`           | 431, empty body (hyper)                   |
//! | more than `max_headers` (set below 100)      | 431 problem+json (ifmatch), conn closed   |
//! | more than 100 headers (hyper's own limit)    | 431, empty body (hyper)                   |
//! | h2c: `connection`, `transfer-encoding`, `te` | RST_STREAM PROTOCOL_ERROR (hyper/h2)      |
//! | h2c: uppercase field name                    | GOAWAY PROTOCOL_ERROR (hyper/h2)          |
//! | h2c: body shorter than its `content-length`  | RST_STREAM; never complete upstream       |
//!
//! hyper answers parse errors itself, before any service runs: a bare status line with an empty
//! body, not problem+json. It parses heads up to twice `max_header_bytes` and up to 100 fields
//! (its hard ceiling), so that the proxy can answer those over the limits itself.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::Method;
use http_body_util::BodyExt;
use support::h2::{
    self, ACK, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PREFACE, RST_STREAM, SETTINGS,
    header_block, read_frame,
};
use support::raw::{Raw, exchange};
use support::{Backend, BackendHandle, Proxy, ProxyHandle, Reply, bounded, config};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A backend that answers everything, counting the requests to `method /items/1` whose body
/// it read to the end: a request that never completes upstream is never counted.
async fn counting_complete_bodies(method: Method) -> (BackendHandle, Arc<AtomicUsize>) {
    let complete = Arc::new(AtomicUsize::new(0));
    let counter = complete.clone();
    let backend = Backend::new()
        .route_fn(method, "/items/1", move |req| {
            let counter = counter.clone();
            async move {
                if req.into_body().collect().await.is_ok() {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                Reply::ok("ok").response()
            }
        })
        .fallback(Reply::ok("ok"))
        .spawn()
        .await;
    (backend, complete)
}

/// A backend that answers everything 200, and the guarded proxy in front of it.
async fn setup() -> (BackendHandle, ProxyHandle) {
    let backend = Backend::new().fallback(Reply::ok("ok")).spawn().await;
    let proxy = Proxy::spawn(config(backend.addr)).await;
    (backend, proxy)
}

/// Sends a well-formed canary, then checks it is the only request the backend ever saw.
async fn assert_backend_saw_only_the_canary(proxy: &ProxyHandle, backend: &BackendHandle) {
    let canary = exchange(
        proxy.addr,
        b"GET /canary HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(canary.status, 200, "{canary:?}");
    let seen: Vec<String> = backend
        .seen()
        .iter()
        .map(|s| format!("{} {}", s.method, s.uri))
        .collect();
    assert_eq!(seen, ["GET /canary"], "the backend saw the abusive request");
}

/// Sends `request`, expects `status` with hyper's empty body, and proves nothing was forwarded.
async fn refused(request: &[u8], status: u16) -> Raw {
    let (backend, proxy) = setup().await;
    let raw = exchange(proxy.addr, request).await;
    assert_eq!(raw.status, status, "{raw:?}");
    // hyper's own answer: no problem+json, and the connection is not reused.
    assert!(raw.body.is_empty(), "{raw:?}");
    assert!(raw.head.contains("connection: close"), "{raw:?}");
    assert_backend_saw_only_the_canary(&proxy, &backend).await;
    raw
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_framed_by_chunked_then_closed() {
    // The classic CL.TE smuggling shape: the body is empty to a chunked reader, and the bytes
    // after it would be a second request to a Content-Length reader. hyper does what RFC 9112
    // §6.1 allows instead of a 400: it frames the body by Transfer-Encoding alone, drops the
    // Content-Length before any service sees the request (so the proxy cannot tell it was
    // there), and closes the connection after responding, so the trailing bytes are never read
    // as a request. The upstream gets one unambiguous chunked request, and nothing smuggled.
    let (backend, proxy) = setup().await;
    let raw = exchange(
        proxy.addr,
        b"POST /items/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 44\r\n\
          Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
          GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_eq!(raw.status, 200, "{raw:?}");
    assert!(raw.head.contains("connection: close"), "{raw:?}");
    let seen = backend.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, Method::POST);
    assert!(!seen[0].headers.contains_key("content-length"), "{seen:?}");
    assert_eq!(seen[0].headers["transfer-encoding"], "chunked");
    assert_eq!(backend.hits(Method::GET, "/smuggled"), 0);
}

#[tokio::test]
async fn conflicting_content_lengths_are_refused() {
    refused(
        b"POST /items/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\
          Connection: close\r\n\r\nabcde",
        400,
    )
    .await;
}

#[tokio::test]
async fn a_list_of_content_lengths_is_refused() {
    refused(
        b"POST /items/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 5\r\n\
          Connection: close\r\n\r\nabcde",
        400,
    )
    .await;
}

#[tokio::test]
async fn duplicate_identical_content_lengths_are_one_length() {
    // RFC 9112 §6.3 lets a recipient accept identical duplicates as one value; hyper does. The
    // framing is unambiguous, so the request is forwarded, with a single Content-Length.
    let backend = Backend::new().echo(Method::POST, "/items/1").spawn().await;
    let proxy = Proxy::spawn(config(backend.addr)).await;
    let raw = exchange(
        proxy.addr,
        b"POST /items/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\
          Connection: close\r\n\r\nabcd",
    )
    .await;
    assert_eq!(raw.status, 200, "{raw:?}");
    assert_eq!(raw.body, b"abcd");
    let seen = backend.last(Method::POST, "/items/1");
    let lengths: Vec<_> = seen.headers.get_all("content-length").iter().collect();
    assert_eq!(lengths, ["4"], "the backend saw one Content-Length");
}

#[tokio::test]
async fn obs_fold_is_refused() {
    refused(
        b"GET /items/1 HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\nConnection: close\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn transfer_encoding_other_than_chunked_last_is_refused() {
    refused(
        b"POST /items/1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\
          Connection: close\r\n\r\n0\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn bare_cr_in_a_header_is_refused() {
    refused(
        b"GET /items/1 HTTP/1.1\r\nHost: a\r\nX-A: one\rX-B: two\r\nConnection: close\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn header_line_without_a_colon_is_refused() {
    refused(
        b"GET /items/1 HTTP/1.1\r\nHost: a\r\nX-No-Colon here\r\nConnection: close\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn space_before_the_colon_is_refused() {
    // RFC 9112 §5.1: no whitespace between a field name and the colon (a smuggling vector).
    refused(
        b"POST /items/1 HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\nConnection: close\r\n\r\nabcde",
        400,
    )
    .await;
}

/// The proxy's own 431: problem+json naming the limit, and the connection closed.
fn assert_problem_431(raw: &Raw, limit: &str) {
    assert_eq!(raw.status, 431, "{raw:?}");
    assert_eq!(raw.header("content-type"), Some("application/problem+json"));
    assert!(raw.head.contains("connection: close"), "{raw:?}");
    let problem: serde_json::Value = serde_json::from_slice(&raw.body).expect("problem+json");
    assert_eq!(problem["type"], "urn:ifmatch:problem:headers-too-large");
    assert_eq!(problem["status"], 431);
    let detail = problem["detail"].as_str().expect("detail");
    assert!(detail.contains(limit), "{detail}");
}

/// A GET of /items/1 whose `x-big` header carries `n` bytes.
fn with_big_header(n: usize) -> Vec<u8> {
    let mut request = b"GET /items/1 HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', n));
    request.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    request
}

/// A GET of /items/1 with `n` extra header fields.
fn with_headers(n: usize) -> Vec<u8> {
    let mut request = b"GET /items/1 HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..n {
        request.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    request.extend_from_slice(b"Connection: close\r\n\r\n");
    request
}

#[tokio::test]
async fn oversized_header_block_gets_431() {
    let (backend, proxy) = setup().await;
    // Over the default 64 KiB, under hyper's 128 KiB ceiling: the proxy's answer.
    let raw = exchange(proxy.addr, &with_big_header(70 * 1024)).await;
    assert_problem_431(&raw, "server.max_header_bytes = 65536");
    // Far past the ceiling (a head that arrives in one read may be parsed up to about twice
    // it): hyper's own, bare.
    let raw = exchange(proxy.addr, &with_big_header(512 * 1024)).await;
    assert_eq!(raw.status, 431, "{raw:?}");
    assert!(raw.body.is_empty(), "{raw:?}");
    assert_eq!(raw.header("content-type"), None);
    assert_backend_saw_only_the_canary(&proxy, &backend).await;
}

#[tokio::test]
async fn too_many_headers_get_431() {
    // Over the default 100 fields, which is also hyper's own limit (the proxy keeps it so that
    // hyper parses every head on the stack): hyper's bare 431. A configured limit below 100
    // gets the proxy's problem+json (tests/limits.rs).
    refused(&with_headers(150), 431).await;
    refused(&with_headers(250), 431).await;
}

#[tokio::test]
async fn invalid_chunk_size_is_refused_and_never_completes_upstream() {
    // hyper parses the head, so the request is routed and its forwarding begins before the
    // body is read; the bad chunk size then fails the body. The upstream may see the head, but
    // never a complete request: count the bodies it read to the end.
    let (backend, complete) = counting_complete_bodies(Method::POST).await;
    let proxy = Proxy::spawn(config(backend.addr)).await;
    let raw = exchange(
        proxy.addr,
        b"POST /items/1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\
          Connection: close\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(raw.status, 400, "{raw:?}");
    assert!(raw.head.contains("application/problem+json"), "{raw:?}");
    let canary = exchange(
        proxy.addr,
        b"GET /canary HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(canary.status, 200);
    assert_eq!(
        complete.load(Ordering::SeqCst),
        0,
        "the upstream got a complete request"
    );
}

#[tokio::test]
async fn bare_lf_line_endings_are_normalized_not_smuggled() {
    // RFC 9112 §2.2 lets a recipient accept a bare LF as a line terminator, and hyper does: the
    // two header lines below are two fields. The proxy re-serializes every request with CRLF,
    // so the upstream sees exactly the fields the proxy saw; there is nothing to disagree on.
    let (backend, proxy) = setup().await;
    let raw = exchange(
        proxy.addr,
        b"GET /items/1 HTTP/1.1\r\nHost: a\r\nX-A: one\nX-B: two\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw.status, 200, "{raw:?}");
    let seen = backend.last(Method::GET, "/items/1");
    assert_eq!(seen.headers["x-a"], "one");
    assert_eq!(seen.headers["x-b"], "two");
}

// ---------------------------------------------------------------------------------------------
// h2c (HTTP/2 with prior knowledge), frames written by hand: a real client refuses to send
// these malformations, which is the point.

/// How the proxy answered stream 1.
#[derive(Debug, PartialEq, Eq)]
enum H2Outcome {
    /// RST_STREAM with this error code (1 = PROTOCOL_ERROR).
    Reset(u32),
    /// GOAWAY with this error code.
    GoAway(u32),
    /// Response HEADERS; the status when HPACK-indexed from the static table.
    Response(Option<u16>),
}

/// Opens an h2c connection, sends one GET on stream 1 with `extra` headers, and reports how
/// the proxy answered it.
async fn h2_exchange(addr: SocketAddr, extra: &[(&str, &str)]) -> H2Outcome {
    h2_send(addr, "GET", extra, None).await
}

/// Like [`h2_exchange`], with a method and, if given, a body in one DATA frame.
async fn h2_send(
    addr: SocketAddr,
    method: &str,
    extra: &[(&str, &str)],
    body: Option<&[u8]>,
) -> H2Outcome {
    let mut stream = bounded(TcpStream::connect(addr)).await.expect("connect");
    let mut fields = vec![
        (":method", method),
        (":scheme", "http"),
        (":path", "/items/1"),
        (":authority", "a"),
    ];
    fields.extend_from_slice(extra);
    let mut out = PREFACE.to_vec();
    out.extend(h2::frame(SETTINGS, 0, 0, &[]));
    let flags = END_HEADERS | if body.is_none() { END_STREAM } else { 0 };
    out.extend(h2::frame(HEADERS, flags, 1, &header_block(&fields)));
    if let Some(body) = body {
        out.extend(h2::frame(DATA, END_STREAM, 1, body));
    }
    bounded(stream.write_all(&out)).await.expect("write");
    bounded(async {
        loop {
            let frame = read_frame(&mut stream).await.expect("frame");
            match frame.kind {
                SETTINGS if frame.flags & ACK == 0 => {
                    stream
                        .write_all(&h2::frame(SETTINGS, ACK, 0, &[]))
                        .await
                        .expect("ack");
                }
                RST_STREAM if frame.stream == 1 => return H2Outcome::Reset(frame.code(0)),
                GOAWAY => return H2Outcome::GoAway(frame.code(4)),
                HEADERS if frame.stream == 1 => {
                    // Indexed :status fields of the static table (RFC 7541 Appendix A).
                    let status = match frame.payload.first() {
                        Some(0x88) => Some(200),
                        Some(0x8c) => Some(400),
                        Some(0x8d) => Some(404),
                        Some(0x8e) => Some(500),
                        _ => None,
                    };
                    return H2Outcome::Response(status);
                }
                _ => {}
            }
        }
    })
    .await
}

const PROTOCOL_ERROR: u32 = 0x1;

/// Sends a malformed h2 request and expects the stream reset with PROTOCOL_ERROR, unforwarded.
async fn h2_refused(extra: &[(&str, &str)]) {
    let (backend, proxy) = setup().await;
    let outcome = h2_exchange(proxy.addr, extra).await;
    // hyper resets the stream, or (for a field name it cannot decode) the whole connection.
    assert!(
        matches!(
            outcome,
            H2Outcome::Reset(PROTOCOL_ERROR) | H2Outcome::GoAway(PROTOCOL_ERROR)
        ),
        "{extra:?}: {outcome:?}"
    );
    assert_backend_saw_only_the_canary(&proxy, &backend).await;
}

#[tokio::test]
async fn h2c_well_formed_request_is_served() {
    let (backend, proxy) = setup().await;
    let outcome = h2_exchange(proxy.addr, &[("x-ok", "1")]).await;
    assert_eq!(outcome, H2Outcome::Response(Some(200)));
    assert_eq!(backend.hits(Method::GET, "/items/1"), 1);
}

#[tokio::test]
async fn h2c_connection_header_is_refused() {
    h2_refused(&[("connection", "keep-alive")]).await;
}

#[tokio::test]
async fn h2c_transfer_encoding_is_refused() {
    h2_refused(&[("transfer-encoding", "chunked")]).await;
}

#[tokio::test]
async fn h2c_uppercase_header_name_is_refused() {
    h2_refused(&[("X-Upper", "1")]).await;
}

#[tokio::test]
async fn h2c_te_other_than_trailers_is_refused() {
    h2_refused(&[("te", "gzip")]).await;
}

#[tokio::test]
async fn h2c_body_shorter_than_its_content_length_never_completes_upstream() {
    // h2 checks the DATA frames against content-length only as they arrive, after the request
    // has been dispatched; the upstream may see the head, but never a complete request.
    let (backend, complete) = counting_complete_bodies(Method::PUT).await;
    let proxy = Proxy::spawn(config(backend.addr)).await;
    let outcome = h2_send(proxy.addr, "PUT", &[("content-length", "10")], Some(b"abc")).await;
    assert_eq!(outcome, H2Outcome::Reset(PROTOCOL_ERROR));
    let canary = exchange(
        proxy.addr,
        b"GET /canary HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(canary.status, 200);
    assert_eq!(
        complete.load(Ordering::SeqCst),
        0,
        "the upstream got a complete request"
    );
}
