// Temporal cache kernels: written next.
#include <cuda_fp16.h>
extern "C" __global__ void cache_gather() {}
