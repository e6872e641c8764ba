//! Similarity stage: exact inner product over every item and top-K selection.
//!
//! For each query `q` of a batch, every item `j` of the catalog is scored
//!
//! ```text
//! score[q, j] = (fused[q] + query_prior[q]) · item[j] + item_prior[q, j]
//! ```
//!
//! where `query_prior` and `item_prior` count only when a stage (the cache) wrote them.
//!
//! and the `candidates` best items are kept, best first, ties broken by the smaller item
//! index. Items the user has already rated are skipped when both the stage
//! ([`SimilarityConfig::exclude_seen`]) and the request (`Request::exclude_seen`) ask for it.
//! Unused slots (fewer eligible items than candidates) hold id `u32::MAX` and score
//! `-inf`. NaN scores are never selected.
//!
//! Layouts are the GPU path's: item embeddings `[n_items, dim]`, fused queries `[n, dim]`,
//! the prior `[n, n_items]` and the candidates `[n, candidates]`, all row-major `f32`/`u32`.
//!
//! A single query (batch size 1, the latency path) is scanned against a half-precision
//! copy of the item table and the survivors of an error-bound threshold are rescored in
//! `f32` (see `half_scan.rs`): half the memory traffic, and the same candidates and scores,
//! bit for bit, as the full `f32` scan that batches use.
//!
//! The pure building blocks are public for the cache, the evaluation and the GPU tests:
//! [`score_all`] (one query against every item), [`score_batch`] (a batch, row-major),
//! [`top_k`] and the reusable [`TopK`] selector.

/// The shared inner-product kernel (bit-identical however rows are blocked).
use hyperrec_dot as kernel;
mod half_scan;
mod topk;

use std::sync::Arc;

use rayon::prelude::*;
use thiserror::Error;

use hyperrec_catalog::{ItemEmbeddings, SharedUsers, UserTable};
use hyperrec_stage::{Batch, Cpu, ItemIndex, Request, RequestNotes, Stage, StageError, UserIndex};

pub use topk::{PAD_ID, PAD_SCORE, TopK, top_k};

/// Largest number of candidates the stage keeps per query (shared with the GPU stage).
pub use hyperrec_stage::MAX_CANDIDATES;

/// Items scored together by one parallel task. A block of 256 items x 384 f32 is 384 KiB,
/// which stays in a core's L2 while every query of the batch is scored against it.
const ITEM_BLOCK: usize = 256;

/// Why the similarity stage cannot be built or a scoring call cannot run.
#[derive(Debug, Error, PartialEq)]
pub enum SimilarityError {
    #[error("candidates must be in 1..={MAX_CANDIDATES}, got {0}")]
    InvalidCandidates(usize),
    #[error("item embeddings are {items}-d but user profiles are {users}-d")]
    DimensionMismatch { items: usize, users: usize },
    #[error("expected {expected} values for {what}, got {found}")]
    Shape {
        what: &'static str,
        expected: usize,
        found: usize,
    },
}

/// Settings of the similarity stage.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimilarityConfig {
    /// Candidates kept per query (1..=[`MAX_CANDIDATES`], 1024). The stage keeps at least
    /// the largest `k` of the batch, so the rerank always has enough to choose from.
    pub candidates: usize,
    /// Skip items the user has already rated (a request can still opt out on its own).
    pub exclude_seen: bool,
}

impl Default for SimilarityConfig {
    fn default() -> Self {
        SimilarityConfig {
            candidates: 100,
            exclude_seen: true,
        }
    }
}

/// The CPU similarity stage (`"similarity"`).
///
/// Reads `fused`, `query_prior` (added to `fused` when it holds `n * dim` values),
/// `item_prior` (added when it holds `n * n_items` values), `notes[i].user`
/// and `requests[i].exclude_seen`; writes `candidates`, `candidate_ids`,
/// `candidate_scores` and `notes[i].excluded` (the user's seen items when excluded).
pub struct Similarity {
    items: Arc<ItemEmbeddings>,
    users: SharedUsers,
    config: SimilarityConfig,
    /// Scores of the batch in item-block-major tiles: block `b` holds `[n, width_b]`.
    scores: Vec<f32>,
    /// One selector per query of the largest batch seen.
    selectors: Vec<TopK>,
    /// `fused + query_prior` of the batch, when a query prior is present.
    queries: Vec<f32>,
    /// `f16` copy of the items for single-query scans (`None` when the table holds values
    /// `f16` cannot carry with relative rounding).
    half: Option<half_scan::HalfItems>,
    scan_scratch: half_scan::ScanScratch,
}

