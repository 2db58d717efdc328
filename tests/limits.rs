//! Every limit of the proxy on real loopback sockets, one test each, asserting what the client
//! sees when it is reached.
//!
//! Limits tested elsewhere, not repeated here:
//! - `server.max_header_bytes` and `server.max_headers` at their defaults (431), among the
//!   smuggling shapes: tests/abuse.rs, `oversized_header_block_gets_431` and
//!   `too_many_headers_get_431`; hyper's bare 431 past its ceiling: tests/security.rs.
//! - `defaults.max_hash_bytes` (the hash buffer): tests/guard.rs,
//!   `bodies_too_large_to_hash_stream_through_and_fail_writes_closed`.
//! - `defaults.lease_wait` (409 update-in-progress): tests/guard.rs,
//!   `one_write_per_resource_in_flight`; and the control case of
//!   `a_trickled_write_body_gets_408_and_frees_the_resource` below.
//! - A refused upstream connection (502): tests/proxy_passthrough.rs,
//!   `upstream_down_is_502_and_the_proxy_recovers_when_it_returns`. `server.connect_timeout`
//!   itself is tested here, against a loopback listener whose full accept queue drops SYNs.
//! - `server.response_timeout` (504): tests/proxy_passthrough.rs, `slow_upstream_is_504`, and
//!   tests/e2e.rs, `revalidation_against_a_hung_upstream_times_out_with_504`.
//! - Validation of every limit by check-config: `limits_must_be_positive_and_sane` in
//!   src/config.rs.
//! - WebSocket tunnels counted against `server.max_connections` and closed on shutdown:
//!   tests/upgrade.rs.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::raw::{exchange, read_to_close};
use support::{
    Backend, BackendHandle, Client, Proxy, ProxyHandle, Reply, TestBody, bounded, config_with, full,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

fn get(path: &str) -> Request<TestBody> {
    Request::get(path)
        .header("host", "api.example")
        .body(full(""))
        .expect("request")
}

/// An HTTP/1.1 connection of its own, kept open, that has had one request answered: proof
/// that the proxy accepted and serves it.
async fn served_http1(
    addr: SocketAddr,
) -> (http1::SendRequest<TestBody>, tokio::task::JoinHandle<()>) {
    let stream = bounded(TcpStream::connect(addr)).await.expect("connect");
    let (mut send, connection) = bounded(http1::handshake(TokioIo::new(stream)))
        .await
        .expect("handshake");
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = bounded(send.send_request(get("/x")))
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    bounded(response.into_body().collect()).await.expect("body");
    (send, task)
}

#[tokio::test]
async fn slowloris_headers_are_cut_off_after_header_read_timeout() {
    let backend = Backend::new().fallback(Reply::ok("ok")).spawn().await;
    let proxy = Proxy::passthrough(config_with(
        backend.addr,
        "[server]\nheader_read_timeout = \"300ms\"",
    ))
    .await;
    // A header line every 50 ms: never complete, never idle.
    let (elapsed, answer) =
        keep_writing_until_closed(proxy.addr, b"GET /x HTTP/1.1\r\nhost: a\r\n", |i| {
            format!("x-slow-{i}: 1\r\n").into_bytes()
        })
        .await;
    assert!(
        elapsed >= Duration::from_millis(300),
        "closed after {elapsed:?}"
    );
    // hyper closes without a response: the request never had a head to answer.
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        backend.seen().is_empty(),
        "the backend saw the partial request"
    );
}

