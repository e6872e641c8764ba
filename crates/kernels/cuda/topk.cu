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
// Threshold-filter top-K: one 256-thread block per row, several blocks per SM, no copy of
// the row in shared memory.
//
//   1. A sample of the row (256 vectors of 8 scores spread evenly over it) gives a
//      threshold: the r-th best sampled key, r chosen so that, for a row whose order is
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
//   4. A bitonic sort of the candidates (packed key and inverted index: larger is better,
//      equal keys by smaller index) gives the output order.
// ---------------------------------------------------------------------------------------

#define FT 256          // threads per block of topk_filter
#define FILTER_LOADS 8  // 16-byte loads in flight per thread in the filter pass

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

// One block of FT threads per query row.
//   scores, ld, n_items, exclude_user, seen_*, k, out_ids, out_scores: as topk_rows (no
//                 prior: rows with a prior go to topk_rows).
//   capacity:     candidate buffer entries, a power of two >= 2048 (the 4096-bin histogram of
//                 the sample and of the fallback lives in the same memory).
//   exact_only:   nonzero skips the sample and filter (the fallback on every row; tests).
// Dynamic shared memory: topk_filter_shared_bytes(n_items, k) (see the Rust side):
// candidates, scratch, then the seen-item bitmap.
extern "C" __global__ void __launch_bounds__(FT, 4)
topk_filter(const __half* __restrict__ scores, unsigned ld, unsigned n_items,
            const unsigned* __restrict__ exclude_user,
            const unsigned* __restrict__ seen_offsets, const unsigned* __restrict__ seen_lens,
            const unsigned* __restrict__ seen_items, unsigned k, unsigned capacity,
            unsigned exact_only, unsigned* __restrict__ out_ids, float* __restrict__ out_scores) {
    extern __shared__ __align__(16) unsigned char smem[];
    unsigned long long* cand = reinterpret_cast<unsigned long long*>(smem);  // [capacity]
    unsigned* hist = reinterpret_cast<unsigned*>(smem);                      // [BINS], aliases cand
    unsigned* scratch = reinterpret_cast<unsigned*>(cand + capacity);         // [32]
    unsigned* misc = scratch + 32;                                            // [16]
    unsigned* low_hist = misc + 16;                                           // [16]
    unsigned* seen = low_hist + 16;                                           // [(n_items + 31) / 32]

    const unsigned q = blockIdx.x, t = threadIdx.x;
    const unsigned nvec = (n_items + 7) >> 3;
    const uint4* row = reinterpret_cast<const uint4*>(scores + (size_t)q * ld);

    // 0. The seen items as a bitmap (only for queries that exclude some).
    const unsigned user = exclude_user ? exclude_user[q] : NO_USER;
    const bool has_seen = user != NO_USER;
    if (has_seen)
        for (unsigned i = t; i < ((n_items + 31) >> 5); i += FT) seen[i] = 0;
    for (unsigned i = t; i < BINS; i += FT) hist[i] = 0;
    if (t < 16) {
        misc[t] = 0;
        low_hist[t] = 0;
    }
    __syncthreads();
    if (has_seen) {
        const unsigned begin = seen_offsets[user], len = seen_lens[user];
        for (unsigned i = t; i < len; i += FT) {
            const unsigned item = seen_items[begin + i];
            if (item < n_items) atomicOr(&seen[item >> 5], 1u << (item & 31));
        }
    }
    __syncthreads();

    unsigned count = 0;  // candidates in cand[0 .. count)
    bool exact = exact_only != 0;
    if (!exact) {
        // 1. Sample: one vector per thread, spread over the row (the whole row if short).
        const unsigned sampled = min(nvec, (unsigned)FT);
        const bool sampler = t < sampled;
        unsigned short sample_keys[8];
        {
            const unsigned v = nvec <= FT ? t : (unsigned)(((unsigned long long)t * nvec) / FT);
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
        unsigned threshold = 0;  // 0: no usable threshold, keep every eligible score
        if (rank <= sample) {
            find_bin<FT>(hist, BINS, rank, scratch, misc);
            const unsigned high = misc[0], above = misc[1];
            if (high != 0) {  // bin 0 holds only excluded keys
                if (sampler) {
#pragma unroll
                    for (unsigned e = 0; e < 8; ++e)
                        if ((sample_keys[e] >> 4) == high) atomicAdd(&low_hist[sample_keys[e] & 0xfu], 1u);
                }
                __syncthreads();
                find_bin<FT>(low_hist, 16, rank - above, scratch, misc + 2);
                threshold = (high << 4) | misc[2];
            }
        }
        __syncthreads();  // the histogram's memory becomes the candidate buffer

        // 2. Filter pass.
        const unsigned short threshold_bits = threshold ? key_bits(threshold) : (unsigned short)0xfc00u;
        const __half2 bound = __half2half2(__ushort_as_half(threshold_bits));
        for (unsigned base = 0; base < nvec; base += FILTER_LOADS * FT) {
            uint4 raw[FILTER_LOADS];
#pragma unroll
            for (unsigned u = 0; u < FILTER_LOADS; ++u) {
                const unsigned v = base + u * FT + t;
                raw[u] = v < nvec ? row[v] : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (unsigned u = 0; u < FILTER_LOADS; ++u) {
                const unsigned v = base + u * FT + t;
                if (v >= nvec) continue;
                unsigned pass[4];
                pass[0] = __hge2_mask(*reinterpret_cast<const __half2*>(&raw[u].x), bound);
                pass[1] = __hge2_mask(*reinterpret_cast<const __half2*>(&raw[u].y), bound);
                pass[2] = __hge2_mask(*reinterpret_cast<const __half2*>(&raw[u].z), bound);
                pass[3] = __hge2_mask(*reinterpret_cast<const __half2*>(&raw[u].w), bound);
                if ((pass[0] | pass[1] | pass[2] | pass[3]) == 0u) continue;
                const unsigned words[4] = {raw[u].x, raw[u].y, raw[u].z, raw[u].w};
#pragma unroll
                for (unsigned e = 0; e < 8; ++e) {
                    const unsigned shift = (e & 1) * 16;
                    if (!((pass[e >> 1] >> shift) & 1u)) continue;
                    const unsigned j = v * 8 + e;
                    const unsigned key = eligible_key((unsigned short)(words[e >> 1] >> shift), j,
                                                      n_items, seen, has_seen);
                    if (key == 0) continue;
                    const unsigned slot = atomicAdd(&misc[4], 1u);
                    if (slot < capacity) cand[slot] = pack(key, j);
                }
            }
        }
        __syncthreads();
        count = misc[4];
        // With no threshold every eligible score passed: the candidates are the whole row.
        if (count > capacity || (count < k && threshold != 0)) exact = true;
        __syncthreads();  // everyone has read misc[4] and is done with cand
    }

    // 3. Exact fallback: radix select over the row re-read from global memory.
    if (exact) {
        for (unsigned i = t; i < BINS; i += FT) hist[i] = 0;
        if (t < 16) low_hist[t] = 0;
        if (t == 0) misc[5] = 0;
        __syncthreads();
        for (unsigned v = t; v < nvec; v += FT) {
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
            find_bin<FT>(hist, BINS, k_eff, scratch, misc);
            const unsigned high = misc[0], above_high = misc[1];
            for (unsigned v = t; v < nvec; v += FT) {
                const uint4 raw = row[v];
                const unsigned short* h = reinterpret_cast<const unsigned short*>(&raw);
#pragma unroll
                for (unsigned e = 0; e < 8; ++e) {
                    const unsigned key = eligible_key(h[e], v * 8 + e, n_items, seen, has_seen);
                    if ((key >> 4) == high) atomicAdd(&low_hist[key & 0xfu], 1u);
                }
            }
            __syncthreads();
            find_bin<FT>(low_hist, 16, k_eff - above_high, scratch, misc + 2);
            const unsigned threshold = (high << 4) | misc[2];
            const unsigned better = above_high + misc[3];  // keys strictly above the threshold
            const unsigned ties_needed = k_eff - better;
            // Keys above the threshold go anywhere (sorted below); ties take the smallest
            // indices: each thread owns a contiguous run of the row, and a scan of the
            // per-thread tie counts orders the runs. The histogram is no longer read
            // (find_bin ended with a barrier), so candidates may overwrite it.
            const unsigned run = (nvec + FT - 1) / FT;
            const unsigned run_begin = min(t * run, nvec), run_end = min(run_begin + run, nvec);
            unsigned ties = 0;
            for (unsigned v = run_begin; v < run_end; ++v) {
                const uint4 raw = row[v];
                const unsigned short* h = reinterpret_cast<const unsigned short*>(&raw);
#pragma unroll
                for (unsigned e = 0; e < 8; ++e) {
                    const unsigned j = v * 8 + e;
                    const unsigned key = eligible_key(h[e], j, n_items, seen, has_seen);
                    if (key > threshold) cand[atomicAdd(&misc[5], 1u)] = pack(key, j);
                    ties += key == threshold;
                }
            }
            const unsigned tie_rank_end = block_inclusive_scan<FT>(ties, scratch);
            unsigned tie_rank = tie_rank_end - ties;
            for (unsigned v = run_begin; v < run_end && tie_rank < ties_needed; ++v) {
                const uint4 raw = row[v];
                const unsigned short* h = reinterpret_cast<const unsigned short*>(&raw);
#pragma unroll
                for (unsigned e = 0; e < 8; ++e) {
                    const unsigned j = v * 8 + e;
                    const unsigned key = eligible_key(h[e], j, n_items, seen, has_seen);
                    if (key == threshold) {
                        if (tie_rank < ties_needed) cand[better + tie_rank] = pack(key, j);
                        ++tie_rank;
                    }
                }
            }
            count = k_eff;
        }
    }

    // 4. Sort the candidates and write the best k.
    const unsigned k_eff = min(k, count);
    unsigned padded = 1;
    while (padded < count) padded <<= 1;
    __syncthreads();
    for (unsigned i = count + t; i < padded; i += FT) cand[i] = 0;
    if (count > 1) sort_descending<FT>(cand, padded);
    else __syncthreads();
    for (unsigned i = t; i < k; i += FT) {
        unsigned id = NO_ITEM;
        float score = -INFINITY;
        if (i < k_eff) {
            const unsigned long long packed = cand[i];
            id = NO_ITEM - (unsigned)(packed & 0xffffffffull);
            score = key_score((unsigned)(packed >> 32));
        }
        out_ids[(size_t)q * k + i] = id;
        out_scores[(size_t)q * k + i] = score;
    }
}
