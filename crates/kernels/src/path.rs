//! The post-encoding path (fusion -> similarity -> rerank) replayed as CUDA graphs.

use std::collections::HashMap;

use cudarc::driver::{result, sys};

use hyperrec_stage::{Batch, Event, Stage, StageError};

use crate::device::{Cuda, CudaBuffer};
use crate::rerank::Overlap;
use crate::similarity::SMALL_BATCH;
use crate::{CudaCache, CudaError, CudaFusion, CudaRerank, CudaSimilarity, MemoryReport};

/// Graphs kept at most; shapes beyond this start the cache afresh.
const MAX_GRAPHS: usize = 64;

/// Stage ranges in the record arena start at multiples of this many words (128 bytes).
const ARENA_ALIGN_WORDS: usize = 32;

/// The stages' per-batch records of a path, laid out in one device buffer (allocated on the
/// first batch) so that they travel in one copy.
#[derive(Default)]
struct RecordArena {
    host: Vec<u32>,
    device: Option<CudaBuffer<u32>>,
}

/// An instantiated graph and the graph it came from.
struct Captured {
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
}

// SAFETY: graph handles are plain driver objects; they are only launched on the device's
// one stream through `&mut GpuPath`.
unsafe impl Send for Captured {}

impl Drop for Captured {
    fn drop(&mut self) {
        // SAFETY: created by instantiate / end_capture, destroyed once.
        unsafe {
            let _ = result::graph::exec_destroy(self.exec);
            let _ = result::graph::destroy(self.graph);
        }
    }
}

/// The GPU stages of the post-encoding path, run as one CUDA graph per batch shape.
///
/// Each stage's pre-launch host step (resolving users, whose seen set to exclude, compact
/// per-query rerank records) runs first and their records go to the device in one copy,
/// then the device work of all three stages is one graph launch: a few kernels (and at
/// large batches a GEMM) with no launch gaps and no host synchronization (a batch of one
/// query without the cache: two kernels, the batch-1 similarity kernel fusing the query
/// itself); the host steps that only write notes (`excluded`, `sources`) run after the
/// launch, overlapped with the device. A graph is keyed by
/// everything its launches bake in (batch size, candidates, results, slots, the device
/// addresses of every buffer involved, the tables' generation), so a batch of a new shape
/// or after the tables grew runs eagerly once and is captured for the next time; batches
/// of a size bucket that the pipeline keeps one [`Batch`] for replay the same graph.
///
/// `run` leaves results on the device; per-stage timings are not available inside a graph
/// (run the stages one by one with marks for those).
pub struct GpuPath {
    pub fusion: CudaFusion,
    /// The temporal cache between fusion and similarity (see [`GpuPath::with_cache`]).
    pub cache: Option<CudaCache>,
    pub similarity: CudaSimilarity,
    pub rerank: CudaRerank,
    graphs: HashMap<Vec<u64>, Captured>,
    /// Every stage's per-batch records in one device buffer, uploaded in one copy.
    arena: RecordArena,
    /// Whether the batch-1 rerank starts while the similarity kernel finishes (a
    /// programmatic dependent launch); off only to measure what that overlap gains.
    rerank_overlap: bool,
    /// Graphs launched / captured since creation.
    replays: u64,
    captures: u64,
}

impl GpuPath {
    pub fn new(fusion: CudaFusion, similarity: CudaSimilarity, rerank: CudaRerank) -> GpuPath {
        GpuPath {
            fusion,
            cache: None,
            similarity,
            rerank,
            graphs: HashMap::new(),
            arena: RecordArena::default(),
            rerank_overlap: true,
            replays: 0,
            captures: 0,
        }
    }

    /// The path with the temporal cache between fusion and similarity, and a finished
    /// cache rebuild swapped in at the start of a batch. With the embedding row source the
    /// history term is linear in the embeddings, so the path folds it into the query
    /// (`fused + hw/|H| sum w_h e_h`, scored by the same GEMM) instead of writing and
    /// reading an `[n, n_items]` prior; with a custom source the cache writes `item_prior`
    /// and the similarity adds it.
    pub fn with_cache(
        fusion: CudaFusion,
        cache: CudaCache,
        similarity: CudaSimilarity,
        rerank: CudaRerank,
    ) -> GpuPath {
        let mut cache = cache;
        cache.set_fold(true);
        GpuPath {
            cache: Some(cache),
            ..GpuPath::new(fusion, similarity, rerank)
        }
    }

