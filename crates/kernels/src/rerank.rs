//! The attention rerank stage on the GPU.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::sys as blas_sys;
use half::f16;

use hyperrec_catalog::{SharedUsers, UserTable};
use hyperrec_rerank::{ContextVocabulary, PhraseTable, RerankConfig, RerankWeights};
use hyperrec_stage::{Batch, Context, Event, Request, RequestNotes, Sources, Stage, StageError};

use crate::device::{
    Cuda, CudaBuffer, RERANK_FUSED_MAX_SHARED_BYTES, RERANK_MAX_SHARED_BYTES, StageRecords, arg,
};
use crate::{CudaError, MemoryReport, NO_ITEM, SharedTables};

/// Sources (history items + context phrases) one query may attend over on the GPU.
pub const MAX_SLOTS: usize = 64;
/// Candidates one query may rerank on the GPU (the selection packs a 10-bit position).
pub const MAX_RERANKED: usize = 1024;
/// Candidates per block of `rerank_attend`.
const CHUNK: usize = 64;
/// Batches up to this size run each head in its own block (`rerank_attend` with one part
/// per head, summed by `rerank_select`): at small batches a block's serial walk over the
/// heads, not the GPU's width, bounds the latency.
const SPLIT_HEADS_BATCH: usize = 8;

/// Whether a rerank launch may overlap the kernel enqueued before it (see
/// [`Cuda::launch_dependent`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Overlap {
    /// Start after everything before it on the stream (any kind of work may precede).
    None,
    /// The previous operation on the stream is a kernel: start while it still runs and
    /// wait for its writes inside the kernel (the fused builds only; the others wait at
    /// launch as usual).
    PreviousKernel,
}

/// The builds of the rerank kernels (`cuda/rerank.cu`). `Staged` and `Async` compute
/// bit-identical results (attention, then `rerank_select`); `Fused` applies the scalar
/// factors to fp32 accumulators instead of fp16 operands, so it agrees with them (and the
/// CPU stage) within the fp16 tolerance, not bit for bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RerankKernel {
    /// `rerank_attend`: rows staged in registers; ~110 KB shared, 2 blocks per SM.
    Staged,
    /// `rerank_attend_async`: rows copied to shared memory by cp.async, logits overlaying
    /// them; ~71 KB shared, 3 blocks per SM.
    Async,
    /// `rerank_fused`: one block per query does the attention over every head and the
    /// selection (up to [`FUSED_MAX_RERANKED`] candidates); the default where it applies,
    /// beyond [`CLUSTER_MAX_BATCH`] queries. Fixed with [`CudaRerank::set_kernel`] for a
    /// batch it cannot take, the two-kernel path's automatic choice runs instead.
    Fused,
    /// `rerank_fused_cluster`: as `Fused`, with a cluster of 4 blocks per query, each
    /// running a quarter of the heads, summed through distributed shared memory: the
    /// default up to [`CLUSTER_MAX_BATCH`] queries, where one block's serial walk over the
    /// heads, not the GPU's width, bounds the latency.
    FusedCluster,
}

/// Batches up to this size run `rerank_fused_cluster` (4 blocks per query, 2 per SM: up to
/// 64 queries fill one wave of the H100's 132 SMs); larger ones `rerank_fused`.
pub const CLUSTER_MAX_BATCH: usize = 64;
/// Phase marks per block of a traced launch ([`CudaRerank::set_trace`]).
pub const TRACE_MARKS: usize = 8;
/// Blocks of a traced launch's marks (a cluster's).
pub const TRACE_BLOCKS: usize = CLUSTER_BLOCKS as usize;
/// Blocks per query of `rerank_fused_cluster` (`CLUSTER_BLOCKS` in `cuda/rerank.cu`).
const CLUSTER_BLOCKS: u32 = 4;

/// Candidates `rerank_fused` handles: one 16-row tile per warp of its 8 warps.
pub const FUSED_MAX_RERANKED: usize = 128;
/// Threads of a `rerank_fused` block.
const FUSED_THREADS: u32 = 256;
/// `RerankParams::flags` bits of `rerank_fused`: the query and value tables are one table
/// (a candidate's row is gathered once for both), and the key and value tables are one
/// table (a history source's row likewise).
const FUSED_SHARE_QV: u32 = 1;
const FUSED_SHARE_KV: u32 = 2;

/// Blocks of `rerank_attend` (2 per SM) that the H100's 132 SMs run in one wave. Beyond one
/// wave the async build's third block per SM pays (batch 1000: 372 -> 305 us); within one
/// wave occupancy does not matter and the staged build was as fast or a little faster
/// (batch 1 / 10 / 100 paths: 76.6 / 105.5 / 122.3 us vs 77.9 / 112.6 / 124.5, gpu5).
const STAGED_WAVE_BLOCKS: usize = 2 * 132;

/// The build of the two-kernel path (attention + `rerank_select`) for an attention grid of
/// `blocks` blocks.
fn auto_split_kernel(blocks: usize) -> RerankKernel {
    if blocks > STAGED_WAVE_BLOCKS {
        RerankKernel::Async
    } else {
        RerankKernel::Staged
    }
}

/// The build that runs for `n` queries: `fixed` (from [`CudaRerank::set_kernel`]) or the
/// automatic choice, a fused kernel wherever it can take the batch (`reranked` candidates
/// per query, its shared memory `fused_bytes` within the limit; the cluster build up to
/// [`CLUSTER_MAX_BATCH`] queries), otherwise the two-kernel path by grid size
/// (`split_blocks` attention blocks).
fn choose_kernel(
    fixed: Option<RerankKernel>,
    n: usize,
    reranked: usize,
    fused_bytes: usize,
    split_blocks: usize,
) -> RerankKernel {
    use RerankKernel::{Async, Fused, FusedCluster, Staged};
    let fused_fits = reranked <= FUSED_MAX_RERANKED && fused_bytes <= RERANK_FUSED_MAX_SHARED_BYTES;
    match fixed {
        Some(kernel @ (Staged | Async)) => kernel,
        _ if !fused_fits => auto_split_kernel(split_blocks),
        Some(kernel) => kernel,
        None if n <= CLUSTER_MAX_BATCH => FusedCluster,
        None => Fused,
    }
}

