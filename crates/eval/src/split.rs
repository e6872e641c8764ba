//! The temporal per-user split and the read-only view of its training part.

use hyperrec_catalog::HistoryEntry;
use hyperrec_catalog::movielens::{Catalog, Dataset};
use hyperrec_collab::Interactions;
use hyperrec_stage::{ItemId, ItemIndex, UserId};

use crate::EvalError;
use crate::query::Genres;

/// Share of each user's ratings (oldest first) that goes to training: the first
/// `floor(0.8 n)`; the rest is held out.
pub const TRAINING_SHARE_NUMERATOR: usize = 4;
/// Denominator of [`TRAINING_SHARE_NUMERATOR`] (so the share is 4/5 in exact integers).
pub const TRAINING_SHARE_DENOMINATOR: usize = 5;

/// Every user's ratings split in time: the first `floor(0.8 n)` for training, the rest
/// held out.
///
/// A user's ratings are ordered by `(timestamp, movieId)`: MovieLens stores many ratings
/// of one user in the same second, and the reference breaks those ties by the MovieLens
/// `movieId` (the catalog's external [`ItemId`]), which is also the catalog's index order
/// for MovieLens (movies.csv is sorted by id) — we sort by the external id so the split
/// does not depend on that coincidence.
#[derive(Clone, Debug)]
pub struct Split<'a> {
    catalog: &'a Catalog,
    users: Vec<UserId>,
    /// Per user row: the training part, oldest first.
    training: Vec<Vec<HistoryEntry>>,
    /// Per user row: the held-out part, oldest first.
    held_out: Vec<Vec<HistoryEntry>>,
    /// Per user row: training items, sorted, for candidate exclusion by binary search.
    training_items: Vec<Vec<ItemIndex>>,
    /// The training part as a binary user x item table (rows = user rows).
    interactions: Interactions,
    /// Training ratings per item.
    popularity: Vec<u32>,
    genres: Genres,
}

impl<'a> Split<'a> {
    /// Splits `dataset`'s ratings. Users are rows in ascending [`UserId`] order.
    pub fn new(dataset: &'a Dataset) -> Result<Self, EvalError> {
        Self::with_share(
            dataset,
            TRAINING_SHARE_NUMERATOR,
            TRAINING_SHARE_DENOMINATOR,
        )
    }

    /// Splits `dataset`'s ratings with the first `floor(n * numerator / denominator)` of
    /// each user's ratings (in time order) for training. The trainer carves its validation
    /// part from the protocol's training part this way (9/10), so every choice it makes is
    /// made without the held-out part.
    pub fn with_share(
        dataset: &'a Dataset,
        numerator: usize,
        denominator: usize,
    ) -> Result<Self, EvalError> {
        if denominator == 0 || numerator > denominator {
            return Err(EvalError::Data(format!(
                "training share {numerator}/{denominator} is not in [0, 1]"
            )));
        }
        let catalog = &dataset.catalog;
        let n_items = catalog.len();
        let mut users = Vec::new();
        let mut training = Vec::new();
        let mut held_out = Vec::new();
        let mut training_items = Vec::new();
        let mut interactions = Interactions::new(n_items);
        let mut popularity = vec![0u32; n_items];

        for (user, mut history) in dataset.user_histories() {
            for entry in &history {
                if entry.item as usize >= n_items {
                    return Err(EvalError::Data(format!(
                        "user {user} rated item row {} outside the catalog of {n_items}",
                        entry.item
                    )));
                }
            }
            history.sort_by_key(|h| (h.timestamp, catalog.item(h.item).id));
            let cut = history.len() * numerator / denominator;
            let later = history.split_off(cut);
            let mut items: Vec<ItemIndex> = history.iter().map(|h| h.item).collect();
            items.sort_unstable();
            items.dedup();
            for &item in &items {
                popularity[item as usize] += 1;
            }
            interactions.push_user(history.iter().map(|h| (h.item, h.rating)))?;
            users.push(user);
            training.push(history);
            held_out.push(later);
            training_items.push(items);
        }
        Ok(Split {
            catalog,
            users,
            training,
            held_out,
            training_items,
            interactions,
            popularity,
            genres: Genres::new(catalog),
        })
    }

    /// The part a variant may learn from.
    pub fn training(&self) -> TrainingView<'_> {
        TrainingView { split: self }
    }

    /// Number of users.
    pub fn n_users(&self) -> usize {
        self.users.len()
    }

    /// Total ratings in the training part.
    pub fn training_len(&self) -> usize {
        self.training.iter().map(Vec::len).sum()
    }

    /// Total ratings in the held-out part.
    pub fn held_out_len(&self) -> usize {
        self.held_out.iter().map(Vec::len).sum()
    }

    /// User row `user`'s held-out ratings, oldest first. Only the protocol reads these.
    pub(crate) fn held_out(&self, user: usize) -> &[HistoryEntry] {
        &self.held_out[user]
    }
}

/// Everything a variant may see: the catalog and the training part of every user.
/// The held-out part is not reachable from here.
#[derive(Clone, Copy, Debug)]
pub struct TrainingView<'a> {
    split: &'a Split<'a>,
}

impl<'a> TrainingView<'a> {
    /// The whole catalog (titles, genres, tags, texts): items are not split.
    pub fn catalog(&self) -> &'a Catalog {
        self.split.catalog
    }

    /// Number of catalog items; score vectors have this length.
    pub fn n_items(&self) -> usize {
        self.split.catalog.len()
    }

    /// External id of an item row.
    pub fn item_id(&self, item: ItemIndex) -> ItemId {
        self.split.catalog.item(item).id
    }

    /// Users in row order (ascending id).
    pub fn users(&self) -> &'a [UserId] {
        &self.split.users
    }

    /// User row `user`'s training ratings, oldest first; empty for an unknown row.
    pub fn history(&self, user: usize) -> &'a [HistoryEntry] {
        self.split.training.get(user).map_or(&[], Vec::as_slice)
    }

    /// Every user with their training history, in the shape `UserTable::build` takes.
    pub fn user_histories(&self) -> Vec<(UserId, Vec<HistoryEntry>)> {
        self.split
            .users
            .iter()
            .copied()
            .zip(self.split.training.iter().cloned())
            .collect()
    }

    /// User row `user`'s training items, sorted ascending.
    pub fn training_items(&self, user: usize) -> &'a [ItemIndex] {
        self.split
            .training_items
            .get(user)
            .map_or(&[], Vec::as_slice)
    }

    /// Whether `item` is in user row `user`'s training part (so it is not a candidate).
    pub fn is_training_item(&self, user: usize, item: ItemIndex) -> bool {
        self.training_items(user).binary_search(&item).is_ok()
    }

    /// The training part as a binary user x item table (rows = user rows).
    pub fn interactions(&self) -> &'a Interactions {
        &self.split.interactions
    }

    /// The genres queries are made for, with item membership.
    pub fn genres(&self) -> &'a Genres {
        &self.split.genres
    }

    /// Number of training ratings of each item.
    pub fn popularity(&self) -> &'a [u32] {
        &self.split.popularity
    }
}
