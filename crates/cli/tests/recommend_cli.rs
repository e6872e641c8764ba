//! The pipeline commands end to end, on the real model and MovieLens data: JSON shape, cold
//! start, durable events, and every kind of bad input (each a clear message and a non-zero
//! exit, never a panic).
//!
//! Most tests run on a slice of MovieLens (the first 400 movies, their ratings and tags) so
//! indexing stays quick; the demo runs on the whole data set.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn shared_data() -> PathBuf {
    let dir = std::env::var_os("HYPERREC_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/data/ml-latest-small"
            ))
        });
    assert!(
        dir.join("movies.csv").is_file(),
        "these tests need MovieLens small at {} (set HYPERREC_DATA)",
        dir.display()
    );
    dir
}

/// Index and event logs of these tests, kept across runs so the index is computed once.
fn state_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("hyperrec-cli-tests")
        .join(name)
}

/// The first 400 movies of MovieLens small with their ratings and tags.
fn slice_data() -> &'static Path {
    static SLICE: OnceLock<PathBuf> = OnceLock::new();
    SLICE.get_or_init(|| {
        let source = shared_data();
        let dir = state_dir("slice-data");
        std::fs::create_dir_all(&dir).expect("create slice dir");
        let movies = std::fs::read_to_string(source.join("movies.csv")).expect("movies.csv");
        let kept: Vec<&str> = movies.lines().take(401).collect();
        let ids: std::collections::HashSet<&str> = kept
            .iter()
            .skip(1)
            .filter_map(|line| line.split(',').next())
            .collect();
        write_atomic(&dir.join("movies.csv"), &(kept.join("\n") + "\n"));
        for file in ["ratings.csv", "tags.csv"] {
            let text = std::fs::read_to_string(source.join(file)).expect("read csv");
            let mut lines = text.lines();
            let mut out = String::from(lines.next().unwrap_or_default());
            out.push('\n');
            for line in lines {
                if line
                    .split(',')
                    .nth(1)
                    .is_some_and(|movie| ids.contains(movie))
                {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            write_atomic(&dir.join(file), &out);
        }
        dir
    })
}

/// Tests run in parallel: write through a temp file so no reader sees half a file.
fn write_atomic(path: &Path, text: &str) {
    let temp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&temp, text).expect("write temp");
    std::fs::rename(&temp, path).expect("rename");
}

