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

/// One rating or interaction in a user's history.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HistoryEntry {
    pub item: ItemIndex,
    /// Rating on the 0.5..=5.0 scale (implicit interactions mapped by `Interaction::as_rating`).
    pub rating: f32,
    /// Seconds since the Unix epoch.
    pub timestamp: i64,
}

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
#[derive(Clone, Debug)]
pub struct UserTable {
    dim: usize,
    rule: ProfileRule,
    ids: Vec<UserId>,
    index_of: HashMap<UserId, UserIndex>,
    /// `[n_users, dim]`; zero rows for users without a profile.
    embeddings: Vec<f32>,
    has_profile: Vec<bool>,
    /// Each user's interactions sorted by (timestamp, item).
    histories: Vec<Vec<HistoryEntry>>,
    /// Each user's rated items, sorted and deduplicated, for exclusion by binary search.
    seen: Vec<Vec<ItemIndex>>,
}

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
            histories: Vec::with_capacity(users.len()),
            seen: Vec::with_capacity(users.len()),
        };
        for (id, mut history) in users {
            history.sort_by_key(|h| (h.timestamp, h.item));
            let mut seen: Vec<ItemIndex> = history.iter().map(|h| h.item).collect();
            seen.sort_unstable();
            seen.dedup();
            table.index_of.insert(id, table.ids.len() as UserIndex);
            table.ids.push(id);
            table.histories.push(history);
            table.seen.push(seen);
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
        self.index_of.get(&id).copied()
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

    /// Items the user has rated, sorted ascending.
    pub fn seen(&self, user: UserIndex) -> &[ItemIndex] {
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
                self.embeddings.extend(std::iter::repeat_n(0.0, self.dim));
                self.has_profile.push(false);
                self.histories.push(Vec::new());
                self.seen.push(Vec::new());
                user
            }
        };
        let u = user as usize;
        let history = &mut self.histories[u];
        let at =
            history.partition_point(|h| (h.timestamp, h.item) <= (entry.timestamp, entry.item));
        history.insert(at, entry);
        if let Err(at) = self.seen[u].binary_search(&entry.item) {
            self.seen[u].insert(at, entry.item);
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
}
