//! Encoding throughput on the CPU: one query, a batch of 64, and a cached query, with the
//! default (native) forward pass; one query and a batch of 64 with candle's reference
//! forward pass for comparison.
//!
//! `cargo bench -p hyperrec-encoder --bench encode`. Needs the model (provisioned like the
//! CLI does: `--model`-style spec in `HYPERREC_MODEL`, default all-MiniLM-L6-v2).

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use hyperrec_encoder::{DEFAULT_MODEL, Encoder, EncoderBackend, QueryEncoder, resolve_model};

const QUERIES: [&str; 8] = [
    "dark psychological thriller with a twist ending",
    "lighthearted comedy for a family movie night",
    "space opera with epic battles",
    "documentaries about nature and animals",
    "mind-bending sci-fi like Inception and Memento",
    "a slow French romance",
    "80s action heroes",
    "afternoon with a group of friends",
];

fn load_encoder(backend: EncoderBackend) -> Encoder {
    let spec = std::env::var("HYPERREC_MODEL").unwrap_or_else(|_| DEFAULT_MODEL.to_owned());
    let files = match resolve_model(&spec) {
        Ok(files) => files,
        Err(error) => panic!("the encode bench needs the model: {error}"),
    };
    match Encoder::load_with(&files, backend) {
        Ok(encoder) => encoder,
        Err(error) => panic!("cannot load the model: {error}"),
    }
}

fn bench_encode(c: &mut Criterion) {
    let encoder = Arc::new(load_encoder(EncoderBackend::Native));
    let mut group = c.benchmark_group("encode");

    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("single_query", 1), |b| {
        b.iter(|| encoder.encode(black_box(&QUERIES[..1])))
    });

    let batch: Vec<&str> = QUERIES.iter().copied().cycle().take(64).collect();
    group.throughput(Throughput::Elements(64));
    group.bench_function(BenchmarkId::new("batch", 64), |b| {
        b.iter(|| encoder.encode(black_box(&batch)))
    });

    let Some(capacity) = NonZeroUsize::new(1024) else {
        return;
    };
    let cached = QueryEncoder::new(Arc::clone(&encoder), capacity);
    if let Err(error) = cached.encode(&QUERIES[..1]) {
        panic!("cannot warm the cache: {error}");
    }
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("cached_query", 1), |b| {
        b.iter(|| cached.encode(black_box(&QUERIES[..1])))
    });
    group.finish();

    let reference = load_encoder(EncoderBackend::Candle);
    let mut group = c.benchmark_group("encode_candle");
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("single_query", 1), |b| {
        b.iter(|| reference.encode(black_box(&QUERIES[..1])))
    });
    group.throughput(Throughput::Elements(64));
    group.bench_function(BenchmarkId::new("batch", 64), |b| {
        b.iter(|| reference.encode(black_box(&batch)))
    });
    group.finish();
}

criterion_group!(benches, bench_encode);
criterion_main!(benches);
