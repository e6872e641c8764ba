//! Bounded top-K selection: a heap of the K best items seen so far, never a full sort.
//!
//! Order: higher score first; equal scores (IEEE equality, so `-0.0 == 0.0`) go to the
//! smaller item index. NaN scores are never selected. Items are offered in ascending index
//! order, so a newcomer that only ties the current worst is worse than it and is skipped
//! with a single comparison: the hot loop is one `>` per item once the heap is full.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use hyperrec_stage::ItemIndex;

/// Item id written into unused candidate slots.
pub const PAD_ID: u32 = u32::MAX;
/// Score written into unused candidate slots.
pub const PAD_SCORE: f32 = f32::NEG_INFINITY;

/// A selected item. `Ord` ranks *worse* items greater, so the max-heap's top is the item
/// to evict next.
#[derive(Clone, Copy, Debug)]
struct Ranked {
    score: f32,
    item: ItemIndex,
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        // NaN never enters the heap, so `partial_cmp` is total here.
        other
            .score
            .partial_cmp(&self.score)
            .unwrap_or(Ordering::Equal)
            .then(self.item.cmp(&other.item))
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ranked {}

/// Reusable top-K selector; keeps its heap allocation across queries.
#[derive(Debug, Default)]
pub struct TopK {
    heap: BinaryHeap<Ranked>,
    k: usize,
}

impl TopK {
    /// An empty selector.
    pub fn new() -> Self {
        TopK::default()
    }

    /// Starts a new selection of the `k` best items.
    pub fn begin(&mut self, k: usize) {
        self.heap.clear();
        self.k = k;
        // Reserving once per selection keeps `offer` free of reallocation; a no-op when the
        // heap is already large enough.
        self.heap.reserve(k.min(1 << 16));
    }

    /// Offers `scores[i]` as the score of item `first_item + i`, skipping every item listed
    /// in `excluded` (sorted ascending). Calls must come in ascending item order.
    pub fn offer(&mut self, scores: &[f32], first_item: ItemIndex, excluded: &[ItemIndex]) {
        if self.k == 0 || scores.is_empty() {
            return;
        }
        let end = first_item as u64 + scores.len() as u64;
        let from = excluded.partition_point(|&e| e < first_item);
        let to = excluded.partition_point(|&e| (e as u64) < end);
        let mut start = 0usize;
        for &skip in &excluded[from..to] {
            let at = (skip - first_item) as usize;
            if at > start {
                self.offer_run(&scores[start..at], first_item + start as ItemIndex);
            }
            start = start.max(at + 1);
        }
        if start < scores.len() {
            self.offer_run(&scores[start..], first_item + start as ItemIndex);
        }
    }

    fn offer_run(&mut self, scores: &[f32], first_item: ItemIndex) {
        let mut iter = scores.iter().enumerate();
        // Fill phase: take every non-NaN score until the heap holds k.
        while self.heap.len() < self.k {
            let Some((i, &score)) = iter.next() else {
                return;
            };
            if !score.is_nan() {
                self.heap.push(Ranked {
                    score,
                    item: first_item + i as ItemIndex,
                });
            }
        }
        let Some(mut threshold) = self.heap.peek().map(|worst| worst.score) else {
            return;
        };
        for (i, &score) in iter {
            // Strictly greater: a tie loses to the earlier (smaller) index already held;
            // NaN compares false and is skipped.
            if score > threshold {
                if let Some(mut worst) = self.heap.peek_mut() {
                    *worst = Ranked {
                        score,
                        item: first_item + i as ItemIndex,
                    };
                }
                threshold = self.heap.peek().map_or(threshold, |worst| worst.score);
            }
        }
    }

    /// Writes the selection best first into `ids`/`scores` (same length), padding unused
    /// slots with [`PAD_ID`]/[`PAD_SCORE`], and returns how many items were selected.
    /// Entries beyond `ids.len()` are dropped.
    pub fn finish_into(&mut self, ids: &mut [u32], scores: &mut [f32]) -> usize {
        let mut ranked = std::mem::take(&mut self.heap).into_vec();
        ranked.sort_unstable();
        let mut written = 0;
        for ((id, score), entry) in ids.iter_mut().zip(scores.iter_mut()).zip(&ranked) {
            *id = entry.item;
            *score = entry.score;
            written += 1;
        }
        for (id, score) in ids.iter_mut().zip(scores.iter_mut()).skip(written) {
            *id = PAD_ID;
            *score = PAD_SCORE;
        }
        ranked.clear();
        // Hand the allocation back to the heap for the next selection.
        self.heap = BinaryHeap::from(ranked);
        written
    }

    /// The selection best first.
    pub fn finish(&mut self) -> Vec<(ItemIndex, f32)> {
        let mut ranked = std::mem::take(&mut self.heap).into_vec();
        ranked.sort_unstable();
        let out = ranked.iter().map(|r| (r.item, r.score)).collect();
        ranked.clear();
        self.heap = BinaryHeap::from(ranked);
        out
    }
}

/// The `k` best items of `scores` (item `i` scores `scores[i]`), best first, ties broken by
/// the smaller item index, skipping items in `excluded` and NaN scores. A `k` larger than
/// the number of eligible items returns all of them.
///
/// `excluded` should be sorted ascending (as `UserTable::seen` is); an unsorted list is
/// sorted on a copy first.
pub fn top_k(scores: &[f32], k: usize, excluded: &[ItemIndex]) -> Vec<(ItemIndex, f32)> {
    let mut selector = TopK::new();
    selector.begin(k.min(scores.len()));
    if excluded.is_sorted() {
        selector.offer(scores, 0, excluded);
    } else {
        let mut sorted = excluded.to_vec();
        sorted.sort_unstable();
        selector.offer(scores, 0, &sorted);
    }
    selector.finish()
}
