//! The pure core: entity-tag parsing and comparison, precondition parsing and evaluation,
//! resource keys, and blake3 ETag synthesis per body size.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ifmatch::precondition::{Field, Preconditions, RequestKind, ResourceState, evaluate};
use ifmatch::{EntityTag, ResourceKey};

fn etag(c: &mut Criterion) {
    let mut g = c.benchmark_group("etag");
    g.bench_function("parse_strong", |b| {
        b.iter(|| EntityTag::parse(black_box(b"\"ifm-0123456789abcdef0123456789abcdef\"")))
    });
    g.bench_function("parse_weak", |b| {
        b.iter(|| EntityTag::parse(black_box(b"W/\"1a2b-3c4d\"")))
    });
    let a = EntityTag::strong("ifm-0123456789abcdef0123456789abcdef").unwrap();
    let same = a.clone();
    let other = EntityTag::strong("ifm-0123456789abcdef0123456789abcdee").unwrap();
    g.bench_function("strong_eq_match", |b| {
        b.iter(|| black_box(&a).strong_eq(black_box(&same)))
    });
    g.bench_function("strong_eq_mismatch", |b| {
        b.iter(|| black_box(&a).strong_eq(black_box(&other)))
    });
    g.finish();
}

/// Precondition header lines, as the guard hands them to `Preconditions::parse`.
type Fields = &'static [(Field, &'static [u8])];

fn precondition(c: &mut Criterion) {
    let mut g = c.benchmark_group("precondition");
    let current = [EntityTag::strong("v2").unwrap()];
    let state = ResourceState::Present {
        validators: &current,
        last_modified: None,
    };
    let cases: [(&str, Fields); 4] = [
        ("if_match_one", &[(Field::IfMatch, b"\"v2\"")]),
        ("if_match_star", &[(Field::IfMatch, b"*")]),
        (
            "if_match_list3",
            &[(Field::IfMatch, b"\"a\", \"b\" , \"v2\"")],
        ),
        (
            "if_unmodified_since",
            &[(Field::IfUnmodifiedSince, b"Sun, 06 Nov 1994 08:49:37 GMT")],
        ),
    ];
    for (name, fields) in cases {
        g.bench_function(BenchmarkId::new("parse", name), |b| {
            b.iter(|| Preconditions::parse(black_box(fields).iter().copied()))
        });
        let pre = Preconditions::parse(fields.iter().copied()).unwrap();
        g.bench_function(BenchmarkId::new("evaluate", name), |b| {
            b.iter(|| evaluate(RequestKind::Write, black_box(&state), black_box(&pre)))
        });
        g.bench_function(BenchmarkId::new("parse_evaluate", name), |b| {
            b.iter(|| {
                let pre = Preconditions::parse(black_box(fields).iter().copied()).unwrap();
                evaluate(RequestKind::Write, black_box(&state), &pre)
            })
        });
    }
    g.finish();
}

fn key(c: &mut Criterion) {
    c.bench_function("resource_key/path_query", |b| {
        b.iter(|| ResourceKey::new("api", black_box("/items/12345"), Some("v=2"), []))
    });
}

/// What the read path does per body: blake3 over the representation id and the bytes,
/// then the tag. Throughput is reported per byte.
fn synthesis(c: &mut Criterion) {
    let mut g = c.benchmark_group("synthesize");
    for size in [1usize << 10, 64 << 10, 1 << 20] {
        let body = vec![b'x'; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &body, |b, body| {
            b.iter(|| {
                let mut hasher = blake3::Hasher::new();
                hasher.update(&42u64.to_le_bytes());
                hasher.update(black_box(body));
                EntityTag::synthesized(&hasher.finalize())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, etag, precondition, key, synthesis);
criterion_main!(benches);
