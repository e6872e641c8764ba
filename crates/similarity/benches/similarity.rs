//! Similarity stage at seed scale: 62,423 items x 384 (synthetic random unit vectors),
//! batches of 1 and 32 queries, 100 candidates, seen items excluded; plus top-K alone.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use parking_lot::RwLock;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use hyperrec_catalog::{HistoryEntry, ItemEmbeddings, ProfileRule, UserTable};
use hyperrec_similarity::{Similarity, SimilarityConfig, top_k};
use hyperrec_stage::{Batch, Context, Cpu, Request, Stage, UserId};

const N_ITEMS: usize = 62_423;
const DIM: usize = 384;
const N_USERS: usize = 1_000;
const HISTORY: usize = 50;

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

fn bench_similarity(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(42);
    let items = Arc::new(ItemEmbeddings::new(DIM, unit_rows(&mut rng, N_ITEMS)).expect("shape"));
    let histories = (0..N_USERS)
        .map(|u| {
            let history = (0..HISTORY)
                .map(|t| HistoryEntry {
                    item: rng.random_range(0..N_ITEMS as u32),
                    rating: rng.random_range(1..=10) as f32 * 0.5,
                    timestamp: t as i64,
                })
                .collect();
            (UserId(u as u32), history)
        })
        .collect();
    let users = Arc::new(RwLock::new(UserTable::build(
        histories,
        &items,
        ProfileRule::default(),
    )));
    let mut stage =
        Similarity::new(items.clone(), users.clone(), SimilarityConfig::default()).expect("config");

    let mut group = c.benchmark_group("similarity");
    group.sample_size(10);
    for n in [1usize, 32] {
        let requests: Vec<Request> = (0..n)
            .map(|i| Request {
                user: UserId((i % N_USERS) as u32),
                query: String::new(),
                context: Context::default(),
                k: 10,
                exclude_seen: true,
            })
            .collect();
        let mut batch = Batch::new(&Cpu, DIM).expect("cpu");
        batch.reset(&Cpu, requests).expect("reset");
        batch.fused = unit_rows(&mut rng, n);
        for (q, notes) in batch.notes.iter_mut().enumerate() {
            notes.user = Some((q % N_USERS) as u32);
        }
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("stage_top100", n), &n, |b, _| {
            b.iter(|| stage.run(&Cpu, black_box(&mut batch)).expect("runs"));
        });
    }
    let scores: Vec<f32> = (0..N_ITEMS)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let excluded: Vec<u32> = {
        let mut e: Vec<u32> = (0..HISTORY)
            .map(|_| rng.random_range(0..N_ITEMS as u32))
            .collect();
        e.sort_unstable();
        e
    };
    for k in [100usize, 1000] {
        group.bench_with_input(BenchmarkId::new("top_k", k), &k, |b, &k| {
            b.iter(|| top_k(black_box(&scores), k, &excluded));
        });
    }
    group.finish();
}

criterion_group!(benches, bench_similarity);
criterion_main!(benches);
