//! Rerank stage: multi-head attention of candidates over the user's history and context.
//!
//! [`AttentionRerank`] takes the top-C retrieval candidates of each query and rescores them
//! by how they relate to what the user recently rated and to the situation of the request,
//! and records which of those sources mattered, for the explanations.
//!
//! # Batch fields
//!
//! Reads `candidate_ids` / `candidate_scores` (the first `R = min(batch.candidates,
//! max(C, batch.results))` of each row; `u32::MAX` padding is skipped), `fused`,
//! `notes[i].user` and `requests[i].context`. Writes `result_ids`, `result_scores`,
//! `result_retrieval_scores` (`[n, results]`, padded with `u32::MAX` / `-inf` like the
//! candidates), `slots` (the most sources any query of the batch has), `result_attributions`
//! (`[n, results, slots]`, zero in padding slots) and `notes[i].sources`: slot `s` of query
//! `i` is `notes[i].sources.get(s)`, the user's `history_len` most recent history items oldest
//! first, then the context phrases of [`ContextVocabulary::phrases_for`] that the vocabulary
//! holds (a phrase it lacks is skipped).
//!
//! # Scoring (the reference the GPU kernel matches)
//!
//! Per query, with `d` the width, `H` heads of `d_h = d / H` columns, `W_q, W_k, W_v` the
//! `[d, d]` projections of [`RerankWeights`] (head `h` = output rows `h*d_h..(h+1)*d_h`):
//!
//! - sources: history items `x_s` with ratings `rho_s`, then context phrases `p_s`;
//!   `k_s = W_k x_s`, `v_s = g_s W_v x_s` with the gate
//!   `g_s = offset + slope * (rho_s - 3) / 2` for history items (untrained: `(rho - 3) / 2`,
//!   so a dislike's value counts against the candidate) and `g_s = context_gate` for phrases;
//! - candidate `c` with retrieval score `r`: `q = (1 - beta) W_q c + beta W_q f` (`f` the
//!   fused vector), `u = W_v c`;
//! - logits `l[h, s] = q^h . k_s^h / sqrt(d_h)`; weights: the history slots share
//!   `1 - lambda` by a softmax of their logits, the context slots `lambda` likewise
//!   (`lambda = context_share`; a pool takes all the mass when the other is empty), so each
//!   head's weights sum to 1;
//! - attention score `a = sum_h sum_s w[h, s] (v_s^h . u^h)`;
//! - final score `w_retrieval r + w_attention a + bias`; a query with no source at all (no
//!   history, no known context phrase) keeps `final = r` exactly;
//! - attribution of slot `s` = `(1 / H) sum_h w[h, s]` (sums to 1 over the slots);
//! - results: by final score descending, ties by item index.
//!
//! With the untrained weights ([`RerankWeights::untrained`]) every projection is a multiple
//! of the identity: head `h` compares the `h`-th slice of the embeddings (cosine-like
//! attention at temperature 0.1), the attention score is the rating-signed, attention
//! weighted similarity of the candidate to the user's history and context, and retrieval
//! keeps weight 1 against 0.2 for attention.
//!
//! # For the GPU port and the trainer
//!
//! The CPU stage runs in parallel (rayon) over chunks of queries; a batch with fewer queries
//! than threads splits each query's candidates across the threads instead. Either way every
//! candidate's arithmetic is the same, so results are bit-for-bit independent of the batch
//! and the thread count.
//!
//! The CPU stage applies trained (non-identity) projections to every item once at
//! construction and looks rows up per query; with the untrained weights it uses the item
//! rows as they are and, since values and keys then coincide up to a per-slot factor, reuses
//! the logit products for the value products. Both are evaluation orders of the formula
//! above, not changes to it. A trainer (candle-nn) reproduces the formula with the tensor
//! names of [`weights`]; `query_fused_mix` and `context_share` must stay in [0, 1] (train
//! them through a sigmoid), and `history_gate` starts at `(0, 1)`.
//!
//! # Cold start
//!
//! An unknown user (`notes[i].user == None`) or one with an empty history attends over the
//! context phrases only; with no context either, the final score is the retrieval score and
//! the order is retrieval's.

mod error;
mod kernel;
mod stage;
mod vocabulary;
pub mod weights;

pub use error::RerankError;
pub use stage::{AttentionRerank, RerankConfig, explain};
pub use vocabulary::{
    ContextVocabulary, PhraseTable, genre_phrase, social_phrase, time_of_day_phrase,
};
pub use weights::{RerankWeights, ScoreMix};
