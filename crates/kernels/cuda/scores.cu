// Inner products of a few query vectors with every item row, for batches too small to
// fill a GEMM (and as the similarity path when cuBLAS is missing).
#include <cuda_fp16.h>
#include "exact_dot.cuh"

#define MAX_QUERIES 8
#define MAX_CHUNKS 8  // dim / 128

// scores[q * ld + j] = fp16(sum_d queries[q, d] * items[j, d]) for q < n_queries <= 8.
// One warp per item row at a time: lane l reads halves k*128 + 4l .. 4l+3 of the row (8-byte
// loads, the warp covering 256 contiguous bytes per k), so a row is one coalesced sweep.
// `dim` must be a multiple of 128 and at most 1024. Dynamic shared memory:
// n_queries * dim floats.
extern "C" __global__ void __launch_bounds__(256)
item_scores_small(const __half* __restrict__ items, unsigned n_items,
                  const float* __restrict__ queries, unsigned n_queries, unsigned dim,
                  __half* __restrict__ scores, unsigned ld) {
    extern __shared__ float query_smem[];  // [n_queries, dim]
    for (unsigned i = threadIdx.x; i < n_queries * dim; i += blockDim.x)
        query_smem[i] = queries[i];
    __syncthreads();

    const unsigned lane = threadIdx.x & 31;
    const unsigned warps_total = gridDim.x * (blockDim.x >> 5);
    const unsigned chunks = dim >> 7;
    for (unsigned item = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); item < n_items;
         item += warps_total) {
        const __half* row = items + (size_t)item * dim;
        float x[MAX_CHUNKS][4];
#pragma unroll
        for (unsigned c = 0; c < MAX_CHUNKS; ++c) {
            if (c < chunks) {
                const uint2 raw = *reinterpret_cast<const uint2*>(row + c * 128 + lane * 4);
                const __half2 lo = *reinterpret_cast<const __half2*>(&raw.x);
                const __half2 hi = *reinterpret_cast<const __half2*>(&raw.y);
                const float2 a = __half22float2(lo), b = __half22float2(hi);
                x[c][0] = a.x; x[c][1] = a.y; x[c][2] = b.x; x[c][3] = b.y;
            }
        }
#pragma unroll
        for (unsigned q = 0; q < MAX_QUERIES; ++q) {
            if (q < n_queries) {
                float acc = 0.0f;
#pragma unroll
                for (unsigned c = 0; c < MAX_CHUNKS; ++c) {
                    if (c < chunks) {
                        const float4 v = *reinterpret_cast<const float4*>(
                            query_smem + q * dim + c * 128 + lane * 4);
                        acc += v.x * x[c][0] + v.y * x[c][1] + v.z * x[c][2] + v.w * x[c][3];
                    }
                }
                for (int offset = 16; offset > 0; offset >>= 1)
                    acc += __shfl_xor_sync(0xffffffffu, acc, offset);
                if (lane == 0) scores[(size_t)q * ld + item] = __float2half_rn(acc);
            }
        }
    }
}

#define ONE_MAX_CHUNKS 4  // dim / 128 for item_scores_one

// scores[j] = fp16(query . items[j]) for one query, the batch-1 latency path. A warp takes
// four consecutive item rows per step (one contiguous span of 4 * dim halves, coalesced),
// half a warp per row pair: lane l of half s reads 16 bytes of rows base + s and base + 2 + s
// per 128-column chunk, all loads issued before any product, so each warp keeps
// 4 * dim * 2 bytes in flight (four times item_scores_small's). The query's slice each lane
// multiplies stays in registers for the whole kernel. `dim` a multiple of 128 up to 512.
extern "C" __global__ void __launch_bounds__(256)
item_scores_one(const __half* __restrict__ items, unsigned n_items,
                const float* __restrict__ query, unsigned dim, __half* __restrict__ scores) {
    const unsigned lane = threadIdx.x & 31, sub = lane & 15, side = lane >> 4;
    const unsigned chunks = dim >> 7;
    float qv[ONE_MAX_CHUNKS][8];
#pragma unroll
    for (unsigned c = 0; c < ONE_MAX_CHUNKS; ++c) {
#pragma unroll
        for (unsigned e = 0; e < 8; ++e) qv[c][e] = 0.0f;
        if (c < chunks) {
            const float4 lo = *reinterpret_cast<const float4*>(query + c * 128 + sub * 8);
            const float4 hi = *reinterpret_cast<const float4*>(query + c * 128 + sub * 8 + 4);
            qv[c][0] = lo.x; qv[c][1] = lo.y; qv[c][2] = lo.z; qv[c][3] = lo.w;
            qv[c][4] = hi.x; qv[c][5] = hi.y; qv[c][6] = hi.z; qv[c][7] = hi.w;
        }
    }
    const unsigned warps_total = gridDim.x * (blockDim.x >> 5);
    for (unsigned base = (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * 4; base < n_items;
         base += warps_total * 4) {
        const unsigned row_a = base + side, row_b = base + 2 + side;
        uint4 a[ONE_MAX_CHUNKS], b[ONE_MAX_CHUNKS];
#pragma unroll
        for (unsigned c = 0; c < ONE_MAX_CHUNKS; ++c) {
            a[c] = b[c] = make_uint4(0, 0, 0, 0);
            if (c < chunks) {
                if (row_a < n_items)
                    a[c] = *reinterpret_cast<const uint4*>(items + (size_t)row_a * dim + c * 128 + sub * 8);
                if (row_b < n_items)
                    b[c] = *reinterpret_cast<const uint4*>(items + (size_t)row_b * dim + c * 128 + sub * 8);
            }
        }
        float sa = 0.0f, sb = 0.0f;
#pragma unroll
        for (unsigned c = 0; c < ONE_MAX_CHUNKS; ++c) {
            const __half2* ha = reinterpret_cast<const __half2*>(&a[c]);
            const __half2* hb = reinterpret_cast<const __half2*>(&b[c]);
#pragma unroll
            for (unsigned e = 0; e < 4; ++e) {
                const float2 fa = __half22float2(ha[e]), fb = __half22float2(hb[e]);
                sa = accumulate_pair(sa, qv[c][2 * e], fa.x, qv[c][2 * e + 1], fa.y);
                sb = accumulate_pair(sb, qv[c][2 * e], fb.x, qv[c][2 * e + 1], fb.y);
            }
        }
        // Sum over the 16 lanes of each half (xor offsets below 16 stay within the half).
#pragma unroll
        for (unsigned offset = 8; offset > 0; offset >>= 1) {
            sa += __shfl_xor_sync(0xffffffffu, sa, offset);
            sb += __shfl_xor_sync(0xffffffffu, sb, offset);
        }
        if (sub == 0) {
            if (row_a < n_items) scores[row_a] = __float2half_rn(sa);
            if (row_b < n_items) scores[row_b] = __float2half_rn(sb);
        }
    }
}
