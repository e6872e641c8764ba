//! The arithmetic of one candidate's attention, free of batch bookkeeping so tests can
//! check it directly and the GPU kernel has a line-by-line reference.

/// Dot product with eight independent accumulators, so the compiler vectorizes it. The
/// summation order is fixed, so results are bit-for-bit reproducible.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let a_chunks = a.chunks_exact(8);
    let b_chunks = b.chunks_exact(8);
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for lane in 0..8 {
            lanes[lane] += x[lane] * y[lane];
        }
    }
    // Halving tree: lanes 0-3 plus 4-7, then pairs. This order maps onto two 4-wide
    // registers added lane-wise; other orders made the compiler shuffle inside the loop.
    let mut width = lanes.len();
    while width > 1 {
        width /= 2;
        for lane in 0..width {
            lanes[lane] += lanes[lane + width];
        }
    }
    lanes[0] + tail
}

/// `out = matrix * x` for a row-major `[out.len(), x.len()]` matrix.
pub(crate) fn mat_vec(matrix: &[f32], x: &[f32], out: &mut [f32]) {
    for (o, row) in out.iter_mut().zip(matrix.chunks_exact(x.len())) {
        *o = dot(row, x);
    }
}

/// The keys one query's candidates attend over: `history` history-item slots followed by
/// `context` context-phrase slots.
pub(crate) struct Sources<'a> {
    /// `[history + context, dim]` projected keys.
    pub keys: &'a [f32],
    pub history: usize,
    pub context: usize,
}

impl Sources<'_> {
    pub fn len(&self) -> usize {
        self.history + self.context
    }
}

/// How the value products `v_s^h . u^h` of one candidate are obtained.
pub(crate) enum Values<'a> {
    /// From the rows: `values` is `[slots, dim]` projected values already multiplied by
    /// each slot's gate, `candidate` the candidate's projected value row, to be multiplied
    /// by `scale`.
    Rows {
        values: &'a [f32],
        candidate: &'a [f32],
        scale: f32,
    },
    /// Every projection is a multiple of the identity and the query side is the candidate
    /// alone (the untrained heads), so `v_s^h . u^h = factors[s] * logit[h, s]`: the value
    /// products are the logit products reused, which halves the work.
    FromLogits { factors: &'a [f32] },
}

/// Head geometry and the share of attention the context pool gets.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttentionShape {
    pub heads: usize,
    pub head_dim: usize,
    /// lambda: mass of the context pool when both pools are present.
    pub context_share: f32,
}

impl AttentionShape {
    /// Attention mass of the (history, context) pools: `(1 - lambda, lambda)` when both are
    /// present, all of it on the one that is otherwise.
    fn pool_masses(&self, sources: &Sources<'_>) -> (f32, f32) {
        match (sources.history > 0, sources.context > 0) {
            (true, true) => (1.0 - self.context_share, self.context_share),
            (true, false) => (1.0, 0.0),
            (false, true) => (0.0, 1.0),
            (false, false) => (0.0, 0.0),
        }
    }
}

/// Attention of one candidate over `sources`.
///
/// `query` is the candidate's projected query vector (`dim`). Writes the attention weights
/// into `weights` (`[heads, sources.len()]`): per head, the history slots share
/// `1 - lambda` by a softmax of `q.k / sqrt(d_h)` among themselves and the context slots
/// `lambda` likewise, so each head's weights sum to 1. `logits` is scratch of at least
/// `sources.len()`. Returns the attention score, `sum_h sum_s w[h, s] * (v_s^h . u^h)`.
pub(crate) fn attend(
    query: &[f32],
    sources: &Sources<'_>,
    values: &Values<'_>,
    shape: AttentionShape,
    weights: &mut [f32],
    logits: &mut [f32],
) -> f32 {
    let slots = sources.len();
    let dim = shape.heads * shape.head_dim;
    let inv_sqrt_head_dim = 1.0 / (shape.head_dim as f32).sqrt();
    let (history_mass, context_mass) = shape.pool_masses(sources);
    let logits = &mut logits[..slots];
    let mut score = 0.0;
    for head in 0..shape.heads {
        let columns = head * shape.head_dim..(head + 1) * shape.head_dim;
        let query_head = &query[columns.clone()];
        for (slot, logit) in logits.iter_mut().enumerate() {
            let key = &sources.keys[slot * dim..(slot + 1) * dim];
            *logit = dot(query_head, &key[columns.clone()]) * inv_sqrt_head_dim;
        }
        let head_weights = &mut weights[head * slots..(head + 1) * slots];
        head_weights.copy_from_slice(logits);
        let (history_weights, context_weights) = head_weights.split_at_mut(sources.history);
        softmax_into_mass(history_weights, history_mass);
        softmax_into_mass(context_weights, context_mass);
        match values {
            Values::Rows {
                values,
                candidate,
                scale,
            } => {
                let candidate_head = &candidate[columns.clone()];
                for (slot, &weight) in head_weights.iter().enumerate() {
                    let value = &values[slot * dim..(slot + 1) * dim];
                    score += weight * scale * dot(&value[columns.clone()], candidate_head);
                }
            }
            Values::FromLogits { factors } => {
                for ((&weight, &factor), &logit) in head_weights.iter().zip(*factors).zip(&*logits)
                {
                    score += weight * factor * logit;
                }
            }
        }
    }
    score
}

/// Replaces `logits` by `mass * softmax(logits)` (nothing to do when empty).
fn softmax_into_mass(logits: &mut [f32], mass: f32) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0.0;
    for x in logits.iter_mut() {
        *x = (*x - max).exp();
        total += *x;
    }
    let scale = mass / total;
    logits.iter_mut().for_each(|x| *x *= scale);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_a_plain_sum_for_every_length() {
        for len in 0..40 {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - plain).abs() < 1e-5, "len {len}");
        }
    }

    #[test]
    fn each_head_s_weights_sum_to_one() {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        // xorshift: enough randomness for a kernel test without a dependency.
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        let shape = AttentionShape {
            heads: 4,
            head_dim: 8,
            context_share: 0.3,
        };
        let dim = 32;
        for (history, context) in [(7, 3), (5, 0), (0, 4), (1, 1)] {
            let slots = history + context;
            let keys: Vec<f32> = (0..slots * dim).map(|_| 3.0 * next()).collect();
            let values: Vec<f32> = (0..slots * dim).map(|_| next()).collect();
            let query: Vec<f32> = (0..dim).map(|_| 3.0 * next()).collect();
            let candidate: Vec<f32> = (0..dim).map(|_| next()).collect();
            let sources = Sources {
                keys: &keys,
                history,
                context,
            };
            let values = Values::Rows {
                values: &values,
                candidate: &candidate,
                scale: 1.0,
            };
            let mut weights = vec![f32::NAN; shape.heads * slots];
            let mut logits = vec![0.0; slots];
            let score = attend(&query, &sources, &values, shape, &mut weights, &mut logits);
            assert!(score.is_finite(), "seed {seed}");
            for head in weights.chunks_exact(slots) {
                assert!(head.iter().all(|&w| w > 0.0), "{head:?} (seed {seed})");
                let total: f32 = head.iter().sum();
                assert!(
                    (total - 1.0).abs() < 1e-5,
                    "{history}+{context}: {total} (seed {seed})"
                );
                if history > 0 && context > 0 {
                    let context_total: f32 = head[history..].iter().sum();
                    assert!((context_total - 0.3).abs() < 1e-5, "seed {seed}");
                }
            }
        }
    }
}
