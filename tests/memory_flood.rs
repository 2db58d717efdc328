//! Memory under a flood of distinct resource keys: `store.max_entries` is what keeps the
//! process's memory down, measured.
//!
//! - **Bounded**, through the real read path: 1 000 000 GETs of distinct paths (`/items/0` ..
//!   `/items/999999`) through the guard ([`PreconditionLayer`] over a [`MemoryStore`] of
//!   `max_entries = 50 000`) in front of an in-process origin that answers each GET 200 with a
//!   strong `ETag`, so that every request teaches the store one new validator. The store never
//!   holds more than `max_entries`, checked after every key (one thread inserts, so the
//!   documented slack of one entry per inserting thread is one); every key past the bound
//!   evicts one; and the process's RSS grows by less than [`budget`]: 256 bytes per entry
//!   (about twice the 117 B/key measured in release with `examples/store_rss.rs`) plus 8 MiB
//!   for the store's fixed tables, the runtime and allocator slack.
//! - **Teeth**, the same million keys with `max_entries` at the key count: every key is kept,
//!   and RSS grows by more than three times that budget and more than eight times the bounded
//!   run's growth. This run drives the store directly with what the guard gives it per GET (a
//!   `load`, then a `learn` of the strong tag `"v1"`: the same entry), because a second million
//!   requests through the guard would double the test's time in a debug build (about 20 s
//!   each on a loaded 2-core machine) without changing what an entry costs.
//!
//! RSS is `VmRSS` from `/proc/self/status`, sampled every 10 000 keys; growth is the peak
//! sample minus a baseline read after a warm-up. This binary holds this one test, so nothing
//! else allocates meanwhile. The bounded run comes first: the allocator may keep what the
//! bounded store freed, which can only make the unbounded run's measured growth smaller (by
//! at most the bounded run's), so the teeth assertions err on the safe side. Linux only
//! (elsewhere the test only checks the entry counts).

mod support;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::ETAG;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use ifmatch::store::{MemoryStoreConfig, Observation, Representation, Validator};
use ifmatch::{EntityTag, MemoryStore, Policy, PreconditionLayer, RequestBody, ResourceKey, Store};
use support::rss::{get_through, rss_bytes};
use tower::Layer;

/// Distinct resource keys in the flood.
const KEYS: usize = 1_000_000;
/// The bounded store's capacity: a twentieth of the keys.
const MAX_ENTRIES: usize = 50_000;
/// RSS budget per entry held: about twice the release figure.
const BYTES_PER_ENTRY: u64 = 256;
/// The store's fixed tables (512 KiB of removal watermarks, rings, shards), the runtime and
/// allocator slack.
const FIXED_BYTES: u64 = 8 << 20;
/// Keys between two RSS samples.
const SAMPLE_EVERY: usize = 10_000;

/// The RSS a store of `max_entries` may add to the process.
fn budget(max_entries: usize) -> u64 {
    max_entries as u64 * BYTES_PER_ENTRY + FIXED_BYTES
}

/// What one flood did.
struct Flood {
    /// Peak RSS sample minus the baseline, when RSS can be read.
    growth: Option<u64>,
    /// Most entries the store held at any sample.
    peak_entries: usize,
    entries_at_end: usize,
    evictions: u64,
    elapsed: Duration,
}

/// How the flood reaches the store.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// GETs through the guard in front of an origin that tags every path.
    Guard,
    /// The guard's store calls for such a GET, made directly.
    Store,
}

