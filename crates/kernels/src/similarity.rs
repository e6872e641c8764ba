//! The similarity stage on the GPU: scores of every item (cuBLAS fp16 GEMM with fp32
//! accumulation, or the crate's own kernel for tiny batches), then the crate's top-K
//! selection kernel; a batch of one query scores and selects in one fused kernel
//! (`similarity_one`).

use hyperrec_catalog::{SharedUsers, UserTable};
use hyperrec_stage::{Batch, Event, Request, RequestNotes, Stage, StageError, UserIndex};

use crate::device::{Cuda, CudaBuffer, StageRecords, TOPK_MAX_SHARED_BYTES, arg};
use crate::rerank::{TOUCH_AHEAD, touch_counts};
use crate::similarity_batch::{self, ScoreGemm};
use crate::similarity_one::{
    self, FoldedFusion, FusedOutputs, FusedWorkspace, Int8Items, OnePass, SeenSource,
};
use crate::{CudaError, DeviceTables, MemoryReport, NO_ITEM, SharedTables};

/// Largest number of candidates the top-K kernel selects per query (the stage API's limit,
/// shared with the CPU stage).
pub use hyperrec_stage::MAX_CANDIDATES;

/// Batches up to this size score with `item_scores_small` (one pass over the item table
/// for up to this many queries), larger ones with the GEMM.
pub(crate) const SMALL_BATCH: usize = 8;

/// Dynamic shared memory of `topk_rows` for a catalog of `n_items`: 8 KiB of survivors,
/// a 4096-bin histogram and scratch, then the row's 16-bit keys.
pub fn topk_shared_bytes(n_items: usize) -> usize {
    MAX_CANDIDATES * 8 + 4096 * 4 + 32 * 4 + 16 * 4 + n_items.div_ceil(8) * 16
}

/// Candidate buffer entries of `topk_filter` for a selection of `k`: room for the few times
/// `k` scores that clear the sampled threshold (at least the 4096-bin histogram that shares
/// the memory).
pub(crate) fn filter_capacity(k: usize) -> usize {
    if k <= 256 { 2048 } else { 4096 }
}

/// Dynamic shared memory of `topk_filter` for a catalog of `n_items` and a selection of `k`:
/// the candidate buffer, the buffer of candidates at or above the k-th best key (1024),
/// scratch and histograms, then a bitmap of the seen items.
pub fn topk_filter_shared_bytes(n_items: usize, k: usize) -> usize {
    filter_capacity(k) * 8 + 1024 * 8 + (32 + 16 + 16 + 256) * 4 + n_items.div_ceil(32) * 4
}

/// Up to this many rows, the threshold filter runs one 1024-thread block per row
/// (`topk_filter_wide`): one block per SM at most, so it pays only while the rows do not
/// outnumber the SMs (132 on the H100); more rows take 256-thread blocks, several per SM.
const WIDE_TOPK_ROWS: usize = 132;

/// Which selection kernel runs; every strategy selects exactly the same items.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TopKStrategy {
    /// Threshold filter: a threshold from a sample of each row, one pass keeping the scores
    /// above it, an exact selection among them, and the exact radix select of
    /// [`TopKStrategy::ExactRadix`] for the rare row where the threshold misses (the default).
    #[default]
    SampledThreshold,
    /// The threshold filter's fallback on every row: radix select over the row read from
    /// global memory (for tests and comparisons).
    ExactRadix,
    /// One 1024-thread block per row with the row's keys in shared memory (the kernel rows
    /// with an fp32 prior always use).
    SharedRow,
}

/// Row stride (elements) of an fp16 score matrix `[n, stride]` for a catalog of `n_items`:
/// rows start 128-byte aligned, so the GEMM's output tiles write whole 128-byte lines and
/// the top-K's 16-byte loads stay aligned (cuBLASLt at batch 1000: 110 -> 98 us against
/// 16-byte-aligned rows, `tools/gemm_topk_probe.cu`). Columns past `n_items` are padding.
/// The item table on the device has as many (zero-padded) rows, so a GEMM may treat the
/// stride as its item dimension.
pub fn score_row_stride(n_items: usize) -> usize {
    n_items.div_ceil(64) * 64
}

