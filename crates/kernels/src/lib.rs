//! CUDA kernels of hyperrec (CUDA C sources in `cuda/`, committed PTX in `ptx/`) and, behind
//! the `cuda` feature, the CUDA [`Device`](hyperrec_stage::Device) and the GPU stages.
//!
//! - [`ptx`]: the embedded PTX and its freshness tag (always built; `cargo xtask ptx`
//!   regenerates it with nvcc 13.0).
//! - `Cuda` (feature `cuda`): one context and one stream; buffers are raw device
//!   allocations, marks are CUDA events. `Cuda::new` fails cleanly without a driver or GPU;
//!   `Cuda::is_available` says whether one is there.
//! - `DeviceTables`: item embeddings, user profiles, recent histories and seen sets on the
//!   device, updated by real-time events.
//! - Stages: `CudaFusion`, `CudaCache` (the temporal cache: int8 hot rows, double-buffered,
//!   rebuilt by fp16 GEMMs on a side stream), `CudaSimilarity` (GEMM + the crate's own top-K
//!   selection) and `CudaRerank`, each matching its CPU reference crate.
//! - `GpuPath`: the post-encoding path (optionally with the cache) captured as one CUDA graph per batch-size bucket.
//!
//! cudarc loads the CUDA libraries at run time, so the crate builds and its tests run (and
//! skip the GPU ones, saying so) on machines without CUDA, with or without the feature.

pub mod ptx;
pub mod quantized;

#[cfg(feature = "cuda")]
mod cache;
#[cfg(feature = "cuda")]
mod device;
#[cfg(feature = "cuda")]
mod error;
#[cfg(feature = "cuda")]
mod fusion;
#[cfg(feature = "cuda")]
mod path;
#[cfg(feature = "cuda")]
mod rerank;
#[cfg(feature = "cuda")]
mod similarity;
#[cfg(feature = "cuda")]
mod similarity_batch;
#[cfg(feature = "cuda")]
mod similarity_one;
#[cfg(feature = "cuda")]
mod tables;

#[cfg(feature = "cuda")]
pub use cache::{CudaCache, CudaCacheConfig, CudaCacheStats};
#[cfg(feature = "cuda")]
pub use device::{Cuda, CudaBuffer, CudaMark};
#[cfg(feature = "cuda")]
pub use error::CudaError;
#[cfg(feature = "cuda")]
pub use fusion::{CudaFusion, plan_members};
#[cfg(feature = "cuda")]
pub use path::GpuPath;
#[cfg(feature = "cuda")]
pub use rerank::{
    CLUSTER_MAX_BATCH, CudaRerank, FUSED_MAX_RERANKED, MAX_RERANKED, MAX_SLOTS, RerankKernel,
    TRACE_BLOCKS as RERANK_TRACE_BLOCKS, TRACE_MARKS as RERANK_TRACE_MARKS, fill_sources,
    plan_sources,
};
#[cfg(feature = "cuda")]
pub use similarity::{
    CudaSimilarity, MAX_CANDIDATES, SimilarityParams, TopK, TopKStrategy, fill_excluded,
    plan_exclusions, score_all_items, score_row_stride, topk_filter_shared_bytes,
    topk_shared_bytes,
};
#[cfg(feature = "cuda")]
pub use similarity_batch::{ScoreGemm, score_all_items_with};
#[cfg(feature = "cuda")]
pub use similarity_one::{OnePass, SimilarityOne};
#[cfg(feature = "cuda")]
pub use tables::{DeviceTables, NO_ITEM, SharedTables, TablesConfig};

/// Device bytes held by each component of the GPU path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryReport {
    /// Item embeddings (fp16, and the int8 copy the batch-1 kernel scores first) and tables
    /// derived from them (rerank projections).
    pub items: usize,
    /// User profiles (fp16).
    pub users: usize,
    /// Recent histories and seen sets.
    pub histories: usize,
    /// Temporal cache rows (both buffers).
    pub cache: usize,
    /// Per-batch scratch: score matrix, staging buffers, cuBLAS workspace.
    pub workspace: usize,
}

impl MemoryReport {
    pub fn total(&self) -> usize {
        self.items + self.users + self.histories + self.cache + self.workspace
    }

    /// Component-wise sum.
    pub fn add(&self, other: &MemoryReport) -> MemoryReport {
        MemoryReport {
            items: self.items + other.items,
            users: self.users + other.users,
            histories: self.histories + other.histories,
            cache: self.cache + other.cache,
            workspace: self.workspace + other.workspace,
        }
    }
}

impl std::fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
        write!(
            f,
            "items {:.1} MiB, users {:.1} MiB, histories {:.1} MiB, cache {:.1} MiB, workspace {:.1} MiB, total {:.1} MiB",
            mib(self.items),
            mib(self.users),
            mib(self.histories),
            mib(self.cache),
            mib(self.workspace),
            mib(self.total())
        )
    }
}
