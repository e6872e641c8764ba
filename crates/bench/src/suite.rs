//! The measurements: drives a [`Workload`] with prepared [`Traffic`] and keeps every sample.

use std::collections::BTreeMap;
use std::time::Instant;

use hyperrec_stage::{ItemIndex, Request};

use crate::result::{BatchFigure, CacheFigure, EncodingFigure, MemoryRow, StageTimes, TOTAL};
use crate::stats::Summary;
use crate::workload::{CacheOutcome, Workload, WorkloadError};

/// Everything the suite sends to a workload, prepared up front so that generating traffic
/// never shows up in a timing. Queries are distinct across all phases: the encoder keeps
/// an LRU cache of query embeddings, and a repeated query would time a cache hit.
#[derive(Clone, Debug)]
pub struct Traffic {
    /// The first request after the workload is built, timed on its own.
    pub cold: Request,
    /// Requests served before timing starts.
    pub warmup: Vec<Request>,
    /// Requests timed one at a time.
    pub latency: Vec<Request>,
    /// Per batch size: batches of that many distinct requests. The first batch of each
    /// size is a warm-up (buffers are sized on first use) and is not timed.
    pub batches: Vec<(usize, Vec<Vec<Request>>)>,
    /// Catalog texts for the encoding-throughput figure.
    pub encode_texts: Vec<String>,
    /// Items for "similar to X" lookups, drawn by Zipf popularity.
    pub cache_lookups: Vec<ItemIndex>,
    /// Full cache rebuilds to time.
    pub cache_rebuilds: usize,
}

/// What [`measure`] found.
#[derive(Clone, Debug)]
pub struct Measurements {
    pub cold_query: StageTimes,
    pub latency: BTreeMap<String, Summary>,
    pub latency_samples_us: BTreeMap<String, Vec<f64>>,
    pub batches: Vec<BatchFigure>,
    pub encoding: Option<EncodingFigure>,
    pub cache: Option<CacheFigure>,
    pub memory: Vec<MemoryRow>,
}

/// Runs every measurement of the suite on `workload`, reporting each phase to `progress`.
pub fn measure(
    workload: &mut dyn Workload,
    traffic: &Traffic,
    progress: &mut dyn FnMut(&str),
) -> Result<Measurements, WorkloadError> {
    progress("cold query");
    let cold_query = timed_recommend(workload, &traffic.cold)?;

    progress(&format!("warm-up ({} queries)", traffic.warmup.len()));
    for request in &traffic.warmup {
        workload.recommend(request)?;
    }

    progress(&format!(
        "single-query latency ({} queries)",
        traffic.latency.len()
    ));
    let mut latency_samples_us: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for request in &traffic.latency {
        for (stage, us) in timed_recommend(workload, request)? {
            latency_samples_us.entry(stage).or_default().push(us);
        }
    }
    let latency = latency_samples_us
        .iter()
        .filter_map(|(stage, samples)| Summary::of(samples).map(|s| (stage.clone(), s)))
        .collect();

    let mut batches = Vec::new();
    for (size, runs) in &traffic.batches {
        progress(&format!("batch {size} ({} batches)", runs.len()));
        batches.extend(measure_batches(workload, *size, runs)?);
    }

    progress(&format!("encoding ({} texts)", traffic.encode_texts.len()));
    let encoding = measure_encoding(workload, &traffic.encode_texts)?;

    progress(&format!(
        "cache ({} lookups, {} rebuilds)",
        traffic.cache_lookups.len(),
        traffic.cache_rebuilds
    ));
    let cache = measure_cache(workload, &traffic.cache_lookups, traffic.cache_rebuilds)?;

    Ok(Measurements {
        cold_query,
        latency,
        latency_samples_us,
        batches,
        encoding,
        cache,
        memory: workload.memory(),
    })
}

/// Serves one request; keeps the workload's per-stage times and checks `total` is there
/// (a workload that forgets it would silently drop the end-to-end figure).
fn timed_recommend(
    workload: &mut dyn Workload,
    request: &Request,
) -> Result<StageTimes, WorkloadError> {
    let times = workload.recommend(request)?;
    if !times.contains_key(TOTAL) {
        return Err(WorkloadError::Invalid(format!(
            "the workload's timings lack `{TOTAL}`: {:?}",
            times.keys().collect::<Vec<_>>()
        )));
    }
    Ok(times)
}

