//! Seed-scale GPU benchmark: post-encoding path latency and throughput, top-K, cache,
//! memory, and batch-1 latency at 10 million users. CUDA-event timing, warm-up, medians.
//!
//! `gpu-bench [--users N] [--reps N] [--big-users N] [--profile-batch1 N] [--profile-size S]`
//! (defaults: 100000, 50, 10000000, 0, 1; a nonzero `--profile-batch1` only runs the path at
//! batch size `--profile-size` that many times, then as many times with the two-kernel
//! similarity (GEMV + threshold filter) instead of the fused batch-1 kernel, for a profiler).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use half::f16;
use parking_lot::{Mutex, RwLock};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use hyperrec_cache::{CacheConfig, RowSource, TemporalCache};
use hyperrec_catalog::SharedUsers;
use hyperrec_catalog::{HistoryEntry, ItemEmbeddings, ProfileRule, UserTable};
use hyperrec_kernels::{
    Cuda, CudaCache, CudaCacheConfig, CudaFusion, CudaMark, CudaRerank, CudaSimilarity,
    DeviceTables, GpuPath, OnePass, RerankKernel, ScoreGemm, SharedTables, SimilarityOne,
    SimilarityParams, TablesConfig, TopK, TopKStrategy, score_all_items, score_all_items_with,
    score_row_stride,
};
use hyperrec_rerank::{ContextVocabulary, RerankConfig, RerankWeights};
use hyperrec_stage::{Batch, Context, Device, Request, Social, Stage, TimeOfDay, UserId};

const DIM: usize = 384;
const N_ITEMS: usize = 62_423;

