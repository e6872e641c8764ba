//! The similarity stage at large batches (more than 8 queries: the cuBLASLt GEMM with a
//! measured algorithm; more than 132 rows: `topk_filter_batch`) against CPU references on
//! fresh random inputs. Each test skips with a visible notice where there is no CUDA device.

#![cfg(feature = "cuda")]

mod common;

use std::sync::Arc;

use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use common::{
    cuda_or_skip, device_tables as tables, download, random_items, random_queries, random_requests,
    random_users, seed,
};
use hyperrec_catalog::ItemEmbeddings;
use hyperrec_kernels::{
    CudaFusion, CudaSimilarity, ScoreGemm, SimilarityParams, TopK, TopKStrategy, score_all_items,
    score_all_items_with,
};
use hyperrec_stage::{Batch, Device, Stage};

const DIM: usize = 384;

/// A catalog size that is not a multiple of 8 (the score rows carry padding columns).
fn odd_catalog_size(rng: &mut StdRng, range: std::ops::Range<usize>) -> usize {
    let n = rng.random_range(range);
    if n.is_multiple_of(8) { n + 3 } else { n }
}

/// Random unit items where every 10th item repeats an earlier one exactly, so every score
/// row holds exact ties (broken by the smaller index).
fn items_with_duplicates(rng: &mut StdRng, n_items: usize) -> Arc<ItemEmbeddings> {
    let base = random_items(rng, n_items, DIM);
    let mut data = Vec::with_capacity(n_items * DIM);
    for j in 0..n_items {
        let source = if j % 10 == 9 {
            rng.random_range(0..j)
        } else {
            j
        };
        data.extend_from_slice(base.row(source as u32));
    }
    Arc::new(ItemEmbeddings::new(DIM, data).expect("shape"))
}

/// Random unit queries where every 7th row repeats the previous one (identical score rows).
fn queries_with_duplicates(rng: &mut StdRng, n: usize) -> Vec<f32> {
    let mut queries = random_queries(rng, n, DIM);
    for q in (1..n).filter(|q| q % 7 == 0) {
        let previous = queries[(q - 1) * DIM..q * DIM].to_vec();
        queries[q * DIM..(q + 1) * DIM].copy_from_slice(&previous);
    }
    queries
}

/// Tolerance of an fp16 score near `s`: output rounding plus operand rounding.
fn tolerance(s: f32) -> f32 {
    2e-3 + s.abs() * 2.0f32.powi(-10)
}

/// Eligible `(score, index)` of a downloaded fp16 row, best first, ties by smaller index
/// (NaN never eligible, -0 ties with +0), excluding `seen`.
fn cpu_order(row: &[u16], n_items: usize, seen: &[u32]) -> Vec<(f32, u32)> {
    let mut excluded = vec![false; n_items];
    for &item in seen {
        if (item as usize) < n_items {
            excluded[item as usize] = true;
        }
    }
    let mut order: Vec<(f32, u32)> = (0..n_items)
        .filter(|&j| !excluded[j])
        .map(|j| (f16::from_bits(row[j]).to_f32(), j as u32))
        .filter(|(s, _)| !s.is_nan())
        .collect();
    order.sort_by(|a, b| {
        b.0.partial_cmp(&a.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.1.cmp(&b.1))
    });
    order
}

/// `ids` / `scores` (`[k]`) are exactly the first `k` of `order`, padded.
fn assert_exact(order: &[(f32, u32)], ids: &[u32], scores: &[f32], context: &str) {
    for (i, (&id, &score)) in ids.iter().zip(scores).enumerate() {
        match order.get(i) {
            Some(&(s, j)) => {
                assert_eq!(id, j, "{context}, rank {i}");
                assert_eq!(score, s, "{context}, rank {i}");
            }
            None => {
                assert_eq!(id, u32::MAX, "{context}, rank {i}: padding");
                assert_eq!(score, f32::NEG_INFINITY, "{context}, rank {i}: padding");
            }
        }
    }
}