/// Dynamic shared memory of both fused builds: two buffers of one head's rows (candidates
/// rounded up to 16 rows, query and value rows unless `share_qv`; sources rounded up to
/// 16 rows, key and value rows; the fused query's head slice), which after the heads hold
/// the attribution sums (`[candidate rows][source rows + 8]` floats, when larger), then the
/// per-query tables (rank keys; per-source factors, biases and items; per-candidate ids,
/// retrieval scores, attention and final scores; the winners' positions).
fn fused_shared_bytes(head_dim: usize, reranked: usize, slots: usize, share_qv: bool) -> usize {
    let row = head_dim + 8;
    let cand_rows = reranked.div_ceil(16) * 16;
    let src_rows = fused_source_rows(slots);
    let buffer = (cand_rows * if share_qv { 1 } else { 2 } + 2 * src_rows) * row + head_dim;
    // The attribution rows are padded by 8 floats (bank-conflict-free stores).
    let rows = (2 * buffer * 2).max(cand_rows * (src_rows + 8) * 4);
    let tables = FUSED_MAX_RERANKED * 8 + 3 * MAX_SLOTS * 4 + 5 * FUSED_MAX_RERANKED * 4;
    rows + tables
}

/// Source rows of a `rerank_fused` buffer: the batch's most sources, rounded up to the
/// 16-row source pairs the kernel's tiles read.
fn fused_source_rows(slots: usize) -> usize {
    slots.clamp(1, MAX_SLOTS).div_ceil(16) * 16
}

/// `rerank_fused`'s flags for these (device address) query, key and value tables.
fn fused_flags(q_table: u64, k_table: u64, v_table: u64) -> u32 {
    let mut flags = 0;
    if q_table == v_table {
        flags |= FUSED_SHARE_QV;
    }
    if k_table == v_table {
        flags |= FUSED_SHARE_KV;
    }
    flags
}

/// Dynamic shared memory of the two-kernel path's attention kernel for heads of width
/// `head_dim` (`rerank_fused` has [`fused_shared_bytes`]).
fn rerank_shared_bytes(kernel: RerankKernel, head_dim: usize) -> usize {
    let rest = (CHUNK * (MAX_SLOTS + 1) + CHUNK) * 4 + MAX_SLOTS * 8 + CHUNK * 4;
    let scores = 2 * CHUNK * (MAX_SLOTS + 4) * 4;
    match kernel {
        RerankKernel::Staged => {
            let rows = (2 * MAX_SLOTS + 2 * CHUNK) * (head_dim + 16) * 2;
            rows + scores + rest
        }
        RerankKernel::Async | RerankKernel::Fused | RerankKernel::FusedCluster => {
            let rows = (2 * MAX_SLOTS + 2 * CHUNK) * (head_dim + 8) * 2;
            rows.max(scores) + rest
        }
    }
}

/// Length of the per-query records of `n` queries with `context_rows` phrase rows in all:
/// user, history begin, history count (`n` each), context offsets (`n + 1`), then the rows.
fn packed_len(n: usize, context_rows: usize) -> usize {
    4 * n + 1 + context_rows
}

/// Pre-launch host step of the rerank: writes the compact records the kernels read into
/// `packed`, laid out as `[user; n] [history_begin; n] [history_count; n]
/// [context_offsets; n + 1] [context_rows]` so the whole batch is one upload, and returns
/// the most sources (history items + context phrases) of any query.
///
/// Why it looks like this: it runs before every graph launch, so it reads only what the
/// records need, one history *length* per user (the kernels gather the items and ratings
/// from the device tables themselves), and no history entries; it neither allocates nor
/// hashes per query: consecutive requests with equal contexts (a context is a few enums and
/// genre names, so batches repeat them) reuse the previous phrase lookup. The explanation
/// slots (`notes.sources`), which do need every history entry, are written by
/// [`fill_sources`] after the launch, while the device works.
///
/// Errors: a user row outside the table ([`StageError::UnknownUser`]), or more than
/// [`MAX_SLOTS`] sources for one query.
#[doc(hidden)]
pub fn plan_sources(
    users: &UserTable,
    phrases: &PhraseTable,
    history_len: usize,
    table_history: usize,
    requests: &[Request],
    notes: &[RequestNotes],
    packed: &mut Vec<u32>,
) -> Result<usize, StageError> {
    let n = requests.len().min(notes.len());
    packed.clear();
    packed.resize(packed_len(n, 0), 0);
    let mut slots = 0;
    let mut memo = ContextMemo::default();
    // First every user's stored history length, into the history count slots, in a loop of
    // its own: the lengths are random reads of the user table (cache misses), which overlap
    // in a loop this short and did not beside the rest of the work (batch 1000: 26 -> 22
    // us). `UNKNOWN` marks a row outside the table; lengths are clamped to what the records
    // use of them.
    const UNKNOWN: u32 = u32::MAX;
    let clamp = history_len.max(table_history).min(UNKNOWN as usize - 1);
    for (q, notes) in notes.iter().take(n).enumerate() {
        packed[2 * n + q] = match notes.user {
            None => 0,
            Some(user) if (user as usize) < users.len() => {
                users.history(user).len().min(clamp) as u32
            }
            Some(_) => UNKNOWN,
        };
    }
    for (q, (request, notes)) in requests.iter().zip(notes).enumerate() {
        let stored = match (packed[2 * n + q], notes.user) {
            (UNKNOWN, Some(user)) => return Err(StageError::UnknownUser(user)),
            (stored, _) => stored as usize,
        };
        let history = stored.min(history_len);
        let context = &memo.lookup(phrases, &request.context).rows;
        let sources = history + context.len();
        if sources > MAX_SLOTS {
            return Err(StageError::Failed {
                stage: "rerank",
                message: format!("{sources} sources exceed the GPU rerank's {MAX_SLOTS}"),
            });
        }
        packed[q] = notes.user.filter(|_| history > 0).unwrap_or(NO_ITEM);
        // The device row holds the table's most recent `table_history` items, oldest
        // first; ours are the last `history` of them.
        packed[n + q] = (stored.min(table_history).saturating_sub(history)) as u32;
        packed[2 * n + q] = history as u32;
        packed.extend_from_slice(context);
        packed[3 * n + q + 1] = (packed.len() - packed_len(n, 0)) as u32;
        slots = slots.max(sources);
    }
    Ok(slots)
}

