//! The deterministic synthetic generator: seed-scale data in the MovieLens shape.
//!
//! [`generate`] builds a [`Dataset`] whose ratings carry signal a recommender can find:
//!
//! - **Items** get a title from word lists plus a release year (`"The Silent Harbor
//!   (1987)"`), one to four of the 19 MovieLens genres (drawn with MovieLens-like
//!   frequencies), a hidden quality, and for most items a few tags drawn from their genres'
//!   themes, applied by random users (so `top_tags` is derived exactly as for real data).
//! - **Popularity** is Zipf: a seeded permutation ranks the items and the item of rank `r`
//!   (0-based) is drawn with weight `1 / (r + 1)^zipf_exponent`.
//! - **Users** each prefer one to three genres and dislike one other. Each history draws
//!   60% of its items from preferred genres, 10% from the disliked genre and 30% from the
//!   whole catalog, all Zipf-weighted and without repeats (exactly
//!   `min(history_len, items)` items). A rating is
//!   `3.1 + 1.0 [preferred] - 1.6 [disliked] + quality + user bias + noise`, rounded to
//!   the half star and clamped to `0.5..=5.0`, so likes cluster in preferred genres and
//!   the disliked genre yields low ratings. Each user's timestamps strictly increase.
//!
//! Determinism: every item and every user draws from its own ChaCha8 stream
//! (`seed_from_u64(seed ^ purpose)` with `set_stream(index)`), so the output depends only
//! on the configuration, never on the number of rayon threads.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;

use hyperrec_stage::{Context, Event, Interaction, ItemId, ItemIndex, Social, TimeOfDay, UserId};

use crate::error::CatalogError;
use crate::movielens::{
    Catalog, Dataset, Item, MAX_RATING, MIN_RATING, MOVIELENS_GENRES, MOVIES_HEADER, NO_GENRES,
    RATINGS_HEADER, Rating, TAGS_HEADER, TagApplication, top_tags,
};

/// Seed of the seed-scale scenario ([`SyntheticConfig::default`]).
pub const SEED_SCENARIO_SEED: u64 = 0x5eed_2026;

/// Size and shape of a synthetic dataset.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SyntheticConfig {
    /// Number of items (at most `u32::MAX / 4`, so sparse ids fit a `u32`).
    pub items: usize,
    /// Number of users, with ids `1..=users`.
    pub users: usize,
    /// Ratings per user (fewer only if the catalog is smaller).
    pub history_len: usize,
    /// Exponent `s` of the Zipf popularity `1 / rank^s`.
    pub zipf_exponent: f64,
    pub seed: u64,
}

impl Default for SyntheticConfig {
    /// The seed scale of the issues: 62,423 items, 100,000 users, 50-item histories
    /// (5,000,000 ratings), Zipf exponent 1.0.
    fn default() -> Self {
        SyntheticConfig {
            items: 62_423,
            users: 100_000,
            history_len: 50,
            zipf_exponent: 1.0,
            seed: SEED_SCENARIO_SEED,
        }
    }
}

impl SyntheticConfig {
    /// A small dataset for tests: 500 items, 200 users, 20-item histories.
    pub fn small(seed: u64) -> Self {
        SyntheticConfig {
            items: 500,
            users: 200,
            history_len: 20,
            zipf_exponent: 1.0,
            seed,
        }
    }
}

/// Salts that separate the random streams of the generator's phases.
#[derive(Clone, Copy)]
enum Purpose {
    Items = 0x1,
    Popularity = 0x2,
    Users = 0x3,
    Queries = 0x4,
    Contexts = 0x5,
    Events = 0x6,
}

fn stream(seed: u64, purpose: Purpose, index: u64) -> ChaCha8Rng {
    let salt = (purpose as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ salt);
    rng.set_stream(index);
    rng
}

