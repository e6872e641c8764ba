use std::path::PathBuf;
use std::sync::Arc;

use hyperrec_cache::{CacheConfig, GenreIndex, RowSource};
use hyperrec_catalog::ProfileRule;
use hyperrec_fusion::FusionConfig;
use hyperrec_rerank::RerankConfig;
use hyperrec_similarity::SimilarityConfig;
use hyperrec_stage::{ItemId, Request};

use crate::PipelineError;

/// Largest `k` a request may ask for (and the largest retrieval candidate count).
pub const MAX_K: usize = 1000;

/// Longest query accepted, in characters (the encoder truncates at 256 word pieces anyway;
/// this bounds the work a single request can cause).
pub const MAX_QUERY_CHARS: usize = 2_000;

/// Where the pipeline runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The GPU when one is present, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

/// What the temporal cache's similarity rows hold.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum CacheRows {
    /// Cosine of item embeddings: works at any catalog size, needs no ratings.
    #[default]
    Embedding,
    /// Cosine over binary co-ratings (item-kNN), fitted on the loaded ratings.
    ItemKnn,
    /// EASE item-item weights (Steck 2019), fitted on the loaded ratings. Dense over the
    /// rated items: for catalogs of some ten thousand items.
    Ease { lambda: f64 },
}

/// The temporal cache's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheSettings {
    /// Hot items that get precomputed similarity rows.
    pub hot_items: usize,
    /// Half-life of popularity, in seconds.
    pub half_life_secs: f64,
    /// Recent history items that form the history prior.
    pub history_len: usize,
    /// Weight of the history prior in retrieval scores.
    pub history_weight: f32,
    /// `(offset, slope)`: a history item weighs `offset + slope * (rating - 3) / 2` in the
    /// prior. `(0, 1)` (default) centres on a neutral 3; `(1, 0)` weighs every rated item
    /// alike, which with [`CacheRows::Ease`] makes the prior EASE's own user score.
    pub history_gate: [f32; 2],
    /// Added to the retrieval score of every item of a genre the query names or the
    /// context hints at (0 disables it); needs [`CacheSettings::genres`].
    pub genre_boost: f32,
    /// Items per genre for the boost ([`CacheSettings::set_genres_from`] fills it).
    pub genres: Option<Arc<GenreIndex>>,
    /// What the rows hold.
    pub rows: CacheRows,
}

impl CacheSettings {
    /// Fills [`CacheSettings::genres`] from `catalog`'s item genres, so the genre boost can
    /// apply (the "(no genres listed)" marker is never a query word, so it never matches).
    pub fn set_genres_from(&mut self, catalog: &hyperrec_catalog::movielens::Catalog) {
        self.genres = Some(genre_index(catalog));
    }
}

/// The catalog's genres as the cache's [`GenreIndex`].
fn genre_index(catalog: &hyperrec_catalog::movielens::Catalog) -> Arc<GenreIndex> {
    let mut by_genre: std::collections::BTreeMap<&str, Vec<hyperrec_stage::ItemIndex>> =
        Default::default();
    for (item, entry) in catalog.items().iter().enumerate() {
        for genre in &entry.genres {
            by_genre
                .entry(genre.as_str())
                .or_default()
                .push(item as hyperrec_stage::ItemIndex);
        }
    }
    Arc::new(GenreIndex::new(
        by_genre
            .into_iter()
            .map(|(name, items)| (name.to_owned(), items)),
    ))
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            hot_items: 10_000,
            half_life_secs: 30.0 * 24.0 * 3600.0,
            history_len: 50,
            history_weight: 0.5,
            history_gate: hyperrec_cache::DEFAULT_HISTORY_GATE,
            genre_boost: 0.0,
            genres: None,
            rows: CacheRows::default(),
        }
    }
}

/// Everything that shapes a pipeline.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Weight of the query in fusion (1 = query only, 0 = user only).
    pub alpha: f32,
    /// Candidates retrieval hands to the reranker.
    pub candidates: usize,
    /// Drop items the user has rated.
    pub exclude_seen: bool,
    pub cache: CacheSettings,
    pub rerank: RerankConfig,
    /// Learned rerank weights (`hyperrec train`); untrained heads when `None`.
    pub rerank_weights: Option<PathBuf>,
    pub profile_rule: ProfileRule,
    pub device: DeviceChoice,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            alpha: 0.5,
            candidates: 100,
            exclude_seen: true,
            cache: CacheSettings::default(),
            rerank: RerankConfig::default(),
            rerank_weights: None,
            profile_rule: ProfileRule::default(),
            device: DeviceChoice::default(),
        }
    }
}

