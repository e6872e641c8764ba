//! The CUDA path: the post-encoding stages on the GPU, captured as one CUDA graph per
//! batch-size bucket.
//!
//! Queries are encoded on the host (the encoder is a CPU stage for now), uploaded once, and
//! every later stage runs on the device without a host synchronization until the results
//! are downloaded. A batch is padded up to its bucket (a power of two) by repeating its last
//! request, so the number of captured graphs stays small; the padding's results are dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hyperrec_cache::{CacheConfig, CacheHandle, RowSource};
use hyperrec_catalog::{ItemEmbeddings, SharedUsers};
use hyperrec_kernels::{
    Cuda, CudaCache, CudaCacheConfig, CudaFusion, CudaRerank, CudaSimilarity, DeviceTables,
    GpuPath, SharedTables, SimilarityParams, TablesConfig,
};
use hyperrec_rerank::{ContextVocabulary, RerankWeights};
use hyperrec_stage::{Batch, Cpu, Device, Event, Request, StageError};
use parking_lot::Mutex;

use crate::{MemoryComponent, PipelineConfig, PipelineError};

/// Largest batch bucket: bigger batches are split by the caller.
pub(crate) const MAX_BUCKET: usize = 1024;

fn cuda_error(e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Device(hyperrec_stage::DeviceError::Driver(e.to_string()))
}

/// What the GPU temporal cache shares with the CPU one: popularity (the handle), the row
/// source (collaborative rows are uploaded from the CPU cache's hot table) and settings.
pub(crate) struct CacheParts {
    pub(crate) handle: CacheHandle,
    pub(crate) source: RowSource,
    pub(crate) config: CacheConfig,
}

/// The GPU side of a pipeline.
pub(crate) struct GpuBackend {
    cuda: Cuda,
    tables: SharedTables,
    path: GpuPath,
    /// One device batch per bucket, so graph replays find their buffers where they left them.
    batches: HashMap<usize, Batch<Cuda>>,
}

impl GpuBackend {
    pub(crate) fn new(
        ordinal: usize,
        items: &Arc<ItemEmbeddings>,
        users: &SharedUsers,
        context: &Arc<ContextVocabulary>,
        config: &PipelineConfig,
        weights: RerankWeights,
        cache: CacheParts,
    ) -> Result<GpuBackend, PipelineError> {
        let cuda = Cuda::new(ordinal).map_err(cuda_error)?;
        let tables = DeviceTables::new(
            &cuda,
            items,
            &users.read(),
            TablesConfig {
                history_len: config.rerank.history_len,
                ..TablesConfig::default()
            },
        )
        .map_err(cuda_error)?;
        let tables: SharedTables = Arc::new(Mutex::new(tables));
        let fusion = CudaFusion::new(&cuda, users.clone(), tables.clone(), config.alpha)
            .map_err(cuda_error)?;
        let similarity = CudaSimilarity::new(
            &cuda,
            users.clone(),
            tables.clone(),
            SimilarityParams {
                candidates: config.candidates,
                exclude_seen: config.exclude_seen,
            },
        )
        .map_err(cuda_error)?;
        let rerank = CudaRerank::new(
            &cuda,
            users.clone(),
            tables.clone(),
            context.clone(),
            config.rerank.clone(),
            weights,
        )
        .map_err(cuda_error)?;
        let cache = CudaCache::new(
            &cuda,
            tables.clone(),
            users.clone(),
            items.clone(),
            cache.handle,
            cache.source,
            CudaCacheConfig::from_cpu(&cache.config),
        )
        .map_err(cuda_error)?;
        Ok(GpuBackend {
            path: GpuPath::with_cache(fusion, cache, similarity, rerank),
            cuda,
            tables,
            batches: HashMap::new(),
        })
    }

    pub(crate) fn cuda(&self) -> &Cuda {
        &self.cuda
    }