/// Relative frequency of each of [`MOVIELENS_GENRES`] (counts in ml-latest-small).
const GENRE_WEIGHTS: [f64; 19] = [
    1828.0, 1263.0, 611.0, 664.0, 3756.0, 1199.0, 440.0, 4361.0, 779.0, 87.0, 978.0, 158.0, 334.0,
    573.0, 1596.0, 980.0, 1894.0, 382.0, 167.0,
];

/// Tag vocabulary of each genre, aligned with [`MOVIELENS_GENRES`]; also query themes.
const GENRE_THEMES: [&[&str]; 19] = [
    &[
        "explosions",
        "car chase",
        "martial arts",
        "heist",
        "shootout",
        "revenge",
    ],
    &[
        "quest",
        "treasure hunt",
        "jungle",
        "road trip",
        "pirates",
        "survival",
    ],
    &[
        "hand-drawn",
        "pixar",
        "talking animals",
        "stop motion",
        "anime",
        "colorful",
    ],
    &[
        "family",
        "coming of age",
        "friendship",
        "school",
        "fairy tale",
        "pets",
    ],
    &[
        "witty",
        "slapstick",
        "dark comedy",
        "satire",
        "parody",
        "quirky",
    ],
    &[
        "mafia",
        "gangsters",
        "detective",
        "prison",
        "corruption",
        "serial killer",
    ],
    &[
        "true story",
        "nature",
        "history",
        "music scene",
        "politics",
        "biography",
    ],
    &[
        "family drama",
        "tearjerker",
        "character study",
        "based on a book",
        "grief",
        "ambition",
    ],
    &[
        "magic",
        "dragons",
        "wizards",
        "mythology",
        "fairy tale",
        "alternate world",
    ],
    &[
        "femme fatale",
        "black and white",
        "hardboiled",
        "noir",
        "moody",
        "voiceover",
    ],
    &[
        "creepy",
        "haunted house",
        "zombies",
        "slasher",
        "gore",
        "supernatural",
    ],
    &[
        "imax",
        "spectacle",
        "visually stunning",
        "3d",
        "epic scale",
        "space",
    ],
    &[
        "singing",
        "dance",
        "broadway",
        "soundtrack",
        "musical numbers",
        "jazz",
    ],
    &[
        "whodunit",
        "twist ending",
        "clues",
        "investigation",
        "puzzle",
        "secrets",
    ],
    &[
        "love story",
        "romantic comedy",
        "wedding",
        "first love",
        "heartbreak",
        "chemistry",
    ],
    &[
        "time travel",
        "aliens",
        "dystopia",
        "robots",
        "space opera",
        "artificial intelligence",
    ],
    &[
        "suspense",
        "tense",
        "psychological",
        "conspiracy",
        "twist ending",
        "cat and mouse",
    ],
    &[
        "world war ii",
        "vietnam",
        "battlefield",
        "soldiers",
        "anti-war",
        "resistance",
    ],
    &[
        "cowboys",
        "frontier",
        "outlaws",
        "gunslinger",
        "desert",
        "bounty hunter",
    ],
];

/// Tags any item may get, whatever its genres.
const GENERAL_TAGS: [&str; 10] = [
    "great soundtrack",
    "visually appealing",
    "atmospheric",
    "classic",
    "cult film",
    "overrated",
    "underrated",
    "great acting",
    "thought-provoking",
    "funny",
];

const TITLE_ADJECTIVES: [&str; 40] = [
    "Silent",
    "Last",
    "Broken",
    "Golden",
    "Hidden",
    "Crimson",
    "Midnight",
    "Lost",
    "Wild",
    "Secret",
    "Dark",
    "Bright",
    "Frozen",
    "Burning",
    "Distant",
    "Hollow",
    "Restless",
    "Forgotten",
    "Electric",
    "Quiet",
    "Savage",
    "Gentle",
    "Endless",
    "Shattered",
    "Velvet",
    "Iron",
    "Paper",
    "Crooked",
    "Little",
    "Final",
    "Northern",
    "Lonely",
    "Sweet",
    "Bitter",
    "Invisible",
    "Eternal",
    "Fading",
    "Rising",
    "Stolen",
    "Scarlet",
];

