//! The recommendation path: composes the stages, owns the shared state, applies events.
//!
//! ```text
//! request -> encode -> fusion -> cache (history prior) -> similarity (top-C) -> rerank (top-k)
//! ```
//!
//! [`Pipeline`] is the only place that knows every stage crate. It builds the shared tables
//! (item embeddings, the user table), constructs each stage from a [`PipelineConfig`], runs
//! batches through them with per-stage timings, and applies real-time [`Event`]s so that the
//! very next request sees them.
//!
//! Architecture Invariant: stages never call each other; everything one stage tells the
//! next travels in the [`Batch`]. Architecture Invariant: the pipeline synchronizes with the
//! device once per batch, after the last stage.

mod collab;
mod config;
mod error;
mod events;
#[cfg(feature = "cuda")]
mod gpu;
mod index;
mod response;

use std::sync::Arc;

use hyperrec_cache::{CacheHandle, CacheLookup, RowSource, TemporalCache};
use hyperrec_catalog::{Dataset, HistoryEntry, ItemEmbeddings, SharedUsers, UserTable};
use hyperrec_encoder::{EncoderStage, QueryEncoder};
use hyperrec_fusion::Fusion;
use hyperrec_rerank::{AttentionRerank, ContextVocabulary, RerankWeights};
use hyperrec_similarity::Similarity;
use hyperrec_stage::{Batch, Cpu, Device, DeviceKind, Event, ItemId, Request, Stage, StageTiming};
use parking_lot::RwLock;

pub use config::{CacheRows, CacheSettings, DeviceChoice, MAX_K, PipelineConfig};
pub use error::PipelineError;
pub use events::EventLog;
pub use index::{IndexReport, item_embeddings};
pub use response::{
    MemoryComponent, MemoryReport, RecommendedItem, Response, ResponseContribution,
};

/// Names of the stage slots, in the order the pipeline runs them.
pub const STAGE_ORDER: [&str; 5] = ["encode", "fusion", "cache", "similarity", "rerank"];

/// The composed recommendation path and the state it serves from.
pub struct Pipeline {
    config: PipelineConfig,
    dataset: Arc<Dataset>,
    encoder: Arc<QueryEncoder>,
    items: Arc<ItemEmbeddings>,
    users: SharedUsers,
    cache: CacheHandle,
    context: Arc<ContextVocabulary>,
    stages: Vec<Box<dyn Stage<Cpu>>>,
    batch: Batch<Cpu>,
    /// Host bytes of the similarity stage's `f16` scan copy of the items (0 once the stage
    /// is replaced: a custom stage accounts for itself).
    scan_copy_bytes: usize,
    /// The GPU path, when the pipeline runs on a CUDA device: the CPU stages after `encode`
    /// then stay as the reference and serve `similar`, the GPU answers requests.
    #[cfg(feature = "cuda")]
    gpu: Option<gpu::GpuBackend>,
}

impl Pipeline {
    /// Builds every stage over `dataset`, whose items are embedded as `items` (see
    /// [`item_embeddings`]). Context phrases are encoded once here.
    pub fn build(
        dataset: Arc<Dataset>,
        encoder: Arc<QueryEncoder>,
        items: ItemEmbeddings,
        mut config: PipelineConfig,
    ) -> Result<Pipeline, PipelineError> {
        config.validate()?;
        // The genre-hint boost needs to know which items carry each genre.
        if config.cache.genre_boost != 0.0 && config.cache.genres.is_none() {
            config.cache.set_genres_from(&dataset.catalog);
        }
        if items.len() != dataset.catalog.len() {
            return Err(PipelineError::Index(format!(
                "{} item embeddings for a catalog of {} items",
                items.len(),
                dataset.catalog.len()
            )));
        }
        let dim = items.dim();
        let items = Arc::new(items);
        let users: SharedUsers = Arc::new(RwLock::new(UserTable::build(
            dataset.user_histories(),
            &items,
            config.profile_rule,
        )));

        let phrases = ContextVocabulary::all_phrases(dataset.catalog.genres());
        let phrase_refs: Vec<&str> = phrases.iter().map(String::as_str).collect();
        let phrase_embeddings = encoder.encode(&phrase_refs)?;
        let context = Arc::new(ContextVocabulary::new(
            phrases.into_iter().zip(phrase_embeddings).collect(),
        )?);

        // Popularity is seeded from every history entry; the hot rows are built here.
        let item_ids: Arc<[ItemId]> = dataset.catalog.items().iter().map(|item| item.id).collect();
        let source = match collab::fit(config.cache.rows, &dataset)? {
            Some(model) => RowSource::Custom(Arc::new(collab::CollabRows(model))),
            None => RowSource::Embedding,
        };
        let cache = TemporalCache::new(
            items.clone(),
            users.clone(),
            config.cache_config(item_ids.clone(), source.clone()),
        )?;
        let cache_handle = cache.handle();

        let weights = match &config.rerank_weights {
            Some(path) => RerankWeights::load(path)?,
            None => RerankWeights::untrained(dim, config.rerank.heads),
        };
        #[cfg(feature = "cuda")]
        let gpu = match cuda_ordinal(config.device)? {
            Some(ordinal) => Some(gpu::GpuBackend::new(
                ordinal,
                &items,
                &users,
                &context,
                &config,
                weights.clone(),
                gpu::CacheParts {
                    handle: cache_handle.clone(),
                    source,
                    config: config.cache_config(item_ids, RowSource::Embedding),
                },
            )?),
            None => None,
        };
        #[cfg(not(feature = "cuda"))]
        if let DeviceChoice::Cuda(_) = config.device {
            return Err(PipelineError::Config(
                "this build has no CUDA support: rebuild with `--features cuda`".into(),
            ));
        }
        let similarity = Similarity::new(items.clone(), users.clone(), config.similarity_config())?;
        let scan_copy_bytes = similarity.index_bytes();
        let stages: Vec<Box<dyn Stage<Cpu>>> = vec![
            Box::new(EncoderStage::new(encoder.clone())),
            Box::new(Fusion::new(users.clone(), config.fusion_config())?),
            Box::new(cache),
            Box::new(similarity),
            Box::new(AttentionRerank::new(
                items.clone(),
                users.clone(),
                context.clone(),
                config.rerank.clone(),
                weights,
            )?),
        ];
        Ok(Pipeline {
            batch: Batch::new(&Cpu, dim)?,
            config,
            dataset,
            encoder,
            items,
            users,
            cache: cache_handle,
            context,
            stages,
            scan_copy_bytes,
            #[cfg(feature = "cuda")]
            gpu,
        })
    }

