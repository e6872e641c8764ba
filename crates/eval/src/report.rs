//! Running variants through the protocol, and the report it writes.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use hyperrec_stage::ItemIndex;
use rayon::prelude::*;
use serde::Serialize;

use crate::EvalError;
use crate::baselines::reference_ndcg;
use crate::metrics::{CUTOFF, MetricSummary, QueryMetrics};
use crate::query::{POSITIVE_RATING, QuerySet};
use crate::split::{Split, TrainingView};
use crate::variant::Variant;

/// One variant's results.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VariantReport {
    pub name: String,
    #[serde(flatten)]
    pub metrics: MetricSummary,
    /// The reference implementation's NDCG@10 for this variant, when it reports one.
    pub reference_ndcg_at_10: Option<f64>,
    /// Wall time of the variant's recommendations and scoring (fitting excluded).
    pub seconds: f64,
    #[serde(skip)]
    pub divergence: Divergence,
}

/// The seed report's "divergence": `1 - Jaccard` of two users' top-10 lists for the same
/// query, averaged over every pair of users who have that query (pooled over genres).
/// It says how different two users' lists are, not whether either is any good: random
/// lists diverge almost completely.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Divergence {
    pub divergence_at_10: f64,
    /// Number of user pairs averaged over.
    pub pairs: usize,
}

/// Runs `variant` on every query and scores its lists.
pub fn evaluate(
    view: &TrainingView<'_>,
    queries: &QuerySet,
    variant: &dyn Variant,
) -> Result<VariantReport, EvalError> {
    let start = Instant::now();
    let lists = variant.recommend(view, &queries.cases, CUTOFF)?;
    let seconds = start.elapsed().as_secs_f64();
    check_lists(view, queries, variant.name(), &lists)?;
    let per_query: Vec<QueryMetrics> = lists
        .par_iter()
        .zip(queries.relevant.par_iter())
        .map(|(list, relevant)| QueryMetrics::compute(list, relevant, CUTOFF))
        .collect();
    Ok(VariantReport {
        name: variant.name().to_string(),
        metrics: MetricSummary::mean(&per_query),
        reference_ndcg_at_10: reference_ndcg(variant.name()),
        seconds,
        divergence: divergence(queries, &lists),
    })
}

/// Enforces the [`Variant`] contract: one list per query, at most `CUTOFF` distinct
/// catalog items, none from the user's training part.
fn check_lists(
    view: &TrainingView<'_>,
    queries: &QuerySet,
    name: &str,
    lists: &[Vec<ItemIndex>],
) -> Result<(), EvalError> {
    let invalid = |query: usize, reason: String| EvalError::InvalidRecommendation {
        variant: name.to_string(),
        query,
        reason,
    };
    if lists.len() != queries.len() {
        return Err(invalid(
            lists.len().min(queries.len()),
            format!("{} lists for {} queries", lists.len(), queries.len()),
        ));
    }
    for (q, (list, case)) in lists.iter().zip(&queries.cases).enumerate() {
        if list.len() > CUTOFF {
            return Err(invalid(
                q,
                format!("{} items, at most {CUTOFF}", list.len()),
            ));
        }
        for (position, &item) in list.iter().enumerate() {
            if item as usize >= view.n_items() {
                return Err(invalid(
                    q,
                    format!("item row {item} is outside the catalog"),
                ));
            }
            if view.is_training_item(case.user_row, item) {
                return Err(invalid(
                    q,
                    format!(
                        "item {} is in user {}'s training part",
                        view.item_id(item),
                        case.user
                    ),
                ));
            }
            if list[..position].contains(&item) {
                return Err(invalid(
                    q,
                    format!("item {} is listed twice", view.item_id(item)),
                ));
            }
        }
    }
    Ok(())
}

/// Mean `1 - Jaccard` over all pairs of queries with the same genre (every pair: a few
/// hundred thousand pairs of 10-item lists, so no sampling is needed and the figure is
/// exactly reproducible).
pub fn divergence(queries: &QuerySet, lists: &[Vec<ItemIndex>]) -> Divergence {
    let n_genres = queries.cases.iter().map(|c| c.genre + 1).max().unwrap_or(0);
    let mut by_genre: Vec<Vec<Vec<ItemIndex>>> = vec![Vec::new(); n_genres];
    for (case, list) in queries.cases.iter().zip(lists) {
        let mut sorted = list.clone();
        sorted.sort_unstable();
        sorted.dedup();
        by_genre[case.genre].push(sorted);
    }
    let (sum, pairs) = by_genre
        .par_iter()
        .map(|group| {
            let mut sum = 0.0f64;
            let mut pairs = 0usize;
            for (i, a) in group.iter().enumerate() {
                for b in &group[i + 1..] {
                    sum += 1.0 - jaccard(a, b);
                    pairs += 1;
                }
            }
            (sum, pairs)
        })
        .reduce(|| (0.0, 0), |x, y| (x.0 + y.0, x.1 + y.1));
    Divergence {
        divergence_at_10: if pairs == 0 { 0.0 } else { sum / pairs as f64 },
        pairs,
    }
}

/// Jaccard similarity of two sorted, distinct lists; two empty lists are identical.
fn jaccard(a: &[ItemIndex], b: &[ItemIndex]) -> f64 {
    let common = a.iter().filter(|x| b.binary_search(x).is_ok()).count();
    let union = a.len() + b.len() - common;
    if union == 0 {
        1.0
    } else {
        common as f64 / union as f64
    }
}

