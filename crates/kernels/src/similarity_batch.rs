//! The similarity stage at large batches (more than [`SMALL_BATCH`](crate::similarity)
//! queries): the score GEMM through cuBLASLt with the algorithm chosen by measurement, and
//! the launch of the large-batch selection kernel (`topk_filter_batch`).
//!
//! Why measure: for the stage's shape (1000 queries x 62,464 (62,423 padded) items x 384, fp16 in and out,
//! fp32 accumulation) the algorithm `cublasGemmEx` picks (its heuristic's first answer) ran
//! 126 us per call on the H100, while another of the heuristic's answers ran 109 us (probe
//! `tools/gemm_topk_probe.cu`, 2026-11-25). The heuristic ranks by a model; timing its
//! answers once per shape picks the fastest on the machine at hand.
//!
//! Every algorithm computes the same products with fp32 accumulation and rounds once to
//! fp16, but the summation order may differ between algorithms, so scores may differ in the
//! last fp16 bit between algorithms. The choice is made once per shape and per [`Cuda`]
//! (graph captures and eager runs of one process use the same algorithm), and the top-K
//! selection is exact on whatever fp16 scores the GEMM wrote. Choosing costs ~16 x 4 GEMM
//! runs plus synchronizations (~10 ms at 1000 x 62,464) once per new batch size; the
//! pipeline pads batches to power-of-two buckets, so a process meets only a handful.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ffi::c_void;

use cudarc::cublas::sys as blas_sys;
use cudarc::cublaslt::sys as lt_sys;
use cudarc::driver::{result, sys};
use parking_lot::Mutex;

use crate::device::{Blas, Cuda, CudaBuffer, arg};
use crate::similarity::{SMALL_BATCH, enqueue_scores, score_row_stride};
use crate::{CudaError, DeviceTables};

/// Workspace of the cuBLASLt GEMM (the answers for the stage's shapes ask for bytes, not
/// megabytes; split-K answers that need more are skipped).
pub(crate) const LT_WORKSPACE_BYTES: usize = 4 << 20;

/// Heuristic answers timed per shape.
const TIMED_ALGOS: usize = 16;

/// Timed runs per answer (after one untimed run); the median counts.
const TIMED_REPS: usize = 3;

/// Which GEMM computes the scores of batches beyond the small-batch kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ScoreGemm {
    /// cuBLASLt with the fastest of its heuristic's answers, timed once per shape (the
    /// default; `cublasGemmEx` where cuBLASLt is missing or has no answer).
    #[default]
    Measured,
    /// `cublasGemmEx` with the default algorithm (for comparisons).
    GemmEx,
}

/// The shape of one score GEMM: scores `[queries, ld]` (row-major) = queries `[queries, dim]`
/// x items^T, items `[ld, dim]` (rows past the catalog are zero padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct GemmShape {
    pub queries: usize,
    pub dim: usize,
    pub ld: usize,
}

/// A cuBLASLt matmul with its descriptors and the chosen algorithm.
struct LtPlan {
    desc: lt_sys::cublasLtMatmulDesc_t,
    items: lt_sys::cublasLtMatrixLayout_t,
    queries: lt_sys::cublasLtMatrixLayout_t,
    scores: lt_sys::cublasLtMatrixLayout_t,
    algo: lt_sys::cublasLtMatmulAlgo_t,
}

impl Drop for LtPlan {
    fn drop(&mut self) {
        // SAFETY: created once by `LtPlan::describe`, destroyed once here.
        unsafe {
            let _ = lt_sys::cublasLtMatrixLayoutDestroy(self.scores);
            let _ = lt_sys::cublasLtMatrixLayoutDestroy(self.queries);
            let _ = lt_sys::cublasLtMatrixLayoutDestroy(self.items);
            let _ = lt_sys::cublasLtMatmulDescDestroy(self.desc);
        }
    }
}

fn lt_error(what: &str, status: lt_sys::cublasStatus_t) -> CudaError {
    CudaError::Blas(format!("cuBLASLt {what}: {status:?}"))
}

fn lt_check(what: &str, status: lt_sys::cublasStatus_t) -> Result<(), CudaError> {
    match status {
        lt_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS => Ok(()),
        other => Err(lt_error(what, other)),
    }
}

