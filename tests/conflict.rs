//! The 409 that resolves the conflict, end to end over loopback: the current version and the
//! fields in conflict (three-way with a remembered base, two-way without), the minimal body for
//! what is not JSON, `conflict_body = "current"` fetching it from the upstream, idempotent
//! re-creation, the opt-in merge (and a storm of disjoint writers on one hot key, with teeth),
//! and the body read that keeps the connection.

#[path = "support/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;
mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use ifmatch::storm::{self, StormArgs};
use serde_json::{Value, json};
use support::raw::{Conn, head};
use support::{
    Backend, Client, DemoHandle, Proxy, ProxyHandle, Reply, bounded, config_with, full, request,
};

/// The demo API, a proxy in front of it with `sections` (TOML before the route), a client.
async fn demo_behind(sections: &str) -> (DemoHandle, ProxyHandle, Client) {
    let demo = DemoHandle::spawn().await;
    let proxy = Proxy::spawn(config_with(demo.addr, sections)).await;
    (demo, proxy, Client::http1())
}

fn put(url: &str, precondition: (&str, &str), body: &Value) -> http::Request<support::TestBody> {
    request(Method::PUT, url)
        .header(precondition.0, precondition.1)
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap()
}

/// `body` PUT to `url` with `If-Match: if_match`, refused as stale: its problem.
async fn stale(client: &Client, url: &str, if_match: &str, body: &Value) -> Value {
    let answer = client.send(put(url, ("if-match", if_match), body)).await;
    answer.assert_problem(409, "stale-precondition")
}

/// Alice and Bob read item 1; Alice saves first. The tag they read, the one Alice's write got.
async fn alice_saved(proxy: &ProxyHandle, client: &Client) -> (String, String) {
    let read = client.get(proxy.url("/items/1")).await;
    assert_eq!(
        read.json(),
        json!({"id": "1", "name": "widget", "stock": 10})
    );
    let base = read.header("etag").to_owned();
    let alice = json!({"id": "1", "name": "widget", "stock": 9});
    let saved = client
        .send(put(&proxy.url("/items/1"), ("if-match", &base), &alice))
        .await;
    assert_eq!(saved.status, StatusCode::OK, "{saved:?}");
    (base, saved.header("etag").to_owned())
}

#[tokio::test]
async fn a_stale_json_write_gets_the_current_version_and_the_fields_in_conflict() {
    bounded(async {
        let (demo, proxy, client) = demo_behind("").await;
        let (base, current) = alice_saved(&proxy, &client).await;

        let bob = json!({"id": "1", "name": "gadget", "stock": 11});
        let problem = stale(&client, &proxy.url("/items/1"), &base, &bob).await;
        assert_eq!(problem["current_etag"], current);
        assert_eq!(
            problem["current"],
            json!({"id": "1", "name": "widget", "stock": 9})
        );
        assert_eq!(problem["comparison"], "three-way");
        assert_eq!(problem["base_etag"], base);
        assert_eq!(
            problem["conflicts"],
            json!([{"pointer": "/stock", "base": 10, "current": 9, "yours": 11}])
        );
        assert_eq!(problem["your_changes"], json!(["/name", "/stock"]));
        assert_eq!(problem["their_changes"], json!(["/stock"]));
        // Bob's write never reached the API.
        let direct = client.get(demo.url("/items/1")).await.json();
        assert_eq!(direct, json!({"id": "1", "name": "widget", "stock": 9}));

        // Without the version the client edited: where its body differs from the current one.
        let unknown = client
            .send(put(
                &proxy.url("/items/1"),
                ("if-match", "\"never-seen\""),
                &bob,
            ))
            .await;
        let problem = unknown.assert_problem(409, "stale-precondition");
        assert_eq!(problem["comparison"], "two-way");
        assert_eq!(problem["differences"], json!(["/name", "/stock"]));
        assert_eq!(problem["current"]["stock"], 9);
        assert!(problem.get("conflicts").is_none(), "{problem}");
    })
    .await;
}