struct Args {
    users: usize,
    reps: usize,
    big_users: usize,
    /// When nonzero: only run the batch-1 path this many times (for a profiler), then exit.
    profile_batch1: usize,
    /// Batch size of the `--profile-batch1` runs.
    profile_size: usize,
    /// When nonzero: only compare the batch-1 path's variants over this many alternating
    /// rounds, then exit.
    batch1_ab: usize,
    /// When nonzero: only trace this many batch-1 path runs (the similarity kernel's and
    /// the rerank's phase marks on one timeline), then exit.
    trace_batch1: usize,
    /// When nonzero: the per-thread stack size the context reserves, set before anything
    /// else (the default is `Cuda::new`'s).
    stack_bytes: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        users: 100_000,
        reps: 50,
        big_users: 10_000_000,
        profile_batch1: 0,
        profile_size: 1,
        batch1_ab: 0,
        trace_batch1: 0,
        stack_bytes: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value: usize = it
            .next()
            .with_context(|| format!("{flag} needs a value"))?
            .parse()
            .with_context(|| format!("{flag} needs a number"))?;
        match flag.as_str() {
            "--users" => args.users = value,
            "--reps" => args.reps = value.max(3),
            "--big-users" => args.big_users = value,
            "--profile-batch1" => args.profile_batch1 = value,
            "--profile-size" => args.profile_size = value.max(1),
            "--batch1-ab" => args.batch1_ab = value,
            "--trace-batch1" => args.trace_batch1 = value,
            "--stack-bytes" => args.stack_bytes = value,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(args)
}

fn unit(rng: &mut StdRng, dim: usize) -> Vec<f32> {
    let v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
    v.into_iter().map(|x| x / n).collect()
}

fn items(rng: &mut StdRng) -> Arc<ItemEmbeddings> {
    let common = unit(rng, DIM);
    let mut data = Vec::with_capacity(N_ITEMS * DIM);
    for _ in 0..N_ITEMS {
        let own = unit(rng, DIM);
        let mix = rng.random_range(0.2f32..0.6);
        let v: Vec<f32> = own.iter().zip(&common).map(|(o, c)| o + mix * c).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        data.extend(v.iter().map(|x| x / n));
    }
    Arc::new(ItemEmbeddings::new(DIM, data).expect("shape"))
}

fn users(rng: &mut StdRng, items: &ItemEmbeddings, n: usize) -> UserTable {
    let users = (0..n)
        .map(|u| {
            let history = (0..50)
                .map(|t| HistoryEntry {
                    item: rng.random_range(0..N_ITEMS as u32),
                    rating: rng.random_range(1..=10) as f32 * 0.5,
                    timestamp: 1_000_000 + t * 3600,
                })
                .collect();
            (UserId(u as u32), history)
        })
        .collect();
    UserTable::build(users, items, ProfileRule::default())
}

fn requests(rng: &mut StdRng, n_users: usize, n: usize) -> Vec<Request> {
    (0..n)
        .map(|i| Request {
            user: UserId(rng.random_range(0..n_users as u32)),
            query: format!("q{i}"),
            context: Context {
                time_of_day: Some(TimeOfDay::Evening),
                social: Some(Social::Alone),
                genres: vec!["thriller".into()],
                ..Context::default()
            },
            k: 10,
            exclude_seen: true,
        })
        .collect()
}

fn vocabulary(rng: &mut StdRng) -> Arc<ContextVocabulary> {
    let genres: Vec<String> = ["thriller", "comedy", "drama", "horror", "romance"]
        .iter()
        .map(|g| g.to_string())
        .collect();
    let entries = ContextVocabulary::all_phrases(&genres)
        .into_iter()
        .map(|p| (p, unit(rng, DIM)))
        .collect();
    Arc::new(ContextVocabulary::new(entries).expect("vocabulary"))
}

fn path(
    cuda: &Cuda,
    users: &SharedUsers,
    tables: &SharedTables,
    vocabulary: &Arc<ContextVocabulary>,
) -> anyhow::Result<GpuPath> {
    path_for(cuda, users, tables, vocabulary)
}

fn path_for(
    cuda: &Cuda,
    users: &SharedUsers,
    tables: &SharedTables,
    vocabulary: &Arc<ContextVocabulary>,
) -> anyhow::Result<GpuPath> {
    let fusion = CudaFusion::new(cuda, users.clone(), tables.clone(), 0.5)?;
    let similarity = CudaSimilarity::new(
        cuda,
        users.clone(),
        tables.clone(),
        SimilarityParams {
            candidates: 100,
            exclude_seen: true,
        },
    )?;
    let config = RerankConfig::default();
    let rerank = CudaRerank::new(
        cuda,
        users.clone(),
        tables.clone(),
        vocabulary.clone(),
        config.clone(),
        RerankWeights::untrained(DIM, config.heads),
    )?;
    Ok(GpuPath::new(fusion, similarity, rerank))
}

fn query_batch(
    cuda: &Cuda,
    rng: &mut StdRng,
    n_users: usize,
    n: usize,
) -> anyhow::Result<Batch<Cuda>> {
    let mut batch = Batch::new(cuda, DIM)?;
    batch.reset(cuda, requests(rng, n_users, n))?;
    let queries: Vec<f32> = (0..n).flat_map(|_| unit(rng, DIM)).collect();
    cuda.upload(&queries, &mut batch.query_embeddings)?;
    Ok(batch)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Median device time (µs) of `work` between two events, after `warmup` untimed runs.
fn device_time(
    cuda: &Cuda,
    reps: usize,
    mut work: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    for _ in 0..5 {
        work()?;
    }
    cuda.synchronize()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = cuda.mark()?;
        work()?;
        let end = cuda.mark()?;
        cuda.synchronize()?;
        times.push(cuda.elapsed(&start, &end)?.as_secs_f64() * 1e6);
    }
    Ok(median(times))
}

/// Runs the batch-1 path `runs` times (after a warm-up) with the similarity kernel's and the
/// rerank's phase marks, and prints the medians of each mark relative to the similarity
/// kernel's first block start, in ns.
fn trace_batch1(
    cuda: &Cuda,
    path: &mut GpuPath,
    batch: &mut Batch<Cuda>,
    runs: usize,
    overlap: bool,
) -> anyhow::Result<()> {
    const MARKS: [&str; 8] = [
        "start",
        "sources issued, before the wait",
        "wait returned",
        "first head's rows landed",
        "heads done",
        "attention summed, keys written",
        "ranked",
        "end",
    ];
    let mut rows: Vec<(String, Vec<f64>)> = Vec::new();
    let mut push = |name: String, value: f64| match rows.iter_mut().find(|(n, _)| *n == name) {
        Some((_, values)) => values.push(value),
        None => rows.push((name, vec![value])),
    };
    for run in 0..runs + 5 {
        path.run(cuda, batch)?;
        cuda.synchronize()?;
        if run < 5 {
            continue;
        }
        let similarity = path.similarity.trace_marks(cuda)?;
        let rerank = path.rerank.trace_marks(cuda)?;
        let blocks = similarity.len() / 8 - 1;
        let first = (0..blocks)
            .map(|b| similarity[8 * b])
            .fold(similarity[0], |a, m| {
                if (m.wrapping_sub(a) as i32) < 0 { m } else { a }
            });
        let at = |mark: u32| f64::from(mark.wrapping_sub(first) as i32);
        let last_ticket = (0..blocks)
            .map(|b| at(similarity[8 * b + 1]))
            .fold(f64::NEG_INFINITY, f64::max);
        push("similarity: last ticket".into(), last_ticket);
        push(
            "similarity: last block end".into(),
            at(similarity[8 * blocks + 4]),
        );
        for (phase, name) in MARKS.iter().enumerate() {
            let per_block: Vec<f64> = (0..hyperrec_kernels::RERANK_TRACE_BLOCKS)
                .map(|r| rerank[r * hyperrec_kernels::RERANK_TRACE_MARKS + phase])
                .filter(|&m| m != 0)
                .map(at)
                .collect();
            if per_block.is_empty() {
                continue;
            }
            let latest = per_block.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            push(format!("rerank: {name} (latest block)"), latest);
        }
    }
    println!(
        "batch-1 trace, rerank overlapped: {overlap} (medians of {runs} runs, ns after the similarity kernel's first block start)"
    );
    for (name, values) in rows {
        println!("| {name} | {:.0} | ns |", median(values));
    }
    Ok(())
}

/// Median wall time (µs) of `work` including a final synchronize (host work included).
fn wall_time(
    cuda: &Cuda,
    reps: usize,
    mut work: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    for _ in 0..5 {
        work()?;
        cuda.synchronize()?;
    }
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        work()?;
        cuda.synchronize()?;
        times.push(start.elapsed().as_secs_f64() * 1e6);
    }
    Ok(median(times))
}

