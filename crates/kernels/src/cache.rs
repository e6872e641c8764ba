//! The temporal cache on the GPU: hot similarity rows in device memory, double-buffered and
//! rebuilt on a side stream, the history prior written into `item_prior`, and "similar to X"
//! answered from neighbours precomputed at each rebuild.
//!
//! # Representation (why int8)
//!
//! 10,000 hot rows of 62,423 items are 1.25 GB in fp16; two of them (double-buffering)
//! would not fit the 2 GB budget of the whole GPU path. Each row is stored as int8 with one
//! fp32 scale, `row[j] ~= scale * q[j]`, `scale = max_j |row[j]| / 127`: 624 MB per table,
//! 1.25 GB for both. The rounding error of one value is at most `scale / 2` (for cosine
//! rows, whose maximum is the item's own similarity ~1, about 0.004); the history prior,
//! `history_weight / |H| * sum w_h row_h` with `|w_h| <= 1`, is therefore within
//! `history_weight * (max scale / 2 + fp16 rounding)` of the CPU's f32 value, about
//! `1.2e-3` for the default weight 0.25 (the tests check `history_weight * 6e-3`).
//!
//! # Rebuild
//!
//! The hot set comes from the host-side popularity of the CPU cache ([`CacheHandle`]).
//! With [`RowSource::Embedding`] the rows are built on the GPU: the hot items' embeddings
//! are gathered, then per chunk of rows one fp16 GEMM (cuBLAS, fp32 accumulation) writes
//! the chunk into an fp16 scratch, which is quantized into the spare table, and the top
//! [`CudaCacheConfig::neighbours`] of each row (the item itself excluded) are selected by
//! the crate's top-K kernel. With [`RowSource::Custom`] (collaborative weights) the rows
//! come from the CPU cache's current hot table ([`CacheHandle::snapshot`]), uploaded chunk
//! by chunk through the same quantization and selection.
//!
//! All of it runs on a side stream into the spare buffer; queries keep reading the current
//! table, and [`CudaCache::poll`] (called at the start of every batch) swaps the tables
//! once the rebuild's event has completed. Before writing the spare buffer a rebuild waits
//! (on the device, not the host) for every query enqueued before the last swap, which may
//! still read it.
//!
//! # Misses
//!
//! A history item that is not hot needs its row computed. For the embedding source the rows
//! are linear in the embedding, so each query's non-hot history is combined into one vector
//! and scored against every item (the similarity GEMM or small-batch kernel). For a custom
//! source the host provider accumulates the miss rows, as the CPU cache does, and they are
//! uploaded into `item_prior` before the hot rows are added.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::cublas::sys as blas_sys;
use cudarc::driver::{CudaEvent, CudaStream};
use half::f16;

use hyperrec_cache::{CacheConfig, CacheHandle, CacheLookup, HotTable, RowSource};
use hyperrec_catalog::{ItemEmbeddings, SharedUsers};
use hyperrec_stage::{Batch, Event, ItemId, ItemIndex, Stage, StageError};

use crate::device::{Cuda, CudaBuffer, TOPK_MAX_SHARED_BYTES, arg};
use crate::similarity::{
    MAX_CANDIDATES, TopKStrategy, enqueue_scores, enqueue_top_k, filter_capacity, score_row_stride,
    topk_filter_shared_bytes, topk_shared_bytes,
};
use crate::{CudaError, MemoryReport, NO_ITEM, SharedTables};

/// Rating that neither pulls nor pushes in the history term (as the CPU cache).
const NEUTRAL_RATING: f32 = 3.0;

/// Settings of [`CudaCache`].
#[derive(Clone, Debug)]
pub struct CudaCacheConfig {
    /// Rows of each table (capped at the catalog size).
    pub hot_items: usize,
    /// Most recent history entries in the history term.
    pub history_len: usize,
    /// Scale of the history term (0 disables it).
    pub history_weight: f32,
    /// Neighbours precomputed per hot row at each rebuild, so "similar to X" with
    /// `k <= neighbours` is a host lookup (1..=1024).
    pub neighbours: usize,
    /// Rows per rebuild GEMM: the fp16 scratch holds `chunk_rows` full rows.
    pub chunk_rows: usize,
    /// External id of each item row, to map real-time events to items.
    pub item_ids: Option<Arc<[ItemId]>>,
}

impl CudaCacheConfig {
    /// The GPU settings matching a CPU cache's.
    pub fn from_cpu(config: &CacheConfig) -> CudaCacheConfig {
        CudaCacheConfig {
            hot_items: config.hot_items,
            history_len: config.history_len,
            history_weight: config.history_weight,
            item_ids: config.item_ids.clone(),
            ..CudaCacheConfig::default()
        }
    }
}

impl Default for CudaCacheConfig {
    fn default() -> Self {
        CudaCacheConfig {
            hot_items: 10_000,
            history_len: 50,
            history_weight: 0.25,
            neighbours: 100,
            chunk_rows: 512,
            item_ids: None,
        }
    }
}

/// Counters of a [`CudaCache`] since creation (lookups as defined by the CPU cache).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CudaCacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Rows of the table queries read now.
    pub hot_rows: usize,
    /// Wall time of the last completed rebuild, from its start to the swap being possible
    /// (measured when [`CudaCache::rebuild_blocking`] built it; otherwise up to the poll
    /// that noticed completion).
    pub last_rebuild: Option<Duration>,
    pub rebuilds: u64,
}

