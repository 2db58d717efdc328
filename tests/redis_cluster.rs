//! Two replicas on a Redis Cluster of three masters (`store.cluster_urls`): no lost update, and
//! a master that goes away fails closed for its own hash slots only, then service recovers when
//! it is back. The test starts its own `redis-server` processes on free loopback ports, forms
//! the cluster with `redis-cli --cluster create`, and stops them when it ends.

mod support;

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use ifmatch::app::Server;
use ifmatch::config::Config;
use ifmatch::guard::resource_key;
use serde_json::json;
use support::workload::{slow_logs, storm};
use support::{Client, Proxy, ProxyHandle, config_toml, full, request};

/// How long a node may take to start, or the cluster to agree on its state.
const SETTLE: Duration = Duration::from_secs(30);

/// One cluster node: a `redis-server` in cluster mode with an append-only file synced on every
/// write, so a node that is stopped and started again comes back with its slots, its keys and
/// the write leases they hold. It runs under a shell that kills it when stdin closes.
struct Node {
    port: u16,
    dir: PathBuf,
    process: Option<(Child, ChildStdin)>,
    /// The redis-server's own process id (under the shell), for pausing it.
    pid: u32,
}

impl Node {
    fn start(port: u16, dir: PathBuf) -> Self {
        std::fs::create_dir_all(&dir).expect("node directory");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(
                "cd \"$1\" && redis-server --port \"$0\" --bind 127.0.0.1 --cluster-enabled yes \
                 --cluster-config-file nodes.conf --cluster-node-timeout 1000 \
                 --cluster-require-full-coverage no --appendonly yes --appendfsync always \
                 --save '' --loglevel warning & pid=$!; cat >/dev/null; kill $pid; wait $pid",
            )
            .arg(port.to_string())
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn redis-server (apt-get install -y redis-server)");
        let stdin = child.stdin.take().expect("piped stdin");
        let mut node = Self {
            port,
            dir,
            process: Some((child, stdin)),
            pid: 0,
        };
        wait_until("the node answers PING", || {
            node.cli(&["ping"]).trim() == "PONG"
        });
        node.pid = node
            .cli(&["info", "server"])
            .lines()
            .find_map(|line| line.strip_prefix("process_id:"))
            .and_then(|pid| pid.trim().parse().ok())
            .expect("INFO server gives the process id");
        node
    }

