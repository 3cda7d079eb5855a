// CUDA kernels of `scatter_add`: out[d, :] = sum of src[e, :] over the edges e with idx[e] = d;
// edges with idx -1 (or out of range) are skipped.
//
// Two modes:
// - atomic: `scatter_add_atomic` adds every element with atomicAdd into a zeroed output (fast,
//   summation order depends on scheduling);
// - deterministic: edges are bucketed by destination with a stable counting sort
//   (`bucket_count`, `bucket_scan`, `bucket_fill`, `bucket_sort`), then `scatter_add_sorted`
//   sums each destination's edges in edge order, the order of the CPU kernel, so both agree
//   bit for bit. `segment_softmax` reuses the buckets.
// All kernels are grid-stride (any grid), except `bucket_scan` (one block of 1024 threads).

__device__ __forceinline__ int dest_of(float i, unsigned int n) {
    if (i >= 0.0f) {
        const unsigned long long k = (unsigned long long)i;
        if (k < n) {
            return (int)k;
        }
    }
    return -1;
}

extern "C" __global__ void scatter_add_atomic(const float* __restrict__ src,
                                              const float* __restrict__ idx,
                                              float* __restrict__ out,
                                              unsigned int n, unsigned int c, unsigned int e) {
    const unsigned long long total = (unsigned long long)e * c;
    const unsigned long long step = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         t < total; t += step) {
        const unsigned long long row = t / c;
        const int d = dest_of(idx[row], n);
        if (d >= 0) {
            atomicAdd(&out[(unsigned long long)d * c + (t - row * c)], src[t]);
        }
    }
}

// counts[d] += 1 for every edge into d (counts zeroed, length n).
extern "C" __global__ void bucket_count(const float* __restrict__ idx, unsigned int* counts,
                                        unsigned int n, unsigned int e) {
    for (unsigned int t = blockIdx.x * blockDim.x + threadIdx.x; t < e;
         t += gridDim.x * blockDim.x) {
        const int d = dest_of(idx[t], n);
        if (d >= 0) {
            atomicAdd(&counts[d], 1u);
        }
    }
}

// start[0] = 0, start[d + 1] = counts[0] + .. + counts[d] (length n + 1); cursor = start[..n].
// One block of 1024 threads: each thread sums a contiguous chunk, the chunk totals are scanned
// in shared memory (Hillis-Steele), then each thread writes its chunk's prefix sums.
extern "C" __global__ void bucket_scan(const unsigned int* __restrict__ counts,
                                       unsigned int* __restrict__ start,
                                       unsigned int* __restrict__ cursor, unsigned int n) {
    __shared__ unsigned int part[1024];
    const unsigned int t = threadIdx.x;
    const unsigned int chunk = (n + blockDim.x - 1) / blockDim.x;
    const unsigned int lo = t * chunk < n ? t * chunk : n;
    const unsigned int hi = lo + chunk < n ? lo + chunk : n;
    unsigned int sum = 0;
    for (unsigned int i = lo; i < hi; ++i) {
        sum += counts[i];
    }
    part[t] = sum;
    __syncthreads();
    for (unsigned int off = 1; off < blockDim.x; off <<= 1) {
        const unsigned int add = t >= off ? part[t - off] : 0u;
        __syncthreads();
        part[t] += add;
        __syncthreads();
    }
    unsigned int run = part[t] - sum;
    for (unsigned int i = lo; i < hi; ++i) {
        start[i] = run;
        cursor[i] = run;
        run += counts[i];
    }
    if (t == blockDim.x - 1) {
        start[n] = part[t];
    }
}

// order[cursor[d]++] = e for every edge into d (order within a bucket is arbitrary here).
extern "C" __global__ void bucket_fill(const float* __restrict__ idx, unsigned int* cursor,
                                       unsigned int* __restrict__ order, unsigned int n,
                                       unsigned int e) {
    for (unsigned int t = blockIdx.x * blockDim.x + threadIdx.x; t < e;
         t += gridDim.x * blockDim.x) {
        const int d = dest_of(idx[t], n);
        if (d >= 0) {
            order[atomicAdd(&cursor[d], 1u)] = t;
        }
    }
}

// Sorts each bucket's edges ascending (insertion sort; buckets are neighbour lists), which
// makes the fill stable: edge order, as on the CPU.
extern "C" __global__ void bucket_sort(const unsigned int* __restrict__ start,
                                       unsigned int* __restrict__ order, unsigned int n) {
    for (unsigned int d = blockIdx.x * blockDim.x + threadIdx.x; d < n;
         d += gridDim.x * blockDim.x) {
        const unsigned int lo = start[d], hi = start[d + 1];
        for (unsigned int i = lo + 1; i < hi; ++i) {
            const unsigned int v = order[i];
            unsigned int j = i;
            while (j > lo && order[j - 1] > v) {
                order[j] = order[j - 1];
                --j;
            }
            order[j] = v;
        }
    }
}

// out[d, k] = sum over the bucket of d, in edge order, of src[e, k]; every out element written.
extern "C" __global__ void scatter_add_sorted(const float* __restrict__ src,
                                              const unsigned int* __restrict__ start,
                                              const unsigned int* __restrict__ order,
                                              float* __restrict__ out, unsigned int n,
                                              unsigned int c) {
    const unsigned long long total = (unsigned long long)n * c;
    const unsigned long long step = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         t < total; t += step) {
        const unsigned long long d = t / c;
        const unsigned long long k = t - d * c;
        float acc = 0.0f;
        for (unsigned int i = start[d]; i < start[d + 1]; ++i) {
            acc += src[(unsigned long long)order[i] * c + k];
        }
        out[t] = acc;
    }
}