impl LtPlan {
    /// Descriptors of `shape` (column-major view: scores `[ld, queries]` = items^T `[ld, dim]`
    /// x queries `[dim, queries]`, items stored `[dim, ld]` and read transposed); the
    /// algorithm is filled in by the caller.
    fn describe(shape: GemmShape) -> Result<LtPlan, CudaError> {
        let mut plan = LtPlan {
            desc: std::ptr::null_mut(),
            items: std::ptr::null_mut(),
            queries: std::ptr::null_mut(),
            scores: std::ptr::null_mut(),
            algo: lt_sys::cublasLtMatmulAlgo_t { data: [0; 8] },
        };
        let (ld, n, dim) = (shape.ld as u64, shape.queries as u64, shape.dim as u64);
        // SAFETY: out-pointers to fields of `plan`; on error `plan` drops what was created
        // (destroying a null descriptor is a no-op for cuBLASLt).
        unsafe {
            lt_check(
                "matmul descriptor",
                lt_sys::cublasLtMatmulDescCreate(
                    &mut plan.desc,
                    lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    lt_sys::cudaDataType::CUDA_R_32F,
                ),
            )?;
            let transpose = blas_sys::cublasOperation_t::CUBLAS_OP_T as i32;
            lt_check(
                "transpose attribute",
                lt_sys::cublasLtMatmulDescSetAttribute(
                    plan.desc,
                    lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                    &transpose as *const i32 as *const c_void,
                    size_of::<i32>(),
                ),
            )?;
            let half = lt_sys::cudaDataType::CUDA_R_16F;
            lt_check(
                "items layout",
                lt_sys::cublasLtMatrixLayoutCreate(&mut plan.items, half, dim, ld, dim as i64),
            )?;
            lt_check(
                "queries layout",
                lt_sys::cublasLtMatrixLayoutCreate(&mut plan.queries, half, dim, n, dim as i64),
            )?;
            lt_check(
                "scores layout",
                lt_sys::cublasLtMatrixLayoutCreate(&mut plan.scores, half, ld, n, ld as i64),
            )?;
        }
        Ok(plan)
    }
}

/// The heuristic's answers for `plan`'s shape that fit the workspace, best-ranked first.
fn heuristic_answers(
    handle: lt_sys::cublasLtHandle_t,
    plan: &LtPlan,
) -> Result<Vec<lt_sys::cublasLtMatmulAlgo_t>, CudaError> {
    // SAFETY: the preference is created, used and destroyed here; the result array holds
    // TIMED_ALGOS entries, as requested.
    unsafe {
        let mut preference: lt_sys::cublasLtMatmulPreference_t = std::ptr::null_mut();
        lt_check(
            "preference",
            lt_sys::cublasLtMatmulPreferenceCreate(&mut preference),
        )?;
        let workspace = LT_WORKSPACE_BYTES;
        let mut answers: Vec<lt_sys::cublasLtMatmulHeuristicResult_t> =
            vec![std::mem::zeroed(); TIMED_ALGOS];
        let mut found = 0i32;
        let status = lt_check(
            "workspace preference",
            lt_sys::cublasLtMatmulPreferenceSetAttribute(
                preference,
                lt_sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &workspace as *const usize as *const c_void,
                size_of::<usize>(),
            ),
        )
        .and_then(|()| {
            lt_check(
                "heuristic",
                lt_sys::cublasLtMatmulAlgoGetHeuristic(
                    handle,
                    plan.desc,
                    plan.items,
                    plan.queries,
                    plan.scores,
                    plan.scores,
                    preference,
                    TIMED_ALGOS as i32,
                    answers.as_mut_ptr(),
                    &mut found,
                ),
            )
        });
        let _ = lt_sys::cublasLtMatmulPreferenceDestroy(preference);
        status?;
        answers.truncate(found.max(0) as usize);
        Ok(answers
            .into_iter()
            .filter(|a| {
                a.state == lt_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS
                    && a.workspaceSize <= LT_WORKSPACE_BYTES
            })
            .map(|a| a.algo)
            .collect())
    }
}

