//! The fused batch-1 similarity kernel (`similarity_top_k_one`: scores of one query and the
//! exact top-k in one launch) against a CPU selection on its own fp16 scores, against the
//! two-kernel path's exact radix select, inside the stage and inside graph replays; its int8
//! first pass against its fp16 pass (same ids, same scores). Fresh
//! random inputs every run; each test skips with a visible notice where there is no GPU.

#![cfg(feature = "cuda")]

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use common::{
    cuda_or_skip, device_tables as tables, download, random_items, random_queries, random_requests,
    random_users, seed,
};
use hyperrec_catalog::ItemEmbeddings;
use hyperrec_kernels::quantized::quantize_rows;
use hyperrec_kernels::{
    Cuda, CudaBuffer, CudaFusion, CudaSimilarity, OnePass, SimilarityOne, SimilarityParams, TopK,
    TopKStrategy,
};
use hyperrec_stage::{Batch, Device, Stage};

const DIM: usize = 384;
const NO_ITEM: u32 = u32::MAX;

fn upload<T: hyperrec_stage::Element>(cuda: &Cuda, host: &[T]) -> CudaBuffer<T> {
    let mut buffer = cuda.zeros::<T>(host.len()).expect("alloc");
    cuda.upload(host, &mut buffer).expect("upload");
    buffer
}

/// The exact selection the kernels promise, on the device's own fp16 scores: NaN and seen
/// items excluded, best first, -0 == +0, ties by the smaller index, padded to k.
fn cpu_top_k(scores: &[u16], n_items: usize, seen: &[u32], k: usize) -> (Vec<u32>, Vec<f32>) {
    let seen: HashSet<u32> = seen.iter().copied().collect();
    let mut order: Vec<(f32, u32)> = (0..n_items as u32)
        .map(|j| (f16::from_bits(scores[j as usize]).to_f32(), j))
        .filter(|(s, j)| !s.is_nan() && !seen.contains(j))
        .collect();
    order.sort_by(|a, b| {
        b.0.partial_cmp(&a.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.1.cmp(&b.1))
    });
    let ids = (0..k)
        .map(|i| order.get(i).map_or(NO_ITEM, |o| o.1))
        .collect();
    let scores = (0..k)
        .map(|i| order.get(i).map_or(f32::NEG_INFINITY, |o| o.0))
        .collect();
    (ids, scores)
}

/// Row-major fp16 bits of `n_items` rows of width `dim`, and how the query relates to them.
struct Table {
    rows: Vec<f32>,
    /// Scores are exactly the rows' first coordinate (query = e_0).
    crafted: bool,
}

/// Random unit rows, a share of them exact copies of others (exact score ties).
fn random_rows(rng: &mut StdRng, n_items: usize, dim: usize) -> Vec<f32> {
    let items = random_items(rng, n_items, dim);
    let mut rows: Vec<f32> = (0..n_items as u32)
        .flat_map(|j| items.row(j).to_vec())
        .collect();
    for _ in 0..n_items / 10 {
        let (from, to) = (rng.random_range(0..n_items), rng.random_range(0..n_items));
        let copy = rows[from * dim..(from + 1) * dim].to_vec();
        rows[to * dim..(to + 1) * dim].copy_from_slice(&copy);
    }
    rows
}

/// Rows whose only nonzero coordinate is the first, on `levels` levels in [-1, 1] with a few
/// NaNs: with the query e_0 the scores are those values exactly (few levels: huge ties).
fn crafted_rows(rng: &mut StdRng, n_items: usize, dim: usize, levels: f32) -> Vec<f32> {
    let mut rows = vec![0.0f32; n_items * dim];
    for j in 0..n_items {
        rows[j * dim] = if rng.random_range(0..3000) == 0 {
            f32::NAN
        } else {
            (rng.random_range(-1.0f32..1.0) * levels).round() / levels
        };
    }
    rows
}

/// Rows as [`crafted_rows`] whose value rises with the index (plus a little noise): the best
/// items crowd into the last slices, each of which then holds far more candidates than the
/// four-entry head the last block loads first.
fn rising_rows(rng: &mut StdRng, n_items: usize, dim: usize) -> Vec<f32> {
    let mut rows = vec![0.0f32; n_items * dim];
    for j in 0..n_items {
        let rising = 2.0 * j as f32 / n_items as f32 - 1.0;
        rows[j * dim] = (rising + rng.random_range(-0.01f32..0.01)).clamp(-1.0, 1.0);
    }
    rows
}

