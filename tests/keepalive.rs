//! Keep-alive connections survive the answers the proxy gives itself before it reads a
//! request's body (issue 13): on HTTP/1.1 the unread body is read and discarded, bounded, so
//! the connection is reused; past the bound the answer says `Connection: close` and the
//! connection closes gracefully, after the client has the whole answer; on h2c the stream
//! ends and the connection stays up.
//!
//! The clients are hand-driven sockets (tests/support/raw.rs `Conn`) that write a request's
//! head and its body in separate writes, as Python's `http.client` does, and parse each
//! response by its framing: a connection closed or reset early is an error, never a short
//! answer.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::h2::{
    self, ACK, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, RST_STREAM, SETTINGS,
};
use support::raw::{Conn, Message, head};
use support::{
    Backend, BackendHandle, Client, DemoHandle, Proxy, ProxyHandle, Reply, TestBody, bounded,
    config, config_toml, config_with, full, sample,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio::time::Instant;

/// GET / rejected-PUT cycles on one connection.
const CYCLES: usize = 1000;
/// Every this many cycles, the body follows its head after [`PAUSE`]: then it has certainly
/// not arrived when the guard answers. The other cycles still write head and body separately
/// (so the body arrives a moment later, or in the same read), at no cost in test time: 250
/// pauses of 2 ms keep each test near a second on a loaded machine.
const PAUSE_EVERY: usize = 4;
const PAUSE: Duration = Duration::from_millis(2);

/// A document at `/r` with a strong ETag `"v1"`; writes to it are counted, never expected.
async fn document() -> BackendHandle {
    Backend::new()
        .route(
            Method::GET,
            "/r",
            Reply::ok("current").header("etag", "\"v1\""),
        )
        .route(Method::PUT, "/r", Reply::status(204))
        .spawn()
        .await
}

/// `count` GET / PUT cycles on one connection, each PUT to `target` (with `put_headers` and a
/// 1 KiB body) answered `status` by the proxy itself; panics at the first transport error,
/// saying how far it got.
async fn cycles_to(
    proxy: SocketAddr,
    target: &str,
    put_headers: &[(&str, &str)],
    status: u16,
    count: usize,
) {
    let body = vec![b'x'; 1024];
    let get = head("GET", "/r", &[], 0);
    let put = head("PUT", target, put_headers, body.len());
    let mut conn = Conn::open(proxy).await;
    for cycle in 0..count {
        let read = conn.exchange(&get, b"", Duration::ZERO).await;
        let read = read.unwrap_or_else(|e| panic!("cycle {cycle}: GET failed: {e}"));
        assert_eq!(read.status, 200, "cycle {cycle}: {read:?}");
        let pause = if cycle % PAUSE_EVERY == 0 {
            PAUSE
        } else {
            Duration::ZERO
        };
        let wrote = conn.exchange(&put, &body, pause).await;
        let wrote = wrote.unwrap_or_else(|e| {
            panic!("cycle {cycle}: {cycle} of {count} rejected writes answered, then: {e}")
        });
        assert_eq!(wrote.status, status, "cycle {cycle}: {wrote:?}");
        assert!(!wrote.closes(), "cycle {cycle}: {wrote:?}");
        assert_eq!(
            wrote.header("content-type"),
            Some("application/problem+json")
        );
    }
}

/// [`cycles_to`] `/r`, `CYCLES` times.
async fn cycles(proxy: SocketAddr, put_headers: &[(&str, &str)], status: u16) {
    cycles_to(proxy, "/r", put_headers, status, CYCLES).await;
}

/// The proxy's `/metrics`.
async fn metrics(proxy: &ProxyHandle) -> String {
    let answer = Client::http1().get(proxy.admin_url("/metrics")).await;
    String::from_utf8(answer.body.to_vec()).expect("text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_writes_answered_409_keep_the_connection() {
    let backend = document().await;
    let proxy = Proxy::with_admin(config(backend.addr)).await;
    bounded(cycles(proxy.addr, &[("if-match", "\"v0\"")], 409)).await;
    assert_eq!(backend.hits(Method::PUT, "/r"), 0);
    let discarded = sample(
        &metrics(&proxy).await,
        "ifmatch_request_bodies_discarded_total",
        &[],
    );
    // A body that arrived whole before the guard answered is already read by hyper and needs
    // no discard, which a loaded machine can make of any cycle: only count that some were.
    assert!(discarded >= Some(1.0), "{discarded:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrouted_writes_answered_404_keep_the_connection() {
    let backend = document().await;
    let routed = format!(
        "[[routes]]\nname = \"r\"\npath_prefix = \"/r\"\nupstream = \"http://{}\"\n",
        backend.addr
    );
    let proxy = Proxy::spawn(config_toml(&routed)).await;
    bounded(cycles_to(proxy.addr, "/elsewhere", &[], 404, CYCLES / 5)).await;
    assert!(backend.seen().iter().all(|seen| seen.method == Method::GET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_writes_answered_412_keep_the_connection() {
    let backend = document().await;
    let proxy = Proxy::spawn(config_with(
        backend.addr,
        "[defaults]\nconflict_status = 412",
    ))
    .await;
    bounded(cycles(proxy.addr, &[("if-match", "\"v0\"")], 412)).await;
    assert_eq!(backend.hits(Method::PUT, "/r"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconditional_writes_answered_428_keep_the_connection() {
    let backend = document().await;
    let proxy = Proxy::spawn(config_with(
        backend.addr,
        "[defaults]\nrequire_if_match = true",
    ))
    .await;
    bounded(cycles(proxy.addr, &[], 428)).await;
    assert_eq!(backend.hits(Method::PUT, "/r"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_preconditions_answered_400_keep_the_connection() {
    let backend = document().await;
    let proxy = Proxy::spawn(config(backend.addr)).await;
    bounded(cycles(proxy.addr, &[("if-match", "v1")], 400)).await;
    assert_eq!(backend.hits(Method::PUT, "/r"), 0);
}

/// Asserts a 409 problem that closes the connection, and that the connection then ends with
/// the server's FIN, not a reset.
async fn assert_closed_after_409(conn: &mut Conn, wrote: &Message) {
    assert_eq!(wrote.status, 409, "{wrote:?}");
    assert!(wrote.closes(), "{wrote:?}");
    let problem = wrote.json();
    assert_eq!(problem["status"], 409, "{problem}");
    assert!(
        bounded(conn.closed_cleanly()).await.expect("end of stream"),
        "the connection was reset instead of closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_too_large_to_discard_gets_connection_close_after_the_whole_answer() {
    let backend = document().await;
    let proxy = Proxy::with_admin(config(backend.addr)).await;
    let mut conn = Conn::open(proxy.addr).await;
    let read = bounded(conn.exchange(&head("GET", "/r", &[], 0), b"", Duration::ZERO)).await;
    assert_eq!(read.expect("GET").status, 200);

    // As a simple client does: the whole body written first, then the answer read. The proxy
    // answers at once (the length is over server.discard_body_bytes); the client's writes can
    // only complete if the proxy goes on reading what it sends.
    let body = vec![b'x'; 5 << 20];
    let put = head("PUT", "/r", &[("if-match", "\"v0\"")], body.len());
    let wrote = bounded(conn.exchange(&put, &body, PAUSE)).await;
    let wrote = wrote.expect("the whole body written, then the whole answer read");
    assert_closed_after_409(&mut conn, &wrote).await;
    assert_eq!(backend.hits(Method::PUT, "/r"), 0);
    let closed = sample(
        &metrics(&proxy).await,
        "ifmatch_connections_closed_undiscarded_total",
        &["reason=\"too_large\""],
    );
    assert!(closed >= Some(1.0), "{closed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_gets_connection_close_after_body_read_timeout() {
    let backend = document().await;
    let proxy = Proxy::spawn(config_with(
        backend.addr,
        "[server]\nbody_read_timeout = \"300ms\"",
    ))
    .await;
    let mut conn = Conn::open(proxy.addr).await;
    let read = bounded(conn.exchange(&head("GET", "/r", &[], 0), b"", Duration::ZERO)).await;
    assert_eq!(read.expect("GET").status, 200);

    // 100 of the 1000 bytes announced, then nothing: the answer waits for the rest no longer
    // than the body read timeout.
    let put = head("PUT", "/r", &[("if-match", "\"v0\"")], 1000);
    let started = Instant::now();
    bounded(conn.send(&put, &[b'x'; 100], Duration::ZERO))
        .await
        .expect("send");
    let wrote = bounded(conn.response()).await.expect("answer");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_closed_after_409(&mut conn, &wrote).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waiting_for_100_continue_gets_the_answer_instead_and_connection_close() {
    let backend = document().await;
    let proxy = Proxy::spawn(config(backend.addr)).await;
    let mut conn = Conn::open(proxy.addr).await;
    let read = bounded(conn.exchange(&head("GET", "/r", &[], 0), b"", Duration::ZERO)).await;
    assert_eq!(read.expect("GET").status, 200);

    // The client sends its body only after `100 Continue`; the answer comes first (no 100),
    // and the body it will not send now can only be framed away by closing.
    let headers = [("if-match", "\"v0\""), ("expect", "100-continue")];
    let put = head("PUT", "/r", &headers, 1000);
    bounded(conn.send(&put, b"", Duration::ZERO))
        .await
        .expect("send");
    let wrote = bounded(conn.response()).await.expect("answer");
    assert_closed_after_409(&mut conn, &wrote).await;
    assert_eq!(backend.hits(Method::PUT, "/r"), 0);
}

/// A body that never sends a byte and never ends: the stream stays open from the client's side
/// until the server ends it.
fn never_sent() -> TestBody {
    StreamBody::new(futures_util::stream::pending::<
        Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>,
    >())
    .boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_rejected_streams_end_and_the_connection_stays_up() {
    let backend = document().await;
    let proxy = Proxy::spawn(config(backend.addr)).await;
    let stream = bounded(TcpStream::connect(proxy.addr))
        .await
        .expect("connect");
    let (sender, connection) =
        bounded(http2::handshake(TokioExecutor::new(), TokioIo::new(stream)))
            .await
            .expect("h2c handshake");
    let connection = tokio::spawn(connection);
    let get = || {
        Request::get(format!("http://{}/r", proxy.addr))
            .body(full(""))
            .expect("request")
    };
    let mut first = sender.clone();
    let read = bounded(first.send_request(get())).await.expect("GET");
    assert_eq!(read.status(), StatusCode::OK);

    let writes = (0..100).map(|_| {
        let mut sender = sender.clone();
        let put = Request::put(format!("http://{}/r", proxy.addr))
            .header("if-match", "\"v0\"")
            .body(never_sent())
            .expect("request");
        async move {
            let response = sender.send_request(put).await?;
            let status = response.status();
            response.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        }
    });
    let answers = bounded(futures_util::future::join_all(writes)).await;
    for answer in answers {
        assert_eq!(answer.expect("answered").as_u16(), 409);
    }

    let mut last = sender.clone();
    let read = bounded(last.send_request(get())).await.expect("GET after");
    assert_eq!(read.status(), StatusCode::OK);
    assert!(!connection.is_finished(), "the connection is still up");
    assert_eq!(backend.hits(Method::PUT, "/r"), 0);
}

/// RST_STREAM's NO_ERROR code.
const NO_ERROR: u32 = 0x0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_a_rejected_stream_ends_with_its_answer_then_rst_stream_no_error() {
    let backend = document().await;
    let proxy = Proxy::spawn(config(backend.addr)).await;
    let mut stream = bounded(TcpStream::connect(proxy.addr))
        .await
        .expect("connect");
    let request = |method, stream_id, flags| {
        let fields = [
            (":method", method),
            (":scheme", "http"),
            (":path", "/r"),
            (":authority", "a"),
            ("if-match", "v1"),
        ];
        h2::frame(HEADERS, flags, stream_id, &h2::header_block(&fields))
    };
    // A PUT whose body never comes (HEADERS without END_STREAM), malformed: 400 at once.
    let mut out = h2::PREFACE.to_vec();
    out.extend(h2::frame(SETTINGS, 0, 0, &[]));
    out.extend(request("PUT", 1, END_HEADERS));
    bounded(stream.write_all(&out)).await.expect("write");

    // What the proxy sends on stream 1, in order, until it resets it; then a GET on stream 3.
    let mut on_stream_1 = Vec::new();
    let mut answered_3 = false;
    bounded(async {
        while !answered_3 {
            let frame = h2::read_frame(&mut stream).await.expect("frame");
            match (frame.kind, frame.stream) {
                (SETTINGS, _) if frame.flags & ACK == 0 => {
                    stream
                        .write_all(&h2::frame(SETTINGS, ACK, 0, &[]))
                        .await
                        .expect("ack");
                }
                (GOAWAY, _) => panic!("GOAWAY {:#x}", frame.code(4)),
                (HEADERS | DATA, 1) => {
                    on_stream_1.push((frame.kind, u32::from(frame.flags & END_STREAM)));
                }
                (RST_STREAM, 1) => {
                    on_stream_1.push((RST_STREAM, frame.code(0)));
                    let get = request("GET", 3, END_HEADERS | END_STREAM);
                    stream.write_all(&get).await.expect("write GET");
                }
                (HEADERS, 3) => answered_3 = true,
                _ => {}
            }
        }
    })
    .await;
    let (last, answer) = on_stream_1.split_last().expect("frames on stream 1");
    assert_eq!(*last, (RST_STREAM, NO_ERROR), "{on_stream_1:?}");
    assert_eq!(
        answer.first().map(|f| f.0),
        Some(HEADERS),
        "{on_stream_1:?}"
    );
    assert!(
        answer.last().is_some_and(|f| f.1 == u32::from(END_STREAM)),
        "the answer ended before the reset: {on_stream_1:?}"
    );
    assert_eq!(backend.hits(Method::PUT, "/r"), 0);
}

// ---------------------------------------------------------------------------------------------
// Many keep-alive writers on the racy demo API.

/// Writers, counters, and each writer's bounds: this many commits, or this long.
const WRITERS: usize = 24;
const COUNTERS: usize = 4;
const COMMITS: usize = 25;
const FOR: Duration = Duration::from_secs(2);

/// What the writers did.
#[derive(Debug, Default)]
struct Outcome {
    /// Acknowledged writes per counter.
    commits: HashMap<usize, u64>,
    /// Writes answered 409.
    conflicts: usize,
    /// Each counter's final value.
    finals: HashMap<usize, u64>,
}

impl Outcome {
    fn lost(&self) -> u64 {
        self.commits
            .iter()
            .map(|(k, c)| c.saturating_sub(self.finals[k]))
            .sum()
    }
}

/// `WRITERS` keep-alive connections to `target`, each incrementing a counter of the demo API
/// (GET, then PUT `n + 1`, with `If-Match` when `if_match`; on 409 read again) until it has
/// `COMMITS` commits or `FOR` has passed. In the first round a barrier holds every writer of a
/// counter between its read and its write, so they certainly collide. Head and body go in
/// separate writes, every fourth after a pause. A transport error fails the test.
async fn increment(target: SocketAddr, name: &str, if_match: bool) -> Outcome {
    let path = |k: usize| format!("/items/{name}-{k}");
    let mut setup = Conn::open(target).await;
    for k in 0..COUNTERS {
        let body = "{\"n\":0}";
        let put = head("PUT", &path(k), &[], body.len());
        let created = bounded(setup.exchange(&put, body.as_bytes(), Duration::ZERO)).await;
        assert!(created.expect("create").status < 300);
    }
    let barriers: Vec<_> = (0..COUNTERS)
        .map(|_| Arc::new(Barrier::new(WRITERS / COUNTERS)))
        .collect();
    let deadline = Instant::now() + FOR;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (k, path) = (w % COUNTERS, path(w % COUNTERS));
        let barrier = Arc::clone(&barriers[k]);
        writers.push(tokio::spawn(async move {
            let mut conn = Conn::open(target).await;
            let get = head("GET", &path, &[], 0);
            let (mut commits, mut conflicts) = (0u64, 0usize);
            for round in 0.. {
                if commits as usize == COMMITS || (round > 0 && Instant::now() >= deadline) {
                    break;
                }
                let read = conn.exchange(&get, b"", Duration::ZERO).await;
                let read = read.unwrap_or_else(|e| panic!("writer {w} round {round}: GET: {e}"));
                assert_eq!(read.status, 200, "{read:?}");
                let n = read.json()["n"].as_u64().expect("counter");
                let etag = read.header("etag").map(str::to_owned);
                let body = format!("{{\"n\":{}}}", n + 1);
                let mut headers = vec![("content-type", "application/json")];
                if if_match {
                    headers.push(("if-match", etag.as_deref().expect("an ETag")));
                }
                let put = head("PUT", &path, &headers, body.len());
                if round == 0 {
                    barrier.wait().await;
                }
                let pause = if round % PAUSE_EVERY == 0 {
                    PAUSE
                } else {
                    Duration::ZERO
                };
                let wrote = conn.exchange(&put, body.as_bytes(), pause).await;
                let wrote = wrote.unwrap_or_else(|e| {
                    panic!("writer {w} round {round}: PUT: {e} ({commits} commits, {conflicts} conflicts)")
                });
                match wrote.status {
                    200 | 201 => commits += 1,
                    409 => conflicts += 1,
                    other => panic!("writer {w}: unexpected {other}: {wrote:?}"),
                }
                assert!(!wrote.closes(), "{wrote:?}");
            }
            (k, commits, conflicts)
        }));
    }
    let mut outcome = Outcome::default();
    for writer in writers {
        let (k, commits, conflicts) = bounded(writer).await.expect("writer");
        *outcome.commits.entry(k).or_default() += commits;
        outcome.conflicts += conflicts;
    }
    for k in 0..COUNTERS {
        let get = head("GET", &path(k), &[], 0);
        let read = bounded(setup.exchange(&get, b"", Duration::ZERO)).await;
        let n = read.expect("final read").json()["n"].as_u64();
        outcome.finals.insert(k, n.expect("counter"));
    }
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_writers_through_the_proxy_lose_nothing_and_see_no_transport_error() {
    let demo = DemoHandle::spawn().await;
    let proxy = Proxy::spawn(config(demo.addr)).await;

    // Teeth: the same workload straight at the racy API, unconditionally, loses updates.
    let straight = increment(demo.addr, "straight", false).await;
    assert!(straight.lost() > 0, "{straight:?}");

    let through = increment(proxy.addr, "through", true).await;
    assert_eq!(through.lost(), 0, "{through:?}");
    assert!(through.conflicts > 0, "the writers collided: {through:?}");
    assert_eq!(
        through.commits.values().sum::<u64>(),
        through.finals.values().sum::<u64>(),
        "{through:?}"
    );
}
