use std::sync::Arc;
use std::time::Duration;

use crate::{Device, DeviceError, HistoryEntry, ItemIndex, Request, Source, UserIndex};

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
    /// `sources.get(s)` (the user's recent history items, then context phrases).
    pub sources: Sources,
    /// Items the similarity stage excluded because the user has seen them, sorted
    /// ascending. A snapshot shared with the user table (which replaces a seen set on an
    /// event instead of changing it), not a copy: the GPU path writes it for 1000 queries
    /// per batch, and a copy of every seen list was most of that host step.
    pub excluded: SharedItems,
}

/// A shared, immutable list of items (a snapshot some table handed out), read as a slice.
///
/// The empty list holds no allocation, so default notes (1000 per batch at every reset)
/// cost no reference counts.
#[derive(Clone, Default)]
pub struct SharedItems(Option<Arc<[ItemIndex]>>);

impl SharedItems {
    /// The items of `items` (no copy).
    pub fn new(items: Arc<[ItemIndex]>) -> SharedItems {
        SharedItems(Some(items))
    }
}

impl From<Arc<[ItemIndex]>> for SharedItems {
    fn from(items: Arc<[ItemIndex]>) -> SharedItems {
        SharedItems::new(items)
    }
}

impl std::ops::Deref for SharedItems {
    type Target = [ItemIndex];

    fn deref(&self) -> &[ItemIndex] {
        self.0.as_deref().unwrap_or(&[])
    }
}

impl PartialEq for SharedItems {
    fn eq(&self, other: &SharedItems) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for SharedItems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// The explanation slots of one request's rerank, in slot order: the user's most recent
/// history items (oldest first), then the context phrases that have an embedding.
///
/// Holds shared snapshots instead of a list of [`Source`]s: the user's whole history as
/// the user table had it (the table replaces a history on an event, never changes one it
/// handed out) with the index of the first slot's entry, and the context's phrases (shared
/// by every request of a batch with that context). Filling a request's slots therefore
/// copies nothing: the GPU path fills 1000 per batch, and building the lists was the
/// largest host step. Equality compares the slots (history items and phrases), not the
/// snapshots.
///
/// Empty parts hold no allocation, so default notes cost no reference counts.
#[derive(Clone, Default)]
pub struct Sources {
    history: Option<Arc<[HistoryEntry]>>,
    /// Slot 0 is `history[first]`; `first <= history.len()`.
    first: usize,
    context: Option<Arc<[Arc<str>]>>,
}

impl Sources {
    /// The last `recent` entries of `history` (all of them when it is shorter), then the
    /// phrases of `context`.
    pub fn new(history: Arc<[HistoryEntry]>, recent: usize, context: Arc<[Arc<str>]>) -> Sources {
        let first = history.len().saturating_sub(recent);
        Sources {
            history: (first < history.len()).then_some(history),
            first,
            context: (!context.is_empty()).then_some(context),
        }
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.history().len() + self.context().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The history entries of the history slots, oldest first.
    pub fn history(&self) -> &[HistoryEntry] {
        self.history
            .as_deref()
            .map_or(&[], |history| &history[self.first..])
    }

    /// The phrases of the context slots, in slot order.
    pub fn context(&self) -> &[Arc<str>] {
        self.context.as_deref().unwrap_or(&[])
    }

    /// What slot `slot` points at, or `None` past the last slot.
    pub fn get(&self, slot: usize) -> Option<Source> {
        let history = self.history();
        match history.get(slot) {
            Some(entry) => Some(Source::HistoryItem(entry.item)),
            None => self
                .context()
                .get(slot - history.len())
                .map(|phrase| Source::Context(phrase.clone())),
        }
    }

    /// Every slot, in order.
    pub fn iter(&self) -> impl Iterator<Item = Source> + '_ {
        self.history()
            .iter()
            .map(|entry| Source::HistoryItem(entry.item))
            .chain(self.context().iter().cloned().map(Source::Context))
    }

    /// Every slot as a list.
    pub fn to_vec(&self) -> Vec<Source> {
        self.iter().collect()
    }
}

impl PartialEq for Sources {
    fn eq(&self, other: &Sources) -> bool {
        self.history().len() == other.history().len()
            && self
                .history()
                .iter()
                .zip(other.history())
                .all(|(a, b)| a.item == b.item)
            && self.context() == other.context()
    }
}

impl PartialEq<[Source]> for Sources {
    fn eq(&self, other: &[Source]) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter().cloned())
    }
}

impl<const N: usize> PartialEq<[Source; N]> for Sources {
    fn eq(&self, other: &[Source; N]) -> bool {
        *self == other[..]
    }
}

impl PartialEq<Vec<Source>> for Sources {
    fn eq(&self, other: &Vec<Source>) -> bool {
        *self == other[..]
    }
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
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

    fn history(items: &[ItemIndex]) -> Arc<[HistoryEntry]> {
        items
            .iter()
            .enumerate()
            .map(|(t, &item)| HistoryEntry {
                item,
                rating: 4.0,
                timestamp: t as i64,
            })
            .collect()
    }

    /// Slots are the last `recent` history items, then the phrases; `get`, `iter`, `len`
    /// and the list comparison agree, and equality ignores everything but the slots.
    #[test]
    fn sources_are_the_recent_history_then_the_phrases() {
        let phrases: Arc<[Arc<str>]> = vec![Arc::from("evening"), Arc::from("alone")].into();
        let sources = Sources::new(history(&[4, 5, 6, 7]), 3, phrases.clone());
        let expected = vec![
            Source::HistoryItem(5),
            Source::HistoryItem(6),
            Source::HistoryItem(7),
            Source::Context("evening".into()),
            Source::Context("alone".into()),
        ];
        assert_eq!(sources.len(), 5);
        assert_eq!(sources, expected);
        assert_eq!(sources.to_vec(), expected);
        for (slot, source) in expected.iter().enumerate() {
            assert_eq!(sources.get(slot).as_ref(), Some(source), "slot {slot}");
        }
        assert_eq!(sources.get(5), None);
        assert_ne!(sources, expected[..4]);
        assert_ne!(
            sources,
            Sources::new(history(&[4, 5, 6, 8]), 3, phrases.clone())
        );
        // The same slots from another snapshot (other ratings, longer history) are equal.
        assert_eq!(
            sources,
            Sources::new(history(&[9, 9, 5, 6, 7]), 3, phrases.clone())
        );
        // A short history gives all of it; no history and no phrases give no slots.
        assert_eq!(
            Sources::new(history(&[1]), 50, Arc::default()),
            vec![Source::HistoryItem(1)]
        );
        assert!(Sources::new(history(&[1, 2]), 0, Arc::default()).is_empty());
        assert_eq!(Sources::default(), Vec::new());
        assert_eq!(
            format!("{:?}", Sources::new(history(&[3]), 1, Arc::default())),
            "[HistoryItem(3)]"
        );
    }

    #[test]
    fn shared_items_read_as_their_slice() {
        let items = SharedItems::new(vec![1, 5, 9].into());
        assert_eq!(items[..], [1, 5, 9]);
        assert!(items.contains(&5));
        assert_eq!(items, SharedItems::from(Arc::from(vec![1, 5, 9])));
        assert_ne!(items, SharedItems::default());
        assert!(SharedItems::default().is_empty());
        assert_eq!(SharedItems::new(Arc::default()), SharedItems::default());
    }
}
