//! A fixed, fast upstream for `bench/load.sh`: the physical limit the proxies are measured
//! against. It does no work beyond HTTP itself.
//!
//! ```text
//! cargo run --release --example bench_upstream -- 127.0.0.1:18080 [threads] [slow-us]
//! ```
//!
//! - `GET /plain/N`: N bytes (at most 8 MiB), no `ETag` (the proxy synthesizes one).
//! - `GET` anything else: a 13-byte body with the strong `ETag: "v1"`, which never changes.
//! - `PUT`/`PATCH`/`POST`/`DELETE`: body drained, `204` with `ETag: "v1"` (so `If-Match: "v1"`
//!   always passes); under `/slow/` it first sleeps `slow-us` microseconds (a real write's cost).
//! - `GET /__stats`: `requests writes` served so far (not counted), to prove what never
//!   reached the upstream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

const MAX_BODY: usize = 8 << 20;

static REQUESTS: AtomicU64 = AtomicU64::new(0);
static WRITES: AtomicU64 = AtomicU64::new(0);

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:18080".into())
        .parse()
        .map_err(std::io::Error::other)?;
    let threads: usize = args.next().and_then(|t| t.parse().ok()).unwrap_or(1);
    let slow = Duration::from_micros(args.next().and_then(|t| t.parse().ok()).unwrap_or(1000));
    let filler: &'static [u8] = Box::leak(vec![b'x'; MAX_BODY].into_boxed_slice());

    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            eprintln!("bench upstream on {addr}, {threads} threads");
            loop {
                let (stream, _) = listener.accept().await?;
                stream.set_nodelay(true)?;
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, filler, slow));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        })
}

async fn handle(
    req: Request<Incoming>,
    filler: &'static [u8],
    slow: Duration,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    if path == "/__stats" {
        let stats = format!(
            "{} {}\n",
            REQUESTS.load(Ordering::Relaxed),
            WRITES.load(Ordering::Relaxed)
        );
        return Ok(Response::new(Full::new(Bytes::from(stats))));
    }
    REQUESTS.fetch_add(1, Ordering::Relaxed);
    let response = Response::builder().header(header::ETAG, "\"v1\"");
    if matches!(
        *req.method(),
        Method::PUT | Method::PATCH | Method::POST | Method::DELETE
    ) {
        WRITES.fetch_add(1, Ordering::Relaxed);
        let is_slow = path.starts_with("/slow/");
        let _ = req.into_body().collect().await;
        if is_slow {
            tokio::time::sleep(slow).await;
        }
        return Ok(response
            .status(StatusCode::NO_CONTENT)
            .body(Full::default())
            .unwrap_or_default());
    }
    if let Some(size) = path.strip_prefix("/plain/") {
        let size = size.parse::<usize>().unwrap_or(0).min(MAX_BODY);
        return Ok(Response::builder()
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Full::new(Bytes::from_static(&filler[..size])))
            .unwrap_or_default());
    }
    Ok(response
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from_static(b"hello, world\n")))
        .unwrap_or_default())
}
