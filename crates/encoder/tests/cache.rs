//! The query cache and the encode stage: hit/miss counting, batches equal to one-by-one
//! encoding, sound cache keys, and the stage's writes to the batch.

mod common;

use std::num::NonZeroUsize;
use std::sync::Arc;

use hyperrec_encoder::{CacheStats, EncoderStage, QueryEncoder, cache_key};
use hyperrec_stage::{Batch, Context, Cpu, Request, Stage, StageError, UserId};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn query_encoder(capacity: usize) -> QueryEncoder {
    let encoder =
        Arc::new(hyperrec_encoder::Encoder::load(common::model_files()).expect("load model"));
    QueryEncoder::new(encoder, NonZeroUsize::new(capacity).expect("capacity > 0"))
}

/// One model per binary: tests share the encoder and make their own caches around it.
fn shared_query_encoder(capacity: usize) -> QueryEncoder {
    static SHARED: std::sync::OnceLock<Arc<hyperrec_encoder::Encoder>> = std::sync::OnceLock::new();
    let encoder = SHARED.get_or_init(|| query_encoder(1).encoder().clone());
    QueryEncoder::new(
        Arc::clone(encoder),
        NonZeroUsize::new(capacity).expect("capacity > 0"),
    )
}

const WORDS: [&str; 24] = [
    "thriller",
    "comedy",
    "space",
    "opera",
    "romance",
    "French",
    "dark",
    "twist",
    "ending",
    "family",
    "night",
    "documentary",
    "nature",
    "heist",
    "robot",
    "vampire",
    "war",
    "1980s",
    "Kurosawa",
    "Amélie",
    "sci-fi",
    "noir",
    "(2015)",
    "Drama|Mystery",
];

