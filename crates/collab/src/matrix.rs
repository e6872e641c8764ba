//! Dense item-item weights restricted to the items that appear in training.

use hyperrec_stage::ItemIndex;
use rayon::prelude::*;

use crate::{CollabError, Interactions};

/// Marks a catalog item that never appears in training (it has no row or column).
const INACTIVE: u32 = u32::MAX;

/// Item-item weights over the *active* items (those with at least one training
/// interaction), stored dense and row-major: `weight(a, b)` is how much having `a` in a
/// history adds to `b`'s score.
///
/// Dense-over-active is exact and simple to read rows from (one contiguous slice per item,
/// which is what the temporal cache uploads). On MovieLens small it is 8,230 active items
/// of 9,742, i.e. 271 MB of f32 instead of 380 MB for the full catalog. Items outside
/// training read as zero rows and columns.
#[derive(Clone, Debug, PartialEq)]
pub struct ItemMatrix {
    /// Compact row -> catalog item, ascending.
    active: Vec<ItemIndex>,
    /// Catalog item -> compact row, or [`INACTIVE`].
    compact: Vec<u32>,
    /// `[n_active, n_active]` row-major.
    weights: Vec<f32>,
}

impl ItemMatrix {
    /// The active items of `interactions` (ascending) and the catalog -> compact map.
    pub(crate) fn active_items(interactions: &Interactions) -> (Vec<ItemIndex>, Vec<u32>) {
        let counts = interactions.item_counts();
        let mut active = Vec::new();
        let mut compact = vec![INACTIVE; interactions.n_items()];
        for (item, &count) in counts.iter().enumerate() {
            if count > 0 {
                compact[item] = active.len() as u32;
                active.push(item as ItemIndex);
            }
        }
        (active, compact)
    }

    /// Wraps `weights` (`[active.len(), active.len()]`, row-major).
    pub(crate) fn new(active: Vec<ItemIndex>, compact: Vec<u32>, weights: Vec<f32>) -> Self {
        debug_assert_eq!(weights.len(), active.len() * active.len());
        ItemMatrix {
            active,
            compact,
            weights,
        }
    }

    /// Number of catalog items rows are written against.
    pub fn n_items(&self) -> usize {
        self.compact.len()
    }

    /// The items that have rows, ascending.
    pub fn active_items_slice(&self) -> &[ItemIndex] {
        &self.active
    }

    /// Bytes held by the weights.
    pub fn weight_bytes(&self) -> usize {
        self.weights.len() * std::mem::size_of::<f32>()
    }

    /// `weight(from, to)`; zero when either item is outside training or the catalog.
    pub fn weight(&self, from: ItemIndex, to: ItemIndex) -> f32 {
        match (self.compact_of(from), self.compact_of(to)) {
            (Some(a), Some(b)) => self.weights[a * self.active.len() + b],
            _ => 0.0,
        }
    }

    fn compact_of(&self, item: ItemIndex) -> Option<usize> {
        match self.compact.get(item as usize) {
            Some(&c) if c != INACTIVE => Some(c as usize),
            _ => None,
        }
    }

    fn compact_row(&self, compact: usize) -> &[f32] {
        let n = self.active.len();
        &self.weights[compact * n..(compact + 1) * n]
    }

    fn check_output(&self, out: &[f32]) -> Result<(), CollabError> {
        if out.len() == self.n_items() {
            Ok(())
        } else {
            Err(CollabError::OutputLength {
                expected: self.n_items(),
                found: out.len(),
            })
        }
    }

    /// Writes `item`'s weights against every catalog item into `out` (`[n_items]`), zero
    /// for items outside training (all zero when `item` itself is outside training).
    pub fn row(&self, item: ItemIndex, out: &mut [f32]) -> Result<(), CollabError> {
        self.check_output(out)?;
        if item as usize >= self.n_items() {
            return Err(CollabError::ItemOutOfRange {
                item,
                n_items: self.n_items(),
            });
        }
        out.fill(0.0);
        if let Some(c) = self.compact_of(item) {
            for (&target, &w) in self.active.iter().zip(self.compact_row(c)) {
                out[target as usize] = w;
            }
        }
        Ok(())
    }

    /// Writes `sum over items of row(item)` into `out` (`[n_items]`). Each distinct item
    /// counts once however often it is listed; items outside training add nothing.
    pub fn sum_rows(&self, items: &[ItemIndex], out: &mut [f32]) -> Result<(), CollabError> {
        let mut weighted: Vec<(ItemIndex, f32)> = items.iter().map(|&i| (i, 1.0)).collect();
        weighted.sort_unstable_by_key(|&(item, _)| item);
        weighted.dedup_by_key(|&mut (item, _)| item);
        out.fill(0.0);
        self.accumulate(&weighted, out)
    }

    /// Adds `sum of weight * row(item)` over `weighted` into `out` (`[n_items]`), the
    /// shape of the temporal cache's history term. Rows are combined over the active items
    /// first and scattered once. Fails, leaving `out` unchanged, on an item outside the
    /// catalog or a wrong output length.
    pub fn accumulate(
        &self,
        weighted: &[(ItemIndex, f32)],
        out: &mut [f32],
    ) -> Result<(), CollabError> {
        self.check_output(out)?;
        let mut rows: Vec<(usize, f32)> = Vec::with_capacity(weighted.len());
        for &(item, weight) in weighted {
            if item as usize >= self.n_items() {
                return Err(CollabError::ItemOutOfRange {
                    item,
                    n_items: self.n_items(),
                });
            }
            rows.extend(self.compact_of(item).map(|c| (c, weight)));
        }
        if rows.is_empty() {
            return Ok(());
        }
        let mut acc = vec![0.0f32; self.active.len()];
        for &(c, weight) in &rows {
            for (a, &w) in acc.iter_mut().zip(self.compact_row(c)) {
                *a += weight * w;
            }
        }
        for (&target, &score) in self.active.iter().zip(&acc) {
            out[target as usize] += score;
        }
        Ok(())
    }
}

/// Co-occurrence counts `X^T X` of the binary interaction matrix over the active items,
/// `[n_active, n_active]` row-major (symmetric, so also column-major); the diagonal holds
/// each item's number of users. Rows are filled in parallel from an item -> users index.
/// Counts are exact in f32 while there are fewer than 2^24 users.
pub(crate) fn cooccurrence(
    interactions: &Interactions,
    compact: &[u32],
    n_active: usize,
) -> Vec<f32> {
    // Each user's items as compact rows, and each compact item's users.
    let user_rows: Vec<Vec<usize>> = (0..interactions.n_users())
        .map(|user| {
            let (items, _) = interactions.user(user);
            // Every item of the table is active by construction of `compact`.
            items
                .iter()
                .map(|&item| compact[item as usize] as usize)
                .collect()
        })
        .collect();
    let mut users_of: Vec<Vec<usize>> = vec![Vec::new(); n_active];
    for (user, rows) in user_rows.iter().enumerate() {
        for &a in rows {
            users_of[a].push(user);
        }
    }

    let mut counts = vec![0.0f32; n_active * n_active];
    if n_active == 0 {
        return counts;
    }
    counts
        .par_chunks_mut(n_active)
        .zip(users_of.par_iter())
        .for_each(|(row, users)| {
            for &user in users {
                for &b in &user_rows[user] {
                    row[b] += 1.0;
                }
            }
        });
    counts
}
