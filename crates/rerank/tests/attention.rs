//! Behaviour of the rerank stage through its public API: the formula against hand and
//! naive computations, the personalization it should produce, explanations, cold start,
//! weights files and bad input.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use hyperrec_catalog::{HistoryEntry, ItemEmbeddings, ProfileRule, SharedUsers, UserTable};
use hyperrec_rerank::weights::{CONTEXT_SHARE, Q_PROJ};
use hyperrec_rerank::{
    AttentionRerank, ContextVocabulary, RerankConfig, RerankError, RerankWeights, ScoreMix,
    explain, time_of_day_phrase,
};
use hyperrec_stage::{
    Batch, Context, Cpu, Request, Social, Source, Stage, StageError, TimeOfDay, UserId,
};

fn fresh_rng() -> (u64, StdRng) {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5eed);
    (seed, StdRng::seed_from_u64(seed))
}

fn unit(rng: &mut StdRng, dim: usize) -> Vec<f32> {
    let v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    normalized(v)
}

fn normalized(v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / norm).collect()
}

/// `base` plus a little noise, normalized: an item very similar to `base`.
fn near(rng: &mut StdRng, base: &[f32], noise: f32) -> Vec<f32> {
    normalized(
        base.iter()
            .map(|x| x + noise * rng.random_range(-1.0f32..1.0) / (base.len() as f32).sqrt())
            .collect(),
    )
}

fn entry(item: u32, rating: f32, timestamp: i64) -> HistoryEntry {
    HistoryEntry {
        item,
        rating,
        timestamp,
    }
}

struct World {
    items: Arc<ItemEmbeddings>,
    users: SharedUsers,
    vocabulary: Arc<ContextVocabulary>,
}

impl World {
    fn new(
        dim: usize,
        item_rows: Vec<Vec<f32>>,
        histories: Vec<Vec<HistoryEntry>>,
        phrases: Vec<(String, Vec<f32>)>,
    ) -> World {
        let items = Arc::new(
            ItemEmbeddings::new(dim, item_rows.into_iter().flatten().collect()).expect("items"),
        );
        let users = histories
            .into_iter()
            .enumerate()
            .map(|(at, history)| (UserId(at as u32 + 1), history))
            .collect();
        let table = UserTable::build(users, &items, ProfileRule::default());
        let vocabulary = if phrases.is_empty() {
            ContextVocabulary::empty(dim)
        } else {
            ContextVocabulary::new(phrases).expect("vocabulary")
        };
        World {
            items,
            users: Arc::new(RwLock::new(table)),
            vocabulary: Arc::new(vocabulary),
        }
    }

    fn stage(&self, config: RerankConfig, weights: RerankWeights) -> AttentionRerank {
        AttentionRerank::new(
            self.items.clone(),
            self.users.clone(),
            self.vocabulary.clone(),
            config,
            weights,
        )
        .expect("stage")
    }
}

/// One query of a test batch.
struct Query {
    user: Option<u32>,
    context: Context,
    k: usize,
    candidates: Vec<(u32, f32)>,
    fused: Vec<f32>,
}

fn batch(dim: usize, candidates: usize, queries: &[Query]) -> Batch<Cpu> {
    let mut batch = Batch::new(&Cpu, dim).expect("batch");
    let requests = queries
        .iter()
        .map(|q| Request {
            user: UserId(q.user.map_or(0, |u| u + 1)),
            query: "q".into(),
            context: q.context.clone(),
            k: q.k,
            exclude_seen: false,
        })
        .collect();
    batch.reset(&Cpu, requests).expect("reset");
    batch.candidates = candidates;
    for (at, query) in queries.iter().enumerate() {
        batch.notes[at].user = query.user;
        batch.fused[at * dim..(at + 1) * dim].copy_from_slice(&query.fused);
        let mut row = query.candidates.clone();
        row.resize(candidates, (u32::MAX, f32::NEG_INFINITY));
        batch.candidate_ids.extend(row.iter().map(|c| c.0));
        batch.candidate_scores.extend(row.iter().map(|c| c.1));
    }
    batch
}

fn config(heads: usize, candidates: usize) -> RerankConfig {
    RerankConfig {
        candidates,
        history_len: 50,
        heads,
        top_contributions: 3,
    }
}

fn results(batch: &Batch<Cpu>, query: usize) -> Vec<(u32, f32)> {
    let row = query * batch.results..(query + 1) * batch.results;
    batch.result_ids[row.clone()]
        .iter()
        .copied()
        .zip(batch.result_scores[row].iter().copied())
        .collect()
}

fn attribution(batch: &Batch<Cpu>, query: usize, rank: usize) -> &[f32] {
    let start = (query * batch.results + rank) * batch.slots;
    &batch.result_attributions[start..start + batch.slots]
}

fn rank_of(batch: &Batch<Cpu>, query: usize, item: u32) -> Option<usize> {
    results(batch, query).iter().position(|r| r.0 == item)
}

