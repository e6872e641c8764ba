//! Loading MovieLens-format files: diagnostics, strictness, and the real ml-latest-small.

use std::path::{Path, PathBuf};

use hyperrec_catalog::movielens::{self, DiagnosticKind, LoadOptions};
use hyperrec_catalog::{CatalogError, ItemEmbeddings, ProfileRule, UserTable};
use hyperrec_stage::{ItemId, UserId};

const MOVIES: &str = "movieId,title,genres
1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy
6,Heat (1995),Action|Crime|Thriller
10,\"American President, The (1995)\",Comedy|Drama|Romance
40697,Babylon 5,Sci-Fi
143410,Hyena Road,(no genres listed)
171749,Death Note: Desu nôto (2006–2007),(no genres listed)
";

const TAGS: &str = "userId,movieId,tag,timestamp
1,6,heist,1445714994
2,6,Heist,1445714995
3,6,al pacino,1445714996
3,6,robert de niro,1445714996
4,6,al pacino,1445714997
4,6,atmospheric,1445714997
4,6,slow,1445714997
4,6,great score,1445714997
";

fn write_dir(movies: &str, ratings: &str, tags: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("movies.csv"), movies).expect("write movies");
    std::fs::write(dir.path().join("ratings.csv"), ratings).expect("write ratings");
    if let Some(tags) = tags {
        std::fs::write(dir.path().join("tags.csv"), tags).expect("write tags");
    }
    dir
}

/// A ratings file whose bad rows sit at known lines (1-based, header is line 1).
const BROKEN_RATINGS: &str = "userId,movieId,rating,timestamp
1,1,4.0,964982703
1,6,4.5
2,10,five,964982224
2,999,3.0,964982224
3,6,5.5,964983815
3,1,0.0,964983815
4,6,3.5,not-a-time
4,10,2.0,964982931
";

#[test]
fn lenient_load_skips_broken_rating_rows_and_reports_their_lines() {
    let dir = write_dir(MOVIES, BROKEN_RATINGS, None);
    let dataset = movielens::load(dir.path(), LoadOptions::lenient()).expect("lenient load");
    assert_eq!(dataset.ratings.len(), 2, "{:?}", dataset.ratings);
    let found: Vec<(u64, DiagnosticKind)> = dataset
        .diagnostics
        .iter()
        .map(|d| (d.line, d.kind))
        .collect();
    assert_eq!(
        found,
        vec![
            (3, DiagnosticKind::FieldCount),
            (4, DiagnosticKind::BadNumber),
            (5, DiagnosticKind::UnknownMovie),
            (6, DiagnosticKind::RatingOutOfRange),
            (7, DiagnosticKind::RatingOutOfRange),
            (8, DiagnosticKind::BadNumber),
        ]
    );
    for diagnostic in &dataset.diagnostics {
        assert!(diagnostic.file.ends_with("ratings.csv"), "{diagnostic}");
        let shown = diagnostic.to_string();
        assert!(
            shown.contains(&format!("ratings.csv:{}:", diagnostic.line)),
            "{shown}"
        );
    }
    assert!(dataset.diagnostics[3].message.contains("5.5"));
    assert!(dataset.diagnostics[2].message.contains("999"));
}

#[test]
fn strict_load_fails_on_the_first_broken_row() {
    let dir = write_dir(MOVIES, BROKEN_RATINGS, None);
    match movielens::load(dir.path(), LoadOptions::strict()) {
        Err(CatalogError::Malformed(diagnostic)) => {
            assert_eq!(diagnostic.line, 3);
            assert_eq!(diagnostic.kind, DiagnosticKind::FieldCount);
            assert!(diagnostic.file.ends_with("ratings.csv"));
        }
        other => panic!("expected a malformed-row error, got {other:?}"),
    }
}

#[test]
fn strict_load_of_clean_files_succeeds() {
    let ratings = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n2,6,0.5,964982704\n";
    let dir = write_dir(MOVIES, ratings, Some(TAGS));
    let dataset = movielens::load(dir.path(), LoadOptions::strict()).expect("strict load");
    assert!(dataset.diagnostics.is_empty());
    assert_eq!(dataset.catalog.len(), 6);
    assert_eq!(dataset.ratings.len(), 2);
    assert_eq!(dataset.tags.len(), 8);
}

