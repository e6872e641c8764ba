//! The int8 copy of the item table that the batch-1 similarity kernel scores first
//! (`similarity_top_k_one_int8` in `cuda/similarity_one.cu`), and the CPU mirror of the
//! kernel's error bound.
//!
//! Why int8: at batch 1 the fp16 pass streams the whole 48 MB table from device memory per
//! query; the 24 MB int8 copy stays in the H100's 50 MB L2 between queries. Its scores are
//! approximate, so the kernel only uses them to rule items out: with per-row bounds that
//! are *proven* (Cauchy-Schwarz on the quantization residuals plus the floating-point slack
//! of both computations), every item that could be in the exact top-k survives and is
//! rescored with the fp16 pass's own arithmetic. The selection equals the fp16 pass's bit
//! for bit; the int8 copy only changes how much is read.
//!
//! Each row `h` (the fp16 values the exact pass multiplies) gets the scale
//! `s = max |h_d| / 127`, the codes `x_d = round(h_d / s)` and two norms computed in f64 and
//! rounded up: the residual `r >= ||h - s x||` and the code norm `n >= ||s x||`. A row with
//! a non-finite value gets `r = +inf`, which the kernel treats as "no usable bound" (such a
//! query takes its exact slow path).

/// Magnitude of the largest item code.
pub const CODE_LEVELS: f32 = 127.0;
/// Magnitude of the largest query code (the kernel quantizes the query to int16).
pub const QUERY_LEVELS: f32 = 32767.0;
/// Bound on `|q_d - sq q~_d|` in query steps `sq`: half a step of rounding, and slack for
/// the f32 rounding of the scale and its inverse (the kernel's `DQ_STEPS`).
pub const DQ_STEPS: f32 = 0.51;
/// Floats per row in [`QuantizedRows::bounds`]: scale, residual norm, code norm, unused.
pub const BOUND_FLOATS: usize = 4;

/// Item rows as int8 codes with per-row scales and residual norms.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedRows {
    /// `[n_rows, dim]` int8 codes (two's complement bytes).
    pub codes: Vec<u8>,
    /// `[n_rows, BOUND_FLOATS]`: `s`, `r >= ||h - s x||`, `n >= ||s x||`, 0.
    pub bounds: Vec<f32>,
}

/// Quantizes `rows` (`[n, dim]`, row-major; values as the device holds them, i.e. already
/// rounded to fp16) for the int8 first pass.
pub fn quantize_rows(rows: &[f32], dim: usize) -> QuantizedRows {
    assert!(
        dim > 0 && rows.len().is_multiple_of(dim),
        "rows must be whole"
    );
    let n = rows.len() / dim;
    let mut codes = vec![0u8; rows.len()];
    let mut bounds = vec![0.0f32; n * BOUND_FLOATS];
    for ((row, out), bound) in rows
        .chunks_exact(dim)
        .zip(codes.chunks_exact_mut(dim))
        .zip(bounds.chunks_exact_mut(BOUND_FLOATS))
    {
        let (scale, residual, norm) = quantize_row(row, out);
        bound.copy_from_slice(&[scale, residual, norm, 0.0]);
    }
    QuantizedRows { codes, bounds }
}

/// One row: writes its codes and returns (scale, residual norm, code norm).
fn quantize_row(row: &[f32], codes: &mut [u8]) -> (f32, f32, f32) {
    if row.iter().any(|x| !x.is_finite()) {
        codes.fill(0);
        return (0.0, f32::INFINITY, 0.0);
    }
    let max = row.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let scale = max / CODE_LEVELS;
    let (mut residual, mut norm) = (0.0f64, 0.0f64);
    for (&x, code) in row.iter().zip(codes.iter_mut()) {
        let q = if scale > 0.0 {
            (x / scale).round().clamp(-CODE_LEVELS, CODE_LEVELS)
        } else {
            0.0
        };
        *code = (q as i8) as u8;
        // The real number s * q the kernel's bound is about (s as the f32 it reads).
        let approx = f64::from(scale) * f64::from(q);
        residual += (f64::from(x) - approx).powi(2);
        norm += approx * approx;
    }
    (scale, round_up(residual.sqrt()), round_up(norm.sqrt()))
}