/// Phase marks of the fused batch-1 kernel (`SimilarityOne::enqueue_traced`), medians over
/// `reps` launches: per block (median and slowest block) the query barrier, scoring, the
/// slice sort with its histogram atomics, and the fence with the ticket, in SM cycles; the
/// spread of the blocks' tickets and the whole kernel on the global timer (ns); the last
/// block's phases in cycles.
#[allow(clippy::too_many_arguments)]
fn fused_phases(
    cuda: &Cuda,
    fused: &mut SimilarityOne,
    tables: &DeviceTables,
    pass: OnePass,
    queries: &hyperrec_kernels::CudaBuffer<f32>,
    seen: &hyperrec_kernels::CudaBuffer<u32>,
    reps: usize,
    results: &mut Vec<(String, f64, &str)>,
) -> anyhow::Result<()> {
    const NAMES: [(&str, &str); 16] = [
        ("per block: query barrier, median", "cycles"),
        ("per block: query barrier, slowest", "cycles"),
        ("per block: scoring (+ seen list), median", "cycles"),
        ("per block: scoring (+ seen list), slowest", "cycles"),
        (
            "per block: slice sort + histogram atomics, median",
            "cycles",
        ),
        (
            "per block: slice sort + histogram atomics, slowest",
            "cycles",
        ),
        ("per block: fence + ticket, median", "cycles"),
        ("per block: fence + ticket, slowest", "cycles"),
        ("first block start -> last block start", "ns"),
        ("first ticket -> last ticket", "ns"),
        ("first block start -> last ticket", "ns"),
        ("last block: histogram read + k-th bin", "cycles"),
        ("last block: gather", "cycles"),
        ("last block: sort + write", "cycles"),
        ("first block start -> last block end", "ns"),
        ("candidates gathered (tie fallback runs: +100000)", "count"),
    ];
    let mut trace = cuda.zeros::<u32>(0)?;
    let mut per_metric: Vec<Vec<f64>> = vec![Vec::new(); NAMES.len() + 3];
    let mut host = Vec::new();
    for rep in 0..reps + 5 {
        fused.enqueue_traced(
            cuda,
            tables.items(),
            (pass == OnePass::Int8).then(|| tables.item_codes()),
            N_ITEMS,
            DIM,
            queries,
            Some((seen, seen.len())),
            100,
            Some(&mut trace),
        )?;
        cuda.download(&trace, &mut host)?;
        if rep < 5 {
            continue;
        }
        let blocks = host.len() / 8 - 1;
        let at = |b: usize, i: usize| host[b * 8 + i];
        let span = |b: usize, from: usize, to: usize| at(b, to).wrapping_sub(at(b, from)) as f64;
        let mut metrics = Vec::with_capacity(NAMES.len());
        for (from, to) in [(2, 3), (3, 4), (4, 5), (5, 6)] {
            let mut v: Vec<f64> = (0..blocks).map(|b| span(b, from, to)).collect();
            v.sort_by(f64::total_cmp);
            metrics.push(v[v.len() / 2]);
            metrics.push(v[v.len() - 1]);
        }
        // Global timer relative to block 0's start (wrapping 32-bit nanoseconds).
        let reference = at(0, 0);
        let rel = |x: u32| x.wrapping_sub(reference) as i32 as f64;
        let starts: Vec<f64> = (0..blocks).map(|b| rel(at(b, 0))).collect();
        let tickets: Vec<f64> = (0..blocks).map(|b| rel(at(b, 1))).collect();
        let first_start = starts.iter().copied().fold(f64::INFINITY, f64::min);
        let last_start = starts.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let first_ticket = tickets.iter().copied().fold(f64::INFINITY, f64::min);
        let last_ticket = tickets.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        metrics.push(last_start - first_start);
        metrics.push(last_ticket - first_ticket);
        metrics.push(last_ticket - first_start);
        metrics.push(span(blocks, 0, 1));
        metrics.push(span(blocks, 1, 2));
        metrics.push(span(blocks, 2, 3));
        metrics.push(rel(at(blocks, 4)) - first_start);
        if pass == OnePass::Int8 {
            // Word 5: the candidates the last block rescored itself; word 7: its clock
            // after rescoring (then the selection and the writes).
            metrics.push(f64::from(at(blocks, 6)));
            metrics.push(f64::from(at(blocks, 5)));
            metrics.push(span(blocks, 2, 7));
            metrics.push(span(blocks, 7, 3));
        } else {
            metrics.push(f64::from(at(blocks, 6)) + 100_000.0 * f64::from(at(blocks, 5)));
        }
        for (metric, value) in per_metric.iter_mut().zip(metrics) {
            metric.push(value);
        }
    }
    const INT8_NAMES: [(&str, &str); 4] = [
        ("last block: candidates gathered", "count"),
        ("last block: candidates it rescored", "count"),
        ("last block: rescoring", "cycles"),
        ("last block: selection + write", "cycles"),
    ];
    // The int8 build's phases between the same marks: no histogram atomics (the slice's
    // L-heads and two exact rows instead), a histogram of the L-heads in the last block.
    let renamed = |name: &'static str| match name {
        "per block: slice sort + histogram atomics, median" => {
            "per block: slice sort, L-heads + two exact rows, median"
        }
        "per block: slice sort + histogram atomics, slowest" => {
            "per block: slice sort, L-heads + two exact rows, slowest"
        }
        "last block: histogram read + k-th bin" => "last block: L-heads histogram + k-th bin",
        "last block: sort + write" => "last block: rescoring, selection + write",
        other => other,
    };
    let names: Vec<(&str, &str)> = match pass {
        OnePass::Int8 => NAMES[..NAMES.len() - 1]
            .iter()
            .map(|&(name, unit)| (renamed(name), unit))
            .chain(INT8_NAMES)
            .collect(),
        OnePass::Fp16 => NAMES.to_vec(),
    };
    for ((name, unit), values) in names.iter().zip(per_metric) {
        results.push((
            format!("fused trace ({pass:?}): {name}"),
            median(values),
            unit,
        ));
    }
    Ok(())
}