/// The measured cuBLASLt GEMM and `cublasGemmEx` both give the fp32 scores up to fp16
/// rounding, padding columns zero, at batch sizes around the kernels' boundaries.
#[test]
fn batch_scores_match_the_cpu_with_both_gemms() {
    let Some(cuda) = cuda_or_skip("batch_scores_match_the_cpu_with_both_gemms") else {
        return;
    };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let n_items = odd_catalog_size(&mut rng, 3000..20_000);
    let ld = hyperrec_kernels::score_row_stride(n_items);
    let items = random_items(&mut rng, n_items, DIM);
    let users = random_users(&mut rng, &items, 20, 30);
    let tables = tables(&cuda, &items, &users);
    let guard = tables.lock();
    for n in [9usize, 132, 133, 1000, 1500] {
        let queries = random_queries(&mut rng, n, DIM);
        let mut device_queries = cuda.zeros::<f32>(queries.len()).expect("alloc");
        cuda.upload(&queries, &mut device_queries).expect("upload");
        let (mut scratch, mut measured, mut gemm_ex) = (
            cuda.zeros::<u16>(0).expect("alloc"),
            cuda.zeros::<u16>(0).expect("alloc"),
            cuda.zeros::<u16>(0).expect("alloc"),
        );
        score_all_items(
            &cuda,
            &guard,
            &device_queries,
            n,
            &mut scratch,
            &mut measured,
        )
        .expect("measured GEMM");
        score_all_items_with(
            &cuda,
            &guard,
            &device_queries,
            n,
            &mut scratch,
            &mut gemm_ex,
            ScoreGemm::GemmEx,
        )
        .expect("cublasGemmEx");
        let (measured, gemm_ex) = (download(&cuda, &measured), download(&cuda, &gemm_ex));
        assert_eq!(
            measured.len(),
            n * ld,
            "seed {seed}, n {n}: score matrix size"
        );
        for q in 0..n {
            let query = &queries[q * DIM..(q + 1) * DIM];
            let mut columns: Vec<usize> = (0..48).map(|_| rng.random_range(0..n_items)).collect();
            columns.extend([0, n_items - 1]);
            for j in columns {
                let exact: f32 = items
                    .row(j as u32)
                    .iter()
                    .zip(query)
                    .map(|(a, b)| a * b)
                    .sum();
                for (name, scores) in [("measured", &measured), ("cublasGemmEx", &gemm_ex)] {
                    let got = f16::from_bits(scores[q * ld + j]).to_f32();
                    assert!(
                        (got - exact).abs() <= tolerance(exact),
                        "seed {seed}, n {n}, {name}: score [{q}, {j}] {got} vs exact {exact}"
                    );
                }
            }
            for j in n_items..ld {
                for scores in [&measured, &gemm_ex] {
                    assert_eq!(
                        f16::from_bits(scores[q * ld + j]).to_f32(),
                        0.0,
                        "seed {seed}, n {n}: padding column {j} of row {q}"
                    );
                }
            }
        }
    }
}

/// The selection on the GEMM's own scores (real score distributions: the candidates span
/// many fp16 keys) is exactly the CPU's selection on the downloaded scores, for both the
/// threshold filter and the exact radix select, with exact ties (duplicated items and
/// duplicated query rows), at k of 1, 100 and 1000.
#[test]
fn batch_top_k_is_exact_on_gemm_scores() {
    let Some(cuda) = cuda_or_skip("batch_top_k_is_exact_on_gemm_scores") else {
        return;
    };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let n_items = odd_catalog_size(&mut rng, 3000..25_000);
    let items = items_with_duplicates(&mut rng, n_items);
    let users = random_users(&mut rng, &items, 20, 30);
    let tables = tables(&cuda, &items, &users);
    let guard = tables.lock();
    let ld = hyperrec_kernels::score_row_stride(n_items);
    let mut top = TopK::new(&cuda).expect("top-k");
    for n in [9usize, 132, 133, 1000, 1500] {
        let queries = queries_with_duplicates(&mut rng, n);
        let mut device_queries = cuda.zeros::<f32>(queries.len()).expect("alloc");
        cuda.upload(&queries, &mut device_queries).expect("upload");
        let (mut scratch, mut scores) = (
            cuda.zeros::<u16>(0).expect("alloc"),
            cuda.zeros::<u16>(0).expect("alloc"),
        );
        score_all_items(&cuda, &guard, &device_queries, n, &mut scratch, &mut scores)
            .expect("scores");
        let host = download(&cuda, &scores);
        let orders: Vec<Vec<(f32, u32)>> = (0..n)
            .map(|q| cpu_order(&host[q * ld..(q + 1) * ld], n_items, &[]))
            .collect();
        for k in [1usize, 100, 1000] {
            for strategy in [TopKStrategy::SampledThreshold, TopKStrategy::ExactRadix] {
                top.enqueue_with(&cuda, &scores, n_items, n, k, strategy)
                    .expect("top-k");
                let ids = download(&cuda, top.ids());
                let got = download(&cuda, top.scores());
                for (q, order) in orders.iter().enumerate() {
                    assert_exact(
                        order,
                        &ids[q * k..(q + 1) * k],
                        &got[q * k..(q + 1) * k],
                        &format!(
                            "seed {seed}, n_items {n_items}, n {n}, k {k}, {strategy:?}, query {q}"
                        ),
                    );
                }
            }
        }
    }
}

