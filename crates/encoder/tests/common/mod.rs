//! Shared by the encoder's integration tests: the real model, loaded once per test binary.
//!
//! The model is provisioned the way the CLI does it (`HYPERREC_MODEL` may name a directory
//! or hub id; default all-MiniLM-L6-v2). A test that cannot get it fails: a missing model
//! must never turn into a silently skipped check.

#![allow(dead_code)]

use std::sync::OnceLock;

use hyperrec_encoder::{DEFAULT_MODEL, Encoder, EncoderBackend, ModelFiles, resolve_model};

pub fn model_files() -> &'static ModelFiles {
    static FILES: OnceLock<ModelFiles> = OnceLock::new();
    FILES.get_or_init(|| {
        let spec = std::env::var("HYPERREC_MODEL").unwrap_or_else(|_| DEFAULT_MODEL.to_owned());
        match resolve_model(&spec) {
            Ok(files) => files,
            Err(error) => panic!("these tests need the model `{spec}`: {error}"),
        }
    })
}

pub fn encoder() -> &'static Encoder {
    static ENCODER: OnceLock<Encoder> = OnceLock::new();
    ENCODER.get_or_init(|| match Encoder::load(model_files()) {
        Ok(encoder) => encoder,
        Err(error) => panic!("cannot load the model: {error}"),
    })
}

/// The same model on candle's `BertModel`: the reference forward pass.
pub fn reference_encoder() -> &'static Encoder {
    static ENCODER: OnceLock<Encoder> = OnceLock::new();
    ENCODER.get_or_init(
        || match Encoder::load_with(model_files(), EncoderBackend::Candle) {
            Ok(encoder) => encoder,
            Err(error) => panic!("cannot load the model: {error}"),
        },
    )
}

pub fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| f64::from(x) * y).sum();
    let norm_a: f64 = a
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    let norm_b: f64 = b.iter().map(|&y| y * y).sum::<f64>().sqrt();
    dot / (norm_a * norm_b)
}

pub fn cosine32(a: &[f32], b: &[f32]) -> f64 {
    let b: Vec<f64> = b.iter().map(|&y| f64::from(y)).collect();
    cosine(a, &b)
}

/// A seed from the clock, so random inputs differ between runs; tests print it on failure.
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(0x5eed)
}
