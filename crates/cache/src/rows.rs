//! Where similarity rows come from: item embeddings now, collaborative weights later.

use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;
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

    /// [`RowProvider::accumulate`] for a batch: `out` is row-major `[rows, n_items]` and
    /// each entry `(r, item, weight)` adds `weight * row(item)` into output row `r`.
    /// Entries come grouped by `r`, ascending. The default accumulates row by row.
    fn accumulate_rows(
        &self,
        weighted: &[(usize, ItemIndex, f32)],
        out: &mut [f32],
        n_items: usize,
    ) {
        let mut group: Vec<(ItemIndex, f32)> = Vec::new();
        let mut rest = weighted;
        while let Some(&(row, _, _)) = rest.first() {
            let len = rest.iter().take_while(|entry| entry.0 == row).count();
            group.clear();
            group.extend(rest[..len].iter().map(|&(_, item, weight)| (item, weight)));
            if let Some(out_row) = out.get_mut(row * n_items..(row + 1) * n_items) {
                self.accumulate(&group, out_row);
            }
            rest = &rest[len..];
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
                scratch: Mutex::new(BatchScratch::default()),
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
    /// Scratch of [`RowProvider::accumulate_rows`]: combined vectors and score tiles, kept
    /// across batches (one stage uses it at a time, so the lock is uncontended).
    pub(crate) scratch: Mutex<BatchScratch>,
}

#[derive(Default)]
pub(crate) struct BatchScratch {
    /// Output rows that have entries, ascending.
    rows: Vec<usize>,
    /// `[rows.len(), dim]` weighted sums of embeddings.
    combined: Vec<f32>,
    /// Scores in item-block-major tiles: block `b` holds `[rows.len(), width_b]`.
    tiles: Vec<f32>,
}

impl EmbeddingRows {
    /// `out[j] += combined · item[j]` for every item, in parallel over item blocks.
    fn add_scores(&self, combined: &[f32], out: &mut [f32]) {
        let dim = self.items.dim();
        out.par_chunks_mut(ITEM_BLOCK)
            .zip(self.items.as_slice().par_chunks(ITEM_BLOCK * dim))
            .for_each(|(out_block, item_block)| {
                let mut scores = [0.0f32; ITEM_BLOCK];
                let scores = &mut scores[..out_block.len()];
                kernel::dot_block(combined, item_block, dim, scores, scores.len());
                for (o, s) in out_block.iter_mut().zip(scores.iter()) {
                    *o += s;
                }
            });
    }
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
        self.add_scores(&combined, out);
    }

    /// One pass over the items for the whole batch: the combined vectors of all output
    /// rows are scored against each block of items while it is in cache.
    fn accumulate_rows(
        &self,
        weighted: &[(usize, ItemIndex, f32)],
        out: &mut [f32],
        n_items: usize,
    ) {
        let dim = self.items.dim();
        if weighted.is_empty() || n_items != self.items.len() || n_items == 0 {
            return;
        }
        let mut guard = self.scratch.lock();
        let BatchScratch {
            rows,
            combined,
            tiles,
        } = &mut *guard;
        rows.clear();
        combined.clear();
        for &(row, item, weight) in weighted {
            if rows.last() != Some(&row) {
                rows.push(row);
                combined.resize(combined.len() + dim, 0.0);
            }
            let start = combined.len() - dim;
            for (c, x) in combined[start..].iter_mut().zip(self.items.row(item)) {
                *c += weight * x;
            }
        }
        let m = rows.len();
        if m == 1 {
            // A single row needs no tiles: score straight into it.
            let row = rows[0];
            if let Some(out_row) = out.get_mut(row * n_items..(row + 1) * n_items) {
                self.add_scores(combined, out_row);
            }
            return;
        }
        tiles.resize(m * n_items, 0.0);
        let queries = &*combined;
        tiles
            .par_chunks_mut(ITEM_BLOCK * m)
            .zip(self.items.as_slice().par_chunks(ITEM_BLOCK * dim))
            .for_each(|(tile, item_block)| {
                let width = item_block.len() / dim;
                kernel::dot_block(queries, item_block, dim, tile, width);
            });
        let rows = &*rows;
        let tiles = &*tiles;
        out.par_chunks_mut(n_items)
            .enumerate()
            .for_each(|(row, out_row)| {
                let Ok(r) = rows.binary_search(&row) else {
                    return;
                };
                for (block, out_block) in out_row.chunks_mut(ITEM_BLOCK).enumerate() {
                    let width = out_block.len();
                    let tile = &tiles[block * ITEM_BLOCK * m + r * width..][..width];
                    for (o, t) in out_block.iter_mut().zip(tile) {
                        *o += t;
                    }
                }
            });
    }
}
