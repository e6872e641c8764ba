use std::ops::Range;
use std::sync::Arc;

use rayon::prelude::*;

use hyperrec_catalog::{HistoryEntry, ItemEmbeddings, SharedUsers, UserTable};
use hyperrec_stage::{
    Batch, Contribution, Cpu, Explanation, ItemIndex, RequestNotes, Source, Stage, StageError,
};

use crate::kernel::{AttentionShape, Sources, Values, attend, mat_vec};
use crate::vocabulary::PhraseTable;
use crate::weights::identity_scale;
use crate::{ContextVocabulary, RerankError, RerankWeights};

/// Padding id of `candidate_ids` and `result_ids`.
const NO_ITEM: u32 = u32::MAX;

/// Sizes of the rerank.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RerankConfig {
    /// Top-C retrieval candidates reranked per query. A batch asking for more results than
    /// this reranks that many instead, so every returned item is scored the same way.
    pub candidates: usize,
    /// Most recent history items each candidate attends over.
    pub history_len: usize,
    /// Attention heads; must divide the embedding width.
    pub heads: usize,
    /// Contributions an explanation keeps ([`AttentionRerank::explain`]).
    pub top_contributions: usize,
}

impl Default for RerankConfig {
    fn default() -> Self {
        RerankConfig {
            candidates: 100,
            history_len: 50,
            heads: 4,
            top_contributions: 3,
        }
    }
}

/// The rerank stage on the CPU: multi-head attention of each retrieval candidate over the
/// user's recent history and the request's context phrases (see the crate docs for the
/// formula and the batch fields it reads and writes).
pub struct AttentionRerank {
    items: Arc<ItemEmbeddings>,
    users: SharedUsers,
    context: Arc<ContextVocabulary>,
    config: RerankConfig,
    weights: RerankWeights,
    query: Projection,
    key: Projection,
    value: Projection,
    /// `Some(c)` when value products can reuse the logits (see [`Values::FromLogits`]):
    /// slot `s`'s factor is `gate_s * c`.
    logit_reuse: Option<f32>,
    /// Vocabulary version the phrase projections were computed for.
    phrases_version: Option<u64>,
    /// Per batch: the vocabulary rows of every query's context phrases, concatenated, and
    /// where each query's run starts (`n + 1` entries).
    phrase_rows: Vec<u32>,
    phrase_starts: Vec<usize>,
    genre_scratch: String,
    /// One per parallel worker (a chunk of queries, or a part of one query's candidates),
    /// kept across batches so steady-state batches allocate little.
    scratch: Vec<QueryScratch>,
}

impl AttentionRerank {
    /// Builds the stage. Projections that are not a multiple of the identity are applied to
    /// every item once here (one `[n_items, dim]` table each, 4 B per element), so a query
    /// only looks rows up; the untrained weights need no table.
    pub fn new(
        items: Arc<ItemEmbeddings>,
        users: SharedUsers,
        context: Arc<ContextVocabulary>,
        config: RerankConfig,
        weights: RerankWeights,
    ) -> Result<AttentionRerank, RerankError> {
        let dim = items.dim();
        if config.candidates == 0 {
            return Err(RerankError::InvalidConfig(
                "the rerank needs at least one candidate".into(),
            ));
        }
        weights.validate(dim, config.heads)?;
        let users_dim = users.read().dim();
        for (what, found) in [
            ("user table", users_dim),
            ("context vocabulary", context.dim()),
        ] {
            if found != dim {
                return Err(RerankError::DimensionMismatch {
                    what,
                    expected: dim,
                    found,
                });
            }
        }
        let query = Projection::new(&weights.q_proj, &items);
        let key = Projection::new(&weights.k_proj, &items);
        let value = Projection::new(&weights.v_proj, &items);
        // v.u = g alpha_v^2 (x.c) and logit = alpha_q alpha_k (x.c) / sqrt(d_h).
        let logit_reuse = match (query.scale, key.scale, value.scale) {
            (Some(alpha_q), Some(alpha_k), Some(alpha_v))
                if weights.query_fused_mix == 0.0 && alpha_q * alpha_k != 0.0 =>
            {
                Some(alpha_v * alpha_v * (weights.head_dim() as f32).sqrt() / (alpha_q * alpha_k))
            }
            _ => None,
        };
        Ok(AttentionRerank {
            items,
            users,
            context,
            config,
            weights,
            query,
            key,
            value,
            logit_reuse,
            phrases_version: None,
            phrase_rows: Vec::new(),
            phrase_starts: Vec::new(),
            genre_scratch: String::new(),
            scratch: Vec::new(),
        })
    }

