// The GPU temporal cache: hot similarity rows stored as int8 with one fp32 scale per row
// (built from fp16 GEMM output or uploaded rows), the history prior gathered from them, and
// single-row extraction for "similar to X".
#include <cuda_fp16.h>
#include <stdint.h>

// out[r, :] = items[ids[r], :] for r < n (fp16 rows of `dim`, dim a multiple of 8): the hot
// items' embeddings packed for the rebuild GEMM. One thread per 16 bytes.
extern "C" __global__ void gather_rows(const uint4* __restrict__ items, unsigned dim,
                                       const unsigned* __restrict__ ids, unsigned n,
                                       uint4* __restrict__ out) {
    const unsigned vecs = dim / 8;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (size_t)n * vecs;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / vecs, v = i % vecs;
        out[i] = items[(size_t)ids[r] * vecs + v];
    }
}

// Quantizes `rows` fp16 rows (`src`, leading dimension `src_ld`, a multiple of 8) of
// `n_cols` values to int8 (`dst`, leading dimension `dst_ld`, a multiple of 16, padding
// written 0) with scale = max |x| / 127 per row, stored in `scales`; x ~= scale * q.
// Symmetric rounding to nearest, so the error of one value is at most scale / 2. One block
// of 256 per row; 16-byte loads of 8 halves, 8-byte stores (the second pass re-reads the
// row from L1/L2).
extern "C" __global__ void __launch_bounds__(256)
quantize_rows(const __half* __restrict__ src, unsigned src_ld, unsigned n_cols,
              signed char* __restrict__ dst, unsigned dst_ld, float* __restrict__ scales) {
    __shared__ float warp_max[8];
    const __half* row = src + (size_t)blockIdx.x * src_ld;
    signed char* out = dst + (size_t)blockIdx.x * dst_ld;
    const unsigned nvec = (n_cols + 7) / 8;
    float m = 0.f;
    for (unsigned v = threadIdx.x; v < nvec; v += blockDim.x) {
        const uint4 raw = reinterpret_cast<const uint4*>(row)[v];
        const __half* h = reinterpret_cast<const __half*>(&raw);
#pragma unroll
        for (unsigned e = 0; e < 8; ++e) {
            const float x = fabsf(__half2float(h[e]));
            // Columns past n_cols are padding; NaN is stored as 0 and must not poison the scale.
            if (v * 8 + e < n_cols && x == x) m = fmaxf(m, x);
        }
    }
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = m;
    __syncthreads();
    m = warp_max[0];
    for (int w = 1; w < 8; ++w) m = fmaxf(m, warp_max[w]);
    const float inv = m > 0.f ? 127.f / m : 0.f;
    if (threadIdx.x == 0) scales[blockIdx.x] = m / 127.f;
    for (unsigned v = threadIdx.x; v < dst_ld / 8; v += blockDim.x) {
        uint4 raw = make_uint4(0u, 0u, 0u, 0u);
        if (v < nvec) raw = reinterpret_cast<const uint4*>(row)[v];
        const __half* h = reinterpret_cast<const __half*>(&raw);
        union {
            signed char q[8];
            uint2 packed;
        } o;
#pragma unroll
        for (unsigned e = 0; e < 8; ++e) {
            const float x = __half2float(h[e]) * inv;
            o.q[e] = (v * 8 + e < n_cols && x == x)
                         ? (signed char)fmaxf(-127.f, fminf(127.f, rintf(x)))
                         : (signed char)0;
        }
        reinterpret_cast<uint2*>(out)[v] = o.packed;
    }
}

// out[q, :] = sum over e in offsets[q]..offsets[q+1] of weights[e] * items[ids[e], :]
// (fp16 item rows of `dim`, fp32 out): each query's weighted history, so a history term
// that is linear in the embeddings becomes one extra query vector. One block per query,
// one thread per coordinate (dim <= 1024).
extern "C" __global__ void combine_rows(const __half* __restrict__ items, unsigned dim,
                                        const unsigned* __restrict__ offsets,
                                        const unsigned* __restrict__ ids,
                                        const float* __restrict__ weights,
                                        float* __restrict__ out) {
    const unsigned q = blockIdx.x;
    const unsigned begin = offsets[q], end = offsets[q + 1];
    for (unsigned d = threadIdx.x; d < dim; d += blockDim.x) {
        float acc = 0.f;
        for (unsigned e = begin; e < end; ++e)
            acc += weights[e] * __half2float(items[(size_t)ids[e] * dim + d]);
        out[(size_t)q * dim + d] = acc;
    }
}

// out[i] = a[i] + b[i] for i < len.
extern "C" __global__ void add_vectors(const float* __restrict__ a, const float* __restrict__ b,
                                       float* __restrict__ out, unsigned len) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < len; i += gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
}

