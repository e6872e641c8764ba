//! Item embeddings for a catalog: computed once with the encoder, stored on disk keyed by
//! the model and catalog fingerprints, and reused while both are unchanged.

use std::path::Path;
use std::time::{Duration, Instant};

use hyperrec_catalog::{Dataset, ItemEmbeddings, store};
use hyperrec_encoder::Encoder;
use indicatif::{ProgressBar, ProgressStyle};

use crate::PipelineError;

/// Texts encoded per encoder call while indexing.
const INDEX_BATCH: usize = 64;

/// How the item index was obtained.
#[derive(Clone, Debug)]
pub struct IndexReport {
    pub items: usize,
    /// True when the stored embeddings matched the fingerprint and were reused.
    pub reused: bool,
    pub elapsed: Duration,
    pub fingerprint: String,
}

/// Loads the item embeddings stored at `path` when they match `model_fingerprint` and the
/// catalog, else encodes every item text (title, genres, top tags) and stores them.
pub fn item_embeddings(
    dataset: &Dataset,
    encoder: &Encoder,
    model_fingerprint: &str,
    path: &Path,
    show_progress: bool,
) -> Result<(ItemEmbeddings, IndexReport), PipelineError> {
    let started = Instant::now();
    let fingerprint = format!("{model_fingerprint}:{}", dataset.catalog.fingerprint());
    if let Some(items) = store::load_if_fresh(path, &fingerprint)? {
        return Ok((
            items,
            IndexReport {
                items: dataset.catalog.len(),
                reused: true,
                elapsed: started.elapsed(),
                fingerprint,
            },
        ));
    }
    let catalog = &dataset.catalog;
    let texts: Vec<String> = (0..catalog.len() as u32).map(|i| catalog.text(i)).collect();
    let progress = if show_progress {
        let bar = ProgressBar::new(texts.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "embedding items {bar:40} {pos}/{len} ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut data = Vec::with_capacity(texts.len() * encoder.dim());
    for chunk in texts.chunks(INDEX_BATCH) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        for embedding in encoder.encode(&refs)? {
            data.extend_from_slice(&embedding);
        }
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    let items = ItemEmbeddings::new(encoder.dim(), data)
        .ok_or_else(|| PipelineError::Index("encoder returned ragged embeddings".into()))?;
    store::save(path, &items, &fingerprint)?;
    Ok((
        items,
        IndexReport {
            items: catalog.len(),
            reused: false,
            elapsed: started.elapsed(),
            fingerprint,
        },
    ))
}
