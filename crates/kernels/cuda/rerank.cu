// Attention rerank: each retrieval candidate attends over the user's recent history items
// and the request's context phrases (hyperrec-rerank's formula, line for line), then the
// best `results` candidates by final score are written with their attributions.
//
// Per head the logits and value products are small matrix products (candidates x head
// width x sources), done on the tensor cores with WMMA (fp16 operands, fp32 accumulation).
#include <cuda_fp16.h>
#include <mma.h>

using namespace nvcuda;

#define NO_ITEM 0xffffffffu
#define CHUNK 64          // candidates per block (one 16-row tile per warp)
#define WARPS 4
#define MAX_SLOTS 64      // history + context sources per query
#define MAX_HEAD_DIM 128
#define LOGIT_LD (MAX_SLOTS + 4)
#define ATTR_LD (MAX_SLOTS + 1)  // odd row length: a warp's rows fall in different banks
// 16-byte loads per thread per head: MAX_SLOTS (and CHUNK) rows of MAX_HEAD_DIM / 8 each.
#define LOADS (MAX_SLOTS * (MAX_HEAD_DIM / 8) / (WARPS * 32))

struct RerankParams {
    // Candidates: [n, cand_stride]; the first `reranked` of each row are rescored.
    const unsigned* cand_ids;
    const float* cand_scores;
    unsigned cand_stride, reranked;
    // Projected item tables [n_items, dim] fp16 and their scalar factors (the untrained
    // weights use the item table itself with the identity's scale).
    const __half* q_table;
    const __half* k_table;
    const __half* v_table;
    float q_scale, k_scale, v_scale;
    // Query side: q = (1 - beta) q_scale Q[c] + beta pf_scale PF[query], PF [n, dim] fp16.
    const __half* pf;
    float pf_scale, beta;
    // History: the device tables' rows, and per query the user row, first slot and count.
    const unsigned* hist_items;
    const float* hist_ratings;
    unsigned table_hist_len;
    const unsigned* q_user;
    const unsigned* q_hist_begin;
    const unsigned* q_hist_count;
    float gate_offset, gate_slope;
    // Context: projected phrase keys and gated values [n_phrases, dim] fp16 (rounded on the
    // host exactly as the kernel rounds every operand), gathered like the history rows in
    // the same load round; per query a run of phrase rows
    // q_ctx_rows[q_ctx_offsets[q] .. q_ctx_offsets[q + 1]].
    const __half* ctx_keys;
    const __half* ctx_values;
    const unsigned* q_ctx_offsets;
    const unsigned* q_ctx_rows;
    unsigned dim, heads;
    float context_share, w_retrieval, w_attention, bias;
    // Outputs: final scores [n, reranked], attributions [n, reranked, slots].
    unsigned slots;
    float* final_scores;
    float* attributions;
};

// Grid (n, ceil(reranked / CHUNK), parts), WARPS * 32 threads. Dynamic shared memory:
// rerank_shared_bytes(head_dim) on the Rust side. With parts == 1 a block runs every head
// and writes the final scores and attributions; with parts == heads (small batches, where
// the heads' serial work bounds the latency) block z runs head z only and writes its share
// into part z of the outputs ([parts, n, reranked] and [parts, n, reranked, slots]): part 0
// carries w_retrieval * r + bias + w_attention * (head 0's term), part z > 0 w_attention *
// (head z's term); rerank_select sums the parts in a fixed order.
//
// ASYNC = false (`rerank_attend`): every thread stages its share of a head's rows in
// registers (all loads issued before any conversion), converts and stores them; logits and
// products have their own shared arrays. ~199 registers and ~110 KB of shared memory: 2
// blocks (8 warps) per SM.
// ASYNC = true (`rerank_attend_async`): the rows go straight from global to shared memory by
// cp.async (zero-filled past the sources / candidates), a second pass applies the scales in
// place where one is not exactly 1 (so the operands are bit-identical to the staged
// variant's), rows are padded by 8 halves instead of 16 (conflict-free 16-byte rows), and
// the logits and products reuse the rows' shared memory once every warp has finished its
// tensor-core products: ~71 KB and no staging registers, 3 blocks (12 warps) per SM, for the
// large batches whose latency-bound blocks want more warps per SM.
__device__ __forceinline__ void cp_async16(void* smem_dst, const void* src, unsigned bytes) {
    const unsigned dst = (unsigned)__cvta_generic_to_shared(smem_dst);
    // src-size `bytes` (0 or 16): the rest of the 16 bytes is zero-filled.
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                 "r"(bytes)
                 : "memory");
}