    /// Runs fusion, (cache,) similarity and rerank on `batch` (whose `query_embeddings` are set);
    /// enqueues only: synchronize (or download) before reading results.
    pub fn run(&mut self, cuda: &Cuda, batch: &mut Batch<Cuda>) -> Result<(), StageError> {
        self.fusion.plan(batch);
        if let Some(cache) = &mut self.cache {
            cache.prepare(cuda, batch)?;
        }
        self.similarity.plan(batch);
        self.rerank.plan(cuda, batch)?;
        self.upload_records(cuda, batch.len())?;
        let key = self.key(batch);
        if let Some(captured) = self.graphs.get(&key) {
            // The graph writes the outputs in place, but a batch of another shape may have
            // run eagerly on these buffers since and changed their lengths: give them back
            // the lengths of this shape (their capacity already fits it: same addresses).
            let (n, results, slots) = (batch.len(), batch.results, batch.slots);
            cuda.ensure_len(&mut batch.candidate_ids, n * batch.candidates)?;
            cuda.ensure_len(&mut batch.candidate_scores, n * batch.candidates)?;
            cuda.ensure_len(&mut batch.result_ids, n * results)?;
            cuda.ensure_len(&mut batch.result_scores, n * results)?;
            cuda.ensure_len(&mut batch.result_retrieval_scores, n * results)?;
            cuda.ensure_len(&mut batch.result_attributions, n * results * slots)?;
            cuda.bind()?;
            // SAFETY: the graph's launches reference exactly the buffers named in `key`,
            // which are still allocated at those addresses.
            unsafe { result::graph::launch(captured.exec, cuda.cu_stream()) }
                .map_err(CudaError::from)?;
            self.replays += 1;
            self.fill_notes(batch);
            return Ok(());
        }
        // A new shape (or moved buffers): run eagerly, which also gives every buffer its
        // final size, then capture the same launches for the next batch of this shape.
        self.enqueue_all(cuda, batch)?;
        let key = self.key(batch);
        let captured = self.capture(cuda, batch)?;
        if self.graphs.len() >= MAX_GRAPHS {
            self.graphs.clear();
        }
        self.graphs.insert(key, captured);
        self.captures += 1;
        self.fill_notes(batch);
        Ok(())
    }

    /// Uploads the planned records of fusion, similarity and rerank in one copy into the
    /// arena and points each stage at its range. A range's offset depends only on the
    /// batch size and the records' sizes rounded up (spare room), so batches of one shape
    /// keep the addresses their captured graph bakes in.
    fn upload_records(&mut self, cuda: &Cuda, n: usize) -> Result<(), StageError> {
        let rooms = [
            self.fusion.records_mut().len().next_power_of_two(),
            n,
            self.rerank.records_room(n),
        ];
        let parts = [
            self.fusion.records_mut(),
            self.similarity.records_mut(),
            self.rerank.records_mut(),
        ];
        let arena = &mut self.arena;
        arena.host.clear();
        let mut offsets = [0usize; 3];
        let mut end = 0;
        for ((part, room), offset) in parts.iter().zip(rooms).zip(&mut offsets) {
            *offset = end;
            arena.host.resize(end, 0);
            arena.host.extend_from_slice(part.host());
            end = (end + room.max(part.len())).next_multiple_of(ARENA_ALIGN_WORDS);
        }
        let device = match &mut arena.device {
            Some(device) => device,
            None => arena.device.insert(cuda.alloc(end)?),
        };
        cuda.ensure_len(device, end)?;
        cuda.upload_at(&arena.host, device, 0)?;
        for (part, offset) in parts.into_iter().zip(offsets) {
            part.place(device.ptr_at(offset));
        }
        Ok(())
    }

    /// The host steps that only write notes (`excluded`, `sources`): run after the launch,
    /// while the device works, since nothing on the device waits for them.
    fn fill_notes(&self, batch: &mut Batch<Cuda>) {
        self.similarity.fill_notes(batch);
        self.rerank.fill_notes(batch);
    }

    /// Runs only the host steps of [`GpuPath::run`] (resolving users, exclusion lists,
    /// sources, and their upload) and returns the wall time of each: fusion, cache (zero
    /// without one), similarity, rerank, the records' one upload (these five run before the
    /// launch), and the notes written after it (`excluded`, `sources`: overlapped with the
    /// device work). For benchmarks that separate host preparation from device time.
    #[doc(hidden)]
    pub fn prepare_timed(
        &mut self,
        cuda: &Cuda,
        batch: &mut Batch<Cuda>,
    ) -> Result<[std::time::Duration; 6], StageError> {
        let start = std::time::Instant::now();
        self.fusion.plan(batch);
        let fused = std::time::Instant::now();
        if let Some(cache) = &mut self.cache {
            cache.prepare(cuda, batch)?;
        }
        let cached = std::time::Instant::now();
        self.similarity.plan(batch);
        let similar = std::time::Instant::now();
        self.rerank.plan(cuda, batch)?;
        let reranked = std::time::Instant::now();
        self.upload_records(cuda, batch.len())?;
        let uploaded = std::time::Instant::now();
        self.fill_notes(batch);
        let noted = std::time::Instant::now();
        Ok([
            fused - start,
            cached - fused,
            similar - cached,
            reranked - similar,
            uploaded - reranked,
            noted - uploaded,
        ])
    }

