//! In-process tests of the precondition guard over a scripted origin: each rejection is
//! proven not to have reached the origin by counting what the origin saw.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, ETAG, IF_MATCH, IF_NONE_MATCH};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use ifmatch::guard::{EtagSource, OnUnknown, RouteContext};
use ifmatch::{MemoryStore, Policy, PreconditionLayer, RequestBody, ResponseBody};
use tokio::sync::oneshot;
use tower::{Layer, Service, ServiceExt};

/// How the origin labels its representations.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tags {
    /// No ETag at all (most legacy APIs).
    None,
    /// A weak ETag, like Express's default.
    Weak,
    /// A strong ETag `"v<version>"` on reads and writes.
    Strong,
}

/// A pause point: the origin signals `entered` and waits for `release`.
struct Pause {
    entered: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

#[derive(Default)]
struct OriginState {
    items: HashMap<String, (Bytes, u64)>,
    seen: Vec<(Method, String, HeaderMap)>,
    pauses: HashMap<Method, Pause>,
    status_override: Option<StatusCode>,
    write_status: Option<StatusCode>,
    last_modified: Option<String>,
}

/// A scripted upstream: items in memory, versioned, optionally tagged; records every request.
#[derive(Clone)]
struct Origin {
    tags: Tags,
    state: Arc<Mutex<OriginState>>,
}

impl Origin {
    fn new(tags: Tags) -> Self {
        Self {
            tags,
            state: Arc::default(),
        }
    }

    fn with(self, path: &str, body: &str) -> Self {
        self.put_direct(path, body);
        self
    }

    /// Changes an item behind the proxy's back.
    fn put_direct(&self, path: &str, body: &str) {
        let mut state = self.state.lock().unwrap();
        let version = state.items.get(path).map_or(1, |(_, v)| v + 1);
        state
            .items
            .insert(path.to_owned(), (Bytes::from(body.to_owned()), version));
    }

    fn body(&self, path: &str) -> Option<String> {
        let state = self.state.lock().unwrap();
        state
            .items
            .get(path)
            .map(|(b, _)| String::from_utf8_lossy(b).into_owned())
    }

    fn count(&self, method: Method) -> usize {
        let state = self.state.lock().unwrap();
        state.seen.iter().filter(|(m, _, _)| *m == method).count()
    }

    fn last_headers(&self, method: Method) -> Option<HeaderMap> {
        let state = self.state.lock().unwrap();
        state
            .seen
            .iter()
            .rev()
            .find(|(m, _, _)| *m == method)
            .map(|(_, _, h)| h.clone())
    }

    /// The next request with `method` reads the origin's state, then waits until released.
    fn pause_next(&self, method: Method) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (entered_tx, entered_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        let pause = Pause {
            entered: entered_tx,
            release: release_rx,
        };
        self.state.lock().unwrap().pauses.insert(method, pause);
        (entered_rx, release_tx)
    }

    fn fail_with(&self, status: Option<StatusCode>) {
        self.state.lock().unwrap().status_override = status;
    }

    /// Writes get `status` without applying.
    fn fail_writes_with(&self, status: Option<StatusCode>) {
        self.state.lock().unwrap().write_status = status;
    }

    fn last_modified(&self, date: &str) {
        self.state.lock().unwrap().last_modified = Some(date.to_owned());
    }

    fn tag(&self, version: u64) -> Option<String> {
        match self.tags {
            Tags::None => None,
            Tags::Weak => Some(format!("W/\"v{version}\"")),
            Tags::Strong => Some(format!("\"v{version}\"")),
        }
    }