    pub fn config(&self) -> &RerankConfig {
        &self.config
    }

    pub fn weights(&self) -> &RerankWeights {
        &self.weights
    }

    /// The vocabulary the stage reads; insert phrases through it.
    pub fn context(&self) -> &Arc<ContextVocabulary> {
        &self.context
    }

    /// The explanation of result `rank` of query `query` in a batch this stage ran: its
    /// [`RerankConfig::top_contributions`] strongest sources (see [`explain`]). Empty when
    /// the rank or query is out of range.
    pub fn explain(&self, batch: &Batch<Cpu>, query: usize, rank: usize) -> Explanation {
        let (Some(notes), true) = (batch.notes.get(query), rank < batch.results) else {
            return Explanation::default();
        };
        let start = (query * batch.results + rank) * batch.slots;
        let weights = batch
            .result_attributions
            .get(start..start + batch.slots)
            .unwrap_or(&[]);
        explain(
            &notes.sources.to_vec(),
            weights,
            self.config.top_contributions,
        )
    }

    /// Bytes of the projected item and phrase tables the stage holds (zero with the
    /// untrained weights).
    pub fn table_bytes(&self) -> usize {
        [&self.query, &self.key, &self.value]
            .iter()
            .map(|p| (p.items.len() + p.phrases.len()) * size_of::<f32>())
            .sum()
    }
}

