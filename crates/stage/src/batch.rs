use std::time::Duration;

use crate::{Device, DeviceError, ItemIndex, Request, Source, UserIndex};

/// Host-side facts about one request that stages establish and the response reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestNotes {
    /// The requester's row in the user table; `None` for an unknown user (cold start).
    pub user: Option<UserIndex>,
    /// Rows of the companions that were found (unknown companions are skipped).
    pub companions: Vec<UserIndex>,
    /// True when no user signal was available and the result is query-only.
    pub cold_start: bool,
    /// Explanation slots of this request's rerank: slot `s` of `result_attributions` is
    /// `sources[s]` (the user's recent history items, then context phrases).
    pub sources: Vec<Source>,
    /// Items the similarity stage excluded because the user has seen them.
    pub excluded: Vec<ItemIndex>,
}

/// Time a stage took for one batch, from device marks.
#[derive(Clone, Debug, PartialEq)]
pub struct StageTiming {
    pub stage: &'static str,
    pub elapsed: Duration,
}

/// The working set of one batch of requests, owned by a device.
///
/// Shapes are row-major; `n = requests.len()`. Each stage documents which fields it reads
/// and writes. Buffers are resized, not reallocated, across batches of the same size, so a
/// pipeline that keeps one `Batch` per batch-size bucket allocates nothing in steady state
/// (and keeps device pointers stable for CUDA graph replay).
pub struct Batch<D: Device> {
    pub requests: Vec<Request>,
    pub notes: Vec<RequestNotes>,
    /// Embedding width (384 for all-MiniLM-L6-v2).
    pub dim: usize,

    /// Word pieces per query after padding to the longest in the batch.
    pub seq_len: usize,
    /// `[n, seq_len]` word-piece ids, padded with 0.
    pub token_ids: D::Buffer<u32>,
    /// `[n, seq_len]` 1 for real word pieces, 0 for padding.
    pub attention_mask: D::Buffer<u32>,

    /// `[n, dim]` L2-normalized query embeddings (written by the encoder).
    pub query_embeddings: D::Buffer<f32>,
    /// `[n, dim]` L2-normalized fused query/user vectors (written by fusion).
    pub fused: D::Buffer<f32>,

    /// `[n, n_items]` additive prior on every item's retrieval score (the cache stage's
    /// history term: how similar each item is to the user's recent history). Empty when no
    /// stage writes it; similarity adds it to the inner product when its length is
    /// `n * n_items`.
    pub item_prior: D::Buffer<f32>,

    /// `[n, dim]` additive query-side prior: similarity scores `(fused[q] + query_prior[q])
    /// · item[j]`. The cache stage writes it when its similarity rows are linear in the
    /// item embeddings: then `sum_h w_h row(h)[j] = (sum_h w_h e_h) · item[j]`, so the
    /// whole history term folds into one vector per query and no `[n, n_items]` prior is
    /// written or read. Empty when no stage writes it; similarity adds it when its length
    /// is `n * dim`. Rerank's attention still reads the plain `fused`.
    pub query_prior: D::Buffer<f32>,

    /// Candidates kept per query by retrieval.
    pub candidates: usize,
    /// `[n, candidates]` item rows, best first (ties by item index).
    pub candidate_ids: D::Buffer<u32>,
    /// `[n, candidates]` retrieval scores, descending. A query with fewer eligible items
    /// than `candidates` pads with id `u32::MAX` and score `f32::NEG_INFINITY`.
    pub candidate_scores: D::Buffer<f32>,

    /// Results kept per query (the largest `k` in the batch).
    pub results: usize,
    /// `[n, results]` item rows after reranking, best first.
    pub result_ids: D::Buffer<u32>,
    /// `[n, results]` final scores.
    pub result_scores: D::Buffer<f32>,
    /// `[n, results]` retrieval scores of the same items.
    pub result_retrieval_scores: D::Buffer<f32>,
    /// Explanation slots per query (history length + context phrases, padded).
    pub slots: usize,
    /// `[n, results, slots]` attention weight of each source slot for each result.
    pub result_attributions: D::Buffer<f32>,

    /// Per-stage timings of the last run, in stage order.
    pub timings: Vec<StageTiming>,
}

impl<D: Device> Batch<D> {
    /// An empty batch on `device` for `dim`-wide embeddings.
    pub fn new(device: &D, dim: usize) -> Result<Self, DeviceError> {
        Ok(Batch {
            requests: Vec::new(),
            notes: Vec::new(),
            dim,
            seq_len: 0,
            token_ids: device.zeros(0)?,
            attention_mask: device.zeros(0)?,
            query_embeddings: device.zeros(0)?,
            fused: device.zeros(0)?,
            item_prior: device.zeros(0)?,
            query_prior: device.zeros(0)?,
            candidates: 0,
            candidate_ids: device.zeros(0)?,
            candidate_scores: device.zeros(0)?,
            results: 0,
            result_ids: device.zeros(0)?,
            result_scores: device.zeros(0)?,
            result_retrieval_scores: device.zeros(0)?,
            slots: 0,
            result_attributions: device.zeros(0)?,
            timings: Vec::new(),
        })
    }

    /// Number of requests in the batch.
    pub fn len(&self) -> usize {
        self.requests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Replaces the requests, resets the notes and timings, and sizes the embedding
    /// buffers for them. Stages size the buffers they write themselves.
    pub fn reset(&mut self, device: &D, requests: Vec<Request>) -> Result<(), DeviceError> {
        let n = requests.len();
        self.requests = requests;
        self.notes.clear();
        self.notes.resize(n, RequestNotes::default());
        self.timings.clear();
        device.resize(&mut self.query_embeddings, n * self.dim)?;
        device.resize(&mut self.fused, n * self.dim)?;
        self.results = self.requests.iter().map(|r| r.k).max().unwrap_or(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Context, Cpu, UserId};

    #[test]
    fn reset_sizes_embeddings_and_takes_largest_k() {
        let mut batch = Batch::new(&Cpu, 4).expect("cpu alloc");
        let request = |k| Request {
            user: UserId(1),
            query: "q".into(),
            context: Context::default(),
            k,
            exclude_seen: true,
        };
        batch
            .reset(&Cpu, vec![request(3), request(7)])
            .expect("reset");
        assert_eq!(batch.query_embeddings.len(), 8);
        assert_eq!(batch.fused.len(), 8);
        assert_eq!(batch.results, 7);
        assert_eq!(batch.notes.len(), 2);
    }
}
