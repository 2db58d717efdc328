//! `Idempotency-Key` through the proxy (draft-ietf-httpapi-idempotency-key-header-07): a retried
//! POST is answered from the record and never applied twice, on the memory store and across
//! two replicas on one Redis. Every test counts what the upstream saw.

#[allow(dead_code)]
#[path = "support/redis_server.rs"]
mod redis_server;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use ifmatch::config::Config;
use redis_server::RedisServer;
use serde_json::json;
use support::{
    Answer, Backend, BackendHandle, Client, DemoHandle, Proxy, TestBody, bounded, config_toml,
    config_with, full, request,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// The route "api" to `upstream`, with `idempotency = mode` and `more` policy keys.
fn idempotent(upstream: SocketAddr, mode: &str, more: &str) -> Config {
    config_with(
        upstream,
        &format!("[defaults]\nidempotency = \"{mode}\"\n{more}\n"),
    )
}

/// `POST url` with `key` (as sent: already an sf-string, or garbage) and `body`.
async fn post(client: &Client, url: &str, key: Option<&str>, body: &str) -> Answer {
    let mut req = request(Method::POST, url).header("content-type", "application/json");
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    client
        .send(req.body(full(body.to_owned())).expect("request"))
        .await
}

/// A backend whose `POST /things` answers with `answers[n]` on its n-th call (the last one
/// from then on), counting calls.
async fn things(answers: Vec<(u16, &'static str)>) -> (BackendHandle, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let answers = Arc::new(answers);
    let backend = Backend::new()
        .route_fn(Method::POST, "/things", move |_req| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            let (status, body) = answers[n.min(answers.len() - 1)];
            async move { thing(status, body, n + 1) }
        })
        .spawn()
        .await;
    (backend, calls)
}

fn thing(status: u16, body: &str, n: usize) -> Response<TestBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("location", format!("/things/{n}"))
        .body(full(body.to_owned()))
        .expect("response")
}

/// How many items the demo API holds (read straight from it).
async fn items(client: &Client, demo: &DemoHandle) -> usize {
    let list = client.get(demo.url("/items")).await;
    assert_eq!(list.status, StatusCode::OK, "{list:?}");
    list.json().as_array().expect("a list").len()
}