#[tokio::test]
async fn minimal_where_the_body_is_not_json_or_the_route_says_so() {
    bounded(async {
        let backend = Backend::new()
            .route(
                Method::GET,
                "/note",
                Reply::ok("hello").header("content-type", "text/plain"),
            )
            .route(Method::PUT, "/note", Reply::ok("bye"))
            .spawn()
            .await;
        let proxy = Proxy::spawn(config_with(backend.addr, "")).await;
        let client = Client::http1();
        assert_eq!(client.get(proxy.url("/note")).await.status, StatusCode::OK);
        let text = request(Method::PUT, &proxy.url("/note"))
            .header("if-match", "\"old\"")
            .header("content-type", "text/plain")
            .body(full("bye"))
            .unwrap();
        let problem = client
            .send(text)
            .await
            .assert_problem(409, "stale-precondition");
        for member in ["current", "comparison", "conflicts", "differences"] {
            assert!(problem.get(member).is_none(), "{member}: {problem}");
        }
        assert_eq!(backend.hits(Method::PUT, "/note"), 0);

        // conflict_body = "minimal" keeps the 409 as it was, JSON or not.
        let (_demo, proxy, client) = demo_behind("[defaults]\nconflict_body = \"minimal\"").await;
        let (base, _) = alice_saved(&proxy, &client).await;
        let bob = json!({"id": "1", "name": "gadget", "stock": 10});
        let problem = stale(&client, &proxy.url("/items/1"), &base, &bob).await;
        assert!(problem.get("current").is_none(), "{problem}");
        assert!(problem.get("comparison").is_none(), "{problem}");
    })
    .await;
}

/// An upstream with its own strong ETag: the proxy does not hash (nor remember) its bodies.
async fn tagged_upstream() -> support::BackendHandle {
    Backend::new()
        .route(
            Method::GET,
            "/doc",
            Reply::ok(json!({"title": "a", "pages": 2}).to_string())
                .header("content-type", "application/json")
                .header("etag", "\"v2\""),
        )
        .route(Method::PUT, "/doc", Reply::ok("{}"))
        .spawn()
        .await
}

#[tokio::test]
async fn conflict_body_current_gets_the_current_version_from_the_upstream() {
    bounded(async {
        let backend = tagged_upstream().await;
        let remembered = Proxy::spawn(config_with(backend.addr, "")).await;
        let fetching = Proxy::spawn(config_with(
            backend.addr,
            "[defaults]\nconflict_body = \"current\"",
        ))
        .await;
        let client = Client::http1();
        let bob = json!({"title": "b", "pages": 2});
        for proxy in [&remembered, &fetching] {
            assert_eq!(client.get(proxy.url("/doc")).await.header("etag"), "\"v2\"");
        }
        assert_eq!(backend.hits(Method::GET, "/doc"), 2);

        // Not remembered (the upstream's tag, its body never hashed): the current ETag only.
        let problem = stale(&client, &remembered.url("/doc"), "\"v1\"", &bob).await;
        assert_eq!(problem["current_etag"], "\"v2\"");
        assert!(problem.get("current").is_none(), "{problem}");
        assert_eq!(backend.hits(Method::GET, "/doc"), 2);

        // "current": the proxy GETs it itself, under the write's lease.
        let problem = stale(&client, &fetching.url("/doc"), "\"v1\"", &bob).await;
        assert_eq!(backend.hits(Method::GET, "/doc"), 3, "the proxy's own GET");
        assert_eq!(problem["current"], json!({"title": "a", "pages": 2}));
        assert_eq!(problem["comparison"], "two-way");
        assert_eq!(problem["differences"], json!(["/title"]));
        assert_eq!(backend.hits(Method::PUT, "/doc"), 0);
        // Remembered now: the next stale write needs no GET.
        let again = client
            .send(put(&fetching.url("/doc"), ("if-match", "\"v1\""), &bob))
            .await;
        assert_eq!(
            again.assert_problem(409, "stale-precondition")["current"]["title"],
            "a"
        );
        assert_eq!(backend.hits(Method::GET, "/doc"), 3);
    })
    .await;
}

