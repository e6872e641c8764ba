//! The similarity stage at batch 1 as one kernel (`cuda/similarity_one.cu`): the scores of
//! one query against every item and the exact top-k of them, seen items excluded, with the
//! selection spread over the scoring blocks (each sorts its slice and adds to a global key
//! histogram; the last block to finish gathers the few entries at or above the k-th best
//! key's bin and sorts them). Selects exactly what [`crate::TopKStrategy::ExactRadix`]
//! selects on the same fp16 scores, and writes those scores as the two-kernel path does.
//!
//! [`OnePass::Int8`] (the stage's default) scores an int8 copy of the items first (L2-resident
//! at seed scale; see [`crate::quantized`]) and rescores only the items its proven bounds
//! cannot rule out with the fp16 pass's arithmetic: the same ids and scores, without the
//! per-item score row. In a `GpuPath` at batch 1 the kernel also fuses the query itself
//! ([`FoldedFusion`]).

use crate::CudaError;
use crate::device::{Cuda, CudaBuffer, arg};
use crate::quantized::BOUND_FLOATS;
use crate::similarity::{MAX_CANDIDATES, score_row_stride};

/// Threads per block of `similarity_top_k_one`: 8 scoring warps and one seen-list warp.
const THREADS: u32 = 288;
/// Items per block at most (the kernel's `MAX_SLICE`: one thread per item in its rank sort).
const MAX_SLICE: usize = 256;
/// Slices are sized so the grid is about this many blocks: three resident per SM on the
/// H100's 132 SMs (the kernel's launch bounds), one wave, as the plain batch-1 GEMV.
const TARGET_BLOCKS: usize = 132 * 3;
/// Workspace words before the slices' lists: the 4096-bin histogram, the ticket, spare.
const LISTS_OFFSET: usize = 4096 + 16;
/// Workspace words per slice after the lists (the int8 pass's heads and counts).
const PER_SLICE_WORDS: usize = 4 + 2 + 1;
/// Widest query the kernel holds in shared memory (its `MAX_DIM`).
const MAX_DIM: usize = 512;
/// Phase-mark words per block of a traced launch (see [`SimilarityOne::enqueue_traced`]).
pub(crate) const TRACE_WORDS: usize = 8;

/// How the kernel splits a catalog into per-block slices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SlicePlan {
    /// Items per block: a multiple of 32, at most [`MAX_SLICE`].
    pub slice: usize,
    /// Blocks: `n_items.div_ceil(slice)`, so the last slice may be short.
    pub blocks: usize,
}

impl SlicePlan {
    /// The plan for `n_items` (at least 1) items.
    pub(crate) fn new(n_items: usize) -> SlicePlan {
        let slice = n_items.div_ceil(TARGET_BLOCKS).next_multiple_of(32);
        SlicePlan::with_slice(n_items, slice)
    }

    /// `slice` items per block (rounded up to a multiple of 32 within the kernel's limits).
    pub(crate) fn with_slice(n_items: usize, slice: usize) -> SlicePlan {
        let slice = slice.next_multiple_of(32).clamp(32, MAX_SLICE);
        SlicePlan {
            slice,
            blocks: n_items.div_ceil(slice).max(1),
        }
    }

    /// Workspace words the kernel needs: histogram, ticket, every slice's sorted list, and
    /// per slice the int8 pass's four lower-key heads, two exact keys and eligible count.
    pub(crate) fn workspace_words(&self) -> usize {
        LISTS_OFFSET + self.blocks * (self.slice + PER_SLICE_WORDS)
    }
}

/// Whether the fused kernel serves a selection: a non-empty catalog whose slice indices fit
/// its 32-bit arithmetic, a width that is a multiple of 128 up to 512, and 1 <= k <= 1024.
pub(crate) fn supports(n_items: usize, dim: usize, k: usize) -> bool {
    n_items > 0
        && n_items < (u32::MAX / 2) as usize
        && dim > 0
        && dim.is_multiple_of(128)
        && dim <= MAX_DIM
        && (1..=MAX_CANDIDATES).contains(&k)
}

