//! Inner-product kernels: `out[q, j] = queries[q] · items[j]` over blocks of rows.
//!
//! Every query/item pair is reduced in exactly the same order whatever block shape computes
//! it (eight lane accumulators over `dim / 8` chunks in ascending order, then a fixed
//! reduction tree, then the scalar tail), so a score does not depend on how a batch was
//! tiled or how many queries shared a block: batch scoring, `hyperrec_similarity::score_all` and the
//! naive loops in tests agree bit for bit on the same machine.
//!
//! On x86-64 CPUs with AVX2 and FMA (detected once at run time) each pair accumulates in one
//! AVX2 register with fused multiply-adds; elsewhere portable loops over fixed
//! `[f32; LANES]` accumulators, which LLVM vectorizes for the build target, do the same
//! arithmetic without fusion. One process always uses one of the two.

use std::sync::OnceLock;

mod half_rows;
pub use half_rows::dot_rows_f16;

/// Width of one accumulator: one AVX2 register of `f32`.
const LANES: usize = 8;

/// `acc + a * b`, fused when the kernel is compiled for FMA.
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, acc: f32) -> f32 {
    if FMA { a.mul_add(b, acc) } else { a * b + acc }
}

/// Fixed reduction tree of one pair's lane accumulators.
#[inline(always)]
fn reduce(acc: &[f32; LANES]) -> f32 {
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// Scalar tail of one pair (the `dim % LANES` last coordinates), in ascending order.
#[inline(always)]
fn tail<const FMA: bool>(q: &[f32], x: &[f32]) -> f32 {
    q.iter()
        .zip(x)
        .fold(0.0, |acc, (&a, &b)| madd::<FMA>(a, b, acc))
}

/// How a block shape computes its `Q x I` dot products; see [`Portable`] and [`Avx2Fma`].
trait DotKernel {
    /// Dot products of `Q` queries with `I` items at once: every loaded query chunk is used
    /// `I` times and every item chunk `Q` times, which keeps the kernel off the load ports.
    /// Every slice holds the same number of values.
    fn dots<const Q: usize, const I: usize>(
        queries: [&[f32]; Q],
        items: [&[f32]; I],
    ) -> [[f32; I]; Q];
}

/// Fixed-size array loops that LLVM vectorizes for the build target (SSE2 on x86-64).
struct Portable;

impl DotKernel for Portable {
    #[inline(always)]
    fn dots<const Q: usize, const I: usize>(
        queries: [&[f32]; Q],
        items: [&[f32]; I],
    ) -> [[f32; I]; Q] {
        portable_dots::<false, Q, I>(queries, items)
    }
}

#[inline(always)]
fn portable_dots<const FMA: bool, const Q: usize, const I: usize>(
    queries: [&[f32]; Q],
    items: [&[f32]; I],
) -> [[f32; I]; Q] {
    let dim = queries[0].len();
    let body = dim - dim % LANES;
    let mut acc = [[[0.0f32; LANES]; I]; Q];
    let mut c = 0;
    while c < body {
        let mut q_lanes = [[0.0f32; LANES]; Q];
        for (lanes, query) in q_lanes.iter_mut().zip(&queries) {
            lanes.copy_from_slice(&query[c..c + LANES]);
        }
        let mut x_lanes = [[0.0f32; LANES]; I];
        for (lanes, item) in x_lanes.iter_mut().zip(&items) {
            lanes.copy_from_slice(&item[c..c + LANES]);
        }
        for qi in 0..Q {
            for ii in 0..I {
                for l in 0..LANES {
                    acc[qi][ii][l] = madd::<FMA>(q_lanes[qi][l], x_lanes[ii][l], acc[qi][ii][l]);
                }
            }
        }
        c += LANES;
    }
    let mut out = [[0.0f32; I]; Q];
    for qi in 0..Q {
        for ii in 0..I {
            out[qi][ii] =
                reduce(&acc[qi][ii]) + tail::<FMA>(&queries[qi][body..], &items[ii][body..]);
        }
    }
    out
}

/// Items handled together by the register-blocked kernel.
const ITEM_GROUP: usize = 4;

/// One query against every item row of `items`: `out[j] = query · items[j]`.
#[inline(always)]
fn query_rows<K: DotKernel>(query: &[f32], items: &[f32], dim: usize, out: &mut [f32]) {
    let mut rows = items.chunks_exact(dim);
    let mut outs = out.chunks_exact_mut(ITEM_GROUP);
    for group in outs.by_ref() {
        let (Some(a), Some(b), Some(c), Some(d)) =
            (rows.next(), rows.next(), rows.next(), rows.next())
        else {
            return;
        };
        let [r] = K::dots::<1, 4>([query], [a, b, c, d]);
        group.copy_from_slice(&r);
    }
    for (o, row) in outs.into_remainder().iter_mut().zip(rows) {
        *o = K::dots::<1, 1>([query], [row])[0][0];
    }
}

/// Two queries against every item row of `items`.
#[inline(always)]
fn query_pair_rows<K: DotKernel>(
    q0: &[f32],
    q1: &[f32],
    items: &[f32],
    dim: usize,
    out0: &mut [f32],
    out1: &mut [f32],
) {
    let mut rows = items.chunks_exact(dim);
    let mut outs0 = out0.chunks_exact_mut(ITEM_GROUP);
    let mut outs1 = out1.chunks_exact_mut(ITEM_GROUP);
    for (g0, g1) in outs0.by_ref().zip(outs1.by_ref()) {
        let (Some(a), Some(b), Some(c), Some(d)) =
            (rows.next(), rows.next(), rows.next(), rows.next())
        else {
            return;
        };
        let [r0, r1] = K::dots::<2, 4>([q0, q1], [a, b, c, d]);
        g0.copy_from_slice(&r0);
        g1.copy_from_slice(&r1);
    }
    let rest0 = outs0.into_remainder();
    let rest1 = outs1.into_remainder();
    for ((o0, o1), row) in rest0.iter_mut().zip(rest1.iter_mut()).zip(rows) {
        let [[s0], [s1]] = K::dots::<2, 1>([q0, q1], [row]);
        *o0 = s0;
        *o1 = s1;
    }
}

/// `out[q * out_stride + j] = queries[q] · items[j]` for every query row and item row.
#[inline(always)]
fn block_impl<K: DotKernel>(
    queries: &[f32],
    items: &[f32],
    dim: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    let n_items = items.len() / dim;
    let mut query_rows_iter = queries.chunks_exact(dim);
    let mut out_rows = out.chunks_mut(out_stride);
    loop {
        match (query_rows_iter.next(), out_rows.next()) {
            (Some(q0), Some(o0)) => match (query_rows_iter.next(), out_rows.next()) {
                (Some(q1), Some(o1)) => {
                    query_pair_rows::<K>(q0, q1, items, dim, &mut o0[..n_items], &mut o1[..n_items])
                }
                _ => {
                    query_rows::<K>(q0, items, dim, &mut o0[..n_items]);
                    return;
                }
            },
            _ => return,
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn block_avx2_fma(queries: &[f32], items: &[f32], dim: usize, out: &mut [f32], out_stride: usize) {
    block_impl::<Avx2Fma>(queries, items, dim, out, out_stride);
}

fn block_portable(queries: &[f32], items: &[f32], dim: usize, out: &mut [f32], out_stride: usize) {
    block_impl::<Portable>(queries, items, dim, out, out_stride);
}

/// Explicit AVX2 + FMA registers: one `__m256` accumulator per pair.
#[cfg(target_arch = "x86_64")]
struct Avx2Fma;

#[cfg(target_arch = "x86_64")]
impl DotKernel for Avx2Fma {
    #[inline(always)]
    fn dots<const Q: usize, const I: usize>(
        queries: [&[f32]; Q],
        items: [&[f32]; I],
    ) -> [[f32; I]; Q] {
        // SAFETY: `Avx2Fma` is only used by `block_avx2_fma`, which `dot_block` calls only
        // after detecting AVX2 and FMA on this CPU.
        unsafe { avx2::dots::<Q, I>(queries, items) }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{LANES, tail};

    /// Sum of the lanes in the order of [`super::reduce`].
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn reduce(v: __m256) -> f32 {
        let halves = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
        _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps::<1>(pairs, pairs)))
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) fn dots<const Q: usize, const I: usize>(
        queries: [&[f32]; Q],
        items: [&[f32]; I],
    ) -> [[f32; I]; Q] {
        let dim = queries[0].len();
        let body = dim - dim % LANES;
        debug_assert!(
            queries.iter().all(|q| q.len() == dim) && items.iter().all(|x| x.len() == dim)
        );
        let mut acc = [[_mm256_setzero_ps(); I]; Q];
        let mut c = 0;
        while c < body {
            let mut q_lanes = [_mm256_setzero_ps(); Q];
            for (lanes, query) in q_lanes.iter_mut().zip(&queries) {
                // SAFETY: `query` holds `dim >= c + LANES` values, see the item loads below.
                *lanes = unsafe { _mm256_loadu_ps(query.as_ptr().add(c)) };
            }
            for ii in 0..I {
                // SAFETY: every slice holds `dim >= c + LANES` values (all rows come from
                // `chunks_exact(dim)`), so each 8-wide unaligned load stays in bounds.
                let x = unsafe { _mm256_loadu_ps(items[ii].as_ptr().add(c)) };
                for qi in 0..Q {
                    acc[qi][ii] = _mm256_fmadd_ps(q_lanes[qi], x, acc[qi][ii]);
                }
            }
            c += LANES;
        }
        let mut out = [[0.0f32; I]; Q];
        for qi in 0..Q {
            for ii in 0..I {
                out[qi][ii] =
                    reduce(acc[qi][ii]) + tail::<true>(&queries[qi][body..], &items[ii][body..]);
            }
        }
        out
    }
}

/// Instruction set the kernels run with, detected once per process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
}

fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx2Fma;
        }
        Isa::Portable
    })
}