/// POSTs with `key` until the answer is not a 409 in flight (bounded); the final answer.
async fn post_until_done(client: &Client, url: &str, key: &str, body: &str) -> Answer {
    for _ in 0..200 {
        let answer = post(client, url, Some(key), body).await;
        if answer.status != StatusCode::CONFLICT {
            return answer;
        }
        answer.assert_problem(409, "idempotency-in-flight");
        assert_eq!(answer.header("retry-after"), "1");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the first request with the key never completed");
}

fn redis_replica_config(demo: &DemoHandle, redis: &RedisServer) -> Config {
    config_toml(&format!(
        r#"
        [store]
        kind = "redis"
        url = "{}"
        timeout = "5s"

        [defaults]
        idempotency = "optional"

        [[routes]]
        name = "api"
        upstream = "http://{}"
        "#,
        redis.url(),
        demo.addr
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_posts_with_one_key_through_two_replicas_create_one_item() {
    let redis = RedisServer::start();
    let demo = DemoHandle::spawn().await;
    let client = Client::http1();
    let body = json!({ "name": "gadget", "stock": 1 }).to_string();

    // Teeth: the same 16 POSTs straight at the API create 16 items.
    let before = items(&client, &demo).await;
    let straight: Vec<_> = (0..16)
        .map(|_| {
            let (client, url, body) = (client.clone(), demo.url("/items"), body.clone());
            tokio::spawn(async move { post(&client, &url, Some("\"job-42\""), &body).await })
        })
        .collect();
    for task in straight {
        assert_eq!(task.await.expect("task").status, StatusCode::CREATED);
    }
    assert_eq!(items(&client, &demo).await, before + 16);

    let a = Proxy::spawn(redis_replica_config(&demo, &redis)).await;
    let b = Proxy::spawn(redis_replica_config(&demo, &redis)).await;
    let before = items(&client, &demo).await;
    let through: Vec<_> = (0..16)
        .map(|i| {
            let replica = if i % 2 == 0 { &a } else { &b };
            let (client, url, body) = (client.clone(), replica.url("/items"), body.clone());
            tokio::spawn(async move {
                let first = post(&client, &url, Some("\"job-42\""), &body).await;
                let in_flight = first.status == StatusCode::CONFLICT;
                let last = post_until_done(&client, &url, "\"job-42\"", &body).await;
                (in_flight, last)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in through {
        answers.push(bounded(task).await.expect("task"));
    }
    assert_eq!(
        items(&client, &demo).await,
        before + 1,
        "16 POSTs with one key, over two replicas on one Redis, create exactly one item"
    );
    let location = answers[0].1.header("location").to_owned();
    let mut replays = 0;
    for (_, answer) in &answers {
        assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
        assert_eq!(
            answer.header("location"),
            location,
            "every answer is the first one"
        );
        assert_eq!(answer.body, answers[0].1.body);
        replays += usize::from(answer.headers.contains_key("idempotency-replayed"));
    }
    assert!(replays >= 15, "15 of 16 were replays: {replays}");
}

#[tokio::test]
async fn a_retry_after_a_500_is_forwarded_and_its_answer_is_the_one_recorded() {
    let (backend, calls) = things(vec![(500, "{\"error\":\"boom\"}"), (201, "{\"id\":2}")]).await;
    let proxy = Proxy::spawn(idempotent(backend.addr, "optional", "")).await;
    let client = Client::http1();
    let url = proxy.url("/things");
    let first = post(&client, &url, Some("\"k1\""), "{}").await;
    assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
    let second = post(&client, &url, Some("\"k1\""), "{}").await;
    assert_eq!(
        second.status,
        StatusCode::CREATED,
        "the retry was forwarded"
    );
    assert!(!second.headers.contains_key("idempotency-replayed"));
    let third = post(&client, &url, Some("\"k1\""), "{}").await;
    assert_eq!(third.status, StatusCode::CREATED);
    assert_eq!(third.header("idempotency-replayed"), "true");
    assert_eq!(third.header("location"), "/things/2");
    assert_eq!(third.body, second.body);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the replay never reached the upstream"
    );
}

/// A backend whose `POST /things` answers 201 only once the gate is opened (per call).
async fn gated() -> (BackendHandle, Arc<Notify>, Arc<AtomicUsize>) {
    let gate = Arc::new(Notify::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let (opened, counted) = (Arc::clone(&gate), Arc::clone(&calls));
    let backend = Backend::new()
        .route_fn(Method::POST, "/things", move |_req| {
            let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
            let gate = Arc::clone(&opened);
            async move {
                gate.notified().await;
                thing(201, "{\"id\":1}", n)
            }
        })
        .spawn()
        .await;
    (backend, gate, calls)
}

/// An upstream that drops its first connection after reading the request head, then answers
/// every later one `201` with the attempt's number.
async fn drops_first_connection() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => head.extend_from_slice(&buf[..read]),
                    }
                }
                if n == 1 {
                    return; // dropped mid-request: no answer
                }
                let body = format!("{{\"attempt\":{n}}}");
                let answer = format!(
                    "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\nlocation: \
                     /things/{n}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    (addr, connections)
}

#[tokio::test]
async fn a_retry_after_the_upstream_dropped_mid_request_is_forwarded_then_replayed() {
    let (upstream, connections) = drops_first_connection().await;
    let proxy = Proxy::spawn(idempotent(upstream, "optional", "")).await;
    let client = Client::http1();
    let url = proxy.url("/things");
    let first = post(&client, &url, Some("\"k2\""), "{}").await;
    first.assert_problem(502, "upstream-unavailable");
    let second = post(&client, &url, Some("\"k2\""), "{}").await;
    assert_eq!(second.status, StatusCode::CREATED, "{second:?}");
    assert_eq!(second.json()["attempt"], 2);
    let third = post(&client, &url, Some("\"k2\""), "{}").await;
    assert_eq!(third.header("idempotency-replayed"), "true");
    assert_eq!(
        third.json()["attempt"],
        2,
        "the second attempt's answer was recorded"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn bad_keys_and_reuse_are_refused_before_the_upstream() {
    let (backend, calls) = things(vec![(201, "{\"id\":1}")]).await;
    let proxy = Proxy::spawn(idempotent(backend.addr, "required", "")).await;
    let client = Client::http1();
    let url = proxy.url("/things");

    let missing = post(&client, &url, None, "{}").await;
    let problem = missing.assert_problem(400, "idempotency-key-missing");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key")
    );
    for malformed in ["k3", "\"\"", "\"a\\b\"", "\"k\", \"l\""] {
        let answer = post(&client, &url, Some(malformed), "{}").await;
        answer.assert_problem(400, "idempotency-key-malformed");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    let first = post(&client, &url, Some("\"k3\""), "{\"a\":1}").await;
    assert_eq!(first.status, StatusCode::CREATED);
    let other_body = post(&client, &url, Some("\"k3\""), "{\"a\":2}").await;
    other_body.assert_problem(422, "idempotency-key-reused");
    let other_target = post(
        &client,
        &proxy.url("/things?x=1"),
        Some("\"k3\""),
        "{\"a\":1}",
    )
    .await;
    other_target.assert_problem(422, "idempotency-key-reused");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Other methods are not the route's idempotency methods: they pass as usual.
    let get = client.get(proxy.url("/things")).await;
    assert_eq!(get.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_retry_while_the_first_is_in_flight_gets_409_then_the_replay() {
    let (backend, gate, calls) = gated().await;
    let proxy = Proxy::spawn(idempotent(backend.addr, "optional", "")).await;
    let client = Client::http1();
    let url = proxy.url("/things");
    let first = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move { post(&client, &url, Some("\"k4\""), "{}").await }
    });
    backend.wait_for_requests(1).await;
    let during = post(&client, &url, Some("\"k4\""), "{}").await;
    during.assert_problem(409, "idempotency-in-flight");
    assert_eq!(during.header("retry-after"), "1");
    gate.notify_one();
    let first = first.await.expect("first");
    assert_eq!(first.status, StatusCode::CREATED);
    let after = post(&client, &url, Some("\"k4\""), "{}").await;
    assert_eq!(after.header("idempotency-replayed"), "true");
    assert_eq!(after.body, first.body);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_client_that_goes_away_after_forwarding_leaves_the_key_taken_until_the_answer() {
    let (backend, gate, calls) = gated().await;
    let proxy = Proxy::spawn(idempotent(backend.addr, "optional", "")).await;
    let url = proxy.url("/things");
    let gone = tokio::spawn({
        let url = url.clone();
        async move { post(&Client::http1(), &url, Some("\"k5\""), "{}").await }
    });
    backend.wait_for_requests(1).await;
    gone.abort();
    let _ = gone.await;
    let client = Client::http1();
    // The client is gone, the upstream has not answered: a retry must not run beside it.
    let during = post(&client, &url, Some("\"k5\""), "{}").await;
    during.assert_problem(409, "idempotency-in-flight");
    gate.notify_one();
    let replayed = post_until_done(&client, &url, "\"k5\"", "{}").await;
    assert_eq!(replayed.status, StatusCode::CREATED, "{replayed:?}");
    assert_eq!(replayed.header("idempotency-replayed"), "true");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "applied once");
}

#[tokio::test]
async fn a_short_retention_expires_and_the_key_can_be_used_again() {
    let (backend, calls) = things(vec![(201, "{\"id\":1}")]).await;
    let config = idempotent(backend.addr, "optional", "idempotency_retention = \"1s\"");
    let proxy = Proxy::spawn(config).await;
    let client = Client::http1();
    let url = proxy.url("/things");
    assert_eq!(
        post(&client, &url, Some("\"k6\""), "{}").await.status,
        StatusCode::CREATED
    );
    let replay = post(&client, &url, Some("\"k6\""), "{}").await;
    assert_eq!(replay.header("idempotency-replayed"), "true");
    // Bounded: each attempt is a replay until the record expires, then it is forwarded.
    bounded(async {
        while calls.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            post(&client, &url, Some("\"k6\""), "{}").await;
        }
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn large_bodies_are_refused_or_streamed_and_never_applied_twice() {
    let big: &'static str = Box::leak("x".repeat(4096).into_boxed_str());
    let (backend, calls) = things(vec![(201, big)]).await;
    let more = "idempotency_max_request_bytes = 1024\nidempotency_max_response_bytes = 1024";
    let proxy = Proxy::spawn(idempotent(backend.addr, "optional", more)).await;
    let client = Client::http1();
    let url = proxy.url("/things");
    // A request body over the bound: 413, nothing taken or forwarded.
    let too_large = post(&client, &url, Some("\"k7\""), &"y".repeat(2048)).await;
    too_large.assert_problem(413, "body-too-large");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // A response over the bound streams through whole, and cannot be replayed.
    let first = post(&client, &url, Some("\"k7\""), "{}").await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.body, Bytes::from_static(big.as_bytes()));
    let retry = post(&client, &url, Some("\"k7\""), "{}").await;
    retry.assert_problem(409, "idempotency-not-replayable");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_memory_records_stay_bounded_under_a_flood_of_keys() {
    let (backend, calls) = things(vec![(201, "{\"id\":1}")]).await;
    let config = config_with(
        backend.addr,
        "[store]\nidempotency_max_records = 100\n[defaults]\nidempotency = \"optional\"\n",
    );
    let proxy = Proxy::with_admin(config).await;
    let client = Client::http1();
    let url = proxy.url("/things");
    for n in 0..1000 {
        let answer = post(&client, &url, Some(&format!("\"flood-{n}\"")), "{}").await;
        assert_eq!(answer.status, StatusCode::CREATED);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1000);
    let metrics = client.get(proxy.admin_url("/metrics")).await;
    let text = String::from_utf8_lossy(&metrics.body);
    let held = support::sample(&text, "ifmatch_idempotency_records", &[]).expect("gauge");
    assert!(held <= 100.0, "{held}");
    let evicted = support::sample(&text, "ifmatch_idempotency_evictions_total", &[]).unwrap();
    assert!(evicted >= 900.0, "{evicted}");
    // The newest keys are still replayed.
    let newest = post(&client, &url, Some("\"flood-999\""), "{}").await;
    assert_eq!(newest.header("idempotency-replayed"), "true");
    for name in [
        "ifmatch_idempotency_keys_taken_total",
        "ifmatch_idempotency_replays_total",
    ] {
        assert!(
            support::sample(&text, name, &["route=\"api\""]).is_some(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn the_admin_api_shows_a_keys_record() {
    let (backend, _calls) = things(vec![(201, "{\"id\":1}")]).await;
    let proxy = Proxy::with_admin(idempotent(backend.addr, "optional", "")).await;
    let client = Client::http1();
    let look = |key: &str| proxy.admin_url(&format!("/admin/idempotency?route=api&key={key}"));
    let none = client.get(look("k8")).await;
    assert_eq!(none.json()["state"], "none", "{none:?}");
    post(&client, &proxy.url("/things"), Some("\"k8\""), "{}").await;
    let done = client.get(look("k8")).await;
    let record = done.json();
    assert_eq!(record["state"], "completed", "{record}");
    assert_eq!(record["status"], 201);
    assert_eq!(record["replayable"], true);
    let bad = client
        .get(proxy.admin_url("/admin/idempotency?route=api"))
        .await;
    bad.assert_problem(400, "bad-query");
}

#[tokio::test]
async fn records_are_lost_on_a_memory_restart_and_survive_on_redis() {
    // Memory: documented loss. A restarted proxy forwards the retry again.
    let (backend, calls) = things(vec![(201, "{\"id\":1}")]).await;
    let proxy = Proxy::spawn(idempotent(backend.addr, "optional", "")).await;
    let client = Client::http1();
    post(&client, &proxy.url("/things"), Some("\"k9\""), "{}").await;
    drop(proxy);
    let restarted = Proxy::spawn(idempotent(backend.addr, "optional", "")).await;
    let retry = post(&client, &restarted.url("/things"), Some("\"k9\""), "{}").await;
    assert!(!retry.headers.contains_key("idempotency-replayed"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Redis: the record outlives the proxy.
    let redis = RedisServer::start();
    let (backend, calls) = things(vec![(201, "{\"id\":1}")]).await;
    let on_redis = || {
        config_toml(&format!(
            "[store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout = \"5s\"\n[defaults]\n\
             idempotency = \"optional\"\n[[routes]]\nname = \"api\"\nupstream = \"http://{}\"\n",
            redis.url(),
            backend.addr
        ))
    };
    let proxy = Proxy::spawn(on_redis()).await;
    let first = post(&client, &proxy.url("/things"), Some("\"k9\""), "{}").await;
    drop(proxy);
    let restarted = Proxy::spawn(on_redis()).await;
    let retry = post(&client, &restarted.url("/things"), Some("\"k9\""), "{}").await;
    assert_eq!(retry.header("idempotency-replayed"), "true");
    assert_eq!(retry.body, first.body);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn redis_down_refuses_idempotent_requests_without_forwarding_them() {
    let mut redis = RedisServer::start();
    let (backend, calls) = things(vec![(201, "{\"id\":1}")]).await;
    let config = config_toml(&format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout = \"300ms\"\n[defaults]\n\
         idempotency = \"optional\"\n[[routes]]\nname = \"api\"\nupstream = \"http://{}\"\n",
        redis.url(),
        backend.addr
    ));
    let proxy = Proxy::spawn(config).await;
    redis.stop();
    let client = Client::http1();
    let refused = post(&client, &proxy.url("/things"), Some("\"k10\""), "{}").await;
    refused.assert_problem(503, "store-unavailable");
    assert_eq!(refused.header("retry-after"), "1");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_504_holds_the_key_so_no_retry_runs_beside_a_write_that_may_still_apply() {
    // The upstream never answers: the client gets 504 at response_timeout, and the write may
    // still apply, so a retry is not forwarded (409 in flight) while the key is held.
    let backend = Backend::new().hang(Method::POST, "/things").spawn().await;
    let config = idempotent(
        backend.addr,
        "optional",
        "[server]\nresponse_timeout = \"300ms\"\nbody_read_timeout = \"200ms\"\n",
    );
    let proxy = Proxy::spawn(config).await;
    let client = Client::http1();
    let url = proxy.url("/things");
    let first = post(&client, &url, Some("\"k11\""), "{}").await;
    first.assert_problem(504, "upstream-timeout");
    let retry = post(&client, &url, Some("\"k11\""), "{}").await;
    retry.assert_problem(409, "idempotency-in-flight");
    assert_eq!(backend.hits(Method::POST, "/things"), 1);
}

#[tokio::test]
async fn a_trickling_body_gets_408_and_takes_no_key() {
    let (backend, calls) = things(vec![(201, "{\"id\":1}")]).await;
    let config = idempotent(
        backend.addr,
        "optional",
        "[server]\nbody_read_timeout = \"300ms\"\n",
    );
    let proxy = Proxy::spawn(config).await;
    // A head announcing 10 bytes, and 2 of them: the rest never comes.
    let mut conn = support::raw::Conn::open(proxy.addr).await;
    let head = support::raw::head(
        "POST",
        "/things",
        &[
            ("idempotency-key", "\"k12\""),
            ("content-type", "application/json"),
        ],
        10,
    );
    let answer = conn
        .exchange(&head, b"{}", Duration::ZERO)
        .await
        .expect("an answer");
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // Nothing was taken: the same key goes through at once.
    let client = Client::http1();
    let retry = post(&client, &proxy.url("/things"), Some("\"k12\""), "{}").await;
    assert_eq!(retry.status, StatusCode::CREATED, "{retry:?}");
    assert!(!retry.headers.contains_key("idempotency-replayed"));
}

/// `PATCH url` with `key`, `if_match` (when some) and `body`.
async fn patch(
    client: &Client,
    url: &str,
    key: &str,
    if_match: Option<&str>,
    body: &str,
) -> Answer {
    let mut req = request(Method::PATCH, url)
        .header("content-type", "application/merge-patch+json")
        .header("idempotency-key", key);
    if let Some(etag) = if_match {
        req = req.header("if-match", etag);
    }
    client
        .send(req.body(full(body.to_owned())).expect("request"))
        .await
}

#[tokio::test]
async fn a_428_from_the_guard_is_not_recorded_so_the_retry_with_if_match_applies() {
    let demo = DemoHandle::spawn().await;
    let proxy = Proxy::spawn(idempotent(demo.addr, "optional", "require_if_match = true")).await;
    let client = Client::http1();
    let url = proxy.url("/items/1");
    let etag = client.get(&url).await.header("etag").to_owned();
    let body = r#"{"stock":11}"#;
    // Nothing applied: the guard asks for a precondition.
    let first = patch(&client, &url, "\"p1\"", None, body).await;
    assert_eq!(first.status, StatusCode::PRECONDITION_REQUIRED, "{first:?}");
    // The same operation, now conditional: it must reach the upstream, not replay the 428.
    let second = patch(&client, &url, "\"p1\"", Some(&etag), body).await;
    assert!(
        second.headers.get("idempotency-replayed").is_none(),
        "{second:?}"
    );
    assert_eq!(second.status, StatusCode::OK, "{second:?}");
    let now = client.get(demo.url("/items/1")).await.json();
    assert_eq!(now["stock"], 11, "{now}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_store_refuses_once_is_retried_so_a_later_retry_is_a_replay_not_a_second_post()
{
    let redis = RedisServer::start();
    let (backend, gate, calls) = gated().await;
    let config = config_toml(&format!(
        r#"
        [server]
        response_timeout = "500ms"
        write_outcome_timeout = "500ms"
        body_read_timeout = "200ms"

        [store]
        kind = "redis"
        url = "{}"
        timeout = "200ms"
        lease_ttl = "2s"

        [defaults]
        idempotency = "optional"
        lease_wait = "100ms"

        [[routes]]
        name = "api"
        upstream = "http://{}"
        "#,
        redis.url(),
        backend.addr
    ));
    let hold = config.routes().expect("routes")[0].policy.idempotency.hold;
    let proxy = Proxy::spawn(config).await;
    let client = Client::http1();
    let url = proxy.url("/things");
    let first = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move { post(&client, &url, Some("\"k-blip\""), "{}").await }
    });
    backend.wait_for_requests(1).await;
    // Redis stalls past the store timeout just as the answer is to be recorded.
    let paused_ms = hold.as_millis() / 2;
    redis.cli(&["CLIENT", "PAUSE", &paused_ms.to_string(), "ALL"]);
    gate.notify_one();
    let first = first.await.expect("task");
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    // Well after the claim's hold (and the write lease, which the stall also left behind): the
    // created thing must still be the answer to a retry.
    tokio::time::sleep(hold.max(Duration::from_secs(2)) + Duration::from_millis(500)).await;
    let retry = post_until_done(&client, &url, "\"k-blip\"", "{}").await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "applied twice: {retry:?}");
    assert_eq!(retry.header("idempotency-replayed"), "true");
}

#[tokio::test]
async fn a_write_that_applies_after_the_504_is_never_applied_again_by_a_retry() {
    // The upstream answers 201 after the client's 504 but within write_outcome_timeout: the
    // proxy learns the write applied, so a retry after the hold must not apply it again.
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let backend = Backend::new()
        .route_fn(Method::POST, "/things", move |_req| {
            let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                tokio::time::sleep(Duration::from_millis(600)).await;
                thing(201, "{\"id\":1}", n)
            }
        })
        .spawn()
        .await;
    let config = idempotent(
        backend.addr,
        "optional",
        "lease_wait = \"100ms\"\n[server]\nresponse_timeout = \"300ms\"\n\
         write_outcome_timeout = \"1s\"\nbody_read_timeout = \"200ms\"\n\
         [store]\ntimeout = \"100ms\"\n",
    );
    let hold = config.routes().expect("routes")[0].policy.idempotency.hold;
    let proxy = Proxy::spawn(config).await;
    let client = Client::http1();
    let url = proxy.url("/things");
    let first = post(&client, &url, Some("\"k-late\""), "{}").await;
    first.assert_problem(504, "upstream-timeout");
    tokio::time::sleep(hold + Duration::from_millis(300)).await;
    let retry = post(&client, &url, Some("\"k-late\""), "{}").await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "applied twice: {retry:?}");
    retry.assert_problem(409, "idempotency-not-replayable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_while_the_key_is_being_taken_leaves_no_key_held() {
    let redis = RedisServer::start();
    let (backend, calls) = things(vec![(201, "{\"id\":1}")]).await;
    let config = config_toml(&format!(
        r#"
        [store]
        kind = "redis"
        url = "{}"
        timeout = "3s"

        [defaults]
        idempotency = "optional"

        [[routes]]
        name = "api"
        upstream = "http://{}"
        "#,
        redis.url(),
        backend.addr
    ));
    let proxy = Proxy::spawn(config).await;
    let client = Client::http1();
    let url = proxy.url("/things");
    // Warm the connection, so that the take below is the one Redis delays.
    assert_eq!(
        post(&client, &url, Some("\"warm\""), "{}").await.status,
        StatusCode::CREATED
    );
    redis.cli(&["CLIENT", "PAUSE", "800", "ALL"]);
    let gone = tokio::spawn({
        let url = url.clone();
        async move { post(&Client::http1(), &url, Some("\"k-gone\""), "{}").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gone.abort();
    let _ = gone.await;
    // The take lands once Redis serves again, for a request that was never forwarded.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let retry = post(&client, &url, Some("\"k-gone\""), "{}").await;
    assert_eq!(retry.status, StatusCode::CREATED, "{retry:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