/// A seen list as the device tables hold them: repeats, ids past the catalog, NO_ITEM.
fn seen_list(rng: &mut StdRng, n_items: usize, len: usize) -> Vec<u32> {
    (0..len)
        .map(|_| match rng.random_range(0..50) {
            0 => NO_ITEM,
            1 => n_items as u32 + rng.random_range(0..100),
            _ => rng.random_range(0..n_items as u32),
        })
        .collect()
}

/// The kernel on its own: its ids and scores equal a CPU selection on its fp16 scores (and
/// the two-kernel exact radix select where nothing is excluded), its scores the fp32 inner
/// products up to fp16 rounding; catalogs tiny to larger than the seed's, not multiples of
/// a slice, k from 1 to 1024, seen lists up to larger than the catalog, heavy ties (through
/// the kernel's tie fallback), NaN scores, the best items crowded into a few slices, and
/// launches back to back on one workspace.
#[test]
fn fused_selection_equals_the_exact_selection_on_its_fp16_scores() {
    let Some(cuda) = cuda_or_skip("fused_selection_equals_the_exact_selection_on_its_fp16_scores")
    else {
        return;
    };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut fused = SimilarityOne::new(&cuda).expect("fused");
    let mut radix = TopK::new(&cuda).expect("topk");
    for case in 0..14 {
        let n_items: usize = match case {
            0 => rng.random_range(1..100),
            1 => rng.random_range(100..2000),
            2 | 3 | 12 => 62_423,
            4 => 160 * rng.random_range(2..400) + 1,
            // Slices of 32: more slices than the last block's threads hold heads for.
            13 => rng.random_range(20_000..70_000),
            _ => rng.random_range(2000..70_000),
        };
        let dim = match case {
            5 => 128,
            6 => 512,
            7 => 256,
            _ => DIM,
        };
        // Few levels: ties far beyond what the last block sorts (its tie fallback).
        let levels = match case {
            3 | 8 => rng.random_range(2..6) as f32,
            _ => rng.random_range(50..3000) as f32,
        };
        let table = match case {
            12 | 13 => Table {
                rows: rising_rows(&mut rng, n_items, dim),
                crafted: true,
            },
            3 | 8 | 9 => Table {
                rows: crafted_rows(&mut rng, n_items, dim, levels),
                crafted: true,
            },
            _ => Table {
                rows: random_rows(&mut rng, n_items, dim),
                crafted: false,
            },
        };
        let half: Vec<u16> = table
            .rows
            .iter()
            .map(|&x| f16::from_f32(x).to_bits())
            .collect();
        let items = upload(&cuda, &half);
        let (codes, bounds) = int8_table(&cuda, &half, dim);
        let query_host: Vec<f32> = if table.crafted {
            (0..dim).map(|d| if d == 0 { 1.0 } else { 0.0 }).collect()
        } else {
            random_queries(&mut rng, 1, dim)
        };
        let query = upload(&cuda, &query_host);
        // Other slice sizes than the automatic plan (more blocks than one wave, fewer).
        fused.set_slice(match case {
            10 | 13 => Some(32),
            11 => Some(256),
            _ => None,
        });

        // Three launches back to back on one workspace: each must start from a clean
        // histogram and ticket.
        for launch in 0..3 {
            let k = match (case + launch) % 5 {
                0 => 1,
                1 => 10,
                2 => 100,
                3 => 1000,
                _ => rng.random_range(1..=1024),
            };
            let seen_len = match launch {
                0 => 0,
                1 => rng.random_range(1..60),
                _ => rng.random_range(0..n_items + n_items / 5 + 2),
            };
            let seen_host = seen_list(&mut rng, n_items, seen_len);
            let seen = upload(&cuda, &seen_host);
            let context = format!(
                "seed {seed}, case {case}, launch {launch}, n_items {n_items}, dim {dim}, k {k}, seen {seen_len}, crafted {}",
                table.crafted
            );
            fused
                .enqueue(
                    &cuda,
                    &items,
                    n_items,
                    dim,
                    &query,
                    (seen_len > 0).then_some((&seen, seen_len)),
                    k,
                )
                .expect("enqueue");
            let ids = download(&cuda, fused.ids());
            let scores = download(&cuda, fused.scores());
            let item_scores = download(&cuda, fused.item_scores());
            assert_eq!(ids.len(), k, "{context}");

            for (j, (&bits, row)) in item_scores
                .iter()
                .zip(table.rows.chunks_exact(dim))
                .enumerate()
            {
                let got = f16::from_bits(bits).to_f32();
                if table.crafted {
                    let want = f16::from_f32(row[0]).to_f32();
                    assert!(
                        got == want || (got.is_nan() && want.is_nan()),
                        "{context}: score of {j} is {got}, want {want}"
                    );
                } else {
                    let exact: f32 = row
                        .iter()
                        .zip(&query_host)
                        .map(|(a, b)| f16::from_f32(*a).to_f32() * b)
                        .sum();
                    assert!(
                        (got - exact).abs() <= 2e-3 + exact.abs() * 2.0f32.powi(-10),
                        "{context}: score of {j} is {got}, exact {exact}"
                    );
                }
            }

            let (want_ids, want_scores) = cpu_top_k(&item_scores, n_items, &seen_host, k);
            for i in 0..k {
                assert_eq!(ids[i], want_ids[i], "{context}: id at rank {i}");
                assert_eq!(scores[i], want_scores[i], "{context}: score at rank {i}");
            }
            // The int8 first pass selects the same items with the same scores.
            fused
                .enqueue_int8(
                    &cuda,
                    &items,
                    &codes,
                    &bounds,
                    n_items,
                    dim,
                    &query,
                    (seen_len > 0).then_some((&seen, seen_len)),
                    k,
                )
                .expect("enqueue int8");
            assert_eq!(download(&cuda, fused.ids()), ids, "{context}: int8 ids");
            assert_eq!(
                download(&cuda, fused.scores()),
                scores,
                "{context}: int8 scores"
            );
            if seen_len == 0 {
                radix
                    .enqueue_with(
                        &cuda,
                        fused.item_scores(),
                        n_items,
                        1,
                        k,
                        TopKStrategy::ExactRadix,
                    )
                    .expect("radix");
                assert_eq!(download(&cuda, radix.ids()), ids, "{context}: radix ids");
                assert_eq!(
                    download(&cuda, radix.scores()),
                    scores,
                    "{context}: radix scores"
                );
            }
        }
    }
}