#[tokio::test]
async fn a_write_of_what_is_already_there_gets_200_without_a_write() {
    bounded(async {
        let body = json!({"id": "7", "name": "bolt"}).to_string();
        let backend = Backend::new()
            .route(
                Method::GET,
                "/items/7",
                Reply::ok(body.clone()).header("content-type", "application/json"),
            )
            .route(Method::PUT, "/items/7", Reply::ok(body.clone()))
            .spawn()
            .await;
        let proxy = Proxy::spawn(config_with(backend.addr, "")).await;
        let client = Client::http1();
        let tag = client
            .get(proxy.url("/items/7"))
            .await
            .header("etag")
            .to_owned();
        let same = |precondition: (&'static str, &'static str)| {
            request(Method::PUT, &proxy.url("/items/7"))
                .header(precondition.0, precondition.1)
                .header("content-type", "application/json")
                .body(full(body.clone()))
                .unwrap()
        };
        // Create-only, retried after the creation applied: 200, the current tag, no write.
        let created = client.send(same(("if-none-match", "*"))).await;
        assert_eq!(created.status, StatusCode::OK, "{created:?}");
        assert_eq!(created.header("etag"), tag);
        assert_eq!(created.body, body.as_bytes());
        // A retried update whose first try applied (its If-Match is now stale): the same.
        let retried = client.send(same(("if-match", "\"before\""))).await;
        assert_eq!(retried.status, StatusCode::OK, "{retried:?}");
        assert_eq!(retried.header("etag"), tag);
        assert_eq!(backend.hits(Method::PUT, "/items/7"), 0);
        // Other bytes still conflict.
        let other = request(Method::PUT, &proxy.url("/items/7"))
            .header("if-none-match", "*")
            .header("content-type", "application/json")
            .body(full(json!({"id": "7", "name": "nut"}).to_string()))
            .unwrap();
        let problem = client
            .send(other)
            .await
            .assert_problem(409, "already-exists");
        assert_eq!(problem["differences"], json!(["/name"]));
        assert_eq!(backend.hits(Method::PUT, "/items/7"), 0);
    })
    .await;
}

const MERGE: &str = "[defaults]\non_conflict = \"merge\"";

#[tokio::test]
async fn disjoint_changes_are_merged_and_overlapping_ones_refused() {
    bounded(async {
        let (demo, proxy, client) = demo_behind(MERGE).await;
        let (base, current) = alice_saved(&proxy, &client).await;

        // Bob renamed the item he read before Alice's save: not the field she changed.
        let bob = json!({"id": "1", "name": "gadget", "stock": 10});
        let merged = client
            .send(put(&proxy.url("/items/1"), ("if-match", &base), &bob))
            .await;
        assert_eq!(merged.status, StatusCode::OK, "{merged:?}");
        assert_eq!(
            merged.header("ifmatch-merged"),
            format!("base={base}, current={current}")
        );
        let both = json!({"id": "1", "name": "gadget", "stock": 9});
        assert_eq!(client.get(demo.url("/items/1")).await.json(), both);
        // Its ETag is the new version's, the one the next write needs.
        let next = merged.header("etag").to_owned();
        assert_ne!(next, current);
        assert_eq!(client.get(proxy.url("/items/1")).await.header("etag"), next);

        // Carol edited the same base's stock: it overlaps Alice's change, so 409.
        let carol = json!({"id": "1", "name": "widget", "stock": 12});
        let problem = stale(&client, &proxy.url("/items/1"), &base, &carol).await;
        assert_eq!(problem["conflicts"][0]["pointer"], "/stock");
        assert_eq!(problem["current"], both);
        assert_eq!(client.get(demo.url("/items/1")).await.json(), both);
    })
    .await;
}

