//! Property-based fuzzing of everything that parses untrusted input: entity-tags, precondition
//! headers, the config file, and the whole request path through the guard.
//!
//! Bounded for CI (the file runs in seconds in debug). A longer run sets the case count:
//!
//! ```text
//! IFMATCH_FUZZ_CASES=20000 cargo test --release --test fuzz
//! ```

use std::cell::Cell;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, ETAG};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use ifmatch::config::{Config, Overrides};
use ifmatch::guard::{EtagSource, OnUnknown};
use ifmatch::precondition::{
    Decision, Failure, Field, Preconditions, RequestKind, ResourceState, TagCondition, evaluate,
};
use ifmatch::{EntityTag, MemoryStore, Policy, PreconditionLayer, RequestBody, ResponseBody};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence, TestRunner};
use tower::{Layer, Service, ServiceExt};

/// Cases per property: `default`, or `IFMATCH_FUZZ_CASES` for a longer run.
fn cases(default: u32) -> u32 {
    std::env::var("IFMATCH_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

fn runner(default_cases: u32) -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases: cases(default_cases),
        // Shrinking a failure should not turn a CI run into a long one.
        max_shrink_iters: 2048,
        // Failures are saved beside this file (tests/fuzz.proptest-regressions) and replayed
        // first on the next run.
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    })
}

// ---------------------------------------------------------------------------------------------
// Inputs

/// Fragments that sit on the parsers' edges: quotes, commas, `W/`, `*`, whitespace, bytes just
/// outside `etagc`, and obs-text that is or is not UTF-8.
const FRAGMENTS: &[&[u8]] = &[
    b"\"",
    b"\"",
    b",",
    b", ",
    b"W/",
    b"w/",
    b"W",
    b"/",
    b"*",
    b" ",
    b"\t",
    b"a",
    b"xyzzy",
    b"!",
    b"#",
    b"~",
    b"\x7f",
    b"\x00",
    b"\r",
    b"\n",
    b"\x80",
    b"\xff",
    b"\xc3\xa9",
    b"\xc3",
    b";",
    b"=",
    b"ifm-",
    b"0123456789abcdef0123456789abcdef",
    b"Sun, 06 Nov 1994 08:49:37 GMT",
    b"GMT",
    b"99",
];

/// Arbitrary bytes, or a concatenation of [`FRAGMENTS`] (mostly near-valid).
fn field_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..48),
        prop::collection::vec(prop::sample::select(FRAGMENTS), 0..12)
            .prop_map(|parts| parts.concat()),
    ]
}

fn field() -> impl Strategy<Value = Field> {
    prop::sample::select(
        &[
            Field::IfMatch,
            Field::IfNoneMatch,
            Field::IfModifiedSince,
            Field::IfUnmodifiedSince,
        ][..],
    )
}

/// An opaque-tag made of `etagc` characters (ASCII and some UTF-8 obs-text).
fn opaque() -> impl Strategy<Value = String> {
    "[!#-~\u{e9}\u{4e2d}]{0,12}"
}

// ---------------------------------------------------------------------------------------------
// (a) Entity-tags and precondition headers

