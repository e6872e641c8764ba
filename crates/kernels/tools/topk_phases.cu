// Phase timing (clock64) of the threshold-filter top-K kernels on one uniform random row of
// 62,423 fp16 scores, k = 100: a measurement tool, not product code (not compiled by
// `cargo xtask ptx`). On the device, from the repository root:
//   nvcc -arch=sm_90 -O3 -std=c++17 crates/kernels/tools/topk_phases.cu -o /tmp/topk_phases
//   /tmp/topk_phases
// Phases (cycles from the kernel's start, thread 0, each right after a barrier): 1 seen
// bitmap and clears, 2 sample threshold, 3 filter pass, 4 selection of the candidates at or
// above the k-th key, 5 sort, 6 output.
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <cuda_fp16.h>
__device__ long long g_phase[8];
#define TOPK_PHASE(i) do { if (threadIdx.x == 0 && blockIdx.x == 0) g_phase[i] = clock64(); } while (0)
#include "../cuda/topk.cu"
int main() {
    const unsigned n = 62423, ld = 62424, k = 100;
    std::vector<__half> host(ld);
    srand(7);
    for (unsigned j = 0; j < ld; ++j) host[j] = __float2half(-0.2f + (rand() / (float)RAND_MAX));
    __half* d; unsigned* ids; float* sc;
    cudaMalloc(&d, ld * 2); cudaMalloc(&ids, 4096); cudaMalloc(&sc, 4096);
    cudaMemcpy(d, host.data(), ld * 2, cudaMemcpyHostToDevice);
    const unsigned capacity = 2048;
    const size_t shared = capacity * 8 + 1024 * 8 + (32 + 16 + 16 + 256) * 4 + ((n + 31) / 32) * 4;
    cudaFuncSetAttribute(topk_filter_wide, cudaFuncAttributeMaxDynamicSharedMemorySize, 200000);
    cudaFuncSetAttribute(topk_filter, cudaFuncAttributeMaxDynamicSharedMemorySize, 200000);
    for (int variant = 0; variant < 2; ++variant) {
        for (int rep = 0; rep < 5; ++rep) {
            cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
            cudaEventRecord(a);
            if (variant == 0)
                topk_filter_wide<<<1, 1024, shared>>>(d, ld, n, nullptr, nullptr, nullptr, nullptr, k, capacity, 0, ids, sc);
            else
                topk_filter<<<1, 256, shared>>>(d, ld, n, nullptr, nullptr, nullptr, nullptr, k, capacity, 0, ids, sc);
            cudaEventRecord(b); cudaEventSynchronize(b);
            float ms; cudaEventElapsedTime(&ms, a, b);
            long long ph[8]; cudaMemcpyFromSymbol(ph, g_phase, sizeof(ph));
            printf("%s rep %d: %.1f us; phases (cycles from start):", variant ? "narrow" : "wide", rep, ms * 1000);
            for (int i = 1; i <= 6; ++i) printf(" %d:%lld", i, ph[i] - ph[0]);
            printf(" (err %s)\n", cudaGetErrorString(cudaGetLastError()));
        }
    }
    return 0;
}