/// Scores of `n` queries against every item into `scores` (`[n, score_row_stride(n_items)]`
/// fp16), from fp32 queries. `queries_half` is scratch for the GEMM's fp16 operand, or
/// already holds it (`queries_half_ready`, written by the fusion kernel: the GEMM path then
/// skips its conversion pass).
#[allow(clippy::too_many_arguments)]
pub(crate) fn enqueue_scores(
    cuda: &Cuda,
    items: &CudaBuffer<u16>,
    n_items: usize,
    dim: usize,
    queries: &CudaBuffer<f32>,
    n: usize,
    queries_half: &mut CudaBuffer<u16>,
    scores: &mut CudaBuffer<u16>,
    queries_half_ready: bool,
) -> Result<(), CudaError> {
    let ld = score_row_stride(n_items);
    cuda.ensure_len(scores, n * ld)?;
    if n == 0 {
        return Ok(());
    }
    match &cuda.blas {
        Some(blas) if n > SMALL_BATCH => similarity_batch::enqueue_batch_scores(
            cuda,
            blas,
            items,
            n_items,
            dim,
            queries,
            n,
            queries_half,
            scores,
            ScoreGemm::Measured,
            queries_half_ready,
        ),
        _ => {
            if !dim.is_multiple_of(128) || dim > 1024 {
                return Err(CudaError::Unsupported(format!(
                    "the small-batch scoring kernel needs a width that is a multiple of 128 up to 1024, got {dim}"
                )));
            }
            if n == 1 && dim <= 512 {
                // One query (the latency path): half a warp per row, 16-byte loads, four
                // rows per warp step; ~3 blocks of 8 warps fit per SM.
                let blocks = n_items.div_ceil(32).clamp(1, 132 * 3) as u32;
                let (items_ptr, n_items_u, q_ptr, dim_u, out) = (
                    items.device_ptr(),
                    n_items as u32,
                    queries.device_ptr(),
                    dim as u32,
                    scores.device_ptr(),
                );
                let mut params = [
                    arg(&items_ptr),
                    arg(&n_items_u),
                    arg(&q_ptr),
                    arg(&dim_u),
                    arg(&out),
                ];
                // SAFETY: one query row of `dim`; scores hold a row of ld >= n_items.
                return unsafe {
                    cuda.launch(
                        &cuda.kernels.item_scores_one,
                        (blocks, 1, 1),
                        (256, 1, 1),
                        0,
                        &mut params,
                    )
                };
            }
            let blocks = (cuda_sm_blocks(n_items)) as u32;
            for first in (0..n).step_by(SMALL_BATCH) {
                let count = (n - first).min(SMALL_BATCH);
                let (items_ptr, n_items_u, q_ptr, count_u, dim_u) = (
                    items.device_ptr(),
                    n_items as u32,
                    queries.ptr_at(first * dim),
                    count as u32,
                    dim as u32,
                );
                let (out, ld_u) = (scores.ptr_at(first * ld), ld as u32);
                let mut params = [
                    arg(&items_ptr),
                    arg(&n_items_u),
                    arg(&q_ptr),
                    arg(&count_u),
                    arg(&dim_u),
                    arg(&out),
                    arg(&ld_u),
                ];
                // SAFETY: `count` query rows from `first` exist; scores hold n rows of ld.
                unsafe {
                    cuda.launch(
                        &cuda.kernels.item_scores_small,
                        (blocks, 1, 1),
                        (256, 1, 1),
                        (count * dim * 4) as u32,
                        &mut params,
                    )?;
                }
            }
            Ok(())
        }
    }
}

/// Scores of `n` fp32 query rows against every item (`[n, score_row_stride(n_items)]` fp16
/// into `out`, padding columns zero), the similarity stage's first half on its own.
/// `scratch` holds the fp16 copy of the queries the GEMM reads.
pub fn score_all_items(
    cuda: &Cuda,
    tables: &DeviceTables,
    queries: &CudaBuffer<f32>,
    n: usize,
    scratch: &mut CudaBuffer<u16>,
    out: &mut CudaBuffer<u16>,
) -> Result<(), CudaError> {
    if queries.len() < n * tables.dim() {
        return Err(CudaError::OutOfBounds {
            end: n * tables.dim(),
            len: queries.len(),
        });
    }
    enqueue_scores(
        cuda,
        tables.items(),
        tables.n_items(),
        tables.dim(),
        queries,
        n,
        scratch,
        out,
        false,
    )
}

