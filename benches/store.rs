//! The in-memory store: load, learn, acquire+complete, single-threaded and under contention
//! (many tasks on a multi-thread runtime, few hot keys).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ifmatch::store::{Observation, Outcome, Representation, Store, Validator};
use ifmatch::{EntityTag, MemoryStore, ResourceKey};

fn key(i: u64) -> ResourceKey {
    ResourceKey::new("", &format!("/items/{i}"), None, [])
}

fn validator() -> Validator {
    Validator {
        tag: EntityTag::strong("0123456789abcdef").unwrap(),
        representation: Representation::new(b"application/json", b""),
    }
}

fn observation() -> Observation {
    Observation::Validator {
        validator: validator(),
        last_modified: None,
    }
}

fn replaced() -> Outcome {
    Outcome::Replaced {
        validator: validator(),
        last_modified: None,
    }
}

/// A store whose `n` keys each hold one validator.
fn filled(rt: &tokio::runtime::Runtime, n: u64) -> (MemoryStore, Vec<ResourceKey>) {
    let store = MemoryStore::default();
    let keys: Vec<_> = (0..n).map(key).collect();
    rt.block_on(async {
        for &k in &keys {
            let g = store.load(k).await.unwrap().generation;
            store.learn(k, g, observation()).await.unwrap();
        }
    });
    (store, keys)
}

fn single(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (store, keys) = filled(&rt, 1024);
    let mut g = c.benchmark_group("store_single");
    let mut i = 0usize;
    g.bench_function("load", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) & 1023;
            let k = keys[i];
            let store = &store;
            async move { black_box(store.load(k).await.unwrap()) }
        })
    });
    g.bench_function("load_learn", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) & 1023;
            let k = keys[i];
            let store = &store;
            async move {
                let g = store.load(k).await.unwrap().generation;
                black_box(store.learn(k, g, observation()).await.unwrap())
            }
        })
    });
    g.bench_function("acquire_complete", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) & 1023;
            let k = keys[i];
            let store = &store;
            async move {
                let (lease, snap) = store.acquire(k, Duration::from_secs(1)).await.unwrap();
                black_box(snap);
                store.complete(lease, replaced()).await.unwrap();
            }
        })
    });
    g.finish();
}

/// `tasks` tasks each do `per_task` acquire+complete cycles over `hot` keys; the time is per
/// cycle across all tasks (so it shows the serialization on hot keys).
fn contention(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("store_contended");
    g.sample_size(20);
    for (tasks, hot) in [(64u64, 1u64), (64, 4), (64, 1024)] {
        let (store, keys) = filled(&rt, hot);
        let keys = Arc::new(keys);
        let id = format!("{tasks}tasks_{hot}keys");
        g.bench_function(BenchmarkId::new("acquire_complete", &id), |b| {
            b.iter_custom(|iters| {
                let per_task = iters.div_ceil(tasks).max(1);
                let start = Instant::now();
                rt.block_on(async {
                    let mut set = tokio::task::JoinSet::new();
                    for t in 0..tasks {
                        let store = store.clone();
                        let keys = Arc::clone(&keys);
                        set.spawn(async move {
                            for j in 0..per_task {
                                let k = keys[((t + j) % hot) as usize];
                                let (lease, _) =
                                    store.acquire(k, Duration::from_secs(30)).await.unwrap();
                                store.complete(lease, replaced()).await.unwrap();
                            }
                        });
                    }
                    while set.join_next().await.is_some() {}
                });
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (per_task * tasks) as f64)
            })
        });
        g.bench_function(BenchmarkId::new("load", &id), |b| {
            b.iter_custom(|iters| {
                let per_task = iters.div_ceil(tasks).max(1);
                let start = Instant::now();
                rt.block_on(async {
                    let mut set = tokio::task::JoinSet::new();
                    for t in 0..tasks {
                        let store = store.clone();
                        let keys = Arc::clone(&keys);
                        set.spawn(async move {
                            for j in 0..per_task {
                                let k = keys[((t + j) % hot) as usize];
                                black_box(store.load(k).await.unwrap());
                            }
                        });
                    }
                    while set.join_next().await.is_some() {}
                });
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (per_task * tasks) as f64)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, single, contention);
criterion_main!(benches);
