//! The rerank stage's parameters and their safetensors file.
//!
//! # File format
//!
//! One safetensors file, every tensor `F32`, little-endian, row-major. Matrices follow the
//! `candle_nn::Linear` convention (`[out, in]`, `y = W x`), so a trainer can build the
//! layers with `candle_nn::linear_no_bias(dim, dim, vb.pp("q_proj"))` and
//! `candle_nn::linear(2, 1, vb.pp("score_mix"))` and save its `VarMap` under these names:
//!
//! | tensor              | shape        | meaning                                                   |
//! |---------------------|--------------|-----------------------------------------------------------|
//! | `q_proj.weight`     | `[dim, dim]` | query projection; head `h` is output rows `h*d_h..(h+1)*d_h` |
//! | `k_proj.weight`     | `[dim, dim]` | key projection (history items and context phrases)        |
//! | `v_proj.weight`     | `[dim, dim]` | value projection (sources, and the candidate it is scored against) |
//! | `query_fused_mix`   | `[1]`        | beta: query side = (1 - beta) candidate + beta fused vector |
//! | `history_gate`      | `[2]`        | (offset, slope): history value gate = offset + slope (rating - 3) / 2 |
//! | `context_gate`      | `[1]`        | value gate of every context phrase                        |
//! | `context_share`     | `[1]`        | lambda in [0, 1]: attention mass of the context phrases when a user has both |
//! | `score_mix.weight`  | `[1, 2]`     | (w_retrieval, w_attention)                                |
//! | `score_mix.bias`    | `[1]`        | added to every final score                                |
//!
//! Metadata: `format` = [`WEIGHTS_FORMAT`], `heads` = the number of heads (decimal). The
//! head count is not recoverable from the shapes, so it travels in the metadata. `dim` is
//! the side of the projection matrices. The brief's per-head `W^h` (`d x d_h`) is the
//! transpose of rows `h*d_h..(h+1)*d_h` of the matching `[dim, dim]` matrix.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::RerankError;

/// Value of the `format` metadata key of a rerank weights file.
pub const WEIGHTS_FORMAT: &str = "hyperrec-rerank/1";

/// Softmax temperature of the untrained heads, on the cosine scale: two history items whose
/// cosine to a candidate differs by 0.1 get attention weights in a ratio of about e.
///
/// Sentence-encoder cosines between related movies sit around 0.2-0.6, so 0.1 makes the
/// attention follow similarity clearly without collapsing onto a single item.
pub const UNTRAINED_TEMPERATURE: f32 = 0.1;

/// Attention mass the untrained heads give the context phrases when the user also has a
/// history. A separate pool is needed because context phrases ("watching in the evening")
/// have systematically lower cosines to movie texts (about 0.0-0.3 with all-MiniLM-L6-v2)
/// than movies have to each other (0.25-0.5): in one joint softmax over 50 history items
/// they would get almost no weight at all.
pub const UNTRAINED_CONTEXT_SHARE: f32 = 0.25;

/// Weight of the attention score in the untrained final score (the retrieval score has
/// weight 1). Attention scores lie roughly in [-0.5, 0.5], retrieval scores of the top
/// candidates differ by a few hundredths, so 0.2 lets the history and context reorder close
/// candidates while retrieval stays dominant.
pub const UNTRAINED_ATTENTION_WEIGHT: f32 = 0.2;

/// How the attention score enters the final score:
/// `final = retrieval * retrieval_score + attention * attention_score + bias`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScoreMix {
    pub retrieval: f32,
    pub attention: f32,
    pub bias: f32,
}

/// Every learnable parameter of [`crate::AttentionRerank`], as plain row-major arrays.
///
/// See the module documentation for the meaning of each field and the file layout; the
/// crate documentation states the full scoring formula.
#[derive(Clone, Debug, PartialEq)]
pub struct RerankWeights {
    /// Embedding width; each projection is `dim x dim`.
    pub dim: usize,
    /// Attention heads; must divide `dim`.
    pub heads: usize,
    /// `[dim, dim]`, `[out, in]`: query projection.
    pub q_proj: Vec<f32>,
    /// `[dim, dim]`, `[out, in]`: key projection.
    pub k_proj: Vec<f32>,
    /// `[dim, dim]`, `[out, in]`: value projection.
    pub v_proj: Vec<f32>,
    /// beta: share of the fused query/user vector on the query side, in [0, 1].
    pub query_fused_mix: f32,
    /// `(offset, slope)`: a history item's value is scaled by
    /// `offset + slope * (rating - 3) / 2`, so a 5-star item counts +1, a 1-star item -1
    /// and a neutral 3 nothing with the untrained `(0, 1)`: dislikes count against.
    pub history_gate: [f32; 2],
    /// Scale of every context phrase's value.
    pub context_gate: f32,
    /// lambda: attention mass of the context phrases when the user also has history items,
    /// in [0, 1].
    pub context_share: f32,
    pub score_mix: ScoreMix,
}

