//! EASE (Steck 2019): a closed-form linear item-item autoencoder.

use faer::linalg::solvers::{DenseSolveCore, Llt};
use faer::{Mat, Side};
use hyperrec_stage::ItemIndex;
use rayon::prelude::*;

use crate::matrix::{ItemMatrix, cooccurrence};
use crate::{CollabError, Interactions};

/// EASE^R: the item-item weights `B` minimizing `||X - X B||² + λ ||B||²` subject to
/// `diag(B) = 0`, for the binary training matrix `X`. Closed form (Steck 2019):
/// `G = XᵀX + λI`, `P = G⁻¹`, `B = -P / diag(P)` (column-wise), `diag(B) = 0`.
///
/// `G` is symmetric positive definite for `λ > 0`, so `P` comes from a Cholesky (LLT)
/// factorization, in f64, over the items that appear in training only; `B` is kept in
/// f32 ([`ItemMatrix`]). A user's scores are `x_u B`: the sum of the rows of every item
/// they interacted with.
#[derive(Clone, Debug, PartialEq)]
pub struct Ease {
    lambda: f64,
    weights: ItemMatrix,
}

impl Ease {
    /// The L2 regularization the reference protocol uses on MovieLens small.
    pub const DEFAULT_LAMBDA: f64 = 300.0;

    /// Solves for `B` on `interactions` (every rating counts as an interaction) with
    /// regularization `lambda` (finite and > 0).
    pub fn fit(interactions: &Interactions, lambda: f64) -> Result<Self, CollabError> {
        if !(lambda.is_finite() && lambda > 0.0) {
            return Err(CollabError::InvalidLambda(lambda));
        }
        let (active, compact) = ItemMatrix::active_items(interactions);
        let n = active.len();
        let inverse = {
            let counts = cooccurrence(interactions, &compact, n);
            let gram = Mat::<f64>::from_fn(n, n, |i, j| {
                counts[i * n + j] as f64 + if i == j { lambda } else { 0.0 }
            });
            drop(counts);
            let llt = Llt::new(gram.as_ref(), Side::Lower)
                .map_err(|_| CollabError::NotPositiveDefinite)?;
            drop(gram);
            llt.inverse()
        };
        let diagonal: Vec<f64> = (0..n).map(|j| inverse[(j, j)]).collect();
        if diagonal.iter().any(|&d| !(d.is_finite() && d > 0.0)) {
            return Err(CollabError::NotPositiveDefinite);
        }

        let mut weights = vec![0.0f32; n * n];
        if n > 0 {
            weights.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
                // P is symmetric: row i of P is its (contiguous) column i.
                let p_row = inverse.col_as_slice(i);
                for (j, w) in row.iter_mut().enumerate() {
                    *w = if i == j {
                        0.0
                    } else {
                        (-p_row[j] / diagonal[j]) as f32
                    };
                }
            });
        }
        Ok(Ease {
            lambda,
            weights: ItemMatrix::new(active, compact, weights),
        })
    }

    /// The regularization this model was fitted with.
    pub fn lambda(&self) -> f64 {
        self.lambda
    }

    /// The weight matrix `B`.
    pub fn matrix(&self) -> &ItemMatrix {
        &self.weights
    }

    /// Writes row `item` of `B` (its weights towards every catalog item) into `out`.
    pub fn row(&self, item: ItemIndex, out: &mut [f32]) -> Result<(), CollabError> {
        self.weights.row(item, out)
    }

    /// Writes every catalog item's score `x_u B` for a user with `history` into `out`:
    /// each distinct history item counts once, whatever its rating (binary input, as in
    /// training).
    pub fn score_user(
        &self,
        history: &[(ItemIndex, f32)],
        out: &mut [f32],
    ) -> Result<(), CollabError> {
        let items: Vec<ItemIndex> = history.iter().map(|&(item, _)| item).collect();
        self.weights.sum_rows(&items, out)
    }
}
