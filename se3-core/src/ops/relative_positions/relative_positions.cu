// CUDA kernel of `relative_positions` and `distances` in one pass:
//   rel[e] = x[center[e]] - x[neighbor[e]]  (se3-transformer-pytorch: rel_pos[i, j] = x_i - x_j),
//   dist[e] = |rel[e]|,
// an end with index -1 (or out of range) reads as the origin, as the two gathers of the graph.
// One thread per edge, grid-stride.

__device__ __forceinline__ const float* point_or_null(const float* x, float i, unsigned int n) {
    if (i >= 0.0f) {
        const unsigned long long k = (unsigned long long)i;
        if (k < n) {
            return x + 3 * k;
        }
    }
    return 0;
}

extern "C" __global__ void relative_positions(const float* __restrict__ coords,
                                              const float* __restrict__ center,
                                              const float* __restrict__ neighbor,
                                              float* __restrict__ rel,
                                              float* __restrict__ dist, unsigned int n,
                                              unsigned int e) {
    for (unsigned int t = blockIdx.x * blockDim.x + threadIdx.x; t < e;
         t += gridDim.x * blockDim.x) {
        const float* a = point_or_null(coords, center[t], n);
        const float* b = point_or_null(coords, neighbor[t], n);
        float q = 0.0f;
        for (int k = 0; k < 3; ++k) {
            const float d = (a ? a[k] : 0.0f) - (b ? b[k] : 0.0f);
            rel[3 * (unsigned long long)t + k] = d;
            q += d * d;
        }
        dist[t] = sqrtf(q);
    }
}
