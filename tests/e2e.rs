//! The guarded proxy end to end, over loopback sockets, in front of real hyper upstreams.

mod support;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use ifmatch::config::{Config, Overrides};
use support::workload::read_modify_write;
use support::{
    Answer, Backend, BackendHandle, Client, DemoHandle, Proxy, Reply, TestBody, bounded, config,
    full, request, unused_addr,
};
use tokio::sync::oneshot;

/// A stateful upstream without ETags: `GET /r` returns the current text, `PUT /r` replaces it.
/// The next GET can be paused after it read the state, to play a slow response.
/// Signals that a paused GET read the state, and waits for the test to release it.
type Pause = (oneshot::Sender<()>, oneshot::Receiver<()>);

#[derive(Clone, Default)]
struct Record {
    text: Arc<Mutex<String>>,
    pause: Arc<Mutex<Option<Pause>>>,
}

impl Record {
    async fn spawn(self, initial: &str) -> BackendHandle {
        *self.text.lock().unwrap() = initial.to_owned();
        let (reader, writer) = (self.clone(), self.clone());
        Backend::new()
            .route_fn(Method::GET, "/r", move |_req| {
                let record = reader.clone();
                async move {
                    let text = record.text.lock().unwrap().clone();
                    let pause = record.pause.lock().unwrap().take();
                    if let Some((entered, release)) = pause {
                        let _ = entered.send(());
                        let _ = release.await;
                    }
                    Reply::ok(text).response()
                }
            })
            .route_fn(Method::PUT, "/r", move |req: http::Request<Incoming>| {
                let record = writer.clone();
                async move {
                    let body = req.into_body().collect().await.map(|c| c.to_bytes());
                    let body = body.unwrap_or_default();
                    *record.text.lock().unwrap() = String::from_utf8_lossy(&body).into_owned();
                    Reply::status(204).response()
                }
            })
            .spawn()
            .await
    }

    fn set(&self, text: &str) {
        *self.text.lock().unwrap() = text.to_owned();
    }

    fn pause_next_get(&self) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (entered_tx, entered_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        *self.pause.lock().unwrap() = Some((entered_tx, release_rx));
        (entered_rx, release_tx)
    }
}

fn put(url: &str, if_match: Option<&str>, body: &str) -> http::Request<TestBody> {
    let mut req = request(Method::PUT, url).header("content-type", "text/plain");
    if let Some(tag) = if_match {
        req = req.header("if-match", tag);
    }
    req.body(full(body.to_owned())).expect("request")
}

fn guarded(upstream: std::net::SocketAddr, overrides: Overrides) -> Config {
    Config::from_overrides(&Overrides {
        upstream: Some(format!("http://{upstream}")),
        ..overrides
    })
    .expect("valid config")
}

#[tokio::test]
async fn stale_write_gets_409_and_never_reaches_the_upstream() {
    bounded(async {
        let record = Record::default();
        let backend = record.clone().spawn("v1").await;
        let proxy = Proxy::spawn(config(backend.addr)).await;
        let client = Client::http1();

        let first = client.get(proxy.url("/r")).await;
        assert_eq!(first.status, StatusCode::OK);
        let tag = first.header("etag").to_owned();
        assert!(tag.starts_with("\"ifm-"), "a strong synthesized tag: {tag}");
        assert_eq!(
            client.get(proxy.url("/r")).await.header("etag"),
            tag,
            "stable"
        );

        // Someone changes the record behind the proxy; the next read sees it.
        record.set("v2");
        let second = client.get(proxy.url("/r")).await;
        let current = second.header("etag").to_owned();
        assert_ne!(current, tag, "the tag follows the content");

        let stale = client.send(put(&proxy.url("/r"), Some(&tag), "mine")).await;
        let problem = stale.assert_problem(409, "stale-precondition");
        assert_eq!(problem["current_etag"], current.as_str());
        assert_eq!(stale.header("etag"), current);
        assert_eq!(
            backend.hits(Method::PUT, "/r"),
            0,
            "the upstream never saw it"
        );

        let fresh = client
            .send(put(&proxy.url("/r"), Some(&current), "mine"))
            .await;
        assert_eq!(fresh.status, StatusCode::NO_CONTENT);
        assert_eq!(backend.hits(Method::PUT, "/r"), 1);
        let forwarded = backend.last(Method::PUT, "/r");
        assert!(
            forwarded.headers.get("if-match").is_none(),
            "synthesized tags are stripped"
        );

        // The write replaced the validator: the tag it was made with is now stale too.
        let again = client
            .send(put(&proxy.url("/r"), Some(&current), "again"))
            .await;
        again.assert_problem(409, "stale-precondition");
        assert_eq!(backend.hits(Method::PUT, "/r"), 1);

        let cached = client
            .send(
                request(Method::GET, &proxy.url("/r"))
                    .header("if-none-match", again.header("etag"))
                    .body(full(""))
                    .expect("request"),
            )
            .await;
        assert_eq!(cached.status, StatusCode::NOT_MODIFIED);
    })
    .await;
}