/// Blocks of 8 warps for a pass over `n_items` rows: enough to fill the GPU several times.
fn cuda_sm_blocks(n_items: usize) -> usize {
    n_items.div_ceil(8 * 4).clamp(1, 132 * 8)
}

/// Where seen items come from for exclusion in [`enqueue_top_k`].
pub(crate) struct Exclusion<'a> {
    /// Device address of `[n]` user rows per query whose seen set is excluded, or
    /// [`NO_ITEM`] for none.
    pub users: u64,
    pub tables: &'a DeviceTables,
}

/// Top-`k` per row of `scores` (`[n, score_row_stride(n_items)]` fp16) plus `prior` (`[n, n_items]`
/// fp32, optional), seen items excluded: ids and scores `[n, k]`, best first, ties by the
/// smaller index, padded with [`NO_ITEM`] / `-inf`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn enqueue_top_k(
    cuda: &Cuda,
    scores: &CudaBuffer<u16>,
    n_items: usize,
    n: usize,
    k: usize,
    prior: Option<&CudaBuffer<f32>>,
    exclusion: Option<Exclusion<'_>>,
    strategy: TopKStrategy,
    out_ids: &mut CudaBuffer<u32>,
    out_scores: &mut CudaBuffer<f32>,
) -> Result<(), CudaError> {
    if k == 0 || k > MAX_CANDIDATES {
        return Err(CudaError::Unsupported(format!(
            "top-k needs 1 <= k <= {MAX_CANDIDATES}, got {k}"
        )));
    }
    // Rows with a prior add it in the shared-row kernel (the filter reads fp16 rows only).
    let strategy = if prior.is_some() {
        TopKStrategy::SharedRow
    } else {
        strategy
    };
    let shared = match strategy {
        TopKStrategy::SharedRow => topk_shared_bytes(n_items),
        _ => topk_filter_shared_bytes(n_items, k),
    };
    if shared > TOPK_MAX_SHARED_BYTES {
        return Err(CudaError::Unsupported(format!(
            "the top-K kernel ({strategy:?}) needs {shared} bytes of shared memory for {n_items} items, the limit is {TOPK_MAX_SHARED_BYTES}"
        )));
    }
    let ld = score_row_stride(n_items);
    if scores.len() < n * ld {
        return Err(CudaError::OutOfBounds {
            end: n * ld,
            len: scores.len(),
        });
    }
    cuda.ensure_len(out_ids, n * k)?;
    cuda.ensure_len(out_scores, n * k)?;
    if n == 0 {
        return Ok(());
    }
    let (seen_offsets, seen_lens, seen_items, exclude) = match &exclusion {
        Some(e) => {
            let (offsets, lens, items) = e.tables.seen();
            (
                offsets.device_ptr(),
                lens.device_ptr(),
                items.device_ptr(),
                e.users,
            )
        }
        None => (0, 0, 0, 0),
    };
    let (scores_ptr, ld_u, n_items_u) = (scores.device_ptr(), ld as u32, n_items as u32);
    let (k_u, ids, out) = (k as u32, out_ids.device_ptr(), out_scores.device_ptr());
    if strategy != TopKStrategy::SharedRow {
        let capacity = filter_capacity(k) as u32;
        let exact_only = u32::from(strategy == TopKStrategy::ExactRadix);
        let mut params = [
            arg(&scores_ptr),
            arg(&ld_u),
            arg(&n_items_u),
            arg(&exclude),
            arg(&seen_offsets),
            arg(&seen_lens),
            arg(&seen_items),
            arg(&k_u),
            arg(&capacity),
            arg(&exact_only),
            arg(&ids),
            arg(&out),
        ];
        if n > WIDE_TOPK_ROWS {
            let filter = similarity_batch::BatchFilter {
                scores: scores_ptr,
                ld: ld_u,
                n_items: n_items_u,
                exclude,
                seen_offsets,
                seen_lens,
                seen_items,
                k: k_u,
                capacity,
                exact_only,
                ids,
                out_scores: out,
                rows: n as u32,
                shared_bytes: shared as u32,
            };
            // SAFETY: buffers are sized above; the exclusion users are rows of `tables`
            // (the host writes only known rows or NO_ITEM); `shared` is the filter's size.
            return unsafe { similarity_batch::launch_batch_filter(cuda, &filter) };
        }
        let (kernel, threads) = (&cuda.kernels.topk_filter_wide, 1024);
        // SAFETY: parameters match `topk_filter` / `topk_filter_wide` (same signature);
        // buffers are sized above; the exclusion users are rows of `tables` (the host
        // writes only known rows or NO_ITEM).
        return unsafe {
            cuda.launch(
                kernel,
                (n as u32, 1, 1),
                (threads, 1, 1),
                shared as u32,
                &mut params,
            )
        };
    }
    let prior_ptr = prior.map_or(0, |p| p.device_ptr());
    let mut params = [
        arg(&scores_ptr),
        arg(&ld_u),
        arg(&n_items_u),
        arg(&prior_ptr),
        arg(&exclude),
        arg(&seen_offsets),
        arg(&seen_lens),
        arg(&seen_items),
        arg(&k_u),
        arg(&ids),
        arg(&out),
    ];
    // SAFETY: parameters match `topk_rows`; buffers are sized above; the exclusion users
    // are rows of `tables` (the host writes only known rows or NO_ITEM).
    unsafe {
        cuda.launch(
            &cuda.kernels.topk_rows,
            (n as u32, 1, 1),
            (1024, 1, 1),
            shared as u32,
            &mut params,
        )
    }
}

