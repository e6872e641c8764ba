//! Fits the pipeline's learned settings without ever reading the evaluation's held-out part.
//!
//! Protocol: the evaluation's training part (the first 80% of each user's ratings in time)
//! is split again, 9/10 in time per user: the first part trains (user profiles, the EASE
//! cache rows), the last tenth is a pseudo-held-out validation part with genre queries built
//! exactly as the evaluation builds them. Every candidate setting ([`candidates`]) is run as
//! a real [`hyperrec_pipeline::Pipeline`] through `recommend_batch` on the validation
//! queries, and the one with the best validation NDCG@10 is written:
//!
//! - `trained.json`: the scalar settings ([`TrainedFile`]), read by
//!   `PipelineConfig::apply_trained`;
//! - `trained-rerank.safetensors`: the rerank weights ([`hyperrec_rerank::RerankWeights`]
//!   format) with the chosen score mix, referenced by `trained.json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyperrec_catalog::movielens::Dataset;
use hyperrec_eval::pipeline::{EASE_LAMBDA, PipelineInputs, PipelineVariant, training_dataset};
use hyperrec_eval::{QuerySet, Split, evaluate};
use hyperrec_pipeline::PipelineConfig;
use hyperrec_rerank::RerankWeights;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Share of each user's (protocol) training ratings kept for fitting; the rest validates.
pub const FIT_SHARE: (usize, usize) = (9, 10);

/// File names written into the output directory.
pub const SETTINGS_FILE: &str = "trained.json";
/// The rerank weights file named by [`SETTINGS_FILE`].
pub const RERANK_FILE: &str = "trained-rerank.safetensors";

/// What training can fail at.
#[derive(Debug, Error)]
pub enum TrainError {
    #[error(transparent)]
    Eval(#[from] hyperrec_eval::EvalError),
    #[error(transparent)]
    Rerank(#[from] hyperrec_rerank::RerankError),
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serialize the settings: {0}")]
    Json(#[from] serde_json::Error),
    #[error("no candidate setting could be evaluated")]
    NoCandidate,
}

/// One point of the search: the scalar settings of the collaborative pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// Fusion alpha: 1 keeps the query vector alone in the inner product, so the semantic
    /// score acts as a soft genre filter while the user side comes from the EASE prior.
    pub alpha: f32,
    /// Weight of the EASE history prior against the fused inner product.
    pub history_weight: f32,
    /// `(offset, slope)` of a history item's weight in the prior.
    pub history_gate: [f32; 2],
    /// Weight of the rerank's attention score (its retrieval weight is 1).
    pub attention: f32,
    /// Boost of the items of the genre the query names.
    pub genre_boost: f32,
}

/// The settings file `hyperrec train` writes; the schema `PipelineConfig::apply_trained`
/// reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainedFile {
    pub alpha: f32,
    pub history_weight: f32,
    pub history_gate: [f32; 2],
    pub history_len: usize,
    pub genre_boost: f32,
    pub ease_lambda: Option<f64>,
    /// Relative to the settings file's directory.
    pub rerank_weights: Option<PathBuf>,
    pub validation_ndcg_at_10: Option<f64>,
}

/// Most recent history items in the prior: every training rating of nearly every user
/// (EASE scores the whole history).
pub const HISTORY_LEN: usize = 1000;

/// The searched settings: the history prior's weight against the semantic score (the
/// soft genre filter), binary against rating-centred history weights, the fusion alpha and
/// the rerank's attention weight.
pub fn candidates() -> Vec<Candidate> {
    let mut out = Vec::new();
    // The prior is a mean of EASE rows (entries around 1e-3) against cosines that differ
    // by about 0.1 between genres: the useful weights span several powers of two. A genre
    // boost of 1 is above any cosine difference: within the named genre first.
    for &(history_weight, genre_boost) in &[
        (128.0f32, 0.0f32),
        (64.0, 1.0),
        (256.0, 1.0),
        (1024.0, 1.0),
        (4096.0, 1.0),
        (16384.0, 1.0),
        // A boost far above any prior: a hard filter to the named genre.
        (4096.0, 1000.0),
        (65536.0, 1000.0),
    ] {
        for &history_gate in &[[1.0f32, 0.0], [0.5, 0.5]] {
            out.push(Candidate {
                alpha: 1.0,
                history_weight,
                history_gate,
                attention: 0.0,
                genre_boost,
            });
        }
    }
    out
}

/// The pipeline configuration of `candidate` (its rerank weights at `rerank_path`).
pub fn config_for(candidate: &Candidate, rerank_path: &Path) -> PipelineConfig {
    let mut config = PipelineConfig {
        alpha: candidate.alpha,
        rerank_weights: Some(rerank_path.to_path_buf()),
        ..PipelineConfig::default()
    };
    config.cache.history_weight = candidate.history_weight;
    config.cache.history_gate = candidate.history_gate;
    config.cache.history_len = HISTORY_LEN;
    config.cache.genre_boost = candidate.genre_boost;
    config.cache.rows = hyperrec_pipeline::CacheRows::Ease {
        lambda: EASE_LAMBDA,
    };
    config
}

/// Rerank weights with the untrained heads and `attention` as the attention score's weight.
pub fn rerank_weights(dim: usize, heads: usize, attention: f32) -> RerankWeights {
    let mut weights = RerankWeights::untrained(dim, heads);
    weights.score_mix.attention = attention;
    weights
}

/// One evaluated candidate.
#[derive(Clone, Debug, Serialize)]
pub struct Trial {
    pub candidate: Candidate,
    pub validation_ndcg_at_10: f64,
    pub seconds: f64,
}

/// What [`train`] chose and how it got there.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    pub best: Trial,
    pub trials: Vec<Trial>,
    pub validation_queries: usize,
    pub settings_path: PathBuf,
}

