use std::path::PathBuf;
use std::sync::Arc;

use hyperrec_cache::{CacheConfig, RowSource};
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
    /// What the rows hold.
    pub rows: CacheRows,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            hot_items: 10_000,
            half_life_secs: 30.0 * 24.0 * 3600.0,
            history_len: 50,
            history_weight: 0.5,
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
            item_ids: Some(item_ids),
            ..CacheConfig::default()
        }
    }
}