#[tokio::test]
async fn unknown_resources_are_revalidated_first() {
    bounded(async {
        let record = Record::default();
        let backend = record.clone().spawn("v1").await;
        // A tag the client got before this proxy started (or from another one).
        let before = {
            let proxy = Proxy::spawn(config(backend.addr)).await;
            Client::http1()
                .get(proxy.url("/r"))
                .await
                .header("etag")
                .to_owned()
        };
        let proxy = Proxy::spawn(config(backend.addr)).await;
        let client = Client::http1();
        record.set("v2");
        let stale = client
            .send(put(&proxy.url("/r"), Some(&before), "lost"))
            .await;
        stale.assert_problem(409, "stale-precondition");
        assert_eq!(backend.hits(Method::PUT, "/r"), 0);
        assert_eq!(record.text.lock().unwrap().as_str(), "v2");

        let current = stale.header("etag").to_owned();
        let ok = client
            .send(put(&proxy.url("/r"), Some(&current), "v3"))
            .await;
        assert_eq!(ok.status, StatusCode::NO_CONTENT);
    })
    .await;
}

#[tokio::test]
async fn rfc_mode_412_and_required_preconditions_428() {
    bounded(async {
        let record = Record::default();
        let backend = record.clone().spawn("v1").await;
        let overrides = Overrides {
            conflict_status: Some(412),
            require_if_match: true,
            ..Overrides::default()
        };
        let proxy = Proxy::spawn(guarded(backend.addr, overrides)).await;
        let client = Client::http1();
        client
            .send(put(&proxy.url("/r"), None, "blind"))
            .await
            .assert_problem(428, "precondition-required");
        client
            .send(put(&proxy.url("/r"), Some("\"stale\""), "x"))
            .await
            .assert_problem(412, "stale-precondition");
        client
            .send(put(&proxy.url("/r"), Some("not-quoted"), "x"))
            .await
            .assert_problem(400, "malformed-precondition");
        assert_eq!(backend.hits(Method::PUT, "/r"), 0);
    })
    .await;
}

#[tokio::test]
async fn revalidation_against_a_dead_upstream_fails_closed_then_recovers() {
    bounded(async {
        let addr = unused_addr().await;
        let proxy = Proxy::spawn(config(addr)).await;
        let client = Client::http1();
        client
            .send(put(
                &proxy.url("/r"),
                Some("\"ifm-00000000000000000000000000000000\""),
                "x",
            ))
            .await
            .assert_problem(502, "upstream-unavailable");
        let backend = Backend::new()
            .route(Method::GET, "/r", Reply::ok("v1"))
            .route(Method::PUT, "/r", Reply::status(204))
            .spawn_on(addr)
            .await;
        let tag = client.get(proxy.url("/r")).await.header("etag").to_owned();
        let ok = client.send(put(&proxy.url("/r"), Some(&tag), "x")).await;
        assert_eq!(ok.status, StatusCode::NO_CONTENT);
        assert_eq!(backend.hits(Method::PUT, "/r"), 1);
    })
    .await;
}