/// Top-K selection over score matrices already on the device, for callers outside the
/// stages (benchmarks, "items similar to X").
pub struct TopK {
    ids: CudaBuffer<u32>,
    scores: CudaBuffer<f32>,
}

impl TopK {
    pub fn new(cuda: &Cuda) -> Result<TopK, CudaError> {
        Ok(TopK {
            ids: cuda.alloc(0)?,
            scores: cuda.alloc(0)?,
        })
    }

    /// Enqueues the selection of the `k` best of each of the `n` rows of `scores`
    /// (`[n, score_row_stride(n_items)]` fp16, no exclusion); results in [`TopK::ids`] and
    /// [`TopK::scores`] (`[n, k]`).
    pub fn enqueue(
        &mut self,
        cuda: &Cuda,
        scores: &CudaBuffer<u16>,
        n_items: usize,
        n: usize,
        k: usize,
    ) -> Result<(), CudaError> {
        self.enqueue_with(cuda, scores, n_items, n, k, TopKStrategy::default())
    }

    /// [`TopK::enqueue`] with a chosen selection kernel (the results are the same).
    pub fn enqueue_with(
        &mut self,
        cuda: &Cuda,
        scores: &CudaBuffer<u16>,
        n_items: usize,
        n: usize,
        k: usize,
        strategy: TopKStrategy,
    ) -> Result<(), CudaError> {
        enqueue_top_k(
            cuda,
            scores,
            n_items,
            n,
            k,
            None,
            None,
            strategy,
            &mut self.ids,
            &mut self.scores,
        )
    }

    pub fn ids(&self) -> &CudaBuffer<u32> {
        &self.ids
    }

    pub fn scores(&self) -> &CudaBuffer<f32> {
        &self.scores
    }
}

/// Settings of [`CudaSimilarity`], as `hyperrec_similarity::SimilarityConfig`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimilarityParams {
    /// Candidates kept per query (1..=1024); the batch's largest `k` raises it.
    pub candidates: usize,
    /// Exclude the items each user has seen (when the request also asks for it).
    pub exclude_seen: bool,
}

