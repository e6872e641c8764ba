// Fusion of query and user embeddings, and fp32 -> fp16 conversion of query vectors.
//
// The per-query warp body lives in fuse_warp.cuh (shared with similarity_one.cu; the PTX
// freshness hash covers it).
#include <cuda_fp16.h>
#include "fuse_warp.cuh"

// Sum of `value` over the block (blockDim.x a multiple of 32, at most 1024).
__device__ float block_sum(float value, float* scratch) {
    for (int offset = 16; offset > 0; offset >>= 1)
        value += __shfl_xor_sync(0xffffffffu, value, offset);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = value;
    __syncthreads();
    const int warps = blockDim.x >> 5;
    float total = 0.0f;
    for (int w = 0; w < warps; ++w) total += scratch[w];
    return total;
}

// One block per query. fused[q] = normalize(alpha * query[q] + (1 - alpha) * normalize(sum
// of the members' user rows)); a query with no members (or whose members' rows sum to zero)
// is a cold start and gets query[q] unchanged (hyperrec-fusion's rule). Members are user-table rows that have a
// profile; the host leaves out unknown users and users without one.
// `fused_half` (may be null) receives the same vector in fp16 for the similarity GEMM.
extern "C" __global__ void fuse_queries(const float* __restrict__ queries,
                                        const __half* __restrict__ users,
                                        const unsigned* __restrict__ member_offsets,
                                        const unsigned* __restrict__ members, float alpha,
                                        unsigned dim, float* __restrict__ fused,
                                        __half* __restrict__ fused_half) {
    __shared__ float scratch[32];
    extern __shared__ float user_sum[];  // [dim]
    const unsigned q = blockIdx.x;
    const unsigned begin = member_offsets[q], end = member_offsets[q + 1];
    const float* query = queries + (size_t)q * dim;

    float user_sq = 0.0f;
    for (unsigned d = threadIdx.x; d < dim; d += blockDim.x) {
        float s = 0.0f;
        for (unsigned m = begin; m < end; ++m)
            s += __half2float(users[(size_t)members[m] * dim + d]);
        user_sum[d] = s;
        user_sq += s * s;
    }
    const float user_norm = sqrtf(block_sum(user_sq, scratch));
    const bool has_user = end > begin && user_norm > MIN_NORM;
    const float query_weight = has_user ? alpha : 1.0f;
    const float user_weight = has_user ? (1.0f - alpha) / user_norm : 0.0f;

    float mixed_sq = 0.0f;
    for (unsigned d = threadIdx.x; d < dim; d += blockDim.x) {
        const float v = query_weight * query[d] + user_weight * user_sum[d];
        user_sum[d] = v;
        mixed_sq += v * v;
    }
    // A vanishing blend (alpha = 0.5, u = -q) falls back to the query, as a cold start does.
    const float norm = sqrtf(block_sum(mixed_sq, scratch));
    const bool blend = has_user && norm > MIN_NORM;
    const float scale = blend ? 1.0f / norm : 0.0f;
    for (unsigned d = threadIdx.x; d < dim; d += blockDim.x) {
        const float v = blend ? user_sum[d] * scale : query[d];
        fused[(size_t)q * dim + d] = v;
        if (fused_half) fused_half[(size_t)q * dim + d] = __float2half_rn(v);
    }
}

#define WARP_MAX_CHUNKS 8  // dim / 128 for fuse_queries_warp (dim <= 1024)

// fuse_queries with one warp per query (same formula, same cold-start rule; the body is
// fuse_one_warp), for `dim` a multiple of 128 up to 1024. A batch of 1000 queries is 1000
// warps, one wave on an H100, where the block kernel needed 1.5 waves of 384-thread blocks.
extern "C" __global__ void __launch_bounds__(256)
fuse_queries_warp(const float* __restrict__ queries, const __half* __restrict__ users,
                  const unsigned* __restrict__ member_offsets, const unsigned* __restrict__ members,
                  float alpha, unsigned dim, unsigned n, float* __restrict__ fused,
                  __half* __restrict__ fused_half) {
    const unsigned q = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (q >= n) return;
    const size_t at = (size_t)q * dim;
    fuse_one_warp<WARP_MAX_CHUNKS>(queries + at, users, member_offsets[q], member_offsets[q + 1],
                                   members, alpha, dim, fused + at, nullptr,
                                   fused_half ? fused_half + at : nullptr);
}

// Coordinate d of pseudo-random row `row` in [-1, 1): splitmix64 of (seed, row, d).
__device__ float random_coordinate(unsigned long long seed, unsigned long long row, unsigned d) {
    unsigned long long x = seed ^ (row * 0x9e3779b97f4a7c15ull) ^ ((unsigned long long)d << 40);
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    x ^= x >> 31;
    return (float)(x >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

// out[row] = fp16(normalize(random row)), one warp per row: benchmark tables of millions
// of users are built on the device instead of being generated and copied from the host.
extern "C" __global__ void random_unit_rows(__half* __restrict__ out, unsigned long long rows,
                                            unsigned dim, unsigned long long seed) {
    const unsigned lane = threadIdx.x & 31;
    const unsigned long long warps = (unsigned long long)gridDim.x * (blockDim.x >> 5);
    for (unsigned long long row = blockIdx.x * (unsigned long long)(blockDim.x >> 5) +
                                  (threadIdx.x >> 5);
         row < rows; row += warps) {
        float sq = 0.0f;
        for (unsigned d = lane; d < dim; d += 32) {
            const float v = random_coordinate(seed, row, d);
            sq += v * v;
        }
        for (int offset = 16; offset > 0; offset >>= 1)
            sq += __shfl_xor_sync(0xffffffffu, sq, offset);
        const float scale = rsqrtf(fmaxf(sq, 1e-20f));
        for (unsigned d = lane; d < dim; d += 32)
            out[row * dim + d] = __float2half_rn(random_coordinate(seed, row, d) * scale);
    }
}

// out[i] = fp16(in[i]) for i < len.
extern "C" __global__ void f32_to_f16(const float* __restrict__ in, __half* __restrict__ out,
                                      unsigned long long len) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
         i < len; i += (unsigned long long)gridDim.x * blockDim.x)
        out[i] = __float2half_rn(in[i]);
}
