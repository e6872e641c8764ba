//! One query against rows stored in half precision: `out[j] = query · f32(items[j])`.
//!
//! Half the bytes of `f32` rows, so a memory-bound scan of a large catalog reads half as
//! much. Each `f16` value is within 2^-11 (relative) of the `f32` it was rounded from, so
//! `|query · f16(x) - query · x| <= 2^-11 ||query|| ||x||` plus float summation error:
//! callers that need exact scores use these as a filter and rescore the survivors with
//! [`crate::dot`] (see `hyperrec_similarity`).

use half::f16;

use crate::LANES;

/// Items handled together by the register-blocked kernel.
const ITEM_GROUP: usize = 4;

/// `out[j] = query · items[j]` for every `dim`-wide row of `items` (`out` holds one value
/// per row). Callers guarantee `dim > 0`, `query.len() == dim` and whole rows.
pub fn dot_rows_f16(query: &[f32], items: &[f16], dim: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: `has_f16c()` detected AVX2, FMA and F16C on this CPU.
        unsafe { rows_f16c(query, items, dim, out) };
        return;
    }
    rows_portable(query, items, dim, out);
}

#[cfg(target_arch = "x86_64")]
fn has_f16c() -> bool {
    static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DETECTED.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    })
}

fn rows_portable(query: &[f32], items: &[f16], dim: usize, out: &mut [f32]) {
    for (o, row) in out.iter_mut().zip(items.chunks_exact(dim)) {
        let mut acc = [0.0f32; LANES];
        let body = dim - dim % LANES;
        for (q, x) in query[..body]
            .chunks_exact(LANES)
            .zip(row[..body].chunks_exact(LANES))
        {
            for l in 0..LANES {
                acc[l] += q[l] * x[l].to_f32();
            }
        }
        let tail: f32 = query[body..]
            .iter()
            .zip(&row[body..])
            .map(|(q, x)| q * x.to_f32())
            .sum();
        *o = crate::reduce(&acc) + tail;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn rows_f16c(query: &[f32], items: &[f16], dim: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;

    let body = dim - dim % LANES;
    let tail = |row: &[f16]| -> f32 {
        query[body..]
            .iter()
            .zip(&row[body..])
            .map(|(q, x)| q * x.to_f32())
            .sum()
    };
    let n_rows = out.len().min(items.len() / dim);
    let grouped = n_rows - n_rows % ITEM_GROUP;
    for first in (0..grouped).step_by(ITEM_GROUP) {
        let group_rows: [&[f16]; ITEM_GROUP] =
            std::array::from_fn(|i| &items[(first + i) * dim..(first + i + 1) * dim]);
        let mut acc = [_mm256_setzero_ps(); ITEM_GROUP];
        let mut col = 0;
        while col < body {
            // SAFETY: `query` and every row hold `dim >= col + LANES` values, so each
            // 8-wide load (32 bytes of f32, 16 bytes of f16) stays in bounds.
            let q = unsafe { _mm256_loadu_ps(query.as_ptr().add(col)) };
            for (acc, row) in acc.iter_mut().zip(&group_rows) {
                // SAFETY: as above.
                let halves = unsafe { _mm_loadu_si128(row.as_ptr().add(col).cast::<__m128i>()) };
                *acc = _mm256_fmadd_ps(q, _mm256_cvtph_ps(halves), *acc);
            }
            col += LANES;
        }
        for (i, (acc, row)) in acc.iter().zip(&group_rows).enumerate() {
            let mut lanes = [0.0f32; LANES];
            // SAFETY: `lanes` holds exactly 8 f32.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *acc) };
            out[first + i] = crate::reduce(&lanes) + tail(row);
        }
    }
    rows_portable(
        query,
        &items[grouped * dim..n_rows * dim],
        dim,
        &mut out[grouped..n_rows],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x5eed, |d| d.as_nanos() as u64)
    }

    /// xorshift: fresh values each run without a dependency.
    fn values(state: &mut u64, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                (*state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn half_rows_score_within_the_rounding_bound_and_kernels_agree() {
        let initial = seed() | 1;
        let mut state = initial;
        for dim in [384, 19, 8, 3] {
            let rows = 11;
            let query = values(&mut state, dim);
            let exact_rows = values(&mut state, rows * dim);
            let halves: Vec<f16> = exact_rows.iter().map(|&x| f16::from_f32(x)).collect();
            let mut detected = vec![0.0; rows];
            let mut portable = vec![0.0; rows];
            dot_rows_f16(&query, &halves, dim, &mut detected);
            rows_portable(&query, &halves, dim, &mut portable);
            let query_norm = query.iter().map(|q| q * q).sum::<f32>().sqrt();
            for j in 0..rows {
                let row = &exact_rows[j * dim..(j + 1) * dim];
                let exact: f64 = query
                    .iter()
                    .zip(row)
                    .map(|(&q, &x)| q as f64 * x as f64)
                    .sum();
                let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
                let bound = (2f64.powi(-11) + 1e-5) * (query_norm * norm) as f64;
                assert!(
                    (detected[j] as f64 - exact).abs() <= bound,
                    "seed {initial} dim {dim} row {j}: {} vs {exact}",
                    detected[j]
                );
                assert!(
                    (detected[j] - portable[j]).abs() <= 1e-5 * query_norm * norm,
                    "seed {initial} dim {dim} row {j}: kernels differ"
                );
            }
        }
    }
}
