//! `hyperrec-eval [--data DIR] [--out DIR] [--only NAME,...]`: runs every variant through
//! the query-conditioned MovieLens protocol and writes `eval.json` and `eval.md`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;

use hyperrec_catalog::movielens::{self, LoadOptions};
use hyperrec_eval::baselines::{Baselines, REFERENCE_TOLERANCE, fit_baselines};
use hyperrec_eval::{ProtocolSummary, QuerySet, Report, Split, evaluate};

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
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let data = args.data.unwrap_or_else(|| {
        std::env::var_os("HYPERREC_MOVIELENS").map_or_else(
            || PathBuf::from(WORKSPACE_ROOT).join("../shared/data/ml-latest-small"),
            PathBuf::from,
        )
    });
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from(WORKSPACE_ROOT).join("target/eval"));

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

    let mut reports = Vec::new();
    // Pipeline variants join here, after the baselines, as more `Box<dyn Variant>`s.
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
