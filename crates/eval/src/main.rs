//! `hyperrec-eval [--data DIR] [--out DIR] [--only NAME,...]`: runs every variant through
//! the query-conditioned MovieLens protocol and writes `eval.json` and `eval.md`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;

use hyperrec_catalog::movielens::{self, LoadOptions};
use hyperrec_encoder::DEFAULT_MODEL;
use hyperrec_eval::baselines::{Baselines, REFERENCE_TOLERANCE, fit_baselines};
use hyperrec_eval::pipeline::{
    PipelineVariant, pipeline_inputs, rerank_off_weights, untrained_configs,
};
use hyperrec_eval::{ProtocolSummary, QuerySet, Report, Split, evaluate};
use hyperrec_pipeline::PipelineConfig;

/// The workspace root, from this crate's manifest directory.
const WORKSPACE_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

#[derive(Parser)]
#[command(about = "Offline evaluation on MovieLens (query-conditioned, temporal split)")]
struct Args {
    /// MovieLens directory (movies.csv, ratings.csv, tags.csv). Default: $HYPERREC_MOVIELENS,
    /// else ../shared/data/ml-latest-small beside the workspace.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Where eval.json and eval.md go. Default: target/eval in the workspace.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run only these variants (comma-separated names, e.g. `--only item_knn,ease`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Encoder model (a directory or a hub id) for the pipeline variants.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// Settings written by `hyperrec train` (the `trained` variant). Default:
    /// target/train/trained.json in the workspace when it exists.
    #[arg(long)]
    trained: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let data = args.data.clone().unwrap_or_else(|| {
        std::env::var_os("HYPERREC_MOVIELENS").map_or_else(
            || PathBuf::from(WORKSPACE_ROOT).join("../shared/data/ml-latest-small"),
            PathBuf::from,
        )
    });
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(WORKSPACE_ROOT).join("target/eval"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let trained = args.trained.clone().or_else(|| {
        let default = PathBuf::from(WORKSPACE_ROOT).join("target/train/trained.json");
        default.exists().then_some(default)
    });
    let args = Args { trained, ..args };

    let start = Instant::now();
    let dataset = movielens::load(&data, LoadOptions::strict())
        .with_context(|| format!("loading MovieLens from {}", data.display()))?;
    let split = Split::new(&dataset)?;
    let queries = QuerySet::build(&split);
    let view = split.training();
    eprintln!(
        "{} users, {} items, {} queries ({:.1} s)",
        split.n_users(),
        view.n_items(),
        queries.len(),
        start.elapsed().as_secs_f64()
    );

    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|n| n == name);
    let Baselines { variants, fits } = fit_baselines(&view, wanted)?;
    for fit in &fits {
        eprintln!("fit {}: {:.1} s", fit.name, fit.seconds);
    }

    let mut variants = variants;
    let pipeline_names = [
        "semantic",
        "user",
        "fused",
        "fused_rerank",
        "fused_rerank_context",
        "trained",
    ];
    if pipeline_names.iter().any(|name| wanted(name)) {
        let started = Instant::now();
        let inputs = Arc::new(pipeline_inputs(
            &dataset,
            &view,
            &out.join("items.safetensors"),
            &args.model,
        )?);
        eprintln!(
            "pipeline inputs (item embeddings): {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let rerank_off = rerank_off_weights(
            inputs.items.dim(),
            PipelineConfig::default().rerank.heads,
            &out,
        )?;
        for (name, config, context) in untrained_configs(&rerank_off) {
            if wanted(name) {
                variants.push(Box::new(PipelineVariant::new(
                    name,
                    inputs.clone(),
                    config,
                    context,
                )));
            }
        }
        if wanted("trained") {
            let mut config = PipelineConfig::default();
            match args.trained.as_deref().map(|p| config.apply_trained(p)) {
                Some(Ok(())) => {
                    variants.push(Box::new(PipelineVariant::new(
                        "trained",
                        inputs.clone(),
                        config,
                        true,
                    )));
                }
                Some(Err(e)) => return Err(e).context("loading the trained settings"),
                None => eprintln!("no --trained settings: the `trained` variant is skipped"),
            }
        }
    }

    let mut reports = Vec::new();
    for variant in variants.iter().filter(|v| wanted(v.name())) {
        let report = evaluate(&view, &queries, variant.as_ref())?;
        eprintln!(
            "{:<22} NDCG@10 {:.4}  recall@10 {:.4}  HR@10 {:.4}  MRR@10 {:.4}  ({} queries, {:.1} s)",
            report.name,
            report.metrics.ndcg_at_10,
            report.metrics.recall_at_10,
            report.metrics.hit_rate_at_10,
            report.metrics.mrr_at_10,
            report.metrics.queries,
            report.seconds
        );
        if let Some(reference) = report.reference_ndcg_at_10 {
            let gap = report.metrics.ndcg_at_10 - reference;
            if gap.abs() > REFERENCE_TOLERANCE {
                eprintln!(
                    "warning: {} is {gap:+.4} from the reference NDCG@10 {reference:.3}",
                    report.name
                );
            }
        }
        reports.push(report);
    }

    let summary = ProtocolSummary::new(&split, &queries);
    let report = Report::new(summary, reports, fits, start.elapsed().as_secs_f64());
    report.write(&out)?;
    println!("{}", report.to_markdown());
    eprintln!("wrote {}", out.join("eval.json").display());
    Ok(())
}