    /// A latency spike: the node stops (SIGSTOP) with its connections open, or goes on
    /// (SIGCONT).
    fn signal(&self, signal: &str) -> bool {
        Command::new("kill")
            .args([signal, &self.pid.to_string()])
            .status()
            .is_ok_and(|status| status.success())
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Whether this node sees the cluster as serving (every slot it knows of has a live owner,
    /// or the others still serve theirs).
    fn cluster_ok(&self) -> bool {
        self.cli(&["cluster", "info"]).contains("cluster_state:ok")
    }

    fn stop(&mut self) {
        if let Some((mut child, stdin)) = self.process.take() {
            // A paused node must go on to act on the shell's kill.
            let _ = self.signal("-CONT");
            drop(stdin);
            let _ = child.wait();
        }
    }

    /// Starts it again on its port, from its directory (nodes.conf and the append-only file).
    fn restart(&mut self) {
        self.stop();
        *self = Self::start(self.port, self.dir.clone());
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Three masters, no replicas, each owning a third of the hash slots.
struct Cluster {
    nodes: Vec<Node>,
    root: PathBuf,
}

impl Cluster {
    fn start() -> Self {
        // One directory per cluster: the tests of this binary run at the same time.
        static CLUSTERS: AtomicUsize = AtomicUsize::new(0);
        let n = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("ifmatch-cluster-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let nodes: Vec<Node> = (0..3)
            .map(|_| {
                let port = free_port();
                Node::start(port, root.join(port.to_string()))
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let mut create = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run redis-cli --cluster create");
        if let Some(mut stdin) = create.stdin.take() {
            let _ = stdin.write_all(b"yes\n");
        }
        assert!(create.wait().expect("cluster create").success());
        let cluster = Self { nodes, root };
        wait_until("every node sees the cluster ok", || {
            cluster.nodes.iter().all(Node::cluster_ok)
        });
        cluster
    }

    /// Waits until every node sees the cluster serving again.
    fn wait_whole(&self) {
        wait_until("the cluster is whole again", || {
            self.nodes.iter().all(Node::cluster_ok)
        });
    }

    fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// The master serving `key`: the node whose own line in `CLUSTER NODES` lists a slot
    /// range holding the key's slot.
    fn owner(&self, key: &str) -> usize {
        let slot = self.nodes[0].cli(&["cluster", "keyslot", key]);
        let slot: u16 = slot.trim().parse().expect("a slot number");
        (0..self.nodes.len())
            .find(|&n| serves(&self.nodes[n], slot))
            .expect("an owner")
    }
}

/// Whether `node` is the master of `slot`, by its own view.
fn serves(node: &Node, slot: u16) -> bool {
    node.cli(&["cluster", "nodes"])
        .lines()
        .filter(|line| line.contains("myself"))
        .flat_map(|line| line.split_whitespace().skip(8))
        .filter_map(|range| {
            let (start, end) = range.split_once('-').unwrap_or((range, range));
            Some((start.parse::<u16>().ok()?, end.parse::<u16>().ok()?))
        })
        .any(|(start, end)| (start..=end).contains(&slot))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn free_port() -> u16 {
    // Cluster nodes also listen on port + 10000 (the cluster bus): keep both in range.
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("a free loopback port");
        let bus_free =
            port < 55_000 && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 10_000)).is_ok();
        if bus_free {
            return port;
        }
    }
}

/// Polls `done` (every 20 ms, at most [`SETTLE`]): the cluster's own state changes are the
/// events, and redis-cli is how they are observed.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + SETTLE;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {SETTLE:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn cluster_config(
    backend: std::net::SocketAddr,
    urls: &[String],
    prefix: &str,
    timeout: &str,
) -> Config {
    let seeds = urls
        .iter()
        .map(|url| format!("\"{url}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut config = support::config(backend);
    config.store = config_toml(&format!(
        "[store]\nkind = \"redis\"\ncluster_urls = [{seeds}]\ntimeout = \"{timeout}\"\n\
         key_prefix = \"{prefix}\"\n[[routes]]\nname = \"x\"\nupstream = \"http://127.0.0.1:1\"\n"
    ))
    .store;
    config
}

async fn replica(config: Config) -> ProxyHandle {
    Proxy::spawn_server(Server::new(config).expect("valid config")).await
}

/// Which master holds each log's key (one Redis key per resource).
fn owners(cluster: &Cluster, config: &Config, prefix: &str, keys: usize) -> Vec<usize> {
    let route = &config.routes().expect("routes")[0];
    (0..keys)
        .map(|k| {
            let path = format!("/log/{k}");
            let (key, _) = resource_key(&route.id, &route.policy, &path, None, []);
            cluster.owner(&format!("{prefix}{key}"))
        })
        .collect()
}

/// Whether every log takes a conditional write again (through the replicas in turn) within
/// about 10 s: a recovering cluster's slot map and leases settle in their own time.
async fn recovers(client: &Client, bases: &[String; 2], keys: usize) -> bool {
    for _ in 0..100 {
        let mut all = true;
        for k in 0..keys {
            all &= probe(client, &bases[k % 2], k).await.is_success();
        }
        if all {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A conditional write of log `k` through `base`: its status (after reading the ETag).
async fn probe(client: &Client, base: &str, k: usize) -> StatusCode {
    let url = format!("{base}/log/{k}");
    let read = client.get(&url).await;
    assert_eq!(read.status, StatusCode::OK, "{read:?}");
    let mut log: Vec<u64> = serde_json::from_value(read.json()["log"].clone()).expect("a log");
    log.push(1_000_000 + k as u64);
    let req = request(Method::PUT, &url)
        .header("content-type", "application/json")
        .header("x-delay-ms", "1")
        .header("if-match", read.header("etag"))
        .body(full(json!({ "log": log }).to_string()))
        .expect("request");
    client.send(req).await.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_a_cluster_lose_no_update_and_a_dead_master_fails_only_its_slots() {
    let mut cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .expect("cluster");
    let (keys, writers, cycles) = (6, 12, 12);
    let client = Client::http1();
    tokio::time::timeout(Duration::from_secs(120), async {
        let (backend, docs) = slow_logs(keys).await;
        // The control: the same writers straight at the upstream lose updates.
        let direct = storm(
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

        let (backend, docs) = slow_logs(keys).await;
        let prefix = "cluster:";
        let config = || cluster_config(backend.addr, &cluster.urls(), prefix, "1s");
        let (a, b) = (replica(config()).await, replica(config()).await);
        let bases = [a.url(""), b.url("")];
        let run = storm(&bases, &docs, keys, writers, cycles, true, false).await;
        assert_eq!((run.lost, run.refused), (0, 0), "{run:?}");
        assert!(run.acknowledged > 0, "{run:?}");

        let owners = owners(&cluster, &config(), prefix, keys);
        let dead = owners[0];
        assert!(
            owners.iter().any(|&owner| owner != dead),
            "the logs span more than one master: {owners:?}"
        );

        // One master goes away: writes to its slots fail closed (503, never forwarded), every
        // other slot keeps its service, and a storm through the outage loses nothing.
        cluster.nodes[dead].stop();
        for (k, &owner) in owners.iter().enumerate() {
            let status = probe(&client, &bases[k % 2], k).await;
            if owner == dead {
                assert_eq!(
                    status,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "log {k} on the dead master {dead}"
                );
            } else {
                assert!(
                    status.is_success(),
                    "log {k} on master {owner}, master {dead} down: {status}"
                );
            }
        }
        let outage = storm(&bases, &docs, keys, writers, 4, true, false).await;
        assert_eq!(outage.lost, 0, "{outage:?}");
        assert!(outage.refused > 0 && outage.acknowledged > 0, "{outage:?}");

        // Back (with its keys and leases, from its append-only file): every slot serves again.
        tokio::task::block_in_place(|| {
            cluster.nodes[dead].restart();
            cluster.wait_whole();
        });
        assert!(
            recovers(&client, &bases, keys).await,
            "every log takes conditional writes once master {dead} is back"
        );
        let after = storm(&bases, &docs, keys, writers, cycles, true, false).await;
        assert_eq!((after.lost, after.refused), (0, 0), "{after:?}");
        println!("owners {owners:?}, master {dead} stopped\nbefore: {run:?}\noutage: {outage:?}\nafter: {after:?}");
    })
    .await
    .expect("the cluster test finishes");
}

/// A Redis latency spike on one master (the process stopped, its connections open, so nothing
/// fails fast): writes to its slots wait for the store timeout and fail closed, while every
/// other slot keeps serving meanwhile, and nothing is lost once it goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_master_holds_up_only_its_own_slots_and_fails_them_closed() {
    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .expect("cluster");
    let (keys, writers, cycles) = (6, 12, 12);
    let client = Client::http1();
    tokio::time::timeout(Duration::from_secs(120), async {
        let (backend, docs) = slow_logs(keys).await;
        let prefix = "stall:";
        // A timeout far above what a write to a live master takes on a loaded machine, so the
        // order of events below is not a race.
        let config = || cluster_config(backend.addr, &cluster.urls(), prefix, "3s");
        let (a, b) = (replica(config()).await, replica(config()).await);
        let bases = [a.url(""), b.url("")];
        let owners = owners(&cluster, &config(), prefix, keys);
        let stalled = owners[0];
        assert!(
            owners.iter().any(|&owner| owner != stalled),
            "the logs span more than one master: {owners:?}"
        );
        // Every replica has talked to every master before the spike.
        for k in 0..keys * 2 {
            let status = probe(&client, &bases[k % 2], k % keys).await;
            assert!(status.is_success(), "log {}: {status}", k % keys);
        }

        assert!(cluster.nodes[stalled].signal("-STOP"), "pause the master");
        let waiting: Vec<_> = (0..keys)
            .filter(|&k| owners[k] == stalled)
            .map(|k| {
                let (client, base) = (client.clone(), bases[k % 2].clone());
                (
                    k,
                    tokio::spawn(async move { probe(&client, &base, k).await }),
                )
            })
            .collect();
        for (k, &owner) in owners.iter().enumerate() {
            if owner != stalled {
                let status = probe(&client, &bases[(k + 1) % 2], k).await;
                assert!(
                    status.is_success(),
                    "log {k} on master {owner}, master {stalled} stalled: {status}"
                );
            }
        }
        assert!(
            waiting.iter().all(|(_, task)| !task.is_finished()),
            "every other slot served while the stalled master's writes were still waiting"
        );
        for (k, task) in waiting {
            let status = task.await.expect("probe");
            assert_eq!(
                status,
                StatusCode::SERVICE_UNAVAILABLE,
                "log {k} on the stalled master {stalled}"
            );
        }

        // The writes that failed closed never reached the API: each stalled log holds the two
        // warm-up probes only (read straight from the API).
        for k in (0..keys).filter(|&k| owners[k] == stalled) {
            let read = client
                .get(&format!("http://{}/log/{k}", backend.addr))
                .await;
            let log: Vec<u64> = serde_json::from_value(read.json()["log"].clone()).expect("a log");
            let probes = log.iter().filter(|&&n| n == 1_000_000 + k as u64).count();
            assert_eq!(probes, 2, "log {k}: {log:?}");
        }

        assert!(cluster.nodes[stalled].signal("-CONT"), "resume the master");
        tokio::task::block_in_place(|| {
            cluster.wait_whole();
        });
        assert!(
            recovers(&client, &bases, keys).await,
            "every log takes conditional writes once master {stalled} goes on"
        );
        let after = storm(&bases, &docs, keys, writers, cycles, true, false).await;
        assert_eq!((after.lost, after.refused), (0, 0), "{after:?}");
        println!("owners {owners:?}, master {stalled} stalled\nafter: {after:?}");
    })
    .await
    .expect("the stall test finishes");
}