/// Device addresses of a seen-item source as `topk_filter` reads it: `users[0]` is the
/// query's row (or [`crate::NO_ITEM`]), whose items are `items[offsets[row] ..][.. lens[row]]`.
/// All zero: no exclusion.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SeenSource {
    pub users: u64,
    pub offsets: u64,
    pub lens: u64,
    pub items: u64,
}

/// Scratch of the fused kernel that lives across launches: zero when allocated, and every
/// launch leaves its histogram and ticket zero again, so launches (and graph replays) need
/// no memset in between.
pub(crate) struct FusedWorkspace {
    words: CudaBuffer<u32>,
}

impl FusedWorkspace {
    pub(crate) fn new(cuda: &Cuda) -> Result<FusedWorkspace, CudaError> {
        Ok(FusedWorkspace {
            words: cuda.alloc(0)?,
        })
    }

    /// Makes room for `words`; a new allocation is zeroed (on the stream, before any launch
    /// that uses it).
    fn ensure(&mut self, cuda: &Cuda, words: usize) -> Result<(), CudaError> {
        if words > self.words.len() {
            let mut grown = cuda.alloc::<u32>(words)?;
            cuda.memset_zero(&mut grown)?;
            self.words = grown;
        }
        Ok(())
    }

    pub(crate) fn device_ptr(&self) -> u64 {
        self.words.device_ptr()
    }

    pub(crate) fn allocated_bytes(&self) -> usize {
        self.words.allocated_bytes()
    }
}

/// Where the fused kernel writes.
pub(crate) struct FusedOutputs<'a> {
    /// All scores, `[score_row_stride(n_items)]` fp16 (padding untouched); written by the
    /// fp16 pass only.
    pub scores: &'a mut CudaBuffer<u16>,
    pub ids: &'a mut CudaBuffer<u32>,
    pub top_scores: &'a mut CudaBuffer<f32>,
}

/// Which first pass the batch-1 kernel reads. Both select the same items with the same
/// scores (the int8 pass rescores its survivors with the fp16 pass's arithmetic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnePass {
    /// The int8 copy of the items (24 MB at seed scale, L2-resident between queries), then
    /// the fp16 rows of the items its bounds cannot rule out. No per-item score row.
    #[default]
    Int8,
    /// Every fp16 row (48 MB at seed scale), writing every item's score.
    Fp16,
}

/// The fusion stage folded into the batch-1 kernel, laid out as `Fold` in
/// `cuda/similarity_one.cu` (passed by value): the query embedding, the user table, the
/// fusion records (`[offsets; 2][members]`), alpha, and the `fused` row the rerank reads.
/// All zero: no fold (the kernel reads an already fused query).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FoldedFusion {
    pub query: u64,
    pub users: u64,
    pub records: u64,
    pub alpha: f32,
    pub fused: u64,
}

/// The int8 item table for [`OnePass::Int8`]: `[n_items, dim]` codes and `[n_items, 4]`
/// bounds, as [`crate::quantized::quantize_rows`] makes them.
#[derive(Clone, Copy)]
pub(crate) struct Int8Items<'a> {
    pub codes: &'a CudaBuffer<u8>,
    pub bounds: &'a CudaBuffer<f32>,
}