fn evening_alone() -> Context {
    Context {
        time_of_day: Some(TimeOfDay::Evening),
        social: Some(Social::Alone),
        companions: Vec::new(),
        genres: Vec::new(),
    }
}

#[test]
fn identity_heads_match_a_hand_computation() {
    // dim 4, two heads of two columns; history: item 0 loved (5), item 1 disliked (2);
    // one context phrase; the candidate is item 2. Worked out in the comments below.
    let world = World::new(
        4,
        vec![
            vec![1.0, 0.0, 0.0, 0.0],
            vec![0.0, 0.0, 1.0, 0.0],
            vec![0.5, 0.5, 0.5, 0.5],
        ],
        vec![vec![entry(0, 5.0, 1), entry(1, 2.0, 2)]],
        vec![(
            time_of_day_phrase(TimeOfDay::Evening).into(),
            vec![0.0, 1.0, 0.0, 0.0],
        )],
    );
    let mut weights = RerankWeights::untrained(4, 2);
    weights.q_proj = RerankWeights::untrained(4, 2).k_proj; // plain identity
    weights.score_mix = ScoreMix {
        retrieval: 1.0,
        attention: 1.0,
        bias: 0.0,
    };
    let mut stage = world.stage(config(2, 10), weights);
    let context = Context {
        time_of_day: Some(TimeOfDay::Evening),
        ..Context::default()
    };
    let mut batch = batch(
        4,
        10,
        &[Query {
            user: Some(0),
            context,
            k: 1,
            candidates: vec![(2, 0.5)],
            fused: vec![0.5; 4],
        }],
    );
    stage.run(&Cpu, &mut batch).expect("run");

    // Head 0 sees columns 0-1: q = (.5, .5); logits item0 .5/sqrt2, item1 0, phrase .5/sqrt2.
    // History pool (mass .75): softmax(.35355, 0) = (.58748, .41252) -> (.44061, .30939);
    // context pool: .25. Values . u: item0 +.5, item1 0, phrase .5.
    // Head 1 sees columns 2-3: logits item0 0, item1 .35355, phrase 0 -> (.30939, .44061, .25);
    // values . u: item1 = -0.5 * .5 = -.25, others 0.
    // a = .44061*.5 + .25*.5 - .44061*.25 = .235152; attributions (.375, .375, .25).
    let expected_attention = 0.235_152_3_f32;
    assert_eq!(batch.results, 1);
    assert_eq!(batch.result_ids[0], 2);
    assert!(
        (batch.result_scores[0] - (0.5 + expected_attention)).abs() < 1e-5,
        "score {}",
        batch.result_scores[0]
    );
    assert_eq!(batch.result_retrieval_scores[0], 0.5);
    assert_eq!(batch.slots, 3);
    let weights = attribution(&batch, 0, 0);
    for (got, want) in weights.iter().zip([0.375, 0.375, 0.25]) {
        assert!((got - want).abs() < 1e-5, "attributions {weights:?}");
    }
    assert_eq!(
        batch.notes[0].sources,
        [
            Source::HistoryItem(0),
            Source::HistoryItem(1),
            Source::Context("watching in the evening".into())
        ]
    );
}

/// The scoring formula of the crate docs, computed the slow and obvious way: per-head
/// `d x d_h` projection matrices, every product spelled out.
struct Naive {
    scores: Vec<(u32, f32)>,
    attributions: Vec<Vec<f32>>,
}

