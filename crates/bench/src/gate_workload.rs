//! The fixed small workload the CPU gate counts instructions of (`hyperrec-bench
//! gate-workload`, run under callgrind by [`crate::gate::count_instructions`]).
//!
//! A real pipeline over a small synthetic catalog serves a fixed list of batches. Every
//! stage slot is wrapped in [`Counted`], which zeroes callgrind's counters before the
//! stage's `run` and dumps them, labelled with the stage, right after, so each dump holds
//! exactly one run of one stage. Everything here is deterministic (fixed seeds, distinct
//! queries so the encoder's query cache never answers), so two runs of the same code
//! execute the same instructions.
//!
//! [`Slowdown`] (from `HYPERREC_GATE_SLOWDOWN`) re-runs one stage on a share of the batches
//! inside its counted region: the stage's code is untouched, its counted work grows by that
//! share. The stage must be idempotent on a batch (fusion, cache, similarity and rerank
//! are: they overwrite what they write from what earlier stages wrote); the encoder is not
//! a fair target, because its query cache answers the repeat.

use std::ffi::CString;
use std::sync::Arc;

use hyperrec_catalog::Dataset;
use hyperrec_catalog::synthetic::{
    SyntheticConfig, generate, synthetic_contexts, synthetic_queries,
};
use hyperrec_encoder::QueryEncoder;
use hyperrec_pipeline::{Pipeline, PipelineConfig, STAGE_ORDER};
use hyperrec_stage::{Batch, Cpu, Event, Request, Stage, StageError, UserId};

use crate::callgrind;
use crate::gate::{DUMP_LABEL_PREFIX, Slowdown};

/// Shape of the gate workload. Small enough that the whole run under callgrind takes about
/// a minute on the CI machine, large enough that every stage does real work.
pub const GATE_ITEMS: usize = 3_000;
pub const GATE_USERS: usize = 300;
pub const GATE_HISTORY: usize = 30;
pub const GATE_HOT_ITEMS: usize = 300;
pub const GATE_BATCHES: usize = 10;
pub const GATE_BATCH_SIZE: usize = 2;
const GATE_SEED: u64 = 0x6a7e_2026;

/// A stage whose every `run` is one labelled callgrind dump.
struct Counted {
    inner: Box<dyn Stage<Cpu>>,
    label: CString,
    /// Extra runs still to do (the slowdown), one per batch until spent.
    extra_runs: usize,
}

impl Stage<Cpu> for Counted {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn run(&mut self, device: &Cpu, batch: &mut Batch<Cpu>) -> Result<(), StageError> {
        callgrind::zero_stats();
        self.inner.run(device, batch)?;
        if self.extra_runs > 0 {
            self.extra_runs -= 1;
            self.inner.run(device, batch)?;
        }
        callgrind::dump_stats_at(&self.label);
        Ok(())
    }

    fn observe(&mut self, device: &Cpu, event: &Event) -> Result<(), StageError> {
        self.inner.observe(device, event)
    }
}

/// Placeholder while a slot's stage is taken out to be wrapped.
struct Vacant;

impl Stage<Cpu> for Vacant {
    fn name(&self) -> &'static str {
        "vacant"
    }
    fn run(&mut self, _: &Cpu, _: &mut Batch<Cpu>) -> Result<(), StageError> {
        Err(StageError::Failed {
            stage: "vacant",
            message: "a stage slot was left empty".into(),
        })
    }
}

/// The gate's dataset: small, synthetic, fixed.
pub fn gate_dataset() -> Dataset {
    generate(&SyntheticConfig {
        items: GATE_ITEMS,
        users: GATE_USERS,
        history_len: GATE_HISTORY,
        zipf_exponent: 1.0,
        seed: GATE_SEED,
    })
}

/// The pipeline settings of the gate (the defaults, sized down to the small catalog).
pub fn gate_config() -> PipelineConfig {
    let mut config = PipelineConfig::default();
    config.cache.hot_items = GATE_HOT_ITEMS;
    config
}