/// Writes `first`, then `each` every 50 ms (never idle), until the proxy closes the
/// connection; returns how long that took and what the proxy sent.
async fn keep_writing_until_closed(
    addr: SocketAddr,
    first: &[u8],
    each: impl Fn(usize) -> Vec<u8>,
) -> (Duration, Vec<u8>) {
    // Before connecting: the proxy's clock starts at accept, which can come before this
    // task sees the connection.
    let started = Instant::now();
    let stream = bounded(TcpStream::connect(addr)).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let trickle = async move {
        let _ = writer.write_all(first).await;
        // The pace is the attack, not a synchronization: the test ends on the proxy closing.
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if writer.write_all(&each(i)).await.is_err() {
                break;
            }
        }
    };
    let answer = bounded(async {
        tokio::select! {
            answer = read_to_close(&mut reader) => answer,
            () = trickle => Vec::new(),
        }
    })
    .await;
    (started.elapsed(), answer)
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[tokio::test]
async fn a_connection_without_a_request_head_is_closed_after_header_read_timeout() {
    let backend = Backend::new().fallback(Reply::ok("ok")).spawn().await;
    let proxy = Proxy::passthrough(config_with(
        backend.addr,
        "[server]\nheader_read_timeout = \"300ms\"\nidle_timeout = \"30s\"",
    ))
    .await;
    let timeout = Duration::from_millis(300);

    // The h2c preface, a byte at a time: hyper does not know the protocol yet, and runs none
    // of its own timers.
    let (elapsed, _) =
        keep_writing_until_closed(proxy.addr, b"P", |i| vec![H2_PREFACE[(i + 1) % 24]]).await;
    assert!(elapsed >= timeout, "closed after {elapsed:?}");

    // h2c, preface and SETTINGS sent, then only PINGs: busy, but never a request (hyper's h2
    // has no header timeout).
    let mut opening = H2_PREFACE.to_vec();
    opening.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let ping = |i: usize| {
        let mut frame = vec![0, 0, 8, 6, 0, 0, 0, 0, 0];
        frame.extend_from_slice(&(i as u64).to_be_bytes());
        frame
    };
    let (elapsed, answer) = keep_writing_until_closed(proxy.addr, &opening, ping).await;
    assert!(elapsed >= timeout, "closed after {elapsed:?}");
    assert!(
        !answer.is_empty(),
        "the proxy spoke h2 (SETTINGS, PING acks) before closing"
    );
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn past_max_connections_new_connections_get_503_until_one_closes() {
    let backend = Backend::new().fallback(Reply::ok("ok")).spawn().await;
    let proxy = Proxy::with_admin(config_with(backend.addr, "[server]\nmax_connections = 2")).await;
    let (first, first_task) = served_http1(proxy.addr).await;
    let (_second, _second_task) = served_http1(proxy.addr).await;

    let refused = Client::http1().get(proxy.url("/x")).await;
    let problem = refused.assert_problem(503, "too-many-connections");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("max_connections")
    );
    assert_eq!(refused.header("retry-after"), "1");
    assert_eq!(refused.header("connection"), "close");
    let refused = Client::h2c().get(proxy.url("/x")).await;
    refused.assert_problem(503, "too-many-connections");
    assert_eq!(refused.header("retry-after"), "1");
    assert_eq!(
        backend.seen().len(),
        2,
        "a refused connection reached the backend"
    );
    // The admin listener's own connections are not counted (its limit is its own).
    let metrics = Client::http1().get(proxy.admin_url("/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics.body);
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    // Exact: no other test of this process refuses connections. The gauge is shared with the
    // tests running alongside (one recorder per process), so only its presence is checked.
    assert_eq!(value("ifmatch_connections_refused_total "), 2.0);
    value("ifmatch_connections ");

    // Closing one gives its place back, as soon as the proxy has seen it close.
    drop(first);
    bounded(first_task).await.expect("connection task");
    bounded(async {
        loop {
            let answer = Client::http1().get(proxy.url("/x")).await;
            if answer.status == StatusCode::OK {
                break;
            }
            answer.assert_problem(503, "too-many-connections");
        }
    })
    .await;
}

#[tokio::test]
async fn idle_connections_are_closed_after_idle_timeout() {
    let backend = Backend::new().fallback(Reply::ok("ok")).spawn().await;
    // The header timeout (which also closes idle HTTP/1.1 keep-alive connections) is far off:
    // what closes these connections is the idle timeout.
    let proxy = Proxy::passthrough(config_with(
        backend.addr,
        "[server]
idle_timeout = \"300ms\"\nheader_read_timeout = \"30s\"",
    ))
    .await;
    let idle = Duration::from_millis(300);

    // A connection that never sends a byte (before hyper even knows its protocol).
    // Each clock below starts before the event that starts the proxy's (accept, the last
    // response sent), so it can only overstate how long the proxy waited.
    let started = Instant::now();
    let mut silent = bounded(TcpStream::connect(proxy.addr))
        .await
        .expect("connect");
    assert!(bounded(read_to_close(&mut silent)).await.is_empty());
    assert!(
        started.elapsed() >= idle,
        "closed after {:?}",
        started.elapsed()
    );

    // HTTP/1.1 keep-alive, idle after one request.
    let quiet = Instant::now();
    let (_send, connection) = served_http1(proxy.addr).await;
    bounded(connection).await.expect("connection task");
    assert!(
        quiet.elapsed() >= idle,
        "closed after {:?}",
        quiet.elapsed()
    );

    // h2c, where hyper has no idle timeout of its own. Busy for three idle timeouts on one
    // connection (the control: activity keeps it open), then quiet.
    let stream = bounded(TcpStream::connect(proxy.addr))
        .await
        .expect("connect");
    let (mut send, connection) =
        bounded(http2::handshake(TokioExecutor::new(), TokioIo::new(stream)))
            .await
            .expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let busy_until = Instant::now() + idle * 3;
    let mut requests = 0;
    let mut quiet = Instant::now();
    while Instant::now() < busy_until {
        quiet = Instant::now();
        let response = bounded(send.send_request(get("http://api.example/x")))
            .await
            .expect("the busy connection stayed open");
        assert_eq!(response.status(), StatusCode::OK);
        bounded(response.into_body().collect()).await.expect("body");
        requests += 1;
        tokio::time::sleep(idle / 3).await;
    }
    assert!(requests >= 3);
    bounded(connection)
        .await
        .expect("connection task")
        .expect("closed cleanly (GOAWAY)");
    assert!(
        quiet.elapsed() >= idle,
        "closed after {:?}",
        quiet.elapsed()
    );
}

/// An upstream holding one document at version "v1", whose writes read the whole body first,
/// as most do (a complete write answers "v2"); the guarded proxy in front of it, with writers
/// waiting 100 ms for a lease, and with this `body_read_timeout`; and a read that taught the
/// proxy "v1".
async fn document(body_read_timeout: &str) -> (BackendHandle, ProxyHandle) {
    let backend = Backend::new()
        .route(
            Method::GET,
            "/doc",
            Reply::ok("one").header("etag", "\"v1\""),
        )
        .route_fn(
            Method::PUT,
            "/doc",
            |req: Request<hyper::body::Incoming>| async move {
                match req.into_body().collect().await {
                    Ok(_) => Reply::ok("two").header("etag", "\"v2\"").response(),
                    Err(_) => Reply::status(400).response(),
                }
            },
        )
        .spawn()
        .await;
    let proxy = Proxy::spawn(config_with(
        backend.addr,
        &format!(
            "[server]\nbody_read_timeout = \"{body_read_timeout}\"\n[defaults]\nlease_wait = \"100ms\""
        ),
    ))
    .await;
    let read = Client::http1().get(proxy.url("/doc")).await;
    assert_eq!(read.header("etag"), "\"v1\"");
    (backend, proxy)
}

/// A write of "v1" whose body stops after 10 of its 100 bytes.
const TRICKLED_PUT: &[u8] =
    b"PUT /doc HTTP/1.1\r\nhost: a\r\nif-match: \"v1\"\r\ncontent-length: 100\r\n\r\n0123456789";

/// A complete write of "v1" through `proxy`.
async fn put_v1(proxy: &ProxyHandle) -> support::Answer {
    Client::http1()
        .send(
            support::request(Method::PUT, &proxy.url("/doc"))
                .header("if-match", "\"v1\"")
                .body(full(Bytes::from_static(b"two")))
                .expect("request"),
        )
        .await
}

#[tokio::test]
async fn a_trickled_write_body_gets_408_and_frees_the_resource() {
    // Control: with a generous body timeout, a writer that stops sending its body holds the
    // resource's lease, and every other writer of it gets 409 update-in-progress.
    let (backend, proxy) = document("20s").await;
    let stalled = tokio::spawn(exchange(proxy.addr, TRICKLED_PUT));
    backend.wait_for_requests(2).await;
    put_v1(&proxy)
        .await
        .assert_problem(409, "update-in-progress");
    stalled.abort();

    // With the limit: 408, the lease is released, and the resource is unknown (the upstream
    // saw part of the body), so the next writer revalidates and gets through.
    let (backend, proxy) = document("300ms").await;
    let started = Instant::now();
    let answer = exchange(proxy.addr, TRICKLED_PUT).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(answer.status, 408, "{answer:?}");
    assert!(
        answer.head.contains("application/problem+json"),
        "{answer:?}"
    );
    // The rest of the body may still come: only closing frames the next request.
    assert_eq!(answer.header("connection"), Some("close"), "{answer:?}");
    let problem: serde_json::Value = serde_json::from_slice(&answer.body).expect("problem json");
    assert_eq!(problem["type"], "urn:ifmatch:problem:request-timeout");

    let next = put_v1(&proxy).await;
    assert_eq!(next.status, StatusCode::OK, "{next:?}");
    assert_eq!(next.header("etag"), "\"v2\"");
    // One GET to learn v1, one to revalidate after the abandoned write.
    assert_eq!(backend.hits(Method::GET, "/doc"), 2);
    assert_eq!(backend.hits(Method::PUT, "/doc"), 2);
}

/// A raw HTTP/1.1 GET of `/x` whose head is exactly `size` bytes (as the proxy counts them:
/// written canonically, so the same as on the wire).
fn head_of_size(size: usize) -> Vec<u8> {
    let bare = "GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\nx-pad: \r\n\r\n";
    let pad = "p".repeat(size - bare.len());
    let head = format!("GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\nx-pad: {pad}\r\n\r\n");
    assert_eq!(head.len(), size);
    head.into_bytes()
}

/// A raw HTTP/1.1 GET of `/x` with exactly `fields` header fields.
fn head_with_fields(fields: usize) -> Vec<u8> {
    let mut head = String::from("GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n");
    for i in 2..fields {
        head.push_str(&format!("x-h{i}: v\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// The proxy's own 431: problem+json that names the limit, the connection closed.
fn assert_own_431(raw: &support::raw::Raw, limit: &str) {
    assert_eq!(raw.status, 431, "{raw:?}");
    assert_eq!(raw.header("content-type"), Some("application/problem+json"));
    assert_eq!(raw.header("connection"), Some("close"));
    assert!(raw.header("x-request-id").is_some(), "{raw:?}");
    let problem: serde_json::Value = serde_json::from_slice(&raw.body).expect("problem json");
    assert_eq!(problem["type"], "urn:ifmatch:problem:headers-too-large");
    let detail = problem["detail"].as_str().expect("detail");
    assert!(detail.contains(limit), "{detail}");
}

/// hyper's own 431, past its ceiling: a bare status line.
fn assert_bare_431(raw: &support::raw::Raw) {
    assert_eq!(raw.status, 431, "{raw:?}");
    assert_eq!(raw.header("content-length"), Some("0"), "{raw:?}");
    assert_eq!(raw.header("content-type"), None);
}

#[tokio::test]
async fn request_heads_over_the_limits_get_431_problem_json_and_never_reach_the_upstream() {
    let backend = Backend::new().fallback(Reply::ok("ok")).spawn().await;
    let proxy = Proxy::spawn(config_with(
        backend.addr,
        "[server]\nmax_header_bytes = 16384\nmax_headers = 20",
    ))
    .await;

    // At the limits: forwarded.
    let raw = exchange(proxy.addr, &head_of_size(16384)).await;
    assert_eq!(raw.status, 200, "{raw:?}");
    let raw = exchange(proxy.addr, &head_with_fields(20)).await;
    assert_eq!(raw.status, 200, "{raw:?}");
    assert_eq!(backend.hits(Method::GET, "/x"), 2);

    // One byte or one field over: the proxy's 431.
    let raw = exchange(proxy.addr, &head_of_size(16385)).await;
    assert_own_431(&raw, "server.max_header_bytes = 16384");
    assert!(
        raw.body.windows(5).any(|w| w == b"16385"),
        "the detail gives the size: {raw:?}"
    );
    let raw = exchange(proxy.addr, &head_with_fields(21)).await;
    assert_own_431(&raw, "server.max_headers = 20");
    // Up to hyper's ceiling (twice the bytes; hyper's own 100 fields), still the proxy's.
    let raw = exchange(proxy.addr, &head_of_size(32 * 1024 - 1)).await;
    assert_own_431(&raw, "server.max_header_bytes = 16384");
    let raw = exchange(proxy.addr, &head_with_fields(100)).await;
    assert_own_431(&raw, "server.max_headers = 20");

    // Past the ceiling: hyper's bare 431 (hyper refuses a head once its read buffer holds the
    // ceiling without a complete one; a head that arrives in one read may be parsed up to
    // about twice that, so the size case is well past it).
    assert_bare_431(&exchange(proxy.addr, &head_with_fields(101)).await);
    assert_bare_431(&exchange(proxy.addr, &head_of_size(256 * 1024)).await);

    // h2c: the field count is the proxy's; the header list size (RFC 9113 counting) is h2's
    // own bare 431.
    let client = Client::h2c();
    let mut many = support::request(Method::GET, &proxy.url("/x"));
    for i in 0..21 {
        many = many.header(format!("x-h{i}"), "v");
    }
    let answer = client.send(many.body(full("")).expect("request")).await;
    let problem = answer.assert_problem(431, "headers-too-large");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("server.max_headers = 20"))
    );
    let big = support::request(Method::GET, &proxy.url("/x"))
        .header("x-pad", "p".repeat(20 * 1024))
        .body(full(""))
        .expect("request");
    let answer = client.send(big).await;
    assert_eq!(answer.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert!(answer.body.is_empty(), "{answer:?}");
    assert!(answer.headers.get("content-type").is_none());

    assert_eq!(
        backend.seen().len(),
        2,
        "only the heads within the limits reached the upstream"
    );
}

/// An upstream that never completes a TCP handshake: a listener that accepts nothing, its
/// accept queue filled, so that the kernel drops further SYNs (Linux drops a SYN while the
/// queue is full). A connection attempt to it neither succeeds nor fails until the client gives
/// up. Returns the address with the listener and the connections that filled it, kept alive.
async fn unanswering_upstream() -> (SocketAddr, tokio::net::TcpListener, Vec<TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    // A backlog of 1: the queue is full once it holds two handshakes nobody accepted.
    let listener = socket.listen(1).expect("listen");
    let addr = listener.local_addr().expect("local addr");
    let mut filling = Vec::new();
    loop {
        // A handshake on loopback completes in the kernel, at once, while the queue has room;
        // one that has not within 2 s had its SYN dropped.
        match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
            Ok(stream) => filling.push(stream.expect("connect to the filling listener")),
            Err(_) => break,
        }
        assert!(filling.len() <= 8, "the accept queue never filled");
    }
    (addr, listener, filling)
}

#[tokio::test]
async fn an_upstream_that_never_completes_the_handshake_gets_502_after_connect_timeout() {
    let (upstream, _listener, _filling) = unanswering_upstream().await;
    let proxy = Proxy::spawn(config_with(
        upstream,
        "[server]\nconnect_timeout = \"300ms\"\nresponse_timeout = \"30s\"",
    ))
    .await;

    let started = Instant::now();
    let answer = Client::http1().send(get(&proxy.url("/x"))).await;
    let waited = started.elapsed();
    let problem = answer.assert_problem(502, "upstream-unavailable");
    assert!(problem["detail"].is_string(), "{problem}");
    // The connect timeout ended it: not at once (as a refused connection would be), and long
    // before the response timeout.
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
}
