//! What the suite measures, as a small trait: the suite drives a [`Workload`] and never
//! names the pipeline, so it is tested against a fake and can measure anything that serves
//! requests (another pipeline build, a stage swapped for an experiment).

use hyperrec_stage::{ItemIndex, Request};
use thiserror::Error;

use crate::result::{MemoryRow, StageTimes};

/// Why a workload could not serve a measurement.
#[derive(Debug, Error)]
pub enum WorkloadError {
    #[error("{operation} failed: {source}")]
    Failed {
        operation: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{0}")]
    Invalid(String),
}

impl WorkloadError {
    /// Wraps an error of the workload's own with the operation it broke.
    pub fn failed(
        operation: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> WorkloadError {
        WorkloadError::Failed {
            operation,
            source: Box::new(source),
        }
    }
}

/// Whether a cache lookup was answered from precomputed rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Miss,
}

/// Something that serves recommendation requests and can be measured.
pub trait Workload {
    /// The device the workload runs on, as it reports it ("cpu", "cuda:0").
    fn device(&self) -> String;

    /// Serves one request; returns its per-stage durations in microseconds, `total`
    /// (the end-to-end time as the workload measures it) included.
    fn recommend(&mut self, request: &Request) -> Result<StageTimes, WorkloadError>;

    /// Serves `requests` as one batch. The suite times the call itself.
    fn recommend_batch(&mut self, requests: &[Request]) -> Result<(), WorkloadError>;

    /// Encodes catalog texts the way indexing does (for throughput); `Ok(false)` when the
    /// workload has no encoder to measure.
    fn encode_texts(&mut self, texts: &[String]) -> Result<bool, WorkloadError>;

    /// "Items similar to `item`", through the temporal cache; `Ok(None)` without a cache.
    fn cache_lookup(&mut self, item: ItemIndex) -> Result<Option<CacheOutcome>, WorkloadError>;

    /// Rebuilds the cache's rows now and waits for it; `Ok(false)` without a cache.
    fn rebuild_cache(&mut self) -> Result<bool, WorkloadError>;

    /// Rows the cache holds (0 without one).
    fn cache_rows(&self) -> usize;

    /// Bytes held per component, host and device.
    fn memory(&self) -> Vec<MemoryRow>;
}