/// `GATE_BATCHES + 1` batches of distinct requests (the first is the untimed warm-up).
pub fn gate_batches(dataset: &Dataset) -> Vec<Vec<Request>> {
    let n = (GATE_BATCHES + 1) * GATE_BATCH_SIZE;
    let queries = synthetic_queries(n, GATE_SEED);
    let contexts = synthetic_contexts(n, GATE_USERS, GATE_SEED);
    let users = dataset.user_count().max(1) as u32;
    let requests: Vec<Request> = queries
        .into_iter()
        .zip(contexts)
        .enumerate()
        .map(|(i, (query, context))| Request {
            // Every seventh request comes from an unknown user (the cold-start path).
            user: if i % 7 == 6 {
                UserId(users + 1 + i as u32)
            } else {
                UserId(1 + (i as u32 * 37) % users)
            },
            query,
            context,
            k: 10,
            exclude_seen: true,
        })
        .collect();
    requests
        .chunks(GATE_BATCH_SIZE)
        .map(<[Request]>::to_vec)
        .collect()
}

/// Wraps every stage slot of `pipeline` in [`Counted`], giving `slowdown`'s stage its
/// extra runs. Fails when `slowdown` names no stage.
pub fn instrument(
    pipeline: &mut Pipeline,
    slowdown: Option<&Slowdown>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if let Some(s) = slowdown
        && !STAGE_ORDER.contains(&s.stage.as_str())
    {
        return Err(format!("slowdown names `{}`, not one of {STAGE_ORDER:?}", s.stage).into());
    }
    for name in STAGE_ORDER {
        let inner = pipeline.replace_stage(name, Box::new(Vacant))?;
        let extra_runs = match slowdown {
            Some(s) if s.stage == name => (GATE_BATCHES * s.percent as usize)
                .div_ceil(100)
                .min(GATE_BATCHES),
            _ => 0,
        };
        let label = CString::new(format!("{DUMP_LABEL_PREFIX}{name}"))?;
        pipeline.replace_stage(
            name,
            Box::new(Counted {
                inner,
                label,
                extra_runs,
            }),
        )?;
    }
    Ok(())
}

/// Builds the gate pipeline from `encoder`, then serves the batches; instrumentation is on
/// only while the counted batches run.
pub fn run(
    encoder: Arc<QueryEncoder>,
    slowdown: Option<&Slowdown>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let started = std::time::Instant::now();
    let phase = |what: &str| {
        eprintln!(
            "[gate-workload] {:>7.1} s  {what}",
            started.elapsed().as_secs_f64()
        )
    };
    let dataset = gate_dataset();
    phase("dataset generated");
    // Anchors are seeded vectors rather than encoder outputs: under callgrind every encoder
    // call costs seconds, and the gate needs item embeddings, not their meaning.
    let dim = encoder.dim();
    let items = crate::scenario::synthetic_item_embeddings(&dataset, dim, GATE_SEED, |phrases| {
        Ok(phrases
            .iter()
            .enumerate()
            .map(|(p, _)| {
                (0..dim)
                    .map(|d| (((p * 7919 + d * 104_729) % 2_003) as f32 / 1_001.5) - 1.0)
                    .collect()
            })
            .collect())
    })?;
    phase("item embeddings");
    let batches = gate_batches(&dataset);
    let mut pipeline = Pipeline::build(Arc::new(dataset), encoder, items, gate_config())?;
    phase("pipeline built");
    let Some((warm, counted)) = batches.split_first() else {
        return Err("no gate batches".into());
    };
    // The warm-up sizes every buffer, so the counted runs do not include first-use work.
    pipeline.recommend_batch(warm)?;
    phase("warm-up batch");
    instrument(&mut pipeline, slowdown)?;
    callgrind::start_instrumentation();
    for batch in counted {
        pipeline.recommend_batch(batch)?;
    }
    callgrind::stop_instrumentation();
    phase("counted batches");
    Ok(())
}
