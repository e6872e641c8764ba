use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use hyperrec_catalog::{HistoryEntry, ItemEmbeddings, ProfileRule, UserTable};
use hyperrec_stage::{Context, Request, UserId};

use super::*;

fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0x5eed, |d| d.as_nanos() as u64)
}

fn unit(rng: &mut StdRng, dim: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// `normalize(alpha * q + (1 - alpha) * u)` in f64.
fn naive_fuse(q: &[f32], u: &[f32], alpha: f32) -> Vec<f64> {
    let blend: Vec<f64> = q
        .iter()
        .zip(u)
        .map(|(&q, &u)| alpha as f64 * q as f64 + (1.0 - alpha as f64) * u as f64)
        .collect();
    let norm = blend.iter().map(|x| x * x).sum::<f64>().sqrt();
    blend.iter().map(|x| x / norm).collect()
}

fn naive_normalized_sum(rows: &[&[f32]]) -> Vec<f32> {
    let dim = rows[0].len();
    let sum: Vec<f64> = (0..dim)
        .map(|d| rows.iter().map(|r| r[d] as f64).sum())
        .collect();
    let norm = sum.iter().map(|x| x * x).sum::<f64>().sqrt();
    sum.iter().map(|x| (x / norm) as f32).collect()
}

fn assert_close(got: &[f32], want: &[f64], what: &str) {
    for (d, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() < 1e-5,
            "{what}: coordinate {d}: {g} vs {w}"
        );
    }
}

#[test]
fn fuse_blends_and_normalizes() {
    let seed = clock_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..50 {
        let dim = rng.random_range(1..400);
        let q = unit(&mut rng, dim);
        let u = unit(&mut rng, dim);
        let alpha = rng.random_range(0.0f32..=1.0);
        let mut out = vec![f32::NAN; dim];
        fuse(&q, Some(&u), alpha, &mut out);
        assert_close(
            &out,
            &naive_fuse(&q, &u, alpha),
            &format!("seed {seed} alpha {alpha}"),
        );
    }
}

#[test]
fn fuse_extremes_and_fallbacks() {
    let q = [0.6f32, 0.8, 0.0];
    let u = [0.0f32, 0.0, 1.0];
    let mut out = [0.0f32; 3];
    fuse(&q, Some(&u), 1.0, &mut out);
    assert_eq!(out, q, "alpha 1 keeps the query");
    fuse(&q, Some(&u), 0.0, &mut out);
    assert_eq!(out, u, "alpha 0 takes the user side");
    fuse(&q, None, 0.3, &mut out);
    assert_eq!(out, q, "cold start is the query");
    let opposite = [-0.6f32, -0.8, 0.0];
    fuse(&q, Some(&opposite), 0.5, &mut out);
    assert_eq!(out, q, "a vanishing blend falls back to the query");
}

#[test]
fn alpha_outside_unit_interval_is_rejected() {
    let users = Arc::new(RwLock::new(UserTable::build(
        Vec::new(),
        &ItemEmbeddings::new(2, vec![1.0, 0.0]).expect("shape"),
        ProfileRule::default(),
    )));
    for alpha in [-0.01, 1.01, f32::NAN, f32::INFINITY] {
        assert!(
            matches!(
                Fusion::new(users.clone(), FusionConfig { alpha }),
                Err(FusionError::InvalidAlpha(_))
            ),
            "alpha {alpha}"
        );
    }
    for alpha in [0.0, 0.5, 1.0] {
        assert!(
            Fusion::new(users.clone(), FusionConfig { alpha }).is_ok(),
            "alpha {alpha}"
        );
    }
}

struct Fixture {
    users: SharedUsers,
    dim: usize,
}

/// Users 1..=8 like random items; user 9 only has a neutral rating (no profile).
fn fixture(rng: &mut StdRng) -> Fixture {
    let dim = 24;
    let n_items = 40;
    let data: Vec<f32> = (0..n_items).flat_map(|_| unit(rng, dim)).collect();
    let items = ItemEmbeddings::new(dim, data).expect("shape");
    let mut histories: Vec<(UserId, Vec<HistoryEntry>)> = (1..=8)
        .map(|u| {
            let history = (0..5)
                .map(|t| HistoryEntry {
                    item: rng.random_range(0..n_items as u32),
                    rating: 4.5,
                    timestamp: t,
                })
                .collect();
            (UserId(u), history)
        })
        .collect();
    histories.push((
        UserId(9),
        vec![HistoryEntry {
            item: 0,
            rating: 3.0,
            timestamp: 0,
        }],
    ));
    let users = UserTable::build(histories, &items, ProfileRule::default());
    Fixture {
        users: Arc::new(RwLock::new(users)),
        dim,
    }
}

fn request(user: u32, companions: &[u32]) -> Request {
    Request {
        user: UserId(user),
        query: "q".into(),
        context: Context {
            companions: companions.iter().map(|&c| UserId(c)).collect(),
            ..Context::default()
        },
        k: 10,
        exclude_seen: true,
    }
}