    async fn handle(self, req: Request<RequestBody<Full<Bytes>>>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let path = parts.uri.path().to_owned();
        let pause = {
            let mut state = self.state.lock().unwrap();
            state
                .seen
                .push((parts.method.clone(), path.clone(), parts.headers.clone()));
            if let Some(status) = state.status_override {
                return reply(status, "", None);
            }
            let write = !matches!(parts.method, Method::GET | Method::HEAD);
            if let (true, Some(status)) = (write, state.write_status) {
                return reply(status, "", None);
            }
            state.pauses.remove(&parts.method)
        };
        // Reads see the state as it is before any pause, like a slow response on the wire.
        let current = self.state.lock().unwrap().items.get(&path).cloned();
        if let Some(pause) = pause {
            let _ = pause.entered.send(());
            let _ = pause.release.await;
        }
        match parts.method {
            Method::GET | Method::HEAD => match current {
                Some((bytes, version)) => {
                    let mut response = reply(StatusCode::OK, bytes, self.tag(version));
                    let date = self.state.lock().unwrap().last_modified.clone();
                    if let Some(date) = date {
                        let value = http::HeaderValue::from_str(&date).unwrap();
                        response
                            .headers_mut()
                            .insert(http::header::LAST_MODIFIED, value);
                    }
                    if parts.method == Method::HEAD {
                        *response.body_mut() = Full::new(Bytes::new());
                    }
                    response
                }
                None => reply(StatusCode::NOT_FOUND, "", None),
            },
            Method::PUT | Method::PATCH | Method::POST => {
                let mut state = self.state.lock().unwrap();
                let (status, version) = match state.items.get(&path) {
                    Some((_, v)) => (StatusCode::OK, v + 1),
                    None => (StatusCode::CREATED, 1),
                };
                state.items.insert(path, (body.clone(), version));
                let tag = match self.tags {
                    Tags::Strong => self.tag(version),
                    _ => None,
                };
                reply(status, body, tag)
            }
            Method::DELETE => {
                let removed = self.state.lock().unwrap().items.remove(&path);
                match removed {
                    Some(_) => reply(StatusCode::NO_CONTENT, "", None),
                    None => reply(StatusCode::NOT_FOUND, "", None),
                }
            }
            _ => reply(StatusCode::METHOD_NOT_ALLOWED, "", None),
        }
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>, tag: Option<String>) -> Response<Full<Bytes>> {
    let mut builder = Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json");
    if let Some(tag) = tag {
        builder = builder.header(ETAG, tag);
    }
    builder.body(Full::new(body.into())).unwrap()
}

type Guarded = ifmatch::Precondition<
    tower::util::BoxCloneService<
        Request<RequestBody<Full<Bytes>>>,
        Response<Full<Bytes>>,
        Infallible,
    >,
    MemoryStore,
>;

/// The guard over `origin` with `policy`.
fn guard(origin: &Origin, policy: Policy) -> Guarded {
    let origin = origin.clone();
    let inner = tower::service_fn(move |req| {
        let origin = origin.clone();
        async move { Ok::<_, Infallible>(origin.handle(req).await) }
    });
    PreconditionLayer::new(MemoryStore::default())
        .policy(policy)
        .layer(tower::util::BoxCloneService::new(inner))
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn etag(&self) -> String {
        self.headers
            .get(ETAG)
            .expect("response has an ETag")
            .to_str()
            .unwrap()
            .to_owned()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("problem+json body")
    }
}

async fn send(
    svc: &mut Guarded,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut req = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let response: Response<ResponseBody<Full<Bytes>>> =
        svc.ready().await.unwrap().call(req).await.unwrap();
    into_reply(response).await
}

async fn into_reply(response: Response<ResponseBody<Full<Bytes>>>) -> Reply {
    let (parts, body) = response.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn get(svc: &mut Guarded, path: &str) -> Reply {
    send(svc, Method::GET, path, &[], "").await
}

async fn put(svc: &mut Guarded, path: &str, if_match: &str, body: &str) -> Reply {
    send(svc, Method::PUT, path, &[("if-match", if_match)], body).await
}

#[tokio::test]
async fn stale_if_match_is_rejected_before_the_origin() {
    let origin = Origin::new(Tags::None).with("/items/1", r#"{"n":1}"#);
    let mut svc = guard(&origin, Policy::default());
    let first = get(&mut svc, "/items/1").await;
    let tag = first.etag();
    assert!(
        put(&mut svc, "/items/1", &tag, r#"{"n":2}"#)
            .await
            .status
            .is_success()
    );

    let stale = put(&mut svc, "/items/1", &tag, r#"{"n":3}"#).await;
    assert_eq!(stale.status, StatusCode::CONFLICT);
    assert_eq!(stale.headers[CONTENT_TYPE], "application/problem+json");
    let problem = stale.json();
    assert_eq!(problem["status"], 409);
    assert!(problem["detail"].as_str().unwrap().contains(&tag));
    let current = problem["current_etag"].as_str().unwrap().to_owned();
    assert_eq!(stale.etag(), current);
    assert_ne!(current, tag);
    assert_eq!(
        origin.count(Method::PUT),
        1,
        "the stale write never reached the origin"
    );
    assert_eq!(origin.body("/items/1").unwrap(), r#"{"n":2}"#);

    // The tag the conflict named is the one to retry with.
    assert!(
        put(&mut svc, "/items/1", &current, r#"{"n":3}"#)
            .await
            .status
            .is_success()
    );
    assert_eq!(origin.body("/items/1").unwrap(), r#"{"n":3}"#);
}

#[tokio::test]
async fn synthesized_etag_is_strong_stable_and_follows_content() {
    let origin = Origin::new(Tags::Weak).with("/a", "one");
    let mut svc = guard(&origin, Policy::default());
    let a = get(&mut svc, "/a").await;
    let b = get(&mut svc, "/a").await;
    assert_eq!(a.etag(), b.etag());
    assert!(
        !a.etag().starts_with("W/"),
        "a weak upstream tag is replaced by a strong one"
    );
    assert_eq!(a.body, "one");
    origin.put_direct("/a", "two");
    let c = get(&mut svc, "/a").await;
    assert_ne!(a.etag(), c.etag());
    // Identity coding is requested so every client hashes the same bytes.
    assert_eq!(
        origin.last_headers(Method::GET).unwrap()["accept-encoding"],
        "identity"
    );
}

#[tokio::test]
async fn if_none_match_on_a_synthesized_tag_gets_304() {
    let origin = Origin::new(Tags::None).with("/a", "body");
    let mut svc = guard(&origin, Policy::default());
    let tag = get(&mut svc, "/a").await.etag();
    let cached = send(&mut svc, Method::GET, "/a", &[("if-none-match", &tag)], "").await;
    assert_eq!(cached.status, StatusCode::NOT_MODIFIED);
    assert_eq!(cached.etag(), tag);
    assert!(cached.body.is_empty());
    // The origin cannot know the proxy's tag: it never saw it.
    assert!(
        origin
            .last_headers(Method::GET)
            .unwrap()
            .get(IF_NONE_MATCH)
            .is_none()
    );
    origin.put_direct("/a", "changed");
    let fresh = send(&mut svc, Method::GET, "/a", &[("if-none-match", &tag)], "").await;
    assert_eq!(fresh.status, StatusCode::OK);
    assert_eq!(fresh.body, "changed");
}

#[tokio::test]
async fn malformed_preconditions_get_400_and_never_reach_the_origin() {
    let origin = Origin::new(Tags::None).with("/a", "x");
    let mut svc = guard(&origin, Policy::default());
    for (name, value) in [
        ("if-match", "abc"),
        ("if-match", ""),
        ("if-match", "*, \"a\""),
        ("if-match", "\"unterminated"),
        ("if-none-match", "w/\"lower\""),
    ] {
        let reply = send(&mut svc, Method::PUT, "/a", &[(name, value)], "y").await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{name}: {value}");
        assert_eq!(reply.json()["status"], 400);
    }
    assert_eq!(origin.count(Method::PUT), 0);
    assert_eq!(origin.count(Method::GET), 0);
}

/// RFC 9110 §13.1.3 and §13.1.4: a recipient MUST ignore a date precondition that is not one
/// valid HTTP-date. The write is then what it would be without that header.
#[tokio::test]
async fn invalid_dates_are_ignored_not_refused() {
    let origin = Origin::new(Tags::None).with("/a", "x");
    let mut svc = guard(&origin, Policy::default());
    for value in [
        "yesterday",
        "Sun, 06 Nov 1994 08:49:37 GMT, Sun, 06 Nov 1994 08:49:37 GMT",
    ] {
        let reply = send(
            &mut svc,
            Method::PUT,
            "/a",
            &[("if-unmodified-since", value)],
            "y",
        )
        .await;
        assert!(reply.status.is_success(), "{value}: {}", reply.status);
    }
    assert_eq!(origin.count(Method::PUT), 2);
    let read = send(
        &mut svc,
        Method::GET,
        "/a",
        &[("if-modified-since", "yesterday")],
        "",
    )
    .await;
    assert_eq!(read.status, StatusCode::OK);

    // Ignored, it does not satisfy a route that requires a precondition.
    let policy = Policy {
        require_precondition: Policy::default_required_methods(),
        ..Policy::default()
    };
    let mut svc = guard(&origin, policy);
    let reply = send(
        &mut svc,
        Method::PUT,
        "/a",
        &[("if-unmodified-since", "yesterday")],
        "y",
    )
    .await;
    assert_eq!(reply.status, StatusCode::PRECONDITION_REQUIRED);
    assert_eq!(origin.count(Method::PUT), 2);
}

#[tokio::test]
async fn required_preconditions_get_428() {
    let origin = Origin::new(Tags::None).with("/a", "x");
    let policy = Policy {
        require_precondition: Policy::default_required_methods(),
        ..Policy::default()
    };
    let mut svc = guard(&origin, policy);
    for method in [Method::PUT, Method::PATCH, Method::DELETE] {
        let reply = send(&mut svc, method.clone(), "/a", &[], "y").await;
        assert_eq!(reply.status, StatusCode::PRECONDITION_REQUIRED, "{method}");
        assert_eq!(reply.json()["status"], 428);
    }
    assert_eq!(origin.count(Method::PUT) + origin.count(Method::DELETE), 0);
    // POST to a collection is exempt unless listed; create-only satisfies the requirement.
    assert_eq!(
        send(&mut svc, Method::POST, "/c", &[], "n").await.status,
        StatusCode::CREATED
    );
    let create = send(
        &mut svc,
        Method::PUT,
        "/new",
        &[("if-none-match", "*")],
        "n",
    )
    .await;
    assert_eq!(create.status, StatusCode::CREATED);
}

#[tokio::test]
async fn rfc_mode_answers_412() {
    let origin = Origin::new(Tags::None).with("/a", "x");
    let policy = Policy {
        conflict_status: StatusCode::PRECONDITION_FAILED,
        ..Policy::default()
    };
    let mut svc = guard(&origin, policy);
    let reply = put(&mut svc, "/a", "\"nope\"", "y").await;
    assert_eq!(reply.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(reply.json()["status"], 412);
    assert_eq!(origin.count(Method::PUT), 0);
}

#[tokio::test]
async fn lists_wildcards_and_weak_tags() {
    let origin = Origin::new(Tags::None).with("/a", "x");
    let mut svc = guard(&origin, Policy::default());
    let tag = get(&mut svc, "/a").await.etag();

    let weak = format!("W/{tag}");
    assert_eq!(
        put(&mut svc, "/a", &weak, "w").await.status,
        StatusCode::CONFLICT,
        "weak never matches"
    );
    let list = format!("\"other\", {tag}");
    assert!(
        put(&mut svc, "/a", &list, "l").await.status.is_success(),
        "any member matches"
    );
    assert!(
        put(&mut svc, "/a", "*", "s").await.status.is_success(),
        "* matches an existing resource"
    );
    let absent = put(&mut svc, "/missing", "*", "s").await;
    assert_eq!(
        absent.status,
        StatusCode::CONFLICT,
        "* fails on an absent resource"
    );
    assert_eq!(absent.json()["type"], "urn:ifmatch:problem:resource-absent");
    assert_eq!(origin.count(Method::PUT), 2);
}

#[tokio::test]
async fn create_only_if_none_match_star() {
    let origin = Origin::new(Tags::None).with("/exists", "x");
    let mut svc = guard(&origin, Policy::default());
    let exists = send(
        &mut svc,
        Method::PUT,
        "/exists",
        &[("if-none-match", "*")],
        "y",
    )
    .await;
    assert_eq!(exists.status, StatusCode::CONFLICT);
    assert_eq!(exists.json()["type"], "urn:ifmatch:problem:already-exists");
    let created = send(
        &mut svc,
        Method::PUT,
        "/fresh",
        &[("if-none-match", "*")],
        "y",
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let again = send(
        &mut svc,
        Method::PUT,
        "/fresh",
        &[("if-none-match", "*")],
        "z",
    )
    .await;
    assert_eq!(
        again.status,
        StatusCode::CONFLICT,
        "the create was recorded"
    );
    assert_eq!(origin.count(Method::PUT), 1);
    assert_eq!(origin.body("/fresh").unwrap(), "y");
}

#[tokio::test]
async fn unknown_keys_are_revalidated_with_the_writers_credentials() {
    let origin = Origin::new(Tags::None).with("/a", "x");
    let mut svc = guard(&origin, Policy::default());
    // A tag obtained before a restart (or from another proxy) is checked against a fresh read.
    let mut other = guard(&origin, Policy::default());
    let tag = get(&mut other, "/a").await.etag();

    let auth = [
        ("if-match", tag.as_str()),
        ("authorization", "Bearer alice"),
        ("content-type", "text/plain"),
    ];
    let ok = send(&mut svc, Method::PUT, "/a", &auth, "y").await;
    assert!(ok.status.is_success());
    let revalidation = origin.state.lock().unwrap().seen[1].2.clone();
    assert_eq!(revalidation["authorization"], "Bearer alice");
    assert!(revalidation.get(CONTENT_TYPE).is_none());
    assert!(revalidation.get(IF_MATCH).is_none());
    // The synthesized tag was stripped from the forwarded write: the origin cannot know it.
    assert!(
        origin
            .last_headers(Method::PUT)
            .unwrap()
            .get(IF_MATCH)
            .is_none()
    );

    let stale = put(&mut svc, "/a", &tag, "z").await;
    assert_eq!(stale.status, StatusCode::CONFLICT);
    assert_eq!(origin.count(Method::PUT), 1);
    assert_eq!(origin.body("/a").unwrap(), "y");
}

#[tokio::test]
async fn revalidation_relays_refusals_and_fails_closed() {
    let origin = Origin::new(Tags::None).with("/a", "x");
    let mut svc = guard(&origin, Policy::default());
    origin.fail_with(Some(StatusCode::FORBIDDEN));
    let forbidden = put(
        &mut svc,
        "/a",
        "\"ifm-00000000000000000000000000000000\"",
        "y",
    )
    .await;
    assert_eq!(
        forbidden.status,
        StatusCode::FORBIDDEN,
        "relayed as the upstream sent it"
    );
    origin.fail_with(Some(StatusCode::SERVICE_UNAVAILABLE));
    let down = put(
        &mut svc,
        "/a",
        "\"ifm-00000000000000000000000000000000\"",
        "y",
    )
    .await;
    assert_eq!(down.status, StatusCode::BAD_GATEWAY);
    assert_eq!(down.json()["status"], 502);
    assert_eq!(
        origin.count(Method::PUT),
        0,
        "an unestablished state never lets the write through"
    );
}

#[tokio::test]
async fn on_unknown_reject_and_forward() {
    let origin = Origin::new(Tags::None).with("/a", "x");
    let reject = Policy {
        on_unknown: OnUnknown::Reject,
        ..Policy::default()
    };
    let mut svc = guard(&origin, reject);
    let reply = put(&mut svc, "/a", "\"anything\"", "y").await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(reply.json()["type"], "urn:ifmatch:problem:unknown-state");
    let forward = Policy {
        on_unknown: OnUnknown::Forward,
        ..Policy::default()
    };
    let mut svc = guard(&origin, forward);
    assert!(
        put(&mut svc, "/a", "\"anything\"", "y")
            .await
            .status
            .is_success()
    );
    assert_eq!(origin.count(Method::GET), 0, "neither mode revalidates");
}

#[tokio::test]
async fn upstream_strong_etags_are_learned_and_passed_through() {
    let origin = Origin::new(Tags::Strong).with("/a", "x");
    let mut svc = guard(&origin, Policy::default());
    let tag = get(&mut svc, "/a").await.etag();
    assert_eq!(tag, "\"v1\"");
    let ok = put(&mut svc, "/a", "\"v1\"", "y").await;
    assert_eq!(ok.etag(), "\"v2\"");
    assert_eq!(
        origin.last_headers(Method::PUT).unwrap()[IF_MATCH],
        "\"v1\"",
        "the upstream's own tag passes through"
    );
    // The write's response taught the new validator: no revalidation needed.
    let gets = origin.count(Method::GET);
    assert_eq!(
        put(&mut svc, "/a", "\"v1\"", "z").await.status,
        StatusCode::CONFLICT
    );
    assert!(put(&mut svc, "/a", "\"v2\"", "z").await.status.is_success());
    assert_eq!(origin.count(Method::GET), gets);
}

#[tokio::test]
async fn a_read_racing_a_write_does_not_reinstall_a_stale_validator() {
    for tags in [Tags::None, Tags::Strong] {
        let origin = Origin::new(tags).with("/a", "old");
        let mut svc = guard(&origin, Policy::default());
        let old = get(&mut svc, "/a").await.etag();

        // A slow read sees the old state...
        let (entered, release) = origin.pause_next(Method::GET);
        let mut reader = svc.clone();
        let slow_read = tokio::spawn(async move { get(&mut reader, "/a").await });
        entered.await.unwrap();
        // ...a write lands meanwhile...
        assert!(put(&mut svc, "/a", &old, "new").await.status.is_success());
        // ...and the read's stale answer arrives last.
        release.send(()).unwrap();
        let stale = slow_read.await.unwrap();
        assert_eq!(stale.body, "old");

        let lost = put(&mut svc, "/a", &old, "lost update").await;
        assert_eq!(
            lost.status,
            StatusCode::CONFLICT,
            "{tags:?}: the stale validator was re-installed"
        );
        assert_eq!(origin.body("/a").unwrap(), "new");
    }
}

#[tokio::test]
async fn one_write_per_resource_in_flight() {
    let origin = Origin::new(Tags::None).with("/a", "x");
    let policy = Policy {
        lease_wait: Duration::from_millis(50),
        ..Policy::default()
    };
    let mut svc = guard(&origin, policy);
    let tag = get(&mut svc, "/a").await.etag();
    let (entered, release) = origin.pause_next(Method::PUT);
    let mut first = svc.clone();
    let first_tag = tag.clone();
    let slow = tokio::spawn(async move { put(&mut first, "/a", &first_tag, "first").await });
    entered.await.unwrap();

    let busy = put(&mut svc, "/a", &tag, "second").await;
    assert_eq!(busy.status, StatusCode::CONFLICT);
    assert_eq!(
        busy.json()["type"],
        "urn:ifmatch:problem:update-in-progress"
    );
    release.send(()).unwrap();
    assert!(slow.await.unwrap().status.is_success());
    assert_eq!(origin.count(Method::PUT), 1);
    assert_eq!(origin.body("/a").unwrap(), "first");
}

#[tokio::test]
async fn a_write_abandoned_midway_keeps_the_resource_fenced_until_its_outcome() {
    let origin = Origin::new(Tags::Strong).with("/a", "x");
    let policy = Policy {
        lease_wait: Duration::from_millis(500),
        ..Policy::default()
    };
    let mut svc = guard(&origin, policy);
    let tag = get(&mut svc, "/a").await.etag();
    let (entered, release) = origin.pause_next(Method::PUT);
    let mut first = svc.clone();
    let first_tag = tag.clone();
    let abandoned = tokio::spawn(async move { put(&mut first, "/a", &first_tag, "maybe").await });
    entered.await.unwrap();
    abandoned.abort();
    let _ = abandoned.await;
    // The upstream may still apply the abandoned write: the next one waits, then is refused
    // without reaching it.
    let next = put(&mut svc, "/a", &tag, "y").await;
    assert_eq!(next.status, StatusCode::CONFLICT);
    assert_eq!(
        next.json()["type"],
        "urn:ifmatch:problem:update-in-progress"
    );
    assert_eq!(origin.count(Method::PUT), 1);
    // It applies; its answer's validator is what the guard knows now, so the old tag is stale.
    release.send(()).unwrap();
    let gets = origin.count(Method::GET);
    let stale = put(&mut svc, "/a", &tag, "y").await;
    assert_eq!(stale.status, StatusCode::CONFLICT);
    assert_eq!(
        stale.json()["type"],
        "urn:ifmatch:problem:stale-precondition"
    );
    assert_eq!(
        origin.count(Method::GET),
        gets,
        "no revalidation was needed"
    );
    assert_eq!(origin.body("/a").unwrap(), "maybe");
}

#[tokio::test]
async fn forwarded_writes_in_flight_are_bounded() {
    let origin = Origin::new(Tags::Strong).with("/a", "x").with("/b", "y");
    let inner = {
        let origin = origin.clone();
        tower::service_fn(move |req| {
            let origin = origin.clone();
            async move { Ok::<_, Infallible>(origin.handle(req).await) }
        })
    };
    let mut svc = PreconditionLayer::new(MemoryStore::default())
        .max_writes_in_flight(1)
        .layer(tower::util::BoxCloneService::new(inner));
    let (entered, release) = origin.pause_next(Method::PUT);
    let mut first = svc.clone();
    let running = tokio::spawn(async move { put(&mut first, "/a", "\"v1\"", "a2").await });
    entered.await.unwrap();
    // Another resource, but the one permit is taken by the write still running upstream.
    let refused = send(&mut svc, Method::PUT, "/b", &[], "y2").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        refused.json()["type"],
        "urn:ifmatch:problem:too-many-writes"
    );
    assert_eq!(origin.count(Method::PUT), 1);
    release.send(()).unwrap();
    assert!(running.await.unwrap().status.is_success());
    let next = send(&mut svc, Method::PUT, "/b", &[], "y2").await;
    assert!(next.status.is_success(), "the permit came back");
}

#[tokio::test]
async fn bodies_too_large_to_hash_stream_through_and_fail_writes_closed() {
    let big = "x".repeat(4096);
    let origin = Origin::new(Tags::None).with("/big", &big);
    let policy = Policy {
        max_hash_bytes: 1024,
        ..Policy::default()
    };
    let mut svc = guard(&origin, policy);
    let read = get(&mut svc, "/big").await;
    assert_eq!(read.body, big);
    assert!(read.headers.get(ETAG).is_none());
    let write = put(
        &mut svc,
        "/big",
        "\"ifm-00000000000000000000000000000000\"",
        "y",
    )
    .await;
    assert_eq!(write.status, StatusCode::CONFLICT);
    assert_eq!(
        write.json()["type"],
        "urn:ifmatch:problem:too-large-to-hash"
    );
    assert!(
        write.json()["detail"]
            .as_str()
            .unwrap()
            .contains("max_hash_bytes")
    );
    assert_eq!(origin.count(Method::PUT), 0);
}

#[tokio::test]
async fn delete_makes_the_resource_absent() {
    let origin = Origin::new(Tags::None).with("/a", "x");
    let mut svc = guard(&origin, Policy::default());
    let tag = get(&mut svc, "/a").await.etag();
    let deleted = send(&mut svc, Method::DELETE, "/a", &[("if-match", &tag)], "").await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let again = put(&mut svc, "/a", &tag, "resurrect").await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.json()["type"], "urn:ifmatch:problem:resource-absent");
    assert_eq!(
        origin.count(Method::GET),
        1,
        "absence was recorded, not revalidated"
    );
}

#[tokio::test]
async fn routes_and_key_headers_separate_resources() {
    let origin = Origin::new(Tags::None).with("/a", "x");
    let policy = Arc::new(Policy {
        key_headers: vec![http::header::AUTHORIZATION],
        on_unknown: OnUnknown::Reject,
        etag_source: EtagSource::Both,
        ..Policy::default()
    });
    let mut svc = guard(&origin, Policy::default());
    let route = RouteContext {
        id: Arc::from("users"),
        policy,
    };
    let send_as = |user: &'static str| {
        let mut req = Request::get("/a")
            .header("authorization", user)
            .body(Full::new(Bytes::new()))
            .unwrap();
        req.extensions_mut().insert(route.clone());
        req
    };
    let alice = into_reply(
        svc.ready()
            .await
            .unwrap()
            .call(send_as("alice"))
            .await
            .unwrap(),
    )
    .await;
    let mut put_bob = Request::put("/a")
        .header("authorization", "bob")
        .header("if-match", alice.etag())
        .body(Full::new(Bytes::from("bob")))
        .unwrap();
    put_bob.extensions_mut().insert(route.clone());
    let bob = into_reply(svc.ready().await.unwrap().call(put_bob).await.unwrap()).await;
    assert_eq!(
        bob.status,
        StatusCode::CONFLICT,
        "bob's key is unknown: alice's read taught nothing about it"
    );
    assert_eq!(bob.json()["type"], "urn:ifmatch:problem:unknown-state");
}

#[tokio::test]
async fn head_carries_the_known_validator() {
    let origin = Origin::new(Tags::None).with("/a", "x");
    let mut svc = guard(&origin, Policy::default());
    let unknown = send(&mut svc, Method::HEAD, "/a", &[], "").await;
    assert!(
        unknown.headers.get(ETAG).is_none(),
        "nothing known yet, nothing to hash"
    );
    let tag = get(&mut svc, "/a").await.etag();
    let head = send(&mut svc, Method::HEAD, "/a", &[], "").await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.etag(), tag);
}

#[tokio::test]
async fn write_outcomes_decide_what_is_known_next() {
    let origin = Origin::new(Tags::None).with("/a", "x");
    let mut svc = guard(&origin, Policy::default());
    let tag = get(&mut svc, "/a").await.etag();

    // Refused by the upstream (4xx other than 409/412): nothing changed, no revalidation.
    origin.fail_writes_with(Some(StatusCode::UNPROCESSABLE_ENTITY));
    assert_eq!(
        put(&mut svc, "/a", &tag, "bad").await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        put(&mut svc, "/a", &tag, "bad").await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(origin.count(Method::GET), 1);

    // A 5xx or 409 may or may not have applied: the next write revalidates.
    let mut tag = tag;
    for status in [StatusCode::INTERNAL_SERVER_ERROR, StatusCode::CONFLICT] {
        origin.fail_writes_with(Some(status));
        let gets = origin.count(Method::GET);
        assert_eq!(put(&mut svc, "/a", &tag, "maybe").await.status, status);
        origin.fail_writes_with(None);
        assert!(put(&mut svc, "/a", &tag, "y").await.status.is_success());
        assert_eq!(
            origin.count(Method::GET),
            gets + 1,
            "{status} made the resource unknown"
        );
        tag = get(&mut svc, "/a").await.etag();
    }
}

#[tokio::test]
async fn if_unmodified_since_uses_the_upstreams_last_modified() {
    let origin = Origin::new(Tags::None).with("/a", "x");
    origin.last_modified("Wed, 21 Oct 2026 07:28:00 GMT");
    let mut svc = guard(&origin, Policy::default());
    let _ = get(&mut svc, "/a").await;
    let before = [("if-unmodified-since", "Tue, 20 Oct 2026 07:28:00 GMT")];
    let stale = send(&mut svc, Method::PUT, "/a", &before, "y").await;
    assert_eq!(stale.status, StatusCode::CONFLICT);
    assert_eq!(
        stale.json()["type"],
        "urn:ifmatch:problem:stale-precondition"
    );
    assert_eq!(origin.count(Method::PUT), 0);
    let after = [("if-unmodified-since", "Wed, 21 Oct 2026 07:28:00 GMT")];
    assert!(
        send(&mut svc, Method::PUT, "/a", &after, "y")
            .await
            .status
            .is_success()
    );
}

#[tokio::test]
async fn validators_are_kept_per_representation() {
    // An origin that serves JSON or text by Accept, with no ETags.
    let text = Arc::new(Mutex::new(("{}".to_owned(), "plain".to_owned())));
    let seen_puts = Arc::new(Mutex::new(0usize));
    let (state, puts) = (text.clone(), seen_puts.clone());
    let inner = tower::service_fn(move |req: Request<RequestBody<Full<Bytes>>>| {
        let (state, puts) = (state.clone(), puts.clone());
        async move {
            if req.method() == Method::PUT {
                *puts.lock().unwrap() += 1;
                // "refuse" is refused (state unchanged), anything else is applied.
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                let status = if body == "refuse" {
                    StatusCode::UNPROCESSABLE_ENTITY
                } else {
                    StatusCode::NO_CONTENT
                };
                return Ok::<_, Infallible>(reply(status, "", None));
            }
            let json = req
                .headers()
                .get("accept")
                .is_some_and(|a| a == "application/json");
            let (body, ct) = {
                let state = state.lock().unwrap();
                if json {
                    (state.0.clone(), "application/json")
                } else {
                    (state.1.clone(), "text/plain")
                }
            };
            let mut response = reply(StatusCode::OK, body, None);
            response
                .headers_mut()
                .insert(CONTENT_TYPE, http::HeaderValue::from_static(ct));
            Ok(response)
        }
    });
    let mut svc = PreconditionLayer::new(MemoryStore::default())
        .layer(tower::util::BoxCloneService::new(inner));
    let json = send(
        &mut svc,
        Method::GET,
        "/a",
        &[("accept", "application/json")],
        "",
    )
    .await
    .etag();
    let plain = send(&mut svc, Method::GET, "/a", &[("accept", "text/plain")], "")
        .await
        .etag();
    assert_ne!(json, plain);
    // Both representations are current: either tag passes the check (the origin then refuses
    // the write itself, which leaves the state as it was)...
    for tag in [&json, &plain, &json] {
        let refused = send(&mut svc, Method::PUT, "/a", &[("if-match", tag)], "refuse").await;
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{tag} is current"
        );
    }
    *text.lock().unwrap() = ("{\"v\":2}".to_owned(), "v2".to_owned());
    // ...until one is seen to change: that drops the other, which describes the old state.
    let json2 = send(
        &mut svc,
        Method::GET,
        "/a",
        &[("accept", "application/json")],
        "",
    )
    .await
    .etag();
    assert_ne!(json, json2);
    let stale = send(&mut svc, Method::PUT, "/a", &[("if-match", &plain)], "x").await;
    assert_eq!(
        stale.status,
        StatusCode::CONFLICT,
        "the old text tag no longer passes"
    );
    assert_eq!(*seen_puts.lock().unwrap(), 3);
    let ok = send(&mut svc, Method::PUT, "/a", &[("if-match", &json2)], "x").await;
    assert_eq!(ok.status, StatusCode::NO_CONTENT);
}
