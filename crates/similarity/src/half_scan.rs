//! Exact top-K of one query, read from a half-precision copy of the item table.
//!
//! At batch size 1 the scan over every item is bound by memory traffic: 62,423 x 384 `f32`
//! is 96 MB per query. The scan reads an `f16` copy instead (48 MB) to get approximate
//! scores `a_j`, and the exact scores are then computed only for the items that can still
//! be in the top K:
//!
//! ```text
//! |a_j - s_j| <= eps = ||q|| max_j ||x_j|| (2^-11 + 2^-14) + sqrt(dim) 2^-25 ||q||
//!                      + 2^-22 (||q|| max_j ||x_j|| + max_j |prior_j|)
//! ```
//!
//! (f16 rounding is 2^-11 relative, 2^-25 absolute below the normal range; the 2^-14 term
//! covers both sums' f32 rounding with room to spare, and the last term the addition of
//! the prior). If `T` is the K-th best approximate score among eligible items, every item
//! of the exact top K has `a_j >= T - 2 eps`: at least K items have `a >= T`, so their
//! exact scores, and hence the exact K-th score, are `>= T - eps`. The survivors of that
//! threshold (typically a few more than K) are rescored with [`hyperrec_dot::dot`], which
//! is bit-identical to the batch kernel, and selected exactly. The result is therefore the
//! same, bit for bit, as the full `f32` scan.

use half::f16;
use rayon::prelude::*;

use hyperrec_catalog::ItemEmbeddings;
use hyperrec_stage::ItemIndex;

use crate::ITEM_BLOCK;
use crate::topk::TopK;

/// Largest magnitude stored in the copy: above it `f16` rounding is no longer relative
/// (65,504 is `f16::MAX`), so tables with such values are scanned in `f32` only.
const LARGEST_VALUE: f32 = 60_000.0;

/// The `f16` copy of an item table and what the error bound needs to know about it.
pub(crate) struct HalfItems {
    rows: Vec<f16>,
    dim: usize,
    max_norm: f32,
}

impl HalfItems {
    /// The copy, or `None` when some value is not finite or too large for `f16`.
    pub(crate) fn new(items: &ItemEmbeddings) -> Option<HalfItems> {
        let values = items.as_slice();
        if !values.iter().all(|x| x.abs() <= LARGEST_VALUE) {
            return None;
        }
        let max_norm = values
            .chunks_exact(items.dim().max(1))
            .map(|row| row.iter().map(|x| x * x).sum::<f32>().sqrt())
            .fold(0.0f32, f32::max);
        Some(HalfItems {
            rows: values.par_iter().map(|&x| f16::from_f32(x)).collect(),
            dim: items.dim(),
            max_norm,
        })
    }

    /// Bytes the copy takes.
    pub(crate) fn bytes(&self) -> usize {
        self.rows.len() * std::mem::size_of::<f16>()
    }
}

/// Buffers of [`select_one`], kept across queries.
#[derive(Default)]
pub(crate) struct ScanScratch {
    approximate: Vec<f32>,
    survivors: Vec<(ItemIndex, f32)>,
}

/// The exact top-`k` of `query · item[j] (+ prior[j])` over eligible items, written best
/// first into `ids`/`scores` (padded), the same as a full `f32` scan would select.
/// Returns `false`, writing nothing, when the query is not finite (the caller then scans
/// in `f32`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn select_one(
    items: &ItemEmbeddings,
    half: &HalfItems,
    query: &[f32],
    prior: Option<&[f32]>,
    excluded: &[ItemIndex],
    scratch: &mut ScanScratch,
    selector: &mut TopK,
    ids: &mut [u32],
    scores: &mut [f32],
) -> bool {
    let dim = half.dim;
    let n_items = items.len();
    let query_norm = query.iter().map(|q| q * q).sum::<f32>().sqrt();
    let largest_prior = prior.map_or(0.0, |p| p.iter().fold(0.0f32, |m, v| m.max(v.abs())));
    if !query_norm.is_finite() || !largest_prior.is_finite() {
        return false;
    }
    let reach = query_norm * half.max_norm;
    let eps = reach * (2f32.powi(-11) + 2f32.powi(-14))
        + (dim as f32).sqrt() * 2f32.powi(-25) * query_norm
        + 2f32.powi(-22) * (reach + largest_prior);

    let approximate = &mut scratch.approximate;
    approximate.resize(n_items, 0.0);
    approximate
        .par_chunks_mut(ITEM_BLOCK)
        .zip(half.rows.par_chunks(ITEM_BLOCK * dim))
        .for_each(|(out, rows)| hyperrec_dot::dot_rows_f16(query, rows, dim, out));
    if let Some(prior) = prior {
        for (a, p) in approximate.iter_mut().zip(prior) {
            *a += p;
        }
    }

    let k = ids.len().min(n_items);
    selector.begin(k);
    selector.offer(approximate, 0, excluded);
    let selected = selector.finish_into(ids, scores);
    // With fewer than k eligible items every one of them is a survivor.
    let threshold = if selected < k || k == 0 {
        f32::NEG_INFINITY
    } else {
        scores[k - 1] - 2.0 * eps
    };

    let survivors = &mut scratch.survivors;
    survivors.clear();
    let mut excluded_rest = excluded;
    for (j, &a) in approximate.iter().enumerate() {
        // NaN is never selected.
        if a.is_nan() || a < threshold {
            continue;
        }
        let item = j as ItemIndex;
        while let Some((&first, rest)) = excluded_rest.split_first()
            && first < item
        {
            excluded_rest = rest;
        }
        if excluded_rest.first() == Some(&item) {
            continue;
        }
        let exact = hyperrec_dot::dot(query, items.row(item));
        survivors.push((item, prior.map_or(exact, |p| exact + p[j])));
    }
    selector.begin(k);
    for &(item, score) in survivors.iter() {
        selector.offer(&[score], item, &[]);
    }
    selector.finish_into(ids, scores);
    true
}
