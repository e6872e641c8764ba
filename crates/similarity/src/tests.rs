use std::cmp::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use hyperrec_catalog::{HistoryEntry, ProfileRule, UserTable};
use hyperrec_stage::{Context, Request, UserId};

use super::*;

/// A fresh seed per run, printed by every assertion that depends on it.
fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0x5eed, |d| d.as_nanos() as u64)
}

fn random_unit_rows(rng: &mut StdRng, rows: usize, dim: usize) -> Vec<f32> {
    let mut data: Vec<f32> = (0..rows * dim)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    for row in data.chunks_exact_mut(dim) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|x| *x /= norm);
    }
    data
}

/// Full-sort reference: eligible (not excluded, not NaN) items by score descending, then
/// item ascending, first `k`.
fn naive_top_k(scores: &[f32], k: usize, excluded: &[ItemIndex]) -> Vec<(ItemIndex, f32)> {
    let mut all: Vec<(ItemIndex, f32)> = scores
        .iter()
        .enumerate()
        .map(|(i, &s)| (i as ItemIndex, s))
        .filter(|(i, s)| !s.is_nan() && !excluded.contains(i))
        .collect();
    all.sort_by(|a, b| {
        b.1.partial_cmp(&a.1)
            .unwrap_or(Ordering::Equal)
            .then(a.0.cmp(&b.0))
    });
    all.truncate(k);
    all
}

/// Scores drawn from a handful of small integers (plenty of ties), some NaN and -0.0.
fn tied_scores() -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(
        prop_oneof![
            8 => (-4i32..5).prop_map(|v| v as f32),
            1 => Just(-0.0f32),
            1 => Just(f32::NAN),
            1 => Just(f32::NEG_INFINITY),
        ],
        0..400,
    )
}

proptest! {
    #[test]
    fn top_k_matches_full_sort(
        scores in tied_scores(),
        k in 0usize..1100,
        mut excluded in prop::collection::vec(0u32..420, 0..60),
    ) {
        excluded.sort_unstable();
        prop_assert_eq!(
            bits(&top_k(&scores, k, &excluded)),
            bits(&naive_top_k(&scores, k, &excluded))
        );
    }

    #[test]
    fn top_k_accepts_unsorted_exclusions(
        scores in tied_scores(),
        k in 0usize..50,
        excluded in prop::collection::vec(0u32..420, 0..60),
    ) {
        prop_assert_eq!(
            bits(&top_k(&scores, k, &excluded)),
            bits(&naive_top_k(&scores, k, &excluded))
        );
    }

    #[test]
    fn offering_in_runs_equals_one_pass(
        scores in tied_scores(),
        k in 1usize..64,
        run in 1usize..70,
        mut excluded in prop::collection::vec(0u32..420, 0..60),
    ) {
        excluded.sort_unstable();
        let mut selector = TopK::new();
        selector.begin(k);
        for (i, chunk) in scores.chunks(run).enumerate() {
            selector.offer(chunk, (i * run) as ItemIndex, &excluded);
        }
        let mut ids = vec![0u32; k];
        let mut out = vec![0.0f32; k];
        let written = selector.finish_into(&mut ids, &mut out);
        let expected = naive_top_k(&scores, k, &excluded);
        prop_assert_eq!(written, expected.len());
        let got: Vec<(ItemIndex, f32)> = ids.iter().copied().zip(out.iter().copied()).take(written).collect();
        prop_assert_eq!(bits(&got), bits(&expected));
        prop_assert!(ids[written..].iter().all(|&id| id == PAD_ID));
        prop_assert!(out[written..].iter().all(|&s| s == PAD_SCORE));
    }
}

/// Compares scores by bit pattern so `-0.0` vs `0.0` and infinities are checked exactly.
fn bits(list: &[(ItemIndex, f32)]) -> Vec<(ItemIndex, u32)> {
    list.iter().map(|&(i, s)| (i, s.to_bits())).collect()
}