    fn enqueue_all(&mut self, cuda: &Cuda, batch: &mut Batch<Cuda>) -> Result<(), StageError> {
        // One query without the cache: the batch-1 similarity kernel fuses the query itself
        // (the fusion stage's arithmetic, shared), one launch fewer on the latency path.
        if self.cache.is_none() && self.similarity.fused_batch_one(batch) {
            let fold = self.fusion.fold_args(cuda, batch)?;
            self.similarity.enqueue_folded(cuda, batch, fold)?;
            // The rerank gathers its history and context rows while the similarity kernel
            // finishes its selection (its last block), then waits for the candidates.
            let overlap = if self.rerank_overlap {
                Overlap::PreviousKernel
            } else {
                Overlap::None
            };
            return self.rerank.enqueue_with(cuda, batch, overlap);
        }
        // Without the cache (whose folded history term changes the queries after fusion),
        // a batch that the similarity scores by GEMM reads fp16 queries: the fusion kernel
        // writes them directly, one kernel fewer than fusing then converting.
        let fusion_writes_half =
            self.cache.is_none() && batch.len() > SMALL_BATCH && cuda.blas.is_some();
        if fusion_writes_half {
            self.fusion
                .enqueue_into(cuda, batch, Some(self.similarity.fused_half_mut()))?;
        } else {
            self.fusion.enqueue(cuda, batch)?;
        }
        if let Some(cache) = &mut self.cache {
            cache.enqueue(cuda, batch)?;
        }
        let offset = self.cache.as_ref().and_then(|cache| cache.query_offset());
        self.similarity
            .enqueue_with(cuda, batch, offset, fusion_writes_half)?;
        self.rerank.enqueue(cuda, batch)
    }

    fn capture(&mut self, cuda: &Cuda, batch: &mut Batch<Cuda>) -> Result<Captured, StageError> {
        cuda.bind()?;
        let stream = cuda.cu_stream();
        // SAFETY: capture on our own stream; every launch inside only uses buffers that the
        // eager run just sized, so nothing allocates while capturing.
        unsafe {
            result::stream::begin_capture(
                stream,
                sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
            .map_err(CudaError::from)?;
        }
        let enqueued = self.enqueue_all(cuda, batch);
        // SAFETY: ends the capture begun above, whatever happened inside.
        let graph = unsafe { result::stream::end_capture(stream) }.map_err(CudaError::from)?;
        enqueued?;
        // SAFETY: a complete graph from the capture.
        let exec = unsafe { result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0)) }
            .map_err(CudaError::from)?;
        Ok(Captured { graph, exec })
    }

    fn key(&self, batch: &Batch<Cuda>) -> Vec<u64> {
        let mut key = vec![
            batch.len() as u64,
            batch.results as u64,
            batch.candidates as u64,
            batch.slots as u64,
            batch.query_embeddings.device_ptr(),
            batch.fused.device_ptr(),
            batch.item_prior.device_ptr(),
            batch.item_prior.len() as u64,
            batch.candidate_ids.device_ptr(),
            batch.candidate_scores.device_ptr(),
            batch.result_ids.device_ptr(),
            batch.result_scores.device_ptr(),
            batch.result_retrieval_scores.device_ptr(),
            batch.result_attributions.device_ptr(),
            u64::from(self.rerank_overlap),
        ];
        key.extend(self.fusion.graph_key());
        if let Some(cache) = &self.cache {
            key.extend(cache.graph_key());
        }
        key.extend(self.similarity.graph_key());
        key.extend(self.rerank.graph_key());
        key
    }

    /// Turns the batch-1 rerank's overlap with the similarity kernel on (the default) or
    /// off, for benchmarks that measure it.
    #[doc(hidden)]
    pub fn set_rerank_overlap(&mut self, on: bool) {
        self.rerank_overlap = on;
    }

    /// (graph launches, captures) so far.
    pub fn graph_stats(&self) -> (u64, u64) {
        (self.replays, self.captures)
    }

    /// Forwards a real-time event to every stage (the shared device tables upload the
    /// user's rows once).
    pub fn observe(&mut self, cuda: &Cuda, event: &Event) -> Result<(), StageError> {
        self.fusion.observe(cuda, event)?;
        if let Some(cache) = &mut self.cache {
            cache.observe(cuda, event)?;
        }
        self.similarity.observe(cuda, event)?;
        self.rerank.observe(cuda, event)
    }

    /// Device bytes of the stages' own buffers (the shared tables report separately).
    pub fn memory_report(&self) -> MemoryReport {
        let arena = MemoryReport {
            workspace: self
                .arena
                .device
                .as_ref()
                .map_or(0, CudaBuffer::allocated_bytes),
            ..MemoryReport::default()
        };
        let stages = self
            .similarity
            .memory_report()
            .add(&self.rerank.memory_report())
            .add(&arena);
        match &self.cache {
            Some(cache) => stages.add(&cache.memory_report()),
            None => stages,
        }
    }
}
