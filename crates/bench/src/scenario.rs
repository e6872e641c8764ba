//! The scenarios: data, item embeddings and traffic the suite runs.
//!
//! - `seed`: the seed scale of the issues, generated deterministically
//!   (`hyperrec_catalog::synthetic`: 62,423 items, 100,000 users with 50-item histories,
//!   Zipf popularity).
//! - `movielens-small`: the real MovieLens "latest small" files.
//!
//! Item embeddings come either from the real encoder (the indexing flow, stored on disk and
//! reused) or from [`synthetic_item_embeddings`], a deterministic stand-in that costs a
//! few hundred encoder calls instead of one per item: encoding 62K item texts on a 2-core
//! machine takes minutes, which a benchmark of the *serving* path should not pay on every
//! run. Queries are always encoded by the real encoder at request time.

use std::collections::BTreeSet;
use std::path::PathBuf;

use hyperrec_catalog::synthetic::{SyntheticConfig, synthetic_contexts, synthetic_queries};
use hyperrec_catalog::{Dataset, ItemEmbeddings};
use hyperrec_stage::{ItemIndex, Request, UserId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal, Zipf};

use crate::suite::Traffic;

/// Why a scenario could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("encoding anchor phrases: {0}")]
    Encoder(String),
    #[error("item embeddings need a positive width")]
    ZeroWidth,
    #[error("preparing traffic: {0}")]
    Traffic(String),
}

/// Which data the suite runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScenarioKind {
    Seed,
    MovielensSmall,
}

impl ScenarioKind {
    pub fn name(self) -> &'static str {
        match self {
            ScenarioKind::Seed => "seed",
            ScenarioKind::MovielensSmall => "movielens-small",
        }
    }
}

/// How many requests each phase gets.
#[derive(Clone, Debug, PartialEq)]
pub struct TrafficShape {
    pub warmup: usize,
    pub latency: usize,
    pub batch_sizes: Vec<usize>,
    /// Timed batches per size (one more, untimed, warms each size up).
    pub batches_per_size: usize,
    pub encode_texts: usize,
    pub cache_lookups: usize,
    pub cache_rebuilds: usize,
    /// Share of requests from users the system has never seen (cold start).
    pub unknown_user_share: f64,
    pub k: usize,
    /// Exponent of the Zipf law "similar to X" lookups follow.
    pub zipf_exponent: f64,
}

impl TrafficShape {
    /// The full suite: 1000 distinct queries, batches of 10, 100 and 1000.
    pub fn full() -> TrafficShape {
        TrafficShape {
            warmup: 20,
            latency: 1000,
            batch_sizes: vec![10, 100, 1000],
            batches_per_size: 3,
            encode_texts: 1024,
            cache_lookups: 2000,
            cache_rebuilds: 3,
            unknown_user_share: 0.05,
            k: 10,
            zipf_exponent: 1.0,
        }
    }

    /// Small counts that finish in CI time on a 2-core machine.
    pub fn quick() -> TrafficShape {
        TrafficShape {
            warmup: 5,
            latency: 100,
            batch_sizes: vec![10, 100],
            batches_per_size: 2,
            encode_texts: 128,
            cache_lookups: 300,
            cache_rebuilds: 1,
            ..TrafficShape::full()
        }
    }

    /// Distinct queries the shape needs (cold + warm-up + timed + every batch).
    pub fn queries_needed(&self) -> usize {
        1 + self.warmup
            + self.latency
            + self
                .batch_sizes
                .iter()
                .map(|s| s * (self.batches_per_size + 1))
                .sum::<usize>()
    }
}

/// The seed scale, or a proportionally smaller one for tests.
pub fn seed_config(seed: u64) -> SyntheticConfig {
    SyntheticConfig {
        seed,
        ..SyntheticConfig::default()
    }
}

/// Where MovieLens small lives: `$HYPERREC_MOVIELENS_DIR`, else the shared copy beside the
/// repository.
pub fn movielens_small_dir() -> PathBuf {
    std::env::var_os("HYPERREC_MOVIELENS_DIR").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/data/ml-latest-small"
            ))
        },
        PathBuf::from,
    )
}

