//! Temporal cache stage: time-decayed item popularity and precomputed similarity rows of hot items.
//!
//! # Popularity
//!
//! Every event (a rating or interaction, or a call to [`CacheHandle::record`]) adds one to
//! its item's count, and counts decay exponentially with a configurable half-life:
//! `popularity(i, t) = sum over events e of item i of 0.5^((t - t_e) / half_life)`. Each
//! item stores `(value, last event time)` and decays lazily, which is exact and O(1) per
//! event. At construction the counts are seeded with every entry of the user table's
//! histories (configurable).
//!
//! # Hot table
//!
//! The `hot_items` most popular items (capped at the catalog size; items without any event
//! are never hot) get a precomputed similarity row against the whole catalog,
//! `rows[h, j] = similarity(hot_h, j)`, row-major `[n_hot, n_items]` `f32` (the layout the
//! GPU path uploads). With [`RowSource::Embedding`] that is the cosine of the item
//! embeddings, computed by a blocked, parallel product; a [`RowSource::Custom`] provider
//! (for instance collaborative item-item weights) can replace it.
//!
//! [`CacheHandle::rebuild_now`] (or the thread of [`CacheHandle::spawn_scheduler`]) builds a
//! new table off to the side from the current popularity and swaps it in atomically:
//! readers never wait, and a reader that loaded the old table keeps it until it drops it.
//! During a rebuild both tables are in memory.
//!
//! # What a hit is
//!
//! One *lookup* is one row needed for one item: the row of `X` in
//! [`CacheHandle::similar`]`(X, k)`, or the row of one history item in the stage's history
//! term. A lookup is a **hit** when the row is read from the current hot table, and a
//! **miss** when the item is not hot and its row is computed from the row source instead.
//! History items with a neutral rating (weight 0) need no row and are not looked up.
//! `hit_rate = hits / (hits + misses)`.
//!
//! # The stage (`"cache"`)
//!
//! For each request whose user is known and not a cold start, the stage writes the
//! history term into `item_prior[q, :]` (row-major `[n, n_items]`):
//!
//! ```text
//! item_prior[q, :] = history_weight / |H| * sum over h in H of w_h * row(h),
//! w_h = offset + slope * (rating_h - 3) / 2        ((offset, slope) = history_gate)
//! ```
//!
//! with `H` the user's `history_len` most recent history entries. With the default gate
//! `(0, 1)` liked items pull similar items up and disliked ones push them down; the gate
//! `(1, 0)` weighs every rated item alike, which with EASE rows makes the prior exactly
//! EASE's binary score `x_u B` of the recent history (scaled by `history_weight / |H|`).
//! Other requests get a zero row. When no request of the batch gets a history term,
//! `item_prior` is left empty and the similarity stage skips it.
//!
//! With [`RowSource::Embedding`] and [`CacheConfig::fold_linear_history`] (the pipeline's
//! setting) the rows are linear in the embeddings, `row(h)[j] = e_h · e_j`, so the term is
//! exactly `(history_weight / |H| * sum w_h e_h) · e_j`: the stage writes that one vector
//! per request into `query_prior` (`[n, dim]`), which similarity adds to the fused query,
//! instead of reading hot rows and making a catalog pass for the misses. No row is read or
//! computed then, so folded history terms count neither hits nor misses; hot rows still
//! serve "similar to X" and every non-linear source. The genre boost
//! ([`CacheConfig::genre_boost`]) still goes into `item_prior`.

/// The shared inner-product kernel (bit-identical however rows are blocked).
use hyperrec_dot as kernel;
mod popularity;
mod rows;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rayon::prelude::*;
use thiserror::Error;

use hyperrec_catalog::{ItemEmbeddings, SharedUsers};
use hyperrec_stage::{Batch, Cpu, Event, ItemId, ItemIndex, Stage, StageError};

use popularity::Popularity;
pub use rows::{RowProvider, RowSource};

/// Rating that neither pulls nor pushes in the history term.
const NEUTRAL_RATING: f32 = 3.0;
/// History gate of [`CacheConfig::history_gate`] by default: weight `(rating - 3) / 2`.
pub const DEFAULT_HISTORY_GATE: [f32; 2] = [0.0, 1.0];
/// Columns of a prior row summed per parallel task.
const PRIOR_CHUNK: usize = 4096;