/// One generation of hot rows on the device.
struct DeviceHotTable {
    /// `[capacity, row_ld]` int8 (as bytes).
    rows: CudaBuffer<u8>,
    /// `[capacity]` per-row scales.
    scales: CudaBuffer<f32>,
    /// `[capacity]` hot item of each row.
    ids: CudaBuffer<u32>,
    /// `[capacity, neighbours]` precomputed neighbours (device side of the rebuild).
    neighbour_ids: CudaBuffer<u32>,
    neighbour_scores: CudaBuffer<f32>,
    /// Host: hot items in row order, each item's row, and the neighbours mirror.
    items: Vec<ItemIndex>,
    slot_of: Vec<u32>,
    host_neighbour_ids: Vec<u32>,
    host_neighbour_scores: Vec<f32>,
}

impl DeviceHotTable {
    fn new(
        cuda: &Cuda,
        capacity: usize,
        row_ld: usize,
        neighbours: usize,
        n_items: usize,
    ) -> Result<Self, CudaError> {
        Ok(DeviceHotTable {
            rows: cuda.alloc(capacity * row_ld)?,
            scales: cuda.alloc(capacity)?,
            ids: cuda.alloc(capacity)?,
            neighbour_ids: cuda.alloc(capacity * neighbours)?,
            neighbour_scores: cuda.alloc(capacity * neighbours)?,
            items: Vec::new(),
            slot_of: vec![u32::MAX; n_items],
            host_neighbour_ids: Vec::new(),
            host_neighbour_scores: Vec::new(),
        })
    }

    fn bytes(&self) -> usize {
        self.rows.allocated_bytes()
            + self.scales.allocated_bytes()
            + self.ids.allocated_bytes()
            + self.neighbour_ids.allocated_bytes()
            + self.neighbour_scores.allocated_bytes()
    }
}

/// A rebuild enqueued on the side stream.
struct Pending {
    done: CudaEvent,
    started: Instant,
    items: Vec<ItemIndex>,
}

/// GPU twin of `hyperrec_cache::TemporalCache` (`"cache"`): see the module docs.
///
/// Reads `notes[i].user`, `notes[i].cold_start`; writes `item_prior` (`[n, n_items]` f32,
/// or empty when no request of the batch gets a history term), which
/// [`CudaSimilarity`](crate::CudaSimilarity) adds to the scores.
pub struct CudaCache {
    tables: SharedTables,
    users: SharedUsers,
    items: Arc<ItemEmbeddings>,
    handle: CacheHandle,
    source: RowSource,
    config: CudaCacheConfig,
    n_items: usize,
    dim: usize,
    row_ld: usize,
    capacity: usize,
    /// `tables[front]` is read by queries, the other is the spare.
    buffers: [DeviceHotTable; 2],
    front: usize,
    side: Arc<CudaStream>,
    pending: Option<Pending>,
    /// Recorded on the main stream at each swap: the old front's last readers.
    released: Option<CudaEvent>,
    /// Rebuild scratch: hot embeddings `[capacity, dim]` fp16 and one chunk of fp16 rows.
    hot_embeddings: CudaBuffer<u16>,
    chunk: CudaBuffer<u16>,
    chunk_host: Vec<u16>,
    /// Per-batch host and device buffers of the history term.
    offsets_host: Vec<u32>,
    slots_host: Vec<u32>,
    weights_host: Vec<f32>,
    has_miss_host: Vec<u8>,
    /// Entries combined on the device into one vector per query: `[offsets[q]..offsets[q+1]]`.
    combine_offsets_host: Vec<u32>,
    combine_ids_host: Vec<u32>,
    combine_weights_host: Vec<f32>,
    miss_items: Vec<(usize, ItemIndex, f32)>,
    miss_rows_host: Vec<f32>,
    offsets: CudaBuffer<u32>,
    slots: CudaBuffer<u32>,
    weights: CudaBuffer<f32>,
    has_miss: CudaBuffer<u8>,
    combine_offsets: CudaBuffer<u32>,
    combine_ids: CudaBuffer<u32>,
    combine_weights: CudaBuffer<f32>,
    miss_vectors: CudaBuffer<f32>,
    miss_half: CudaBuffer<u16>,
    miss_scores: CudaBuffer<u16>,
    /// What the last `prepare` decided for `enqueue`: write a prior at all, score embedding
    /// misses, add host-computed miss rows.
    active: bool,
    gpu_misses: bool,
    host_misses: bool,
    /// Fold the whole history term of an embedding source into the query (set by
    /// `GpuPath::with_cache`, whose similarity adds the vector); `folded` says the last
    /// batch did.
    fold: bool,
    folded: bool,
    /// Scratch of the single-row "similar to X" slow path.
    one_row: CudaBuffer<u16>,
    one_col: CudaBuffer<u32>,
    one_query: CudaBuffer<f32>,
    one_query_half: CudaBuffer<u16>,
    one_ids: CudaBuffer<u32>,
    one_scores: CudaBuffer<f32>,
    item_index: Option<HashMap<ItemId, ItemIndex>>,
    stats: CudaCacheStats,
}

