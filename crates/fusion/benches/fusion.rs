//! Fusion stage at seed scale: 100,000 users x 384 (synthetic random profiles), batches of
//! 1 and 1000 requests, each with one companion.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use parking_lot::RwLock;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use hyperrec_catalog::{HistoryEntry, ItemEmbeddings, ProfileRule, UserTable};
use hyperrec_fusion::{Fusion, FusionConfig};
use hyperrec_stage::{Batch, Context, Cpu, Request, Stage, UserId};

const DIM: usize = 384;
const N_ITEMS: usize = 62_423;
const N_USERS: u32 = 100_000;

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

fn bench_fusion(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(7);
    let items = ItemEmbeddings::new(DIM, unit_rows(&mut rng, N_ITEMS)).expect("shape");
    // One liked item per user is enough for a profile; the bench measures fusion, not
    // profile building.
    let histories = (0..N_USERS)
        .map(|u| {
            let entry = HistoryEntry {
                item: rng.random_range(0..N_ITEMS as u32),
                rating: 5.0,
                timestamp: 0,
            };
            (UserId(u), vec![entry])
        })
        .collect();
    let users = Arc::new(RwLock::new(UserTable::build(
        histories,
        &items,
        ProfileRule::default(),
    )));
    let mut stage = Fusion::new(users, FusionConfig::default()).expect("alpha");

    let mut group = c.benchmark_group("fusion");
    for n in [1usize, 1000] {
        let requests: Vec<Request> = (0..n)
            .map(|_| Request {
                user: UserId(rng.random_range(0..N_USERS)),
                query: String::new(),
                context: Context {
                    companions: vec![UserId(rng.random_range(0..N_USERS))],
                    ..Context::default()
                },
                k: 10,
                exclude_seen: true,
            })
            .collect();
        let mut batch = Batch::new(&Cpu, DIM).expect("cpu");
        batch.reset(&Cpu, requests).expect("reset");
        batch.query_embeddings = unit_rows(&mut rng, n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("stage", n), &n, |b, _| {
            b.iter(|| stage.run(&Cpu, black_box(&mut batch)).expect("runs"));
        });
    }
    group.finish();
}

criterion_group!(benches, bench_fusion);
criterion_main!(benches);
