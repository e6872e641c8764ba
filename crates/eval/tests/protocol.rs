//! The protocol end to end on a hand-made MovieLens directory.

use std::path::Path;

use hyperrec_catalog::movielens::{self, Dataset, LoadOptions};
use hyperrec_eval::baselines::{genre_popularity, popularity};
use hyperrec_eval::{
    EvalError, ProtocolSummary, QueryCase, QuerySet, Report, Split, TrainingView, Variant,
    VariantError, evaluate,
};
use hyperrec_stage::{ItemId, ItemIndex, TimeOfDay, UserId};

/// movies.csv lists ids out of order, so index order and id order differ:
/// row 0 = id 30 (Drama), 1 = id 10 (Comedy|Drama), 2 = id 20 (Comedy),
/// 3 = id 40 (no genres), 4 = id 50 (Drama), 5 = id 60 (Comedy).
const MOVIES: &str = "movieId,title,genres
30,Thirty (2001),Drama
10,Ten (2001),Comedy|Drama
20,Twenty (2001),Comedy
40,Forty (2001),(no genres listed)
50,Fifty (2001),Drama
60,Sixty (2001),Comedy
";

/// User 1: five ratings in the same second, so the split follows movieId:
/// training = ids 10, 20, 30, 40 (floor(0.8 * 5) = 4), held out = id 50 (4.5, Drama).
/// User 2: ids 60 (t=1), 30 (t=2), 10 (t=3, 4.0), 40 (t=4, 5.0): training = 60, 30, 10
/// (floor(3.2) = 3), held out = 40, which has no genre: no query.
/// User 3: 10, 20, 50, 40 (t=1..4), then 30 (t=5, 3.5) and 60 (4.0, at 13:00 UTC):
/// training = 10, 20, 50, 40 (floor(4.8) = 4); held out 30 is Drama but negative, so the
/// only query is Comedy with relevant {60}.
const RATINGS: &str = "userId,movieId,rating,timestamp
1,50,4.5,100
1,30,2.0,100
1,10,4.0,100
1,40,5.0,100
1,20,3.0,100
2,60,4.0,1
2,30,4.0,2
2,10,4.0,3
2,40,5.0,4
3,10,5.0,1
3,20,4.0,2
3,50,4.0,3
3,40,2.0,4
3,30,3.5,5
3,60,4.0,46800
";

fn dataset(dir: &Path) -> Dataset {
    std::fs::write(dir.join("movies.csv"), MOVIES).expect("write movies");
    std::fs::write(dir.join("ratings.csv"), RATINGS).expect("write ratings");
    movielens::load(dir, LoadOptions::strict()).expect("valid dataset")
}

fn ids(view: &TrainingView<'_>, items: &[ItemIndex]) -> Vec<u32> {
    items.iter().map(|&i| view.item_id(i).0).collect()
}

#[test]
fn split_orders_same_second_ratings_by_movie_id_and_trains_on_the_first_80_percent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dataset(dir.path());
    let split = Split::new(&data).expect("split");
    let view = split.training();
    assert_eq!(view.users(), &[UserId(1), UserId(2), UserId(3)]);
    let history_ids = |user: usize| -> Vec<u32> {
        view.history(user)
            .iter()
            .map(|h| view.item_id(h.item).0)
            .collect()
    };
    assert_eq!(history_ids(0), vec![10, 20, 30, 40]);
    assert_eq!(history_ids(1), vec![60, 30, 10]);
    assert_eq!(history_ids(2), vec![10, 20, 50, 40]);
    assert_eq!(split.training_len(), 11);
    assert_eq!(split.held_out_len(), 4);
    // Popularity counts training ratings only: id 10 three times, id 50 once (user 3).
    let index = |id: u32| data.catalog.index_of(ItemId(id)).expect("known id");
    assert_eq!(view.popularity()[index(10) as usize], 3);
    assert_eq!(view.popularity()[index(50) as usize], 1);
    assert_eq!(view.popularity()[index(60) as usize], 1);
}

#[test]
fn one_query_per_user_and_genre_with_held_out_positives() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dataset(dir.path());
    let split = Split::new(&data).expect("split");
    let view = split.training();
    let queries = QuerySet::build(&split);
    let summary: Vec<(u32, &str, Vec<u32>)> = queries
        .cases
        .iter()
        .zip(&queries.relevant)
        .map(|(c, r)| (c.user.0, c.text.as_str(), ids(&view, r)))
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, "drama movies", vec![50]),
            (3, "comedy movies", vec![60])
        ]
    );
    let user3 = &queries.cases[1];
    assert_eq!(user3.genre_name, "Comedy");
    assert_eq!(user3.timestamp, 46800);
    assert_eq!(user3.time_of_day, TimeOfDay::Afternoon);
    assert_eq!(
        view.genres().len(),
        2,
        "'(no genres listed)' is not a genre"
    );
}

