//! The GPU temporal cache against `hyperrec-cache` on fresh random inputs: the history prior
//! (embedding rows built on the GPU, and collaborative rows uploaded from the CPU cache's
//! hot table), "similar to X" on hits and misses, and rebuilds that swap tables. Each test
//! skips with a visible notice where there is no CUDA device.

#![cfg(feature = "cuda")]

mod common;

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use common::{
    cuda_or_skip, device_tables as tables, download, random_items, random_queries, random_requests,
    random_users, seed,
};
use hyperrec_cache::{CacheConfig, CacheLookup, RowSource, TemporalCache};
use hyperrec_catalog::SharedUsers;
use hyperrec_fusion::{Fusion, FusionConfig};
use hyperrec_kernels::{
    Cuda, CudaCache, CudaCacheConfig, CudaFusion, CudaRerank, CudaSimilarity, GpuPath,
    SharedTables, SimilarityParams,
};
use hyperrec_stage::{Batch, Cpu, Device, Request, Stage};

const DIM: usize = 384;
/// Largest error of one int8 row value (half a step of max|row| / 127 for rows whose
/// maximum is about 1) plus fp16 rounding, per unit of history weight.
const PRIOR_TOLERANCE_PER_WEIGHT: f32 = 6e-3;

/// Collaborative-looking weights: a deterministic pseudo-random function of the pair, in
/// [-0.5, 1], with 1 on the diagonal.
fn collaborative_row(item: u32, out: &mut [f32]) {
    for (j, o) in out.iter_mut().enumerate() {
        let mut h = (item as u64) << 32 | j as u64;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        *o = if j as u32 == item {
            1.0
        } else {
            (h % 1501) as f32 / 1000.0 - 0.5
        };
    }
}

/// Runs the CPU fusion + cache and the GPU fusion + cache on the same requests and compares
/// the priors.
#[allow(clippy::too_many_arguments)]
fn compare_priors(
    cuda: &Cuda,
    users: &SharedUsers,
    cpu_cache: &mut TemporalCache,
    gpu_cache: &mut CudaCache,
    tables: &SharedTables,
    requests: Vec<Request>,
    queries: &[f32],
    history_weight: f32,
    context: &str,
) {
    let mut cpu = Batch::new(&Cpu, DIM).expect("cpu batch");
    cpu.reset(&Cpu, requests.clone()).expect("reset");
    cpu.query_embeddings.copy_from_slice(queries);
    let mut fusion = Fusion::new(users.clone(), FusionConfig { alpha: 0.4 }).expect("fusion");
    fusion.run(&Cpu, &mut cpu).expect("cpu fusion");
    cpu_cache.run(&Cpu, &mut cpu).expect("cpu cache");

    let mut gpu = Batch::new(cuda, DIM).expect("gpu batch");
    gpu.reset(cuda, requests).expect("reset");
    cuda.upload(queries, &mut gpu.query_embeddings)
        .expect("upload");
    let mut cuda_fusion =
        CudaFusion::new(cuda, users.clone(), tables.clone(), 0.4).expect("cuda fusion");
    cuda_fusion.run(cuda, &mut gpu).expect("gpu fusion");
    // Poison the prior so unwritten values show.
    let poison = vec![f32::NAN; cpu.item_prior.len()];
    cuda.resize(&mut gpu.item_prior, poison.len())
        .expect("resize");
    cuda.upload(&poison, &mut gpu.item_prior).expect("poison");
    gpu_cache.run(cuda, &mut gpu).expect("gpu cache");
    cuda.synchronize().expect("sync");
    let gpu_prior = download(cuda, &gpu.item_prior);
    assert_eq!(
        gpu_prior.len(),
        cpu.item_prior.len(),
        "{context}: prior sizes differ"
    );
    let tolerance = history_weight.abs() * PRIOR_TOLERANCE_PER_WEIGHT;
    let mut worst = 0.0f32;
    for (i, (&g, &c)) in gpu_prior.iter().zip(&cpu.item_prior).enumerate() {
        let error = (g - c).abs();
        assert!(
            error <= tolerance,
            "{context}: prior[{i}] GPU {g} vs CPU {c} (tolerance {tolerance})"
        );
        worst = worst.max(error);
    }
    let nonzero = cpu.item_prior.iter().filter(|&&x| x != 0.0).count();
    assert!(
        cpu.item_prior.is_empty() || nonzero > 0,
        "{context}: the CPU prior is all zero, the test would prove nothing"
    );
    eprintln!(
        "{context}: {} prior values, worst |GPU - CPU| {worst:.2e} (tolerance {tolerance:.1e})",
        gpu_prior.len()
    );
}

