//! Items, users and their embeddings.
//!
//! - [`state`]: the live tables the stages share: item embeddings and the user table
//!   (profile embeddings, histories, seen sets), with the profile rule and real-time updates.
//! - [`movielens`]: loading MovieLens-format files with line-numbered diagnostics.
//! - [`synthetic`]: the deterministic seed-scale generator (same format), synthetic queries
//!   and contexts.
//! - [`store`]: item embeddings on disk (safetensors) keyed by a model + catalog fingerprint.

pub mod error;
pub mod movielens;
pub mod state;
pub mod store;
pub mod synthetic;

pub use error::CatalogError;
pub use movielens::{
    Catalog, Dataset, Diagnostic, DiagnosticKind, Item, LoadOptions, Rating, TagApplication,
};
pub use state::{HistoryEntry, ItemEmbeddings, ProfileRule, SharedUsers, UserTable};
pub use synthetic::{
    SyntheticConfig, generate, synthetic_contexts, synthetic_queries, write_movielens,
};
