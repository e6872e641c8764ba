//! The real thing: [`Workload`] over `hyperrec_pipeline::Pipeline`.

use std::sync::Arc;

use hyperrec_encoder::QueryEncoder;
use hyperrec_pipeline::Pipeline;
use hyperrec_stage::{ItemIndex, Request};

use crate::result::{MemoryRow, StageTimes};
use crate::workload::{CacheOutcome, Workload, WorkloadError};

/// Texts per encoder call when measuring catalog encoding (what indexing uses).
const ENCODE_BATCH: usize = 64;
/// Neighbours asked for by a "similar to X" lookup.
const SIMILAR_K: usize = 10;

/// A built pipeline, measured through its public API only.
pub struct PipelineWorkload {
    pipeline: Pipeline,
    encoder: Arc<QueryEncoder>,
}

impl PipelineWorkload {
    pub fn new(pipeline: Pipeline) -> PipelineWorkload {
        let encoder = pipeline.encoder().clone();
        PipelineWorkload { pipeline, encoder }
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }
}

impl Workload for PipelineWorkload {
    fn device(&self) -> String {
        self.pipeline.device().to_string()
    }

    fn recommend(&mut self, request: &Request) -> Result<StageTimes, WorkloadError> {
        let response = self
            .pipeline
            .recommend(request)
            .map_err(|e| WorkloadError::failed("recommend", e))?;
        Ok(response.timings_us)
    }

    fn recommend_batch(&mut self, requests: &[Request]) -> Result<(), WorkloadError> {
        self.pipeline
            .recommend_batch(requests)
            .map(drop)
            .map_err(|e| WorkloadError::failed("recommend_batch", e))
    }

    fn encode_texts(&mut self, texts: &[String]) -> Result<bool, WorkloadError> {
        // The uncached model, as indexing calls it: the query LRU must not answer.
        let model = self.encoder.encoder();
        for chunk in texts.chunks(ENCODE_BATCH) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            model
                .encode(&refs)
                .map_err(|e| WorkloadError::failed("encode", e))?;
        }
        Ok(true)
    }

    fn cache_lookup(&mut self, item: ItemIndex) -> Result<Option<CacheOutcome>, WorkloadError> {
        let id = self
            .pipeline
            .dataset()
            .catalog
            .get(item)
            .map(|i| i.id)
            .ok_or_else(|| WorkloadError::Invalid(format!("no item at row {item}")))?;
        let (_, hit) = self
            .pipeline
            .similar(id, SIMILAR_K)
            .map_err(|e| WorkloadError::failed("similar", e))?;
        Ok(Some(if hit {
            CacheOutcome::Hit
        } else {
            CacheOutcome::Miss
        }))
    }

    fn rebuild_cache(&mut self) -> Result<bool, WorkloadError> {
        self.pipeline
            .cache()
            .rebuild_now()
            .map_err(|e| WorkloadError::failed("cache rebuild", e))?;
        Ok(true)
    }

    fn cache_rows(&self) -> usize {
        self.pipeline.cache().stats().hot_rows
    }

    fn memory(&self) -> Vec<MemoryRow> {
        self.pipeline
            .memory_report()
            .components
            .into_iter()
            .map(|c| MemoryRow {
                name: c.name,
                host_bytes: c.host_bytes as u64,
                device_bytes: c.device_bytes as u64,
            })
            .collect()
    }
}
