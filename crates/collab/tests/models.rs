//! Item-kNN and EASE against their definitions, on fresh random interactions each run.

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use hyperrec_collab::{CollabError, Ease, Interactions, ItemItemModel, ItemKnn};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5eed)
}

/// Random users over `n_items` items; the last two items are never rated, so the models
/// must treat items outside training. Ratings are half-stars in 0.5..=5.0.
fn random_histories(rng: &mut StdRng, n_users: usize, n_items: usize) -> Vec<Vec<(u32, f32)>> {
    (0..n_users)
        .map(|_| {
            let len = rng.random_range(1..=n_items / 2);
            (0..len)
                .map(|_| {
                    let item = rng.random_range(0..(n_items - 2) as u32);
                    let rating = rng.random_range(1..=10) as f32 * 0.5;
                    (item, rating)
                })
                .collect()
        })
        .collect()
}

fn table(histories: &[Vec<(u32, f32)>], n_items: usize) -> Interactions {
    let mut table = Interactions::new(n_items);
    for history in histories {
        table
            .push_user(history.iter().copied())
            .expect("items are in range");
    }
    table
}

fn users_of(histories: &[Vec<(u32, f32)>], item: u32) -> BTreeSet<usize> {
    histories
        .iter()
        .enumerate()
        .filter(|(_, h)| h.iter().any(|&(i, _)| i == item))
        .map(|(u, _)| u)
        .collect()
}

fn close(a: f32, b: f32, tol: f32) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

#[test]
fn item_knn_rows_are_binary_cosines() {
    let seed = clock_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let n_items = 24;
    let histories = random_histories(&mut rng, 15, n_items);
    let model = ItemKnn::fit(&table(&histories, n_items)).expect("fit");

    let mut row = vec![f32::NAN; n_items];
    for a in 0..n_items as u32 {
        model.row(a, &mut row).expect("row");
        let users_a = users_of(&histories, a);
        for b in 0..n_items as u32 {
            let users_b = users_of(&histories, b);
            let expected = if a == b || users_a.is_empty() || users_b.is_empty() {
                0.0
            } else {
                users_a.intersection(&users_b).count() as f32
                    / ((users_a.len() * users_b.len()) as f32).sqrt()
            };
            assert!(
                close(row[b as usize], expected, 1e-6),
                "seed {seed}: sim({a},{b}) = {} expected {expected}",
                row[b as usize]
            );
        }
    }
}

#[test]
fn item_knn_scores_sum_rows_of_liked_items_by_latest_rating() {
    let seed = clock_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let n_items = 30;
    let histories = random_histories(&mut rng, 12, n_items);
    let model = ItemKnn::fit(&table(&histories, n_items)).expect("fit");

    // A history with a repeated item: only its later rating (5.0) decides; it counts once.
    let mut history = random_histories(&mut rng, 1, n_items).remove(0);
    let repeated = history[0].0;
    history.push((repeated, 1.0));
    history.push((repeated, 5.0));

    let mut liked: BTreeSet<u32> = BTreeSet::new();
    for &(item, rating) in &history {
        if rating >= ItemKnn::LIKE_THRESHOLD {
            liked.insert(item);
        } else {
            liked.remove(&item);
        }
    }
    let mut expected = vec![0.0f32; n_items];
    let mut row = vec![0.0f32; n_items];
    for &item in &liked {
        model.row(item, &mut row).expect("row");
        expected.iter_mut().zip(&row).for_each(|(e, r)| *e += r);
    }
    let mut scores = vec![f32::NAN; n_items];
    model.score_user(&history, &mut scores).expect("scores");
    for (item, (s, e)) in scores.iter().zip(&expected).enumerate() {
        assert!(close(*s, *e, 1e-5), "seed {seed}: item {item}: {s} vs {e}");
    }
}

/// EASE's KKT conditions: with `G = XᵀX + λI`, `G B - XᵀX` must be diagonal, and
/// `diag(B) = 0`. Checked in f64 against the f32 weights the model stores.
#[test]
fn ease_weights_satisfy_the_constrained_least_squares_conditions() {
    let seed = clock_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let n_items = 20;
    let histories = random_histories(&mut rng, 40, n_items);
    let lambda = rng.random_range(0.5..20.0);
    let model = Ease::fit(&table(&histories, n_items), lambda).expect("fit");

    let x: Vec<Vec<f64>> = histories
        .iter()
        .map(|h| {
            let mut row = vec![0.0; n_items];
            h.iter().for_each(|&(i, _)| row[i as usize] = 1.0);
            row
        })
        .collect();
    let xtx = |a: usize, b: usize| x.iter().map(|r| r[a] * r[b]).sum::<f64>();
    let mut b_matrix = vec![vec![0.0f64; n_items]; n_items];
    let mut row = vec![0.0f32; n_items];
    for (a, b_row) in b_matrix.iter_mut().enumerate() {
        model.row(a as u32, &mut row).expect("row");
        b_row.iter_mut().zip(&row).for_each(|(b, &r)| *b = r as f64);
        assert_eq!(b_row[a], 0.0, "seed {seed}: diag(B)[{a}]");
    }
    let active: Vec<usize> = (0..n_items).filter(|&i| xtx(i, i) > 0.0).collect();
    for &i in &active {
        for &j in &active {
            if i == j {
                continue;
            }
            let gb: f64 = active
                .iter()
                .map(|&k| (xtx(i, k) + if i == k { lambda } else { 0.0 }) * b_matrix[k][j])
                .sum();
            let residual = gb - xtx(i, j);
            assert!(
                residual.abs() < 1e-3 * (1.0 + xtx(i, j)),
                "seed {seed}, lambda {lambda}: (GB - XᵀX)[{i},{j}] = {residual}"
            );
        }
    }
    // Items outside training have zero rows.
    model.row((n_items - 1) as u32, &mut row).expect("row");
    assert!(row.iter().all(|&w| w == 0.0), "seed {seed}");
}

