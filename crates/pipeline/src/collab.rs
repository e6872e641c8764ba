//! Collaborative similarity rows for the temporal cache.
//!
//! With collaborative rows, the cache's history prior becomes an item-item collaborative
//! score (item-kNN or EASE) of the user's recent history, served from the hot rows: the
//! signal text embeddings alone do not carry (see the evaluation in the README).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use hyperrec_cache::RowProvider;
use hyperrec_catalog::Dataset;
use hyperrec_collab::{Ease, Interactions, ItemItemModel, ItemKnn};
use hyperrec_stage::ItemIndex;

use crate::{CacheRows, PipelineError};

/// The last fitted model and what it was fitted on: pipelines built again over the same
/// ratings (an evaluation building one pipeline per variant, a restart of the same data)
/// reuse it instead of refitting (an EASE fit on MovieLens small takes about 30 s on 2
/// cores). One slot: the model is large (`n_items^2` f32) and the data rarely changes.
static LAST_FIT: parking_lot::Mutex<Option<(FitKey, Arc<dyn ItemItemModel>)>> =
    parking_lot::Mutex::new(None);

/// What determines a fitted model: the row kind (with its lambda's bits) and a hash of every
/// (user, item, rating) the model sees, with the catalog size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FitKey {
    rows: u8,
    lambda_bits: u64,
    n_items: usize,
    ratings: usize,
    digest: u64,
}

impl FitKey {
    fn new(rows: CacheRows, dataset: &Dataset) -> FitKey {
        let (kind, lambda) = match rows {
            CacheRows::Embedding => (0, 0.0),
            CacheRows::ItemKnn => (1, 0.0),
            CacheRows::Ease { lambda } => (2, lambda),
        };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let mut ratings = 0;
        for (user, history) in dataset.user_histories() {
            user.hash(&mut hasher);
            for entry in &history {
                (entry.item, entry.rating.to_bits()).hash(&mut hasher);
                ratings += 1;
            }
        }
        FitKey {
            rows: kind,
            lambda_bits: lambda.to_bits(),
            n_items: dataset.catalog.len(),
            ratings,
            digest: hasher.finish(),
        }
    }
}

/// Fits the model `rows` asks for on every rating of `dataset` (`None` for embedding rows),
/// or returns the previous fit when it was made on the same ratings with the same settings.
pub(crate) fn fit(
    rows: CacheRows,
    dataset: &Dataset,
) -> Result<Option<Arc<dyn ItemItemModel>>, PipelineError> {
    if rows == CacheRows::Embedding {
        return Ok(None);
    }
    let key = FitKey::new(rows, dataset);
    if let Some((last, model)) = LAST_FIT.lock().as_ref()
        && *last == key
    {
        return Ok(Some(model.clone()));
    }
    let model = fit_fresh(rows, dataset)?;
    if let Some(model) = &model {
        *LAST_FIT.lock() = Some((key, model.clone()));
    }
    Ok(model)
}

/// Fits the model `rows` asks for on every rating of `dataset`.
fn fit_fresh(
    rows: CacheRows,
    dataset: &Dataset,
) -> Result<Option<Arc<dyn ItemItemModel>>, PipelineError> {
    if rows == CacheRows::Embedding {
        return Ok(None);
    }
    let collab = |e: hyperrec_collab::CollabError| {
        PipelineError::Config(format!("fitting {rows:?} cache rows: {e}"))
    };
    let mut interactions = Interactions::new(dataset.catalog.len());
    for (_, history) in dataset.user_histories() {
        interactions
            .push_user(history.iter().map(|h| (h.item, h.rating)))
            .map_err(collab)?;
    }
    let model: Arc<dyn ItemItemModel> = match rows {
        CacheRows::Embedding => return Ok(None),
        CacheRows::ItemKnn => Arc::new(ItemKnn::fit(&interactions).map_err(collab)?),
        CacheRows::Ease { lambda } => Arc::new(Ease::fit(&interactions, lambda).map_err(collab)?),
    };
    Ok(Some(model))
}

/// An item-item model as a row source of the cache.
pub(crate) struct CollabRows(pub Arc<dyn ItemItemModel>);

impl RowProvider for CollabRows {
    fn row(&self, item: ItemIndex, out: &mut [f32]) {
        // Only fails for an item outside the catalog, which the cache never asks for; an
        // all-zero row (no collaborative evidence) is the honest answer if it ever did.
        if self.0.row(item, out).is_err() {
            out.fill(0.0);
        }
    }

    fn accumulate(&self, weighted: &[(ItemIndex, f32)], out: &mut [f32]) {
        let mut fallback = vec![0.0; out.len()];
        if self.0.accumulate(weighted, &mut fallback).is_ok() {
            out.iter_mut().zip(&fallback).for_each(|(o, f)| *o += f);
        }
    }
}
