//! The composed pipeline on a small synthetic catalog with the real model: stage swapping,
//! determinism, real-time events, request validation.

use std::num::NonZeroUsize;
use std::sync::{Arc, OnceLock};

use hyperrec_catalog::synthetic::{SyntheticConfig, generate};
use hyperrec_catalog::{Dataset, ItemEmbeddings};
use hyperrec_encoder::{DEFAULT_MODEL, Encoder, QueryEncoder, resolve_model};
use hyperrec_pipeline::{Pipeline, PipelineConfig, PipelineError, Response, STAGE_ORDER};
use hyperrec_stage::{
    Batch, Context, Cpu, Device, Event, Interaction, ItemId, Request, Social, Stage, StageError,
    TimeOfDay, UserId,
};

struct Fixture {
    encoder: Arc<Encoder>,
    dataset: Arc<Dataset>,
    items: ItemEmbeddings,
}

/// Model, data and item embeddings, made once per test binary (the model load and the
/// item encoding are the slow part).
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let model = resolve_model(DEFAULT_MODEL)
            .unwrap_or_else(|e| panic!("the pipeline tests need the model: {e}"));
        let encoder =
            Arc::new(Encoder::load(&model).unwrap_or_else(|e| panic!("loading the model: {e}")));
        let dataset = generate(&SyntheticConfig {
            items: 300,
            users: 80,
            history_len: 15,
            ..SyntheticConfig::small(7)
        });
        let texts = dataset.catalog.texts();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let flat = encoder
            .encode_flat(&refs)
            .unwrap_or_else(|e| panic!("encoding items: {e}"));
        let items = ItemEmbeddings::new(encoder.dim(), flat)
            .unwrap_or_else(|| panic!("ragged item embeddings"));
        Fixture {
            encoder,
            dataset: Arc::new(dataset),
            items,
        }
    })
}

fn pipeline() -> Pipeline {
    let fixture = fixture();
    let query_encoder = Arc::new(QueryEncoder::new(
        fixture.encoder.clone(),
        NonZeroUsize::new(128).unwrap_or(NonZeroUsize::MIN),
    ));
    let config = PipelineConfig {
        cache: hyperrec_pipeline::CacheSettings {
            hot_items: 50,
            ..Default::default()
        },
        ..Default::default()
    };
    Pipeline::build(
        fixture.dataset.clone(),
        query_encoder,
        fixture.items.clone(),
        config,
    )
    .unwrap_or_else(|e| panic!("building the pipeline: {e}"))
}

fn known_user() -> UserId {
    fixture().dataset.ratings[0].user
}

fn request(user: UserId, query: &str, k: usize) -> Request {
    Request {
        user,
        query: query.into(),
        context: Context::default(),
        k,
        exclude_seen: true,
    }
}

fn ids(response: &Response) -> Vec<ItemId> {
    response.items.iter().map(|item| item.id).collect()
}

#[test]
fn every_stage_is_timed_and_results_are_ordered() {
    let mut pipeline = pipeline();
    let response = pipeline
        .recommend(&request(known_user(), "dark thriller", 10))
        .expect("recommend");
    assert_eq!(response.items.len(), 10);
    assert!(!response.cold_start);
    for stage in STAGE_ORDER.iter().chain(["total"].iter()) {
        assert!(
            response.timings_us.contains_key(*stage),
            "missing timing for {stage}: {:?}",
            response.timings_us
        );
    }
    for pair in response.items.windows(2) {
        assert!(pair[0].score >= pair[1].score, "not ordered: {pair:?}");
    }
    let user = pipeline
        .users()
        .read()
        .index_of(known_user())
        .expect("known user");
    let catalog = &pipeline.dataset().catalog;
    for item in &response.items {
        let index = catalog.index_of(item.id).expect("catalog item");
        assert!(
            !pipeline.users().read().has_seen(user, index),
            "seen item {} returned",
            item.id
        );
    }
}

#[test]
fn same_input_and_state_give_the_same_output() {
    let queries = [
        "space adventure",
        "romantic comedy for tonight",
        "war drama",
    ];
    let mut first = pipeline();
    let mut second = pipeline();
    for query in queries {
        let context = Context {
            time_of_day: Some(TimeOfDay::Evening),
            ..Context::default()
        };
        let request = Request {
            context,
            ..request(known_user(), query, 20)
        };
        let a = first.recommend(&request).expect("first");
        let b = second.recommend(&request).expect("second");
        assert_eq!(a.items, b.items, "query {query}");
        let again = first.recommend(&request).expect("again");
        assert_eq!(a.items, again.items, "query {query}, repeated");
    }
}

#[test]
fn a_batch_answers_like_single_requests() {
    let mut pipeline = pipeline();
    let users: Vec<UserId> = fixture()
        .dataset
        .ratings
        .iter()
        .map(|r| r.user)
        .take(200)
        .collect();
    let requests = vec![
        request(users[0], "funny animated film", 5),
        Request {
            context: Context {
                social: Some(Social::Group),
                ..Context::default()
            },
            ..request(*users.last().unwrap_or(&users[0]), "scary horror", 12)
        },
        request(UserId(999_999), "documentary about music", 3),
    ];
    let batch = pipeline.recommend_batch(&requests).expect("batch");
    for (request, batched) in requests.iter().zip(&batch) {
        let single = pipeline.recommend(request).expect("single");
        assert_eq!(ids(&single), ids(batched), "query {}", request.query);
        assert_eq!(single.items.len(), request.k);
    }
}

