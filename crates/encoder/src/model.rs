//! The sentence encoder: word-piece tokenization, a BERT forward pass on the CPU, mean
//! pooling over the attention mask and L2 normalization (what sentence-transformers does
//! for all-MiniLM-L6-v2).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use parking_lot::Mutex;
use tokenizers::{Tokenizer, TruncationParams};

use crate::EncoderError;
use crate::bert::{NativeBert, Scratch};
use crate::provision::{ModelFiles, read_model_file};

/// Word pieces per text, `[CLS]` and `[SEP]` included; longer texts are truncated. This
/// is the `max_seq_length` sentence-transformers uses for all-MiniLM-L6-v2.
pub const MAX_WORD_PIECES: usize = 256;

/// Longest text accepted, in characters. 256 word pieces rarely span more than ~1,500
/// characters, so longer texts lose nothing to the limit; it exists to keep a hostile
/// input (megabytes of text) from costing the tokenizer time and memory before truncation.
pub const MAX_TEXT_CHARS: usize = 10_000;

/// Texts encoded per forward pass inside [`Encoder::encode`]. Activations grow with
/// `batch * seq_len * 1536` floats; 64 keeps them to a few MB at query lengths and bounds
/// them at long ones.
const ENCODE_CHUNK: usize = 64;

/// Word-piece ids of a batch, padded to its longest text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenBatch {
    /// Pieces per row after padding.
    pub seq_len: usize,
    /// `[rows, seq_len]` word-piece ids, padded with the tokenizer's `[PAD]` id (0).
    pub ids: Vec<u32>,
    /// `[rows, seq_len]` 1 for a real word piece, 0 for padding.
    pub attention_mask: Vec<u32>,
}

impl TokenBatch {
    /// Number of texts in the batch.
    pub fn rows(&self) -> usize {
        self.ids.len().checked_div(self.seq_len).unwrap_or(0)
    }
}

/// Which implementation of the BERT forward pass an [`Encoder`] runs. Both compute the
/// same function in `f32`; they differ in speed, not in results (beyond float rounding;
/// the tests compare them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EncoderBackend {
    /// hyperrec's own forward pass on flat buffers (`bert.rs`): only real word pieces are
    /// computed, weights are read once per layer for the whole batch, no allocation in
    /// steady state. Several times faster than [`EncoderBackend::Candle`] on queries.
    #[default]
    Native,
    /// `candle_transformers`' `BertModel`: the reference implementation.
    Candle,
}

enum Forward {
    /// The native pass and a pool of scratch buffers (one per concurrent caller).
    Native {
        bert: Box<NativeBert>,
        scratch: Mutex<Vec<Scratch>>,
    },
    Candle(Box<BertModel>),
}

