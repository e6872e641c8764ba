// Attention rerank: each retrieval candidate attends over the user's recent history items
// and the request's context phrases (hyperrec-rerank's formula, line for line), then the
// best `results` candidates by final score are written with their attributions.
//
// Per head the logits and value products are small matrix products (candidates x head
// width x sources), done on the tensor cores with WMMA (fp16 operands, fp32 accumulation).
#include <cooperative_groups.h>
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
    // rerank_fused only (the kernels above ignore them): results per query, FUSED_SHARE_*
    // flags, source rows per shared buffer (the batch's most sources rounded up to 16), and
    // the selected results [n, results] ([n, results, slots] attributions).
    unsigned results, flags, src_rows, pad;
    unsigned* out_ids;
    float* out_scores;
    float* out_retrieval;
    float* out_attributions;
    // Fused builds: phase marks of query 0 when non-null (CudaRerank::set_trace), 8 words
    // per block of the cluster.
    unsigned* trace;
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

// ---------------------------------------------------------------------------------------
// rerank_fused / rerank_fused_cluster: the whole rerank of one query in one block or one
// cluster of blocks (reranked <= FUSED_MAX_CAND), attention and selection, with no
// intermediate global arrays.
//
// Grid (n), FUSED_WARPS * 32 threads; warp w owns candidates 16w .. 16w + 15. Per head the
// rows go global -> shared by cp.async with no conversion pass, into two buffers: head
// h + 1's rows land in one while head h computes from the other. The scalar factors
// are applied to the fp32 accumulators instead of the fp16 rows:
//   logit(c, s)   = inv_sqrt_hd * kf[s] * ((1 - beta) q_scale Q[c].K[s] + beta pf_scale PF.K[s])
//   product(c, s) = v_scale * vf[s] * U[c].V[s]
// with kf = k_scale, vf = gate_s * v_scale for history sources and kf = vf = 1 for context
// phrases (their rows are the host-rounded operands themselves). The products are
// mma.sync m16n8k16 (fp16 operands from ldmatrix, fp32 accumulators): a candidate row's
// values of an n8 source tile live in one lane quad, so the two-pool softmax, the
// contribution and the attributions stay in registers (quad shuffles), the attributions
// accumulating over the heads. Finally the block ranks its final scores (keys as in
// rerank_select; each candidate counts the keys above its own) and writes only the
// `results` winners.
//
// FUSED_SHARE_QV: q_table == v_table, a candidate's query and value rows are one row
// (loaded once). FUSED_SHARE_KV: k_table == v_table, a history source's key and value rows
// are one row. The untrained weights use the item table for all three: half the gathers.
//
// Dynamic shared memory (fused_shared_bytes on the Rust side): two buffers of
// [cand_rows][hdp] Q, [cand_rows][hdp] U (unless shared), [src_rows][hdp] K and V, [hd] PF
// (after the heads the same bytes hold the attribution sums [cand_rows][src_rows] floats),
// then the per-query tables of rerank_fused_body.
#define FUSED_WARPS 8
#define FUSED_MAX_CAND (FUSED_WARPS * 16)
#define FUSED_SHARE_QV 1u
#define FUSED_SHARE_KV 2u
#define SRC_TILES (MAX_SLOTS / 8)  // n8 source tiles
#define CLUSTER_BLOCKS 4           // rerank_fused_cluster: blocks (head groups) per query

