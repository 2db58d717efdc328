//! What a write's response tells the client about the next write: the validator the guard will
//! accept, or none. Against an upstream like json-server (Express): weak ETags everywhere, and
//! a PUT that answers with the updated record.

mod support;

use std::sync::{Arc, Mutex};

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;
use support::{Backend, BackendHandle, Client, Proxy, Reply, bounded, config, full, request};

/// `/posts/2`: GET answers the record with a weak ETag; PUT stores the body and answers the
/// record with a new weak ETag; DELETE answers 204 with a weak ETag.
async fn express_like() -> BackendHandle {
    let record = Arc::new(Mutex::new((
        json!({"id": 2, "title": "a"}).to_string(),
        1u32,
    )));
    let (reader, writer) = (record.clone(), record.clone());
    Backend::new()
        .route_fn(Method::GET, "/posts/2", move |_req| {
            let (body, version) = reader.lock().unwrap().clone();
            async move {
                Reply::ok(body)
                    .header("content-type", "application/json; charset=utf-8")
                    .header("etag", &format!("W/\"{version}-express\""))
                    .response()
            }
        })
        .route_fn(
            Method::PUT,
            "/posts/2",
            move |req: http::Request<Incoming>| {
                let record = writer.clone();
                async move {
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let body = String::from_utf8_lossy(&body).into_owned();
                    let version = {
                        let mut record = record.lock().unwrap();
                        *record = (body.clone(), record.1 + 1);
                        record.1
                    };
                    Reply::ok(body)
                        .header("content-type", "application/json; charset=utf-8")
                        .header("etag", &format!("W/\"{version}-express\""))
                        .response()
                }
            },
        )
        .route(
            Method::DELETE,
            "/posts/2",
            Reply::status(204).header("etag", "W/\"0-express\""),
        )
        .spawn()
        .await
}

/// The express-like upstream behind a proxy, a client, and the tag it read of `/posts/2`.
async fn read_through_proxy() -> (BackendHandle, support::ProxyHandle, Client, String) {
    let backend = express_like().await;
    let proxy = Proxy::spawn(config(backend.addr)).await;
    let client = Client::http1();
    let tag = client
        .get(proxy.url("/posts/2"))
        .await
        .header("etag")
        .to_owned();
    (backend, proxy, client, tag)
}

fn put(url: &str, if_match: &str, title: &str) -> http::Request<support::TestBody> {
    request(Method::PUT, url)
        .header("if-match", if_match)
        .header("content-type", "application/json; charset=utf-8")
        .body(full(json!({"id": 2, "title": title}).to_string()))
        .unwrap()
}

#[tokio::test]
async fn a_write_response_carries_the_tag_the_next_write_needs() {
    bounded(async {
        let backend = express_like().await;
        let proxy = Proxy::spawn(config(backend.addr)).await;
        let client = Client::http1();
        let read = client.get(proxy.url("/posts/2")).await;
        let first = read.header("etag").to_owned();
        assert!(first.starts_with("\"ifm-"), "{first}");

        let wrote = client.send(put(&proxy.url("/posts/2"), &first, "b")).await;
        assert_eq!(wrote.status, StatusCode::OK, "{wrote:?}");
        let next = wrote.header("etag").to_owned();
        assert!(
            next.starts_with("\"ifm-"),
            "a strong tag the guard accepts: {next}"
        );
        assert_ne!(next, first);
        // The tag a GET would give now is the one the write answered with.
        assert_eq!(client.get(proxy.url("/posts/2")).await.header("etag"), next);

        // A client that reuses its last write's ETag is not refused for nothing.
        let again = client.send(put(&proxy.url("/posts/2"), &next, "c")).await;
        assert_eq!(again.status, StatusCode::OK, "{again:?}");
        let stale = client
            .send(put(&proxy.url("/posts/2"), &next, "lost"))
            .await;
        stale.assert_problem(409, "stale-precondition");
        assert_eq!(backend.hits(Method::PUT, "/posts/2"), 2);
    })
    .await;
}

#[tokio::test]
async fn a_response_without_the_representation_carries_no_tag_the_guard_refuses() {
    bounded(async {
        let (_backend, proxy, client, tag) = read_through_proxy().await;
        let delete = request(Method::DELETE, &proxy.url("/posts/2"))
            .header("if-match", &tag)
            .body(full(""))
            .unwrap();
        let deleted = client.send(delete).await;
        assert_eq!(deleted.status, StatusCode::NO_CONTENT);
        assert!(deleted.headers.get("etag").is_none(), "{deleted:?}");
    })
    .await;
}

#[tokio::test]
async fn a_weak_if_match_is_told_weak_tags_never_match() {
    bounded(async {
        let (backend, proxy, client, tag) = read_through_proxy().await;
        let weak = format!("W/{tag}");
        let refused = client.send(put(&proxy.url("/posts/2"), &weak, "b")).await;
        let problem = refused.assert_problem(409, "stale-precondition");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("weak tags never match"), "{detail}");
        assert!(detail.contains(&tag), "shows the strong tag: {detail}");
        assert!(!detail.contains("changed since"), "{detail}");
        assert_eq!(backend.hits(Method::PUT, "/posts/2"), 0);
    })
    .await;
}
