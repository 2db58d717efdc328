//! Memory under a flood of distinct resources: `server.version_memory_bytes` bounds what the
//! version memory holds, measured as the process's RSS.
//!
//! - **Bounded**: [`KEYS`] GETs of distinct paths through the guard ([`PreconditionLayer`]
//!   with a version memory of [`BOUND`]) in front of an in-process origin that answers each
//!   with a fresh [`BODY`]-byte JSON body and no ETag, so the guard hashes every body and
//!   remembers it: about 48 MiB of bodies in all. The memory never holds more than its bound
//!   (checked after every GET), and RSS grows by less than the bound plus [`SLACK`] (the store's
//!   entries for the keys, about 2 MiB, the runtime and allocator slack).
//! - **Teeth**: the same flood with the bound above the bodies' total keeps every body, and RSS
//!   grows by more than the bounded budget.
//!
//! RSS is `VmRSS` from `/proc/self/status`; growth is the peak sample minus a baseline after
//! a warm-up. This binary holds this one test. Linux only (elsewhere only the bytes held are
//! checked).

mod support;

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use ifmatch::guard::Versions;
use ifmatch::{MemoryStore, Policy, PreconditionLayer, RequestBody};
use support::rss::{get_through, rss_bytes};
use tower::Layer;

/// Distinct resources in the flood.
const KEYS: usize = 12_000;
/// Bytes per body.
const BODY: usize = 4096;
/// The bounded memory: a twelfth of the bodies.
const BOUND: usize = 4 << 20;
/// The store's entries for every key, the runtime and allocator slack.
const SLACK: u64 = 12 << 20;
/// GETs between two RSS samples.
const SAMPLE_EVERY: usize = 500;

/// Floods a guard whose version memory holds at most `bound` bytes; the RSS growth, if known.
async fn flood(keys: usize, bound: usize) -> Option<u64> {
    let origin = tower::service_fn(|req: Request<RequestBody<Full<Bytes>>>| async move {
        // A fresh allocation per answer, as an upstream's bytes would be.
        let mut body = format!("{{\"path\":\"{}\",\"pad\":\"", req.uri().path()).into_bytes();
        body.resize(BODY - 2, b'x');
        body.extend_from_slice(b"\"}");
        let mut response = Response::new(Full::new(Bytes::from(body)));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        Ok::<_, Infallible>(response)
    });
    let versions = Versions::new(bound);
    let mut guard = PreconditionLayer::new(MemoryStore::default())
        .policy(Policy::default())
        .versions(versions.clone())
        .layer(origin);
    let baseline = rss_bytes();
    let mut peak = baseline;
    for i in 0..keys {
        let status = get_through(&mut guard, format!("/items/{i}")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            versions.bytes() <= bound,
            "{} bytes held after {} GETs, bound {bound}",
            versions.bytes(),
            i + 1
        );
        if (i + 1) % SAMPLE_EVERY == 0 {
            peak = peak.max(rss_bytes());
        }
    }
    baseline.zip(peak).map(|(b, p)| p.saturating_sub(b))
}

#[test]
fn a_flood_of_distinct_resources_stays_within_the_version_memory_bound() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        // Warm-up: the runtime, the guard's paths and the allocator's first arenas.
        flood(1_000, 1 << 20).await;
        let bounded = flood(KEYS, BOUND).await;
        let unbounded = flood(KEYS, 1 << 30).await;
        let mib = |g: Option<u64>| g.map_or(-1.0, |g| g as f64 / f64::from(1 << 20));
        eprintln!(
            "{KEYS} bodies of {BODY} B: RSS growth {:.1} MiB bounded at {} MiB, {:.1} MiB unbounded",
            mib(bounded),
            BOUND >> 20,
            mib(unbounded)
        );
        let (Some(bounded), Some(unbounded)) = (bounded, unbounded) else {
            return;
        };
        let budget = BOUND as u64 + SLACK;
        assert!(bounded < budget, "bounded growth {bounded} over {budget}");
        assert!(
            unbounded > budget,
            "the teeth: unbounded growth {unbounded} should pass {budget}"
        );
    });
}