#[allow(clippy::too_many_arguments)]
fn naive(
    weights: &RerankWeights,
    items: &ItemEmbeddings,
    history: &[HistoryEntry],
    phrases: &[Vec<f32>],
    candidates: &[(u32, f32)],
    fused: &[f32],
) -> Naive {
    let d = weights.dim;
    let heads = weights.heads;
    let dh = d / heads;
    // W^h[i][j] = W[(h*dh + j), i]
    let project = |w: &[f32], x: &[f32], h: usize| -> Vec<f32> {
        (0..dh)
            .map(|j| (0..d).map(|i| x[i] * w[(h * dh + j) * d + i]).sum())
            .collect()
    };
    let dotp = |a: &[f32], b: &[f32]| -> f32 { a.iter().zip(b).map(|(x, y)| x * y).sum() };
    let mut sources: Vec<(Vec<f32>, f32, bool)> = history
        .iter()
        .map(|e| {
            let gate = weights.history_gate[0] + weights.history_gate[1] * (e.rating - 3.0) / 2.0;
            (items.row(e.item).to_vec(), gate, true)
        })
        .collect();
    sources.extend(
        phrases
            .iter()
            .map(|p| (p.clone(), weights.context_gate, false)),
    );
    let n_hist = history.len();
    let n_ctx = phrases.len();
    let beta = weights.query_fused_mix;
    let mut scores = Vec::new();
    let mut attributions = Vec::new();
    for &(item, retrieval) in candidates {
        let c = items.row(item);
        let mut attention = 0.0;
        let mut attribution = vec![0.0; sources.len()];
        for h in 0..heads {
            let qc = project(&weights.q_proj, c, h);
            let qf = project(&weights.q_proj, fused, h);
            let q: Vec<f32> = qc
                .iter()
                .zip(&qf)
                .map(|(a, b)| (1.0 - beta) * a + beta * b)
                .collect();
            let u = project(&weights.v_proj, c, h);
            let logits: Vec<f32> = sources
                .iter()
                .map(|(x, _, _)| dotp(&q, &project(&weights.k_proj, x, h)) / (dh as f32).sqrt())
                .collect();
            let mut w = vec![0.0; sources.len()];
            for (range, mass) in [
                (
                    0..n_hist,
                    if n_ctx > 0 {
                        1.0 - weights.context_share
                    } else {
                        1.0
                    },
                ),
                (
                    n_hist..n_hist + n_ctx,
                    if n_hist > 0 {
                        weights.context_share
                    } else {
                        1.0
                    },
                ),
            ] {
                let z: f32 = logits[range.clone()].iter().map(|l| l.exp()).sum();
                for s in range {
                    w[s] = mass * logits[s].exp() / z;
                }
            }
            for (s, (x, gate, _)) in sources.iter().enumerate() {
                let v: Vec<f32> = project(&weights.v_proj, x, h)
                    .iter()
                    .map(|v| v * gate)
                    .collect();
                attention += w[s] * dotp(&v, &u);
                attribution[s] += w[s] / heads as f32;
            }
        }
        let score = if sources.is_empty() {
            retrieval
        } else {
            weights.score_mix.retrieval * retrieval
                + weights.score_mix.attention * attention
                + weights.score_mix.bias
        };
        scores.push((item, score));
        attributions.push(attribution);
    }
    Naive {
        scores,
        attributions,
    }
}

fn random_matrix(rng: &mut StdRng, dim: usize) -> Vec<f32> {
    // Around the identity so attention is neither flat nor one-hot.
    let mut m: Vec<f32> = (0..dim * dim)
        .map(|_| rng.random_range(-1.0f32..1.0) / (dim as f32).sqrt())
        .collect();
    for i in 0..dim {
        m[i * dim + i] += 2.0;
    }
    m
}

/// Compares the stage with the naive formula for `weights` on a random query.
fn check_against_naive(weights: RerankWeights, label: &str) {
    let (seed, mut rng) = fresh_rng();
    let dim = weights.dim;
    let heads = weights.heads;
    let n_items = 40;
    let rows: Vec<Vec<f32>> = (0..n_items).map(|_| unit(&mut rng, dim)).collect();
    let history: Vec<HistoryEntry> = (0..12)
        .map(|t| {
            entry(
                rng.random_range(0..n_items as u32),
                rng.random_range(1..=10) as f32 / 2.0,
                t,
            )
        })
        .collect();
    let evening = unit(&mut rng, dim);
    let alone = unit(&mut rng, dim);
    let world = World::new(
        dim,
        rows,
        vec![history],
        vec![
            ("watching in the evening".into(), evening.clone()),
            ("watching alone".into(), alone.clone()),
        ],
    );
    let table_history = world.users.read().recent(0, 50).to_vec();
    let candidates: Vec<(u32, f32)> = (0..20)
        .map(|i| (i as u32 + 10, rng.random_range(0.0f32..1.0)))
        .collect();
    let fused = unit(&mut rng, dim);
    let reference = naive(
        &weights,
        &world.items,
        &table_history,
        &[evening, alone],
        &candidates,
        &fused,
    );
    let mut stage = world.stage(config(heads, 20), weights);
    let mut batch = batch(
        dim,
        20,
        &[Query {
            user: Some(0),
            context: evening_alone(),
            k: 20,
            candidates,
            fused,
        }],
    );
    stage.run(&Cpu, &mut batch).expect("run");
    let got = results(&batch, 0);
    for (rank, &(item, score)) in got.iter().enumerate() {
        let at = reference
            .scores
            .iter()
            .position(|r| r.0 == item)
            .unwrap_or_else(|| panic!("{label}: item {item} not a candidate (seed {seed})"));
        let want = reference.scores[at].1;
        assert!(
            (score - want).abs() <= 1e-4 * (1.0 + want.abs()),
            "{label}: item {item} score {score} vs naive {want} (seed {seed})"
        );
        for (slot, (g, w)) in attribution(&batch, 0, rank)
            .iter()
            .zip(&reference.attributions[at])
            .enumerate()
        {
            assert!(
                (g - w).abs() < 1e-4,
                "{label}: item {item} slot {slot}: {g} vs {w} (seed {seed})"
            );
        }
    }
    for pair in got.windows(2) {
        assert!(
            pair[0].1 > pair[1].1 || (pair[0].1 == pair[1].1 && pair[0].0 < pair[1].0),
            "{label}: not sorted: {pair:?} (seed {seed})"
        );
    }
}

