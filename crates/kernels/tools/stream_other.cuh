// Shared by the measurement tools: a kernel that streams `n` float4 of unrelated memory
// between timed runs, so that the next run finds the L2 holding other data, as it would
// after the rest of the path (the sink is written only to keep the loads alive).
#pragma once

__global__ void stream_other(const float4* __restrict__ data, size_t n, float* sink) {
    float4 acc = make_float4(0, 0, 0, 0);
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float4 v = data[i];
        acc.x += v.x; acc.y += v.y; acc.z += v.z; acc.w += v.w;
    }
    if (acc.x == 12345.0f) *sink = acc.y + acc.z + acc.w;
}