const TITLE_NOUNS: [&str; 48] = [
    "Harbor",
    "Road",
    "Kingdom",
    "Summer",
    "Night",
    "River",
    "Garden",
    "City",
    "Empire",
    "Storm",
    "Dream",
    "Mirror",
    "Promise",
    "Frontier",
    "Machine",
    "Island",
    "Letter",
    "Shadow",
    "Heart",
    "Game",
    "Winter",
    "House",
    "Station",
    "Witness",
    "Stranger",
    "Voyage",
    "Signal",
    "Orchard",
    "Circus",
    "Valley",
    "Detective",
    "Comet",
    "Lantern",
    "Highway",
    "Castle",
    "Ocean",
    "Forest",
    "Hunter",
    "Song",
    "Bridge",
    "Crown",
    "Desert",
    "Planet",
    "Engine",
    "Whisper",
    "Echo",
    "Horizon",
    "Tide",
];

const TITLE_NAMES: [&str; 20] = [
    "Anna", "Max", "Lucia", "Oscar", "Mira", "Jack", "Elena", "Theo", "Rosa", "Felix", "Nora",
    "Hugo", "Ivy", "Leo", "Clara", "Sam", "Vera", "Otto", "June", "Ray",
];

/// A generated item with the hidden attributes users' ratings depend on.
struct GeneratedItem {
    item: Item,
    genre_ids: Vec<usize>,
    quality: f64,
    tags: Vec<TagApplication>,
}

/// Zipf sampler over a subset of items: cumulative weights, drawn by binary search.
struct ZipfTable {
    items: Vec<ItemIndex>,
    cumulative: Vec<f64>,
}

impl ZipfTable {
    fn new(items: Vec<ItemIndex>, weight: &[f64]) -> Self {
        let mut total = 0.0;
        let cumulative = items
            .iter()
            .map(|&item| {
                total += weight[item as usize];
                total
            })
            .collect();
        ZipfTable { items, cumulative }
    }

    fn sample(&self, rng: &mut ChaCha8Rng) -> Option<ItemIndex> {
        let total = *self.cumulative.last()?;
        let target = rng.random::<f64>() * total;
        let at = self.cumulative.partition_point(|&c| c <= target);
        self.items.get(at.min(self.items.len() - 1)).copied()
    }
}

/// Generates a dataset; the same configuration always gives the same dataset.
pub fn generate(config: &SyntheticConfig) -> Dataset {
    let n_items = config.items.min(u32::MAX as usize / 4);
    let generated: Vec<GeneratedItem> = (0..n_items)
        .into_par_iter()
        .map(|index| generate_item(config, index))
        .collect();

    // Popularity: a seeded permutation assigns Zipf ranks, so head items are spread over
    // the catalog rather than being the first indices.
    let mut by_rank: Vec<ItemIndex> = (0..n_items as ItemIndex).collect();
    by_rank.shuffle(&mut stream(config.seed, Purpose::Popularity, 0));
    let mut weight = vec![0.0; n_items];
    for (rank, &item) in by_rank.iter().enumerate() {
        weight[item as usize] = 1.0 / ((rank + 1) as f64).powf(config.zipf_exponent);
    }
    let global = ZipfTable::new((0..n_items as ItemIndex).collect(), &weight);
    let mut genre_members: Vec<Vec<ItemIndex>> = vec![Vec::new(); MOVIELENS_GENRES.len()];
    for (index, item) in generated.iter().enumerate() {
        for &genre in &item.genre_ids {
            genre_members[genre].push(index as ItemIndex);
        }
    }
    let by_genre: Vec<ZipfTable> = genre_members
        .into_iter()
        .map(|members| ZipfTable::new(members, &weight))
        .collect();
    let world = World {
        config,
        traits: generated
            .iter()
            .map(|g| ItemTraits {
                genre_mask: genre_mask(&g.genre_ids),
                quality: g.quality as f32,
            })
            .collect(),
        global,
        by_genre,
        by_rank,
    };
    let ratings: Vec<Rating> = (0..config.users)
        .into_par_iter()
        .flat_map_iter(|user| world.user_ratings(user))
        .collect();

    let mut items = Vec::with_capacity(n_items);
    let mut tags = Vec::new();
    for generated_item in generated {
        items.push(generated_item.item);
        tags.extend(generated_item.tags);
    }
    for (item, top) in items.iter_mut().zip(top_tags(n_items, &tags)) {
        item.top_tags = top;
    }
    let catalog = match Catalog::new(items) {
        Ok(catalog) => catalog,
        // Ids are `4 * index + offset` with offset < 4, hence distinct.
        Err(_) => unreachable!("synthetic item ids are distinct by construction"),
    };
    Dataset {
        catalog,
        ratings,
        tags,
        diagnostics: Vec::new(),
    }
}