#[test]
fn untrained_heads_match_the_naive_formula() {
    check_against_naive(RerankWeights::untrained(32, 4), "untrained");
}

#[test]
fn trained_projections_match_the_naive_formula() {
    let (_, mut rng) = fresh_rng();
    let dim = 24;
    let weights = RerankWeights {
        q_proj: random_matrix(&mut rng, dim),
        k_proj: random_matrix(&mut rng, dim),
        v_proj: random_matrix(&mut rng, dim),
        query_fused_mix: 0.3,
        history_gate: [0.1, 0.8],
        context_gate: 0.7,
        context_share: 0.4,
        score_mix: ScoreMix {
            retrieval: 0.9,
            attention: 0.5,
            bias: 0.1,
        },
        ..RerankWeights::untrained(dim, 3)
    };
    check_against_naive(weights, "trained");
}

#[test]
fn scaled_identity_projections_match_the_naive_formula() {
    // Multiples of the identity take the stage's table-free path with factors other than 1.
    let dim = 16;
    let identity = |scale: f32| {
        let mut m = vec![0.0; dim * dim];
        (0..dim).for_each(|i| m[i * dim + i] = scale);
        m
    };
    // Without the fused vector the value products reuse the logits; with it they cannot.
    for query_fused_mix in [0.0, 0.2] {
        let weights = RerankWeights {
            q_proj: identity(3.0),
            k_proj: identity(0.5),
            v_proj: identity(2.0),
            query_fused_mix,
            ..RerankWeights::untrained(dim, 2)
        };
        check_against_naive(weights, &format!("scaled identity, beta {query_fused_mix}"));
    }
}

#[test]
fn liked_history_outranks_disliked_history_at_equal_retrieval() {
    let (seed, mut rng) = fresh_rng();
    let dim = 384;
    let liked = unit(&mut rng, dim);
    let disliked = unit(&mut rng, dim);
    let like_candidate = near(&mut rng, &liked, 0.5);
    let dislike_candidate = near(&mut rng, &disliked, 0.5);
    let mut rows = vec![liked, disliked, like_candidate, dislike_candidate];
    rows.extend((0..30).map(|_| unit(&mut rng, dim)));
    // Other history items with random ratings around them.
    let mut history: Vec<HistoryEntry> = (0..20)
        .map(|t| {
            entry(
                rng.random_range(4..34),
                rng.random_range(1..=10) as f32 / 2.0,
                t,
            )
        })
        .collect();
    history.push(entry(0, 5.0, 100));
    history.push(entry(1, 1.0, 101));
    let world = World::new(dim, rows, vec![history], Vec::new());
    let mut stage = world.stage(config(4, 100), RerankWeights::untrained(dim, 4));
    // The disliked-like candidate even has the smaller index, so a tie would favour it.
    let mut batch = batch(
        dim,
        100,
        &[Query {
            user: Some(0),
            context: Context::default(),
            k: 2,
            candidates: vec![(3, 0.4), (2, 0.4)],
            fused: unit(&mut rng, dim),
        }],
    );
    stage.run(&Cpu, &mut batch).expect("run");
    let got = results(&batch, 0);
    assert_eq!(got[0].0, 2, "liked-like first: {got:?} (seed {seed})");
    assert!(got[0].1 > 0.4 && got[1].1 < 0.4, "{got:?} (seed {seed})");
}

#[test]
fn cold_start_attends_over_context_only() {
    let (seed, mut rng) = fresh_rng();
    let dim = 64;
    let evening = unit(&mut rng, dim);
    let alone = unit(&mut rng, dim);
    let near_evening = near(&mut rng, &evening, 0.3);
    let mut rows = vec![near_evening];
    rows.extend((0..9).map(|_| unit(&mut rng, dim)));
    let world = World::new(
        dim,
        rows,
        vec![vec![entry(5, 5.0, 1)]],
        vec![
            ("watching in the evening".into(), evening),
            ("watching alone".into(), alone),
        ],
    );
    let mut stage = world.stage(config(4, 100), RerankWeights::untrained(dim, 4));
    let candidates: Vec<(u32, f32)> = (0..10).map(|i| (i, 0.5 - i as f32 * 0.01)).collect();
    let query = |user, context| Query {
        user,
        context,
        k: 10,
        candidates: candidates.clone(),
        fused: vec![0.125; dim],
    };
    let mut batch = batch(
        dim,
        100,
        &[
            query(None, evening_alone()),
            query(None, Context::default()),
        ],
    );
    stage.run(&Cpu, &mut batch).expect("run");

    assert_eq!(
        batch.notes[0].sources,
        [
            Source::Context("watching in the evening".into()),
            Source::Context("watching alone".into())
        ],
        "seed {seed}"
    );
    assert_eq!(batch.slots, 2);
    for rank in 0..10 {
        let total: f32 = attribution(&batch, 0, rank).iter().sum();
        assert!(
            (total - 1.0).abs() < 1e-5,
            "rank {rank}: {total} (seed {seed})"
        );
    }
    let evening_rank = rank_of(&batch, 0, 0).expect("ranked");
    assert!(
        attribution(&batch, 0, evening_rank)[0] > 0.5,
        "near-evening item attends to the evening phrase (seed {seed})"
    );

    // No history and no context: retrieval order and scores, no attributions.
    assert!(batch.notes[1].sources.is_empty());
    assert_eq!(results(&batch, 1), candidates, "seed {seed}");
    let row = batch.results * batch.slots;
    assert!(
        batch.result_attributions[row..2 * row]
            .iter()
            .all(|&w| w == 0.0)
    );
    assert_eq!(
        &batch.result_retrieval_scores[batch.results..],
        candidates
            .iter()
            .map(|c| c.1)
            .collect::<Vec<_>>()
            .as_slice()
    );
}

