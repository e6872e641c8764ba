//! GPU stages against their CPU reference crates, on fresh random inputs. Each test skips
//! with a visible notice where there is no CUDA device.

#![cfg(feature = "cuda")]

mod common;

use std::sync::Arc;

use half::f16;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use common::{
    cpu_retrieved, cuda_or_skip, device_tables as tables, download, random_items, random_queries,
    random_requests, random_users, seed,
};
use hyperrec_catalog::{HistoryEntry, ItemEmbeddings, SharedUsers};
use hyperrec_fusion::{Fusion, FusionConfig};
use hyperrec_kernels::{
    Cuda, CudaFusion, CudaSimilarity, DeviceTables, SimilarityParams, TablesConfig, TopK,
    TopKStrategy,
};
use hyperrec_similarity::{Similarity, SimilarityConfig};
use hyperrec_stage::{Batch, Cpu, Device, Event, Interaction, Request, Stage, UserId};

const DIM: usize = 384;

/// Runs CPU fusion + similarity and the GPU twins on the same requests and queries.
struct Both {
    cpu: Batch<Cpu>,
    gpu: Batch<Cuda>,
}

#[allow(clippy::too_many_arguments)]
fn run_both(
    cuda: &Cuda,
    items: &Arc<ItemEmbeddings>,
    users: &SharedUsers,
    tables: &Arc<Mutex<DeviceTables>>,
    requests: Vec<Request>,
    queries: &[f32],
    alpha: f32,
    candidates: usize,
) -> Both {
    let mut cpu = Batch::new(&Cpu, DIM).expect("cpu batch");
    cpu.reset(&Cpu, requests.clone()).expect("reset");
    cpu.query_embeddings.copy_from_slice(queries);
    let mut fusion = Fusion::new(users.clone(), FusionConfig { alpha }).expect("fusion");
    let mut similarity = Similarity::new(
        items.clone(),
        users.clone(),
        SimilarityConfig {
            candidates,
            exclude_seen: true,
        },
    )
    .expect("similarity");
    fusion.run(&Cpu, &mut cpu).expect("cpu fusion");
    similarity.run(&Cpu, &mut cpu).expect("cpu similarity");

    let mut gpu = Batch::new(cuda, DIM).expect("gpu batch");
    gpu.reset(cuda, requests).expect("reset");
    cuda.upload(queries, &mut gpu.query_embeddings)
        .expect("upload");
    let mut cuda_fusion =
        CudaFusion::new(cuda, users.clone(), tables.clone(), alpha).expect("cuda fusion");
    let mut cuda_similarity = CudaSimilarity::new(
        cuda,
        users.clone(),
        tables.clone(),
        SimilarityParams {
            candidates,
            exclude_seen: true,
        },
    )
    .expect("cuda similarity");
    cuda_fusion.run(cuda, &mut gpu).expect("gpu fusion");
    cuda_similarity.run(cuda, &mut gpu).expect("gpu similarity");
    cuda.synchronize().expect("sync");
    Both { cpu, gpu }
}

/// Exact fp32 score of `item` for query row `fused`.
fn exact(items: &ItemEmbeddings, fused: &[f32], item: u32) -> f32 {
    items.row(item).iter().zip(fused).map(|(a, b)| a * b).sum()
}

/// Tolerance of an fp16 score near `s`: output rounding plus operand rounding.
fn tolerance(s: f32) -> f32 {
    2e-3 + s.abs() * 2.0f32.powi(-10)
}