#[test]
fn duplicate_movie_ids_are_an_error_when_strict_and_keep_the_first_when_lenient() {
    let movies = "movieId,title,genres
1,Toy Story (1995),Animation
2,Jumanji (1995),Adventure
1,Toy Story Again (2001),Comedy
";
    let ratings = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n";
    let dir = write_dir(movies, ratings, None);

    match movielens::load(dir.path(), LoadOptions::strict()) {
        Err(CatalogError::Malformed(diagnostic)) => {
            assert_eq!(diagnostic.line, 4);
            assert_eq!(diagnostic.kind, DiagnosticKind::DuplicateMovie);
            assert!(diagnostic.file.ends_with("movies.csv"));
            assert!(diagnostic.message.contains("line 2"), "{diagnostic}");
        }
        other => panic!("expected a duplicate-id error, got {other:?}"),
    }

    let dataset = movielens::load(dir.path(), LoadOptions::lenient()).expect("lenient");
    assert_eq!(dataset.catalog.len(), 2);
    let kept = dataset.catalog.index_of(ItemId(1)).expect("id 1 kept");
    assert_eq!(dataset.catalog.item(kept).title, "Toy Story (1995)");
    assert_eq!(dataset.diagnostics.len(), 1);
    assert_eq!(dataset.diagnostics[0].line, 4);
    assert_eq!(dataset.ratings[0].item, kept);
}

#[test]
fn unknown_movie_ids_in_ratings_and_tags_are_reported() {
    let ratings = "userId,movieId,rating,timestamp\n1,1,4.0,1\n1,77,4.0,2\n";
    let tags = "userId,movieId,tag,timestamp\n1,6,heist,1\n1,78,nothing,2\n1,6,,3\n";
    let dir = write_dir(MOVIES, ratings, Some(tags));
    let dataset = movielens::load(dir.path(), LoadOptions::lenient()).expect("lenient");
    let found: Vec<(String, u64, DiagnosticKind)> = dataset
        .diagnostics
        .iter()
        .map(|d| {
            let file = d.file.file_name().expect("file name").to_string_lossy();
            (file.into_owned(), d.line, d.kind)
        })
        .collect();
    assert_eq!(
        found,
        vec![
            ("ratings.csv".to_string(), 3, DiagnosticKind::UnknownMovie),
            ("tags.csv".to_string(), 3, DiagnosticKind::UnknownMovie),
            ("tags.csv".to_string(), 4, DiagnosticKind::EmptyField),
        ]
    );
    assert_eq!(dataset.tags.len(), 1);
}

#[test]
fn titles_genres_years_and_texts_follow_the_documented_format() {
    let ratings = "userId,movieId,rating,timestamp\n";
    let dir = write_dir(MOVIES, ratings, Some(TAGS));
    let dataset = movielens::load(dir.path(), LoadOptions::strict()).expect("strict");
    let catalog = &dataset.catalog;
    let at = |id| catalog.index_of(ItemId(id)).expect("known id");

    let heat = catalog.item(at(6));
    assert_eq!(heat.year, Some(1995));
    assert_eq!(heat.name(), "Heat");
    // "heist" twice (case-insensitive) and "al pacino" twice: ties alphabetical; then the
    // count-1 tags alphabetically, five in all ("slow" is sixth and dropped).
    assert_eq!(
        heat.top_tags,
        [
            "al pacino",
            "heist",
            "atmospheric",
            "great score",
            "robert de niro"
        ]
    );
    assert_eq!(
        catalog.text(at(6)),
        "Heat (1995). Genres: action, crime, thriller. \
         Tags: al pacino, heist, atmospheric, great score, robert de niro."
    );
    assert_eq!(catalog.item(at(10)).title, "American President, The (1995)");
    assert_eq!(catalog.item(at(40697)).year, None);
    assert_eq!(catalog.text(at(40697)), "Babylon 5. Genres: sci-fi.");
    assert!(catalog.item(at(143410)).genres.is_empty());
    assert_eq!(catalog.text(at(143410)), "Hyena Road.");
    assert_eq!(catalog.item(at(171749)).year, Some(2006));
    assert_eq!(catalog.item(at(171749)).name(), "Death Note: Desu nôto");
    assert!(catalog.genres().iter().any(|g| g == "Sci-Fi"));
    assert!(!catalog.genres().iter().any(|g| g.contains("no genres")));
    assert_eq!(catalog.index_of(ItemId(2)), None);
}

