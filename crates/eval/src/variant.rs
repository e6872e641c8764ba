//! What a compared system is to the protocol, and the adapter for score-every-item systems.

use std::error::Error as StdError;

use hyperrec_stage::{ItemId, ItemIndex};
use rayon::prelude::*;
use thiserror::Error;

use crate::query::QueryCase;
use crate::split::TrainingView;

/// Why a variant could not answer.
#[derive(Debug, Error)]
pub enum VariantError {
    /// The system behind the variant failed (a pipeline stage, a model).
    #[error("variant `{variant}` failed: {source}")]
    Failed {
        variant: String,
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// A scorer wrote NaN or +infinity for an item (-infinity means "never recommend").
    #[error("variant `{variant}` scored item {item} {score} for query {query}")]
    NonFiniteScore {
        variant: String,
        query: usize,
        item: ItemIndex,
        score: f32,
    },
}

impl VariantError {
    /// Wraps any error of the system behind `variant`.
    pub fn failed(variant: &str, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        VariantError::Failed {
            variant: variant.to_string(),
            source: source.into(),
        }
    }
}

/// A system compared by the protocol: it ranks candidates for queries.
///
/// A variant learns only from the [`TrainingView`] (build user tables, models and caches
/// from it, never from the held-out part) and returns, per query, at most `k` distinct
/// items, best first, none of them in the user's training part. The protocol checks those
/// rules and fails the run on a breach rather than silently repairing the list.
///
/// Pipeline variants implement this directly (batching queries through the pipeline as
/// they like); systems that score every item implement [`Scorer`] and are wrapped in
/// [`Scored`], which does candidate masking and top-k.
pub trait Variant: Send + Sync {
    /// The name reported in `eval.json` (`"popularity"`, `"fused_rerank"`).
    fn name(&self) -> &str;

    /// The top `k` candidates of every query of `queries`, in query order.
    fn recommend(
        &self,
        view: &TrainingView<'_>,
        queries: &[QueryCase],
        k: usize,
    ) -> Result<Vec<Vec<ItemIndex>>, VariantError>;
}

/// A system that scores every catalog item for a query.
pub trait Scorer: Send + Sync {
    /// Writes a score for every catalog item into `scores` (`[view.n_items()]`, zeroed on
    /// entry); higher is better, `f32::NEG_INFINITY` excludes an item.
    fn score(
        &self,
        view: &TrainingView<'_>,
        query: &QueryCase,
        scores: &mut [f32],
    ) -> Result<(), VariantError>;
}

/// Which items a [`Scored`] variant may recommend besides excluding training items.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restriction {
    /// Every catalog item not in the user's training part.
    AllItems,
    /// Only items of the query's genre (and not in the user's training part).
    QueryGenre,
}

/// A [`Scorer`] as a [`Variant`]: scores every item, drops non-candidates, and keeps the
/// top `k` by score (ties by the catalog's external item id, ascending). Queries are
/// scored in parallel.
pub struct Scored<S> {
    name: String,
    scorer: S,
    restriction: Restriction,
}

impl<S: Scorer> Scored<S> {
    /// Wraps `scorer` under `name`.
    pub fn new(name: impl Into<String>, scorer: S, restriction: Restriction) -> Self {
        Scored {
            name: name.into(),
            scorer,
            restriction,
        }
    }
}

impl<S: Scorer> Variant for Scored<S> {
    fn name(&self) -> &str {
        &self.name
    }

    fn recommend(
        &self,
        view: &TrainingView<'_>,
        queries: &[QueryCase],
        k: usize,
    ) -> Result<Vec<Vec<ItemIndex>>, VariantError> {
        let genres = view.genres();
        queries
            .par_iter()
            .enumerate()
            .map_init(
                || vec![0.0f32; view.n_items()],
                |scores, (q, query)| {
                    scores.fill(0.0);
                    self.scorer.score(view, query, scores)?;
                    let eligible = |item: ItemIndex| {
                        !view.is_training_item(query.user_row, item)
                            && match self.restriction {
                                Restriction::AllItems => true,
                                Restriction::QueryGenre => genres.contains(query.genre, item),
                            }
                    };
                    top_k(scores, k, eligible, |item| view.item_id(item)).map_err(
                        |(item, score)| VariantError::NonFiniteScore {
                            variant: self.name.clone(),
                            query: q,
                            item,
                            score,
                        },
                    )
                },
            )
            .collect()
    }
}

/// The `k` eligible items with the highest scores, best first, ties by external id
/// ascending; items scored `-inf` are never returned. Fails with the first item whose
/// score is NaN or `+inf`.
pub fn top_k(
    scores: &[f32],
    k: usize,
    eligible: impl Fn(ItemIndex) -> bool,
    id_of: impl Fn(ItemIndex) -> ItemId,
) -> Result<Vec<ItemIndex>, (ItemIndex, f32)> {
    // Kept best first; k is small (10), so insertion into a short sorted list is cheapest.
    let mut best: Vec<(f32, ItemId, ItemIndex)> = Vec::with_capacity(k + 1);
    let better = |a: &(f32, ItemId, ItemIndex), b: &(f32, ItemId, ItemIndex)| {
        a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
    };
    for (item, &score) in scores.iter().enumerate() {
        let item = item as ItemIndex;
        if score.is_nan() || score == f32::INFINITY {
            return Err((item, score));
        }
        if k == 0 || score == f32::NEG_INFINITY || !eligible(item) {
            continue;
        }
        let entry = (score, id_of(item), item);
        if best.len() == k && !better(&entry, &best[k - 1]) {
            continue;
        }
        let at = best.partition_point(|b| better(b, &entry));
        best.insert(at, entry);
        best.truncate(k);
    }
    Ok(best.into_iter().map(|(_, _, item)| item).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_by_score_then_external_id_and_skips_ineligible_items() {
        // External ids are the reverse of the rows, so ties must follow ids, not rows.
        let scores = [1.0, 3.0, 3.0, f32::NEG_INFINITY, 2.0, 5.0];
        let id_of = |item: ItemIndex| ItemId(100 - item);
        let top = top_k(&scores, 3, |item| item != 5, id_of).expect("finite scores");
        assert_eq!(top, vec![2, 1, 4]);
        let all = top_k(&scores, 10, |_| true, id_of).expect("finite scores");
        assert_eq!(all, vec![5, 2, 1, 4, 0]);
        assert_eq!(top_k(&scores, 0, |_| true, id_of), Ok(vec![]));
    }

    #[test]
    fn top_k_rejects_nan_and_positive_infinity() {
        let id_of = |item: ItemIndex| ItemId(item);
        let nan = top_k(&[1.0, f32::NAN], 2, |_| true, id_of);
        assert!(matches!(nan, Err((1, s)) if s.is_nan()));
        let inf = top_k(&[f32::INFINITY], 2, |_| true, id_of);
        assert_eq!(inf, Err((0, f32::INFINITY)));
    }
}
