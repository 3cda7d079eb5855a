// CUDA kernel of `gather`: out[e, :] = table[idx[e], :], a zero row where idx[e] is -1 or out of
// range. Indices are f32 holding integers (exact below 2^24), truncated as the CPU kernel does.
// One thread per output element, grid-stride; launch any grid.

extern "C" __global__ void gather_rows(const float* __restrict__ table,
                                       const float* __restrict__ idx,
                                       float* __restrict__ out,
                                       unsigned int n, unsigned int c, unsigned int e) {
    const unsigned long long total = (unsigned long long)e * c;
    const unsigned long long step = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         t < total; t += step) {
        const unsigned long long row = t / c;
        const unsigned long long col = t - row * c;
        const float i = idx[row];
        float v = 0.0f;
        if (i >= 0.0f) {
            const unsigned long long k = (unsigned long long)i;
            if (k < n) {
                v = table[k * c + col];
            }
        }
        out[t] = v;
    }
}