/// Deterministic item embeddings that carry the catalog's meaning: each item is the
/// normalized sum of its genres' anchor embeddings, half-weighted anchors of its top tags,
/// and seeded Gaussian noise (so no two items coincide). `anchor` returns the encoder's
/// embedding of a phrase; it is called once per distinct genre and tag.
pub fn synthetic_item_embeddings(
    dataset: &Dataset,
    dim: usize,
    seed: u64,
    mut anchor: impl FnMut(&[String]) -> Result<Vec<Vec<f32>>, String>,
) -> Result<ItemEmbeddings, ScenarioError> {
    let items = dataset.catalog.items();
    let phrases: BTreeSet<String> = items
        .iter()
        .flat_map(|item| {
            item.genres
                .iter()
                .map(|g| format!("{} movies", g.to_lowercase()))
                .chain(item.top_tags.iter().cloned())
        })
        .collect();
    let phrases: Vec<String> = phrases.into_iter().collect();
    let anchors = if phrases.is_empty() {
        Vec::new()
    } else {
        anchor(&phrases).map_err(ScenarioError::Encoder)?
    };
    if anchors.len() != phrases.len() || anchors.iter().any(|a| a.len() != dim) {
        return Err(ScenarioError::Encoder(format!(
            "{} anchor embeddings for {} phrases (width {dim} expected)",
            anchors.len(),
            phrases.len()
        )));
    }
    let anchor_of = |phrase: &str| {
        phrases
            .binary_search_by(|p| p.as_str().cmp(phrase))
            .ok()
            .and_then(|i| anchors.get(i))
    };
    let mut data = vec![0.0f32; items.len() * dim];
    for (index, (item, row)) in items.iter().zip(data.chunks_exact_mut(dim)).enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xe3b0_c442_98fc_1c14);
        rng.set_stream(index as u64);
        for x in row.iter_mut() {
            let noise: f32 = StandardNormal.sample(&mut rng);
            *x = 0.6 * noise / (dim as f32).sqrt();
        }
        let genre_phrases = item
            .genres
            .iter()
            .map(|g| format!("{} movies", g.to_lowercase()));
        for phrase in genre_phrases {
            add(row, anchor_of(&phrase), 1.0);
        }
        for tag in &item.top_tags {
            add(row, anchor_of(tag), 0.5);
        }
        let norm = row
            .iter()
            .map(|x| x * x)
            .sum::<f32>()
            .sqrt()
            .max(f32::MIN_POSITIVE);
        row.iter_mut().for_each(|x| *x /= norm);
    }
    ItemEmbeddings::new(dim, data).ok_or(ScenarioError::ZeroWidth)
}

fn add(row: &mut [f32], anchor: Option<&Vec<f32>>, weight: f32) {
    if let Some(anchor) = anchor {
        for (x, a) in row.iter_mut().zip(anchor) {
            *x += weight * a;
        }
    }
}

/// Items ordered by how often they were rated, most popular first (ties by index).
pub fn popularity_order(dataset: &Dataset) -> Vec<ItemIndex> {
    let mut counts = vec![0u32; dataset.catalog.len()];
    for rating in &dataset.ratings {
        if let Some(c) = counts.get_mut(rating.item as usize) {
            *c += 1;
        }
    }
    let mut order: Vec<ItemIndex> = (0..counts.len() as ItemIndex).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(counts[i as usize]), i));
    order
}