/// Why the cache cannot be built or cannot serve a call.
#[derive(Debug, Error, PartialEq)]
pub enum CacheError {
    #[error("unknown item {item} (the catalog has {n_items})")]
    UnknownItem { item: ItemIndex, n_items: usize },
    #[error("half-life must be positive and finite, got {0}")]
    InvalidHalfLife(f64),
    #[error("history weight must be finite, got {0}")]
    InvalidHistoryWeight(f32),
    #[error("history gate must be finite, got {0:?}")]
    InvalidHistoryGate([f32; 2]),
    #[error("item embeddings are {items}-d but user profiles are {users}-d")]
    DimensionMismatch { items: usize, users: usize },
    #[error("{ids} item ids given for {n_items} items")]
    ItemIdCount { ids: usize, n_items: usize },
    #[error("cannot allocate {bytes} bytes for the hot table")]
    OutOfMemory { bytes: usize },
}

/// Settings of the temporal cache.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Items with precomputed rows (capped at the catalog size). At 62,423 items one row is
    /// 250 KB, so the default 10,000 rows take 2.5 GB (twice that during a rebuild).
    pub hot_items: usize,
    /// Age at which an event counts half.
    pub half_life_secs: f64,
    /// Most recent history entries in the history term.
    pub history_len: usize,
    /// Scale of the history term against the fused inner product (0 disables it).
    pub history_weight: f32,
    /// `(offset, slope)`: a history item's weight is `offset + slope * (rating - 3) / 2`
    /// (see the crate docs). `(0, 1)` centres on a neutral 3; `(1, 0)` is binary.
    pub history_gate: [f32; 2],
    /// Added to the prior of every item of a genre the request names (see the crate docs);
    /// 0 disables it.
    pub genre_boost: f32,
    /// Items of each genre, for the boost; `None` disables it.
    pub genres: Option<Arc<GenreIndex>>,
    /// What the rows hold.
    pub source: RowSource,
    /// External id of each item row, to map real-time [`Event`]s to rows. Without it,
    /// `observe` fails rather than guess.
    pub item_ids: Option<Arc<[ItemId]>>,
    /// Seed popularity with every history entry of the user table at construction.
    pub seed_from_histories: bool,
    /// Build the hot table at construction (otherwise it starts empty: every lookup misses
    /// until the first rebuild).
    pub build_on_start: bool,
    /// With [`RowSource::Embedding`], write the history term as one vector per request into
    /// `query_prior` instead of an `[n, n_items]` row into `item_prior` (see the crate
    /// docs). Off by default so `item_prior` stays comparable with other implementations of
    /// the stage; the pipeline turns it on.
    pub fold_linear_history: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            hot_items: 10_000,
            half_life_secs: 7.0 * 24.0 * 3600.0,
            history_len: 50,
            history_weight: 0.25,
            history_gate: DEFAULT_HISTORY_GATE,
            genre_boost: 0.0,
            genres: None,
            source: RowSource::Embedding,
            item_ids: None,
            seed_from_histories: true,
            build_on_start: true,
            fold_linear_history: false,
        }
    }
}

/// Items of each genre, by lower-case genre name, for the cache's genre-hint boost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenreIndex {
    /// Lower-case names, sorted.
    names: Vec<String>,
    /// `members[g]`: items of genre `names[g]`.
    members: Vec<Vec<ItemIndex>>,
}

impl GenreIndex {
    /// Builds the index from `(genre name, items)` pairs; names are lower-cased and pairs
    /// with the same name merged.
    pub fn new(entries: impl IntoIterator<Item = (String, Vec<ItemIndex>)>) -> GenreIndex {
        let mut merged: std::collections::BTreeMap<String, Vec<ItemIndex>> = Default::default();
        for (name, items) in entries {
            merged.entry(name.to_lowercase()).or_default().extend(items);
        }
        let (names, members) = merged
            .into_iter()
            .map(|(name, mut items)| {
                items.sort_unstable();
                items.dedup();
                (name, items)
            })
            .unzip();
        GenreIndex { names, members }
    }