/// Searches [`candidates`] on a validation part carved from `protocol_training` (a dataset
/// holding only the evaluation's training ratings), with `inputs` for the encoder and item
/// embeddings, and writes the best settings into `out_dir`. `progress` sees every trial.
pub fn train(
    protocol_training: &Dataset,
    inputs: &PipelineInputs,
    out_dir: &Path,
    mut progress: impl FnMut(&Trial),
) -> Result<TrainReport, TrainError> {
    std::fs::create_dir_all(out_dir).map_err(|source| TrainError::Io {
        action: "create",
        path: out_dir.to_path_buf(),
        source,
    })?;
    let split = Split::with_share(protocol_training, FIT_SHARE.0, FIT_SHARE.1)?;
    let queries = QuerySet::build(&split);
    let view = split.training();
    let fit_inputs = Arc::new(PipelineInputs {
        dataset: Arc::new(training_dataset(&view, protocol_training)),
        encoder: inputs.encoder.clone(),
        items: inputs.items.clone(),
    });
    let dim = inputs.items.dim();
    let heads = PipelineConfig::default().rerank.heads;
    let mut trials = Vec::new();
    for candidate in candidates() {
        let rerank_path = out_dir.join(format!("trial-rerank-{}.safetensors", trials.len()));
        rerank_weights(dim, heads, candidate.attention).save(&rerank_path)?;
        let variant = PipelineVariant::new(
            "validation",
            fit_inputs.clone(),
            config_for(&candidate, &rerank_path),
            false,
        );
        let report = evaluate(&view, &queries, &variant)?;
        // The trial file has served its purpose; a leftover is harmless.
        let _ = std::fs::remove_file(&rerank_path);
        let trial = Trial {
            candidate,
            validation_ndcg_at_10: report.metrics.ndcg_at_10,
            seconds: report.seconds,
        };
        progress(&trial);
        trials.push(trial);
    }
    let best = trials
        .iter()
        .max_by(|a, b| a.validation_ndcg_at_10.total_cmp(&b.validation_ndcg_at_10))
        .cloned()
        .ok_or(TrainError::NoCandidate)?;
    let settings_path = write_settings(&best, dim, heads, out_dir)?;
    Ok(TrainReport {
        best,
        trials,
        validation_queries: queries.len(),
        settings_path,
    })
}

