// One query's fusion by one warp, shared by fusion.cu (fuse_queries_warp, one warp per
// query of a batch) and similarity_one.cu (the batch-1 similarity kernel fuses its own
// query, one kernel fewer on the latency path). One copy of the arithmetic, so both write
// the same bits. `cargo xtask ptx` hashes this file into every PTX that includes it.
#pragma once
#include <cuda_fp16.h>

// Below this norm a vector is treated as vanishing (the CPU fusion stage's MIN_NORM).
#define MIN_NORM 1e-6f

// x.x^2 + x.y^2 + x.z^2 + x.w^2 in a fixed order. The arithmetic here is spelled with
// intrinsics, which the compiler never contracts or reorders, so that every kernel including
// this file computes the same bits (a plain expression is contracted into FMAs as each
// kernel's surroundings let it).
__device__ __forceinline__ float square_sum(float4 x) {
    return __fmaf_rn(x.w, x.w, __fmaf_rn(x.z, x.z, __fmaf_rn(x.y, x.y, __fmul_rn(x.x, x.x))));
}

// normalize(alpha * query + (1 - alpha) * normalize(sum of the member rows
// members[begin .. end) of `users`)); with no members (or a vanishing user sum, or a
// vanishing blend) the query unchanged: hyperrec-fusion's rule. `dim` a multiple of 128 up
// to MAX_CHUNKS * 128: lane l owns coordinates c * 128 + 4l .. 4l + 3 of each 128-wide chunk
// c, so the query, every member row and the outputs move in coalesced 16- and 8-byte pieces
// (all of a member row's loads in flight at once) and both norms are warp shuffles. Every
// lane of the warp calls it; the result goes to `out` (and `out2`, `out_half` where not
// null; `out` may be shared memory).
template <unsigned MAX_CHUNKS>
__device__ __forceinline__ void fuse_one_warp(const float* __restrict__ query,
                                              const __half* __restrict__ users, unsigned begin,
                                              unsigned end, const unsigned* __restrict__ members,
                                              float alpha, unsigned dim, float* out, float* out2,
                                              __half* out_half) {
    const unsigned lane = threadIdx.x & 31;
    const unsigned chunks = dim >> 7;
    float4 qv[MAX_CHUNKS], u[MAX_CHUNKS];
#pragma unroll
    for (unsigned c = 0; c < MAX_CHUNKS; ++c) {
        u[c] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        qv[c] = u[c];
        if (c < chunks) qv[c] = *reinterpret_cast<const float4*>(query + c * 128 + lane * 4);
    }
    for (unsigned m = begin; m < end; ++m) {
        const __half* row = users + (size_t)members[m] * dim;
#pragma unroll
        for (unsigned c = 0; c < MAX_CHUNKS; ++c) {
            if (c < chunks) {
                const uint2 raw = *reinterpret_cast<const uint2*>(row + c * 128 + lane * 4);
                const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&raw.x));
                const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&raw.y));
                u[c].x += a.x; u[c].y += a.y; u[c].z += b.x; u[c].w += b.y;
            }
        }
    }
    float user_sq = 0.0f;
#pragma unroll
    for (unsigned c = 0; c < MAX_CHUNKS; ++c) user_sq = __fadd_rn(user_sq, square_sum(u[c]));
    for (int offset = 16; offset > 0; offset >>= 1)
        user_sq += __shfl_xor_sync(0xffffffffu, user_sq, offset);
    const float user_norm = sqrtf(user_sq);
    const bool has_user = end > begin && user_norm > MIN_NORM;
    const float query_weight = has_user ? alpha : 1.0f;
    const float user_weight = has_user ? (1.0f - alpha) / user_norm : 0.0f;

    float mixed_sq = 0.0f;
#pragma unroll
    for (unsigned c = 0; c < MAX_CHUNKS; ++c) {
        u[c].x = __fmaf_rn(query_weight, qv[c].x, __fmul_rn(user_weight, u[c].x));
        u[c].y = __fmaf_rn(query_weight, qv[c].y, __fmul_rn(user_weight, u[c].y));
        u[c].z = __fmaf_rn(query_weight, qv[c].z, __fmul_rn(user_weight, u[c].z));
        u[c].w = __fmaf_rn(query_weight, qv[c].w, __fmul_rn(user_weight, u[c].w));
        mixed_sq = __fadd_rn(mixed_sq, square_sum(u[c]));
    }
    for (int offset = 16; offset > 0; offset >>= 1)
        mixed_sq += __shfl_xor_sync(0xffffffffu, mixed_sq, offset);
    // A vanishing blend (alpha = 0.5, u = -q) falls back to the query, as a cold start does.
    const float norm = sqrtf(mixed_sq);
    const bool blend = has_user && norm > MIN_NORM;
    const float scale = blend ? 1.0f / norm : 0.0f;
#pragma unroll
    for (unsigned c = 0; c < MAX_CHUNKS; ++c) {
        if (c < chunks) {
            const float4 v = blend ? make_float4(__fmul_rn(u[c].x, scale), __fmul_rn(u[c].y, scale),
                                                 __fmul_rn(u[c].z, scale), __fmul_rn(u[c].w, scale))
                                   : qv[c];
            const unsigned at = c * 128 + lane * 4;
            *reinterpret_cast<float4*>(out + at) = v;
            if (out2) *reinterpret_cast<float4*>(out2 + at) = v;
            if (out_half) {
                __half2 lo = __floats2half2_rn(v.x, v.y), hi = __floats2half2_rn(v.z, v.w);
                uint2 raw;
                raw.x = *reinterpret_cast<unsigned*>(&lo);
                raw.y = *reinterpret_cast<unsigned*>(&hi);
                *reinterpret_cast<uint2*>(out_half + at) = raw;
            }
        }
    }
}