/// Index of the fastest candidate by the median of its timings (the earlier one on ties,
/// i.e. the heuristic's ranking breaks them); `None` when no candidate has a timing.
pub(crate) fn fastest(timings: &[Vec<f32>]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (index, times) in timings.iter().enumerate() {
        let Some(median) = median(times) else {
            continue;
        };
        if best.is_none_or(|(_, fastest)| median < fastest) {
            best = Some((index, median));
        }
    }
    best.map(|(index, _)| index)
}

/// Median of finite timings (the upper one of an even count); `None` when there are none.
pub(crate) fn median(times: &[f32]) -> Option<f32> {
    let mut finite: Vec<f32> = times.iter().copied().filter(|t| t.is_finite()).collect();
    if finite.is_empty() {
        return None;
    }
    finite.sort_by(f32::total_cmp);
    Some(finite[finite.len() / 2])
}

/// cuBLASLt handle, its workspace and the chosen plan per GEMM shape (`None`: cuBLASLt has
/// no answer for the shape and `cublasGemmEx` runs it).
pub(crate) struct LtGemm {
    handle: lt_sys::cublasLtHandle_t,
    workspace: CudaBuffer<u8>,
    plans: Mutex<HashMap<GemmShape, Option<LtPlan>>>,
}

// SAFETY: the handle and descriptors are plain cuBLASLt objects that may be used from any
// thread; the plans are behind a mutex, and every matmul is enqueued on the device's one
// stream through `&Cuda`.
unsafe impl Send for LtGemm {}
// SAFETY: as above.
unsafe impl Sync for LtGemm {}

impl Drop for LtGemm {
    fn drop(&mut self) {
        self.plans.get_mut().clear();
        // SAFETY: created by cublasLtCreate, destroyed once, after its plans.
        unsafe {
            let _ = lt_sys::cublasLtDestroy(self.handle);
        }
    }
}

impl LtGemm {
    /// A cuBLASLt handle with `workspace` (at least [`LT_WORKSPACE_BYTES`]), or `None` where
    /// the library is missing or does not open.
    pub(crate) fn open(workspace: CudaBuffer<u8>) -> Option<LtGemm> {
        // SAFETY: probe only.
        if !unsafe { lt_sys::is_culib_present() } || workspace.len() < LT_WORKSPACE_BYTES {
            return None;
        }
        let handle = cudarc::cublaslt::result::create_handle().ok()?;
        Some(LtGemm {
            handle,
            workspace,
            plans: Mutex::new(HashMap::new()),
        })
    }

    /// Enqueues the GEMM of `shape` on `stream` with the shape's plan, choosing the plan
    /// first when the shape is new. Returns `false` (nothing enqueued) when cuBLASLt has no
    /// algorithm for the shape.
    ///
    /// # Safety
    /// `items`, `queries` and `scores` must hold `[ld, dim]`, `[queries, dim]` and
    /// `[queries, ld]` fp16 elements on this context; `stream` must be the stream they
    /// are used on.
    unsafe fn enqueue(
        &self,
        stream: sys::CUstream,
        shape: GemmShape,
        items: u64,
        queries: u64,
        scores: u64,
    ) -> Result<bool, CudaError> {
        let mut plans = self.plans.lock();
        let plan = match plans.entry(shape) {
            Entry::Occupied(entry) => entry.into_mut(),
            // SAFETY: forwarded from the caller.
            Entry::Vacant(entry) => {
                entry.insert(unsafe { self.choose(stream, shape, items, queries, scores)? })
            }
        };
        let Some(plan) = plan.as_ref() else {
            return Ok(false);
        };
        // SAFETY: forwarded from the caller.
        unsafe { self.matmul(stream, plan, &plan.algo, items, queries, scores)? };
        Ok(true)
    }

