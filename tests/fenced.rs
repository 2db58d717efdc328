//! The guarantee under faults: a write whose outcome is unknown keeps its resource fenced.
//!
//! Each test is one way real traffic broke the zero-lost-updates guarantee before: a client
//! that gives up on a slow write, a 504 while the upstream still applies the write, a resource
//! created by POST left "absent", two spellings of one resource, a revalidation whose body
//! trickles in, a write method in lower case. The storm at the end mixes the first two into a
//! concurrent workload, with the same workload straight at the upstream as the control that
//! shows it can lose updates.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::json;
use support::workload::{SHORT_TIMEOUT_MS, slow_logs, storm};
use support::{
    Backend, BackendHandle, Client, DemoHandle, Proxy, ProxyHandle, Reply, TestBody, bounded,
    config, full, request,
};
use tokio::sync::{Semaphore, mpsc};

// ---------------------------------------------------------------------------------------------
// Fixtures

/// An upstream holding one text document at `/doc`: `GET` returns it (no ETag, so the proxy
/// synthesizes one); `PUT` reads the body, tells the test it arrived, waits for the test to
/// let it apply, then stores it and answers 204.
struct GatedDoc {
    doc: Arc<Mutex<String>>,
    /// One message per PUT whose body has arrived.
    arrived: mpsc::UnboundedReceiver<()>,
    /// One permit lets one PUT apply.
    gate: Arc<Semaphore>,
    backend: BackendHandle,
}

impl GatedDoc {
    async fn spawn() -> Self {
        let doc = Arc::new(Mutex::new("v1".to_owned()));
        let gate = Arc::new(Semaphore::new(0));
        let (arrived_tx, arrived) = mpsc::unbounded_channel();
        let (reader, writer, permits) = (doc.clone(), doc.clone(), gate.clone());
        let backend = Backend::new()
            .route_fn(Method::GET, "/doc", move |_req| {
                let text = reader.lock().unwrap().clone();
                async move { Reply::ok(text).response() }
            })
            .route_fn(Method::PUT, "/doc", move |req: http::Request<Incoming>| {
                let (doc, gate, arrived) = (writer.clone(), permits.clone(), arrived_tx.clone());
                async move {
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let _ = arrived.send(());
                    gate.acquire().await.unwrap().forget();
                    *doc.lock().unwrap() = String::from_utf8_lossy(&body).into_owned();
                    Reply::status(204).response()
                }
            })
            .spawn()
            .await;
        Self {
            doc,
            arrived,
            gate,
            backend,
        }
    }

    fn text(&self) -> String {
        self.doc.lock().unwrap().clone()
    }

    /// Waits until one more PUT body has reached the upstream.
    async fn wait_arrived(&mut self) {
        bounded(self.arrived.recv()).await.expect("upstream alive");
    }

    /// Lets one waiting PUT apply.
    fn release_one(&self) {
        self.gate.add_permits(1);
    }
}

/// `PUT url` with a JSON body and one precondition header.
fn json_put(
    url: &str,
    (name, value): (&str, &str),
    body: serde_json::Value,
) -> http::Request<TestBody> {
    request(Method::PUT, url)
        .header(name, value)
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap()
}

fn put(url: &str, if_match: &str, body: &str) -> http::Request<TestBody> {
    request(Method::PUT, url)
        .header("if-match", if_match)
        .header("content-type", "text/plain")
        .body(full(body.to_owned()))
        .unwrap()
}