impl PipelineConfig {
    pub fn validate(&self) -> Result<(), PipelineError> {
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(PipelineError::Config(format!(
                "alpha must be in [0, 1], got {}",
                self.alpha
            )));
        }
        if self.candidates == 0 || self.candidates > MAX_K {
            return Err(PipelineError::Config(format!(
                "candidates must be in 1..={MAX_K}, got {}",
                self.candidates
            )));
        }
        Ok(())
    }

    /// Checks one request before any stage sees it.
    pub fn validate_request(&self, request: &Request) -> Result<(), PipelineError> {
        if request.k == 0 || request.k > MAX_K {
            return Err(PipelineError::InvalidRequest(format!(
                "k must be in 1..={MAX_K}, got {}",
                request.k
            )));
        }
        if request.query.trim().is_empty() {
            return Err(PipelineError::InvalidRequest("the query is empty".into()));
        }
        let chars = request.query.chars().count();
        if chars > MAX_QUERY_CHARS {
            return Err(PipelineError::InvalidRequest(format!(
                "the query has {chars} characters; at most {MAX_QUERY_CHARS} are accepted"
            )));
        }
        Ok(())
    }

    pub(crate) fn fusion_config(&self) -> FusionConfig {
        FusionConfig { alpha: self.alpha }
    }

    pub(crate) fn similarity_config(&self) -> SimilarityConfig {
        SimilarityConfig {
            candidates: self.candidates,
            exclude_seen: self.exclude_seen,
        }
    }

    pub(crate) fn cache_config(&self, item_ids: Arc<[ItemId]>, source: RowSource) -> CacheConfig {
        CacheConfig {
            source,
            hot_items: self.cache.hot_items,
            half_life_secs: self.cache.half_life_secs,
            history_len: self.cache.history_len,
            history_weight: self.cache.history_weight,
            history_gate: self.cache.history_gate,
            genre_boost: self.cache.genre_boost,
            genres: self.cache.genres.clone(),
            item_ids: Some(item_ids),
            // Exact, and spares a catalog pass per batch (the GPU path folds it too).
            fold_linear_history: true,
            ..CacheConfig::default()
        }
    }
}

/// Scalar settings chosen by `hyperrec train` on a validation part of the training
/// ratings, stored as JSON beside the learned rerank weights. [`PipelineConfig::apply_trained`]
/// turns a default configuration into the trained one; other fields keep the configuration's
/// values.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct TrainedSettings {
    /// Fusion alpha (weight of the query).
    alpha: f32,
    /// Weight of the cache's history prior.
    history_weight: f32,
    /// `(offset, slope)` of the history prior's per-item weight.
    history_gate: [f32; 2],
    /// Recent history items in the prior.
    history_len: usize,
    /// Boost of the items of a genre the request names.
    #[serde(default)]
    genre_boost: f32,
    /// EASE lambda of the cache rows; `None` keeps embedding rows.
    ease_lambda: Option<f64>,
    /// The rerank weights file, relative to the settings file's directory.
    rerank_weights: Option<PathBuf>,
    /// Validation NDCG@10 of these settings when they were chosen (informative only).
    #[serde(default)]
    validation_ndcg_at_10: Option<f64>,
}

impl TrainedSettings {
    /// Reads settings written by `hyperrec train`.
    pub(crate) fn load(path: &std::path::Path) -> Result<TrainedSettings, PipelineError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PipelineError::Config(format!("cannot read {}: {e}", path.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| PipelineError::Config(format!("{} is malformed: {e}", path.display())))
    }
}

impl PipelineConfig {
    /// Applies the settings `hyperrec train` wrote to `path` (fusion alpha, history prior,
    /// cache rows, rerank weights). The result is validated.
    ///
    /// The file is JSON: `{"alpha", "history_weight", "history_gate": [offset, slope],
    /// "history_len", "genre_boost", "ease_lambda": number|null, "rerank_weights": path|null,
    /// "validation_ndcg_at_10": number|null}`; a relative `rerank_weights` is resolved
    /// against the file's directory.
    pub fn apply_trained(&mut self, path: &std::path::Path) -> Result<(), PipelineError> {
        let settings = TrainedSettings::load(path)?;
        self.apply_settings(&settings, path.parent());
        self.validate()
    }

    /// Applies `settings`; a relative rerank weights path is resolved against `base`.
    fn apply_settings(&mut self, settings: &TrainedSettings, base: Option<&std::path::Path>) {
        self.alpha = settings.alpha;
        self.cache.history_weight = settings.history_weight;
        self.cache.history_gate = settings.history_gate;
        self.cache.history_len = settings.history_len;
        self.cache.genre_boost = settings.genre_boost;
        if let Some(lambda) = settings.ease_lambda {
            self.cache.rows = CacheRows::Ease { lambda };
        }
        if let Some(weights) = &settings.rerank_weights {
            self.rerank_weights = Some(match base {
                Some(dir) if weights.is_relative() => dir.join(weights),
                _ => weights.clone(),
            });
        }
    }
}
