//! Shared helpers of the GPU tests: skipping without a GPU, fresh random inputs.

#![allow(dead_code)]

use std::io::Write;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;
use rand::Rng;
use rand::rngs::StdRng;

use hyperrec_catalog::{HistoryEntry, ItemEmbeddings, ProfileRule, SharedUsers, UserTable};
use hyperrec_fusion::{Fusion, FusionConfig};
use hyperrec_kernels::{
    Cuda, CudaBuffer, CudaFusion, CudaRerank, CudaSimilarity, DeviceTables, GpuPath,
    SimilarityParams, TablesConfig,
};
use hyperrec_rerank::{ContextVocabulary, RerankConfig, RerankWeights};
use hyperrec_similarity::{Similarity, SimilarityConfig};
use hyperrec_stage::{Batch, Context, Cpu, Device, Element, Request, Stage, UserId};

/// The GPU, or `None` after printing a visible skip notice.
pub fn cuda_or_skip(test: &str) -> Option<Cuda> {
    if !Cuda::is_available() {
        // Straight to the process's stderr: the test harness captures eprintln! of passing
        // tests, and the skip must stay visible.
        let _ = writeln!(std::io::stderr(), "SKIPPED: no CUDA device ({test})");
        return None;
    }
    match Cuda::new(0) {
        Ok(cuda) => Some(cuda),
        Err(error) => panic!("a CUDA device is present but could not be opened: {error}"),
    }
}