/// Builds the traffic of `shape` over `dataset`: distinct synthetic queries, users drawn
/// uniformly from the known ones (a share of them unknown), contexts in the generator's
/// realistic mix, and "similar to X" lookups with X drawn by Zipf popularity rank.
pub fn traffic(
    dataset: &Dataset,
    shape: &TrafficShape,
    seed: u64,
) -> Result<Traffic, ScenarioError> {
    let needed = shape.queries_needed();
    let queries = synthetic_queries(needed, seed);
    if queries.len() < needed {
        return Err(ScenarioError::Traffic(format!(
            "the query generator gave {} distinct queries; the traffic needs {needed}",
            queries.len()
        )));
    }
    let mut users: Vec<UserId> = dataset.ratings.iter().map(|r| r.user).collect();
    users.sort_unstable();
    users.dedup();
    if users.is_empty() {
        return Err(ScenarioError::Traffic("the dataset has no users".into()));
    }
    let first_unknown = users.last().map_or(1, |u| u.0.saturating_add(1));
    let contexts = synthetic_contexts(needed, users.len(), seed);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7261_6666_6963);
    let mut requests = queries
        .into_iter()
        .zip(contexts)
        .map(|(query, mut context)| {
            let user = if rng.random_bool(shape.unknown_user_share) {
                UserId(first_unknown + rng.random_range(0..1_000_000))
            } else {
                users[rng.random_range(0..users.len())]
            };
            // Companions from the generator are ids 1..=n; map them onto real user ids.
            for companion in &mut context.companions {
                *companion = users[(companion.0 as usize).saturating_sub(1) % users.len()];
            }
            Request {
                user,
                query,
                context,
                k: shape.k,
                exclude_seen: true,
            }
        });
    let mut take = |n: usize| -> Vec<Request> { requests.by_ref().take(n).collect() };
    let cold = take(1)
        .pop()
        .ok_or_else(|| ScenarioError::Traffic("no queries".into()))?;
    let warmup = take(shape.warmup);
    let latency = take(shape.latency);
    let batches = shape
        .batch_sizes
        .iter()
        .map(|&size| {
            let runs = (0..=shape.batches_per_size).map(|_| take(size)).collect();
            (size, runs)
        })
        .collect();

    let order = popularity_order(dataset);
    let cache_lookups = match Zipf::new(order.len() as f64, shape.zipf_exponent) {
        Ok(zipf) if !order.is_empty() => (0..shape.cache_lookups)
            .map(|_| {
                let rank = (zipf.sample(&mut rng) as usize).clamp(1, order.len()) - 1;
                order[rank]
            })
            .collect(),
        _ => Vec::new(),
    };
    let encode_texts = (0..dataset.catalog.len().min(shape.encode_texts))
        .map(|i| dataset.catalog.text(i as ItemIndex))
        .collect();
    Ok(Traffic {
        cold,
        warmup,
        latency,
        batches,
        encode_texts,
        cache_lookups,
        cache_rebuilds: shape.cache_rebuilds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyperrec_catalog::synthetic::generate;
    use std::time::{SystemTime, UNIX_EPOCH};

    fn clock_seed() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    }

    #[test]
    fn traffic_queries_are_distinct_and_phases_have_their_sizes() {
        let seed = clock_seed();
        let dataset = generate(&SyntheticConfig::small(seed));
        let shape = TrafficShape {
            warmup: 3,
            latency: 40,
            batch_sizes: vec![2, 5],
            batches_per_size: 2,
            encode_texts: 7,
            cache_lookups: 500,
            ..TrafficShape::quick()
        };
        let t = traffic(&dataset, &shape, seed).expect("traffic");
        assert_eq!(t.warmup.len(), 3, "seed {seed}");
        assert_eq!(t.latency.len(), 40, "seed {seed}");
        assert_eq!(t.batches[1].0, 5);
        assert_eq!(t.batches[1].1.len(), 3, "warm-up batch + 2 timed");
        assert!(t.batches[1].1.iter().all(|b| b.len() == 5));
        let mut all: Vec<&str> = std::iter::once(&t.cold)
            .chain(&t.warmup)
            .chain(&t.latency)
            .chain(t.batches.iter().flat_map(|(_, runs)| runs.iter().flatten()))
            .map(|r| r.query.as_str())
            .collect();
        let n = all.len();
        assert_eq!(n, shape.queries_needed(), "seed {seed}");
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "seed {seed}: a query repeats");
        assert_eq!(t.encode_texts.len(), 7);
    }

    #[test]
    fn zipf_lookups_favour_popular_items() {
        let seed = clock_seed();
        let dataset = generate(&SyntheticConfig::small(seed));
        let shape = TrafficShape {
            cache_lookups: 4000,
            ..TrafficShape::quick()
        };
        let t = traffic(&dataset, &shape, seed).expect("traffic");
        let order = popularity_order(&dataset);
        let head: BTreeSet<ItemIndex> = order[..order.len() / 10].iter().copied().collect();
        let in_head = t.cache_lookups.iter().filter(|i| head.contains(i)).count();
        // Zipf(1) over 500 ranks puts about 60% of draws in the top 10%.
        assert!(
            in_head * 2 > t.cache_lookups.len(),
            "seed {seed}: {in_head} of {} lookups in the top 10%",
            t.cache_lookups.len()
        );
    }

    #[test]
    fn synthetic_embeddings_are_unit_deterministic_and_follow_genres() {
        let seed = clock_seed();
        let dataset = generate(&SyntheticConfig::small(seed));
        let dim = 16;
        // Anchors: one basis direction per phrase (hashed), enough to see genre structure.
        let anchor = |phrases: &[String]| -> Result<Vec<Vec<f32>>, String> {
            Ok(phrases
                .iter()
                .enumerate()
                .map(|(i, _)| {
                    let mut v = vec![0.0; dim];
                    v[i % dim] = 1.0;
                    v
                })
                .collect())
        };
        let a = synthetic_item_embeddings(&dataset, dim, seed, anchor).expect("embeddings");
        let b = synthetic_item_embeddings(&dataset, dim, seed, anchor).expect("embeddings");
        assert_eq!(a, b, "seed {seed}");
        assert_eq!(a.len(), dataset.catalog.len());
        for i in 0..a.len() as ItemIndex {
            let norm: f32 = a.row(i).iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!(
                (norm - 1.0).abs() < 1e-4,
                "seed {seed}: item {i} norm {norm}"
            );
        }
        // Items sharing their genre list are closer on average than items sharing none.
        let items = dataset.catalog.items();
        let dot = |x: usize, y: usize| -> f32 {
            a.row(x as ItemIndex)
                .iter()
                .zip(a.row(y as ItemIndex))
                .map(|(p, q)| p * q)
                .sum()
        };
        let (mut same, mut same_n, mut other, mut other_n) = (0.0, 0, 0.0, 0);
        for x in 0..items.len().min(200) {
            for y in (x + 1)..items.len().min(200) {
                if items[x].genres == items[y].genres {
                    same += dot(x, y);
                    same_n += 1;
                } else if items[x].genres.iter().all(|g| !items[y].genres.contains(g)) {
                    other += dot(x, y);
                    other_n += 1;
                }
            }
        }
        if same_n > 0 && other_n > 0 {
            assert!(
                same / same_n as f32 > other / other_n as f32,
                "seed {seed}: same-genre {} vs disjoint {}",
                same / same_n as f32,
                other / other_n as f32
            );
        }
    }
}
