// The batch-1 similarity stage in one kernel: scores of one query against every item and
// the exact top-k of them (seen items excluded), with the selection spread over the GEMV's
// blocks instead of a separate single-block pass.
//
// Why: a one-row top-K in one block is bound by how fast one SM pulls the 125 KB score row
// from L2 and by its barriers (~20 us, see gpu-notes.md). Here every block already holds its
// slice of the scores when its GEMV ends, so each block
//   1. scores its contiguous slice of items (half a warp per row, 16-byte loads, as
//      item_scores_one) and writes the fp16 scores as before,
//   2. masks the user's seen items (one extra warp reads the seen list while the others
//      compute), sorts its slice's order keys in shared memory (rank sort, <= 256 entries),
//      writes the sorted slice to a global list and adds its key counts to a global
//      4096-bin histogram of the keys' high 12 bits (two atomics per distinct bin),
//   3. takes a ticket; the last block to finish finds the bin of the k-th best key in the
//      histogram, gathers from every slice's sorted list only the prefix at or above that bin
//      (a few entries per slice), sorts those and writes the top k. It then clears the
//      histogram and the ticket, so the next launch (or graph replay) needs no memset.
// Nothing waits for another block, so the grid needs no co-residency (no cooperative launch).
// The int8 build (similarity_top_k_one_int8, below) reads an int8 copy of the items first and
// selects from proven bounds instead of the fp16 scores; its section says how.
//
// Exactness: the candidates are every eligible item whose key's bin is at or above the bin
// of the k-th best key, a superset of the top k; sorting them by (key, smaller index) gives
// exactly the selection of topk.cu (NaN excluded, -0 == +0, ties by the smaller index). When
// that bin holds too many items to sort (more than CAND_CAP candidates, e.g. heavily tied
// scores), the last block resolves the bin's low 4 key bits and takes the ties in index
// order instead (the slices' lists are sorted by key, then index).
#include <cuda_fp16.h>
#include "exact_dot.cuh"
#include "fuse_warp.cuh"

#define NO_USER 0xffffffffu
#define NO_ITEM 0xffffffffu
#define GEMV_WARPS 8                          // warps scoring rows in each block
#define ONE_THREADS ((GEMV_WARPS + 1) * 32)   // plus one warp reading the seen list
#define MAX_SLICE 256                         // items per block at most (rank-sort size)
#define MAX_CHUNKS 4                          // dim / 128
#define MAX_DIM (MAX_CHUNKS * 128)
#define BINS 4096                             // the order key's high 12 bits
#define HIST_PER_THREAD 16                    // bins each of the first BINS/16 threads scans
#define HIST_VECS (BINS / 4)                  // the histogram as 16-byte vectors
#define HIST_VECS_PER_THREAD ((HIST_VECS + ONE_THREADS - 1) / ONE_THREADS)
#define HEADS_HELD 2                          // slices whose list heads a thread loads early
#define CAND_CAP 2048                         // candidates the last block sorts in shared memory
#define SEEN_WARP_ITEMS 256                   // seen entries the seen warp handles (8 per lane)
// Workspace (u32 words): histogram, ticket, then the slices' sorted lists.
#define WS_TICKET BINS
#define WS_LISTS (BINS + 16)

// fp16 bits -> 16-bit key whose unsigned order is the float order; 0 = excluded. NaN is
// excluded, -0 keys as +0 (as order_key in topk.cu, which the results must equal).
__device__ __forceinline__ unsigned order_key(unsigned short bits) {
    if ((bits & 0x7fffu) > 0x7c00u) return 0u;
    if (bits == 0x8000u) bits = 0;
    return (bits & 0x8000u) ? (~bits & 0xffffu) : (bits | 0x8000u);
}

__device__ __forceinline__ float key_score(unsigned key) {
    const unsigned short bits =
        (key & 0x8000u) ? (unsigned short)(key & 0x7fffu) : (unsigned short)(~key & 0xffffu);
    return __half2float(__ushort_as_half(bits));
}

// Candidate as in topk.cu: (key << 32) | ~index, larger is better, equal keys by smaller index.
__device__ __forceinline__ unsigned long long pack(unsigned key, unsigned index) {
    return ((unsigned long long)key << 32) | (unsigned long long)(NO_ITEM - index);
}

// A slice entry: (key << 16) | (0xffff - local index). Sorted descending: better keys first,
// equal keys by smaller index. Its key is entry >> 16, its bin entry >> 20.
__device__ __forceinline__ unsigned entry_index(unsigned entry, unsigned slice_begin) {
    return slice_begin + (0xffffu - (entry & 0xffffu));
}

// Inclusive prefix sum over the block. Ends with a barrier so `scratch` (32 words) can be
// reused at once.
__device__ unsigned block_inclusive_scan(unsigned value, unsigned* scratch) {
    const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (unsigned offset = 1; offset < 32; offset <<= 1) {
        const unsigned other = __shfl_up_sync(0xffffffffu, value, offset);
        if (lane >= offset) value += other;
    }
    if (lane == 31) scratch[warp] = value;
    __syncthreads();
    if (warp == 0) {
        unsigned total = lane < (ONE_THREADS >> 5) ? scratch[lane] : 0u;
        for (unsigned offset = 1; offset < 32; offset <<= 1) {
            const unsigned other = __shfl_up_sync(0xffffffffu, total, offset);
            if (lane >= offset) total += other;
        }
        scratch[lane] = total;
    }
    __syncthreads();
    if (warp > 0) value += scratch[warp - 1];
    __syncthreads();
    return value;
}

// Bitonic sort of `padded` (a power of two) candidates, descending. Starts and ends with a
// barrier.
__device__ void sort_descending(unsigned long long* values, unsigned padded) {
    for (unsigned size = 2; size <= padded; size <<= 1) {
        for (unsigned stride = size >> 1; stride > 0; stride >>= 1) {
            __syncthreads();
            for (unsigned i = threadIdx.x; i < (padded >> 1); i += ONE_THREADS) {
                const unsigned lo = 2 * i - (i & (stride - 1)), hi = lo + stride;
                const bool descending = (lo & size) == 0;
                const unsigned long long a = values[lo], b = values[hi];
                if ((a < b) == descending) {
                    values[lo] = b;
                    values[hi] = a;
                }
            }
        }
    }
    __syncthreads();
}

// Writes the best `k_eff` of the `count` (>= k_eff) distinct candidates in `cand` to out[0..k)
// in order, padding the rest with NO_ITEM / -inf. Up to a block's worth of candidates, each
// thread ranks one candidate against all (one barrier); more are bitonic-sorted.
__device__ void write_best(unsigned long long* cand, unsigned count, unsigned k_eff, unsigned k,
                           unsigned* __restrict__ out_ids, float* __restrict__ out_scores) {
    const unsigned t = threadIdx.x;
    __syncthreads();
    if (count <= ONE_THREADS) {
        if (t < count) {
            const unsigned long long mine = cand[t];
            unsigned rank = 0;
#pragma unroll 8
            for (unsigned j = 0; j < count; ++j) rank += cand[j] > mine;
            if (rank < k_eff) {
                out_ids[rank] = NO_ITEM - (unsigned)(mine & 0xffffffffull);
                out_scores[rank] = key_score((unsigned)(mine >> 32));
            }
        }
    } else {
        unsigned padded = 1;
        while (padded < count) padded <<= 1;
        for (unsigned i = count + t; i < padded; i += ONE_THREADS) cand[i] = 0;
        sort_descending(cand, padded);
        for (unsigned i = t; i < k_eff; i += ONE_THREADS) {
            out_ids[i] = NO_ITEM - (unsigned)(cand[i] & 0xffffffffull);
            out_scores[i] = key_score((unsigned)(cand[i] >> 32));
        }
    }
    for (unsigned i = k_eff + t; i < k; i += ONE_THREADS) {
        out_ids[i] = NO_ITEM;
        out_scores[i] = -INFINITY;
    }
}

