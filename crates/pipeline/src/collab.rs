//! Collaborative similarity rows for the temporal cache.
//!
//! With collaborative rows, the cache's history prior becomes an item-item collaborative
//! score (item-kNN or EASE) of the user's recent history, served from the hot rows: the
//! signal text embeddings alone do not carry (see the evaluation in the README).

use std::sync::Arc;

use hyperrec_cache::RowProvider;
use hyperrec_catalog::Dataset;
use hyperrec_collab::{Ease, Interactions, ItemItemModel, ItemKnn};
use hyperrec_stage::ItemIndex;

use crate::{CacheRows, PipelineError};

/// Fits the model `rows` asks for on every rating of `dataset` (`None` for embedding rows).
pub(crate) fn fit(
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