impl Similarity {
    /// A stage over `items`, excluding from `users`' seen sets.
    pub fn new(
        items: Arc<ItemEmbeddings>,
        users: SharedUsers,
        config: SimilarityConfig,
    ) -> Result<Self, SimilarityError> {
        if config.candidates == 0 || config.candidates > MAX_CANDIDATES {
            return Err(SimilarityError::InvalidCandidates(config.candidates));
        }
        let users_dim = users.read().dim();
        if users_dim != items.dim() {
            return Err(SimilarityError::DimensionMismatch {
                items: items.dim(),
                users: users_dim,
            });
        }
        Ok(Similarity {
            half: half_scan::HalfItems::new(&items),
            scan_scratch: half_scan::ScanScratch::default(),
            items,
            users,
            config,
            scores: Vec::new(),
            selectors: Vec::new(),
            queries: Vec::new(),
        })
    }

    pub fn config(&self) -> SimilarityConfig {
        self.config
    }

    /// Host bytes of the stage's own copy of the items (the `f16` scan table).
    pub fn index_bytes(&self) -> usize {
        self.half.as_ref().map_or(0, half_scan::HalfItems::bytes)
    }
}

/// Scores one query against every item: `out[j] = query · item[j]`, in parallel over item
/// blocks. `query` must hold `items.dim()` values and `out` `items.len()`.
pub fn score_all(
    items: &ItemEmbeddings,
    query: &[f32],
    out: &mut [f32],
) -> Result<(), SimilarityError> {
    score_batch(items, query, out)
}

/// Scores a batch of queries (`[n, dim]`) against every item, writing row-major
/// `out[q * n_items + j] = queries[q] · item[j]`. Parallel over item blocks, each block
/// scored against every query while it is in cache.
pub fn score_batch(
    items: &ItemEmbeddings,
    queries: &[f32],
    out: &mut [f32],
) -> Result<(), SimilarityError> {
    let dim = items.dim();
    let n_items = items.len();
    if !queries.len().is_multiple_of(dim) {
        return Err(SimilarityError::Shape {
            what: "queries",
            expected: dim * queries.len().div_ceil(dim),
            found: queries.len(),
        });
    }
    let n = queries.len() / dim;
    if out.len() != n * n_items {
        return Err(SimilarityError::Shape {
            what: "scores",
            expected: n * n_items,
            found: out.len(),
        });
    }
    if n == 0 || n_items == 0 {
        return Ok(());
    }
    if n == 1 {
        out.par_chunks_mut(ITEM_BLOCK)
            .zip(items.as_slice().par_chunks(ITEM_BLOCK * dim))
            .for_each(|(out_block, item_block)| {
                kernel::dot_block(queries, item_block, dim, out_block, out_block.len());
            });
        return Ok(());
    }
    // Rows of several queries cannot be split into disjoint per-block slices safely, so
    // score into tiles and scatter; the tile pass is cheap next to the products.
    let mut tiles = vec![0.0f32; n * n_items];
    score_tiles(items, queries, n, None, &mut tiles);
    for (block, tile) in tiles.chunks(ITEM_BLOCK * n).enumerate() {
        let width = tile.len() / n;
        for (q, row) in tile.chunks_exact(width).enumerate() {
            let start = q * n_items + block * ITEM_BLOCK;
            out[start..start + width].copy_from_slice(row);
        }
    }
    Ok(())
}

/// Scores `n` queries into item-block-major tiles: tile `b` (offset `b * ITEM_BLOCK * n`)
/// holds `[n, width_b]` where `width_b` is the block's item count. Adds `prior` (row-major
/// `[n, n_items]`) when given.
fn score_tiles(
    items: &ItemEmbeddings,
    queries: &[f32],
    n: usize,
    prior: Option<&[f32]>,
    tiles: &mut [f32],
) {
    let dim = items.dim();
    let n_items = items.len();
    tiles
        .par_chunks_mut(ITEM_BLOCK * n)
        .zip(items.as_slice().par_chunks(ITEM_BLOCK * dim))
        .enumerate()
        .for_each(|(block, (tile, item_block))| {
            let width = item_block.len() / dim;
            kernel::dot_block(queries, item_block, dim, tile, width);
            if let Some(prior) = prior {
                let first = block * ITEM_BLOCK;
                for (q, row) in tile.chunks_exact_mut(width).enumerate() {
                    let start = q * n_items + first;
                    for (score, p) in row.iter_mut().zip(&prior[start..start + width]) {
                        *score += p;
                    }
                }
            }
        });
}

