// Inner products of a few query vectors with every item row, for batches too small to
// fill a GEMM (and as the similarity path when cuBLAS is missing).
#include <cuda_fp16.h>

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
