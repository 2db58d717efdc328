//! `ifmatch storm` against small scripted upstreams on loopback: the lost-update accounting is
//! exact, and bad targets fail with a clear error.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::header::{ETAG, IF_MATCH, IF_NONE_MATCH};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ifmatch::storm::{self, Report, StormArgs, StormError};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Barrier, watch};

/// Every test finishes well within this, or it has hung.
const TEST_DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// A scripted upstream.

/// How the upstream treats reads and writes.
#[derive(Clone, Copy)]
enum Mode {
    /// Strong ETags on every response; PUT checks If-Match and If-None-Match.
    Correct,
    /// No ETags, unconditional writes: the classic racy legacy API.
    Racy,
    /// Every GET answers 200 with this body.
    FixedBody(&'static str),
    /// Every request answers with this status.
    Status(u16),
}

struct Item {
    body: Value,
    version: u64,
}

struct State {
    mode: Mode,
    items: Mutex<HashMap<String, Item>>,
    /// Answer 200 to this many writes that pass their preconditions, without applying them.
    drop_writes: Mutex<u64>,
    /// Answer every write to an existing item with this status, without applying it.
    fail_writes: Option<u16>,
    /// Hold GETs number `skip..skip + n` (0-based) until all `n` have arrived.
    hold_reads: Option<(usize, Arc<Barrier>, usize)>,
    reads: Mutex<usize>,
    /// Writes applied (creates included).
    applied: watch::Sender<u64>,
    /// Like json-server: a PUT to a missing item is 404, a POST to a collection creates one.
    post_creates: Option<PostCreates>,
    /// The next id a POST assigns.
    next_id: Mutex<u64>,
}

/// How a POST-creating upstream says where the new item is.
#[derive(Clone, Copy)]
enum PostCreates {
    /// A `Location` header (and the id in the body).
    Location,
    /// Only the `id` in the created body, as json-server does.
    BodyId,
}

struct Upstream {
    mode: Mode,
    items: HashMap<String, Item>,
    drop_writes: u64,
    fail_writes: Option<u16>,
    hold_reads: Option<(usize, usize)>,
    post_creates: Option<PostCreates>,
}

impl Upstream {
    fn new(mode: Mode) -> Self {
        Self {
            mode,
            items: HashMap::new(),
            drop_writes: 0,
            fail_writes: None,
            hold_reads: None,
            post_creates: None,
        }
    }

    /// Creates with POST to a collection only; a PUT to a missing item is 404.
    fn post_creates(mut self, how: PostCreates) -> Self {
        self.post_creates = Some(how);
        self
    }

    /// Starts with `path` holding `{"id": .., "counter": counter}`.
    fn item(mut self, path: &str, counter: i64) -> Self {
        let body = json!({ "id": path, "counter": counter, "note": "kept as is" });
        self.items
            .insert(path.to_owned(), Item { body, version: 1 });
        self
    }

    fn drop_first_writes(mut self, n: u64) -> Self {
        self.drop_writes = n;
        self
    }

    fn fail_writes(mut self, status: u16) -> Self {
        self.fail_writes = Some(status);
        self
    }

    /// The GETs after the first `skip` are answered only once `n` of them have arrived, so
    /// `n` writers all read the same state.
    fn hold_reads(mut self, skip: usize, n: usize) -> Self {
        self.hold_reads = Some((skip, n));
        self
    }

    async fn spawn(self) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            mode: self.mode,
            items: Mutex::new(self.items),
            drop_writes: Mutex::new(self.drop_writes),
            fail_writes: self.fail_writes,
            hold_reads: self
                .hold_reads
                .map(|(skip, n)| (skip, Arc::new(Barrier::new(n)), n)),
            reads: Mutex::new(0),
            applied: watch::channel(0).0,
            post_creates: self.post_creates,
            next_id: Mutex::new(1),
        });
        let server_state = state.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = server_state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Running {
            url: format!("http://{addr}"),
            state,
            server,
        }
    }
}