/// Post-launch host step of the rerank: each query's explanation slots (`notes.sources`:
/// the user's recent history items, oldest first, then the context phrases that have an
/// embedding), in the order [`plan_sources`] gave the kernels. Users outside the table get
/// no history (`plan_sources` refused them).
///
/// Copies nothing per query: the slots hold the user table's snapshot of the user's
/// history and the batch's shared phrase list of the context, so a query costs two
/// reference counts. Serial: the counts of one batch's shared phrase lists would bounce
/// between threads, and the whole step is a few microseconds per hundred queries.
#[doc(hidden)]
pub fn fill_sources(
    users: &UserTable,
    phrases: &PhraseTable,
    history_len: usize,
    requests: &[Request],
    notes: &mut [RequestNotes],
) {
    let mut memo = ContextMemo::default();
    let snapshot = |notes: &RequestNotes| match notes.user {
        Some(user) if (user as usize) < users.len() => Some(users.shared_history(user)),
        _ => None,
    };
    for (requests, notes) in requests
        .chunks(TOUCH_AHEAD)
        .zip(notes.chunks_mut(TOUCH_AHEAD))
    {
        touch_counts(notes.iter().filter_map(snapshot));
        for (request, notes) in requests.iter().zip(notes.iter_mut()) {
            // No user, no history: an empty snapshot (nothing allocated or counted).
            let history = snapshot(notes).map_or_else(Arc::default, Arc::clone);
            let context = memo.lookup(phrases, &request.context);
            notes.sources = Sources::new(history, history_len, context.phrases.clone());
        }
    }
}

/// Queries per run of the note fills: their snapshots' counts are loaded, then counted.
pub(crate) const TOUCH_AHEAD: usize = 16;

/// Reads the reference counts of `arcs` with plain loads. The users' snapshots are
/// scattered over the heap and mostly not in cache, and counting a reference is a locked
/// instruction, which does not overlap its cache miss with the next ones; plain loads do,
/// so a run's counts are loaded together first (batch 1000, 2-core VM: `fill_sources` 70
/// -> 48 us; a prefetch 12 or 32 queries ahead gave 61).
pub(crate) fn touch_counts<'a, T: ?Sized + 'a>(arcs: impl Iterator<Item = &'a Arc<T>>) {
    for arc in arcs {
        std::hint::black_box(Arc::strong_count(arc));
    }
}

/// Distinct contexts a [`ContextMemo`] remembers (contexts are a few enums and genre
/// names, so a batch repeats a handful of them).
const MEMO_CONTEXTS: usize = 8;

/// A context's phrases that have an embedding, in slot order: their rows in the phrase
/// table, and the phrases (shared by every query's `notes.sources` that names them).
struct ContextPhrases {
    rows: Vec<u32>,
    phrases: Arc<[Arc<str>]>,
}

/// Whether contexts `a` and `b` have the same phrases: the same time of day, social
/// setting (companions imply a group) and genre hints, the only fields phrases come from
/// (`ContextVocabulary::phrases_for`). Companions themselves differ between groups, so
/// comparing whole contexts missed the memo on every group request.
fn same_phrases(a: &Context, b: &Context) -> bool {
    let social = |c: &Context| {
        if c.companions.is_empty() {
            c.social
        } else {
            Some(hyperrec_stage::Social::Group)
        }
    };
    std::ptr::eq(a, b)
        || (a.time_of_day == b.time_of_day && social(a) == social(b) && a.genres == b.genres)
}

/// The phrase rows (and phrases) of the last [`MEMO_CONTEXTS`] distinct contexts looked
/// up, so a batch builds and hashes each context's phrase strings about once.
#[derive(Default)]
struct ContextMemo<'a> {
    entries: Vec<(&'a Context, ContextPhrases)>,
    /// Genre phrases are built here.
    scratch: String,
    /// Entry replaced next when the memo is full (round robin).
    next: usize,
}

impl<'a> ContextMemo<'a> {
    /// Phrase rows of `context` that have an embedding, in slot order.
    fn lookup(&mut self, phrases: &PhraseTable, context: &'a Context) -> &ContextPhrases {
        let at = match self
            .entries
            .iter()
            .position(|(seen, _)| same_phrases(seen, context))
        {
            Some(at) => at,
            None => {
                let (mut rows, mut names) = (Vec::new(), Vec::<Arc<str>>::new());
                phrases.visit_rows(context, &mut self.scratch, |row, phrase| {
                    rows.push(row);
                    names.push(phrase.clone());
                });
                let entry = ContextPhrases {
                    rows,
                    phrases: names.into(),
                };
                if self.entries.len() < MEMO_CONTEXTS {
                    self.entries.push((context, entry));
                    self.entries.len() - 1
                } else {
                    let at = self.next;
                    self.entries[at] = (context, entry);
                    self.next = (at + 1) % MEMO_CONTEXTS;
                    at
                }
            }
        };
        &self.entries[at].1
    }
}

/// Kernel parameters, laid out as `RerankParams` in `cuda/rerank.cu` (passed by value).
#[repr(C)]
#[derive(Clone, Copy)]
struct RerankParams {
    cand_ids: u64,
    cand_scores: u64,
    cand_stride: u32,
    reranked: u32,
    q_table: u64,
    k_table: u64,
    v_table: u64,
    q_scale: f32,
    k_scale: f32,
    v_scale: f32,
    _pad0: u32,
    pf: u64,
    pf_scale: f32,
    beta: f32,
    hist_items: u64,
    hist_ratings: u64,
    table_hist_len: u32,
    _pad1: u32,
    q_user: u64,
    q_hist_begin: u64,
    q_hist_count: u64,
    gate_offset: f32,
    gate_slope: f32,
    ctx_keys: u64,
    ctx_values: u64,
    q_ctx_offsets: u64,
    q_ctx_rows: u64,
    dim: u32,
    heads: u32,
    context_share: f32,
    w_retrieval: f32,
    w_attention: f32,
    bias: f32,
    slots: u32,
    _pad2: u32,
    final_scores: u64,
    attributions: u64,
    // `rerank_fused` only.
    results: u32,
    flags: u32,
    src_rows: u32,
    _pad3: u32,
    out_ids: u64,
    out_scores: u64,
    out_retrieval: u64,
    out_attributions: u64,
    /// Phase marks of the fused builds for query 0, or 0 (see [`CudaRerank::set_trace`]).
    trace: u64,
}