// Sets element (r, cols[r]) of an fp16 matrix (leading dimension `ld`) to NaN for r < n:
// the hot item itself, which "similar to X" never returns (the top-K kernel skips NaN).
extern "C" __global__ void mask_diagonal(__half* __restrict__ m, unsigned ld,
                                         const unsigned* __restrict__ cols, unsigned n) {
    const unsigned r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r < n) m[(size_t)r * ld + cols[r]] = __ushort_as_half((unsigned short)0x7e00u);
}

// prior[q, j] = sum over e in offsets[q]..offsets[q+1] of weights[e] * scales[slots[e]] *
//               rows[slots[e], j]  (+ miss[q, j] when has_miss[q]) (+ prior[q, j] when
//               accumulate: rows the host computed for items that are not hot)
// for j < n_items: the history term of query q from its hot rows (int8, leading dimension
// `row_ld`, a multiple of 16) plus the scores of its combined non-hot history (`miss`,
// fp16, leading dimension `miss_ld`, a multiple of 8; null when no query has one).
// Grid (column tiles of 4096, queries); each thread owns 16 consecutive columns: one
// 16-byte load per hot row.
extern "C" __global__ void __launch_bounds__(256)
cache_prior(const signed char* __restrict__ rows, unsigned row_ld,
            const float* __restrict__ scales, const unsigned* __restrict__ offsets,
            const unsigned* __restrict__ slots, const float* __restrict__ weights,
            const __half* __restrict__ miss, unsigned miss_ld,
            const unsigned char* __restrict__ has_miss, unsigned n_items, unsigned accumulate,
            float* prior) {
    const unsigned q = blockIdx.y;
    const unsigned j0 = (blockIdx.x * blockDim.x + threadIdx.x) * 16;
    if (j0 >= n_items) return;
    float acc[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) acc[i] = 0.f;
    const unsigned begin = offsets[q], end = offsets[q + 1];
    unsigned e = begin;
    // Two rows in flight per step.
    for (; e + 1 < end; e += 2) {
        const unsigned s0 = slots[e], s1 = slots[e + 1];
        const float w0 = weights[e] * scales[s0], w1 = weights[e + 1] * scales[s1];
        const int4 a = *reinterpret_cast<const int4*>(rows + (size_t)s0 * row_ld + j0);
        const int4 b = *reinterpret_cast<const int4*>(rows + (size_t)s1 * row_ld + j0);
        const signed char* pa = reinterpret_cast<const signed char*>(&a);
        const signed char* pb = reinterpret_cast<const signed char*>(&b);
#pragma unroll
        for (int i = 0; i < 16; ++i) acc[i] += w0 * (float)pa[i] + w1 * (float)pb[i];
    }
    if (e < end) {
        const unsigned s0 = slots[e];
        const float w0 = weights[e] * scales[s0];
        const int4 a = *reinterpret_cast<const int4*>(rows + (size_t)s0 * row_ld + j0);
        const signed char* pa = reinterpret_cast<const signed char*>(&a);
#pragma unroll
        for (int i = 0; i < 16; ++i) acc[i] += w0 * (float)pa[i];
    }
    if (miss && has_miss[q]) {
        const __half* m = miss + (size_t)q * miss_ld + j0;
        const uint4 lo = *reinterpret_cast<const uint4*>(m);
        // The last tile may reach past a row of miss_ld (a multiple of 8 only).
        const uint4 hi = j0 + 8 < miss_ld ? *reinterpret_cast<const uint4*>(m + 8)
                                          : make_uint4(0u, 0u, 0u, 0u);
        const __half* hl = reinterpret_cast<const __half*>(&lo);
        const __half* hh = reinterpret_cast<const __half*>(&hi);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            acc[i] += __half2float(hl[i]);
            acc[8 + i] += __half2float(hh[i]);
        }
    }
    float* out = prior + (size_t)q * n_items + j0;
    const unsigned count = min(16u, n_items - j0);
    if (accumulate) {
#pragma unroll
        for (int i = 0; i < 16; ++i)
            if ((unsigned)i < count) acc[i] += out[i];
    }
#pragma unroll
    for (int i = 0; i < 16; ++i)
        if ((unsigned)i < count) out[i] = acc[i];
}

// out[j] = scale[slot] * rows[slot, j] as fp16 for j < n_items, NaN at `skip`: one hot row
// made ready for the top-K kernel (the slow path of "similar to X" when k exceeds the
// precomputed neighbours).
extern "C" __global__ void dequantize_row(const signed char* __restrict__ rows, unsigned row_ld,
                                          const float* __restrict__ scales, unsigned slot,
                                          unsigned skip, unsigned n_items,
                                          __half* __restrict__ out) {
    const float s = scales[slot];
    const signed char* row = rows + (size_t)slot * row_ld;
    for (unsigned j = blockIdx.x * blockDim.x + threadIdx.x; j < n_items;
         j += gridDim.x * blockDim.x)
        out[j] = j == skip ? __ushort_as_half((unsigned short)0x7e00u)
                           : __float2half_rn(s * (float)row[j]);
}
