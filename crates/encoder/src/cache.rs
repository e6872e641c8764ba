//! An LRU cache of query embeddings in front of the [`Encoder`].
//!
//! Real query traffic repeats itself ("thriller movies", "comedy"); a hit costs a hash
//! lookup instead of a forward pass.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use lru::LruCache;
use parking_lot::Mutex;

use crate::{Encoder, EncoderError};

/// Query embeddings kept by default (384 floats each: ~16 MB at 10,000).
pub const DEFAULT_QUERY_CACHE_CAPACITY: usize = 10_000;

/// The cache key of a query: trimmed, runs of whitespace collapsed to one space, lower-cased.
///
/// Two texts with the same key tokenize to the same word pieces, so they have the same
/// embedding: all-MiniLM-L6-v2 is *uncased* (its BERT normalizer lower-cases each
/// character, exactly as done here, before splitting on whitespace), and the
/// pre-tokenizer splits on any run of whitespace. The three whitespace characters the
/// normalizer *deletes* as control characters rather than treating as spaces (vertical
/// tab, form feed, next line) are kept as they are, since "a\u{b}b" reads as "ab".
pub fn cache_key(text: &str) -> String {
    let mut key = String::with_capacity(text.len());
    let mut pending_space = false;
    for c in text.chars() {
        if c.is_whitespace() && !matches!(c, '\u{0B}' | '\u{0C}' | '\u{85}') {
            pending_space = true;
            continue;
        }
        if pending_space && !key.is_empty() {
            key.push(' ');
        }
        pending_space = false;
        key.extend(c.to_lowercase());
    }
    key
}

/// Counters of a [`QueryEncoder`]'s cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Queries answered without a forward pass (including repeats within one batch).
    pub hits: u64,
    /// Queries that needed a forward pass.
    pub misses: u64,
    /// Embeddings held now.
    pub entries: usize,
    pub capacity: usize,
}

impl CacheStats {
    /// `hits / (hits + misses)`, 0 before the first query.
    pub fn hit_rate(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

/// An [`Encoder`] with an LRU cache of query embeddings keyed by [`cache_key`].
///
/// `Send + Sync`: the cache sits behind a mutex that is never held during a forward pass,
/// so concurrent batches only serialize on the lookups.
pub struct QueryEncoder {
    encoder: Arc<Encoder>,
    cache: Mutex<LruCache<String, Arc<[f32]>>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl QueryEncoder {
    /// Wraps `encoder` with a cache of `capacity` embeddings.
    pub fn new(encoder: Arc<Encoder>, capacity: NonZeroUsize) -> QueryEncoder {
        QueryEncoder {
            encoder,
            cache: Mutex::new(LruCache::new(capacity)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The encoder behind the cache.
    pub fn encoder(&self) -> &Arc<Encoder> {
        &self.encoder
    }

    /// Width of the embeddings.
    pub fn dim(&self) -> usize {
        self.encoder.dim()
    }

    /// Embeddings of `texts`, from the cache where possible; the misses are encoded
    /// together in one batch.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EncoderError> {
        let flat = self.encode_flat(texts)?;
        Ok(flat.chunks_exact(self.dim()).map(<[f32]>::to_vec).collect())
    }

    /// [`QueryEncoder::encode`] as one row-major `[texts.len(), dim()]` vector.
    pub fn encode_flat(&self, texts: &[&str]) -> Result<Vec<f32>, EncoderError> {
        self.encode_with_rows(texts, None)
            .map_err(|(_, error)| error)
    }

    /// Encodes `texts`; `rows`, when given, are their word-piece ids from
    /// [`Encoder::tokenize`] (so a caller that needs them anyway does not tokenize twice).
    /// Errors say which text they are about.
    pub(crate) fn encode_with_rows(
        &self,
        texts: &[&str],
        rows: Option<&[Vec<u32>]>,
    ) -> Result<Vec<f32>, (usize, EncoderError)> {
        let dim = self.dim();
        for (index, text) in texts.iter().enumerate() {
            crate::validate_text(text).map_err(|error| (index, error))?;
        }
        let keys: Vec<String> = texts.iter().map(|text| cache_key(text)).collect();
        let mut out = vec![0.0f32; texts.len() * dim];

        // First text of each distinct missing key, and every text waiting for that key.
        let mut missing: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut miss_order: Vec<usize> = Vec::new();
        {
            let mut cache = self.cache.lock();
            for (index, key) in keys.iter().enumerate() {
                if let Some(embedding) = cache.get(key.as_str()) {
                    out[index * dim..(index + 1) * dim].copy_from_slice(embedding);
                    continue;
                }
                missing
                    .entry(key.as_str())
                    .or_insert_with(|| {
                        miss_order.push(index);
                        Vec::new()
                    })
                    .push(index);
            }
        }
        let hits = texts.len() - miss_order.len();
        self.hits.fetch_add(hits as u64, Ordering::Relaxed);
        self.misses
            .fetch_add(miss_order.len() as u64, Ordering::Relaxed);
        if miss_order.is_empty() {
            return Ok(out);
        }

        let embeddings = match rows {
            Some(rows) => {
                let miss_rows: Vec<&[u32]> = miss_order
                    .iter()
                    .map(|&index| rows[index].as_slice())
                    .collect();
                self.encoder.embed_rows(&miss_rows)
            }
            None => {
                let miss_texts: Vec<&str> = miss_order.iter().map(|&index| texts[index]).collect();
                let tokenized = self
                    .encoder
                    .tokenize_indexed(&miss_texts)
                    .map_err(|(position, error)| (miss_order[position], error))?;
                let miss_rows: Vec<&[u32]> = tokenized.iter().map(Vec::as_slice).collect();
                self.encoder.embed_rows(&miss_rows)
            }
        }
        .map_err(|error| (miss_order[0], error))?;

        let mut cache = self.cache.lock();
        for (&first, embedding) in miss_order.iter().zip(embeddings.chunks_exact(dim)) {
            let key = keys[first].as_str();
            for &index in missing.get(key).map(Vec::as_slice).unwrap_or(&[]) {
                out[index * dim..(index + 1) * dim].copy_from_slice(embedding);
            }
            cache.put(key.to_owned(), Arc::from(embedding));
        }
        Ok(out)
    }

    /// Hit and miss counters and the cache's fill.
    pub fn stats(&self) -> CacheStats {
        let cache = self.cache.lock();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: cache.len(),
            capacity: cache.cap().get(),
        }
    }

    /// Drops every cached embedding (counters are kept).
    pub fn clear(&self) {
        self.cache.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_collapse_whitespace_and_case() {
        assert_eq!(cache_key("  Thriller \t\n MOVIES "), "thriller movies");
        assert_eq!(cache_key("a\u{3000}b"), "a b");
        assert_eq!(cache_key("ÉTÉ"), "été");
        // Deleted by the BERT normalizer, not split on: must stay to keep keys sound.
        assert_eq!(cache_key("a\u{0B}b"), "a\u{0B}b");
        assert_eq!(cache_key(""), "");
    }
}
