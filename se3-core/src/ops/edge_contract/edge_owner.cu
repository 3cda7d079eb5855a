// CUDA kernel of `EdgeOwner` (the backward of `edge_contract`): the node of each edge of edges
// grouped by node, out[t] = floor(t / k) for t < n k (as f32, exact below 2^24).
// One thread per edge, grid-stride.

extern "C" __global__ void edge_owner(float* __restrict__ out, unsigned long long total,
                                      unsigned int k) {
    const unsigned long long step = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         t < total; t += step) {
        out[t] = (float)(t / k);
    }
}
