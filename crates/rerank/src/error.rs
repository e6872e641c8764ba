use std::path::PathBuf;

use thiserror::Error;

/// Why a rerank stage, its weights or its context vocabulary could not be built or loaded.
#[derive(Debug, Error)]
pub enum RerankError {
    /// A configuration value is unusable (zero heads, heads not dividing the width...).
    #[error("invalid rerank configuration: {0}")]
    InvalidConfig(String),
    /// Two tables that must share an embedding width do not.
    #[error("{what} has width {found}, expected {expected}")]
    DimensionMismatch {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    /// A weight tensor has the wrong number of elements or the wrong shape.
    #[error("weight `{name}` has shape {found:?}, expected {expected:?}")]
    WeightShape {
        name: &'static str,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A weight holds NaN or an infinity.
    #[error("weight `{name}` holds a non-finite value")]
    NonFiniteWeight { name: &'static str },
    /// A weight is finite but outside the range it is meaningful in.
    #[error("weight `{name}` is {value}, outside {range}")]
    WeightOutOfRange {
        name: &'static str,
        value: f32,
        range: &'static str,
    },
    /// A weights file lacks a tensor the format requires.
    #[error("weights file has no tensor `{0}`")]
    MissingTensor(&'static str),
    /// A weights file stores a tensor in a type other than F32.
    #[error("weight `{name}` is stored as {found}, expected F32")]
    WeightDtype { name: &'static str, found: String },
    /// A weights file's metadata is missing or says something this crate cannot read.
    #[error("weights file metadata: {0}")]
    Metadata(String),
    /// The safetensors container itself is malformed.
    #[error("safetensors: {0}")]
    Safetensors(#[from] safetensors::SafeTensorError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A context phrase is empty or its embedding is unusable (zero, non-finite).
    #[error("context phrase {phrase:?}: {reason}")]
    InvalidPhrase { phrase: String, reason: String },
}
