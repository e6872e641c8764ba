//! hyperrec's own BERT forward pass on the CPU, built for query-sized inputs.
//!
//! A query is some 5 to 20 word pieces, so the forward pass is a chain of skinny matrix
//! products `[tokens, 384] x [384, out]` plus a little attention. A general tensor library
//! spends most of such a pass on per-operation overhead (allocation, broadcasting, layout
//! copies for the attention heads); this module runs the same arithmetic on flat `f32`
//! buffers it reuses:
//!
//! - only real word pieces are processed: the rows of a batch are concatenated without
//!   padding (attention stays within a row), so a batch costs what its tokens cost;
//! - every linear layer is `y = x Wᵀ + b` with `W` kept in its `[out, in]` layout and
//!   computed by [`hyperrec_dot::dot_block`] (AVX2 + FMA where the CPU has it) over blocks of
//!   `W`'s rows in parallel: each block of weights is read once per call and used for
//!   every token;
//! - the query, key and value projections are one fused `[3 * hidden, hidden]` product.
//!
//! It computes what `candle_transformers::models::bert::BertModel` computes (the reference
//! the tests compare it with; see [`crate::EncoderBackend`]): embeddings (word + position +
//! token type 0) and LayerNorm, then per layer self-attention with a residual LayerNorm
//! and a GELU feed-forward block with a residual LayerNorm. The layout (one fused QKV
//! matrix, unpadded token rows with row offsets) is also the one a GPU encoder uploads.

use std::ops::Range;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{Config as BertConfig, HiddenAct};
use rayon::prelude::*;

use crate::EncoderError;

/// Weight rows per block of a linear layer: 32 rows x 384 inputs = 48 KiB, which stays in
/// L1/L2 while the token rows stream past.
const WEIGHT_BLOCK: usize = 32;
/// Token rows per parallel task when a batch has more than this many: 64 x 1536 inputs
/// (the widest layer) = 384 KiB, resident in L2 while the weights stream past.
const TOKEN_TILE: usize = 64;

/// `y = x Wᵀ + b` with `W` row-major `[outputs, inputs]`.
struct Linear {
    weight: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

impl Linear {
    fn load(vb: &VarBuilder<'_>, inputs: usize, outputs: usize) -> candle_core::Result<Linear> {
        Ok(Linear {
            weight: flat(vb.get((outputs, inputs), "weight")?)?,
            bias: flat(vb.get(outputs, "bias")?)?,
            inputs,
            outputs,
        })
    }

    /// Stacks linears with the same inputs into one (rows of the first, then the next...).
    fn stack(parts: Vec<Linear>) -> Linear {
        let inputs = parts[0].inputs;
        let mut stacked = Linear {
            weight: Vec::new(),
            bias: Vec::new(),
            inputs,
            outputs: 0,
        };
        for part in parts {
            debug_assert_eq!(part.inputs, inputs);
            stacked.weight.extend_from_slice(&part.weight);
            stacked.bias.extend_from_slice(&part.bias);
            stacked.outputs += part.outputs;
        }
        stacked
    }

    /// `out[t] = x[t] Wᵀ + b` for the `tokens` rows of `x`; `transposed` is scratch.
    fn forward(&self, x: &[f32], tokens: usize, transposed: &mut Vec<f32>, out: &mut Vec<f32>) {
        out.resize(tokens * self.outputs, 0.0);
        if tokens > TOKEN_TILE {
            // Many tokens (a batch of texts): each task keeps a tile of token rows in L2
            // and streams the weights past it block by block, so the weights are read
            // once per tile instead of the tokens once per weight block.
            out.par_chunks_mut(TOKEN_TILE * self.outputs)
                .zip(x.par_chunks(TOKEN_TILE * self.inputs))
                .for_each(|(out_tile, x_tile)| {
                    for (block, block_weights) in
                        self.weight.chunks(WEIGHT_BLOCK * self.inputs).enumerate()
                    {
                        hyperrec_dot::dot_block(
                            x_tile,
                            block_weights,
                            self.inputs,
                            &mut out_tile[block * WEIGHT_BLOCK..],
                            self.outputs,
                        );
                    }
                    for row in out_tile.chunks_exact_mut(self.outputs) {
                        add_into(row, &self.bias);
                    }
                });
            return;
        }
        // Few tokens (a query): parallel over blocks of weight rows, each read once and
        // used for every token. The product is computed transposed, `[outputs, tokens]`,
        // so each task owns a contiguous block of output rows; the transpose back is cheap.
        transposed.resize(self.outputs * tokens, 0.0);
        transposed
            .par_chunks_mut(WEIGHT_BLOCK * tokens)
            .zip(self.weight.par_chunks(WEIGHT_BLOCK * self.inputs))
            .for_each(|(block_out, block_weights)| {
                hyperrec_dot::dot_block(block_weights, x, self.inputs, block_out, tokens);
            });
        for (t, row) in out.chunks_exact_mut(self.outputs).enumerate() {
            for (o, (value, bias)) in row.iter_mut().zip(&self.bias).enumerate() {
                *value = transposed[o * tokens + t] + bias;
            }
        }
    }
}

struct LayerNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    fn load(vb: &VarBuilder<'_>, width: usize, eps: f64) -> candle_core::Result<LayerNorm> {
        Ok(LayerNorm {
            gamma: flat(vb.get(width, "weight")?)?,
            beta: flat(vb.get(width, "bias")?)?,
            eps: eps as f32,
        })
    }

