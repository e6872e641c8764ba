//! Pipeline variants: the real [`Pipeline`] built on the training part only, queried through
//! [`Pipeline::recommend_batch`] (the product path) in batches.
//!
//! Every variant gets a [`Dataset`] that holds only training ratings (the catalog, with its
//! texts and tags, is not split), the item embeddings of the real encoder and its own
//! [`PipelineConfig`]. The pipeline excludes the user's seen (= training) items and scores
//! every item exactly, so its candidates are the protocol's. A pipeline is built when its
//! variant runs and dropped after, so only one hot table is in memory at a time.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyperrec_catalog::ItemEmbeddings;
use hyperrec_catalog::movielens::{Dataset, Rating};
use hyperrec_encoder::{DEFAULT_QUERY_CACHE_CAPACITY, Encoder, QueryEncoder, resolve_model};
use hyperrec_pipeline::{CacheRows, Pipeline, PipelineConfig, item_embeddings};
use hyperrec_rerank::RerankWeights;
use hyperrec_stage::{Context, ItemIndex, Request};

use crate::query::QueryCase;
use crate::split::TrainingView;
use crate::variant::{Variant, VariantError};

/// Requests per [`Pipeline::recommend_batch`] call.
pub const EVAL_BATCH: usize = 64;

/// EASE's regularization for collaborative cache rows: the reference's, fixed before any
/// evaluation (not tuned on the held-out part).
pub const EASE_LAMBDA: f64 = 300.0;

/// A [`Dataset`] with `view`'s catalog and only its training ratings.
pub fn training_dataset(view: &TrainingView<'_>, tags: &Dataset) -> Dataset {
    let mut ratings = Vec::new();
    for (row, &user) in view.users().iter().enumerate() {
        ratings.extend(view.history(row).iter().map(|h| Rating {
            user,
            item: h.item,
            rating: h.rating,
            timestamp: h.timestamp,
        }));
    }
    Dataset {
        catalog: view.catalog().clone(),
        ratings,
        tags: tags.tags.clone(),
        diagnostics: Vec::new(),
    }
}

/// What every pipeline variant shares: the training-only dataset, the encoder and the item
/// embeddings (computed once, stored, reused).
pub struct PipelineInputs {
    pub dataset: Arc<Dataset>,
    pub encoder: Arc<QueryEncoder>,
    pub items: ItemEmbeddings,
}

/// Loads the encoder `model` and builds the pipeline inputs over `view`'s training part;
/// the item embeddings are stored at `index_path` and reused while the model and catalog
/// are unchanged.
pub fn pipeline_inputs(
    full: &Dataset,
    view: &TrainingView<'_>,
    index_path: &Path,
    model: &str,
) -> Result<PipelineInputs, VariantError> {
    let failed = |e: &dyn std::fmt::Display| VariantError::failed("pipeline inputs", e.to_string());
    let files = resolve_model(model).map_err(|e| failed(&e))?;
    let encoder = Arc::new(Encoder::load(&files).map_err(|e| failed(&e))?);
    let dataset = training_dataset(view, full);
    let (items, _) = item_embeddings(&dataset, &encoder, &files.fingerprint, index_path, false)
        .map_err(|e| failed(&e))?;
    let capacity = NonZeroUsize::new(DEFAULT_QUERY_CACHE_CAPACITY).unwrap_or(NonZeroUsize::MIN);
    Ok(PipelineInputs {
        dataset: Arc::new(dataset),
        encoder: Arc::new(QueryEncoder::new(encoder, capacity)),
        items,
    })
}

/// Rerank weights whose attention does not move the scores (`score_mix.attention = 0`):
/// the final order is retrieval's. Written to `dir` so a config can point at it.
pub fn rerank_off_weights(dim: usize, heads: usize, dir: &Path) -> Result<PathBuf, VariantError> {
    let mut weights = RerankWeights::untrained(dim, heads);
    weights.score_mix.attention = 0.0;
    let path = dir.join("rerank-off.safetensors");
    weights
        .save(&path)
        .map_err(|e| VariantError::failed("rerank-off", e))?;
    Ok(path)
}

/// The configurations compared, by variant name: `semantic` (query only), `user` (user
/// only), `fused` (both, with the untrained embedding history prior; no rerank effect),
/// `fused_rerank` and `fused_rerank_context` (the untrained product defaults, context =
/// time of day). `trained` comes from `hyperrec train` ([`crate::trained`]).
pub fn untrained_configs(rerank_off: &Path) -> Vec<(&'static str, PipelineConfig, bool)> {
    let base = PipelineConfig::default();
    let off = Some(rerank_off.to_path_buf());
    let mut semantic = PipelineConfig {
        alpha: 1.0,
        rerank_weights: off.clone(),
        ..base.clone()
    };
    semantic.cache.history_weight = 0.0;
    let mut user = PipelineConfig {
        alpha: 0.0,
        rerank_weights: off.clone(),
        ..base.clone()
    };
    user.cache.history_weight = 0.0;
    let fused = PipelineConfig {
        rerank_weights: off,
        ..base.clone()
    };
    vec![
        ("semantic", semantic, false),
        ("user", user, false),
        ("fused", fused, false),
        ("fused_rerank", base.clone(), false),
        ("fused_rerank_context", base, true),
    ]
}

/// A pipeline configuration as a [`Variant`].
pub struct PipelineVariant {
    name: String,
    inputs: Arc<PipelineInputs>,
    config: PipelineConfig,
    /// Send the query's time of day as request context.
    with_context: bool,
}

impl PipelineVariant {
    pub fn new(
        name: impl Into<String>,
        inputs: Arc<PipelineInputs>,
        config: PipelineConfig,
        with_context: bool,
    ) -> Self {
        PipelineVariant {
            name: name.into(),
            inputs,
            config,
            with_context,
        }
    }

    /// Whether this configuration fits a collaborative model when built.
    pub fn collaborative(&self) -> bool {
        self.config.cache.rows != CacheRows::Embedding
    }
}

impl Variant for PipelineVariant {
    fn name(&self) -> &str {
        &self.name
    }

    fn recommend(
        &self,
        view: &TrainingView<'_>,
        queries: &[QueryCase],
        k: usize,
    ) -> Result<Vec<Vec<ItemIndex>>, VariantError> {
        let failed = |e: hyperrec_pipeline::PipelineError| VariantError::failed(&self.name, e);
        let mut config = self.config.clone();
        if config.cache.genre_boost != 0.0 && config.cache.genres.is_none() {
            config.cache.set_genres_from(view.catalog());
        }
        let mut pipeline = Pipeline::build(
            self.inputs.dataset.clone(),
            self.inputs.encoder.clone(),
            self.inputs.items.clone(),
            config,
        )
        .map_err(failed)?;
        let catalog = view.catalog();
        let mut lists = Vec::with_capacity(queries.len());
        for chunk in queries.chunks(EVAL_BATCH) {
            let requests: Vec<Request> = chunk
                .iter()
                .map(|query| Request {
                    user: query.user,
                    query: query.text.clone(),
                    context: Context {
                        time_of_day: self.with_context.then_some(query.time_of_day),
                        ..Context::default()
                    },
                    k,
                    exclude_seen: true,
                })
                .collect();
            for response in pipeline.recommend_batch(&requests).map_err(failed)? {
                let items = response
                    .items
                    .iter()
                    .map(|item| {
                        catalog.index_of(item.id).ok_or_else(|| {
                            VariantError::failed(
                                &self.name,
                                format!("the pipeline returned unknown item {}", item.id.0),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                lists.push(items);
            }
        }
        Ok(lists)
    }
}