/// Median wall time (µs) per batch of the path over `pair`'s batches launched alternately,
/// at most two in flight: before launching a batch the host waits only for the one launched
/// two earlier. Five rounds of `batches` launches, after a warm-up that captures both graphs.
fn streamed_time(
    cuda: &Cuda,
    path: &mut GpuPath,
    pair: &mut [Batch<Cuda>; 2],
    batches: usize,
) -> anyhow::Result<f64> {
    for batch in pair.iter_mut() {
        path.run(cuda, batch)?;
        path.run(cuda, batch)?;
    }
    cuda.synchronize()?;
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let mut in_flight: std::collections::VecDeque<CudaMark> = Default::default();
        let start = Instant::now();
        for i in 0..batches {
            if in_flight.len() == 2
                && let Some(oldest) = in_flight.pop_front()
            {
                oldest.wait()?;
            }
            path.run(cuda, &mut pair[i % 2])?;
            in_flight.push_back(cuda.mark()?);
        }
        cuda.synchronize()?;
        rounds.push(start.elapsed().as_secs_f64() * 1e6 / batches as f64);
    }
    Ok(median(rounds))
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let cuda = Cuda::new(0).context("opening the GPU")?;
    let in_use = |cuda: &Cuda| -> anyhow::Result<f64> {
        let (free, total) = cuda.memory_info()?;
        Ok((total - free) as f64 / (1024.0 * 1024.0))
    };
    println!(
        "device memory in use after opening (context, kernels, cuBLAS): {:.1} MiB, stack {} bytes per thread",
        in_use(&cuda)?,
        cuda.stack_limit()?
    );
    if args.stack_bytes > 0 {
        cuda.set_stack_limit(args.stack_bytes)?;
        println!(
            "device memory in use with a stack of {} bytes per thread: {:.1} MiB",
            cuda.stack_limit()?,
            in_use(&cuda)?
        );
    }
    println!("device: {} (cuBLAS: {})", cuda.name(), cuda.has_cublas());
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let t = Instant::now();
    let items = items(&mut rng);
    let host_users = Arc::new(RwLock::new(users(&mut rng, &items, args.users)));
    println!("host data: {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let tables = DeviceTables::new(&cuda, &items, &host_users.read(), TablesConfig::default())?;
    let tables = Arc::new(Mutex::new(tables));
    cuda.synchronize()?;
    println!("device tables: {:.1} s", t.elapsed().as_secs_f64());

    let mut results: Vec<(String, f64, &str)> = Vec::new();

    if args.trace_batch1 > 0 {
        let vocabulary = vocabulary(&mut rng);
        let mut path = path(&cuda, &host_users, &tables, &vocabulary)?;
        let mut batch = query_batch(&cuda, &mut rng, args.users, 1)?;
        path.similarity.set_trace(&cuda, true)?;
        path.rerank.set_trace(&cuda, true)?;
        for overlap in [true, false] {
            path.set_rerank_overlap(overlap);
            trace_batch1(&cuda, &mut path, &mut batch, args.trace_batch1, overlap)?;
        }
        return Ok(());
    }

    if args.batch1_ab > 0 {
        // The batch-1 path's variants alternated round by round on one batch, so that a
        // drift of the host or the clocks hits every variant alike.
        let vocabulary = vocabulary(&mut rng);
        let mut path = path(&cuda, &host_users, &tables, &vocabulary)?;
        let mut batch = query_batch(&cuda, &mut rng, args.users, 1)?;
        let variants: [(&str, bool); 2] = [
            ("default (rerank overlapped)", true),
            ("rerank not overlapped", false),
        ];
        let mut walls = vec![Vec::new(); variants.len()];
        let mut events = vec![Vec::new(); variants.len()];
        for _ in 0..args.batch1_ab {
            for (i, (_, overlap)) in variants.iter().enumerate() {
                path.set_rerank_overlap(*overlap);
                walls[i].push(wall_time(&cuda, args.reps, || {
                    Ok(path.run(&cuda, &mut batch)?)
                })?);
                events[i].push(device_time(&cuda, args.reps, || {
                    Ok(path.run(&cuda, &mut batch)?)
                })?);
            }
        }
        for (i, (label, _)) in variants.iter().enumerate() {
            let spread = |xs: &[f64]| {
                let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = xs.iter().copied().fold(0.0, f64::max);
                format!("{lo:.1}..{hi:.1}")
            };
            println!(
                "| path (graph), batch 1, {label}: wall median of {} rounds | {:.1} | us (rounds {}) |",
                args.batch1_ab,
                median(walls[i].clone()),
                spread(&walls[i])
            );
            println!(
                "| path (graph), batch 1, {label}: events median of {} rounds | {:.1} | us (rounds {}) |",
                args.batch1_ab,
                median(events[i].clone()),
                spread(&events[i])
            );
        }
        return Ok(());
    }

    if args.profile_batch1 > 0 {
        let vocabulary = vocabulary(&mut rng);
        let mut path = path(&cuda, &host_users, &tables, &vocabulary)?;
        let mut batch = query_batch(&cuda, &mut rng, args.users, args.profile_size)?;
        for _ in 0..args.profile_batch1 {
            path.run(&cuda, &mut batch)?;
            cuda.synchronize()?;
        }
        // Then the two-kernel similarity (GEMV + threshold filter), which batch 1 used before
        // the fused kernel, so one profile shows both.
        path.similarity
            .set_top_k_strategy(TopKStrategy::SampledThreshold);
        for _ in 0..args.profile_batch1 {
            path.run(&cuda, &mut batch)?;
            cuda.synchronize()?;
        }
        println!(
            "batch-{} path run {} times",
            args.profile_size, args.profile_batch1
        );
        return Ok(());
    }

    // Top-100 of 62,423 fp16 scores for 1000 queries.
    {
        let ld = score_row_stride(N_ITEMS);
        let host: Vec<u16> = (0..1000 * ld)
            .map(|_| f16::from_f32(rng.random_range(-0.2f32..0.8)).to_bits())
            .collect();
        let mut scores = cuda.zeros::<u16>(host.len())?;
        cuda.upload(&host, &mut scores)?;
        let mut top = TopK::new(&cuda)?;
        for strategy in [
            TopKStrategy::SampledThreshold,
            TopKStrategy::ExactRadix,
            TopKStrategy::SharedRow,
        ] {
            for (n, k) in [(1000usize, 100usize), (1, 100), (1000, 1000)] {
                let us = device_time(&cuda, args.reps, || {
                    Ok(top.enqueue_with(&cuda, &scores, N_ITEMS, n, k, strategy)?)
                })?;
                results.push((
                    format!("top-{k} of 62,423, {n} queries ({strategy:?})"),
                    us,
                    "us",
                ));
            }
        }
        for n in [132usize, 264, 500] {
            let us = device_time(&cuda, args.reps, || {
                Ok(top.enqueue(&cuda, &scores, N_ITEMS, n, 100)?)
            })?;
            results.push((format!("top-100 of 62,423, {n} queries"), us, "us"));
        }
    }

    // The score GEMM alone.
    for n in [1usize, 8, 1000] {
        let queries: Vec<f32> = (0..n).flat_map(|_| unit(&mut rng, DIM)).collect();
        let mut device_queries = cuda.zeros::<f32>(queries.len())?;
        cuda.upload(&queries, &mut device_queries)?;
        let (mut scratch, mut out) = (cuda.zeros::<u16>(0)?, cuda.zeros::<u16>(0)?);
        let guard = tables.lock();
        let us = device_time(&cuda, args.reps, || {
            Ok(score_all_items(
                &cuda,
                &guard,
                &device_queries,
                n,
                &mut scratch,
                &mut out,
            )?)
        })?;
        results.push((
            format!("scores of 62,423 items, batch {n} (GEMM/GEMV)"),
            us,
            "us",
        ));
        if n == 1 {
            // The batch-1 similarity stage's device work: the two-kernel path (GEMV, then
            // the one-block threshold filter) against the fused kernel, without and with a
            // 50-item seen list (the bench users' history length).
            let mut top = TopK::new(&cuda)?;
            let us = device_time(&cuda, args.reps, || {
                score_all_items(&cuda, &guard, &device_queries, 1, &mut scratch, &mut out)?;
                Ok(top.enqueue(&cuda, &out, N_ITEMS, 1, 100)?)
            })?;
            results.push((
                "similarity + top-100, batch 1 (GEMV + topk_filter_wide)".into(),
                us,
                "us",
            ));
            let seen: Vec<u32> = (0..50)
                .map(|_| rng.random_range(0..N_ITEMS as u32))
                .collect();
            let mut device_seen = cuda.zeros::<u32>(seen.len())?;
            cuda.upload(&seen, &mut device_seen)?;
            let mut fused = SimilarityOne::new(&cuda)?;
            for pass in [OnePass::Fp16, OnePass::Int8] {
                let int8 = (pass == OnePass::Int8).then(|| guard.item_codes());
                for (label, seen) in [("", None), (", 50 seen excluded", Some((&device_seen, 50)))]
                {
                    let us = device_time(&cuda, args.reps, || {
                        Ok(fused.enqueue_traced(
                            &cuda,
                            guard.items(),
                            int8,
                            N_ITEMS,
                            DIM,
                            &device_queries,
                            seen,
                            100,
                            None,
                        )?)
                    })?;
                    results.push((
                        format!(
                            "similarity + top-100, batch 1 (fused, {pass:?} first pass){label}"
                        ),
                        us,
                        "us",
                    ));
                }
                // Both passes select the same items (the tests check this on fresh data;
                // here a visible cross-check on the bench's own).
                let mut ids = Vec::new();
                cuda.download(fused.ids(), &mut ids)?;
                println!(
                    "fused {pass:?} first pass, 50 seen: first ids {:?}",
                    &ids[..5]
                );
                fused_phases(
                    &cuda,
                    &mut fused,
                    &guard,
                    pass,
                    &device_queries,
                    &device_seen,
                    args.reps,
                    &mut results,
                )?;
            }
            // Other slice sizes (blocks = 62,423 / slice) of the same kernel.
            for slice in [64usize, 96, 128, 192, 256] {
                fused.set_slice(Some(slice));
                let us = device_time(&cuda, args.reps, || {
                    Ok(fused.enqueue(
                        &cuda,
                        guard.items(),
                        N_ITEMS,
                        DIM,
                        &device_queries,
                        Some((&device_seen, 50)),
                        100,
                    )?)
                })?;
                results.push((
                    format!(
                        "similarity + top-100, batch 1 (fused, {slice} items per block, {} blocks), 50 seen",
                        N_ITEMS.div_ceil(slice)
                    ),
                    us,
                    "us",
                ));
            }
            fused.set_slice(None);
        }
        if n < 1000 {
            continue;
        }
        // The large-batch similarity on its own: the default (cuBLASLt, measured algorithm)
        // against cublasGemmEx, and the selection on the GEMM's real score rows (their
        // top candidates span many more fp16 keys than the uniform rows above).
        let us = device_time(&cuda, args.reps, || {
            Ok(score_all_items_with(
                &cuda,
                &guard,
                &device_queries,
                n,
                &mut scratch,
                &mut out,
                ScoreGemm::GemmEx,
            )?)
        })?;
        results.push((
            format!("scores of 62,423 items, batch {n} (cublasGemmEx)"),
            us,
            "us",
        ));
        let mut top = TopK::new(&cuda)?;
        score_all_items(&cuda, &guard, &device_queries, n, &mut scratch, &mut out)?;
        let us = device_time(&cuda, args.reps, || {
            Ok(top.enqueue(&cuda, &out, N_ITEMS, n, 100)?)
        })?;
        results.push((
            format!("top-100 of 62,423 GEMM scores, {n} queries"),
            us,
            "us",
        ));
        for (gemm, name) in [
            (ScoreGemm::Measured, "cuBLASLt measured"),
            (ScoreGemm::GemmEx, "cublasGemmEx"),
        ] {
            let us = device_time(&cuda, args.reps, || {
                score_all_items_with(
                    &cuda,
                    &guard,
                    &device_queries,
                    n,
                    &mut scratch,
                    &mut out,
                    gemm,
                )?;
                Ok(top.enqueue(&cuda, &out, N_ITEMS, n, 100)?)
            })?;
            results.push((
                format!("similarity + top-100, batch {n} (scores + select, device; {name})"),
                us,
                "us",
            ));
        }
    }

    let vocabulary = vocabulary(&mut rng);
    let mut path = path(&cuda, &host_users, &tables, &vocabulary)?;

    // Per-stage device times (eager launches with marks between stages).
    for n in [1usize, 1000] {
        let mut batch = query_batch(&cuda, &mut rng, args.users, n)?;
        let mut stage_times = vec![Vec::new(); 3];
        for rep in 0..args.reps + 5 {
            let m0 = cuda.mark()?;
            path.fusion.run(&cuda, &mut batch)?;
            let m1 = cuda.mark()?;
            path.similarity.run(&cuda, &mut batch)?;
            let m2 = cuda.mark()?;
            path.rerank.run(&cuda, &mut batch)?;
            let m3 = cuda.mark()?;
            cuda.synchronize()?;
            if rep >= 5 {
                for (i, (a, b)) in [(&m0, &m1), (&m1, &m2), (&m2, &m3)].into_iter().enumerate() {
                    stage_times[i].push(cuda.elapsed(a, b)?.as_secs_f64() * 1e6);
                }
            }
        }
        // The rerank's kernels alone (the batch was prepared by the runs above): the
        // difference to the eager figure is host preparation and uploads.
        let us = device_time(&cuda, args.reps, || {
            Ok(path.rerank.enqueue_prepared(&cuda, &mut batch)?)
        })?;
        results.push((format!("rerank kernels only, batch {n}"), us, "us"));
        // Each build fixed: both fused ones and the two-kernel path (attention +
        // rerank_select, the default before the fused kernels) in both of its builds.
        for (kernel, label) in [
            (RerankKernel::Fused, "fused, one block per query"),
            (
                RerankKernel::FusedCluster,
                "fused, a cluster of 4 blocks per query",
            ),
            (RerankKernel::Async, "two kernels, async attention"),
            (RerankKernel::Staged, "two kernels, staged attention"),
        ] {
            path.rerank.set_kernel(Some(kernel));
            let us = device_time(&cuda, args.reps, || {
                Ok(path.rerank.enqueue_prepared(&cuda, &mut batch)?)
            })?;
            path.rerank.set_kernel(None);
            results.push((
                format!("rerank kernels only, batch {n} ({label})"),
                us,
                "us",
            ));
        }
        for (name, times) in ["fusion", "similarity + top-100", "rerank + top-10"]
            .iter()
            .zip(stage_times)
        {
            results.push((
                format!("{name}, batch {n} (eager, device incl. host prep)"),
                median(times),
                "us",
            ));
        }
    }

    // The whole post-encoding path as a CUDA graph replay: wall time per batch, host
    // preparation and synchronization included.
    for n in [1usize, 10, 100, 1000] {
        let mut batch = query_batch(&cuda, &mut rng, args.users, n)?;
        let us = wall_time(&cuda, args.reps, || Ok(path.run(&cuda, &mut batch)?))?;
        results.push((format!("path (graph), batch {n}, wall per batch"), us, "us"));
        if n > 1 {
            results.push((
                format!("  -> queries/s at batch {n}"),
                n as f64 / (us * 1e-6),
                "q/s",
            ));
        }
        let us = device_time(&cuda, args.reps, || Ok(path.run(&cuda, &mut batch)?))?;
        results.push((format!("path (graph), batch {n}, events"), us, "us"));
        // The two-kernel rerank as it was chosen before the fused kernel (the async
        // attention beyond one wave of blocks, i.e. at batch 1000 here).
        let previous = if n >= 1000 {
            RerankKernel::Async
        } else {
            RerankKernel::Staged
        };
        path.rerank.set_kernel(Some(previous));
        let us = wall_time(&cuda, args.reps, || Ok(path.run(&cuda, &mut batch)?))?;
        path.rerank.set_kernel(None);
        results.push((
            format!("path (graph), batch {n}, wall per batch (two-kernel rerank, {previous:?})"),
            us,
            "us",
        ));
        if n == 1 {
            // The fused kernel's fp16 first pass (every row from device memory), which the
            // int8 first pass replaced as the default.
            path.similarity.set_one_pass(OnePass::Fp16);
            let us = wall_time(&cuda, args.reps, || Ok(path.run(&cuda, &mut batch)?))?;
            let events = device_time(&cuda, args.reps, || Ok(path.run(&cuda, &mut batch)?))?;
            path.similarity.set_one_pass(OnePass::Int8);
            results.push((
                "path (graph), batch 1, wall per batch (fp16 first pass)".into(),
                us,
                "us",
            ));
            results.push((
                "path (graph), batch 1, events (fp16 first pass)".into(),
                events,
                "us",
            ));
            // The rerank launched only once the similarity kernel has finished (no
            // programmatic dependent launch): what the overlap of its prologue gains.
            path.set_rerank_overlap(false);
            let us = wall_time(&cuda, args.reps, || Ok(path.run(&cuda, &mut batch)?))?;
            let events = device_time(&cuda, args.reps, || Ok(path.run(&cuda, &mut batch)?))?;
            path.set_rerank_overlap(true);
            results.push((
                "path (graph), batch 1, wall per batch (rerank not overlapped)".into(),
                us,
                "us",
            ));
            results.push((
                "path (graph), batch 1, events (rerank not overlapped)".into(),
                events,
                "us",
            ));
            // The two-kernel similarity (GEMV + threshold filter) the fused kernel replaced.
            path.similarity
                .set_top_k_strategy(TopKStrategy::SampledThreshold);
            let us = wall_time(&cuda, args.reps, || Ok(path.run(&cuda, &mut batch)?))?;
            let events = device_time(&cuda, args.reps, || Ok(path.run(&cuda, &mut batch)?))?;
            path.similarity.set_top_k_strategy(None);
            results.push((
                "path (graph), batch 1, wall per batch (two-kernel similarity)".into(),
                us,
                "us",
            ));
            results.push((
                "path (graph), batch 1, events (two-kernel similarity)".into(),
                events,
                "us",
            ));
        }
    }
    // Streamed throughput: batches launched back to back with at most two in flight, as a
    // server double-buffers them, so the host step of batch i + 1 (user lookups, records,
    // uploads) runs while the device works on batch i. Two `Batch`es alternate (each with its
    // own captured graph); the stages' records reach the device in stream order, after the
    // previous graph. Median over rounds of `rounds` batches each.
    for n in [100usize, 1000] {
        let mut pair = [
            query_batch(&cuda, &mut rng, args.users, n)?,
            query_batch(&cuda, &mut rng, args.users, n)?,
        ];
        let per_batch = streamed_time(&cuda, &mut path, &mut pair, args.reps.max(20))?;
        results.push((
            format!("path (graph), batch {n}, streamed (2 in flight), per batch"),
            per_batch,
            "us",
        ));
        results.push((
            format!("  -> queries/s at batch {n}, streamed"),
            n as f64 / (per_batch * 1e-6),
            "q/s",
        ));
    }
    // Host preparation alone (every stage's host step and uploads), per stage: the part of
    // the wall time above that the device does not see.
    for n in [1usize, 1000] {
        let mut batch = query_batch(&cuda, &mut rng, args.users, n)?;
        let mut per_stage = vec![Vec::new(); 6];
        for rep in 0..args.reps + 5 {
            let times = path.prepare_timed(&cuda, &mut batch)?;
            cuda.synchronize()?;
            if rep >= 5 {
                for (stage, time) in per_stage.iter_mut().zip(times) {
                    stage.push(time.as_secs_f64() * 1e6);
                }
            }
        }
        let names = [
            "fusion",
            "cache",
            "similarity",
            "rerank",
            "records upload (one copy)",
            "notes after the launch (overlapped)",
        ];
        for (name, times) in names.iter().zip(per_stage) {
            if *name != "cache" {
                results.push((
                    format!("host step: {name}, batch {n}, wall"),
                    median(times),
                    "us",
                ));
            }
        }
    }
    println!("graph launches/captures: {:?}", path.graph_stats());
    let memory = tables.lock().memory_report().add(&path.memory_report());
    println!("memory at {} users: {memory}", args.users);
    let (free, total) = cuda.memory_info()?;
    println!(
        "device memory in use (whole process, incl. CUDA context and cuBLAS): {:.1} MiB of {:.1} MiB; stack now {} bytes per thread",
        (total - free) as f64 / 1048576.0,
        total as f64 / 1048576.0,
        cuda.stack_limit()?
    );
    results.push((
        format!("device memory, components, {} users (MiB)", args.users),
        memory.total() as f64 / 1048576.0,
        "MiB",
    ));
    results.push((
        "device memory, whole process (MiB)".into(),
        (total - free) as f64 / 1048576.0,
        "MiB",
    ));

    // The temporal cache at seed scale (10,000 hot rows), and the path with it.
    drop(path);
    {
        let t = Instant::now();
        let cpu_config = CacheConfig {
            hot_items: 10_000,
            // The CPU cache only supplies popularity here; its f32 rows are not built.
            build_on_start: false,
            ..CacheConfig::default()
        };
        let cpu_cache = TemporalCache::new(items.clone(), host_users.clone(), cpu_config.clone())?;
        let mut cache = CudaCache::new(
            &cuda,
            tables.clone(),
            host_users.clone(),
            items.clone(),
            cpu_cache.handle(),
            RowSource::Embedding,
            CudaCacheConfig::from_cpu(&cpu_config),
        )?;
        println!(
            "cache: popularity + first build {:.1} s, {} hot rows",
            t.elapsed().as_secs_f64(),
            cache.stats().hot_rows
        );
        let mut rebuilds = Vec::new();
        for _ in 0..args.reps.min(20) {
            rebuilds.push(cache.rebuild_blocking(&cuda)?.as_secs_f64() * 1e3);
        }
        results.push((
            "cache rebuild, 10,000 x 62,423 rows (GEMM + int8 + top-100 neighbours), wall".into(),
            median(rebuilds),
            "ms",
        ));
        let hot = cache.hot_items().to_vec();
        let mut pick = 0usize;
        let us = wall_time(&cuda, args.reps.max(200), || {
            pick = (pick + 7919) % hot.len();
            let (ranked, _) = cache.similar(&cuda, hot[pick], 10)?;
            std::hint::black_box(ranked);
            Ok(())
        })?;
        results.push(("cache hit: similar to X, k = 10, wall".into(), us, "us"));
        let us = wall_time(&cuda, args.reps, || {
            pick = (pick + 7919) % hot.len();
            let (ranked, _) = cache.similar(&cuda, hot[pick], 500)?;
            std::hint::black_box(ranked);
            Ok(())
        })?;
        results.push((
            "cache hit: similar to X, k = 500 (device row + top-K), wall".into(),
            us,
            "us",
        ));
        let base = path_for(&cuda, &host_users, &tables, &vocabulary)?;
        let mut cached_path = GpuPath::with_cache(base.fusion, cache, base.similarity, base.rerank);
        for n in [1usize, 1000] {
            let mut batch = query_batch(&cuda, &mut rng, args.users, n)?;
            let us = wall_time(&cuda, args.reps, || Ok(cached_path.run(&cuda, &mut batch)?))?;
            results.push((
                format!("path with cache (graph), batch {n}, wall per batch"),
                us,
                "us",
            ));
            if n > 1 {
                results.push((
                    format!("  -> queries/s at batch {n} with cache"),
                    n as f64 / (us * 1e-6),
                    "q/s",
                ));
            }
        }
        // A batch-1 query while a rebuild runs on the side stream.
        let mut batch = query_batch(&cuda, &mut rng, args.users, 1)?;
        cached_path.run(&cuda, &mut batch)?;
        cuda.synchronize()?;
        let mut during = Vec::new();
        for _ in 0..5 {
            if let Some(cache) = &mut cached_path.cache {
                cache.start_rebuild(&cuda)?;
            }
            let start = Instant::now();
            cached_path.run(&cuda, &mut batch)?;
            cuda.synchronize()?;
            during.push(start.elapsed().as_secs_f64() * 1e6);
            if let Some(cache) = &mut cached_path.cache {
                cache.rebuild_blocking(&cuda)?;
            }
        }
        results.push((
            "path with cache, batch 1, while a rebuild runs, wall".into(),
            median(during),
            "us",
        ));
        let memory = tables
            .lock()
            .memory_report()
            .add(&cached_path.memory_report());
        println!("memory with cache at {} users: {memory}", args.users);
        let (free, total) = cuda.memory_info()?;
        results.push((
            format!(
                "device memory with cache, components, {} users (MiB)",
                args.users
            ),
            memory.total() as f64 / 1048576.0,
            "MiB",
        ));
        results.push((
            "  of which cache tables (both buffers) (MiB)".into(),
            memory.cache as f64 / 1048576.0,
            "MiB",
        ));
        results.push((
            "device memory with cache, whole process (MiB)".into(),
            (total - free) as f64 / 1048576.0,
            "MiB",
        ));
        println!(
            "stack after the cache's runs: {} bytes per thread",
            cuda.stack_limit()?
        );
    }

    // Ten million users: the same path over device tables of that size.
    if args.big_users > 0 {
        let t = Instant::now();
        let big =
            DeviceTables::synthetic(&cuda, &items, args.big_users, TablesConfig::default(), 42)?;
        cuda.synchronize()?;
        println!(
            "synthetic tables of {} users: {:.1} s; {}",
            args.big_users,
            t.elapsed().as_secs_f64(),
            big.memory_report()
        );
        let big = Arc::new(Mutex::new(big));
        let mut big_path = path_for(&cuda, &host_users, &big, &vocabulary)?;
        // The comparison the target asks for: the same path over synthetic tables of
        // `--users` users, built the same way, measured in alternating rounds on the same
        // batch so clock and allocator drift hit both sizes alike.
        let small =
            DeviceTables::synthetic(&cuda, &items, args.users, TablesConfig::default(), 42)?;
        let small = Arc::new(Mutex::new(small));
        let mut small_path = path_for(&cuda, &host_users, &small, &vocabulary)?;
        let mut batch = query_batch(&cuda, &mut rng, args.users, 1)?;
        let (mut big_rounds, mut small_rounds) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            small_rounds.push(wall_time(&cuda, args.reps, || {
                Ok(small_path.run(&cuda, &mut batch)?)
            })?);
            big_rounds.push(wall_time(&cuda, args.reps, || {
                Ok(big_path.run(&cuda, &mut batch)?)
            })?);
        }
        let (big_us, small_us) = (median(big_rounds), median(small_rounds));
        results.push((
            format!("path (graph), batch 1, {} users, wall", args.big_users),
            big_us,
            "us",
        ));
        results.push((
            format!(
                "path (graph), batch 1, {} synthetic users (same rounds), wall",
                args.users
            ),
            small_us,
            "us",
        ));
        results.push((
            format!("  -> {} users vs {} users", args.big_users, args.users),
            100.0 * (big_us / small_us - 1.0),
            "%",
        ));
        drop(small_path);
        let (free, total) = cuda.memory_info()?;
        results.push((
            format!(
                "device memory, whole process, {} users (MiB)",
                args.big_users
            ),
            (total - free) as f64 / 1048576.0,
            "MiB",
        ));
    }

    println!();
    println!("| measurement | value | unit |");
    println!("| --- | ---: | --- |");
    for (name, value, unit) in &results {
        println!("| {name} | {value:.1} | {unit} |");
    }
    Ok(())
}