/// Waits until the admin API shows no write lease on `path` (the write's outcome is recorded),
/// and returns the state it shows.
async fn settled_state(client: &Client, proxy: &ProxyHandle, path: &str) -> String {
    let url = proxy.admin_url(&format!("/admin/resources?path={path}"));
    bounded(async {
        loop {
            let state = client.get(&url).await.json();
            if state["lease_held"] == false {
                return state["state"].as_str().unwrap().to_owned();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// A proxy with its admin API whose writers wait `lease_wait` for a lease and whose clients
/// get 504 after `response_timeout`.
async fn proxy_for(
    upstream: &BackendHandle,
    response_timeout: Duration,
    lease_wait: &str,
) -> ProxyHandle {
    let mut config = support::config_with(
        upstream.addr,
        &format!("[defaults]\nlease_wait = \"{lease_wait}\"\n"),
    );
    config.server.response_timeout = response_timeout;
    Proxy::with_admin(config).await
}

// ---------------------------------------------------------------------------------------------
// 1. A write the client stopped waiting for

/// Writer A's PUT reaches the upstream, which is slow to apply it; A's client goes away
/// (`abort`) or the proxy answers it 504. Writer B then sends the same If-Match. B must not pass
/// before A's outcome is known: it waits and gets 409 "update in progress"; once A's write has
/// applied, B's retry is stale. Before the fix B got 204 and A's late write overwrote B's
/// acknowledged update.
async fn writer_stops_waiting(abort: bool) {
    let mut up = GatedDoc::spawn().await;
    let proxy = proxy_for(&up.backend, Duration::from_millis(400), "300ms").await;
    let client = Client::http1();
    let tag = client
        .get(proxy.url("/doc"))
        .await
        .header("etag")
        .to_owned();

    let a = tokio::spawn({
        let (client, url, tag) = (client.clone(), proxy.url("/doc"), tag.clone());
        async move { client.send(put(&url, &tag, "a")).await }
    });
    up.wait_arrived().await;
    if abort {
        a.abort();
    } else {
        let answer = a.await.unwrap();
        let problem = answer.assert_problem(504, "upstream-timeout");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("may still apply"), "{detail}");
    }

    let b = client.send(put(&proxy.url("/doc"), &tag, "b")).await;
    b.assert_problem(409, "update-in-progress");
    assert_eq!(
        up.backend.hits(Method::PUT, "/doc"),
        1,
        "B never reached the upstream"
    );

    // A's write applies late; only then does its lease end, and the resource is unknown.
    up.release_one();
    assert_eq!(settled_state(&client, &proxy, "/doc").await, "unknown");
    assert_eq!(up.text(), "a");

    // B's retry revalidates, sees A's write, and is refused: nothing acknowledged was lost.
    let retry = client.send(put(&proxy.url("/doc"), &tag, "b")).await;
    retry.assert_problem(409, "stale-precondition");
    assert_eq!(up.backend.hits(Method::PUT, "/doc"), 1);
    assert_eq!(up.text(), "a");
}

#[tokio::test]
async fn a_write_whose_client_went_away_keeps_its_resource_fenced() {
    bounded(writer_stops_waiting(true)).await;
}

#[tokio::test]
async fn a_write_answered_504_keeps_its_resource_fenced_until_the_upstream_answers() {
    bounded(writer_stops_waiting(false)).await;
}

#[tokio::test]
async fn a_shutdown_waits_for_a_write_still_running_upstream() {
    bounded(async {
        let up = GatedDoc::spawn().await;
        let mut config = config(up.backend.addr);
        config.server.response_timeout = Duration::from_millis(200);
        config.server.body_read_timeout = Duration::from_millis(200);
        config.server.shutdown_timeout = Duration::from_millis(200);
        let mut proxy = Proxy::spawn(config).await;
        let client = Client::http1();
        let tag = client
            .get(proxy.url("/doc"))
            .await
            .header("etag")
            .to_owned();
        let answer = client.send(put(&proxy.url("/doc"), &tag, "a")).await;
        answer.assert_problem(504, "upstream-timeout");

        let serving = proxy.begin_shutdown();
        // The upstream has not answered the write: the proxy does not stop. (A wrong proxy
        // stops at once; a slow machine only makes this check weaker, never fail.)
        let early = tokio::time::timeout(Duration::from_millis(500), &mut *serving).await;
        assert!(early.is_err(), "stopped with a write in flight");
        up.release_one();
        serving.await.unwrap().unwrap();
        assert_eq!(up.text(), "a");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 2. A resource created by POST

#[tokio::test]
async fn a_resource_created_by_post_is_not_left_absent() {
    bounded(async {
        let demo = DemoHandle::spawn().await;
        let proxy = Proxy::spawn(config(demo.addr)).await;
        let client = Client::http1();

        // The next id the demo API assigns is 2: learned absent first.
        let missing = client.get(proxy.url("/items/2")).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        let created = client
            .json(Method::POST, proxy.url("/items"), &json!({"name": "first"}))
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
        assert_eq!(created.header("location"), "/items/2");

        // Create-only must now fail: the item exists.
        let replace = json_put(
            &proxy.url("/items/2"),
            ("if-none-match", "*"),
            json!({"name": "second"}),
        );
        client
            .send(replace)
            .await
            .assert_problem(409, "already-exists");
        let item = client.get(demo.url("/items/2")).await.json();
        assert_eq!(item["name"], "first", "the created item was not replaced");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 3. Two spellings of one resource

#[tokio::test]
async fn spellings_of_one_resource_share_its_key() {
    bounded(async {
        let demo = DemoHandle::spawn().await;
        let proxy = Proxy::spawn(config(demo.addr)).await;
        let client = Client::http1();
        for (n, alias) in [
            "/items/1?x=1",
            "//items/1",
            "/items/%31",
            "/items/./1",
            "/items/1/",
        ]
        .into_iter()
        .enumerate()
        {
            let stale = client
                .get(proxy.url("/items/1"))
                .await
                .header("etag")
                .to_owned();
            // A write through the alias, with the current tag of the canonical spelling.
            let via_alias = json_put(&proxy.url(alias), ("if-match", &stale), json!({"n": n}));
            let answer = client.send(via_alias).await;
            assert_eq!(answer.status, StatusCode::OK, "{alias}: {answer:?}");
            // The canonical spelling's old tag is now stale.
            let stale_write = json_put(
                &proxy.url("/items/1"),
                ("if-match", &stale),
                json!({"lost": alias}),
            );
            client
                .send(stale_write)
                .await
                .assert_problem(409, "stale-precondition");
            let item = client.get(demo.url("/items/1")).await.json();
            assert_eq!(
                item["n"], n,
                "{alias}: the write through the alias was kept"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn escaped_characters_a_framework_decodes_are_one_resource() {
    bounded(async {
        let demo = DemoHandle::spawn().await;
        let proxy = Proxy::spawn(config(demo.addr)).await;
        let client = Client::http1();
        let create = json_put(
            &proxy.url("/items/a@b.com"),
            ("if-none-match", "*"),
            json!({"n": 0}),
        );
        assert_eq!(client.send(create).await.status, StatusCode::CREATED);
        let stale = client
            .get(proxy.url("/items/a@b.com"))
            .await
            .header("etag")
            .to_owned();
        let encoded = json_put(
            &proxy.url("/items/a%40b.com"),
            ("if-match", &stale),
            json!({"n": 1}),
        );
        assert_eq!(client.send(encoded).await.status, StatusCode::OK);
        let raw = json_put(
            &proxy.url("/items/a@b.com"),
            ("if-match", &stale),
            json!({"n": "lost"}),
        );
        client
            .send(raw)
            .await
            .assert_problem(409, "stale-precondition");
        assert_eq!(client.get(demo.url("/items/a@b.com")).await.json()["n"], 1);
    })
    .await;
}

#[tokio::test]
async fn a_view_deleted_does_not_make_other_views_absent() {
    bounded(async {
        // An API that addresses records by query (`/api?id=5`), left at the default
        // `query = "variant"`: every id is a view of `/api`.
        let records = Arc::new(Mutex::new(HashMap::from([
            ("5".to_owned(), "five".to_owned()),
            ("6".to_owned(), "six".to_owned()),
        ])));
        let id_of = |req: &http::Request<Incoming>| {
            req.uri()
                .query()
                .unwrap_or_default()
                .trim_start_matches("id=")
                .to_owned()
        };
        let (get, put, delete) = (records.clone(), records.clone(), records.clone());
        let backend = Backend::new()
            .route_fn(Method::GET, "/api", move |req| {
                let record = get.lock().unwrap().get(&id_of(&req)).cloned();
                async move {
                    match record {
                        Some(text) => Reply::ok(text).response(),
                        None => Reply::status(404).response(),
                    }
                }
            })
            .route_fn(Method::PUT, "/api", move |req: http::Request<Incoming>| {
                let (records, id) = (put.clone(), id_of(&req));
                async move {
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let text = String::from_utf8_lossy(&body).into_owned();
                    records.lock().unwrap().insert(id, text);
                    Reply::status(204).response()
                }
            })
            .route_fn(Method::DELETE, "/api", move |req| {
                delete.lock().unwrap().remove(&id_of(&req));
                async move { Reply::status(204).response() }
            })
            .spawn()
            .await;
        let proxy = Proxy::spawn(config(backend.addr)).await;
        let client = Client::http1();
        let tag = client
            .get(proxy.url("/api?id=5"))
            .await
            .header("etag")
            .to_owned();
        let delete = request(Method::DELETE, &proxy.url("/api?id=5"))
            .header("if-match", &tag)
            .body(full(""))
            .unwrap();
        assert_eq!(client.send(delete).await.status, StatusCode::NO_CONTENT);
        // Create-only on another id: it exists, so it must not pass.
        let create = request(Method::PUT, &proxy.url("/api?id=6"))
            .header("if-none-match", "*")
            .body(full("replaced"))
            .unwrap();
        client
            .send(create)
            .await
            .assert_problem(409, "already-exists");
        assert_eq!(records.lock().unwrap()["6"], "six");
    })
    .await;
}

#[tokio::test]
async fn query_views_keep_their_own_validators_until_a_write() {
    bounded(async {
        let demo = DemoHandle::spawn().await;
        let proxy = Proxy::spawn(config(demo.addr)).await;
        let client = Client::http1();
        let plain = client
            .get(proxy.url("/items/1"))
            .await
            .header("etag")
            .to_owned();
        let view = client
            .get(proxy.url("/items/1?view=a"))
            .await
            .header("etag")
            .to_owned();
        // Same bytes, same tag: the demo API ignores the query.
        assert_eq!(plain, view);
        // A write through the view replaces every view's validator.
        let write = json_put(
            &proxy.url("/items/1?view=a"),
            ("if-match", &view),
            json!({"n": 1}),
        );
        assert_eq!(client.send(write).await.status, StatusCode::OK);
        for target in ["/items/1", "/items/1?view=a", "/items/1?view=b"] {
            let stale = json_put(&proxy.url(target), ("if-match", &plain), json!({"n": 2}));
            client
                .send(stale)
                .await
                .assert_problem(409, "stale-precondition");
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 4. Every step under a lease is bounded

#[tokio::test]
async fn a_revalidation_body_that_trickles_in_is_cut_off() {
    bounded(async {
        let gets = Arc::new(AtomicUsize::new(0));
        let counter = gets.clone();
        // The first GET sends its head and one byte, then nothing; later GETs answer at once.
        let backend = Backend::new()
            .route_fn(Method::GET, "/doc", move |_req| {
                let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    if !first {
                        return Reply::ok("v1").response();
                    }
                    let stream = futures_util::stream::unfold(0, |sent| async move {
                        if sent == 0 {
                            let frame: Result<_, Box<dyn std::error::Error + Send + Sync>> =
                                Ok(Frame::data(Bytes::from("v")));
                            Some((frame, 1))
                        } else {
                            std::future::pending().await
                        }
                    });
                    http::Response::new(StreamBody::new(stream).boxed())
                }
            })
            .route(Method::PUT, "/doc", Reply::status(204))
            .spawn()
            .await;
        let mut config = config(backend.addr);
        config.server.response_timeout = Duration::from_millis(300);
        let proxy = Proxy::with_admin(config).await;
        let client = Client::http1();

        // The key is unknown: the write revalidates, and the revalidation's body never ends.
        let first = client.send(put(&proxy.url("/doc"), "\"ifm-x\"", "a")).await;
        first.assert_problem(504, "upstream-timeout");
        assert_eq!(settled_state(&client, &proxy, "/doc").await, "unknown");
        // The key is not wedged: the next writer revalidates and is answered.
        let second = client.send(put(&proxy.url("/doc"), "\"ifm-x\"", "b")).await;
        second.assert_problem(409, "stale-precondition");
        assert_eq!(backend.hits(Method::PUT, "/doc"), 0);
    })
    .await;
}

#[tokio::test]
async fn a_write_method_in_lower_case_is_refused() {
    bounded(async {
        let backend = Backend::new().fallback(Reply::status(204)).spawn().await;
        let proxy = Proxy::spawn(config(backend.addr)).await;
        let client = Client::http1();
        for method in ["put", "Patch", "delete", "pOST"] {
            let req = request(
                Method::from_bytes(method.as_bytes()).unwrap(),
                &proxy.url("/doc"),
            )
            .header("if-match", "\"stale\"")
            .body(full("x"))
            .unwrap();
            let answer = client.send(req).await;
            let problem = answer.assert_problem(400, "bad-request");
            assert!(
                problem["detail"]
                    .as_str()
                    .unwrap()
                    .contains("case-sensitive")
            );
        }
        assert!(backend.seen().is_empty(), "nothing was forwarded");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// A storm of writers, a third of whom give up mid-write

#[tokio::test]
async fn writers_that_give_up_mid_write_lose_no_update() {
    let (keys, writers, cycles) = (2, 6, 20);
    tokio::time::timeout(Duration::from_secs(60), async {
        // Control: the same workload straight at the upstream loses updates.
        let (backend, docs) = slow_logs(keys).await;
        let direct = format!("http://{}", backend.addr);
        let direct = storm(&[direct], &docs, keys, writers, cycles, false, false).await;
        assert!(direct.lost > 0, "the workload can lose updates: {direct:?}");

        // Through the proxy: patient writers (the control), writers that give up on their slow
        // writes, and slow writes answered 504 by a short response timeout. None lost.
        for (give_up, response_timeout) in
            [(false, None), (true, None), (false, Some(SHORT_TIMEOUT_MS))]
        {
            let (backend, docs) = slow_logs(keys).await;
            let mut config = config(backend.addr);
            if let Some(ms) = response_timeout {
                config.server.response_timeout = Duration::from_millis(ms);
            }
            let proxy = Proxy::spawn(config).await;
            let through = storm(
                &[proxy.url("")],
                &docs,
                keys,
                writers,
                cycles,
                true,
                give_up,
            )
            .await;
            through.assert_none_lost(give_up, response_timeout);
        }
    })
    .await
    .expect("the storm finishes");
}
