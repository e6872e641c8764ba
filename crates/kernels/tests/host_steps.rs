//! The GPU rerank's host steps (`plan_sources` before the launch, `fill_sources` after it)
//! against the CPU rerank stage, on fresh random inputs. CPU only: runs everywhere.

#![cfg(feature = "cuda")]

mod common;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use common::{cpu_retrieved, random_items, random_queries, random_requests, random_users, seed};
use hyperrec_catalog::HistoryEntry;
use hyperrec_fusion::{Fusion, FusionConfig};
use hyperrec_kernels::{
    MAX_SLOTS, NO_ITEM, fill_excluded, fill_sources, plan_exclusions, plan_members, plan_sources,
};
use hyperrec_rerank::{AttentionRerank, ContextVocabulary, RerankConfig, RerankWeights};
use hyperrec_stage::{Batch, Cpu, RequestNotes, Social, Source, Stage, StageError, TimeOfDay};

const DIM: usize = 32;

/// `plan_sources` + `fill_sources` give the CPU stage's `notes.sources`, and the packed
/// records describe exactly those sources: user row, the last `count` slots of the device
/// history row, context phrase rows in slot order. Contexts vary over more than the memo's
/// eight entries, so lookups are evicted and redone; requests with companions (a group,
/// whatever `social` says) share the memo entry of the same phrases.
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
    for (n, table_history) in [(1usize, 50usize), (37, 50), (300, 60), (1000, 50)] {
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
        let queries = random_queries(&mut rng, n, DIM);
        let mut cpu = cpu_retrieved(&items, &users, &requests, &queries, DIM, 20, true);
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
        notes
            .iter_mut()
            .for_each(|note| note.sources = Default::default());
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
                    Source::HistoryItem(item) => Some(item),
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
                    Source::Context(phrase) => phrases.row_of(&phrase),
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
    // Histories are uniform in 1..=70 (a seventh of users have none), so among 400 users
    // some are longer than MAX_SLOTS = 64 except with probability (64/70)^340 < 1e-13 (with
    // 30 users, about one seed in nine had none).
    let users = random_users(&mut rng, &items, 400, 70);
    let vocabulary = ContextVocabulary::empty(DIM);
    let table = users.read();
    let phrases = vocabulary.read();
    let requests = random_requests(&mut rng, 400, 1, 10);
    let mut notes = vec![RequestNotes::default()];
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
        let mut notes = vec![RequestNotes::default(); n];
        let (mut offsets, mut members) = (vec![7u32; 3], vec![9u32; 5]);
        plan_members(&table, &requests, &mut notes, &mut offsets, &mut members);
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

/// `plan_exclusions` + `fill_excluded` (the GPU similarity's host steps) give the CPU
/// similarity stage's `notes.excluded`, with the stage's exclusion on and off; the planned
/// row of a query is its user exactly when its seen set is excluded, `NO_ITEM` otherwise.
#[test]
fn exclusion_steps_match_the_cpu_similarity_notes() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let items = random_items(&mut rng, 400, DIM);
    let users = random_users(&mut rng, &items, 300, 60);
    for exclude_seen in [true, false] {
        for n in [1usize, 37, 300, 1000] {
            let context = format!("seed {seed}, n {n}, exclude_seen {exclude_seen}");
            let requests = random_requests(&mut rng, 300, n, 10);
            let queries = random_queries(&mut rng, n, DIM);
            let cpu = cpu_retrieved(&items, &users, &requests, &queries, DIM, 20, exclude_seen);

            let table = users.read();
            let mut notes = cpu.notes.clone();
            notes
                .iter_mut()
                .for_each(|note| note.excluded = Default::default());
            let mut rows = vec![7u32; 3];
            plan_exclusions(&table, exclude_seen, &requests, &notes, &mut rows);
            fill_excluded(&table, exclude_seen, &requests, &mut notes);
            assert_eq!(rows.len(), n, "{context}");
            let mut excluded = 0;
            for q in 0..n {
                assert_eq!(
                    notes[q].excluded, cpu.notes[q].excluded,
                    "{context}, query {q}"
                );
                let expected = match cpu.notes[q].user {
                    Some(user) if exclude_seen && requests[q].exclude_seen => user,
                    _ => NO_ITEM,
                };
                assert_eq!(rows[q], expected, "{context}, query {q}");
                if expected != NO_ITEM {
                    assert_eq!(notes[q].excluded[..], *table.seen(expected), "{context}");
                    excluded += 1;
                } else {
                    assert!(notes[q].excluded.is_empty(), "{context}, query {q}");
                }
            }
            // Three requests in four ask for exclusion: some must have been excluded.
            assert!(!exclude_seen || n < 4 || excluded > 0, "{context}");
        }
    }
}

/// Notes filled by the GPU path's host steps keep what their request was served with:
/// events applied to the user table afterwards (new history entries, new seen items, new
/// users) change the table, not the notes.
#[test]
fn filled_notes_keep_their_snapshots_across_events() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let items = random_items(&mut rng, 300, DIM);
    let users = random_users(&mut rng, &items, 100, 30);
    let vocabulary = ContextVocabulary::empty(DIM);
    let n = 300;
    let requests = random_requests(&mut rng, 100, n, 10);
    let mut notes = vec![RequestNotes::default(); n];
    {
        let table = users.read();
        let phrases = vocabulary.read();
        let (mut offsets, mut members) = (Vec::new(), Vec::new());
        plan_members(&table, &requests, &mut notes, &mut offsets, &mut members);
        fill_excluded(&table, true, &requests, &mut notes);
        fill_sources(&table, &phrases, 20, &requests, &mut notes);
    }
    let before: Vec<(Vec<u32>, Vec<Source>)> = notes
        .iter()
        .map(|note| (note.excluded.to_vec(), note.sources.to_vec()))
        .collect();
    let mut changed = 0;
    {
        let mut table = users.write();
        for request in &requests {
            let entry = HistoryEntry {
                item: rng.random_range(0..items.len() as u32),
                rating: 4.5,
                timestamp: 10_000_000 + rng.random_range(0..1000),
            };
            table.apply(request.user, entry, &items);
        }
        for (note, (excluded, sources)) in notes.iter().zip(&before) {
            assert_eq!(note.excluded[..], excluded[..], "seed {seed}");
            assert_eq!(note.sources, *sources, "seed {seed}");
            if let Some(user) = note.user {
                let now: Vec<u32> = table.recent(user, 20).iter().map(|h| h.item).collect();
                let noted: Vec<u32> = note.sources.history().iter().map(|h| h.item).collect();
                changed += usize::from(now != noted);
            }
        }
    }
    // Every known user got a newer entry: the table's recent history moved on.
    assert!(changed > 0, "seed {seed}: no user's history changed");
}
