// Per-query top-K selection over fp16 score rows: radix select on the score bits, then a
// small sort of the survivors. No full sort of the score vector.
#include <cooperative_groups.h>
#include <cuda_fp16.h>

#define THREADS 1024
#define MAX_K 1024
#define NO_USER 0xffffffffu
#define NO_ITEM 0xffffffffu

// fp16 bits -> 16-bit key whose unsigned order is the float order. Key 0 means "excluded":
// it sorts below every real score. NaN scores are excluded (never selected) and -0 keys as
// +0, as in the CPU selector, where they compare equal.
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

// Survivors pack as (key << 32) | (~index): a larger packed value is a better candidate,
// and between equal keys the smaller item index wins.
__device__ __forceinline__ unsigned long long pack(unsigned key, unsigned index) {
    return ((unsigned long long)key << 32) | (unsigned long long)(NO_ITEM - index);
}

// Inclusive prefix sum over the block (NT threads, a multiple of 32). Ends with a barrier so
// `scratch` (32 words) can be reused at once.
template <unsigned NT>
__device__ unsigned block_inclusive_scan(unsigned value, unsigned* scratch) {
    const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (unsigned offset = 1; offset < 32; offset <<= 1) {
        const unsigned other = __shfl_up_sync(0xffffffffu, value, offset);
        if (lane >= offset) value += other;
    }
    if (lane == 31) scratch[warp] = value;
    __syncthreads();
    if (warp == 0) {
        unsigned total = lane < (NT >> 5) ? scratch[lane] : 0u;
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

#define BINS 4096  // first digit: the key's high 12 bits (sign, exponent, 6 mantissa bits)

// The bin b of `hist` (`bins` bins, higher bin = better) holding the `rank`-th best element:
// sum(bins > b) < rank <= sum(bins >= b). Writes b and sum(bins > b) to out[0], out[1].
// Each thread scans a run of bins from the top, so one block scan finds it. The caller
// guarantees 1 <= rank <= sum(hist).
template <unsigned NT>
__device__ void find_bin(const unsigned* hist, unsigned bins, unsigned rank, unsigned* scratch,
                         unsigned* out) {
    const unsigned per_thread = (bins + NT - 1) / NT;
    const unsigned first = threadIdx.x * per_thread;  // in descending bin order
    unsigned count = 0;
    for (unsigned i = first; i < first + per_thread && i < bins; ++i) count += hist[bins - 1 - i];
    const unsigned through = block_inclusive_scan<NT>(count, scratch);
    unsigned above = through - count;
    if (above < rank && rank <= through) {
        for (unsigned i = first; i < first + per_thread && i < bins; ++i) {
            const unsigned c = hist[bins - 1 - i];
            if (rank <= above + c) {
                out[0] = bins - 1 - i;
                out[1] = above;
                break;
            }
            above += c;
        }
    }
    __syncthreads();
}

// One block of THREADS threads per query row.
//   scores:       [n, ld] fp16, ld a multiple of 8 and >= n_items (padding ignored)
//   prior:        null, or [n, n_items] fp32 added to each score before selection
//   exclude_user: [n] user-table row whose seen items are excluded, or NO_USER
//   seen_*:       the seen sets: user u's items are seen_items[offsets[u] .. + lens[u]]
//   out_ids / out_scores: [n, k], best first, ties by smaller index; rows with fewer
//                 eligible items than k are padded with NO_ITEM / -inf.
// Dynamic shared memory: topk_shared_bytes(n_items) (see the Rust side): survivors,
// histogram, scratch, then the row's keys.
extern "C" __global__ void __launch_bounds__(THREADS, 1)
topk_rows(const __half* __restrict__ scores, unsigned ld, unsigned n_items,
          const float* __restrict__ prior, const unsigned* __restrict__ exclude_user,
          const unsigned* __restrict__ seen_offsets, const unsigned* __restrict__ seen_lens,
          const unsigned* __restrict__ seen_items, unsigned k,
          unsigned* __restrict__ out_ids, float* __restrict__ out_scores) {
    extern __shared__ __align__(16) unsigned char smem[];
    unsigned long long* survivors = reinterpret_cast<unsigned long long*>(smem);  // [MAX_K]
    unsigned* hist = reinterpret_cast<unsigned*>(survivors + MAX_K);              // [BINS]
    unsigned* scratch = hist + BINS;                                               // [32]
    unsigned* misc = scratch + 32;                                                 // [16]
    unsigned short* keys = reinterpret_cast<unsigned short*>(misc + 16);           // [nvec*8]

    const unsigned q = blockIdx.x, t = threadIdx.x;
    const unsigned nvec = (n_items + 7) >> 3;
    const __half* row = scores + (size_t)q * ld;
    const float* prior_row = prior ? prior + (size_t)q * n_items : nullptr;

    // 1. Keys of the row into shared memory (prior added, padding excluded). Four 16-byte
    // loads per thread are issued before any is used, to hide memory latency.
    for (unsigned base = 0; base < nvec; base += 4 * THREADS) {
        uint4 raw[4];
#pragma unroll
        for (unsigned u = 0; u < 4; ++u) {
            const unsigned v = base + u * THREADS + t;
            raw[u] = v < nvec ? reinterpret_cast<const uint4*>(row)[v] : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (unsigned u = 0; u < 4; ++u) {
            const unsigned v = base + u * THREADS + t;
            if (v >= nvec) continue;
            unsigned short* h = reinterpret_cast<unsigned short*>(&raw[u]);
#pragma unroll
            for (unsigned e = 0; e < 8; ++e) {
                const unsigned j = v * 8 + e;
                unsigned key = 0;
                if (j < n_items) {
                    unsigned short bits = h[e];
                    if (prior_row) {
                        const float s = __half2float(__ushort_as_half(bits)) + prior_row[j];
                        bits = __half_as_ushort(__float2half_rn(s));
                    }
                    key = order_key(bits);
                }
                h[e] = (unsigned short)key;
            }
            reinterpret_cast<uint4*>(keys)[v] = raw[u];
        }
    }
    for (unsigned i = t; i < BINS; i += THREADS) hist[i] = 0;
    if (t < 16) misc[t] = 0;
    __syncthreads();

    // 2. Seen items out.
    const unsigned user = exclude_user ? exclude_user[q] : NO_USER;
    if (user != NO_USER) {
        const unsigned begin = seen_offsets[user], len = seen_lens[user];
        for (unsigned i = t; i < len; i += THREADS) {
            const unsigned item = seen_items[begin + i];
            if (item < n_items) keys[item] = 0;
        }
    }
    __syncthreads();

    // 3. Histogram of the high 12 bits; find the bin of the k-th best. Scores spread over
    // hundreds of these bins, so plain shared atomics rarely collide within a warp.
    for (unsigned v = t; v < nvec; v += THREADS) {
        const uint4 raw = reinterpret_cast<const uint4*>(keys)[v];
        const unsigned short* h = reinterpret_cast<const unsigned short*>(&raw);
#pragma unroll
        for (unsigned e = 0; e < 8; ++e) atomicAdd(&hist[h[e] >> 4], 1u);
    }
    __syncthreads();
    const unsigned eligible = nvec * 8 - hist[0];
    const unsigned k_eff = min(k, eligible);
    if (k_eff == 0) {
        for (unsigned i = t; i < k; i += THREADS) {
            out_ids[(size_t)q * k + i] = NO_ITEM;
            out_scores[(size_t)q * k + i] = -INFINITY;
        }
        return;
    }
    find_bin<THREADS>(hist, BINS, k_eff, scratch, misc);
    const unsigned high = misc[0], above_high = misc[1];
    if (t < 16) hist[t] = 0;
    __syncthreads();

    // 4. Histogram of the low 4 bits among keys in that bin; the threshold key follows.
    for (unsigned v = t; v < nvec; v += THREADS) {
        const uint4 raw = reinterpret_cast<const uint4*>(keys)[v];
        const unsigned short* h = reinterpret_cast<const unsigned short*>(&raw);
#pragma unroll
        for (unsigned e = 0; e < 8; ++e)
            if ((h[e] >> 4) == high) atomicAdd(&hist[h[e] & 0xfu], 1u);
    }
    __syncthreads();
    find_bin<THREADS>(hist, 16, k_eff - above_high, scratch, misc + 2);
    const unsigned threshold = (high << 4) | misc[2];
    const unsigned better = above_high + misc[3];  // keys strictly above the threshold
    const unsigned ties_needed = k_eff - better;

    // 5. Compaction. Keys above the threshold (fewer than k) go anywhere (sorted below);
    // ties take the smallest indices: each thread owns a contiguous run of the row, and a
    // scan of the per-thread tie counts orders the runs.
    const unsigned run = (nvec + THREADS - 1) / THREADS;
    const unsigned run_begin = min(t * run, nvec), run_end = min(run_begin + run, nvec);
    unsigned ties = 0;
    for (unsigned v = run_begin; v < run_end; ++v) {
        uint4 raw = reinterpret_cast<const uint4*>(keys)[v];
        const unsigned short* h = reinterpret_cast<const unsigned short*>(&raw);
#pragma unroll
        for (unsigned e = 0; e < 8; ++e) {
            if (h[e] > threshold) survivors[atomicAdd(&misc[4], 1u)] = pack(h[e], v * 8 + e);
            ties += h[e] == threshold;
        }
    }
    const unsigned tie_rank_end = block_inclusive_scan<THREADS>(ties, scratch);
    unsigned tie_rank = tie_rank_end - ties;
    for (unsigned v = run_begin; v < run_end && tie_rank < ties_needed; ++v) {
        uint4 raw = reinterpret_cast<const uint4*>(keys)[v];
        const unsigned short* h = reinterpret_cast<const unsigned short*>(&raw);
#pragma unroll
        for (unsigned e = 0; e < 8; ++e) {
            if (h[e] == threshold) {
                if (tie_rank < ties_needed) survivors[better + tie_rank] = pack(h[e], v * 8 + e);
                ++tie_rank;
            }
        }
    }
    unsigned padded = 1;
    while (padded < k_eff) padded <<= 1;
    for (unsigned i = k_eff + t; i < padded; i += THREADS) survivors[i] = 0;

    // 6. Bitonic sort of the survivors, descending.
    for (unsigned size = 2; size <= padded; size <<= 1) {
        for (unsigned stride = size >> 1; stride > 0; stride >>= 1) {
            __syncthreads();
            for (unsigned i = t; i < (padded >> 1); i += THREADS) {
                const unsigned lo = 2 * i - (i & (stride - 1)), hi = lo + stride;
                const bool descending = (lo & size) == 0;
                const unsigned long long a = survivors[lo], b = survivors[hi];
                if ((a < b) == descending) {
                    survivors[lo] = b;
                    survivors[hi] = a;
                }
            }
        }
    }
    __syncthreads();

    // 7. Out.
    for (unsigned i = t; i < k; i += THREADS) {
        unsigned id = NO_ITEM;
        float score = -INFINITY;
        if (i < k_eff) {
            const unsigned long long packed = survivors[i];
            id = NO_ITEM - (unsigned)(packed & 0xffffffffull);
            score = key_score((unsigned)(packed >> 32));
        }
        out_ids[(size_t)q * k + i] = id;
        out_scores[(size_t)q * k + i] = score;
    }
}

// ---------------------------------------------------------------------------------------
// Threshold-filter top-K: one block per row, no copy of the row in shared memory. Two
// widths: topk_filter (256 threads, several blocks per SM) for many rows, topk_filter_wide
// (1024 threads) for a few rows, where one block's latency is the whole kernel.
//
//   1. A sample of the row (one vector of 8 scores per thread, spread evenly over it) gives
//      a threshold: the r-th best sampled key, r chosen so that, for a row whose order is
//      unrelated to the item index, at least k of the row's scores clear it with
//      overwhelming probability while only a few times k do (see `sample_rank`).
//   2. One coalesced pass over the row compares eight fp16 scores at a time against the
//      threshold with packed half2 compares (NaN never passes; -0 >= +0 holds, as the keys
//      say) and appends the rare passing, eligible scores to a candidate buffer.
//   3. If at least k (and at most the buffer's capacity) passed, the top k of the row are
//      exactly the top k of the candidates: every one of them is >= the k-th best score,
//      itself >= the threshold. Otherwise the block falls back to an exact radix select
//      that re-reads the row from global memory (histogram of the high 12 key bits, then of
//      the low 4 bits in the chosen bin, then a compaction in which ties at the threshold
//      take the smallest indices).
//   4. A histogram of the candidates' keys (fp16 keys of the candidates span few values)
//      finds the k-th best key; the candidates at or above it, k plus its ties, go to a
//      second buffer, and a bitonic sort of those (packed key and inverted index: larger is
//      better, equal keys by smaller index) gives the output order. Where the keys spread
//      too far or the ties are too many, all candidates are sorted instead.
// ---------------------------------------------------------------------------------------

// Phase marks of topk_filter_row (nothing in the product build): a measurement harness may
// define TOPK_PHASE(i) to record clock64() per phase (called by every thread right after a
// barrier).
#ifndef TOPK_PHASE
#define TOPK_PHASE(i)
#endif
#define TOP_CAP 1024    // candidates at or above the k-th best key that the second buffer holds
#define KEY_BINS 256    // bins of the candidates' key histogram (offsets from the threshold)

// The threshold's rank in a sample of `sample` scores for a row of `n` and a selection of k:
// the expected number of sampled scores among the row's top k is lam = k * sample / n; the
// r-th best sampled score is exceeded by about r * n / sample row scores, fewer than k only
// when at least r sampled scores fall in the row's top k, which for r = lam + 4 sqrt(lam) + 6
// (a Poisson tail) happens for fewer than one row in a million of unrelated order.
__device__ __forceinline__ unsigned sample_rank(unsigned k, unsigned sample, unsigned n) {
    const float lam = (float)k * (float)sample / (float)max(n, 1u);
    return (unsigned)ceilf(lam + 4.0f * sqrtf(lam) + 6.0f);
}

// fp16 bits of the score whose order key is `key` (key >= 1).
__device__ __forceinline__ unsigned short key_bits(unsigned key) {
    return (key & 0x8000u) ? (unsigned short)(key & 0x7fffu) : (unsigned short)(~key & 0xffffu);
}

// Order key of element j of a row (0 when excluded: padding, NaN, or seen).
__device__ __forceinline__ unsigned eligible_key(unsigned short bits, unsigned j, unsigned n_items,
                                                 const unsigned* seen, bool has_seen) {
    if (j >= n_items) return 0u;
    if (has_seen && ((seen[j >> 5] >> (j & 31)) & 1u)) return 0u;
    return order_key(bits);
}

// A slot for each calling thread in a buffer filled through `counter`: one shared atomic per
// group of threads that arrive together (a warp's lanes with a hit), not one per thread.
__device__ __forceinline__ unsigned append_slot(unsigned* counter) {
    const cooperative_groups::coalesced_group group = cooperative_groups::coalesced_threads();
    unsigned base = 0;
    if (group.thread_rank() == 0) base = atomicAdd(counter, group.size());
    return group.shfl(base, 0) + group.thread_rank();
}

// Bitonic sort of `padded` <= NT (a power of two) packed candidates, descending, one per
// thread: the stages of stride < 32 exchange by warp shuffles, only the others go through
// `values` with barriers (6 of the 36 stages for 256 values). Writes the sorted values
// back; starts and ends with a barrier.
template <unsigned NT>
__device__ void sort_descending_held(unsigned long long* values, unsigned padded) {
    const unsigned i = threadIdx.x;
    // Warps past the values only take part in the barriers.
    const bool holding = (i & ~31u) < padded;
    __syncthreads();
    unsigned long long v = i < padded ? values[i] : 0ull;
    for (unsigned size = 2; size <= padded; size <<= 1) {
        for (unsigned stride = size >> 1; stride > 0; stride >>= 1) {
            unsigned long long other = 0;
            if (stride >= 32) {
                __syncthreads();  // every read of the previous exchange is done
                if (i < padded) values[i] = v;
                __syncthreads();
                other = i < padded ? values[i ^ stride] : 0ull;
            } else if (holding) {
                other = __shfl_xor_sync(0xffffffffu, v, stride);
            }
            // In a descending run the lower position keeps the larger value.
            const bool descending = (i & size) == 0, lower = (i & stride) == 0;
            v = (lower == descending) ? (v > other ? v : other) : (v < other ? v : other);
        }
    }
    __syncthreads();
    if (i < padded) values[i] = v;
    __syncthreads();
}

// Bitonic sort of `padded` (a power of two) packed candidates, descending. Starts and ends
// with a barrier.
template <unsigned NT>
__device__ void sort_descending(unsigned long long* values, unsigned padded) {
    for (unsigned size = 2; size <= padded; size <<= 1) {
        for (unsigned stride = size >> 1; stride > 0; stride >>= 1) {
            __syncthreads();
            for (unsigned i = threadIdx.x; i < (padded >> 1); i += NT) {
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

// One block of NT threads per query row.
//   scores, ld, n_items, exclude_user, seen_*, k, out_ids, out_scores: as topk_rows (no
//                 prior: rows with a prior go to topk_rows).
//   capacity:     candidate buffer entries, a power of two >= 2048 (the 4096-bin histogram of
//                 the sample and of the fallback lives in the same memory).
//   exact_only:   nonzero skips the sample and filter (the fallback on every row; tests).
// Dynamic shared memory: topk_filter_shared_bytes(n_items, k) (see the Rust side):
// candidates, the second buffer, scratch and histograms, then the seen-item bitmap.
//   SPAN_BINS:    the candidates' key histogram (step 4) spans their whole key range (bins of
//                 2^shift keys) instead of KEY_BINS single keys with a catch-all top bin.
//   row_index:    the row this block selects (NO_ITEM: blockIdx.x).
template <unsigned NT, unsigned FILTER_LOADS, bool SPAN_BINS = false>
__device__ void topk_filter_row(const __half* __restrict__ scores, unsigned ld, unsigned n_items,
                                const unsigned* __restrict__ exclude_user,
                                const unsigned* __restrict__ seen_offsets,
                                const unsigned* __restrict__ seen_lens,
                                const unsigned* __restrict__ seen_items, unsigned k,
                                unsigned capacity, unsigned exact_only,
                                unsigned* __restrict__ out_ids, float* __restrict__ out_scores,
                                unsigned row_index = NO_ITEM) {
    extern __shared__ __align__(16) unsigned char filter_smem[];
    unsigned long long* cand = reinterpret_cast<unsigned long long*>(filter_smem);  // [capacity]
    unsigned* hist = reinterpret_cast<unsigned*>(filter_smem);  // [BINS], aliases cand
    unsigned long long* top = cand + capacity;                                // [TOP_CAP]
    unsigned* scratch = reinterpret_cast<unsigned*>(top + TOP_CAP);           // [32]
    unsigned* misc = scratch + 32;                                            // [16]
    unsigned* low_hist = misc + 16;                                           // [16]
    unsigned* key_hist = low_hist + 16;                                       // [KEY_BINS]
    unsigned* seen = key_hist + KEY_BINS;                                     // [(n_items + 31) / 32]

    TOPK_PHASE(0);
    const unsigned q = row_index == NO_ITEM ? blockIdx.x : row_index, t = threadIdx.x;
    const unsigned nvec = (n_items + 7) >> 3;
    const uint4* row = reinterpret_cast<const uint4*>(scores + (size_t)q * ld);

    // 0. The seen items as a bitmap (only for queries that exclude some).
    const unsigned user = exclude_user ? exclude_user[q] : NO_USER;
    const bool has_seen = user != NO_USER;
    if (has_seen)
        for (unsigned i = t; i < ((n_items + 31) >> 5); i += NT) seen[i] = 0;
    for (unsigned i = t; i < BINS; i += NT) hist[i] = 0;
    for (unsigned i = t; i < KEY_BINS; i += NT) key_hist[i] = 0;
    if (t < 16) {
        misc[t] = 0;
        low_hist[t] = 0;
    }
    __syncthreads();
    if (has_seen) {
        const unsigned begin = seen_offsets[user], len = seen_lens[user];
        for (unsigned i = t; i < len; i += NT) {
            const unsigned item = seen_items[begin + i];
            if (item < n_items) atomicOr(&seen[item >> 5], 1u << (item & 31));
        }
    }
    __syncthreads();

    TOPK_PHASE(1);
    unsigned count = 0;      // candidates in cand[0 .. count)
    unsigned threshold = 0;  // 0: no usable threshold, every eligible score is a candidate
    bool exact = exact_only != 0;
    if (!exact) {
        // 1. Sample: one vector per thread, spread over the row (the whole row if short).
        const unsigned sampled = min(nvec, NT);
        const bool sampler = t < sampled;
        unsigned short sample_keys[8];
        {
            const unsigned v = nvec <= NT ? t : (unsigned)(((unsigned long long)t * nvec) / NT);
            uint4 raw = make_uint4(0, 0, 0, 0);
            if (sampler) raw = row[v];
            const unsigned short* h = reinterpret_cast<const unsigned short*>(&raw);
#pragma unroll
            for (unsigned e = 0; e < 8; ++e)
                sample_keys[e] = sampler
                    ? (unsigned short)eligible_key(h[e], v * 8 + e, n_items, seen, has_seen)
                    : (unsigned short)0;
        }
        if (sampler) {
#pragma unroll
            for (unsigned e = 0; e < 8; ++e) atomicAdd(&hist[sample_keys[e] >> 4], 1u);
        }
        __syncthreads();
        const unsigned sample = sampled * 8;
        const unsigned rank = sample_rank(k, sample, n_items);
        if (rank <= sample) {
            find_bin<NT>(hist, BINS, rank, scratch, misc);
            const unsigned high = misc[0], above = misc[1];
            if (high != 0) {  // bin 0 holds only excluded keys
                if (sampler) {
#pragma unroll
                    for (unsigned e = 0; e < 8; ++e)
                        if ((sample_keys[e] >> 4) == high) atomicAdd(&low_hist[sample_keys[e] & 0xfu], 1u);
                }
                __syncthreads();
                find_bin<NT>(low_hist, 16, rank - above, scratch, misc + 2);
                threshold = (high << 4) | misc[2];
            }
        }
        __syncthreads();  // the histogram's memory becomes the candidate buffer
        TOPK_PHASE(2);

        // 2. Filter pass. Per round of FILTER_LOADS vectors a thread first marks its passing,
        // eligible elements in 8-bit masks (the per-element checks run only for set bits),
        // then its warp reserves room for all of them with one shared atomic (a shuffle
        // scan of the per-lane counts), then the lanes write their candidates: one atomic
        // per warp and round instead of one per hit. (Measured neutral against per-hit
        // atomics: for one row this pass is bound by how fast one SM pulls the row from L2,
        // see gpu-notes.md.)
        const unsigned short threshold_bits = threshold ? key_bits(threshold) : (unsigned short)0xfc00u;
        const __half2 bound = __half2half2(__ushort_as_half(threshold_bits));
        const unsigned lane = t & 31;
        for (unsigned base = 0; base < nvec; base += FILTER_LOADS * NT) {
            uint4 raw[FILTER_LOADS];
#pragma unroll
            for (unsigned u = 0; u < FILTER_LOADS; ++u) {
                const unsigned v = base + u * NT + t;
                raw[u] = v < nvec ? row[v] : make_uint4(0, 0, 0, 0);
            }
            unsigned masks[FILTER_LOADS];
            unsigned mine = 0;
#pragma unroll
            for (unsigned u = 0; u < FILTER_LOADS; ++u) {
                const unsigned v = base + u * NT + t;
                masks[u] = 0;
                if (v >= nvec) continue;
                const unsigned p0 = __hge2_mask(*reinterpret_cast<const __half2*>(&raw[u].x), bound);
                const unsigned p1 = __hge2_mask(*reinterpret_cast<const __half2*>(&raw[u].y), bound);
                const unsigned p2 = __hge2_mask(*reinterpret_cast<const __half2*>(&raw[u].z), bound);
                const unsigned p3 = __hge2_mask(*reinterpret_cast<const __half2*>(&raw[u].w), bound);
                if ((p0 | p1 | p2 | p3) == 0u) continue;
                // Bit e: element e passed (mask halves are 0 or 0xffff) and is eligible.
                unsigned hits = (p0 & 1u) | ((p0 >> 15) & 2u) | ((p1 & 1u) << 2) | ((p1 >> 13) & 8u) |
                                ((p2 & 1u) << 4) | ((p2 >> 11) & 32u) | ((p3 & 1u) << 6) |
                                ((p3 >> 9) & 128u);
                for (unsigned rest = hits; rest != 0; rest &= rest - 1) {
                    const unsigned e = __ffs(rest) - 1, j = v * 8 + e;
                    if (j >= n_items || (has_seen && ((seen[j >> 5] >> (j & 31)) & 1u)))
                        hits &= ~(1u << e);
                }
                masks[u] = hits;
                mine += __popc(hits);
            }
            if (__any_sync(0xffffffffu, mine != 0)) {
                unsigned through = mine;  // inclusive scan of the lanes' counts
#pragma unroll
                for (unsigned offset = 1; offset < 32; offset <<= 1) {
                    const unsigned other = __shfl_up_sync(0xffffffffu, through, offset);
                    if (lane >= offset) through += other;
                }
                const unsigned total = __shfl_sync(0xffffffffu, through, 31);
                unsigned first = 0;
                if (lane == 0) first = atomicAdd(&misc[4], total);
                unsigned slot = __shfl_sync(0xffffffffu, first, 0) + through - mine;
#pragma unroll
                for (unsigned u = 0; u < FILTER_LOADS; ++u) {
                    const unsigned v = base + u * NT + t;
                    for (unsigned rest = masks[u]; rest != 0; rest &= rest - 1) {
                        const unsigned e = __ffs(rest) - 1;
                        const unsigned word =
                            e < 2 ? raw[u].x : e < 4 ? raw[u].y : e < 6 ? raw[u].z : raw[u].w;
                        const unsigned short bits = (unsigned short)(word >> ((e & 1) * 16));
                        if (slot < capacity) cand[slot] = pack(order_key(bits), v * 8 + e);
                        ++slot;
                    }
                }
            }
        }
        __syncthreads();
        count = misc[4];
        TOPK_PHASE(3);
        // With no threshold every eligible score passed: the candidates are the whole row.
        if (count > capacity || (count < k && threshold != 0)) exact = true;
        __syncthreads();  // everyone has read misc[4] and is done with cand
    }

    // 3. Exact fallback: radix select over the row re-read from global memory.
    if (exact) {
        for (unsigned i = t; i < BINS; i += NT) hist[i] = 0;
        if (t < 16) low_hist[t] = 0;
        if (t == 0) misc[5] = 0;
        __syncthreads();
        for (unsigned v = t; v < nvec; v += NT) {
            const uint4 raw = row[v];
            const unsigned short* h = reinterpret_cast<const unsigned short*>(&raw);
#pragma unroll
            for (unsigned e = 0; e < 8; ++e)
                atomicAdd(&hist[eligible_key(h[e], v * 8 + e, n_items, seen, has_seen) >> 4], 1u);
        }
        __syncthreads();
        const unsigned eligible = nvec * 8 - hist[0];
        const unsigned k_eff = min(k, eligible);
        if (k_eff == 0) {
            count = 0;
        } else {
            find_bin<NT>(hist, BINS, k_eff, scratch, misc);
            const unsigned high = misc[0], above_high = misc[1];
            for (unsigned v = t; v < nvec; v += NT) {
                const uint4 raw = row[v];
                const unsigned short* h = reinterpret_cast<const unsigned short*>(&raw);
#pragma unroll
                for (unsigned e = 0; e < 8; ++e) {
                    const unsigned key = eligible_key(h[e], v * 8 + e, n_items, seen, has_seen);
                    if ((key >> 4) == high) atomicAdd(&low_hist[key & 0xfu], 1u);
                }
            }
            __syncthreads();
            find_bin<NT>(low_hist, 16, k_eff - above_high, scratch, misc + 2);
            const unsigned cut = (high << 4) | misc[2];
            const unsigned better = above_high + misc[3];  // keys strictly above the cut
            const unsigned ties_needed = k_eff - better;
            // Keys above the cut go anywhere (sorted below); ties take the smallest indices:
            // each thread owns a contiguous run of the row, and a scan of the per-thread tie
            // counts orders the runs. The histogram is no longer read (find_bin ended with a
            // barrier), so candidates may overwrite it.
            const unsigned run = (nvec + NT - 1) / NT;
            const unsigned run_begin = min(t * run, nvec), run_end = min(run_begin + run, nvec);
            unsigned ties = 0;
            for (unsigned v = run_begin; v < run_end; ++v) {
                const uint4 raw = row[v];
                const unsigned short* h = reinterpret_cast<const unsigned short*>(&raw);
#pragma unroll
                for (unsigned e = 0; e < 8; ++e) {
                    const unsigned j = v * 8 + e;
                    const unsigned key = eligible_key(h[e], j, n_items, seen, has_seen);
                    if (key > cut) cand[atomicAdd(&misc[5], 1u)] = pack(key, j);
                    ties += key == cut;
                }
            }
            const unsigned tie_rank_end = block_inclusive_scan<NT>(ties, scratch);
            unsigned tie_rank = tie_rank_end - ties;
            for (unsigned v = run_begin; v < run_end && tie_rank < ties_needed; ++v) {
                const uint4 raw = row[v];
                const unsigned short* h = reinterpret_cast<const unsigned short*>(&raw);
#pragma unroll
                for (unsigned e = 0; e < 8; ++e) {
                    const unsigned j = v * 8 + e;
                    const unsigned key = eligible_key(h[e], j, n_items, seen, has_seen);
                    if (key == cut) {
                        if (tie_rank < ties_needed) cand[better + tie_rank] = pack(key, j);
                        ++tie_rank;
                    }
                }
            }
            count = k_eff;
        }
    }

    // 4. The candidates at or above the k-th best key into `top` when that leaves fewer to
    // sort: a histogram of key offsets from the threshold (the top bin collects every
    // larger offset) finds the k-th best key's bin.
    unsigned long long* sorted = cand;
    unsigned sort_count = count;
    if (!exact && threshold != 0 && k > 0 && count > k && count > 256) {
        // Every candidate's key is >= the threshold, so offsets are >= 0. With SPAN_BINS the
        // bins are 2^shift keys wide, the smallest width that holds the largest offset: on
        // score rows of a real GEMM the few hundred candidates span ~500-1000 fp16 keys, and
        // with single-key bins the k-th best key fell in the catch-all top bin for ~1/3 of
        // the rows, which then sorted every candidate (512-1024 with barriers per stage).
        unsigned shift = 0;
        if (SPAN_BINS) {
            unsigned widest = 0;
            for (unsigned i = t; i < count; i += NT)
                widest = max(widest, (unsigned)(cand[i] >> 32) - threshold);
            widest = __reduce_max_sync(0xffffffffu, widest);
            if ((t & 31) == 0 && widest != 0) atomicMax(&misc[9], widest);
            __syncthreads();
            const unsigned span = misc[9];
            while ((span >> shift) >= KEY_BINS) ++shift;
        }
        for (unsigned i = t; i < count; i += NT) {
            const unsigned offset = ((unsigned)(cand[i] >> 32) - threshold) >> shift;
            atomicAdd(&key_hist[min(offset, (unsigned)KEY_BINS - 1)], 1u);
        }
        __syncthreads();
        find_bin<NT>(key_hist, KEY_BINS, k, scratch, misc + 6);
        const unsigned bin = misc[6], kept = misc[7] + key_hist[misc[6]];
        // Without SPAN_BINS the top bin also collects every larger offset: its lower bound is
        // no cut. With it, every bin is a plain range of keys.
        if ((SPAN_BINS || bin < KEY_BINS - 1) && kept <= TOP_CAP) {
            // Candidates in bins >= the k-th best's: the top k and the rest of its bin.
            const unsigned kth_key = threshold + (bin << shift);
            for (unsigned i = t; i < count; i += NT) {
                const unsigned long long packed = cand[i];
                if ((unsigned)(packed >> 32) >= kth_key) top[append_slot(&misc[8])] = packed;
            }
            sorted = top;
            sort_count = kept;
        }
    }

    TOPK_PHASE(4);
    // 5. Sort and write the best k.
    const unsigned k_eff = min(k, count);
    unsigned padded = 1;
    while (padded < sort_count) padded <<= 1;
    __syncthreads();
    for (unsigned i = sort_count + t; i < padded; i += NT) sorted[i] = 0;
    if (sort_count <= 1) __syncthreads();
    else if (padded <= NT) sort_descending_held<NT>(sorted, padded);
    else sort_descending<NT>(sorted, padded);
    TOPK_PHASE(5);
    for (unsigned i = t; i < k; i += NT) {
        unsigned id = NO_ITEM;
        float score = -INFINITY;
        if (i < k_eff) {
            const unsigned long long packed = sorted[i];
            id = NO_ITEM - (unsigned)(packed & 0xffffffffull);
            score = key_score((unsigned)(packed >> 32));
        }
        out_ids[(size_t)q * k + i] = id;
        out_scores[(size_t)q * k + i] = score;
    }
    TOPK_PHASE(6);
}

// Many rows: 256 threads, several blocks per SM, 8 loads in flight per thread and round.
extern "C" __global__ void __launch_bounds__(256, 4)
topk_filter(const __half* __restrict__ scores, unsigned ld, unsigned n_items,
            const unsigned* __restrict__ exclude_user,
            const unsigned* __restrict__ seen_offsets, const unsigned* __restrict__ seen_lens,
            const unsigned* __restrict__ seen_items, unsigned k, unsigned capacity,
            unsigned exact_only, unsigned* __restrict__ out_ids, float* __restrict__ out_scores) {
    topk_filter_row<256, 8>(scores, ld, n_items, exclude_user, seen_offsets, seen_lens, seen_items,
                            k, capacity, exact_only, out_ids, out_scores);
}

// A few rows: 1024 threads, one pass of loads in flight covers a 64K-item row.
extern "C" __global__ void __launch_bounds__(1024, 1)
topk_filter_wide(const __half* __restrict__ scores, unsigned ld, unsigned n_items,
                 const unsigned* __restrict__ exclude_user,
                 const unsigned* __restrict__ seen_offsets, const unsigned* __restrict__ seen_lens,
                 const unsigned* __restrict__ seen_items, unsigned k, unsigned capacity,
                 unsigned exact_only, unsigned* __restrict__ out_ids, float* __restrict__ out_scores) {
    topk_filter_row<1024, 8>(scores, ld, n_items, exclude_user, seen_offsets, seen_lens,
                             seen_items, k, capacity, exact_only, out_ids, out_scores);
}

// Many rows of the similarity stage (more than 132, right after the score GEMM): as
// topk_filter, with the candidates' key histogram spanning their whole key range (see
// SPAN_BINS), and, when `last_rows_first` is nonzero, block b selecting row n - 1 - b (the
// results are the same; only the order the rows are read in changes: the GEMM's last
// output may still be in L2 when the selection starts).
extern "C" __global__ void __launch_bounds__(256, 4)
topk_filter_batch(const __half* __restrict__ scores, unsigned ld, unsigned n_items,
                  const unsigned* __restrict__ exclude_user,
                  const unsigned* __restrict__ seen_offsets, const unsigned* __restrict__ seen_lens,
                  const unsigned* __restrict__ seen_items, unsigned k, unsigned capacity,
                  unsigned exact_only, unsigned last_rows_first, unsigned* __restrict__ out_ids,
                  float* __restrict__ out_scores) {
    const unsigned row = last_rows_first ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
    topk_filter_row<256, 8, true>(scores, ld, n_items, exclude_user, seen_offsets, seen_lens,
                                  seen_items, k, capacity, exact_only, out_ids, out_scores, row);
}
