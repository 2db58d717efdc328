//! Memory and scale of the in-memory store: RSS per cached key, and the cost of a store
//! operation at small and large key counts. Used by `bench/load.sh` and BENCHMARKS.md.
//!
//! ```text
//! cargo run --release --example store_rss -- 1000000
//! ```
//!
//! Fills a `MemoryStore` with N keys, each holding one strong validator (the common case:
//! a resource read once, with a 16-byte tag), reads `VmRSS` before and after, then times
//! `load` and `acquire`+`complete` on random keys of the filled store.

use std::hint::black_box;
use std::time::{Duration, Instant};

use ifmatch::store::{Observation, Outcome, Representation, Store, Validator};
use ifmatch::{EntityTag, MemoryStore, ResourceKey};

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn key(i: u64) -> ResourceKey {
    ResourceKey::new("", &format!("/items/{i}"), None, [])
}

/// A small xorshift: spreads the probes over the whole key space without a dependency.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    // Keys are computed up front so that their Vec is not counted as store memory.
    let keys: Vec<ResourceKey> = (0..n).map(key).collect();
    let tag = EntityTag::strong("0123456789abcdef").expect("valid tag");
    let representation = Representation::new(b"application/json", b"");
    let store = MemoryStore::default();

    let before = vm_rss_kib();
    for &k in &keys {
        let generation = store.load(k).await.expect("memory store").generation;
        let observation = Observation::Validator {
            validator: Validator {
                tag: tag.clone(),
                representation,
            },
            last_modified: None,
        };
        store
            .learn(k, generation, observation)
            .await
            .expect("memory store");
    }
    let after = vm_rss_kib();
    let bytes_per_key = (after.saturating_sub(before) * 1024) as f64 / n as f64;

    // Per-operation cost on random keys of the filled store.
    let ops = 1_000_000u64;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let started = Instant::now();
    for _ in 0..ops {
        let k = keys[(next(&mut rng) % n) as usize];
        black_box(store.load(k).await.expect("memory store"));
    }
    let load_ns = started.elapsed().as_nanos() as f64 / ops as f64;

    let started = Instant::now();
    for _ in 0..ops {
        let k = keys[(next(&mut rng) % n) as usize];
        let (lease, snapshot) = store
            .acquire(k, Duration::from_secs(1))
            .await
            .expect("lease");
        let outcome = Outcome::Replaced {
            validator: Validator {
                tag: tag.clone(),
                representation,
            },
            last_modified: None,
        };
        black_box(snapshot);
        store.complete(lease, outcome).await.expect("memory store");
    }
    let write_ns = started.elapsed().as_nanos() as f64 / ops as f64;

    println!(
        "keys={n} entries={} rss_before_kib={before} rss_after_kib={after} \
         bytes_per_key={bytes_per_key:.1} load_ns={load_ns:.0} acquire_complete_ns={write_ns:.0}",
        store.len()
    );
}
