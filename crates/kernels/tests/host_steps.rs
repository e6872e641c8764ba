//! The GPU rerank's host steps (`plan_sources` before the launch, `fill_sources` after it)
//! against the CPU rerank stage, on fresh random inputs. CPU only: runs everywhere.

#![cfg(feature = "cuda")]

mod common;

use rand::SeedableRng;
use rand::rngs::StdRng;

use common::{random_items, random_queries, random_requests, random_users, seed};
use hyperrec_fusion::{Fusion, FusionConfig};
use hyperrec_kernels::{MAX_SLOTS, NO_ITEM, fill_sources, plan_sources};
use hyperrec_rerank::{AttentionRerank, ContextVocabulary, RerankConfig, RerankWeights};
use hyperrec_similarity::{Similarity, SimilarityConfig};
use hyperrec_stage::{Batch, Cpu, Social, Source, Stage, StageError, TimeOfDay};

const DIM: usize = 32;

/// `plan_sources` + `fill_sources` give the CPU stage's `notes.sources`, and the packed
/// records describe exactly those sources: user row, the last `count` slots of the device
/// history row, context phrase rows in slot order. Contexts vary over more than the memo's
/// eight entries, so lookups are evicted and redone; 300 queries take the parallel fill.
#[test]
fn host_steps_match_the_cpu_rerank_sources() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let items = random_items(&mut rng, 500, DIM);
    let users = random_users(&mut rng, &items, 200, 70);
    let genres: Vec<String> = ["thriller", "comedy", "drama"]
        .iter()
        .map(|g| g.to_string())
        .collect();
    // "drama" has no phrase embedding: its phrase must be skipped.
    let entries = ContextVocabulary::all_phrases(&genres[..2])
        .into_iter()
        .map(|phrase| (phrase, common::unit_vector(&mut rng, DIM)))
        .collect();
    let vocabulary = std::sync::Arc::new(ContextVocabulary::new(entries).expect("vocabulary"));
    let config = RerankConfig::default();
    for (n, table_history) in [(1usize, 50usize), (37, 50), (300, 60)] {
        let context = format!("seed {seed}, n {n}, table history {table_history}");
        let mut requests = random_requests(&mut rng, 200, n, 10);
        for (i, request) in requests.iter_mut().enumerate() {
            request.context.time_of_day = (i % 5 != 0).then(|| TimeOfDay::ALL[i % 4]);
            request.context.social = (i % 3 == 0).then_some(Social::Alone);
            request.context.genres = match i % 4 {
                0 => vec![],
                1 => vec![genres[0].clone()],
                2 => vec![genres[1].clone(), genres[2].clone()],
                _ => vec![genres[2].clone(), genres[0].clone(), genres[1].clone()],
            };
        }
        let mut cpu = Batch::new(&Cpu, DIM).expect("batch");
        cpu.reset(&Cpu, requests.clone()).expect("reset");
        cpu.query_embeddings
            .copy_from_slice(&random_queries(&mut rng, n, DIM));
        Fusion::new(users.clone(), FusionConfig { alpha: 0.5 })
            .expect("fusion")
            .run(&Cpu, &mut cpu)
            .expect("fusion");
        Similarity::new(
            items.clone(),
            users.clone(),
            SimilarityConfig {
                candidates: 20,
                exclude_seen: true,
            },
        )
        .expect("similarity")
        .run(&Cpu, &mut cpu)
        .expect("similarity");
        AttentionRerank::new(
            items.clone(),
            users.clone(),
            vocabulary.clone(),
            config.clone(),
            RerankWeights::untrained(DIM, config.heads),
        )
        .expect("cpu rerank")
        .run(&Cpu, &mut cpu)
        .expect("cpu rerank");

        let table = users.read();
        let phrases = vocabulary.read();
        let mut notes = cpu.notes.clone();
        notes.iter_mut().for_each(|note| note.sources.clear());
        let mut packed = Vec::new();
        let slots = plan_sources(
            &table,
            &phrases,
            config.history_len,
            table_history,
            &requests,
            &notes,
            &mut packed,
        )
        .expect("plan");
        fill_sources(&table, &phrases, config.history_len, &requests, &mut notes);
        assert_eq!(slots, cpu.slots, "{context}: slots");
        assert_eq!(
            packed.len(),
            4 * n + 1 + packed[3 * n + n] as usize,
            "{context}"
        );
        for q in 0..n {
            let sources = &cpu.notes[q].sources;
            assert_eq!(&notes[q].sources, sources, "{context}: sources of {q}");
            let history: Vec<u32> = sources
                .iter()
                .filter_map(|s| match s {
                    Source::HistoryItem(item) => Some(*item),
                    Source::Context(_) => None,
                })
                .collect();
            let (user, begin, count) = (packed[q], packed[n + q], packed[2 * n + q]);
            assert_eq!(count as usize, history.len(), "{context}: count of {q}");
            if history.is_empty() {
                assert_eq!(user, NO_ITEM, "{context}: user of {q}");
            } else {
                let row = notes[q].user.expect("a history has a user");
                assert_eq!(user, row, "{context}: user of {q}");
                // The device row: the table's last `table_history` entries, oldest first.
                let device_row: Vec<u32> = table
                    .recent(row, table_history)
                    .iter()
                    .map(|h| h.item)
                    .collect();
                let window = begin as usize..(begin + count) as usize;
                assert_eq!(device_row[window], history[..], "{context}: slots of {q}");
            }
            let (from, to) = (packed[3 * n + q], packed[3 * n + q + 1]);
            let rows = &packed[4 * n + 1 + from as usize..4 * n + 1 + to as usize];
            let phrase_rows: Vec<u32> = sources
                .iter()
                .filter_map(|s| match s {
                    Source::Context(phrase) => phrases.row_of(phrase),
                    Source::HistoryItem(_) => None,
                })
                .collect();
            assert_eq!(rows, &phrase_rows[..], "{context}: context rows of {q}");
        }
    }
}

