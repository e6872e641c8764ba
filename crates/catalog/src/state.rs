//! The live tables that stages share.
//!
//! The pipeline owns one [`ItemEmbeddings`] (immutable once indexed) and one [`UserTable`]
//! (mutated by real-time events), and hands stages `Arc` handles to them.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use hyperrec_stage::{ItemIndex, UserId, UserIndex};

/// The user table as the pipeline shares it with stages: events take the write lock
/// briefly; stages take read locks while they process a batch.
pub type SharedUsers = Arc<RwLock<UserTable>>;

/// Row-major `[n_items, dim]` matrix of L2-normalized item embeddings.
#[derive(Clone, Debug, PartialEq)]
pub struct ItemEmbeddings {
    dim: usize,
    data: Vec<f32>,
}

impl ItemEmbeddings {
    /// Wraps `data`; `data.len()` must be a multiple of `dim`.
    pub fn new(dim: usize, data: Vec<f32>) -> Option<Self> {
        (dim > 0 && data.len().is_multiple_of(dim)).then_some(ItemEmbeddings { dim, data })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn row(&self, item: ItemIndex) -> &[f32] {
        let start = item as usize * self.dim;
        &self.data[start..start + self.dim]
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }
}

/// One rating or interaction in a user's history (defined in `hyperrec-stage`, where a
/// request's explanation slots hold snapshots of histories).
pub use hyperrec_stage::HistoryEntry;

/// How a user's profile embedding is built from their history.
///
/// `profile = normalize(sum_i w_i * item_i)` with
/// `w_i = (rating_i - neutral) * 0.5^((t_latest - t_i) / half_life)`.
/// Ratings above `neutral` pull the profile towards the item, ratings below push it away,
/// so a dislike never counts as a like; a rating of exactly `neutral` contributes nothing.
/// Recency is measured from the user's latest interaction, so the profile does not drift
/// with wall-clock time between events. A user with no non-neutral rating, or whose
/// weighted sum vanishes, has no profile (the zero vector) and is served as a cold start.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProfileRule {
    /// Rating that counts as neither like nor dislike.
    pub neutral: f32,
    /// Age, in seconds, at which a rating's weight halves.
    pub half_life_secs: f64,
}

impl Default for ProfileRule {
    fn default() -> Self {
        ProfileRule {
            neutral: 3.0,
            half_life_secs: 365.0 * 24.0 * 3600.0,
        }
    }
}

impl ProfileRule {
    /// Writes the profile of `history` into `out` (length `items.dim()`); returns whether
    /// the user has a profile (false leaves `out` zeroed).
    pub fn profile(
        &self,
        history: &[HistoryEntry],
        items: &ItemEmbeddings,
        out: &mut [f32],
    ) -> bool {
        out.fill(0.0);
        let Some(latest) = history.iter().map(|h| h.timestamp).max() else {
            return false;
        };
        for entry in history {
            let age = (latest - entry.timestamp).max(0) as f64;
            let decay = 0.5f64.powf(age / self.half_life_secs);
            let weight = ((entry.rating - self.neutral) as f64 * decay) as f32;
            if weight == 0.0 {
                continue;
            }
            for (o, x) in out.iter_mut().zip(items.row(entry.item)) {
                *o += weight * x;
            }
        }
        let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm <= f32::EPSILON {
            out.fill(0.0);
            return false;
        }
        out.iter_mut().for_each(|x| *x /= norm);
        true
    }
}