/// Floods a store of `max_entries` with `keys` distinct keys, checking its size after each
/// and sampling the process's RSS every [`SAMPLE_EVERY`].
async fn flood(keys: usize, max_entries: usize, via: Via) -> Flood {
    let store = MemoryStore::new(MemoryStoreConfig {
        max_entries,
        ..MemoryStoreConfig::default()
    });
    // An origin that knows every path and tags it strongly: each GET teaches one validator,
    // learned from the response head (the body is never read).
    let origin = tower::service_fn(|_req: Request<RequestBody<Full<Bytes>>>| async {
        let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
        response
            .headers_mut()
            .insert(ETAG, http::HeaderValue::from_static("\"v1\""));
        Ok::<_, Infallible>(response)
    });
    let mut guard = PreconditionLayer::new(store.clone())
        .policy(Policy::default())
        .layer(origin);
    let tag = EntityTag::strong("v1").expect("a valid tag");

    let baseline = rss_bytes();
    let mut peak_rss = baseline;
    let mut peak_entries = 0;
    let started = Instant::now();
    for i in 0..keys {
        let path = format!("/items/{i}");
        match via {
            Via::Guard => {
                let status = get_through(&mut guard, path).await;
                assert_eq!(status, StatusCode::OK, "request {i}");
            }
            Via::Store => {
                let key = ResourceKey::new("", &path, None, []);
                let generation = store.load(key).await.expect("memory store").generation;
                let validator = Validator {
                    tag: tag.clone(),
                    representation: Representation::new(b"", b""),
                };
                let observation = Observation::Validator {
                    validator,
                    last_modified: None,
                };
                store
                    .learn(key, generation, observation)
                    .await
                    .expect("memory store");
            }
        }
        // The count the `ifmatch_store_entries` gauge reports; one thread inserts, so the
        // documented slack is one entry.
        let entries = store.len();
        assert!(
            entries <= max_entries + 1,
            "{entries} entries held after {} keys, max_entries = {max_entries}",
            i + 1
        );
        peak_entries = peak_entries.max(entries);
        if (i + 1) % SAMPLE_EVERY == 0 || i + 1 == keys {
            peak_rss = peak_rss.max(rss_bytes());
        }
    }
    let elapsed = started.elapsed();
    let stats = store.stats().expect("the memory store keeps stats");
    Flood {
        growth: baseline.zip(peak_rss).map(|(b, p)| p.saturating_sub(b)),
        peak_entries,
        entries_at_end: store.len(),
        evictions: stats.evictions,
        elapsed,
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

#[test]
fn a_flood_of_distinct_keys_stays_within_the_store_bound() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        // Warm-up: the runtime, the guard's code paths and the allocator's first arenas are
        // not the store's.
        flood(20_000, 1_000, Via::Guard).await;
        flood(20_000, 1_000, Via::Store).await;

        let bounded = flood(KEYS, MAX_ENTRIES, Via::Guard).await;
        let unbounded = flood(KEYS, KEYS, Via::Store).await;

        for (name, run) in [("bounded", &bounded), ("unbounded", &unbounded)] {
            eprintln!(
                "{name}: {KEYS} keys in {:.1?}, peak entries {}, evictions {}, RSS growth {}",
                run.elapsed,
                run.peak_entries,
                run.evictions,
                run.growth
                    .map_or_else(|| "unknown".to_owned(), |g| format!("{:.1} MiB", mib(g))),
            );
        }

        // The flood is what it says: every key created an entry, but for the rare learn that
        // the store refuses because the eviction making room for it stamped the removal
        // watermark of its own key's slot (1 in 65 536; the key just stays unknown).
        assert!(bounded.peak_entries <= MAX_ENTRIES + 1);
        assert!(bounded.entries_at_end >= MAX_ENTRIES - 1);
        let created = bounded.evictions + bounded.entries_at_end as u64;
        assert!(
            created >= (KEYS - KEYS / 10_000) as u64,
            "{created} entries created for {KEYS} keys"
        );
        assert_eq!(unbounded.entries_at_end, KEYS, "every key kept");
        assert_eq!(unbounded.evictions, 0);

        let (Some(bounded_growth), Some(unbounded_growth)) = (bounded.growth, unbounded.growth)
        else {
            eprintln!("no /proc/self/status: RSS not measured");
            return;
        };
        let budget = budget(MAX_ENTRIES);
        assert!(
            bounded_growth < budget,
            "bounded flood grew RSS by {:.1} MiB, budget {:.1} MiB",
            mib(bounded_growth),
            mib(budget)
        );
        assert!(
            unbounded_growth > 3 * budget,
            "unbounded flood grew RSS by only {:.1} MiB: the bound is not what keeps it down",
            mib(unbounded_growth)
        );
        assert!(
            unbounded_growth > 8 * bounded_growth,
            "unbounded {:.1} MiB vs bounded {:.1} MiB",
            mib(unbounded_growth),
            mib(bounded_growth)
        );
    });
}