#[test]
fn missing_files_and_wrong_headers_name_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let error = movielens::load(dir.path(), LoadOptions::lenient()).expect_err("no files");
    assert!(error.to_string().contains("movies.csv"), "{error}");

    std::fs::write(dir.path().join("movies.csv"), MOVIES).expect("write");
    let error = movielens::load(dir.path(), LoadOptions::lenient()).expect_err("no ratings");
    assert!(error.to_string().contains("ratings.csv"), "{error}");

    std::fs::write(dir.path().join("ratings.csv"), "user,movie,stars\n1,1,4\n").expect("write");
    match movielens::load(dir.path(), LoadOptions::lenient()) {
        Err(error @ CatalogError::Header { .. }) => {
            let shown = error.to_string();
            assert!(shown.contains("ratings.csv"), "{shown}");
            assert!(shown.contains("userId,movieId,rating,timestamp"), "{shown}");
        }
        other => panic!("expected a header error, got {other:?}"),
    }

    std::fs::write(dir.path().join("ratings.csv"), "").expect("write");
    let error = movielens::load(dir.path(), LoadOptions::lenient()).expect_err("empty file");
    assert!(matches!(error, CatalogError::Header { .. }), "{error}");
}

#[test]
fn user_histories_group_ratings_by_user() {
    let ratings = "userId,movieId,rating,timestamp
5,1,4.0,30
2,6,1.0,10
5,6,2.5,20
2,10,5.0,5
";
    let dir = write_dir(MOVIES, ratings, None);
    let dataset = movielens::load(dir.path(), LoadOptions::strict()).expect("strict");
    let histories = dataset.user_histories();
    let users: Vec<UserId> = histories.iter().map(|(u, _)| *u).collect();
    assert_eq!(users, [UserId(2), UserId(5)]);
    assert_eq!(histories[0].1.len(), 2);
    assert_eq!(histories[1].1[0].rating, 4.0);
    assert_eq!(histories[1].1[1].timestamp, 20);
    assert_eq!(dataset.user_count(), 2);
}

fn shared_dir() -> PathBuf {
    match std::env::var_os("HYPERREC_MOVIELENS_SMALL") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/data/ml-latest-small"
        )),
    }
}

fn require_shared(dir: &Path) {
    assert!(
        dir.join("movies.csv").is_file(),
        "ml-latest-small not found at {} (set HYPERREC_MOVIELENS_SMALL to its directory)",
        dir.display()
    );
}

#[test]
fn the_real_ml_latest_small_loads_cleanly() {
    let dir = shared_dir();
    require_shared(&dir);
    let dataset = movielens::load(&dir, LoadOptions::strict()).expect("strict load");
    assert!(dataset.diagnostics.is_empty(), "{:?}", dataset.diagnostics);
    assert_eq!(dataset.catalog.len(), 9_742);
    assert_eq!(dataset.ratings.len(), 100_836);
    assert_eq!(dataset.tags.len(), 3_683);
    assert_eq!(dataset.user_count(), 610);
    assert_eq!(dataset.user_histories().len(), 610);
    assert_eq!(dataset.catalog.genres().len(), 19);

    let heat = dataset.catalog.index_of(ItemId(6)).expect("Heat");
    assert!(
        dataset
            .catalog
            .text(heat)
            .starts_with("Heat (1995). Genres: action, crime, thriller"),
        "{}",
        dataset.catalog.text(heat)
    );
    assert_eq!(dataset.fingerprint().len(), 64);

    // The histories feed the user table directly.
    let dim = 4;
    let items = ItemEmbeddings::new(dim, vec![0.5; dataset.catalog.len() * dim]).expect("shape");
    let users = UserTable::build(dataset.user_histories(), &items, ProfileRule::default());
    assert_eq!(users.len(), 610);
}