/// Four writers, each on its own field of one key.
fn storm_args(target: String, prefix: &str, no_if_match: bool) -> StormArgs {
    let mut args = support::storm::counted(target, prefix, no_if_match, (4, 1));
    args.fields = 4;
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_writers_on_four_fields_of_one_key_merge_without_losing_any() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let (demo, merging, _) = demo_behind(MERGE).await;
        let plain = Proxy::spawn(config_with(demo.addr, "")).await;
        let run = |args| storm::run(args, std::future::pending());

        let merged = run(storm_args(merging.url("/items"), "merged-", false))
            .await
            .expect("storm through the merging proxy");
        assert_eq!(merged.per_key.len(), 4, "a row per field: {merged:?}");
        for field in &merged.per_key {
            assert_eq!(field.lost, 0, "{field:?}");
            assert!(field.commits > 0, "{field:?}");
        }
        // Two writers per field: their changes overlap (both write the count they read plus
        // one), so the merge must refuse them, and nothing is lost.
        let mut shared = storm_args(merging.url("/items"), "shared-", false);
        shared.writers = 8;
        let shared = run(shared).await.expect("storm, two writers per field");
        assert_eq!(shared.lost_updates, 0, "{shared:?}");
        assert!(
            shared.conflicts.total > 0,
            "same-field writers conflict: {shared:?}"
        );

        let without = run(storm_args(plain.url("/items"), "plain-", false))
            .await
            .expect("storm through the proxy without merge");
        assert_eq!(without.lost_updates, 0, "{without:?}");
        assert!(
            merged.conflicts.total * 10 <= without.conflicts.total,
            "merge: {} conflicts, without: {}",
            merged.conflicts.total,
            without.conflicts.total
        );

        // The teeth: the same writers straight at the racy API, unconditionally, lose updates.
        let straight = run(storm_args(demo.url("/items"), "straight-", true))
            .await
            .expect("storm straight");
        assert!(straight.lost_updates > 0, "{straight:?}");
    })
    .await
    .expect("storms finished in time");
}

#[tokio::test]
async fn reading_a_stale_writes_body_keeps_the_connection() {
    bounded(async {
        let (_demo, proxy, client) = demo_behind("[defaults]\nmax_hash_bytes = 256").await;
        let (base, _) = alice_saved(&proxy, &client).await;
        let mut conn = Conn::open(proxy.addr).await;
        let bob = json!({"id": "1", "name": "gadget", "stock": 11}).to_string();
        let headers = [
            ("if-match", base.as_str()),
            ("content-type", "application/json"),
        ];
        // Head and body in separate writes, as many clients send them.
        let head_only = head("PUT", "/items/1", &headers, bob.len());
        for _ in 0..3 {
            let refused = conn
                .exchange(&head_only, bob.as_bytes(), Duration::from_millis(1))
                .await
                .expect("409");
            assert_eq!(refused.status, 409);
            assert_eq!(refused.json()["comparison"], "three-way");
            assert!(!refused.closes());
        }
        // Larger than the route's hash limit: not read, the minimal 409, and the connection
        // is still reused (the discard layer reads the rest).
        let large = format!("{{\"id\":\"1\",\"pad\":\"{}\"}}", "x".repeat(1000));
        let refused = conn
            .exchange(
                &head("PUT", "/items/1", &headers, large.len()),
                large.as_bytes(),
                Duration::ZERO,
            )
            .await
            .expect("409");
        assert_eq!(refused.status, 409);
        assert!(refused.json().get("comparison").is_none());
        assert!(!refused.closes());
        let read = conn
            .exchange(&head("GET", "/items/1", &[], 0), b"", Duration::ZERO)
            .await
            .expect("200 on the same connection");
        assert_eq!(read.status, 200);

        // A body that stops arriving: the minimal 409 all the same, and the connection closes.
        let mut conn = Conn::open(proxy.addr).await;
        let half = &bob.as_bytes()[..bob.len() / 2];
        conn.send(&head_only, half, Duration::ZERO)
            .await
            .expect("send");
        let refused = conn.response().await.expect("409 without the whole body");
        assert_eq!(refused.status, 409);
        assert!(refused.json().get("comparison").is_none());
        assert!(
            refused.json().get("current").is_some(),
            "the current version, still"
        );
        assert!(refused.closes());
    })
    .await;
}

