//! Host preparation of the GPU rerank (and fusion) at batch 1000 (CPU only, no GPU needed): the step
//! that runs before every graph launch of the path, so its cost is paid per batch on top of
//! the device time.
//!
//! `plan_sources` (the records the kernels need, before the launch: one history length per
//! user, context lookups reused across equal contexts, one packed buffer) and
//! `fill_sources` (`notes.sources`, after the launch, overlapped with the device) against
//! `per_query_baseline`, the shape of the whole host step before session gpu5 (every
//! history entry read and phrase strings built and hashed per query, all before the
//! launch). Notes start empty each batch, as after `Batch::reset` in the pipeline.
//! Users: 100,000 with 50-item histories (the gpu-bench set-up); item vectors are 8 wide
//! since the host step never reads them.
//!
//! Every step also has its similarity counterpart (`plan_exclusions` before the launch,
//! `fill_excluded` = `CudaSimilarity::fill_notes` after it), and "all host steps" runs the
//! whole per-batch host work of `GpuPath::run` in steady state: the notes of the previous
//! batch dropped and reset (as `Batch::reset` does), fusion, similarity and rerank plans,
//! then both note fills. Each iteration takes the next of `ROTATE` batches of distinct
//! random users, so the users' rows are not all in the caches from the previous
//! iteration, as in serving (a batch's users are mostly not the previous batch's).

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use hyperrec_catalog::{HistoryEntry, ItemEmbeddings, ProfileRule, UserTable};
use hyperrec_kernels::{fill_excluded, fill_sources, plan_exclusions, plan_members, plan_sources};
use hyperrec_rerank::{ContextVocabulary, PhraseTable};
use hyperrec_stage::{Context, Request, RequestNotes, Social, Source, TimeOfDay, UserId};

const N_ITEMS: usize = 62_423;
const WIDTH: usize = 8;
const N_USERS: usize = 100_000;
const HISTORY: usize = 50;
const BATCH: usize = 1000;
/// Batches each bench cycles through (50,000 requests: half the users).
const ROTATE: usize = 50;

/// The user table, the phrase vocabulary, and `ROTATE` batches of `batch` requests each
/// with their notes as fusion leaves them (`user` set).
fn setup(
    batch: usize,
) -> (
    UserTable,
    ContextVocabulary,
    Vec<Vec<Request>>,
    Vec<Vec<RequestNotes>>,
) {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let data: Vec<f32> = (0..N_ITEMS * WIDTH)
        .map(|_| rng.random_range(0.1f32..1.0))
        .collect();
    let items = ItemEmbeddings::new(WIDTH, data).expect("item shape");
    let users = (0..N_USERS)
        .map(|u| {
            let history = (0..HISTORY as i64)
                .map(|t| HistoryEntry {
                    item: rng.random_range(0..N_ITEMS as u32),
                    rating: rng.random_range(1..=10) as f32 * 0.5,
                    timestamp: 1_000_000 + t * 3600,
                })
                .collect();
            (UserId(u as u32), history)
        })
        .collect();
    let users = UserTable::build(users, &items, ProfileRule::default());
    let genres: Vec<String> = ["thriller", "comedy", "drama", "horror", "romance"]
        .iter()
        .map(|g| g.to_string())
        .collect();
    let entries = ContextVocabulary::all_phrases(&genres)
        .into_iter()
        .map(|phrase| (phrase, vec![1.0f32; WIDTH]))
        .collect();
    let vocabulary = ContextVocabulary::new(entries).expect("vocabulary");
    let mut user = || UserId(rng.random_range(0..N_USERS as u32));
    let requests: Vec<Vec<Request>> = (0..ROTATE)
        .map(|_| {
            (0..batch)
                .map(|i| Request {
                    user: user(),
                    query: format!("q{i}"),
                    context: Context {
                        time_of_day: Some(TimeOfDay::Evening),
                        social: Some(Social::Alone),
                        genres: vec![genres[i % 2].clone()],
                        // One request in eight is a group: two companions.
                        companions: if i % 8 == 7 {
                            vec![user(), user()]
                        } else {
                            Vec::new()
                        },
                    },
                    k: 10,
                    exclude_seen: true,
                })
                .collect()
        })
        .collect();
    let notes = requests
        .iter()
        .map(|requests| {
            requests
                .iter()
                .map(|request| RequestNotes {
                    user: users.index_of(request.user),
                    ..RequestNotes::default()
                })
                .collect()
        })
        .collect();
    (users, vocabulary, requests, notes)
}

/// Index of the next batch of the rotation.
fn next(at: &mut usize) -> usize {
    *at = (*at + 1) % ROTATE;
    *at
}