/// The smallest f32 at or above `x` (x >= 0, finite), with a relative margin for the f64
/// rounding of the sums.
fn round_up(x: f64) -> f32 {
    let margin = x * (1.0 + 1e-9);
    let y = margin as f32;
    if f64::from(y) >= margin {
        y
    } else {
        y.next_up()
    }
}

/// The query as the kernel quantizes it, for the CPU mirror of its bound.
#[derive(Clone, Debug)]
pub struct QuantizedQuery {
    /// `sq = max |q_d| / 32767`.
    pub scale: f32,
    /// `q~_d = rint(q_d / sq)`, in [-32767, 32767].
    pub codes: Vec<i32>,
    /// `||q||` (f32 sum of squares), +inf when the query has a non-finite value.
    pub norm: f32,
    /// A bound on `||q - sq q~||`: `DQ_STEPS sq sqrt(dim)`.
    pub residual_norm: f32,
}

/// CPU mirror of the kernel's query quantization (same operations; the kernel's sums run in
/// another order, which the bound's slack covers).
pub fn quantize_query(query: &[f32]) -> QuantizedQuery {
    let bad = query.iter().any(|x| !x.is_finite());
    let max = query.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let sum: f32 = query.iter().map(|x| x * x).sum();
    let scale = max / QUERY_LEVELS;
    let inverse = if max > 0.0 { QUERY_LEVELS / max } else { 0.0 };
    let codes = query
        .iter()
        .map(|&x| {
            (x * inverse)
                .round_ties_even()
                .clamp(-QUERY_LEVELS, QUERY_LEVELS) as i32
        })
        .collect();
    QuantizedQuery {
        scale,
        codes,
        norm: if bad { f32::INFINITY } else { sum.sqrt() },
        residual_norm: DQ_STEPS * scale * (query.len() as f32).sqrt(),
    }
}

