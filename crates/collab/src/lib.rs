//! Collaborative item-item models learned from ratings: co-rating cosine (item-kNN) and EASE.
//!
//! Both are fitted on a binary training matrix ([`Interactions`]: a rating present = 1) and
//! expose the same two reads through [`ItemItemModel`]: a row of item-item weights against
//! the whole catalog (what the temporal cache holds per hot item) and a user's scores for
//! every item given their history (what the evaluation ranks).

mod ease;
mod interactions;
mod item_knn;
mod matrix;

use hyperrec_stage::ItemIndex;
use thiserror::Error;

pub use ease::Ease;
pub use interactions::Interactions;
pub use item_knn::ItemKnn;
pub use matrix::ItemMatrix;

/// What fitting or reading a collaborative model can fail at.
#[derive(Debug, Error)]
pub enum CollabError {
    #[error("item {item} is outside the catalog of {n_items} items")]
    ItemOutOfRange { item: ItemIndex, n_items: usize },
    #[error("rating {rating} of item {item} is not a finite number")]
    InvalidRating { item: ItemIndex, rating: f32 },
    #[error("output holds {found} scores, the catalog has {expected} items")]
    OutputLength { expected: usize, found: usize },
    #[error("EASE regularization must be finite and positive, got {0}")]
    InvalidLambda(f64),
    #[error("EASE Gram matrix is not numerically positive definite")]
    NotPositiveDefinite,
}

/// An item-item model whose rows can serve as similarity rows and whose user scores can
/// rank a catalog.
pub trait ItemItemModel: Send + Sync {
    /// Short stable name ("item_knn", "ease").
    fn name(&self) -> &'static str;

    /// Number of catalog items rows and scores are written against.
    fn n_items(&self) -> usize;

    /// Writes `item`'s weights against every catalog item into `out` (`[n_items]`); zero
    /// for items outside training.
    fn row(&self, item: ItemIndex, out: &mut [f32]) -> Result<(), CollabError>;

    /// Writes every catalog item's score for a user with `history` (`(item, rating)`, time
    /// order) into `out` (`[n_items]`).
    fn score_user(&self, history: &[(ItemIndex, f32)], out: &mut [f32]) -> Result<(), CollabError>;

    /// Adds `sum of weight * row(item)` over `weighted` into `out` (`[n_items]`): the
    /// temporal cache's history term, combined once instead of row by row.
    fn accumulate(&self, weighted: &[(ItemIndex, f32)], out: &mut [f32])
    -> Result<(), CollabError>;
}

impl ItemItemModel for ItemKnn {
    fn name(&self) -> &'static str {
        "item_knn"
    }
    fn n_items(&self) -> usize {
        self.matrix().n_items()
    }
    fn row(&self, item: ItemIndex, out: &mut [f32]) -> Result<(), CollabError> {
        ItemKnn::row(self, item, out)
    }
    fn score_user(&self, history: &[(ItemIndex, f32)], out: &mut [f32]) -> Result<(), CollabError> {
        ItemKnn::score_user(self, history, out)
    }
    fn accumulate(
        &self,
        weighted: &[(ItemIndex, f32)],
        out: &mut [f32],
    ) -> Result<(), CollabError> {
        self.matrix().accumulate(weighted, out)
    }
}

impl ItemItemModel for Ease {
    fn name(&self) -> &'static str {
        "ease"
    }
    fn n_items(&self) -> usize {
        self.matrix().n_items()
    }
    fn row(&self, item: ItemIndex, out: &mut [f32]) -> Result<(), CollabError> {
        Ease::row(self, item, out)
    }
    fn score_user(&self, history: &[(ItemIndex, f32)], out: &mut [f32]) -> Result<(), CollabError> {
        Ease::score_user(self, history, out)
    }
    fn accumulate(
        &self,
        weighted: &[(ItemIndex, f32)],
        out: &mut [f32],
    ) -> Result<(), CollabError> {
        self.matrix().accumulate(weighted, out)
    }
}