/// Writes `trial`'s settings and rerank weights into `out_dir`; returns the settings path.
pub fn write_settings(
    trial: &Trial,
    dim: usize,
    heads: usize,
    out_dir: &Path,
) -> Result<PathBuf, TrainError> {
    rerank_weights(dim, heads, trial.candidate.attention).save(&out_dir.join(RERANK_FILE))?;
    let file = TrainedFile {
        alpha: trial.candidate.alpha,
        history_weight: trial.candidate.history_weight,
        history_gate: trial.candidate.history_gate,
        history_len: HISTORY_LEN,
        genre_boost: trial.candidate.genre_boost,
        ease_lambda: Some(EASE_LAMBDA),
        rerank_weights: Some(PathBuf::from(RERANK_FILE)),
        validation_ndcg_at_10: Some(trial.validation_ndcg_at_10),
    };
    let path = out_dir.join(SETTINGS_FILE);
    std::fs::write(&path, serde_json::to_string_pretty(&file)?).map_err(|source| {
        TrainError::Io {
            action: "write",
            path: path.clone(),
            source,
        }
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_settings_load_into_the_pipeline_config() {
        let dir = tempfile::tempdir().expect("temp dir");
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos());
        // A fresh, non-default point each run.
        let weight = 0.5 + (seed % 1000) as f32 / 100.0;
        let trial = Trial {
            candidate: Candidate {
                alpha: 0.75,
                history_weight: weight,
                history_gate: [1.0, 0.25],
                attention: 0.125,
                genre_boost: 0.5,
            },
            validation_ndcg_at_10: 0.3,
            seconds: 1.0,
        };
        let path = write_settings(&trial, 8, 2, dir.path()).expect("write");
        let mut config = PipelineConfig::default();
        config.apply_trained(&path).expect("load");
        assert_eq!(config.alpha, 0.75, "seed {seed}");
        assert_eq!(config.cache.history_weight, weight, "seed {seed}");
        assert_eq!(config.cache.history_gate, [1.0, 0.25]);
        assert_eq!(config.cache.history_len, HISTORY_LEN);
        assert_eq!(config.cache.genre_boost, 0.5);
        assert_eq!(
            config.cache.rows,
            hyperrec_pipeline::CacheRows::Ease {
                lambda: EASE_LAMBDA
            }
        );
        let rerank = config.rerank_weights.expect("rerank weights path");
        assert_eq!(rerank, dir.path().join(RERANK_FILE));
        let weights = RerankWeights::load(&rerank).expect("rerank weights");
        assert_eq!(weights.score_mix.attention, 0.125);
    }

    #[test]
    fn every_candidate_makes_a_valid_config() {
        for candidate in candidates() {
            let config = config_for(&candidate, Path::new("w.safetensors"));
            assert!(config.validate().is_ok(), "{candidate:?}");
        }
    }
}

/// Where `hyperrec train` reads and writes.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// MovieLens directory.
    pub data: PathBuf,
    /// Output directory (`trained.json`, `trained-rerank.safetensors`, `trials.json`).
    pub out_dir: PathBuf,
    /// Encoder model (directory or hub id).
    pub model: String,
    /// Where the item embeddings are stored and reused.
    pub index_path: PathBuf,
}

/// Loads MovieLens, takes the evaluation protocol's training part (the first 80% of each
/// user's ratings in time: the held-out part is never loaded into what training sees),
/// and runs [`train`] on it. Writes `trials.json` beside the settings.
pub fn run(
    options: &TrainOptions,
    progress: impl FnMut(&Trial),
) -> Result<TrainReport, TrainError> {
    let full = hyperrec_catalog::movielens::load(
        &options.data,
        hyperrec_catalog::movielens::LoadOptions::strict(),
    )
    .map_err(hyperrec_eval::EvalError::from)?;
    let split = Split::new(&full)?;
    let view = split.training();
    let inputs =
        hyperrec_eval::pipeline::pipeline_inputs(&full, &view, &options.index_path, &options.model)
            .map_err(hyperrec_eval::EvalError::from)?;
    let report = train(&inputs.dataset, &inputs, &options.out_dir, progress)?;
    let trials = options.out_dir.join("trials.json");
    std::fs::write(&trials, serde_json::to_string_pretty(&report)?).map_err(|source| {
        TrainError::Io {
            action: "write",
            path: trials.clone(),
            source,
        }
    })?;
    Ok(report)
}