/// Enqueues `similarity_top_k_one` (or, with `int8`, `similarity_top_k_one_int8`): scores
/// of the fp32 query at device address `query` (`dim` floats) against `items`
/// (`[n_items, dim]` fp16) and the `k` best eligible items. The caller checks [`supports`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn enqueue_fused(
    cuda: &Cuda,
    items: &CudaBuffer<u16>,
    int8: Option<Int8Items<'_>>,
    fold: FoldedFusion,
    n_items: usize,
    dim: usize,
    query: u64,
    seen: SeenSource,
    k: usize,
    workspace: &mut FusedWorkspace,
    out: FusedOutputs<'_>,
    slice: Option<usize>,
    trace: Option<&mut CudaBuffer<u32>>,
) -> Result<(), CudaError> {
    if !supports(n_items, dim, k) {
        return Err(CudaError::Unsupported(format!(
            "the fused batch-1 similarity needs 1 <= k <= {MAX_CANDIDATES}, a width that is a multiple of 128 up to {MAX_DIM} and a non-empty catalog; got k {k}, width {dim}, {n_items} items"
        )));
    }
    if items.len() < n_items * dim {
        return Err(CudaError::OutOfBounds {
            end: n_items * dim,
            len: items.len(),
        });
    }
    if let Some(int8) = int8 {
        for (len, needed) in [
            (int8.codes.len(), n_items * dim),
            (int8.bounds.len(), n_items * BOUND_FLOATS),
        ] {
            if len < needed {
                return Err(CudaError::OutOfBounds { end: needed, len });
            }
        }
    }
    let plan = slice.map_or_else(
        || SlicePlan::new(n_items),
        |slice| SlicePlan::with_slice(n_items, slice),
    );
    workspace.ensure(cuda, plan.workspace_words())?;
    let trace_ptr = match trace {
        Some(trace) => {
            cuda.ensure_len(trace, (plan.blocks + 1) * TRACE_WORDS)?;
            trace.device_ptr()
        }
        None => 0,
    };
    if int8.is_none() {
        cuda.ensure_len(out.scores, score_row_stride(n_items))?;
    }
    cuda.ensure_len(out.ids, k)?;
    cuda.ensure_len(out.top_scores, k)?;
    let (items_ptr, n_items_u, dim_u, slice_u) = (
        items.device_ptr(),
        n_items as u32,
        dim as u32,
        plan.slice as u32,
    );
    let (k_u, scores_ptr, workspace_ptr) =
        (k as u32, out.scores.device_ptr(), workspace.device_ptr());
    let (ids_ptr, top_ptr) = (out.ids.device_ptr(), out.top_scores.device_ptr());
    let (codes_ptr, bounds_ptr) = int8.map_or((0, 0), |int8| {
        (int8.codes.device_ptr(), int8.bounds.device_ptr())
    });
    let mut params = [
        arg(&items_ptr),
        arg(&codes_ptr),
        arg(&bounds_ptr),
        arg(&n_items_u),
        arg(&query),
        arg(&dim_u),
        arg(&slice_u),
        arg(&seen.users),
        arg(&seen.offsets),
        arg(&seen.lens),
        arg(&seen.items),
        arg(&k_u),
        arg(&scores_ptr),
        arg(&workspace_ptr),
        arg(&ids_ptr),
        arg(&top_ptr),
        arg(&fold),
        arg(&trace_ptr),
    ];
    let function = if int8.is_some() {
        &cuda.kernels.similarity_top_k_one_int8
    } else {
        &cuda.kernels.similarity_top_k_one
    };
    // SAFETY: parameters match both builds of the kernel; items hold n_items * dim halves,
    // the query `dim` floats (the caller's buffer), scores a row of score_row_stride(n_items)
    // (fp16 build), the codes n_items * dim bytes with 16-byte aligned rows (dim a multiple of
    // 128) and the bounds n_items * 4 floats (int8 build; both checked above), the workspace
    // the plan's words (zeroed when allocated), the outputs k entries; the seen source is null
    // or a user row of its tables (the host writes only known rows or NO_ITEM); the trace,
    // when given, holds (blocks + 1) * TRACE_WORDS words; a fold, when its users pointer is
    // set, names the batch's query (dim floats), the user table, the fusion stage's records
    // of one query whose members are table rows, and a fused row of dim floats
    // (CudaFusion::fold_args).
    unsafe {
        cuda.launch(
            function,
            (plan.blocks as u32, 1, 1),
            (THREADS, 1, 1),
            0,
            &mut params,
        )
    }
}