impl RerankWeights {
    /// Parameter-free heads: every projection is a multiple of the identity, so head `h`
    /// compares the `h`-th slice of the candidate's embedding with the same slice of each
    /// source (cosine attention per slice), at temperature [`UNTRAINED_TEMPERATURE`]. The
    /// temperature is folded into `q_proj` (`heads * sqrt(d_h) / T` times the identity):
    /// for unit vectors a slice dot is about `cos / heads`, so the logit
    /// `q.k / sqrt(d_h)` becomes about `cos / T`. Retrieval stays dominant in the mix.
    ///
    /// `dim` and `heads` are not checked here; [`RerankWeights::validate`] does.
    pub fn untrained(dim: usize, heads: usize) -> RerankWeights {
        let head_dim = dim.checked_div(heads).unwrap_or(0);
        let query_scale = heads as f32 * (head_dim as f32).sqrt() / UNTRAINED_TEMPERATURE;
        RerankWeights {
            dim,
            heads,
            q_proj: scaled_identity(dim, query_scale),
            k_proj: scaled_identity(dim, 1.0),
            v_proj: scaled_identity(dim, 1.0),
            query_fused_mix: 0.0,
            history_gate: [0.0, 1.0],
            context_gate: 1.0,
            context_share: UNTRAINED_CONTEXT_SHARE,
            score_mix: ScoreMix {
                retrieval: 1.0,
                attention: UNTRAINED_ATTENTION_WEIGHT,
                bias: 0.0,
            },
        }
    }

    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.dim.checked_div(self.heads).unwrap_or(0)
    }

    /// Checks that the weights fit embeddings of width `dim` split into `heads` heads: the
    /// shapes, finiteness, and the ranges of the two shares.
    pub fn validate(&self, dim: usize, heads: usize) -> Result<(), RerankError> {
        if dim == 0 || heads == 0 || !dim.is_multiple_of(heads) {
            return Err(RerankError::InvalidConfig(format!(
                "{heads} heads must be at least one and divide the width {dim}"
            )));
        }
        if self.dim != dim {
            return Err(RerankError::DimensionMismatch {
                what: "rerank weights",
                expected: dim,
                found: self.dim,
            });
        }
        if self.heads != heads {
            return Err(RerankError::InvalidConfig(format!(
                "weights have {} heads, the configuration asks for {heads}",
                self.heads
            )));
        }
        for (name, matrix) in [
            (Q_PROJ, &self.q_proj),
            (K_PROJ, &self.k_proj),
            (V_PROJ, &self.v_proj),
        ] {
            if matrix.len() != dim * dim {
                return Err(RerankError::WeightShape {
                    name,
                    expected: vec![dim, dim],
                    found: vec![matrix.len()],
                });
            }
            if !matrix.iter().all(|x| x.is_finite()) {
                return Err(RerankError::NonFiniteWeight { name });
            }
        }
        let scalars = [
            (QUERY_FUSED_MIX, self.query_fused_mix),
            (HISTORY_GATE, self.history_gate[0]),
            (HISTORY_GATE, self.history_gate[1]),
            (CONTEXT_GATE, self.context_gate),
            (CONTEXT_SHARE, self.context_share),
            (SCORE_MIX_WEIGHT, self.score_mix.retrieval),
            (SCORE_MIX_WEIGHT, self.score_mix.attention),
            (SCORE_MIX_BIAS, self.score_mix.bias),
        ];
        for (name, value) in scalars {
            if !value.is_finite() {
                return Err(RerankError::NonFiniteWeight { name });
            }
        }
        for (name, value) in [
            (QUERY_FUSED_MIX, self.query_fused_mix),
            (CONTEXT_SHARE, self.context_share),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(RerankError::WeightOutOfRange {
                    name,
                    value,
                    range: "[0, 1]",
                });
            }
        }
        Ok(())
    }

    /// The weights as a safetensors file image (see the module docs for the layout).
    pub fn to_safetensors(&self) -> Result<Vec<u8>, RerankError> {
        let tensors: [(&str, Vec<usize>, Vec<f32>); 9] = [
            (Q_PROJ, vec![self.dim, self.dim], self.q_proj.clone()),
            (K_PROJ, vec![self.dim, self.dim], self.k_proj.clone()),
            (V_PROJ, vec![self.dim, self.dim], self.v_proj.clone()),
            (QUERY_FUSED_MIX, vec![1], vec![self.query_fused_mix]),
            (HISTORY_GATE, vec![2], self.history_gate.to_vec()),
            (CONTEXT_GATE, vec![1], vec![self.context_gate]),
            (CONTEXT_SHARE, vec![1], vec![self.context_share]),
            (
                SCORE_MIX_WEIGHT,
                vec![1, 2],
                vec![self.score_mix.retrieval, self.score_mix.attention],
            ),
            (SCORE_MIX_BIAS, vec![1], vec![self.score_mix.bias]),
        ];
        let bytes: Vec<(&str, Vec<usize>, Vec<u8>)> = tensors
            .into_iter()
            .map(|(name, shape, values)| {
                let bytes = values.iter().flat_map(|x| x.to_le_bytes()).collect();
                (name, shape, bytes)
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(name, shape, data)| {
                Ok((*name, TensorView::new(Dtype::F32, shape.clone(), data)?))
            })
            .collect::<Result<Vec<_>, RerankError>>()?;
        let metadata = HashMap::from([
            ("format".to_string(), WEIGHTS_FORMAT.to_string()),
            ("heads".to_string(), self.heads.to_string()),
        ]);
        Ok(safetensors::serialize(views, Some(metadata))?)
    }

    /// Reads weights from a safetensors file image. Shapes are checked against each other
    /// (and the head count against the width); call [`RerankWeights::validate`] to check
    /// them against a configuration.
    pub fn from_safetensors(bytes: &[u8]) -> Result<RerankWeights, RerankError> {
        let (_, header) = SafeTensors::read_metadata(bytes)?;
        let metadata = header
            .metadata()
            .as_ref()
            .ok_or_else(|| RerankError::Metadata("no metadata".into()))?;
        match metadata.get("format") {
            Some(format) if format == WEIGHTS_FORMAT => {}
            other => {
                return Err(RerankError::Metadata(format!(
                    "format is {other:?}, expected {WEIGHTS_FORMAT:?}"
                )));
            }
        }
        let heads: usize = metadata
            .get("heads")
            .and_then(|h| h.parse().ok())
            .ok_or_else(|| RerankError::Metadata("`heads` is missing or not a number".into()))?;

        let file = SafeTensors::deserialize(bytes)?;
        let dim = file
            .tensor(Q_PROJ)
            .map_err(|_| RerankError::MissingTensor(Q_PROJ))?
            .shape()
            .first()
            .copied()
            .unwrap_or(0);
        let read = |name: &'static str, shape: &[usize]| read_f32(&file, name, shape);
        let query_fused_mix = read(QUERY_FUSED_MIX, &[1])?;
        let history_gate = read(HISTORY_GATE, &[2])?;
        let context_gate = read(CONTEXT_GATE, &[1])?;
        let context_share = read(CONTEXT_SHARE, &[1])?;
        let mix = read(SCORE_MIX_WEIGHT, &[1, 2])?;
        let bias = read(SCORE_MIX_BIAS, &[1])?;
        let weights = RerankWeights {
            dim,
            heads,
            q_proj: read(Q_PROJ, &[dim, dim])?,
            k_proj: read(K_PROJ, &[dim, dim])?,
            v_proj: read(V_PROJ, &[dim, dim])?,
            query_fused_mix: query_fused_mix[0],
            history_gate: [history_gate[0], history_gate[1]],
            context_gate: context_gate[0],
            context_share: context_share[0],
            score_mix: ScoreMix {
                retrieval: mix[0],
                attention: mix[1],
                bias: bias[0],
            },
        };
        weights.validate(dim, heads)?;
        Ok(weights)
    }

    /// Writes the weights to `path` as safetensors.
    pub fn save(&self, path: &Path) -> Result<(), RerankError> {
        let bytes = self.to_safetensors()?;
        std::fs::write(path, bytes).map_err(|source| RerankError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads weights written by [`RerankWeights::save`] (or by the trainer).
    pub fn load(path: &Path) -> Result<RerankWeights, RerankError> {
        let bytes = std::fs::read(path).map_err(|source| RerankError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        RerankWeights::from_safetensors(&bytes)
    }
}

/// Tensor names of the weights file.
pub const Q_PROJ: &str = "q_proj.weight";
pub const K_PROJ: &str = "k_proj.weight";
pub const V_PROJ: &str = "v_proj.weight";
pub const QUERY_FUSED_MIX: &str = "query_fused_mix";
pub const HISTORY_GATE: &str = "history_gate";
pub const CONTEXT_GATE: &str = "context_gate";
pub const CONTEXT_SHARE: &str = "context_share";
pub const SCORE_MIX_WEIGHT: &str = "score_mix.weight";
pub const SCORE_MIX_BIAS: &str = "score_mix.bias";

fn read_f32(
    file: &SafeTensors<'_>,
    name: &'static str,
    shape: &[usize],
) -> Result<Vec<f32>, RerankError> {
    let view = file
        .tensor(name)
        .map_err(|_| RerankError::MissingTensor(name))?;
    if view.dtype() != Dtype::F32 {
        return Err(RerankError::WeightDtype {
            name,
            found: format!("{:?}", view.dtype()),
        });
    }
    if view.shape() != shape {
        return Err(RerankError::WeightShape {
            name,
            expected: shape.to_vec(),
            found: view.shape().to_vec(),
        });
    }
    Ok(view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn scaled_identity(dim: usize, scale: f32) -> Vec<f32> {
    let mut matrix = vec![0.0; dim * dim];
    for i in 0..dim {
        matrix[i * dim + i] = scale;
    }
    matrix
}

/// `Some(alpha)` when `matrix` (`[dim, dim]`) is exactly `alpha` times the identity: the
/// stage then scales rows instead of multiplying and stores no projected tables.
pub(crate) fn identity_scale(matrix: &[f32], dim: usize) -> Option<f32> {
    let alpha = *matrix.first()?;
    matrix
        .iter()
        .enumerate()
        .all(|(at, &x)| x == if at / dim == at % dim { alpha } else { 0.0 })
        .then_some(alpha)
}
