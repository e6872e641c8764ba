//! The query-conditioned protocol: one query per (user, genre) with held-out positives.

use hyperrec_catalog::movielens::{Catalog, NO_GENRES};
use hyperrec_stage::{ItemIndex, TimeOfDay, UserId};

use crate::split::Split;

/// Held-out ratings at least this are positives.
pub const POSITIVE_RATING: f32 = 4.0;

/// The genres queries are made for, and which items have each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Genres {
    /// Genre names as the catalog writes them (`"Sci-Fi"`), sorted.
    names: Vec<String>,
    /// `[n_genres][n_items]` membership.
    members: Vec<Vec<bool>>,
}

impl Genres {
    /// The catalog's genres; the "(no genres listed)" marker is not a genre.
    pub fn new(catalog: &Catalog) -> Self {
        let names: Vec<String> = catalog
            .genres()
            .iter()
            .filter(|g| g.as_str() != NO_GENRES)
            .cloned()
            .collect();
        let mut members = vec![vec![false; catalog.len()]; names.len()];
        for (item, entry) in catalog.items().iter().enumerate() {
            for genre in &entry.genres {
                if let Ok(g) = names.binary_search(genre) {
                    members[g][item] = true;
                }
            }
        }
        Genres { names, members }
    }

    /// Number of genres.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the catalog has no genre at all.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Genre `genre`'s name as the catalog writes it.
    pub fn name(&self, genre: usize) -> &str {
        &self.names[genre]
    }

    /// Whether `item` has genre `genre` (false for out-of-range arguments).
    pub fn contains(&self, genre: usize, item: ItemIndex) -> bool {
        self.members
            .get(genre)
            .and_then(|m| m.get(item as usize))
            .copied()
            .unwrap_or(false)
    }

    /// The genres of `item`.
    fn of_item(&self, item: ItemIndex) -> impl Iterator<Item = usize> + '_ {
        (0..self.names.len()).filter(move |&g| self.contains(g, item))
    }
}

/// The query text for a genre: `"<genre lower-case> movies"` (`"sci-fi movies"`).
pub fn query_text(genre: &str) -> String {
    format!("{} movies", genre.to_lowercase())
}

/// One query as a variant sees it: who asks, for what, and when. Its relevant items are
/// not part of it.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryCase {
    pub user: UserId,
    /// The user's row in the [`crate::TrainingView`].
    pub user_row: usize,
    /// Row in [`Genres`].
    pub genre: usize,
    /// The genre's name as the catalog writes it (`"Sci-Fi"`).
    pub genre_name: String,
    /// The query text (`"sci-fi movies"`).
    pub text: String,
    /// Time of the user's first held-out positive of this genre (seconds since the Unix
    /// epoch): when they came back for this genre. Context variants use its time of day.
    pub timestamp: i64,
    /// Part of the day of `timestamp`, in UTC (MovieLens records no time zone).
    pub time_of_day: TimeOfDay,
}

/// The queries of the protocol with their relevant sets, in (user, genre) order.
#[derive(Clone, Debug)]
pub struct QuerySet {
    pub cases: Vec<QueryCase>,
    /// `relevant[q]`: query `q`'s held-out positives of its genre, sorted.
    pub relevant: Vec<Vec<ItemIndex>>,
}

impl QuerySet {
    /// One query for every (user, genre) where the user's held-out part has positives of
    /// that genre; the relevant set is those positives.
    pub fn build(split: &Split<'_>) -> Self {
        let view = split.training();
        let genres = view.genres();
        let mut cases = Vec::new();
        let mut relevant = Vec::new();
        for (user_row, &user) in view.users().iter().enumerate() {
            // Per genre: the positives and the time of the first one.
            let mut per_genre: Vec<(Vec<ItemIndex>, Option<i64>)> =
                vec![(Vec::new(), None); genres.len()];
            for entry in split.held_out(user_row) {
                if entry.rating < POSITIVE_RATING {
                    continue;
                }
                for g in genres.of_item(entry.item) {
                    let (items, first) = &mut per_genre[g];
                    items.push(entry.item);
                    first.get_or_insert(entry.timestamp);
                }
            }
            for (genre, (mut items, first)) in per_genre.into_iter().enumerate() {
                let Some(timestamp) = first else { continue };
                items.sort_unstable();
                items.dedup();
                let name = genres.name(genre).to_string();
                cases.push(QueryCase {
                    user,
                    user_row,
                    genre,
                    text: query_text(&name),
                    genre_name: name,
                    timestamp,
                    time_of_day: utc_time_of_day(timestamp),
                });
                relevant.push(items);
            }
        }
        QuerySet { cases, relevant }
    }

    /// Number of queries.
    pub fn len(&self) -> usize {
        self.cases.len()
    }

    /// Whether there is no query.
    pub fn is_empty(&self) -> bool {
        self.cases.is_empty()
    }
}

/// Part of the day of a Unix timestamp, by its UTC hour.
pub fn utc_time_of_day(timestamp: i64) -> TimeOfDay {
    let hour = timestamp.rem_euclid(24 * 3600) / 3600;
    TimeOfDay::from_hour(hour as u32)
}