impl Stage<Cpu> for AttentionRerank {
    fn name(&self) -> &'static str {
        "rerank"
    }

    /// Reads `candidate_ids`, `candidate_scores`, `fused`, `notes[i].user` and
    /// `requests[i].context`; writes `result_ids`, `result_scores`,
    /// `result_retrieval_scores`, `slots`, `result_attributions` and `notes[i].sources`.
    fn run(&mut self, device: &Cpu, batch: &mut Batch<Cpu>) -> Result<(), StageError> {
        use hyperrec_stage::Device;

        let n = batch.len();
        let dim = self.items.dim();
        check_shape("batch width", dim, batch.dim)?;
        check_shape("fused", n * dim, batch.fused.len())?;
        check_shape(
            "candidate_ids",
            n * batch.candidates,
            batch.candidate_ids.len(),
        )?;
        check_shape(
            "candidate_scores",
            n * batch.candidates,
            batch.candidate_scores.len(),
        )?;

        let users = self.users.read();
        let phrases = self.context.read();
        if self.phrases_version != Some(phrases.version()) {
            self.key.project_phrases(&phrases);
            self.value.project_phrases(&phrases);
            self.phrases_version = Some(phrases.version());
        }

        // Sources of every query, and validation of every row the parallel pass will read,
        // so that pass cannot fail.
        let reranked = batch
            .candidates
            .min(self.config.candidates.max(batch.results));
        let n_items = self.items.len();
        let check_item = |item: ItemIndex| {
            if item as usize >= n_items {
                Err(StageError::UnknownItem(item))
            } else {
                Ok(())
            }
        };
        self.phrase_rows.clear();
        self.phrase_starts.clear();
        self.phrase_starts.push(0);
        let mut slots = 0;
        let mut context: Vec<Arc<str>> = Vec::new();
        for (query, (request, notes)) in batch.requests.iter().zip(&mut batch.notes).enumerate() {
            let history = recent_history(&users, notes, self.config.history_len)?;
            for entry in history {
                check_item(entry.item)?;
            }
            let phrase_rows = &mut self.phrase_rows;
            context.clear();
            phrases.visit_rows(&request.context, &mut self.genre_scratch, |row, phrase| {
                phrase_rows.push(row);
                context.push(phrase.clone());
            });
            self.phrase_starts.push(self.phrase_rows.len());
            // `recent_history` refused unknown rows: a user here is in the table.
            let snapshot = notes
                .user
                .map_or_else(Arc::default, |user| users.shared_history(user).clone());
            notes.sources = hyperrec_stage::Sources::new(
                snapshot,
                self.config.history_len,
                context.as_slice().into(),
            );
            slots = slots.max(notes.sources.len());
            let start = query * batch.candidates;
            for &item in &batch.candidate_ids[start..start + reranked] {
                if item != NO_ITEM {
                    check_item(item)?;
                }
            }
        }

        let results = batch.results;
        batch.slots = slots;
        device.resize(&mut batch.result_ids, n * results)?;
        device.resize(&mut batch.result_scores, n * results)?;
        device.resize(&mut batch.result_retrieval_scores, n * results)?;
        device.resize(&mut batch.result_attributions, n * results * slots)?;
        if n == 0 || results == 0 {
            return Ok(());
        }

        let kernel = QueryKernel {
            items: &self.items,
            users: &users,
            phrases: &phrases,
            query: &self.query,
            key: &self.key,
            value: &self.value,
            logit_reuse: self.logit_reuse,
            weights: &self.weights,
            shape: AttentionShape {
                heads: self.config.heads,
                head_dim: self.weights.head_dim(),
                context_share: self.weights.context_share,
            },
            history_len: self.config.history_len,
            phrase_rows: &self.phrase_rows,
            phrase_starts: &self.phrase_starts,
            notes: &batch.notes,
            candidate_ids: &batch.candidate_ids,
            candidate_scores: &batch.candidate_scores,
            candidates_per_query: batch.candidates,
            reranked,
            fused: &batch.fused,
            results,
            slots,
        };

        let output = QueryOutput {
            ids: &mut batch.result_ids,
            scores: &mut batch.result_scores,
            retrieval: &mut batch.result_retrieval_scores,
            attributions: &mut batch.result_attributions,
        };
        let threads = rayon::current_num_threads().max(1);
        if n < threads {
            rerank_split(&kernel, &mut self.scratch, threads, output);
        } else {
            rerank_by_query(&kernel, &mut self.scratch, threads, output);
        }
        Ok(())
    }
}
/// Fewest candidates worth a parallel part of their own.
const MIN_CANDIDATES_PER_PART: usize = 16;

/// Large batches: one contiguous chunk of queries per thread. Queries cost about the same,
/// so this balances well and lets each chunk keep its scratch across batches.
fn rerank_by_query(
    kernel: &QueryKernel<'_>,
    scratch: &mut Vec<QueryScratch>,
    threads: usize,
    output: QueryOutput<'_>,
) {
    let n = kernel.notes.len();
    let per_chunk = n.div_ceil(threads);
    let chunks = n.div_ceil(per_chunk);
    if scratch.len() < chunks {
        scratch.resize_with(chunks, QueryScratch::default);
    }
    let mut jobs = Vec::with_capacity(chunks);
    let mut rest = output;
    for (chunk, scratch) in scratch.iter_mut().take(chunks).enumerate() {
        let first = chunk * per_chunk;
        let count = per_chunk.min(n - first);
        let (rows, after) = rest.split_queries(count, kernel.results, kernel.slots);
        rest = after;
        jobs.push((first..first + count, scratch, rows));
    }
    jobs.into_par_iter()
        .for_each(|(queries, scratch, mut rows)| {
            for (offset, query) in queries.enumerate() {
                let out = rows.query(offset, kernel.results, kernel.slots);
                kernel.rerank(query, scratch, out);
            }
        });
}