/// The int8 copy of fp16 rows (`half` bits, `[n, dim]`) the int8 first pass reads.
fn int8_table(cuda: &Cuda, half: &[u16], dim: usize) -> (CudaBuffer<u8>, CudaBuffer<f32>) {
    let values: Vec<f32> = half.iter().map(|&b| f16::from_bits(b).to_f32()).collect();
    let quantized = quantize_rows(&values, dim);
    (
        upload(cuda, &quantized.codes),
        upload(cuda, &quantized.bounds),
    )
}

/// Queries the int8 pass cannot bound (NaN or infinite values, all zeros) and rows it cannot
/// (NaN, infinite, the largest fp16 values) go through its exact slow path; its selection
/// still equals the fp16 pass's, launch after launch on one workspace.
#[test]
fn int8_first_pass_equals_the_fp16_pass_on_degenerate_inputs() {
    let Some(cuda) = cuda_or_skip("int8_first_pass_equals_the_fp16_pass_on_degenerate_inputs")
    else {
        return;
    };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut fused = SimilarityOne::new(&cuda).expect("fused");
    for case in 0..8 {
        let n_items = rng.random_range(500..20_000);
        let mut rows = random_rows(&mut rng, n_items, DIM);
        match case {
            // A few rows with NaN, with +-inf, and with the largest fp16 magnitudes.
            1 | 2 => {
                for _ in 0..5 {
                    let j = rng.random_range(0..n_items);
                    rows[j * DIM + rng.random_range(0..DIM)] = match rng.random_range(0..3) {
                        0 => f32::NAN,
                        1 => f32::INFINITY,
                        _ => f32::NEG_INFINITY,
                    };
                }
            }
            3 => {
                for j in 0..n_items / 50 {
                    for x in &mut rows[j * DIM..(j + 1) * DIM] {
                        *x = (*x * 1e6).clamp(-65504.0, 65504.0);
                    }
                }
            }
            _ => {}
        }
        let half: Vec<u16> = rows.iter().map(|&x| f16::from_f32(x).to_bits()).collect();
        let items = upload(&cuda, &half);
        let (codes, bounds) = int8_table(&cuda, &half, DIM);
        let mut query_host = random_queries(&mut rng, 1, DIM);
        match case {
            4 => query_host.iter_mut().for_each(|x| *x = 0.0),
            5 => query_host[rng.random_range(0..DIM)] = f32::NAN,
            6 => query_host[rng.random_range(0..DIM)] = f32::INFINITY,
            7 => query_host.iter_mut().for_each(|x| *x *= 1e30),
            _ => {}
        }
        let query = upload(&cuda, &query_host);
        for launch in 0..3 {
            let k = [1, 100, rng.random_range(1..=1024)][launch];
            let seen_len = rng.random_range(0..200);
            let seen_host = seen_list(&mut rng, n_items, seen_len);
            let seen = upload(&cuda, &seen_host);
            let seen_arg = (!seen_host.is_empty()).then_some((&seen, seen_host.len()));
            let context =
                format!("seed {seed}, case {case}, launch {launch}, n_items {n_items}, k {k}");
            fused
                .enqueue(&cuda, &items, n_items, DIM, &query, seen_arg, k)
                .expect("fp16");
            let (ids, scores) = (
                download(&cuda, fused.ids()),
                download(&cuda, fused.scores()),
            );
            let (want_ids, want_scores) = cpu_top_k(
                &download(&cuda, fused.item_scores()),
                n_items,
                &seen_host,
                k,
            );
            assert_eq!(ids, want_ids, "{context}: fp16 ids");
            assert_eq!(scores, want_scores, "{context}: fp16 scores");
            fused
                .enqueue_int8(
                    &cuda, &items, &codes, &bounds, n_items, DIM, &query, seen_arg, k,
                )
                .expect("int8");
            assert_eq!(download(&cuda, fused.ids()), ids, "{context}: int8 ids");
            assert_eq!(
                download(&cuda, fused.scores()),
                scores,
                "{context}: int8 scores"
            );
        }
    }
}

