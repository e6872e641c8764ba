//! The latency/QPS suite: scenarios, measurement, reports, regression gating.
//!
//! - [`workload`]: the small trait the suite measures ([`workload::Workload`]).
//! - [`suite`]: the measurements (cold query, single-query latency, batches, encoding,
//!   cache, memory) over prepared [`suite::Traffic`].
//! - [`result`], [`report`], [`plot`]: `result.json`, `report.md` and the SVG plots.
//! - [`compare`]: `--compare BASELINE --max-regression PCT`.
//! - [`gate`], [`gate_workload`] and [`callgrind`]: the CI gate on instruction counts
//!   per stage.
//! - [`scenario`]: data, item embeddings and traffic; [`pipeline_workload`]: the pipeline
//!   as a workload; [`export`]: the PyTorch peer's input.

pub mod callgrind;
pub mod compare;
pub mod export;
pub mod gate;
pub mod gate_workload;
pub mod machine;
pub mod pipeline_workload;
pub mod plot;
pub mod report;
pub mod result;
pub mod scenario;
pub mod stats;
pub mod suite;
pub mod workload;