/// A fresh seed from the clock; printed so a failure can be replayed with `HYPERREC_SEED`.
pub fn seed() -> u64 {
    let seed = std::env::var("HYPERREC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        });
    eprintln!("seed {seed} (replay with HYPERREC_SEED={seed})");
    seed
}

pub fn unit_vector(rng: &mut StdRng, dim: usize) -> Vec<f32> {
    loop {
        let v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 1e-3 {
            return v.into_iter().map(|x| x / norm).collect();
        }
    }
}

/// `n_items` random unit items, with a shared direction mixed in so scores spread like
/// sentence-encoder cosines (mostly positive, clustered) rather than around zero.
pub fn random_items(rng: &mut StdRng, n_items: usize, dim: usize) -> Arc<ItemEmbeddings> {
    let common = unit_vector(rng, dim);
    let mut data = Vec::with_capacity(n_items * dim);
    for _ in 0..n_items {
        let own = unit_vector(rng, dim);
        let mix = rng.random_range(0.2f32..0.6);
        let v: Vec<f32> = own.iter().zip(&common).map(|(o, c)| o + mix * c).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        data.extend(v.iter().map(|x| x / norm));
    }
    Arc::new(ItemEmbeddings::new(dim, data).expect("shape"))
}

/// `n_users` users with random histories (some empty or neutral-only: cold starts).
pub fn random_users(
    rng: &mut StdRng,
    items: &ItemEmbeddings,
    n_users: usize,
    max_history: usize,
) -> SharedUsers {
    let users = (0..n_users)
        .map(|u| {
            let len = match u % 7 {
                0 => 0,
                _ => rng.random_range(1..=max_history),
            };
            let history = (0..len)
                .map(|t| HistoryEntry {
                    item: rng.random_range(0..items.len() as u32),
                    rating: if u % 11 == 3 {
                        3.0
                    } else {
                        rng.random_range(1..=10) as f32 * 0.5
                    },
                    timestamp: 1_000_000 + t as i64 * 3600 + rng.random_range(0..100),
                })
                .collect();
            (UserId(1000 + u as u32), history)
        })
        .collect();
    Arc::new(RwLock::new(UserTable::build(
        users,
        items,
        ProfileRule::default(),
    )))
}

/// `n` requests from random known (and a few unknown) users, some with companions.
pub fn random_requests(rng: &mut StdRng, n_users: usize, n: usize, k: usize) -> Vec<Request> {
    (0..n)
        .map(|i| {
            let user = if i % 13 == 5 {
                UserId(1)
            } else {
                UserId(1000 + rng.random_range(0..n_users as u32))
            };
            let companions = if i % 5 == 2 {
                (0..rng.random_range(1..4))
                    .map(|_| UserId(1000 + rng.random_range(0..n_users as u32)))
                    .collect()
            } else {
                Vec::new()
            };
            Request {
                user,
                query: format!("query {i}"),
                context: Context {
                    companions,
                    ..Context::default()
                },
                k,
                exclude_seen: i % 4 != 1,
            }
        })
        .collect()
}

pub fn random_queries(rng: &mut StdRng, n: usize, dim: usize) -> Vec<f32> {
    (0..n).flat_map(|_| unit_vector(rng, dim)).collect()
}

/// The catalog and user tables on the device, shared by the stages under test.
pub fn device_tables(
    cuda: &Cuda,
    items: &ItemEmbeddings,
    users: &SharedUsers,
) -> hyperrec_kernels::SharedTables {
    let tables = DeviceTables::new(cuda, items, &users.read(), TablesConfig::default())
        .expect("device tables");
    Arc::new(parking_lot::Mutex::new(tables))
}

/// A device buffer's contents on the host.
pub fn download<T: Element>(cuda: &Cuda, buffer: &CudaBuffer<T>) -> Vec<T> {
    let mut host = Vec::new();
    cuda.download(buffer, &mut host).expect("download");
    host
}

/// Context phrases of four genres with random unit embeddings of width `dim`.
pub fn random_vocabulary(rng: &mut StdRng, dim: usize) -> Arc<ContextVocabulary> {
    let genres: Vec<String> = ["thriller", "comedy", "drama", "horror"]
        .iter()
        .map(|g| g.to_string())
        .collect();
    let entries = ContextVocabulary::all_phrases(&genres)
        .into_iter()
        .map(|phrase| (phrase, unit_vector(rng, dim)))
        .collect();
    Arc::new(ContextVocabulary::new(entries).expect("vocabulary"))
}

/// The post-encoding path with the stock GPU stages: fusion (alpha 0.4), similarity (100
/// candidates, seen items excluded) and the rerank with untrained weights.
pub fn stock_path(
    cuda: &Cuda,
    users: &SharedUsers,
    tables: &hyperrec_kernels::SharedTables,
    vocabulary: &Arc<ContextVocabulary>,
    dim: usize,
) -> GpuPath {
    let config = RerankConfig::default();
    GpuPath::new(
        CudaFusion::new(cuda, users.clone(), tables.clone(), 0.4).expect("fusion"),
        CudaSimilarity::new(
            cuda,
            users.clone(),
            tables.clone(),
            SimilarityParams {
                candidates: 100,
                exclude_seen: true,
            },
        )
        .expect("similarity"),
        CudaRerank::new(
            cuda,
            users.clone(),
            tables.clone(),
            vocabulary.clone(),
            config.clone(),
            RerankWeights::untrained(dim, config.heads),
        )
        .expect("rerank"),
    )
}

/// Runs `requests` with `queries` through `eager`'s stages one by one on a fresh batch
/// (returned) and through `graph` (captured / replayed) on `graph_batch`, so a test can
/// compare what each wrote.
#[allow(clippy::too_many_arguments)]
pub fn run_eager_and_graph(
    cuda: &Cuda,
    eager: &mut GpuPath,
    graph: &mut GpuPath,
    graph_batch: &mut Batch<Cuda>,
    requests: &[Request],
    queries: &[f32],
    dim: usize,
) -> Batch<Cuda> {
    let mut batch = Batch::new(cuda, dim).expect("batch");
    batch.reset(cuda, requests.to_vec()).expect("reset");
    cuda.upload(queries, &mut batch.query_embeddings)
        .expect("upload");
    eager.fusion.run(cuda, &mut batch).expect("fusion");
    eager.similarity.run(cuda, &mut batch).expect("similarity");
    eager.rerank.run(cuda, &mut batch).expect("rerank");

    graph_batch.reset(cuda, requests.to_vec()).expect("reset");
    cuda.upload(queries, &mut graph_batch.query_embeddings)
        .expect("upload");
    graph.run(cuda, graph_batch).expect("graph path");
    batch
}

/// The CPU reference stages fusion (alpha 0.5) and similarity (`candidates`, `exclude_seen`)
/// run on a fresh batch of `requests` with these query embeddings: the notes and candidates
/// the GPU host steps and the rerank tests compare with.
pub fn cpu_retrieved(
    items: &Arc<ItemEmbeddings>,
    users: &SharedUsers,
    requests: &[Request],
    queries: &[f32],
    dim: usize,
    candidates: usize,
    exclude_seen: bool,
) -> Batch<Cpu> {
    let mut cpu = Batch::new(&Cpu, dim).expect("batch");
    cpu.reset(&Cpu, requests.to_vec()).expect("reset");
    cpu.query_embeddings.copy_from_slice(queries);
    Fusion::new(users.clone(), FusionConfig { alpha: 0.5 })
        .expect("fusion")
        .run(&Cpu, &mut cpu)
        .expect("fusion");
    Similarity::new(
        items.clone(),
        users.clone(),
        SimilarityConfig {
            candidates,
            exclude_seen,
        },
    )
    .expect("similarity")
    .run(&Cpu, &mut cpu)
    .expect("similarity");
    cpu
}
