//! The concurrency workloads the guarantee is tested with: read-modify-write writers on a few
//! counters, colliding for certain in their first round; and writers appending op ids to a few
//! logs behind a slow upstream, some of whom give up mid-write.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;
use tokio::sync::Barrier;

use super::{Backend, BackendHandle, Client, Reply, bounded, full, request};

/// What the writers committed, and what the counters say at the end.
#[derive(Debug)]
pub struct Tally {
    /// Acknowledged increments per counter.
    pub commits: HashMap<usize, usize>,
    /// Each counter's final value.
    pub finals: HashMap<usize, usize>,
    /// Writes that got through in the first round, where every writer of a counter held the
    /// same version.
    pub first_round_commits: usize,
}

impl Tally {
    /// Acknowledged increments missing from the final values.
    pub fn lost(&self) -> usize {
        self.commits.iter().map(|(k, c)| c - self.finals[k]).sum()
    }
}

/// `writers` writers over `keys` counters at `{base}/items/{name}-{k}`, each committing
/// `increments` increments: GET, then PUT `n + 1` (with the ETag it read when `if_match`), and
/// on 409 read again. Writer `w` goes through `bases[(w / keys) % bases.len()]`, so with several
/// bases every counter has writers on each. In the first round a barrier holds every writer of
/// a counter between its read and its write, so they all write over the same version.
pub async fn read_modify_write(
    bases: &[String],
    name: &str,
    writers: usize,
    keys: usize,
    increments: usize,
    if_match: bool,
) -> Tally {
    let client = Client::http1();
    let path = |k: usize| format!("/items/{name}-{k}");
    for k in 0..keys {
        let url = format!("{}{}", bases[0], path(k));
        let created = client
            .json(Method::PUT, url, &json!({"id": k, "n": 0}))
            .await;
        assert!(created.status.is_success(), "{created:?}");
    }
    let barriers: Vec<_> = (0..keys)
        .map(|_| Arc::new(Barrier::new(writers / keys)))
        .collect();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let k = w % keys;
        let url = format!("{}{}", bases[(w / keys) % bases.len()], path(k));
        let (client, barrier) = (client.clone(), Arc::clone(&barriers[k]));
        tasks.push(tokio::spawn(async move {
            let (mut commits, mut first_round) = (0, 0);
            let mut round = 0;
            while commits < increments {
                let read = client.get(&url).await;
                assert_eq!(read.status, StatusCode::OK, "{read:?}");
                let n = read.json()["n"].as_u64().expect("counter");
                let mut req = request(Method::PUT, &url).header("content-type", "application/json");
                if if_match {
                    req = req.header("if-match", read.header("etag"));
                }
                if round == 0 {
                    barrier.wait().await;
                }
                let body = json!({"id": k, "n": n + 1}).to_string();
                let wrote = client.send(req.body(full(body)).expect("request")).await;
                match wrote.status {
                    s if s.is_success() => {
                        commits += 1;
                        first_round += usize::from(round == 0);
                    }
                    StatusCode::CONFLICT => {}
                    other => panic!("unexpected {other}: {wrote:?}"),
                }
                round += 1;
            }
            (k, commits, first_round)
        }));
    }
    let mut tally = Tally {
        commits: HashMap::new(),
        finals: HashMap::new(),
        first_round_commits: 0,
    };
    for task in tasks {
        let (k, commits, first_round) = task.await.expect("writer");
        *tally.commits.entry(k).or_default() += commits;
        tally.first_round_commits += first_round;
    }
    for k in 0..keys {
        let read = client.get(format!("{}{}", bases[0], path(k))).await;
        let n = read.json()["n"].as_u64().expect("counter");
        tally
            .finals
            .insert(k, usize::try_from(n).expect("small counter"));
    }
    tally
}

/// An upstream of `keys` JSON documents `/log/{k}`, each `{"log": [op ids]}`. A PUT reads its
/// body, then takes as many milliseconds as its `x-delay-ms` header says (a slow handler) before
/// it applies the body and answers 204. The work goes on when the connection goes away, as in
/// most servers (hyper's would cancel the handler).
pub async fn slow_logs(keys: usize) -> (BackendHandle, Arc<Mutex<HashMap<usize, Vec<u64>>>>) {
    let docs = Arc::new(Mutex::new(
        (0..keys)
            .map(|k| (k, Vec::new()))
            .collect::<HashMap<_, _>>(),
    ));
    let mut backend = Backend::new();
    for k in 0..keys {
        let (reader, writer) = (docs.clone(), docs.clone());
        backend = backend
            .route_fn(Method::GET, &format!("/log/{k}"), move |_req| {
                let log = reader.lock().unwrap()[&k].clone();
                async move { Reply::ok(json!({ "log": log }).to_string()).response() }
            })
            .route_fn(
                Method::PUT,
                &format!("/log/{k}"),
                move |req: http::Request<Incoming>| {
                    let docs = writer.clone();
                    async move {
                        let delay = req.headers()["x-delay-ms"]
                            .to_str()
                            .unwrap()
                            .parse()
                            .unwrap();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        let ops = doc["log"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|op| op.as_u64().unwrap());
                        let log: Vec<u64> = ops.collect();
                        let apply = tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(delay)).await;
                            docs.lock().unwrap().insert(k, log);
                        });
                        apply.await.unwrap();
                        Reply::status(204).response()
                    }
                },
            );
    }
    (backend.spawn().await, docs)
}

