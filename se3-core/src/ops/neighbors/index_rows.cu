// CUDA kernels of the neighbour lists' index helpers, one thread per element, grid-stride:
//   index_valid:  out[p] = 1 if idx[p] >= 0 else 0
//   edge_centers: out[p] = p / k (the centre of slot p of idx (N, k)) if idx[p] >= 0 else -1

extern "C" __global__ void index_valid(const float* __restrict__ idx, float* __restrict__ out,
                                       unsigned long long total) {
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long p = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         p < total; p += stride) {
        out[p] = idx[p] >= 0.0f ? 1.0f : 0.0f;
    }
}

extern "C" __global__ void edge_centers(const float* __restrict__ idx, float* __restrict__ out,
                                        unsigned long long total, unsigned int k) {
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    const unsigned long long kk = k > 0 ? k : 1;
    for (unsigned long long p = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         p < total; p += stride) {
        out[p] = idx[p] >= 0.0f ? (float)(p / kk) : -1.0f;
    }
}