    /// # Safety
    /// As [`LtGemm::enqueue`].
    unsafe fn matmul(
        &self,
        stream: sys::CUstream,
        plan: &LtPlan,
        algo: &lt_sys::cublasLtMatmulAlgo_t,
        items: u64,
        queries: u64,
        scores: u64,
    ) -> Result<(), CudaError> {
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: shapes match `plan`'s layouts (caller); the workspace is ours and used only
        // on this stream.
        unsafe {
            lt_check(
                "matmul",
                lt_sys::cublasLtMatmul(
                    self.handle,
                    plan.desc,
                    &alpha as *const f32 as *const c_void,
                    items as *const c_void,
                    plan.items,
                    queries as *const c_void,
                    plan.queries,
                    &beta as *const f32 as *const c_void,
                    scores as *const c_void,
                    plan.scores,
                    scores as *mut c_void,
                    plan.scores,
                    algo,
                    self.workspace.device_ptr() as *mut c_void,
                    LT_WORKSPACE_BYTES,
                    stream as lt_sys::cudaStream_t,
                ),
            )
        }
    }

    /// The plan of a new shape: the heuristic's answers, each run once untimed and
    /// [`TIMED_REPS`] times between events on `stream` (synchronizing it), the fastest
    /// kept. While `stream` is being captured into a graph nothing may synchronize it, so
    /// the heuristic's first answer is kept untimed (the path runs a new shape eagerly
    /// before capturing it, so this is only a guard).
    ///
    /// # Safety
    /// As [`LtGemm::enqueue`]; the timing runs write `scores`.
    unsafe fn choose(
        &self,
        stream: sys::CUstream,
        shape: GemmShape,
        items: u64,
        queries: u64,
        scores: u64,
    ) -> Result<Option<LtPlan>, CudaError> {
        let mut plan = LtPlan::describe(shape)?;
        let answers = heuristic_answers(self.handle, &plan)?;
        if answers.is_empty() {
            return Ok(None);
        }
        let mut capture = sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
        // SAFETY: a valid stream of this context.
        unsafe { sys::cuStreamIsCapturing(stream, &mut capture) }
            .result()
            .map_err(CudaError::from)?;
        let mut chosen = 0;
        if answers.len() > 1 && capture == sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE
        {
            let start = result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT)?;
            let end = result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT);
            let timings = end.map_err(CudaError::from).and_then(|end| {
                // SAFETY: forwarded from the caller; both events belong to this context.
                let timed = unsafe {
                    self.time_answers(stream, &plan, &answers, start, end, items, queries, scores)
                };
                // SAFETY: created above, destroyed once (after the last synchronize).
                unsafe {
                    let _ = result::event::destroy(end);
                }
                timed
            });
            // SAFETY: as above.
            unsafe {
                let _ = result::event::destroy(start);
            }
            chosen = fastest(&timings?).unwrap_or(0);
        }
        plan.algo = answers[chosen];
        Ok(Some(plan))
    }

    /// Timings (us) of every answer; an answer the library refuses to run gets none.
    ///
    /// # Safety
    /// As [`LtGemm::choose`]; `start` and `end` are events of this context.
    #[allow(clippy::too_many_arguments)]
    unsafe fn time_answers(
        &self,
        stream: sys::CUstream,
        plan: &LtPlan,
        answers: &[lt_sys::cublasLtMatmulAlgo_t],
        start: sys::CUevent,
        end: sys::CUevent,
        items: u64,
        queries: u64,
        scores: u64,
    ) -> Result<Vec<Vec<f32>>, CudaError> {
        let mut timings = Vec::with_capacity(answers.len());
        for algo in answers {
            let mut times = Vec::with_capacity(TIMED_REPS);
            // SAFETY: forwarded from the caller.
            if unsafe { self.matmul(stream, plan, algo, items, queries, scores) }.is_ok() {
                for _ in 0..TIMED_REPS {
                    // SAFETY: events and stream of this context; the end event is
                    // synchronized before its time is read.
                    unsafe {
                        result::event::record(start, stream)?;
                        self.matmul(stream, plan, algo, items, queries, scores)?;
                        result::event::record(end, stream)?;
                        result::event::synchronize(end)?;
                        times.push(result::event::elapsed(start, end)? * 1e3);
                    }
                }
            }
            timings.push(times);
        }
        Ok(timings)
    }
}