    /// Normalizes every `gamma.len()`-wide row of `x` in place.
    fn apply(&self, x: &mut [f32]) {
        let width = self.gamma.len();
        for row in x.chunks_exact_mut(width) {
            let mean = row.iter().sum::<f32>() / width as f32;
            let variance = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
            let inv = 1.0 / (variance + self.eps).sqrt();
            for ((v, g), b) in row.iter_mut().zip(&self.gamma).zip(&self.beta) {
                *v = (*v - mean) * inv * g + b;
            }
        }
    }
}

struct Layer {
    /// Query, key and value projections stacked: `[3 * hidden, hidden]`.
    qkv: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// The feed-forward activation of the config.
#[derive(Clone, Copy)]
enum Activation {
    /// `x Φ(x)` with the exact normal CDF (BERT's "gelu").
    GeluErf,
    /// The tanh approximation ("gelu_new").
    GeluTanh,
    Relu,
}

impl Activation {
    fn apply(self, x: &mut [f32]) {
        match self {
            Activation::GeluErf => x.iter_mut().for_each(|v| {
                *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
            }),
            Activation::GeluTanh => x.iter_mut().for_each(|v| {
                let inner = 0.797_884_6 * (*v + 0.044_715 * *v * *v * *v);
                *v = 0.5 * *v * (1.0 + inner.tanh());
            }),
            Activation::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
        }
    }
}

/// The error function in `f32`, as a rational function of `x` on `[-4, 4]` (outside it,
/// `erf` is `±1` to `f32` precision): odd numerator of degree 13 over an even denominator
/// of degree 8, the minimax form that XLA and Eigen use for `f32`. Only multiply, add and
/// one division, so the GELU loop vectorizes; a scalar `libm` call per value cost 0.8 ms of
/// a 3 ms query. Absolute error below 1e-6 (tested against `libm::erf` in `f64`).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut numerator = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    numerator = x2 * numerator - 2.101_024e-6;
    numerator = x2 * numerator - 5.692_506_4e-5;
    numerator = x2 * numerator - 7.349_906_3e-4;
    numerator = x2 * numerator - 2.954_600_1e-3;
    numerator = x2 * numerator - 1.609_603_3e-2;
    let mut denominator = x2 * -1.456_607_2e-5 - 2.133_740_6e-4;
    denominator = x2 * denominator - 1.682_827e-3;
    denominator = x2 * denominator - 7.373_329e-3;
    denominator = x2 * denominator - 1.426_474e-2;
    x * numerator / denominator
}

/// The weights of a BERT encoder, flat `f32`, and its shape.
pub(crate) struct NativeBert {
    hidden: usize,
    heads: usize,
    vocab: usize,
    max_positions: usize,
    /// `[vocab, hidden]`.
    word: Vec<f32>,
    /// `[max_positions, hidden]`.
    position: Vec<f32>,
    /// Row 0 of the token-type table: every text is one segment.
    token_type: Vec<f32>,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    activation: Activation,
}

/// Buffers of one forward pass, reused across calls.
#[derive(Default)]
pub(crate) struct Scratch {
    hidden: Vec<f32>,
    qkv: Vec<f32>,
    context: Vec<f32>,
    projected: Vec<f32>,
    intermediate: Vec<f32>,
    transposed: Vec<f32>,
    scores: Vec<f32>,
}