struct Running {
    url: String,
    state: Arc<State>,
    server: tokio::task::JoinHandle<()>,
}

impl Running {
    fn counter(&self, path: &str) -> i64 {
        let items = self.state.items.lock().unwrap();
        items[path].body["counter"].as_i64().unwrap()
    }

    fn applied(&self) -> u64 {
        *self.state.applied.borrow()
    }

    /// Completes once the upstream has applied `n` writes.
    fn applied_reaches(&self, n: u64) -> impl Future<Output = ()> + use<> {
        let mut applied = self.state.applied.subscribe();
        async move {
            let _ = applied.wait_for(|applied| *applied >= n).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn respond(status: StatusCode, etag: Option<String>, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    if let Some(etag) = etag {
        response.headers_mut().insert(ETAG, etag.parse().unwrap());
    }
    response
}

fn tag(version: u64) -> String {
    format!("\"v{version}\"")
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let empty = Bytes::new();
    match state.mode {
        Mode::Status(code) => {
            return Ok(respond(StatusCode::from_u16(code).unwrap(), None, empty));
        }
        Mode::FixedBody(body) if req.method() == Method::GET => {
            return Ok(respond(StatusCode::OK, Some(tag(1)), Bytes::from(body)));
        }
        _ => {}
    }
    let path = req.uri().path().to_owned();
    let etags = matches!(state.mode, Mode::Correct);
    if req.method() == Method::GET {
        let read = {
            let mut reads = state.reads.lock().unwrap();
            *reads += 1;
            *reads - 1
        };
        if let Some((skip, barrier, n)) = &state.hold_reads {
            if (*skip..skip + n).contains(&read) {
                barrier.wait().await;
            }
        }
        let items = state.items.lock().unwrap();
        return Ok(match items.get(&path) {
            Some(item) => respond(
                StatusCode::OK,
                etags.then(|| tag(item.version)),
                Bytes::from(item.body.to_string()),
            ),
            None => respond(StatusCode::NOT_FOUND, None, empty),
        });
    }
    let method = req.method().clone();
    let if_match = req.headers().get(IF_MATCH).cloned();
    let if_none_match = req.headers().get(IF_NONE_MATCH).cloned();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut body: Value = serde_json::from_slice(&body).unwrap();
    let mut items = state.items.lock().unwrap();
    if let (Some(how), &Method::POST) = (state.post_creates, &method) {
        let id = {
            let mut next = state.next_id.lock().unwrap();
            *next += 1;
            *next - 1
        };
        body["id"] = json!(id);
        let created = format!("{path}/{id}");
        items.insert(
            created.clone(),
            Item {
                body: body.clone(),
                version: 1,
            },
        );
        state.applied.send_modify(|applied| *applied += 1);
        let mut response = respond(
            StatusCode::CREATED,
            etags.then(|| tag(1)),
            Bytes::from(body.to_string()),
        );
        if let PostCreates::Location = how {
            response
                .headers_mut()
                .insert(http::header::LOCATION, created.parse().unwrap());
        }
        return Ok(response);
    }
    let current = items.get(&path).map(|item| item.version);
    if state.post_creates.is_some() && current.is_none() {
        return Ok(respond(StatusCode::NOT_FOUND, None, empty));
    }
    if etags {
        let fails_if_match =
            if_match.is_some_and(|m| current.map(tag).as_deref() != m.to_str().ok());
        let fails_create_only = if_none_match.is_some() && current.is_some();
        if fails_if_match || fails_create_only {
            return Ok(respond(
                StatusCode::PRECONDITION_FAILED,
                current.map(tag),
                empty,
            ));
        }
    }
    if let (Some(status), Some(_)) = (state.fail_writes, current) {
        return Ok(respond(StatusCode::from_u16(status).unwrap(), None, empty));
    }
    {
        let mut drop_writes = state.drop_writes.lock().unwrap();
        if *drop_writes > 0 && current.is_some() {
            *drop_writes -= 1;
            return Ok(respond(StatusCode::OK, current.map(tag), empty));
        }
    }
    let version = current.unwrap_or(0) + 1;
    items.insert(path, Item { body, version });
    state.applied.send_modify(|applied| *applied += 1);
    Ok(respond(StatusCode::OK, etags.then(|| tag(version)), empty))
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Storm arguments for a test: bounded by a request budget, never drawing progress.
fn args(url: &str, writers: usize, keys: usize, requests: u64) -> StormArgs {
    let mut args = StormArgs::new(url);
    args.writers = writers;
    args.keys = keys;
    args.requests = Some(requests);
    args.duration = TEST_DEADLINE;
    args.max_retries = 10_000;
    args.timeout = Duration::from_secs(10);
    args.no_progress = true;
    args
}

async fn storm(args: StormArgs) -> Result<Report, StormError> {
    tokio::time::timeout(TEST_DEADLINE, storm::run(args, std::future::pending()))
        .await
        .expect("storm finished in time")
}

fn sum_of_increments(report: &Report) -> i64 {
    report
        .per_key
        .iter()
        .map(|k| k.final_counter - k.initial_counter)
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Accounting.

#[tokio::test]
async fn correct_upstream_loses_nothing() {
    let up = Upstream::new(Mode::Correct).spawn().await;

    let report = storm(args(&up.url, 8, 3, 200)).await.unwrap();

    assert_eq!(report.lost_updates, 0, "{}", report.render_table());
    assert_eq!(report.cycles, 200);
    assert_eq!(report.commits, 200);
    assert_eq!(report.gave_up, 0);
    assert_eq!(report.errors.total, 0);
    assert_eq!(report.attempts, report.commits + report.conflicts.total);
    assert_eq!(report.conflicts.status_409, 0);
    assert_eq!(sum_of_increments(&report), 200);
    // Storm created the three keys; everything else it applied went through If-Match.
    assert_eq!(up.applied(), 3 + 200);
    for key in &report.per_key {
        assert_eq!(key.initial_counter, 0);
        assert_eq!(up.counter(&key.path), key.final_counter);
        assert_eq!(key.commits as i64, key.final_counter);
    }
    assert_eq!(report.write_latency_ms.count, report.attempts);
    assert!(report.read_latency_ms.p50 <= report.read_latency_ms.max);
    assert!(report.render_table().contains("no lost updates"));
    assert!(!report.render_table().contains("LOST UPDATES"));
}

#[tokio::test]
async fn dropped_acknowledged_writes_are_counted_exactly() {
    const DROPPED: u64 = 7;
    let up = Upstream::new(Mode::Correct)
        .item("/items/storm-0", 40)
        .item("/items/storm-1", 2)
        .drop_first_writes(DROPPED)
        .spawn()
        .await;

    let report = storm(args(&up.url, 4, 2, 60)).await.unwrap();

    assert_eq!(report.lost_updates, DROPPED, "{}", report.render_table());
    assert_eq!(report.commits, 60);
    assert_eq!(up.applied(), 60 - DROPPED);
    assert_eq!(sum_of_increments(&report), (60 - DROPPED) as i64);
    assert_eq!(report.per_key[0].initial_counter, 40);
    assert_eq!(report.per_key[1].initial_counter, 2);
    let per_key: u64 = report.per_key.iter().map(|k| k.lost).sum();
    assert_eq!(per_key, DROPPED);
    assert_eq!(report.unexplained_increments, 0);
    assert!(
        report
            .render_table()
            .contains(&format!("LOST UPDATES DETECTED: {DROPPED}"))
    );
}

#[tokio::test]
async fn unconditional_writes_against_a_racy_upstream_lose_updates() {
    const WRITERS: usize = 4;
    // The setup GET passes; the next four wait for each other, so all writers read 5.
    let up = Upstream::new(Mode::Racy)
        .item("/items/storm-0", 5)
        .hold_reads(1, WRITERS)
        .spawn()
        .await;
    let mut args = args(&up.url, WRITERS, 1, WRITERS as u64);
    args.no_if_match = true;

    let report = storm(args).await.unwrap();

    assert!(!report.if_match);
    assert_eq!(report.commits, WRITERS as u64);
    assert_eq!(report.per_key[0].final_counter, 6);
    assert_eq!(up.counter("/items/storm-0"), 6);
    assert_eq!(
        report.lost_updates,
        WRITERS as u64 - 1,
        "{}",
        report.render_table()
    );
    assert!(report.render_table().contains("LOST UPDATES DETECTED: 3"));
}

#[tokio::test]
async fn the_write_preserves_other_fields() {
    let up = Upstream::new(Mode::Correct)
        .item("/items/storm-0", 0)
        .spawn()
        .await;

    storm(args(&up.url, 1, 1, 3)).await.unwrap();

    let items = up.state.items.lock().unwrap();
    let body = &items["/items/storm-0"].body;
    assert_eq!(body["counter"], 3);
    assert_eq!(body["note"], "kept as is");
}

#[tokio::test]
async fn failed_writes_are_errors_by_kind() {
    for (status, uncertain) in [(503, true), (400, false)] {
        let up = Upstream::new(Mode::Correct)
            .item("/items/storm-0", 0)
            .fail_writes(status)
            .spawn()
            .await;

        let report = storm(args(&up.url, 2, 1, 10)).await.unwrap();

        assert_eq!(report.commits, 0);
        assert_eq!(report.attempts, 10);
        assert_eq!(report.errors.total, 10);
        let by_kind = if uncertain {
            report.errors.status_5xx
        } else {
            report.errors.status_4xx
        };
        assert_eq!(by_kind, 10, "{}", report.render_table());
        // A 5xx write may have applied: storm says its count is a lower bound.
        assert_eq!(report.uncertain_writes, if uncertain { 10 } else { 0 });
        assert_eq!(report.lost_updates, 0);
    }
}

#[tokio::test]
async fn a_failing_read_during_setup_is_a_status_error() {
    let up = Upstream::new(Mode::Status(500)).spawn().await;
    let err = storm(args(&up.url, 2, 1, 10)).await.unwrap_err();
    assert!(
        matches!(err, StormError::Status { method: "GET", status, .. } if status == 500),
        "{err:?}"
    );
    assert!(err.to_string().contains("500"));
}

// ---------------------------------------------------------------------------------------------
// Where the keys are, and how they are made.

#[tokio::test]
async fn keys_live_under_the_targets_path() {
    let up = Upstream::new(Mode::Correct).spawn().await;

    let report = storm(args(&format!("{}/things/", up.url), 2, 2, 20))
        .await
        .unwrap();

    let paths: Vec<&str> = report.per_key.iter().map(|k| k.path.as_str()).collect();
    assert_eq!(paths, ["/things/storm-0", "/things/storm-1"]);
    assert_eq!(
        up.counter("/things/storm-0") + up.counter("/things/storm-1"),
        20
    );
    assert_eq!(report.per_key[0].url, format!("{}/things/storm-0", up.url));
}

#[tokio::test]
async fn post_creates_keys_where_the_target_says() {
    for how in [PostCreates::Location, PostCreates::BodyId] {
        let up = Upstream::new(Mode::Correct).post_creates(how).spawn().await;
        let mut args = args(&format!("{}/items", up.url), 4, 3, 60);
        args.create = storm::Create::Post;

        let report = storm(args).await.unwrap();

        let mut paths: Vec<&str> = report.per_key.iter().map(|k| k.path.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(paths, ["/items/1", "/items/2", "/items/3"]);
        assert_eq!(report.lost_updates, 0, "{}", report.render_table());
        assert_eq!(report.commits, 60);
        let total: i64 = paths.iter().map(|p| up.counter(p)).sum();
        assert_eq!(total, 60);
        assert_eq!(up.applied(), 3 + 60);
    }
}

#[tokio::test]
async fn a_target_that_refuses_put_create_says_to_post() {
    let up = Upstream::new(Mode::Correct)
        .post_creates(PostCreates::BodyId)
        .spawn()
        .await;

    let err = storm(args(&format!("{}/items", up.url), 1, 1, 1))
        .await
        .unwrap_err();

    assert!(
        matches!(err, StormError::CreateRefused { method: "PUT", status, .. } if status == 404),
        "{err:?}"
    );
    assert!(err.to_string().contains("--create post"), "{err}");
    assert_eq!(up.applied(), 0);
}

#[tokio::test]
async fn existing_keys_by_list_or_start() {
    let up = Upstream::new(Mode::Correct)
        .item("/items/a", 5)
        .item("/items/b", 0)
        .item("/items/1", 0)
        .item("/items/2", 10)
        .spawn()
        .await;
    let target = format!("{}/items", up.url);

    let mut listed = args(&target, 2, 1, 20);
    listed.keys_list = vec!["a".to_owned(), "b".to_owned()];
    listed.create = storm::Create::None;
    let report = storm(listed).await.unwrap();
    let paths: Vec<&str> = report.per_key.iter().map(|k| k.path.as_str()).collect();
    assert_eq!(paths, ["/items/a", "/items/b"]);
    assert_eq!(report.per_key[0].initial_counter, 5);
    assert_eq!(up.counter("/items/a") + up.counter("/items/b"), 5 + 20);

    let mut numbered = args(&target, 2, 2, 20);
    numbered.key_start = Some(1);
    let report = storm(numbered).await.unwrap();
    let paths: Vec<&str> = report.per_key.iter().map(|k| k.path.as_str()).collect();
    assert_eq!(paths, ["/items/1", "/items/2"]);
    assert_eq!(report.per_key[1].initial_counter, 10);
    // Nothing was created: every applied write is one of the 40 increments.
    assert_eq!(up.applied(), 40);

    let mut missing = args(&target, 1, 1, 1);
    missing.keys_list = vec!["nope".to_owned()];
    missing.create = storm::Create::None;
    let err = storm(missing).await.unwrap_err();
    assert!(matches!(err, StormError::Missing { .. }), "{err:?}");
    assert!(err.to_string().contains("--keys-list"), "{err}");
}

/// The binary's exit status says whether updates were lost.
#[tokio::test]
async fn the_binary_exits_3_on_lost_updates_unless_allowed() {
    let storm_bin = |url: &str, extra: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ifmatch"));
        command
            .args(["storm", "--target", url, "--writers", "4", "--keys", "1"])
            .args(["--requests", "4", "--no-progress"])
            .args(extra);
        command
    };
    let run = |mut command: tokio::process::Command| async move {
        let out = tokio::time::timeout(TEST_DEADLINE, command.output())
            .await
            .expect("storm finished in time")
            .expect("storm ran");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.code(),
            stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let clean = Upstream::new(Mode::Correct).spawn().await;
    let (code, stdout, stderr) = run(storm_bin(&clean.url, &[])).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("no lost updates"), "{stdout}");

    for (allow, want) in [(false, 3), (true, 0)] {
        let racy = Upstream::new(Mode::Racy)
            .item("/items/storm-0", 0)
            .hold_reads(1, 4)
            .spawn()
            .await;
        let extra: &[&str] = if allow {
            &["--no-if-match", "--allow-lost"]
        } else {
            &["--no-if-match"]
        };
        let (code, stdout, stderr) = run(storm_bin(&racy.url, extra)).await;
        assert_eq!(code, Some(want), "{stdout}{stderr}");
        assert!(stdout.contains("LOST UPDATES DETECTED: 3"), "{stdout}");
        if !allow {
            assert!(stderr.contains("--allow-lost"), "{stderr}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Ending a storm.

#[tokio::test]
async fn shutdown_stops_the_storm_and_still_reports() {
    let up = Upstream::new(Mode::Correct).spawn().await;
    let mut args = args(&up.url, 4, 2, u64::MAX);
    args.requests = None;
    let shutdown = up.applied_reaches(2 + 30);

    let report = tokio::time::timeout(TEST_DEADLINE, storm::run(args, shutdown))
        .await
        .expect("storm stopped on shutdown")
        .unwrap();

    assert!(report.interrupted);
    assert!(report.commits >= 30);
    assert_eq!(report.lost_updates, 0, "{}", report.render_table());
    assert_eq!(sum_of_increments(&report), report.commits as i64);
    assert!(report.render_table().contains("(interrupted)"));
}

#[tokio::test]
async fn duration_bounds_the_storm() {
    let up = Upstream::new(Mode::Correct).spawn().await;
    let mut args = args(&up.url, 2, 1, 0);
    args.requests = None;
    args.duration = Duration::from_millis(200);

    let report = storm(args).await.unwrap();

    assert!(!report.interrupted);
    assert!(report.elapsed_secs >= 0.2);
    assert_eq!(report.lost_updates, 0);
    assert_eq!(sum_of_increments(&report), report.commits as i64);
}

#[tokio::test]
async fn json_report_has_the_same_figures() {
    let up = Upstream::new(Mode::Correct).spawn().await;
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("storm-report-{}.json", std::process::id()));
    let mut args = args(&up.url, 2, 2, 20);
    args.json = Some(path.clone());

    let report = storm(args).await.unwrap();

    let written: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        written,
        serde_json::from_str::<Value>(&report.to_json()).unwrap()
    );
    assert_eq!(written["lost_updates"], 0);
    assert_eq!(written["commits"], 20);
    assert_eq!(
        written["conflicts"]["status_412"],
        report.conflicts.status_412
    );
    assert_eq!(written["per_key"].as_array().unwrap().len(), 2);
    assert!(written["write_latency_ms"]["p99"].is_number());
}

// ---------------------------------------------------------------------------------------------
// Bad targets and arguments.

#[tokio::test]
async fn nothing_listening_is_unreachable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);

    let err = storm(args(&format!("http://{addr}"), 2, 1, 1))
        .await
        .unwrap_err();

    assert!(matches!(err, StormError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("cannot reach"));
}

#[tokio::test]
async fn a_non_json_body_is_rejected() {
    let up = Upstream::new(Mode::FixedBody("<html>hello</html>"))
        .spawn()
        .await;
    let err = storm(args(&up.url, 1, 1, 1)).await.unwrap_err();
    assert!(matches!(err, StormError::NotJson { .. }), "{err:?}");
}

#[tokio::test]
async fn a_non_object_body_is_rejected() {
    let up = Upstream::new(Mode::FixedBody("[1, 2]")).spawn().await;
    let err = storm(args(&up.url, 1, 1, 1)).await.unwrap_err();
    assert!(matches!(err, StormError::NotAnObject { .. }), "{err:?}");
}

#[tokio::test]
async fn a_missing_field_is_rejected() {
    let up = Upstream::new(Mode::FixedBody(r#"{"id": "x", "count": 1}"#))
        .spawn()
        .await;
    let err = storm(args(&up.url, 1, 1, 1)).await.unwrap_err();
    assert!(
        matches!(&err, StormError::MissingField { field, .. } if field == "counter"),
        "{err:?}"
    );
    assert!(err.to_string().contains("--field"));
}

#[tokio::test]
async fn a_non_integer_field_is_rejected() {
    let up = Upstream::new(Mode::FixedBody(r#"{"counter": "seven"}"#))
        .spawn()
        .await;
    let err = storm(args(&up.url, 1, 1, 1)).await.unwrap_err();
    assert!(matches!(err, StormError::NotAnInteger { .. }), "{err:?}");
}

#[tokio::test]
async fn if_match_mode_needs_an_etag() {
    let up = Upstream::new(Mode::Racy)
        .item("/items/storm-0", 0)
        .spawn()
        .await;
    let err = storm(args(&up.url, 1, 1, 1)).await.unwrap_err();
    assert!(matches!(err, StormError::NoEtag { .. }), "{err:?}");
    assert!(err.to_string().contains("--no-if-match"));
    assert_eq!(up.applied(), 0);
}

#[tokio::test]
async fn invalid_urls_and_arguments_are_rejected_before_any_request() {
    for target in [
        "not a url",
        "https://127.0.0.1:1",
        "127.0.0.1:1",
        "http://h/?q=1",
    ] {
        let err = storm(args(target, 1, 1, 1)).await.unwrap_err();
        assert!(
            matches!(err, StormError::InvalidUrl { .. }),
            "{target}: {err:?}"
        );
    }
    // The collection is the target's path; the prefix names keys under it.
    let mut bad_prefix = args("http://127.0.0.1:1", 1, 1, 1);
    bad_prefix.key_prefix = Some("/items/".to_owned());
    let err = storm(bad_prefix).await.unwrap_err();
    assert!(matches!(err, StormError::InvalidUrl { .. }), "{err:?}");
    assert!(err.to_string().contains("--target"), "{err}");
    let mut nested = args("http://127.0.0.1:1", 1, 1, 1);
    nested.keys_list = vec!["a/b".to_owned()];
    let err = storm(nested).await.unwrap_err();
    assert!(matches!(err, StormError::InvalidArgs(_)), "{err:?}");
    let mut twice = args("http://127.0.0.1:1", 1, 1, 1);
    twice.keys_list = vec!["a".to_owned(), "a".to_owned()];
    let err = storm(twice).await.unwrap_err();
    assert!(matches!(err, StormError::InvalidArgs(_)), "{err:?}");

    let err = storm(args("http://127.0.0.1:1", 0, 1, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, StormError::InvalidArgs(_)), "{err:?}");
    let err = storm(args("http://127.0.0.1:1", 1, 0, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, StormError::InvalidArgs(_)), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// The command line.

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    storm: StormArgs,
}

#[test]
fn command_line_defaults_match_new() {
    let cli = Cli::try_parse_from(["storm", "--target", "http://127.0.0.1:8080"]).unwrap();
    assert_eq!(cli.storm, StormArgs::new("http://127.0.0.1:8080"));
}

#[test]
fn command_line_flags_parse() {
    let cli = Cli::try_parse_from([
        "storm",
        "--target=http://127.0.0.1:8080",
        "--writers=32",
        "--keys=2",
        "--duration=1m 30s",
        "--requests=500",
        "--field=version",
        "--key-prefix=doc-",
        "--key-start=7",
        "--create=post",
        "--allow-lost",
        "--json=out.json",
        "--no-if-match",
        "--max-retries=3",
        "--timeout=250ms",
        "--no-progress",
    ])
    .unwrap();
    let s = cli.storm;
    assert_eq!(s.writers, 32);
    assert_eq!(s.keys, 2);
    assert_eq!(s.duration, Duration::from_secs(90));
    assert_eq!(s.requests, Some(500));
    assert_eq!(s.field, "version");
    assert_eq!(s.key_prefix.as_deref(), Some("doc-"));
    assert_eq!(s.key_start, Some(7));
    assert_eq!(s.create, storm::Create::Post);
    assert!(s.allow_lost);
    assert_eq!(s.json.as_deref(), Some(std::path::Path::new("out.json")));
    assert!(s.no_if_match && s.no_progress);
    assert_eq!(s.max_retries, 3);
    assert_eq!(s.timeout, Duration::from_millis(250));

    assert!(Cli::try_parse_from(["storm", "--target=http://x", "--duration=soon"]).is_err());

    let cli =
        Cli::try_parse_from(["storm", "--target=http://x/items", "--keys-list=1,2, 3"]).unwrap();
    assert_eq!(cli.storm.keys_list, ["1", "2", " 3"]);
    assert!(
        Cli::try_parse_from([
            "storm",
            "--target=http://x",
            "--keys-list=1",
            "--key-start=1"
        ])
        .is_err()
    );
}