fn pick_weighted(rng: &mut ChaCha8Rng, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut target = rng.random::<f64>() * total;
    for (index, &w) in weights.iter().enumerate() {
        if target < w {
            return index;
        }
        target -= w;
    }
    weights.len() - 1
}

/// Distinct genres drawn by MovieLens frequency, `count` of them, none in `exclude`.
fn pick_genres(rng: &mut ChaCha8Rng, count: usize, exclude: &[usize]) -> Vec<usize> {
    let mut weights = GENRE_WEIGHTS;
    for &genre in exclude {
        weights[genre] = 0.0;
    }
    let mut genres = Vec::with_capacity(count);
    for _ in 0..count {
        let genre = pick_weighted(rng, &weights);
        weights[genre] = 0.0;
        genres.push(genre);
    }
    genres
}

fn pick<'a>(rng: &mut ChaCha8Rng, words: &[&'a str]) -> &'a str {
    words[rng.random_range(0..words.len())]
}

fn generate_title(rng: &mut ChaCha8Rng) -> String {
    let adjective = pick(rng, &TITLE_ADJECTIVES);
    let noun = pick(rng, &TITLE_NOUNS);
    let other = pick(rng, &TITLE_NOUNS);
    match rng.random_range(0..8) {
        0 | 1 => format!("The {adjective} {noun}"),
        2 => format!("{adjective} {noun}"),
        3 => format!("The {noun} of the {adjective} {other}"),
        4 => format!("{}'s {noun}", pick(rng, &TITLE_NAMES)),
        5 => format!("{noun} and {other}"),
        6 => format!("The {adjective} {noun} {}", rng.random_range(2..5)),
        _ => format!("{adjective} {noun}: The {other}"),
    }
}