impl Stage<Cpu> for Similarity {
    fn name(&self) -> &'static str {
        "similarity"
    }

    fn run(&mut self, _device: &Cpu, batch: &mut Batch<Cpu>) -> Result<(), StageError> {
        let n = batch.len();
        let dim = self.items.dim();
        let n_items = self.items.len();
        if batch.dim != dim || batch.fused.len() != n * dim {
            return Err(StageError::BatchShape {
                stage: "similarity",
                expected: format!("fused [{n}, {dim}]"),
                found: format!("{} values of width {}", batch.fused.len(), batch.dim),
            });
        }
        let candidates = self
            .config
            .candidates
            .max(batch.results)
            .min(MAX_CANDIDATES);
        batch.candidates = candidates;
        batch.candidate_ids.resize(n * candidates, PAD_ID);
        batch.candidate_scores.resize(n * candidates, PAD_SCORE);
        if n == 0 {
            return Ok(());
        }

        let prior = (batch.item_prior.len() == n * n_items).then_some(batch.item_prior.as_slice());
        let queries = if batch.query_prior.len() == n * dim {
            self.queries.clear();
            self.queries.extend(
                batch
                    .fused
                    .iter()
                    .zip(&batch.query_prior)
                    .map(|(f, p)| f + p),
            );
            self.queries.as_slice()
        } else {
            batch.fused.as_slice()
        };
        if self.selectors.len() < n {
            self.selectors.resize_with(n, TopK::new);
        }
        let users = self.users.read();
        let exclude_seen = self.config.exclude_seen;
        let exclude_for =
            |q: usize| excluded_items(&users, exclude_seen, &batch.requests[q], &batch.notes[q]);

        let scanned_in_half = match &self.half {
            Some(half) if n == 1 => half_scan::select_one(
                &self.items,
                half,
                queries,
                prior,
                exclude_for(0),
                &mut self.scan_scratch,
                &mut self.selectors[0],
                &mut batch.candidate_ids,
                &mut batch.candidate_scores,
            ),
            _ => false,
        };
        if !scanned_in_half {
            self.scores.resize(n * n_items, 0.0);
            score_tiles(&self.items, queries, n, prior, &mut self.scores);
            select_from_tiles(
                &self.scores,
                n,
                n_items,
                candidates,
                &exclude_for,
                &mut self.selectors[..n],
                &mut batch.candidate_ids,
                &mut batch.candidate_scores,
            );
        }
        for (notes, request) in batch.notes.iter_mut().zip(&batch.requests) {
            notes.excluded = match excludes_user(&users, exclude_seen, request, notes) {
                Some(user) => users.shared_seen(user).clone().into(),
                None => Default::default(),
            };
        }
        Ok(())
    }
}

/// Top-`candidates` of each query from item-block-major score tiles, in parallel over
/// queries.
#[allow(clippy::too_many_arguments)]
fn select_from_tiles<'e>(
    tiles: &[f32],
    n: usize,
    n_items: usize,
    candidates: usize,
    exclude_for: &(dyn Fn(usize) -> &'e [ItemIndex] + Sync),
    selectors: &mut [TopK],
    candidate_ids: &mut [u32],
    candidate_scores: &mut [f32],
) {
    candidate_ids
        .par_chunks_mut(candidates)
        .zip(candidate_scores.par_chunks_mut(candidates))
        .zip(selectors.par_iter_mut())
        .enumerate()
        .for_each(|(q, ((ids, scores), selector))| {
            let excluded = exclude_for(q);
            selector.begin(candidates.min(n_items));
            for (block, tile) in tiles.chunks(ITEM_BLOCK * n).enumerate() {
                let width = tile.len() / n;
                let row = &tile[q * width..(q + 1) * width];
                selector.offer(row, (block * ITEM_BLOCK) as ItemIndex, excluded);
            }
            selector.finish_into(ids, scores);
        });
}

/// The user's seen items when both the stage and the request ask for exclusion.
fn excluded_items<'u>(
    users: &'u UserTable,
    exclude_seen: bool,
    request: &Request,
    notes: &RequestNotes,
) -> &'u [ItemIndex] {
    excludes_user(users, exclude_seen, request, notes).map_or(&[], |user| users.seen(user))
}

/// The user whose seen items `request` excludes, if any.
fn excludes_user(
    users: &UserTable,
    exclude_seen: bool,
    request: &Request,
    notes: &RequestNotes,
) -> Option<UserIndex> {
    notes
        .user
        .filter(|&user| exclude_seen && request.exclude_seen && (user as usize) < users.len())
}

#[cfg(test)]
mod tests;
