use std::collections::BTreeMap;
use std::time::Duration;

use hyperrec_catalog::Catalog;
use hyperrec_stage::{Batch, Cpu, DeviceKind, ItemId, ItemIndex, Source, Sources};
use serde::Serialize;

/// One contribution to a recommendation, rendered for people and machines.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ResponseContribution {
    /// `"history"` or `"context"`.
    pub kind: &'static str,
    /// The history item's external id, for history contributions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<ItemId>,
    /// Title of the history item, or the context phrase.
    pub label: String,
    pub weight: f32,
}

/// One recommended item.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecommendedItem {
    pub id: ItemId,
    pub title: String,
    pub genres: Vec<String>,
    pub score: f32,
    pub retrieval_score: f32,
    /// The history items and context phrases that weighed most, largest first.
    pub explanation: Vec<ResponseContribution>,
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Response {
    pub items: Vec<RecommendedItem>,
    /// Microseconds per stage for the batch this request travelled in, plus `"total"`.
    pub timings_us: BTreeMap<String, f64>,
    /// True when no user signal was available (unknown user, or no profile yet): the list
    /// is then driven by the query and context alone.
    pub cold_start: bool,
    /// Where the request ran (`cpu`, `cuda:0`).
    pub device: String,
}

/// Bytes one component of the pipeline holds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemoryComponent {
    pub name: String,
    pub host_bytes: usize,
    pub device_bytes: usize,
}

impl MemoryComponent {
    pub fn host(name: &str, bytes: usize) -> MemoryComponent {
        MemoryComponent {
            name: name.into(),
            host_bytes: bytes,
            device_bytes: 0,
        }
    }
}

/// Memory per component.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemoryReport {
    pub device: DeviceKind,
    pub components: Vec<MemoryComponent>,
}

impl MemoryReport {
    pub fn host_total(&self) -> usize {
        self.components.iter().map(|c| c.host_bytes).sum()
    }

    pub fn device_total(&self) -> usize {
        self.components.iter().map(|c| c.device_bytes).sum()
    }
}

/// An item with its score and no explanation.
pub(crate) fn plain_item(catalog: &Catalog, item: ItemIndex, score: f32) -> RecommendedItem {
    let entry = catalog.item(item);
    RecommendedItem {
        id: entry.id,
        title: entry.title.clone(),
        genres: entry.genres.clone(),
        score,
        retrieval_score: score,
        explanation: Vec::new(),
    }
}

/// Contributions shown per item.
const CONTRIBUTIONS_SHOWN: usize = 3;

/// Reads the results of a finished batch into responses.
pub(crate) fn collect(
    batch: &Batch<Cpu>,
    catalog: &Catalog,
    total: Duration,
    device: DeviceKind,
) -> Vec<Response> {
    let mut timings_us: BTreeMap<String, f64> = batch
        .timings
        .iter()
        .map(|t| (t.stage.to_owned(), t.elapsed.as_secs_f64() * 1e6))
        .collect();
    timings_us.insert("total".into(), total.as_secs_f64() * 1e6);
    let results = batch.results;
    let slots = batch.slots;
    batch
        .requests
        .iter()
        .zip(&batch.notes)
        .enumerate()
        .map(|(q, (request, notes))| {
            let mut items = Vec::with_capacity(request.k);
            for r in 0..request.k.min(results) {
                let at = q * results + r;
                let item = batch.result_ids[at];
                if item == u32::MAX {
                    break;
                }
                let mut recommended = plain_item(catalog, item, batch.result_scores[at]);
                recommended.retrieval_score = batch.result_retrieval_scores[at];
                if slots > 0 {
                    let weights = &batch.result_attributions[at * slots..(at + 1) * slots];
                    recommended.explanation = explain(catalog, &notes.sources, weights);
                }
                items.push(recommended);
            }
            Response {
                items,
                timings_us: timings_us.clone(),
                cold_start: notes.cold_start,
                device: device.to_string(),
            }
        })
        .collect()
}

/// The strongest contributions among `weights` (slot s is `sources.get(s)`).
fn explain(catalog: &Catalog, sources: &Sources, weights: &[f32]) -> Vec<ResponseContribution> {
    let mut order: Vec<usize> = (0..sources.len().min(weights.len()))
        .filter(|&s| weights[s] > 0.0)
        .collect();
    order.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(CONTRIBUTIONS_SHOWN)
        .filter_map(|s| sources.get(s).map(|source| (s, source)))
        .map(|(s, source)| match source {
            Source::HistoryItem(item) => {
                let entry = catalog.item(item);
                ResponseContribution {
                    kind: "history",
                    item: Some(entry.id),
                    label: entry.title.clone(),
                    weight: weights[s],
                }
            }
            Source::Context(phrase) => ResponseContribution {
                kind: "context",
                item: None,
                label: phrase.to_string(),
                weight: weights[s],
            },
        })
        .collect()
}

/// Host bytes a CPU batch holds.
pub(crate) fn batch_bytes(batch: &Batch<Cpu>) -> usize {
    4 * (batch.token_ids.capacity()
        + batch.attention_mask.capacity()
        + batch.query_embeddings.capacity()
        + batch.fused.capacity()
        + batch.item_prior.capacity()
        + batch.query_prior.capacity()
        + batch.candidate_ids.capacity()
        + batch.candidate_scores.capacity()
        + batch.result_ids.capacity()
        + batch.result_scores.capacity()
        + batch.result_retrieval_scores.capacity()
        + batch.result_attributions.capacity())
}
