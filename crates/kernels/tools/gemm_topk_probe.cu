// Batch-1000 similarity probe: the score GEMM (1000 queries x 62,423 fp16 items x 384) by
// cublasGemmEx and by every cuBLASLt heuristic answer timed one by one (with and without an
// SM-count target), the threshold-filter selections of cuda/topk.cu (included as is) on the
// GEMM's own score rows, and the GEMM with 128-byte-aligned score rows. A measurement tool,
// not product code (not compiled by `cargo xtask ptx`). Findings: gpu-notes.md, session
// s1000. On the device (cuBLAS headers and libraries of the toolkit):
//   cd crates/kernels/tools && nvcc -arch=sm_90 -O3 -std=c++17 gemm_topk_probe.cu \
//        -lcublasLt -lcublas -o /tmp/probe && /tmp/probe
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include "../cuda/topk.cu"

#define CK(x)                                                                           \
    do {                                                                                \
        cudaError_t e_ = (x);                                                           \
        if (e_ != cudaSuccess) {                                                        \
            printf("CUDA error %s at line %d\n", cudaGetErrorString(e_), __LINE__);     \
            exit(1);                                                                    \
        }                                                                               \
    } while (0)
#define CB(x)                                                                           \
    do {                                                                                \
        int s_ = (int)(x);                                                              \
        if (s_ != 0) {                                                                  \
            printf("cuBLAS status %d at line %d\n", s_, __LINE__);                      \
            exit(1);                                                                    \
        }                                                                               \
    } while (0)

static const int NI = 62423, LD = 62424, LD_WIDE = 62464, D = 384, NQ = 1000, K = 100;
static int g_ld = LD;  // leading dimension of the score matrix in use
static const size_t WS = 32u << 20;

__global__ void fill(__half* p, size_t n, unsigned seed, float scale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed;
        h ^= h >> 15; h *= 0x2c1b3c6du; h ^= h >> 12; h *= 0x297a2d39u; h ^= h >> 15;
        p[i] = __float2half(((h & 0xffffff) / 16777216.f * 2.f - 1.f) * scale);
    }
}

static cudaStream_t s1, s2;
static cublasHandle_t blas;
static cublasLtHandle_t lt;
static __half *items, *queries, *scores;
static unsigned* ids;
static float* outs;
static void* ws;
static void* ws2;
static size_t topk_smem(int n) { return 2048 * 8 + 1024 * 8 + (32 + 16 + 16 + 256) * 4 + ((n + 31) / 32) * 4; }

