//! The pool against a hand-driven upstream that counts the connections it accepts and sees
//! closed, and answers in one of a few ways.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Barrier, Notify};
use tower::Service;

use super::{UpstreamClient, UpstreamError, UpstreamRequest};
use crate::config::ServerConfig;
use crate::guard::RequestBody;

/// How the upstream answers each request.
#[derive(Clone)]
enum Answer {
    /// 200 "ok", and the connection kept.
    KeepAlive,
    /// 200 "ok", then the connection closed, without saying so (`Connection: close`).
    CloseAfter,
    /// 200 with a 4 MiB body, written until the client stops reading.
    Big,
    /// 101 Switching Protocols, then the connection left open.
    Upgrade,
    /// 200 "ok" once this many requests have arrived (on any connections), then kept.
    AllTogether(Arc<Barrier>),
}

#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    closed: AtomicUsize,
    changed: Notify,
}

impl Counts {
    /// Waits until `closed` connections were seen closed (bounded: the test fails past it).
    async fn closed_reaches(&self, closed: usize) {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let changed = self.changed.notified();
                if self.closed.load(Ordering::SeqCst) >= closed {
                    return;
                }
                changed.await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} connections closed, not {closed}",
                self.closed.load(Ordering::SeqCst)
            )
        });
    }
}

async fn upstream(answer: Answer) -> (String, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let counts = Arc::new(Counts::default());
    let shared = Arc::clone(&counts);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            shared.accepted.fetch_add(1, Ordering::SeqCst);
            let (counts, answer) = (Arc::clone(&shared), answer.clone());
            tokio::spawn(async move {
                serve(stream, answer).await;
                counts.closed.fetch_add(1, Ordering::SeqCst);
                counts.changed.notify_waiters();
            });
        }
    });
    (base, counts)
}

/// Serves one connection until either side closes it.
async fn serve(mut stream: TcpStream, answer: Answer) {
    let mut buf = Vec::new();
    loop {
        // A request head (the requests here have no body).
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0u8; 1024];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.clear();
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        match &answer {
            Answer::KeepAlive => {
                if stream.write_all(ok).await.is_err() {
                    return;
                }
            }
            Answer::CloseAfter => {
                let _ = stream.write_all(ok).await;
                return;
            }
            Answer::Big => {
                let head = b"HTTP/1.1 200 OK\r\ncontent-length: 4194304\r\n\r\n";
                if stream.write_all(head).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                for _ in 0..64 {
                    if stream.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
            }
            Answer::Upgrade => {
                let head = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: test\r\n\r\n";
                if stream.write_all(head).await.is_err() {
                    return;
                }
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                return;
            }
            Answer::AllTogether(barrier) => {
                barrier.wait().await;
                if stream.write_all(ok).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn client(configure: impl FnOnce(&mut ServerConfig)) -> UpstreamClient {
    let mut server = ServerConfig::default();
    configure(&mut server);
    UpstreamClient::new(&server)
}

fn get(base: &str) -> UpstreamRequest {
    Request::builder()
        .uri(format!("{base}/x"))
        .header(header::HOST, "upstream")
        .body(RequestBody::full(Bytes::new()))
        .unwrap()
}

/// One GET, its body read to the end.
async fn fetch(client: &mut UpstreamClient, base: &str) -> Result<Bytes, UpstreamError> {
    let response = client.call(get(base)).await?;
    assert_eq!(response.status(), StatusCode::OK);
    Ok(response.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn sequential_requests_reuse_one_connection() {
    let (base, counts) = upstream(Answer::KeepAlive).await;
    let mut client = client(|_| {});
    for _ in 0..20 {
        assert_eq!(fetch(&mut client, &base).await.unwrap(), "ok");
    }
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn at_most_the_limit_is_kept_and_the_rest_are_closed() {
    let together = 5;
    let (base, counts) = upstream(Answer::AllTogether(Arc::new(Barrier::new(together)))).await;
    let client = client(|server| server.pool_max_idle_per_host = 2);
    let mut tasks = Vec::new();
    for _ in 0..together {
        let (mut client, base) = (client.clone(), base.clone());
        tasks.push(tokio::spawn(async move { fetch(&mut client, &base).await }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), "ok");
    }
    assert_eq!(counts.accepted.load(Ordering::SeqCst), together);
    // Three were not kept: closed once their responses were read.
    counts.closed_reaches(together - 2).await;
    let authority = base.trim_start_matches("http://").parse().unwrap();
    assert_eq!(client.pool.kept(&authority), 2);
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let (base, counts) = upstream(Answer::KeepAlive).await;
    let mut client = client(|server| server.pool_idle_timeout = Duration::from_millis(100));
    assert_eq!(fetch(&mut client, &base).await.unwrap(), "ok");
    // Nothing else happens: the pool itself closes it.
    counts.closed_reaches(1).await;
    assert_eq!(fetch(&mut client, &base).await.unwrap(), "ok");
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
/// The pool usually sees such a close before the next checkout; when the request finds the
/// connection closed before it was written, hyper gives it back and the next is tried (that
/// window is too narrow for this test to hit on purpose).
async fn an_upstream_that_closes_kept_connections_fails_no_request() {
    let (base, counts) = upstream(Answer::CloseAfter).await;
    let mut client = client(|_| {});
    for _ in 0..30 {
        assert_eq!(fetch(&mut client, &base).await.unwrap(), "ok");
    }
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 30);
}

#[tokio::test]
async fn a_body_dropped_before_its_end_does_not_leave_its_connection_in_use() {
    let (big, big_counts) = upstream(Answer::Big).await;
    let mut client = client(|_| {});
    let response = client.call(get(&big)).await.unwrap();
    let mut body = response.into_body();
    let _first = body.frame().await;
    drop(body);
    // The half-read connection is closed, not handed to the next request.
    big_counts.closed_reaches(1).await;
    let response = client.call(get(&big)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(big_counts.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_switched_connection_is_not_reused() {
    let (base, counts) = upstream(Answer::Upgrade).await;
    let mut client = client(|_| {});
    let response = client.call(get(&base)).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let second = client.call(get(&base)).await.unwrap();
    assert_eq!(second.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let mut client = client(|_| {});
    let error = client.call(get(&base)).await.unwrap_err();
    assert!(matches!(error, UpstreamError::Connect(_)), "{error:?}");
}