// How many of a slice's head entries (the first four of its list, best first, of which
// the slice has `s_count`) lead it at or above bin `kth_bin`: the run the last block takes
// without reading the list again. KEYED: only entries with a key (int8 lists).
template <bool KEYED>
__device__ __forceinline__ unsigned leading_taken(uint4 head, unsigned s_count, unsigned kth_bin) {
    const unsigned e[4] = {head.x, head.y, head.z, head.w};
    unsigned n = 0;
#pragma unroll
    for (unsigned u = 0; u < 4; ++u)
        if (n == u && u < s_count && (!KEYED || (e[u] >> 16) != 0u) && (e[u] >> 20) >= kth_bin)
            ++n;
    return n;
}

// atomicAdd(ticket, 1) with release and acquire semantics at GPU scope: publishes what the
// block wrote before it (after a barrier) and, for the block that draws the last ticket,
// makes every other block's published writes visible.
__device__ __forceinline__ unsigned ticket_acq_rel(unsigned* ticket) {
    unsigned previous;
    asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;"
                 : "=r"(previous)
                 : "l"(ticket)
                 : "memory");
    return previous;
}

// Phase marks for a measurement harness (`trace` non-null): the low 32 bits of the SM clock
// and of the global nanosecond timer.
__device__ __forceinline__ unsigned clock_mark() { return (unsigned)clock64(); }
__device__ __forceinline__ unsigned global_mark() {
    unsigned long long ns;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(ns));
    return (unsigned)ns;
}

// Marks the seen items of this block's slice [begin, begin + count) in `seen_bits`: entries
// first .. len of the user's list, `stride` threads from thread `from`, 8 loads in flight each.
// Seen lists may repeat items or hold NO_ITEM padding: only marks are set.
__device__ __forceinline__ void mark_seen(const unsigned* __restrict__ list, unsigned first,
                                          unsigned len, unsigned from, unsigned stride,
                                          unsigned begin, unsigned count, unsigned* seen_bits) {
    for (unsigned base = first + from; base < len; base += 8 * stride) {
        unsigned item[8];
#pragma unroll
        for (unsigned u = 0; u < 8; ++u) {
            const unsigned i = base + u * stride;
            item[u] = i < len ? list[i] : NO_ITEM;
        }
#pragma unroll
        for (unsigned u = 0; u < 8; ++u) {
            const unsigned local = item[u] - begin;  // wraps past `count` below the slice
            if (local < count) atomicOr(&seen_bits[local >> 5], 1u << (local & 31));
        }
    }
}

// ---------------------------------------------------------------------------------------
// The int8 first pass (similarity_top_k_one_int8).
//
// Why: the fp16 pass streams the 48 MB item table from HBM every query (~16 us at the
// floor); an int8 copy with per-row scales (24 MB) stays in the H100's 50 MB L2 between
// queries and is read in a few microseconds. Its scores are approximate, so every block
// turns them into proven bounds on the exact fp16 pass's keys and the last block rescores
// only the items those bounds cannot rule out, with the fp16 pass's own arithmetic:
//   codes:  x~[j] in [-127, 127]^dim, scale s[j] = max |h[j]| / 127 of the fp16 row h[j];
//   bounds: per row (s, r, n, 0) with r >= ||h - s x~||, n >= ||s x~|| (host, in f64);
//   query:  q~ = rint(q / sq) in int16, sq = max |q| / 32767, dq = q - sq q~ (per block;
//           ||dq|| <= 0.51 sq sqrt(dim), as every |dq_d| is at most half a step);
//   approx: a = sq s (q~ . x~) (int32 dot products, dp2a);
//   then |q.h - a| <= ||q|| r + ||dq|| n (Cauchy-Schwarz on the two residuals) plus the
//   floating-point slack of both computations (see bound_of). With e the exact pass's fp32
//   score and key() the fp16 order key, key(rd(a - B)) <= key(e) <= key(ru(a + B)).
// Selection without global atomics (every block finishes its L2-fast pass at about the same
// time, and 60K histogram atomics arriving together serialized for ~9 us): each block
// publishes its four best lower keys L ("L-heads"), its eligible count, its list sorted by
// upper key U, and the exact keys of its two best-U rows (rescored by the block's idle seen
// warp while the others sort the slice). The last block takes the k-th best bin b of the
// L-heads (a shared-memory histogram): at least k eligible items have L in b or above, so
// every item of the top k has U >= key >= b, and the candidates are the list entries whose U
// clears b. It rescores those that are not among their slice's two precomputed rows and
// selects. Rows the bounds cannot describe (non-finite rows or query, huge values) make their
// U 0xffff ("unknown") and send the last block to an exact slow path, as do too few L-heads
// (k beyond four per slice) and a candidate set beyond CAND_CAP.
#define QUERY_LEVELS 32767.0f  // int16 query codes
#define UNKNOWN_KEY 0xffffu    // above every real key (+inf keys as 0xfc00)
#define DQ_STEPS 0.51f         // |q_d - sq q~_d| <= DQ_STEPS * sq (half a step and slack)
#define PREFETCH_HEAD 4        // rows of each slice's best upper keys prefetched into L2
#define EXACT_HEAD 2           // rows of each slice's best upper keys the block rescores
#define WS_UNKNOWN (BINS + 1)  // workspace word: blocks that hold unknown rows
#define UNSCORED_AT (CAND_CAP / 2)  // last block: candidates still to rescore go from here

// Bound on |exact - a| for a row with bounds (s, r, n) and the query's norms. Slack: the
// exact pass sums <= dim / 16 + 4 fp32 terms per lane and tree (relative error < 2.3e-6 of
// sum |q h| <= ||q|| (n + r)), `a`'s three roundings (< 3.1e-7 |a|), and the norms' and this
// expression's roundings (relative < 5e-5, covered by the final factor).
__device__ __forceinline__ float bound_of(float a, float4 row, float q_norm, float dq_norm) {
    return (q_norm * (row.y + 1e-5f * (row.z + row.y)) + dq_norm * row.z + 4e-7f * fabsf(a)) *
           1.0001f;
}

// Lower and upper order keys of an approximate score; UNKNOWN_KEY / 0 when the bound is not
// finite or the values are too large for the slack terms to cover.
__device__ __forceinline__ void bound_keys(float a, float bound, unsigned* lower,
                                           unsigned* upper) {
    if (!(fabsf(a) + bound <= 1e30f)) {  // also catches NaN
        *lower = 0u;
        *upper = UNKNOWN_KEY;
        return;
    }
    *lower = order_key(__half_as_ushort(__float2half_rd(__fsub_rd(a, bound))));
    *upper = order_key(__half_as_ushort(__float2half_ru(__fadd_ru(a, bound))));
}

// Sum / max / or over the block (ONE_THREADS threads); every thread gets the results, in the
// same order of operations in every block. Uses red[0 .. 3 * 32).
__device__ __forceinline__ void block_reduce(float* sum, float* maximum, unsigned* any,
                                             float* red) {
    const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float s = *sum, m = *maximum;
    unsigned o = *any;
#pragma unroll
    for (unsigned offset = 16; offset > 0; offset >>= 1) {
        s += __shfl_xor_sync(0xffffffffu, s, offset);
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, offset));
        o |= __shfl_xor_sync(0xffffffffu, o, offset);
    }
    if (lane == 0) {
        red[warp] = s;
        red[32 + warp] = m;
        red[64 + warp] = __uint_as_float(o);
    }
    __syncthreads();
    s = 0.0f;
    m = 0.0f;
    o = 0u;
#pragma unroll
    for (unsigned w = 0; w < ONE_THREADS / 32; ++w) {
        s += red[w];
        m = fmaxf(m, red[32 + w]);
        o |= __float_as_uint(red[64 + w]);
    }
    *sum = s;
    *maximum = m;
    *any = o;
    __syncthreads();  // red may be reused at once
}

