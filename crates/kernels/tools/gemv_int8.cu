// Batch-1 scoring pass over 62,423 x 384 items: the product's fp16 GEMV (`item_scores_one`)
// against an int8 table with per-row scales (half the bytes: 24 MB, which can stay in the
// H100's 50 MB L2 between queries). A measurement tool, not product code (not compiled by
// `cargo xtask ptx`). On the device, from the repository root:
//   nvcc -arch=sm_90 -O3 -std=c++17 crates/kernels/tools/gemv_int8.cu -o /tmp/gemv_int8
//   /tmp/gemv_int8
// Each kernel runs 200 times, timed one by one with events, with (and without) a kernel
// between runs that streams `other_mb` MB of unrelated memory, as the rest of the path would.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <cuda_fp16.h>
#include "../cuda/scores.cu"
#include "stream_other.cuh"

// approx[j] = scale[j] * sum_d query[d] * codes[j, d]: 8 lanes per row, 4 rows per warp
// step, each lane 3 x 16 codes (dim 384), query slice in registers.
__global__ void __launch_bounds__(256) item_scores_int8(const signed char* __restrict__ codes,
                                                        const float* __restrict__ scales,
                                                        unsigned n_items,
                                                        const float* __restrict__ query,
                                                        float* __restrict__ approx) {
    const unsigned lane = threadIdx.x & 31, part = lane & 7, side = lane >> 3;
    float qv[3][16];
#pragma unroll
    for (unsigned c = 0; c < 3; ++c)
#pragma unroll
        for (unsigned e = 0; e < 16; ++e) qv[c][e] = query[(c * 8 + part) * 16 + e];
    const unsigned warps_total = gridDim.x * (blockDim.x >> 5);
    for (unsigned base = (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * 4; base < n_items;
         base += warps_total * 4) {
        const unsigned row = base + side;
        int4 raw[3];
#pragma unroll
        for (unsigned c = 0; c < 3; ++c) {
            raw[c] = make_int4(0, 0, 0, 0);
            if (row < n_items)
                raw[c] = *reinterpret_cast<const int4*>(codes + (size_t)row * 384 + (c * 8 + part) * 16);
        }
        float acc = 0.0f;
#pragma unroll
        for (unsigned c = 0; c < 3; ++c) {
            const signed char* b = reinterpret_cast<const signed char*>(&raw[c]);
#pragma unroll
            for (unsigned e = 0; e < 16; ++e) acc += qv[c][e] * (float)b[e];
        }
#pragma unroll
        for (unsigned offset = 4; offset > 0; offset >>= 1)
            acc += __shfl_xor_sync(0xffffffffu, acc, offset);
        if (part == 0 && row < n_items) approx[row] = acc * scales[row];
    }
}

int main() {
    const unsigned n = 62423, dim = 384;
    std::vector<__half> items((size_t)n * dim);
    std::vector<signed char> codes((size_t)n * dim);
    std::vector<float> scales(n), query(dim);
    srand(11);
    for (unsigned j = 0; j < n; ++j) {
        float row[384], norm = 0, maxabs = 0;
        for (unsigned d = 0; d < dim; ++d) { row[d] = rand() / (float)RAND_MAX - 0.5f; norm += row[d] * row[d]; }
        norm = sqrtf(norm);
        for (unsigned d = 0; d < dim; ++d) { row[d] /= norm; maxabs = fmaxf(maxabs, fabsf(row[d])); }
        scales[j] = maxabs / 127.0f;
        for (unsigned d = 0; d < dim; ++d) {
            items[(size_t)j * dim + d] = __float2half(row[d]);
            codes[(size_t)j * dim + d] = (signed char)lrintf(row[d] / scales[j]);
        }
    }
    for (unsigned d = 0; d < dim; ++d) query[d] = (rand() / (float)RAND_MAX - 0.5f) / 10.0f;
    __half *d_items, *d_scores; signed char* d_codes; float *d_scales, *d_query, *d_approx, *d_sink;
    float4* d_other;
    const size_t other_bytes = 16u << 20;
    cudaMalloc(&d_items, items.size() * 2); cudaMalloc(&d_codes, codes.size());
    cudaMalloc(&d_scales, n * 4); cudaMalloc(&d_query, dim * 4); cudaMalloc(&d_approx, n * 4);
    cudaMalloc(&d_scores, (n + 8) * 2); cudaMalloc(&d_sink, 4); cudaMalloc(&d_other, other_bytes);
    cudaMemset(d_other, 1, other_bytes);
    cudaMemcpy(d_items, items.data(), items.size() * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(d_codes, codes.data(), codes.size(), cudaMemcpyHostToDevice);
    cudaMemcpy(d_scales, scales.data(), n * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(d_query, query.data(), dim * 4, cudaMemcpyHostToDevice);
    cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
    for (int other_mb : {0, 2, 16}) {
        for (int variant = 0; variant < 2; ++variant) {
            for (unsigned blocks : {132u * 2, 132u * 4, 132u * 8}) {
                std::vector<float> times;
                for (int rep = 0; rep < 200; ++rep) {
                    if (other_mb)
                        stream_other<<<264, 256>>>(d_other, ((size_t)other_mb << 20) / 16, d_sink);
                    cudaEventRecord(a);
                    if (variant == 0)
                        item_scores_one<<<blocks, 256>>>(d_items, n, d_query, dim, d_scores);
                    else
                        item_scores_int8<<<blocks, 256>>>(d_codes, d_scales, n, d_query, d_approx);
                    cudaEventRecord(b);
                    cudaEventSynchronize(b);
                    float ms; cudaEventElapsedTime(&ms, a, b);
                    if (rep >= 20) times.push_back(ms * 1000);
                }
                std::sort(times.begin(), times.end());
                printf("%-5s blocks %4u, other traffic %2d MB between runs: median %.1f us (p10 %.1f, p90 %.1f)\n",
                       variant ? "int8" : "fp16", blocks, other_mb, times[times.size() / 2],
                       times[times.size() / 10], times[times.size() * 9 / 10]);
            }
        }
    }
    // Check the int8 scores against fp32 dot products of the fp16 rows.
    std::vector<float> approx(n);
    cudaMemcpy(approx.data(), d_approx, n * 4, cudaMemcpyDeviceToHost);
    double worst = 0;
    for (unsigned j = 0; j < n; ++j) {
        double exact = 0;
        for (unsigned d = 0; d < dim; ++d) exact += (double)query[d] * __half2float(items[(size_t)j * dim + d]);
        worst = std::max(worst, fabs(exact - approx[j]));
    }
    printf("int8 scores: max |error| %.2e (query norm ~%.3f)\n", worst, 0.0);
    printf("last error: %s\n", cudaGetErrorString(cudaGetLastError()));
    return 0;
}