__device__ __forceinline__ void cp_async_wait_all() {
    asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::: "memory");
}

template <bool ASYNC>
__device__ __forceinline__ void rerank_attend_body(const RerankParams p) {
    extern __shared__ __align__(32) unsigned char smem[];
    // Padded row (the WMMA tiles need 32-byte aligned starts: 16 rows of hdp halves are).
    const unsigned hd = p.dim / p.heads, hdp = hd + (ASYNC ? 8 : 16);
    __half* ks = reinterpret_cast<__half*>(smem);          // [MAX_SLOTS][hdp]
    __half* vs = ks + MAX_SLOTS * hdp;                      // [MAX_SLOTS][hdp]
    __half* qs = vs + MAX_SLOTS * hdp;                      // [CHUNK][hdp]
    __half* us = qs + CHUNK * hdp;                          // [CHUNK][hdp]
    // ASYNC: logits and products overlay the rows (the larger of the two regions).
    const unsigned row_bytes = (2 * MAX_SLOTS + 2 * CHUNK) * hdp * 2;
    const unsigned score_bytes = 2 * CHUNK * LOGIT_LD * 4;
    float* logits = ASYNC ? reinterpret_cast<float*>(smem)
                          : reinterpret_cast<float*>(us + CHUNK * hdp);  // [CHUNK][LOGIT_LD]
    float* products = logits + CHUNK * LOGIT_LD;                          // [CHUNK][LOGIT_LD]
    float* attr = ASYNC ? reinterpret_cast<float*>(
                              smem + (row_bytes > score_bytes ? row_bytes : score_bytes))
                        : products + CHUNK * LOGIT_LD;                    // [CHUNK][ATTR_LD]
    float* attention = attr + CHUNK * ATTR_LD;                    // [CHUNK]
    unsigned* slot_item = reinterpret_cast<unsigned*>(attention + CHUNK);  // [MAX_SLOTS]
    float* slot_gate = reinterpret_cast<float*>(slot_item + MAX_SLOTS);    // [MAX_SLOTS]
    unsigned* cand = reinterpret_cast<unsigned*>(slot_gate + MAX_SLOTS);   // [CHUNK]

    const unsigned q = blockIdx.x, first = blockIdx.y * CHUNK;
    const unsigned t = threadIdx.x, warp = t >> 5, lane = t & 31;
    const unsigned user = p.q_user[q];
    const unsigned n_hist = user == NO_ITEM ? 0u : p.q_hist_count[q];
    const unsigned ctx_begin = p.q_ctx_offsets[q];
    const unsigned n_ctx = p.q_ctx_offsets[q + 1] - ctx_begin;
    const unsigned n_src = min(n_hist + n_ctx, (unsigned)MAX_SLOTS);
    const unsigned slot_tiles = (n_src + 15) / 16;

    for (unsigned s = t; s < MAX_SLOTS; s += blockDim.x) {
        unsigned item = NO_ITEM;
        float gate = 0.0f;
        if (s < n_hist) {
            const size_t at = (size_t)user * p.table_hist_len + p.q_hist_begin[q] + s;
            item = p.hist_items[at];
            gate = p.gate_offset + p.gate_slope * (p.hist_ratings[at] - 3.0f) * 0.5f;
        } else if (s < n_src) {
            item = p.q_ctx_rows[ctx_begin + s - n_hist];  // a phrase row
        }
        slot_item[s] = item;
        slot_gate[s] = gate;
    }
    for (unsigned c = t; c < CHUNK; c += blockDim.x) {
        const unsigned at = first + c;
        cand[c] = at < p.reranked ? p.cand_ids[(size_t)q * p.cand_stride + at] : NO_ITEM;
        attention[c] = 0.0f;
    }
    for (unsigned i = t; i < CHUNK * ATTR_LD; i += blockDim.x) attr[i] = 0.0f;
    __syncthreads();

    // History pool and context pool masses (a pool takes all when the other is empty).
    const float hist_mass = n_hist > 0 ? (n_ctx > 0 ? 1.0f - p.context_share : 1.0f) : 0.0f;
    const float ctx_mass = n_ctx > 0 ? (n_hist > 0 ? p.context_share : 1.0f) : 0.0f;
    const float inv_sqrt_hd = rsqrtf((float)hd);

    const unsigned parts = gridDim.z, part = blockIdx.z;
    const unsigned h_begin = parts > 1 ? part : 0u, h_end = parts > 1 ? part + 1 : p.heads;
    for (unsigned h = h_begin; h < h_end && n_src > 0; ++h) {
        const unsigned col0 = h * hd;
        if constexpr (ASYNC) {
            // Rows straight into shared memory, then the scales in place.
            const unsigned chunks = hd >> 3;
            const unsigned src_items = slot_tiles * 16 * chunks, cand_items = CHUNK * chunks;
            for (unsigned i = t; i < src_items; i += blockDim.x) {
                const unsigned s = i / chunks, d = (i % chunks) * 8;
                const bool hist = s < n_hist, source = s < n_src;
                const size_t row = source ? (size_t)slot_item[s] * p.dim + col0 + d : 0;
                const unsigned bytes = source ? 16u : 0u;
                cp_async16(ks + s * hdp + d, (hist ? p.k_table : p.ctx_keys) + row, bytes);
                cp_async16(vs + s * hdp + d, (hist ? p.v_table : p.ctx_values) + row, bytes);
            }
            for (unsigned i = t; i < cand_items; i += blockDim.x) {
                const unsigned c = i / chunks, d = (i % chunks) * 8;
                const bool valid = cand[c] != NO_ITEM;
                const size_t row = valid ? (size_t)cand[c] * p.dim + col0 + d : 0;
                const unsigned bytes = valid ? 16u : 0u;
                cp_async16(qs + c * hdp + d, p.q_table + row, bytes);
                cp_async16(us + c * hdp + d, p.v_table + row, bytes);
            }
            cp_async_wait_all();
            __syncthreads();
            // The staged variant's conversions, skipped where the factor is exactly 1 (the
            // product would round back to the same half).
            const float q_factor = (1.0f - p.beta) * p.q_scale;
            const bool scale_k = p.k_scale != 1.0f, scale_u = p.v_scale != 1.0f;
            const bool scale_q = q_factor != 1.0f || p.beta != 0.0f;
            for (unsigned i = t; i < src_items; i += blockDim.x) {
                const unsigned s = i / chunks, d = (i % chunks) * 8;
                if (s >= n_hist) continue;
                const float vscale = slot_gate[s] * p.v_scale;
                __half* kh = ks + s * hdp + d;
                __half* vh = vs + s * hdp + d;
                uint4 kr = *reinterpret_cast<const uint4*>(kh);
                uint4 vr = *reinterpret_cast<const uint4*>(vh);
                __half* kx = reinterpret_cast<__half*>(&kr);
                __half* vx = reinterpret_cast<__half*>(&vr);
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    if (scale_k) kx[e] = __float2half_rn(p.k_scale * __half2float(kx[e]));
                    vx[e] = __float2half_rn(vscale * __half2float(vx[e]));
                }
                if (scale_k) *reinterpret_cast<uint4*>(kh) = kr;
                *reinterpret_cast<uint4*>(vh) = vr;
            }
            if (scale_q || scale_u) {
                for (unsigned i = t; i < cand_items; i += blockDim.x) {
                    const unsigned c = i / chunks, d = (i % chunks) * 8;
                    if (cand[c] == NO_ITEM) continue;
                    __half* qh = qs + c * hdp + d;
                    __half* uh = us + c * hdp + d;
                    uint4 qr = *reinterpret_cast<const uint4*>(qh);
                    uint4 ur = *reinterpret_cast<const uint4*>(uh);
                    uint4 fr = make_uint4(0, 0, 0, 0);
                    if (p.beta != 0.0f)
                        fr = *reinterpret_cast<const uint4*>(p.pf + (size_t)q * p.dim + col0 + d);
                    __half* qx = reinterpret_cast<__half*>(&qr);
                    __half* ux = reinterpret_cast<__half*>(&ur);
                    const __half* fx = reinterpret_cast<const __half*>(&fr);
#pragma unroll
                    for (int e = 0; e < 8; ++e) {
                        float qv = (1.0f - p.beta) * p.q_scale * __half2float(qx[e]);
                        if (p.beta != 0.0f) qv += p.beta * p.pf_scale * __half2float(fx[e]);
                        qx[e] = __float2half_rn(qv);
                        ux[e] = __float2half_rn(p.v_scale * __half2float(ux[e]));
                    }
                    if (scale_q) *reinterpret_cast<uint4*>(qh) = qr;
                    if (scale_u) *reinterpret_cast<uint4*>(uh) = ur;
                }
            }
        } else {
            // Sources and candidates of this head, 16 bytes (8 columns) per load. Every
            // thread issues all of its loads (at most LOADS of each kind) before converting
            // any, so a head costs about one memory round trip instead of one per row.
            const unsigned chunks = hd >> 3;
            const unsigned src_items = slot_tiles * 16 * chunks, cand_items = CHUNK * chunks;
            uint4 kr[LOADS], vr[LOADS], qr[LOADS], ur[LOADS];
    #pragma unroll
            for (unsigned l = 0; l < LOADS; ++l) {
                const unsigned i = t + l * (WARPS * 32);
                kr[l] = vr[l] = qr[l] = ur[l] = make_uint4(0, 0, 0, 0);
                if (i < src_items) {
                    const unsigned s = i / chunks, d = (i % chunks) * 8;
                    if (s < n_src) {
                        const size_t row = (size_t)slot_item[s] * p.dim + col0 + d;
                        const bool hist = s < n_hist;
                        kr[l] = *reinterpret_cast<const uint4*>((hist ? p.k_table : p.ctx_keys) + row);
                        vr[l] =
                            *reinterpret_cast<const uint4*>((hist ? p.v_table : p.ctx_values) + row);
                    }
                }
                if (i < cand_items) {
                    const unsigned c = i / chunks, d = (i % chunks) * 8;
                    if (cand[c] != NO_ITEM) {
                        const size_t row = (size_t)cand[c] * p.dim + col0 + d;
                        qr[l] = *reinterpret_cast<const uint4*>(p.q_table + row);
                        ur[l] = *reinterpret_cast<const uint4*>(p.v_table + row);
                    }
                }
            }
    #pragma unroll
            for (unsigned l = 0; l < LOADS; ++l) {
                const unsigned i = t + l * (WARPS * 32);
                if (i < src_items) {
                    const unsigned s = i / chunks, d = (i % chunks) * 8;
                    // Context rows are stored as the fp16 operands themselves; slots past the
                    // sources stay zero (kr, vr were zeroed).
                    uint4 ko = kr[l], vo = vr[l];
                    if (s < n_hist) {
                        const __half* kh = reinterpret_cast<const __half*>(&kr[l]);
                        const __half* vh = reinterpret_cast<const __half*>(&vr[l]);
                        __half* kout = reinterpret_cast<__half*>(&ko);
                        __half* vout = reinterpret_cast<__half*>(&vo);
                        const float vscale = slot_gate[s] * p.v_scale;
    #pragma unroll
                        for (int e = 0; e < 8; ++e) {
                            kout[e] = __float2half_rn(p.k_scale * __half2float(kh[e]));
                            vout[e] = __float2half_rn(vscale * __half2float(vh[e]));
                        }
                    }
                    *reinterpret_cast<uint4*>(ks + s * hdp + d) = ko;
                    *reinterpret_cast<uint4*>(vs + s * hdp + d) = vo;
                }
                if (i < cand_items) {
                    const unsigned c = i / chunks, d = (i % chunks) * 8;
                    uint4 qo = make_uint4(0, 0, 0, 0), uo = make_uint4(0, 0, 0, 0);
                    if (cand[c] != NO_ITEM) {
                        uint4 fr = make_uint4(0, 0, 0, 0);
                        if (p.beta != 0.0f)
                            fr = *reinterpret_cast<const uint4*>(p.pf + (size_t)q * p.dim + col0 + d);
                        const __half* qh = reinterpret_cast<const __half*>(&qr[l]);
                        const __half* uh = reinterpret_cast<const __half*>(&ur[l]);
                        const __half* fh = reinterpret_cast<const __half*>(&fr);
                        __half* qout = reinterpret_cast<__half*>(&qo);
                        __half* uout = reinterpret_cast<__half*>(&uo);
    #pragma unroll
                        for (int e = 0; e < 8; ++e) {
                            float qv = (1.0f - p.beta) * p.q_scale * __half2float(qh[e]);
                            if (p.beta != 0.0f) qv += p.beta * p.pf_scale * __half2float(fh[e]);
                            qout[e] = __float2half_rn(qv);
                            uout[e] = __float2half_rn(p.v_scale * __half2float(uh[e]));
                        }
                    }
                    *reinterpret_cast<uint4*>(qs + c * hdp + d) = qo;
                    *reinterpret_cast<uint4*>(us + c * hdp + d) = uo;
                }
            }
        }
        __syncthreads();

        // Logits and value products of this warp's 16 candidates against every source tile
        // (none when all 16 are past the reranked candidates: the softmax skips those rows).
        const unsigned warp_tiles = first + warp * 16 < p.reranked ? slot_tiles : 0u;
        if constexpr (ASYNC) {
            // All tiles in registers first (each tile accumulates over kk in the same order
            // as the other variant), then a barrier: the logits overwrite the rows.
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> l_acc[MAX_SLOTS / 16],
                p_acc[MAX_SLOTS / 16];
#pragma unroll
            for (unsigned st = 0; st < MAX_SLOTS / 16; ++st) {
                wmma::fill_fragment(l_acc[st], 0.0f);
                wmma::fill_fragment(p_acc[st], 0.0f);
            }
            for (unsigned kk = 0; kk < hd && warp_tiles > 0; kk += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> aq, au;
                wmma::load_matrix_sync(aq, qs + warp * 16 * hdp + kk, hdp);
                wmma::load_matrix_sync(au, us + warp * 16 * hdp + kk, hdp);
#pragma unroll
                for (unsigned st = 0; st < MAX_SLOTS / 16; ++st) {
                    if (st < warp_tiles) {
                        wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> b;
                        wmma::load_matrix_sync(b, ks + st * 16 * hdp + kk, hdp);
                        wmma::mma_sync(l_acc[st], aq, b, l_acc[st]);
                        wmma::load_matrix_sync(b, vs + st * 16 * hdp + kk, hdp);
                        wmma::mma_sync(p_acc[st], au, b, p_acc[st]);
                    }
                }
            }
            __syncthreads();
#pragma unroll
            for (unsigned st = 0; st < MAX_SLOTS / 16; ++st) {
                if (st < warp_tiles) {
                    wmma::store_matrix_sync(logits + warp * 16 * LOGIT_LD + st * 16, l_acc[st],
                                            LOGIT_LD, wmma::mem_row_major);
                    wmma::store_matrix_sync(products + warp * 16 * LOGIT_LD + st * 16,
                                            p_acc[st], LOGIT_LD, wmma::mem_row_major);
                }
            }
        } else {
            for (unsigned st = 0; st < warp_tiles; ++st) {
                wmma::fragment<wmma::accumulator, 16, 16, 16, float> l_acc, p_acc;
                wmma::fill_fragment(l_acc, 0.0f);
                wmma::fill_fragment(p_acc, 0.0f);
                for (unsigned kk = 0; kk < hd; kk += 16) {
                    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> b;
                    wmma::load_matrix_sync(a, qs + warp * 16 * hdp + kk, hdp);
                    wmma::load_matrix_sync(b, ks + st * 16 * hdp + kk, hdp);
                    wmma::mma_sync(l_acc, a, b, l_acc);
                    wmma::load_matrix_sync(a, us + warp * 16 * hdp + kk, hdp);
                    wmma::load_matrix_sync(b, vs + st * 16 * hdp + kk, hdp);
                    wmma::mma_sync(p_acc, a, b, p_acc);
                }
                wmma::store_matrix_sync(logits + warp * 16 * LOGIT_LD + st * 16, l_acc, LOGIT_LD,
                                        wmma::mem_row_major);
                wmma::store_matrix_sync(products + warp * 16 * LOGIT_LD + st * 16, p_acc, LOGIT_LD,
                                        wmma::mem_row_major);
            }
        }
        __syncwarp();

        // Two-pool softmax, two lanes per candidate row (lanes l and l + 16 own row
        // warp * 16 + l and take alternate sources), halves combined by one shuffle per
        // reduction: halves the serial chain over the sources, which bounds the kernel at
        // small batches (ncu, batch 1: 5.2 warp cycles per instruction, 4 warps per SM).
        {
            const unsigned c = warp * 16 + (lane & 15), half = lane >> 4;
            const bool valid = cand[c] != NO_ITEM;
            float* row = logits + c * LOGIT_LD;
            const float* prod = products + c * LOGIT_LD;
            float mh = -INFINITY, mc = -INFINITY;
            if (valid) {
                for (unsigned s = half; s < n_src; s += 2) {
                    const float lg = row[s] * inv_sqrt_hd;
                    row[s] = lg;
                    if (s < n_hist) mh = fmaxf(mh, lg); else mc = fmaxf(mc, lg);
                }
            }
            mh = fmaxf(mh, __shfl_xor_sync(0xffffffffu, mh, 16));
            mc = fmaxf(mc, __shfl_xor_sync(0xffffffffu, mc, 16));
            float sh = 0.0f, sc = 0.0f;
            if (valid) {
                for (unsigned s = half; s < n_src; s += 2) {
                    const float e = __expf(row[s] - (s < n_hist ? mh : mc));
                    row[s] = e;
                    if (s < n_hist) sh += e; else sc += e;
                }
            }
            sh += __shfl_xor_sync(0xffffffffu, sh, 16);
            sc += __shfl_xor_sync(0xffffffffu, sc, 16);
            const float hist_scale = sh > 0.0f ? hist_mass / sh : 0.0f;
            const float ctx_scale = sc > 0.0f ? ctx_mass / sc : 0.0f;
            const float inv_heads = 1.0f / (float)p.heads;
            float contribution = 0.0f;
            if (valid) {
                for (unsigned s = half; s < n_src; s += 2) {
                    const float w = row[s] * (s < n_hist ? hist_scale : ctx_scale);
                    contribution += w * prod[s];
                    attr[c * ATTR_LD + s] += w * inv_heads;
                }
            }
            contribution += __shfl_xor_sync(0xffffffffu, contribution, 16);
            if (valid && half == 0) attention[c] += contribution;
        }
        __syncthreads();
    }

    // Final scores and attributions of this block's candidates.
    for (unsigned c = warp; c < CHUNK; c += WARPS) {
        const unsigned at = first + c;
        if (at >= p.reranked) break;
        const unsigned item = cand[c];
        const size_t out = ((size_t)part * gridDim.x + q) * p.reranked + at;
        if (lane == 0) {
            float score = part == 0 ? -INFINITY : 0.0f;
            if (item != NO_ITEM) {
                if (part == 0) {
                    const float r = p.cand_scores[(size_t)q * p.cand_stride + at];
                    score = n_src == 0 ? r
                                       : p.w_retrieval * r + p.w_attention * attention[c] + p.bias;
                } else {
                    score = n_src == 0 ? 0.0f : p.w_attention * attention[c];
                }
            }
            p.final_scores[out] = score;
        }
        for (unsigned s = lane; s < p.slots; s += 32)
            p.attributions[out * p.slots + s] =
                (item != NO_ITEM && s < n_src) ? attr[c * ATTR_LD + s] : 0.0f;
    }
}