fn measure_batches(
    workload: &mut dyn Workload,
    size: usize,
    runs: &[Vec<Request>],
) -> Result<Option<BatchFigure>, WorkloadError> {
    let Some((warm, timed)) = runs.split_first() else {
        return Ok(None);
    };
    workload.recommend_batch(warm)?;
    let mut batch_us = Vec::with_capacity(timed.len());
    let mut queries = 0usize;
    for batch in timed {
        let started = Instant::now();
        workload.recommend_batch(batch)?;
        batch_us.push(started.elapsed().as_secs_f64() * 1e6);
        queries += batch.len();
    }
    let Some(summary) = Summary::of(&batch_us) else {
        return Ok(None);
    };
    let seconds = batch_us.iter().sum::<f64>() / 1e6;
    Ok(Some(BatchFigure {
        size,
        batches: timed.len(),
        seconds,
        queries_per_second: queries as f64 / seconds.max(f64::MIN_POSITIVE),
        median_batch_us: summary.median,
    }))
}

fn measure_encoding(
    workload: &mut dyn Workload,
    texts: &[String],
) -> Result<Option<EncodingFigure>, WorkloadError> {
    if texts.is_empty() {
        return Ok(None);
    }
    let started = Instant::now();
    if !workload.encode_texts(texts)? {
        return Ok(None);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Some(EncodingFigure {
        texts: texts.len(),
        seconds,
        texts_per_second: texts.len() as f64 / seconds.max(f64::MIN_POSITIVE),
    }))
}

