//! Replicas sharing one Redis: no lost updates across them, and what happens when Redis goes
//! away and comes back. Every test starts its own `redis-server` on a free loopback port.

#[path = "support/redis_server.rs"]
mod redis_server;
mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use ifmatch::app::Server;
use ifmatch::config::Config;
use redis_server::RedisServer;
use serde_json::json;
use support::workload::{
    SHORT_TIMEOUT_MS, Tally, read_modify_write, slow_logs, storm as log_storm,
};
use support::{Client, DemoHandle, Proxy, ProxyHandle, config_toml, full, request};

/// A proxy config in front of `demo`, on the Redis at `url`, giving up on a Redis call after
/// `timeout` (short where the test stops Redis, generous where a loaded machine must not turn
/// a slow call into a 503).
fn redis_config(demo: &DemoHandle, url: &str, failure_policy: &str, timeout: &str) -> Config {
    config_toml(&format!(
        r#"
        [store]
        kind = "redis"
        url = "{url}"
        timeout = "{timeout}"
        failure_policy = "{failure_policy}"

        [[routes]]
        name = "api"
        upstream = "http://{}"
        "#,
        demo.addr
    ))
}

/// A replica: its own server and its own store (its own connection to Redis), as the binary
/// builds them.
async fn replica(config: Config) -> ProxyHandle {
    Proxy::spawn_server(Server::new(config).expect("valid config")).await
}

/// Reads a counter through the proxy: its value and ETag.
async fn counter(client: &Client, url: &str) -> (u64, String) {
    let read = client.get(url).await;
    assert_eq!(read.status, StatusCode::OK, "{read:?}");
    let n = read.json()["n"].as_u64().expect("counter");
    (n, read.header("etag").to_owned())
}

/// Reads a counter straight from the API (which sends no ETag).
async fn upstream_value(client: &Client, url: &str) -> u64 {
    let read = client.get(url).await;
    assert_eq!(read.status, StatusCode::OK, "{read:?}");
    read.json()["n"].as_u64().expect("counter")
}

async fn put(client: &Client, url: &str, n: u64, if_match: Option<&str>) -> support::Answer {
    let mut req = request(Method::PUT, url).header("content-type", "application/json");
    if let Some(tag) = if_match {
        req = req.header("if-match", tag);
    }
    let body = json!({ "n": n }).to_string();
    client.send(req.body(full(body)).expect("request")).await
}

const WRITERS: usize = 16;
const KEYS: usize = 4;
const INCREMENTS: usize = 6;

