// CUDA kernels of luminal's `SumReduce` and `MaxReduce` over one axis of a contiguous input
// seen as (outer, len, inner): out[o, i] = sum (or max) over r of x[o, r, i]; the sum of an
// empty axis is 0, the max -inf. One thread per output element, grid-stride, summing in axis
// order (the CPU kernel sums in eight lanes, so sums agree to rounding).

extern "C" __global__ void reduce_sum(const float* __restrict__ x, float* __restrict__ out,
                                      unsigned int outer, unsigned int len,
                                      unsigned int inner) {
    const unsigned long long total = (unsigned long long)outer * inner;
    const unsigned long long step = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         t < total; t += step) {
        const unsigned long long o = t / inner;
        const unsigned long long i = t - o * inner;
        const float* p = x + o * len * inner + i;
        float acc = 0.0f;
        for (unsigned int r = 0; r < len; ++r) {
            acc += p[(unsigned long long)r * inner];
        }
        out[t] = acc;
    }
}

extern "C" __global__ void reduce_max(const float* __restrict__ x, float* __restrict__ out,
                                      unsigned int outer, unsigned int len,
                                      unsigned int inner) {
    const unsigned long long total = (unsigned long long)outer * inner;
    const unsigned long long step = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         t < total; t += step) {
        const unsigned long long o = t / inner;
        const unsigned long long i = t - o * inner;
        const float* p = x + o * len * inner + i;
        float acc = __int_as_float(0xff800000u);  // -inf
        for (unsigned int r = 0; r < len; ++r) {
            acc = fmaxf(acc, p[(unsigned long long)r * inner]);
        }
        out[t] = acc;
    }
}