/// Facts about the run that make the figures interpretable.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProtocolSummary {
    pub users: usize,
    pub items: usize,
    pub training_ratings: usize,
    pub held_out_ratings: usize,
    pub queries: usize,
    pub genres: usize,
    pub description: Vec<String>,
}

impl ProtocolSummary {
    /// Describes `split` and `queries`.
    pub fn new(split: &Split<'_>, queries: &QuerySet) -> Self {
        let view = split.training();
        ProtocolSummary {
            users: split.n_users(),
            items: view.n_items(),
            training_ratings: split.training_len(),
            held_out_ratings: split.held_out_len(),
            queries: queries.len(),
            genres: view.genres().len(),
            description: protocol_lines(),
        }
    }
}

/// The protocol in five lines (also the README's).
pub fn protocol_lines() -> Vec<String> {
    vec![
        "Per user, ratings sorted by (timestamp, movieId); the first floor(0.8 n) are training, the rest held out.".into(),
        format!("Positives are held-out ratings >= {POSITIVE_RATING:.1}; one query per (user, genre) with held-out positives of that genre, text \"<genre lower-case> movies\" ('(no genres listed)' is not a genre)."),
        "Relevant set: those positives; candidates: every catalog item the user has not rated in training.".into(),
        format!("Metrics @{CUTOFF}, averaged over queries: NDCG (binary gains, ideal over min(|rel|, {CUTOFF})), recall = hits / |rel| (recall_capped: hits / min(|rel|, {CUTOFF})), hit rate, MRR."),
        "Ties in scores break by movieId ascending; models learn from the training part only.".into(),
    ]
}

/// How long a model took to fit.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FitTiming {
    pub name: String,
    pub seconds: f64,
}

/// The divergence of each variant, reported apart from quality.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DivergenceSection {
    pub note: &'static str,
    pub variants: Vec<NamedDivergence>,
}

/// One variant's divergence.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NamedDivergence {
    pub name: String,
    #[serde(flatten)]
    pub divergence: Divergence,
}

/// Everything `eval.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub variants: Vec<VariantReport>,
    pub divergence: DivergenceSection,
    pub protocol: ProtocolSummary,
    pub fits: Vec<FitTiming>,
    /// Wall time from loading the data to the last variant.
    pub total_seconds: f64,
}

const DIVERGENCE_NOTE: &str = "1 - Jaccard of two users' top-10 for the same query, averaged over every user pair per query genre. A spread measure, not a quality measure: unrelated random lists score close to 1.";

impl Report {
    /// Assembles the report of `variants` (in the order given).
    pub fn new(
        protocol: ProtocolSummary,
        variants: Vec<VariantReport>,
        fits: Vec<FitTiming>,
        total_seconds: f64,
    ) -> Self {
        let divergence = DivergenceSection {
            note: DIVERGENCE_NOTE,
            variants: variants
                .iter()
                .map(|v| NamedDivergence {
                    name: v.name.clone(),
                    divergence: v.divergence,
                })
                .collect(),
        };
        Report {
            variants,
            divergence,
            protocol,
            fits,
            total_seconds,
        }
    }

    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> Result<String, EvalError> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// The report as a Markdown table with the protocol and timings.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Offline evaluation (MovieLens, query-conditioned)\n");
        let _ = writeln!(
            md,
            "| variant | NDCG@10 | reference NDCG@10 | Recall@10 | HitRate@10 | MRR@10 | queries | divergence@10 |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for v in &self.variants {
            let reference = v
                .reference_ndcg_at_10
                .map_or_else(|| "–".to_string(), |r| format!("{r:.3}"));
            let _ = writeln!(
                md,
                "| {} | {:.4} | {} | {:.4} | {:.4} | {:.4} | {} | {:.3} |",
                v.name,
                v.metrics.ndcg_at_10,
                reference,
                v.metrics.recall_at_10,
                v.metrics.hit_rate_at_10,
                v.metrics.mrr_at_10,
                v.metrics.queries,
                v.divergence.divergence_at_10,
            );
        }
        let _ = writeln!(md, "\nDivergence: {DIVERGENCE_NOTE}\n");
        let _ = writeln!(md, "## Protocol\n");
        for line in &self.protocol.description {
            let _ = writeln!(md, "- {line}");
        }
        let p = &self.protocol;
        let _ = writeln!(
            md,
            "\n{} users, {} items, {} training / {} held-out ratings, {} queries over {} genres.\n",
            p.users, p.items, p.training_ratings, p.held_out_ratings, p.queries, p.genres
        );
        let _ = writeln!(md, "## Timings\n");
        for fit in &self.fits {
            let _ = writeln!(md, "- fit {}: {:.2} s", fit.name, fit.seconds);
        }
        for v in &self.variants {
            let _ = writeln!(md, "- rank {}: {:.2} s", v.name, v.seconds);
        }
        let _ = writeln!(md, "- total: {:.2} s", self.total_seconds);
        md
    }

    /// Writes `eval.json` and `eval.md` into `dir` (created if missing).
    pub fn write(&self, dir: &Path) -> Result<(), EvalError> {
        let io = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| EvalError::Io {
                action,
                path,
                source,
            }
        };
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let json_path = dir.join("eval.json");
        std::fs::write(&json_path, self.to_json()? + "\n").map_err(io("write", &json_path))?;
        let md_path = dir.join("eval.md");
        std::fs::write(&md_path, self.to_markdown()).map_err(io("write", &md_path))?;
        Ok(())
    }
}
