//! The native forward pass against candle's `BertModel` on texts drawn fresh each run:
//! single texts, batches of mixed lengths (padding must not leak into a row), padded token
//! batches, and the native pass's refusal of ids it cannot embed.

mod common;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use hyperrec_encoder::EncoderError;

/// Native vs candle: the same function in f32, different summation orders.
const MIN_COSINE: f64 = 0.999_99;
const MAX_ABS_DIFF: f32 = 1e-4;

const WORDS: &[&str] = &[
    "thriller",
    "movies",
    "dark",
    "comedy",
    "for",
    "a",
    "family",
    "night",
    "space",
    "opera",
    "with",
    "epic",
    "battles",
    "documentary",
    "about",
    "nature",
    "mind-bending",
    "sci-fi",
    "like",
    "Inception",
    "and",
    "Memento",
    "slow",
    "French",
    "romance",
    "80s",
    "action",
    "heroes",
    "afternoon",
    "group",
    "of",
    "friends",
    "evening",
    "alone",
    "Pixar",
    "noir",
    "zombie",
    "apocalypse",
    "coming-of-age",
    "Tarantino",
    "heist",
    "über",
    "café",
    "1994",
    "!",
    "?",
    "western",
    "musical",
    "anime",
    "Kurosawa",
    "martial",
    "arts",
    "twist",
    "ending",
];

/// A random text of `1..=max_words` words, sometimes with a run of random letters.
fn random_text(rng: &mut StdRng, max_words: usize) -> String {
    let words = rng.random_range(1..=max_words);
    let mut text = Vec::with_capacity(words);
    for _ in 0..words {
        if rng.random_bool(0.1) {
            let len = rng.random_range(3..12);
            text.push((0..len).map(|_| rng.random_range('a'..='z')).collect());
        } else {
            text.push(WORDS[rng.random_range(0..WORDS.len())].to_owned());
        }
    }
    text.join(" ")
}

fn assert_close(native: &[f32], reference: &[f32], what: &str) {
    let cosine = common::cosine32(native, reference);
    let diff = native
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        cosine >= MIN_COSINE && diff <= MAX_ABS_DIFF,
        "{what}: cosine {cosine:.8}, max |diff| {diff:.2e}"
    );
}

#[test]
fn native_forward_matches_candle_on_random_texts() {
    let seed = common::clock_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let native = common::encoder();
    let reference = common::reference_encoder();

    for _ in 0..6 {
        let text = random_text(&mut rng, 14);
        let a = native.encode(&[text.as_str()]).expect("native").remove(0);
        let b = reference
            .encode(&[text.as_str()])
            .expect("candle")
            .remove(0);
        assert_close(&a, &b, &format!("seed {seed}: {text:?}"));
    }

    // One batch of mixed lengths, one long text among them.
    let mut texts: Vec<String> = (0..17).map(|_| random_text(&mut rng, 20)).collect();
    texts.push(random_text(&mut rng, 150));
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let a = native.encode_flat(&refs).expect("native batch");
    let b = reference.encode_flat(&refs).expect("candle batch");
    for (q, text) in texts.iter().enumerate() {
        assert_close(
            &a[q * 384..(q + 1) * 384],
            &b[q * 384..(q + 1) * 384],
            &format!("seed {seed}: batch row {q} {text:?}"),
        );
    }

    // The padded-batch entry point (what the encoder stage feeds) agrees as well.
    let ids = native.tokenize(&refs[..5]).expect("ids");
    let rows: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let padded = native.pad(&rows);
    let a = native.embed_batch(&padded).expect("native padded");
    let b = reference.embed_batch(&padded).expect("candle padded");
    for q in 0..rows.len() {
        assert_close(
            &a[q * 384..(q + 1) * 384],
            &b[q * 384..(q + 1) * 384],
            &format!("seed {seed}: padded row {q}"),
        );
    }
}

#[test]
fn native_forward_refuses_ids_it_cannot_embed() {
    let encoder = common::encoder();
    assert!(matches!(
        encoder.embed_rows(&[&[101, 4_000_000_000, 102]]),
        Err(EncoderError::UnknownWordPiece {
            id: 4_000_000_000,
            ..
        })
    ));
    let long = vec![1000u32; 600];
    assert!(matches!(
        encoder.embed_rows(&[&long]),
        Err(EncoderError::TooManyWordPieces { pieces: 600, .. })
    ));
}
