//! Ranking metrics at a cutoff, per query and averaged over queries.

use hyperrec_stage::ItemIndex;
use serde::Serialize;

/// The cutoff every reported metric uses.
pub const CUTOFF: usize = 10;

/// Metrics of one ranked list against one relevant set.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct QueryMetrics {
    /// DCG with binary gains (`1 / log2(rank + 1)` per hit, rank from 1) over the ideal DCG
    /// of `min(|relevant|, k)` hits.
    pub ndcg: f64,
    /// Hits in the top `k` over `|relevant|`.
    pub recall: f64,
    /// Hits in the top `k` over `min(|relevant|, k)` (reaches 1 even when `|relevant| > k`).
    pub recall_capped: f64,
    /// 1 when the top `k` holds a relevant item, else 0.
    pub hit: f64,
    /// `1 / rank` of the first relevant item in the top `k`, else 0.
    pub reciprocal_rank: f64,
}

impl QueryMetrics {
    /// Scores the first `k` items of `ranked` (best first) against `relevant`, which must
    /// be sorted ascending. An empty relevant set scores 0 everywhere.
    pub fn compute(ranked: &[ItemIndex], relevant: &[ItemIndex], k: usize) -> Self {
        if relevant.is_empty() || k == 0 {
            return QueryMetrics::default();
        }
        let mut dcg = 0.0;
        let mut hits = 0usize;
        let mut reciprocal_rank = 0.0;
        for (position, item) in ranked.iter().take(k).enumerate() {
            if relevant.binary_search(item).is_ok() {
                let rank = position + 1;
                dcg += discount(rank);
                hits += 1;
                if reciprocal_rank == 0.0 {
                    reciprocal_rank = 1.0 / rank as f64;
                }
            }
        }
        let ideal_hits = relevant.len().min(k);
        let ideal: f64 = (1..=ideal_hits).map(discount).sum();
        QueryMetrics {
            ndcg: dcg / ideal,
            recall: hits as f64 / relevant.len() as f64,
            recall_capped: hits as f64 / ideal_hits as f64,
            hit: if hits > 0 { 1.0 } else { 0.0 },
            reciprocal_rank,
        }
    }
}

/// `1 / log2(rank + 1)` for a 1-based rank.
fn discount(rank: usize) -> f64 {
    1.0 / ((rank + 1) as f64).log2()
}

/// Metrics averaged over queries (each query weighs the same).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct MetricSummary {
    pub ndcg_at_10: f64,
    /// Hits / |relevant| (the standard definition; see `recall_capped_at_10`).
    pub recall_at_10: f64,
    /// Hits / min(|relevant|, 10).
    pub recall_capped_at_10: f64,
    pub hit_rate_at_10: f64,
    pub mrr_at_10: f64,
    pub queries: usize,
}

impl MetricSummary {
    /// The mean of `per_query` (all zeros, with 0 queries, when it is empty).
    pub fn mean(per_query: &[QueryMetrics]) -> Self {
        let n = per_query.len();
        if n == 0 {
            return MetricSummary::default();
        }
        let mean = |f: fn(&QueryMetrics) -> f64| per_query.iter().map(f).sum::<f64>() / n as f64;
        MetricSummary {
            ndcg_at_10: mean(|m| m.ndcg),
            recall_at_10: mean(|m| m.recall),
            recall_capped_at_10: mean(|m| m.recall_capped),
            hit_rate_at_10: mean(|m| m.hit),
            mrr_at_10: mean(|m| m.reciprocal_rank),
            queries: n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// Ranked [5, 3, 9, 1, 7] at k = 4 against relevant {1, 3, 7}:
    /// hits at ranks 2 and 4 (7 is at rank 5, past the cutoff).
    /// DCG  = 1/log2(3) + 1/log2(5)          = 0.630929754 + 0.430676558 = 1.061606312
    /// IDCG = 1/log2(2) + 1/log2(3) + 1/log2(4) = 1 + 0.630929754 + 0.5   = 2.130929754
    /// NDCG = 1.061606312 / 2.130929754 = 0.498189
    /// recall = 2/3, capped recall = 2/min(3,4) = 2/3, hit = 1, RR = 1/2.
    #[test]
    fn metrics_of_a_hand_computed_list() {
        let m = QueryMetrics::compute(&[5, 3, 9, 1, 7], &[1, 3, 7], 4);
        assert!(
            (m.ndcg - 1.061_606_312 / 2.130_929_754).abs() < 1e-8,
            "{m:?}"
        );
        assert!((m.ndcg - 0.498_189).abs() < 1e-6, "{m:?}");
        assert!(close(m.recall, 2.0 / 3.0), "{m:?}");
        assert!(close(m.recall_capped, 2.0 / 3.0), "{m:?}");
        assert!(close(m.hit, 1.0), "{m:?}");
        assert!(close(m.reciprocal_rank, 0.5), "{m:?}");
    }

    /// 12 relevant items (100..=111), k = 10, hits at ranks 1 and 3:
    /// DCG = 1 + 1/log2(4) = 1.5; IDCG = sum over ranks 1..=10 of 1/log2(r+1) = 4.543559338;
    /// NDCG = 0.330138; recall = 2/12; capped recall = 2/10; RR = 1.
    #[test]
    fn more_relevant_items_than_the_cutoff() {
        let relevant: Vec<ItemIndex> = (100..112).collect();
        let ranked = [100, 7, 101, 8, 9, 10, 11, 12, 13, 14, 102];
        let m = QueryMetrics::compute(&ranked, &relevant, 10);
        assert!((m.ndcg - 1.5 / 4.543_559_338).abs() < 1e-8, "{m:?}");
        assert!((m.ndcg - 0.330_138).abs() < 1e-6, "{m:?}");
        assert!(close(m.recall, 2.0 / 12.0), "{m:?}");
        assert!(close(m.recall_capped, 0.2), "{m:?}");
        assert!(close(m.reciprocal_rank, 1.0), "{m:?}");
    }

    #[test]
    fn misses_and_empty_inputs_score_zero() {
        assert_eq!(
            QueryMetrics::compute(&[1, 2, 3], &[4], 10),
            QueryMetrics::default()
        );
        assert_eq!(
            QueryMetrics::compute(&[], &[4], 10),
            QueryMetrics::default()
        );
        assert_eq!(
            QueryMetrics::compute(&[4], &[], 10),
            QueryMetrics::default()
        );
    }

    /// The two queries above average to NDCG (0.498189 + 0.330138) / 2 = 0.414163,
    /// hit rate 1, MRR (0.5 + 1) / 2 = 0.75, recall (2/3 + 2/12) / 2 = 0.416667.
    #[test]
    fn summary_is_the_mean_over_queries() {
        let relevant: Vec<ItemIndex> = (100..112).collect();
        let per_query = [
            QueryMetrics::compute(&[5, 3, 9, 1, 7], &[1, 3, 7], 4),
            QueryMetrics::compute(&[100, 7, 101], &relevant, 10),
        ];
        let summary = MetricSummary::mean(&per_query);
        assert_eq!(summary.queries, 2);
        assert!((summary.ndcg_at_10 - 0.414_163).abs() < 1e-6, "{summary:?}");
        assert!(close(summary.hit_rate_at_10, 1.0));
        assert!(close(summary.mrr_at_10, 0.75));
        assert!((summary.recall_at_10 - 0.416_667).abs() < 1e-6);
        assert_eq!(MetricSummary::mean(&[]).queries, 0);
    }
}
