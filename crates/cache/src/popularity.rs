//! Exponentially time-decayed event counts per item.
//!
//! The popularity of item `i` at time `t` is `sum over its events e of 0.5^((t - t_e) / h)`
//! (`h` the half-life). Each item stores that sum as of its latest event, `(value, last)`;
//! a new event at `t >= last` decays the value to `t` and adds one, an out-of-order event
//! at `t < last` adds its own decayed weight `0.5^((last - t) / h)`. Both are exact and O(1).
//!
//! Rankings do not depend on the time they are taken at (every item decays by the same
//! factor), so [`Popularity::hottest`] ranks in the log domain relative to the latest event,
//! which neither underflows for long-idle items nor overflows for busy ones.

use std::cmp::Ordering;

use hyperrec_stage::ItemIndex;

#[derive(Clone, Debug)]
pub(crate) struct Popularity {
    half_life_secs: f64,
    /// Decayed count as of `last[i]`; 0 for items without events.
    value: Vec<f64>,
    /// Timestamp of the item's latest event.
    last: Vec<i64>,
    /// Latest timestamp of any event.
    latest: Option<i64>,
}

impl Popularity {
    pub(crate) fn new(n_items: usize, half_life_secs: f64) -> Self {
        Popularity {
            half_life_secs,
            value: vec![0.0; n_items],
            last: vec![0; n_items],
            latest: None,
        }
    }

    fn decay(&self, elapsed_secs: f64) -> f64 {
        0.5f64.powf(elapsed_secs / self.half_life_secs)
    }

    /// Counts one event of `item` at `timestamp`. The caller checks `item` is in range.
    pub(crate) fn record(&mut self, item: ItemIndex, timestamp: i64) {
        let i = item as usize;
        if self.value[i] == 0.0 {
            self.value[i] = 1.0;
            self.last[i] = timestamp;
        } else if timestamp >= self.last[i] {
            let elapsed = (timestamp - self.last[i]) as f64;
            self.value[i] = self.value[i] * self.decay(elapsed) + 1.0;
            self.last[i] = timestamp;
        } else {
            let early = (self.last[i] - timestamp) as f64;
            self.value[i] += self.decay(early);
        }
        self.latest = Some(self.latest.map_or(timestamp, |t| t.max(timestamp)));
    }

    /// Popularity of `item` at `at` (events after `at` still count, decayed forwards from
    /// their own time; ask at or after the latest event for the plain definition).
    pub(crate) fn at(&self, item: ItemIndex, at: i64) -> f64 {
        let i = item as usize;
        if self.value[i] == 0.0 {
            return 0.0;
        }
        self.value[i] * self.decay((at - self.last[i]) as f64)
    }

    pub(crate) fn latest(&self) -> Option<i64> {
        self.latest
    }

    /// The `n` most popular items with their popularity at the latest event, most popular
    /// first, ties by smaller item index. Items without events are never included.
    pub(crate) fn hottest(&self, n: usize) -> Vec<(ItemIndex, f64)> {
        let Some(latest) = self.latest else {
            return Vec::new();
        };
        // log2 of the popularity at `latest`: exact for equal histories, so ties stay ties.
        let half_life = self.half_life_secs;
        let mut ranked: Vec<(f64, ItemIndex)> = self
            .value
            .iter()
            .zip(&self.last)
            .enumerate()
            .filter(|(_, (value, _))| **value > 0.0)
            .map(|(i, (value, last))| {
                (
                    value.log2() - (latest - last) as f64 / half_life,
                    i as ItemIndex,
                )
            })
            .collect();
        let better = |a: &(f64, ItemIndex), b: &(f64, ItemIndex)| {
            b.0.partial_cmp(&a.0)
                .unwrap_or(Ordering::Equal)
                .then(a.1.cmp(&b.1))
        };
        let n = n.min(ranked.len());
        if n == 0 {
            return Vec::new();
        }
        if n < ranked.len() {
            ranked.select_nth_unstable_by(n - 1, better);
            ranked.truncate(n);
        }
        ranked.sort_unstable_by(better);
        ranked
            .into_iter()
            .map(|(_, item)| (item, self.at(item, latest)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    #[test]
    fn one_half_life_halves_the_count() {
        let mut pop = Popularity::new(3, DAY as f64);
        pop.record(1, 1_000);
        assert_eq!(pop.at(1, 1_000), 1.0);
        assert!((pop.at(1, 1_000 + DAY) - 0.5).abs() < 1e-12);
        assert!((pop.at(1, 1_000 + 3 * DAY) - 0.125).abs() < 1e-12);
        assert_eq!(pop.at(0, 1_000), 0.0);
    }

    #[test]
    fn lazy_decay_equals_the_sum_over_events_in_any_order() {
        let half_life = 3.0 * DAY as f64;
        let events = [
            (0, 5 * DAY),
            (0, 0),
            (0, 2 * DAY),
            (0, 9 * DAY),
            (0, DAY + 17),
            (0, 9 * DAY),
        ];
        let at = 12 * DAY;
        let exact: f64 = events
            .iter()
            .map(|&(_, t)| 0.5f64.powf((at - t) as f64 / half_life))
            .sum();
        let mut in_order = Popularity::new(1, half_life);
        let mut sorted = events;
        sorted.sort_by_key(|e| e.1);
        for (item, t) in sorted {
            in_order.record(item, t);
        }
        let mut shuffled = Popularity::new(1, half_life);
        for (item, t) in events {
            shuffled.record(item, t);
        }
        assert!((in_order.at(0, at) - exact).abs() < 1e-12);
        assert!((shuffled.at(0, at) - exact).abs() < 1e-12);
    }

    #[test]
    fn hottest_ranks_by_decayed_count_then_index() {
        let mut pop = Popularity::new(6, DAY as f64);
        // At the latest event (2 days): item 2 = 1, item 4 = 2 * 0.25 = 0.5.
        pop.record(4, 0);
        pop.record(4, 0);
        pop.record(2, 2 * DAY);
        // Items 1 and 3 tie with item 4's 0.5: one event one day old each.
        pop.record(3, DAY);
        pop.record(1, DAY);
        let hottest = pop.hottest(10);
        let order: Vec<ItemIndex> = hottest.iter().map(|h| h.0).collect();
        assert_eq!(order, vec![2, 1, 3, 4]);
        assert!((hottest[0].1 - 1.0).abs() < 1e-12);
        assert!((hottest[3].1 - 0.5).abs() < 1e-12);
        assert_eq!(
            pop.hottest(2).iter().map(|h| h.0).collect::<Vec<_>>(),
            vec![2, 1]
        );
        assert!(pop.hottest(0).is_empty());
    }

    #[test]
    fn long_idle_items_still_rank() {
        // 100,000 half-lives of idleness: both decayed counts underflow to 0.0 in f64, yet
        // three old events still beat two.
        let mut pop = Popularity::new(3, 1.0);
        for _ in 0..2 {
            pop.record(1, 0);
        }
        for _ in 0..3 {
            pop.record(0, 0);
        }
        pop.record(2, 100_000);
        assert_eq!(pop.latest(), Some(100_000));
        assert_eq!(pop.at(0, 100_000), 0.0);
        assert_eq!(
            pop.hottest(3).iter().map(|h| h.0).collect::<Vec<_>>(),
            vec![2, 0, 1]
        );
    }
}