extern "C" __global__ void __launch_bounds__(WARPS * 32) rerank_attend(const RerankParams p) {
    rerank_attend_body<false>(p);
}

extern "C" __global__ void __launch_bounds__(WARPS * 32, 3)
rerank_attend_async(const RerankParams p) {
    rerank_attend_body<true>(p);
}

// Float -> 32-bit key whose unsigned order is the float order (NaN never expected here).
__device__ __forceinline__ unsigned float_key(float f) {
    const unsigned bits = __float_as_uint(f == 0.0f ? 0.0f : f);
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// One block per query, of the next power of two >= reranked threads (at least a warp; few
// threads keep the sort's barriers cheap and let many queries share an SM): the `results`
// best of the `reranked` final scores,
// ties by the smaller item id, with retrieval scores and attribution rows. Sort keys pack
// (score key, 22-bit inverted item id, 10-bit candidate position). Final scores and
// attributions come in `parts` parts (see rerank_attend), summed here in part order.
extern "C" __global__ void __launch_bounds__(1024)
rerank_select(const float* __restrict__ final_scores, const float* __restrict__ attributions,
              const unsigned* __restrict__ cand_ids, const float* __restrict__ cand_scores,
              unsigned cand_stride, unsigned reranked, unsigned slots, unsigned results,
              unsigned* __restrict__ out_ids, float* __restrict__ out_scores,
              float* __restrict__ out_retrieval, float* __restrict__ out_attributions,
              unsigned parts) {
    __shared__ unsigned long long keys[1024];
    const unsigned q = blockIdx.x, t = threadIdx.x;
    const size_t score_part = (size_t)gridDim.x * reranked;
    const size_t attr_part = score_part * slots;
    // Sum of the parts of final score i (part 0 first: one part reads back unchanged).
    auto final_score = [&](unsigned i) {
        const size_t at = (size_t)q * reranked + i;
        float score = final_scores[at];
        for (unsigned z = 1; z < parts; ++z) score += final_scores[z * score_part + at];
        return score;
    };
    unsigned padded = 1;
    while (padded < reranked) padded <<= 1;
    for (unsigned i = t; i < padded; i += blockDim.x) {
        unsigned long long key = 0;
        if (i < reranked) {
            const unsigned item = cand_ids[(size_t)q * cand_stride + i];
            const float score = final_score(i);
            if (item != NO_ITEM && score != -INFINITY)
                key = ((unsigned long long)float_key(score) << 32) |
                      ((unsigned long long)(0x3fffffu - (item & 0x3fffffu)) << 10) | i;
        }
        keys[i] = key;
    }
    // Bitonic sort, descending, one key per thread (padded <= the block): stages of
    // stride < 32 exchange by warp shuffles, only the others through `keys` with barriers.
    __syncthreads();
    unsigned long long v = t < padded ? keys[t] : 0ull;
    for (unsigned size = 2; size <= padded; size <<= 1) {
        for (unsigned stride = size >> 1; stride > 0; stride >>= 1) {
            unsigned long long other;
            if (stride >= 32) {
                __syncthreads();  // every read of the previous exchange is done
                if (t < padded) keys[t] = v;
                __syncthreads();
                other = t < padded ? keys[t ^ stride] : 0ull;
            } else {
                other = __shfl_xor_sync(0xffffffffu, v, stride);
            }
            // In a descending run the lower position keeps the larger key.
            const bool descending = (t & size) == 0, lower = (t & stride) == 0;
            v = (lower == descending) ? (v > other ? v : other) : (v < other ? v : other);
        }
    }
    __syncthreads();
    if (t < padded) keys[t] = v;
    __syncthreads();
    for (unsigned i = t; i < results; i += blockDim.x) {
        const unsigned long long key = i < padded ? keys[i] : 0ull;
        const size_t out = (size_t)q * results + i;
        if (key == 0) {
            out_ids[out] = NO_ITEM;
            out_scores[out] = -INFINITY;
            out_retrieval[out] = -INFINITY;
        } else {
            const unsigned at = (unsigned)(key & 1023u);
            out_ids[out] = cand_ids[(size_t)q * cand_stride + at];
            out_scores[out] = final_score(at);
            out_retrieval[out] = cand_scores[(size_t)q * cand_stride + at];
        }
    }
    for (unsigned i = t; i < results * slots; i += blockDim.x) {
        const unsigned r = i / slots, s = i % slots;
        const unsigned long long key = r < padded ? keys[r] : 0ull;
        float value = 0.0f;
        if (key != 0) {
            const size_t at = ((size_t)q * reranked + (unsigned)(key & 1023u)) * slots + s;
            value = attributions[at];
            for (unsigned z = 1; z < parts; ++z) value += attributions[z * attr_part + at];
        }
        out_attributions[((size_t)q * results + r) * slots + s] = value;
    }
}
