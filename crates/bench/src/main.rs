//! `hyperrec-bench`: the latency/QPS suite, the PyTorch peer side by side, and the CPU gate.
//!
//! ```text
//! hyperrec-bench [--device cpu|cuda] [--scenario seed|movielens-small] [--quick] [--out DIR]
//!                [--compare BASELINE.json --max-regression PCT] [--peer auto|on|off]
//! hyperrec-bench gate [--baseline FILE] [--max-regression PCT] [--write-baseline] [--slowdown STAGE:PCT]
//! hyperrec-bench gate-workload        (what `gate` runs under callgrind)
//! hyperrec-bench peer-model --out DIR (fp16 copy of the model directory for the GPU box)
//! ```

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use hyperrec_bench::compare::compare;
use hyperrec_bench::export::{PeerConfig, write_fp16_model, write_peer_input};
use hyperrec_bench::gate::{self, Slowdown};
use hyperrec_bench::machine::{Machine, Revision, unix_now};
use hyperrec_bench::pipeline_workload::PipelineWorkload;
use hyperrec_bench::result::{BenchResult, FigureFile, PeerResult, SCHEMA_VERSION, Settings};
use hyperrec_bench::scenario::{
    ScenarioKind, TrafficShape, movielens_small_dir, seed_config, synthetic_item_embeddings,
    traffic,
};
use hyperrec_bench::suite::measure;
use hyperrec_bench::workload::Workload;
use hyperrec_bench::{gate_workload, plot, report};
use hyperrec_catalog::synthetic::{SEED_SCENARIO_SEED, generate};
use hyperrec_catalog::{Dataset, ItemEmbeddings, movielens};
use hyperrec_encoder::{DEFAULT_MODEL, DEFAULT_QUERY_CACHE_CAPACITY, Encoder, QueryEncoder};
use hyperrec_pipeline::{DeviceChoice, Pipeline, PipelineConfig};
use hyperrec_rerank::ContextVocabulary;

#[derive(Parser)]
#[command(
    name = "hyperrec-bench",
    about = "hyperrec's latency/QPS suite, PyTorch peer and CPU regression gate",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Sub {
    /// The CPU gate: instruction counts per stage under callgrind against a baseline.
    Gate(GateArgs),
    /// The fixed workload `gate` counts (run it under callgrind; natively it just runs).
    GateWorkload,
    /// Writes an fp16 copy of the model directory (for carrying to a GPU machine).
    PeerModel {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, ValueEnum)]
