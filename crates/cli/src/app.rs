//! Loading what every pipeline command needs: model, data, item index, event log.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use hyperrec_catalog::movielens::{self, LoadOptions};
use std::num::NonZeroUsize;

use hyperrec_encoder::{
    DEFAULT_MODEL, DEFAULT_QUERY_CACHE_CAPACITY, Encoder, QueryEncoder, resolve_model,
};
use hyperrec_pipeline::{
    DeviceChoice, EventLog, IndexReport, Pipeline, PipelineConfig, item_embeddings,
};

/// Options shared by every command that serves recommendations.
#[derive(Args, Clone, Debug)]
pub struct CommonArgs {
    /// MovieLens-format directory (movies.csv, ratings.csv, tags.csv).
    /// Default: $HYPERREC_DATA, else ../shared/data/ml-latest-small.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Model: a local directory (config.json, tokenizer.json, model.safetensors) or a hub id.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Where hyperrec keeps the item index and the event log.
    /// Default: $HYPERREC_STATE, else the user's data directory.
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Stop at the first malformed row of the data instead of reporting and skipping it.
    #[arg(long)]
    pub strict: bool,
    /// Weight of the query against the user profile in fusion (0..=1).
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f32,
    /// Hot items with precomputed similarity rows in the temporal cache.
    #[arg(long, default_value_t = 10_000)]
    pub hot_items: usize,
    /// Where to answer: auto (the GPU when present), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: DeviceChoice,
}

fn parse_device(text: &str) -> Result<DeviceChoice, String> {
    match text {
        "auto" => Ok(DeviceChoice::Auto),
        "cpu" => Ok(DeviceChoice::Cpu),
        "cuda" => Ok(DeviceChoice::Cuda(0)),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(DeviceChoice::Cuda)
            .ok_or_else(|| format!("`{other}`: use auto, cpu, cuda or cuda:N")),
    }
}

/// A loaded pipeline with its durable event log.
pub struct App {
    pub pipeline: Pipeline,
    pub events: EventLog,
    pub index: IndexReport,
    pub data_dir: PathBuf,
    pub model: String,
}

impl CommonArgs {
    pub fn data_dir(&self) -> PathBuf {
        if let Some(dir) = &self.data {
            return dir.clone();
        }
        if let Some(dir) = std::env::var_os("HYPERREC_DATA") {
            return PathBuf::from(dir);
        }
        let beside_cwd = PathBuf::from("../shared/data/ml-latest-small");
        if beside_cwd.is_dir() {
            return beside_cwd;
        }
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/data/ml-latest-small"
        ))
    }

    pub fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.state {
            return dir.clone();
        }
        if let Some(dir) = std::env::var_os("HYPERREC_STATE") {
            return PathBuf::from(dir);
        }
        dirs_state().join("hyperrec")
    }

    pub fn config(&self) -> PipelineConfig {
        let mut config = PipelineConfig {
            alpha: self.alpha,
            ..PipelineConfig::default()
        };
        config.cache.hot_items = self.hot_items;
        config.device = self.device;
        config
    }
}

fn dirs_state() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from(".hyperrec"))
}

/// Loads the model, the data and the item index (computing it when stale), builds the
/// pipeline and replays the event log.
pub fn load(args: &CommonArgs, show_progress: bool) -> anyhow::Result<App> {
    let model = resolve_model(&args.model)?;
    let encoder = Arc::new(Encoder::load(&model)?);
    let data_dir = args.data_dir();
    let dataset = movielens::load(
        &data_dir,
        LoadOptions {
            strict: args.strict,
        },
    )
    .with_context(|| format!("loading MovieLens data from {}", data_dir.display()))?;
    report_diagnostics(&dataset.diagnostics);

    let state = args.state_dir();
    let tag = &dataset.catalog.fingerprint()[..16];
    let index_path = state.join("index").join(format!("items-{tag}.safetensors"));
    let (items, index) = item_embeddings(
        &dataset,
        &encoder,
        &model.fingerprint,
        &index_path,
        show_progress,
    )?;

    let capacity = NonZeroUsize::new(DEFAULT_QUERY_CACHE_CAPACITY).unwrap_or(NonZeroUsize::MIN);
    let encoder = Arc::new(QueryEncoder::new(encoder, capacity));
    let mut pipeline = Pipeline::build(Arc::new(dataset), encoder, items, args.config())?;

    let events = EventLog::new(state.join(format!("events-{tag}.jsonl")));
    let replay = events.replay()?;
    for (line, message) in &replay.skipped {
        eprintln!(
            "warning: {} line {line} skipped: {message}",
            events.path().display()
        );
    }
    for event in &replay.events {
        pipeline
            .apply_event(event)
            .with_context(|| format!("replaying {}", events.path().display()))?;
    }
    Ok(App {
        pipeline,
        events,
        index,
        data_dir,
        model: args.model.clone(),
    })
}

fn report_diagnostics(diagnostics: &[hyperrec_catalog::movielens::Diagnostic]) {
    const SHOWN: usize = 5;
    for diagnostic in diagnostics.iter().take(SHOWN) {
        eprintln!("warning: {diagnostic}");
    }
    if diagnostics.len() > SHOWN {
        eprintln!(
            "warning: ... and {} more malformed rows skipped",
            diagnostics.len() - SHOWN
        );
    }
}
