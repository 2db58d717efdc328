//! The concurrency workload the guarantee is tested with: read-modify-write writers on a few
//! counters, colliding for certain in their first round.

use std::collections::HashMap;
use std::sync::Arc;

use http::{Method, StatusCode};
use serde_json::json;
use tokio::sync::Barrier;

use super::{Client, full, request};

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