/// The stage at large batches with users who have seen up to the whole catalog: the default
/// selection equals the exact radix select, and both equal the CPU's selection over the
/// stage's own scores with the reported seen items excluded.
#[test]
fn batch_stage_excludes_heavy_seen_sets_exactly() {
    let Some(cuda) = cuda_or_skip("batch_stage_excludes_heavy_seen_sets_exactly") else {
        return;
    };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let n_items = odd_catalog_size(&mut rng, 1000..6000);
    let items = items_with_duplicates(&mut rng, n_items);
    let n_users = 60;
    let users = random_users(&mut rng, &items, n_users, n_items);
    let tables = tables(&cuda, &items, &users);
    let ld = hyperrec_kernels::score_row_stride(n_items);
    for (n, candidates) in [(133usize, 100usize), (1000, 1000), (1500, 100)] {
        let context = format!("seed {seed}, n_items {n_items}, n {n}, candidates {candidates}");
        let requests = random_requests(&mut rng, n_users, n, 10);
        let queries = queries_with_duplicates(&mut rng, n);
        let mut batch = Batch::new(&cuda, DIM).expect("batch");
        batch.reset(&cuda, requests).expect("reset");
        cuda.upload(&queries, &mut batch.query_embeddings)
            .expect("upload");
        let mut fusion =
            CudaFusion::new(&cuda, users.clone(), tables.clone(), 0.5).expect("fusion");
        let mut similarity = CudaSimilarity::new(
            &cuda,
            users.clone(),
            tables.clone(),
            SimilarityParams {
                candidates,
                exclude_seen: true,
            },
        )
        .expect("similarity");
        fusion.run(&cuda, &mut batch).expect("fusion");
        similarity.run(&cuda, &mut batch).expect("similarity");
        let k = batch.candidates;
        let default_ids = download(&cuda, &batch.candidate_ids);
        let default_scores = download(&cuda, &batch.candidate_scores);
        similarity.set_top_k_strategy(TopKStrategy::ExactRadix);
        similarity.run(&cuda, &mut batch).expect("similarity");
        assert_eq!(
            download(&cuda, &batch.candidate_ids),
            default_ids,
            "{context}: ExactRadix ids"
        );
        assert_eq!(
            download(&cuda, &batch.candidate_scores),
            default_scores,
            "{context}: ExactRadix scores"
        );
        // The same shape runs the same GEMM algorithm: these are the stage's scores.
        let (mut scratch, mut scores) = (
            cuda.zeros::<u16>(0).expect("alloc"),
            cuda.zeros::<u16>(0).expect("alloc"),
        );
        score_all_items(
            &cuda,
            &tables.lock(),
            &batch.fused,
            n,
            &mut scratch,
            &mut scores,
        )
        .expect("scores");
        let host = download(&cuda, &scores);
        let mut excluding = 0;
        for q in 0..n {
            let seen = &batch.notes[q].excluded;
            excluding += usize::from(!seen.is_empty());
            let order = cpu_order(&host[q * ld..(q + 1) * ld], n_items, seen);
            assert_exact(
                &order,
                &default_ids[q * k..(q + 1) * k],
                &default_scores[q * k..(q + 1) * k],
                &format!("{context}, query {q}"),
            );
        }
        assert!(
            excluding > n / 4,
            "{context}: only {excluding} queries excluded seen items"
        );
    }
}

/// Graph replays of the whole path at a batch beyond 132 queries (the batch selection
/// kernel and the measured GEMM inside the graph) give exactly what the stages give eagerly.
#[test]
fn batch_graph_replay_matches_eager_stages() {
    let Some(cuda) = cuda_or_skip("batch_graph_replay_matches_eager_stages") else {
        return;
    };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let n_items = odd_catalog_size(&mut rng, 4000..9000);
    let items = random_items(&mut rng, n_items, DIM);
    let users = random_users(&mut rng, &items, 300, 60);
    let tables = tables(&cuda, &items, &users);
    let vocabulary = common::random_vocabulary(&mut rng, DIM);
    let make = || common::stock_path(&cuda, &users, &tables, &vocabulary, DIM);
    let mut eager = make();
    let mut graph = make();
    let n = rng.random_range(133..400);
    let requests = random_requests(&mut rng, 300, n, 10);
    let mut graph_batch = Batch::new(&cuda, DIM).expect("batch");
    for round in 0..4 {
        let queries = random_queries(&mut rng, n, DIM);
        let batch = common::run_eager_and_graph(
            &cuda,
            &mut eager,
            &mut graph,
            &mut graph_batch,
            &requests,
            &queries,
            DIM,
        );
        let context = format!("seed {seed}, n {n}, round {round}");
        assert_eq!(
            download(&cuda, &batch.candidate_ids),
            download(&cuda, &graph_batch.candidate_ids),
            "{context}: candidates"
        );
        assert_eq!(
            download(&cuda, &batch.result_ids),
            download(&cuda, &graph_batch.result_ids),
            "{context}: results"
        );
        assert_eq!(
            download(&cuda, &batch.result_scores),
            download(&cuda, &graph_batch.result_scores),
            "{context}: result scores"
        );
    }
    let (replays, captures) = graph.graph_stats();
    assert!(
        replays >= 2,
        "seed {seed}: the graph was replayed {replays} times ({captures} captures)"
    );
}