impl NativeBert {
    /// Reads the weights named like Hugging Face's `BertModel` (optionally under the
    /// config's `model_type` prefix, as candle does) and converts them to `f32`.
    pub(crate) fn load(
        vb: &VarBuilder<'_>,
        config: &BertConfig,
    ) -> candle_core::Result<NativeBert> {
        let root = if vb.contains_tensor("embeddings.word_embeddings.weight") {
            vb.clone()
        } else {
            match &config.model_type {
                Some(prefix) => vb.pp(prefix),
                None => vb.clone(),
            }
        };
        let hidden = config.hidden_size;
        let heads = config.num_attention_heads;
        if heads == 0 || !hidden.is_multiple_of(heads) {
            candle_core::bail!("hidden size {hidden} is not a multiple of {heads} heads");
        }
        let activation = match config.hidden_act {
            HiddenAct::Gelu => Activation::GeluErf,
            HiddenAct::GeluApproximate => Activation::GeluTanh,
            HiddenAct::Relu => Activation::Relu,
        };
        let eps = config.layer_norm_eps;
        let embeddings = root.pp("embeddings");
        let token_types = flat(
            embeddings
                .pp("token_type_embeddings")
                .get((config.type_vocab_size, hidden), "weight")?,
        )?;
        let layers = (0..config.num_hidden_layers)
            .map(|index| {
                let layer = root.pp(format!("encoder.layer.{index}"));
                let attention = layer.pp("attention");
                let projection =
                    |name: &str| Linear::load(&attention.pp("self").pp(name), hidden, hidden);
                Ok(Layer {
                    qkv: Linear::stack(vec![
                        projection("query")?,
                        projection("key")?,
                        projection("value")?,
                    ]),
                    attention_out: Linear::load(&attention.pp("output.dense"), hidden, hidden)?,
                    attention_norm: LayerNorm::load(
                        &attention.pp("output.LayerNorm"),
                        hidden,
                        eps,
                    )?,
                    intermediate: Linear::load(
                        &layer.pp("intermediate.dense"),
                        hidden,
                        config.intermediate_size,
                    )?,
                    output: Linear::load(
                        &layer.pp("output.dense"),
                        config.intermediate_size,
                        hidden,
                    )?,
                    output_norm: LayerNorm::load(&layer.pp("output.LayerNorm"), hidden, eps)?,
                })
            })
            .collect::<candle_core::Result<Vec<Layer>>>()?;
        Ok(NativeBert {
            hidden,
            heads,
            vocab: config.vocab_size,
            max_positions: config.max_position_embeddings,
            word: flat(
                embeddings
                    .pp("word_embeddings")
                    .get((config.vocab_size, hidden), "weight")?,
            )?,
            position: flat(
                embeddings
                    .pp("position_embeddings")
                    .get((config.max_position_embeddings, hidden), "weight")?,
            )?,
            token_type: token_types[..hidden].to_vec(),
            embedding_norm: LayerNorm::load(&embeddings.pp("LayerNorm"), hidden, eps)?,
            layers,
            activation,
        })
    }

