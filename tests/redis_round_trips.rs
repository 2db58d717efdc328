//! Round trips to the shared store per request, as Redis itself shows them (`MONITOR`, between
//! two markers), through the real server in front of the demo API: a learning GET costs one, a
//! conditional write to a known resource two (lease, outcome), a stale write one, an
//! idempotency-key replay one, and a GET on a route that does not guard none. Every command a
//! client sent counts, not only scripts; the commands a script runs inside Redis do not.

#[allow(dead_code)]
#[path = "support/redis_server.rs"]
mod redis_server;
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use ifmatch::app::Server;
use redis_server::RedisServer;
use support::{Client, DemoHandle, Proxy, ProxyHandle, config_toml, full, request};

/// Every command Redis receives from its clients, as `MONITOR` shows them (commands a script
/// runs are shown too, marked `lua`, and are not round trips).
struct Monitor {
    child: Child,
    lines: mpsc::Receiver<String>,
    marks: u32,
}

impl Monitor {
    fn start(redis: &RedisServer) -> Self {
        let mut child = Command::new("redis-cli")
            .args(["-p", &redis.port().to_string(), "monitor"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run redis-cli monitor");
        let stdout = child.stdout.take().expect("monitor output");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut monitor = Self {
            child,
            lines,
            marks: 0,
        };
        // Watching from here on.
        monitor.until_mark(redis);
        monitor
    }

    /// Sends a marker and returns every line up to it.
    fn until_mark(&mut self, redis: &RedisServer) -> Vec<String> {
        self.marks += 1;
        let mark = format!("ifmatch-test-mark-{}", self.marks);
        let mut seen = Vec::new();
        // OK is `redis-cli monitor`'s first line; until then the marker may be missed.
        loop {
            redis.cli(&["ECHO", &mark]);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self
                    .lines
                    .recv_timeout(left.min(Duration::from_millis(200)))
                {
                    Ok(line) if line.contains(&mark) => return seen,
                    Ok(line) => seen.push(line),
                    Err(_) if Instant::now() < deadline && self.marks == 1 => break,
                    Err(_) => panic!("monitor never showed {mark}; saw {seen:?}"),
                }
            }
        }
    }

    /// The client commands (round trips) what `step` sends: none of them pipelined or batched.
    async fn round_trips<F: Future<Output = ()>>(
        &mut self,
        redis: &RedisServer,
        step: F,
    ) -> (usize, Vec<String>) {
        self.until_mark(redis);
        step.await;
        let commands: Vec<String> = self
            .until_mark(redis)
            .into_iter()
            .filter(|line| !line.contains(" lua]") && line != "OK")
            .map(|line| {
                // `<time> [<db> <client>] "<command>" ...`: the command and its first argument.
                let command = line.split_once("] ").map_or(line.as_str(), |(_, c)| c);
                command.chars().take(160).collect()
            })
            .collect();
        (commands.len(), commands)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn put(client: &Client, url: &str, body: &str, if_match: &str) -> support::Answer {
    let mut req = request(Method::PUT, url).header("content-type", "application/json");
    if !if_match.is_empty() {
        req = req.header("if-match", if_match);
    }
    client
        .send(req.body(full(body.to_owned())).expect("request"))
        .await
}

/// Creates the demo item at `url` with an unconditional PUT.
async fn create(client: &Client, url: &str) {
    let created = put(client, url, r#"{"n":0}"#, "").await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
}

async fn post(client: &Client, url: &str, key: &str) -> support::Answer {
    let req = request(Method::POST, url)
        .header("content-type", "application/json")
        .header("idempotency-key", format!("\"{key}\""))
        .body(full(r#"{"n":0}"#))
        .expect("request");
    client.send(req).await
}

/// The real server on `redis` in front of `demo`, holding reads' learns for `learn_delay`.
async fn spawn(redis: &RedisServer, demo: &DemoHandle, learn_delay: &str) -> ProxyHandle {
    let config = config_toml(&format!(
        r#"
        [store]
        kind = "redis"
        url = "{}"
        timeout = "5s"
        learn_delay = "{learn_delay}"

        [[routes]]
        name = "plain"
        path_prefix = "/items/plain"
        upstream = "http://{demo}"
        guard = false

        [[routes]]
        name = "api"
        upstream = "http://{demo}"
        idempotency = "optional"
        "#,
        redis.url(),
        demo = demo.addr
    ));
    Proxy::spawn_server(Server::new(config).expect("valid config")).await
}

/// With reads' learns sent at once (`learn_delay = "0s"`), each request on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_costs_the_round_trips_it_needs_and_no_more() {
    let redis = RedisServer::start();
    let demo = DemoHandle::spawn().await;
    let proxy = spawn(&redis, &demo, "0s").await;
    let client = Client::http1();
    let item = |name: &str| proxy.url(&format!("/items/{name}"));

    // Warm up: the connection, and each script loaded once (a first EVALSHA that finds the
    // script missing is retried after loading it).
    let tag = client.get(item("1")).await.header("etag").to_owned();
    let written = put(&client, &item("1"), r#"{"n":1}"#, &tag).await;
    assert_eq!(written.status, StatusCode::OK, "{written:?}");
    let stale = put(&client, &item("1"), r#"{"n":2}"#, &tag).await;
    assert_eq!(stale.status, StatusCode::CONFLICT, "{stale:?}");
    assert_eq!(
        post(&client, &proxy.url("/items"), "warm").await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        post(&client, &proxy.url("/items"), "warm").await.status,
        StatusCode::CREATED
    );

    let mut report = Vec::new();
    let mut monitor = Monitor::start(&redis);

    // A GET of a resource this replica has not seen: it loads the generation, then learns.
    // (Created behind the proxy's back, so that this replica has seen nothing of it.)
    create(&client, &demo.url("/items/fresh")).await;
    let (first, _) = monitor
        .round_trips(&redis, async {
            assert_eq!(client.get(item("fresh")).await.status, StatusCode::OK);
        })
        .await;
    report.push(("first GET of a resource", first));
    // Every later GET that learns: the generation comes from the last reply, so one.
    let (learning, seen) = monitor
        .round_trips(&redis, async {
            assert_eq!(client.get(item("fresh")).await.status, StatusCode::OK);
        })
        .await;
    report.push(("learning GET", learning));
    assert_eq!(learning, 1, "a learning GET: {seen:?}");

    // A conditional write to the known resource: the lease, then its outcome.
    let tag = client.get(item("fresh")).await.header("etag").to_owned();
    let mut next = String::new();
    let (write, seen) = monitor
        .round_trips(&redis, async {
            let written = put(&client, &item("fresh"), r#"{"n":7}"#, &tag).await;
            assert_eq!(written.status, StatusCode::OK, "{written:?}");
            next = written.header("etag").to_owned();
        })
        .await;
    report.push(("conditional PUT, current If-Match", write));
    assert_eq!(write, 2, "a passing conditional write: {seen:?}");

    // The demo API sends no ETag, so the write's outcome is unknown to the store (the client
    // gets the synthesized tag of its answer): a GET makes it known again, in one.
    let (after_write, seen) = monitor
        .round_trips(&redis, async {
            let read = client.get(item("fresh")).await;
            assert_eq!(read.header("etag"), next);
        })
        .await;
    report.push(("GET after the replica's own write", after_write));
    assert_eq!(after_write, 1, "a GET after a write: {seen:?}");

    // A stale write to the known resource: refused by the lease script itself, which then
    // takes no lease.
    let (rejected, seen) = monitor
        .round_trips(&redis, async {
            let stale = put(&client, &item("fresh"), r#"{"n":8}"#, &tag).await;
            assert_eq!(stale.status, StatusCode::CONFLICT, "{stale:?}");
        })
        .await;
    report.push(("stale PUT, 409", rejected));
    assert_eq!(rejected, 1, "a stale write: {seen:?}");
    // ...and left the resource writable at once with the current tag.
    assert_eq!(
        put(&client, &item("fresh"), r#"{"n":9}"#, &next)
            .await
            .status,
        StatusCode::OK
    );

    // An idempotency-key retry: the recorded answer, in one.
    let created = post(&client, &proxy.url("/items"), "k-1").await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let (replay, seen) = monitor
        .round_trips(&redis, async {
            let again = post(&client, &proxy.url("/items"), "k-1").await;
            assert_eq!(again.status, StatusCode::CREATED, "{again:?}");
            assert_eq!(again.body, created.body);
        })
        .await;
    report.push(("idempotency-key replay", replay));
    assert_eq!(replay, 1, "an idempotency replay: {seen:?}");

    // A route that does not guard: no store at all.
    let (unguarded, seen) = monitor
        .round_trips(&redis, async {
            client.get(proxy.url("/items/plain")).await;
        })
        .await;
    report.push(("GET, route with guard = false", unguarded));
    assert_eq!(unguarded, 0, "an unguarded GET: {seen:?}");

    for (what, count) in &report {
        eprintln!("round trips: {what}: {count}");
    }
}

/// With reads' learns held back (a delay longer than the test), a read-modify-write through
/// one replica: the GET costs nothing, and the write's lease request carries what it learnt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_then_its_write_cost_the_write_alone() {
    let redis = RedisServer::start();
    let demo = DemoHandle::spawn().await;
    let proxy = spawn(&redis, &demo, "600s").await;
    let client = Client::http1();
    let item = |name: &str| proxy.url(&format!("/items/{name}"));
    // Warm up as above: the connection and the scripts.
    let tag = client.get(item("1")).await.header("etag").to_owned();
    assert_eq!(
        put(&client, &item("1"), r#"{"n":1}"#, &tag).await.status,
        StatusCode::OK
    );
    let mut monitor = Monitor::start(&redis);
    let mut report = Vec::new();

    // Read and written once (a storm's cycle), so that the replica knows its generation and
    // holds nothing for it.
    create(&client, &demo.url("/items/rmw")).await;
    let tag = client.get(item("rmw")).await.header("etag").to_owned();
    let written = put(&client, &item("rmw"), r#"{"n":1}"#, &tag).await;
    assert_eq!(written.status, StatusCode::OK, "{written:?}");
    let tag = written.header("etag").to_owned();
    let (learning, seen) = monitor
        .round_trips(&redis, async {
            assert_eq!(client.get(item("rmw")).await.header("etag"), tag);
        })
        .await;
    report.push(("learning GET, held back", learning));
    assert_eq!(learning, 0, "a held learning GET: {seen:?}");

    // The write: one lease request that applies the read first and checks against it.
    let mut next = String::new();
    let (write, seen) = monitor
        .round_trips(&redis, async {
            let written = put(&client, &item("rmw"), r#"{"n":2}"#, &tag).await;
            assert_eq!(written.status, StatusCode::OK, "{written:?}");
            next = written.header("etag").to_owned();
        })
        .await;
    report.push(("conditional PUT after it", write));
    assert_eq!(write, 2, "a write carrying a read: {seen:?}");

    // A read and then a stale write: refused by the lease request that carried the read.
    let (read_stale, seen) = monitor
        .round_trips(&redis, async {
            assert_eq!(client.get(item("rmw")).await.header("etag"), next);
            let stale = put(&client, &item("rmw"), r#"{"n":3}"#, &tag).await;
            assert_eq!(stale.status, StatusCode::CONFLICT, "{stale:?}");
        })
        .await;
    report.push(("GET, then a stale PUT (409)", read_stale));
    assert_eq!(read_stale, 1, "a read and a stale write: {seen:?}");

    for (what, count) in &report {
        eprintln!("round trips: {what}: {count}");
    }
}