/// Every known user: profile embedding, full history (time order) and seen set.
///
/// Histories and seen sets are shared snapshots (`Arc<[_]>`): an event replaces the
/// user's history and seen set with new ones instead of changing them in place, so a
/// request's notes can hold the ones it was served with for the cost of a reference count
/// ([`UserTable::shared_history`], [`UserTable::shared_seen`]); the copy an event makes is
/// small next to the profile refresh it triggers anyway (`O(history * dim)`).
#[derive(Clone, Debug)]
pub struct UserTable {
    dim: usize,
    rule: ProfileRule,
    ids: Vec<UserId>,
    index_of: HashMap<UserId, UserIndex>,
    /// `dense[id]` = the row of user id `id`, or [`NO_ROW`], for ids below `dense.len()`
    /// (ids of a dense range, as MovieLens and the generator use, when the table is built):
    /// one array read per lookup instead of hashing, which the GPU path does for every
    /// request of a batch before the launch. Ids past it are in `index_of` only; every id
    /// below it is in both.
    dense: Vec<UserIndex>,
    /// `[n_users, dim]`; zero rows for users without a profile.
    embeddings: Vec<f32>,
    has_profile: Vec<bool>,
    /// Each user's interactions sorted by (timestamp, item).
    histories: Vec<Arc<[HistoryEntry]>>,
    /// Each user's rated items, sorted and deduplicated, for exclusion by binary search.
    seen: Vec<Arc<[ItemIndex]>>,
}

/// Entry of `UserTable::dense` for an id without a row.
const NO_ROW: UserIndex = UserIndex::MAX;

/// Ids a dense lookup array covers at most, relative to the users it is built for: ids
/// up to `DENSE_SLACK * users + DENSE_EXTRA` (at most 4 bytes per possible id, so at most
/// `4 * DENSE_SLACK` bytes per user plus 256 KiB); sparser ids are hashed.
const DENSE_SLACK: usize = 4;
const DENSE_EXTRA: usize = 1 << 16;