#[test]
fn top_k_handles_k_up_to_1000_on_a_large_catalog() {
    let seed = clock_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let scores: Vec<f32> = (0..20_000)
        .map(|_| rng.random_range(0..200) as f32)
        .collect();
    let mut excluded: Vec<ItemIndex> = (0..500).map(|_| rng.random_range(0..20_000)).collect();
    excluded.sort_unstable();
    for k in [1, 100, 1000] {
        assert_eq!(
            top_k(&scores, k, &excluded),
            naive_top_k(&scores, k, &excluded),
            "seed {seed} k {k}"
        );
    }
}

#[test]
fn score_all_matches_naive_inner_products() {
    let seed = clock_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for (n_items, dim) in [(1, 1), (7, 19), (1000, 384), (513, 64)] {
        let items =
            ItemEmbeddings::new(dim, random_unit_rows(&mut rng, n_items, dim)).expect("shape");
        let query = random_unit_rows(&mut rng, 1, dim);
        let mut out = vec![f32::NAN; n_items];
        score_all(&items, &query, &mut out).expect("shapes match");
        for (j, &score) in out.iter().enumerate() {
            let naive: f64 = items
                .row(j as ItemIndex)
                .iter()
                .zip(&query)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum();
            assert!(
                (score as f64 - naive).abs() < 1e-5,
                "seed {seed} n_items {n_items} dim {dim} item {j}: {score} vs {naive}"
            );
        }
    }
}

#[test]
fn score_batch_rows_equal_score_all_bit_for_bit() {
    let seed = clock_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let (n_items, dim, n) = (1000, 48, 5);
    let items = ItemEmbeddings::new(dim, random_unit_rows(&mut rng, n_items, dim)).expect("shape");
    let queries = random_unit_rows(&mut rng, n, dim);
    let mut batch = vec![0.0; n * n_items];
    score_batch(&items, &queries, &mut batch).expect("shapes match");
    let mut single = vec![0.0; n_items];
    for q in 0..n {
        score_all(&items, &queries[q * dim..(q + 1) * dim], &mut single).expect("shapes match");
        let row = &batch[q * n_items..(q + 1) * n_items];
        assert!(
            row.iter()
                .zip(&single)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "seed {seed} query {q}"
        );
    }
}

#[test]
fn scoring_rejects_bad_shapes() {
    let items = ItemEmbeddings::new(2, vec![1.0, 0.0, 0.0, 1.0]).expect("shape");
    let mut out = vec![0.0; 2];
    assert!(matches!(
        score_all(&items, &[1.0, 0.0, 0.0], &mut out),
        Err(SimilarityError::Shape {
            what: "queries",
            ..
        })
    ));
    let mut short = vec![0.0; 1];
    assert!(matches!(
        score_all(&items, &[1.0, 0.0], &mut short),
        Err(SimilarityError::Shape { what: "scores", .. })
    ));
}

struct Fixture {
    items: Arc<ItemEmbeddings>,
    users: SharedUsers,
    seed: u64,
}

/// `n_items` random unit items and `n_users` users with random histories.
fn fixture(n_items: usize, dim: usize, n_users: usize) -> (Fixture, StdRng) {
    let seed = clock_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let items = ItemEmbeddings::new(dim, random_unit_rows(&mut rng, n_items, dim)).expect("shape");
    let histories = (0..n_users)
        .map(|u| {
            let len = rng.random_range(1..20.min(n_items) + 1);
            let history = (0..len)
                .map(|t| HistoryEntry {
                    item: rng.random_range(0..n_items) as ItemIndex,
                    rating: rng.random_range(1..=10) as f32 * 0.5,
                    timestamp: t as i64,
                })
                .collect();
            (UserId(u as u32 + 1), history)
        })
        .collect();
    let users = UserTable::build(histories, &items, ProfileRule::default());
    (
        Fixture {
            items: Arc::new(items),
            users: Arc::new(RwLock::new(users)),
            seed,
        },
        rng,
    )
}

fn request(user: u32, k: usize, exclude_seen: bool) -> Request {
    Request {
        user: UserId(user),
        query: "q".into(),
        context: Context::default(),
        k,
        exclude_seen,
    }
}