    /// Mean-pooled, L2-normalized embeddings of `rows` (word-piece ids, no padding),
    /// row-major `[rows.len(), hidden]`, written into `out`.
    pub(crate) fn embed(
        &self,
        rows: &[&[u32]],
        scratch: &mut Scratch,
        out: &mut [f32],
    ) -> Result<(), EncoderError> {
        let hidden = self.hidden;
        let mut spans: Vec<Range<usize>> = Vec::with_capacity(rows.len());
        let mut tokens = 0;
        for row in rows {
            if row.len() > self.max_positions {
                return Err(EncoderError::TooManyWordPieces {
                    pieces: row.len(),
                    max: self.max_positions,
                });
            }
            if let Some(&id) = row.iter().find(|&&id| id as usize >= self.vocab) {
                return Err(EncoderError::UnknownWordPiece {
                    id,
                    vocab: self.vocab,
                });
            }
            spans.push(tokens..tokens + row.len());
            tokens += row.len();
        }
        debug_assert_eq!(out.len(), rows.len() * hidden);

        let x = &mut scratch.hidden;
        x.clear();
        for row in rows {
            for (position, &id) in row.iter().enumerate() {
                let word = &self.word[id as usize * hidden..][..hidden];
                let place = &self.position[position * hidden..][..hidden];
                x.extend(
                    word.iter()
                        .zip(place)
                        .zip(&self.token_type)
                        .map(|((w, p), t)| w + p + t),
                );
            }
        }
        self.embedding_norm.apply(x);

        for layer in &self.layers {
            layer.qkv.forward(
                &scratch.hidden,
                tokens,
                &mut scratch.transposed,
                &mut scratch.qkv,
            );
            self.attend(&spans, scratch);
            layer.attention_out.forward(
                &scratch.context,
                tokens,
                &mut scratch.transposed,
                &mut scratch.projected,
            );
            add_into(&mut scratch.hidden, &scratch.projected);
            layer.attention_norm.apply(&mut scratch.hidden);

            layer.intermediate.forward(
                &scratch.hidden,
                tokens,
                &mut scratch.transposed,
                &mut scratch.intermediate,
            );
            self.activation.apply(&mut scratch.intermediate);
            layer.output.forward(
                &scratch.intermediate,
                tokens,
                &mut scratch.transposed,
                &mut scratch.projected,
            );
            add_into(&mut scratch.hidden, &scratch.projected);
            layer.output_norm.apply(&mut scratch.hidden);
        }

        for (span, embedding) in spans.iter().zip(out.chunks_exact_mut(hidden)) {
            embedding.fill(0.0);
            for token in scratch.hidden[span.start * hidden..span.end * hidden].chunks_exact(hidden)
            {
                add_into(embedding, token);
            }
            let count = span.len().max(1) as f32;
            embedding.iter_mut().for_each(|v| *v /= count);
            // The same floor as torch.nn.functional.normalize, which sentence-transformers uses.
            let norm = embedding
                .iter()
                .map(|v| v * v)
                .sum::<f32>()
                .sqrt()
                .max(1e-12);
            embedding.iter_mut().for_each(|v| *v /= norm);
        }
        Ok(())
    }

    /// Multi-head self-attention within each row's span: reads `scratch.qkv`
    /// (`[tokens, 3 * hidden]`), writes `scratch.context` (`[tokens, hidden]`).
    fn attend(&self, spans: &[Range<usize>], scratch: &mut Scratch) {
        let hidden = self.hidden;
        let head_width = hidden / self.heads;
        let scale = 1.0 / (head_width as f32).sqrt();
        let tokens = spans.last().map_or(0, |span| span.end);
        let qkv = &scratch.qkv;
        let context = &mut scratch.context;
        context.clear();
        context.resize(tokens * hidden, 0.0);
        let scores = &mut scratch.scores;
        for span in spans {
            for head in 0..self.heads {
                let offset = head * head_width;
                let slice = |token: usize, part: usize| {
                    &qkv[token * 3 * hidden + part * hidden + offset..][..head_width]
                };
                for query in span.clone() {
                    let q = slice(query, 0);
                    scores.clear();
                    scores.extend(span.clone().map(|key| {
                        q.iter().zip(slice(key, 1)).map(|(a, b)| a * b).sum::<f32>() * scale
                    }));
                    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut total = 0.0;
                    for s in scores.iter_mut() {
                        *s = (*s - max).exp();
                        total += *s;
                    }
                    let out = &mut context[query * hidden + offset..][..head_width];
                    for (key, &weight) in span.clone().zip(scores.iter()) {
                        let weight = weight / total;
                        for (o, v) in out.iter_mut().zip(slice(key, 2)) {
                            *o += weight * v;
                        }
                    }
                }
            }
        }
    }
}

fn add_into(acc: &mut [f32], values: &[f32]) {
    for (a, v) in acc.iter_mut().zip(values) {
        *a += v;
    }
}

/// A tensor's values as a flat `f32` vector, whatever the file's dtype.
fn flat(tensor: Tensor) -> candle_core::Result<Vec<f32>> {
    tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

#[cfg(test)]
mod tests {
    use super::erf;

    #[test]
    fn erf_is_within_1e6_of_libm_everywhere() {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x5eed, |d| d.as_nanos() as u64);
        // A fine grid over the whole interesting range, then fresh random points.
        let grid = (-80_000..=80_000).map(|i| i as f32 * 1e-4);
        let mut state = seed | 1;
        let random = (0..100_000).map(move |_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 20.0
        });
        for x in grid.chain(random) {
            let error = (f64::from(erf(x)) - libm::erf(f64::from(x))).abs();
            assert!(error < 1e-6, "seed {seed}: erf({x}) off by {error:e}");
        }
        assert!((erf(f32::INFINITY) - 1.0).abs() < 1e-6);
        assert!((erf(f32::NEG_INFINITY) + 1.0).abs() < 1e-6);
    }
}