impl CudaCache {
    /// A GPU cache over the device `tables` (the same catalog as `items`), with popularity
    /// from `handle` (the CPU cache, which owns it) and rows from `source`. Builds the
    /// first table before returning (blocking), so queries hit from the start.
    pub fn new(
        cuda: &Cuda,
        tables: SharedTables,
        users: SharedUsers,
        items: Arc<ItemEmbeddings>,
        handle: CacheHandle,
        source: RowSource,
        config: CudaCacheConfig,
    ) -> Result<CudaCache, CudaError> {
        let (n_items, dim) = {
            let t = tables.lock();
            (t.n_items(), t.dim())
        };
        if n_items != items.len() || dim != items.dim() {
            return Err(CudaError::Unsupported(format!(
                "device tables hold {n_items} x {dim} items, the cache was given {} x {}",
                items.len(),
                items.dim()
            )));
        }
        if config.neighbours == 0 || config.neighbours > MAX_CANDIDATES {
            return Err(CudaError::Unsupported(format!(
                "neighbours must be in 1..={MAX_CANDIDATES}, got {}",
                config.neighbours
            )));
        }
        if !config.history_weight.is_finite() {
            return Err(CudaError::Unsupported(format!(
                "history weight must be finite, got {}",
                config.history_weight
            )));
        }
        if topk_shared_bytes(n_items) > TOPK_MAX_SHARED_BYTES {
            return Err(CudaError::Unsupported(format!(
                "{n_items} items exceed what the top-K kernel holds in shared memory"
            )));
        }
        if !dim.is_multiple_of(8) {
            return Err(CudaError::Unsupported(format!(
                "the cache needs an embedding width that is a multiple of 8, got {dim}"
            )));
        }
        let item_index = match &config.item_ids {
            Some(ids) if ids.len() != n_items => {
                return Err(CudaError::Unsupported(format!(
                    "{} item ids given for {n_items} items",
                    ids.len()
                )));
            }
            Some(ids) => Some(
                ids.iter()
                    .enumerate()
                    .map(|(row, &id)| (id, row as ItemIndex))
                    .collect(),
            ),
            None => None,
        };
        let capacity = config.hot_items.min(n_items);
        let row_ld = n_items.div_ceil(16) * 16;
        let chunk_rows = config.chunk_rows.clamp(1, capacity.max(1));
        let m = config.neighbours;
        let buffers = [
            DeviceHotTable::new(cuda, capacity, row_ld, m, n_items)?,
            DeviceHotTable::new(cuda, capacity, row_ld, m, n_items)?,
        ];
        let mut cache = CudaCache {
            tables,
            users,
            items,
            handle,
            source,
            n_items,
            dim,
            row_ld,
            capacity,
            buffers,
            front: 0,
            side: cuda.new_side_stream()?,
            pending: None,
            released: None,
            hot_embeddings: cuda.alloc(capacity * dim)?,
            chunk: cuda.alloc(chunk_rows * score_row_stride(n_items))?,
            chunk_host: Vec::new(),
            offsets_host: Vec::new(),
            slots_host: Vec::new(),
            weights_host: Vec::new(),
            has_miss_host: Vec::new(),
            combine_offsets_host: Vec::new(),
            combine_ids_host: Vec::new(),
            combine_weights_host: Vec::new(),
            miss_items: Vec::new(),
            miss_rows_host: Vec::new(),
            offsets: cuda.alloc(0)?,
            slots: cuda.alloc(0)?,
            weights: cuda.alloc(0)?,
            has_miss: cuda.alloc(0)?,
            combine_offsets: cuda.alloc(0)?,
            combine_ids: cuda.alloc(0)?,
            combine_weights: cuda.alloc(0)?,
            miss_vectors: cuda.alloc(0)?,
            miss_half: cuda.alloc(0)?,
            miss_scores: cuda.alloc(0)?,
            active: false,
            gpu_misses: false,
            host_misses: false,
            fold: false,
            folded: false,
            one_row: cuda.alloc(score_row_stride(n_items))?,
            one_col: cuda.alloc(1)?,
            one_query: cuda.alloc(dim)?,
            one_query_half: cuda.alloc(0)?,
            one_ids: cuda.alloc(0)?,
            one_scores: cuda.alloc(0)?,
            item_index,
            stats: CudaCacheStats::default(),
            config: CudaCacheConfig {
                chunk_rows,
                ..config
            },
        };
        cache.rebuild_blocking(cuda)?;
        Ok(cache)
    }

    /// The CPU cache handle whose popularity picks the hot set.
    pub fn handle(&self) -> &CacheHandle {
        &self.handle
    }

    /// Hot items of the table queries read now, in row order.
    pub fn hot_items(&self) -> &[ItemIndex] {
        &self.buffers[self.front].items
    }

    pub fn stats(&self) -> CudaCacheStats {
        CudaCacheStats {
            hot_rows: self.buffers[self.front].items.len(),
            ..self.stats
        }
    }

    /// Whether a rebuild is in flight.
    pub fn rebuilding(&self) -> bool {
        self.pending.is_some()
    }

    /// Starts a rebuild into the spare table on the side stream and returns at once
    /// (after the host part: for a custom source, uploading the CPU cache's current hot
    /// table). A rebuild already in flight is finished (waited for and swapped in) first.
    pub fn start_rebuild(&mut self, cuda: &Cuda) -> Result<(), CudaError> {
        if let Some(pending) = self.pending.take() {
            pending.done.synchronize().map_err(CudaError::from)?;
            self.finish(cuda, pending)?;
        }
        let started = Instant::now();
        let back = 1 - self.front;
        // Queries enqueued before the last swap may still read the spare.
        if let Some(released) = &self.released {
            self.side.wait(released).map_err(CudaError::from)?;
        }
        let items = match self.source.clone() {
            RowSource::Embedding => {
                let hot: Vec<ItemIndex> = self
                    .handle
                    .hottest(self.capacity)
                    .into_iter()
                    .map(|(item, _)| item)
                    .collect();
                self.enqueue_embedding_rows(cuda, back, &hot)?;
                hot
            }
            RowSource::Custom(_) => {
                let snapshot = self.handle.snapshot();
                self.upload_rows(cuda, back, &snapshot)?;
                snapshot.items()[..snapshot.items().len().min(self.capacity)].to_vec()
            }
        };
        let done = cuda.record_on(&self.side)?;
        self.pending = Some(Pending {
            done,
            started,
            items,
        });
        Ok(())
    }