fn hyperrec(args: &[&str], data: &Path, state: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hyperrec"))
        .args(args)
        .arg("--data")
        .arg(data)
        .arg("--state")
        .arg(state)
        .args(["--device", "cpu"])
        .output()
        .expect("start hyperrec")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_clear_failure(output: &Output, expected: &str) {
    let stderr = text(&output.stderr);
    assert!(
        !output.status.success(),
        "must fail; stdout: {}",
        text(&output.stdout)
    );
    assert!(
        stderr.contains(expected),
        "stderr should say `{expected}`: {stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "a panic is not an error message: {stderr}"
    );
}

#[test]
fn recommend_json_has_items_timings_and_cold_start() {
    let state = state_dir("json");
    let output = hyperrec(
        &[
            "recommend",
            "--user",
            "1",
            "--query",
            "thriller movies",
            "--context",
            "evening,alone",
            "--k",
            "7",
            "--json",
        ],
        slice_data(),
        &state,
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let response: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON output");
    let items = response["items"].as_array().expect("items array");
    assert_eq!(items.len(), 7);
    for item in items {
        assert!(item["id"].is_u64(), "{item}");
        assert!(
            !item["title"].as_str().unwrap_or_default().is_empty(),
            "{item}"
        );
        assert!(item["score"].is_f64(), "{item}");
        assert!(item["explanation"].is_array(), "{item}");
    }
    assert_eq!(response["cold_start"], serde_json::Value::Bool(false));
    for stage in ["encode", "fusion", "cache", "similarity", "rerank", "total"] {
        assert!(
            response["timings_us"][stage].is_f64(),
            "timing of {stage}: {}",
            response["timings_us"]
        );
    }
}

#[test]
fn an_unknown_user_is_served_as_a_cold_start() {
    let output = hyperrec(
        &[
            "recommend",
            "--user",
            "4000000000",
            "--query",
            "funny animated movies",
            "--json",
        ],
        slice_data(),
        &state_dir("cold"),
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let response: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON output");
    assert_eq!(response["cold_start"], serde_json::Value::Bool(true));
    assert_eq!(response["items"].as_array().map(Vec::len), Some(10));
    let plain = hyperrec(
        &["recommend", "--user", "4000000000", "--query", "funny"],
        slice_data(),
        &state_dir("cold"),
    );
    assert!(
        text(&plain.stdout).contains("cold start"),
        "{}",
        text(&plain.stdout)
    );
}

#[test]
fn bad_requests_fail_with_a_clear_message() {
    let state = state_dir("bad");
    let data = slice_data();
    assert_clear_failure(
        &hyperrec(
            &["recommend", "--user", "1", "--query", "x", "--k", "0"],
            data,
            &state,
        ),
        "--k must be in 1..=1000, got 0",
    );
    assert_clear_failure(
        &hyperrec(
            &["recommend", "--user", "1", "--query", "x", "--k", "100000"],
            data,
            &state,
        ),
        "--k must be in 1..=1000, got 100000",
    );
    assert_clear_failure(
        &hyperrec(&["recommend", "--user", "1", "--query", "  "], data, &state),
        "--query is empty",
    );
    assert_clear_failure(
        &hyperrec(
            &[
                "recommend",
                "--user",
                "1",
                "--query",
                "x",
                "--context",
                "tuesday",
            ],
            data,
            &state,
        ),
        "unknown context `tuesday`",
    );
    assert_clear_failure(
        &hyperrec(&["similar", "--item", "999999999"], data, &state),
        "unknown item 999999999",
    );
    assert_clear_failure(
        &hyperrec(
            &["event", "--user", "1", "--item", "999999999", "--watch"],
            data,
            &state,
        ),
        "unknown item 999999999",
    );
    assert_clear_failure(
        &hyperrec(
            &["event", "--user", "1", "--item", "1", "--rating", "9"],
            data,
            &state,
        ),
        "--rating must be in 0.5..=5.0",
    );
    assert_clear_failure(
        &hyperrec(
            &["recommend", "--user", "1", "--query", "x"],
            &state.join("no-such-dir"),
            &state,
        ),
        "movies.csv",
    );
}

#[test]
fn an_event_is_durable_and_changes_the_next_answer() {
    let state = state_dir("events");
    // A fresh user, so the test does not depend on earlier runs' events.
    let user = format!("{}", 3_000_000 + std::process::id() % 1_000_000);
    let before = hyperrec(
        &[
            "recommend",
            "--user",
            &user,
            "--query",
            "toys come to life",
            "--json",
        ],
        slice_data(),
        &state,
    );
    assert!(before.status.success(), "{}", text(&before.stderr));
    let before: serde_json::Value = serde_json::from_slice(&before.stdout).expect("JSON");
    assert_eq!(before["cold_start"], serde_json::Value::Bool(true));
    let top = before["items"][0]["id"]
        .as_u64()
        .expect("an item")
        .to_string();

    let recorded = hyperrec(
        &["event", "--user", &user, "--item", &top, "--rating", "5"],
        slice_data(),
        &state,
    );
    assert!(recorded.status.success(), "{}", text(&recorded.stderr));

    // A new process: the event comes back from the log.
    let after = hyperrec(
        &[
            "recommend",
            "--user",
            &user,
            "--query",
            "toys come to life",
            "--json",
        ],
        slice_data(),
        &state,
    );
    assert!(after.status.success(), "{}", text(&after.stderr));
    let after: serde_json::Value = serde_json::from_slice(&after.stdout).expect("JSON");
    assert_eq!(
        after["cold_start"],
        serde_json::Value::Bool(false),
        "the rating gave the user a profile"
    );
    let ids: Vec<String> = after["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| i["id"].to_string())
        .collect();
    assert!(
        !ids.contains(&top),
        "the rated item {top} is excluded now: {ids:?}"
    );
}

#[test]
fn broken_rating_rows_are_reported_with_line_numbers_and_skipped() {
    let state = state_dir("broken");
    let dir = state.join("data");
    std::fs::create_dir_all(&dir).expect("dir");
    let slice = slice_data();
    std::fs::copy(slice.join("movies.csv"), dir.join("movies.csv")).expect("copy movies");
    let ratings = std::fs::read_to_string(slice.join("ratings.csv")).expect("ratings");
    let mut lines: Vec<&str> = ratings.lines().take(200).collect();
    lines.insert(3, "1,1,not-a-number,964982703");
    lines.insert(6, "1,1");
    write_atomic(&dir.join("ratings.csv"), &(lines.join("\n") + "\n"));
    let output = hyperrec(
        &["recommend", "--user", "1", "--query", "comedy", "--k", "3"],
        &dir,
        &state,
    );
    assert!(
        output.status.success(),
        "a lenient load keeps going: {}",
        text(&output.stderr)
    );
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("ratings.csv:4"),
        "line of the bad number: {stderr}"
    );
    assert!(
        stderr.contains("ratings.csv:7"),
        "line of the short row: {stderr}"
    );
    let strict = hyperrec(
        &["recommend", "--user", "1", "--query", "comedy", "--strict"],
        &dir,
        &state,
    );
    assert_clear_failure(&strict, "ratings.csv:4");
}

#[test]
fn duplicate_catalog_ids_are_reported() {
    let state = state_dir("duplicates");
    let dir = state.join("data");
    std::fs::create_dir_all(&dir).expect("dir");
    let slice = slice_data();
    let movies = std::fs::read_to_string(slice.join("movies.csv")).expect("movies");
    let mut lines: Vec<&str> = movies.lines().collect();
    lines.insert(5, "1,Toy Story Again (1995),Comedy");
    write_atomic(&dir.join("movies.csv"), &(lines.join("\n") + "\n"));
    std::fs::copy(slice.join("ratings.csv"), dir.join("ratings.csv")).expect("copy ratings");
    let lenient = hyperrec(
        &["recommend", "--user", "1", "--query", "comedy", "--k", "3"],
        &dir,
        &state,
    );
    assert!(lenient.status.success(), "{}", text(&lenient.stderr));
    assert!(
        text(&lenient.stderr).contains("movies.csv:6"),
        "{}",
        text(&lenient.stderr)
    );
    assert_clear_failure(
        &hyperrec(
            &["recommend", "--user", "1", "--query", "comedy", "--strict"],
            &dir,
            &state,
        ),
        "movies.csv:6",
    );
}

#[test]
fn demo_shows_different_lists_per_profile_and_context() {
    let output = hyperrec(&["demo", "--json"], &shared_data(), &state_dir("demo"));
    assert!(output.status.success(), "{}", text(&output.stderr));
    let demo: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let sections = demo["sections"].as_array().expect("sections");
    assert_eq!(sections.len(), 6, "two profiles x three contexts");
    let list = |s: &serde_json::Value| -> Vec<String> {
        s["response"]["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| i["id"].to_string())
            .collect()
    };
    for section in sections {
        for item in section["response"]["items"]
            .as_array()
            .into_iter()
            .flatten()
        {
            assert!(
                !item["explanation"]
                    .as_array()
                    .map(Vec::is_empty)
                    .unwrap_or(true),
                "every item explains itself: {item}"
            );
        }
    }
    // The two profiles disagree in every context...
    for context in 0..3 {
        assert_ne!(
            list(&sections[context]),
            list(&sections[3 + context]),
            "profiles in context {context}"
        );
    }
    // ...and each profile's three contexts do not all give the same list.
    for profile in 0..2 {
        let lists: Vec<Vec<String>> = (0..3).map(|c| list(&sections[profile * 3 + c])).collect();
        assert!(
            lists[0] != lists[1] || lists[1] != lists[2],
            "profile {profile}: contexts change nothing: {lists:?}"
        );
    }
    insta::assert_json_snapshot!("demo_shape", demo, {
        ".items_in_catalog" => "[count]",
        ".device" => "[device]",
        ".sections[].response.items[].id" => "[id]",
        ".sections[].response.items[].title" => "[title]",
        ".sections[].response.items[].genres" => "[genres]",
        ".sections[].response.items[].score" => "[score]",
        ".sections[].response.items[].retrieval_score" => "[score]",
        ".sections[].response.items[].explanation" => "[explanation]",
        ".sections[].response.timings_us.*" => "[us]",
        ".sections[].response.device" => "[device]",
    });
}