#[tokio::test]
async fn a_version_is_shown_only_to_the_credentials_it_was_served_to() {
    bounded(async {
        let (_demo, proxy, client) = demo_behind(MERGE).await;
        let read = request(Method::GET, &proxy.url("/items/1"))
            .header("authorization", "Bearer alice")
            .body(full(""))
            .unwrap();
        let base = client.send(read).await.header("etag").to_owned();
        let stale = |who: &str| {
            request(Method::PUT, &proxy.url("/items/1"))
                .header("if-match", "\"never-seen\"")
                .header("authorization", format!("Bearer {who}"))
                .header("content-type", "application/json")
                .body(full(
                    json!({"id": "1", "name": "x", "stock": 10}).to_string(),
                ))
                .unwrap()
        };
        // Mallory's credentials were never shown the item: the current ETag only.
        let problem = client
            .send(stale("mallory"))
            .await
            .assert_problem(409, "stale-precondition");
        assert_eq!(problem["current_etag"], base);
        assert!(problem.get("current").is_none(), "{problem}");
        // Alice's were.
        let problem = client
            .send(stale("alice"))
            .await
            .assert_problem(409, "stale-precondition");
        assert_eq!(problem["current"]["name"], "widget");
    })
    .await;
}

/// A document store that keeps the bytes it is sent, as many APIs do (no re-encoding).
async fn byte_store(
    initial: &str,
) -> (
    support::BackendHandle,
    std::sync::Arc<std::sync::Mutex<bytes::Bytes>>,
) {
    use http_body_util::BodyExt;
    let doc = std::sync::Arc::new(std::sync::Mutex::new(bytes::Bytes::from(
        initial.to_owned(),
    )));
    let (get, put) = (doc.clone(), doc.clone());
    let backend = Backend::new()
        .route_fn(Method::GET, "/doc", move |_req| {
            let body = get.lock().unwrap().clone();
            async move {
                Reply::ok(body)
                    .header("content-type", "application/json")
                    .response()
            }
        })
        .route_fn(Method::PUT, "/doc", move |req| {
            let put = put.clone();
            async move {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                *put.lock().unwrap() = body.clone();
                Reply::ok(body)
                    .header("content-type", "application/json")
                    .response()
            }
        })
        .spawn()
        .await;
    (backend, doc)
}