/// Scores of a batch of more than [`SMALL_BATCH`] queries (the n > SMALL_BATCH branch of
/// `enqueue_scores`): the fp32 queries converted to fp16 into `queries_half`, then the GEMM
/// into `scores` (`[n, score_row_stride(n_items)]`, already sized by the caller).
#[allow(clippy::too_many_arguments)]
pub(crate) fn enqueue_batch_scores(
    cuda: &Cuda,
    blas: &Blas,
    items: &CudaBuffer<u16>,
    n_items: usize,
    dim: usize,
    queries: &CudaBuffer<f32>,
    n: usize,
    queries_half: &mut CudaBuffer<u16>,
    scores: &mut CudaBuffer<u16>,
    gemm: ScoreGemm,
    queries_half_ready: bool,
) -> Result<(), CudaError> {
    let ld = score_row_stride(n_items);
    for (end, len) in [
        (n * ld, scores.len()),
        (ld * dim, items.len()),
        (n * dim, queries.len()),
    ] {
        if len < end {
            return Err(CudaError::OutOfBounds { end, len });
        }
    }
    if queries_half_ready {
        // The fusion kernel already wrote the fp16 rows (`GpuPath` without the cache).
        if queries_half.len() < n * dim {
            return Err(CudaError::OutOfBounds {
                end: n * dim,
                len: queries_half.len(),
            });
        }
    } else {
        cuda.ensure_len(queries_half, n * dim)?;
        let (src, dst, len) = (
            queries.device_ptr(),
            queries_half.device_ptr(),
            (n * dim) as u64,
        );
        let mut params = [arg(&src), arg(&dst), arg(&len)];
        // SAFETY: both buffers hold n * dim elements.
        unsafe {
            cuda.launch(
                &cuda.kernels.f32_to_f16,
                ((n * dim).div_ceil(256).min(4096) as u32, 1, 1),
                (256, 1, 1),
                0,
                &mut params,
            )?;
        }
    }
    if gemm == ScoreGemm::Measured
        && let Some(lt) = &blas.lt
    {
        cuda.bind()?;
        let shape = GemmShape {
            queries: n,
            dim,
            ld,
        };
        // SAFETY: sizes checked above; everything runs on the device's stream.
        let enqueued = unsafe {
            lt.enqueue(
                cuda.cu_stream(),
                shape,
                items.device_ptr(),
                queries_half.device_ptr(),
                scores.device_ptr(),
            )?
        };
        if enqueued {
            return Ok(());
        }
    }
    let (alpha, beta) = (1.0f32, 0.0f32);
    // Row-major scores [n, ld] are column-major [ld, n] = items^T (dim x n_items,
    // column-major [dim, n_items] read transposed) times queries ([dim, n]).
    // SAFETY: shapes and leading dimensions match the sizes checked above.
    unsafe {
        cuda.bind()?;
        blas_sys::cublasGemmEx(
            blas.handle(),
            blas_sys::cublasOperation_t::CUBLAS_OP_T,
            blas_sys::cublasOperation_t::CUBLAS_OP_N,
            ld as i32,
            n as i32,
            dim as i32,
            &alpha as *const f32 as *const c_void,
            items.device_ptr() as *const c_void,
            blas_sys::cudaDataType::CUDA_R_16F,
            dim as i32,
            queries_half.device_ptr() as *const c_void,
            blas_sys::cudaDataType::CUDA_R_16F,
            dim as i32,
            &beta as *const f32 as *const c_void,
            scores.device_ptr() as *mut c_void,
            blas_sys::cudaDataType::CUDA_R_16F,
            ld as i32,
            blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
        .result()
        .map_err(CudaError::blas)
    }
}

/// [`score_all_items`](crate::score_all_items) with a chosen GEMM for batches beyond the
/// small-batch kernel (smaller batches and machines without cuBLAS use the crate's
/// kernels either way).
pub fn score_all_items_with(
    cuda: &Cuda,
    tables: &DeviceTables,
    queries: &CudaBuffer<f32>,
    n: usize,
    scratch: &mut CudaBuffer<u16>,
    out: &mut CudaBuffer<u16>,
    gemm: ScoreGemm,
) -> Result<(), CudaError> {
    let dim = tables.dim();
    if queries.len() < n * dim {
        return Err(CudaError::OutOfBounds {
            end: n * dim,
            len: queries.len(),
        });
    }
    match &cuda.blas {
        Some(blas) if n > SMALL_BATCH && gemm == ScoreGemm::GemmEx => {
            let n_items = tables.n_items();
            cuda.ensure_len(out, n * score_row_stride(n_items))?;
            enqueue_batch_scores(
                cuda,
                blas,
                tables.items(),
                n_items,
                dim,
                queries,
                n,
                scratch,
                out,
                gemm,
                false,
            )
        }
        _ => enqueue_scores(
            cuda,
            tables.items(),
            tables.n_items(),
            dim,
            queries,
            n,
            scratch,
            out,
            false,
        ),
    }
}

/// Whether `topk_filter_batch` reads the rows last-first. Results are the same either way;
/// measured by `tools/gemm_topk_probe.cu` (rows the GEMM wrote last may still be in L2).
pub(crate) const LAST_ROWS_FIRST: bool = false;

/// Arguments of `topk_filter_batch` (the large-batch dispatch of `enqueue_top_k`).
pub(crate) struct BatchFilter {
    pub scores: u64,
    pub ld: u32,
    pub n_items: u32,
    pub exclude: u64,
    pub seen_offsets: u64,
    pub seen_lens: u64,
    pub seen_items: u64,
    pub k: u32,
    pub capacity: u32,
    pub exact_only: u32,
    pub ids: u64,
    pub out_scores: u64,
    /// Rows (blocks).
    pub rows: u32,
    /// Dynamic shared memory per block.
    pub shared_bytes: u32,
}

/// Launches `topk_filter_batch` (256 threads per row, several blocks per SM).
///
/// # Safety
/// The addresses must be valid as `enqueue_top_k` checks them: `scores` `[rows, ld]` fp16,
/// `ids` / `out_scores` `[rows, k]`, the exclusion users rows of the seen tables (or null),
/// `shared_bytes` = `topk_filter_shared_bytes(n_items, k)`.
pub(crate) unsafe fn launch_batch_filter(cuda: &Cuda, f: &BatchFilter) -> Result<(), CudaError> {
    let last_rows_first = u32::from(LAST_ROWS_FIRST);
    let mut params = [
        arg(&f.scores),
        arg(&f.ld),
        arg(&f.n_items),
        arg(&f.exclude),
        arg(&f.seen_offsets),
        arg(&f.seen_lens),
        arg(&f.seen_items),
        arg(&f.k),
        arg(&f.capacity),
        arg(&f.exact_only),
        arg(&last_rows_first),
        arg(&f.ids),
        arg(&f.out_scores),
    ];
    // SAFETY: parameters in the kernel's order and types; validity from the caller.
    unsafe {
        cuda.launch(
            &cuda.kernels.topk_filter_batch,
            (f.rows, 1, 1),
            (256, 1, 1),
            f.shared_bytes,
            &mut params,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fastest_median_wins_and_ties_keep_the_heuristic_order() {
        let timings = vec![
            vec![120.0, 110.0, 130.0],
            vec![109.0, 111.0, 108.0],
            vec![],
            vec![109.0, 112.0, 100.0],
        ];
        // Medians 120, 109, none, 109: the first of the two 109s.
        assert_eq!(fastest(&timings), Some(1));
        assert_eq!(fastest(&[vec![], vec![f32::NAN]]), None);
        assert_eq!(fastest(&[]), None);
        assert_eq!(fastest(&[vec![f32::INFINITY, 5.0]]), Some(0));
    }

    #[test]
    fn median_ignores_non_finite_timings() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0]), Some(4.0));
        assert_eq!(median(&[f32::NAN, 7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn gemm_shapes_differ_by_every_dimension() {
        let base = GemmShape {
            queries: 1000,
            dim: 384,
            ld: 62424,
        };
        let mut set = std::collections::HashSet::new();
        set.insert(base);
        assert!(set.insert(GemmShape {
            queries: 999,
            ..base
        }));
        assert!(set.insert(GemmShape { dim: 256, ..base }));
        assert!(set.insert(GemmShape { ld: 62432, ..base }));
        assert!(!set.insert(base));
    }
}