    /// Runs the post-encoding path for the requests of `host`, whose `query_embeddings` the
    /// encoder has written, and writes the results back into `host`. Returns the device time
    /// of the path (fusion to rerank).
    pub(crate) fn run(&mut self, host: &mut Batch<Cpu>) -> Result<Duration, PipelineError> {
        let n = host.len();
        let bucket = n.next_power_of_two();
        if bucket > MAX_BUCKET {
            return Err(PipelineError::InvalidRequest(format!(
                "a GPU batch holds at most {MAX_BUCKET} requests, got {n}"
            )));
        }
        let mut requests: Vec<Request> = host.requests.clone();
        let last = requests[n - 1].clone();
        requests.resize(bucket, last);

        let dim = host.dim;
        let cuda = &self.cuda;
        let batch = match self.batches.entry(bucket) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(Batch::new(cuda, dim)?)
            }
        };
        batch.reset(cuda, requests)?;
        // Padding rows repeat the last query's embedding.
        if n == bucket {
            cuda.upload(&host.query_embeddings, &mut batch.query_embeddings)?;
        } else {
            let mut padded = Vec::with_capacity(bucket * dim);
            padded.extend_from_slice(&host.query_embeddings);
            for _ in n..bucket {
                padded.extend_from_slice(&host.query_embeddings[(n - 1) * dim..n * dim]);
            }
            cuda.upload(&padded, &mut batch.query_embeddings)?;
        }

        let start = cuda.mark()?;
        self.path.run(cuda, batch)?;
        let end = cuda.mark()?;
        cuda.synchronize()?;
        let elapsed = cuda.elapsed(&start, &end)?;

        // Results back to the host batch, padding rows dropped.
        let results = batch.results;
        let slots = batch.slots;
        let mut ids = Vec::new();
        cuda.download(&batch.result_ids, &mut ids)?;
        let mut scores = Vec::new();
        cuda.download(&batch.result_scores, &mut scores)?;
        let mut retrieval = Vec::new();
        cuda.download(&batch.result_retrieval_scores, &mut retrieval)?;
        let mut attributions = Vec::new();
        cuda.download(&batch.result_attributions, &mut attributions)?;
        ids.truncate(n * results);
        scores.truncate(n * results);
        retrieval.truncate(n * results);
        attributions.truncate(n * results * slots);
        host.results = results;
        host.slots = slots;
        host.result_ids = ids;
        host.result_scores = scores;
        host.result_retrieval_scores = retrieval;
        host.result_attributions = attributions;
        // Moved, not cloned: the next batch of this bucket resets the notes anyway, and a
        // clone would count a reference to every request's history and seen set again.
        host.notes = batch.notes.drain(..n).collect();
        Ok(elapsed)
    }

    pub(crate) fn observe(&mut self, event: &Event) -> Result<(), StageError> {
        self.path.observe(&self.cuda, event)
    }

    /// Device bytes per component.
    pub(crate) fn memory(&self) -> Vec<MemoryComponent> {
        let tables = self.tables.lock().memory_report();
        let path = self.path.memory_report();
        let total = tables.add(&path);
        let workspace: usize = self
            .batches
            .values()
            .map(|b| {
                4 * (b.query_embeddings.len() + b.fused.len() + b.item_prior.len())
                    + 4 * (b.candidate_ids.len() + b.candidate_scores.len())
                    + 4 * (b.result_ids.len()
                        + b.result_scores.len()
                        + b.result_retrieval_scores.len())
                    + 4 * b.result_attributions.len()
            })
            .sum();
        vec![
            MemoryComponent {
                name: "items".into(),
                host_bytes: 0,
                device_bytes: total.items,
            },
            MemoryComponent {
                name: "users".into(),
                host_bytes: 0,
                device_bytes: total.users,
            },
            MemoryComponent {
                name: "histories".into(),
                host_bytes: 0,
                device_bytes: total.histories,
            },
            MemoryComponent {
                name: "cache".into(),
                host_bytes: 0,
                device_bytes: total.cache,
            },
            MemoryComponent {
                name: "workspace".into(),
                host_bytes: 0,
                device_bytes: total.workspace + workspace,
            },
        ]
    }
}
