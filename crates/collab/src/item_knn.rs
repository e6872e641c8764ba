//! Item-kNN: cosine similarity over binary co-ratings.

use hyperrec_stage::ItemIndex;
use rayon::prelude::*;

use crate::matrix::{ItemMatrix, cooccurrence};
use crate::{CollabError, Interactions};

/// Item-item cosine over the binary training matrix:
/// `sim(a, b) = |users(a) ∩ users(b)| / sqrt(|users(a)| * |users(b)|)` for `a != b`, and
/// `sim(a, a) = 0` (an item is not its own neighbour, so a row never boosts its own item).
///
/// Every co-rated pair is kept (no top-N truncation): the neighbourhood is the whole
/// catalog, as in the reference protocol. Stored dense over the items that appear in
/// training ([`ItemMatrix`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ItemKnn {
    similarities: ItemMatrix,
}

impl ItemKnn {
    /// History entries rated at least this are the "liked" items a user is scored from.
    pub const LIKE_THRESHOLD: f32 = 4.0;

    /// Fits the similarities from `interactions` (every rating counts as an interaction,
    /// whatever its value).
    pub fn fit(interactions: &Interactions) -> Result<Self, CollabError> {
        let (active, compact) = ItemMatrix::active_items(interactions);
        let n = active.len();
        let mut weights = cooccurrence(interactions, &compact, n);
        let norms: Vec<f32> = (0..n).map(|a| weights[a * n + a].sqrt()).collect();
        if n > 0 {
            weights.par_chunks_mut(n).enumerate().for_each(|(a, row)| {
                for (b, w) in row.iter_mut().enumerate() {
                    // Active items have at least one user, so norms are >= 1.
                    *w = if a == b {
                        0.0
                    } else {
                        *w / (norms[a] * norms[b])
                    };
                }
            });
        }
        Ok(ItemKnn {
            similarities: ItemMatrix::new(active, compact, weights),
        })
    }

    /// The similarity matrix.
    pub fn matrix(&self) -> &ItemMatrix {
        &self.similarities
    }

    /// Writes `item`'s similarities to every catalog item into `out` (`[n_items]`).
    pub fn row(&self, item: ItemIndex, out: &mut [f32]) -> Result<(), CollabError> {
        self.similarities.row(item, out)
    }

    /// Writes every catalog item's score for a user with `history` (`(item, rating)`, in
    /// time order) into `out`: the sum of its similarities to the distinct history items
    /// whose latest rating is at least [`ItemKnn::LIKE_THRESHOLD`].
    pub fn score_user(
        &self,
        history: &[(ItemIndex, f32)],
        out: &mut [f32],
    ) -> Result<(), CollabError> {
        let liked = latest_ratings(history)
            .into_iter()
            .filter(|&(_, rating)| rating >= Self::LIKE_THRESHOLD)
            .map(|(item, _)| item)
            .collect::<Vec<_>>();
        self.similarities.sum_rows(&liked, out)
    }
}

/// Each distinct item of `history` with the rating of its last occurrence.
pub(crate) fn latest_ratings(history: &[(ItemIndex, f32)]) -> Vec<(ItemIndex, f32)> {
    let mut latest: Vec<(ItemIndex, f32)> = history.iter().rev().copied().collect();
    // Stable: the first of each run of equal items is the latest occurrence.
    latest.sort_by_key(|&(item, _)| item);
    latest.dedup_by_key(|&mut (item, _)| item);
    latest
}
