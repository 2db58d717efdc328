//! WebSocket pass-through: a handshake (GET, `Connection: upgrade`, `Upgrade: websocket`) is
//! forwarded with its upgrade headers; an upstream 101 becomes a byte-for-byte tunnel, any other
//! answer is relayed; writes and other protocols are never upgraded. The upstream is a hyper
//! server that completes the handshake and echoes raw bytes (no WebSocket framing is needed to
//! prove the tunnel).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::client::conn::http1;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use support::raw::read_to_close;
use support::{
    Backend, BackendHandle, Client, Proxy, Reply, TestBody, bounded, config, config_with, full,
    request,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// An upstream whose `/ws` accepts WebSocket handshakes and echoes what it then receives.
async fn echo_upstream() -> BackendHandle {
    Backend::new()
        .route_fn(
            Method::GET,
            "/ws",
            |mut req: Request<hyper::body::Incoming>| async move {
                let upgraded = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    if let Ok(upgraded) = upgraded.await {
                        let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
                        let _ = tokio::io::copy(&mut reader, &mut writer).await;
                    }
                });
                Reply::status(101)
                    .header("connection", "upgrade")
                    .header("upgrade", "websocket")
                    .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                    .response()
            },
        )
        .route(Method::GET, "/plain", Reply::ok("plain"))
        .route(Method::PUT, "/ws", Reply::ok("written"))
        .spawn()
        .await
}

/// A WebSocket handshake (RFC 6455 §4.1) as `method`, with `body`.
fn handshake(method: Method, uri: &str, body: &'static str) -> Request<TestBody> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "api.example")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .body(full(body))
        .expect("request")
}

/// Opens a WebSocket tunnel to `/ws` through the proxy at `addr`.
async fn open_tunnel(addr: SocketAddr) -> TokioIo<Upgraded> {
    let stream = bounded(TcpStream::connect(addr)).await.expect("connect");
    let (mut send, connection) = bounded(http1::handshake::<_, TestBody>(TokioIo::new(stream)))
        .await
        .expect("handshake");
    tokio::spawn(connection.with_upgrades());
    let mut response = bounded(send.send_request(handshake(Method::GET, "/ws", "")))
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(response.headers()["upgrade"], "websocket");
    assert_eq!(response.headers()["connection"], "upgrade");
    assert_eq!(
        response.headers()["sec-websocket-accept"],
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    TokioIo::new(
        bounded(hyper::upgrade::on(&mut response))
            .await
            .expect("upgraded"),
    )
}

/// Sends `message` through the tunnel and reads the echo.
async fn echo(tunnel: &mut TokioIo<Upgraded>, message: &[u8]) {
    bounded(tunnel.write_all(message)).await.expect("write");
    let mut back = vec![0; message.len()];
    bounded(tunnel.read_exact(&mut back)).await.expect("echo");
    assert_eq!(back, message);
}

#[tokio::test]
async fn a_websocket_is_tunnelled_through_the_guarded_proxy() {
    let backend = echo_upstream().await;
    let proxy = Proxy::spawn(config(backend.addr)).await;
    let mut tunnel = open_tunnel(proxy.addr).await;
    echo(&mut tunnel, b"hello through the tunnel").await;
    echo(&mut tunnel, &[0x81, 0x05, b'h', b'e', b'l', b'l', b'o']).await;

    let seen = backend.last(Method::GET, "/ws");
    assert_eq!(seen.headers["upgrade"], "websocket");
    assert_eq!(seen.headers["connection"], "upgrade");
    assert_eq!(
        seen.headers["sec-websocket-key"],
        "dGhlIHNhbXBsZSBub25jZQ=="
    );
    assert_eq!(seen.headers["sec-websocket-version"], "13");

    // The client closing its side ends the tunnel both ways.
    bounded(tunnel.shutdown()).await.expect("shutdown");
    assert!(bounded(read_to_close(&mut tunnel)).await.is_empty());
}

#[tokio::test]
async fn an_upstream_that_refuses_the_upgrade_is_relayed() {
    for reply in [
        Reply::status(400).body("no websocket here"),
        Reply::ok("plain page"),
    ] {
        let backend = Backend::new()
            .route(Method::GET, "/ws", reply.clone())
            .spawn()
            .await;
        let proxy = Proxy::spawn(config(backend.addr)).await;
        let answer = Client::http1()
            .send(handshake(Method::GET, &proxy.url("/ws"), ""))
            .await;
        let expected = reply.response();
        assert_eq!(answer.status, expected.status());
        let body = expected.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(answer.body, body);
        assert!(!answer.headers.contains_key("upgrade"));
    }
}

#[tokio::test]
async fn writes_and_other_protocols_are_not_upgraded() {
    let backend = echo_upstream().await;
    let proxy = Proxy::spawn(config(backend.addr)).await;

    // A write carrying a handshake: the guard's semantics apply, the upgrade headers do not.
    let answer = Client::http1()
        .send(handshake(Method::PUT, &proxy.url("/ws"), "data"))
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "written");
    let seen = backend.last(Method::PUT, "/ws");
    assert!(!seen.headers.contains_key("upgrade"), "{:?}", seen.headers);

    // HTTP/2 over cleartext by upgrade is not offered upstream either.
    let answer = Client::http1()
        .send(
            request(Method::GET, &proxy.url("/plain"))
                .header("connection", "Upgrade, HTTP2-Settings")
                .header("upgrade", "h2c")
                .header("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA")
                .body(full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "plain");
    let seen = backend.last(Method::GET, "/plain");
    for name in ["upgrade", "http2-settings"] {
        assert!(!seen.headers.contains_key(name), "{:?}", seen.headers);
    }
}

#[tokio::test]
async fn a_quiet_tunnel_is_closed_after_idle_timeout() {
    let backend = echo_upstream().await;
    let proxy = Proxy::spawn(config_with(
        backend.addr,
        "[server]\nidle_timeout = \"300ms\"",
    ))
    .await;
    let mut tunnel = open_tunnel(proxy.addr).await;
    // Before the last exchange: the proxy's idle clock starts when it relays the echo,
    // before this task reads it.
    let quiet = Instant::now();
    echo(&mut tunnel, b"ping").await;
    assert!(bounded(read_to_close(&mut tunnel)).await.is_empty());
    assert!(
        quiet.elapsed() >= Duration::from_millis(300),
        "closed after {:?}",
        quiet.elapsed()
    );
}

#[tokio::test]
async fn a_tunnel_holds_its_connection_slot_and_ends_on_shutdown() {
    let backend = echo_upstream().await;
    let mut proxy = Proxy::spawn(config_with(backend.addr, "[server]\nmax_connections = 1")).await;
    let mut tunnel = open_tunnel(proxy.addr).await;
    echo(&mut tunnel, b"ping").await;
    // The handshake's HTTP connection is gone, the tunnel still counts.
    Client::http1()
        .get(proxy.url("/plain"))
        .await
        .assert_problem(503, "too-many-connections");

    let serve = proxy.begin_shutdown();
    assert!(bounded(read_to_close(&mut tunnel)).await.is_empty());
    bounded(serve).await.expect("serve task").expect("served");
}