#[test]
fn explanations_point_at_the_sources_a_candidate_resembles() {
    let (seed, mut rng) = fresh_rng();
    let dim = 128;
    let mut rows: Vec<Vec<f32>> = (0..20).map(|_| unit(&mut rng, dim)).collect();
    let evening = unit(&mut rng, dim);
    let alone = unit(&mut rng, dim);
    // Items 20-29 each resemble one history item (10 + i), item 30 the evening phrase.
    for i in 0..10 {
        rows.push(near(&mut rng, &rows[10 + i].clone(), 0.3));
    }
    rows.push(near(&mut rng, &evening, 0.3));
    let history: Vec<HistoryEntry> = (0..10).map(|i| entry(10 + i, 4.5, i as i64)).collect();
    let world = World::new(
        dim,
        rows,
        vec![history],
        vec![
            ("watching in the evening".into(), evening),
            ("watching alone".into(), alone),
        ],
    );
    let mut stage = world.stage(config(4, 100), RerankWeights::untrained(dim, 4));
    let mut batch = batch(
        dim,
        100,
        &[Query {
            user: Some(0),
            context: evening_alone(),
            k: 11,
            candidates: (20..31).map(|i| (i, 0.3)).collect(),
            fused: unit(&mut rng, dim),
        }],
    );
    stage.run(&Cpu, &mut batch).expect("run");
    let sources = batch.notes[0].sources.to_vec();
    assert_eq!(sources.len(), 12);
    let strongest = |weights: &[f32], slots: std::ops::Range<usize>| {
        slots
            .max_by(|&a, &b| weights[a].total_cmp(&weights[b]))
            .expect("slots")
    };
    for (rank, (item, _)) in results(&batch, 0).into_iter().enumerate() {
        let weights = attribution(&batch, 0, rank);
        if item == 30 {
            // The context pool holds a fixed share of the attention (lambda), so the phrase
            // the candidate resembles must lead within the context slots.
            assert_eq!(
                sources[strongest(weights, 10..12)],
                Source::Context("watching in the evening".into()),
                "{weights:?} (seed {seed})"
            );
            assert!(weights[10] > 0.2, "{weights:?} (seed {seed})");
        } else {
            assert_eq!(
                sources[strongest(weights, 0..12)],
                Source::HistoryItem(item - 10),
                "item {item}: {weights:?} (seed {seed})"
            );
            let explanation = stage.explain(&batch, 0, rank);
            assert_eq!(explanation.contributions.len(), 3);
            assert_eq!(
                explanation.contributions[0].source,
                Source::HistoryItem(item - 10)
            );
            assert_eq!(
                explanation.contributions[0].weight,
                weights[(item - 20) as usize]
            );
        }
    }
    assert!(stage.explain(&batch, 1, 0).contributions.is_empty());
    assert!(stage.explain(&batch, 0, 11).contributions.is_empty());
}

#[test]
fn explain_keeps_the_strongest_nonzero_slots() {
    let sources = [
        Source::HistoryItem(4),
        Source::HistoryItem(9),
        Source::Context("watching alone".into()),
    ];
    // A padded row: the fourth weight belongs to no source.
    let explanation = explain(&sources, &[0.2, 0.0, 0.2, 0.6], 3);
    let got: Vec<(Source, f32)> = explanation
        .contributions
        .into_iter()
        .map(|c| (c.source, c.weight))
        .collect();
    assert_eq!(
        got,
        [
            (Source::HistoryItem(4), 0.2),
            (Source::Context("watching alone".into()), 0.2)
        ]
    );
    assert!(explain(&[], &[], 3).contributions.is_empty());
    assert_eq!(
        explain(&sources, &[0.5, 0.3, 0.2], 1).contributions.len(),
        1
    );
}