    /// Replaces the stage in slot `name` (one of [`STAGE_ORDER`]) with `stage`, returning the
    /// old one. This is how teams swap a stage implementation.
    pub fn replace_stage(
        &mut self,
        name: &str,
        stage: Box<dyn Stage<Cpu>>,
    ) -> Result<Box<dyn Stage<Cpu>>, PipelineError> {
        let slot = STAGE_ORDER
            .iter()
            .position(|s| *s == name)
            .ok_or_else(|| PipelineError::UnknownStage(name.to_owned()))?;
        if name == "similarity" {
            self.scan_copy_bytes = 0;
        }
        Ok(std::mem::replace(&mut self.stages[slot], stage))
    }

    /// Where requests are answered.
    pub fn device(&self) -> DeviceKind {
        #[cfg(feature = "cuda")]
        if let Some(gpu) = &self.gpu {
            return gpu.cuda().kind();
        }
        Cpu.kind()
    }

    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    pub fn dataset(&self) -> &Dataset {
        &self.dataset
    }

    pub fn items(&self) -> &Arc<ItemEmbeddings> {
        &self.items
    }

    pub fn users(&self) -> &SharedUsers {
        &self.users
    }

    pub fn encoder(&self) -> &Arc<QueryEncoder> {
        &self.encoder
    }

    pub fn cache(&self) -> &CacheHandle {
        &self.cache
    }

    pub fn context_vocabulary(&self) -> &Arc<ContextVocabulary> {
        &self.context
    }

    /// Recommends for one request.
    pub fn recommend(&mut self, request: &Request) -> Result<Response, PipelineError> {
        let mut responses = self.recommend_batch(std::slice::from_ref(request))?;
        responses.pop().ok_or(PipelineError::EmptyBatch)
    }

    /// Recommends for a batch of requests in one pass through the stages. Every response
    /// carries the batch's per-stage timings.
    pub fn recommend_batch(
        &mut self,
        requests: &[Request],
    ) -> Result<Vec<Response>, PipelineError> {
        if requests.is_empty() {
            return Err(PipelineError::EmptyBatch);
        }
        for request in requests {
            self.config.validate_request(request)?;
        }
        #[cfg(feature = "cuda")]
        if self.gpu.is_some() {
            let mut responses = Vec::with_capacity(requests.len());
            for chunk in requests.chunks(gpu::MAX_BUCKET) {
                responses.extend(self.recommend_on_gpu(chunk)?);
            }
            return Ok(responses);
        }
        let device = Cpu;
        self.batch.reset(&device, requests.to_vec())?;
        let mut marks = Vec::with_capacity(self.stages.len() + 1);
        marks.push(device.mark()?);
        for stage in &mut self.stages {
            stage.run(&device, &mut self.batch)?;
            marks.push(device.mark()?);
        }
        device.synchronize()?;
        self.batch.timings.clear();
        for (stage, pair) in self.stages.iter().zip(marks.windows(2)) {
            self.batch.timings.push(StageTiming {
                stage: stage.name(),
                elapsed: device.elapsed(&pair[0], &pair[1])?,
            });
        }
        let total = device.elapsed(&marks[0], &marks[marks.len() - 1])?;
        Ok(response::collect(
            &self.batch,
            &self.dataset.catalog,
            total,
            device.kind(),
        ))
    }

