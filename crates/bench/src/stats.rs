//! Order statistics of latency samples.

use serde::{Deserialize, Serialize};

/// Distribution of one set of samples (microseconds unless a field says otherwise).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: usize,
    pub min: f64,
    pub median: f64,
    pub mean: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// Summarizes `samples`; `None` when there are none (or any is NaN, which no timer
    /// produces, so it would mean a bug upstream rather than a figure worth printing).
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() || samples.iter().any(|x| x.is_nan()) {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let last = sorted.len() - 1;
        Some(Summary {
            count: sorted.len(),
            min: sorted[0],
            median: quantile_sorted(&sorted, 0.5),
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            p95: quantile_sorted(&sorted, 0.95),
            p99: quantile_sorted(&sorted, 0.99),
            max: sorted[last],
        })
    }
}

/// The `q` quantile (0..=1) of ascending `sorted` by linear interpolation between the two
/// nearest ranks (the "type 7" rule of R and NumPy, so the peer's figures compare).
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let position = q.clamp(0.0, 1.0) * (n - 1) as f64;
            let below = position.floor() as usize;
            let above = (below + 1).min(n - 1);
            let fraction = position - below as f64;
            sorted[below] + (sorted[above] - sorted[below]) * fraction
        }
    }
}

/// Points `(value, fraction of samples <= value)` of the empirical CDF, thinned to at most
/// `max_points` so a plot of 100,000 samples stays a small file.
pub fn cdf_points(samples: &[f64], max_points: usize) -> Vec<(f64, f64)> {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 || max_points == 0 {
        return Vec::new();
    }
    let step = n.div_ceil(max_points).max(1);
    let mut points: Vec<(f64, f64)> = (0..n)
        .step_by(step)
        .map(|i| (sorted[i], (i + 1) as f64 / n as f64))
        .collect();
    if points.last().map(|p| p.1) != Some(1.0) {
        points.push((sorted[n - 1], 1.0));
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    fn clock_seed() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    }

    /// xorshift: enough randomness for order statistics without a dependency.
    fn samples(seed: u64, n: usize) -> Vec<f64> {
        let mut state = seed | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 1_000_000) as f64 / 100.0
            })
            .collect()
    }

    #[test]
    fn summary_matches_a_naive_rank_reference() {
        let seed = clock_seed();
        let n = 1 + (seed % 997) as usize;
        let data = samples(seed, n);
        let summary = Summary::of(&data).expect("non-empty");
        let mut sorted = data.clone();
        sorted.sort_by(f64::total_cmp);
        assert_eq!(summary.count, n, "seed {seed}");
        assert_eq!(summary.min, sorted[0], "seed {seed}");
        assert_eq!(summary.max, sorted[n - 1], "seed {seed}");
        // Every quantile lies between the two ranks around it.
        for (q, value) in [
            (0.5, summary.median),
            (0.95, summary.p95),
            (0.99, summary.p99),
        ] {
            let position = q * (n - 1) as f64;
            let lo = sorted[position.floor() as usize];
            let hi = sorted[position.ceil() as usize];
            assert!(
                lo <= value && value <= hi,
                "seed {seed}: q{q} {value} not in [{lo}, {hi}]"
            );
        }
        assert!(summary.min <= summary.median && summary.median <= summary.p95);
        assert!(summary.p95 <= summary.p99 && summary.p99 <= summary.max);
    }

    #[test]
    fn known_quantiles() {
        let data: Vec<f64> = (1..=101).map(f64::from).collect();
        let summary = Summary::of(&data).expect("non-empty");
        assert_eq!(summary.median, 51.0);
        assert_eq!(summary.p95, 96.0);
        assert_eq!(summary.p99, 100.0);
        assert_eq!(summary.mean, 51.0);
    }

    #[test]
    fn empty_or_nan_has_no_summary() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn cdf_is_monotone_ends_at_one_and_respects_the_point_budget() {
        let seed = clock_seed();
        let data = samples(seed, 5000);
        let points = cdf_points(&data, 200);
        assert!(points.len() <= 201, "seed {seed}: {} points", points.len());
        assert_eq!(points.last().map(|p| p.1), Some(1.0), "seed {seed}");
        for pair in points.windows(2) {
            assert!(
                pair[0].0 <= pair[1].0 && pair[0].1 < pair[1].1,
                "seed {seed}"
            );
        }
    }
}
