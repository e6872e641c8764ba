//! Offline quality evaluation on MovieLens: protocol, metrics, baselines and pipeline variants.
//!
//! The protocol ([`Split`], [`QuerySet`]): per user, ratings in time order; the first
//! 80% train, the rest is held out; one query per (user, genre) with held-out positives
//! (ratings >= 4) of that genre, text `"<genre> movies"`; relevant = those positives;
//! candidates = every item the user has not rated in training. Metrics at 10 ([`metrics`])
//! are averaged over queries.
//!
//! Compared systems are [`Variant`]s: they see only the [`TrainingView`] and return top-k
//! lists; [`evaluate`] checks the lists and scores them. Systems that score every item
//! implement [`Scorer`] and are wrapped in [`Scored`]. The baselines live in
//! [`baselines`]; pipeline variants plug in through the same trait.
//!
//! ```no_run
//! use hyperrec_eval::{QueryCase, Restriction, Scored, Scorer, TrainingView, VariantError};
//!
//! /// Scores items by how many of the user's training items share the query's genre.
//! struct GenreAffinity;
//!
//! impl Scorer for GenreAffinity {
//!     fn score(
//!         &self,
//!         view: &TrainingView<'_>,
//!         query: &QueryCase,
//!         scores: &mut [f32],
//!     ) -> Result<(), VariantError> {
//!         let liked = view
//!             .history(query.user_row)
//!             .iter()
//!             .filter(|h| view.genres().contains(query.genre, h.item))
//!             .count() as f32;
//!         for (item, score) in scores.iter_mut().enumerate() {
//!             *score = liked * view.popularity()[item] as f32;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! // Reported as "genre_affinity", ranked among the query genre's items only.
//! let variant = Scored::new("genre_affinity", GenreAffinity, Restriction::QueryGenre);
//! # let _ = variant;
//! ```

pub mod baselines;
pub mod metrics;
pub mod pipeline;
mod query;
mod report;
mod split;
mod variant;

use std::path::PathBuf;

use thiserror::Error;

pub use query::{Genres, POSITIVE_RATING, QueryCase, QuerySet, query_text, utc_time_of_day};
pub use report::{
    Divergence, DivergenceSection, FitTiming, NamedDivergence, ProtocolSummary, Report,
    VariantReport, divergence, evaluate, protocol_lines,
};
pub use split::{Split, TrainingView};
pub use variant::{Restriction, Scored, Scorer, Variant, VariantError, top_k};

/// What an evaluation run can fail at.
#[derive(Debug, Error)]
pub enum EvalError {
    #[error("dataset: {0}")]
    Data(String),
    #[error(transparent)]
    Catalog(#[from] hyperrec_catalog::CatalogError),
    #[error(transparent)]
    Collab(#[from] hyperrec_collab::CollabError),
    #[error(transparent)]
    Variant(#[from] VariantError),
    /// A variant broke the [`Variant`] contract.
    #[error("variant `{variant}`, query {query}: {reason}")]
    InvalidRecommendation {
        variant: String,
        query: usize,
        reason: String,
    },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serialize the report: {0}")]
    Json(#[from] serde_json::Error),
}