    /// Encodes on the host, then runs the rest of the path on the GPU.
    #[cfg(feature = "cuda")]
    fn recommend_on_gpu(&mut self, requests: &[Request]) -> Result<Vec<Response>, PipelineError> {
        let Some(gpu) = self.gpu.as_mut() else {
            return Err(PipelineError::Config("no GPU path".into()));
        };
        let host = Cpu;
        self.batch.reset(&host, requests.to_vec())?;
        let started = host.mark()?;
        self.stages[0].run(&host, &mut self.batch)?;
        let encoded = host.mark()?;
        let post_encoding = gpu.run(&mut self.batch)?;
        let finished = host.mark()?;
        self.batch.timings = vec![
            StageTiming {
                stage: self.stages[0].name(),
                elapsed: host.elapsed(&started, &encoded)?,
            },
            StageTiming {
                stage: "post_encoding",
                elapsed: post_encoding,
            },
        ];
        let total = host.elapsed(&started, &finished)?;
        Ok(response::collect(
            &self.batch,
            &self.dataset.catalog,
            total,
            gpu.cuda().kind(),
        ))
    }

    /// Applies a real-time event: the user's history, seen set and profile, then every
    /// stage's derived state (popularity, device rows). The next request sees it.
    pub fn apply_event(&mut self, event: &Event) -> Result<(), PipelineError> {
        let item = self
            .dataset
            .catalog
            .index_of(event.item)
            .ok_or(PipelineError::UnknownItem(event.item))?;
        let rating = event.interaction.as_rating();
        // NaN is outside the range too, so this also refuses non-finite ratings.
        if !(0.5..=5.0).contains(&rating) {
            return Err(PipelineError::InvalidEvent(format!(
                "rating {rating} is outside 0.5..=5.0"
            )));
        }
        self.users.write().apply(
            event.user,
            HistoryEntry {
                item,
                rating,
                timestamp: event.timestamp,
            },
            &self.items,
        );
        for stage in &mut self.stages {
            stage.observe(&Cpu, event)?;
        }
        #[cfg(feature = "cuda")]
        if let Some(gpu) = &mut self.gpu {
            gpu.observe(event)?;
        }
        Ok(())
    }

    /// Looks up an item by external id.
    pub fn item_index(&self, id: ItemId) -> Result<u32, PipelineError> {
        self.dataset
            .catalog
            .index_of(id)
            .ok_or(PipelineError::UnknownItem(id))
    }

    /// Items most similar to `item` (served by the temporal cache when `item` is hot).
    pub fn similar(
        &self,
        id: ItemId,
        k: usize,
    ) -> Result<(Vec<RecommendedItem>, bool), PipelineError> {
        if k == 0 || k > MAX_K {
            return Err(PipelineError::InvalidRequest(format!(
                "k must be in 1..={MAX_K}, got {k}"
            )));
        }
        let item = self.item_index(id)?;
        let (neighbours, lookup) = self.cache.similar(item, k)?;
        let items = neighbours
            .into_iter()
            .map(|(other, score)| response::plain_item(&self.dataset.catalog, other, score))
            .collect();
        Ok((items, lookup == CacheLookup::Hit))
    }

    /// Bytes held per component.
    pub fn memory_report(&self) -> MemoryReport {
        let users = self.users.read();
        let dim = self.items.dim();
        let history_entries: usize = (0..users.len() as u32)
            .map(|u| users.history(u).len())
            .sum();
        let mut components = vec![
            // The f32 table and the similarity stage's f16 copy for single-query scans.
            MemoryComponent::host(
                "items",
                self.items.as_slice().len() * 4 + self.scan_copy_bytes,
            ),
            MemoryComponent::host("users", users.len() * dim * 4),
            MemoryComponent::host(
                "histories",
                history_entries * (std::mem::size_of::<HistoryEntry>() + 4),
            ),
            MemoryComponent::host("cache", self.cache.stats().hot_rows * self.items.len() * 4),
            MemoryComponent::host("context", self.context.len() * dim * 4),
        ];
        components.push(MemoryComponent::host(
            "workspace",
            response::batch_bytes(&self.batch),
        ));
        #[cfg(feature = "cuda")]
        if let Some(gpu) = &self.gpu {
            for device_component in gpu.memory() {
                match components
                    .iter_mut()
                    .find(|c| c.name == device_component.name)
                {
                    Some(component) => component.device_bytes += device_component.device_bytes,
                    None => components.push(device_component),
                }
            }
        }
        MemoryReport {
            device: self.device(),
            components,
        }
    }
}

/// The CUDA device the configuration asks for, if any: `Auto` takes device 0 when one is
/// present, `Cuda(n)` insists on device `n`.
#[cfg(feature = "cuda")]
fn cuda_ordinal(choice: DeviceChoice) -> Result<Option<usize>, PipelineError> {
    match choice {
        DeviceChoice::Cpu => Ok(None),
        DeviceChoice::Auto => Ok(hyperrec_kernels::Cuda::is_available().then_some(0)),
        DeviceChoice::Cuda(ordinal) => {
            if hyperrec_kernels::Cuda::is_available() {
                Ok(Some(ordinal))
            } else {
                Err(PipelineError::Config(format!(
                    "cuda:{ordinal} was asked for, but no CUDA device is available"
                )))
            }
        }
    }
}
