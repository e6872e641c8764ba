//! Training interactions: which items each user has rated, and how.

use hyperrec_stage::ItemIndex;

use crate::CollabError;

/// Users' rated items as a compressed sparse row table (user -> items, sorted by item).
///
/// The collaborative models read it as a binary matrix (an interaction is present or not);
/// the ratings are kept so scoring rules such as item-kNN's "liked items" can use them.
/// Users are dense rows `0..n_users` in insertion order; items are catalog rows
/// `0..n_items`.
#[derive(Clone, Debug, PartialEq)]
pub struct Interactions {
    n_items: usize,
    /// `offsets[u]..offsets[u + 1]` are user `u`'s entries in `items` / `ratings`.
    offsets: Vec<usize>,
    items: Vec<ItemIndex>,
    ratings: Vec<f32>,
}

impl Interactions {
    /// An empty table over a catalog of `n_items` items.
    pub fn new(n_items: usize) -> Self {
        Interactions {
            n_items,
            offsets: vec![0],
            items: Vec::new(),
            ratings: Vec::new(),
        }
    }

    /// Appends the next user's `(item, rating)` history (any order) and returns their row.
    ///
    /// A user who rated the same item twice keeps the later entry of `history`, so callers
    /// that pass histories in time order keep the latest rating. Fails, leaving the table
    /// unchanged, on an item outside the catalog or a rating that is not finite.
    pub fn push_user<I>(&mut self, history: I) -> Result<usize, CollabError>
    where
        I: IntoIterator<Item = (ItemIndex, f32)>,
    {
        let start = self.items.len();
        let mut entries: Vec<(ItemIndex, f32)> = Vec::new();
        for (item, rating) in history {
            if item as usize >= self.n_items {
                return Err(CollabError::ItemOutOfRange {
                    item,
                    n_items: self.n_items,
                });
            }
            if !rating.is_finite() {
                return Err(CollabError::InvalidRating { item, rating });
            }
            entries.push((item, rating));
        }
        // Stable sort keeps equal items in input order; keep the last of each run.
        entries.sort_by_key(|&(item, _)| item);
        for (position, &(item, rating)) in entries.iter().enumerate() {
            let next_is_same = entries
                .get(position + 1)
                .is_some_and(|&(next, _)| next == item);
            if !next_is_same {
                self.items.push(item);
                self.ratings.push(rating);
            }
        }
        debug_assert!(self.items.len() >= start);
        self.offsets.push(self.items.len());
        Ok(self.offsets.len() - 2)
    }

    /// Number of catalog items the table is defined over.
    pub fn n_items(&self) -> usize {
        self.n_items
    }

    /// Number of users pushed so far.
    pub fn n_users(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Number of (user, item) interactions.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no user has any interaction.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// User `user`'s items (ascending) and their ratings; empty for an unknown row.
    pub fn user(&self, user: usize) -> (&[ItemIndex], &[f32]) {
        match (self.offsets.get(user), self.offsets.get(user + 1)) {
            (Some(&start), Some(&end)) => (&self.items[start..end], &self.ratings[start..end]),
            _ => (&[], &[]),
        }
    }

    /// Number of users who interacted with each item (`[n_items]`).
    pub fn item_counts(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.n_items];
        for &item in &self.items {
            counts[item as usize] += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_keep_the_later_rating_and_items_are_sorted() {
        let mut table = Interactions::new(5);
        let row = table
            .push_user([(3, 1.0), (1, 4.0), (3, 5.0)])
            .expect("valid history");
        assert_eq!(row, 0);
        assert_eq!(table.user(0), (&[1, 3][..], &[4.0, 5.0][..]));
        assert_eq!(table.item_counts(), vec![0, 1, 0, 1, 0]);
    }

    #[test]
    fn bad_items_and_ratings_are_rejected_without_changing_the_table() {
        let mut table = Interactions::new(2);
        table.push_user([(0, 4.0)]).expect("valid history");
        let out_of_range = table.push_user([(1, 4.0), (2, 3.0)]);
        assert!(matches!(
            out_of_range,
            Err(CollabError::ItemOutOfRange { item: 2, .. })
        ));
        let not_finite = table.push_user([(1, f32::NAN)]);
        assert!(matches!(not_finite, Err(CollabError::InvalidRating { .. })));
        assert_eq!(table.n_users(), 1);
        assert_eq!(table.len(), 1);
        assert_eq!(table.user(5), (&[][..], &[][..]));
    }
}
