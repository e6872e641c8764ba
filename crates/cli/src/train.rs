//! `hyperrec train [--data DIR] [--out DIR]`: fits the pipeline's learned settings on a
//! validation part of the evaluation's training ratings (see `hyperrec_train`).

use std::path::PathBuf;

use clap::Args;

/// The workspace root, from this crate's manifest directory.
const WORKSPACE_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// Arguments of `hyperrec train`.
#[derive(Args)]
pub struct TrainArgs {
    /// MovieLens directory (default: $HYPERREC_MOVIELENS, else ../shared/data/ml-latest-small).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output directory for trained.json and trained-rerank.safetensors (default: target/train).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Encoder model (directory or hub id).
    #[arg(long, default_value = hyperrec_encoder::DEFAULT_MODEL)]
    pub model: String,
}

/// Runs the trainer and prints what it chose.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let root = PathBuf::from(WORKSPACE_ROOT);
    let data = args.data.unwrap_or_else(|| {
        std::env::var_os("HYPERREC_MOVIELENS").map_or_else(
            || root.join("../shared/data/ml-latest-small"),
            PathBuf::from,
        )
    });
    let options = hyperrec_train::TrainOptions {
        data,
        out_dir: args.out.unwrap_or_else(|| root.join("target/train")),
        model: args.model,
        index_path: root.join("target/eval/items.safetensors"),
    };
    let report = hyperrec_train::run(&options, |trial| {
        eprintln!(
            "{:?}: validation NDCG@10 {:.4}",
            trial.candidate, trial.validation_ndcg_at_10
        );
    })?;
    println!(
        "best {:?} (validation NDCG@10 {:.4} on {} queries); wrote {}",
        report.best.candidate,
        report.best.validation_ndcg_at_10,
        report.validation_queries,
        report.settings_path.display()
    );
    Ok(())
}
