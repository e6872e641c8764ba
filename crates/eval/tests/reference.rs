//! The baselines on MovieLens small agree with the reference implementation's figures.

use std::path::PathBuf;

use hyperrec_catalog::movielens::{self, LoadOptions};
use hyperrec_eval::baselines::{
    BASELINE_NAMES, Baselines, REFERENCE_TOLERANCE, fit_baselines, reference_ndcg,
};
use hyperrec_eval::{QuerySet, Split, evaluate};

/// `$HYPERREC_MOVIELENS`, else `shared/` beside the repository.
fn data_dir() -> PathBuf {
    std::env::var_os("HYPERREC_MOVIELENS").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/data/ml-latest-small"
            ))
        },
        PathBuf::from,
    )
}

#[test]
fn baselines_match_the_reference_ndcg_on_movielens_small() {
    let dir = data_dir();
    let data = movielens::load(&dir, LoadOptions::strict())
        .unwrap_or_else(|e| panic!("MovieLens small at {}: {e}", dir.display()));
    let split = Split::new(&data).expect("split");
    let queries = QuerySet::build(&split);
    assert_eq!(
        queries.len(),
        5838,
        "the reference protocol has 5,838 queries"
    );

    let view = split.training();
    let Baselines { variants, .. } = fit_baselines(&view, |_| true).expect("fit");
    let names: Vec<&str> = variants.iter().map(|v| v.name()).collect();
    assert_eq!(names, BASELINE_NAMES);
    for variant in &variants {
        let report = evaluate(&view, &queries, variant.as_ref()).expect("evaluate");
        let reference = reference_ndcg(&report.name).expect("reference figure");
        assert_eq!(report.metrics.queries, 5838);
        assert!(
            (report.metrics.ndcg_at_10 - reference).abs() <= REFERENCE_TOLERANCE,
            "{}: NDCG@10 {:.4}, reference {reference:.3}",
            report.name,
            report.metrics.ndcg_at_10
        );
    }
}