impl UserTable {
    /// Builds the table from each user's history and computes every profile.
    pub fn build(
        users: Vec<(UserId, Vec<HistoryEntry>)>,
        items: &ItemEmbeddings,
        rule: ProfileRule,
    ) -> Self {
        let dim = items.dim();
        let mut table = UserTable {
            dim,
            rule,
            ids: Vec::with_capacity(users.len()),
            index_of: HashMap::with_capacity(users.len()),
            embeddings: vec![0.0; users.len() * dim],
            has_profile: vec![false; users.len()],
            dense: Vec::new(),
            histories: Vec::with_capacity(users.len()),
            seen: Vec::with_capacity(users.len()),
        };
        for (id, mut history) in users {
            history.sort_by_key(|h| (h.timestamp, h.item));
            let mut seen: Vec<ItemIndex> = history.iter().map(|h| h.item).collect();
            seen.sort_unstable();
            seen.dedup();
            // A duplicate id keeps its last row, as the map does.
            table.index_of.insert(id, table.ids.len() as UserIndex);
            table.ids.push(id);
            table.histories.push(history.into());
            table.seen.push(seen.into());
        }
        let max_id = table.ids.iter().map(|id| id.0 as usize).max();
        if let Some(max_id) = max_id
            && max_id < DENSE_SLACK * table.ids.len() + DENSE_EXTRA
        {
            table.dense = vec![NO_ROW; max_id + 1];
            for (&id, &row) in &table.index_of {
                table.dense[id.0 as usize] = row;
            }
        }
        for user in 0..table.ids.len() {
            table.refresh_profile(user as UserIndex, items);
        }
        table
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn rule(&self) -> ProfileRule {
        self.rule
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn index_of(&self, id: UserId) -> Option<UserIndex> {
        match self.dense.get(id.0 as usize) {
            Some(&row) => (row != NO_ROW).then_some(row),
            None => self.index_of.get(&id).copied(),
        }
    }

    pub fn id(&self, user: UserIndex) -> UserId {
        self.ids[user as usize]
    }

    /// The user's profile embedding, or `None` when they have none (cold start).
    pub fn embedding(&self, user: UserIndex) -> Option<&[f32]> {
        let u = user as usize;
        self.has_profile[u].then(|| &self.embeddings[u * self.dim..(u + 1) * self.dim])
    }

    /// All profile rows, `[n_users, dim]` (zero rows for users without a profile).
    pub fn embeddings(&self) -> &[f32] {
        &self.embeddings
    }

    /// The user's whole history, oldest first.
    pub fn history(&self, user: UserIndex) -> &[HistoryEntry] {
        &self.histories[user as usize]
    }

    /// The user's `n` most recent interactions, oldest first.
    pub fn recent(&self, user: UserIndex, n: usize) -> &[HistoryEntry] {
        let history = self.history(user);
        &history[history.len().saturating_sub(n)..]
    }

    /// The user's whole history as a shared snapshot: later events replace it in the
    /// table, they never change this one.
    pub fn shared_history(&self, user: UserIndex) -> &Arc<[HistoryEntry]> {
        &self.histories[user as usize]
    }

    /// Items the user has rated, sorted ascending.
    pub fn seen(&self, user: UserIndex) -> &[ItemIndex] {
        &self.seen[user as usize]
    }

    /// [`UserTable::seen`] as a shared snapshot: later events replace it in the table,
    /// they never change this one.
    pub fn shared_seen(&self, user: UserIndex) -> &Arc<[ItemIndex]> {
        &self.seen[user as usize]
    }

    pub fn has_seen(&self, user: UserIndex, item: ItemIndex) -> bool {
        self.seen(user).binary_search(&item).is_ok()
    }

    /// Applies one interaction: appends it to the history (adding the user if new),
    /// updates the seen set and recomputes the profile. Returns the user's row.
    pub fn apply(&mut self, id: UserId, entry: HistoryEntry, items: &ItemEmbeddings) -> UserIndex {
        let user = match self.index_of(id) {
            Some(user) => user,
            None => {
                let user = self.ids.len() as UserIndex;
                self.ids.push(id);
                self.index_of.insert(id, user);
                if let Some(row) = self.dense.get_mut(id.0 as usize) {
                    *row = user;
                }
                self.embeddings.extend(std::iter::repeat_n(0.0, self.dim));
                self.has_profile.push(false);
                self.histories.push(Arc::default());
                self.seen.push(Arc::default());
                user
            }
        };
        let u = user as usize;
        // New snapshots, not edits: notes of earlier requests may hold the old ones.
        let history = &self.histories[u];
        let at =
            history.partition_point(|h| (h.timestamp, h.item) <= (entry.timestamp, entry.item));
        self.histories[u] = history[..at]
            .iter()
            .chain(std::iter::once(&entry))
            .chain(&history[at..])
            .copied()
            .collect();
        let seen = &self.seen[u];
        if let Err(at) = seen.binary_search(&entry.item) {
            self.seen[u] = seen[..at]
                .iter()
                .chain(std::iter::once(&entry.item))
                .chain(&seen[at..])
                .copied()
                .collect();
        }
        self.refresh_profile(user, items);
        user
    }

    fn refresh_profile(&mut self, user: UserIndex, items: &ItemEmbeddings) {
        let u = user as usize;
        let row = &mut self.embeddings[u * self.dim..(u + 1) * self.dim];
        self.has_profile[u] = self.rule.profile(&self.histories[u], items, row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items() -> ItemEmbeddings {
        // Three orthogonal unit items in 3-d.
        ItemEmbeddings::new(3, vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]).expect("shape")
    }

    fn entry(item: ItemIndex, rating: f32, timestamp: i64) -> HistoryEntry {
        HistoryEntry {
            item,
            rating,
            timestamp,
        }
    }

    #[test]
    fn dislikes_push_the_profile_away() {
        let items = items();
        let mut out = [0.0; 3];
        let has =
            ProfileRule::default().profile(&[entry(0, 5.0, 0), entry(1, 1.0, 0)], &items, &mut out);
        assert!(has);
        assert!(out[0] > 0.0, "liked item pulls: {out:?}");
        assert!(out[1] < 0.0, "disliked item pushes: {out:?}");
    }

    #[test]
    fn neutral_only_history_has_no_profile() {
        let items = items();
        let mut out = [1.0; 3];
        let has = ProfileRule::default().profile(&[entry(2, 3.0, 5)], &items, &mut out);
        assert!(!has);
        assert_eq!(out, [0.0; 3]);
    }

    #[test]
    fn recent_ratings_weigh_more() {
        let items = items();
        let rule = ProfileRule {
            neutral: 3.0,
            half_life_secs: 10.0,
        };
        let mut out = [0.0; 3];
        rule.profile(&[entry(0, 5.0, 0), entry(1, 5.0, 100)], &items, &mut out);
        assert!(out[1] > 10.0 * out[0], "{out:?}");
    }

    #[test]
    fn apply_updates_history_seen_and_profile_at_once() {
        let items = items();
        let mut table = UserTable::build(
            vec![(UserId(7), vec![entry(0, 5.0, 10)])],
            &items,
            ProfileRule::default(),
        );
        let user = table.index_of(UserId(7)).expect("known");
        assert!(!table.has_seen(user, 2));
        let before = table.embedding(user).expect("profile").to_vec();
        table.apply(UserId(7), entry(2, 5.0, 20), &items);
        assert!(table.has_seen(user, 2));
        assert_eq!(table.recent(user, 1)[0].item, 2);
        assert_ne!(table.embedding(user).expect("profile"), before.as_slice());

        let new_user = table.apply(UserId(99), entry(1, 4.5, 30), &items);
        assert_eq!(table.len(), 2);
        assert!(table.embedding(new_user).expect("profile")[1] > 0.99);
    }

    /// `index_of` (dense array or hash map) agrees with a plain map of every id, for ids
    /// dense enough for the array and for sparse ones, after events add users inside and
    /// outside the array's range and an id appears twice at build.
    #[test]
    fn index_of_matches_a_map_for_dense_and_sparse_ids() {
        use rand::{Rng, SeedableRng};
        let items = items();
        let seed: u64 = rand::random();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for spread in [1u32, 3, 1000, u32::MAX / 600] {
            let mut ids: Vec<u32> = (0..500)
                .map(|_| rng.random_range(0..500 * spread))
                .collect();
            ids.push(ids[0]);
            let users = ids
                .iter()
                .map(|&id| (UserId(id), vec![entry(rng.random_range(0..3), 5.0, 1)]))
                .collect();
            let mut table = UserTable::build(users, &items, ProfileRule::default());
            let mut reference: HashMap<u32, UserIndex> = HashMap::new();
            for (row, &id) in ids.iter().enumerate() {
                reference.insert(id, row as UserIndex);
            }
            for _ in 0..50 {
                let id = rng.random_range(0..1000 * spread.min(u32::MAX / 1000));
                let row = table.apply(UserId(id), entry(1, 4.0, 2), &items);
                assert_eq!(*reference.entry(id).or_insert(row), row, "seed {seed}");
            }
            for id in (0..2000).map(|_| rng.random_range(0..1000 * spread.min(u32::MAX / 1000))) {
                let expected = reference.get(&id).copied();
                assert_eq!(table.index_of(UserId(id)), expected, "seed {seed}, id {id}");
            }
            for (&id, &row) in &reference {
                assert_eq!(
                    table.index_of(UserId(id)),
                    Some(row),
                    "seed {seed}, id {id}"
                );
            }
        }
    }

    /// A snapshot handed out before an event keeps its contents; the table's new history
    /// and seen set have the event, in order.
    #[test]
    fn snapshots_outlive_events_unchanged() {
        let items = items();
        let mut table = UserTable::build(
            vec![(UserId(3), vec![entry(2, 5.0, 10), entry(0, 4.0, 30)])],
            &items,
            ProfileRule::default(),
        );
        let user = table.index_of(UserId(3)).expect("known");
        let (history, seen) = (
            table.shared_history(user).clone(),
            table.shared_seen(user).clone(),
        );
        table.apply(UserId(3), entry(1, 5.0, 20), &items);
        table.apply(UserId(3), entry(2, 1.0, 40), &items);
        let items_of = |h: &[HistoryEntry]| h.iter().map(|e| e.item).collect::<Vec<_>>();
        assert_eq!(items_of(&history), [2, 0]);
        assert_eq!(&seen[..], [0, 2]);
        assert_eq!(items_of(table.history(user)), [2, 1, 0, 2]);
        assert_eq!(table.seen(user), [0, 1, 2]);
        assert_eq!(table.shared_seen(user)[..], *table.seen(user));
    }
}
