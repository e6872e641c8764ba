use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ItemIndex;

/// External id of an item, as the catalog's source names it (MovieLens `movieId`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ItemId(pub u32);

/// External id of a user (MovieLens `userId`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub u32);

impl std::fmt::Display for ItemId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One rating or interaction in a user's history (the user table keeps these; defined here
/// so a request's explanation slots, [`crate::Sources`], can hold a snapshot of them).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HistoryEntry {
    pub item: ItemIndex,
    /// Rating on the 0.5..=5.0 scale (implicit interactions mapped by `Interaction::as_rating`).
    pub rating: f32,
    /// Seconds since the Unix epoch.
    pub timestamp: i64,
}

/// Part of the day the request is made in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeOfDay {
    Morning,
    Afternoon,
    Evening,
    Night,
}

impl TimeOfDay {
    pub const ALL: [TimeOfDay; 4] = [
        TimeOfDay::Morning,
        TimeOfDay::Afternoon,
        TimeOfDay::Evening,
        TimeOfDay::Night,
    ];

    /// Morning 5-12, afternoon 12-17, evening 17-22, night 22-5 (local hour).
    pub fn from_hour(hour: u32) -> TimeOfDay {
        match hour % 24 {
            5..=11 => TimeOfDay::Morning,
            12..=16 => TimeOfDay::Afternoon,
            17..=21 => TimeOfDay::Evening,
            _ => TimeOfDay::Night,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TimeOfDay::Morning => "morning",
            TimeOfDay::Afternoon => "afternoon",
            TimeOfDay::Evening => "evening",
            TimeOfDay::Night => "night",
        }
    }
}

/// Whether the user watches alone or with others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Social {
    Alone,
    Group,
}

/// Situation of a request. Every field is optional; an empty context changes nothing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Context {
    pub time_of_day: Option<TimeOfDay>,
    pub social: Option<Social>,
    /// Other users watching with this one: fusion aggregates their embeddings with the
    /// requester's. Non-empty companions imply [`Social::Group`].
    #[serde(default)]
    pub companions: Vec<UserId>,
    /// Genre hints ("thriller", "comedy"), lower-case.
    #[serde(default)]
    pub genres: Vec<String>,
}

/// One recommendation request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub user: UserId,
    pub query: String,
    #[serde(default)]
    pub context: Context,
    /// How many items to return (1..=1000).
    pub k: usize,
    /// Drop items the user has already rated from the results.
    #[serde(default = "default_true")]
    pub exclude_seen: bool,
}

fn default_true() -> bool {
    true
}

/// What a user did with an item.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum Interaction {
    /// Explicit rating on the MovieLens 0.5..=5.0 scale.
    Rating(f32),
    /// Watched to the end: an implicit positive, treated like a 4.0 rating.
    Watch,
    /// Skipped or abandoned: an implicit negative, treated like a 2.0 rating.
    Skip,
}

impl Interaction {
    /// The rating this interaction stands for.
    pub fn as_rating(self) -> f32 {
        match self {
            Interaction::Rating(r) => r,
            Interaction::Watch => 4.0,
            Interaction::Skip => 2.0,
        }
    }
}

/// A real-time user action. Applying it updates the user's embedding and history and the
/// item's popularity before the next request is served.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub user: UserId,
    pub item: ItemId,
    pub interaction: Interaction,
    /// Seconds since the Unix epoch.
    pub timestamp: i64,
}

/// What an explanation points at.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Source {
    /// An item from the user's recent history.
    HistoryItem(ItemIndex),
    /// A context phrase ("evening", "with friends", "genre: thriller"). Shared, not owned:
    /// every query of a batch with the same context points at the same few phrases, and
    /// the GPU path fills these for 1000 queries per batch while the device works.
    Context(Arc<str>),
}

/// One source's share in a recommendation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contribution {
    pub source: Source,
    /// Attention weight of the source (weights of one item sum to at most 1).
    pub weight: f32,
}

/// Why an item was recommended: its strongest contributions, largest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    pub contributions: Vec<Contribution>,
}

/// One recommended item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    pub item: ItemIndex,
    /// Final score after reranking; results are ordered by it, ties by item index.
    pub score: f32,
    /// Score the retrieval (similarity) stage gave the item.
    pub retrieval_score: f32,
    pub explanation: Explanation,
}
