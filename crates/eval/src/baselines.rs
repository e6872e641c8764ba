//! The baselines every pipeline variant is compared with.

use std::time::Instant;

use hyperrec_collab::{CollabError, Ease, ItemItemModel, ItemKnn};
use hyperrec_stage::ItemIndex;

use crate::query::QueryCase;
use crate::report::FitTiming;
use crate::split::TrainingView;
use crate::variant::{Restriction, Scored, Scorer, Variant, VariantError};

/// Scores items by their number of training ratings.
#[derive(Clone, Copy, Debug, Default)]
pub struct Popularity;

impl Scorer for Popularity {
    fn score(
        &self,
        view: &TrainingView<'_>,
        _query: &QueryCase,
        scores: &mut [f32],
    ) -> Result<(), VariantError> {
        for (score, &count) in scores.iter_mut().zip(view.popularity()) {
            *score = count as f32;
        }
        Ok(())
    }
}

/// Scores items with a collaborative model from the user's training history.
pub struct Collaborative<M> {
    model: M,
}

impl<M: ItemItemModel> Collaborative<M> {
    /// Wraps a model fitted on the training part.
    pub fn new(model: M) -> Self {
        Collaborative { model }
    }

    /// The wrapped model.
    pub fn model(&self) -> &M {
        &self.model
    }
}

impl<M: ItemItemModel> Scorer for Collaborative<M> {
    fn score(
        &self,
        view: &TrainingView<'_>,
        query: &QueryCase,
        scores: &mut [f32],
    ) -> Result<(), VariantError> {
        let history: Vec<(ItemIndex, f32)> = view
            .history(query.user_row)
            .iter()
            .map(|h| (h.item, h.rating))
            .collect();
        self.model
            .score_user(&history, scores)
            .map_err(|e| VariantError::failed(self.model.name(), e))
    }
}

/// `popularity`: most-rated items overall, whatever the query.
pub fn popularity() -> Scored<Popularity> {
    Scored::new("popularity", Popularity, Restriction::AllItems)
}

/// `genre_popularity`: most-rated items of the query's genre.
pub fn genre_popularity() -> Scored<Popularity> {
    Scored::new("genre_popularity", Popularity, Restriction::QueryGenre)
}

/// `item_knn`: item-kNN scores from the user's liked training items, in the query's genre.
pub fn item_knn(model: ItemKnn) -> Scored<Collaborative<ItemKnn>> {
    Scored::new(
        "item_knn",
        Collaborative::new(model),
        Restriction::QueryGenre,
    )
}

/// `ease`: EASE scores from the user's training items, in the query's genre.
pub fn ease(model: Ease) -> Scored<Collaborative<Ease>> {
    Scored::new("ease", Collaborative::new(model), Restriction::QueryGenre)
}

/// The reference protocol's NDCG@10 for each baseline (an independent implementation on
/// the same data), which ours must agree with within [`REFERENCE_TOLERANCE`].
pub const REFERENCE_NDCG_AT_10: [(&str, f64); 7] = [
    ("popularity", 0.041),
    ("genre_popularity", 0.147),
    ("item_knn", 0.189),
    ("ease", 0.212),
    ("semantic", 0.005),
    ("user", 0.005),
    ("fused", 0.013),
];

/// How far a baseline may be from its reference NDCG@10.
pub const REFERENCE_TOLERANCE: f64 = 0.005;

/// The reference NDCG@10 of variant `name`, if the reference reports one.
pub fn reference_ndcg(name: &str) -> Option<f64> {
    REFERENCE_NDCG_AT_10
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, v)| v)
}

/// The four baselines, ready to run, and how long their models took to fit.
pub struct Baselines {
    /// `popularity`, `genre_popularity`, `item_knn`, `ease`, in report order.
    pub variants: Vec<Box<dyn Variant>>,
    pub fits: Vec<FitTiming>,
}

/// Names of the baselines, in report order.
pub const BASELINE_NAMES: [&str; 4] = ["popularity", "genre_popularity", "item_knn", "ease"];

/// Fits the collaborative models on the training part (item-kNN, and EASE with
/// [`Ease::DEFAULT_LAMBDA`]) and returns the baselines whose name `wanted` accepts, in
/// report order; models of unwanted baselines are not fitted.
pub fn fit_baselines(
    view: &TrainingView<'_>,
    wanted: impl Fn(&str) -> bool,
) -> Result<Baselines, CollabError> {
    let mut baselines = Baselines {
        variants: Vec::new(),
        fits: Vec::new(),
    };
    if wanted("popularity") {
        baselines.variants.push(Box::new(popularity()));
    }
    if wanted("genre_popularity") {
        baselines.variants.push(Box::new(genre_popularity()));
    }
    if wanted("item_knn") {
        let start = Instant::now();
        let model = ItemKnn::fit(view.interactions())?;
        baselines.fits.push(FitTiming {
            name: "item_knn".to_string(),
            seconds: start.elapsed().as_secs_f64(),
        });
        baselines.variants.push(Box::new(item_knn(model)));
    }
    if wanted("ease") {
        let start = Instant::now();
        let model = Ease::fit(view.interactions(), Ease::DEFAULT_LAMBDA)?;
        baselines.fits.push(FitTiming {
            name: "ease".to_string(),
            seconds: start.elapsed().as_secs_f64(),
        });
        baselines.variants.push(Box::new(ease(model)));
    }
    Ok(baselines)
}
