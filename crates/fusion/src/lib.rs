//! Fusion stage: blends the query embedding with the user's (and companions') profile.
//!
//! For request `i` with query embedding `q` (unit length):
//!
//! ```text
//! u     = normalize(sum of the profiles of the requester and every found companion)
//! fused = normalize(alpha * q + (1 - alpha) * u)
//! ```
//!
//! `u` is the group aggregate: a request with companions is served for the group as a
//! whole, each member's profile weighing the same. Users without a profile (unknown, or
//! with only neutral ratings) and unknown companions add nothing. When nobody in the
//! request has a profile, or the aggregate vanishes (profiles that cancel out), the
//! request is a cold start and `fused = q`. The same fallback applies when the blend
//! itself vanishes (`alpha = 0.5` and `u = -q`).
//!
//! Layouts are the GPU path's: `query_embeddings` and `fused` are row-major `[n, dim]`
//! `f32`, profiles are rows of the user table's `[n_users, dim]` matrix.

use rayon::prelude::*;
use thiserror::Error;

use hyperrec_catalog::{SharedUsers, UserTable};
use hyperrec_stage::{Batch, Cpu, Stage, StageError, UserIndex};

/// Why a fusion stage cannot be built.
#[derive(Debug, Error, PartialEq)]
pub enum FusionError {
    #[error("alpha must be in [0, 1], got {0}")]
    InvalidAlpha(f32),
}

/// Settings of the fusion stage.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FusionConfig {
    /// Weight of the query against the user side, in `[0, 1]`: 1 ignores the user, 0
    /// ignores the query (except for cold starts).
    pub alpha: f32,
}

impl Default for FusionConfig {
    fn default() -> Self {
        FusionConfig { alpha: 0.5 }
    }
}

/// Below this norm a vector is treated as vanishing (not normalizable).
const MIN_NORM: f32 = 1e-6;

/// Batches at least this large fuse their rows in parallel; smaller ones are not worth the
/// fork-join.
const PARALLEL_ROWS: usize = 64;

/// `out = normalize(alpha * query + (1 - alpha) * user)`, or a copy of `query` when there is
/// no `user` vector (cold start) or the blend vanishes. `user` is expected unit length (a
/// profile or a normalized group aggregate); `query`, `user` and `out` have the same length.
pub fn fuse(query: &[f32], user: Option<&[f32]>, alpha: f32, out: &mut [f32]) {
    match user {
        Some(user) => {
            for ((o, &q), &u) in out.iter_mut().zip(query).zip(user) {
                *o = alpha * q + (1.0 - alpha) * u;
            }
            if !normalize(out) {
                out.copy_from_slice(query);
            }
        }
        None => out.copy_from_slice(query),
    }
}

/// Scales `v` to unit length; returns false (leaving `v` as is) when it vanishes.
fn normalize(v: &mut [f32]) -> bool {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !norm.is_finite() || norm <= MIN_NORM {
        return false;
    }
    let inv = 1.0 / norm;
    v.iter_mut().for_each(|x| *x *= inv);
    true
}

/// Writes the normalized sum of the profiles of `members` into `out`; returns false when
/// no member has a profile or the sum vanishes.
fn aggregate_into(
    users: &UserTable,
    members: impl Iterator<Item = UserIndex>,
    out: &mut [f32],
) -> bool {
    out.fill(0.0);
    let mut any = false;
    for member in members {
        if let Some(profile) = users.embedding(member) {
            any = true;
            for (o, &p) in out.iter_mut().zip(profile) {
                *o += p;
            }
        }
    }
    any && normalize(out)
}

/// The CPU fusion stage (`"fusion"`).
///
/// Reads `query_embeddings`, `requests[i].user` and `requests[i].context.companions`;
/// writes `fused`, `notes[i].user`, `notes[i].companions` (rows of the companions found,
/// without duplicates or the requester) and `notes[i].cold_start`.
pub struct Fusion {
    users: SharedUsers,
    alpha: f32,
}

impl Fusion {
    /// A fusion stage reading profiles from `users`; fails unless `alpha` is in `[0, 1]`.
    pub fn new(users: SharedUsers, config: FusionConfig) -> Result<Self, FusionError> {
        if !(0.0..=1.0).contains(&config.alpha) {
            return Err(FusionError::InvalidAlpha(config.alpha));
        }
        Ok(Fusion {
            users,
            alpha: config.alpha,
        })
    }

    pub fn alpha(&self) -> f32 {
        self.alpha
    }
}

impl Stage<Cpu> for Fusion {
    fn name(&self) -> &'static str {
        "fusion"
    }

    fn run(&mut self, _device: &Cpu, batch: &mut Batch<Cpu>) -> Result<(), StageError> {
        let n = batch.len();
        let dim = batch.dim;
        let users = self.users.read();
        if users.dim() != dim || batch.query_embeddings.len() != n * dim || dim == 0 {
            return Err(StageError::BatchShape {
                stage: "fusion",
                expected: format!("query_embeddings [{n}, {}]", users.dim()),
                found: format!("{} values of width {dim}", batch.query_embeddings.len()),
            });
        }
        batch.fused.resize(n * dim, 0.0);

        // Resolve who is in each request (cheap hash lookups, done once, in order).
        for (notes, request) in batch.notes.iter_mut().zip(&batch.requests) {
            notes.user = users.index_of(request.user);
            notes.companions.clear();
            for companion in &request.context.companions {
                if let Some(row) = users.index_of(*companion)
                    && Some(row) != notes.user
                    && !notes.companions.contains(&row)
                {
                    notes.companions.push(row);
                }
            }
        }

        // Each fused row first receives the group aggregate, then is blended in place, so
        // no scratch is needed and rows are independent (parallel for large batches).
        let alpha = self.alpha;
        let fuse_row =
            |((fused, query), notes): ((&mut [f32], &[f32]), &mut hyperrec_stage::RequestNotes)| {
                let members = notes
                    .user
                    .into_iter()
                    .chain(notes.companions.iter().copied());
                let has_user_side = aggregate_into(&users, members, fused);
                notes.cold_start = !has_user_side;
                if has_user_side {
                    for (f, &q) in fused.iter_mut().zip(query) {
                        *f = alpha * q + (1.0 - alpha) * *f;
                    }
                    if !normalize(fused) {
                        fused.copy_from_slice(query);
                    }
                } else {
                    fused.copy_from_slice(query);
                }
            };
        if n >= PARALLEL_ROWS {
            batch
                .fused
                .par_chunks_exact_mut(dim)
                .zip(batch.query_embeddings.par_chunks_exact(dim))
                .zip(batch.notes.par_iter_mut())
                .for_each(fuse_row);
        } else {
            batch
                .fused
                .chunks_exact_mut(dim)
                .zip(batch.query_embeddings.chunks_exact(dim))
                .zip(batch.notes.iter_mut())
                .for_each(fuse_row);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