/// The GPU's candidates agree with the CPU's wherever scores differ by more than fp16
/// rounding: same count, every CPU candidate clearly above the cut is selected, no GPU
/// candidate is clearly below it, and the GPU order is the exact order up to tolerance.
fn assert_candidates_agree(
    items: &ItemEmbeddings,
    fused: &[f32],
    cpu_ids: &[u32],
    cpu_scores: &[f32],
    gpu_ids: &[u32],
    gpu_scores: &[f32],
    context: &str,
) {
    let valid_cpu = cpu_ids.iter().filter(|&&id| id != u32::MAX).count();
    let valid_gpu = gpu_ids.iter().filter(|&&id| id != u32::MAX).count();
    assert_eq!(
        valid_cpu, valid_gpu,
        "{context}: eligible candidate counts differ"
    );
    if valid_cpu == 0 {
        return;
    }
    let cut = cpu_scores[valid_cpu - 1];
    for (&id, &s) in cpu_ids.iter().zip(cpu_scores).take(valid_cpu) {
        if s > cut + tolerance(cut) {
            assert!(
                gpu_ids.contains(&id),
                "{context}: CPU candidate {id} ({s}) clearly above the cut {cut} is missing on the GPU"
            );
        }
    }
    let mut previous = f32::INFINITY;
    for (rank, (&id, &gpu_score)) in gpu_ids.iter().zip(gpu_scores).take(valid_gpu).enumerate() {
        let s = exact(items, fused, id);
        assert!(
            s >= cut - tolerance(cut),
            "{context}: GPU candidate {id} at rank {rank} scores {s}, clearly below the cut {cut}"
        );
        assert!(
            (gpu_score - s).abs() <= tolerance(s),
            "{context}: GPU score {gpu_score} of {id} vs exact {s}"
        );
        assert!(
            s <= previous + 2.0 * tolerance(s),
            "{context}: GPU order breaks at rank {rank} ({s} after {previous})"
        );
        previous = s;
    }
    for pair in gpu_ids[..valid_gpu].windows(2) {
        assert_ne!(pair[0], pair[1], "{context}: duplicate candidate");
    }
}

#[test]
fn fusion_and_similarity_match_the_cpu_stages() {
    let Some(cuda) = cuda_or_skip("fusion_and_similarity_match_the_cpu_stages") else {
        return;
    };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let n_items = rng.random_range(3000..20000);
    let items = random_items(&mut rng, n_items, DIM);
    let users = random_users(&mut rng, &items, 600, 80);
    let tables = tables(&cuda, &items, &users);
    // Both the small-batch kernel and the GEMM path, and k from tiny to the maximum.
    for (n, candidates) in [
        (1, 100),
        (5, 1),
        (37, 100),
        (64, rng.random_range(2..1000)),
        (200, 1000),
    ] {
        let requests = random_requests(&mut rng, 600, n, 10);
        let queries = random_queries(&mut rng, n, DIM);
        let alpha = rng.random_range(0.0f32..1.0);
        let both = run_both(
            &cuda, &items, &users, &tables, requests, &queries, alpha, candidates,
        );
        let context = format!("seed {seed}, n {n}, candidates {candidates}, alpha {alpha}");

        let fused_gpu = download(&cuda, &both.gpu.fused);
        for q in 0..n {
            let (a, b) = (
                &both.cpu.fused[q * DIM..(q + 1) * DIM],
                &fused_gpu[q * DIM..(q + 1) * DIM],
            );
            let diff = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y) * (x - y))
                .sum::<f32>()
                .sqrt();
            let norm = a.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!(
                diff <= 1e-2 * norm,
                "{context}: fused row {q} differs by {diff} (norm {norm})"
            );
            assert_eq!(
                both.cpu.notes[q].cold_start, both.gpu.notes[q].cold_start,
                "{context}: cold start of {q}"
            );
            assert_eq!(both.cpu.notes[q].user, both.gpu.notes[q].user);
            assert_eq!(both.cpu.notes[q].companions, both.gpu.notes[q].companions);
            assert_eq!(both.cpu.notes[q].excluded, both.gpu.notes[q].excluded);
        }

        assert_eq!(both.cpu.candidates, both.gpu.candidates);
        let k = both.cpu.candidates;
        let (ids, scores) = (
            download(&cuda, &both.gpu.candidate_ids),
            download(&cuda, &both.gpu.candidate_scores),
        );
        for q in 0..n {
            let row = q * k..(q + 1) * k;
            assert_candidates_agree(
                &items,
                &both.cpu.fused[q * DIM..(q + 1) * DIM],
                &both.cpu.candidate_ids[row.clone()],
                &both.cpu.candidate_scores[row.clone()],
                &ids[row.clone()],
                &scores[row.clone()],
                &format!("{context}, query {q}"),
            );
            for id in &ids[row] {
                assert!(
                    !both.cpu.notes[q].excluded.contains(id),
                    "{context}: seen item {id} selected for query {q}"
                );
            }
        }
    }
}

