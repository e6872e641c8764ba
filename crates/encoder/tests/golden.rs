//! The encoder against reference embeddings of sentence-transformers/all-MiniLM-L6-v2:
//! same word pieces, cosine >= 0.9999 for every case of the golden file, with the default
//! (native) forward pass and with candle's reference one.

mod common;

use hyperrec_encoder::{Encoder, EncoderBackend, EncoderError};
use serde::Deserialize;

const MIN_COSINE: f64 = 0.9999;

#[derive(Deserialize)]
struct Golden {
    model: String,
    cases: Vec<GoldenCase>,
}

#[derive(Deserialize)]
struct GoldenCase {
    text: String,
    tokens: Vec<String>,
    embedding: Vec<f64>,
}

fn golden() -> Golden {
    let path = std::env::var("HYPERREC_GOLDEN").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/golden/minilm_embeddings.json"
        )
        .to_owned()
    });
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) => panic!("the golden file {path} is needed: {error}"),
    };
    match serde_json::from_str(&text) {
        Ok(golden) => golden,
        Err(error) => panic!("the golden file {path} does not parse: {error}"),
    }
}

#[test]
fn word_pieces_and_embeddings_match_the_reference() {
    let encoder = common::encoder();
    assert_eq!(encoder.backend(), EncoderBackend::Native);
    check_golden(encoder);
}

#[test]
fn candle_forward_matches_the_reference_too() {
    let encoder = common::reference_encoder();
    assert_eq!(encoder.backend(), EncoderBackend::Candle);
    check_golden(encoder);
}

fn check_golden(encoder: &Encoder) {
    let golden = golden();
    assert_eq!(golden.model, hyperrec_encoder::DEFAULT_MODEL);
    assert!(!golden.cases.is_empty(), "the golden file has no cases");
    let backend = encoder.backend();

    let mut min_cosine = f64::INFINITY;
    let mut failures = Vec::new();
    let mut batch_texts = Vec::new();
    let mut batch_refs = Vec::new();
    for case in &golden.cases {
        let (tokens, embedding) = if case.text.trim().is_empty() {
            // hyperrec rejects empty text; the model's answer for it ([CLS] [SEP]) is still
            // checked, by feeding those two word pieces directly.
            assert!(
                matches!(
                    encoder.encode(&[case.text.as_str()]),
                    Err(EncoderError::EmptyText)
                ),
                "empty text {:?} was not rejected",
                case.text
            );
            let around = encoder.tokens("a").expect("tokens of `a`");
            let ids = encoder.tokenize(&["a"]).expect("ids of `a`").remove(0);
            let (Some(&cls), Some(&sep)) = (ids.first(), ids.last()) else {
                panic!("`a` tokenized to nothing");
            };
            let pieces = vec![around[0].clone(), around[around.len() - 1].clone()];
            let embedding = encoder
                .embed_rows(&[&[cls, sep]])
                .expect("embed [CLS] [SEP]");
            (pieces, embedding)
        } else {
            batch_texts.push(case.text.as_str());
            batch_refs.push(&case.embedding);
            let tokens = encoder.tokens(&case.text).expect("tokens");
            let embedding = encoder
                .encode(&[case.text.as_str()])
                .expect("encode")
                .remove(0);
            (tokens, embedding)
        };
        if tokens != case.tokens {
            failures.push(format!(
                "{:?}: pieces {tokens:?}, expected {:?}",
                case.text, case.tokens
            ));
        }
        assert_eq!(
            embedding.len(),
            case.embedding.len(),
            "{:?}: width",
            case.text
        );
        let cosine = common::cosine(&embedding, &case.embedding);
        min_cosine = min_cosine.min(cosine);
        if cosine < MIN_COSINE {
            failures.push(format!(
                "{:?}: cosine {cosine:.6} < {MIN_COSINE}",
                case.text
            ));
        }
    }
    // The same texts in one padded batch must match the reference too.
    let batched = encoder.encode(&batch_texts).expect("batch encode");
    for ((text, embedding), reference) in batch_texts.iter().zip(&batched).zip(&batch_refs) {
        let cosine = common::cosine(embedding, reference);
        min_cosine = min_cosine.min(cosine);
        if cosine < MIN_COSINE {
            failures.push(format!(
                "{text:?} (in a batch): cosine {cosine:.6} < {MIN_COSINE}"
            ));
        }
    }
    println!(
        "golden ({backend:?}): {} cases, min cosine {min_cosine:.10} (1 - min = {:.2e})",
        golden.cases.len(),
        1.0 - min_cosine
    );
    assert!(
        failures.is_empty(),
        "{backend:?}: min cosine {min_cosine:.10}; mismatches:\n{}",
        failures.join("\n")
    );
}

#[test]
fn embeddings_are_unit_length_and_384_wide() {
    let encoder = common::encoder();
    assert_eq!(encoder.dim(), 384);
    for embedding in encoder.encode(&["thriller movies", "a"]).expect("encode") {
        assert_eq!(embedding.len(), 384);
        let norm: f32 = embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
    assert_eq!(common::model_files().fingerprint.len(), 16);
}