    /// Uploads `table` (e.g. [`CacheHandle::snapshot`] of a CPU cache with collaborative
    /// rows) into the spare table and swaps it in once on the device; blocks the caller
    /// for the host-side conversion and copies, never the queries' stream.
    pub fn upload_snapshot(&mut self, cuda: &Cuda, table: &HotTable) -> Result<(), CudaError> {
        if let Some(pending) = self.pending.take() {
            pending.done.synchronize().map_err(CudaError::from)?;
            self.finish(cuda, pending)?;
        }
        let started = Instant::now();
        let back = 1 - self.front;
        if let Some(released) = &self.released {
            self.side.wait(released).map_err(CudaError::from)?;
        }
        self.upload_rows(cuda, back, table)?;
        let done = cuda.record_on(&self.side)?;
        self.pending = Some(Pending {
            done,
            started,
            items: table.items()[..table.items().len().min(self.capacity)].to_vec(),
        });
        Ok(())
    }

    /// Swaps in a finished rebuild; returns whether it did. Never waits.
    pub fn poll(&mut self, cuda: &Cuda) -> Result<bool, CudaError> {
        let ready = match &self.pending {
            Some(pending) => pending.done.try_is_complete().map_err(CudaError::from)?,
            None => false,
        };
        if !ready {
            return Ok(false);
        }
        if let Some(pending) = self.pending.take() {
            self.finish(cuda, pending)?;
        }
        Ok(true)
    }

    /// Rebuilds and swaps in before returning; returns the wall time from start to swap.
    pub fn rebuild_blocking(&mut self, cuda: &Cuda) -> Result<Duration, CudaError> {
        self.start_rebuild(cuda)?;
        if let Some(pending) = self.pending.take() {
            pending.done.synchronize().map_err(CudaError::from)?;
            let elapsed = pending.started.elapsed();
            self.finish(cuda, pending)?;
            self.stats.last_rebuild = Some(elapsed);
            return Ok(elapsed);
        }
        Ok(Duration::ZERO)
    }

    /// The spare table is complete: mirror its neighbours on the host and make it the
    /// front.
    fn finish(&mut self, cuda: &Cuda, pending: Pending) -> Result<(), CudaError> {
        let back = 1 - self.front;
        let m = self.config.neighbours;
        let n_hot = pending.items.len();
        let table = &mut self.buffers[back];
        table.host_neighbour_ids.resize(n_hot * m, NO_ITEM);
        table
            .host_neighbour_scores
            .resize(n_hot * m, f32::NEG_INFINITY);
        cuda.download_at_on(
            &self.side,
            &table.neighbour_ids,
            0,
            &mut table.host_neighbour_ids,
        )?;
        cuda.download_at_on(
            &self.side,
            &table.neighbour_scores,
            0,
            &mut table.host_neighbour_scores,
        )?;
        for &item in &table.items {
            if let Some(slot) = table.slot_of.get_mut(item as usize) {
                *slot = u32::MAX;
            }
        }
        for (slot, &item) in pending.items.iter().enumerate() {
            table.slot_of[item as usize] = slot as u32;
        }
        table.items = pending.items;
        self.front = back;
        // Queries enqueued from now on read the new front; the old one is free once the
        // main stream passes this point.
        self.released = Some(cuda.record_on(cuda.stream())?);
        self.stats.rebuilds += 1;
        self.stats.last_rebuild = Some(pending.started.elapsed());
        Ok(())
    }