#[test]
fn output_is_deterministic_and_independent_of_the_batch() {
    let (seed, mut rng) = fresh_rng();
    let dim = 96;
    let n_items = 300;
    let rows: Vec<Vec<f32>> = (0..n_items).map(|_| unit(&mut rng, dim)).collect();
    let histories: Vec<Vec<HistoryEntry>> = (0..8)
        .map(|_| {
            (0..rng.random_range(0..60))
                .map(|t| {
                    entry(
                        rng.random_range(0..n_items as u32),
                        rng.random_range(1..=10) as f32 / 2.0,
                        t,
                    )
                })
                .collect()
        })
        .collect();
    let phrases = ContextVocabulary::all_phrases(&["Comedy".into(), "Drama".into()])
        .into_iter()
        .map(|p| (p, unit(&mut rng, dim)))
        .collect();
    let world = World::new(dim, rows, histories, phrases);
    let queries: Vec<Query> = (0..13)
        .map(|q| Query {
            user: (q % 9 != 8).then_some(q as u32 % 8),
            context: Context {
                time_of_day: Some(TimeOfDay::ALL[q % 4]),
                social: None,
                companions: if q % 3 == 0 {
                    vec![UserId(1)]
                } else {
                    Vec::new()
                },
                genres: if q % 2 == 0 {
                    vec!["comedy".into(), "western".into()]
                } else {
                    Vec::new()
                },
            },
            k: 5 + q,
            candidates: (0..rng.random_range(0..40))
                .map(|_| {
                    (
                        rng.random_range(0..n_items as u32),
                        rng.random_range(0.0f32..1.0),
                    )
                })
                .collect(),
            fused: unit(&mut rng, dim),
        })
        .collect();
    let mut stage = world.stage(config(4, 30), RerankWeights::untrained(dim, 4));
    // The whole batch in one thread (queries in turn) and on four (chunks of queries), single
    // queries on four threads (each query's candidates split across them): the same bits.
    let pool = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("thread pool")
    };
    let (one_thread, four_threads) = (pool(1), pool(4));
    let mut first = batch(dim, 40, &queries);
    one_thread
        .install(|| stage.run(&Cpu, &mut first))
        .expect("run");
    let mut again = batch(dim, 40, &queries);
    four_threads
        .install(|| stage.run(&Cpu, &mut again))
        .expect("run again");
    assert_eq!(first.result_ids, again.result_ids, "seed {seed}");
    assert_eq!(first.result_scores, again.result_scores, "seed {seed}");
    assert_eq!(
        first.result_attributions, again.result_attributions,
        "seed {seed}"
    );

    for (at, query) in queries.iter().enumerate() {
        let single_query = [Query {
            user: query.user,
            context: query.context.clone(),
            k: first.results,
            candidates: query.candidates.clone(),
            fused: query.fused.clone(),
        }];
        let mut single = batch(dim, 40, &single_query);
        four_threads
            .install(|| stage.run(&Cpu, &mut single))
            .expect("single");
        assert_eq!(
            results(&single, 0),
            results(&first, at),
            "query {at} (seed {seed})"
        );
        assert_eq!(single.notes[0].sources, first.notes[at].sources);
        let used = first.notes[at].sources.len();
        for rank in 0..first.results {
            assert_eq!(
                attribution(&single, 0, rank)[..used],
                attribution(&first, at, rank)[..used],
                "query {at} rank {rank} (seed {seed})"
            );
            assert!(
                attribution(&first, at, rank)[used..]
                    .iter()
                    .all(|&w| w == 0.0)
            );
        }
    }
}

#[test]
fn short_candidate_lists_pad_and_large_k_reranks_more() {
    let (seed, mut rng) = fresh_rng();
    let dim = 16;
    let rows: Vec<Vec<f32>> = (0..200).map(|_| unit(&mut rng, dim)).collect();
    let world = World::new(dim, rows, vec![vec![entry(0, 5.0, 0)]], Vec::new());
    let mut stage = world.stage(config(4, 3), RerankWeights::untrained(dim, 4));
    let mut batch = batch(
        dim,
        150,
        &[
            Query {
                user: Some(0),
                context: Context::default(),
                k: 120,
                candidates: (1..121).map(|i| (i, 1.0 - i as f32 / 1000.0)).collect(),
                fused: unit(&mut rng, dim),
            },
            Query {
                user: Some(0),
                context: Context::default(),
                k: 2,
                candidates: vec![(7, 0.2)],
                fused: unit(&mut rng, dim),
            },
        ],
    );
    stage.run(&Cpu, &mut batch).expect("run");
    let first = results(&batch, 0);
    // k = 120 > C = 3: all 120 candidates are reranked and returned.
    assert!(first.iter().all(|r| r.0 != u32::MAX), "seed {seed}");
    let mut ids: Vec<u32> = first.iter().map(|r| r.0).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..121).collect::<Vec<_>>());
    let second = results(&batch, 1);
    assert_eq!(second[0].0, 7);
    assert!(
        second[1..]
            .iter()
            .all(|r| r.0 == u32::MAX && r.1 == f32::NEG_INFINITY)
    );
}