/// `Some(alpha)` when `matrix` (`[dim, dim]`) is exactly `alpha` times the identity.
fn identity_scale(matrix: &[f32], dim: usize) -> Option<f32> {
    let alpha = *matrix.first()?;
    matrix
        .iter()
        .enumerate()
        .all(|(at, &x)| x == if at / dim == at % dim { alpha } else { 0.0 })
        .then_some(alpha)
}

/// One projection: either a scaled identity (the item table is used as it is) or a
/// projected fp16 item table made by one GEMM on the device.
struct Projection {
    scale: Option<f32>,
    items: Option<CudaBuffer<u16>>,
    /// `[dim, dim]` fp16 matrix (for per-batch products), when not an identity.
    matrix: Option<CudaBuffer<u16>>,
}

/// `out[rows, dim] = a[rows, dim] * W^T` with `W` `[dim, dim]` (`[out, in]`), fp16 operands,
/// fp32 accumulation, fp16 out.
fn gemm_by_transpose(
    cuda: &Cuda,
    a: &CudaBuffer<u16>,
    rows: usize,
    w: &CudaBuffer<u16>,
    dim: usize,
    out: &mut CudaBuffer<u16>,
) -> Result<(), CudaError> {
    let blas = cuda.blas.as_ref().ok_or_else(|| {
        CudaError::Unsupported("trained rerank projections need cuBLAS on the GPU".into())
    })?;
    cuda.ensure_len(out, rows * dim)?;
    let (alpha, beta) = (1.0f32, 0.0f32);
    cuda.bind()?;
    // SAFETY: out^T [dim, rows] = W^T^T... in column-major terms: m = dim (out features),
    // n = rows, k = dim; A = W read transposed (lda dim), B = a (ldb dim), C = out (ldc dim);
    // all three allocations hold the sizes used.
    unsafe {
        blas_sys::cublasGemmEx(
            blas.handle(),
            blas_sys::cublasOperation_t::CUBLAS_OP_T,
            blas_sys::cublasOperation_t::CUBLAS_OP_N,
            dim as i32,
            rows as i32,
            dim as i32,
            &alpha as *const f32 as *const c_void,
            w.device_ptr() as *const c_void,
            blas_sys::cudaDataType::CUDA_R_16F,
            dim as i32,
            a.device_ptr() as *const c_void,
            blas_sys::cudaDataType::CUDA_R_16F,
            dim as i32,
            &beta as *const f32 as *const c_void,
            out.device_ptr() as *mut c_void,
            blas_sys::cudaDataType::CUDA_R_16F,
            dim as i32,
            blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
        .result()
        .map_err(CudaError::blas)
    }
}

impl Projection {
    fn new(
        cuda: &Cuda,
        matrix: &[f32],
        items: &CudaBuffer<u16>,
        n_items: usize,
        dim: usize,
    ) -> Result<Projection, CudaError> {
        if let Some(scale) = identity_scale(matrix, dim) {
            return Ok(Projection {
                scale: Some(scale),
                items: None,
                matrix: None,
            });
        }
        let halves: Vec<u16> = matrix.iter().map(|&x| f16::from_f32(x).to_bits()).collect();
        let mut w = cuda.alloc::<u16>(halves.len())?;
        cuda.upload_at(&halves, &mut w, 0)?;
        let mut projected = cuda.alloc::<u16>(0)?;
        gemm_by_transpose(cuda, items, n_items, &w, dim, &mut projected)?;
        Ok(Projection {
            scale: None,
            items: Some(projected),
            matrix: Some(w),
        })
    }

    /// The table the kernel reads and its scalar factor.
    fn table<'a>(&'a self, items: &'a CudaBuffer<u16>) -> (u64, f32) {
        match (&self.items, self.scale) {
            (Some(table), _) => (table.device_ptr(), 1.0),
            (None, scale) => (items.device_ptr(), scale.unwrap_or(1.0)),
        }
    }

    fn bytes(&self) -> usize {
        self.items.as_ref().map_or(0, |b| b.allocated_bytes())
            + self.matrix.as_ref().map_or(0, |b| b.allocated_bytes())
    }
}

/// `out = matrix * x` for a row-major `[dim, dim]` matrix.
fn mat_vec(matrix: &[f32], x: &[f32], out: &mut [f32]) {
    for (o, row) in out.iter_mut().zip(matrix.chunks_exact(x.len())) {
        *o = row.iter().zip(x).map(|(a, b)| a * b).sum();
    }
}

/// GPU twin of `hyperrec_rerank::AttentionRerank` (`"rerank"`): the same sources, formula,
/// attributions and result order (see that crate's docs), with fp16 operands and fp32
/// accumulation on the tensor cores.
///
/// Limits: at most [`MAX_SLOTS`] sources and [`MAX_RERANKED`] reranked candidates per
/// query, head width a multiple of 16 up to 128, trained (non-identity) projections need
/// cuBLAS.
pub struct CudaRerank {
    users: SharedUsers,
    tables: SharedTables,
    vocabulary: Arc<ContextVocabulary>,
    config: RerankConfig,
    weights: RerankWeights,
    query: Projection,
    key: Projection,
    value: Projection,
    phrases_version: Option<u64>,
    /// Projected context phrase keys and gated values, fp16 `[n_phrases, dim]`.
    ctx_keys: CudaBuffer<u16>,
    ctx_values: CudaBuffer<u16>,
    /// Per-batch query records (see [`resolve_sources`]), host staging and device copy.
    /// The batch's query records ([`plan_sources`]), in its own buffer or the path's arena.
    packed: StageRecords,
    /// The build of the rerank kernels, when fixed (`None`: [`choose_kernel`] decides).
    kernel: Option<RerankKernel>,
    fused_half: CudaBuffer<u16>,
    projected_fused: CudaBuffer<u16>,
    final_scores: CudaBuffer<f32>,
    attributions: CudaBuffer<f32>,
    /// Phase marks of the fused builds, when a measurement harness asked for them.
    trace: Option<CudaBuffer<u32>>,
}