enum ScenarioArg {
    Seed,
    MovielensSmall,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ItemEmbeddingsArg {
    /// Synthetic for `seed` (encoding 62K texts takes minutes on 2 cores), encoder otherwise.
    Auto,
    /// Deterministic genre/tag-anchored vectors (see `scenario::synthetic_item_embeddings`).
    Synthetic,
    /// The real encoder over every item text, stored and reused between runs.
    Encoder,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PeerArg {
    /// Run the peer when the device is cuda.
    Auto,
    On,
    Off,
}

#[derive(Args)]
struct RunArgs {
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    #[arg(long, value_enum, default_value = "seed")]
    scenario: ScenarioArg,
    /// Small counts for CI (100 timed queries, batches of 10 and 100).
    #[arg(long)]
    quick: bool,
    /// Where result.json, report.md and the plots go.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// A result.json (or any file with `figures`) to gate against.
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Largest tolerated regression of any figure, in percent.
    #[arg(long, default_value_t = 10.0)]
    max_regression: f64,
    #[arg(long, value_enum, default_value = "auto")]
    item_embeddings: ItemEmbeddingsArg,
    #[arg(long, value_enum, default_value = "auto")]
    peer: PeerArg,
    /// Model directory the peer loads (default: .device-carry/minilm-fp16 when present,
    /// else the encoder's own model directory).
    #[arg(long)]
    peer_model: Option<PathBuf>,
    /// Python that has torch and transformers.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Seed of the data and traffic.
    #[arg(long, default_value_t = SEED_SCENARIO_SEED)]
    seed: u64,
}

#[derive(Args)]
struct GateArgs {
    #[arg(long, default_value = "bench/baselines/cpu-instructions.json")]
    baseline: PathBuf,
    /// Instruction counts are repeatable to well under 1%; 5% catches real regressions
    /// without flagging toolchain noise.
    #[arg(long, default_value_t = 5.0)]
    max_regression: f64,
    /// Write the counts as the new baseline instead of comparing.
    #[arg(long)]
    write_baseline: bool,
    /// Add extra work to one stage (STAGE:PERCENT), to show the gate catches it.
    #[arg(long)]
    slowdown: Option<String>,
    /// Where callgrind's profiles and gate.json go.
    #[arg(long, default_value = "bench-out/gate")]
    out: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Some(Sub::Gate(args)) => run_gate(&args),
        Some(Sub::GateWorkload) => run_gate_workload().map(|()| true),
        Some(Sub::PeerModel { out }) => peer_model(&out).map(|()| true),
        None => run_suite(&cli.run),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("hyperrec-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_encoder() -> anyhow::Result<(Arc<QueryEncoder>, hyperrec_encoder::ModelFiles)> {
    let files = hyperrec_encoder::resolve_model(DEFAULT_MODEL).context("finding the model")?;
    let encoder = Encoder::load(&files).context("loading the encoder")?;
    let capacity = NonZeroUsize::new(DEFAULT_QUERY_CACHE_CAPACITY).unwrap_or(NonZeroUsize::MIN);
    Ok((
        Arc::new(QueryEncoder::new(Arc::new(encoder), capacity)),
        files,
    ))
}

fn log(message: &str) {
    eprintln!("[bench] {message}");
}

/// The suite. Returns false when a `--compare` gate failed.
fn run_suite(args: &RunArgs) -> anyhow::Result<bool> {
    let started = Instant::now();
    let kind = match args.scenario {
        ScenarioArg::Seed => ScenarioKind::Seed,
        ScenarioArg::MovielensSmall => ScenarioKind::MovielensSmall,
    };
    let shape = if args.quick {
        TrafficShape::quick()
    } else {
        TrafficShape::full()
    };
    log(&format!("scenario {}: loading data", kind.name()));
    let dataset = match kind {
        ScenarioKind::Seed => generate(&seed_config(args.seed)),
        ScenarioKind::MovielensSmall => {
            let dir = movielens_small_dir();
            movielens::load(&dir, movielens::LoadOptions::lenient())
                .with_context(|| format!("loading MovieLens from {}", dir.display()))?
        }
    };
    let (encoder, model_files) = load_encoder()?;
    let use_encoder = match args.item_embeddings {
        ItemEmbeddingsArg::Auto => kind != ScenarioKind::Seed,
        ItemEmbeddingsArg::Synthetic => false,
        ItemEmbeddingsArg::Encoder => true,
    };
    let (items, item_source) = item_embeddings(
        &dataset,
        &encoder,
        &model_files,
        use_encoder,
        kind,
        args.seed,
    )?;

    let config = PipelineConfig {
        device: match args.device {
            DeviceArg::Cpu => DeviceChoice::Cpu,
            DeviceArg::Cuda => DeviceChoice::Cuda(0),
        },
        ..PipelineConfig::default()
    };
    log(&format!(
        "building the pipeline ({} items, {} users)",
        dataset.catalog.len(),
        dataset.user_count()
    ));
    let dataset = Arc::new(dataset);
    let pipeline = Pipeline::build(dataset.clone(), encoder, items, config.clone())
        .context("building the pipeline")?;
    let build_seconds = started.elapsed().as_secs_f64();
    let mut workload = PipelineWorkload::new(pipeline);
    let device = workload.device();
    if matches!(args.device, DeviceArg::Cuda) && !device.starts_with("cuda") {
        log(&format!(
            "WARNING: --device cuda asked, but the pipeline runs on {device}"
        ));
    }

    let traffic = traffic(&dataset, &shape, args.seed)?;
    let measured = measure(&mut workload, &traffic, &mut |phase| log(phase))?;

    let mut result = BenchResult {
        schema_version: SCHEMA_VERSION,
        settings: Settings {
            scenario: kind.name().into(),
            device_requested: match args.device {
                DeviceArg::Cpu => "cpu".into(),
                DeviceArg::Cuda => "cuda".into(),
            },
            device: device.clone(),
            quick: args.quick,
            items: dataset.catalog.len(),
            users: dataset.user_count(),
            history_len: config.cache.history_len,
            latency_queries: shape.latency,
            warmup_queries: shape.warmup,
            batch_sizes: shape.batch_sizes.clone(),
            k: shape.k,
            item_embeddings: item_source,
            seed: args.seed,
        },
        machine: Machine::probe(),
        revision: Revision::probe(),
        timestamp_unix: unix_now(),
        cold_query: Some(measured.cold_query),
        latency: measured.latency,
        latency_samples_us: measured.latency_samples_us,
        batches: measured.batches,
        encoding: measured.encoding,
        cache: measured.cache,
        memory: measured.memory,
        peer: None,
        build_seconds,
        figures: Vec::new(),
    };
    result.figures = result.figures();

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let run_peer = match args.peer {
        PeerArg::On => true,
        PeerArg::Off => false,
        PeerArg::Auto => device.starts_with("cuda") || matches!(args.device, DeviceArg::Cuda),
    };
    if run_peer {
        match peer(args, &workload, &traffic, &config, &model_files) {
            Ok(peer) => result.peer = Some(peer),
            Err(error) => log(&format!("WARNING: the PyTorch peer did not run: {error:#}")),
        }
    }
    write_outputs(&result, &args.out)?;
    log(&format!(
        "done in {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        args.out.join("report.md").display()
    ));

    match &args.compare {
        None => Ok(true),
        Some(baseline) => {
            let baseline = read_figures(baseline)?;
            let comparison = compare(&baseline.figures, &result.figures, args.max_regression);
            println!("{}", comparison.to_markdown());
            if comparison.passed() {
                println!(
                    "gate: passed (no figure worse by more than {}%)",
                    args.max_regression
                );
            } else {
                println!("gate: FAILED");
            }
            Ok(comparison.passed())
        }
    }
}

fn item_embeddings(
    dataset: &Dataset,
    encoder: &Arc<QueryEncoder>,
    model_files: &hyperrec_encoder::ModelFiles,
    use_encoder: bool,
    kind: ScenarioKind,
    seed: u64,
) -> anyhow::Result<(ItemEmbeddings, String)> {
    if use_encoder {
        let cache_dir = hyperrec_encoder::provision::hyperrec_cache_dir()
            .unwrap_or_else(|| PathBuf::from("target/hyperrec-cache"));
        let path = cache_dir.join(format!("bench-items-{}.safetensors", kind.name()));
        log(&format!(
            "item embeddings: encoder over {} item texts (stored in {})",
            dataset.catalog.len(),
            path.display()
        ));
        let (items, report) = hyperrec_pipeline::item_embeddings(
            dataset,
            encoder.encoder(),
            &model_files.fingerprint,
            &path,
            true,
        )?;
        let how = if report.reused {
            "reused from the store"
        } else {
            "computed now"
        };
        Ok((
            items,
            format!("encoder ({how}, {:.1} s)", report.elapsed.as_secs_f64()),
        ))
    } else {
        log("item embeddings: synthetic, anchored on encoded genre and tag phrases");
        let items = synthetic_item_embeddings(dataset, encoder.dim(), seed, |phrases| {
            let refs: Vec<&str> = phrases.iter().map(String::as_str).collect();
            encoder.encoder().encode(&refs).map_err(|e| e.to_string())
        })?;
        Ok((
            items,
            "synthetic (genre/tag anchors from the encoder plus seeded noise)".into(),
        ))
    }
}

fn write_outputs(result: &BenchResult, out: &Path) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(result)?;
    std::fs::write(out.join("result.json"), json)?;
    let mut plots = Vec::new();
    for (name, draw) in [
        (
            "latency_cdf.svg",
            plot::latency_cdf as fn(&BenchResult, &Path) -> Result<(), plot::PlotError>,
        ),
        ("qps_vs_batch.svg", plot::qps_vs_batch),
    ] {
        match draw(result, &out.join(name)) {
            Ok(()) => plots.push(name.to_string()),
            Err(error) => log(&format!("WARNING: {error}")),
        }
    }
    std::fs::write(out.join("report.md"), report::render(result, &plots))?;
    Ok(())
}

fn read_figures(path: &Path) -> anyhow::Result<FigureFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Exports the state and traffic, runs `bench/peer/peer.py` on them, reads its result.
fn peer(
    args: &RunArgs,
    workload: &PipelineWorkload,
    traffic: &hyperrec_bench::suite::Traffic,
    config: &PipelineConfig,
    model_files: &hyperrec_encoder::ModelFiles,
) -> anyhow::Result<PeerResult> {
    let input = args.out.join("peer-input");
    log(&format!(
        "exporting the peer's input to {}",
        input.display()
    ));
    let pipeline = workload.pipeline();
    write_peer_input(
        &input,
        pipeline.items(),
        &pipeline.users().read(),
        traffic,
        &PeerConfig {
            alpha: config.alpha,
            candidates: config.candidates,
            history_len: config.rerank.history_len,
            history_weight: config.cache.history_weight,
            rerank_heads: config.rerank.heads,
            seed: args.seed,
        },
        &ContextVocabulary::phrases_for,
    )?;
    let root = workspace_root();
    let model = match &args.peer_model {
        Some(dir) => dir.clone(),
        None => {
            let carried = root.join(".device-carry/minilm-fp16");
            if carried.join("model.safetensors").exists() {
                carried
            } else {
                model_files
                    .weights
                    .parent()
                    .map(Path::to_path_buf)
                    .context("the model has no directory")?
            }
        }
    };
    let out = args.out.join("peer-result.json");
    let device = match args.device {
        DeviceArg::Cpu => "cpu",
        DeviceArg::Cuda => "cuda",
    };
    log(&format!(
        "running the PyTorch peer on {device} (model {})",
        model.display()
    ));
    let status = Command::new(&args.python)
        .arg(root.join("bench/peer/peer.py"))
        .arg("--input")
        .arg(&input)
        .arg("--model")
        .arg(&model)
        .arg("--device")
        .arg(device)
        .arg("--out")
        .arg(&out)
        .env("PYTHONUNBUFFERED", "1")
        .status()
        .with_context(|| format!("starting {}", args.python))?;
    if !status.success() {
        bail!("peer.py failed ({status})");
    }
    let text = std::fs::read_to_string(&out)?;
    Ok(serde_json::from_str(&text)?)
}

fn workspace_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn run_gate(args: &GateArgs) -> anyhow::Result<bool> {
    let slowdown = args.slowdown.as_deref().map(Slowdown::parse).transpose()?;
    let exe = std::env::current_exe().context("locating hyperrec-bench")?;
    log(&format!(
        "counting instructions per stage under callgrind{}",
        slowdown
            .as_ref()
            .map(|s| format!(" (with {}% extra work in {})", s.percent, s.stage))
            .unwrap_or_default()
    ));
    let started = Instant::now();
    let counts = gate::count_instructions(&exe, &args.out, slowdown.as_ref())?;
    log(&format!(
        "callgrind run took {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    let current = FigureFile {
        figures: gate::figures(&counts),
    };
    std::fs::write(
        args.out.join("gate.json"),
        serde_json::to_string_pretty(&current)?,
    )?;
    if args.write_baseline {
        if let Some(parent) = args.baseline.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(
            &args.baseline,
            serde_json::to_string_pretty(&current)? + "\n",
        )?;
        println!("wrote {}", args.baseline.display());
        for f in &current.figures {
            println!(
                "{}: {}",
                f.name,
                hyperrec_bench::compare::format_value(f.value)
            );
        }
        return Ok(true);
    }
    let baseline = read_figures(&args.baseline)?;
    let comparison = compare(&baseline.figures, &current.figures, args.max_regression);
    println!("{}", comparison.to_markdown());
    if comparison.passed() {
        println!(
            "gate: passed (no stage executes more than {}% more instructions than {})",
            args.max_regression,
            args.baseline.display()
        );
    } else {
        println!("gate: FAILED against {}", args.baseline.display());
    }
    Ok(comparison.passed())
}

fn run_gate_workload() -> anyhow::Result<()> {
    let slowdown = Slowdown::from_env()?;
    let started = Instant::now();
    let (encoder, _) = load_encoder()?;
    eprintln!(
        "[gate-workload] {:>7.1} s  encoder loaded",
        started.elapsed().as_secs_f64()
    );
    gate_workload::run(encoder, slowdown.as_ref()).map_err(|e| anyhow::anyhow!(e))
}

fn peer_model(out: &Path) -> anyhow::Result<()> {
    let files = hyperrec_encoder::resolve_model(DEFAULT_MODEL).context("finding the model")?;
    write_fp16_model(&files.config, &files.tokenizer, &files.weights, out)?;
    println!("wrote the fp16 model to {}", out.display());
    Ok(())
}