    /// Genres named in `query` as whole words (letters, digits and `-`), or in `hints`
    /// (compared lower-case), each once, in index order.
    pub fn hinted(&self, query: &str, hints: &[String]) -> Vec<usize> {
        let query = query.to_lowercase();
        let words: Vec<&str> = query
            .split(|c: char| !(c.is_alphanumeric() || c == '-'))
            .filter(|w| !w.is_empty())
            .collect();
        (0..self.names.len())
            .filter(|&g| {
                let name = self.names[g].as_str();
                words.contains(&name) || hints.iter().any(|h| h.trim().to_lowercase() == name)
            })
            .collect()
    }

    /// Items of genre `g` (empty when out of range).
    pub fn members(&self, g: usize) -> &[ItemIndex] {
        self.members.get(g).map_or(&[], Vec::as_slice)
    }
}

/// Whether a row came from the hot table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheLookup {
    Hit,
    Miss,
}

/// Counters of the cache since it was created.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    /// `hits / (hits + misses)`, 0 before any lookup.
    pub hit_rate: f64,
    /// Rows in the current hot table.
    pub hot_rows: usize,
    /// How long the current table took to build (`None` before the first build).
    pub last_rebuild: Option<Duration>,
    /// Completed rebuilds.
    pub rebuilds: u64,
    /// Rebuilds that failed (the previous table stayed in place).
    pub failed_rebuilds: u64,
}

/// One generation of precomputed rows.
#[derive(Debug)]
pub struct HotTable {
    n_items: usize,
    /// Hot items, most popular first; row `s` of `rows` belongs to `items[s]`.
    items: Vec<ItemIndex>,
    /// `slot_of[item]` is the item's row, or `u32::MAX` when it is not hot.
    slot_of: Vec<u32>,
    /// Row-major `[items.len(), n_items]`.
    rows: Vec<f32>,
    build_time: Option<Duration>,
}

impl HotTable {
    fn empty(n_items: usize) -> Self {
        HotTable {
            n_items,
            items: Vec::new(),
            slot_of: vec![u32::MAX; n_items],
            rows: Vec::new(),
            build_time: None,
        }
    }

    /// Hot items, most popular first (the row order).
    pub fn items(&self) -> &[ItemIndex] {
        &self.items
    }

    /// The precomputed row of `item`, if it is hot.
    pub fn row(&self, item: ItemIndex) -> Option<&[f32]> {
        let slot = *self.slot_of.get(item as usize)?;
        (slot != u32::MAX).then(|| self.slot_row(slot as usize))
    }

    fn slot_row(&self, slot: usize) -> &[f32] {
        &self.rows[slot * self.n_items..(slot + 1) * self.n_items]
    }

    /// All rows, row-major `[items().len(), n_items]`.
    pub fn rows(&self) -> &[f32] {
        &self.rows
    }

    /// How long this table took to build (`None` for the initial empty table).
    pub fn build_time(&self) -> Option<Duration> {
        self.build_time
    }
}

/// State shared by the stage, its handles and the scheduler thread.
struct Shared {
    items: Arc<ItemEmbeddings>,
    provider: Arc<dyn RowProvider>,
    hot_items: usize,
    popularity: Mutex<Popularity>,
    table: ArcSwap<HotTable>,
    /// Serializes rebuilds so two never hold a new table's memory at once.
    build_lock: Mutex<()>,
    hits: AtomicU64,
    misses: AtomicU64,
    rebuilds: AtomicU64,
    failed_rebuilds: AtomicU64,
}

impl Shared {
    fn check_item(&self, item: ItemIndex) -> Result<(), CacheError> {
        if (item as usize) < self.items.len() {
            Ok(())
        } else {
            Err(CacheError::UnknownItem {
                item,
                n_items: self.items.len(),
            })
        }
    }

    fn rebuild(&self) -> Result<Duration, CacheError> {
        let _building = self.build_lock.lock();
        let started = Instant::now();
        let n_items = self.items.len();
        let hot: Vec<ItemIndex> = self
            .popularity
            .lock()
            .hottest(self.hot_items)
            .into_iter()
            .map(|(item, _)| item)
            .collect();
        let len = hot.len() * n_items;
        let mut rows: Vec<f32> = Vec::new();
        rows.try_reserve_exact(len)
            .map_err(|_| CacheError::OutOfMemory {
                bytes: len.saturating_mul(size_of::<f32>()),
            })?;
        rows.resize(len, 0.0);
        self.provider.rows(&hot, &mut rows);
        let mut slot_of = vec![u32::MAX; n_items];
        for (slot, &item) in hot.iter().enumerate() {
            slot_of[item as usize] = slot as u32;
        }
        let build_time = started.elapsed();
        self.table.store(Arc::new(HotTable {
            n_items,
            items: hot,
            slot_of,
            rows,
            build_time: Some(build_time),
        }));
        self.rebuilds.fetch_add(1, Ordering::Relaxed);
        Ok(build_time)
    }
}