/// all-MiniLM-L6-v2 (or any BERT sentence encoder with mean pooling) on the CPU, in f32.
///
/// Matrix products run on rayon's global pool, sized from `RAYON_NUM_THREADS`, else the
/// number of cores the process may use; a server that wants to keep cores for other
/// stages sets `RAYON_NUM_THREADS`. Tokenization of a batch also runs on that pool.
///
/// `Encoder` is `Send + Sync`: share one behind an `Arc`; `encode` takes `&self`.
pub struct Encoder {
    forward: Forward,
    tokenizer: Tokenizer,
    device: Device,
    dim: usize,
    pad_id: u32,
    fingerprint: String,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("dim", &self.dim)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Encoder {
    /// Loads the tokenizer, the BERT config and the weights of `files`, for the default
    /// ([`EncoderBackend::Native`]) forward pass.
    pub fn load(files: &ModelFiles) -> Result<Encoder, EncoderError> {
        Encoder::load_with(files, EncoderBackend::default())
    }

    /// [`Encoder::load`] with a chosen forward pass.
    pub fn load_with(files: &ModelFiles, backend: EncoderBackend) -> Result<Encoder, EncoderError> {
        let config_bytes = read_model_file(&files.config)?;
        let config: BertConfig =
            serde_json::from_slice(&config_bytes).map_err(|error| EncoderError::InvalidConfig {
                path: files.config.clone(),
                reason: error.to_string(),
            })?;

        let mut tokenizer = Tokenizer::from_file(&files.tokenizer).map_err(|error| {
            EncoderError::InvalidTokenizer {
                path: files.tokenizer.clone(),
                reason: error.to_string(),
            }
        })?;
        // tokenizer.json ships with truncation and fixed padding at 128; we truncate at the
        // model's 256 and pad ourselves to the longest text of each batch.
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_WORD_PIECES,
                ..TruncationParams::default()
            }))
            .map_err(|error| EncoderError::InvalidTokenizer {
                path: files.tokenizer.clone(),
                reason: error.to_string(),
            })?;
        tokenizer.with_padding(None);
        let pad_id = tokenizer.token_to_id("[PAD]").unwrap_or(0);

        let weights = read_model_file(&files.weights)?;
        let device = Device::Cpu;
        // Reading into memory (not mmap) keeps this safe code and immune to the file
        // changing underneath; 90 MB is read in well under a second.
        let vars = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device).map_err(
            |error| EncoderError::CorruptWeights {
                path: files.weights.clone(),
                reason: error.to_string(),
            },
        )?;
        let mismatch = |error: candle_core::Error| EncoderError::WeightsMismatch {
            path: files.weights.clone(),
            reason: error.to_string(),
        };
        let forward = match backend {
            EncoderBackend::Native => Forward::Native {
                bert: Box::new(NativeBert::load(&vars, &config).map_err(mismatch)?),
                scratch: Mutex::new(Vec::new()),
            },
            EncoderBackend::Candle => {
                Forward::Candle(Box::new(BertModel::load(vars, &config).map_err(mismatch)?))
            }
        };
        Ok(Encoder {
            forward,
            tokenizer,
            device,
            dim: config.hidden_size,
            pad_id,
            fingerprint: files.fingerprint.clone(),
        })
    }

    /// The forward pass this encoder runs.
    pub fn backend(&self) -> EncoderBackend {
        match self.forward {
            Forward::Native { .. } => EncoderBackend::Native,
            Forward::Candle(_) => EncoderBackend::Candle,
        }
    }

    /// Width of the embeddings (384 for all-MiniLM-L6-v2).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The model's [`ModelFiles::fingerprint`].
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// L2-normalized embeddings of `texts`, one `dim()`-wide vector each, in order.
    ///
    /// Texts are grouped by length and encoded in batches padded to their longest, so the
    /// result of a text does not depend on the other texts beyond float rounding.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EncoderError> {
        let flat = self.encode_flat(texts)?;
        Ok(flat.chunks_exact(self.dim).map(<[f32]>::to_vec).collect())
    }

    /// Like [`Encoder::encode`], as one row-major `[texts.len(), dim()]` vector.
    pub fn encode_flat(&self, texts: &[&str]) -> Result<Vec<f32>, EncoderError> {
        let rows = self.tokenize(texts)?;
        let rows: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
        self.embed_rows(&rows)
    }

    /// The word pieces of `text` as the model sees them, `[CLS]` and `[SEP]` included,
    /// after truncation to [`MAX_WORD_PIECES`].
    pub fn tokens(&self, text: &str) -> Result<Vec<String>, EncoderError> {
        validate_text(text)?;
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|error| EncoderError::Tokenize(error.to_string()))?;
        check_has_word_pieces(&encoding)?;
        Ok(encoding.get_tokens().to_vec())
    }

    /// Validated, truncated, unpadded word-piece ids of each text.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, EncoderError> {
        self.tokenize_indexed(texts).map_err(|(_, error)| error)
    }

    /// [`Encoder::tokenize`], saying which text an error is about.
    pub(crate) fn tokenize_indexed(
        &self,
        texts: &[&str],
    ) -> Result<Vec<Vec<u32>>, (usize, EncoderError)> {
        for (index, text) in texts.iter().enumerate() {
            validate_text(text).map_err(|error| (index, error))?;
        }
        let encodings = match texts {
            [] => Vec::new(),
            [text] => vec![self.tokenizer.encode(*text, true)],
            _ => self
                .tokenizer
                .encode_batch(texts.to_vec(), true)
                .map_or_else(
                    |error| vec![Err(error)],
                    |all| all.into_iter().map(Ok).collect(),
                ),
        };
        encodings
            .into_iter()
            .enumerate()
            .map(|(index, encoding)| {
                let encoding =
                    encoding.map_err(|error| (index, EncoderError::Tokenize(error.to_string())))?;
                check_has_word_pieces(&encoding).map_err(|error| (index, error))?;
                Ok(encoding.get_ids().to_vec())
            })
            .collect()
    }

    /// Pads `rows` (word-piece ids from [`Encoder::tokenize`]) to the longest of them.
    pub fn pad(&self, rows: &[&[u32]]) -> TokenBatch {
        let seq_len = rows.iter().map(|row| row.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * seq_len);
        let mut attention_mask = Vec::with_capacity(rows.len() * seq_len);
        for row in rows {
            ids.extend_from_slice(row);
            ids.resize(ids.len() + seq_len - row.len(), self.pad_id);
            attention_mask.resize(attention_mask.len() + row.len(), 1);
            attention_mask.resize(attention_mask.len() + seq_len - row.len(), 0);
        }
        TokenBatch {
            seq_len,
            ids,
            attention_mask,
        }
    }

    /// Embeds rows of word-piece ids: sorted by length, padded and run in chunks of
    /// [`ENCODE_CHUNK`], returned row-major `[rows.len(), dim()]` in the given order.
    pub fn embed_rows(&self, rows: &[&[u32]]) -> Result<Vec<f32>, EncoderError> {
        let mut order: Vec<usize> = (0..rows.len()).collect();
        // Similar lengths together waste less work on padding.
        order.sort_by_key(|&row| rows[row].len());
        let mut out = vec![0.0f32; rows.len() * self.dim];
        for chunk in order.chunks(ENCODE_CHUNK) {
            let chunk_rows: Vec<&[u32]> = chunk.iter().map(|&row| rows[row]).collect();
            let embeddings = match &self.forward {
                Forward::Native { bert, scratch } => {
                    let mut embeddings = vec![0.0f32; chunk_rows.len() * self.dim];
                    run_native(bert, scratch, &chunk_rows, &mut embeddings)?;
                    embeddings
                }
                Forward::Candle(_) => self.embed_batch(&self.pad(&chunk_rows))?,
            };
            for (&row, embedding) in chunk.iter().zip(embeddings.chunks_exact(self.dim)) {
                out[row * self.dim..(row + 1) * self.dim].copy_from_slice(embedding);
            }
        }
        Ok(out)
    }

    /// One forward pass over a padded batch: mean pooling over the attention mask, then
    /// L2 normalization. Returns row-major `[batch.rows(), dim()]`.
    pub fn embed_batch(&self, batch: &TokenBatch) -> Result<Vec<f32>, EncoderError> {
        let rows = batch.rows();
        if rows == 0 {
            return Ok(Vec::new());
        }
        let model = match &self.forward {
            Forward::Native { bert, scratch } => {
                // Real word pieces only: the mask marks a prefix of each padded row.
                let unpadded: Vec<&[u32]> = batch
                    .ids
                    .chunks_exact(batch.seq_len)
                    .zip(batch.attention_mask.chunks_exact(batch.seq_len))
                    .map(|(ids, mask)| &ids[..mask.iter().take_while(|&&m| m != 0).count()])
                    .collect();
                let mut out = vec![0.0f32; rows * self.dim];
                run_native(bert, scratch, &unpadded, &mut out)?;
                return Ok(out);
            }
            Forward::Candle(model) => model,
        };
        let shape = (rows, batch.seq_len);
        let ids = Tensor::from_slice(&batch.ids, shape, &self.device)?;
        let mask = Tensor::from_slice(&batch.attention_mask, shape, &self.device)?;
        let token_types = ids.zeros_like()?;
        let hidden = model.forward(&ids, &token_types, Some(&mask))?;

        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        // Every row holds at least [CLS] and [SEP], so the count is never zero.
        let counts = mask.sum(1)?;
        let mean = summed.broadcast_div(&counts)?;
        // The same floor as torch.nn.functional.normalize, which sentence-transformers uses.
        let norms = mean
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12f32, f32::MAX)?;
        let normalized = mean.broadcast_div(&norms)?;
        Ok(normalized.flatten_all()?.to_vec1::<f32>()?)
    }
}