/// The batch-1 similarity kernel on its own: scores of one query against an item table and
/// the top-k of them in one launch, for callers outside the stages (benchmarks, tests).
/// [`crate::CudaSimilarity`] runs the same kernel for batches of one query.
pub struct SimilarityOne {
    workspace: FusedWorkspace,
    /// `[user row 0, offset 0, length]`: an explicit seen list read as a one-user table.
    seen_header: CudaBuffer<u32>,
    item_scores: CudaBuffer<u16>,
    ids: CudaBuffer<u32>,
    scores: CudaBuffer<f32>,
    /// Items per block instead of the automatic plan (comparisons).
    slice: Option<usize>,
}

impl SimilarityOne {
    pub fn new(cuda: &Cuda) -> Result<SimilarityOne, CudaError> {
        Ok(SimilarityOne {
            workspace: FusedWorkspace::new(cuda)?,
            seen_header: cuda.alloc(3)?,
            item_scores: cuda.alloc(0)?,
            ids: cuda.alloc(0)?,
            scores: cuda.alloc(0)?,
            slice: None,
        })
    }

    /// Items per block (rounded up to a multiple of 32, at most 256) instead of the plan
    /// that fills one wave of the H100 (`None`), for comparisons; the results are the same.
    #[doc(hidden)]
    pub fn set_slice(&mut self, slice: Option<usize>) {
        self.slice = slice;
    }

    /// Enqueues the scores of `query` (`dim` floats) against `items` (`[n_items, dim]`
    /// fp16) and the selection of the `k` best, excluding the first `seen_len` ids of
    /// `seen` (repeats and ids past the catalog are allowed). Results in
    /// [`SimilarityOne::ids`] and [`SimilarityOne::scores`] (`[k]`, best first, ties by the
    /// smaller index, padded with [`crate::NO_ITEM`] / `-inf`), all scores in
    /// [`SimilarityOne::item_scores`].
    #[allow(clippy::too_many_arguments)]
    pub fn enqueue(
        &mut self,
        cuda: &Cuda,
        items: &CudaBuffer<u16>,
        n_items: usize,
        dim: usize,
        query: &CudaBuffer<f32>,
        seen: Option<(&CudaBuffer<u32>, usize)>,
        k: usize,
    ) -> Result<(), CudaError> {
        self.enqueue_traced(cuda, items, None, n_items, dim, query, seen, k, None)
    }

    /// [`SimilarityOne::enqueue`] from the int8 first pass ([`OnePass::Int8`]): `codes`
    /// (`[n_items, dim]`) and `bounds` (`[n_items, 4]`) as
    /// [`crate::quantized::quantize_rows`] makes them from the fp16 values of `items`. The
    /// same ids and scores; [`SimilarityOne::item_scores`] is not written.
    #[allow(clippy::too_many_arguments)]
    pub fn enqueue_int8(
        &mut self,
        cuda: &Cuda,
        items: &CudaBuffer<u16>,
        codes: &CudaBuffer<u8>,
        bounds: &CudaBuffer<f32>,
        n_items: usize,
        dim: usize,
        query: &CudaBuffer<f32>,
        seen: Option<(&CudaBuffer<u32>, usize)>,
        k: usize,
    ) -> Result<(), CudaError> {
        let int8 = Some((codes, bounds));
        self.enqueue_traced(cuda, items, int8, n_items, dim, query, seen, k, None)
    }