impl CudaRerank {
    /// Builds the stage; with trained weights, projects the item table once on the device.
    pub fn new(
        cuda: &Cuda,
        users: SharedUsers,
        tables: SharedTables,
        vocabulary: Arc<ContextVocabulary>,
        config: RerankConfig,
        weights: RerankWeights,
    ) -> Result<CudaRerank, CudaError> {
        let (dim, n_items, table_history) = {
            let t = tables.lock();
            (t.dim(), t.n_items(), t.history_len())
        };
        weights
            .validate(dim, config.heads)
            .map_err(|e| CudaError::Unsupported(e.to_string()))?;
        let head_dim = weights.head_dim();
        if !head_dim.is_multiple_of(16) || head_dim > 128 {
            return Err(CudaError::Unsupported(format!(
                "the GPU rerank needs a head width that is a multiple of 16 up to 128, got {head_dim}"
            )));
        }
        if config.history_len > table_history {
            return Err(CudaError::Unsupported(format!(
                "history_len {} exceeds the {table_history} history items the device tables keep",
                config.history_len
            )));
        }
        if config.candidates == 0 || config.candidates > MAX_RERANKED {
            return Err(CudaError::Unsupported(format!(
                "the GPU rerank handles 1..={MAX_RERANKED} candidates, got {}",
                config.candidates
            )));
        }
        if rerank_shared_bytes(RerankKernel::Staged, head_dim) > RERANK_MAX_SHARED_BYTES {
            return Err(CudaError::Unsupported(
                "rerank shared memory exceeds the limit".into(),
            ));
        }
        let (query, key, value) = {
            let t = tables.lock();
            (
                Projection::new(cuda, &weights.q_proj, t.items(), n_items, dim)?,
                Projection::new(cuda, &weights.k_proj, t.items(), n_items, dim)?,
                Projection::new(cuda, &weights.v_proj, t.items(), n_items, dim)?,
            )
        };
        Ok(CudaRerank {
            users,
            tables,
            vocabulary,
            config,
            weights,
            query,
            key,
            value,
            phrases_version: None,
            ctx_keys: cuda.alloc(0)?,
            ctx_values: cuda.alloc(0)?,
            packed: StageRecords::new(cuda)?,
            kernel: None,
            fused_half: cuda.alloc(0)?,
            projected_fused: cuda.alloc(0)?,
            final_scores: cuda.alloc(0)?,
            attributions: cuda.alloc(0)?,
            trace: None,
        })
    }

    /// Makes the fused builds write phase marks for query 0 on every launch from now on, or
    /// stops it: per block of its cluster (`TRACE_BLOCKS` x `TRACE_MARKS` words, block `r`
    /// at `r * TRACE_MARKS`) the low 32 bits of the global nanosecond timer at its start,
    /// once its sources are on their way (before it waits for the previous kernel), once
    /// that wait returned, once its first head's rows have landed, after its heads, after
    /// the cluster's attention sum (with the keys written), after the ranking and at its
    /// end.
    #[doc(hidden)]
    pub fn set_trace(&mut self, cuda: &Cuda, on: bool) -> Result<(), CudaError> {
        self.trace = None;
        if on {
            let mut trace = cuda.alloc(TRACE_BLOCKS * TRACE_MARKS)?;
            cuda.memset_zero(&mut trace)?;
            self.trace = Some(trace);
        }
        Ok(())
    }

    /// The phase marks of the last traced launch (empty without [`CudaRerank::set_trace`]).
    #[doc(hidden)]
    pub fn trace_marks(&self, cuda: &Cuda) -> Result<Vec<u32>, CudaError> {
        cuda.download_words(self.trace.as_ref())
    }

    /// Uploads the projected context phrases when the vocabulary changed.
    fn refresh_phrases(&mut self, cuda: &Cuda) -> Result<(), CudaError> {
        let phrases = self.vocabulary.read();
        if self.phrases_version == Some(phrases.version()) {
            return Ok(());
        }
        let dim = phrases.dim();
        let mut keys = vec![0.0f32; phrases.len() * dim];
        let mut values = vec![0.0f32; phrases.len() * dim];
        for row in 0..phrases.len() {
            let p = phrases.embedding(row as u32);
            let (k, v) = (
                &mut keys[row * dim..(row + 1) * dim],
                &mut values[row * dim..(row + 1) * dim],
            );
            match self.key.scale {
                Some(scale) => k.iter_mut().zip(p).for_each(|(o, x)| *o = scale * x),
                None => mat_vec(&self.weights.k_proj, p, k),
            }
            match self.value.scale {
                Some(scale) => v.iter_mut().zip(p).for_each(|(o, x)| *o = scale * x),
                None => mat_vec(&self.weights.v_proj, p, v),
            }
            v.iter_mut().for_each(|x| *x *= self.weights.context_gate);
        }
        // fp16, rounded as the kernel rounds every attention operand, so the kernel gathers
        // them with the history rows in one load round.
        let to_half =
            |xs: &[f32]| -> Vec<u16> { xs.iter().map(|&x| f16::from_f32(x).to_bits()).collect() };
        let (keys, values) = (to_half(&keys), to_half(&values));
        cuda.ensure_len(&mut self.ctx_keys, keys.len().max(1))?;
        cuda.ensure_len(&mut self.ctx_values, values.len().max(1))?;
        cuda.upload_at(&keys, &mut self.ctx_keys, 0)?;
        cuda.upload_at(&values, &mut self.ctx_values, 0)?;
        self.phrases_version = Some(phrases.version());
        Ok(())
    }

    /// Pre-launch host step: the batch's query records ([`plan_sources`]), one upload.
    /// `notes.sources` is written afterwards by [`CudaRerank::fill_notes`].
    pub(crate) fn prepare(
        &mut self,
        cuda: &Cuda,
        batch: &mut Batch<Cuda>,
    ) -> Result<(), StageError> {
        self.plan(cuda, batch)?;
        let room = self.records_room(batch.len());
        self.packed.upload_own(cuda, room)?;
        Ok(())
    }

    /// Words the records of a batch of `n` queries get on the device: spare room for
    /// context rows, so a batch of the same size with more phrases keeps its address (and
    /// the captured graph that bakes it).
    pub(crate) fn records_room(&self, n: usize) -> usize {
        self.packed.len().max(packed_len(n, 4 * n))
    }

    /// The planned records, for the path to upload and place.
    pub(crate) fn records_mut(&mut self) -> &mut StageRecords {
        &mut self.packed
    }