fn measure_cache(
    workload: &mut dyn Workload,
    lookups: &[ItemIndex],
    rebuilds: usize,
) -> Result<Option<CacheFigure>, WorkloadError> {
    let mut hit_us = Vec::new();
    let mut miss_us = Vec::new();
    for &item in lookups {
        let started = Instant::now();
        let outcome = workload.cache_lookup(item)?;
        let us = started.elapsed().as_secs_f64() * 1e6;
        match outcome {
            Some(CacheOutcome::Hit) => hit_us.push(us),
            Some(CacheOutcome::Miss) => miss_us.push(us),
            None => return Ok(None),
        }
    }
    let mut rebuild_ms = Vec::with_capacity(rebuilds);
    for _ in 0..rebuilds {
        let started = Instant::now();
        if !workload.rebuild_cache()? {
            return Ok(None);
        }
        rebuild_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let hits = hit_us.len() as u64;
    let misses = miss_us.len() as u64;
    Ok(Some(CacheFigure {
        lookups: lookups.len(),
        hits,
        misses,
        hit_rate: hits as f64 / (hits + misses).max(1) as f64,
        hit_latency: Summary::of(&hit_us),
        miss_latency: Summary::of(&miss_us),
        rebuild_ms: Summary::of(&rebuild_ms).map_or(0.0, |s| s.median),
        rows: workload.cache_rows(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyperrec_stage::{Context, UserId};

    /// A workload whose costs are known: each stage takes a fixed time per request, and the
    /// cache answers even items as hits.
    struct Fake {
        served: Vec<String>,
        batches: Vec<usize>,
        rebuilds: usize,
    }

    impl Workload for Fake {
        fn device(&self) -> String {
            "cpu".into()
        }
        fn recommend(&mut self, request: &Request) -> Result<StageTimes, WorkloadError> {
            self.served.push(request.query.clone());
            let cold = if self.served.len() == 1 { 1000.0 } else { 0.0 };
            Ok(StageTimes::from([
                ("encode".to_string(), 10.0 + cold),
                ("similarity".to_string(), 5.0),
                (TOTAL.to_string(), 15.0 + cold),
            ]))
        }
        fn recommend_batch(&mut self, requests: &[Request]) -> Result<(), WorkloadError> {
            self.batches.push(requests.len());
            Ok(())
        }
        fn encode_texts(&mut self, _texts: &[String]) -> Result<bool, WorkloadError> {
            Ok(true)
        }
        fn cache_lookup(&mut self, item: ItemIndex) -> Result<Option<CacheOutcome>, WorkloadError> {
            Ok(Some(if item.is_multiple_of(2) {
                CacheOutcome::Hit
            } else {
                CacheOutcome::Miss
            }))
        }
        fn rebuild_cache(&mut self) -> Result<bool, WorkloadError> {
            self.rebuilds += 1;
            Ok(true)
        }
        fn cache_rows(&self) -> usize {
            7
        }
        fn memory(&self) -> Vec<MemoryRow> {
            vec![MemoryRow {
                name: "items".into(),
                host_bytes: 4,
                device_bytes: 0,
            }]
        }
    }

    fn request(i: usize) -> Request {
        Request {
            user: UserId(i as u32),
            query: format!("query {i}"),
            context: Context::default(),
            k: 10,
            exclude_seen: true,
        }
    }

    #[test]
    fn every_phase_is_measured_once_with_the_cold_query_apart() {
        let traffic = Traffic {
            cold: request(0),
            warmup: (1..3).map(request).collect(),
            latency: (3..13).map(request).collect(),
            batches: vec![(2, vec![vec![request(20), request(21)]; 3])],
            encode_texts: vec!["a".into(); 5],
            cache_lookups: vec![0, 1, 2, 3, 4],
            cache_rebuilds: 2,
        };
        let mut fake = Fake {
            served: Vec::new(),
            batches: Vec::new(),
            rebuilds: 0,
        };
        let mut phases = Vec::new();
        let m = measure(&mut fake, &traffic, &mut |p| phases.push(p.to_string()))
            .expect("fake workload");
        assert_eq!(m.cold_query[TOTAL], 1015.0);
        assert_eq!(m.latency[TOTAL].count, 10);
        assert_eq!(
            m.latency[TOTAL].max, 15.0,
            "the cold query is not in the samples"
        );
        assert_eq!(m.latency["encode"].median, 10.0);
        assert_eq!(fake.served.len(), 13);
        assert_eq!(fake.batches, vec![2, 2, 2], "one warm-up batch, two timed");
        assert_eq!(m.batches[0].batches, 2);
        assert!(m.batches[0].queries_per_second > 0.0);
        let cache = m.cache.expect("cache measured");
        assert_eq!((cache.hits, cache.misses), (3, 2));
        assert!((cache.hit_rate - 0.6).abs() < 1e-12);
        assert_eq!(fake.rebuilds, 2);
        assert_eq!(cache.rows, 7);
        assert_eq!(m.encoding.map(|e| e.texts), Some(5));
        assert!(phases.len() >= 5, "{phases:?}");
    }

    #[test]
    fn a_workload_without_total_is_refused() {
        struct NoTotal;
        impl Workload for NoTotal {
            fn device(&self) -> String {
                "cpu".into()
            }
            fn recommend(&mut self, _: &Request) -> Result<StageTimes, WorkloadError> {
                Ok(StageTimes::from([("encode".to_string(), 1.0)]))
            }
            fn recommend_batch(&mut self, _: &[Request]) -> Result<(), WorkloadError> {
                Ok(())
            }
            fn encode_texts(&mut self, _: &[String]) -> Result<bool, WorkloadError> {
                Ok(false)
            }
            fn cache_lookup(
                &mut self,
                _: ItemIndex,
            ) -> Result<Option<CacheOutcome>, WorkloadError> {
                Ok(None)
            }
            fn rebuild_cache(&mut self) -> Result<bool, WorkloadError> {
                Ok(false)
            }
            fn cache_rows(&self) -> usize {
                0
            }
            fn memory(&self) -> Vec<MemoryRow> {
                Vec::new()
            }
        }
        let traffic = Traffic {
            cold: request(0),
            warmup: Vec::new(),
            latency: Vec::new(),
            batches: Vec::new(),
            encode_texts: Vec::new(),
            cache_lookups: Vec::new(),
            cache_rebuilds: 0,
        };
        let outcome = measure(&mut NoTotal, &traffic, &mut |_| {});
        assert!(matches!(outcome, Err(WorkloadError::Invalid(_))));
    }
}
