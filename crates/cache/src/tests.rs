use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use hyperrec_catalog::{HistoryEntry, ProfileRule, UserTable};
use hyperrec_stage::{Context, Interaction, Request, UserId};

use super::*;

const HOUR: i64 = 3600;

fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0x5eed, |d| d.as_nanos() as u64)
}

fn unit_rows(rng: &mut StdRng, rows: usize, dim: usize) -> Vec<f32> {
    let mut data: Vec<f32> = (0..rows * dim)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    for row in data.chunks_exact_mut(dim) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|x| *x /= norm);
    }
    data
}

struct Fixture {
    items: Arc<ItemEmbeddings>,
    users: SharedUsers,
    seed: u64,
}

/// Random unit items; users 1..=n_users with random 1..30-entry histories (user 0 has only
/// neutral ratings, so no profile).
fn fixture(n_items: usize, dim: usize, n_users: u32) -> (Fixture, StdRng) {
    let seed = clock_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let items = ItemEmbeddings::new(dim, unit_rows(&mut rng, n_items, dim)).expect("shape");
    let mut histories: Vec<(UserId, Vec<HistoryEntry>)> = (1..=n_users)
        .map(|u| {
            let len = rng.random_range(1..30);
            let history = (0..len)
                .map(|_| HistoryEntry {
                    item: rng.random_range(0..n_items as u32),
                    rating: rng.random_range(1..=10) as f32 * 0.5,
                    timestamp: rng.random_range(0..1000) * HOUR,
                })
                .collect();
            (UserId(u), history)
        })
        .collect();
    histories.push((
        UserId(0),
        vec![HistoryEntry {
            item: 0,
            rating: 3.0,
            timestamp: 0,
        }],
    ));
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

fn config(hot_items: usize) -> CacheConfig {
    CacheConfig {
        hot_items,
        half_life_secs: 24.0 * HOUR as f64,
        history_len: 20,
        history_weight: 0.5,
        ..CacheConfig::default()
    }
}

fn naive_dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// Checks `got` is a valid top-k of `naive` (exact scores per item): same length, scores
/// within `tol` of the exact ones, and ids equal wherever the ranking is not a near-tie.
fn assert_ranking(got: &[(ItemIndex, f32)], naive: &[f64], skip: ItemIndex, k: usize, what: &str) {
    let mut order: Vec<ItemIndex> = (0..naive.len() as ItemIndex)
        .filter(|&j| j != skip)
        .collect();
    order.sort_by(|&a, &b| {
        naive[b as usize]
            .total_cmp(&naive[a as usize])
            .then(a.cmp(&b))
    });
    order.truncate(k);
    assert_eq!(got.len(), order.len(), "{what}: length");
    for (p, (&(id, score), &want)) in got.iter().zip(&order).enumerate() {
        assert!(
            (score as f64 - naive[id as usize]).abs() < 1e-5,
            "{what}: score of {id} at {p}"
        );
        assert!(
            id == want || (naive[id as usize] - naive[want as usize]).abs() < 1e-5,
            "{what}: position {p} has {id}, expected {want}"
        );
    }
}

#[test]
fn handle_popularity_halves_per_half_life_and_ranks_hottest() {
    let (fx, _) = fixture(10, 4, 0);
    let mut cfg = config(3);
    cfg.seed_from_histories = false;
    let cache = TemporalCache::new(fx.items.clone(), fx.users.clone(), cfg).expect("valid");
    let handle = cache.handle();
    handle.record(7, 0).expect("known item");
    assert_eq!(handle.popularity(7, 0), Ok(1.0));
    assert!((handle.popularity(7, 24 * HOUR).expect("known") - 0.5).abs() < 1e-12);
    assert!((handle.popularity(7, 48 * HOUR).expect("known") - 0.25).abs() < 1e-12);
    // Item 2: one event now; item 5: two events a day ago (= 1.0 now, ties with item 2);
    // item 7: one event two days ago (0.25).
    handle.record(7, 0).expect("known item");
    handle.record(5, 24 * HOUR).expect("known item");
    handle.record(5, 24 * HOUR).expect("known item");
    handle.record(2, 48 * HOUR).expect("known item");
    handle
        .record(7, -10 * HOUR)
        .expect("out-of-order events count too");
    let hottest = handle.hottest(10);
    let order: Vec<ItemIndex> = hottest.iter().map(|h| h.0).collect();
    assert_eq!(order, vec![2, 5, 7]);
    let exact_7 = 2.0 * 0.25 + 0.5f64.powf(58.0 / 24.0);
    assert!((hottest[2].1 - exact_7).abs() < 1e-12, "{hottest:?}");
    assert_eq!(handle.latest_event(), Some(48 * HOUR));
    assert_eq!(
        handle.record(10, 0),
        Err(CacheError::UnknownItem {
            item: 10,
            n_items: 10
        })
    );
}

#[test]
fn hot_table_holds_the_hottest_rows() {
    let (fx, _) = fixture(300, 12, 40);
    let cache = TemporalCache::new(fx.items.clone(), fx.users.clone(), config(25)).expect("valid");
    let handle = cache.handle();
    let table = handle.snapshot();
    let hottest: Vec<ItemIndex> = handle.hottest(25).iter().map(|h| h.0).collect();
    assert_eq!(table.items(), hottest.as_slice(), "seed {}", fx.seed);
    for &item in table.items() {
        let row = table.row(item).expect("hot");
        for (j, &r) in row.iter().enumerate() {
            let exact = naive_dot(fx.items.row(item), fx.items.row(j as ItemIndex));
            assert!(
                (r as f64 - exact).abs() < 1e-5,
                "seed {} row {item} col {j}",
                fx.seed
            );
        }
    }
    let stats = handle.stats();
    assert_eq!(stats.hot_rows, 25);
    assert_eq!(stats.rebuilds, 1);
    assert!(stats.last_rebuild.is_some());
}

#[test]
fn hot_items_are_capped_at_the_catalog() {
    let (fx, _) = fixture(20, 4, 50);
    let cache =
        TemporalCache::new(fx.items.clone(), fx.users.clone(), config(1000)).expect("valid");
    let table = cache.handle().snapshot();
    assert!(table.items().len() <= 20);
    assert_eq!(table.rows().len(), table.items().len() * 20);
}

#[test]
fn similar_equals_brute_force_and_hits_equal_misses() {
    let (fx, mut rng) = fixture(400, 16, 30);
    let all_hot =
        TemporalCache::new(fx.items.clone(), fx.users.clone(), config(400)).expect("valid");
    let none_hot =
        TemporalCache::new(fx.items.clone(), fx.users.clone(), config(0)).expect("valid");
    let hot_items = all_hot.handle().snapshot().items().to_vec();
    for _ in 0..10 {
        let item = hot_items[rng.random_range(0..hot_items.len())];
        let k = rng.random_range(1..450);
        let (hit, lookup) = all_hot.handle().similar(item, k).expect("known item");
        assert_eq!(lookup, CacheLookup::Hit);
        let (miss, lookup) = none_hot.handle().similar(item, k).expect("known item");
        assert_eq!(lookup, CacheLookup::Miss);
        assert_eq!(
            hit, miss,
            "seed {}: hit and miss rows agree bit for bit",
            fx.seed
        );
        let naive: Vec<f64> = (0..400)
            .map(|j| naive_dot(fx.items.row(item), fx.items.row(j)))
            .collect();
        assert_ranking(
            &hit,
            &naive,
            item,
            k,
            &format!("seed {} item {item} k {k}", fx.seed),
        );
    }
    assert!(matches!(
        all_hot.handle().similar(400, 5),
        Err(CacheError::UnknownItem { item: 400, .. })
    ));
}

#[test]
fn lookups_are_counted_as_hits_and_misses() {
    let (fx, _) = fixture(200, 8, 30);
    let cache = TemporalCache::new(fx.items.clone(), fx.users.clone(), config(10)).expect("valid");
    let handle = cache.handle();
    let table = handle.snapshot();
    let hot = table.items()[0];
    let cold = (0..200)
        .find(|&i| table.row(i).is_none())
        .expect("a cold item");
    handle.similar(hot, 3).expect("known");
    handle.similar(hot, 3).expect("known");
    handle.similar(cold, 3).expect("known");
    let stats = handle.stats();
    assert_eq!((stats.hits, stats.misses), (2, 1));
    assert!((stats.hit_rate - 2.0 / 3.0).abs() < 1e-12);
}

fn request(user: u32) -> Request {
    Request {
        user: UserId(user),
        query: "q".into(),
        context: Context::default(),
        k: 10,
        exclude_seen: true,
    }
}

/// A batch as fusion leaves it: user rows and cold-start flags.
fn batch_for(fx: &Fixture, users: &[u32]) -> Batch<Cpu> {
    let mut batch = Batch::new(&Cpu, fx.items.dim()).expect("cpu");
    batch
        .reset(&Cpu, users.iter().map(|&u| request(u)).collect())
        .expect("reset");
    let table = fx.users.read();
    for (notes, request) in batch.notes.iter_mut().zip(&batch.requests) {
        notes.user = table.index_of(request.user);
        notes.cold_start = notes.user.and_then(|u| table.embedding(u)).is_none();
    }
    batch
}

#[test]
fn prior_equals_the_naive_history_term_and_counts_lookups() {
    let (fx, _) = fixture(500, 16, 40);
    let cfg = config(60);
    let (history_len, weight) = (cfg.history_len, cfg.history_weight);
    let mut cache = TemporalCache::new(fx.items.clone(), fx.users.clone(), cfg).expect("valid");
    let requested = [1, 2, 999, 0, 3, 4, 5];
    let mut batch = batch_for(&fx, &requested);
    cache.run(&Cpu, &mut batch).expect("runs");
    assert_eq!(batch.item_prior.len(), requested.len() * 500);

    let table = cache.handle().snapshot();
    let users = fx.users.read();
    let (mut hits, mut misses) = (0, 0);
    for (q, &user_id) in requested.iter().enumerate() {
        let got = &batch.item_prior[q * 500..(q + 1) * 500];
        let personal = batch.notes[q].user.filter(|_| !batch.notes[q].cold_start);
        let Some(user) = personal else {
            assert!(
                got.iter().all(|&p| p == 0.0),
                "seed {}: user {user_id} gets no prior",
                fx.seed
            );
            continue;
        };
        let recent = users.recent(user, history_len);
        for entry in recent.iter().filter(|e| e.rating != 3.0) {
            if table.row(entry.item).is_some() {
                hits += 1;
            } else {
                misses += 1;
            }
        }
        for (j, &prior) in got.iter().enumerate() {
            let exact: f64 = recent
                .iter()
                .map(|e| {
                    (e.rating as f64 - 3.0) / 2.0
                        * naive_dot(fx.items.row(e.item), fx.items.row(j as ItemIndex))
                })
                .sum::<f64>()
                * weight as f64
                / recent.len() as f64;
            assert!(
                (prior as f64 - exact).abs() < 1e-5,
                "seed {}: user {user_id} item {j}: {prior} vs {exact}",
                fx.seed
            );
        }
    }
    let stats = cache.stats();
    assert!(
        hits > 0 && misses > 0,
        "seed {}: the test needs both kinds",
        fx.seed
    );
    assert_eq!(
        (stats.hits, stats.misses),
        (hits, misses),
        "seed {}",
        fx.seed
    );
}

#[test]
fn folded_history_term_scores_like_the_rows_and_counts_no_lookups() {
    let (fx, _) = fixture(400, 16, 30);
    let mut rows =
        TemporalCache::new(fx.items.clone(), fx.users.clone(), config(50)).expect("valid");
    let mut folded = TemporalCache::new(
        fx.items.clone(),
        fx.users.clone(),
        CacheConfig {
            fold_linear_history: true,
            ..config(50)
        },
    )
    .expect("valid");
    let requested = [1, 2, 999, 0, 3, 4, 5, 6];
    let mut by_rows = batch_for(&fx, &requested);
    rows.run(&Cpu, &mut by_rows).expect("runs");
    let mut by_vector = batch_for(&fx, &requested);
    by_vector.item_prior = vec![f32::NAN; 3];
    folded.run(&Cpu, &mut by_vector).expect("runs");

    assert!(by_vector.item_prior.is_empty(), "seed {}", fx.seed);
    assert!(by_rows.query_prior.is_empty(), "seed {}", fx.seed);
    let dim = fx.items.dim();
    assert_eq!(by_vector.query_prior.len(), requested.len() * dim);
    let mut nonzero = 0;
    for q in 0..requested.len() {
        let vector = &by_vector.query_prior[q * dim..(q + 1) * dim];
        for j in 0..400 {
            let folded_score = naive_dot(vector, fx.items.row(j as ItemIndex));
            let row_score = by_rows.item_prior[q * 400 + j] as f64;
            assert!(
                (folded_score - row_score).abs() < 1e-5,
                "seed {}: request {q} item {j}: {folded_score} vs {row_score}",
                fx.seed
            );
            nonzero += usize::from(row_score != 0.0);
        }
    }
    assert!(nonzero > 0, "seed {}: no history term at all", fx.seed);
    let stats = folded.stats();
    assert_eq!((stats.hits, stats.misses), (0, 0), "seed {}", fx.seed);
}

#[test]
fn batches_without_a_history_term_leave_the_prior_empty() {
    let (fx, _) = fixture(50, 8, 5);
    let mut cache =
        TemporalCache::new(fx.items.clone(), fx.users.clone(), config(10)).expect("valid");
    let mut batch = batch_for(&fx, &[999, 0]);
    batch.item_prior = vec![1.0; 100];
    cache.run(&Cpu, &mut batch).expect("runs");
    assert!(batch.item_prior.is_empty());
    let mut cfg = config(10);
    cfg.history_weight = 0.0;
    let mut disabled = TemporalCache::new(fx.items.clone(), fx.users.clone(), cfg).expect("valid");
    let mut batch = batch_for(&fx, &[1, 2]);
    disabled.run(&Cpu, &mut batch).expect("runs");
    assert!(batch.item_prior.is_empty());
}

#[test]
fn custom_row_source_feeds_rows_similar_and_prior() {
    let (fx, _) = fixture(120, 8, 20);
    // A toy "collaborative" source: items sharing a residue mod 7 are alike.
    let source = RowSource::from_fn(|item: ItemIndex, out: &mut [f32]| {
        for (j, o) in out.iter_mut().enumerate() {
            *o = if j as u32 % 7 == item % 7 { 1.0 } else { 0.0 } + j as f32 * 1e-3;
        }
    });
    let mut cfg = config(30);
    cfg.source = source;
    let mut cache = TemporalCache::new(fx.items.clone(), fx.users.clone(), cfg).expect("valid");
    let handle = cache.handle();
    let table = handle.snapshot();
    let hot = table.items()[0];
    let row = table.row(hot).expect("hot");
    // Another item of the same residue class (120 is not a multiple of 7, so no wrap-around).
    let alike = if hot as usize + 7 < 120 {
        hot as usize + 7
    } else {
        hot as usize - 7
    };
    assert_eq!(row[alike], 1.0 + alike as f32 * 1e-3);
    let (similar, _) = handle.similar(hot, 3).expect("known");
    assert!(
        similar.iter().all(|&(j, _)| j % 7 == hot % 7),
        "{similar:?}"
    );

    let mut batch = batch_for(&fx, &[1]);
    cache.run(&Cpu, &mut batch).expect("runs");
    if batch.notes[0].cold_start {
        assert!(batch.item_prior.is_empty(), "seed {}", fx.seed);
        return;
    }
    let users = fx.users.read();
    let recent = users.recent(0, 20);
    for j in 0..120usize {
        let exact: f64 = recent
            .iter()
            .map(|e| {
                let r = if j as u32 % 7 == e.item % 7 { 1.0 } else { 0.0 } + j as f64 * 1e-3;
                (e.rating as f64 - 3.0) / 2.0 * r
            })
            .sum::<f64>()
            * 0.5
            / recent.len() as f64;
        assert!(
            (batch.item_prior[j] as f64 - exact).abs() < 1e-5,
            "seed {} item {j}",
            fx.seed
        );
    }
}

/// Blocks inside `rows` until released, to hold a rebuild in the middle of its work.
struct GatedRows {
    entered: Mutex<Option<mpsc::Sender<()>>>,
    release: Mutex<Option<mpsc::Receiver<()>>>,
    value: f32,
}

impl RowProvider for GatedRows {
    fn row(&self, _item: ItemIndex, out: &mut [f32]) {
        out.fill(self.value);
    }

    fn rows(&self, _items: &[ItemIndex], out: &mut [f32]) {
        if let Some(entered) = self.entered.lock().take() {
            let _ = entered.send(());
            if let Some(release) = self.release.lock().take() {
                let _ = release.recv();
            }
        }
        out.fill(self.value);
    }
}

#[test]
fn rebuild_swaps_without_blocking_readers() {
    let (fx, _) = fixture(80, 4, 20);
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let gated = Arc::new(GatedRows {
        entered: Mutex::new(None),
        release: Mutex::new(None),
        value: 0.25,
    });
    let mut cfg = config(10);
    cfg.source = RowSource::Custom(gated.clone());
    let cache = TemporalCache::new(fx.items.clone(), fx.users.clone(), cfg)
        .expect("first build is not gated");
    let handle = cache.handle();
    let old = handle.snapshot();
    let old_items = old.items().to_vec();
    let hot = old_items[0];

    // Make a cold item the hottest, then start a rebuild that stops half-way.
    let cold = (0..80)
        .find(|&i| old.row(i).is_none())
        .expect("a cold item");
    let latest = handle.latest_event().expect("seeded");
    for _ in 0..1000 {
        handle.record(cold, latest).expect("known");
    }
    *gated.entered.lock() = Some(entered_tx);
    *gated.release.lock() = Some(release_rx);
    let builder = {
        let handle = handle.clone();
        std::thread::spawn(move || handle.rebuild_now())
    };
    entered_rx.recv().expect("rebuild started");

    // Mid-rebuild, readers on other threads are served from the old table at once.
    let reader = {
        let handle = handle.clone();
        std::thread::spawn(move || {
            let during = handle.snapshot();
            let (similar, lookup) = handle.similar(hot, 5).expect("known");
            (during.items().to_vec(), similar.len(), lookup)
        })
    };
    let (during_items, similar_len, lookup) = reader
        .join()
        .expect("reader finished while the build is held");
    assert_eq!(during_items, old_items);
    assert_eq!((similar_len, lookup), (5, CacheLookup::Hit));
    assert_eq!(handle.stats().rebuilds, 1);

    release_tx.send(()).expect("builder waiting");
    builder
        .join()
        .expect("builder thread")
        .expect("rebuild succeeds");
    let new = handle.snapshot();
    assert_eq!(new.items()[0], cold);
    assert_eq!(handle.stats().rebuilds, 2);
    // The old generation is still intact for whoever held it.
    assert_eq!(old.items(), old_items.as_slice());
    assert!(old.row(cold).is_none());
    assert_eq!(old.row(hot).map(|r| r.len()), Some(80));
}

#[test]
fn scheduler_rebuilds_until_dropped() {
    let (fx, _) = fixture(60, 4, 10);
    let cache = TemporalCache::new(fx.items.clone(), fx.users.clone(), config(5)).expect("valid");
    let handle = cache.handle();
    let scheduler = cache.spawn_scheduler(Duration::from_millis(5));
    let deadline = Instant::now() + Duration::from_secs(30);
    while handle.stats().rebuilds < 4 {
        assert!(Instant::now() < deadline, "scheduler made no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(scheduler);
    let after_drop = handle.stats().rebuilds;
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(handle.stats().rebuilds, after_drop);
}

#[test]
fn observe_maps_event_items_through_the_configured_ids() {
    let (fx, _) = fixture(30, 4, 3);
    let event = |item| Event {
        user: UserId(1),
        item: ItemId(item),
        interaction: Interaction::Watch,
        timestamp: 5_000 * HOUR,
    };
    let mut unmapped =
        TemporalCache::new(fx.items.clone(), fx.users.clone(), config(3)).expect("valid");
    assert!(matches!(
        unmapped.observe(&Cpu, &event(1000)),
        Err(StageError::Failed { .. })
    ));

    let mut cfg = config(3);
    cfg.item_ids = Some((0..30).map(|i| ItemId(1000 + i)).collect());
    let mut cache = TemporalCache::new(fx.items.clone(), fx.users.clone(), cfg).expect("valid");
    let handle = cache.handle();
    let before = handle.popularity(17, 5_000 * HOUR).expect("known");
    cache.observe(&Cpu, &event(1017)).expect("known id");
    let after = handle.popularity(17, 5_000 * HOUR).expect("known");
    assert!((after - before - 1.0).abs() < 1e-9, "{before} -> {after}");
    assert_eq!(handle.hottest(1)[0].0, 17, "the fresh event dominates");
    assert!(matches!(
        cache.observe(&Cpu, &event(7)),
        Err(StageError::UnknownItem(7))
    ));

    let mut cfg = config(3);
    cfg.item_ids = Some(vec![ItemId(1)].into());
    assert!(matches!(
        TemporalCache::new(fx.items.clone(), fx.users.clone(), cfg),
        Err(CacheError::ItemIdCount {
            ids: 1,
            n_items: 30
        })
    ));
}

#[test]
fn invalid_settings_are_rejected() {
    let (fx, _) = fixture(10, 4, 2);
    for half_life in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let mut cfg = config(3);
        cfg.half_life_secs = half_life;
        assert!(matches!(
            TemporalCache::new(fx.items.clone(), fx.users.clone(), cfg),
            Err(CacheError::InvalidHalfLife(_))
        ));
    }
    let mut cfg = config(3);
    cfg.history_weight = f32::NAN;
    assert!(matches!(
        TemporalCache::new(fx.items.clone(), fx.users.clone(), cfg),
        Err(CacheError::InvalidHistoryWeight(_))
    ));
}

#[test]
fn embedding_accumulate_paths_equal_weighted_row_sums() {
    let (fx, mut rng) = fixture(700, 24, 1);
    let provider = RowSource::Embedding.provider(&fx.items);
    let weighted: Vec<(usize, ItemIndex, f32)> = [0usize, 0, 2, 2, 2, 3]
        .iter()
        .map(|&r| (r, rng.random_range(0..700), rng.random_range(-1.0f32..1.0)))
        .collect();
    let mut batched = vec![0.5f32; 4 * 700];
    provider.accumulate_rows(&weighted, &mut batched, 700);
    // A batch with one row takes the untiled path.
    let only_two: Vec<(usize, ItemIndex, f32)> =
        weighted.iter().copied().filter(|e| e.0 == 2).collect();
    let mut single_row = vec![0.5f32; 4 * 700];
    provider.accumulate_rows(&only_two, &mut single_row, 700);
    for j in 0..700 {
        assert!(
            (single_row[2 * 700 + j] - batched[2 * 700 + j]).abs() < 1e-5,
            "seed {} item {j}",
            fx.seed
        );
        assert_eq!(single_row[3 * 700 + j], 0.5);
    }
    let mut row = vec![0.0f32; 700];
    for r in 0..4 {
        let entries: Vec<(ItemIndex, f32)> = weighted
            .iter()
            .filter(|e| e.0 == r)
            .map(|e| (e.1, e.2))
            .collect();
        let mut single = vec![0.5f32; 700];
        provider.accumulate(&entries, &mut single);
        let mut naive = vec![0.5f64; 700];
        for &(item, weight) in &entries {
            provider.row(item, &mut row);
            for (n, x) in naive.iter_mut().zip(&row) {
                *n += weight as f64 * *x as f64;
            }
        }
        for j in 0..700 {
            let (b, s, n) = (batched[r * 700 + j] as f64, single[j] as f64, naive[j]);
            assert!(
                (b - n).abs() < 1e-5 && (s - n).abs() < 1e-5,
                "seed {} row {r} item {j}: {b} {s} {n}",
                fx.seed
            );
        }
    }
}

#[test]
fn similar_breaks_ties_by_item_index_and_skips_nan() {
    let (fx, _) = fixture(50, 4, 5);
    let mut cfg = config(0);
    cfg.source = RowSource::from_fn(|_item: ItemIndex, out: &mut [f32]| {
        for (j, o) in out.iter_mut().enumerate() {
            *o = match j % 3 {
                0 => f32::NAN,
                _ => 1.0,
            };
        }
    });
    let cache = TemporalCache::new(fx.items.clone(), fx.users.clone(), cfg).expect("valid");
    let (similar, lookup) = cache.handle().similar(4, 6).expect("known");
    assert_eq!(lookup, CacheLookup::Miss);
    let ids: Vec<ItemIndex> = similar.iter().map(|s| s.0).collect();
    assert_eq!(ids, vec![1, 2, 5, 7, 8, 10]);
    let (all, _) = cache.handle().similar(4, 1000).expect("known");
    assert_eq!(
        all.len(),
        50 - 17 - 1,
        "every non-NaN item except the query"
    );
}