template <class F>
static float time_us(int reps, F f) {
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int i = 0; i < 3; ++i) f();
    CK(cudaStreamSynchronize(s1));
    std::vector<float> t;
    for (int i = 0; i < reps; ++i) {
        CK(cudaEventRecord(a, s1));
        f();
        CK(cudaEventRecord(b, s1));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        t.push_back(ms * 1000.f);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

// Scores of query rows [r0, r0 + n) x item columns [c0, c0 + m) by cublasGemmEx.
static void gemm_ex(cudaStream_t s, int r0, int n, int c0, int m) {
    CB(cublasSetStream(blas, s));
    const float alpha = 1.f, beta = 0.f;
    CB(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, m, n, D, &alpha, items + (size_t)c0 * D, CUDA_R_16F, D,
                    queries + (size_t)r0 * D, CUDA_R_16F, D, &beta, scores + (size_t)r0 * LD + c0,
                    CUDA_R_16F, LD, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

struct LtPlan {
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
    int r0, n, c0, m;
    float us;
};

static void lt_run(const LtPlan& p, cudaStream_t s, void* workspace) {
    const float alpha = 1.f, beta = 0.f;
    __half* out = scores + (size_t)p.r0 * g_ld + p.c0;
    CB(cublasLtMatmul(lt, p.desc, &alpha, items + (size_t)p.c0 * D, p.a, queries + (size_t)p.r0 * D, p.b,
                      &beta, out, p.c, out, p.c, &p.algo, workspace, WS, s));
}

// Every heuristic answer for the shape, each timed; returns the fastest.
static LtPlan lt_plan(int r0, int n, int c0, int m, int sm_target, bool verbose) {
    LtPlan p{};
    p.r0 = r0; p.n = n; p.c0 = c0; p.m = m;
    CB(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t t = CUBLAS_OP_T;
    CB(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof(t)));
    if (sm_target > 0)
        CB(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, &sm_target,
                                          sizeof(sm_target)));
    CB(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16F, D, m, D));
    CB(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16F, D, n, D));
    CB(cublasLtMatrixLayoutCreate(&p.c, CUDA_R_16F, m, n, g_ld));
    cublasLtMatmulPreference_t pref;
    CB(cublasLtMatmulPreferenceCreate(&pref));
    size_t wsz = WS;
    CB(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsz, sizeof(wsz)));
    cublasLtMatmulHeuristicResult_t res[64];
    int found = 0;
    CB(cublasLtMatmulAlgoGetHeuristic(lt, p.desc, p.a, p.b, p.c, p.c, pref, 64, res, &found));
    p.us = 1e30f;
    for (int i = 0; i < found; ++i) {
        if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
        LtPlan q = p;
        q.algo = res[i].algo;
        const float alpha = 1.f, beta = 0.f;
        __half* out = scores + (size_t)r0 * g_ld + c0;
        if (cublasLtMatmul(lt, q.desc, &alpha, items + (size_t)c0 * D, q.a, queries + (size_t)r0 * D, q.b, &beta,
                           out, q.c, out, q.c, &q.algo, ws, WS, s1) != CUBLAS_STATUS_SUCCESS)
            continue;
        const float us = time_us(10, [&] { lt_run(q, s1, ws); });
        if (verbose) {
            int id = 0, tile = 0, stages = 0, splitk = 0, swz = 0, cluster = 0;
            size_t w;
            cublasLtMatmulAlgoConfigGetAttribute(&q.algo, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof(id), &w);
            cublasLtMatmulAlgoConfigGetAttribute(&q.algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof(tile), &w);
            cublasLtMatmulAlgoConfigGetAttribute(&q.algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof(stages), &w);
            cublasLtMatmulAlgoConfigGetAttribute(&q.algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof(splitk), &w);
            cublasLtMatmulAlgoConfigGetAttribute(&q.algo, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, &swz, sizeof(swz), &w);
            cublasLtMatmulAlgoConfigGetAttribute(&q.algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster, sizeof(cluster), &w);
            printf("  lt[%2d] %7.1f us  algo %d tile %d stages %d splitk %d swizzle %d cluster %d waves %.2f ws %zu\n",
                   i, us, id, tile, stages, splitk, swz, cluster, res[i].wavesCount, res[i].workspaceSize);
        }
        if (us < p.us) {
            p.algo = q.algo;
            p.us = us;
        }
    }
    CB(cublasLtMatmulPreferenceDestroy(pref));
    return p;
}

static void select_rows(cudaStream_t s, int r0, int rows, int c0, int m) {
    topk_filter<<<rows, 256, topk_smem(m), s>>>(scores + (size_t)r0 * LD + c0, LD, m, nullptr, nullptr, nullptr,
                                              nullptr, K, 2048, 0, ids + (size_t)r0 * K, outs + (size_t)r0 * K);
}

