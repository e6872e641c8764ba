//! `hyperrec embed` end to end: output formats, stdin, and bad input (invalid UTF-8 in
//! arguments and stdin, empty text, a broken model directory).
//!
//! The happy paths run the real model, provisioned as the CLI always does; they fail, not
//! skip, when it cannot be had.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn hyperrec(args: &[&std::ffi::OsStr], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hyperrec"))
        .arg("embed")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hyperrec");
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(bytes).expect("write stdin");
    }
    child.wait_with_output().expect("wait for hyperrec")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn norm(values: &[f64]) -> f64 {
    values.iter().map(|x| x * x).sum::<f64>().sqrt()
}

#[cfg(unix)]
#[test]
fn invalid_utf8_argument_is_a_clear_error() {
    use std::os::unix::ffi::OsStrExt;
    let bad = std::ffi::OsStr::from_bytes(b"caf\xe9 movies");
    let output = hyperrec(&["ok".as_ref(), bad], None);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("text argument 2 is not valid UTF-8"),
        "{message}"
    );
    assert!(!message.contains("panicked"), "{message}");
}

#[test]
fn invalid_utf8_on_stdin_is_a_clear_error() {
    let output = hyperrec(&[], Some(b"fine\nbad \xff\xfe line\n"));
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("stdin line 2 is not valid UTF-8"),
        "{message}"
    );
    assert!(!message.contains("panicked"), "{message}");
}

#[test]
fn empty_text_is_a_clear_error() {
    let output = hyperrec(&["thriller".as_ref(), "   ".as_ref()], None);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("text 2") && message.contains("empty"),
        "{message}"
    );
}

#[test]
fn broken_model_directory_names_the_missing_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("config.json"), "{}").expect("write");
    let output = hyperrec(
        &[
            "--model".as_ref(),
            dir.path().as_os_str(),
            "thriller".as_ref(),
        ],
        None,
    );
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("tokenizer.json"), "{message}");
}

#[test]
fn json_output_has_text_tokens_and_unit_embeddings() {
    let output = hyperrec(
        &[
            "--json".as_ref(),
            "thriller movies".as_ref(),
            "Mad Max: Fury Road (2015)".as_ref(),
        ],
        None,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let records: Vec<serde_json::Value> =
        serde_json::from_slice(&output.stdout).expect("stdout is a JSON array");
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["text"], "thriller movies");
    assert_eq!(
        records[0]["tokens"],
        serde_json::json!(["[CLS]", "thriller", "movies", "[SEP]"])
    );
    for record in &records {
        let embedding: Vec<f64> =
            serde_json::from_value(record["embedding"].clone()).expect("embedding floats");
        assert_eq!(embedding.len(), 384);
        assert!((norm(&embedding) - 1.0).abs() < 1e-4);
    }
}

#[test]
fn plain_output_from_stdin_is_one_line_per_text() {
    let output = hyperrec(&[], Some(b"thriller movies\r\n\n  \nspace opera\n"));
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8(output.stdout).expect("utf-8 output");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for (line, text) in lines.iter().zip(["thriller movies", "space opera"]) {
        let (printed, floats) = line.split_once('\t').expect("text, tab, floats");
        assert_eq!(printed, text);
        let values: Vec<f64> = floats
            .split(' ')
            .map(|value| value.parse().expect("a float"))
            .collect();
        assert_eq!(values.len(), 384);
        assert!((norm(&values) - 1.0).abs() < 1e-4);
    }
}