#[test]
fn bad_batches_are_errors_not_panics() {
    let (_, mut rng) = fresh_rng();
    let dim = 8;
    let rows: Vec<Vec<f32>> = (0..5).map(|_| unit(&mut rng, dim)).collect();
    let world = World::new(dim, rows, vec![vec![entry(1, 4.0, 0)]], Vec::new());
    let mut stage = world.stage(config(2, 10), RerankWeights::untrained(dim, 2));
    let query = |user, candidates| Query {
        user,
        context: Context::default(),
        k: 3,
        candidates,
        fused: vec![0.5; dim],
    };

    let mut unknown_item = batch(dim, 4, &[query(Some(0), vec![(1, 0.3), (99, 0.2)])]);
    assert!(matches!(
        stage.run(&Cpu, &mut unknown_item),
        Err(StageError::UnknownItem(99))
    ));
    let mut unknown_user = batch(dim, 4, &[query(Some(7), vec![(1, 0.3)])]);
    assert!(matches!(
        stage.run(&Cpu, &mut unknown_user),
        Err(StageError::UnknownUser(7))
    ));
    let mut short_fused = batch(dim, 4, &[query(Some(0), vec![(1, 0.3)])]);
    short_fused.fused.pop();
    assert!(matches!(
        stage.run(&Cpu, &mut short_fused),
        Err(StageError::BatchShape { .. })
    ));
    let mut short_candidates = batch(dim, 4, &[query(Some(0), vec![(1, 0.3)])]);
    short_candidates.candidate_ids.pop();
    assert!(matches!(
        stage.run(&Cpu, &mut short_candidates),
        Err(StageError::BatchShape { .. })
    ));
    // An empty batch is fine.
    let mut empty = batch(dim, 4, &[]);
    stage.run(&Cpu, &mut empty).expect("empty batch");
    assert!(empty.result_ids.is_empty());
}

#[test]
fn stage_refuses_mismatched_parts() {
    let (_, mut rng) = fresh_rng();
    let rows: Vec<Vec<f32>> = (0..3).map(|_| unit(&mut rng, 12)).collect();
    let world = World::new(12, rows, vec![Vec::new()], Vec::new());
    let build = |config: RerankConfig, weights, vocabulary: Arc<ContextVocabulary>| {
        AttentionRerank::new(
            world.items.clone(),
            world.users.clone(),
            vocabulary,
            config,
            weights,
        )
    };
    assert!(matches!(
        build(
            config(5, 10),
            RerankWeights::untrained(12, 5),
            world.vocabulary.clone()
        ),
        Err(RerankError::InvalidConfig(_))
    ));
    assert!(matches!(
        build(
            config(4, 10),
            RerankWeights::untrained(12, 3),
            world.vocabulary.clone()
        ),
        Err(RerankError::InvalidConfig(_))
    ));
    assert!(matches!(
        build(
            config(4, 10),
            RerankWeights::untrained(8, 4),
            world.vocabulary.clone()
        ),
        Err(RerankError::DimensionMismatch { .. })
    ));
    assert!(matches!(
        build(
            config(4, 10),
            RerankWeights::untrained(12, 4),
            Arc::new(ContextVocabulary::empty(7))
        ),
        Err(RerankError::DimensionMismatch { .. })
    ));
    assert!(matches!(
        build(
            config(4, 0),
            RerankWeights::untrained(12, 4),
            world.vocabulary.clone()
        ),
        Err(RerankError::InvalidConfig(_))
    ));
}

#[test]
fn phrases_inserted_after_start_up_are_used_by_the_next_batch() {
    let (seed, mut rng) = fresh_rng();
    let dim = 32;
    let western = unit(&mut rng, dim);
    let rows = vec![near(&mut rng, &western, 0.2), unit(&mut rng, dim)];
    let world = World::new(dim, rows, vec![Vec::new()], Vec::new());
    let context = Context {
        genres: vec!["Western".into()],
        ..Context::default()
    };
    let make = |rng: &mut StdRng| {
        batch(
            dim,
            2,
            &[Query {
                user: None,
                context: context.clone(),
                k: 2,
                candidates: vec![(1, 0.5), (0, 0.5)],
                fused: unit(rng, dim),
            }],
        )
    };
    let mut stage = world.stage(config(4, 2), RerankWeights::untrained(dim, 4));
    let mut before = make(&mut rng);
    stage.run(&Cpu, &mut before).expect("run");
    assert!(before.notes[0].sources.is_empty(), "unknown phrase skipped");
    assert_eq!(results(&before, 0)[0].0, 0, "tie by index without context");

    assert_eq!(world.vocabulary.missing_for(&context), ["western movies"]);
    world
        .vocabulary
        .insert("western movies", &western)
        .expect("insert");
    let mut after = make(&mut rng);
    stage.run(&Cpu, &mut after).expect("run");
    assert_eq!(
        after.notes[0].sources,
        [Source::Context("western movies".into())]
    );
    assert_eq!(results(&after, 0)[0].0, 0, "seed {seed}");
    assert!(
        results(&after, 0)[0].1 > 0.5,
        "the western item gains (seed {seed})"
    );
}

