// CUDA kernel of `stack`: input p (already dense row-major, `len` values) copied into its slot
// out[p len .. (p + 1) len]. One thread per element, grid-stride; one launch per input.

extern "C" __global__ void stack_slot(const float* __restrict__ src, float* __restrict__ out,
                                      unsigned long long len, unsigned long long offset) {
    const unsigned long long step = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         t < len; t += step) {
        out[offset + t] = src[t];
    }
}
