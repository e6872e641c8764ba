// Can a batch-1 scoring pass run out of L2? Measures an int8 (dp4a) pass over 62,423 x 384
// codes (24 MB) and the fp16 table (48 MB), each with rows assigned to blocks either by block
// index (whichever SM runs the block: the same rows land on different SMs every launch) or
// by the SM the block runs on (%smid: the same SM reads the same rows every launch, so each
// L2 partition only has to hold the rows its own SMs read). A measurement tool, not product
// code (not compiled by `cargo xtask ptx`). On the device, from the repository root:
//   nvcc -arch=sm_90 -O3 -std=c++17 crates/kernels/tools/l2_probe.cu -o /tmp/l2_probe && /tmp/l2_probe
// Each variant runs 300 times, timed one by one with events, with a kernel between runs that
// streams `other` MB of unrelated memory (the rest of the path's traffic).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <cuda_fp16.h>
#include "stream_other.cuh"

#define ROWS_PER_SLICE 64  // 8 warps x 2 steps x 4 rows
#define DIM 384

__device__ __forceinline__ unsigned smid() {
    unsigned id;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(id));
    return id;
}

// Rows of one slice: warp w takes rows slice*64 + w*8 .. +7, 8 lanes per row (each lane
// 48 codes = 3 x 16 bytes), both steps' loads issued before any product.
__device__ __forceinline__ void int8_slice(const int4* __restrict__ codes, unsigned n_items,
                                           const int (&q)[12], unsigned slice,
                                           int* __restrict__ out) {
    const unsigned lane = threadIdx.x & 31, part = lane & 7, side = lane >> 3, warp = threadIdx.x >> 5;
    int4 raw[2][3];
#pragma unroll
    for (unsigned s = 0; s < 2; ++s) {
        const unsigned row = slice * ROWS_PER_SLICE + warp * 8 + s * 4 + side;
#pragma unroll
        for (unsigned c = 0; c < 3; ++c)
            raw[s][c] = row < n_items ? codes[(size_t)row * 24 + c * 8 + part] : make_int4(0, 0, 0, 0);
    }
#pragma unroll
    for (unsigned s = 0; s < 2; ++s) {
        const unsigned row = slice * ROWS_PER_SLICE + warp * 8 + s * 4 + side;
        int acc = 0;
#pragma unroll
        for (unsigned c = 0; c < 3; ++c) {
            acc = __dp4a(raw[s][c].x, q[c * 4 + 0], acc);
            acc = __dp4a(raw[s][c].y, q[c * 4 + 1], acc);
            acc = __dp4a(raw[s][c].z, q[c * 4 + 2], acc);
            acc = __dp4a(raw[s][c].w, q[c * 4 + 3], acc);
        }
#pragma unroll
        for (unsigned o = 4; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (part == 0 && row < n_items) out[row] = acc;
    }
}

__device__ __forceinline__ void load_query(const int* __restrict__ query, int (&q)[12]) {
    const unsigned part = threadIdx.x & 7;
#pragma unroll
    for (unsigned c = 0; c < 3; ++c)
#pragma unroll
        for (unsigned e = 0; e < 4; ++e) q[c * 4 + e] = query[(c * 8 + part) * 4 + e];
}

// One block per slice, in block order.
__global__ void __launch_bounds__(256) int8_by_block(const int4* codes, unsigned n_items,
                                                     const int* query, int* out) {
    int q[12];
    load_query(query, q);
    int8_slice(codes, n_items, q, blockIdx.x, out);
}

// Slices dealt to SMs: SM s owns slices s, s + n_sm, ...; a block claims the next slice of
// its SM's list, then of the other SMs' lists (so every slice is scored whatever the block
// placement), one atomic per claim, and scores it with score(slice). `claims` must be zero
// before the launch.
template <typename Score>
__device__ __forceinline__ void claim_slices(unsigned* claims, unsigned n_sm, unsigned n_slices,
                                             Score score) {
    __shared__ unsigned claimed;
    const unsigned home = smid() % n_sm;
    for (unsigned k = 0; k < n_sm; ++k) {
        const unsigned sm = (home + k) % n_sm;
        const unsigned owned = (n_slices + n_sm - 1 - sm) / n_sm;
        for (;;) {
            __syncthreads();
            if (threadIdx.x == 0) claimed = atomicAdd(&claims[sm], 1u);
            __syncthreads();
            if (claimed >= owned) break;
            score(sm + claimed * n_sm);
        }
    }
}

__global__ void __launch_bounds__(256) int8_by_sm(const int4* codes, unsigned n_items,
                                                  const int* query, int* out,
                                                  unsigned* claims, unsigned n_sm,
                                                  unsigned n_slices) {
    int q[12];
    load_query(query, q);
    claim_slices(claims, n_sm, n_slices,
                 [&](unsigned slice) { int8_slice(codes, n_items, q, slice, out); });
}

// fp16 rows, 16 lanes per row, same two orders.
__device__ __forceinline__ void fp16_slice(const uint4* __restrict__ items, unsigned n_items,
                                           const float (&q)[3][8], unsigned slice,
                                           float* __restrict__ out) {
    const unsigned lane = threadIdx.x & 31, sub = lane & 15, side = lane >> 4, warp = threadIdx.x >> 5;
    uint4 raw[4][3];
#pragma unroll
    for (unsigned s = 0; s < 4; ++s) {
        const unsigned row = slice * ROWS_PER_SLICE + warp * 8 + s * 2 + side;
#pragma unroll
        for (unsigned c = 0; c < 3; ++c)
            raw[s][c] = row < n_items ? items[(size_t)row * 48 + c * 16 + sub] : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (unsigned s = 0; s < 4; ++s) {
        const unsigned row = slice * ROWS_PER_SLICE + warp * 8 + s * 2 + side;
        float acc = 0.0f;
#pragma unroll
        for (unsigned c = 0; c < 3; ++c) {
            const __half2* h = reinterpret_cast<const __half2*>(&raw[s][c]);
#pragma unroll
            for (unsigned e = 0; e < 4; ++e) {
                const float2 f = __half22float2(h[e]);
                acc += f.x * q[c][2 * e] + f.y * q[c][2 * e + 1];
            }
        }
#pragma unroll
        for (unsigned o = 8; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (sub == 0 && row < n_items) out[row] = acc;
    }
}

__device__ __forceinline__ void load_query_f(const float* __restrict__ query, float (&q)[3][8]) {
    const unsigned sub = threadIdx.x & 15;
#pragma unroll
    for (unsigned c = 0; c < 3; ++c)
#pragma unroll
        for (unsigned e = 0; e < 8; ++e) q[c][e] = query[(c * 16 + sub) * 8 + e];
}

__global__ void __launch_bounds__(256) fp16_by_block(const uint4* items, unsigned n_items,
                                                     const float* query, float* out) {
    float q[3][8];
    load_query_f(query, q);
    fp16_slice(items, n_items, q, blockIdx.x, out);
}

__global__ void __launch_bounds__(256) fp16_by_sm(const uint4* items, unsigned n_items,
                                                  const float* query, float* out,
                                                  unsigned* claims, unsigned n_sm,
                                                  unsigned n_slices) {
    float q[3][8];
    load_query_f(query, q);
    claim_slices(claims, n_sm, n_slices,
                 [&](unsigned slice) { fp16_slice(items, n_items, q, slice, out); });
}

#define CHECK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); exit(1); } } while (0)

int main() {
    const unsigned n = 62423;
    int n_sm = 0;
    CHECK(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, 0));
    const unsigned n_slices = (n + ROWS_PER_SLICE - 1) / ROWS_PER_SLICE;
    std::vector<signed char> codes((size_t)n * DIM);
    std::vector<__half> items((size_t)n * DIM);
    std::vector<int> query_i(DIM);
    std::vector<float> query_f(DIM);
    srand(7);
    for (size_t i = 0; i < codes.size(); ++i) {
        codes[i] = (signed char)(rand() % 255 - 127);
        items[i] = __float2half((rand() / (float)RAND_MAX - 0.5f) * 0.1f);
    }
    std::vector<signed char> q8(DIM);
    for (unsigned d = 0; d < DIM; ++d) {
        q8[d] = (signed char)(rand() % 255 - 127);
        query_f[d] = rand() / (float)RAND_MAX - 0.5f;
    }
    signed char *d_codes, *d_q8; __half* d_items; float *d_qf, *d_outf, *d_sink; int* d_outi;
    unsigned* d_claims; float4* d_other;
    const size_t other_bytes = 32u << 20;
    CHECK(cudaMalloc(&d_codes, codes.size())); CHECK(cudaMalloc(&d_items, items.size() * 2));
    CHECK(cudaMalloc(&d_q8, DIM)); CHECK(cudaMalloc(&d_qf, DIM * 4));
    CHECK(cudaMalloc(&d_outf, n * 4)); CHECK(cudaMalloc(&d_outi, n * 4)); CHECK(cudaMalloc(&d_sink, 4));
    CHECK(cudaMalloc(&d_claims, n_sm * 4)); CHECK(cudaMalloc(&d_other, other_bytes));
    CHECK(cudaMemset(d_other, 1, other_bytes));
    CHECK(cudaMemcpy(d_codes, codes.data(), codes.size(), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(d_items, items.data(), items.size() * 2, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(d_q8, q8.data(), DIM, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(d_qf, query_f.data(), DIM * 4, cudaMemcpyHostToDevice));
    cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
    printf("SMs %d, slices of %d rows: %u\n", n_sm, ROWS_PER_SLICE, n_slices);
    const char* names[] = {"int8 by block", "int8 by SM (x4 blocks/SM)", "int8 by SM (x8)", "int8 half table by block",
                           "fp16 by block", "fp16 by SM (x4)", "fp16 by SM (x8)"};
    for (double other_mb : {0.25, 2.0, 16.0}) {
        for (int v = 0; v < 7; ++v) {
            std::vector<float> times;
            for (int rep = 0; rep < 300; ++rep) {
                CHECK(cudaMemsetAsync(d_claims, 0, n_sm * 4));
                stream_other<<<264, 256>>>(d_other, (size_t)(other_mb * (1 << 20)) / 16, d_sink);
                cudaEventRecord(a);
                switch (v) {
                    case 0: int8_by_block<<<n_slices, 256>>>((const int4*)d_codes, n, (const int*)d_q8, d_outi); break;
                    case 1: int8_by_sm<<<n_sm * 4, 256>>>((const int4*)d_codes, n, (const int*)d_q8, d_outi, d_claims, n_sm, n_slices); break;
                    case 2: int8_by_sm<<<n_sm * 8, 256>>>((const int4*)d_codes, n, (const int*)d_q8, d_outi, d_claims, n_sm, n_slices); break;
                    case 3: int8_by_block<<<n_slices / 2, 256>>>((const int4*)d_codes, n / 2, (const int*)d_q8, d_outi); break;
                    case 4: fp16_by_block<<<n_slices, 256>>>((const uint4*)d_items, n, d_qf, d_outf); break;
                    case 5: fp16_by_sm<<<n_sm * 4, 256>>>((const uint4*)d_items, n, d_qf, d_outf, d_claims, n_sm, n_slices); break;
                    case 6: fp16_by_sm<<<n_sm * 8, 256>>>((const uint4*)d_items, n, d_qf, d_outf, d_claims, n_sm, n_slices); break;
                }
                cudaEventRecord(b);
                CHECK(cudaEventSynchronize(b));
                float ms; cudaEventElapsedTime(&ms, a, b);
                if (rep >= 30) times.push_back(ms * 1000);
            }
            CHECK(cudaGetLastError());
            std::sort(times.begin(), times.end());
            printf("%-28s other %5.2f MB: median %6.2f us  p10 %6.2f  p90 %6.2f\n", names[v], other_mb,
                   times[times.size() / 2], times[times.size() / 10], times[times.size() * 9 / 10]);
        }
    }
    // Correctness of the by-SM order: every row scored, equal to the by-block pass.
    std::vector<int> by_block(n), by_sm(n);
    CHECK(cudaMemset(d_outi, 0xff, n * 4));
    int8_by_block<<<n_slices, 256>>>((const int4*)d_codes, n, (const int*)d_q8, d_outi);
    CHECK(cudaMemcpy(by_block.data(), d_outi, n * 4, cudaMemcpyDeviceToHost));
    CHECK(cudaMemset(d_outi, 0xff, n * 4)); CHECK(cudaMemset(d_claims, 0, n_sm * 4));
    int8_by_sm<<<n_sm * 4, 256>>>((const int4*)d_codes, n, (const int*)d_q8, d_outi, d_claims, n_sm, n_slices);
    CHECK(cudaMemcpy(by_sm.data(), d_outi, n * 4, cudaMemcpyDeviceToHost));
    unsigned bad = 0;
    for (unsigned j = 0; j < n; ++j) {
        int exact = 0;
        for (unsigned d = 0; d < DIM; ++d) exact += codes[(size_t)j * DIM + d] * q8[d];
        bad += (by_block[j] != exact) + (by_sm[j] != exact);
    }
    printf("int8 rows wrong: %u of %u (both orders)\n", bad, 2 * n);
    return 0;
}