#[test]
fn weights_round_trip_through_safetensors() {
    let (seed, mut rng) = fresh_rng();
    let dim = 20;
    let weights = RerankWeights {
        q_proj: random_matrix(&mut rng, dim),
        k_proj: random_matrix(&mut rng, dim),
        v_proj: random_matrix(&mut rng, dim),
        query_fused_mix: rng.random_range(0.0..1.0),
        history_gate: [rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0)],
        context_gate: rng.random_range(-1.0..1.0),
        context_share: rng.random_range(0.0..1.0),
        score_mix: ScoreMix {
            retrieval: rng.random_range(0.0..2.0),
            attention: rng.random_range(-1.0..1.0),
            bias: rng.random_range(-1.0..1.0),
        },
        ..RerankWeights::untrained(dim, 5)
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rerank.safetensors");
    weights.save(&path).expect("save");
    let loaded = RerankWeights::load(&path).expect("load");
    assert_eq!(loaded, weights, "seed {seed}");
    loaded.validate(dim, 5).expect("valid");
    assert!(matches!(
        RerankWeights::load(&dir.path().join("absent")),
        Err(RerankError::Io { .. })
    ));
    assert!(RerankWeights::from_safetensors(b"not a safetensors file").is_err());
}

#[test]
fn weights_files_with_missing_or_misshapen_tensors_are_refused() {
    use safetensors::{Dtype, tensor::TensorView};
    let untrained = RerankWeights::untrained(8, 2);
    let bytes = untrained.to_safetensors().expect("serialize");
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("parse");
    let metadata = safetensors::SafeTensors::read_metadata(&bytes)
        .expect("header")
        .1
        .metadata()
        .clone();
    let rewrite = |skip: &str, replace: Option<(&str, Vec<usize>)>| {
        let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, view) in file.tensors() {
            if name == skip {
                continue;
            }
            let shape = match &replace {
                Some((target, shape)) if *target == name => shape.clone(),
                _ => view.shape().to_vec(),
            };
            owned.push((name, shape, view.data().to_vec()));
        }
        let views: Vec<(String, TensorView<'_>)> = owned
            .iter()
            .map(|(n, s, d)| {
                (
                    n.clone(),
                    TensorView::new(Dtype::F32, s.clone(), d).expect("view"),
                )
            })
            .collect();
        safetensors::serialize(views, metadata.clone()).expect("serialize")
    };
    assert!(matches!(
        RerankWeights::from_safetensors(&rewrite(CONTEXT_SHARE, None)),
        Err(RerankError::MissingTensor(name)) if name == CONTEXT_SHARE
    ));
    // Same element count, wrong shape.
    assert!(matches!(
        RerankWeights::from_safetensors(&rewrite("", Some((Q_PROJ, vec![4, 16])))),
        Err(RerankError::WeightShape { .. })
    ));
    // Heads in the metadata must divide the width.
    let mut bad_heads = untrained.clone();
    bad_heads.heads = 3;
    assert!(matches!(
        RerankWeights::from_safetensors(&bad_heads.to_safetensors().expect("bytes")),
        Err(RerankError::InvalidConfig(_))
    ));
}

#[test]
fn validation_names_what_is_wrong() {
    let good = RerankWeights::untrained(16, 4);
    good.validate(16, 4).expect("untrained weights are valid");
    assert!(matches!(
        good.validate(16, 3),
        Err(RerankError::InvalidConfig(_))
    ));
    assert!(matches!(
        good.validate(16, 8),
        Err(RerankError::InvalidConfig(_))
    ));
    assert!(matches!(
        good.validate(32, 4),
        Err(RerankError::DimensionMismatch { .. })
    ));
    let mut short = good.clone();
    short.v_proj.pop();
    assert!(matches!(
        short.validate(16, 4),
        Err(RerankError::WeightShape {
            name: "v_proj.weight",
            ..
        })
    ));
    let mut nan = good.clone();
    nan.k_proj[5] = f32::NAN;
    assert!(matches!(
        nan.validate(16, 4),
        Err(RerankError::NonFiniteWeight {
            name: "k_proj.weight"
        })
    ));
    let mut share = good.clone();
    share.context_share = 1.5;
    assert!(matches!(
        share.validate(16, 4),
        Err(RerankError::WeightOutOfRange {
            name: "context_share",
            ..
        })
    ));
    let mut mix = good;
    mix.score_mix.attention = f32::INFINITY;
    assert!(matches!(
        mix.validate(16, 4),
        Err(RerankError::NonFiniteWeight { .. })
    ));
}