/// The selection kernel alone, on fp16 rows with many exact ties: ids must equal a CPU
/// selection over the same fp16 values (ties by the smaller index) exactly.
#[test]
fn top_k_kernel_selects_exactly_on_fp16_scores() {
    let Some(cuda) = cuda_or_skip("top_k_kernel_selects_exactly_on_fp16_scores") else {
        return;
    };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for case in 0..7 {
        let n_items: usize = match case {
            0 => rng.random_range(1..300),
            6 => rng.random_range(3000..30_000),
            _ => rng.random_range(1..70_000),
        };
        // Up to 132 rows take the 1024-thread filter kernel, more the 256-thread one.
        let n = match case {
            6 => rng.random_range(133..200),
            _ => rng.random_range(1..40),
        };
        let k = match case {
            1 => rng.random_range(1..=128),
            _ => rng.random_range(1..=1024),
        };
        let ld = hyperrec_kernels::score_row_stride(n_items);
        // Coarse values force ties (very coarse ones overflow the threshold filter's
        // candidate buffer); a few NaNs must never be selected.
        let levels = match case {
            2 => rng.random_range(2..6) as f32,
            _ => rng.random_range(2..3000) as f32,
        };
        let mut host = vec![0u16; n * ld];
        for q in 0..n {
            for j in 0..n_items {
                let x = (rng.random_range(-1.0f32..1.0) * levels).round() / levels;
                let x = if rng.random_range(0..5000) == 0 {
                    f32::NAN
                } else {
                    x
                };
                host[q * ld + j] = f16::from_f32(x).to_bits();
            }
            // Every third row defeats the filter's sample: the 8-score vectors that both
            // filter kernels read (256 spread evenly over the row; the 1024-thread kernel's
            // 1024 include them) hold the row's best scores, so its threshold passes fewer
            // than k scores and the exact fallback must take over.
            let nvec = n_items.div_ceil(8);
            if q % 3 == 2 && nvec > 256 {
                for t in 0..256 {
                    let v = t * nvec / 256;
                    for j in v * 8..(v * 8 + 8).min(n_items) {
                        let x = 2.0 + rng.random_range(0.0f32..1.0);
                        host[q * ld + j] = f16::from_f32(x).to_bits();
                    }
                }
            }
        }
        let mut scores = cuda.zeros::<u16>(n * ld).expect("alloc");
        cuda.upload(&host, &mut scores).expect("upload");
        let mut top = TopK::new(&cuda).expect("topk");
        for strategy in [
            TopKStrategy::SampledThreshold,
            TopKStrategy::ExactRadix,
            TopKStrategy::SharedRow,
        ] {
            top.enqueue_with(&cuda, &scores, n_items, n, k, strategy)
                .expect("enqueue");
            let ids = download(&cuda, top.ids());
            let got_scores = download(&cuda, top.scores());
            for q in 0..n {
                let mut order: Vec<(f32, u32)> = (0..n_items)
                    .map(|j| (f16::from_bits(host[q * ld + j]).to_f32(), j as u32))
                    .filter(|(s, _)| !s.is_nan())
                    .collect();
                // -0 and +0 compare equal (as in the CPU selector): partial_cmp keeps them tied.
                order.sort_by(|a, b| {
                    b.0.partial_cmp(&a.0)
                        .unwrap_or(std::cmp::Ordering::Equal)
                        .then(a.1.cmp(&b.1))
                });
                for i in 0..k {
                    let context = format!(
                        "seed {seed}, {strategy:?}, n_items {n_items}, k {k}, query {q}, rank {i}"
                    );
                    match order.get(i) {
                        Some(&(s, j)) => {
                            assert_eq!(ids[q * k + i], j, "{context}");
                            assert_eq!(got_scores[q * k + i], s, "{context}");
                        }
                        None => {
                            assert_eq!(ids[q * k + i], u32::MAX, "{context}: padding");
                            assert_eq!(
                                got_scores[q * k + i],
                                f32::NEG_INFINITY,
                                "{context}: padding"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Users who have seen a large share of the catalog (some more than it has left to
/// recommend): every top-K strategy selects the same candidates, none of them seen, and
/// the default one agrees with the CPU stage.
#[test]
fn top_k_strategies_agree_with_heavy_seen_sets() {
    let Some(cuda) = cuda_or_skip("top_k_strategies_agree_with_heavy_seen_sets") else {
        return;
    };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let n_items = rng.random_range(1000..6000);
    let items = random_items(&mut rng, n_items, DIM);
    let users = random_users(&mut rng, &items, 40, n_items);
    let tables = tables(&cuda, &items, &users);
    // Up to the limit both stages share (the CPU stage once stopped at 1000, and a draw
    // above that failed this test one run in forty).
    let random_candidates = rng.random_range(1..=hyperrec_stage::MAX_CANDIDATES);
    for (n, candidates) in [(1, 100), (33, 1000), (16, random_candidates)] {
        let requests = random_requests(&mut rng, 40, n, 10);
        let queries = random_queries(&mut rng, n, DIM);
        let context = format!("seed {seed}, n_items {n_items}, n {n}, candidates {candidates}");
        let mut both = run_both(
            &cuda, &items, &users, &tables, requests, &queries, 0.5, candidates,
        );
        let k = both.gpu.candidates;
        let default_ids = download(&cuda, &both.gpu.candidate_ids);
        let default_scores = download(&cuda, &both.gpu.candidate_scores);
        for q in 0..n {
            let row = q * k..(q + 1) * k;
            assert_candidates_agree(
                &items,
                &both.cpu.fused[q * DIM..(q + 1) * DIM],
                &both.cpu.candidate_ids[row.clone()],
                &both.cpu.candidate_scores[row.clone()],
                &default_ids[row.clone()],
                &default_scores[row.clone()],
                &format!("{context}, query {q}"),
            );
            for id in &default_ids[row] {
                assert!(
                    !both.cpu.notes[q].excluded.contains(id),
                    "{context}: seen item {id} selected for query {q}"
                );
            }
        }
        let mut similarity = CudaSimilarity::new(
            &cuda,
            users.clone(),
            tables.clone(),
            SimilarityParams {
                candidates,
                exclude_seen: true,
            },
        )
        .expect("cuda similarity");
        for strategy in [TopKStrategy::ExactRadix, TopKStrategy::SharedRow] {
            similarity.set_top_k_strategy(strategy);
            similarity.run(&cuda, &mut both.gpu).expect("similarity");
            assert_eq!(
                download(&cuda, &both.gpu.candidate_ids),
                default_ids,
                "{context}: {strategy:?} ids"
            );
            assert_eq!(
                download(&cuda, &both.gpu.candidate_scores),
                default_scores,
                "{context}: {strategy:?} scores"
            );
        }
    }
}

/// A real-time event reaches the device: the rated item is excluded from the very next
/// batch and the user's fused vector moves, exactly as on the CPU.
#[test]
fn events_update_the_device_rows_before_the_next_batch() {
    let Some(cuda) = cuda_or_skip("events_update_the_device_rows_before_the_next_batch") else {
        return;
    };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let items = random_items(&mut rng, 5000, DIM);
    let users = random_users(&mut rng, &items, 50, 20);
    let tables = tables(&cuda, &items, &users);
    let mut fusion = CudaFusion::new(&cuda, users.clone(), tables.clone(), 0.5).expect("fusion");
    let mut similarity = CudaSimilarity::new(
        &cuda,
        users.clone(),
        tables.clone(),
        SimilarityParams {
            candidates: 10,
            exclude_seen: true,
        },
    )
    .expect("similarity");
    let request = Request {
        user: UserId(1001),
        query: "q".into(),
        context: Default::default(),
        k: 10,
        exclude_seen: true,
    };
    let queries = random_queries(&mut rng, 1, DIM);
    let run = |fusion: &mut CudaFusion, similarity: &mut CudaSimilarity| {
        let mut batch = Batch::new(&cuda, DIM).expect("batch");
        batch.reset(&cuda, vec![request.clone()]).expect("reset");
        cuda.upload(&queries, &mut batch.query_embeddings)
            .expect("upload");
        fusion.run(&cuda, &mut batch).expect("fusion");
        similarity.run(&cuda, &mut batch).expect("similarity");
        (
            download(&cuda, &batch.fused),
            download(&cuda, &batch.candidate_ids),
        )
    };
    let (fused_before, ids_before) = run(&mut fusion, &mut similarity);
    let top = ids_before[0];
    let event = Event {
        user: UserId(1001),
        item: hyperrec_stage::ItemId(top),
        interaction: Interaction::Rating(5.0),
        timestamp: 9_000_000,
    };
    users.write().apply(
        UserId(1001),
        HistoryEntry {
            item: top,
            rating: 5.0,
            timestamp: event.timestamp,
        },
        &items,
    );
    fusion.observe(&cuda, &event).expect("observe");
    similarity.observe(&cuda, &event).expect("observe");
    let (fused_after, ids_after) = run(&mut fusion, &mut similarity);
    assert!(
        !ids_after.contains(&top),
        "seed {seed}: item {top} rated just now is still recommended"
    );
    assert_ne!(
        fused_before, fused_after,
        "seed {seed}: the profile did not move"
    );
}

fn random_weights(rng: &mut StdRng, heads: usize) -> hyperrec_rerank::RerankWeights {
    let mut weights = hyperrec_rerank::RerankWeights::untrained(DIM, heads);
    let scale = 1.0 / (DIM as f32).sqrt();
    for matrix in [
        &mut weights.q_proj,
        &mut weights.k_proj,
        &mut weights.v_proj,
    ] {
        matrix
            .iter_mut()
            .for_each(|x| *x = rng.random_range(-2.0f32..2.0) * scale);
    }
    weights.q_proj.iter_mut().for_each(|x| *x *= 4.0);
    weights.query_fused_mix = rng.random_range(0.1..0.9);
    weights.history_gate = [rng.random_range(-0.5..0.5), rng.random_range(0.5..1.5)];
    weights.context_gate = rng.random_range(0.5..1.5);
    weights.context_share = rng.random_range(0.1..0.9);
    weights.score_mix.bias = rng.random_range(-0.1..0.1);
    weights
}

/// One `rerank_matches_the_cpu_stage` case.
struct RerankCase {
    trained: bool,
    heads: usize,
    queries: usize,
    results: usize,
    /// Retrieval candidates per query (the similarity stage's).
    retrieved: usize,
    /// `RerankConfig::candidates`: reranked = min(retrieved, max(this, results)).
    rerank_candidates: usize,
    history_len: usize,
}

/// The rerank outputs of one GPU run, downloaded.
struct RerankOutputs {
    ids: Vec<u32>,
    scores: Vec<f32>,
    retrieval: Vec<f32>,
    attributions: Vec<f32>,
}

fn rerank_outputs(cuda: &Cuda, batch: &Batch<Cuda>) -> RerankOutputs {
    RerankOutputs {
        ids: download(cuda, &batch.result_ids),
        scores: download(cuda, &batch.result_scores),
        retrieval: download(cuda, &batch.result_retrieval_scores),
        attributions: download(cuda, &batch.result_attributions),
    }
}

/// Same result ids wherever final scores differ by more than the fp16 operands can move
/// them, scores within 1e-2 relative, retrieval scores equal, attributions within 1e-2.
fn assert_rerank_agrees(context: &str, cpu: &Batch<Cpu>, gpu: &RerankOutputs) {
    let results = cpu.results;
    for q in 0..cpu.len() {
        let row = q * results..(q + 1) * results;
        let cpu_final: std::collections::HashMap<u32, f32> = cpu.result_ids[row.clone()]
            .iter()
            .copied()
            .zip(cpu.result_scores[row.clone()].iter().copied())
            .collect();
        let scale = cpu.result_scores[row.clone()]
            .iter()
            .filter(|s| s.is_finite())
            .fold(0.0f32, |m, s| m.max(s.abs()))
            .max(1e-3);
        let cut = cpu.result_scores[row.end - 1];
        for i in row.clone() {
            let (cpu_id, gpu_id) = (cpu.result_ids[i], gpu.ids[i]);
            if cpu_id == u32::MAX || gpu_id == u32::MAX {
                assert_eq!(cpu_id, gpu_id, "{context}: padding at {i}");
                let slots = cpu.slots;
                assert!(
                    gpu.attributions[i * slots..(i + 1) * slots]
                        .iter()
                        .all(|&a| a == 0.0),
                    "{context}: attributions of padding at {i}"
                );
                continue;
            }
            let tolerance = 1e-2 * scale;
            assert!(
                (gpu.scores[i] - cpu.result_scores[i]).abs() <= tolerance || cpu_id != gpu_id,
                "{context}: query {q} rank {}: score {} vs CPU {}",
                i - row.start,
                gpu.scores[i],
                cpu.result_scores[i]
            );
            if cpu_id != gpu_id {
                // A swap is allowed only between items whose final scores are within tolerance.
                let gpu_item_cpu_score = cpu_final.get(&gpu_id).copied().unwrap_or(cut);
                assert!(
                    (gpu_item_cpu_score - cpu.result_scores[i]).abs() <= tolerance,
                    "{context}: query {q} rank {}: GPU {gpu_id} vs CPU {cpu_id} ({} vs {})",
                    i - row.start,
                    gpu.scores[i],
                    cpu.result_scores[i]
                );
            } else {
                assert_eq!(
                    gpu.retrieval[i], cpu.result_retrieval_scores[i],
                    "{context}: retrieval score"
                );
                let slots = cpu.slots;
                for s in 0..slots {
                    let (a, b) = (
                        gpu.attributions[i * slots + s],
                        cpu.result_attributions[i * slots + s],
                    );
                    assert!(
                        (a - b).abs() <= 1e-2,
                        "{context}: query {q} rank {} slot {s}: attribution {a} vs {b}",
                        i - row.start
                    );
                }
            }
        }
    }
}

/// The GPU rerank on the CPU's own candidates, every kernel build: the fused kernel (the
/// two-kernel path where it cannot run: more than 128 reranked candidates) and both builds
/// of the two-kernel path (bit-identical to each other), each against the CPU stage
/// ([`assert_rerank_agrees`]). Cases: the seed model's identity weights (one table for all
/// three projections) and random trained weights (distinct tables, beta != 0), 4 and 6
/// heads, users without history and queries without context, up to 64 sources, reranked
/// 10 / 100 / 128 / 200, results 1 / 10 / reranked / more than reranked, 300 queries.
#[test]
fn rerank_matches_the_cpu_stage() {
    let Some(cuda) = cuda_or_skip("rerank_matches_the_cpu_stage") else {
        return;
    };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let items = random_items(&mut rng, 4000, DIM);
    let users = random_users(&mut rng, &items, 300, 70);
    // Device rows long enough for 58 history items + 6 context phrases = 64 sources.
    let tables = Arc::new(Mutex::new(
        DeviceTables::new(
            &cuda,
            &items,
            &users.read(),
            TablesConfig {
                history_len: 58,
                ..TablesConfig::default()
            },
        )
        .expect("device tables"),
    ));
    let vocabulary = common::random_vocabulary(&mut rng, DIM);
    let case =
        |trained, heads, queries, results, retrieved, rerank_candidates, history_len| RerankCase {
            trained,
            heads,
            queries,
            results,
            retrieved,
            rerank_candidates,
            history_len,
        };
    for case in [
        case(false, 4, 1, 10, 100, 100, 50),
        case(false, 4, 33, 1, 100, 10, 50),
        case(true, 6, 20, 25, 100, 100, 58),
        case(true, 4, 7, 150, 100, 100, 50),
        case(true, 4, 5, 128, 128, 128, 50),
        case(false, 4, 9, 10, 200, 200, 50),
        case(true, 4, 3, 10, 200, 200, 58),
        // 300 queries: the fills span many runs of their shared-reference loads.
        case(true, 4, 300, 10, 100, 100, 58),
        case(false, 4, 300, 10, 100, 100, 50),
    ] {
        let RerankCase {
            trained,
            heads,
            queries: n,
            results: k,
            ..
        } = case;
        let weights = if trained {
            random_weights(&mut rng, heads)
        } else {
            hyperrec_rerank::RerankWeights::untrained(DIM, heads)
        };
        let config = hyperrec_rerank::RerankConfig {
            heads,
            candidates: case.rerank_candidates,
            history_len: case.history_len,
            ..Default::default()
        };
        let context = format!(
            "seed {seed}, trained {trained}, heads {heads}, n {n}, k {k}, retrieved {}, \
             rerank {}, history {}",
            case.retrieved, case.rerank_candidates, case.history_len
        );
        let mut requests = random_requests(&mut rng, 300, n, k);
        for (i, request) in requests.iter_mut().enumerate() {
            request.context.time_of_day =
                (i % 3 != 0).then(|| hyperrec_stage::TimeOfDay::ALL[i % 4]);
            request.context.social = (i % 2 == 0).then_some(hyperrec_stage::Social::Alone);
            if i % 3 == 1 {
                request.context.genres = vec!["thriller".into(), "unknown-genre".into()];
            } else if i % 5 == 2 {
                request.context.genres = ["thriller", "comedy", "drama", "horror"]
                    .map(String::from)
                    .to_vec();
            }
        }
        let queries = random_queries(&mut rng, n, DIM);
        let mut cpu = cpu_retrieved(
            &items,
            &users,
            &requests,
            &queries,
            DIM,
            case.retrieved,
            true,
        );
        // The GPU batch gets the CPU's candidates, so only the rerank differs.
        let mut gpu = Batch::new(&cuda, DIM).expect("batch");
        gpu.reset(&cuda, requests).expect("reset");
        gpu.notes = cpu.notes.clone();
        gpu.candidates = cpu.candidates;
        for (host, device) in [
            (&cpu.fused, &mut gpu.fused),
            (&cpu.candidate_scores, &mut gpu.candidate_scores),
        ] {
            cuda.resize(device, host.len()).expect("resize");
            cuda.upload(host, device).expect("upload");
        }
        cuda.resize(&mut gpu.candidate_ids, cpu.candidate_ids.len())
            .expect("resize");
        cuda.upload(&cpu.candidate_ids, &mut gpu.candidate_ids)
            .expect("upload");

        hyperrec_rerank::AttentionRerank::new(
            items.clone(),
            users.clone(),
            vocabulary.clone(),
            config.clone(),
            weights.clone(),
        )
        .expect("cpu rerank")
        .run(&Cpu, &mut cpu)
        .expect("cpu rerank");
        let mut rerank = hyperrec_kernels::CudaRerank::new(
            &cuda,
            users.clone(),
            tables.clone(),
            vocabulary.clone(),
            config,
            weights,
        )
        .expect("gpu rerank");

        // The fused builds (the default up to 128 reranked candidates).
        for kernel in [
            hyperrec_kernels::RerankKernel::Fused,
            hyperrec_kernels::RerankKernel::FusedCluster,
        ] {
            rerank.set_kernel(Some(kernel));
            rerank.run(&cuda, &mut gpu).expect("gpu rerank (fused)");
            assert_eq!(cpu.slots, gpu.slots, "{context}");
            for q in 0..n {
                assert_eq!(
                    cpu.notes[q].sources, gpu.notes[q].sources,
                    "{context}: sources of {q}"
                );
            }
            let outputs = rerank_outputs(&cuda, &gpu);
            assert_rerank_agrees(&format!("{context}, {kernel:?}"), &cpu, &outputs);
        }

        // The two-kernel path's builds: bit-identical, then the CPU check.
        rerank.set_kernel(Some(hyperrec_kernels::RerankKernel::Staged));
        rerank.run(&cuda, &mut gpu).expect("gpu rerank (staged)");
        let staged = rerank_outputs(&cuda, &gpu);
        rerank.set_kernel(Some(hyperrec_kernels::RerankKernel::Async));
        rerank.run(&cuda, &mut gpu).expect("gpu rerank (async)");
        let asynchronous = rerank_outputs(&cuda, &gpu);
        assert_eq!(staged.ids, asynchronous.ids, "{context}: ids");
        let same_bits = |a: &[f32], b: &[f32]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
        };
        assert!(
            same_bits(&staged.scores, &asynchronous.scores),
            "{context}: scores of the two kernels differ"
        );
        assert!(
            same_bits(&staged.attributions, &asynchronous.attributions),
            "{context}: attributions of the two kernels differ"
        );
        assert_rerank_agrees(&format!("{context}, two kernels"), &cpu, &asynchronous);
    }
}

/// The whole-path tests' inputs: 6000 random items, 200 users with up to 60 history items,
/// their device tables and a context vocabulary.
struct PathWorld {
    users: SharedUsers,
    tables: hyperrec_kernels::SharedTables,
    vocabulary: Arc<hyperrec_rerank::ContextVocabulary>,
}

impl PathWorld {
    fn new(cuda: &Cuda, rng: &mut StdRng) -> PathWorld {
        let items = random_items(rng, 6000, DIM);
        let users = random_users(rng, &items, 200, 60);
        let tables = tables(cuda, &items, &users);
        let vocabulary = common::random_vocabulary(rng, DIM);
        PathWorld {
            users,
            tables,
            vocabulary,
        }
    }

    /// A path of the stock GPU stages over this world.
    fn stock_path(&self, cuda: &Cuda) -> hyperrec_kernels::GpuPath {
        common::stock_path(cuda, &self.users, &self.tables, &self.vocabulary, DIM)
    }
}

/// Graph replays of the whole path give exactly what the stages give eagerly, also after
/// the queries change between replays.
#[test]
fn graph_replay_matches_eager_stages() {
    let Some(cuda) = cuda_or_skip("graph_replay_matches_eager_stages") else {
        return;
    };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let world = PathWorld::new(&cuda, &mut rng);
    let mut eager = world.stock_path(&cuda);
    let mut graph = world.stock_path(&cuda);
    let requests = random_requests(&mut rng, 200, 16, 10);
    let mut graph_batch = Batch::new(&cuda, DIM).expect("batch");
    for round in 0..4 {
        let queries = random_queries(&mut rng, 16, DIM);
        let batch = common::run_eager_and_graph(
            &cuda,
            &mut eager,
            &mut graph,
            &mut graph_batch,
            &requests,
            &queries,
            DIM,
        );
        assert_eq!(
            download(&cuda, &batch.result_ids),
            download(&cuda, &graph_batch.result_ids),
            "seed {seed}, round {round}"
        );
        assert_eq!(
            download(&cuda, &batch.result_scores),
            download(&cuda, &graph_batch.result_scores),
            "seed {seed}, round {round}"
        );
        assert_eq!(
            download(&cuda, &batch.result_attributions),
            download(&cuda, &graph_batch.result_attributions),
            "seed {seed}, round {round}"
        );
    }
    let (replays, captures) = graph.graph_stats();
    assert!(
        replays >= 2,
        "seed {seed}: the graph was replayed {replays} times ({captures} captures)"
    );
}

/// Batches launched back to back without a synchronization in between (a server keeps
/// several in flight) each read their own records and write their own results, equal to
/// each batch run alone: the path shares one record arena between its batches, so a batch's
/// records must not reach the device before the previous batch's kernels have read theirs.
/// A long fill kernel first holds the queue, so that all three batches are pending while
/// the host prepares the next ones (two of batch 1, whose rerank overlaps the similarity).
#[test]
fn batches_in_flight_keep_their_own_records() {
    let Some(cuda) = cuda_or_skip("batches_in_flight_keep_their_own_records") else {
        return;
    };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let world = PathWorld::new(&cuda, &mut rng);
    let mut streamed = world.stock_path(&cuda);
    let mut reference = world.stock_path(&cuda);
    // Batch 1 runs the fused batch-1 kernel with the rerank overlapped, batch 8 the others.
    let sizes = [1usize, 8, 1];
    let mut batches: Vec<Batch<Cuda>> = sizes
        .iter()
        .map(|_| Batch::new(&cuda, DIM).expect("batch"))
        .collect();
    const FILL_ROWS: usize = 1 << 20;
    let mut busy = cuda.zeros::<u16>(FILL_ROWS * DIM).expect("fill buffer");
    for round in 0..6 {
        let inputs: Vec<(Vec<Request>, Vec<f32>)> = sizes
            .iter()
            .map(|&n| {
                (
                    random_requests(&mut rng, 200, n, 10),
                    random_queries(&mut rng, n, DIM),
                )
            })
            .collect();
        cuda.fill_random_unit_rows(&mut busy, FILL_ROWS, DIM, seed ^ round)
            .expect("fill");
        for (batch, (requests, queries)) in batches.iter_mut().zip(&inputs) {
            batch.reset(&cuda, requests.clone()).expect("reset");
            cuda.upload(queries, &mut batch.query_embeddings)
                .expect("upload");
            streamed.run(&cuda, batch).expect("streamed path");
        }
        cuda.synchronize().expect("synchronize");
        for (i, (batch, (requests, queries))) in batches.iter().zip(&inputs).enumerate() {
            let mut alone = Batch::new(&cuda, DIM).expect("batch");
            alone.reset(&cuda, requests.clone()).expect("reset");
            cuda.upload(queries, &mut alone.query_embeddings)
                .expect("upload");
            reference.run(&cuda, &mut alone).expect("reference path");
            cuda.synchronize().expect("synchronize");
            let context = format!("seed {seed}, round {round}, batch {i}");
            assert_eq!(
                download(&cuda, &batch.result_ids),
                download(&cuda, &alone.result_ids),
                "{context}: result ids"
            );
            assert_eq!(
                download(&cuda, &batch.result_scores),
                download(&cuda, &alone.result_scores),
                "{context}: result scores"
            );
        }
    }
}
