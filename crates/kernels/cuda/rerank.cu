// Rerank kernels: written next.
#include <cuda_fp16.h>
extern "C" __global__ void rerank_attend() {}
extern "C" __global__ void rerank_select() {}