/// `out[q * out_stride + j] = queries[q] · items[j]`, for `queries` `[nq, dim]` and `items`
/// `[ni, dim]` row-major. Callers guarantee `dim > 0`, whole rows, and that `out` holds
/// `nq` rows of `out_stride >= ni` (the last row may stop at `ni`).
pub fn dot_block(queries: &[f32], items: &[f32], dim: usize, out: &mut [f32], out_stride: usize) {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa()` returns `Avx2Fma` only after detecting both features on this CPU.
        Isa::Avx2Fma => unsafe { block_avx2_fma(queries, items, dim, out, out_stride) },
        Isa::Portable => block_portable(queries, items, dim, out, out_stride),
    }
}

/// Plain inner product with the same reduction order as [`dot_block`] (for tests and
/// single pairs).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut out = [0.0f32];
    dot_block(a, b, a.len().max(1), &mut out, 1);
    out[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_shapes_agree_bit_for_bit() {
        // dim 19 exercises the scalar tail; 7 items exercise the item-group remainder and
        // 3 queries the odd-query path.
        let dim = 19;
        let queries: Vec<f32> = (0..3 * dim)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.37)
            .collect();
        let items: Vec<f32> = (0..7 * dim)
            .map(|i| ((i * 53 % 13) as f32 - 6.0) * 0.21)
            .collect();
        let mut block = vec![0.0; 3 * 7];
        dot_block(&queries, &items, dim, &mut block, 7);
        for q in 0..3 {
            for j in 0..7 {
                let single = dot(
                    &queries[q * dim..(q + 1) * dim],
                    &items[j * dim..(j + 1) * dim],
                );
                assert_eq!(
                    block[q * 7 + j].to_bits(),
                    single.to_bits(),
                    "q {q} item {j}"
                );
                let naive: f64 = (0..dim)
                    .map(|d| queries[q * dim + d] as f64 * items[j * dim + d] as f64)
                    .sum();
                assert!(
                    (block[q * 7 + j] as f64 - naive).abs() < 1e-4,
                    "q {q} item {j}"
                );
            }
        }
    }

    #[test]
    fn portable_and_detected_kernels_agree() {
        let dim = 384;
        let queries: Vec<f32> = (0..3 * dim)
            .map(|i| ((i * 29 % 17) as f32 - 8.0) * 0.05)
            .collect();
        let items: Vec<f32> = (0..9 * dim)
            .map(|i| ((i * 41 % 19) as f32 - 9.0) * 0.04)
            .collect();
        let mut detected = vec![0.0; 3 * 9];
        let mut portable = vec![0.0; 3 * 9];
        dot_block(&queries, &items, dim, &mut detected, 9);
        block_portable(&queries, &items, dim, &mut portable, 9);
        for (j, (a, b)) in detected.iter().zip(&portable).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * a.abs().max(1.0),
                "pair {j}: {a} vs {b}"
            );
        }
    }
}