/// Small batches (fewer queries than threads): each query's candidates are split across
/// the threads, so a single query still uses the whole machine. Every part prepares the
/// query's sources itself (a copy of `slots` rows, small next to scoring its candidates).
fn rerank_split(
    kernel: &QueryKernel<'_>,
    scratch: &mut Vec<QueryScratch>,
    threads: usize,
    mut output: QueryOutput<'_>,
) {
    let n = kernel.notes.len();
    let worth = kernel.reranked.div_ceil(MIN_CANDIDATES_PER_PART).max(1);
    let parts = (threads / n.max(1)).clamp(1, worth);
    let per_part = kernel.reranked.div_ceil(parts);
    if scratch.len() < parts {
        scratch.resize_with(parts, QueryScratch::default);
    }
    let scratch = &mut scratch[..parts];
    for query in 0..n {
        scratch
            .par_iter_mut()
            .enumerate()
            .for_each(|(part, scratch)| {
                kernel.prepare(query, scratch);
                let start = (part * per_part).min(kernel.reranked);
                let end = ((part + 1) * per_part).min(kernel.reranked);
                kernel.score(query, start..end, scratch);
            });
        let (whole, others) = scratch.split_at_mut(1);
        for part in others.iter() {
            QueryKernel::absorb(&mut whole[0], part);
        }
        let out = output.query(query, kernel.results, kernel.slots);
        kernel.finish(&mut whole[0], out);
    }
}

fn check_shape(field: &'static str, expected: usize, found: usize) -> Result<(), StageError> {
    if expected == found {
        return Ok(());
    }
    Err(StageError::BatchShape {
        stage: "rerank",
        expected: format!("{field} of {expected}"),
        found: found.to_string(),
    })
}

/// The user's most recent history (oldest first); empty for an unknown user.
fn recent_history<'a>(
    users: &'a UserTable,
    notes: &RequestNotes,
    history_len: usize,
) -> Result<&'a [HistoryEntry], StageError> {
    match notes.user {
        None => Ok(&[]),
        Some(user) if (user as usize) < users.len() => Ok(users.recent(user, history_len)),
        Some(user) => Err(StageError::UnknownUser(user)),
    }
}

/// One projection matrix and, when it is not a multiple of the identity, its products with
/// every item and every context phrase.
struct Projection {
    /// `[dim, dim]`, `[out, in]`.
    matrix: Vec<f32>,
    /// `Some(alpha)` when the matrix is `alpha` times the identity: rows are then used as
    /// they are and multiplied by `alpha`.
    scale: Option<f32>,
    /// `[n_items, dim]` projected items (empty when `scale` is set).
    items: Vec<f32>,
    /// `[n_phrases, dim]` projected phrases (empty when `scale` is set; only keys and values
    /// have phrases).
    phrases: Vec<f32>,
}

impl Projection {
    fn new(matrix: &[f32], items: &ItemEmbeddings) -> Projection {
        let dim = items.dim();
        let scale = identity_scale(matrix, dim);
        let mut projected = Vec::new();
        if scale.is_none() {
            projected = vec![0.0; items.as_slice().len()];
            projected
                .par_chunks_mut(dim)
                .zip(items.as_slice().par_chunks(dim))
                .for_each(|(out, item)| mat_vec(matrix, item, out));
        }
        Projection {
            matrix: matrix.to_vec(),
            scale,
            items: projected,
            phrases: Vec::new(),
        }
    }

    fn project_phrases(&mut self, table: &PhraseTable) {
        if self.scale.is_some() {
            return;
        }
        let dim = table.dim();
        self.phrases.resize(table.embeddings().len(), 0.0);
        for (out, phrase) in self
            .phrases
            .chunks_exact_mut(dim)
            .zip(table.embeddings().chunks_exact(dim))
        {
            mat_vec(&self.matrix, phrase, out);
        }
    }

