//! The attention rerank stage on the GPU.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::sys as blas_sys;
use half::f16;

use hyperrec_catalog::SharedUsers;
use hyperrec_rerank::{ContextVocabulary, RerankConfig, RerankWeights};
use hyperrec_stage::{Batch, Event, Source, Stage, StageError};

use crate::device::{Cuda, CudaBuffer, RERANK_MAX_SHARED_BYTES, arg};
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

/// Dynamic shared memory of `rerank_attend` for heads of width `head_dim`.
fn rerank_shared_bytes(head_dim: usize) -> usize {
    let hdp = head_dim + 16;
    let halves = 2 * MAX_SLOTS * hdp + 2 * CHUNK * hdp;
    let floats = 2 * CHUNK * (MAX_SLOTS + 4) + CHUNK * (MAX_SLOTS + 1) + CHUNK;
    halves * 2 + floats * 4 + MAX_SLOTS * 8 + CHUNK * 4
}

/// Batches from this size resolve their queries' sources on the rayon pool.
const PARALLEL_PREPARE_BATCH: usize = 64;

/// One query's sources, resolved on the host (see `CudaRerank::prepare`).
struct QuerySources {
    /// User-table row whose history the kernel reads, or [`NO_ITEM`].
    user: u32,
    /// First history slot of the device row to read, and how many.
    history_begin: u32,
    history_count: u32,
    /// Phrase-table rows of the context sources.
    context_rows: Vec<u32>,
    /// Sources in all (history + context).
    slots: usize,
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
    ctx_keys: CudaBuffer<f32>,
    ctx_values: CudaBuffer<f32>,
    // Per-batch staging (host and device).
    q_user_host: Vec<u32>,
    q_hist_begin_host: Vec<u32>,
    q_hist_count_host: Vec<u32>,
    q_ctx_offsets_host: Vec<u32>,
    q_ctx_rows_host: Vec<u32>,
    q_user: CudaBuffer<u32>,
    q_hist_begin: CudaBuffer<u32>,
    q_hist_count: CudaBuffer<u32>,
    q_ctx_offsets: CudaBuffer<u32>,
    q_ctx_rows: CudaBuffer<u32>,
    fused_half: CudaBuffer<u16>,
    projected_fused: CudaBuffer<u16>,
    final_scores: CudaBuffer<f32>,
    attributions: CudaBuffer<f32>,
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
        if rerank_shared_bytes(head_dim) > RERANK_MAX_SHARED_BYTES {
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
            q_user_host: Vec::new(),
            q_hist_begin_host: Vec::new(),
            q_hist_count_host: Vec::new(),
            q_ctx_offsets_host: Vec::new(),
            q_ctx_rows_host: Vec::new(),
            q_user: cuda.alloc(0)?,
            q_hist_begin: cuda.alloc(0)?,
            q_hist_count: cuda.alloc(0)?,
            q_ctx_offsets: cuda.alloc(0)?,
            q_ctx_rows: cuda.alloc(0)?,
            fused_half: cuda.alloc(0)?,
            projected_fused: cuda.alloc(0)?,
            final_scores: cuda.alloc(0)?,
            attributions: cuda.alloc(0)?,
        })
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
        cuda.ensure_len(&mut self.ctx_keys, keys.len().max(1))?;
        cuda.ensure_len(&mut self.ctx_values, values.len().max(1))?;
        cuda.upload_at(&keys, &mut self.ctx_keys, 0)?;
        cuda.upload_at(&values, &mut self.ctx_values, 0)?;
        self.phrases_version = Some(phrases.version());
        Ok(())
    }

    /// Host step: sources of every query (and `notes[i].sources`), uploaded; sizes the
    /// result buffers.
    pub(crate) fn prepare(
        &mut self,
        cuda: &Cuda,
        batch: &mut Batch<Cuda>,
    ) -> Result<(), StageError> {
        self.refresh_phrases(cuda)?;
        let users = self.users.read();
        let table_history = self.tables.lock().history_len();
        let phrases = self.vocabulary.read();
        self.q_user_host.clear();
        self.q_hist_begin_host.clear();
        self.q_hist_count_host.clear();
        self.q_ctx_offsets_host.clear();
        self.q_ctx_rows_host.clear();
        self.q_ctx_offsets_host.push(0);
        // Each query's sources (history slice, context phrases) and its `notes.sources`:
        // independent per query, and at large batches the host's longest step before the
        // graph launch (613-790 us for 1000 queries on the H100 host, one thread), so they
        // run on the rayon pool there; small batches stay on this thread.
        let (users_ref, phrases_ref, history_len) = (&*users, &*phrases, self.config.history_len);
        let resolve =
            |(request, notes): (&hyperrec_stage::Request, &mut hyperrec_stage::RequestNotes)| {
                notes.sources.clear();
                let history = match notes.user {
                    None => &[][..],
                    Some(user) if (user as usize) < users_ref.len() => {
                        users_ref.recent(user, history_len)
                    }
                    Some(user) => return Err(StageError::UnknownUser(user)),
                };
                // The device row holds the table's most recent `table_history` items, oldest
                // first; ours are the last `history.len()` of them.
                let on_device = notes
                    .user
                    .map_or(0, |user| users_ref.recent(user, table_history).len());
                let mut context_rows = Vec::new();
                notes
                    .sources
                    .extend(history.iter().map(|h| Source::HistoryItem(h.item)));
                for phrase in ContextVocabulary::phrases_for(&request.context) {
                    if let Some(row) = phrases_ref.row_of(&phrase) {
                        context_rows.push(row);
                        notes.sources.push(Source::Context(phrase));
                    }
                }
                if notes.sources.len() > MAX_SLOTS {
                    return Err(StageError::Failed {
                        stage: "rerank",
                        message: format!(
                            "{} sources exceed the GPU rerank's {MAX_SLOTS}",
                            notes.sources.len()
                        ),
                    });
                }
                Ok(QuerySources {
                    user: notes
                        .user
                        .filter(|_| !history.is_empty())
                        .unwrap_or(NO_ITEM),
                    history_begin: on_device.saturating_sub(history.len()) as u32,
                    history_count: history.len() as u32,
                    context_rows,
                    slots: notes.sources.len(),
                })
            };
        let resolved: Vec<QuerySources> = if batch.requests.len() >= PARALLEL_PREPARE_BATCH {
            use rayon::prelude::*;
            batch
                .requests
                .par_iter()
                .zip(batch.notes.par_iter_mut())
                .map(resolve)
                .collect::<Result<_, _>>()?
        } else {
            batch
                .requests
                .iter()
                .zip(batch.notes.iter_mut())
                .map(resolve)
                .collect::<Result<_, _>>()?
        };
        let mut slots = 0;
        for query in &resolved {
            self.q_user_host.push(query.user);
            self.q_hist_begin_host.push(query.history_begin);
            self.q_hist_count_host.push(query.history_count);
            self.q_ctx_rows_host.extend_from_slice(&query.context_rows);
            self.q_ctx_offsets_host
                .push(self.q_ctx_rows_host.len() as u32);
            slots = slots.max(query.slots);
        }
        drop(phrases);
        drop(users);
        batch.slots = slots;
        for (host, device) in [
            (&self.q_user_host, &mut self.q_user),
            (&self.q_hist_begin_host, &mut self.q_hist_begin),
            (&self.q_hist_count_host, &mut self.q_hist_count),
            (&self.q_ctx_offsets_host, &mut self.q_ctx_offsets),
            (&self.q_ctx_rows_host, &mut self.q_ctx_rows),
        ] {
            cuda.ensure_len(device, host.len().max(1))?;
            cuda.upload_at(host, device, 0)?;
        }
        Ok(())
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
        let parts = if n <= SPLIT_HEADS_BATCH {
            self.config.heads.max(1)
        } else {
            1
        };
        cuda.ensure_len(&mut self.final_scores, parts * n * reranked)?;
        cuda.ensure_len(
            &mut self.attributions,
            (parts * n * reranked * slots).max(1),
        )?;

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
        let items = tables.items();
        let (q_table, q_scale) = self.query.table(items);
        let (k_table, k_scale) = self.key.table(items);
        let (v_table, v_scale) = self.value.table(items);
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
            q_user: self.q_user.device_ptr(),
            q_hist_begin: self.q_hist_begin.device_ptr(),
            q_hist_count: self.q_hist_count.device_ptr(),
            gate_offset: self.weights.history_gate[0],
            gate_slope: self.weights.history_gate[1],
            ctx_keys: self.ctx_keys.device_ptr(),
            ctx_values: self.ctx_values.device_ptr(),
            q_ctx_offsets: self.q_ctx_offsets.device_ptr(),
            q_ctx_rows: self.q_ctx_rows.device_ptr(),
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
        };
        let mut kernel_params = [arg(&params)];
        let shared = rerank_shared_bytes(self.weights.head_dim());
        // SAFETY: `RerankParams` mirrors the kernel's struct; every table and staging
        // buffer is sized for the batch (candidate rows of `candidates`, sources checked
        // against MAX_SLOTS on the host).
        unsafe {
            cuda.launch(
                &cuda.kernels.rerank_attend,
                (n as u32, reranked.div_ceil(CHUNK) as u32, parts as u32),
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
        // SAFETY: parameters match `rerank_select`; outputs sized above.
        unsafe {
            cuda.launch(
                &cuda.kernels.rerank_select,
                (n as u32, 1, 1),
                (1024, 1, 1),
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
            self.q_user.device_ptr(),
            self.q_hist_begin.device_ptr(),
            self.q_hist_count.device_ptr(),
            self.q_ctx_offsets.device_ptr(),
            self.q_ctx_rows.device_ptr(),
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
        self.enqueue(device, batch)
    }

    fn observe(&mut self, device: &Cuda, event: &Event) -> Result<(), StageError> {
        let users = self.users.read();
        if let Some(user) = users.index_of(event.user) {
            self.tables.lock().sync_user(device, &users, user)?;
        }
        Ok(())
    }
}