#[tokio::test]
async fn a_merge_keeps_numbers_nobody_changed_exactly_as_they_were() {
    bounded(async {
        let big = r#"{"id":12345678901234567890123,"price":0.10000000000000000000001,"name":"widget","stock":10}"#;
        let (backend, doc) = byte_store(big).await;
        let proxy = Proxy::spawn(config_with(backend.addr, MERGE)).await;
        let client = Client::http1();
        let base = client.get(proxy.url("/doc")).await.header("etag").to_owned();
        let alice = big.replace("\"stock\":10", "\"stock\":9");
        let saved = client
            .send(
                request(Method::PUT, &proxy.url("/doc"))
                    .header("if-match", &base)
                    .header("content-type", "application/json")
                    .body(full(alice))
                    .unwrap(),
            )
            .await;
        assert_eq!(saved.status, StatusCode::OK, "{saved:?}");
        let bob = big.replace("\"widget\"", "\"gadget\"");
        let merged = client
            .send(
                request(Method::PUT, &proxy.url("/doc"))
                    .header("if-match", &base)
                    .header("content-type", "application/json")
                    .body(full(bob))
                    .unwrap(),
            )
            .await;
        assert_eq!(merged.status, StatusCode::OK, "{merged:?}");
        assert!(!merged.header("ifmatch-merged").is_empty());
        let stored = String::from_utf8(doc.lock().unwrap().to_vec()).unwrap();
        assert!(stored.contains("\"gadget\"") && stored.contains("\"stock\":9"), "{stored}");
        assert!(
            stored.contains("12345678901234567890123") && stored.contains("0.10000000000000000000001"),
            "the merge rewrote numbers nobody changed: {stored}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_merge_never_applies_a_write_to_another_representation_of_the_resource() {
    use http_body_util::BodyExt;
    bounded(async {
        // One item, served as v2 (`title`, `qty`) or as plain JSON (`name`, `stock`); written
        // as v2.
        let doc = std::sync::Arc::new(std::sync::Mutex::new(json!({"title": "widget", "qty": 10})));
        let (get, put) = (doc.clone(), doc.clone());
        let backend = Backend::new()
            .route_fn(Method::GET, "/doc", move |req| {
                let v2 = req
                    .headers()
                    .get("accept")
                    .is_some_and(|a| a.to_str().unwrap().contains("v2"));
                let item = get.lock().unwrap().clone();
                async move {
                    if v2 {
                        Reply::ok(item.to_string())
                            .header("content-type", "application/vnd.v2+json")
                            .response()
                    } else {
                        let plain = json!({"name": item["title"], "stock": item["qty"]});
                        Reply::ok(plain.to_string())
                            .header("content-type", "application/json")
                            .response()
                    }
                }
            })
            .route_fn(Method::PUT, "/doc", move |req| {
                let put = put.clone();
                async move {
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    *put.lock().unwrap() = serde_json::from_slice(&body).unwrap();
                    Reply::ok(body)
                        .header("content-type", "application/vnd.v2+json")
                        .response()
                }
            })
            .spawn()
            .await;
        let proxy = Proxy::spawn(config_with(backend.addr, MERGE)).await;
        let client = Client::http1();
        let v2_put = |if_match: &str, body: Value| {
            request(Method::PUT, &proxy.url("/doc"))
                .header("if-match", if_match)
                .header("content-type", "application/vnd.v2+json")
                .body(full(body.to_string()))
                .unwrap()
        };
        let read = request(Method::GET, &proxy.url("/doc"))
            .header("accept", "application/vnd.v2+json")
            .body(full(""))
            .unwrap();
        let base = client.send(read).await.header("etag").to_owned();
        let alice = client
            .send(v2_put(&base, json!({"title": "widget", "qty": 9})))
            .await;
        assert_eq!(alice.status, StatusCode::OK, "{alice:?}");
        // Someone reads the plain representation: the one the guard now knows.
        assert_eq!(
            client.get(proxy.url("/doc")).await.json(),
            json!({"name": "widget", "stock": 9})
        );
        // Bob adds a note to the v2 document he read before Alice's write.
        let bob = client
            .send(v2_put(
                &base,
                json!({"title": "widget", "qty": 10, "note": "x"}),
            ))
            .await;
        let stored = doc.lock().unwrap().clone();
        assert!(
            bob.status == StatusCode::CONFLICT
                || stored == json!({"title": "widget", "qty": 9, "note": "x"}),
            "{bob:?}: the upstream now holds {stored}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_after_two_gets_under_the_lease_never_outlives_the_lease() {
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    bounded(async {
        let redis = redis_server::RedisServer::start();
        // An upstream with strong ETags that does not check If-Match itself.
        let state = Arc::new(Mutex::new((0u64, json!({"a": 1, "b": 1}))));
        let slow_gets = Arc::new(AtomicUsize::new(0));
        let (get, store, slow) = (state.clone(), state.clone(), slow_gets.clone());
        let backend = Backend::new()
            .route_fn(Method::GET, "/doc", move |_req| {
                let (get, slow) = (get.clone(), slow.clone());
                async move {
                    let was_slow = slow
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    if was_slow {
                        tokio::time::sleep(Duration::from_millis(1300)).await;
                    }
                    let (n, doc) = get.lock().unwrap().clone();
                    Reply::ok(doc.to_string())
                        .header("content-type", "application/json")
                        .header("etag", &format!("\"v{n}\""))
                        .response()
                }
            })
            .route_fn(Method::PUT, "/doc", move |req| {
                let store = store.clone();
                async move {
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let doc: Value = serde_json::from_slice(&body).unwrap();
                    if doc["b"] == 2 {
                        tokio::time::sleep(Duration::from_millis(1400)).await;
                    }
                    let mut held = store.lock().unwrap();
                    *held = (held.0 + 1, doc);
                    Reply::ok(held.1.to_string())
                        .header("content-type", "application/json")
                        .header("etag", &format!("\"v{}\"", held.0))
                        .response()
                }
            })
            .spawn()
            .await;
        let sections = format!(
            "[server]\nresponse_timeout = \"1500ms\"\nwrite_outcome_timeout = \"1500ms\"\nbody_read_timeout = \"1s\"\n\
             [store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout = \"50ms\"\nttl = \"1s\"\n\
             lease_ttl = \"3200ms\"\n\
             [defaults]\non_conflict = \"merge\"\nconflict_body = \"current\"",
            redis.url()
        );
        let proxy = Proxy::spawn(config_with(backend.addr, &sections)).await;
        let client = Client::http1();
        let url = proxy.url("/doc");
        assert_eq!(client.get(&url).await.header("etag"), "\"v0\"");
        // A stale write: the conflict's GET makes the proxy remember v0.
        let problem = stale(&client, &url, "\"x\"", &json!({"a": 1, "b": 9})).await;
        assert_eq!(problem["current"], json!({"a": 1, "b": 1}));
        // A write that bypasses the proxy makes v1; the proxy's entry expires.
        let direct = client
            .send(put(&backend_url(&backend), ("if-match", "\"v0\""), &json!({"a": 2, "b": 1})))
            .await;
        assert_eq!(direct.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(1300)).await;

        // A edited v0's b: a revalidation and the conflict's GET, each slow, then its merge.
        slow_gets.store(2, Ordering::SeqCst);
        let a = {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                client
                    .send(put(&url, ("if-match", "\"v0\""), &json!({"a": 1, "b": 2})))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(2800)).await;
        // B edited v1's a.
        let b = client
            .send(put(&url, ("if-match", "\"v1\""), &json!({"a": 3, "b": 1})))
            .await;
        let a = a.await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (_, stored) = state.lock().unwrap().clone();
        assert!(
            !b.status.is_success() || stored["a"] == 3,
            "B's write was acknowledged ({}) and lost (A: {}): the upstream holds {stored}",
            b.status,
            a.status
        );
    })
    .await;
}

fn backend_url(backend: &support::BackendHandle) -> String {
    format!("http://{}/doc", backend.addr)
}

/// An API that authenticates with an API-key header (here `X-Api-Key`) on a route without
/// `key_headers`: one key's version is never shown to another key's stale write.
#[tokio::test]
async fn a_version_is_not_shown_to_another_api_key() {
    bounded(async {
        let (_demo, proxy, client) = demo_behind("").await;
        let read = request(Method::GET, &proxy.url("/items/1"))
            .header("x-api-key", "alice")
            .body(full(""))
            .unwrap();
        assert_eq!(client.send(read).await.status, StatusCode::OK);
        let stale = request(Method::PUT, &proxy.url("/items/1"))
            .header("if-match", "\"never-seen\"")
            .header("x-api-key", "mallory")
            .header("content-type", "application/json")
            .body(full(json!({"id": "1"}).to_string()))
            .unwrap();
        let problem = client
            .send(stale)
            .await
            .assert_problem(409, "stale-precondition");
        assert!(problem.get("current").is_none(), "{problem}");
    })
    .await;
}