    /// Rows of `hot` from the item embeddings into `buffers[back]`, on the side stream.
    fn enqueue_embedding_rows(
        &mut self,
        cuda: &Cuda,
        back: usize,
        hot: &[ItemIndex],
    ) -> Result<(), CudaError> {
        let Some(blas) = &cuda.blas else {
            return Err(CudaError::Unsupported(
                "building cache rows on the GPU needs cuBLAS".into(),
            ));
        };
        let n_hot = hot.len().min(self.capacity);
        if n_hot == 0 {
            return Ok(());
        }
        let shared_tables = self.tables.clone();
        let tables = shared_tables.lock();
        let (dim, n_items) = (self.dim, self.n_items);
        let ld = score_row_stride(n_items);
        cuda.upload_at_on(&self.side, &hot[..n_hot], &mut self.buffers[back].ids, 0)?;
        {
            let (items_ptr, dim_u, ids_ptr, n_u, out_ptr) = (
                tables.items().device_ptr(),
                dim as u32,
                self.buffers[back].ids.device_ptr(),
                n_hot as u32,
                self.hot_embeddings.device_ptr(),
            );
            let mut params = [
                arg(&items_ptr),
                arg(&dim_u),
                arg(&ids_ptr),
                arg(&n_u),
                arg(&out_ptr),
            ];
            // SAFETY: ids are item rows < n_items; hot_embeddings holds capacity rows.
            unsafe {
                cuda.launch_on(
                    &self.side,
                    &cuda.kernels.gather_rows,
                    ((n_hot * dim / 8).div_ceil(256).min(65535) as u32, 1, 1),
                    (256, 1, 1),
                    0,
                    &mut params,
                )?;
            }
        }
        // cuBLAS follows the stream set on its handle: the side stream for these GEMMs,
        // the main stream again afterwards (the stages run on the same thread).
        cuda.bind()?;
        // SAFETY: valid handle and stream of this context.
        unsafe {
            cudarc::cublas::result::set_stream(blas.handle(), self.side.cu_stream() as _)
                .map_err(CudaError::blas)?;
        }
        let mut result = Ok(());
        for first in (0..n_hot).step_by(self.config.chunk_rows) {
            let rows = (n_hot - first).min(self.config.chunk_rows);
            let (alpha, beta) = (1.0f32, 0.0f32);
            // Row-major chunk [rows, ld] = column-major [ld, rows] = items^T x hot^T.
            // SAFETY: the item table has ld rows (padded), hot_embeddings n_hot rows, the
            // chunk chunk_rows rows of ld.
            let gemm = unsafe {
                blas_sys::cublasGemmEx(
                    blas.handle(),
                    blas_sys::cublasOperation_t::CUBLAS_OP_T,
                    blas_sys::cublasOperation_t::CUBLAS_OP_N,
                    ld as i32,
                    rows as i32,
                    dim as i32,
                    &alpha as *const f32 as *const c_void,
                    tables.items().device_ptr() as *const c_void,
                    blas_sys::cudaDataType::CUDA_R_16F,
                    dim as i32,
                    self.hot_embeddings.ptr_at(first * dim) as *const c_void,
                    blas_sys::cudaDataType::CUDA_R_16F,
                    dim as i32,
                    &beta as *const f32 as *const c_void,
                    self.chunk.device_ptr() as *mut c_void,
                    blas_sys::cudaDataType::CUDA_R_16F,
                    ld as i32,
                    blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
                .result()
                .map_err(CudaError::blas)
            };
            result = gemm.and_then(|()| self.finish_chunk(cuda, back, first, rows));
            if result.is_err() {
                break;
            }
        }
        // SAFETY: as above.
        let restored = unsafe {
            cudarc::cublas::result::set_stream(blas.handle(), cuda.cu_stream() as _)
                .map_err(CudaError::blas)
        };
        result.and(restored)
    }

    /// Host rows of `table` (f32, `[items, n_items]`) into `buffers[back]`, chunk by chunk
    /// through the fp16 scratch (each chunk's upload waits for the previous chunk's use).
    fn upload_rows(&mut self, cuda: &Cuda, back: usize, table: &HotTable) -> Result<(), CudaError> {
        let n_items = self.n_items;
        let ld = score_row_stride(n_items);
        let n_hot = table.items().len().min(self.capacity);
        if table.rows().len() < n_hot * n_items {
            return Err(CudaError::OutOfBounds {
                end: n_hot * n_items,
                len: table.rows().len(),
            });
        }
        cuda.upload_at_on(
            &self.side,
            &table.items()[..n_hot],
            &mut self.buffers[back].ids,
            0,
        )?;
        for first in (0..n_hot).step_by(self.config.chunk_rows) {
            let rows = (n_hot - first).min(self.config.chunk_rows);
            self.chunk_host.clear();
            self.chunk_host.resize(rows * ld, 0);
            for (r, out) in self.chunk_host.chunks_exact_mut(ld).enumerate() {
                let src = &table.rows()[(first + r) * n_items..(first + r + 1) * n_items];
                for (o, &x) in out.iter_mut().zip(src) {
                    *o = f16::from_f32(x).to_bits();
                }
            }
            // The scratch is reused: the previous chunk's kernels must be done with it.
            self.side.synchronize().map_err(CudaError::from)?;
            let chunk_host = std::mem::take(&mut self.chunk_host);
            let uploaded = cuda.upload_at_on(&self.side, &chunk_host, &mut self.chunk, 0);
            self.chunk_host = chunk_host;
            uploaded?;
            self.finish_chunk(cuda, back, first, rows)?;
        }
        Ok(())
    }

    /// Quantizes the fp16 chunk (rows `first..first + rows` of the new table) into
    /// `buffers[back]` and selects each row's neighbours, on the side stream.
    fn finish_chunk(
        &mut self,
        cuda: &Cuda,
        back: usize,
        first: usize,
        rows: usize,
    ) -> Result<(), CudaError> {
        let n_items = self.n_items;
        let ld = score_row_stride(n_items);
        let m = self.config.neighbours;
        let table = &self.buffers[back];
        let (src, src_ld, n_cols, dst, dst_ld, scales) = (
            self.chunk.device_ptr(),
            ld as u32,
            n_items as u32,
            table.rows.ptr_at(first * self.row_ld),
            self.row_ld as u32,
            table.scales.ptr_at(first),
        );
        let mut params = [
            arg(&src),
            arg(&src_ld),
            arg(&n_cols),
            arg(&dst),
            arg(&dst_ld),
            arg(&scales),
        ];
        // SAFETY: the chunk holds `rows` rows of ld; the table has room for first + rows.
        unsafe {
            cuda.launch_on(
                &self.side,
                &cuda.kernels.quantize_rows,
                (rows as u32, 1, 1),
                (256, 1, 1),
                0,
                &mut params,
            )?;
        }
        let (m_ptr, cols, n_u) = (
            self.chunk.device_ptr(),
            table.ids.ptr_at(first),
            rows as u32,
        );
        let mut params = [arg(&m_ptr), arg(&src_ld), arg(&cols), arg(&n_u)];
        // SAFETY: ids hold item rows < n_items for these rows.
        unsafe {
            cuda.launch_on(
                &self.side,
                &cuda.kernels.mask_diagonal,
                (rows.div_ceil(256) as u32, 1, 1),
                (256, 1, 1),
                0,
                &mut params,
            )?;
        }
        // The neighbours: the threshold-filter top-K (256-thread blocks, several per SM).
        let shared = topk_filter_shared_bytes(n_items, m);
        let (null, k_u, capacity, exact_only) = (0u64, m as u32, filter_capacity(m) as u32, 0u32);
        let (ids_out, scores_out) = (
            table.neighbour_ids.ptr_at(first * m),
            table.neighbour_scores.ptr_at(first * m),
        );
        let mut params = [
            arg(&m_ptr),
            arg(&src_ld),
            arg(&n_cols),
            arg(&null),
            arg(&null),
            arg(&null),
            arg(&null),
            arg(&k_u),
            arg(&capacity),
            arg(&exact_only),
            arg(&ids_out),
            arg(&scores_out),
        ];
        // SAFETY: parameters match `topk_filter` (no exclusion); outputs have room for
        // rows x m from first.
        unsafe {
            cuda.launch_on(
                &self.side,
                &cuda.kernels.topk_filter,
                (rows as u32, 1, 1),
                (256, 1, 1),
                shared as u32,
                &mut params,
            )
        }
    }

    /// Host step of a batch: poll for a finished rebuild, resolve each request's history
    /// into hot rows and misses, upload them (and, for a custom source, the miss rows).
    pub(crate) fn prepare(
        &mut self,
        cuda: &Cuda,
        batch: &mut Batch<Cuda>,
    ) -> Result<(), StageError> {
        self.poll(cuda)?;
        let n = batch.len();
        let n_items = self.n_items;
        let dim = self.dim;
        let users = self.users.read();
        let personal = |notes: &hyperrec_stage::RequestNotes| {
            notes
                .user
                .filter(|&u| !notes.cold_start && (u as usize) < users.len())
        };
        self.active = self.config.history_weight != 0.0
            && self.config.history_len != 0
            && batch.notes.iter().any(|notes| personal(notes).is_some());
        self.gpu_misses = false;
        self.host_misses = false;
        if !self.active {
            cuda.ensure_len(&mut batch.item_prior, 0)?;
            return Ok(());
        }
        let table = &self.buffers[self.front];
        let embedding_source = matches!(self.source, RowSource::Embedding);
        let fold = self.fold && embedding_source;
        self.offsets_host.clear();
        self.slots_host.clear();
        self.weights_host.clear();
        self.has_miss_host.clear();
        self.has_miss_host.resize(n, 0);
        self.combine_offsets_host.clear();
        self.combine_ids_host.clear();
        self.combine_weights_host.clear();
        self.miss_items.clear();
        let (mut hits, mut misses) = (0u64, 0u64);
        for (q, notes) in batch.notes.iter().enumerate() {
            self.offsets_host.push(self.slots_host.len() as u32);
            self.combine_offsets_host
                .push(self.combine_ids_host.len() as u32);
            let Some(user) = personal(notes) else {
                continue;
            };
            let recent = users.recent(user, self.config.history_len);
            if recent.is_empty() {
                continue;
            }
            let scale = self.config.history_weight / recent.len() as f32;
            for entry in recent {
                if entry.item as usize >= n_items {
                    return Err(StageError::UnknownItem(entry.item));
                }
                let weight = (entry.rating - NEUTRAL_RATING) / 2.0 * scale;
                if weight == 0.0 {
                    continue;
                }
                let slot = table.slot_of[entry.item as usize];
                if slot == u32::MAX {
                    misses += 1;
                } else {
                    hits += 1;
                }
                if fold || (slot == u32::MAX && embedding_source) {
                    // Linear in the embeddings: combined on the device into one vector.
                    self.has_miss_host[q] = 1;
                    self.combine_ids_host.push(entry.item);
                    self.combine_weights_host.push(weight);
                } else if slot == u32::MAX {
                    self.miss_items.push((q, entry.item, weight));
                } else {
                    self.slots_host.push(slot);
                    self.weights_host.push(weight);
                }
            }
        }
        self.offsets_host.push(self.slots_host.len() as u32);
        self.combine_offsets_host
            .push(self.combine_ids_host.len() as u32);
        drop(users);
        self.stats.hits += hits;
        self.stats.misses += misses;
        self.folded = fold;
        self.gpu_misses = fold || !self.combine_ids_host.is_empty();
        self.host_misses = !embedding_source && !self.miss_items.is_empty();

        // Never empty, so the device addresses a graph bakes in stay put across batches.
        if self.gpu_misses {
            cuda.ensure_len(&mut self.combine_offsets, n + 1)?;
            cuda.upload_at(&self.combine_offsets_host, &mut self.combine_offsets, 0)?;
            cuda.ensure_len(&mut self.combine_ids, self.combine_ids_host.len().max(1))?;
            cuda.upload_at(&self.combine_ids_host, &mut self.combine_ids, 0)?;
            cuda.ensure_len(
                &mut self.combine_weights,
                self.combine_weights_host.len().max(1),
            )?;
            cuda.upload_at(&self.combine_weights_host, &mut self.combine_weights, 0)?;
            cuda.ensure_len(&mut self.miss_vectors, n * dim)?;
        }
        if fold {
            // The similarity stage adds the folded vector to the query instead.
            cuda.ensure_len(&mut batch.item_prior, 0)?;
            return Ok(());
        }
        cuda.ensure_len(&mut batch.item_prior, n * n_items)?;
        cuda.ensure_len(&mut self.offsets, self.offsets_host.len())?;
        cuda.upload_at(&self.offsets_host, &mut self.offsets, 0)?;
        cuda.ensure_len(&mut self.slots, self.slots_host.len().max(1))?;
        cuda.upload_at(&self.slots_host, &mut self.slots, 0)?;
        cuda.ensure_len(&mut self.weights, self.weights_host.len().max(1))?;
        cuda.upload_at(&self.weights_host, &mut self.weights, 0)?;
        cuda.ensure_len(&mut self.has_miss, n)?;
        cuda.upload_at(&self.has_miss_host, &mut self.has_miss, 0)?;
        if let (true, RowSource::Custom(provider)) = (self.host_misses, &self.source) {
            self.miss_rows_host.clear();
            self.miss_rows_host.resize(n * n_items, 0.0);
            provider.accumulate_rows(&self.miss_items, &mut self.miss_rows_host, n_items);
            cuda.upload_at(&self.miss_rows_host, &mut batch.item_prior, 0)?;
        }
        Ok(())
    }

    /// Device step: score embedding misses, then gather the hot rows into `item_prior`.
    pub(crate) fn enqueue(
        &mut self,
        cuda: &Cuda,
        batch: &mut Batch<Cuda>,
    ) -> Result<(), StageError> {
        if !self.active {
            return Ok(());
        }
        let n = batch.len();
        let n_items = self.n_items;
        if self.gpu_misses {
            let tables = self.tables.lock();
            let (items_ptr, dim_u, offsets, ids, weights, out) = (
                tables.items().device_ptr(),
                self.dim as u32,
                self.combine_offsets.device_ptr(),
                self.combine_ids.device_ptr(),
                self.combine_weights.device_ptr(),
                self.miss_vectors.device_ptr(),
            );
            let mut params = [
                arg(&items_ptr),
                arg(&dim_u),
                arg(&offsets),
                arg(&ids),
                arg(&weights),
                arg(&out),
            ];
            // SAFETY: ids are item rows < n_items; offsets has n + 1 entries; out n x dim.
            unsafe {
                cuda.launch(
                    &cuda.kernels.combine_rows,
                    (n as u32, 1, 1),
                    (self.dim.min(1024) as u32, 1, 1),
                    0,
                    &mut params,
                )?;
            }
            if self.folded {
                return Ok(());
            }
            enqueue_scores(
                cuda,
                tables.items(),
                n_items,
                self.dim,
                &self.miss_vectors,
                n,
                &mut self.miss_half,
                &mut self.miss_scores,
                false,
            )?;
        }
        let table = &self.buffers[self.front];
        let miss_ptr = if self.gpu_misses {
            self.miss_scores.device_ptr()
        } else {
            0
        };
        let (rows, row_ld, scales, offsets, slots, weights) = (
            table.rows.device_ptr(),
            self.row_ld as u32,
            table.scales.device_ptr(),
            self.offsets.device_ptr(),
            self.slots.device_ptr(),
            self.weights.device_ptr(),
        );
        let (miss_ld, has_miss, n_items_u, accumulate, prior) = (
            score_row_stride(n_items) as u32,
            self.has_miss.device_ptr(),
            n_items as u32,
            u32::from(self.host_misses),
            batch.item_prior.device_ptr(),
        );
        let mut params = [
            arg(&rows),
            arg(&row_ld),
            arg(&scales),
            arg(&offsets),
            arg(&slots),
            arg(&weights),
            arg(&miss_ptr),
            arg(&miss_ld),
            arg(&has_miss),
            arg(&n_items_u),
            arg(&accumulate),
            arg(&prior),
        ];
        // SAFETY: slots index rows of the front table; prior holds n x n_items; the miss
        // scores (when used) n rows of miss_ld.
        unsafe {
            cuda.launch(
                &cuda.kernels.cache_prior,
                (n_items.div_ceil(256 * 16) as u32, n as u32, 1),
                (256, 1, 1),
                0,
                &mut params,
            )?;
        }
        Ok(())
    }

    /// Folds the history term into the query (embedding source only; see
    /// [`CudaCache::query_offset`]) instead of writing `item_prior`.
    pub(crate) fn set_fold(&mut self, fold: bool) {
        self.fold = fold;
    }

    /// In fold mode, after `enqueue`: the `[n, dim]` vector to add to each fused query
    /// before scoring (exact for the embedding source: the prior is linear in it).
    pub(crate) fn query_offset(&self) -> Option<&CudaBuffer<f32>> {
        (self.active && self.folded).then_some(&self.miss_vectors)
    }

    /// What a captured graph of this stage bakes in.
    pub(crate) fn graph_key(&self) -> Vec<u64> {
        let table = &self.buffers[self.front];
        let tables = self.tables.lock();
        vec![
            u64::from(self.active),
            u64::from(self.gpu_misses),
            u64::from(self.host_misses),
            u64::from(self.folded),
            self.combine_offsets.device_ptr(),
            self.combine_ids.device_ptr(),
            self.combine_weights.device_ptr(),
            table.rows.device_ptr(),
            table.scales.device_ptr(),
            self.offsets.device_ptr(),
            self.slots.device_ptr(),
            self.weights.device_ptr(),
            self.has_miss.device_ptr(),
            self.miss_vectors.device_ptr(),
            self.miss_half.device_ptr(),
            self.miss_scores.device_ptr(),
            tables.items().device_ptr(),
            tables.generation(),
        ]
    }

    /// The `k` items most similar to `item` (itself excluded), best first, ties by smaller
    /// index, and whether the row was a hit. A hit with `k <= neighbours` is answered from
    /// the host mirror of the precomputed neighbours (scores: the fp16 GEMM values); other
    /// cases score one row on the device (synchronizes the main stream).
    pub fn similar(
        &mut self,
        cuda: &Cuda,
        item: ItemIndex,
        k: usize,
    ) -> Result<(Vec<(ItemIndex, f32)>, CacheLookup), CudaError> {
        if item as usize >= self.n_items {
            return Err(CudaError::OutOfBounds {
                end: item as usize + 1,
                len: self.n_items,
            });
        }
        self.poll(cuda)?;
        let m = self.config.neighbours;
        let k = k.min(self.n_items.saturating_sub(1));
        let table = &self.buffers[self.front];
        let slot = table.slot_of[item as usize];
        if slot != u32::MAX && k <= m {
            self.stats.hits += 1;
            let base = slot as usize * m;
            let ranked = table.host_neighbour_ids[base..base + k]
                .iter()
                .zip(&table.host_neighbour_scores[base..base + k])
                .filter(|(id, _)| **id != NO_ITEM)
                .map(|(&id, &score)| (id, score))
                .collect();
            return Ok((ranked, CacheLookup::Hit));
        }
        if k == 0 {
            return Ok((Vec::new(), CacheLookup::Hit));
        }
        if k > MAX_CANDIDATES {
            return Err(CudaError::Unsupported(format!(
                "similar: k must be at most {MAX_CANDIDATES}, got {k}"
            )));
        }
        let ld = score_row_stride(self.n_items);
        let lookup = if slot != u32::MAX {
            self.stats.hits += 1;
            let (rows, row_ld, scales, slot_u, skip, n_u, out) = (
                table.rows.device_ptr(),
                self.row_ld as u32,
                table.scales.device_ptr(),
                slot,
                item,
                self.n_items as u32,
                self.one_row.device_ptr(),
            );
            let mut params = [
                arg(&rows),
                arg(&row_ld),
                arg(&scales),
                arg(&slot_u),
                arg(&skip),
                arg(&n_u),
                arg(&out),
            ];
            // SAFETY: slot is a row of the front table; one_row holds ld >= n_items halves.
            unsafe {
                cuda.launch(
                    &cuda.kernels.dequantize_row,
                    (self.n_items.div_ceil(1024) as u32, 1, 1),
                    (1024, 1, 1),
                    0,
                    &mut params,
                )?;
            }
            CacheLookup::Hit
        } else {
            self.stats.misses += 1;
            match &self.source {
                RowSource::Embedding => {
                    cuda.upload_at(self.items.row(item), &mut self.one_query, 0)?;
                    let tables = self.tables.lock();
                    enqueue_scores(
                        cuda,
                        tables.items(),
                        self.n_items,
                        self.dim,
                        &self.one_query,
                        1,
                        &mut self.one_query_half,
                        &mut self.one_row,
                        false,
                    )?;
                }
                RowSource::Custom(provider) => {
                    let mut row = vec![0.0f32; self.n_items];
                    provider.row(item, &mut row);
                    let mut half_row: Vec<u16> =
                        row.iter().map(|&x| f16::from_f32(x).to_bits()).collect();
                    half_row.resize(ld, 0);
                    cuda.upload_at(&half_row, &mut self.one_row, 0)?;
                }
            }
            cuda.upload_at(&[item], &mut self.one_col, 0)?;
            let (m_ptr, ld_u, cols, one) = (
                self.one_row.device_ptr(),
                ld as u32,
                self.one_col.device_ptr(),
                1u32,
            );
            let mut params = [arg(&m_ptr), arg(&ld_u), arg(&cols), arg(&one)];
            // SAFETY: one row of ld halves; the column is < n_items.
            unsafe {
                cuda.launch(
                    &cuda.kernels.mask_diagonal,
                    (1, 1, 1),
                    (32, 1, 1),
                    0,
                    &mut params,
                )?;
            }
            CacheLookup::Miss
        };
        enqueue_top_k(
            cuda,
            &self.one_row,
            self.n_items,
            1,
            k,
            None,
            None,
            TopKStrategy::default(),
            &mut self.one_ids,
            &mut self.one_scores,
        )?;
        let mut ids = vec![NO_ITEM; k];
        let mut scores = vec![0.0f32; k];
        cuda.download_at_on(cuda.stream(), &self.one_ids, 0, &mut ids)?;
        cuda.download_at_on(cuda.stream(), &self.one_scores, 0, &mut scores)?;
        let ranked = ids
            .into_iter()
            .zip(scores)
            .filter(|(id, _)| *id != NO_ITEM)
            .collect();
        Ok((ranked, lookup))
    }

    /// Device bytes of both tables (cache) and the rebuild and batch scratch (workspace).
    pub fn memory_report(&self) -> MemoryReport {
        MemoryReport {
            cache: self.buffers[0].bytes() + self.buffers[1].bytes(),
            workspace: self.hot_embeddings.allocated_bytes()
                + self.chunk.allocated_bytes()
                + self.offsets.allocated_bytes()
                + self.slots.allocated_bytes()
                + self.weights.allocated_bytes()
                + self.has_miss.allocated_bytes()
                + self.miss_vectors.allocated_bytes()
                + self.combine_offsets.allocated_bytes()
                + self.combine_ids.allocated_bytes()
                + self.combine_weights.allocated_bytes()
                + self.miss_half.allocated_bytes()
                + self.miss_scores.allocated_bytes()
                + self.one_row.allocated_bytes()
                + self.one_col.allocated_bytes()
                + self.one_query.allocated_bytes()
                + self.one_query_half.allocated_bytes()
                + self.one_ids.allocated_bytes()
                + self.one_scores.allocated_bytes(),
            ..MemoryReport::default()
        }
    }
}

impl Stage<Cuda> for CudaCache {
    fn name(&self) -> &'static str {
        "cache"
    }

    fn run(&mut self, device: &Cuda, batch: &mut Batch<Cuda>) -> Result<(), StageError> {
        self.prepare(device, batch)?;
        self.enqueue(device, batch)
    }

    /// Counts the event in the (host-side) popularity, as the CPU cache does; the hot set
    /// follows at the next rebuild.
    fn observe(&mut self, _device: &Cuda, event: &Event) -> Result<(), StageError> {
        let Some(index) = &self.item_index else {
            return Err(StageError::Failed {
                stage: "cache",
                message:
                    "CudaCacheConfig::item_ids is not set, so events cannot be mapped to item rows"
                        .into(),
            });
        };
        self.handle.record_event(index, event)
    }
}