    /// [`SimilarityOne::enqueue`] that also writes phase marks into `trace` (resized to
    /// `(blocks + 1) * TRACE_WORDS` words), for a measurement harness. Block `b`'s words
    /// `8b ..`: global timer (low 32 bits of ns) at its start and after its ticket, then SM
    /// clock (low 32 bits) at its start, after the query barrier, after scoring (and the seen
    /// list), after its sort and histogram atomics, after its ticket. The last block's words
    /// after those of every block: clock after its fence, after finding the k-th bin, after
    /// gathering, at its end, global timer at its end, 1 when the tie fallback ran, the
    /// candidate count. With `int8` (codes, bounds) the int8 first pass runs
    /// ([`SimilarityOne::enqueue_int8`]).
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    pub fn enqueue_traced(
        &mut self,
        cuda: &Cuda,
        items: &CudaBuffer<u16>,
        int8: Option<(&CudaBuffer<u8>, &CudaBuffer<f32>)>,
        n_items: usize,
        dim: usize,
        query: &CudaBuffer<f32>,
        seen: Option<(&CudaBuffer<u32>, usize)>,
        k: usize,
        trace: Option<&mut CudaBuffer<u32>>,
    ) -> Result<(), CudaError> {
        if query.len() < dim {
            return Err(CudaError::OutOfBounds {
                end: dim,
                len: query.len(),
            });
        }
        let source = match seen {
            Some((list, len)) => {
                if len > list.len() || len > u32::MAX as usize {
                    return Err(CudaError::OutOfBounds {
                        end: len,
                        len: list.len(),
                    });
                }
                cuda.upload_at(&[0, 0, len as u32], &mut self.seen_header, 0)?;
                SeenSource {
                    users: self.seen_header.ptr_at(0),
                    offsets: self.seen_header.ptr_at(1),
                    lens: self.seen_header.ptr_at(2),
                    items: list.device_ptr(),
                }
            }
            None => SeenSource::default(),
        };
        enqueue_fused(
            cuda,
            items,
            int8.map(|(codes, bounds)| Int8Items { codes, bounds }),
            FoldedFusion::default(),
            n_items,
            dim,
            query.device_ptr(),
            source,
            k,
            &mut self.workspace,
            FusedOutputs {
                scores: &mut self.item_scores,
                ids: &mut self.ids,
                top_scores: &mut self.scores,
            },
            self.slice,
            trace,
        )
    }

    /// Every item's score, `[n_items.div_ceil(8) * 8]` fp16 bits (padding unspecified).
    pub fn item_scores(&self) -> &CudaBuffer<u16> {
        &self.item_scores
    }

    pub fn ids(&self) -> &CudaBuffer<u32> {
        &self.ids
    }

    pub fn scores(&self) -> &CudaBuffer<f32> {
        &self.scores
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_every_catalog_exactly_within_the_kernel_limits() {
        for n_items in (1..5000).chain([62_423, 100_000, 101_376, 101_377, 1_000_000]) {
            let plan = SlicePlan::new(n_items);
            assert!(plan.slice.is_multiple_of(32), "{n_items}: {plan:?}");
            assert!(
                (32..=MAX_SLICE).contains(&plan.slice),
                "{n_items}: {plan:?}"
            );
            assert!(plan.blocks * plan.slice >= n_items, "{n_items}: {plan:?}");
            assert!(
                (plan.blocks - 1) * plan.slice < n_items,
                "{n_items}: {plan:?}"
            );
            assert_eq!(
                plan.workspace_words(),
                LISTS_OFFSET + plan.blocks * (plan.slice + PER_SLICE_WORDS)
            );
        }
    }

    #[test]
    fn chosen_slices_are_rounded_into_the_kernel_limits() {
        assert_eq!(SlicePlan::with_slice(1000, 1).slice, 32);
        assert_eq!(SlicePlan::with_slice(1000, 100).slice, 128);
        assert_eq!(SlicePlan::with_slice(1000, 10_000).slice, MAX_SLICE);
        assert_eq!(SlicePlan::with_slice(1000, 128).blocks, 8);
    }

    #[test]
    fn the_seed_catalog_fills_one_wave_of_blocks() {
        let plan = SlicePlan::new(62_423);
        assert_eq!(plan.slice, 160);
        assert_eq!(plan.blocks, 391);
        assert!(plan.blocks <= TARGET_BLOCKS);
    }

    #[test]
    fn unsupported_shapes_are_refused() {
        assert!(supports(62_423, 384, 100));
        assert!(supports(1, 128, 1024));
        assert!(!supports(0, 384, 100));
        assert!(!supports(10, 384, 0));
        assert!(!supports(10, 384, 1025));
        assert!(!supports(10, 320, 10));
        assert!(!supports(10, 640, 10));
    }
}