/// A cheap-to-clone handle on the cache: lookups, popularity and rebuilds, from any thread.
#[derive(Clone)]
pub struct CacheHandle {
    shared: Arc<Shared>,
}

impl CacheHandle {
    /// The `k` items most similar to `item` (itself excluded), best first, ties by smaller
    /// index, and whether the row was a hit. One lookup.
    pub fn similar(
        &self,
        item: ItemIndex,
        k: usize,
    ) -> Result<(Vec<(ItemIndex, f32)>, CacheLookup), CacheError> {
        self.shared.check_item(item)?;
        let table = self.shared.table.load();
        let (ranked, lookup) = match table.row(item) {
            Some(row) => (top_k_except(row, k, item), CacheLookup::Hit),
            None => {
                let mut row = vec![0.0f32; self.shared.items.len()];
                self.shared.provider.row(item, &mut row);
                (top_k_except(&row, k, item), CacheLookup::Miss)
            }
        };
        let counter = match lookup {
            CacheLookup::Hit => &self.shared.hits,
            CacheLookup::Miss => &self.shared.misses,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok((ranked, lookup))
    }

    /// Counts one event of `item` at `timestamp` (seconds since the epoch) in its
    /// popularity. Takes effect on the hot set at the next rebuild.
    pub fn record(&self, item: ItemIndex, timestamp: i64) -> Result<(), CacheError> {
        self.shared.check_item(item)?;
        self.shared.popularity.lock().record(item, timestamp);
        Ok(())
    }

    /// Counts a real-time [`Event`] whose item is mapped to its row by `rows`: what a
    /// cache stage's `observe` does, on the CPU and the GPU alike.
    pub fn record_event(
        &self,
        rows: &HashMap<ItemId, ItemIndex>,
        event: &Event,
    ) -> Result<(), StageError> {
        let item = *rows
            .get(&event.item)
            .ok_or(StageError::UnknownItem(event.item.0))?;
        self.record(item, event.timestamp)
            .map_err(|_| StageError::UnknownItem(event.item.0))
    }

    /// The `n` most popular items (only items with events), most popular first, ties by
    /// smaller index, with their popularity at the latest event.
    pub fn hottest(&self, n: usize) -> Vec<(ItemIndex, f64)> {
        self.shared.popularity.lock().hottest(n)
    }

    /// Popularity of `item` at time `at`.
    pub fn popularity(&self, item: ItemIndex, at: i64) -> Result<f64, CacheError> {
        self.shared.check_item(item)?;
        Ok(self.shared.popularity.lock().at(item, at))
    }

    /// Timestamp of the latest recorded event.
    pub fn latest_event(&self) -> Option<i64> {
        self.shared.popularity.lock().latest()
    }

    /// The current hot table. Holding it keeps that generation alive across rebuilds.
    pub fn snapshot(&self) -> Arc<HotTable> {
        self.shared.table.load_full()
    }

    /// Builds a new hot table from the current popularity and swaps it in; returns the
    /// build time. Readers are never blocked; concurrent rebuilds run one after the other.
    pub fn rebuild_now(&self) -> Result<Duration, CacheError> {
        let result = self.shared.rebuild();
        if result.is_err() {
            self.shared.failed_rebuilds.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Rebuilds every `interval` on a background thread until the returned handle is
    /// dropped (dropping waits for a rebuild in progress to finish).
    pub fn spawn_scheduler(&self, interval: Duration) -> Scheduler {
        let (stop, stopped) = mpsc::channel::<()>();
        let handle = self.clone();
        let thread = std::thread::spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                // A failed rebuild is counted in the stats and retried at the next tick.
                let _ = handle.rebuild_now();
            }
        });
        Scheduler {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn stats(&self) -> CacheStats {
        let hits = self.shared.hits.load(Ordering::Relaxed);
        let misses = self.shared.misses.load(Ordering::Relaxed);
        let table = self.shared.table.load();
        CacheStats {
            hits,
            misses,
            hit_rate: if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            },
            hot_rows: table.items.len(),
            last_rebuild: table.build_time,
            rebuilds: self.shared.rebuilds.load(Ordering::Relaxed),
            failed_rebuilds: self.shared.failed_rebuilds.load(Ordering::Relaxed),
        }
    }
}

/// Stops the scheduled rebuilds when dropped.
pub struct Scheduler {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // Disconnecting the channel wakes the thread, which then exits.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An item ranked for [`top_k_except`]; `Ord` ranks *worse* items greater, so the max-heap's
/// top is the item to evict next.
#[derive(Clone, Copy, Debug)]
struct Ranked {
    score: f32,
    item: ItemIndex,
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // NaN never enters the heap, so `partial_cmp` is total here.
        other
            .score
            .partial_cmp(&self.score)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(self.item.cmp(&other.item))
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}

impl Eq for Ranked {}

/// Best `k` of `row` except `skip`, best first, ties by smaller index, NaN never selected:
/// a bounded heap over one ascending scan (a tie with the current worst loses, as it has
/// the larger index), the same rule as the similarity stage's top-K.
fn top_k_except(row: &[f32], k: usize, skip: ItemIndex) -> Vec<(ItemIndex, f32)> {
    let k = k.min(row.len());
    let mut heap = std::collections::BinaryHeap::with_capacity(k);
    if k > 0 {
        for (j, &score) in row.iter().enumerate() {
            let item = j as ItemIndex;
            if item == skip || score.is_nan() {
                continue;
            }
            if heap.len() < k {
                heap.push(Ranked { score, item });
            } else if let Some(mut worst) = heap.peek_mut()
                && score > worst.score
            {
                *worst = Ranked { score, item };
            }
        }
    }
    heap.into_sorted_vec()
        .into_iter()
        .map(|r| (r.item, r.score))
        .collect()
}

/// The temporal cache stage (`"cache"`); see the crate docs.
///
/// Reads `notes[i].user` and `notes[i].cold_start`; writes `item_prior` and, when it folds
/// the history term, `query_prior`.
pub struct TemporalCache {
    handle: CacheHandle,
    users: SharedUsers,
    history_len: usize,
    history_weight: f32,
    history_gate: [f32; 2],
    genre_boost: f32,
    genres: Option<Arc<GenreIndex>>,
    item_index: Option<HashMap<ItemId, ItemIndex>>,
    /// Write the history term into `query_prior` (rows linear in the embeddings and
    /// [`CacheConfig::fold_linear_history`] on).
    fold_history: bool,
    /// Every weighted history entry of the batch being run: (request, item, weight),
    /// grouped by request in ascending order.
    weighted: Vec<(usize, ItemIndex, f32)>,
    /// Scratch of a batch's history terms: hot rows with their weights (request `q`'s in
    /// `hit_rows[hit_offsets[q]..hit_offsets[q + 1]]`), and the items whose rows must be
    /// computed, with their request and weight.
    hit_rows: Vec<(usize, f32)>,
    hit_offsets: Vec<usize>,
    miss_items: Vec<(usize, ItemIndex, f32)>,
}

impl TemporalCache {
    /// A cache over `items`, with popularity seeded from `users`' histories and the hot
    /// table built when the config asks for it.
    pub fn new(
        items: Arc<ItemEmbeddings>,
        users: SharedUsers,
        config: CacheConfig,
    ) -> Result<Self, CacheError> {
        if !(config.half_life_secs > 0.0 && config.half_life_secs.is_finite()) {
            return Err(CacheError::InvalidHalfLife(config.half_life_secs));
        }
        if !config.history_weight.is_finite() {
            return Err(CacheError::InvalidHistoryWeight(config.history_weight));
        }
        if !config.genre_boost.is_finite() {
            return Err(CacheError::InvalidHistoryWeight(config.genre_boost));
        }
        if !config.history_gate.iter().all(|g| g.is_finite()) {
            return Err(CacheError::InvalidHistoryGate(config.history_gate));
        }
        let n_items = items.len();
        let item_index = match &config.item_ids {
            Some(ids) if ids.len() != n_items => {
                return Err(CacheError::ItemIdCount {
                    ids: ids.len(),
                    n_items,
                });
            }
            Some(ids) => Some(
                ids.iter()
                    .enumerate()
                    .map(|(row, &id)| (id, row as ItemIndex))
                    .collect(),
            ),
            None => None,
        };
        let mut popularity = Popularity::new(n_items, config.half_life_secs);
        {
            let users = users.read();
            if users.dim() != items.dim() {
                return Err(CacheError::DimensionMismatch {
                    items: items.dim(),
                    users: users.dim(),
                });
            }
            if config.seed_from_histories {
                for user in 0..users.len() {
                    for entry in users.history(user as u32) {
                        if (entry.item as usize) < n_items {
                            popularity.record(entry.item, entry.timestamp);
                        }
                    }
                }
            }
        }
        let fold_history =
            config.fold_linear_history && matches!(config.source, RowSource::Embedding);
        let shared = Arc::new(Shared {
            provider: config.source.provider(&items),
            hot_items: config.hot_items.min(n_items),
            popularity: Mutex::new(popularity),
            table: ArcSwap::from_pointee(HotTable::empty(n_items)),
            build_lock: Mutex::new(()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            rebuilds: AtomicU64::new(0),
            failed_rebuilds: AtomicU64::new(0),
            items,
        });
        let handle = CacheHandle { shared };
        if config.build_on_start {
            handle.rebuild_now()?;
        }
        Ok(TemporalCache {
            handle,
            users,
            history_len: config.history_len,
            history_weight: config.history_weight,
            history_gate: config.history_gate,
            genre_boost: config.genre_boost,
            genres: config.genres,
            item_index,
            fold_history,
            weighted: Vec::new(),
            hit_rows: Vec::new(),
            hit_offsets: Vec::new(),
            miss_items: Vec::new(),
        })
    }

    /// A handle for lookups, popularity, rebuilds and stats from anywhere.
    pub fn handle(&self) -> CacheHandle {
        self.handle.clone()
    }

    pub fn rebuild_now(&self) -> Result<Duration, CacheError> {
        self.handle.rebuild_now()
    }

    pub fn spawn_scheduler(&self, interval: Duration) -> Scheduler {
        self.handle.spawn_scheduler(interval)
    }

    /// Adds the history rows of `self.weighted` into `prior` (`[n, n_items]`): hot rows read
    /// from the current table (hits), the others computed by the row source (misses).
    fn add_history_rows(&mut self, prior: &mut [f32], n: usize, n_items: usize) {
        let shared = &self.handle.shared;
        let table = shared.table.load_full();
        self.hit_rows.clear();
        self.miss_items.clear();
        self.hit_offsets.clear();
        let mut entries = self.weighted.iter().peekable();
        for q in 0..n {
            self.hit_offsets.push(self.hit_rows.len());
            while let Some(&(_, item, weight)) = entries.next_if(|entry| entry.0 == q) {
                match table.slot_of[item as usize] {
                    u32::MAX => self.miss_items.push((q, item, weight)),
                    slot => self.hit_rows.push((slot as usize, weight)),
                }
            }
        }
        self.hit_offsets.push(self.hit_rows.len());
        let (hits, misses) = (self.hit_rows.len() as u64, self.miss_items.len() as u64);

        // Misses: rows computed by the source, all requests in one pass where it can.
        shared
            .provider
            .accumulate_rows(&self.miss_items, prior, n_items);
        // Hits: weighted hot rows, summed per column chunk so each chunk of a row is read
        // while its output chunk is in cache.
        let (hit_rows, hit_offsets) = (&self.hit_rows, &self.hit_offsets);
        prior
            .par_chunks_mut(n_items)
            .enumerate()
            .for_each(|(q, prior)| {
                let request_hits = &hit_rows[hit_offsets[q]..hit_offsets[q + 1]];
                if request_hits.is_empty() {
                    return;
                }
                prior
                    .par_chunks_mut(PRIOR_CHUNK)
                    .enumerate()
                    .for_each(|(chunk, out)| {
                        let start = chunk * PRIOR_CHUNK;
                        for &(slot, weight) in request_hits {
                            let row = &table.slot_row(slot)[start..start + out.len()];
                            for (o, r) in out.iter_mut().zip(row) {
                                *o += weight * r;
                            }
                        }
                    });
            });
        shared.hits.fetch_add(hits, Ordering::Relaxed);
        shared.misses.fetch_add(misses, Ordering::Relaxed);
    }

    pub fn stats(&self) -> CacheStats {
        self.handle.stats()
    }
}

impl Stage<Cpu> for TemporalCache {
    fn name(&self) -> &'static str {
        "cache"
    }