int main() {
    int lo, hi;
    CK(cudaDeviceGetStreamPriorityRange(&lo, &hi));
    CK(cudaStreamCreateWithPriority(&s1, cudaStreamNonBlocking, lo));
    CK(cudaStreamCreateWithPriority(&s2, cudaStreamNonBlocking, hi));
    CB(cublasCreate(&blas));
    CB(cublasLtCreate(&lt));
    CK(cudaMalloc(&items, (size_t)LD_WIDE * D * 2));
    CK(cudaMalloc(&queries, (size_t)NQ * D * 2));
    CK(cudaMalloc(&scores, (size_t)NQ * LD_WIDE * 2));
    CK(cudaMalloc(&ids, (size_t)NQ * K * 4));
    CK(cudaMalloc(&outs, (size_t)NQ * K * 4));
    CK(cudaMalloc(&ws, WS));
    CK(cudaMalloc(&ws2, WS));
    CB(cublasSetWorkspace(blas, ws, WS));
    fill<<<1024, 256>>>(items, (size_t)LD_WIDE * D, 11, 0.088f);
    fill<<<1024, 256>>>(queries, (size_t)NQ * D, 29, 0.088f);
    CK(cudaFuncSetAttribute(topk_filter, cudaFuncAttributeMaxDynamicSharedMemorySize, 200000));
    CK(cudaDeviceSynchronize());

    printf("memset of the 125 MB score matrix: %.1f us\n",
           time_us(20, [] { CK(cudaMemsetAsync(scores, 0, (size_t)NQ * LD * 2, s1)); }));
    printf("cublasGemmEx 1000 x 62424 x 384: %.1f us\n", time_us(20, [] { gemm_ex(s1, 0, NQ, 0, LD); }));
    printf("topk_filter 1000 rows after the GEMM (GEMM + top-K): %.1f us\n",
           time_us(20, [] { gemm_ex(s1, 0, NQ, 0, LD); select_rows(s1, 0, NQ, 0, NI); }));
    printf("topk_filter 1000 rows alone (rows in L2 partly): %.1f us\n", time_us(20, [] { select_rows(s1, 0, NQ, 0, NI); }));

    printf("cuBLASLt heuristic answers, whole shape:\n");
    LtPlan full = lt_plan(0, NQ, 0, LD, 0, true);
    printf("best Lt whole shape: %.1f us\n", full.us);
    for (int sm : {124, 116, 100}) {
        LtPlan p = lt_plan(0, NQ, 0, LD, sm, false);
        printf("best Lt with SM_COUNT_TARGET %d: %.1f us\n", sm, p.us);
    }
    printf("best Lt + topk_filter serial: %.1f us\n",
           time_us(20, [&] { lt_run(full, s1, ws); select_rows(s1, 0, NQ, 0, NI); }));

    // Row and column chunks overlapped with the selection on a second stream were measured
    // on 2026-11-25 (04:21 UTC): every chunking made the GEMMs slower than the saving (the
    // GEMM holds every SM; e.g. 4 row chunks 295 us, 2 column chunks 248 us, vs 215 serial).

    // Selection kernels on the GEMM's own score rows: the old topk_filter against
    // topk_filter_batch (candidates' key histogram spanning their range) in both row orders.
    CK(cudaFuncSetAttribute(topk_filter_batch, cudaFuncAttributeMaxDynamicSharedMemorySize, 200000));
    for (int variant = 0; variant < 3; ++variant) {
        const float us = time_us(30, [&] {
            lt_run(full, s1, ws);
            if (variant == 0) select_rows(s1, 0, NQ, 0, NI);
            else
                topk_filter_batch<<<NQ, 256, topk_smem(NI), s1>>>(scores, LD, NI, nullptr, nullptr, nullptr, nullptr,
                                                                 K, 2048, 0, variant == 2 ? 1u : 0u, ids, outs);
        });
        printf("Lt GEMM + %s: %.1f us (selection ~%.1f us)\n",
               variant == 0 ? "topk_filter" : variant == 1 ? "topk_filter_batch" : "topk_filter_batch last rows first",
               us, us - full.us);
    }
    // Score rows 128-byte aligned (ld 62464 instead of 62424): the GEMM's output tiles.
    g_ld = LD_WIDE;
    for (int m : {LD, LD_WIDE}) {
        LtPlan p = lt_plan(0, NQ, 0, m, 0, false);
        printf("Lt GEMM with ld %d, %d item rows: %.1f us\n", LD_WIDE, m, p.us);
    }
    g_ld = LD;
    CK(cudaDeviceSynchronize());
    printf("done\n");
    return 0;
}
