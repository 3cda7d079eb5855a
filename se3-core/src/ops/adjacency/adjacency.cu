// CUDA kernels of `adjacency_degrees` (se3-transformer-pytorch's recurrence): `adjacency_init`
// sets reach = (adj != 0) as 0/1 and out = reach; then, for d = 2..=degrees, one
// `adjacency_step` per d computes next[i, j] = OR_k reach[i, k] AND reach[k, j] (the boolean
// square of the previous step, not of the first matrix) and sets out[i, j] = d where next
// differs from reach; the host swaps reach and next between steps.
// One thread per matrix entry, grid-stride; launch any grid.

extern "C" __global__ void adjacency_init(const float* __restrict__ adj,
                                          float* __restrict__ reach, float* __restrict__ out,
                                          unsigned long long total) {
    const unsigned long long step = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         t < total; t += step) {
        const float v = adj[t] != 0.0f ? 1.0f : 0.0f;
        reach[t] = v;
        out[t] = v;
    }
}

extern "C" __global__ void adjacency_step(const float* __restrict__ reach,
                                          float* __restrict__ next, float* __restrict__ out,
                                          unsigned int n, float d) {
    const unsigned long long total = (unsigned long long)n * n;
    const unsigned long long step = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         t < total; t += step) {
        const unsigned long long i = t / n;
        const unsigned long long j = t - i * n;
        float v = 0.0f;
        for (unsigned long long k = 0; k < n; ++k) {
            if (reach[i * n + k] != 0.0f && reach[k * n + j] != 0.0f) {
                v = 1.0f;
                break;
            }
        }
        next[t] = v;
        if (v != reach[t]) {
            out[t] = d;
        }
    }
}