/// The host step's shape before gpu5, kept here as the comparison point (its slots are
/// written as the lists `notes.sources` was then, into `sources`).
fn per_query_baseline(
    users: &UserTable,
    phrases: &PhraseTable,
    requests: &[Request],
    notes: &[RequestNotes],
    sources: &mut [Vec<Source>],
    records: &mut [Vec<u32>; 5],
) -> usize {
    records.iter_mut().for_each(Vec::clear);
    records[3].push(0);
    let mut slots = 0;
    for ((request, notes), sources) in requests.iter().zip(notes).zip(sources.iter_mut()) {
        sources.clear();
        let history = notes
            .user
            .map_or(&[][..], |user| users.recent(user, HISTORY));
        let mut context_rows = Vec::new();
        sources.extend(history.iter().map(|h| Source::HistoryItem(h.item)));
        for phrase in ContextVocabulary::phrases_for(&request.context) {
            if let Some(row) = phrases.row_of(&phrase) {
                context_rows.push(row);
                sources.push(Source::Context(phrase.into()));
            }
        }
        records[0].push(notes.user.unwrap_or(u32::MAX));
        records[1].push(0);
        records[2].push(history.len() as u32);
        records[4].extend_from_slice(&context_rows);
        let offset = records[4].len() as u32;
        records[3].push(offset);
        slots = slots.max(sources.len());
    }
    slots
}

fn host_prep(c: &mut Criterion) {
    let (users, vocabulary, requests, notes) = setup(BATCH);
    let phrases = vocabulary.read();
    let mut at = 0;
    let mut group = c.benchmark_group("rerank host step, batch 1000");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut packed = Vec::new();
    group.bench_function("plan_sources (before the launch)", |b| {
        b.iter(|| {
            let i = next(&mut at);
            plan_sources(
                &users,
                &phrases,
                HISTORY,
                HISTORY,
                &requests[i],
                &notes[i],
                &mut packed,
            )
            .expect("sources fit")
        })
    });
    group.bench_function("fill_sources (after the launch)", |b| {
        b.iter_batched_ref(
            || {
                let i = next(&mut at);
                (i, notes[i].clone())
            },
            |(i, notes)| fill_sources(&users, &phrases, HISTORY, &requests[*i], notes),
            BatchSize::LargeInput,
        )
    });
    let mut records: [Vec<u32>; 5] = Default::default();
    group.bench_function("per_query_baseline", |b| {
        b.iter_batched_ref(
            || (next(&mut at), vec![Vec::new(); BATCH]),
            |(i, sources)| {
                black_box(per_query_baseline(
                    &users,
                    &phrases,
                    &requests[*i],
                    &notes[*i],
                    sources,
                    &mut records,
                ))
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();

    let mut group = c.benchmark_group("similarity host step, batch 1000");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut exclude = Vec::new();
    group.bench_function("plan_exclusions (before the launch)", |b| {
        b.iter(|| {
            let i = next(&mut at);
            plan_exclusions(&users, true, &requests[i], &notes[i], &mut exclude)
        })
    });
    group.bench_function("fill_excluded (after the launch)", |b| {
        b.iter_batched_ref(
            || {
                let i = next(&mut at);
                (i, notes[i].clone())
            },
            |(i, notes)| fill_excluded(&users, true, &requests[*i], notes),
            BatchSize::LargeInput,
        )
    });
    group.finish();

    let mut group = c.benchmark_group("fusion host step, batch 1000");
    group.throughput(Throughput::Elements(BATCH as u64));
    let (mut offsets, mut members) = (Vec::new(), Vec::new());
    group.bench_function("plan_members (before the launch)", |b| {
        b.iter_batched_ref(
            || {
                let i = next(&mut at);
                (i, notes[i].clone())
            },
            |(i, notes)| plan_members(&users, &requests[*i], notes, &mut offsets, &mut members),
            BatchSize::LargeInput,
        )
    });
    group.finish();
    drop(phrases);

    all_steps(c, "all host steps, batch 1000", users, vocabulary, requests);
    let (users, vocabulary, requests, _) = setup(1);
    all_steps(c, "all host steps, batch 1", users, vocabulary, requests);
}

/// The whole per-batch host work of `GpuPath::run` in steady state, each iteration on the
/// next batch of the rotation: the previous batch's notes dropped and reset as
/// `Batch::reset` does, the three plans before the launch, the two note fills after it.
fn all_steps(
    c: &mut Criterion,
    name: &str,
    users: UserTable,
    vocabulary: ContextVocabulary,
    requests: Vec<Vec<Request>>,
) {
    let phrases = vocabulary.read();
    let n = requests[0].len();
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(n as u64));
    let (mut offsets, mut members, mut exclude, mut packed) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut notes: Vec<RequestNotes> = Vec::new();
    let mut at = 0;
    group.bench_function("reset + plans + fills", |b| {
        b.iter(|| {
            let i = next(&mut at);
            let requests = &requests[i];
            notes.clear();
            notes.resize(n, RequestNotes::default());
            plan_members(&users, requests, &mut notes, &mut offsets, &mut members);
            plan_exclusions(&users, true, requests, &notes, &mut exclude);
            let slots = plan_sources(
                &users,
                &phrases,
                HISTORY,
                HISTORY,
                requests,
                &notes,
                &mut packed,
            )
            .expect("sources fit");
            fill_excluded(&users, true, requests, &mut notes);
            fill_sources(&users, &phrases, HISTORY, requests, &mut notes);
            black_box(slots)
        })
    });
    group.finish();
}

criterion_group!(benches, host_prep);
criterion_main!(benches);