    /// The host half of [`CudaRerank::prepare`] (and the context phrases' upload when the
    /// vocabulary changed): the records, planned but not uploaded.
    pub(crate) fn plan(&mut self, cuda: &Cuda, batch: &mut Batch<Cuda>) -> Result<(), StageError> {
        self.refresh_phrases(cuda)?;
        let users = self.users.read();
        let table_history = self.tables.lock().history_len();
        let phrases = self.vocabulary.read();
        let slots = plan_sources(
            &users,
            &phrases,
            self.config.history_len,
            table_history,
            &batch.requests,
            &batch.notes,
            self.packed.host_mut(),
        )?;
        drop(phrases);
        drop(users);
        batch.slots = slots;
        Ok(())
    }

    /// Fixes the build of the rerank kernels, or with `None` chooses automatically (the
    /// default: [`RerankKernel::Fused`] where it applies, else the two-kernel path by grid
    /// size). Benchmarks and tests compare the builds. The choice is part of the path's
    /// graph key, so a change re-captures.
    #[doc(hidden)]
    pub fn set_kernel(&mut self, kernel: Option<RerankKernel>) {
        self.kernel = kernel;
    }

    /// Post-launch host step: every query's `notes.sources` ([`fill_sources`]), for the
    /// batch `prepare` planned; runs while the device works.
    pub(crate) fn fill_notes(&self, batch: &mut Batch<Cuda>) {
        let users = self.users.read();
        let phrases = self.vocabulary.read();
        fill_sources(
            &users,
            &phrases,
            self.config.history_len,
            &batch.requests,
            &mut batch.notes,
        );
    }

    /// Enqueues only the device work (attention and selection) for a batch this stage has
    /// already prepared by a `run`: lets benchmarks separate kernel time from host
    /// preparation and uploads.
    #[doc(hidden)]
    pub fn enqueue_prepared(
        &mut self,
        cuda: &Cuda,
        batch: &mut Batch<Cuda>,
    ) -> Result<(), StageError> {
        self.enqueue(cuda, batch)
    }

    /// Device step: attention and selection.
    pub(crate) fn enqueue(
        &mut self,
        cuda: &Cuda,
        batch: &mut Batch<Cuda>,
    ) -> Result<(), StageError> {
        self.enqueue_with(cuda, batch, Overlap::None)
    }