/// A batch as the earlier stages leave it: fused vectors and user notes filled in.
fn prepared_batch(
    fx: &Fixture,
    rng: &mut StdRng,
    requests: Vec<Request>,
    with_prior: bool,
) -> Batch<Cpu> {
    let dim = fx.items.dim();
    let mut batch = Batch::new(&Cpu, dim).expect("cpu");
    let n = requests.len();
    batch.reset(&Cpu, requests).expect("reset");
    batch.fused = random_unit_rows(rng, n, dim);
    let users = fx.users.read();
    for (notes, request) in batch.notes.iter_mut().zip(&batch.requests) {
        notes.user = users.index_of(request.user);
    }
    if with_prior {
        batch.item_prior = (0..n * fx.items.len())
            .map(|_| rng.random_range(-0.3f32..0.3))
            .collect();
    }
    batch
}

/// Reference for the stage: score_all + prior, exclusions, full sort, padding.
fn expected_candidates(
    fx: &Fixture,
    batch: &Batch<Cpu>,
    q: usize,
    candidates: usize,
    exclude: bool,
) -> Vec<(u32, f32)> {
    let n_items = fx.items.len();
    let dim = fx.items.dim();
    let mut scores = vec![0.0; n_items];
    let mut query = batch.fused[q * dim..(q + 1) * dim].to_vec();
    if batch.query_prior.len() == batch.len() * dim {
        for (x, p) in query.iter_mut().zip(&batch.query_prior[q * dim..]) {
            *x += p;
        }
    }
    score_all(&fx.items, &query, &mut scores).expect("shapes");
    if batch.item_prior.len() == batch.len() * n_items {
        for (s, p) in scores
            .iter_mut()
            .zip(&batch.item_prior[q * n_items..(q + 1) * n_items])
        {
            *s += p;
        }
    }
    let users = fx.users.read();
    let excluded = match batch.notes[q].user {
        Some(user) if exclude && batch.requests[q].exclude_seen => users.seen(user).to_vec(),
        _ => Vec::new(),
    };
    let mut top = naive_top_k(&scores, candidates, &excluded);
    top.resize(candidates, (PAD_ID, PAD_SCORE));
    top
}

fn stage_candidates(batch: &Batch<Cpu>, q: usize) -> Vec<(u32, f32)> {
    let c = batch.candidates;
    batch.candidate_ids[q * c..(q + 1) * c]
        .iter()
        .copied()
        .zip(batch.candidate_scores[q * c..(q + 1) * c].iter().copied())
        .collect()
}

#[test]
fn stage_matches_reference_with_priors_and_exclusions() {
    let (fx, mut rng) = fixture(1500, 40, 30);
    let config = SimilarityConfig {
        candidates: 50,
        exclude_seen: true,
    };
    let mut stage = Similarity::new(fx.items.clone(), fx.users.clone(), config).expect("valid");
    for (with_prior, with_query_prior) in
        [(false, false), (true, false), (false, true), (true, true)]
    {
        // Known users with and without opt-out, and an unknown user (no exclusion).
        let requests = vec![
            request(1, 10, true),
            request(2, 10, false),
            request(999, 10, true),
            request(3, 10, true),
        ];
        let mut batch = prepared_batch(&fx, &mut rng, requests, with_prior);
        if with_query_prior {
            batch.query_prior = random_unit_rows(&mut rng, batch.len(), fx.items.dim());
        }
        stage.run(&Cpu, &mut batch).expect("runs");
        assert_eq!(batch.candidates, 50);
        for q in 0..batch.len() {
            assert_eq!(
                bits(&stage_candidates(&batch, q)),
                bits(&expected_candidates(&fx, &batch, q, 50, true)),
                "seed {} query {q} prior {with_prior} query prior {with_query_prior}",
                fx.seed
            );
        }
        let users = fx.users.read();
        assert_eq!(
            batch.notes[0].excluded[..],
            *users.seen(0),
            "seed {}",
            fx.seed
        );
        assert!(batch.notes[1].excluded.is_empty());
        assert!(batch.notes[2].excluded.is_empty());
    }
}

