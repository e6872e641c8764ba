//! `hyperrec-train [--data DIR] [--out DIR]`: the trainer without the rest of the CLI
//! (`hyperrec train` runs the same code).

use std::path::PathBuf;

use hyperrec_train::{TrainOptions, run};

/// The workspace root, from this crate's manifest directory.
const WORKSPACE_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut data = std::env::var_os("HYPERREC_MOVIELENS").map_or_else(
        || PathBuf::from(WORKSPACE_ROOT).join("../shared/data/ml-latest-small"),
        PathBuf::from,
    );
    let mut out_dir = PathBuf::from(WORKSPACE_ROOT).join("target/train");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--data", Some(value)) => data = PathBuf::from(value),
            ("--out", Some(value)) => out_dir = PathBuf::from(value),
            _ => {
                return Err(
                    format!("usage: hyperrec-train [--data DIR] [--out DIR] (got {arg})").into(),
                );
            }
        }
    }
    let options = TrainOptions {
        data,
        out_dir,
        model: hyperrec_encoder::DEFAULT_MODEL.to_owned(),
        index_path: PathBuf::from(WORKSPACE_ROOT).join("target/eval/items.safetensors"),
    };
    let report = run(&options, |trial| {
        eprintln!(
            "alpha {:.2} history_weight {:>5.2} gate {:?} attention {:.2}: validation NDCG@10 {:.4} ({:.1} s)",
            trial.candidate.alpha,
            trial.candidate.history_weight,
            trial.candidate.history_gate,
            trial.candidate.attention,
            trial.validation_ndcg_at_10,
            trial.seconds
        );
    })?;
    eprintln!(
        "best on {} validation queries: {:?} (NDCG@10 {:.4}); wrote {}",
        report.validation_queries,
        report.best.candidate,
        report.best.validation_ndcg_at_10,
        report.settings_path.display()
    );
    Ok(())
}