#[test]
fn prior_matches_the_cpu_cache_with_embedding_rows() {
    let Some(cuda) = cuda_or_skip("prior_matches_the_cpu_cache_with_embedding_rows") else {
        return;
    };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let items = random_items(&mut rng, 5000, DIM);
    let users = random_users(&mut rng, &items, 300, 60);
    let tables = tables(&cuda, &items, &users);
    let config = CacheConfig {
        // Fewer hot rows than history items, so both hits and misses occur.
        hot_items: rng.random_range(800..2000),
        history_weight: rng.random_range(0.1f32..0.6),
        ..CacheConfig::default()
    };
    let mut cpu_cache =
        TemporalCache::new(items.clone(), users.clone(), config.clone()).expect("cpu cache");
    let mut gpu_cache = CudaCache::new(
        &cuda,
        tables.clone(),
        users.clone(),
        items.clone(),
        cpu_cache.handle(),
        RowSource::Embedding,
        CudaCacheConfig {
            chunk_rows: 300,
            ..CudaCacheConfig::from_cpu(&config)
        },
    )
    .expect("gpu cache");
    assert_eq!(
        gpu_cache.hot_items(),
        cpu_cache.handle().snapshot().items(),
        "seed {seed}: hot sets differ"
    );
    for n in [1usize, 7, 64] {
        let requests = random_requests(&mut rng, 300, n, 10);
        let queries = random_queries(&mut rng, n, DIM);
        compare_priors(
            &cuda,
            &users,
            &mut cpu_cache,
            &mut gpu_cache,
            &tables,
            requests,
            &queries,
            config.history_weight,
            &format!("seed {seed}, batch {n}"),
        );
    }
    let stats = gpu_cache.stats();
    assert!(
        stats.hits > 0 && stats.misses > 0,
        "seed {seed}: want hits and misses, got {stats:?}"
    );

    // New events make other items hot; after both rebuild, the priors agree again, and
    // until the GPU rebuild is swapped in its hot set stays the old one.
    let handle = cpu_cache.handle();
    let before = gpu_cache.hot_items().to_vec();
    let newcomers: Vec<u32> = (0..50).map(|_| rng.random_range(0..5000u32)).collect();
    for &item in &newcomers {
        for t in 0..40 {
            handle.record(item, 2_000_000 + t).expect("record");
        }
    }
    cpu_cache.rebuild_now().expect("cpu rebuild");
    gpu_cache.start_rebuild(&cuda).expect("start rebuild");
    assert_eq!(
        gpu_cache.hot_items(),
        &before[..],
        "seed {seed}: swapped early"
    );
    let requests = random_requests(&mut rng, 300, 16, 10);
    let queries = random_queries(&mut rng, 16, DIM);
    while gpu_cache.rebuilding() {
        gpu_cache.poll(&cuda).expect("poll");
    }
    assert_eq!(
        gpu_cache.hot_items(),
        handle.snapshot().items(),
        "seed {seed}: hot sets differ after the rebuild"
    );
    for item in newcomers {
        assert!(
            gpu_cache.hot_items().contains(&item),
            "seed {seed}: {item} not hot"
        );
    }
    compare_priors(
        &cuda,
        &users,
        &mut cpu_cache,
        &mut gpu_cache,
        &tables,
        requests,
        &queries,
        config.history_weight,
        &format!("seed {seed}, after rebuild"),
    );
}

