//! What a client sends is echoed in bounded amounts: a huge `If-Match` makes neither a large
//! problem body nor a large log line, a malformed one is logged as sent, and a storm of refused
//! writes is logged at a bounded rate with a count of what was suppressed.
//!
//! One test per concern, each on its own current-thread runtime with a log capture as its
//! thread's default subscriber. The rejection log budget is per process, so the tests take
//! turns ([`SERIAL`]) and only the storm test sends more than a handful of rejections.

use std::convert::Infallible;
use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use ifmatch::proxy::ObserveLayer;
use ifmatch::{MemoryStore, Policy, PreconditionLayer, RequestBody, ResponseBody};
use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceExt};

/// Log lines written by the code under test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One test at a time: they share the process's log budget.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

type Stack = ifmatch::proxy::Observe<
    ifmatch::Precondition<
        BoxCloneService<Request<RequestBody<Full<Bytes>>>, Response<Full<Bytes>>, Infallible>,
        MemoryStore,
    >,
>;

/// The guard and the observer in front of an origin that serves "v1" and accepts every write.
fn stack() -> Stack {
    let origin = tower::service_fn(|req: Request<RequestBody<Full<Bytes>>>| async move {
        let _ = req.into_body().collect().await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"v1"))))
    });
    let guard = PreconditionLayer::new(MemoryStore::default())
        .policy(Policy::default())
        .layer(BoxCloneService::new(origin));
    ObserveLayer::new(None).layer(guard)
}

async fn send(svc: &mut Stack, method: Method, if_match: Option<&str>) -> (StatusCode, String) {
    let mut req = Request::builder().method(method).uri("/items/1");
    if let Some(value) = if_match {
        req = req.header("if-match", value);
    }
    let req = req.body(Full::new(Bytes::from_static(b"{}"))).unwrap();
    let response: Response<ResponseBody<Full<Bytes>>> =
        svc.ready().await.unwrap().call(req).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn rejected_lines(captured: &Captured) -> Vec<String> {
    captured
        .lines()
        .into_iter()
        .filter(|line| line.contains("write rejected") && !line.contains("suppressed"))
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn a_five_thousand_tag_if_match_gets_a_small_409_and_a_small_log_line() {
    let _serial = SERIAL.lock().await;
    let (captured, _guard) = capture();
    let mut svc = stack();
    let (status, _) = send(&mut svc, Method::GET, None).await;
    assert_eq!(status, StatusCode::OK);
    let tags: Vec<String> = (0..5000).map(|i| format!("\"stale-{i}\"")).collect();
    let if_match = tags.join(", ");
    assert!(if_match.len() > 50_000);

    let (status, body) = send(&mut svc, Method::PUT, Some(&if_match)).await;

    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body.len() < 1024,
        "409 body is {} bytes: {body}",
        body.len()
    );
    assert!(body.contains("\\\"stale-0\\\""), "{body}");
    assert!(body.contains("more tags]"), "{body}");
    let lines = rejected_lines(&captured);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].len() < 1024,
        "log line is {} bytes",
        lines[0].len()
    );
    assert!(lines[0].contains("more tags]"), "{}", lines[0]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_malformed_if_match_is_logged_as_sent() {
    let _serial = SERIAL.lock().await;
    let (captured, _guard) = capture();
    let mut svc = stack();

    let (status, body) = send(&mut svc, Method::PUT, Some("nope")).await;
    let (long_status, long_body) = send(&mut svc, Method::PUT, Some(&"x".repeat(20_000))).await;

    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(long_status, StatusCode::BAD_REQUEST);
    assert!(long_body.len() < 1024, "{}", long_body.len());
    let lines = rejected_lines(&captured);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].contains("sent=\"If-Match: nope"), "{}", lines[0]);
    assert!(!lines[0].contains("sent=\"none"), "{}", lines[0]);
    assert!(lines[1].len() < 1024, "{}", lines[1].len());
    assert!(lines[1].contains("sent=\"If-Match: xxx"), "{}", lines[1]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_storm_of_rejections_is_logged_at_a_bounded_rate() {
    let _serial = SERIAL.lock().await;
    let (captured, _guard) = capture();
    let mut svc = stack();
    const SENT: usize = 500;

    for _ in 0..SENT {
        let (status, _) = send(&mut svc, Method::PUT, Some("nope")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    // The suppressed count is reported with the first line of a later second.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    send(&mut svc, Method::PUT, Some("nope")).await;

    let lines = captured.lines();
    let logged = lines
        .iter()
        .filter(|line| line.contains("sent=\"If-Match: nope"))
        .count();
    // 500 requests take well under a second or two: at most 20 lines a second, plus the last.
    assert!(logged <= 3 * 20 + 1, "{logged} lines logged");
    let suppressed: usize = lines
        .iter()
        .filter_map(|line| line.split("suppressed=").nth(1))
        .map(|rest| {
            rest.split_whitespace()
                .next()
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    assert!(suppressed > 0, "{lines:?}");
    // Every rejection is either a line or counted as suppressed (the other tests of this
    // process may have used some of the budget, or had some of theirs counted here).
    assert!(logged + suppressed > SENT, "{logged} + {suppressed}");
}