/// GPU twin of `hyperrec_similarity::Similarity` (`"similarity"`).
///
/// `score[q, j] = fused[q] . item[j] (+ item_prior[q, j])`, computed with fp16 operands and
/// fp32 accumulation and kept as fp16; the `candidates` best eligible items are selected
/// per query by the top-K kernel (ties by the smaller index). Scores therefore carry fp16
/// rounding (relative 2^-11): items whose exact scores differ by less may swap relative to
/// the CPU stage; any larger difference orders the same.
///
/// Reads `fused`, `item_prior`, `notes[i].user`, `requests[i].exclude_seen`; writes
/// `candidates`, `candidate_ids`, `candidate_scores`, `notes[i].excluded`.
pub struct CudaSimilarity {
    users: SharedUsers,
    tables: SharedTables,
    params: SimilarityParams,
    /// The selection kernel a caller chose; `None`: the fused batch-1 kernel for one query
    /// (`similarity_one`), the default threshold filter otherwise.
    strategy: Option<TopKStrategy>,
    /// The first pass of the fused batch-1 kernel.
    one_pass: OnePass,
    /// Histogram, ticket and slice lists of the fused batch-1 kernel.
    fused_one: FusedWorkspace,
    /// `[n]` user row per query whose seen set is excluded, or [`NO_ITEM`].
    exclude: StageRecords,
    fused_half: CudaBuffer<u16>,
    /// `fused + offset` when the path folds the cache's history term into the query.
    fused_offset: CudaBuffer<f32>,
    scores: CudaBuffer<u16>,
    /// Phase marks of the fused batch-1 kernel, when a measurement harness asked for them
    /// ([`CudaSimilarity::set_trace`]).
    trace: Option<CudaBuffer<u32>>,
}

impl CudaSimilarity {
    pub fn new(
        cuda: &Cuda,
        users: SharedUsers,
        tables: SharedTables,
        params: SimilarityParams,
    ) -> Result<CudaSimilarity, CudaError> {
        if params.candidates == 0 || params.candidates > MAX_CANDIDATES {
            return Err(CudaError::Unsupported(format!(
                "candidates must be in 1..={MAX_CANDIDATES}, got {}",
                params.candidates
            )));
        }
        let n_items = tables.lock().n_items();
        let shared = topk_shared_bytes(n_items);
        if shared > TOPK_MAX_SHARED_BYTES {
            return Err(CudaError::Unsupported(format!(
                "{n_items} items exceed what the top-K kernel holds in shared memory"
            )));
        }
        Ok(CudaSimilarity {
            users,
            tables,
            params,
            strategy: None,
            one_pass: OnePass::default(),
            fused_one: FusedWorkspace::new(cuda)?,
            exclude: StageRecords::new(cuda)?,
            fused_half: cuda.alloc(0)?,
            fused_offset: cuda.alloc(0)?,
            scores: cuda.alloc(0)?,
            trace: None,
        })
    }

    /// Makes the fused batch-1 kernel write its phase marks (the layout of
    /// [`crate::SimilarityOne::enqueue_traced`]) on every launch from now on, or stops it.
    #[doc(hidden)]
    pub fn set_trace(&mut self, cuda: &Cuda, on: bool) -> Result<(), CudaError> {
        self.trace = if on { Some(cuda.alloc(0)?) } else { None };
        Ok(())
    }

    /// The phase marks of the last traced launch (empty without [`CudaSimilarity::set_trace`]).
    #[doc(hidden)]
    pub fn trace_marks(&self, cuda: &Cuda) -> Result<Vec<u32>, CudaError> {
        cuda.download_words(self.trace.as_ref())
    }

    /// Chooses the top-K kernel (all select the same items; tests and comparisons). A
    /// chosen strategy also runs at batch 1, where the stage otherwise scores and selects in
    /// one fused kernel; `None` restores that automatic choice.
    pub fn set_top_k_strategy(&mut self, strategy: impl Into<Option<TopKStrategy>>) {
        self.strategy = strategy.into();
    }

    /// Chooses the first pass of the fused batch-1 kernel (both select the same items with
    /// the same scores; comparisons and tests). The default is [`OnePass::Int8`].
    pub fn set_one_pass(&mut self, pass: OnePass) {
        self.one_pass = pass;
    }