fn generate_item(config: &SyntheticConfig, index: usize) -> GeneratedItem {
    let mut rng = stream(config.seed, Purpose::Items, index as u64);
    let id = ItemId(4 * index as u32 + rng.random_range(1..=4));
    // Skewed towards recent years, like the real catalog.
    let recency: f64 = rng.random();
    let year = 1930 + ((1.0 - recency * recency) * 93.0) as u16;
    let title = format!("{} ({year})", generate_title(&mut rng));
    let genre_count = pick_weighted(&mut rng, &[35.0, 40.0, 20.0, 5.0]) + 1;
    let mut genre_ids = pick_genres(&mut rng, genre_count, &[]);
    genre_ids.sort_unstable();
    let quality = 0.4 * rng.sample::<f64, _>(StandardNormal);

    let mut tags = Vec::new();
    // About 60% of items are tagged; each distinct tag is applied 1 to 4 times, so top-tag
    // order is decided by counts (and by name on ties) as for real data.
    if config.users > 0 && rng.random_bool(0.6) {
        let distinct = rng.random_range(1..=4);
        let mut chosen: Vec<&str> = Vec::with_capacity(distinct);
        while chosen.len() < distinct {
            let tag = if rng.random_bool(0.75) {
                let genre = genre_ids[rng.random_range(0..genre_ids.len())];
                pick(&mut rng, GENRE_THEMES[genre])
            } else {
                pick(&mut rng, &GENERAL_TAGS)
            };
            if !chosen.contains(&tag) {
                chosen.push(tag);
            }
        }
        for tag in chosen {
            for _ in 0..rng.random_range(1..=4) {
                tags.push(TagApplication {
                    user: UserId(rng.random_range(1..=config.users as u32)),
                    item: index as ItemIndex,
                    tag: tag.to_string(),
                    timestamp: rng.random_range(1_100_000_000..1_700_000_000),
                });
            }
        }
    }

    GeneratedItem {
        item: Item {
            id,
            title,
            year: Some(year),
            genres: genre_ids
                .iter()
                .map(|&g| MOVIELENS_GENRES[g].to_string())
                .collect(),
            top_tags: Vec::new(),
        },
        genre_ids,
        quality,
        tags,
    }
}

/// An item's genres (bit `g` for genre `g` of [`MOVIELENS_GENRES`]) and hidden quality.
#[derive(Clone, Copy)]
struct ItemTraits {
    genre_mask: u32,
    quality: f32,
}

fn genre_mask(genres: &[usize]) -> u32 {
    genres.iter().fold(0, |mask, &g| mask | (1 << g))
}

/// Everything user generation reads, shared by all rayon workers.
struct World<'a> {
    config: &'a SyntheticConfig,
    /// Compact copies of what ratings depend on: 5M random lookups stay in cache.
    traits: Vec<ItemTraits>,
    global: ZipfTable,
    by_genre: Vec<ZipfTable>,
    /// Items from most to least popular.
    by_rank: Vec<ItemIndex>,
}

impl World<'_> {
    fn user_ratings(&self, user: usize) -> Vec<Rating> {
        let mut rng = stream(self.config.seed, Purpose::Users, user as u64);
        let preferred_count = pick_weighted(&mut rng, &[40.0, 40.0, 20.0]) + 1;
        let preferred = pick_genres(&mut rng, preferred_count, &[]);
        let disliked = pick_genres(&mut rng, 1, &preferred)[0];
        let bias = 0.3 * rng.sample::<f64, _>(StandardNormal);
        let len = self.config.history_len.min(self.traits.len());
        let preferred_mask = genre_mask(&preferred);
        let disliked_mask = genre_mask(&[disliked]);

        let mut chosen: Vec<ItemIndex> = Vec::with_capacity(len);
        // Redraws before falling back to the most popular unchosen item.
        const ATTEMPTS: usize = 64;
        for _ in 0..len {
            let source = rng.random::<f64>();
            let table = if source < 0.6 {
                &self.by_genre[preferred[rng.random_range(0..preferred.len())]]
            } else if source < 0.7 {
                &self.by_genre[disliked]
            } else {
                &self.global
            };
            let mut drawn = None;
            for attempt in 0..ATTEMPTS {
                // A genre with few members saturates: fall back to the whole catalog.
                let table = if attempt < ATTEMPTS / 2 {
                    table
                } else {
                    &self.global
                };
                match table.sample(&mut rng) {
                    Some(item) if !chosen.contains(&item) => {
                        drawn = Some(item);
                        break;
                    }
                    _ => {}
                }
            }
            // Only tiny or extremely skewed catalogs get here: take the most popular item
            // not yet chosen, so every history has exactly `len` distinct items.
            let item = drawn.or_else(|| {
                self.by_rank
                    .iter()
                    .copied()
                    .find(|item| !chosen.contains(item))
            });
            chosen.extend(item);
        }

        let start = rng.random_range(946_684_800_i64..1_577_836_800); // 2000 to 2020
        let mut timestamp = start;
        let user_id = UserId(user as u32 + 1);
        chosen
            .into_iter()
            .map(|item| {
                let traits = self.traits[item as usize];
                let likes = traits.genre_mask & preferred_mask != 0;
                let dislikes = traits.genre_mask & disliked_mask != 0;
                let mean = 3.1 + f64::from(u8::from(likes)) - 1.6 * f64::from(u8::from(dislikes))
                    + f64::from(traits.quality)
                    + bias;
                let noisy = mean + 0.7 * rng.sample::<f64, _>(StandardNormal);
                let rating = ((noisy * 2.0).round() / 2.0)
                    .clamp(f64::from(MIN_RATING), f64::from(MAX_RATING));
                // Gaps of about three days on average, always at least a second.
                let gap = -(1.0 - rng.random::<f64>()).ln() * 3.0 * 86_400.0;
                timestamp += 1 + gap as i64;
                Rating {
                    user: user_id,
                    item,
                    rating: rating as f32,
                    timestamp,
                }
            })
            .collect()
    }
}

