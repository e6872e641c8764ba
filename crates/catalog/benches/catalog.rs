//! Criterion benches of the catalog: seed-scale generation, CSV loading, the embedding store.
//!
//! `cargo bench -p hyperrec-catalog --bench catalog`. The MovieLens bench reads
//! `HYPERREC_MOVIELENS_SMALL` or the shared ml-latest-small and is skipped without it.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

use hyperrec_catalog::ItemEmbeddings;
use hyperrec_catalog::movielens::{self, LoadOptions};
use hyperrec_catalog::store;
use hyperrec_catalog::synthetic::{SyntheticConfig, generate, synthetic_queries, write_movielens};

fn generation(c: &mut Criterion) {
    let mut group = c.benchmark_group("synthetic");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(40));
    let seed_scale = SyntheticConfig::default();
    group.bench_function("generate_seed_scale_5M_ratings", |b| {
        b.iter(|| black_box(generate(&seed_scale)))
    });
    group.bench_function("synthetic_queries_1000", |b| {
        b.iter(|| black_box(synthetic_queries(1000, 7)))
    });
    group.finish();
}

fn loading(c: &mut Criterion) {
    let mut group = c.benchmark_group("movielens");
    group.sample_size(10);
    let shared = std::env::var_os("HYPERREC_MOVIELENS_SMALL").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/data/ml-latest-small"
            ))
        },
        PathBuf::from,
    );
    if shared.join("movies.csv").is_file() {
        group.bench_function("load_ml_latest_small", |b| {
            b.iter(|| black_box(movielens::load(&shared, LoadOptions::lenient())))
        });
    } else {
        eprintln!(
            "skipping load_ml_latest_small: no data at {}",
            shared.display()
        );
    }
    // A 1/10-scale synthetic directory (500,000 ratings) through the CSV path.
    let dir = std::env::temp_dir().join(format!("hyperrec-catalog-bench-{}", std::process::id()));
    let tenth = SyntheticConfig {
        users: 10_000,
        ..SyntheticConfig::default()
    };
    let dataset = generate(&tenth);
    if write_movielens(&dir, &dataset).is_ok() {
        group.bench_function("load_synthetic_500k_ratings", |b| {
            b.iter(|| black_box(movielens::load(&dir, LoadOptions::lenient())))
        });
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

fn embedding_store(c: &mut Criterion) {
    let mut group = c.benchmark_group("store");
    group.sample_size(10);
    // Seed scale: 62,423 x 384 f32 = 96 MB.
    let embeddings = ItemEmbeddings::new(
        384,
        (0..62_423 * 384).map(|i| (i % 97) as f32 / 97.0).collect(),
    );
    let Some(embeddings) = embeddings else { return };
    let dir = std::env::temp_dir().join(format!("hyperrec-store-bench-{}", std::process::id()));
    let path = dir.join("items.safetensors");
    group.bench_function("save_seed_scale", |b| {
        b.iter(|| store::save(&path, &embeddings, "fp"))
    });
    group.bench_function("load_seed_scale", |b| {
        b.iter(|| black_box(store::load_if_fresh(&path, "fp")))
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, generation, loading, embedding_store);
criterion_main!(benches);