#[test]
fn popularity_baselines_rank_candidates_with_ties_by_movie_id() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dataset(dir.path());
    let split = Split::new(&data).expect("split");
    let view = split.training();
    let queries = QuerySet::build(&split);

    // Training counts: 10 -> 3; 20, 30, 40 -> 2; 50, 60 -> 1. User 1 (trained on 10, 20,
    // 30, 40) has candidates 50 and 60, both counted once: the tie goes to the smaller
    // movieId, 50, which is relevant.
    let lists = popularity()
        .recommend(&view, &queries.cases, 10)
        .expect("recommend");
    assert_eq!(ids(&view, &lists[0]), vec![50, 60]);
    // User 3 (trained on 10, 20, 40, 50): candidates 30 (2), 60 (1); genre Comedy keeps 60.
    assert_eq!(ids(&view, &lists[1]), vec![30, 60]);
    let genre_lists = genre_popularity()
        .recommend(&view, &queries.cases, 10)
        .expect("recommend");
    assert_eq!(ids(&view, &genre_lists[1]), vec![60]);

    // Popularity: query 1 hits at rank 1, query 2 at rank 2.
    // NDCG = (1 + 1/log2(3)) / 2 = 0.815465; MRR = (1 + 0.5) / 2 = 0.75.
    let report = evaluate(&view, &queries, &popularity()).expect("evaluate");
    assert!(
        (report.metrics.ndcg_at_10 - 0.815_465).abs() < 1e-6,
        "{report:?}"
    );
    assert!((report.metrics.mrr_at_10 - 0.75).abs() < 1e-12);
    assert_eq!(report.metrics.queries, 2);
    // Genre popularity puts both relevant items first.
    let report = evaluate(&view, &queries, &genre_popularity()).expect("evaluate");
    assert!(
        (report.metrics.ndcg_at_10 - 1.0).abs() < 1e-12,
        "{report:?}"
    );
}

/// Returns a fixed list for every query.
struct Fixed(Vec<ItemIndex>);

impl Variant for Fixed {
    fn name(&self) -> &str {
        "fixed"
    }
    fn recommend(
        &self,
        _view: &TrainingView<'_>,
        queries: &[QueryCase],
        _k: usize,
    ) -> Result<Vec<Vec<ItemIndex>>, VariantError> {
        Ok(vec![self.0.clone(); queries.len()])
    }
}

#[test]
fn lists_breaking_the_variant_contract_fail_the_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dataset(dir.path());
    let split = Split::new(&data).expect("split");
    let view = split.training();
    let queries = QuerySet::build(&split);
    let index = |id: u32| data.catalog.index_of(ItemId(id)).expect("known id");

    let seen = Fixed(vec![index(10)]);
    let twice = Fixed(vec![index(60), index(60)]);
    let outside = Fixed(vec![99]);
    let long = Fixed(vec![index(60); 11]);
    for variant in [seen, twice, outside, long] {
        let result = evaluate(&view, &queries, &variant);
        assert!(
            matches!(result, Err(EvalError::InvalidRecommendation { .. })),
            "{:?} must be rejected: {result:?}",
            variant.0
        );
    }
}

#[test]
fn report_has_the_documented_shape() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dataset(dir.path());
    let split = Split::new(&data).expect("split");
    let view = split.training();
    let queries = QuerySet::build(&split);
    let reports = vec![
        evaluate(&view, &queries, &popularity()).expect("evaluate"),
        evaluate(&view, &queries, &genre_popularity()).expect("evaluate"),
    ];
    let report = Report::new(ProtocolSummary::new(&split, &queries), reports, vec![], 0.5);
    let out = dir.path().join("out");
    report.write(&out).expect("write");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).expect("read"))
            .expect("json");
    let first = &json["variants"][0];
    assert_eq!(first["name"], "popularity");
    for key in [
        "ndcg_at_10",
        "recall_at_10",
        "hit_rate_at_10",
        "mrr_at_10",
        "queries",
    ] {
        assert!(first.get(key).is_some(), "missing {key}: {first}");
    }
    assert_eq!(first["queries"], 2);
    assert_eq!(json["variants"][1]["name"], "genre_popularity");
    let md = std::fs::read_to_string(out.join("eval.md")).expect("read");
    assert!(md.contains("| genre_popularity | 1.0000 | 0.147 |"), "{md}");
}
