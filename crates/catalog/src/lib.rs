//! Items, users and their embeddings.
//!
//! - [`state`]: the live tables the stages share: item embeddings and the user table
//!   (profile embeddings, histories, seen sets), with the profile rule and real-time updates.
//! - `movielens`: loading MovieLens-format files with line-numbered diagnostics.
//! - `synthetic`: the deterministic seed-scale generator (same format).
//! - `store`: item embeddings on disk (safetensors) keyed by a model + catalog fingerprint.

pub mod state;

pub use state::{HistoryEntry, ItemEmbeddings, ProfileRule, SharedUsers, UserTable};