fn run(fx: &Fixture, rng: &mut StdRng, alpha: f32, requests: Vec<Request>) -> Batch<Cpu> {
    let mut stage = Fusion::new(fx.users.clone(), FusionConfig { alpha }).expect("valid alpha");
    let mut batch = Batch::new(&Cpu, fx.dim).expect("cpu");
    let n = requests.len();
    batch.reset(&Cpu, requests).expect("reset");
    batch.query_embeddings = (0..n).flat_map(|_| unit(rng, fx.dim)).collect();
    stage.run(&Cpu, &mut batch).expect("runs");
    batch
}

fn row(v: &[f32], i: usize, dim: usize) -> &[f32] {
    &v[i * dim..(i + 1) * dim]
}

#[test]
fn stage_fuses_users_groups_and_cold_starts() {
    let seed = clock_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let fx = fixture(&mut rng);
    let alpha = 0.4;
    let requests = vec![
        request(1, &[]),
        request(404, &[]),
        request(9, &[]),
        // Unknown companion skipped, duplicate and the requester itself dropped.
        request(2, &[3, 405, 3, 2, 4]),
        // Unknown requester but a known companion: the group side is the companion.
        request(406, &[5]),
    ];
    let batch = run(&fx, &mut rng, alpha, requests);
    let users = fx.users.read();
    let dim = fx.dim;
    let q = |i| row(&batch.query_embeddings, i, dim);
    let fused = |i| row(&batch.fused, i, dim);
    let index = |id| users.index_of(UserId(id)).expect("known user");
    let profile = |id| users.embedding(index(id)).expect("has profile");

    // Plain user.
    assert_eq!(batch.notes[0].user, Some(index(1)));
    assert!(!batch.notes[0].cold_start);
    assert_close(
        fused(0),
        &naive_fuse(q(0), profile(1), alpha),
        &format!("seed {seed} user"),
    );

    // Unknown user: cold start, query only.
    assert_eq!(batch.notes[1].user, None);
    assert!(batch.notes[1].cold_start);
    assert_eq!(fused(1), q(1));

    // Known user without a profile: still a cold start.
    assert_eq!(batch.notes[2].user, Some(index(9)));
    assert!(batch.notes[2].cold_start);
    assert_eq!(fused(2), q(2));

    // Group.
    assert_eq!(batch.notes[3].companions, vec![index(3), index(4)]);
    assert!(!batch.notes[3].cold_start);
    let group = naive_normalized_sum(&[profile(2), profile(3), profile(4)]);
    assert_close(
        fused(3),
        &naive_fuse(q(3), &group, alpha),
        &format!("seed {seed} group"),
    );

    // Companion only.
    assert_eq!(batch.notes[4].user, None);
    assert_eq!(batch.notes[4].companions, vec![index(5)]);
    assert!(!batch.notes[4].cold_start);
    assert_close(
        fused(4),
        &naive_fuse(q(4), profile(5), alpha),
        &format!("seed {seed} companion"),
    );
}

#[test]
fn large_batches_fuse_in_parallel_with_the_same_result() {
    let seed = clock_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let fx = fixture(&mut rng);
    let requests: Vec<Request> = (0..200).map(|i| request(i % 11, &[(i * 7) % 10])).collect();
    let batch = run(&fx, &mut rng, 0.7, requests);
    let users = fx.users.read();
    let dim = fx.dim;
    let mut expected = vec![0.0; dim];
    for (i, notes) in batch.notes.iter().enumerate() {
        let members: Vec<&[f32]> = notes
            .user
            .into_iter()
            .chain(notes.companions.iter().copied())
            .filter_map(|m| users.embedding(m))
            .collect();
        let user_side = (!members.is_empty()).then(|| naive_normalized_sum(&members));
        assert_eq!(
            notes.cold_start,
            user_side.is_none(),
            "seed {seed} request {i}"
        );
        fuse(
            row(&batch.query_embeddings, i, dim),
            user_side.as_deref(),
            0.7,
            &mut expected,
        );
        for (d, (&g, &w)) in row(&batch.fused, i, dim).iter().zip(&expected).enumerate() {
            assert!(
                (g - w).abs() < 1e-5,
                "seed {seed} request {i} coordinate {d}: {g} vs {w}"
            );
        }
    }
}

#[test]
fn stage_rejects_mismatched_widths() {
    let mut rng = StdRng::seed_from_u64(clock_seed());
    let fx = fixture(&mut rng);
    let mut stage = Fusion::new(fx.users.clone(), FusionConfig::default()).expect("valid");
    let mut batch = Batch::new(&Cpu, fx.dim + 1).expect("cpu");
    batch.reset(&Cpu, vec![request(1, &[])]).expect("reset");
    assert!(matches!(
        stage.run(&Cpu, &mut batch),
        Err(StageError::BatchShape { .. })
    ));
}