/// Items with a tenth of the rows duplicated (exact ties in every query's scores).
fn items_with_duplicates(rng: &mut StdRng, n_items: usize) -> Arc<ItemEmbeddings> {
    Arc::new(ItemEmbeddings::new(DIM, random_rows(rng, n_items, DIM)).expect("shape"))
}

/// The similarity stage at batch 1 (fused by default) selects exactly what it selects with
/// the exact radix select and with the threshold filter, for users who have seen up to more
/// than the whole catalog, run after run.
#[test]
fn batch_one_stage_equals_the_two_kernel_path_with_heavy_seen_sets() {
    let Some(cuda) =
        cuda_or_skip("batch_one_stage_equals_the_two_kernel_path_with_heavy_seen_sets")
    else {
        return;
    };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let n_items = rng.random_range(1000..9000);
    let items = items_with_duplicates(&mut rng, n_items);
    let users = random_users(&mut rng, &items, 40, n_items + n_items / 4);
    let tables = tables(&cuda, &items, &users);
    let mut fusion = CudaFusion::new(&cuda, users.clone(), tables.clone(), 0.5).expect("fusion");
    for (round, candidates) in [1usize, 10, 100, 1000, 100, rng.random_range(1..=1024)]
        .into_iter()
        .enumerate()
    {
        let context =
            format!("seed {seed}, n_items {n_items}, round {round}, candidates {candidates}");
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
        let mut batch = Batch::new(&cuda, DIM).expect("batch");
        batch
            .reset(&cuda, random_requests(&mut rng, 40, 1, 10))
            .expect("reset");
        let queries = random_queries(&mut rng, 1, DIM);
        cuda.upload(&queries, &mut batch.query_embeddings)
            .expect("upload");
        fusion.run(&cuda, &mut batch).expect("fusion");
        // The default (fused) selection three times on the same batch: identical.
        similarity.run(&cuda, &mut batch).expect("similarity");
        let fused_ids = download(&cuda, &batch.candidate_ids);
        let fused_scores = download(&cuda, &batch.candidate_scores);
        for repeat in 0..2 {
            similarity.run(&cuda, &mut batch).expect("similarity");
            assert_eq!(
                download(&cuda, &batch.candidate_ids),
                fused_ids,
                "{context}: repeat {repeat}"
            );
        }
        let excluded: HashSet<u32> = batch.notes[0].excluded.iter().copied().collect();
        for id in &fused_ids {
            assert!(!excluded.contains(id), "{context}: seen item {id} selected");
        }
        similarity.set_one_pass(OnePass::Fp16);
        similarity.run(&cuda, &mut batch).expect("similarity");
        assert_eq!(
            download(&cuda, &batch.candidate_ids),
            fused_ids,
            "{context}: fp16 first pass ids"
        );
        assert_eq!(
            download(&cuda, &batch.candidate_scores),
            fused_scores,
            "{context}: fp16 first pass scores"
        );
        similarity.set_one_pass(OnePass::Int8);
        for strategy in [TopKStrategy::ExactRadix, TopKStrategy::SampledThreshold] {
            similarity.set_top_k_strategy(strategy);
            similarity.run(&cuda, &mut batch).expect("similarity");
            assert_eq!(
                download(&cuda, &batch.candidate_ids),
                fused_ids,
                "{context}: {strategy:?} ids"
            );
            assert_eq!(
                download(&cuda, &batch.candidate_scores),
                fused_scores,
                "{context}: {strategy:?} scores"
            );
        }
        similarity.set_top_k_strategy(None);
    }
}