#[test]
fn an_event_is_seen_by_the_very_next_request() {
    let mut pipeline = pipeline();
    let newcomer = UserId(4_242_424);
    let before = pipeline
        .recommend(&request(newcomer, "action movies", 10))
        .expect("cold");
    assert!(before.cold_start, "an unknown user is a cold start");

    let liked = before.items[0].id;
    pipeline
        .apply_event(&Event {
            user: newcomer,
            item: liked,
            interaction: Interaction::Rating(5.0),
            timestamp: 1_700_000_000,
        })
        .expect("event");
    let after = pipeline
        .recommend(&request(newcomer, "action movies", 10))
        .expect("warm");
    assert!(!after.cold_start, "the rating gave the user a profile");
    assert!(
        !ids(&after).contains(&liked),
        "the rated item is now excluded"
    );
    let user = pipeline
        .users()
        .read()
        .index_of(newcomer)
        .expect("user added by the event");
    assert_eq!(
        pipeline.users().read().recent(user, 1)[0].item,
        pipeline.item_index(liked).expect("item")
    );
}

#[test]
fn bad_requests_and_events_are_refused_with_clear_errors() {
    let mut pipeline = pipeline();
    let user = known_user();
    for (request, expected) in [
        (request(user, "thriller", 0), "k must be in 1..=1000, got 0"),
        (
            request(user, "thriller", 100_000),
            "k must be in 1..=1000, got 100000",
        ),
        (request(user, "   ", 10), "the query is empty"),
    ] {
        let error = pipeline.recommend(&request).expect_err("must be refused");
        assert!(
            matches!(error, PipelineError::InvalidRequest(_)),
            "{error:?}"
        );
        assert!(error.to_string().contains(expected), "{error}");
    }
    let unknown_item = Event {
        user,
        item: ItemId(u32::MAX),
        interaction: Interaction::Watch,
        timestamp: 0,
    };
    assert!(matches!(
        pipeline.apply_event(&unknown_item),
        Err(PipelineError::UnknownItem(_))
    ));
    let item = fixture().dataset.catalog.item(0).id;
    let bad_rating = Event {
        user,
        item,
        interaction: Interaction::Rating(7.0),
        timestamp: 0,
    };
    assert!(matches!(
        pipeline.apply_event(&bad_rating),
        Err(PipelineError::InvalidEvent(_))
    ));
    assert!(pipeline.similar(ItemId(u32::MAX), 5).is_err());
}

/// A different retrieval: the most-rated items, whatever the query. Shows a team can put
/// its own implementation in a slot without touching the other stages.
struct MostRatedRetrieval {
    by_popularity: Vec<u32>,
}

impl Stage<Cpu> for MostRatedRetrieval {
    fn name(&self) -> &'static str {
        "similarity"
    }

    fn run(&mut self, device: &Cpu, batch: &mut Batch<Cpu>) -> Result<(), StageError> {
        let n = batch.len();
        let c = self.by_popularity.len();
        batch.candidates = c;
        device.resize(&mut batch.candidate_ids, n * c)?;
        device.resize(&mut batch.candidate_scores, n * c)?;
        for q in 0..n {
            for (rank, &item) in self.by_popularity.iter().enumerate() {
                batch.candidate_ids[q * c + rank] = item;
                batch.candidate_scores[q * c + rank] = 1.0 - rank as f32 / c as f32;
            }
        }
        Ok(())
    }
}

#[test]
fn a_stage_can_be_swapped_for_a_custom_implementation() {
    let mut pipeline = pipeline();
    let dataset = &fixture().dataset;
    let mut counts = vec![0usize; dataset.catalog.len()];
    for rating in &dataset.ratings {
        counts[rating.item as usize] += 1;
    }
    let mut by_popularity: Vec<u32> = (0..counts.len() as u32).collect();
    by_popularity.sort_by_key(|&i| (std::cmp::Reverse(counts[i as usize]), i));
    by_popularity.truncate(20);
    let allowed: Vec<ItemId> = by_popularity
        .iter()
        .map(|&i| dataset.catalog.item(i).id)
        .collect();

    let old = pipeline
        .replace_stage("similarity", Box::new(MostRatedRetrieval { by_popularity }))
        .expect("slot exists");
    assert_eq!(old.name(), "similarity");
    let response = pipeline
        .recommend(&request(UserId(31_337), "anything at all", 10))
        .expect("recommend");
    assert_eq!(response.items.len(), 10);
    for item in &response.items {
        assert!(
            allowed.contains(&item.id),
            "{} did not come from the swapped-in retrieval",
            item.id
        );
    }
    assert!(pipeline.replace_stage("nonsense", old).is_err());
}