/// `WRITERS` conditional read-modify-write writers over `KEYS` counters, spread over the
/// replicas so that every key has writers on each, colliding for certain in their first round.
async fn storm(replicas: &[String], name: &str) -> Tally {
    read_modify_write(replicas, name, WRITERS, KEYS, INCREMENTS, true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_redis_lose_no_updates_and_unshared_stores_do() {
    let redis = RedisServer::start();
    tokio::time::timeout(Duration::from_secs(60), async {
        let demo = DemoHandle::spawn().await;

        // Teeth: each replica on its own memory store. Writers holding the same ETag on
        // different replicas both get through, so updates are lost.
        let a = Proxy::spawn(support::config(demo.addr)).await;
        let b = Proxy::spawn(support::config(demo.addr)).await;
        let unshared = storm(&[a.url(""), b.url("")], "unshared").await;
        assert!(
            unshared.lost() >= KEYS,
            "replicas that do not share a store must lose updates: {unshared:?}"
        );

        let a = replica(redis_config(&demo, &redis.url(), "fail_closed", "5s")).await;
        let b = replica(redis_config(&demo, &redis.url(), "fail_closed", "5s")).await;
        let shared = storm(&[a.url(""), b.url("")], "shared").await;
        assert_eq!(shared.lost(), 0, "{shared:?}");
        assert_eq!(shared.commits.values().sum::<usize>(), WRITERS * INCREMENTS);
        assert_eq!(
            shared.first_round_commits, KEYS,
            "of the writers holding the same ETag, across both replicas, exactly one per key \
             got through"
        );
    })
    .await
    .expect("workload finished in time");
    // Both replicas kept their state in the one Redis.
    assert!(redis.cli(&["DBSIZE"]).trim().parse::<u64>().expect("count") >= KEYS as u64);
}

#[tokio::test]
async fn the_library_api_builds_the_store_the_config_names() {
    // `Server::new` on a `kind = "redis"` config: no store handed in, as a library user
    // writes it. Its state must land in Redis, not in a memory store nobody configured.
    let redis = RedisServer::start();
    let demo = DemoHandle::spawn().await;
    let proxy = Proxy::spawn(redis_config(&demo, &redis.url(), "fail_closed", "5s")).await;
    assert_eq!(redis.cli(&["DBSIZE"]).trim(), "0");
    let read = Client::http1().get(&proxy.url("/items/1")).await;
    assert_eq!(read.status, StatusCode::OK, "{read:?}");
    // What the GET learnt waits in the replica for a write to carry it (`learn_delay`), and
    // with none coming is sent on its own.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while redis.cli(&["DBSIZE"]).trim().parse::<u64>().expect("count") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the GET's learn never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_lose_no_update_when_writers_give_up_mid_write() {
    let redis = RedisServer::start();
    let (keys, writers, cycles) = (2, 6, 20);
    tokio::time::timeout(Duration::from_secs(60), async {
        let (backend, docs) = slow_logs(keys).await;
        let direct = log_storm(
            &[format!("http://{}", backend.addr)],
            &docs,
            keys,
            writers,
            cycles,
            false,
            false,
        )
        .await;
        assert!(direct.lost > 0, "the workload can lose updates: {direct:?}");

        // Patient writers (the control), writers that give up on their slow writes, and slow
        // writes answered 504 by a short response timeout, each on two replicas. None lost.
        for (give_up, response_timeout) in
            [(false, None), (true, None), (false, Some(SHORT_TIMEOUT_MS))]
        {
            let (backend, docs) = slow_logs(keys).await;
            let prefix = format!("give-up-{give_up}-{response_timeout:?}:");
            let config = || {
                let mut config = support::config(backend.addr);
                config.store = config_toml(&format!(
                    "[store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout = \"5s\"\n\
                     key_prefix = \"{prefix}\"\n[[routes]]\nname = \"x\"\n\
                     upstream = \"http://127.0.0.1:1\"\n",
                    redis.url()
                ))
                .store;
                if let Some(ms) = response_timeout {
                    config.server.response_timeout = Duration::from_millis(ms);
                }
                config
            };
            let (a, b) = (replica(config()).await, replica(config()).await);
            let bases = [a.url(""), b.url("")];
            let through = log_storm(&bases, &docs, keys, writers, cycles, true, give_up).await;
            through.assert_none_lost(give_up, response_timeout);
        }
    })
    .await
    .expect("the storm finishes");
}

#[tokio::test]
async fn redis_down_fails_closed_and_service_recovers_when_it_returns() {
    let mut redis = RedisServer::start();
    let demo = DemoHandle::spawn().await;
    let proxy = replica(redis_config(&demo, &redis.url(), "fail_closed", "300ms")).await;
    let client = Client::http1();
    let url = proxy.url("/items/outage");
    let direct = demo.url("/items/outage");

    assert!(put(&client, &url, 0, None).await.status.is_success());
    let (_, v0) = counter(&client, &url).await;
    assert!(put(&client, &url, 1, Some(&v0)).await.status.is_success());
    let (n, v1) = counter(&client, &url).await;
    assert_eq!(n, 1);

    redis.stop();
    // A conditional write, current or stale, cannot be checked: 503, and never forwarded.
    for tag in [&v1, &v0] {
        let refused = put(&client, &url, 99, Some(tag)).await;
        refused.assert_problem(503, "store-unavailable");
        assert_eq!(refused.header("retry-after"), "1");
    }
    assert_eq!(
        upstream_value(&client, &direct).await,
        1,
        "a refused write reached the API"
    );
    // Reads and unconditional writes pass.
    assert_eq!(counter(&client, &url).await.0, 1);
    assert!(put(&client, &url, 2, None).await.status.is_success());
    let (n, v2) = counter(&client, &url).await;
    assert_eq!(n, 2);

    // Same port, empty Redis: the proxy reconnects by itself. Until it has, writes keep
    // getting 503; then the write goes through (the key is unknown, so it is revalidated).
    let redis = RedisServer::start_on(redis.port());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let recovered = loop {
        let answer = put(&client, &url, 3, Some(&v2)).await;
        if answer.status != StatusCode::SERVICE_UNAVAILABLE {
            break answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no recovery after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(recovered.status.is_success(), "{recovered:?}");
    assert_eq!(upstream_value(&client, &direct).await, 3);
    // And the guard is back: a stale tag gets 409 without reaching the API.
    put(&client, &url, 42, Some(&v2))
        .await
        .assert_problem(409, "stale-precondition");
    assert_eq!(upstream_value(&client, &direct).await, 3);
    drop(redis);
}

#[tokio::test]
async fn fail_open_forwards_conditional_writes_while_redis_is_down() {
    // Nothing listens here: the store is unavailable from the start.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let demo = DemoHandle::spawn().await;
    let url = format!("redis://{nowhere}");
    let proxy = replica(redis_config(&demo, &url, "fail_open", "300ms")).await;
    let client = Client::http1();
    let target = proxy.url("/items/open");
    assert!(put(&client, &target, 0, None).await.status.is_success());
    let (_, v0) = counter(&client, &target).await;
    assert!(
        put(&client, &target, 1, Some(&v0))
            .await
            .status
            .is_success()
    );
    // Stale, yet forwarded: availability over the guarantee, by configuration.
    let forwarded = put(&client, &target, 7, Some(&v0)).await;
    assert!(forwarded.status.is_success(), "{forwarded:?}");
    assert_eq!(upstream_value(&client, &demo.url("/items/open")).await, 7);
}

/// A TCP relay between a replica and Redis that can be cut: while cut, it forwards nothing in
/// either direction and closes nothing (packets dropped by a partition, not a refused
/// connection), and connections made meanwhile are accepted and held the same way.
struct Partition {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Partition {
    async fn to(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let (cut, watch) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump(client_read, server_write, watch.clone()));
                tokio::spawn(pump(server_read, client_write, watch.clone()));
            }
        });
        Self { addr, cut }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    fn set(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

/// Copies `from` to `to`, holding every chunk while the partition is cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let Ok(n) = from.read(&mut buf).await else {
            return;
        };
        if n == 0 || cut.wait_for(|cut| !cut).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_partitioned_from_redis_stops_taking_writes_within_the_store_timeout() {
    let redis = RedisServer::start();
    let demo = DemoHandle::spawn().await;
    let redis_addr: std::net::SocketAddr = format!("127.0.0.1:{}", redis.port())
        .parse()
        .expect("redis addr");
    let partition = Partition::to(redis_addr).await;
    let timeout = Duration::from_millis(300);
    let cut_off = replica(redis_config(
        &demo,
        &partition.url(),
        "fail_closed",
        "300ms",
    ))
    .await;
    let other = replica(redis_config(&demo, &redis.url(), "fail_closed", "5s")).await;
    let client = Client::http1();
    let (url, url_other) = (cut_off.url("/items/split"), other.url("/items/split"));
    let direct = demo.url("/items/split");

    assert!(put(&client, &url, 0, None).await.status.is_success());
    let (_, v0) = counter(&client, &url).await;
    assert!(put(&client, &url, 1, Some(&v0)).await.status.is_success());
    let (n, v1) = counter(&client, &url).await;
    assert_eq!(n, 1);

    partition.set(true);
    // Current or stale, a conditional write cannot be checked: 503 once the store timeout
    // has passed (the connection is up, but nothing answers), never forwarded.
    for tag in [&v1, &v0] {
        let started = std::time::Instant::now();
        let refused = put(&client, &url, 99, Some(tag)).await;
        let took = started.elapsed();
        refused.assert_problem(503, "store-unavailable");
        assert!(
            took >= timeout,
            "refused after {took:?}, before the store timeout"
        );
        // Bounded by the timeout (the lease call; a loaded machine adds scheduling delay).
        assert!(
            took < timeout * 2 + Duration::from_secs(1),
            "refused only after {took:?}"
        );
    }
    assert_eq!(
        upstream_value(&client, &direct).await,
        1,
        "a write refused by the partitioned replica reached the API"
    );
    // The replica that still reaches Redis goes on, checked: a stale tag is refused, the
    // current one passes.
    put(&client, &url_other, 50, Some(&v0))
        .await
        .assert_problem(409, "stale-precondition");
    let (_, current) = counter(&client, &url_other).await;
    assert!(
        put(&client, &url_other, 2, Some(&current))
            .await
            .status
            .is_success()
    );
    assert_eq!(upstream_value(&client, &direct).await, 2);

    // Healed: the cut-off replica's view is checked against Redis again, so the tag it last
    // saw (v1) is stale now and refused; the other replica's current tag passes.
    partition.set(false);
    let (_, now) = counter(&client, &url_other).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let stale = loop {
        let answer = put(&client, &url, 77, Some(&v1)).await;
        if answer.status != StatusCode::SERVICE_UNAVAILABLE {
            break answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no recovery after the partition healed"
        );
    };
    stale.assert_problem(409, "stale-precondition");
    assert!(put(&client, &url, 3, Some(&now)).await.status.is_success());
    assert_eq!(upstream_value(&client, &direct).await, 3);
}