#[test]
fn ease_scores_are_the_history_times_b() {
    let seed = clock_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let n_items = 25;
    let histories = random_histories(&mut rng, 30, n_items);
    let model = Ease::fit(&table(&histories, n_items), Ease::DEFAULT_LAMBDA).expect("fit");
    let history = random_histories(&mut rng, 1, n_items).remove(0);
    let distinct: BTreeSet<u32> = history.iter().map(|&(i, _)| i).collect();

    let mut expected = vec![0.0f32; n_items];
    let mut row = vec![0.0f32; n_items];
    for &item in &distinct {
        model.row(item, &mut row).expect("row");
        expected.iter_mut().zip(&row).for_each(|(e, r)| *e += r);
    }
    let mut scores = vec![f32::NAN; n_items];
    ItemItemModel::score_user(&model, &history, &mut scores).expect("scores");
    for (item, (s, e)) in scores.iter().zip(&expected).enumerate() {
        assert!(close(*s, *e, 1e-5), "seed {seed}: item {item}: {s} vs {e}");
    }
}

#[test]
fn bad_arguments_are_errors_not_panics() {
    let mut interactions = Interactions::new(4);
    interactions
        .push_user([(0, 4.0), (1, 5.0)])
        .expect("valid history");
    interactions
        .push_user([(1, 3.0), (2, 4.0)])
        .expect("valid history");
    let knn = ItemKnn::fit(&interactions).expect("fit");
    let mut short = vec![0.0; 3];
    assert!(matches!(
        knn.row(0, &mut short),
        Err(CollabError::OutputLength {
            expected: 4,
            found: 3
        })
    ));
    let mut out = vec![0.0; 4];
    assert!(matches!(
        knn.row(9, &mut out),
        Err(CollabError::ItemOutOfRange { item: 9, .. })
    ));
    assert!(matches!(
        knn.score_user(&[(7, 5.0)], &mut out),
        Err(CollabError::ItemOutOfRange { item: 7, .. })
    ));
    for lambda in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            Ease::fit(&interactions, lambda),
            Err(CollabError::InvalidLambda(_))
        ));
    }
    // An empty table fits to empty models that score everything zero.
    let empty = Interactions::new(3);
    let ease = Ease::fit(&empty, 1.0).expect("fit empty");
    let mut scores = vec![1.0; 3];
    ease.score_user(&[(0, 5.0)], &mut scores).expect("scores");
    assert_eq!(scores, vec![0.0; 3]);
}

#[test]
fn accumulate_adds_weighted_rows_to_what_is_there() {
    let seed = clock_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let n_items = 22;
    let histories = random_histories(&mut rng, 18, n_items);
    let interactions = table(&histories, n_items);
    let models: [Box<dyn ItemItemModel>; 2] = [
        Box::new(ItemKnn::fit(&interactions).expect("fit")),
        Box::new(Ease::fit(&interactions, 5.0).expect("fit")),
    ];
    for model in &models {
        // Includes an item outside training (n_items - 1), which adds nothing.
        let weighted: Vec<(u32, f32)> = (0..4)
            .map(|_| {
                (
                    rng.random_range(0..n_items as u32),
                    rng.random_range(-2.0..2.0),
                )
            })
            .chain([((n_items - 1) as u32, 3.0)])
            .collect();
        let start: Vec<f32> = (0..n_items).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut expected = start.clone();
        let mut row = vec![0.0f32; n_items];
        for &(item, weight) in &weighted {
            model.row(item, &mut row).expect("row");
            expected
                .iter_mut()
                .zip(&row)
                .for_each(|(e, r)| *e += weight * r);
        }
        let mut out = start.clone();
        model.accumulate(&weighted, &mut out).expect("accumulate");
        for (item, (o, e)) in out.iter().zip(&expected).enumerate() {
            assert!(
                close(*o, *e, 1e-5),
                "seed {seed}, {}: item {item}: {o} vs {e}",
                model.name()
            );
        }
        let mut unchanged = start.clone();
        assert!(model.accumulate(&[(99, 1.0)], &mut unchanged).is_err());
        assert_eq!(unchanged, start, "a failed accumulate leaves out unchanged");
    }
}