#[tokio::test]
async fn a_read_racing_a_write_does_not_reinstall_a_stale_validator() {
    bounded(async {
        let record = Record::default();
        let backend = record.clone().spawn("old").await;
        let proxy = Proxy::spawn(config(backend.addr)).await;
        let client = Client::http1();
        let old = client.get(proxy.url("/r")).await.header("etag").to_owned();

        let (entered, release) = record.pause_next_get();
        let slow = {
            let (client, url) = (client.clone(), proxy.url("/r"));
            tokio::spawn(async move { client.get(url).await })
        };
        entered.await.expect("the slow read reached the upstream");
        let write = client.send(put(&proxy.url("/r"), Some(&old), "new")).await;
        assert_eq!(write.status, StatusCode::NO_CONTENT);
        release.send(()).expect("release the slow read");
        let slow: Answer = slow.await.expect("slow read");
        assert_eq!(
            slow.body,
            Bytes::from("old"),
            "the slow read saw the old state"
        );

        let lost = client
            .send(put(&proxy.url("/r"), Some(&old), "lost update"))
            .await;
        lost.assert_problem(409, "stale-precondition");
        assert_eq!(record.text.lock().unwrap().as_str(), "new");
    })
    .await;
}

#[tokio::test]
async fn large_bodies_stream_intact_through_the_guard() {
    bounded(async {
        let big: Bytes = (0..12 * 1024 * 1024)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        let backend = Backend::new()
            .route(Method::GET, "/big", Reply::ok(big.clone()))
            .echo(Method::POST, "/big")
            .spawn()
            .await;
        let proxy = Proxy::spawn(config(backend.addr)).await;
        let client = Client::http1();
        let read = client.get(proxy.url("/big")).await;
        assert_eq!(read.body.len(), big.len());
        assert!(read.body == big, "12 MiB read intact");
        assert!(
            read.headers.get("etag").is_none(),
            "over the 8 MiB hash buffer: no tag"
        );
        let echoed = client
            .send(
                request(Method::POST, &proxy.url("/big"))
                    .body(full(big.clone()))
                    .expect("request"),
            )
            .await;
        assert!(echoed.body == big, "12 MiB write intact");
    })
    .await;
}

/// The product's guarantee, with teeth: the same read-modify-write workload loses updates when
/// sent straight to the racy demo API, and loses none through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_lose_no_updates_through_the_proxy() {
    const WRITERS: usize = 16;
    const KEYS: usize = 4;
    const INCREMENTS: usize = 8;
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        let demo = DemoHandle::spawn().await;
        let proxy = Proxy::spawn(config(demo.addr)).await;

        // Straight to the API: every writer of a key reads before any writes (a barrier makes
        // the collision certain, not likely), then writes unconditionally.
        let direct =
            read_modify_write(&[demo.url("")], "direct", WRITERS, KEYS, INCREMENTS, false).await;
        assert!(
            direct.lost() >= (WRITERS / KEYS - 1) * KEYS,
            "the racy API must lose updates without the proxy: {direct:?}"
        );

        let through =
            read_modify_write(&[proxy.url("")], "proxied", WRITERS, KEYS, INCREMENTS, true).await;
        assert_eq!(through.lost(), 0, "{through:?}");
        assert_eq!(
            through.commits.values().sum::<usize>(),
            WRITERS * INCREMENTS
        );
        assert_eq!(
            through.first_round_commits, KEYS,
            "of the writers holding the same ETag, exactly one per key got through"
        );
    })
    .await
    .expect("workload finished in time");
}

#[tokio::test]
async fn revalidation_against_a_hung_upstream_times_out_with_504() {
    bounded(async {
        let backend = Backend::new().hang(Method::GET, "/r").spawn().await;
        let mut config = config(backend.addr);
        config.server.response_timeout = std::time::Duration::from_millis(200);
        let proxy = Proxy::spawn(config).await;
        Client::http1()
            .send(put(
                &proxy.url("/r"),
                Some("\"ifm-00000000000000000000000000000000\""),
                "x",
            ))
            .await
            .assert_problem(504, "upstream-timeout");
        assert_eq!(
            backend.hits(Method::PUT, "/r"),
            0,
            "the write never went through"
        );
    })
    .await;
}
