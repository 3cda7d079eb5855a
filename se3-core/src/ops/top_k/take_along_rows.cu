// CUDA kernel of `TakeAlongRows`: out[i, q] = values[i, idx[i, q]], 0 for an index outside
// 0..m (-1), values (N, M), idx (N, K); one thread per output element, grid-stride.

extern "C" __global__ void take_along_rows(const float* __restrict__ values,
                                           const float* __restrict__ idx,
                                           float* __restrict__ out, unsigned int n,
                                           unsigned int m, unsigned int k) {
    const unsigned long long total = (unsigned long long)n * k;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long p = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         p < total; p += stride) {
        const unsigned long long i = p / k;
        const float j = idx[p];
        out[p] = (j >= 0.0f && j < (float)m) ? values[i * m + (unsigned long long)j] : 0.0f;
    }
}
