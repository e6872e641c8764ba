//! Where similarity rows come from: item embeddings now, collaborative weights later.

use std::fmt;
use std::sync::Arc;

use rayon::prelude::*;

use hyperrec_catalog::ItemEmbeddings;
use hyperrec_stage::ItemIndex;

use crate::kernel;

/// A source of item-to-item similarity rows: `row(i)[j]` says how much item `j` is like
/// item `i`, for every item `j` of the catalog.
///
/// The cache precomputes rows of hot items with [`RowProvider::rows`] and computes others
/// on demand with [`RowProvider::row`] (or, for the history term, with
/// [`RowProvider::accumulate`]); all three must agree. Implement it (or pass a closure
/// `Fn(ItemIndex, &mut [f32])`, which implements it) to plug in, say, item-item weights
/// learned from co-ratings.
pub trait RowProvider: Send + Sync {
    /// Writes the similarity of `item` to every item into `out` (`n_items` values).
    fn row(&self, item: ItemIndex, out: &mut [f32]);

    /// Writes the rows of `items` into `out`, row-major `[items.len(), n_items]`. The
    /// default computes them independently in parallel; override for a blocked product.
    fn rows(&self, items: &[ItemIndex], out: &mut [f32]) {
        if items.is_empty() {
            return;
        }
        let n_items = out.len() / items.len();
        out.par_chunks_exact_mut(n_items)
            .zip(items.par_iter())
            .for_each(|(row, &item)| self.row(item, row));
    }

    /// Adds `sum of weight * row(item)` over `weighted` into `out` (`n_items` values). The
    /// default computes each row; a linear source can combine first and compute once.
    fn accumulate(&self, weighted: &[(ItemIndex, f32)], out: &mut [f32]) {
        if weighted.is_empty() {
            return;
        }
        let mut row = vec![0.0f32; out.len()];
        for &(item, weight) in weighted {
            self.row(item, &mut row);
            for (o, r) in out.iter_mut().zip(&row) {
                *o += weight * r;
            }
        }
    }
}

impl<F> RowProvider for F
where
    F: Fn(ItemIndex, &mut [f32]) + Send + Sync,
{
    fn row(&self, item: ItemIndex, out: &mut [f32]) {
        self(item, out)
    }
}

/// Which similarity the cache's rows hold.
#[derive(Clone, Default)]
pub enum RowSource {
    /// Cosine similarity of item embeddings (their inner product: the embeddings are unit
    /// length).
    #[default]
    Embedding,
    /// Any other provider, e.g. collaborative item-item weights.
    Custom(Arc<dyn RowProvider>),
}

impl RowSource {
    /// A custom source from a closure that fills one row.
    pub fn from_fn(row: impl Fn(ItemIndex, &mut [f32]) + Send + Sync + 'static) -> Self {
        RowSource::Custom(Arc::new(row))
    }

    pub(crate) fn provider(&self, items: &Arc<ItemEmbeddings>) -> Arc<dyn RowProvider> {
        match self {
            RowSource::Embedding => Arc::new(EmbeddingRows {
                items: items.clone(),
            }),
            RowSource::Custom(provider) => provider.clone(),
        }
    }
}

impl fmt::Debug for RowSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RowSource::Embedding => write!(f, "Embedding"),
            RowSource::Custom(_) => write!(f, "Custom(..)"),
        }
    }
}

/// Hot rows computed together per parallel task: 8 x 384 f32 = 12 KiB, kept in L1 while a
/// block of items streams past.
const HOT_BLOCK: usize = 8;
/// Items per block of the row product: 256 x 384 f32 = 384 KiB, resident in L2.
const ITEM_BLOCK: usize = 256;

/// Rows of cosine similarity between item embeddings.
pub(crate) struct EmbeddingRows {
    pub(crate) items: Arc<ItemEmbeddings>,
}

impl RowProvider for EmbeddingRows {
    fn row(&self, item: ItemIndex, out: &mut [f32]) {
        let dim = self.items.dim();
        let query = self.items.row(item);
        out.par_chunks_mut(ITEM_BLOCK)
            .zip(self.items.as_slice().par_chunks(ITEM_BLOCK * dim))
            .for_each(|(out_block, item_block)| {
                kernel::dot_block(query, item_block, dim, out_block, out_block.len());
            });
    }

    /// Blocked product `out = hot · itemsᵀ`, parallel over blocks of hot rows.
    fn rows(&self, hot: &[ItemIndex], out: &mut [f32]) {
        let dim = self.items.dim();
        let n_items = self.items.len();
        if hot.is_empty() || n_items == 0 {
            return;
        }
        out.par_chunks_mut(HOT_BLOCK * n_items)
            .zip(hot.par_chunks(HOT_BLOCK))
            .for_each(|(out_rows, hot_block)| {
                let mut queries = Vec::with_capacity(hot_block.len() * dim);
                for &item in hot_block {
                    queries.extend_from_slice(self.items.row(item));
                }
                for (block, item_block) in
                    self.items.as_slice().chunks(ITEM_BLOCK * dim).enumerate()
                {
                    kernel::dot_block(
                        &queries,
                        item_block,
                        dim,
                        &mut out_rows[block * ITEM_BLOCK..],
                        n_items,
                    );
                }
            });
    }

    /// The rows are linear in the embedding, so the weighted sum of rows is the row of the
    /// weighted sum of embeddings: one pass over the items instead of one per entry.
    fn accumulate(&self, weighted: &[(ItemIndex, f32)], out: &mut [f32]) {
        if weighted.is_empty() {
            return;
        }
        let dim = self.items.dim();
        let mut combined = vec![0.0f32; dim];
        for &(item, weight) in weighted {
            for (c, x) in combined.iter_mut().zip(self.items.row(item)) {
                *c += weight * x;
            }
        }
        out.par_chunks_mut(ITEM_BLOCK)
            .zip(self.items.as_slice().par_chunks(ITEM_BLOCK * dim))
            .for_each(|(out_block, item_block)| {
                let mut scores = [0.0f32; ITEM_BLOCK];
                let scores = &mut scores[..out_block.len()];
                kernel::dot_block(&combined, item_block, dim, scores, scores.len());
                for (o, s) in out_block.iter_mut().zip(scores.iter()) {
                    *o += s;
                }
            });
    }
}
