// One step of the exact (fp16 row x fp32 query) score's accumulation, shared by every
// kernel whose scores must agree bit for bit: item_scores_one (scores.cu) and the batch-1
// kernel's fp16 pass and int8 rescoring (similarity_one.cu). Spelled with intrinsics, which
// the compiler never contracts or reorders: a plain `acc += q0 * h0 + q1 * h1` is contracted
// into FMAs as each kernel's surroundings let it, and once compiled differently in two
// kernels. `cargo xtask ptx` hashes this file into every PTX that includes it.
#pragma once

__device__ __forceinline__ float accumulate_pair(float acc, float q0, float h0, float q1,
                                                 float h1) {
    return __fadd_rn(acc, __fmaf_rn(q0, h0, __fmul_rn(q1, h1)));
}