fn random_texts(rng: &mut StdRng, count: usize) -> Vec<String> {
    (0..count)
        .map(|_| {
            let words = rng.random_range(1..=40);
            (0..words)
                .map(|_| WORDS[rng.random_range(0..WORDS.len())])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[test]
fn counters_track_hits_misses_and_repeats() {
    let queries = shared_query_encoder(2);
    assert_eq!(
        queries.stats(),
        CacheStats {
            hits: 0,
            misses: 0,
            entries: 0,
            capacity: 2
        }
    );

    let first = queries.encode(&["Thriller movies"]).expect("encode");
    assert_eq!((queries.stats().hits, queries.stats().misses), (0, 1));
    // Same key: case and whitespace differ.
    let again = queries.encode(&["  thriller \t MOVIES "]).expect("encode");
    assert_eq!((queries.stats().hits, queries.stats().misses), (1, 1));
    assert_eq!(first, again);

    // A repeat inside one batch is encoded once.
    let batch = queries
        .encode(&["comedy", "Comedy", "thriller movies"])
        .expect("encode");
    let stats = queries.stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (3, 2, 2));
    assert_eq!(batch[0], batch[1]);
    assert_eq!(batch[2], first[0]);

    // Capacity 2: "romance" evicts the least recently used key, "thriller movies" (the
    // batch above touched it before inserting "comedy"), which then misses again.
    queries.encode(&["romance"]).expect("encode");
    queries.encode(&["thriller movies"]).expect("encode");
    let stats = queries.stats();
    assert_eq!((stats.hits, stats.misses), (3, 4));
    assert!((stats.hit_rate() - 3.0 / 7.0).abs() < 1e-12);

    // Rejected queries count as neither.
    assert!(queries.encode(&["  "]).is_err());
    assert_eq!(queries.stats().hits + queries.stats().misses, 7);
}

#[test]
fn cached_and_uncached_embeddings_agree() {
    let queries = shared_query_encoder(64);
    let texts = ["space opera", "a slow French romance"];
    let direct = queries.encoder().encode(&texts).expect("direct");
    let cold = queries.encode(&texts).expect("cold");
    let warm = queries.encode(&texts).expect("warm");
    assert_eq!(cold, warm);
    for (a, b) in direct.iter().zip(&cold) {
        assert!(common::cosine32(a, b) > 0.99999);
    }
}

#[test]
fn a_batch_equals_one_by_one() {
    let seed = common::clock_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let texts = random_texts(&mut rng, 24);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let encoder = shared_query_encoder(1);
    let encoder = encoder.encoder();
    let batched = encoder.encode(&refs).expect("batch");
    for (text, in_batch) in refs.iter().zip(&batched) {
        let alone = encoder.encode(&[text]).expect("single").remove(0);
        let max_diff = alone
            .iter()
            .zip(in_batch)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let cosine = common::cosine32(&alone, in_batch);
        assert!(
            cosine > 0.99999 && max_diff < 1e-4,
            "seed {seed}: {text:?}: cosine {cosine}, max diff {max_diff}"
        );
    }
}

#[test]
fn texts_with_one_key_have_the_same_word_pieces() {
    let encoder = shared_query_encoder(1);
    let encoder = encoder.encoder();
    let seed = common::clock_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut texts: Vec<String> = vec![
        "ÉTÉ à Paris".into(),
        "İstanbul nights".into(),
        "ΣΟΦΙΑ".into(),
        "a\u{0B}b \u{0C}c\u{85}d".into(),
        "line\u{2028}separator\u{00A0}nbsp".into(),
        "tabs\tand\r\nnewlines".into(),
        "ǅungla ﬁlm".into(),
    ];
    // Random casing and whitespace around random words.
    const SPACES: [&str; 5] = [" ", "  ", "\t", "\n ", "\u{3000}"];
    for text in random_texts(&mut rng, 16) {
        let mut noisy = String::new();
        for word in text.split(' ') {
            noisy.push_str(SPACES[rng.random_range(0..SPACES.len())]);
            for c in word.chars() {
                if rng.random_bool(0.5) {
                    noisy.extend(c.to_uppercase());
                } else {
                    noisy.push(c);
                }
            }
        }
        texts.push(noisy);
    }
    for text in &texts {
        let key = cache_key(text);
        assert_eq!(
            encoder.tokens(text).expect("tokens of text"),
            encoder.tokens(&key).expect("tokens of key"),
            "seed {seed}: {text:?} and its key {key:?} tokenize differently"
        );
    }
}

fn request(query: &str) -> Request {
    Request {
        user: UserId(1),
        query: query.to_owned(),
        context: Context::default(),
        k: 10,
        exclude_seen: true,
    }
}

#[test]
fn the_stage_writes_tokens_masks_and_embeddings() {
    let queries = Arc::new(shared_query_encoder(16));
    let mut stage = EncoderStage::new(Arc::clone(&queries));
    assert_eq!(Stage::<Cpu>::name(&stage), "encode");
    let texts = [
        "thriller movies",
        "lighthearted comedy for a family movie night",
        "Thriller  Movies",
    ];
    let mut batch = Batch::new(&Cpu, 384).expect("batch");
    batch
        .reset(&Cpu, texts.iter().map(|text| request(text)).collect())
        .expect("reset");
    stage.run(&Cpu, &mut batch).expect("run");

    let encoder = queries.encoder();
    let rows = encoder.tokenize(&texts).expect("tokenize");
    let longest = rows.iter().map(Vec::len).max().expect("rows");
    assert_eq!(batch.seq_len, longest);
    assert_eq!(batch.token_ids.len(), texts.len() * longest);
    for (i, row) in rows.iter().enumerate() {
        let ids = &batch.token_ids[i * longest..(i + 1) * longest];
        let mask = &batch.attention_mask[i * longest..(i + 1) * longest];
        assert_eq!(&ids[..row.len()], row.as_slice());
        assert!(ids[row.len()..].iter().all(|&id| id == 0));
        assert!(mask[..row.len()].iter().all(|&m| m == 1));
        assert!(mask[row.len()..].iter().all(|&m| m == 0));
    }
    let direct = encoder.encode(&texts).expect("encode");
    for (i, expected) in direct.iter().enumerate() {
        let written = &batch.query_embeddings[i * 384..(i + 1) * 384];
        assert!(common::cosine32(written, expected) > 0.99999, "row {i}");
    }
    // Third text shares the first one's key.
    assert_eq!((queries.stats().hits, queries.stats().misses), (1, 2));

    stage.run(&Cpu, &mut batch).expect("second run");
    assert_eq!((queries.stats().hits, queries.stats().misses), (4, 2));
}

#[test]
fn the_stage_rejects_bad_queries_and_shapes() {
    let queries = Arc::new(shared_query_encoder(4));
    let mut stage = EncoderStage::new(queries);
    let mut batch = Batch::new(&Cpu, 384).expect("batch");
    batch
        .reset(&Cpu, vec![request("fine"), request("   ")])
        .expect("reset");
    match stage.run(&Cpu, &mut batch) {
        Err(StageError::InvalidRequest(message)) => {
            assert!(message.contains("request 1"), "{message}");
        }
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
    let long = "x".repeat(hyperrec_encoder::MAX_TEXT_CHARS + 1);
    batch.reset(&Cpu, vec![request(&long)]).expect("reset");
    assert!(matches!(
        stage.run(&Cpu, &mut batch),
        Err(StageError::InvalidRequest(_))
    ));

    let mut narrow = Batch::new(&Cpu, 8).expect("batch");
    narrow.reset(&Cpu, vec![request("fine")]).expect("reset");
    assert!(matches!(
        stage.run(&Cpu, &mut narrow),
        Err(StageError::BatchShape { .. })
    ));

    let mut empty = Batch::new(&Cpu, 384).expect("batch");
    empty.reset(&Cpu, Vec::new()).expect("reset");
    stage.run(&Cpu, &mut empty).expect("empty batch");
    assert_eq!(empty.seq_len, 0);
    assert!(empty.query_embeddings.is_empty());
}

#[test]
fn query_encoder_and_stage_are_thread_safe() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<QueryEncoder>();
    assert_send_sync::<hyperrec_encoder::Encoder>();
    assert_send_sync::<EncoderStage>();
}