    /// The projected row of `item`, to be multiplied by the returned factor.
    fn item<'a>(&'a self, items: &'a ItemEmbeddings, item: ItemIndex) -> (&'a [f32], f32) {
        match self.scale {
            Some(alpha) => (items.row(item), alpha),
            None => {
                let dim = items.dim();
                let start = item as usize * dim;
                (&self.items[start..start + dim], 1.0)
            }
        }
    }

    /// The projected row of phrase `row`, to be multiplied by the returned factor.
    fn phrase<'a>(&'a self, table: &'a PhraseTable, row: u32) -> (&'a [f32], f32) {
        match self.scale {
            Some(alpha) => (table.embedding(row), alpha),
            None => {
                let dim = table.dim();
                let start = row as usize * dim;
                (&self.phrases[start..start + dim], 1.0)
            }
        }
    }

    /// `out = W x`.
    fn apply(&self, x: &[f32], out: &mut [f32]) {
        match self.scale {
            Some(alpha) => out.iter_mut().zip(x).for_each(|(o, x)| *o = alpha * x),
            None => mat_vec(&self.matrix, x, out),
        }
    }
}

/// Working memory of one parallel worker, reused across queries and batches.
#[derive(Default)]
struct QueryScratch {
    /// History and context slots of the query prepared in here.
    history: usize,
    context: usize,
    keys: Vec<f32>,
    values: Vec<f32>,
    /// Per slot, with [`Values::FromLogits`].
    factors: Vec<f32>,
    logits: Vec<f32>,
    fused_query: Vec<f32>,
    query: Vec<f32>,
    /// `[heads, slots]` of the candidate being scored.
    head_weights: Vec<f32>,
    /// `[candidates, slots]` head-averaged weights, by candidate position.
    attributions: Vec<f32>,
    candidates: Vec<Scored>,
}

/// A candidate with its scores and its position in the query's candidate list.
#[derive(Clone, Copy, Debug)]
struct Scored {
    item: ItemIndex,
    position: usize,
    retrieval: f32,
    score: f32,
}

/// Rows of the output buffers: one query's, or a run of queries'.
struct QueryOutput<'a> {
    ids: &'a mut [u32],
    scores: &'a mut [f32],
    retrieval: &'a mut [f32],
    attributions: &'a mut [f32],
}

impl<'a> QueryOutput<'a> {
    /// The rows of the first `count` queries, and those of the rest.
    fn split_queries(
        self,
        count: usize,
        results: usize,
        slots: usize,
    ) -> (QueryOutput<'a>, QueryOutput<'a>) {
        let (ids, rest_ids) = self.ids.split_at_mut(count * results);
        let (scores, rest_scores) = self.scores.split_at_mut(count * results);
        let (retrieval, rest_retrieval) = self.retrieval.split_at_mut(count * results);
        let (attributions, rest_attributions) =
            self.attributions.split_at_mut(count * results * slots);
        (
            QueryOutput {
                ids,
                scores,
                retrieval,
                attributions,
            },
            QueryOutput {
                ids: rest_ids,
                scores: rest_scores,
                retrieval: rest_retrieval,
                attributions: rest_attributions,
            },
        )
    }

    /// The rows of query `offset` within these rows.
    fn query(&mut self, offset: usize, results: usize, slots: usize) -> QueryOutput<'_> {
        let rows = offset * results..(offset + 1) * results;
        QueryOutput {
            ids: &mut self.ids[rows.clone()],
            scores: &mut self.scores[rows.clone()],
            retrieval: &mut self.retrieval[rows.clone()],
            attributions: &mut self.attributions[rows.start * slots..rows.end * slots],
        }
    }
}

/// Everything the per-query work reads, shared by the parallel chunks.
struct QueryKernel<'a> {
    items: &'a ItemEmbeddings,
    users: &'a UserTable,
    phrases: &'a PhraseTable,
    query: &'a Projection,
    key: &'a Projection,
    value: &'a Projection,
    logit_reuse: Option<f32>,
    weights: &'a RerankWeights,
    shape: AttentionShape,
    history_len: usize,
    phrase_rows: &'a [u32],
    phrase_starts: &'a [usize],
    notes: &'a [RequestNotes],
    candidate_ids: &'a [u32],
    candidate_scores: &'a [f32],
    candidates_per_query: usize,
    reranked: usize,
    fused: &'a [f32],
    results: usize,
    slots: usize,
}