#[test]
fn prior_matches_the_cpu_cache_with_uploaded_collaborative_rows() {
    let Some(cuda) = cuda_or_skip("prior_matches_the_cpu_cache_with_uploaded_collaborative_rows")
    else {
        return;
    };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let items = random_items(&mut rng, 3000, DIM);
    let users = random_users(&mut rng, &items, 200, 40);
    let tables = tables(&cuda, &items, &users);
    let source = RowSource::from_fn(collaborative_row);
    let config = CacheConfig {
        hot_items: rng.random_range(300..900),
        history_weight: rng.random_range(0.1f32..0.6),
        source: source.clone(),
        ..CacheConfig::default()
    };
    let mut cpu_cache =
        TemporalCache::new(items.clone(), users.clone(), config.clone()).expect("cpu cache");
    let mut gpu_cache = CudaCache::new(
        &cuda,
        tables.clone(),
        users.clone(),
        items.clone(),
        cpu_cache.handle(),
        source,
        CudaCacheConfig {
            chunk_rows: 128,
            ..CudaCacheConfig::from_cpu(&config)
        },
    )
    .expect("gpu cache");
    for n in [1usize, 33] {
        let requests = random_requests(&mut rng, 200, n, 10);
        let queries = random_queries(&mut rng, n, DIM);
        compare_priors(
            &cuda,
            &users,
            &mut cpu_cache,
            &mut gpu_cache,
            &tables,
            requests,
            &queries,
            config.history_weight,
            &format!("seed {seed}, collaborative, batch {n}"),
        );
    }
    // "Similar to X" on an uploaded row agrees with the CPU cache.
    let handle = cpu_cache.handle();
    let first_hot: Vec<u32> = gpu_cache.hot_items().iter().take(5).copied().collect();
    for item in first_hot {
        let (cpu, _) = handle.similar(item, 10).expect("cpu similar");
        let (gpu, lookup) = gpu_cache.similar(&cuda, item, 10).expect("gpu similar");
        assert_eq!(lookup, CacheLookup::Hit);
        let mut row = vec![0.0f32; items.len()];
        collaborative_row(item, &mut row);
        assert_ranked_agree(&row, item, &cpu, &gpu, &format!("seed {seed}, item {item}"));
    }
}

/// GPU "similar" agrees with the CPU's: same count, every CPU item clearly above the last
/// score present, no GPU item clearly below it, GPU scores near the exact row values.
fn assert_ranked_agree(
    row: &[f32],
    item: u32,
    cpu: &[(u32, f32)],
    gpu: &[(u32, f32)],
    context: &str,
) {
    // Two values each within half an int8 step (~0.004) of the exact row may swap.
    let tolerance = 1e-2;
    assert_eq!(cpu.len(), gpu.len(), "{context}: counts differ");
    let Some(&(_, cut)) = cpu.last() else {
        return;
    };
    for &(id, s) in cpu {
        if s > cut + tolerance {
            assert!(
                gpu.iter().any(|&(g, _)| g == id),
                "{context}: CPU neighbour {id} ({s}) above the cut {cut} missing on the GPU"
            );
        }
    }
    for &(id, score) in gpu {
        assert_ne!(id, item, "{context}: the item itself was returned");
        let exact = row[id as usize];
        assert!(
            exact >= cut - tolerance,
            "{context}: GPU neighbour {id} scores {exact}, below the cut {cut}"
        );
        assert!(
            (score - exact).abs() <= tolerance,
            "{context}: GPU score {score} of {id} vs exact {exact}"
        );
    }
}