/// Graph replays of the batch-1 path (fused similarity with the fusion folded in and the
/// int8 first pass, no memset between replays, the rerank overlapping the similarity's end)
/// give exactly the fused query, candidates and results of eager stages (fusion kernel,
/// GEMV, exact radix select, the rerank launched after them).
#[test]
fn batch_one_graph_replays_equal_the_eager_exact_path() {
    let Some(cuda) = cuda_or_skip("batch_one_graph_replays_equal_the_eager_exact_path") else {
        return;
    };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let n_items = rng.random_range(5000..20_000);
    let items = items_with_duplicates(&mut rng, n_items);
    let users = random_users(&mut rng, &items, 100, 400);
    let tables = tables(&cuda, &items, &users);
    let vocabulary = common::random_vocabulary(&mut rng, DIM);
    let make = || common::stock_path(&cuda, &users, &tables, &vocabulary, DIM);
    let mut eager = make();
    eager
        .similarity
        .set_top_k_strategy(TopKStrategy::ExactRadix);
    let mut graph = make();
    let mut graph_batch = Batch::new(&cuda, DIM).expect("batch");
    // Two users in turn (their seen sets differ): a request's shape (its rerank sources)
    // keys the graph, so each user's shape is captured once and replayed after.
    let users_requests = [
        random_requests(&mut rng, 100, 1, 10),
        random_requests(&mut rng, 100, 1, 10),
    ];
    // Eight rounds: at most three captures (a second one for the first user when the
    // second user's shape grew the batch's buffers), the rest replays.
    for round in 0..8 {
        let requests = users_requests[round % 2].clone();
        let queries = random_queries(&mut rng, 1, DIM);
        let batch = common::run_eager_and_graph(
            &cuda,
            &mut eager,
            &mut graph,
            &mut graph_batch,
            &requests,
            &queries,
            DIM,
        );
        let context = format!("seed {seed}, n_items {n_items}, round {round}");
        for (what, a, b) in [
            (
                "candidate ids",
                &batch.candidate_ids,
                &graph_batch.candidate_ids,
            ),
            ("result ids", &batch.result_ids, &graph_batch.result_ids),
        ] {
            assert_eq!(download(&cuda, a), download(&cuda, b), "{context}: {what}");
        }
        assert_eq!(
            download(&cuda, &batch.candidate_scores),
            download(&cuda, &graph_batch.candidate_scores),
            "{context}: candidate scores"
        );
        // The graph's similarity kernel fused the query itself (the fusion stage folded in);
        // the eager path ran the fusion kernel: the same bits.
        assert_eq!(
            download(&cuda, &batch.fused),
            download(&cuda, &graph_batch.fused),
            "{context}: fused query"
        );
        // The graph's rerank started while its similarity kernel ran (a programmatic
        // dependent launch) and waited for the candidates inside; the eager one after it.
        for (what, a, b) in [
            (
                "result scores",
                &batch.result_scores,
                &graph_batch.result_scores,
            ),
            (
                "result retrieval scores",
                &batch.result_retrieval_scores,
                &graph_batch.result_retrieval_scores,
            ),
            (
                "result attributions",
                &batch.result_attributions,
                &graph_batch.result_attributions,
            ),
        ] {
            assert_eq!(download(&cuda, a), download(&cuda, b), "{context}: {what}");
        }
    }
    let (replays, captures) = graph.graph_stats();
    assert!(
        replays >= 4,
        "seed {seed}: the graph was replayed {replays} times ({captures} captures)"
    );
}
