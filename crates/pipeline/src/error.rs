use hyperrec_stage::{DeviceError, ItemId, StageError};
use thiserror::Error;

/// Why the pipeline could not be built or could not answer.
#[derive(Debug, Error)]
pub enum PipelineError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    #[error("unknown item {0}")]
    UnknownItem(ItemId),
    #[error("unknown stage `{0}` (stages: encode, fusion, cache, similarity, rerank)")]
    UnknownStage(String),
    #[error("a batch needs at least one request")]
    EmptyBatch,
    #[error("item index: {0}")]
    Index(String),
    #[error("event log {path}: {message}")]
    EventLog { path: String, message: String },
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Encoder(#[from] hyperrec_encoder::EncoderError),
    #[error(transparent)]
    Catalog(#[from] hyperrec_catalog::CatalogError),
    #[error(transparent)]
    Cache(#[from] hyperrec_cache::CacheError),
    #[error(transparent)]
    Fusion(#[from] hyperrec_fusion::FusionError),
    #[error(transparent)]
    Similarity(#[from] hyperrec_similarity::SimilarityError),
    #[error(transparent)]
    Rerank(#[from] hyperrec_rerank::RerankError),
}
