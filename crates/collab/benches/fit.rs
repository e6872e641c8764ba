//! Fitting and scoring cost of item-kNN and EASE on a MovieLens-shaped random problem:
//! 600 users, 2,000 items, ~130 interactions per user with popularity skew. EASE's fit is
//! O(n_items³) (Cholesky + inverse), so MovieLens small (8,230 active items) costs about
//! (8230 / 2000)³ ≈ 70x the `ease_fit` figure here.

use criterion::{Criterion, criterion_group, criterion_main};
use hyperrec_collab::{Ease, Interactions, ItemKnn};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const USERS: usize = 600;
const ITEMS: usize = 2000;

fn interactions() -> Interactions {
    let mut rng = StdRng::seed_from_u64(7);
    let mut table = Interactions::new(ITEMS);
    for _ in 0..USERS {
        let len = rng.random_range(20..240);
        // Squaring a uniform draw skews picks towards low (popular) item rows.
        let history = (0..len).map(|_| {
            let u: f64 = rng.random();
            (
                (u * u * ITEMS as f64) as u32,
                rng.random_range(1..=10) as f32 * 0.5,
            )
        });
        if table.push_user(history).is_err() {
            unreachable!("items are drawn inside the catalog");
        }
    }
    table
}

fn bench(c: &mut Criterion) {
    let table = interactions();
    let mut group = c.benchmark_group("collab");
    group.sample_size(10);
    group.bench_function("item_knn_fit", |b| b.iter(|| ItemKnn::fit(&table)));
    group.bench_function("ease_fit", |b| {
        b.iter(|| Ease::fit(&table, Ease::DEFAULT_LAMBDA))
    });
    let Ok(ease) = Ease::fit(&table, Ease::DEFAULT_LAMBDA) else {
        unreachable!("lambda > 0 makes the Gram matrix positive definite");
    };
    let (items, ratings) = table.user(0);
    let history: Vec<(u32, f32)> = items.iter().copied().zip(ratings.iter().copied()).collect();
    let mut scores = vec![0.0f32; ITEMS];
    group.bench_function("ease_score_user", |b| {
        b.iter(|| ease.score_user(&history, &mut scores))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
