//! The guard in-process over a trivial inner service, against that inner service alone in the
//! same run: what the middleware itself costs per request, with no sockets involved.

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use ifmatch::{MemoryStore, PreconditionLayer, RequestBody};
use tower::{Layer, Service, ServiceExt};

type Req = Request<RequestBody<Full<Bytes>>>;

/// An origin that does nothing: a strong `ETag: "v1"` on every answer, except `/plain/N`,
/// which is N bytes without an ETag (so the guard synthesizes one).
fn origin() -> impl Service<Req, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    static FILLER: [u8; 1 << 20] = [b'x'; 1 << 20];
    tower::service_fn(|req: Req| async move {
        let mut res = Response::builder().header(header::ETAG, "\"v1\"");
        if req.method() != Method::GET {
            res = res.status(StatusCode::NO_CONTENT);
            return Ok(res.body(Full::default()).unwrap());
        }
        if let Some(size) = req.uri().path().strip_prefix("/plain/") {
            let size: usize = size.parse().unwrap();
            let res = Response::builder().header(header::CONTENT_TYPE, "text/plain");
            return Ok(res
                .body(Full::new(Bytes::from_static(&FILLER[..size])))
                .unwrap());
        }
        Ok(res
            .body(Full::new(Bytes::from_static(b"hello, world\n")))
            .unwrap())
    })
}

fn request(method: Method, path: &str, if_match: Option<&'static str>) -> Request<Full<Bytes>> {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(tag) = if_match {
        req = req.header(header::IF_MATCH, tag);
    }
    req.body(Full::default()).unwrap()
}

fn guard(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = MemoryStore::default();
    let guarded = PreconditionLayer::new(store).layer(origin());
    let bare = origin();
    // Learn "v1" for the resources the writes target.
    rt.block_on(async {
        for path in ["/items/1", "/items/2"] {
            let res = guarded
                .clone()
                .oneshot(request(Method::GET, path, None))
                .await;
            assert_eq!(res.unwrap().headers()[header::ETAG], "\"v1\"");
        }
    });

    let cases: [(&str, Method, &str, Option<&'static str>, StatusCode); 5] = [
        ("get_learn", Method::GET, "/items/1", None, StatusCode::OK),
        (
            "put_pass",
            Method::PUT,
            "/items/1",
            Some("\"v1\""),
            StatusCode::NO_CONTENT,
        ),
        (
            "put_stale",
            Method::PUT,
            "/items/2",
            Some("\"v0\""),
            StatusCode::CONFLICT,
        ),
        (
            "get_synth_1k",
            Method::GET,
            "/plain/1024",
            None,
            StatusCode::OK,
        ),
        (
            "get_synth_1m",
            Method::GET,
            "/plain/1048576",
            None,
            StatusCode::OK,
        ),
    ];
    let mut g = c.benchmark_group("guard");
    for (name, method, path, if_match, status) in cases {
        g.bench_function(BenchmarkId::new("inner_alone", name), |b| {
            b.to_async(&rt).iter(|| {
                let req = request(method.clone(), path, if_match).map(RequestBody::new);
                let svc = bare.clone();
                async move {
                    let res = svc.oneshot(req).await.unwrap();
                    black_box(res.into_body().collect().await.unwrap());
                }
            })
        });
        g.bench_function(BenchmarkId::new("guarded", name), |b| {
            b.to_async(&rt).iter(|| {
                let req = request(method.clone(), path, if_match);
                let svc = guarded.clone();
                async move {
                    let res = svc.oneshot(req).await.unwrap();
                    assert_eq!(res.status(), status);
                    black_box(res.into_body().collect().await.ok());
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, guard);
criterion_main!(benches);