#[test]
fn similar_matches_the_cpu_cache_on_hits_and_misses() {
    let Some(cuda) = cuda_or_skip("similar_matches_the_cpu_cache_on_hits_and_misses") else {
        return;
    };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let items = random_items(&mut rng, 4000, DIM);
    let users = random_users(&mut rng, &items, 200, 40);
    let tables = tables(&cuda, &items, &users);
    let config = CacheConfig {
        hot_items: 1000,
        ..CacheConfig::default()
    };
    let cpu_cache =
        TemporalCache::new(items.clone(), users.clone(), config.clone()).expect("cpu cache");
    let handle = cpu_cache.handle();
    let mut gpu_cache = CudaCache::new(
        &cuda,
        tables,
        users,
        items.clone(),
        handle.clone(),
        RowSource::Embedding,
        CudaCacheConfig::from_cpu(&config),
    )
    .expect("gpu cache");
    let hot: Vec<u32> = gpu_cache.hot_items().to_vec();
    let cold: Vec<u32> = (0..4000u32).filter(|i| !hot.contains(i)).collect();
    for round in 0..12 {
        let (item, want) = if round % 2 == 0 {
            (hot[rng.random_range(0..hot.len())], CacheLookup::Hit)
        } else {
            (cold[rng.random_range(0..cold.len())], CacheLookup::Miss)
        };
        // Within the precomputed neighbours and beyond them (the device path).
        let k = if round % 3 == 0 {
            300
        } else {
            rng.random_range(1..=128)
        };
        let (cpu, cpu_lookup) = handle.similar(item, k).expect("cpu similar");
        let (gpu, lookup) = gpu_cache.similar(&cuda, item, k).expect("gpu similar");
        assert_eq!(lookup, want, "seed {seed}, item {item}");
        assert_eq!(cpu_lookup, want, "seed {seed}, item {item}: CPU lookup");
        let row: Vec<f32> = (0..items.len() as u32)
            .map(|j| {
                items
                    .row(item)
                    .iter()
                    .zip(items.row(j))
                    .map(|(a, b)| a * b)
                    .sum()
            })
            .collect();
        assert_ranked_agree(
            &row,
            item,
            &cpu,
            &gpu,
            &format!("seed {seed}, item {item}, k {k}"),
        );
    }
}