/// Bad input is refused, not read out of bounds: a user row past the table, and more
/// sources than the GPU rerank holds.
#[test]
fn plan_sources_refuses_unknown_rows_and_too_many_sources() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let items = random_items(&mut rng, 300, DIM);
    let users = random_users(&mut rng, &items, 30, 70);
    let vocabulary = ContextVocabulary::empty(DIM);
    let table = users.read();
    let phrases = vocabulary.read();
    let requests = random_requests(&mut rng, 30, 1, 10);
    let mut notes = vec![hyperrec_stage::RequestNotes::default()];
    let mut packed = Vec::new();
    notes[0].user = Some(table.len() as u32 + 3);
    let unknown = plan_sources(&table, &phrases, 50, 50, &requests, &notes, &mut packed);
    assert!(
        matches!(unknown, Err(StageError::UnknownUser(_))),
        "seed {seed}: {unknown:?}"
    );
    let long = (0..table.len() as u32)
        .find(|&u| table.history(u).len() > MAX_SLOTS)
        .expect("a history longer than MAX_SLOTS (70-entry histories)");
    notes[0].user = Some(long);
    let too_many = plan_sources(&table, &phrases, 70, 70, &requests, &notes, &mut packed);
    assert!(
        matches!(too_many, Err(StageError::Failed { .. })),
        "seed {seed}: {too_many:?}"
    );
}

/// `plan_members` (the GPU fusion's host step) writes the CPU fusion stage's notes, and its
/// runs of members are each request's user and found companions that have a profile, in
/// that order; batches from 256 requests take the parallel plan, which must give the same
/// concatenation as the serial one.
#[test]
fn plan_members_matches_the_cpu_fusion_notes() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let items = random_items(&mut rng, 300, DIM);
    let users = random_users(&mut rng, &items, 150, 20);
    for n in [1usize, 37, 255, 256, 300, 1000] {
        let context = format!("seed {seed}, n {n}");
        let requests = random_requests(&mut rng, 150, n, 10);
        let mut cpu = Batch::new(&Cpu, DIM).expect("batch");
        cpu.reset(&Cpu, requests.clone()).expect("reset");
        cpu.query_embeddings
            .copy_from_slice(&random_queries(&mut rng, n, DIM));
        Fusion::new(users.clone(), FusionConfig { alpha: 0.5 })
            .expect("fusion")
            .run(&Cpu, &mut cpu)
            .expect("fusion");

        let table = users.read();
        let mut notes = vec![hyperrec_stage::RequestNotes::default(); n];
        let (mut offsets, mut members) = (vec![7u32; 3], vec![9u32; 5]);
        hyperrec_kernels::plan_members(&table, &requests, &mut notes, &mut offsets, &mut members);
        assert_eq!(offsets.len(), n + 1, "{context}");
        assert_eq!(offsets[0], 0, "{context}");
        assert_eq!(offsets[n] as usize, members.len(), "{context}");
        for (q, (planned, reference)) in notes.iter().zip(&cpu.notes).enumerate() {
            assert_eq!(planned.user, reference.user, "{context}, query {q}");
            assert_eq!(
                planned.companions, reference.companions,
                "{context}, query {q}"
            );
            assert_eq!(
                planned.cold_start, reference.cold_start,
                "{context}, query {q}"
            );
            let expected: Vec<u32> = reference
                .user
                .into_iter()
                .chain(reference.companions.iter().copied())
                .filter(|&member| table.embedding(member).is_some())
                .collect();
            let run = &members[offsets[q] as usize..offsets[q + 1] as usize];
            assert_eq!(run, &expected[..], "{context}, query {q}");
        }
    }
}
