// Per-query top-K selection over fp16 score rows: radix select on the score bits, then a
// small sort of the survivors. No full sort of the score vector.
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

// Inclusive prefix sum over the block (THREADS threads). Ends with a barrier so `scratch`
// (32 words) can be reused at once.
__device__ unsigned block_inclusive_scan(unsigned value, unsigned* scratch) {
    const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (unsigned offset = 1; offset < 32; offset <<= 1) {
        const unsigned other = __shfl_up_sync(0xffffffffu, value, offset);
        if (lane >= offset) value += other;
    }
    if (lane == 31) scratch[warp] = value;
    __syncthreads();
    if (warp == 0) {
        unsigned total = lane < (THREADS >> 5) ? scratch[lane] : 0u;
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
// Each thread scans a run of bins from the top, so one block scan finds it.
__device__ void find_bin(const unsigned* hist, unsigned bins, unsigned rank, unsigned* scratch,
                         unsigned* out) {
    const unsigned per_thread = (bins + THREADS - 1) / THREADS;
    const unsigned first = threadIdx.x * per_thread;  // in descending bin order
    unsigned count = 0;
    for (unsigned i = first; i < first + per_thread && i < bins; ++i) count += hist[bins - 1 - i];
    const unsigned through = block_inclusive_scan(count, scratch);
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
    find_bin(hist, BINS, k_eff, scratch, misc);
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
    find_bin(hist, 16, k_eff - above_high, scratch, misc + 2);
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
    const unsigned tie_rank_end = block_inclusive_scan(ties, scratch);
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