#[test]
fn stage_config_can_disable_exclusion() {
    let (fx, mut rng) = fixture(300, 16, 5);
    let config = SimilarityConfig {
        candidates: 300,
        exclude_seen: false,
    };
    let mut stage = Similarity::new(fx.items.clone(), fx.users.clone(), config).expect("valid");
    let mut batch = prepared_batch(&fx, &mut rng, vec![request(1, 5, true)], false);
    stage.run(&Cpu, &mut batch).expect("runs");
    assert_eq!(
        bits(&stage_candidates(&batch, 0)),
        bits(&expected_candidates(&fx, &batch, 0, 300, false)),
        "seed {}",
        fx.seed
    );
    // Every item is a candidate, seen ones included.
    assert!(batch.candidate_ids.iter().all(|&id| id != PAD_ID));
}

#[test]
fn stage_pads_when_the_catalog_is_smaller_than_the_candidates() {
    let (fx, mut rng) = fixture(30, 8, 3);
    let mut stage = Similarity::new(
        fx.items.clone(),
        fx.users.clone(),
        SimilarityConfig::default(),
    )
    .expect("valid");
    let mut batch = prepared_batch(
        &fx,
        &mut rng,
        vec![request(1, 10, true), request(77, 10, true)],
        false,
    );
    stage.run(&Cpu, &mut batch).expect("runs");
    assert_eq!(batch.candidates, 100);
    let seen = fx.users.read().seen(0).len();
    for (q, eligible) in [(0, 30 - seen), (1, 30)] {
        let got = stage_candidates(&batch, q);
        assert!(
            got[..eligible]
                .iter()
                .all(|&(id, s)| id != PAD_ID && s.is_finite()),
            "seed {}",
            fx.seed
        );
        assert!(
            got[eligible..]
                .iter()
                .all(|&(id, s)| id == PAD_ID && s == PAD_SCORE),
            "seed {}",
            fx.seed
        );
        assert_eq!(
            bits(&got),
            bits(&expected_candidates(&fx, &batch, q, 100, true)),
            "seed {}",
            fx.seed
        );
    }
}

#[test]
fn stage_keeps_at_least_the_largest_k() {
    let (fx, mut rng) = fixture(2000, 8, 3);
    let config = SimilarityConfig {
        candidates: 10,
        exclude_seen: true,
    };
    let mut stage = Similarity::new(fx.items.clone(), fx.users.clone(), config).expect("valid");
    let mut batch = prepared_batch(&fx, &mut rng, vec![request(1, 1000, true)], false);
    stage.run(&Cpu, &mut batch).expect("runs");
    assert_eq!(batch.candidates, 1000);
    assert_eq!(
        bits(&stage_candidates(&batch, 0)),
        bits(&expected_candidates(&fx, &batch, 0, 1000, true)),
        "seed {}",
        fx.seed
    );
}

#[test]
fn stage_rejects_bad_configuration_and_shapes() {
    let (fx, mut rng) = fixture(10, 4, 1);
    for candidates in [0, MAX_CANDIDATES + 1] {
        let config = SimilarityConfig {
            candidates,
            exclude_seen: true,
        };
        assert_eq!(
            Similarity::new(fx.items.clone(), fx.users.clone(), config).err(),
            Some(SimilarityError::InvalidCandidates(candidates))
        );
    }
    let wider = Arc::new(ItemEmbeddings::new(5, vec![0.2; 50]).expect("shape"));
    assert!(matches!(
        Similarity::new(wider, fx.users.clone(), SimilarityConfig::default()),
        Err(SimilarityError::DimensionMismatch { items: 5, users: 4 })
    ));
    let mut stage = Similarity::new(
        fx.items.clone(),
        fx.users.clone(),
        SimilarityConfig::default(),
    )
    .expect("valid");
    let mut batch = prepared_batch(&fx, &mut rng, vec![request(1, 3, true)], false);
    batch.fused.truncate(2);
    assert!(matches!(
        stage.run(&Cpu, &mut batch),
        Err(StageError::BatchShape { .. })
    ));
}