/// Runs the native pass with a scratch set from the pool (a new one when every set is in
/// use by another caller), returned to the pool afterwards.
fn run_native(
    bert: &NativeBert,
    pool: &Mutex<Vec<Scratch>>,
    rows: &[&[u32]],
    out: &mut [f32],
) -> Result<(), EncoderError> {
    let mut scratch = pool.lock().pop().unwrap_or_default();
    let result = bert.embed(rows, &mut scratch, out);
    pool.lock().push(scratch);
    result
}

/// Rejects what cannot or should not be embedded: empty or whitespace-only text, and text
/// longer than [`MAX_TEXT_CHARS`].
pub fn validate_text(text: &str) -> Result<(), EncoderError> {
    // Bytes bound characters from above, so most texts skip the count.
    if text.len() > MAX_TEXT_CHARS {
        let chars = text.chars().count();
        if chars > MAX_TEXT_CHARS {
            return Err(EncoderError::TextTooLong {
                chars,
                max: MAX_TEXT_CHARS,
            });
        }
    }
    if text.trim().is_empty() {
        return Err(EncoderError::EmptyText);
    }
    Ok(())
}

/// Text of only control or zero-width characters tokenizes to `[CLS] [SEP]`: as empty as
/// an empty string, so rejected the same way.
fn check_has_word_pieces(encoding: &tokenizers::Encoding) -> Result<(), EncoderError> {
    let special = encoding
        .get_special_tokens_mask()
        .iter()
        .filter(|&&flag| flag == 1)
        .count();
    if encoding.len() <= special {
        return Err(EncoderError::EmptyText);
    }
    Ok(())
}