/// Writes `dataset` as `movies.csv`, `ratings.csv` and `tags.csv` in `dir` (created if
/// needed), in the format [`crate::movielens::load`] reads.
pub fn write_movielens(dir: &Path, dataset: &Dataset) -> Result<(), CatalogError> {
    std::fs::create_dir_all(dir).map_err(|e| CatalogError::io("create", dir, e))?;
    let catalog = &dataset.catalog;

    let path = dir.join("movies.csv");
    let mut movies = csv_writer(&path)?;
    write_row(&mut movies, &path, MOVIES_HEADER.split(','))?;
    for item in catalog.items() {
        let genres = if item.genres.is_empty() {
            NO_GENRES.to_string()
        } else {
            item.genres.join("|")
        };
        let id = item.id.to_string();
        write_row(&mut movies, &path, [id.as_str(), &item.title, &genres])?;
    }
    finish_csv(movies, &path)?;

    // Ratings are numbers only, so they need no quoting: plain formatted lines are faster.
    let path = dir.join("ratings.csv");
    let file = File::create(&path).map_err(|e| CatalogError::io("create", &path, e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let write_error = |e| CatalogError::io("write", &path, e);
    writeln!(out, "{RATINGS_HEADER}").map_err(write_error)?;
    for rating in &dataset.ratings {
        let item = catalog.item(rating.item).id;
        writeln!(
            out,
            "{},{item},{},{}",
            rating.user,
            format_rating(rating.rating),
            rating.timestamp
        )
        .map_err(write_error)?;
    }
    out.flush().map_err(write_error)?;

    let path = dir.join("tags.csv");
    let mut tags = csv_writer(&path)?;
    write_row(&mut tags, &path, TAGS_HEADER.split(','))?;
    for tag in &dataset.tags {
        let user = tag.user.to_string();
        let item = catalog.item(tag.item).id.to_string();
        let timestamp = tag.timestamp.to_string();
        write_row(
            &mut tags,
            &path,
            [user.as_str(), &item, &tag.tag, &timestamp],
        )?;
    }
    finish_csv(tags, &path)
}

/// MovieLens writes whole ratings as `4.0`; other values keep their exact shortest form.
fn format_rating(rating: f32) -> String {
    if rating.fract() == 0.0 {
        format!("{rating:.1}")
    } else {
        rating.to_string()
    }
}

fn csv_writer(path: &Path) -> Result<csv::Writer<BufWriter<File>>, CatalogError> {
    let file = File::create(path).map_err(|e| CatalogError::io("create", path, e))?;
    Ok(csv::Writer::from_writer(BufWriter::new(file)))
}

fn write_row<'f>(
    writer: &mut csv::Writer<BufWriter<File>>,
    path: &Path,
    fields: impl IntoIterator<Item = &'f str>,
) -> Result<(), CatalogError> {
    writer
        .write_record(fields)
        .map_err(|e| CatalogError::io("write", path, std::io::Error::other(e)))
}

fn finish_csv(writer: csv::Writer<BufWriter<File>>, path: &Path) -> Result<(), CatalogError> {
    let mut inner = writer
        .into_inner()
        .map_err(|e| CatalogError::io("write", path, std::io::Error::other(e.to_string())))?;
    inner
        .flush()
        .map_err(|e| CatalogError::io("write", path, e))
}

const QUERY_OPENERS: [&str; 10] = [
    "something",
    "a",
    "looking for a",
    "recommend a",
    "show me a",
    "i want a",
    "any good",
    "find me a",
    "in the mood for a",
    "suggest a",
];

const QUERY_MOODS: [&str; 24] = [
    "dark",
    "uplifting",
    "slow-burn",
    "feel-good",
    "tense",
    "quirky",
    "heartwarming",
    "gritty",
    "light",
    "epic",
    "cozy",
    "mind-bending",
    "atmospheric",
    "nostalgic",
    "bittersweet",
    "clever",
    "violent",
    "gentle",
    "stylish",
    "offbeat",
    "scary",
    "funny",
    "romantic",
    "thrilling",
];

const QUERY_GENRES: [&str; 19] = [
    "action",
    "adventure",
    "animated",
    "kids",
    "comedy",
    "crime",
    "documentary",
    "drama",
    "fantasy",
    "noir",
    "horror",
    "imax",
    "musical",
    "mystery",
    "romance",
    "sci-fi",
    "thriller",
    "war",
    "western",
];

const QUERY_NOUNS: [&str; 5] = ["movie", "movies", "film", "films", "picture"];

const QUERY_OCCASIONS: [&str; 10] = [
    "for a rainy night",
    "for date night",
    "with friends",
    "for the whole family",
    "on a sunday morning",
    "to watch alone",
    "after a long day",
    "for a long flight",
    "for halloween",
    "for the weekend",
];

/// `n` distinct queries of 2 to 12 words (moods, genres, themes, occasions), the same for
/// the same `(n, seed)`. The vocabulary allows millions of distinct queries; past that the
/// list is shorter than `n`.
pub fn synthetic_queries(n: usize, seed: u64) -> Vec<String> {
    let mut rng = stream(seed, Purpose::Queries, 0);
    let mut seen = HashSet::with_capacity(n);
    let mut queries = Vec::with_capacity(n);
    let max_attempts = n.saturating_mul(100).saturating_add(1000);
    for _ in 0..max_attempts {
        if queries.len() == n {
            break;
        }
        let query = synthetic_query(&mut rng);
        let words = query.split_whitespace().count();
        if (2..=12).contains(&words) && seen.insert(query.clone()) {
            queries.push(query);
        }
    }
    queries
}

fn synthetic_query(rng: &mut ChaCha8Rng) -> String {
    let mut parts: Vec<&str> = Vec::new();
    if rng.random_bool(0.4) {
        parts.push(pick(rng, &QUERY_OPENERS));
    }
    for _ in 0..rng.random_range(0..=2) {
        parts.push(pick(rng, &QUERY_MOODS));
    }
    let genre = rng.random_range(0..QUERY_GENRES.len());
    parts.push(QUERY_GENRES[genre]);
    if rng.random_bool(0.2) {
        parts.push(pick(rng, &QUERY_GENRES));
    }
    if rng.random_bool(0.7) {
        parts.push(pick(rng, &QUERY_NOUNS));
    }
    if rng.random_bool(0.6) {
        parts.push(if rng.random_bool(0.5) {
            "about"
        } else {
            "with"
        });
        // Themes of the query's genre half the time, of any genre otherwise.
        let theme_genre = if rng.random_bool(0.5) {
            genre
        } else {
            rng.random_range(0..GENRE_THEMES.len())
        };
        parts.push(pick(rng, GENRE_THEMES[theme_genre]));
    }
    if rng.random_bool(0.3) {
        parts.push(pick(rng, &QUERY_OCCASIONS));
    }
    let words: Vec<&str> = parts.iter().flat_map(|p| p.split(' ')).collect();
    let mut query = String::new();
    for (position, word) in words.iter().enumerate() {
        if position > 0 {
            query.push(' ');
        }
        let before_vowel = words
            .get(position + 1)
            .is_some_and(|next| next.starts_with(['a', 'e', 'i', 'o', 'u']));
        query.push_str(if *word == "a" && before_vowel {
            "an"
        } else {
            word
        });
    }
    query
}

/// `n` request contexts in a realistic mix, the same for the same `(n, users, seed)`:
/// a time of day 90% of the time; alone 55%, in a group 35% (with one to three companions
/// among users `1..=users` when `users > 0`), unspecified 10%; zero to two genre hints
/// (lower-case, as [`Context::genres`] expects) 40% of the time.
pub fn synthetic_contexts(n: usize, users: usize, seed: u64) -> Vec<Context> {
    let mut rng = stream(seed, Purpose::Contexts, 0);
    (0..n)
        .map(|_| {
            let time_of_day = rng
                .random_bool(0.9)
                .then(|| TimeOfDay::ALL[rng.random_range(0..TimeOfDay::ALL.len())]);
            let social_roll = rng.random::<f64>();
            let (social, companions) = if social_roll < 0.55 {
                (Some(Social::Alone), Vec::new())
            } else if social_roll < 0.9 {
                let companions = if users > 0 {
                    (0..rng.random_range(1..=3))
                        .map(|_| UserId(rng.random_range(1..=users as u32)))
                        .collect()
                } else {
                    Vec::new()
                };
                (Some(Social::Group), companions)
            } else {
                (None, Vec::new())
            };
            let genres = if rng.random_bool(0.4) {
                let count = rng.random_range(1..=2);
                let mut genres: Vec<String> = pick_genres(&mut rng, count, &[])
                    .into_iter()
                    .map(|g| MOVIELENS_GENRES[g].to_lowercase())
                    .collect();
                genres.sort();
                genres
            } else {
                Vec::new()
            };
            Context {
                time_of_day,
                social,
                companions,
                genres,
            }
        })
        .collect()
}

/// `n` real-time events drawn from `dataset`'s own traffic, the same for the same
/// `(dataset, n, seed)`: each event's item is the item of a uniformly drawn rating, so item
/// popularity follows the dataset's (Zipf for generated data, the real skew for
/// MovieLens); its user is the user of another uniformly drawn rating (active users act
/// more). Interactions are 60% explicit ratings (half stars, 0.5..=5.0), 25% watches and
/// 15% skips; timestamps start one second after the dataset's latest rating and increase.
/// Empty when the dataset has no ratings.
pub fn synthetic_events(dataset: &Dataset, n: usize, seed: u64) -> Vec<Event> {
    let ratings = &dataset.ratings;
    if ratings.is_empty() {
        return Vec::new();
    }
    let mut rng = stream(seed, Purpose::Events, 0);
    let mut timestamp = ratings.iter().map(|r| r.timestamp).max().unwrap_or(0);
    (0..n)
        .map(|_| {
            let item = ratings[rng.random_range(0..ratings.len())].item;
            let user = ratings[rng.random_range(0..ratings.len())].user;
            let roll = rng.random::<f64>();
            let interaction = if roll < 0.6 {
                Interaction::Rating(rng.random_range(1..=10u8) as f32 / 2.0)
            } else if roll < 0.85 {
                Interaction::Watch
            } else {
                Interaction::Skip
            };
            timestamp += rng.random_range(1..=60);
            Event {
                user,
                item: dataset.catalog.item(item).id,
                interaction,
                timestamp,
            }
        })
        .collect()
}