    fn run(&mut self, _device: &Cpu, batch: &mut Batch<Cpu>) -> Result<(), StageError> {
        let n = batch.len();
        let shared = &self.handle.shared;
        let n_items = shared.items.len();
        let dim = shared.items.dim();
        let users = self.users.read();
        let personal = |notes: &hyperrec_stage::RequestNotes| {
            notes
                .user
                .filter(|&u| !notes.cold_start && (u as usize) < users.len())
        };
        // Per request: the genres it names, when the boost is on.
        let hinted: Vec<Vec<usize>> = match &self.genres {
            Some(genres) if self.genre_boost != 0.0 => batch
                .requests
                .iter()
                .map(|r| genres.hinted(&r.query, &r.context.genres))
                .collect(),
            _ => Vec::new(),
        };
        let any_hint = hinted.iter().any(|h| !h.is_empty());
        let any_history = self.history_weight != 0.0
            && self.history_len != 0
            && batch.notes.iter().any(|notes| personal(notes).is_some());
        batch.item_prior.clear();
        batch.query_prior.clear();
        if !any_history && !any_hint {
            return Ok(());
        }

        // Every weighted history entry of the batch, as (request, item, weight).
        self.weighted.clear();
        if any_history {
            let [offset, slope] = self.history_gate;
            for (q, notes) in batch.notes.iter().enumerate() {
                let Some(user) = personal(notes) else {
                    continue;
                };
                let recent = users.recent(user, self.history_len);
                let scale = self.history_weight / recent.len().max(1) as f32;
                for entry in recent {
                    if entry.item as usize >= n_items {
                        return Err(StageError::UnknownItem(entry.item));
                    }
                    let weight = (offset + slope * (entry.rating - NEUTRAL_RATING) / 2.0) * scale;
                    if weight != 0.0 {
                        self.weighted.push((q, entry.item, weight));
                    }
                }
            }
        }

        // Histories are read; the rest works on `weighted` without holding the user lock.
        drop(users);
        if self.fold_history && any_history {
            // Linear rows: sum_h w_h (e_h · e_j) = (sum_h w_h e_h) · e_j, one vector per
            // request, no row read and none computed, so no lookup is counted.
            batch.query_prior.resize(n * dim, 0.0);
            batch.query_prior.fill(0.0);
            for &(q, item, weight) in &self.weighted {
                let out = &mut batch.query_prior[q * dim..(q + 1) * dim];
                for (o, x) in out.iter_mut().zip(shared.items.row(item)) {
                    *o += weight * x;
                }
            }
        }
        let rows_needed = any_history && !self.fold_history;
        if !rows_needed && !any_hint {
            return Ok(());
        }
        batch.item_prior.resize(n * n_items, 0.0);
        batch.item_prior.fill(0.0);
        if rows_needed {
            self.add_history_rows(&mut batch.item_prior, n, n_items);
        }
        if let Some(genres) = self.genres.as_ref().filter(|_| any_hint) {
            for (q, request_genres) in hinted.iter().enumerate() {
                let prior = &mut batch.item_prior[q * n_items..(q + 1) * n_items];
                for &g in request_genres {
                    for &item in genres.members(g) {
                        if let Some(p) = prior.get_mut(item as usize) {
                            *p += self.genre_boost;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn observe(&mut self, _device: &Cpu, event: &Event) -> Result<(), StageError> {
        let Some(index) = &self.item_index else {
            return Err(StageError::Failed {
                stage: "cache",
                message:
                    "CacheConfig::item_ids is not set, so events cannot be mapped to item rows"
                        .into(),
            });
        };
        self.handle.record_event(index, event)
    }
}

#[cfg(test)]
mod tests;