    /// Pre-launch host step: whose seen set each query excludes, uploaded (`notes.excluded`
    /// is written after the launch by [`CudaSimilarity::fill_notes`]).
    pub(crate) fn prepare(
        &mut self,
        cuda: &Cuda,
        batch: &mut Batch<Cuda>,
    ) -> Result<(), StageError> {
        self.plan(batch);
        self.exclude.upload_own(cuda, 0)?;
        Ok(())
    }

    /// The host half of [`CudaSimilarity::prepare`]: the exclusion records, planned but not
    /// uploaded (`GpuPath` uploads every stage's records in one copy and places them).
    pub(crate) fn plan(&mut self, batch: &Batch<Cuda>) {
        let users = self.users.read();
        plan_exclusions(
            &users,
            self.params.exclude_seen,
            &batch.requests,
            &batch.notes,
            self.exclude.host_mut(),
        );
    }

    /// The planned records, for the path to upload and place.
    pub(crate) fn records_mut(&mut self) -> &mut StageRecords {
        &mut self.exclude
    }

    /// Post-launch host step: `notes.excluded` (the seen items the device excluded, as the
    /// CPU stage reports them). Only the notes need the seen lists (the device reads its own
    /// copy), so this copy runs while the device works.
    pub(crate) fn fill_notes(&self, batch: &mut Batch<Cuda>) {
        let users = self.users.read();
        fill_excluded(
            &users,
            self.params.exclude_seen,
            &batch.requests,
            &mut batch.notes,
        );
    }

    /// Device step: scores and selection.
    pub(crate) fn enqueue(
        &mut self,
        cuda: &Cuda,
        batch: &mut Batch<Cuda>,
    ) -> Result<(), StageError> {
        self.enqueue_with_offset(cuda, batch, None)
    }

    /// Device step scoring `fused + offset` (`[n, dim]`, the cache's folded history term)
    /// when an offset is given.
    pub(crate) fn enqueue_with_offset(
        &mut self,
        cuda: &Cuda,
        batch: &mut Batch<Cuda>,
        offset: Option<&CudaBuffer<f32>>,
    ) -> Result<(), StageError> {
        self.enqueue_with(cuda, batch, offset, false)
    }

    /// The fp16 query buffer the score GEMM reads, for the fusion kernel to fill directly
    /// (see [`CudaSimilarity::enqueue_with`]).
    pub(crate) fn fused_half_mut(&mut self) -> &mut CudaBuffer<u16> {
        &mut self.fused_half
    }

    /// Candidates selected per query of `batch`: the configured number, at least the
    /// results asked for, at most what the selection kernels take.
    fn candidates_for(&self, batch: &Batch<Cuda>) -> usize {
        self.params
            .candidates
            .max(batch.results)
            .min(MAX_CANDIDATES)
    }

    /// Whether a batch of this shape is scored and selected by the fused batch-1 kernel
    /// (one query, no prior, no strategy chosen, a shape the kernel supports), which can
    /// also fuse the query itself ([`CudaSimilarity::enqueue_folded`]).
    pub(crate) fn fused_batch_one(&self, batch: &Batch<Cuda>) -> bool {
        let tables = self.tables.lock();
        let (dim, n_items) = (tables.dim(), tables.n_items());
        let k = self.candidates_for(batch);
        batch.len() == 1
            && batch.item_prior.len() != n_items
            && self.strategy.is_none()
            && similarity_one::supports(n_items, dim, k)
    }

    /// The device step with the fusion stage folded in (GpuPath at batch 1 without the
    /// cache, where [`CudaSimilarity::fused_batch_one`] holds): the kernel fuses the query
    /// from `fold` and writes `batch.fused` for the rerank, one launch fewer.
    pub(crate) fn enqueue_folded(
        &mut self,
        cuda: &Cuda,
        batch: &mut Batch<Cuda>,
        fold: FoldedFusion,
    ) -> Result<(), StageError> {
        if !self.fused_batch_one(batch) {
            return Err(StageError::BatchShape {
                stage: "similarity",
                expected: "one query the fused batch-1 kernel serves".into(),
                found: format!("{} queries", batch.len()),
            });
        }
        self.enqueue_inner(cuda, batch, None, false, fold)
    }