// The exact pass's scores of the rows whose halves `a` and `b` hold (lane `sub` of each half
// warp: halves c * 128 + 8 sub .. + 7 of its row pair), for the fp32 query in shared memory:
// the same products in the same order as item_scores_one (exact_dot.cuh) and the same shuffle
// tree, so the fp16 keys agree bit for bit. Every lane of the warp calls it; lanes `sub == 0`
// get the sums.
__device__ __forceinline__ void exact_products(const uint4 (&a)[MAX_CHUNKS],
                                               const uint4 (&b)[MAX_CHUNKS],
                                               const float* query_s, unsigned chunks,
                                               float* sa_out, float* sb_out) {
    const unsigned sub = (threadIdx.x & 31) & 15;
    float sa = 0.0f, sb = 0.0f;
#pragma unroll
    for (unsigned c = 0; c < MAX_CHUNKS; ++c) {
        if (c < chunks) {
            const float4 q0 = *reinterpret_cast<const float4*>(query_s + c * 128 + sub * 8);
            const float4 q1 = *reinterpret_cast<const float4*>(query_s + c * 128 + sub * 8 + 4);
            const float qv[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
            const __half2* ha = reinterpret_cast<const __half2*>(&a[c]);
            const __half2* hb = reinterpret_cast<const __half2*>(&b[c]);
#pragma unroll
            for (unsigned e = 0; e < 4; ++e) {
                const float2 fa = __half22float2(ha[e]), fb = __half22float2(hb[e]);
                sa = accumulate_pair(sa, qv[2 * e], fa.x, qv[2 * e + 1], fa.y);
                sb = accumulate_pair(sb, qv[2 * e], fb.x, qv[2 * e + 1], fb.y);
            }
        }
    }
    // Sum over the 16 lanes of each half (xor offsets below 16 stay within the half).
#pragma unroll
    for (unsigned offset = 8; offset > 0; offset >>= 1) {
        sa += __shfl_xor_sync(0xffffffffu, sa, offset);
        sb += __shfl_xor_sync(0xffffffffu, sb, offset);
    }
    *sa_out = sa;
    *sb_out = sb;
}

// exact_products of item rows `row_a` and `row_b` (each lane passes its own half's rows;
// `valid` false: a zero row), loaded here.
__device__ __forceinline__ void exact_rows(const __half* __restrict__ items, unsigned dim,
                                           const float* query_s, unsigned row_a, bool valid_a,
                                           unsigned row_b, bool valid_b, float* sa_out,
                                           float* sb_out) {
    const unsigned sub = (threadIdx.x & 31) & 15, chunks = dim >> 7;
    uint4 a[MAX_CHUNKS], b[MAX_CHUNKS];
#pragma unroll
    for (unsigned c = 0; c < MAX_CHUNKS; ++c) {
        a[c] = b[c] = make_uint4(0, 0, 0, 0);
        if (c < chunks) {
            if (valid_a)
                a[c] = *reinterpret_cast<const uint4*>(items + (size_t)row_a * dim + c * 128 + sub * 8);
            if (valid_b)
                b[c] = *reinterpret_cast<const uint4*>(items + (size_t)row_b * dim + c * 128 + sub * 8);
        }
    }
    exact_products(a, b, query_s, chunks, sa_out, sb_out);
}

// Replaces the entries cand[from .. to) (low 32 bits: NO_ITEM - index; key bits ignored) by
// pack(exact key, index). Four rows per warp per step (two per half warp), all of a step's
// loads in flight together; sets *nan_seen when an exact key is 0 (a NaN score).
__device__ void rescore(unsigned long long* cand, unsigned from, unsigned to,
                        const __half* __restrict__ items, unsigned dim, const float* query_s,
                        unsigned* nan_seen) {
    const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5, sub = lane & 15,
                   side = lane >> 4;
    for (unsigned first = from + warp * 4; first < to; first += ONE_THREADS / 8) {
        const unsigned pa = first + side, pb = first + 2 + side;
        const bool va = pa < to, vb = pb < to;
        const unsigned ia = va ? NO_ITEM - (unsigned)(cand[pa] & 0xffffffffull) : 0u;
        const unsigned ib = vb ? NO_ITEM - (unsigned)(cand[pb] & 0xffffffffull) : 0u;
        float sa, sb;
        exact_rows(items, dim, query_s, ia, va, ib, vb, &sa, &sb);
        if (sub == 0) {
            if (va) {
                const unsigned key = order_key(__half_as_ushort(__float2half_rn(sa)));
                cand[pa] = pack(key, ia);
                if (key == 0) *nan_seen = 1u;
            }
            if (vb) {
                const unsigned key = order_key(__half_as_ushort(__float2half_rn(sb)));
                cand[pb] = pack(key, ib);
                if (key == 0) *nan_seen = 1u;
            }
        }
    }
}

// The exact selection when the bounds cannot narrow it (unknown rows, or more candidates
// than CAND_CAP): every list entry whose upper key is nonzero and whose bin is at least
// `min_bin` is rescored, slice by slice, keeping the best k (exact keys, ties by the smaller
// index) in cand[0 .. kept) between rounds. Slow (one block rescoring up to the whole
// catalog) and only for such inputs; exact whatever they are. `misc` words 12 .. 15 are its
// counters.
__device__ void exact_slow_path(unsigned long long* cand, const unsigned* __restrict__ lists,
                                unsigned n_items, unsigned slice, unsigned n_slices,
                                unsigned min_bin, unsigned k, const __half* __restrict__ items,
                                unsigned dim, const float* query_s, unsigned* scratch,
                                unsigned* misc, unsigned* __restrict__ out_ids,
                                float* __restrict__ out_scores) {
    const unsigned t = threadIdx.x;
    unsigned* kept = &misc[12];     // exact entries at the front of cand
    unsigned* pending = &misc[13];  // entries after them still to rescore
    unsigned* nan_seen = &misc[14];
    if (t == 0) {
        *kept = 0;
        *pending = 0;
    }
    __syncthreads();
    auto flush = [&]() {
        const unsigned from = *kept, to = from + *pending;
        rescore(cand, from, to, items, dim, query_s, nan_seen);
        unsigned padded = 1;
        while (padded < to) padded <<= 1;
        __syncthreads();
        for (unsigned i = to + t; i < padded; i += ONE_THREADS) cand[i] = 0;
        sort_descending(cand, padded);
        // Entries with key 0 (NaN scores) sort last; keep at most k of the others.
        unsigned valid = 0;
        for (unsigned i = t; i < to; i += ONE_THREADS) valid += (cand[i] >> 32) != 0;
        valid = block_inclusive_scan(valid, scratch);
        if (t == ONE_THREADS - 1) {
            *kept = min(valid, k);
            *pending = 0;
        }
        __syncthreads();
    };
    for (unsigned s = 0; s < n_slices; ++s) {
        const unsigned s_begin = s * slice, s_count = min(slice, n_items - s_begin);
        if (*kept + *pending + s_count > CAND_CAP) flush();
        const unsigned entry = t < s_count ? __ldcg(lists + s_begin + t) : 0u;
        const unsigned take = t < s_count && (entry >> 16) != 0 && (entry >> 20) >= min_bin;
        const unsigned through = block_inclusive_scan(take, scratch);
        if (take) cand[*kept + *pending + through - 1] = pack(0, entry_index(entry, s_begin));
        __syncthreads();
        if (t == ONE_THREADS - 1) *pending += through;
        __syncthreads();
    }
    flush();
    const unsigned n = *kept;
    for (unsigned i = t; i < k; i += ONE_THREADS) {
        if (i < n) {
            out_ids[i] = NO_ITEM - (unsigned)(cand[i] & 0xffffffffull);
            out_scores[i] = key_score((unsigned)(cand[i] >> 32));
        } else {
            out_ids[i] = NO_ITEM;
            out_scores[i] = -INFINITY;
        }
    }
}

// Calls emit(entry, slice_begin) for the leading entries of slice s's sorted list, from
// position r on, whose key is nonzero and whose bin is at least min_bin, in list order.
template <typename Emit>
__device__ __forceinline__ void walk_list(const unsigned* __restrict__ lists, unsigned s,
                                          unsigned r, unsigned slice, unsigned n_items,
                                          unsigned min_bin, Emit emit) {
    const unsigned s_begin = s * slice, s_count = min(slice, n_items - s_begin);
    for (; r < s_count; r += 4) {
        const uint4 v = __ldcg(reinterpret_cast<const uint4*>(lists + s_begin + r));
        const unsigned e[4] = {v.x, v.y, v.z, v.w};
        bool more = true;
#pragma unroll
        for (unsigned u = 0; u < 4; ++u) {
            if (more && r + u < s_count && (e[u] >> 16) != 0u && (e[u] >> 20) >= min_bin)
                emit(e[u], s_begin);
            else
                more = false;
        }
        if (!more) break;
    }
}

// The fusion stage folded into the batch-1 kernel (GpuPath, one query without the cache):
// the query embedding, the user table, the fusion records ([offsets; 2][members]), alpha, and
// where the fused query goes for the rerank.
struct Fold {
    const float* query;
    const __half* users;
    const unsigned* records;
    float alpha;
    float* fused;
};

// One query: scores[j] = fp16(query . items[j]) for every item, and the best k (1..=1024)
// eligible items into out_ids / out_scores ([k], best first, ties by the smaller index,
// padded with NO_ITEM / -inf).
//   items:      [n_items, dim] fp16, dim a multiple of 128 up to 512
//   slice:      items per block (a multiple of 32, <= MAX_SLICE); the grid is
//               ceil(n_items / slice) blocks of ONE_THREADS threads
//   exclude_user, seen_*: as topk_filter (exclude_user[0] is the query's user or NO_USER;
//               null for no exclusion)
//   workspace:  WS_LISTS + grid * (slice + 7) words, all zero before the first launch; every
//               launch leaves the histogram, ticket and unknown count zero again (the lists
//               and the INT8 per-slice words after them are scratch)
//   trace:      null, or (grid + 1) * 8 words of phase marks (see gpu-bench --trace-fused)
//   fold:       with fold.users non-null, the query is fused here (fuse_one_warp, by the
//               seen warp before the query barrier) from fold.query, the members' user rows
//               and fold.alpha, and block 0 writes it to fold.fused; `query` is unused
// INT8: the int8 first pass above instead of the fp16 pass; `scores` is not written.
//   codes:      [n_items, dim] int8 item codes (16-byte aligned rows)
//   bounds:     [n_items] (scale, residual norm, code norm, 0) per row
template <bool INT8>
__device__ __forceinline__ void
similarity_top_k_body(const __half* __restrict__ items, const int4* __restrict__ codes,
                      const float4* __restrict__ bounds, unsigned n_items,
                      const float* __restrict__ query, unsigned dim, unsigned slice,
                      const unsigned* __restrict__ exclude_user,
                      const unsigned* __restrict__ seen_offsets,
                      const unsigned* __restrict__ seen_lens,
                      const unsigned* __restrict__ seen_items, unsigned k,
                      __half* __restrict__ scores, unsigned* __restrict__ workspace,
                      unsigned* __restrict__ out_ids, float* __restrict__ out_scores,
                      const Fold fold, unsigned* __restrict__ trace) {
    __shared__ __align__(16) float query_s[MAX_DIM];
    __shared__ __align__(16) unsigned entries[MAX_SLICE];  // this slice's entries, by item
    // This slice sorted (other blocks), or the last block's candidates.
    __shared__ __align__(16) unsigned long long cand[CAND_CAP];
    __shared__ unsigned seen_bits[MAX_SLICE / 32];
    __shared__ unsigned scratch[32];
    __shared__ unsigned misc[16];
    // INT8: lower keys of this slice, the int16 query codes (pairs), reduction scratch.
    __shared__ unsigned lower_keys[INT8 ? MAX_SLICE : 1];
    __shared__ __align__(16) unsigned query_codes[INT8 ? MAX_DIM / 2 : 1];
    __shared__ float red[INT8 ? 96 : 1];
    __shared__ unsigned warp_tops[INT8 ? (MAX_SLICE / 32) * 4 : 1];
    __shared__ unsigned warp_upper_tops[INT8 ? (MAX_SLICE / 32) * EXACT_HEAD : 1];
    unsigned* sorted = reinterpret_cast<unsigned*>(cand);
    unsigned* hist = workspace;
    unsigned* lists = workspace + WS_LISTS;
    // INT8, after the lists: per slice 4 L-heads, EXACT_HEAD exact keys, the eligible count.
    unsigned* lower_heads = lists + gridDim.x * slice;
    unsigned* exact_heads = lower_heads + 4 * gridDim.x;
    unsigned* eligible = exact_heads + EXACT_HEAD * gridDim.x;

    const unsigned t = threadIdx.x, warp = t >> 5, lane = t & 31;
    const unsigned begin = blockIdx.x * slice;
    const unsigned count = min(slice, n_items - begin);  // the grid covers n_items exactly
    unsigned* mark = trace ? trace + blockIdx.x * 8 : nullptr;
    if (mark && t == 0) {
        mark[0] = global_mark();
        mark[2] = clock_mark();
    }

    // The first rows' loads go out before the barrier that publishes the query, so the
    // query's own load latency overlaps them.
    const unsigned sub = lane & 15, side = lane >> 4, chunks = dim >> 7;
    uint4 a[MAX_CHUNKS], b[MAX_CHUNKS];
    auto load_rows = [&](unsigned first) {
        const unsigned row_a = first + side, row_b = first + 2 + side;
#pragma unroll
        for (unsigned c = 0; c < MAX_CHUNKS; ++c) {
            a[c] = b[c] = make_uint4(0, 0, 0, 0);
            if (c < chunks) {
                if (row_a < count)
                    a[c] = *reinterpret_cast<const uint4*>(
                        items + (size_t)(begin + row_a) * dim + c * 128 + sub * 8);
                if (row_b < count)
                    b[c] = *reinterpret_cast<const uint4*>(
                        items + (size_t)(begin + row_b) * dim + c * 128 + sub * 8);
            }
        }
    };
    // INT8: eight lanes per row (lane `part` reads 16 bytes of codes per 128-column chunk),
    // four rows per warp step; two steps' codes in flight (ca / cb), lane part == 0 also
    // loads its row's bounds.
    const unsigned part = lane & 7, quarter = lane >> 3;
    int4 ca[MAX_CHUNKS], cb[MAX_CHUNKS];
    float4 ba = make_float4(0, 0, 0, 0), bb = make_float4(0, 0, 0, 0);
    auto load_codes = [&](unsigned first, int4 (&c4)[MAX_CHUNKS], float4& bnd) {
        const unsigned row = first + quarter;
#pragma unroll
        for (unsigned c = 0; c < MAX_CHUNKS; ++c) {
            c4[c] = make_int4(0, 0, 0, 0);
            if (c < chunks && row < count)
                c4[c] = codes[(size_t)(begin + row) * (dim >> 4) + c * 8 + part];
        }
        if (part == 0 && row < count) bnd = bounds[begin + row];
    };
    // (The fold comes first in program order so its registers are free before the scoring
    // warps' loads are live; the seen warp runs it while the others issue their loads.)
    if (fold.users != nullptr) {
        if (warp == GEMV_WARPS)
            fuse_one_warp<MAX_CHUNKS>(fold.query, fold.users, fold.records[0], fold.records[1],
                                      fold.records + 2, fold.alpha, dim, query_s,
                                      blockIdx.x == 0 ? fold.fused : nullptr, nullptr);
    } else {
        for (unsigned i = t; i < dim; i += ONE_THREADS) query_s[i] = query[i];
    }
    if constexpr (INT8) {
        if (warp < GEMV_WARPS) load_codes(warp * 4, ca, ba);
    } else {
        if (warp < GEMV_WARPS) load_rows(warp * 4);
    }
    if (t < MAX_SLICE / 32) seen_bits[t] = 0;
    // Entries past the slice stay 0, which never ranks above a real entry.
    for (unsigned i = t; i < MAX_SLICE; i += ONE_THREADS) entries[i] = 0;
    if (t < 16) misc[t] = 0;
    __syncthreads();
    float q_norm = 0.0f, dq_norm = 0.0f, q_scale = 0.0f;
    if constexpr (INT8) {
        // The query's int16 codes and the norms the bounds need; non-finite values make
        // every row unknown.
        float sum = 0.0f, amax = 0.0f;
        unsigned bad = 0u;
        for (unsigned i = t; i < dim; i += ONE_THREADS) {
            const float v = query_s[i];
            bad |= !isfinite(v);
            amax = fmaxf(amax, fabsf(v));
            sum += v * v;
        }
        block_reduce(&sum, &amax, &bad, red);
        q_norm = sqrtf(sum);
        q_scale = amax / QUERY_LEVELS;
        const float inverse = amax > 0.0f ? QUERY_LEVELS / amax : 0.0f;
        if (t < (dim >> 1)) {
            const float2 v = *reinterpret_cast<const float2*>(query_s + 2 * t);
            const float c0 = fminf(fmaxf(rintf(v.x * inverse), -QUERY_LEVELS), QUERY_LEVELS);
            const float c1 = fminf(fmaxf(rintf(v.y * inverse), -QUERY_LEVELS), QUERY_LEVELS);
            query_codes[t] = ((unsigned)(int)c0 & 0xffffu) | ((unsigned)(int)c1 << 16);
        }
        // Rounding to the nearest code leaves |q_d - sq q~_d| <= sq / 2 (plus a few ulps of
        // the scale's own rounding): a bound on ||dq|| without a second reduction. Its term
        // in the bound is ~1e-3 of the item residual's.
        dq_norm = DQ_STEPS * q_scale * sqrtf((float)dim);
        if (bad) q_norm = INFINITY;  // every bound becomes unknown
        __syncthreads();  // publishes query_codes
    }
    if (mark && t == 0) mark[3] = clock_mark();

    if (INT8 && warp < GEMV_WARPS) {
        // 1'. Approximate scores and their key bounds. Lane `part` of quarter `quarter`
        // multiplies 16 codes per chunk by the matching 16 int16 query codes (8 pairs from
        // shared memory) with dp2a, then the eight lanes of the row sum.
        auto approximate = [&](unsigned first, const int4 (&c4)[MAX_CHUNKS], float4 bnd) {
            const unsigned row = first + quarter;
            int acc = 0;
#pragma unroll
            for (unsigned c = 0; c < MAX_CHUNKS; ++c) {
                if (c < chunks) {
                    const uint4* qp =
                        reinterpret_cast<const uint4*>(query_codes + (c * 8 + part) * 8);
                    const uint4 q0 = qp[0], q1 = qp[1];
                    acc = __dp2a_lo((int)q0.x, c4[c].x, acc);
                    acc = __dp2a_hi((int)q0.y, c4[c].x, acc);
                    acc = __dp2a_lo((int)q0.z, c4[c].y, acc);
                    acc = __dp2a_hi((int)q0.w, c4[c].y, acc);
                    acc = __dp2a_lo((int)q1.x, c4[c].z, acc);
                    acc = __dp2a_hi((int)q1.y, c4[c].z, acc);
                    acc = __dp2a_lo((int)q1.z, c4[c].w, acc);
                    acc = __dp2a_hi((int)q1.w, c4[c].w, acc);
                }
            }
#pragma unroll
            for (unsigned offset = 4; offset > 0; offset >>= 1)
                acc += __shfl_xor_sync(0xffffffffu, acc, offset);
            if (part == 0 && row < count) {
                const float a = (q_scale * bnd.x) * (float)acc;
                unsigned lower, upper;
                bound_keys(a, bound_of(a, bnd, q_norm, dq_norm), &lower, &upper);
                entries[row] = (upper << 16) | (0xffffu - row);
                lower_keys[row] = lower;
            }
        };
        for (unsigned first = warp * 4; first < count; first += 2 * GEMV_WARPS * 4) {
            const unsigned second = first + GEMV_WARPS * 4;
            if (second < count) load_codes(second, cb, bb);
            approximate(first, ca, ba);
            if (second >= count) break;
            if (second + GEMV_WARPS * 4 < count) load_codes(second + GEMV_WARPS * 4, ca, ba);
            approximate(second, cb, bb);
        }
    } else if (!INT8 && warp < GEMV_WARPS) {
        // 1. Scores: a warp takes four consecutive rows per step, half a warp per row pair;
        // lane `sub` of half `side` reads 16 bytes of rows r + side and r + 2 + side per
        // 128-column chunk, all loads issued before any product.
        for (unsigned first = warp * 4; first < count; first += GEMV_WARPS * 4) {
            if (first != warp * 4) load_rows(first);
            const unsigned row_a = first + side, row_b = first + 2 + side;
            float sa, sb;
            exact_products(a, b, query_s, chunks, &sa, &sb);
            if (sub == 0) {
                if (row_a < count) {
                    const __half h = __float2half_rn(sa);
                    scores[begin + row_a] = h;
                    entries[row_a] = (order_key(__half_as_ushort(h)) << 16) | (0xffffu - row_a);
                }
                if (row_b < count) {
                    const __half h = __float2half_rn(sb);
                    scores[begin + row_b] = h;
                    entries[row_b] = (order_key(__half_as_ushort(h)) << 16) | (0xffffu - row_b);
                }
            }
        }
    } else if (exclude_user != nullptr) {
        // The seen warp: its dependent loads (user -> run -> items) overlap the GEMV.
        const unsigned user = exclude_user[0];
        if (user != NO_USER) {
            const unsigned run = seen_offsets[user], len = seen_lens[user];
            if (lane == 0) {
                misc[0] = run;
                misc[1] = len;
            }
            mark_seen(seen_items + run, 0, min(len, (unsigned)SEEN_WARP_ITEMS), lane, 32, begin,
                      count, seen_bits);
        }
    }
    __syncthreads();
    // Long seen lists: the rest with every thread.
    if (misc[1] > SEEN_WARP_ITEMS) {
        mark_seen(seen_items + misc[0], SEEN_WARP_ITEMS, misc[1], t, ONE_THREADS, begin, count,
                  seen_bits);
        __syncthreads();
    }
    if (mark && t == 0) mark[4] = clock_mark();

    // 2. Seen items' keys to 0, rank sort of the slice, its list and histogram counts.
    // Each thread masks only its own entry, so one barrier suffices before the ranks.
    unsigned mine = 0;
    if (t < count) {
        mine = entries[t];
        if ((seen_bits[t >> 5] >> (t & 31)) & 1u) {
            mine &= 0xffffu;
            entries[t] = mine;
            if constexpr (INT8) lower_keys[t] = 0u;
        }
    }
    unsigned lower_top = 0;  // INT8: this warp's running L-head candidate (packed)
    if constexpr (INT8) {
        // This warp's four best lower keys (packed with the local index, so distinct), by
        // four warp maxima; whether an eligible row of this slice is unknown; the slice's
        // eligible count (the barrier counts it).
        const unsigned lower = t < count ? lower_keys[t] : 0u;
        lower_top = lower != 0u ? (lower << 16) | (0xffffu - t) : 0u;
        if (t < count && (mine >> 16) == UNKNOWN_KEY) misc[15] = 1u;
        if (warp < MAX_SLICE / 32) {
#pragma unroll
            for (unsigned r = 0; r < 4; ++r) {
                const unsigned best = __reduce_max_sync(0xffffffffu, lower_top);
                if (lower_top == best) lower_top = 0;
                if (lane == 0) warp_tops[warp * 4 + r] = best;
            }
            // And its EXACT_HEAD best entries (upper keys), which the seen warp rescores while
            // the others sort.
            unsigned upper_top = t < count ? mine : 0u;
#pragma unroll
            for (unsigned r = 0; r < EXACT_HEAD; ++r) {
                const unsigned best = __reduce_max_sync(0xffffffffu, upper_top);
                if (upper_top == best) upper_top = 0;
                if (lane == 0) warp_upper_tops[warp * EXACT_HEAD + r] = best;
            }
        }
        const unsigned n_eligible = __syncthreads_count(lower != 0u);
        if (t == 0) {
            eligible[blockIdx.x] = n_eligible;
            if (misc[15] != 0u) atomicAdd(&workspace[WS_UNKNOWN], 1u);
        }
    } else {
        __syncthreads();
    }
    if (INT8 && warp == GEMV_WARPS) {
        // The seen warp rescores this slice's EXACT_HEAD best-U rows (half a warp each), the
        // likeliest candidates, so the last block rarely has to; the fp16 rows' latency
        // overlaps the others' sort (they meet again at the barrier before the ticket).
        unsigned v = lane < (MAX_SLICE / 32) * EXACT_HEAD ? warp_upper_tops[lane] : 0u;
        unsigned e = 0;
#pragma unroll
        for (unsigned r = 0; r < EXACT_HEAD; ++r) {
            const unsigned best = __reduce_max_sync(0xffffffffu, v);
            if (v == best) v = 0;
            if (side == r) e = best;
        }
        const bool valid = (e >> 16) != 0u;
        const unsigned index = valid ? entry_index(e, begin) : 0u;
        float sa, unused;
        exact_rows(items, dim, query_s, index, valid, 0u, false, &sa, &unused);
        if (sub == 0)
            exact_heads[blockIdx.x * EXACT_HEAD + side] =
                valid ? order_key(__half_as_ushort(__float2half_rn(sa))) : 0u;
    }
    if (t < count) {
        unsigned rank = 0;
        const uint4* all = reinterpret_cast<const uint4*>(entries);
#pragma unroll 4
        for (unsigned j = 0; j < (count + 3) / 4; ++j) {
            const uint4 v = all[j];
            rank += (v.x > mine) + (v.y > mine) + (v.z > mine) + (v.w > mine);
        }
        sorted[rank] = mine;
    }
    if constexpr (INT8) {
        // The sorting warps only (the seen warp is rescoring).
        if (warp < GEMV_WARPS) asm volatile("bar.sync 1, %0;" ::"r"(GEMV_WARPS * 32) : "memory");
    } else {
        __syncthreads();
    }
    if constexpr (INT8) {
        if (warp == 0) {
            // The slice's four best lower keys from the warps' fours.
            unsigned v = lane < ((count + 31) / 32) * 4 ? warp_tops[lane] : 0u;
#pragma unroll
            for (unsigned r = 0; r < 4; ++r) {
                const unsigned best = __reduce_max_sync(0xffffffffu, v);
                if (v == best) v = 0;
                if (lane == r) lower_top = best;
            }
            if (lane < 4) lower_heads[blockIdx.x * 4 + lane] = lower_top;
        }
        if (t < count) lists[begin + t] = sorted[t];
        // The next rows the last block may rescore start on their way into L2.
        const unsigned lines = dim >> 6;  // 128-byte lines per fp16 row
        const unsigned p = EXACT_HEAD + t / lines;
        if (warp < GEMV_WARPS && t < (PREFETCH_HEAD - EXACT_HEAD) * lines && p < count) {
            const unsigned e = sorted[p];
            if ((e >> 16) != 0u) {
                const char* line = reinterpret_cast<const char*>(
                                       items + (size_t)entry_index(e, begin) * dim) +
                                   (t % lines) * 128;
                asm volatile("prefetch.global.L2 [%0];" ::"l"(line));
            }
        }
    } else if (t < count) {
        const unsigned entry = sorted[t], bin = entry >> 20;
        lists[begin + t] = entry;
        // Entries of one bin are consecutive: the run's last entry finds the run's first
        // (binary search over the descending bins) and adds the run's length, one atomic
        // per distinct bin.
        if (bin != 0 && (t + 1 == count || (sorted[t + 1] >> 20) != bin)) {
            unsigned lo = 0, hi = t;
            while (lo < hi) {
                const unsigned mid = (lo + hi) >> 1;
                if ((sorted[mid] >> 20) > bin) lo = mid + 1;
                else hi = mid;
            }
            atomicAdd(&hist[bin], t + 1 - lo);
        }
    }
    if (mark) {
        __syncthreads();
        if (t == 0) mark[5] = clock_mark();
    }

    // 3. The last block to finish selects. The barrier orders every thread's list writes and
    // histogram atomics before thread 0's ticket, whose release (cumulative over what the
    // barrier ordered) publishes them and whose acquire, in the last block, makes every
    // other block's visible; one thread pays the fence instead of 288 each waiting on their
    // own stores (the slowest blocks spent ~5 us there).
    __syncthreads();
    if (t == 0) misc[2] = ticket_acq_rel(&workspace[WS_TICKET]) == gridDim.x - 1;
    __syncthreads();
    if (mark && t == 0) {
        mark[1] = global_mark();
        mark[6] = clock_mark();
    }
    if (misc[2] == 0) return;
    unsigned* last_mark = trace ? trace + gridDim.x * 8 : nullptr;
    if (last_mark && t == 0) last_mark[0] = clock_mark();
    auto mark_end = [&]() {
        if (last_mark) {
            __syncthreads();
            if (t == 0) {
                last_mark[3] = clock_mark();
                last_mark[4] = global_mark();
            }
        }
    };

    // The heads (first four entries) of slices t + j * ONE_THREADS and the histogram are
    // loaded together, one L2 round trip: the histogram as coalesced 16-byte vectors into
    // shared memory (it reuses `cand`, free until the gather), cleared in L2 for the next
    // launch as it goes. Most slices hold no candidate or only a few, all in their head.
    const unsigned n_slices = gridDim.x;
    uint4 head[HEADS_HELD];
#pragma unroll
    for (unsigned j = 0; j < HEADS_HELD; ++j) {
        const unsigned s = t + j * ONE_THREADS;
        head[j] = s < n_slices ? __ldcg(reinterpret_cast<const uint4*>(lists + s * slice))
                               : make_uint4(0, 0, 0, 0);
    }
    unsigned* hist_s = reinterpret_cast<unsigned*>(cand);
    // INT8: the slices' L-heads, exact head keys and eligible counts, in the same round trip.
    uint4 lower_held[HEADS_HELD];
    uint2 exact_held[HEADS_HELD];
    unsigned eligible_held = 0;
    if constexpr (INT8) {
#pragma unroll
        for (unsigned j = 0; j < HEADS_HELD; ++j) {
            const unsigned s = t + j * ONE_THREADS;
            lower_held[j] = make_uint4(0, 0, 0, 0);
            exact_held[j] = make_uint2(0, 0);
            if (s < n_slices) {
                lower_held[j] = __ldcg(reinterpret_cast<const uint4*>(lower_heads) + s);
                exact_held[j] = __ldcg(reinterpret_cast<const uint2*>(exact_heads) + s);
                eligible_held += __ldcg(eligible + s);
            }
        }
        // The L-heads' histogram in shared memory (cleared first).
        for (unsigned v = t; v < HIST_VECS; v += ONE_THREADS)
            reinterpret_cast<uint4*>(hist_s)[v] = make_uint4(0, 0, 0, 0);
        __syncthreads();
        auto count_heads = [&](uint4 h) {
            const unsigned e[4] = {h.x, h.y, h.z, h.w};
#pragma unroll
            for (unsigned u = 0; u < 4; ++u)
                if (e[u] != 0u) atomicAdd(&hist_s[e[u] >> 20], 1u);
        };
#pragma unroll
        for (unsigned j = 0; j < HEADS_HELD; ++j) count_heads(lower_held[j]);
        for (unsigned s = t + HEADS_HELD * ONE_THREADS; s < n_slices; s += ONE_THREADS) {
            count_heads(__ldcg(reinterpret_cast<const uint4*>(lower_heads) + s));
            eligible_held += __ldcg(eligible + s);
        }
        const unsigned total = block_inclusive_scan(eligible_held, scratch);
        if (t == ONE_THREADS - 1) misc[9] = total;  // eligible items
    } else {
        uint4 vec[HIST_VECS_PER_THREAD];
        uint4* hist_vecs = reinterpret_cast<uint4*>(hist);
#pragma unroll
        for (unsigned j = 0; j < HIST_VECS_PER_THREAD; ++j) {
            const unsigned v = t + j * ONE_THREADS;
            if (v < HIST_VECS) vec[j] = __ldcg(hist_vecs + v);
        }
#pragma unroll
        for (unsigned j = 0; j < HIST_VECS_PER_THREAD; ++j) {
            const unsigned v = t + j * ONE_THREADS;
            if (v < HIST_VECS) {
                __stcg(hist_vecs + v, make_uint4(0, 0, 0, 0));
                reinterpret_cast<uint4*>(hist_s)[v] = vec[j];
            }
        }
    }
    (void)lower_held;
    (void)exact_held;
    if (t == 0) {
        workspace[WS_TICKET] = 0;
        if constexpr (INT8) {
            misc[11] = __ldcg(&workspace[WS_UNKNOWN]);
            workspace[WS_UNKNOWN] = 0;
        }
    }
    __syncthreads();
    // Thread t < BINS / HIST_PER_THREAD holds bins BINS-1 - t*HIST_PER_THREAD downwards
    // (held[i] is bin BINS-1 - t*HIST_PER_THREAD - i), so one scan finds the bin of the
    // k_eff-th best.
    unsigned held[HIST_PER_THREAD];
    unsigned held_total = 0;
    {
        const bool holds = t < BINS / HIST_PER_THREAD;
        const unsigned lowest = holds ? BINS - HIST_PER_THREAD * (t + 1) : 0u;
        const uint4* mine = reinterpret_cast<const uint4*>(hist_s + lowest);
#pragma unroll
        for (unsigned j = 0; j < HIST_PER_THREAD / 4; ++j) {
            const uint4 v = holds ? mine[j] : make_uint4(0, 0, 0, 0);
            held[HIST_PER_THREAD - 1 - 4 * j] = v.x;
            held[HIST_PER_THREAD - 2 - 4 * j] = v.y;
            held[HIST_PER_THREAD - 3 - 4 * j] = v.z;
            held[HIST_PER_THREAD - 4 - 4 * j] = v.w;
        }
#pragma unroll
        for (unsigned i = 0; i < HIST_PER_THREAD; ++i) held_total += held[i];
    }
    const unsigned through = block_inclusive_scan(held_total, scratch);
    if (t == ONE_THREADS - 1) misc[3] = through;  // eligible items (INT8: L-heads)
    __syncthreads();
    const unsigned k_eff = min(k, INT8 ? misc[9] : misc[3]);
    if (INT8 && (misc[11] != 0 || misc[3] < k_eff)) {
        // Rows without a usable bound, or fewer L-heads than k: the exact selection over
        // every unseen item.
        exact_slow_path(cand, lists, n_items, slice, gridDim.x, 0u, k, items, dim, query_s,
                        scratch, misc, out_ids, out_scores);
        return;
    }
    if (k_eff == 0) {
        for (unsigned i = t; i < k; i += ONE_THREADS) {
            out_ids[i] = NO_ITEM;
            out_scores[i] = -INFINITY;
        }
        return;
    }
    {
        unsigned above = through - held_total;
        if (above < k_eff && k_eff <= through) {
#pragma unroll
            for (unsigned i = 0; i < HIST_PER_THREAD; ++i) {
                if (above < k_eff && k_eff <= above + held[i]) {
                    misc[4] = BINS - 1 - (t * HIST_PER_THREAD + i);  // the k_eff-th best's bin
                    misc[5] = above;                                 // items in better bins
                    misc[6] = held[i];                               // items in that bin
                }
                above += held[i];
            }
        }
    }
    __syncthreads();
    const unsigned kth_bin = misc[4], above_bin = misc[5], in_bin = misc[6];
    if (last_mark && t == 0) {
        last_mark[1] = clock_mark();
        last_mark[5] = above_bin + in_bin > CAND_CAP;  // 1: the tie fallback runs
        last_mark[6] = above_bin + in_bin;              // candidates
    }

    if constexpr (INT8) {
        // Every entry whose upper key clears the bin: each slice's list starts with them.
        // Those at list positions below EXACT_HEAD come with their exact keys (cand from 0,
        // counted in misc[7]); the others are rescored here (cand from UNSCORED_AT, misc[8]).
        unsigned taken[HEADS_HELD];
        unsigned n_scored = 0, n_unscored = 0;
#pragma unroll
        for (unsigned j = 0; j < HEADS_HELD; ++j) {
            const unsigned s = t + j * ONE_THREADS;
            const unsigned s_count = s < n_slices ? min(slice, n_items - s * slice) : 0u;
            const unsigned n = leading_taken<true>(head[j], s_count, kth_bin);
            taken[j] = n;
            n_scored += min(n, (unsigned)EXACT_HEAD);
            n_unscored += n - min(n, (unsigned)EXACT_HEAD);
        }
        unsigned at_scored = n_scored, at_unscored = n_unscored;  // inclusive over the warp
#pragma unroll
        for (unsigned offset = 1; offset < 32; offset <<= 1) {
            const unsigned a = __shfl_up_sync(0xffffffffu, at_scored, offset);
            const unsigned b = __shfl_up_sync(0xffffffffu, at_unscored, offset);
            if (lane >= offset) {
                at_scored += a;
                at_unscored += b;
            }
        }
        unsigned base_scored = 0, base_unscored = 0;
        if (lane == 31) {
            if (at_scored > 0) base_scored = atomicAdd(&misc[7], at_scored);
            if (at_unscored > 0) base_unscored = atomicAdd(&misc[8], at_unscored);
        }
        at_scored += __shfl_sync(0xffffffffu, base_scored, 31) - n_scored;
        at_unscored += __shfl_sync(0xffffffffu, base_unscored, 31) - n_unscored;
#pragma unroll
        for (unsigned j = 0; j < HEADS_HELD; ++j) {
            const unsigned s_begin = (t + j * ONE_THREADS) * slice;
            const unsigned e[4] = {head[j].x, head[j].y, head[j].z, head[j].w};
            const unsigned exact[2] = {exact_held[j].x, exact_held[j].y};
#pragma unroll
            for (unsigned u = 0; u < 4; ++u) {
                if (u >= taken[j]) continue;
                const unsigned index = entry_index(e[u], s_begin);
                if (u < EXACT_HEAD) {
                    if (exact[u] == 0u) misc[14] = 1u;  // a NaN score
                    if (at_scored < UNSCORED_AT) cand[at_scored] = pack(exact[u], index);
                    ++at_scored;
                } else {
                    if (at_unscored < CAND_CAP - UNSCORED_AT)
                        cand[UNSCORED_AT + at_unscored] = pack(0u, index);
                    ++at_unscored;
                }
            }
        }
        // Then the rest: slices whose whole head cleared the bin (from entry 4 on) and slices
        // past the held ones.
        auto take_rest = [&](unsigned s, unsigned r) {
            walk_list(lists, s, r, slice, n_items, kth_bin, [&](unsigned e, unsigned s_begin) {
                const unsigned at = atomicAdd(&misc[8], 1u);
                if (at < CAND_CAP - UNSCORED_AT)
                    cand[UNSCORED_AT + at] = pack(0u, entry_index(e, s_begin));
            });
        };
#pragma unroll
        for (unsigned j = 0; j < HEADS_HELD; ++j)
            if (taken[j] == 4) take_rest(t + j * ONE_THREADS, 4);
        // (Slices past the held ones are rescored whole: their exact heads are not loaded.)
        for (unsigned s = t + HEADS_HELD * ONE_THREADS; s < n_slices; s += ONE_THREADS)
            take_rest(s, 0);
        __syncthreads();
        const unsigned scored = misc[7], unscored = misc[8];
        if (last_mark && t == 0) {
            last_mark[2] = clock_mark();
            last_mark[6] = scored + unscored;
        }
        if (scored > UNSCORED_AT || unscored > CAND_CAP - UNSCORED_AT) {
            exact_slow_path(cand, lists, n_items, slice, n_slices, kth_bin, k, items, dim,
                            query_s, scratch, misc, out_ids, out_scores);
            return;
        }
        rescore(cand, UNSCORED_AT, UNSCORED_AT + unscored, items, dim, query_s, &misc[14]);
        __syncthreads();
        if (last_mark && t == 0) {
            last_mark[5] = unscored;
            last_mark[7] = clock_mark();
        }
        if (misc[14] != 0) {  // a NaN score the bounds did not foresee: start over exactly
            exact_slow_path(cand, lists, n_items, slice, n_slices, 0u, k, items, dim, query_s,
                            scratch, misc, out_ids, out_scores);
            return;
        }
        // Compact both ranges to the front, keeping only exact keys at or above the bin: the
        // top k all are (at least k items have L, hence their key, in the bin or above), and
        // the selection then ranks about half the gathered entries. Through registers, as
        // the ranges overlap their destinations.
        constexpr unsigned HELD = 4;
        const unsigned total = scored + unscored;
        if (total > HELD * ONE_THREADS) {  // heavy ties only: the exact slow path
            exact_slow_path(cand, lists, n_items, slice, n_slices, kth_bin, k, items, dim,
                            query_s, scratch, misc, out_ids, out_scores);
            return;
        }
        const unsigned floor_key = kth_bin << 4;
        unsigned long long held_entries[HELD];
        unsigned keep_mask = 0, kept = 0;
#pragma unroll
        for (unsigned m = 0; m < HELD; ++m) {
            const unsigned i = t + m * ONE_THREADS;
            held_entries[m] =
                i < scored ? cand[i] : (i < total ? cand[UNSCORED_AT + i - scored] : 0ull);
            if (i < total && (held_entries[m] >> 32) >= floor_key) {
                keep_mask |= 1u << m;
                ++kept;
            }
        }
        const unsigned kept_through = block_inclusive_scan(kept, scratch);  // ends in a barrier
        unsigned at = kept_through - kept;
#pragma unroll
        for (unsigned m = 0; m < HELD; ++m)
            if ((keep_mask >> m) & 1u) cand[at++] = held_entries[m];
        if (t == ONE_THREADS - 1) misc[10] = kept_through;
        __syncthreads();
        write_best(cand, misc[10], k_eff, k, out_ids, out_scores);
        mark_end();
        return;
    }
    if (above_bin + in_bin <= CAND_CAP) {
        // Every eligible entry at or above the bin: each slice's list starts with them.
        // First the heads already loaded: their leading entries that clear the bin, placed
        // with one shared atomic per warp.
        unsigned taken[HEADS_HELD];
        unsigned mine = 0;
#pragma unroll
        for (unsigned j = 0; j < HEADS_HELD; ++j) {
            const unsigned s = t + j * ONE_THREADS;
            const unsigned s_count = s < n_slices ? min(slice, n_items - s * slice) : 0u;
            const unsigned n = leading_taken<false>(head[j], s_count, kth_bin);
            taken[j] = n;
            mine += n;
        }
        unsigned place = mine;  // inclusive prefix over the warp
#pragma unroll
        for (unsigned offset = 1; offset < 32; offset <<= 1) {
            const unsigned other = __shfl_up_sync(0xffffffffu, place, offset);
            if (lane >= offset) place += other;
        }
        unsigned warp_base = 0;
        if (lane == 31 && place > 0) warp_base = atomicAdd(&misc[7], place);
        place += __shfl_sync(0xffffffffu, warp_base, 31) - mine;
#pragma unroll
        for (unsigned j = 0; j < HEADS_HELD; ++j) {
            const unsigned s_begin = (t + j * ONE_THREADS) * slice;
            const unsigned e[4] = {head[j].x, head[j].y, head[j].z, head[j].w};
#pragma unroll
            for (unsigned u = 0; u < 4; ++u)
                if (u < taken[j]) cand[place++] = pack(e[u] >> 16, entry_index(e[u], s_begin));
        }
        // Then the rest, rare at this size: slices whose whole head cleared the bin (from
        // entry 4 on) and slices past the held ones (small slices of large catalogs).
        auto take_from = [&](unsigned s, unsigned r) {
            walk_list(lists, s, r, slice, n_items, kth_bin, [&](unsigned e, unsigned s_begin) {
                cand[atomicAdd(&misc[7], 1u)] = pack(e >> 16, entry_index(e, s_begin));
            });
        };
#pragma unroll
        for (unsigned j = 0; j < HEADS_HELD; ++j)
            if (taken[j] == 4) take_from(t + j * ONE_THREADS, 4);
        for (unsigned s = t + HEADS_HELD * ONE_THREADS; s < n_slices; s += ONE_THREADS)
            take_from(s, 0);
        __syncthreads();
        if (last_mark && t == 0) last_mark[2] = clock_mark();
        write_best(cand, misc[7], k_eff, k, out_ids, out_scores);
        mark_end();
        return;
    }

    // Too many candidates in the k_eff-th best's bin (heavy ties): its low 4 key bits give the
    // exact threshold key, then keys above it and the first ties in index order.
    unsigned* low_hist = scratch;  // 16 bins; scratch is free between scans
    if (t < 16) low_hist[t] = 0;
    __syncthreads();
    for (unsigned s = t; s < n_slices; s += ONE_THREADS) {
        const unsigned s_begin = s * slice, s_count = min(slice, n_items - s_begin);
        for (unsigned r = 0; r < s_count; ++r) {
            const unsigned e = __ldcg(lists + s_begin + r);
            if ((e >> 20) < kth_bin) break;
            if ((e >> 20) == kth_bin) atomicAdd(&low_hist[(e >> 16) & 0xfu], 1u);
        }
    }
    __syncthreads();
    if (t == 0) {
        unsigned above = above_bin, low = 15;
        for (;; --low) {
            if (k_eff <= above + low_hist[low] || low == 0) break;
            above += low_hist[low];
        }
        misc[8] = (kth_bin << 4) | low;  // the k_eff-th best key
        misc[9] = above;                 // keys strictly above it
    }
    __syncthreads();
    const unsigned threshold = misc[8], better = misc[9], ties_needed = k_eff - better;
    // Contiguous runs of slices per thread keep the ties in index order.
    const unsigned per_thread = (n_slices + ONE_THREADS - 1) / ONE_THREADS;
    const unsigned s_first = min(t * per_thread, n_slices);
    const unsigned s_last = min(s_first + per_thread, n_slices);
    unsigned ties = 0;
    for (unsigned s = s_first; s < s_last; ++s) {
        const unsigned s_begin = s * slice, s_count = min(slice, n_items - s_begin);
        for (unsigned r = 0; r < s_count; ++r) {
            const unsigned e = __ldcg(lists + s_begin + r), key = e >> 16;
            if (key < threshold) break;
            if (key > threshold) cand[atomicAdd(&misc[10], 1u)] = pack(key, entry_index(e, s_begin));
            else ++ties;
        }
    }
    const unsigned tie_end = block_inclusive_scan(ties, scratch);
    unsigned tie_rank = tie_end - ties;
    for (unsigned s = s_first; s < s_last && tie_rank < ties_needed; ++s) {
        const unsigned s_begin = s * slice, s_count = min(slice, n_items - s_begin);
        for (unsigned r = 0; r < s_count && tie_rank < ties_needed; ++r) {
            const unsigned e = __ldcg(lists + s_begin + r), key = e >> 16;
            if (key < threshold) break;
            if (key == threshold) {
                cand[better + tie_rank] = pack(key, entry_index(e, s_begin));
                ++tie_rank;
            }
        }
    }
    write_best(cand, k_eff, k_eff, k, out_ids, out_scores);
    mark_end();
}

// Both builds take the same parameters (the caller picks the function): `codes` and
// `bounds` are read by the int8 build only, `scores` written by the fp16 build only.
#define SIMILARITY_ONE_PARAMS                                                                  \
    const __half *__restrict__ items, const int4 *__restrict__ codes,                         \
        const float4 *__restrict__ bounds, unsigned n_items, const float *__restrict__ query,  \
        unsigned dim, unsigned slice, const unsigned *__restrict__ exclude_user,               \
        const unsigned *__restrict__ seen_offsets, const unsigned *__restrict__ seen_lens,     \
        const unsigned *__restrict__ seen_items, unsigned k, __half *__restrict__ scores,      \
        unsigned *__restrict__ workspace, unsigned *__restrict__ out_ids,                      \
        float *__restrict__ out_scores, const Fold fold, unsigned *__restrict__ trace
#define SIMILARITY_ONE_ARGS                                                                    \
    items, codes, bounds, n_items, query, dim, slice, exclude_user, seen_offsets, seen_lens,  \
        seen_items, k, scores, workspace, out_ids, out_scores, fold, trace

// Both builds let a programmatic dependent launch (the path's rerank, which waits for this
// grid's writes with griddepcontrol.wait) start as soon as every block here has started:
// its blocks take the SMs that the scoring blocks leave while the last block selects. A
// no-op for launches without dependents.
__device__ __forceinline__ void allow_dependent_launch() {
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}

extern "C" __global__ void __launch_bounds__(ONE_THREADS, 3)
similarity_top_k_one(SIMILARITY_ONE_PARAMS) {
    allow_dependent_launch();
    similarity_top_k_body<false>(SIMILARITY_ONE_ARGS);
}

// The same selection from the int8 first pass (the fp16 rows only for the rescoring).
extern "C" __global__ void __launch_bounds__(ONE_THREADS, 3)
similarity_top_k_one_int8(SIMILARITY_ONE_PARAMS) {
    allow_dependent_launch();
    similarity_top_k_body<true>(SIMILARITY_ONE_ARGS);
}