#[test]
fn entity_tag_parse_never_panics_and_round_trips() {
    runner(1024)
        .run(&field_bytes(), |bytes| {
            if let Ok(tag) = EntityTag::parse(&bytes) {
                let wire = tag.to_string();
                prop_assert_eq!(EntityTag::parse(wire.as_bytes()), Ok(tag.clone()));
                // The opaque part and the weakness survive, whatever whitespace surrounded it.
                prop_assert_eq!(EntityTag::parse(&bytes), Ok(tag));
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn constructed_tags_round_trip() {
    runner(512)
        .run(&(any::<bool>(), opaque()), |(weak, opaque)| {
            let tag = if weak {
                EntityTag::weak(&opaque)
            } else {
                EntityTag::strong(&opaque)
            }
            .expect("etagc only");
            let parsed = EntityTag::parse(tag.to_string().as_bytes());
            prop_assert_eq!(parsed.as_ref(), Ok(&tag));
            prop_assert_eq!(tag.opaque(), opaque.as_str());
            prop_assert_eq!(tag.is_weak(), weak);
            Ok(())
        })
        .unwrap();
}

/// Formats a parsed list field back onto the wire, as one line.
fn list_line(condition: &TagCondition) -> String {
    match condition {
        TagCondition::Any => "*".to_owned(),
        TagCondition::Tags(tags) => tags
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

#[test]
fn preconditions_parse_never_panics_and_round_trips() {
    let lines = prop::collection::vec((field(), field_bytes()), 0..6);
    runner(1024)
        .run(&lines, |lines| {
            let parsed = Preconditions::parse(lines.iter().map(|(f, v)| (*f, v.as_slice())));
            let Ok(pre) = parsed else { return Ok(()) };
            // Re-serialize what was understood; it must parse to the same thing.
            let mut wire: Vec<(Field, Vec<u8>)> = Vec::new();
            if let Some(c) = &pre.if_match {
                wire.push((Field::IfMatch, list_line(c).into_bytes()));
            }
            if let Some(c) = &pre.if_none_match {
                wire.push((Field::IfNoneMatch, list_line(c).into_bytes()));
            }
            for (field, date) in [
                (Field::IfModifiedSince, pre.if_modified_since),
                (Field::IfUnmodifiedSince, pre.if_unmodified_since),
            ] {
                if let Some(date) = date {
                    wire.push((field, httpdate::fmt_http_date(date).into_bytes()));
                }
            }
            let again = Preconditions::parse(wire.iter().map(|(f, v)| (*f, v.as_slice())));
            prop_assert_eq!(again, Ok(pre));
            Ok(())
        })
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// (b) `evaluate` against a reference model of RFC 9110 §13.2.2 steps 1-3, for writes

/// A tag as the model sees it: plain values, compared by hand.
#[derive(Debug, Clone)]
struct ModelTag {
    weak: bool,
    opaque: &'static str,
}

impl ModelTag {
    fn tag(&self) -> EntityTag {
        if self.weak {
            EntityTag::weak(self.opaque).unwrap()
        } else {
            EntityTag::strong(self.opaque).unwrap()
        }
    }
}

/// `*` or a list, as the model sees it.
#[derive(Debug, Clone)]
enum ModelList {
    Any,
    Tags(Vec<ModelTag>),
}

impl ModelList {
    fn condition(&self) -> TagCondition {
        match self {
            Self::Any => TagCondition::Any,
            Self::Tags(tags) => TagCondition::Tags(tags.iter().map(ModelTag::tag).collect()),
        }
    }
}

#[derive(Debug, Clone)]
struct Case {
    /// `None`: the resource does not exist.
    validators: Option<Vec<ModelTag>>,
    /// Milliseconds from the epoch, possibly negative.
    last_modified: Option<i64>,
    if_match: Option<ModelList>,
    if_none_match: Option<ModelList>,
    if_unmodified_since: Option<i64>,
    if_modified_since: Option<i64>,
}

fn model_tag() -> impl Strategy<Value = ModelTag> {
    // A small pool so that tags collide often.
    (
        any::<bool>(),
        prop::sample::select(&["a", "b", "c", ""][..]),
    )
        .prop_map(|(weak, opaque)| ModelTag { weak, opaque })
}

fn model_list() -> impl Strategy<Value = ModelList> {
    prop_oneof![
        1 => Just(ModelList::Any),
        4 => prop::collection::vec(model_tag(), 1..4).prop_map(ModelList::Tags),
    ]
}

/// Instants within a few seconds of each other (and of the epoch), at millisecond resolution,
/// so that second-granularity comparisons are exercised on both sides of each boundary.
fn millis() -> impl Strategy<Value = i64> {
    -4_000i64..4_000
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::option::of(prop::collection::vec(model_tag(), 0..3)),
        prop::option::of(millis()),
        prop::option::of(model_list()),
        prop::option::of(model_list()),
        prop::option::of(millis()),
        prop::option::of(millis()),
    )
        .prop_map(
            |(validators, last_modified, if_match, if_none_match, ius, ims)| Case {
                validators,
                last_modified,
                if_match,
                if_none_match,
                if_unmodified_since: ius,
                if_modified_since: ims,
            },
        )
}

fn instant(millis: i64) -> SystemTime {
    let offset = Duration::from_millis(millis.unsigned_abs());
    if millis >= 0 {
        SystemTime::UNIX_EPOCH + offset
    } else {
        SystemTime::UNIX_EPOCH - offset
    }
}

/// RFC 9110 §13.2.2 steps 1-3 for a state-changing method, written from the RFC's text, plus
/// ifmatch's one documented deviation: `If-Unmodified-Since` on a missing resource fails
/// (closed) like `If-Match` does. Step 4 (`If-Modified-Since`) never applies to a write.
fn reference(case: &Case) -> Decision {
    let strong_match = |a: &ModelTag, b: &ModelTag| !a.weak && !b.weak && a.opaque == b.opaque;
    let weak_match = |a: &ModelTag, b: &ModelTag| a.opaque == b.opaque;
    let listed = |list: &ModelList,
                  current: &[ModelTag],
                  eq: &dyn Fn(&ModelTag, &ModelTag) -> bool| match list {
        ModelList::Any => true,
        ModelList::Tags(tags) => tags.iter().any(|t| current.iter().any(|c| eq(t, c))),
    };
    // HTTP-dates have one-second resolution: compare whole seconds, rounding down.
    let secs = |millis: i64| millis.div_euclid(1000);

    // Step 1.
    if let Some(list) = &case.if_match {
        let Some(current) = &case.validators else {
            return Decision::Failed(Failure::Absent);
        };
        if !listed(list, current, &strong_match) {
            return Decision::Failed(Failure::StaleIfMatch);
        }
    // Step 2, only without If-Match.
    } else if let Some(since) = case.if_unmodified_since {
        if case.validators.is_none() {
            return Decision::Failed(Failure::Absent);
        }
        if case.last_modified.is_some_and(|lm| secs(lm) > secs(since)) {
            return Decision::Failed(Failure::ModifiedSince);
        }
    }
    // Step 3: a write whose If-None-Match matches is not performed.
    let none_match = match (&case.if_none_match, &case.validators) {
        (Some(list), Some(current)) => listed(list, current, &weak_match).then_some(list),
        _ => None,
    };
    if let Some(list) = none_match {
        return Decision::Failed(match list {
            ModelList::Any => Failure::Exists,
            ModelList::Tags(_) => Failure::NoneMatchMatched,
        });
    }
    Decision::Proceed
}

#[test]
fn evaluate_agrees_with_the_reference_model_on_writes() {
    runner(4096)
        .run(&case(), |case| {
            let validators: Option<Vec<EntityTag>> = case
                .validators
                .as_ref()
                .map(|v| v.iter().map(ModelTag::tag).collect());
            let state = match &validators {
                None => ResourceState::Absent,
                Some(validators) => ResourceState::Present {
                    validators,
                    last_modified: case.last_modified.map(instant),
                },
            };
            let pre = Preconditions {
                if_match: case.if_match.as_ref().map(ModelList::condition),
                if_none_match: case.if_none_match.as_ref().map(ModelList::condition),
                if_unmodified_since: case.if_unmodified_since.map(instant),
                if_modified_since: case.if_modified_since.map(instant),
            };
            prop_assert_eq!(evaluate(RequestKind::Write, &state, &pre), reference(&case));
            // Reads have no model here (step 4 and 304s); they must simply not panic.
            let _ = evaluate(RequestKind::Read, &state, &pre);
            Ok(())
        })
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// (c) The config parser

const EXAMPLE_CONFIG: &str = include_str!("../config/ifmatch.toml");

/// Tokens spliced into the example config: TOML syntax, extreme numbers and durations, keys.
const TOML_TOKENS: &[&str] = &[
    "\"",
    "'",
    "=",
    "[",
    "]",
    "[[routes]]",
    "[server]",
    "{",
    "}",
    ",",
    "\n",
    "#",
    "0",
    "-1",
    "1e400",
    "18446744073709551616",
    "9223372036854775807",
    "-9223372036854775808",
    "\"0s\"",
    "\"18446744073709551615s\"",
    "\"99999999999999999999h\"",
    "\"1ns\"",
    "\"\"",
    "\"x\"",
    "true",
    "nan",
    "inf",
    "\"0.0.0.0:0\"",
    "\"[::]:99999\"",
    "\"http://\"",
    "\"http://[\"",
    "\"unix:/\"",
    "\"redis://\"",
    "\"/\"",
    "\"/**\"",
    "\"\\u0000\"",
    "\"PUT\"",
    "[\"\"]",
    "name",
    "upstream",
    "prefix",
    "methods",
    "key_headers",
    "max_hash_bytes",
    "lease_wait",
    "conflict_status",
    "max_entries",
    "ttl",
    "\"999\"",
    "600",
    "\"\u{e9}\"",
];

#[derive(Debug, Clone)]
enum Mutation {
    /// Inserts a token at a (scaled) position.
    Insert(usize, &'static str),
    /// Deletes up to `len` bytes at a (scaled) position.
    Delete(usize, usize),
    /// Replaces what follows the `=` on a (scaled) line with a token.
    ReplaceValue(usize, &'static str),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let token = || prop::sample::select(TOML_TOKENS);
    prop_oneof![
        (any::<usize>(), token()).prop_map(|(at, t)| Mutation::Insert(at, t)),
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::Delete(at, len)),
        (any::<usize>(), token()).prop_map(|(line, t)| Mutation::ReplaceValue(line, t)),
    ]
}

/// The nearest char boundary at or before `at`.
fn boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn mutate(mut text: String, mutation: &Mutation) -> String {
    match *mutation {
        Mutation::Insert(at, token) => {
            let at = boundary(&text, at % (text.len() + 1));
            text.insert_str(at, token);
            text
        }
        Mutation::Delete(at, len) => {
            let start = boundary(&text, at % (text.len() + 1));
            let end = boundary(&text, start + len);
            text.replace_range(start..end, "");
            text
        }
        Mutation::ReplaceValue(line, token) => {
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            let assignments: Vec<usize> = (0..lines.len())
                .filter(|&i| !lines[i].trim_start().starts_with('#') && lines[i].contains('='))
                .collect();
            if let Some(&i) = assignments.get(line % assignments.len().max(1)) {
                let eq = lines[i].find('=').expect("an assignment");
                lines[i].replace_range(eq + 1.., &format!(" {token}"));
            }
            lines.join("\n")
        }
    }
}

/// The example config with its commented-out options switched on, so mutations reach them.
fn uncommented_example() -> String {
    EXAMPLE_CONFIG
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest
                    .split_once(" = ")
                    .is_some_and(|(k, _)| !k.contains(' ')) =>
            {
                rest
            }
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn config_from_arbitrary_text_never_panics() {
    runner(1024)
        .run(&"\\PC{0,200}", |text| {
            let _ = Config::from_toml(&text, &Overrides::default());
            Ok(())
        })
        .unwrap();
}

#[test]
fn config_from_mutated_example_never_panics() {
    assert!(
        Config::from_toml(EXAMPLE_CONFIG, &Overrides::default()).is_ok(),
        "the example config is valid"
    );
    let bases = [EXAMPLE_CONFIG.to_owned(), uncommented_example()];
    let input = (
        prop::sample::select(vec![0usize, 1]),
        prop::collection::vec(mutation(), 1..6),
    );
    runner(512)
        .run(&input, |(base, mutations)| {
            let text = mutations.iter().fold(bases[base].clone(), mutate);
            let _ = Config::from_toml(&text, &Overrides::default());
            Ok(())
        })
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// (d) The request path through the guard, over a scripted origin

/// A scripted origin: answers reads with a strong ETag per path and version, applies writes,
/// and records the method of every request it sees.
#[derive(Clone, Default)]
struct Origin {
    seen: Arc<Mutex<Vec<Method>>>,
    version: Arc<Mutex<u64>>,
}

impl Origin {
    fn seen(&self) -> Vec<Method> {
        self.seen.lock().unwrap().clone()
    }

    fn handle(&self, req: &Request<RequestBody<Full<Bytes>>>) -> Response<Full<Bytes>> {
        self.seen.lock().unwrap().push(req.method().clone());
        let mut version = self.version.lock().unwrap();
        let status = match *req.method() {
            Method::GET | Method::HEAD => StatusCode::OK,
            Method::PUT | Method::PATCH | Method::POST | Method::DELETE => {
                *version += 1;
                StatusCode::OK
            }
            _ => StatusCode::METHOD_NOT_ALLOWED,
        };
        let mut response = Response::builder()
            .status(status)
            .header(CONTENT_TYPE, "application/json");
        // Every other version has no ETag, so synthesized tags are exercised too.
        if *version % 2 == 0 {
            response = response.header(ETAG, format!("\"v{version}\""));
        }
        response
            .body(Full::new(Bytes::from(format!("{{\"v\":{version}}}"))))
            .unwrap()
    }
}

type Guarded = ifmatch::Precondition<
    tower::util::BoxCloneService<
        Request<RequestBody<Full<Bytes>>>,
        Response<Full<Bytes>>,
        Infallible,
    >,
    MemoryStore,
>;

fn guard(origin: &Origin, policy: Policy) -> Guarded {
    let origin = origin.clone();
    let inner = tower::service_fn(move |req: Request<RequestBody<Full<Bytes>>>| {
        let response = origin.handle(&req);
        async move {
            // Drain the body as a real upstream would (and so the guard's tee is driven).
            let _ = req.into_body().collect().await;
            Ok::<_, Infallible>(response)
        }
    });
    PreconditionLayer::new(MemoryStore::default())
        .policy(policy)
        .layer(tower::util::BoxCloneService::new(inner))
}

const HEADER_NAMES: &[&str] = &[
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "if-modified-since",
    "content-type",
    "content-encoding",
    "authorization",
    "x-tenant",
    "accept-encoding",
    "range",
    "if-range",
    "expect",
];

/// A header: a known or arbitrary name, and a value from arbitrary or near-valid bytes, kept
/// only if `http` accepts them (as a server's parser would have).
fn header() -> impl Strategy<Value = Option<(HeaderName, HeaderValue)>> {
    let name = prop_oneof![
        4 => prop::sample::select(HEADER_NAMES).prop_map(|n| n.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 1..12),
    ];
    (name, field_bytes()).prop_map(|(name, value)| {
        Some((
            HeaderName::from_bytes(&name).ok()?,
            HeaderValue::from_bytes(&value).ok()?,
        ))
    })
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        6 => prop::sample::select(&["GET", "HEAD", "PUT", "PATCH", "DELETE", "POST"][..]),
        1 => prop::sample::select(&["OPTIONS", "TRACE", "PURGE"][..]),
    ]
    .prop_map(|m| Method::from_bytes(m.as_bytes()).expect("a token"))
}

/// A request target: mostly a few colliding paths, sometimes arbitrary bytes `Uri` accepts.
fn target() -> impl Strategy<Value = Uri> {
    prop_oneof![
        4 => prop::sample::select(&["/a", "/a?x=1", "/b", "/", "/a/../a", "/%ff"][..])
            .prop_map(Uri::from_static),
        1 => prop::collection::vec(any::<u8>(), 1..24).prop_map(|mut bytes| {
            bytes.insert(0, b'/');
            Uri::try_from(bytes).unwrap_or_else(|_| Uri::from_static("/"))
        }),
    ]
}

#[derive(Debug, Clone)]
struct FuzzRequest {
    method: Method,
    target: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Vec<u8>,
}

fn request() -> impl Strategy<Value = FuzzRequest> {
    (
        method(),
        target(),
        prop::collection::vec(header(), 0..5),
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(|(method, target, headers, body)| FuzzRequest {
            method,
            target,
            headers: headers.into_iter().flatten().collect(),
            body,
        })
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        prop::sample::select(&[OnUnknown::Revalidate, OnUnknown::Forward, OnUnknown::Reject][..]),
        prop::sample::select(
            &[
                EtagSource::Upstream,
                EtagSource::Synthesize,
                EtagSource::Both,
            ][..],
        ),
        any::<bool>(),
        any::<bool>(),
        prop::sample::select(&[0usize, 4, 1024][..]),
    )
        .prop_map(
            |(on_unknown, etag_source, require, key_header, max_hash_bytes)| Policy {
                on_unknown,
                etag_source,
                require_precondition: if require {
                    Policy::default_required_methods()
                } else {
                    Vec::new()
                },
                key_headers: if key_header {
                    vec![HeaderName::from_static("authorization")]
                } else {
                    Vec::new()
                },
                max_hash_bytes,
                lease_wait: Duration::from_secs(2),
                ..Policy::default()
            },
        )
}

/// Whether the request is a write the guard must refuse unseen: its precondition headers (the
/// ones a write honours) do not parse.
fn malformed_write(req: &FuzzRequest) -> bool {
    let write = matches!(
        req.method,
        Method::PUT | Method::PATCH | Method::DELETE | Method::POST
    );
    let fields = req.headers.iter().filter_map(|(name, value)| {
        let field = match name.as_str() {
            "if-match" => Field::IfMatch,
            "if-none-match" => Field::IfNoneMatch,
            "if-unmodified-since" => Field::IfUnmodifiedSince,
            _ => return None,
        };
        Some((field, value.as_bytes()))
    });
    write && Preconditions::parse(fields).is_err()
}

async fn send(svc: &mut Guarded, req: &FuzzRequest) -> (StatusCode, Bytes) {
    let mut builder = Request::builder()
        .method(req.method.clone())
        .uri(req.target.clone());
    for (name, value) in &req.headers {
        builder = builder.header(name, value);
    }
    let request = builder
        .body(Full::new(Bytes::from(req.body.clone())))
        .unwrap();
    let response: Response<ResponseBody<Full<Bytes>>> =
        svc.ready().await.unwrap().call(request).await.unwrap();
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn guard_request_path_never_panics_or_forwards_malformed_writes() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let input = (policy(), prop::collection::vec(request(), 1..6));
    // How often each branch was reached, so that a generator that drifts is noticed.
    let (malformed, forwarded_writes) = (Cell::new(0usize), Cell::new(0usize));
    runner(384)
        .run(&input, |(policy, requests)| {
            let origin = Origin::default();
            let mut svc = guard(&origin, policy);
            runtime.block_on(async {
                for req in &requests {
                    let before = origin.seen().len();
                    let (status, body) =
                        tokio::time::timeout(Duration::from_secs(10), send(&mut svc, req))
                            .await
                            .map_err(|_| TestCaseError::fail(format!("hung on {req:?}")))?;
                    if malformed_write(req) {
                        prop_assert_eq!(status, StatusCode::BAD_REQUEST, "{:?}", req);
                        prop_assert_eq!(
                            &origin.seen()[before..],
                            &[] as &[Method],
                            "a malformed precondition reached the origin: {:?}",
                            req
                        );
                        prop_assert!(!body.is_empty(), "a 400 explains itself");
                        malformed.set(malformed.get() + 1);
                    } else if origin.seen()[before..]
                        .iter()
                        .any(|m| !matches!(*m, Method::GET | Method::HEAD))
                    {
                        forwarded_writes.set(forwarded_writes.get() + 1);
                    }
                }
                Ok(())
            })
        })
        .unwrap();
    let (malformed, forwarded_writes) = (malformed.get(), forwarded_writes.get());
    eprintln!("malformed writes refused: {malformed}, writes forwarded: {forwarded_writes}");
    assert!(
        malformed > 0 && forwarded_writes > 0,
        "both branches reached"
    );
}
