//! Temporal cache at seed scale: 62,423 items x 384 (synthetic random unit vectors),
//! 1,000 users with 50-item histories.
//!
//! The rebuild bench uses 1,000 hot rows (250 MB), not the default 10,000 (2.5 GB, and
//! 5 GB while a rebuild runs): that would not fit this bench machine next to everything
//! else, and the cost is linear in the number of rows.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use parking_lot::RwLock;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use hyperrec_cache::{CacheConfig, TemporalCache};
use hyperrec_catalog::{HistoryEntry, ItemEmbeddings, ProfileRule, UserTable};
use hyperrec_stage::{Batch, Context, Cpu, Request, Stage, UserId};

const N_ITEMS: usize = 62_423;
const DIM: usize = 384;
const N_USERS: u32 = 1_000;
const HISTORY: usize = 50;
const HOT_ROWS: usize = 1_000;

fn unit_rows(rng: &mut StdRng, rows: usize) -> Vec<f32> {
    let mut data: Vec<f32> = (0..rows * DIM)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    for row in data.chunks_exact_mut(DIM) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x /= norm);
    }
    data
}

/// Zipf-like item draw (rank ~ u^3 * n), so a small hot set covers much of the history.
fn popular_item(rng: &mut StdRng) -> u32 {
    let u: f64 = rng.random();
    ((u * u * u) * N_ITEMS as f64) as u32
}

fn bench_cache(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(11);
    let items = Arc::new(ItemEmbeddings::new(DIM, unit_rows(&mut rng, N_ITEMS)).expect("shape"));
    let histories = (0..N_USERS)
        .map(|u| {
            let history = (0..HISTORY)
                .map(|t| HistoryEntry {
                    item: popular_item(&mut rng),
                    rating: rng.random_range(1..=10) as f32 * 0.5,
                    timestamp: t as i64 * 3600,
                })
                .collect();
            (UserId(u), history)
        })
        .collect();
    let users = Arc::new(RwLock::new(UserTable::build(
        histories,
        &items,
        ProfileRule::default(),
    )));
    let config = CacheConfig {
        hot_items: HOT_ROWS,
        ..CacheConfig::default()
    };
    let mut cache = TemporalCache::new(items.clone(), users.clone(), config).expect("cache");
    let handle = cache.handle();

    let mut group = c.benchmark_group("cache");
    group.sample_size(10);
    group.throughput(Throughput::Elements(HOT_ROWS as u64));
    group.bench_function(BenchmarkId::new("rebuild_rows", HOT_ROWS), |b| {
        b.iter(|| handle.rebuild_now().expect("rebuild"));
    });

    let hot_item = handle.snapshot().items()[0];
    let cold_item = (0..N_ITEMS as u32)
        .find(|&i| handle.snapshot().row(i).is_none())
        .expect("a cold item");
    group.throughput(Throughput::Elements(1));
    group.bench_function("similar_hit_k10", |b| {
        b.iter(|| handle.similar(black_box(hot_item), 10).expect("known"));
    });
    group.bench_function("similar_miss_k10", |b| {
        b.iter(|| handle.similar(black_box(cold_item), 10).expect("known"));
    });

    for n in [1usize, 32] {
        let requests: Vec<Request> = (0..n)
            .map(|i| Request {
                user: UserId(i as u32),
                query: String::new(),
                context: Context::default(),
                k: 10,
                exclude_seen: true,
            })
            .collect();
        let mut batch = Batch::new(&Cpu, DIM).expect("cpu");
        batch.reset(&Cpu, requests).expect("reset");
        for (q, notes) in batch.notes.iter_mut().enumerate() {
            notes.user = Some(q as u32);
        }
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("stage_prior", n), &n, |b, _| {
            b.iter(|| cache.run(&Cpu, black_box(&mut batch)).expect("runs"));
        });
    }
    group.finish();
    let stats = handle.stats();
    println!(
        "cache stats after the bench: hit rate {:.3} ({} hits, {} misses), {} hot rows, last build {:?}",
        stats.hit_rate, stats.hits, stats.misses, stats.hot_rows, stats.last_rebuild
    );
}

criterion_group!(benches, bench_cache);
criterion_main!(benches);