    /// [`CudaSimilarity::enqueue_with_offset`]; with `fused_half_ready` (no offset, and a
    /// batch large enough for the GEMM) the fusion kernel has already written the fp16
    /// fused rows into [`CudaSimilarity::fused_half_mut`], so no conversion pass runs.
    pub(crate) fn enqueue_with(
        &mut self,
        cuda: &Cuda,
        batch: &mut Batch<Cuda>,
        offset: Option<&CudaBuffer<f32>>,
        fused_half_ready: bool,
    ) -> Result<(), StageError> {
        self.enqueue_inner(
            cuda,
            batch,
            offset,
            fused_half_ready,
            FoldedFusion::default(),
        )
    }

    fn enqueue_inner(
        &mut self,
        cuda: &Cuda,
        batch: &mut Batch<Cuda>,
        offset: Option<&CudaBuffer<f32>>,
        fused_half_ready: bool,
        fold: FoldedFusion,
    ) -> Result<(), StageError> {
        let fused_half_ready = fused_half_ready && offset.is_none();
        let n = batch.len();
        let tables = self.tables.lock();
        let (dim, n_items) = (tables.dim(), tables.n_items());
        if batch.dim != dim || batch.fused.len() != n * dim {
            return Err(StageError::BatchShape {
                stage: "similarity",
                expected: format!("fused [{n}, {dim}]"),
                found: format!("{} values of width {}", batch.fused.len(), batch.dim),
            });
        }
        let k = self.candidates_for(batch);
        batch.candidates = k;
        cuda.ensure_len(&mut batch.candidate_ids, n * k)?;
        cuda.ensure_len(&mut batch.candidate_scores, n * k)?;
        if n == 0 {
            return Ok(());
        }
        let queries = match offset {
            Some(offset) if offset.len() >= n * dim => {
                cuda.ensure_len(&mut self.fused_offset, n * dim)?;
                let (a, b, out, len) = (
                    batch.fused.device_ptr(),
                    offset.device_ptr(),
                    self.fused_offset.device_ptr(),
                    (n * dim) as u32,
                );
                let mut params = [arg(&a), arg(&b), arg(&out), arg(&len)];
                // SAFETY: all three hold n * dim floats.
                unsafe {
                    cuda.launch(
                        &cuda.kernels.add_vectors,
                        ((n * dim).div_ceil(256).min(4096) as u32, 1, 1),
                        (256, 1, 1),
                        0,
                        &mut params,
                    )?;
                }
                &self.fused_offset
            }
            _ => &batch.fused,
        };
        let prior = (batch.item_prior.len() == n * n_items).then_some(&batch.item_prior);
        // One query, no prior, no strategy chosen: scores and selection in one kernel.
        if n == 1
            && prior.is_none()
            && self.strategy.is_none()
            && similarity_one::supports(n_items, dim, k)
        {
            let (offsets, lens, items) = tables.seen();
            let seen = SeenSource {
                users: self.exclude.device_ptr(),
                offsets: offsets.device_ptr(),
                lens: lens.device_ptr(),
                items: items.device_ptr(),
            };
            let (codes, bounds) = tables.item_codes();
            let int8 = (self.one_pass == OnePass::Int8).then_some(Int8Items { codes, bounds });
            similarity_one::enqueue_fused(
                cuda,
                tables.items(),
                int8,
                fold,
                n_items,
                dim,
                queries.device_ptr(),
                seen,
                k,
                &mut self.fused_one,
                FusedOutputs {
                    scores: &mut self.scores,
                    ids: &mut batch.candidate_ids,
                    top_scores: &mut batch.candidate_scores,
                },
                None,
                self.trace.as_mut(),
            )?;
            return Ok(());
        }
        enqueue_scores(
            cuda,
            tables.items(),
            n_items,
            dim,
            queries,
            n,
            &mut self.fused_half,
            &mut self.scores,
            fused_half_ready,
        )?;
        enqueue_top_k(
            cuda,
            &self.scores,
            n_items,
            n,
            k,
            prior,
            Some(Exclusion {
                users: self.exclude.device_ptr(),
                tables: &tables,
            }),
            self.strategy.unwrap_or_default(),
            &mut batch.candidate_ids,
            &mut batch.candidate_scores,
        )?;
        Ok(())
    }