/// What one storm showed.
#[derive(Debug)]
pub struct Storm {
    /// Writes answered 2xx.
    pub acknowledged: usize,
    /// Writes given up on, or answered 504: they may or may not have applied.
    pub uncertain: usize,
    /// Writes refused 503 (the store unavailable, fail-closed): never forwarded.
    pub refused: usize,
    /// Acknowledged writes whose op id is missing from the final logs.
    pub lost: usize,
}

impl Storm {
    /// Asserts a storm through the proxy lost nothing, acknowledged something, and was
    /// uncertain about some writes exactly when writers gave up or got a short response timeout
    /// (in milliseconds).
    pub fn assert_none_lost(&self, give_up: bool, response_timeout: Option<u64>) {
        let run = format!("give_up={give_up} response_timeout={response_timeout:?}: {self:?}");
        assert_eq!(self.lost, 0, "{run}");
        assert!(self.acknowledged > 0, "{run}");
        assert_eq!(
            self.uncertain > 0,
            give_up || response_timeout.is_some(),
            "{run}"
        );
    }
}

/// How long a slow writer's write takes upstream; every other write takes 1 ms.
pub const SLOW_WRITE: Duration = Duration::from_millis(40);

/// A response timeout (ms) that every slow write exceeds (the upstream sleeps [`SLOW_WRITE`]
/// before it answers), with room for the 1 ms writes on a loaded machine.
pub const SHORT_TIMEOUT_MS: u64 = 25;

/// Reads before a storm's writer gives up on a GET answered 504 (possible only with a short
/// response timeout, on a loaded machine).
const READ_ATTEMPTS: usize = 100;

/// `writers` writers over `keys` logs, `cycles` read-modify-write cycles each, appending a
/// unique op id; with `if_match`, they send the ETag they read and retry on 409. Writer `w` goes
/// through `bases[(w / keys) % bases.len()]`, so with several bases every log has writers on
/// each. Every third write is slow upstream ([`SLOW_WRITE`]); with `give_up`, its writer gives
/// up on it soon after sending it, long before it can have applied.
pub async fn storm(
    bases: &[String],
    docs: &Arc<Mutex<HashMap<usize, Vec<u64>>>>,
    keys: usize,
    writers: usize,
    cycles: usize,
    if_match: bool,
    give_up: bool,
) -> Storm {
    let client = Client::http1();
    let acknowledged = Arc::new(Mutex::new(HashSet::new()));
    let uncertain = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (client, acknowledged, uncertain, refused) = (
            client.clone(),
            acknowledged.clone(),
            uncertain.clone(),
            refused.clone(),
        );
        let url = format!("{}/log/{}", bases[(w / keys) % bases.len()], w % keys);
        tasks.push(tokio::spawn(async move {
            for cycle in 0..cycles {
                let slow = (w + cycle) % 3 == 0;
                let delay = if slow { SLOW_WRITE.as_millis() } else { 1 };
                let op = (w * 10_000 + cycle) as u64;
                let mut read = client.get(&url).await;
                for _ in 1..READ_ATTEMPTS {
                    if read.status != StatusCode::GATEWAY_TIMEOUT {
                        break;
                    }
                    read = client.get(&url).await;
                }
                assert_eq!(read.status, StatusCode::OK, "{read:?}");
                let mut log: Vec<u64> = serde_json::from_value(read.json()["log"].clone()).unwrap();
                log.push(op);
                let mut req = request(Method::PUT, &url)
                    .header("content-type", "application/json")
                    .header("x-delay-ms", delay.to_string());
                if if_match {
                    req = req.header("if-match", read.header("etag"));
                }
                let req = req.body(full(json!({ "log": log }).to_string())).unwrap();
                let send = {
                    let client = client.clone();
                    tokio::spawn(async move { client.send(req).await })
                };
                if slow && give_up {
                    tokio::time::sleep(SLOW_WRITE / 4).await;
                    send.abort();
                    uncertain.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let wrote = send.await.unwrap();
                match wrote.status {
                    s if s.is_success() => {
                        acknowledged.lock().unwrap().insert(op);
                    }
                    StatusCode::CONFLICT => {}
                    StatusCode::GATEWAY_TIMEOUT => {
                        uncertain.fetch_add(1, Ordering::Relaxed);
                    }
                    StatusCode::SERVICE_UNAVAILABLE => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("unexpected {other}: {wrote:?}"),
                }
            }
        }));
    }
    for task in tasks {
        bounded(task).await.unwrap();
    }
    // Every write given up on has applied by now, or never will: its exchange ends within
    // the slow write's time once it reached the upstream.
    tokio::time::sleep(SLOW_WRITE * 2).await;
    let docs = docs.lock().unwrap();
    let kept: HashSet<u64> = docs.values().flatten().copied().collect();
    let acknowledged = acknowledged.lock().unwrap();
    Storm {
        acknowledged: acknowledged.len(),
        uncertain: uncertain.load(Ordering::Relaxed),
        refused: refused.load(Ordering::Relaxed),
        lost: acknowledged.difference(&kept).count(),
    }
}