    /// [`CudaRerank::enqueue`], where `overlap` says whether the fused kernel may start
    /// while the previous kernel on the stream (the one that writes the candidates) still
    /// runs: the kernel gathers its history and context rows first and waits for that
    /// kernel's writes only before it reads the candidates and the fused queries.
    pub(crate) fn enqueue_with(
        &mut self,
        cuda: &Cuda,
        batch: &mut Batch<Cuda>,
        overlap: Overlap,
    ) -> Result<(), StageError> {
        let n = batch.len();
        let results = batch.results;
        let slots = batch.slots;
        cuda.ensure_len(&mut batch.result_ids, n * results)?;
        cuda.ensure_len(&mut batch.result_scores, n * results)?;
        cuda.ensure_len(&mut batch.result_retrieval_scores, n * results)?;
        cuda.ensure_len(&mut batch.result_attributions, n * results * slots)?;
        if n == 0 || results == 0 {
            return Ok(());
        }
        let reranked = batch.candidates.min(self.config.candidates.max(results));
        if reranked == 0 || reranked > MAX_RERANKED {
            return Err(StageError::Failed {
                stage: "rerank",
                message: format!(
                    "{reranked} candidates to rerank; the GPU handles 1..={MAX_RERANKED}"
                ),
            });
        }
        let tables = self.tables.lock();
        let dim = tables.dim();
        let items = tables.items();
        let (q_table, q_scale) = self.query.table(items);
        let (k_table, k_scale) = self.key.table(items);
        let (v_table, v_scale) = self.value.table(items);
        let flags = fused_flags(q_table, k_table, v_table);
        let fused_bytes = fused_shared_bytes(
            self.weights.head_dim(),
            reranked,
            slots,
            flags & FUSED_SHARE_QV != 0,
        );
        let parts = if n <= SPLIT_HEADS_BATCH {
            self.config.heads.max(1)
        } else {
            1
        };
        let chunks = reranked.div_ceil(CHUNK);
        let build = choose_kernel(self.kernel, n, reranked, fused_bytes, n * chunks * parts);
        let fused = matches!(build, RerankKernel::Fused | RerankKernel::FusedCluster);
        if !fused {
            cuda.ensure_len(&mut self.final_scores, parts * n * reranked)?;
            cuda.ensure_len(
                &mut self.attributions,
                (parts * n * reranked * slots).max(1),
            )?;
        }

        let beta = self.weights.query_fused_mix;
        let (pf, pf_scale) = if beta == 0.0 {
            (0, 0.0)
        } else {
            cuda.ensure_len(&mut self.fused_half, n * dim)?;
            let (src, dst, len) = (
                batch.fused.device_ptr(),
                self.fused_half.device_ptr(),
                (n * dim) as u64,
            );
            let mut params = [arg(&src), arg(&dst), arg(&len)];
            // SAFETY: both hold n * dim elements.
            unsafe {
                cuda.launch(
                    &cuda.kernels.f32_to_f16,
                    ((n * dim).div_ceil(256).min(4096) as u32, 1, 1),
                    (256, 1, 1),
                    0,
                    &mut params,
                )?;
            }
            match (&self.query.matrix, self.query.scale) {
                (Some(w), _) => {
                    gemm_by_transpose(
                        cuda,
                        &self.fused_half,
                        n,
                        w,
                        dim,
                        &mut self.projected_fused,
                    )?;
                    (self.projected_fused.device_ptr(), 1.0)
                }
                (None, scale) => (self.fused_half.device_ptr(), scale.unwrap_or(1.0)),
            }
        };
        let params = RerankParams {
            cand_ids: batch.candidate_ids.device_ptr(),
            cand_scores: batch.candidate_scores.device_ptr(),
            cand_stride: batch.candidates as u32,
            reranked: reranked as u32,
            q_table,
            k_table,
            v_table,
            q_scale,
            k_scale,
            v_scale,
            _pad0: 0,
            pf,
            pf_scale,
            beta,
            hist_items: tables.history_items().device_ptr(),
            hist_ratings: tables.history_ratings().device_ptr(),
            table_hist_len: tables.history_len() as u32,
            _pad1: 0,
            q_user: self.packed.ptr_at(0),
            q_hist_begin: self.packed.ptr_at(n),
            q_hist_count: self.packed.ptr_at(2 * n),
            gate_offset: self.weights.history_gate[0],
            gate_slope: self.weights.history_gate[1],
            ctx_keys: self.ctx_keys.device_ptr(),
            ctx_values: self.ctx_values.device_ptr(),
            q_ctx_offsets: self.packed.ptr_at(3 * n),
            q_ctx_rows: self.packed.ptr_at(packed_len(n, 0)),
            dim: dim as u32,
            heads: self.config.heads as u32,
            context_share: self.weights.context_share,
            w_retrieval: self.weights.score_mix.retrieval,
            w_attention: self.weights.score_mix.attention,
            bias: self.weights.score_mix.bias,
            slots: slots as u32,
            _pad2: 0,
            final_scores: self.final_scores.device_ptr(),
            attributions: self.attributions.device_ptr(),
            results: results as u32,
            flags,
            src_rows: fused_source_rows(slots) as u32,
            _pad3: 0,
            out_ids: batch.result_ids.device_ptr(),
            out_scores: batch.result_scores.device_ptr(),
            out_retrieval: batch.result_retrieval_scores.device_ptr(),
            out_attributions: batch.result_attributions.device_ptr(),
            trace: self.trace.as_ref().map_or(0, CudaBuffer::device_ptr),
        };
        let mut kernel_params = [arg(&params)];
        if fused {
            let (kernel, blocks_per_query) = if build == RerankKernel::FusedCluster {
                (&cuda.kernels.rerank_fused_cluster, CLUSTER_BLOCKS)
            } else {
                (&cuda.kernels.rerank_fused, 1)
            };
            // SAFETY: `RerankParams` mirrors the kernel's struct; the outputs hold
            // n * results (* slots) elements (ensured above), every query's sources fit the
            // `src_rows` rows of a buffer (slots is the batch's most), reranked <=
            // FUSED_MAX_RERANKED and the shared memory within the limit (choose_kernel);
            // the cluster build's grid is its compiled cluster shape (1, 4, 1).
            // With `Overlap::PreviousKernel` the kernel reads only the records, the device
            // tables and the context rows before its `griddepcontrol.wait`: no kernel of the
            // path writes them, and the work that does (uploads, event updates) completed
            // before the previous kernel started, which this one cannot precede.
            unsafe {
                let (grid, block) = ((n as u32, blocks_per_query, 1), (FUSED_THREADS, 1, 1));
                match overlap {
                    Overlap::None => {
                        cuda.launch(kernel, grid, block, fused_bytes as u32, &mut kernel_params)?
                    }
                    Overlap::PreviousKernel => cuda.launch_dependent(
                        kernel,
                        grid,
                        block,
                        fused_bytes as u32,
                        &mut kernel_params,
                    )?,
                }
            }
            return Ok(());
        }
        let kernel = match build {
            RerankKernel::Staged => &cuda.kernels.rerank_attend,
            RerankKernel::Async => &cuda.kernels.rerank_attend_async,
            RerankKernel::Fused | RerankKernel::FusedCluster => unreachable!("launched above"),
        };
        let shared = rerank_shared_bytes(build, self.weights.head_dim());
        // SAFETY: `RerankParams` mirrors the kernel's struct; every table and staging
        // buffer is sized for the batch (candidate rows of `candidates`, sources checked
        // against MAX_SLOTS on the host).
        unsafe {
            cuda.launch(
                kernel,
                (n as u32, chunks as u32, parts as u32),
                (128, 1, 1),
                shared as u32,
                &mut kernel_params,
            )?;
        }
        let (finals, attrs, ids, scores) = (
            self.final_scores.device_ptr(),
            self.attributions.device_ptr(),
            batch.candidate_ids.device_ptr(),
            batch.candidate_scores.device_ptr(),
        );
        let (stride, reranked_u, slots_u, results_u, parts_u) = (
            batch.candidates as u32,
            reranked as u32,
            slots as u32,
            results as u32,
            parts as u32,
        );
        let (out_ids, out_scores, out_retrieval, out_attr) = (
            batch.result_ids.device_ptr(),
            batch.result_scores.device_ptr(),
            batch.result_retrieval_scores.device_ptr(),
            batch.result_attributions.device_ptr(),
        );
        let mut select = [
            arg(&finals),
            arg(&attrs),
            arg(&ids),
            arg(&scores),
            arg(&stride),
            arg(&reranked_u),
            arg(&slots_u),
            arg(&results_u),
            arg(&out_ids),
            arg(&out_scores),
            arg(&out_retrieval),
            arg(&out_attr),
            arg(&parts_u),
        ];
        // One thread per (power-of-two padded) candidate: a 1024-thread block for 100
        // candidates idled 7/8 of its threads and paid 1024-thread barriers.
        let select_threads = reranked.next_power_of_two().max(32) as u32;
        // SAFETY: parameters match `rerank_select`; outputs sized above; the block holds
        // the padded candidate count (<= MAX_RERANKED = 1024).
        unsafe {
            cuda.launch(
                &cuda.kernels.rerank_select,
                (n as u32, 1, 1),
                (select_threads, 1, 1),
                0,
                &mut select,
            )?;
        }
        Ok(())
    }

    /// Device addresses a captured graph of this stage bakes in.
    pub(crate) fn graph_key(&self) -> Vec<u64> {
        let tables = self.tables.lock();
        vec![
            // A fixed build (an automatic one follows the batch size, already in the key).
            self.kernel.map_or(0, |kernel| kernel as u64 + 1),
            self.packed.device_ptr(),
            self.trace.as_ref().map_or(0, CudaBuffer::device_ptr),
            self.ctx_keys.device_ptr(),
            self.ctx_values.device_ptr(),
            self.fused_half.device_ptr(),
            self.projected_fused.device_ptr(),
            self.final_scores.device_ptr(),
            self.attributions.device_ptr(),
            tables.history_items().device_ptr(),
            tables.history_ratings().device_ptr(),
            tables.generation(),
        ]
    }

