//! The rerank stage at seed-like scale: 62,423 items of width 384, 4 heads, C = 100
//! candidates, 50-item histories, a time-of-day + social + genre context, batches of 1 and
//! 64 queries. Random unit vectors (seeded from the clock; the seed is printed).
//!
//! `untrained` runs the parameter-free identity heads; `trained` dense random projections,
//! which the stage applies to every item once at construction (not timed here) and which
//! cannot reuse the logit products for the values, so each candidate does twice the work.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use parking_lot::RwLock;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use hyperrec_catalog::{HistoryEntry, ItemEmbeddings, ProfileRule, UserTable};
use hyperrec_rerank::{AttentionRerank, ContextVocabulary, RerankConfig, RerankWeights};
use hyperrec_stage::{Batch, Context, Cpu, Request, Social, Stage, TimeOfDay, UserId};

const ITEMS: usize = 62_423;
const DIM: usize = 384;
const HEADS: usize = 4;
const CANDIDATES: usize = 100;
const HISTORY: usize = 50;
const USERS: usize = 64;
const GENRES: [&str; 3] = ["Thriller", "Comedy", "Drama"];

fn unit(rng: &mut StdRng, out: &mut [f32]) {
    out.iter_mut()
        .for_each(|x| *x = rng.random_range(-1.0f32..1.0));
    let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt();
    out.iter_mut().for_each(|x| *x /= norm);
}

fn bench_rerank(c: &mut Criterion) {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7);
    println!("rerank bench seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    let mut data = vec![0.0f32; ITEMS * DIM];
    data.chunks_exact_mut(DIM)
        .for_each(|row| unit(&mut rng, row));
    let Some(items) = ItemEmbeddings::new(DIM, data) else {
        return;
    };
    let items = Arc::new(items);
    let histories = (0..USERS)
        .map(|user| {
            let history = (0..HISTORY as i64)
                .map(|t| HistoryEntry {
                    item: rng.random_range(0..ITEMS as u32),
                    rating: rng.random_range(1..=10) as f32 / 2.0,
                    timestamp: t,
                })
                .collect();
            (UserId(user as u32), history)
        })
        .collect();
    let users = Arc::new(RwLock::new(UserTable::build(
        histories,
        &items,
        ProfileRule::default(),
    )));
    let genres: Vec<String> = GENRES.iter().map(|g| g.to_string()).collect();
    let phrases = ContextVocabulary::all_phrases(&genres)
        .into_iter()
        .map(|phrase| {
            let mut embedding = vec![0.0; DIM];
            unit(&mut rng, &mut embedding);
            (phrase, embedding)
        })
        .collect();
    let Ok(vocabulary) = ContextVocabulary::new(phrases) else {
        return;
    };
    let vocabulary = Arc::new(vocabulary);
    let mut dense = || -> Vec<f32> {
        let mut matrix: Vec<f32> = (0..DIM * DIM)
            .map(|_| rng.random_range(-1.0f32..1.0) / (DIM as f32).sqrt())
            .collect();
        (0..DIM).for_each(|i| matrix[i * DIM + i] += 2.0);
        matrix
    };
    let trained = RerankWeights {
        q_proj: dense(),
        k_proj: dense(),
        v_proj: dense(),
        ..RerankWeights::untrained(DIM, HEADS)
    };
    let mut stages = Vec::new();
    for (name, weights) in [
        ("untrained", RerankWeights::untrained(DIM, HEADS)),
        ("trained", trained),
    ] {
        let Ok(stage) = AttentionRerank::new(
            items.clone(),
            users.clone(),
            vocabulary.clone(),
            RerankConfig::default(),
            weights,
        ) else {
            return;
        };
        stages.push((name, stage));
    }

    let mut group = c.benchmark_group("rerank");
    for queries in [1usize, 64] {
        let Ok(mut batch) = Batch::new(&Cpu, DIM) else {
            return;
        };
        let requests = (0..queries)
            .map(|q| Request {
                user: UserId(q as u32),
                query: "thriller movies".into(),
                context: Context {
                    time_of_day: Some(TimeOfDay::Evening),
                    social: Some(Social::Alone),
                    companions: Vec::new(),
                    genres: vec!["thriller".into()],
                },
                k: 10,
                exclude_seen: true,
            })
            .collect();
        if batch.reset(&Cpu, requests).is_err() {
            return;
        }
        batch
            .fused
            .chunks_exact_mut(DIM)
            .for_each(|row| unit(&mut rng, row));
        batch.candidates = CANDIDATES;
        for q in 0..queries {
            batch.notes[q].user = Some(q as u32 % USERS as u32);
            let mut score = 0.6f32;
            for _ in 0..CANDIDATES {
                batch.candidate_ids.push(rng.random_range(0..ITEMS as u32));
                score -= rng.random_range(0.0..0.002);
                batch.candidate_scores.push(score);
            }
        }
        group.throughput(Throughput::Elements(queries as u64));
        for (name, stage) in &mut stages {
            group.bench_with_input(
                BenchmarkId::new(format!("{name}_c100_h50_d384"), queries),
                &queries,
                |b, _| {
                    b.iter(|| stage.run(&Cpu, &mut batch));
                },
            );
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench_rerank
}
criterion_main!(benches);