impl QueryKernel<'_> {
    /// Reranks query `query` into `out`. Every row it reads was validated by `run`.
    fn rerank(&self, query: usize, scratch: &mut QueryScratch, out: QueryOutput<'_>) {
        self.prepare(query, scratch);
        self.score(query, 0..self.reranked, scratch);
        self.finish(scratch, out);
    }

    /// Fills `scratch` with query `query`'s source keys and values (or value factors) and
    /// its projected fused vector, and empties its scored candidates.
    fn prepare(&self, query: usize, scratch: &mut QueryScratch) {
        let dim = self.items.dim();
        let weights = self.weights;
        let history =
            recent_history(self.users, &self.notes[query], self.history_len).unwrap_or(&[]);
        let phrase_rows =
            &self.phrase_rows[self.phrase_starts[query]..self.phrase_starts[query + 1]];
        scratch.history = history.len();
        scratch.context = phrase_rows.len();
        let slots = scratch.history + scratch.context;

        // Keys and gated values (or value factors) of every source slot, history first.
        scratch.keys.resize(slots * dim, 0.0);
        match self.logit_reuse {
            Some(_) => scratch.factors.resize(slots, 0.0),
            None => scratch.values.resize(slots * dim, 0.0),
        }
        let [gate_offset, gate_slope] = weights.history_gate;
        let history_sources = history.iter().map(|entry| {
            let gate = gate_offset + gate_slope * (entry.rating - 3.0) / 2.0;
            let value = self.value.item(self.items, entry.item);
            (self.key.item(self.items, entry.item), value, gate)
        });
        let phrase_sources = phrase_rows.iter().map(|&row| {
            let value = self.value.phrase(self.phrases, row);
            (
                self.key.phrase(self.phrases, row),
                value,
                weights.context_gate,
            )
        });
        for (slot, ((key, key_scale), (value, value_scale), gate)) in
            history_sources.chain(phrase_sources).enumerate()
        {
            let at = slot * dim..(slot + 1) * dim;
            scale_into(&mut scratch.keys[at.clone()], key, key_scale);
            match self.logit_reuse {
                Some(factor) => scratch.factors[slot] = gate * factor,
                None => scale_into(&mut scratch.values[at], value, value_scale * gate),
            }
        }

        if weights.query_fused_mix != 0.0 && slots > 0 {
            scratch.fused_query.resize(dim, 0.0);
            self.query.apply(
                &self.fused[query * dim..(query + 1) * dim],
                &mut scratch.fused_query,
            );
        }
        scratch.candidates.clear();
        scratch.attributions.resize(self.reranked * slots, 0.0);
        scratch.head_weights.resize(self.shape.heads * slots, 0.0);
        scratch.logits.resize(slots, 0.0);
        scratch.query.resize(dim, 0.0);
    }

    /// Scores the candidates at `positions` of query `query` (prepared in `scratch`),
    /// appending them to `scratch.candidates` and their attributions to the rows of
    /// `scratch.attributions` at their positions.
    fn score(&self, query: usize, positions: Range<usize>, scratch: &mut QueryScratch) {
        let weights = self.weights;
        let slots = scratch.history + scratch.context;
        let sources = Sources {
            keys: &scratch.keys,
            history: scratch.history,
            context: scratch.context,
        };
        let beta = weights.query_fused_mix;
        let first = query * self.candidates_per_query;
        let ids = &self.candidate_ids[first..first + self.reranked];
        let retrieval = &self.candidate_scores[first..first + self.reranked];
        let mix = weights.score_mix;
        let inv_heads = 1.0 / self.shape.heads as f32;
        for position in positions {
            let (item, retrieval) = (ids[position], retrieval[position]);
            if item == NO_ITEM {
                continue;
            }
            let score = if slots == 0 {
                // Nothing to attend over: the retrieval score stands, documented in the crate.
                retrieval
            } else {
                let (query_row, query_scale) = self.query.item(self.items, item);
                if beta != 0.0 {
                    for ((q, x), f) in scratch
                        .query
                        .iter_mut()
                        .zip(query_row)
                        .zip(&scratch.fused_query)
                    {
                        *q = (1.0 - beta) * query_scale * x + beta * f;
                    }
                } else {
                    scale_into(&mut scratch.query, query_row, query_scale);
                }
                let values = match self.logit_reuse {
                    Some(_) => Values::FromLogits {
                        factors: &scratch.factors,
                    },
                    None => {
                        let (candidate, scale) = self.value.item(self.items, item);
                        Values::Rows {
                            values: &scratch.values,
                            candidate,
                            scale,
                        }
                    }
                };
                let attention = attend(
                    &scratch.query,
                    &sources,
                    &values,
                    self.shape,
                    &mut scratch.head_weights,
                    &mut scratch.logits,
                );
                let row = &mut scratch.attributions[position * slots..(position + 1) * slots];
                row.fill(0.0);
                for head in scratch.head_weights.chunks_exact(slots) {
                    for (total, w) in row.iter_mut().zip(head) {
                        *total += w * inv_heads;
                    }
                }
                mix.retrieval * retrieval + mix.attention * attention + mix.bias
            };
            scratch.candidates.push(Scored {
                item,
                position,
                retrieval,
                score,
            });
        }
    }

    /// Moves the candidates `part` scored, with their attribution rows, into `whole`; both
    /// were prepared for the same query.
    fn absorb(whole: &mut QueryScratch, part: &QueryScratch) {
        let slots = whole.history + whole.context;
        for candidate in &part.candidates {
            let row = candidate.position * slots..(candidate.position + 1) * slots;
            whole.attributions[row.clone()].copy_from_slice(&part.attributions[row]);
            whole.candidates.push(*candidate);
        }
    }

    /// Orders the scored candidates and writes the query's result rows.
    fn finish(&self, scratch: &mut QueryScratch, out: QueryOutput<'_>) {
        let slots = scratch.history + scratch.context;
        scratch
            .candidates
            .sort_unstable_by(|a, b| b.score.total_cmp(&a.score).then(a.item.cmp(&b.item)));
        out.attributions.fill(0.0);
        for rank in 0..self.results {
            match scratch.candidates.get(rank) {
                Some(candidate) => {
                    out.ids[rank] = candidate.item;
                    out.scores[rank] = candidate.score;
                    out.retrieval[rank] = candidate.retrieval;
                    let from = candidate.position * slots;
                    out.attributions[rank * self.slots..rank * self.slots + slots]
                        .copy_from_slice(&scratch.attributions[from..from + slots]);
                }
                None => {
                    out.ids[rank] = NO_ITEM;
                    out.scores[rank] = f32::NEG_INFINITY;
                    out.retrieval[rank] = f32::NEG_INFINITY;
                }
            }
        }
    }
}

/// `out = scale * x`.
fn scale_into(out: &mut [f32], x: &[f32], scale: f32) {
    out.iter_mut().zip(x).for_each(|(o, x)| *o = scale * x);
}

/// The `top` strongest sources of one result: `weights[s]` is the attribution of
/// `sources[s]` (a row of `result_attributions`, possibly longer than `sources`, as a
/// batch pads its slots). Largest first, ties by slot; sources with zero weight are left
/// out, so a result without sources has an empty explanation.
pub fn explain(sources: &[Source], weights: &[f32], top: usize) -> Explanation {
    let mut slots: Vec<(usize, f32)> = weights
        .iter()
        .copied()
        .enumerate()
        .take(sources.len())
        .filter(|&(_, weight)| weight > 0.0)
        .collect();
    slots.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    Explanation {
        contributions: slots
            .into_iter()
            .take(top)
            .map(|(slot, weight)| Contribution {
                source: sources[slot].clone(),
                weight,
            })
            .collect(),
    }
}