/// CPU mirror of the kernel's approximate score of one row and its bound (`bound_of`):
/// `(a, B)` with `|exact - a| <= B` for the exact pass's fp32 score `exact`.
pub fn approximate_score(query: &QuantizedQuery, codes: &[u8], bound: &[f32]) -> (f32, f32) {
    let dot: i64 = codes
        .iter()
        .zip(&query.codes)
        .map(|(&c, &q)| i64::from(c as i8) * i64::from(q))
        .sum();
    let (scale, residual, norm) = (bound[0], bound[1], bound[2]);
    let a = (query.scale * scale) * dot as f32;
    let b = (query.norm * (residual + 1e-5 * (norm + residual))
        + query.residual_norm * norm
        + 4e-7 * a.abs())
        * 1.0001;
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn fresh_seed() -> u64 {
        let seed = rand::random();
        eprintln!("seed {seed}");
        seed
    }

    fn to_half(x: f32) -> f32 {
        f16::from_f32(x).to_f32()
    }

    /// The exact pass's score in f64: what the fp32 kernel approximates to ~1e-6.
    fn exact(query: &[f32], row: &[f32]) -> f64 {
        query
            .iter()
            .zip(row)
            .map(|(&q, &h)| f64::from(q) * f64::from(h))
            .sum()
    }

    /// A row of one of several shapes: Gaussian-like, one dominant coordinate, tiny values
    /// (fp16 subnormals), large values, exact zeros.
    fn random_row(rng: &mut StdRng, dim: usize) -> Vec<f32> {
        let kind = rng.random_range(0..5);
        let mut row: Vec<f32> = (0..dim)
            .map(|_| match kind {
                2 => rng.random_range(-1e-6f32..1e-6),
                3 => rng.random_range(-3000.0f32..3000.0),
                4 if rng.random_bool(0.7) => 0.0,
                _ => rng.random_range(-1.0f32..1.0) * rng.random_range(0.0f32..1.0),
            })
            .collect();
        if kind == 1 {
            let spike = rng.random_range(0..dim);
            row[spike] = rng.random_range(-40.0f32..40.0);
        }
        row.iter().map(|&x| to_half(x)).collect()
    }

    #[test]
    fn the_bound_holds_for_random_rows_and_queries() {
        let seed = fresh_seed();
        let mut rng = StdRng::seed_from_u64(seed);
        for case in 0..300 {
            let dim = 128 * rng.random_range(1..=4);
            let rows: Vec<f32> = (0..40).flat_map(|_| random_row(&mut rng, dim)).collect();
            let quantized = quantize_rows(&rows, dim);
            let scale = 10f32.powi(rng.random_range(-3..3));
            let query: Vec<f32> = (0..dim)
                .map(|_| rng.random_range(-1.0f32..1.0) * scale)
                .collect();
            let q = quantize_query(&query);
            let residual: f64 = query
                .iter()
                .zip(&q.codes)
                .map(|(&x, &c)| (f64::from(x) - f64::from(q.scale) * f64::from(c)).powi(2))
                .sum();
            assert!(
                residual.sqrt() <= f64::from(q.residual_norm),
                "seed {seed}, case {case}: query residual {} above its bound {}",
                residual.sqrt(),
                q.residual_norm
            );
            for (j, row) in rows.chunks_exact(dim).enumerate() {
                let (a, b) = approximate_score(
                    &q,
                    &quantized.codes[j * dim..(j + 1) * dim],
                    &quantized.bounds[j * BOUND_FLOATS..(j + 1) * BOUND_FLOATS],
                );
                let e = exact(&query, row);
                assert!(
                    (e - f64::from(a)).abs() <= f64::from(b),
                    "seed {seed}, case {case}, row {j}: exact {e}, approx {a}, bound {b}"
                );
                // Not vacuous: a tenth of |q| |s x| at most (a lone spike of 40 among values
                // below 1 is the widest case here, about 0.05).
                let scale = f64::from(q.norm) * f64::from(quantized.bounds[j * 4 + 2]);
                assert!(
                    f64::from(b) <= 0.1 * scale + 1e-30,
                    "seed {seed}, case {case}, row {j}: bound {b} for |q||x| {scale}"
                );
            }
        }
    }

    #[test]
    fn codes_reconstruct_rows_within_half_a_step() {
        let seed = fresh_seed();
        let mut rng = StdRng::seed_from_u64(seed);
        let dim = 384;
        let rows: Vec<f32> = (0..50).flat_map(|_| random_row(&mut rng, dim)).collect();
        let quantized = quantize_rows(&rows, dim);
        for (j, row) in rows.chunks_exact(dim).enumerate() {
            let scale = quantized.bounds[j * BOUND_FLOATS];
            let max = row.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            assert_eq!(scale, max / CODE_LEVELS, "seed {seed}, row {j}");
            let mut residual = 0.0f64;
            for (d, &x) in row.iter().enumerate() {
                let code = quantized.codes[j * dim + d] as i8;
                let back = f64::from(scale) * f64::from(code);
                assert!(
                    (f64::from(x) - back).abs() <= f64::from(scale) * 0.5001,
                    "seed {seed}, row {j}, dim {d}: {x} vs {back}"
                );
                residual += (f64::from(x) - back).powi(2);
            }
            assert!(f64::from(quantized.bounds[j * BOUND_FLOATS + 1]) >= residual.sqrt());
        }
    }

    #[test]
    fn non_finite_rows_and_queries_have_no_usable_bound() {
        let mut row = vec![0.5f32; 128];
        row[7] = f32::NAN;
        let quantized = quantize_rows(&row, 128);
        assert_eq!(quantized.bounds[1], f32::INFINITY);
        let mut query = vec![0.1f32; 128];
        query[3] = f32::INFINITY;
        assert_eq!(quantize_query(&query).norm, f32::INFINITY);
        let zero = quantize_query(&[0.0; 128]);
        assert_eq!((zero.scale, zero.norm, zero.residual_norm), (0.0, 0.0, 0.0));
        assert!(zero.codes.iter().all(|&c| c == 0));
    }
}