    /// Device addresses a captured graph of this stage bakes in.
    pub(crate) fn graph_key(&self) -> Vec<u64> {
        let tables = self.tables.lock();
        let (offsets, lens, items) = tables.seen();
        vec![
            self.exclude.device_ptr(),
            self.fused_half.device_ptr(),
            self.fused_offset.device_ptr(),
            self.scores.device_ptr(),
            self.fused_one.device_ptr(),
            self.strategy.map_or(0, |s| s as u64 + 1),
            self.one_pass as u64,
            self.trace.as_ref().map_or(0, CudaBuffer::device_ptr),
            tables.items().device_ptr(),
            offsets.device_ptr(),
            lens.device_ptr(),
            items.device_ptr(),
            tables.generation(),
        ]
    }

    /// Device bytes of the stage's scratch.
    pub fn memory_report(&self) -> MemoryReport {
        MemoryReport {
            workspace: self.scores.allocated_bytes()
                + self.fused_half.allocated_bytes()
                + self.fused_offset.allocated_bytes()
                + self.exclude.allocated_bytes()
                + self.fused_one.allocated_bytes(),
            ..MemoryReport::default()
        }
    }
}

/// Pre-launch host step of the similarity: per query, the user row whose seen set the
/// device excludes, or [`NO_ITEM`] for none, into `out` (one upload).
#[doc(hidden)]
pub fn plan_exclusions(
    users: &UserTable,
    exclude_seen: bool,
    requests: &[Request],
    notes: &[RequestNotes],
    out: &mut Vec<u32>,
) {
    out.clear();
    out.extend(
        notes
            .iter()
            .zip(requests)
            .map(|(notes, request)| match notes.user {
                Some(user) if excludes_seen(exclude_seen, request, user, users.len()) => user,
                _ => NO_ITEM,
            }),
    );
}

/// Post-launch host step of the similarity: `notes.excluded` (the seen items the device
/// excluded, as the CPU stage reports them): the user table's snapshot of each user's seen
/// set, shared, not copied, so a query costs one reference count. Serial for the reason
/// `fill_sources` is.
#[doc(hidden)]
pub fn fill_excluded(
    users: &UserTable,
    exclude_seen: bool,
    requests: &[Request],
    notes: &mut [RequestNotes],
) {
    let excluded = |notes: &RequestNotes, request: &Request| match notes.user {
        Some(user) if excludes_seen(exclude_seen, request, user, users.len()) => {
            Some(users.shared_seen(user))
        }
        _ => None,
    };
    for (requests, notes) in requests
        .chunks(TOUCH_AHEAD)
        .zip(notes.chunks_mut(TOUCH_AHEAD))
    {
        // Loaded counts first, as in `fill_sources`.
        touch_counts(
            notes
                .iter()
                .zip(requests)
                .filter_map(|(notes, request)| excluded(notes, request)),
        );
        for (notes, request) in notes.iter_mut().zip(requests) {
            notes.excluded =
                excluded(notes, request).map_or_else(Default::default, |seen| seen.clone().into());
        }
    }
}

/// Whether `request` (of table row `user`, the table holding `n_users` users) has its
/// user's seen items excluded, with the stage's `exclude_seen` setting.
fn excludes_seen(exclude_seen: bool, request: &Request, user: UserIndex, n_users: usize) -> bool {
    exclude_seen && request.exclude_seen && (user as usize) < n_users
}

impl Stage<Cuda> for CudaSimilarity {
    fn name(&self) -> &'static str {
        "similarity"
    }

    fn run(&mut self, device: &Cuda, batch: &mut Batch<Cuda>) -> Result<(), StageError> {
        self.prepare(device, batch)?;
        self.enqueue(device, batch)?;
        self.fill_notes(batch);
        Ok(())
    }

    fn observe(&mut self, device: &Cuda, event: &Event) -> Result<(), StageError> {
        let users = self.users.read();
        if let Some(user) = users.index_of(event.user) {
            self.tables.lock().sync_user(device, &users, user)?;
        }
        Ok(())
    }
}