#[test]
fn single_query_half_scan_equals_the_f32_scan_bit_for_bit() {
    let (fx, mut rng) = fixture(3000, 384, 20);
    let config = SimilarityConfig {
        candidates: 100,
        exclude_seen: true,
    };
    let mut stage = Similarity::new(fx.items.clone(), fx.users.clone(), config).expect("valid");
    assert_eq!(stage.index_bytes(), 3000 * 384 * 2, "seed {}", fx.seed);
    for round in 0..12 {
        let user = rng.random_range(1..=22);
        let k = [1, 10, 100, 1000][round % 4];
        let mut batch = prepared_batch(&fx, &mut rng, vec![request(user, k, true)], round % 3 == 1);
        if round % 2 == 0 {
            batch.query_prior = random_unit_rows(&mut rng, 1, 384);
        }
        stage.run(&Cpu, &mut batch).expect("runs");
        let c = batch.candidates;
        assert_eq!(
            bits(&stage_candidates(&batch, 0)),
            bits(&expected_candidates(&fx, &batch, 0, c, true)),
            "seed {} round {round} user {user} k {k}",
            fx.seed
        );
    }
}

/// A fixture over given items and histories.
fn fixture_over(
    items: Arc<ItemEmbeddings>,
    histories: Vec<(UserId, Vec<HistoryEntry>)>,
    seed: u64,
) -> Fixture {
    let users = UserTable::build(histories, &items, ProfileRule::default());
    Fixture {
        items,
        users: Arc::new(RwLock::new(users)),
        seed,
    }
}

#[test]
fn single_query_half_scan_keeps_exact_ties_and_near_ties() {
    // Few distinct rows, each repeated many times, plus copies nudged below f16 resolution:
    // scores tie exactly or differ by less than the f16 filter can see.
    let seed = clock_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let dim = 48;
    let base = random_unit_rows(&mut rng, 7, dim);
    let mut rows = Vec::with_capacity(700 * dim);
    for i in 0..700 {
        let mut row = base[(i % 7) * dim..(i % 7 + 1) * dim].to_vec();
        if i % 3 == 0 {
            let c = rng.random_range(0..dim);
            row[c] += rng.random_range(-1e-6f32..1e-6);
        }
        rows.extend(row);
    }
    let items = Arc::new(ItemEmbeddings::new(dim, rows).expect("shape"));
    let history = (0..40)
        .map(|t| HistoryEntry {
            item: rng.random_range(0..700),
            rating: 4.0,
            timestamp: t,
        })
        .collect();
    let fx = fixture_over(items, vec![(UserId(1), history)], seed);
    let mut stage = Similarity::new(
        fx.items.clone(),
        fx.users.clone(),
        SimilarityConfig::default(),
    )
    .expect("valid");
    for k in [5, 100, 250] {
        let mut batch = prepared_batch(&fx, &mut rng, vec![request(1, k, true)], false);
        stage.run(&Cpu, &mut batch).expect("runs");
        let c = batch.candidates;
        assert_eq!(
            bits(&stage_candidates(&batch, 0)),
            bits(&expected_candidates(&fx, &batch, 0, c, true)),
            "seed {seed} k {k}"
        );
    }
}

#[test]
fn tables_f16_cannot_carry_are_scanned_in_f32() {
    let seed = clock_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let dim = 16;
    let mut rows = random_unit_rows(&mut rng, 200, dim);
    rows[5 * dim] = 1e6;
    let items = Arc::new(ItemEmbeddings::new(dim, rows).expect("shape"));
    let fx = fixture_over(items, Vec::new(), seed);
    let mut stage = Similarity::new(
        fx.items.clone(),
        fx.users.clone(),
        SimilarityConfig::default(),
    )
    .expect("valid");
    assert_eq!(stage.index_bytes(), 0);
    let mut batch = prepared_batch(&fx, &mut rng, vec![request(9, 10, true)], false);
    stage.run(&Cpu, &mut batch).expect("runs");
    assert_eq!(
        bits(&stage_candidates(&batch, 0)),
        bits(&expected_candidates(&fx, &batch, 0, batch.candidates, true)),
        "seed {seed}"
    );
}