    /// Device bytes: projected tables (items), context phrases and scratch (workspace).
    pub fn memory_report(&self) -> MemoryReport {
        MemoryReport {
            items: self.query.bytes() + self.key.bytes() + self.value.bytes(),
            workspace: self.ctx_keys.allocated_bytes()
                + self.ctx_values.allocated_bytes()
                + self.final_scores.allocated_bytes()
                + self.attributions.allocated_bytes()
                + self.fused_half.allocated_bytes()
                + self.projected_fused.allocated_bytes(),
            ..MemoryReport::default()
        }
    }
}

impl Stage<Cuda> for CudaRerank {
    fn name(&self) -> &'static str {
        "rerank"
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The async build exists for occupancy: at the seed model's head width (384 / 4) it
    /// must fit three blocks per SM (227 KB per SM, 1 KB reserved per block), and no head
    /// width the stage accepts may exceed the kernels' shared-memory limit.
    #[test]
    fn shared_memory_of_the_builds() {
        let async_96 = rerank_shared_bytes(RerankKernel::Async, 96);
        assert!(3 * (async_96 + 1024) <= 227 * 1024, "{async_96} bytes");
        assert!(
            rerank_shared_bytes(RerankKernel::Staged, 96) > async_96,
            "the staged build holds rows and scores side by side"
        );
        for head_dim in (16..=128).step_by(16) {
            for kernel in [RerankKernel::Staged, RerankKernel::Async] {
                let bytes = rerank_shared_bytes(kernel, head_dim);
                assert!(
                    bytes <= RERANK_MAX_SHARED_BYTES,
                    "{kernel:?} {head_dim}: {bytes}"
                );
            }
        }
    }

    /// Grids within one wave of the staged build keep it; larger ones take the async one.
    #[test]
    fn automatic_build_follows_the_grid() {
        assert_eq!(auto_split_kernel(8), RerankKernel::Staged); // batch 1, heads split
        assert_eq!(auto_split_kernel(200), RerankKernel::Staged); // batch 100
        assert_eq!(auto_split_kernel(STAGED_WAVE_BLOCKS), RerankKernel::Staged);
        assert_eq!(
            auto_split_kernel(STAGED_WAVE_BLOCKS + 1),
            RerankKernel::Async
        );
        assert_eq!(auto_split_kernel(2000), RerankKernel::Async); // batch 1000
    }

    /// The fused kernel is the default up to its 128 candidates and within its shared
    /// memory; beyond, and for a fixed build it cannot run, the two-kernel path by grid.
    #[test]
    fn fused_kernel_is_chosen_where_it_applies() {
        use RerankKernel::{Async, Fused, FusedCluster, Staged};
        let fits = fused_shared_bytes(96, 100, 30, true);
        assert_eq!(choose_kernel(None, 1000, 100, fits, 2000), Fused);
        assert_eq!(
            choose_kernel(None, CLUSTER_MAX_BATCH + 1, 128, fits, 130),
            Fused
        );
        assert_eq!(
            choose_kernel(None, CLUSTER_MAX_BATCH, 128, fits, 128),
            FusedCluster
        );
        assert_eq!(choose_kernel(None, 1, 100, fits, 8), FusedCluster);
        assert_eq!(choose_kernel(None, 1, 129, fits, 12), Staged);
        assert_eq!(choose_kernel(None, 1000, 200, fits, 4000), Async);
        let too_big = RERANK_FUSED_MAX_SHARED_BYTES + 1;
        assert_eq!(choose_kernel(None, 1, 100, too_big, 8), Staged);
        for fixed in [Fused, FusedCluster] {
            assert_eq!(choose_kernel(Some(fixed), 1, 200, fits, 16), Staged);
            assert_eq!(choose_kernel(Some(fixed), 1000, 10, fits, 1000), fixed);
        }
        for fixed in [Staged, Async] {
            assert_eq!(choose_kernel(Some(fixed), 1000, 100, fits, 2000), fixed);
        }
    }

    /// Every head width the stage accepts fits the fused kernel at its largest batch shape
    /// (128 candidates, 64 sources, distinct tables); the seed model's shape (head width 96,
    /// one table for all three projections) fits two blocks per SM even at 64 sources.
    #[test]
    fn shared_memory_of_the_fused_kernel() {
        for head_dim in (16..=128).step_by(16) {
            let bytes = fused_shared_bytes(head_dim, FUSED_MAX_RERANKED, MAX_SLOTS, false);
            assert!(
                bytes <= RERANK_FUSED_MAX_SHARED_BYTES,
                "{head_dim}: {bytes}"
            );
        }
        let seed_model = fused_shared_bytes(96, 100, MAX_SLOTS, true);
        assert!(2 * (seed_model + 1024) <= 227 * 1024, "{seed_model} bytes");
        // Rows: two buffers of (112 candidate + 2 * 64 source) rows of 104 halves + 96.
        assert_eq!(seed_model, 2 * 2 * ((112 + 128) * 104 + 96) + 4352);
        assert!(fused_shared_bytes(96, 100, 30, true) < fused_shared_bytes(96, 100, 30, false));
        // After the heads the row bytes hold the attribution sums: [128][64 + 8] floats at
        // the narrowest heads.
        assert_eq!(
            fused_shared_bytes(16, 128, 64, true),
            128 * (64 + 8) * 4 + 4352
        );
    }

    #[test]
    fn fused_source_rows_round_up_to_pairs_of_tiles() {
        assert_eq!(fused_source_rows(0), 16);
        assert_eq!(fused_source_rows(1), 16);
        assert_eq!(fused_source_rows(16), 16);
        assert_eq!(fused_source_rows(27), 32);
        assert_eq!(fused_source_rows(MAX_SLOTS), MAX_SLOTS);
    }

    /// One table for all three projections (the untrained weights) shares both gathers;
    /// trained projections share none.
    #[test]
    fn fused_flags_follow_the_table_addresses() {
        assert_eq!(fused_flags(7, 7, 7), FUSED_SHARE_QV | FUSED_SHARE_KV);
        assert_eq!(fused_flags(1, 2, 3), 0);
        assert_eq!(fused_flags(3, 2, 3), FUSED_SHARE_QV);
        assert_eq!(fused_flags(1, 3, 3), FUSED_SHARE_KV);
    }
}