__device__ __forceinline__ void ldmatrix_x4(unsigned* r, const __half* smem_row) {
    const unsigned addr = (unsigned)__cvta_generic_to_shared(smem_row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}

__device__ __forceinline__ void mma_16816(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ldmatrix from a shared-space byte address (precomputed once per head: the k loops add
// only their byte offset).
__device__ __forceinline__ void ldmatrix_x4_at(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}

// 2^x, flushing denormal results to zero (one MUFU.EX2; __expf without -ftz adds a
// denormal range fix-up of four instructions per call). exp2(-inf) = 0.
__device__ __forceinline__ float exp2_ftz(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// Compile-time counts and source-tile kinds for the fused kernels' generic lambdas.
template <unsigned N>
struct Count {
    static constexpr unsigned value = N;
};
// An n8 source tile: every column history (TILE_HIST), every column context (TILE_CTX), or
// mixed / partly past the sources (TILE_MIXED, per-column predicates). The pools are
// contiguous (history first), so at most two tiles of a query are mixed.
#define TILE_HIST 0u
#define TILE_CTX 1u
#define TILE_MIXED 2u
#define LOG2E 1.4426950408889634f

__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Under a programmatic dependent launch (Cuda::launch_dependent): waits until the previous
// kernel on the stream has completed and its writes are visible. Returns at once for a
// launch without that attribute.
__device__ __forceinline__ void grid_dependency_wait() {
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
}

__device__ __forceinline__ void cp_async_wait_all_groups() {
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

// CLUSTER = false (`rerank_fused`): grid (n), one block runs every head.
// CLUSTER = true (`rerank_fused_cluster`, small batches, where one block's serial walk over
// the heads bounds the latency): grid (n, CLUSTER_BLOCKS), a cluster per query; block r runs
// heads r, r + CLUSTER_BLOCKS, ...; then every block sums the blocks' attention through
// distributed shared memory and ranks the final scores (the same in each), block 0 writes
// the winners and each block a quarter of their attribution rows (summed likewise).
template <bool CLUSTER>
__device__ __forceinline__ void rerank_fused_body(const RerankParams p) {
    extern __shared__ __align__(32) unsigned char smem[];
    const unsigned hd = p.dim / p.heads, hdp = hd + 8;  // odd multiple of 16 bytes per row:
                                                         // ldmatrix rows hit distinct banks
    const unsigned reranked = p.reranked, cand_rows = (reranked + 15) & ~15u;
    const unsigned src_rows = p.src_rows;
    const bool share_qv = (p.flags & FUSED_SHARE_QV) != 0;
    const bool share_kv = (p.flags & FUSED_SHARE_KV) != 0;
    const unsigned q_off = 0, u_off = share_qv ? 0 : cand_rows * hdp;
    const unsigned k_off = cand_rows * hdp * (share_qv ? 1 : 2), v_off = k_off + src_rows * hdp;
    const unsigned pf_off = v_off + src_rows * hdp, buf_halves = pf_off + hd;
    __half* rows = reinterpret_cast<__half*>(smem);
    // After the heads the row buffers hold the attribution sums [cand_rows][attr_ld]: rows
    // padded by 8 floats, so that the 8 rows a warp's float2 stores hit (one per lane quad)
    // start in different banks (unpadded, all 8 start in bank 0: 8-way conflicts).
    float* attr_sum = reinterpret_cast<float*>(smem);
    const unsigned attr_ld = src_rows + 8;
    const unsigned rows_bytes = max(2 * buf_halves * 2, cand_rows * attr_ld * 4);
    unsigned long long* keys = reinterpret_cast<unsigned long long*>(smem + rows_bytes);  // [128]
    float* product_factor = reinterpret_cast<float*>(keys + FUSED_MAX_CAND);  // [MAX_SLOTS]
    float* logit_bias = product_factor + MAX_SLOTS;                           // [MAX_SLOTS]
    unsigned* slot_item = reinterpret_cast<unsigned*>(logit_bias + MAX_SLOTS);  // [MAX_SLOTS]
    unsigned* cand = slot_item + MAX_SLOTS;                                  // [128]
    float* cand_score = reinterpret_cast<float*>(cand + FUSED_MAX_CAND);     // [128]
    float* attention = cand_score + FUSED_MAX_CAND;                          // [128]
    unsigned* winner = reinterpret_cast<unsigned*>(attention + FUSED_MAX_CAND);  // [128]
    float* final_score = reinterpret_cast<float*>(winner + FUSED_MAX_CAND);     // [128]

    const unsigned q = blockIdx.x, t = threadIdx.x, warp = t >> 5, lane = t & 31;
    const unsigned rank = CLUSTER ? blockIdx.y : 0u, head_step = CLUSTER ? CLUSTER_BLOCKS : 1u;
    // Phase marks for a measurement harness: the global timer's low 32 bits (ns).
    unsigned* const marks = p.trace != nullptr && q == 0 && t == 0 ? p.trace + rank * 8 : nullptr;
    auto mark = [&](unsigned phase) {
        if (marks) {
            unsigned long long ns;
            asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(ns));
            marks[phase] = (unsigned)ns;
        }
    };
    mark(0);
    // The query's records: independent loads, issued together.
    const unsigned user = p.q_user[q];
    const unsigned hist_count = p.q_hist_count[q], hist_begin = p.q_hist_begin[q];
    const unsigned ctx_begin = p.q_ctx_offsets[q], ctx_end = p.q_ctx_offsets[q + 1];
    const unsigned n_hist = user == NO_ITEM ? 0u : hist_count;
    const unsigned n_ctx = ctx_end - ctx_begin;
    const unsigned n_src = min(n_hist + n_ctx, (unsigned)MAX_SLOTS);
    const unsigned src16 = (n_src + 15) & ~15u;  // rows the products read (zero past n_src)
    const float inv_sqrt_hd = rsqrtf((float)hd);
    const float q_factor = (1.0f - p.beta) * p.q_scale;
    const bool has_bias = p.beta != 0.0f;
    // Logit factor of the two pools: context rows are the operands themselves.
    // In log2 units (times log2 e): the softmax weights are exp2(x - max), one MUFU each.
    const float logit_hist = q_factor * inv_sqrt_hd * p.k_scale * LOG2E,
                logit_ctx = q_factor * inv_sqrt_hd * LOG2E;
    // One row for a candidate's query and value, one for a history source's key and value,
    // and no fused-query term (the untrained weights): a history source's value product is
    // its raw logit, so only the context sources need the value products' MMAs.
    const bool logit_products = share_qv && share_kv && !has_bias && logit_hist != 0.0f;

    // The sources first: they do not depend on the previous kernel of a programmatic
    // dependent launch (the path's similarity), so their rows load while it finishes.
    if (t < MAX_SLOTS) {
        const unsigned s = t;
        unsigned item = NO_ITEM;
        float pf = 0.0f;
        if (s < n_hist) {
            const size_t at = (size_t)user * p.table_hist_len + hist_begin + s;
            item = p.hist_items[at];
            const float gate = p.gate_offset + p.gate_slope * (p.hist_ratings[at] - 3.0f) * 0.5f;
            pf = p.v_scale * gate * p.v_scale;
            if (logit_products) pf /= logit_hist;  // applied to the scaled logit
        } else if (s < n_src) {
            item = p.q_ctx_rows[ctx_begin + s - n_hist];
            pf = p.v_scale;
        }
        slot_item[s] = item;
        product_factor[s] = pf;
        logit_bias[s] = 0.0f;
    }
    __syncthreads();

    // cp.async of head h's rows into buffer b (zero-filled past the sources / candidates).
    // Thread t copies 16-byte chunk t % chunks of rows t / chunks + k * rows_per_pass.
    const unsigned chunks = hd >> 3, rows_per_pass = blockDim.x / chunks;
    const unsigned my_row = t / chunks, my_col = (t % chunks) * 8;
    auto load_sources = [&](unsigned h, unsigned b) {
        if (my_row >= rows_per_pass) return;
        __half* buf = rows + b * buf_halves;
        const unsigned col = h * hd + my_col;
        for (unsigned s = my_row; s < src16; s += rows_per_pass) {
            const bool hist = s < n_hist, source = s < n_src;
            const size_t at = source ? (size_t)slot_item[s] * p.dim + col : 0;
            const unsigned bytes = source ? 16u : 0u;
            cp_async16(buf + k_off + s * hdp + my_col, (hist ? p.k_table : p.ctx_keys) + at,
                       bytes);
            if (!(hist && share_kv))
                cp_async16(buf + v_off + s * hdp + my_col,
                           (hist ? p.v_table : p.ctx_values) + at, bytes);
        }
    };
    auto load_candidates = [&](unsigned h, unsigned b) {
        if (my_row >= rows_per_pass) return;
        __half* buf = rows + b * buf_halves;
        const unsigned col = h * hd + my_col;
        for (unsigned c = my_row; c < cand_rows; c += rows_per_pass) {
            const unsigned item = cand[c];
            const bool valid = item != NO_ITEM;
            const size_t at = valid ? (size_t)item * p.dim + col : 0;
            const unsigned bytes = valid ? 16u : 0u;
            cp_async16(buf + q_off + c * hdp + my_col, p.q_table + at, bytes);
            if (!share_qv) cp_async16(buf + u_off + c * hdp + my_col, p.v_table + at, bytes);
        }
        if (has_bias && my_row == 0)
            cp_async16(buf + pf_off + my_col, p.pf + (size_t)q * p.dim + col, 16u);
    };
    const bool first_head = n_src > 0 && rank < p.heads;
    if (first_head) load_sources(rank, 0);
    mark(1);

    // Everything below may read the previous kernel's writes (candidates, fused queries).
    grid_dependency_wait();
    mark(2);
    if (t >= MAX_SLOTS && t < MAX_SLOTS + FUSED_MAX_CAND) {
        const unsigned c = t - MAX_SLOTS;
        unsigned item = NO_ITEM;
        float score = -INFINITY;
        if (c < reranked) {
            item = p.cand_ids[(size_t)q * p.cand_stride + c];
            score = p.cand_scores[(size_t)q * p.cand_stride + c];
        }
        cand[c] = item;
        cand_score[c] = score;
        attention[c] = 0.0f;
    }
    __syncthreads();
    if (first_head) {
        load_candidates(rank, 0);
        cp_async_commit();
    }

    // Lane layout of the m16n8 accumulators: rows g and g + 8 of the warp's tile, source
    // columns 2 * t4 and 2 * t4 + 1 of every n8 tile.
    const unsigned g = lane >> 2, t4 = lane & 3;
    const bool warp_active = warp * 16 < reranked;
    float attr[SRC_TILES][4];  // attribution sums over this block's heads, same layout
#pragma unroll
    for (unsigned j = 0; j < SRC_TILES; ++j)
#pragma unroll
        for (unsigned e = 0; e < 4; ++e) attr[j][e] = 0.0f;
    float att[2] = {0.0f, 0.0f};  // attention of rows g and g + 8

    const float hist_mass = n_hist > 0 ? (n_ctx > 0 ? 1.0f - p.context_share : 1.0f) : 0.0f;
    const float ctx_mass = n_ctx > 0 ? (n_hist > 0 ? p.context_share : 1.0f) : 0.0f;

    for (unsigned h = rank, b = 0; h < p.heads && n_src > 0; h += head_step, b ^= 1) {
        const __half* buf = rows + b * buf_halves;
        // Head h's rows have landed, and every warp is done with the previous head's
        // buffer: the next head's rows go there while this head computes.
        cp_async_wait_all_groups();
        __syncthreads();
        if (h == rank) mark(3);
        if (h + head_step < p.heads) {
            load_sources(h + head_step, b ^ 1);
            load_candidates(h + head_step, b ^ 1);
            cp_async_commit();
        }

        // Shared-space byte addresses of this lane's ldmatrix rows; the k loops add 2 * k.
        // A fragments: rows (lane & 15), k offset 8 * (lane >> 4). B rows of an x4 load:
        // sources (lane & 7) + 8 * (lane >> 4) of a pair of n8 tiles, k offset
        // 8 * ((lane >> 3) & 1).
        const unsigned row_bytes = hdp * 2, pair_bytes = 16 * row_bytes, k_bytes = hd * 2;
        const unsigned buf_addr = (unsigned)__cvta_generic_to_shared(buf);
        const unsigned a_row = (warp * 16 + (lane & 15)) * row_bytes + (lane >> 4) * 16;
        const unsigned qa_addr = buf_addr + q_off * 2 + a_row;
        const unsigned ua_addr = buf_addr + (share_qv ? q_off : u_off) * 2 + a_row;
        const unsigned b_row = (lane & 7) + ((lane >> 4) << 3), b_col = ((lane >> 3) & 1) * 8;
        const unsigned kb_addr = buf_addr + (k_off + b_row * hdp + b_col) * 2;
        const unsigned n_pairs = (n_src + 15) >> 4;  // 1..SRC_TILES / 2 (n_src > 0 here)
        float lacc[SRC_TILES][4];
#pragma unroll
        for (unsigned j = 0; j < SRC_TILES; ++j)
#pragma unroll
            for (unsigned e = 0; e < 4; ++e) lacc[j][e] = 0.0f;
        // The logits of PAIRS source-tile pairs: a straight k loop, no per-pair test.
        auto logits = [&](auto pairs_count) {
            constexpr unsigned PAIRS = decltype(pairs_count)::value;
            for (unsigned k = 0; k < k_bytes; k += 32) {
                unsigned a[4];
                ldmatrix_x4_at(a, qa_addr + k);
#pragma unroll
                for (unsigned pair = 0; pair < PAIRS; ++pair) {
                    unsigned bk[4];
                    ldmatrix_x4_at(bk, kb_addr + pair * pair_bytes + k);
                    mma_16816(lacc[2 * pair], a, bk[0], bk[1]);
                    mma_16816(lacc[2 * pair + 1], a, bk[2], bk[3]);
                }
            }
        };
        static_assert(SRC_TILES / 2 == 4, "logits dispatch covers 1..4 source pairs");
        if (warp_active) {
            if (n_pairs >= 4) logits(Count<4>{});
            else if (n_pairs == 3) logits(Count<3>{});
            else if (n_pairs == 2) logits(Count<2>{});
            else logits(Count<1>{});
        }
        if (has_bias) {
            // beta pf_scale PF.K[s] times the source's logit factor, 4 lanes per source.
            const unsigned s = t >> 2, part = t & 3, span = hd >> 2;
            float dot = 0.0f;
            if (s < n_src) {
                const __half* kr = buf + k_off + s * hdp + part * span;
                const __half* fr = buf + pf_off + part * span;
                for (unsigned d = 0; d < span; d += 2) {
                    const float2 kv = __half22float2(*reinterpret_cast<const __half2*>(kr + d));
                    const float2 fv = __half22float2(*reinterpret_cast<const __half2*>(fr + d));
                    dot = fmaf(kv.x, fv.x, fmaf(kv.y, fv.y, dot));
                }
            }
            dot += __shfl_xor_sync(0xffffffffu, dot, 1);
            dot += __shfl_xor_sync(0xffffffffu, dot, 2);
            if (s < MAX_SLOTS && part == 0) {
                const float kf = s < n_hist ? inv_sqrt_hd * p.k_scale : inv_sqrt_hd;
                logit_bias[s] = s < n_src ? LOG2E * kf * p.beta * p.pf_scale * dot : 0.0f;
            }
            __syncthreads();
        }
        if (!warp_active) continue;

        // Two-pool softmax of rows g and g + 8 (r = 0, 1); the weights replace the logits.
        // Tiles past the sources are skipped as a whole, the pool of a tile is known per
        // tile (a uniform branch) except in the mixed tiles, where a column's predicates
        // serve both rows.
        const unsigned hist_tiles = n_hist >> 3, ctx_first_tile = (n_hist + 7) >> 3,
                       full_tiles = n_src >> 3;
        auto for_each_tile = [&](auto&& body) {
#pragma unroll
            for (unsigned j = 0; j < SRC_TILES; ++j) {
                if (j * 8 < n_src) {
                    if (j < hist_tiles) body(j, Count<TILE_HIST>{});
                    else if (j >= ctx_first_tile && j < full_tiles) body(j, Count<TILE_CTX>{});
                    else body(j, Count<TILE_MIXED>{});
                }
            }
        };
        float mh[2] = {-INFINITY, -INFINITY}, mc[2] = {-INFINITY, -INFINITY};
        for_each_tile([&](unsigned j, auto kind) {
            constexpr unsigned KIND = decltype(kind)::value;
            float2 bias = make_float2(0.0f, 0.0f);
            if (has_bias) bias = *reinterpret_cast<const float2*>(logit_bias + j * 8 + 2 * t4);
#pragma unroll
            for (unsigned e = 0; e < 2; ++e) {
                const unsigned s = j * 8 + 2 * t4 + e;
                const bool hist = KIND == TILE_HIST || (KIND == TILE_MIXED && s < n_hist);
                const bool source = KIND != TILE_MIXED || s < n_src;
                const float factor = hist ? logit_hist : logit_ctx;
#pragma unroll
                for (unsigned r = 0; r < 2; ++r) {
                    const float x =
                        source ? fmaf(lacc[j][2 * r + e], factor, e ? bias.y : bias.x) : -INFINITY;
                    lacc[j][2 * r + e] = x;
                    if (hist) mh[r] = fmaxf(mh[r], x);
                    else mc[r] = fmaxf(mc[r], x);
                }
            }
        });
#pragma unroll
        for (unsigned r = 0; r < 2; ++r) {
            mh[r] = fmaxf(mh[r], __shfl_xor_sync(0xffffffffu, mh[r], 1));
            mh[r] = fmaxf(mh[r], __shfl_xor_sync(0xffffffffu, mh[r], 2));
            mc[r] = fmaxf(mc[r], __shfl_xor_sync(0xffffffffu, mc[r], 1));
            mc[r] = fmaxf(mc[r], __shfl_xor_sync(0xffffffffu, mc[r], 2));
        }
        // With logit_products a history source's value product is its logit over
        // logit_hist (product_factor holds the factor over logit_hist): summed here as
        // sum_hist e * factor * x, scaled by the pool's 1 / sum below.
        float sh[2] = {0.0f, 0.0f}, sc[2] = {0.0f, 0.0f}, hist_products[2] = {0.0f, 0.0f};
        for_each_tile([&](unsigned j, auto kind) {
            constexpr unsigned KIND = decltype(kind)::value;
            float2 pf = make_float2(0.0f, 0.0f);
            if (logit_products && KIND != TILE_CTX)
                pf = *reinterpret_cast<const float2*>(product_factor + j * 8 + 2 * t4);
#pragma unroll
            for (unsigned e = 0; e < 2; ++e) {
                const unsigned s = j * 8 + 2 * t4 + e;
                const bool hist = KIND == TILE_HIST || (KIND == TILE_MIXED && s < n_hist);
                const bool source = KIND != TILE_MIXED || s < n_src;
                const float factor = e ? pf.y : pf.x;
#pragma unroll
                for (unsigned r = 0; r < 2; ++r) {
                    const float x = lacc[j][2 * r + e];
                    // Past the sources x is -inf: weight 0 (the pools' maxima are finite).
                    const float w = source ? exp2_ftz(x - (hist ? mh[r] : mc[r])) : 0.0f;
                    lacc[j][2 * r + e] = w;
                    if (hist) {
                        sh[r] += w;
                        if (logit_products)
                            hist_products[r] = fmaf(w * factor, x, hist_products[r]);
                    } else {
                        sc[r] += w;
                    }
                }
            }
        });
        float hist_scale[2], ctx_scale[2], contribution[2];
#pragma unroll
        for (unsigned r = 0; r < 2; ++r) {
            sh[r] += __shfl_xor_sync(0xffffffffu, sh[r], 1);
            sh[r] += __shfl_xor_sync(0xffffffffu, sh[r], 2);
            sc[r] += __shfl_xor_sync(0xffffffffu, sc[r], 1);
            sc[r] += __shfl_xor_sync(0xffffffffu, sc[r], 2);
            hist_scale[r] = sh[r] > 0.0f ? hist_mass / sh[r] : 0.0f;
            ctx_scale[r] = sc[r] > 0.0f ? ctx_mass / sc[r] : 0.0f;
            // This lane's share; the quads are summed at the end.
            contribution[r] = hist_scale[r] * hist_products[r];
        }
        for_each_tile([&](unsigned j, auto kind) {
            constexpr unsigned KIND = decltype(kind)::value;
#pragma unroll
            for (unsigned e = 0; e < 2; ++e) {
                const bool hist =
                    KIND == TILE_HIST || (KIND == TILE_MIXED && j * 8 + 2 * t4 + e < n_hist);
#pragma unroll
                for (unsigned r = 0; r < 2; ++r) {
                    const float w = lacc[j][2 * r + e] * (hist ? hist_scale[r] : ctx_scale[r]);
                    lacc[j][2 * r + e] = w;
                    attr[j][2 * r + e] += w;
                }
            }
        });
        // Value products one pair of source tiles at a time, consumed at once (few live
        // accumulators): contribution += w * product_factor[s] * U[c].V[s]; with
        // logit_products only the pairs that hold context sources.
        const unsigned first_pair = logit_products ? n_hist / 16 : 0u;
#pragma unroll
        for (unsigned pair = 0; pair < SRC_TILES / 2; ++pair) {
            if (pair >= n_pairs) break;
            if (pair < first_pair) continue;
            float pacc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
            const unsigned s_b = pair * 16 + b_row;
            const unsigned vb_addr =
                buf_addr +
                (((share_kv && s_b < n_hist) ? k_off : v_off) + s_b * hdp + b_col) * 2;
            for (unsigned k = 0; k < k_bytes; k += 32) {
                unsigned u[4], bv[4];
                ldmatrix_x4_at(u, ua_addr + k);
                ldmatrix_x4_at(bv, vb_addr + k);
                mma_16816(pacc[0], u, bv[0], bv[1]);
                mma_16816(pacc[1], u, bv[2], bv[3]);
            }
#pragma unroll
            for (unsigned half_tile = 0; half_tile < 2; ++half_tile) {
                const unsigned j = 2 * pair + half_tile;
                const float2 pf = *reinterpret_cast<const float2*>(product_factor + j * 8 + 2 * t4);
#pragma unroll
                for (unsigned e = 0; e < 2; ++e) {
                    const unsigned s = j * 8 + 2 * t4 + e;
                    // Zero weight past the sources: no mask. History sources were summed
                    // from their logits with logit_products.
                    const float factor = logit_products && s < n_hist ? 0.0f : (e ? pf.y : pf.x);
#pragma unroll
                    for (unsigned r = 0; r < 2; ++r)
                        contribution[r] =
                            fmaf(lacc[j][2 * r + e] * factor, pacc[half_tile][2 * r + e],
                                 contribution[r]);
                }
            }
        }
#pragma unroll
        for (unsigned r = 0; r < 2; ++r) {
            float c = contribution[r];
            c += __shfl_xor_sync(0xffffffffu, c, 1);
            c += __shfl_xor_sync(0xffffffffu, c, 2);
            att[r] += c;
        }
    }

    // This block's attention and attribution sums to shared memory (the row buffers are
    // free once every warp is past its last head).
    __syncthreads();
    mark(4);
    if (warp_active) {
        if (t4 == 0) {
            attention[warp * 16 + g] = att[0];
            attention[warp * 16 + g + 8] = att[1];
        }
#pragma unroll
        for (unsigned r = 0; r < 2; ++r) {
            float* row = attr_sum + (warp * 16 + g + 8 * r) * attr_ld;
#pragma unroll
            for (unsigned j = 0; j < SRC_TILES; ++j)
                if (j * 8 < src_rows)
                    *reinterpret_cast<float2*>(row + j * 8 + 2 * t4) =
                        make_float2(attr[j][2 * r], attr[j][2 * r + 1]);
        }
    }
    namespace cg = cooperative_groups;
    // Every block's sums are written (and, in a cluster, visible cluster-wide).
    if constexpr (CLUSTER) cg::this_cluster().sync();
    else __syncthreads();

    // Every block of a cluster finishes alike: it sums the blocks' attention in rank order
    // (the same bits everywhere) into its own final scores, ranks them, and writes its
    // share of the winners' attribution rows; none overwrites what the others read.
    // Final scores -> keys (score key, 22-bit inverted item id, 10-bit position): distinct
    // for the valid candidates, 0 for the others.
    unsigned long long v = 0;
    if (t < reranked) {
        float sum = 0.0f;
        if constexpr (CLUSTER) {
            for (unsigned other = 0; other < CLUSTER_BLOCKS; ++other)
                sum += cg::this_cluster().map_shared_rank(attention, other)[t];
        } else {
            sum = attention[t];
        }
        const unsigned item = cand[t];
        const float r = cand_score[t];
        const float score = n_src == 0 ? r : p.w_retrieval * r + p.w_attention * sum + p.bias;
        final_score[t] = score;
        if (item != NO_ITEM && score != -INFINITY)
            v = ((unsigned long long)float_key(score) << 32) |
                ((unsigned long long)(0x3fffffu - (item & 0x3fffffu)) << 10) | t;
    }
    if (t < FUSED_MAX_CAND) {
        keys[t] = v;
        winner[t] = NO_ITEM;
    }
    __syncthreads();
    mark(5);
    // Each valid candidate's place is the number of keys above its own (no sort: only the
    // first `results` places are written, by the candidates that hold them).
    if (v != 0) {
        unsigned place = 0;
#pragma unroll 8
        for (unsigned j = 0; j < reranked; ++j) place += keys[j] > v;
        if (place < p.results) winner[place] = t;
    }
    __syncthreads();
    mark(6);

    if (rank == 0)
        for (unsigned i = t; i < p.results; i += blockDim.x) {
            const unsigned at = i < FUSED_MAX_CAND ? winner[i] : NO_ITEM;
            const size_t out = (size_t)q * p.results + i;
            if (at == NO_ITEM) {
                p.out_ids[out] = NO_ITEM;
                p.out_scores[out] = -INFINITY;
                p.out_retrieval[out] = -INFINITY;
            } else {
                p.out_ids[out] = cand[at];
                p.out_scores[out] = final_score[at];
                p.out_retrieval[out] = cand_score[at];
            }
        }
    // The winners' attribution rows (mean over the heads; zero past the sources and for
    // padding), summed over the cluster's blocks in rank order; block r writes every
    // out_blocks-th run of blockDim.x entries from run r.
    const unsigned out_blocks = CLUSTER ? CLUSTER_BLOCKS : 1u;
    const float inv_heads = 1.0f / (float)p.heads;
    for (unsigned i = rank * blockDim.x + t; i < p.results * p.slots;
         i += out_blocks * blockDim.x) {
        const unsigned r = i / p.slots, s = i % p.slots;
        const unsigned winner_at = r < FUSED_MAX_CAND ? winner[r] : NO_ITEM;
        float value = 0.0f;
        if (winner_at != NO_ITEM && s < n_src) {
            const unsigned at = winner_at * attr_ld + s;
            if constexpr (CLUSTER) {
                for (unsigned other = 0; other < CLUSTER_BLOCKS; ++other)
                    value += cg::this_cluster().map_shared_rank(attr_sum, other)[at];
            } else {
                value = attr_sum[at];
            }
            value *= inv_heads;
        }
        p.out_attributions[(size_t)q * p.results * p.slots + i] = value;
    }
    // Every block's shared memory stays alive until the others have read it.
    if constexpr (CLUSTER) cg::this_cluster().sync();
    mark(7);
}

extern "C" __global__ void __launch_bounds__(FUSED_WARPS * 32, 2)
rerank_fused(const RerankParams p) {
    rerank_fused_body<false>(p);
}

extern "C" __global__ void __cluster_dims__(1, CLUSTER_BLOCKS, 1)
__launch_bounds__(FUSED_WARPS * 32, 2) rerank_fused_cluster(const RerankParams p) {
    rerank_fused_body<true>(p);
}
