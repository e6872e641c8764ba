//! The suite's result file (`result.json`) and the flat list of figures it is gated on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::machine::{Machine, Revision};
use crate::stats::Summary;

/// Version of the result layout; bumped when a field changes meaning.
pub const SCHEMA_VERSION: u32 = 1;

/// Key of the end-to-end entry in per-stage maps (the pipeline's own name for it).
pub const TOTAL: &str = "total";

/// Which way a figure improves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Lower,
    Higher,
}

/// One gated number: a latency, a throughput, an instruction count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// Stable dotted name, e.g. `latency.total.p99_us` or `batch.100.qps`.
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub better: Better,
}

impl Figure {
    pub fn new(name: impl Into<String>, value: f64, unit: &str, better: Better) -> Figure {
        Figure {
            name: name.into(),
            value,
            unit: unit.into(),
            better,
        }
    }
}

/// What was run: scenario sizes and knobs, recorded so two results can be told apart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub scenario: String,
    /// Device asked for on the command line (`cpu` or `cuda`).
    pub device_requested: String,
    /// Device the workload reports it ran on (`cpu`, `cuda:0`).
    pub device: String,
    pub quick: bool,
    pub items: usize,
    pub users: usize,
    pub history_len: usize,
    /// Distinct queries timed one by one.
    pub latency_queries: usize,
    /// Queries run before timing starts (not counted).
    pub warmup_queries: usize,
    pub batch_sizes: Vec<usize>,
    /// Results per query.
    pub k: usize,
    /// Where item embeddings came from: the real encoder or the deterministic generator.
    pub item_embeddings: String,
    /// Seed of the scenario's data and traffic.
    pub seed: u64,
}

/// Per-stage durations of one request, in microseconds (`total` included).
pub type StageTimes = BTreeMap<String, f64>;

/// Throughput of one batch size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchFigure {
    pub size: usize,
    /// Batches timed (each of `size` distinct queries).
    pub batches: usize,
    /// Wall time of the timed batches together.
    pub seconds: f64,
    pub queries_per_second: f64,
    /// Median wall time of one batch, microseconds.
    pub median_batch_us: f64,
}

/// Catalog encoding throughput.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EncodingFigure {
    pub texts: usize,
    pub seconds: f64,
    pub texts_per_second: f64,
}

/// The temporal cache under Zipf traffic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheFigure {
    /// Lookups issued ("items similar to X", X drawn by Zipf popularity).
    pub lookups: usize,
    pub hits: u64,
    pub misses: u64,
    pub hit_rate: f64,
    /// Latency of lookups answered from the cache, microseconds.
    pub hit_latency: Option<Summary>,
    /// Latency of lookups computed against the whole catalog, microseconds.
    pub miss_latency: Option<Summary>,
    /// Time of one full rebuild of the cache rows, milliseconds.
    pub rebuild_ms: f64,
    /// Rows the cache holds.
    pub rows: usize,
}

/// Memory held by one component of the workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryRow {
    pub name: String,
    pub host_bytes: u64,
    pub device_bytes: u64,
}

/// What the PyTorch peer measured on the same inputs (written by `bench/peer/peer.py`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerResult {
    /// e.g. "pytorch 2.11.0+cu130".
    pub implementation: String,
    pub device: String,
    #[serde(default)]
    pub latency: BTreeMap<String, Summary>,
    #[serde(default)]
    pub batches: Vec<BatchFigure>,
    #[serde(default)]
    pub encoding: Option<EncodingFigure>,
    #[serde(default)]
    pub notes: Vec<String>,
}

/// Everything one run of the suite measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    pub schema_version: u32,
    pub settings: Settings,
    pub machine: Machine,
    pub revision: Revision,
    pub timestamp_unix: u64,
    /// The first query after the workload was built, per stage.
    pub cold_query: Option<StageTimes>,
    /// Single-query latency per stage and `total`, after warm-up.
    pub latency: BTreeMap<String, Summary>,
    /// The raw single-query samples per stage (for CDF plots).
    pub latency_samples_us: BTreeMap<String, Vec<f64>>,
    pub batches: Vec<BatchFigure>,
    pub encoding: Option<EncodingFigure>,
    pub cache: Option<CacheFigure>,
    pub memory: Vec<MemoryRow>,
    pub peer: Option<PeerResult>,
    /// Wall time of building the workload (data, embeddings, users, cache), seconds.
    pub build_seconds: f64,
    /// What the gate compares; derived from the fields above by [`BenchResult::figures`].
    pub figures: Vec<Figure>,
}

impl BenchResult {
    /// The gated figures of this result.
    pub fn figures(&self) -> Vec<Figure> {
        let mut figures = Vec::new();
        for (stage, summary) in &self.latency {
            figures.push(Figure::new(
                format!("latency.{stage}.median_us"),
                summary.median,
                "us",
                Better::Lower,
            ));
            figures.push(Figure::new(
                format!("latency.{stage}.p99_us"),
                summary.p99,
                "us",
                Better::Lower,
            ));
        }
        for batch in &self.batches {
            figures.push(Figure::new(
                format!("batch.{}.qps", batch.size),
                batch.queries_per_second,
                "queries/s",
                Better::Higher,
            ));
        }
        if let Some(encoding) = &self.encoding {
            figures.push(Figure::new(
                "encoding.texts_per_second",
                encoding.texts_per_second,
                "texts/s",
                Better::Higher,
            ));
        }
        if let Some(cache) = &self.cache {
            if let Some(hit) = &cache.hit_latency {
                figures.push(Figure::new(
                    "cache.hit.median_us",
                    hit.median,
                    "us",
                    Better::Lower,
                ));
            }
            figures.push(Figure::new(
                "cache.rebuild_ms",
                cache.rebuild_ms,
                "ms",
                Better::Lower,
            ));
        }
        let host: u64 = self.memory.iter().map(|m| m.host_bytes).sum();
        let device: u64 = self.memory.iter().map(|m| m.device_bytes).sum();
        figures.push(Figure::new(
            "memory.host_bytes",
            host as f64,
            "bytes",
            Better::Lower,
        ));
        if device > 0 {
            figures.push(Figure::new(
                "memory.device_bytes",
                device as f64,
                "bytes",
                Better::Lower,
            ));
        }
        figures
    }
}

/// The only part of a result file the gate needs: its figures. Both the suite's
/// `result.json` and the instruction-count baseline have this shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FigureFile {
    pub figures: Vec<Figure>,
}