#[test]
fn path_with_cache_matches_the_cpu_stages() {
    let Some(cuda) = cuda_or_skip("path_with_cache_matches_the_cpu_stages") else {
        return;
    };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let items = random_items(&mut rng, 6000, DIM);
    let users = random_users(&mut rng, &items, 200, 60);
    let tables = tables(&cuda, &items, &users);
    let config = CacheConfig {
        hot_items: 2000,
        ..CacheConfig::default()
    };
    let cpu_cache =
        TemporalCache::new(items.clone(), users.clone(), config.clone()).expect("cpu cache");
    let genres: Vec<String> = ["thriller", "comedy"]
        .iter()
        .map(|g| g.to_string())
        .collect();
    let entries = hyperrec_rerank::ContextVocabulary::all_phrases(&genres)
        .into_iter()
        .map(|phrase| (phrase, common::unit_vector(&mut rng, DIM)))
        .collect();
    let vocabulary =
        Arc::new(hyperrec_rerank::ContextVocabulary::new(entries).expect("vocabulary"));
    let rerank_config = hyperrec_rerank::RerankConfig::default();
    let make = || {
        GpuPath::with_cache(
            CudaFusion::new(&cuda, users.clone(), tables.clone(), 0.4).expect("fusion"),
            CudaCache::new(
                &cuda,
                tables.clone(),
                users.clone(),
                items.clone(),
                cpu_cache.handle(),
                RowSource::Embedding,
                CudaCacheConfig::from_cpu(&config),
            )
            .expect("cache"),
            CudaSimilarity::new(
                &cuda,
                users.clone(),
                tables.clone(),
                SimilarityParams {
                    candidates: 100,
                    exclude_seen: true,
                },
            )
            .expect("similarity"),
            CudaRerank::new(
                &cuda,
                users.clone(),
                tables.clone(),
                vocabulary.clone(),
                rerank_config.clone(),
                hyperrec_rerank::RerankWeights::untrained(DIM, rerank_config.heads),
            )
            .expect("rerank"),
        )
    };
    let mut path = make();
    let mut fusion = Fusion::new(users.clone(), FusionConfig { alpha: 0.4 }).expect("fusion");
    let mut cpu_cache = cpu_cache;
    let mut similarity = hyperrec_similarity::Similarity::new(
        items.clone(),
        users.clone(),
        hyperrec_similarity::SimilarityConfig {
            candidates: 100,
            exclude_seen: true,
        },
    )
    .expect("similarity");
    let requests = random_requests(&mut rng, 200, 16, 10);
    let mut gpu = Batch::new(&cuda, DIM).expect("batch");
    // Round 0 runs eagerly and captures; the others replay the graph.
    for round in 0..4 {
        let queries = random_queries(&mut rng, 16, DIM);
        let mut cpu = Batch::new(&Cpu, DIM).expect("cpu batch");
        cpu.reset(&Cpu, requests.clone()).expect("reset");
        cpu.query_embeddings.copy_from_slice(&queries);
        fusion.run(&Cpu, &mut cpu).expect("cpu fusion");
        cpu_cache.run(&Cpu, &mut cpu).expect("cpu cache");
        similarity.run(&Cpu, &mut cpu).expect("cpu similarity");
        assert!(!cpu.item_prior.is_empty(), "seed {seed}: no history term");

        gpu.reset(&cuda, requests.clone()).expect("reset");
        cuda.upload(&queries, &mut gpu.query_embeddings)
            .expect("upload");
        path.run(&cuda, &mut gpu).expect("path");
        cuda.synchronize().expect("sync");
        let gpu_ids = download(&cuda, &gpu.candidate_ids);
        let gpu_scores = download(&cuda, &gpu.candidate_scores);
        let (k, n_items) = (cpu.candidates, items.len());
        assert_eq!(gpu.candidates, k, "seed {seed}");
        for q in 0..16 {
            let fused = &cpu.fused[q * DIM..(q + 1) * DIM];
            let prior = &cpu.item_prior[q * n_items..(q + 1) * n_items];
            let exact = |j: u32| -> f32 {
                items
                    .row(j)
                    .iter()
                    .zip(fused)
                    .map(|(a, b)| a * b)
                    .sum::<f32>()
                    + prior[j as usize]
            };
            let tolerance = |s: f32| 3e-3 + s.abs() * 2.0f32.powi(-10);
            let context = format!("seed {seed}, round {round}, query {q}");
            let cpu_ids = &cpu.candidate_ids[q * k..(q + 1) * k];
            let cpu_scores = &cpu.candidate_scores[q * k..(q + 1) * k];
            let (g_ids, g_scores) = (
                &gpu_ids[q * k..(q + 1) * k],
                &gpu_scores[q * k..(q + 1) * k],
            );
            let valid = cpu_ids.iter().filter(|&&id| id != u32::MAX).count();
            assert_eq!(
                valid,
                g_ids.iter().filter(|&&id| id != u32::MAX).count(),
                "{context}: candidate counts differ"
            );
            if valid == 0 {
                continue;
            }
            let cut = cpu_scores[valid - 1];
            for (&id, &s) in cpu_ids.iter().zip(cpu_scores).take(valid) {
                if s > cut + tolerance(cut) {
                    assert!(
                        g_ids.contains(&id),
                        "{context}: CPU candidate {id} ({s}) missing"
                    );
                }
            }
            for (&id, &g) in g_ids.iter().zip(g_scores).take(valid) {
                let s = exact(id);
                assert!(
                    s >= cut - tolerance(cut),
                    "{context}: {id} scores {s} < cut {cut}"
                );
                assert!(
                    (g - s).abs() <= tolerance(s),
                    "{context}: {id} GPU {g} vs {s}"
                );
            }
        }
    }
    let (replays, _) = path.graph_stats();
    assert!(replays >= 2, "seed {seed}: replayed {replays} times");
    let report = path.memory_report();
    assert!(report.cache > 0, "seed {seed}: no cache memory reported");
}
