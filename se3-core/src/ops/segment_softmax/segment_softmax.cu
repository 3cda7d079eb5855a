// CUDA kernel of `segment_softmax`: for segment d and column k, over the edges e of d (the
// buckets of scatter_add.cu, in edge order),
//   out[e, k] = exp(x[e, k] - m) / sum_e' exp(x[e', k] - m),  m = max_e' x[e', k].
// Edges in no segment (index -1) must be zeroed before (the launcher clears `out`).
// One thread per (segment, column), grid-stride; the sums run in edge order as on the CPU.

extern "C" __global__ void segment_softmax_sorted(const float* __restrict__ x,
                                                  const unsigned int* __restrict__ start,
                                                  const unsigned int* __restrict__ order,
                                                  float* __restrict__ out, unsigned int n,
                                                  unsigned int h) {
    const unsigned long long total = (unsigned long long)n * h;
    const unsigned long long step = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         t < total; t += step) {
        const unsigned long long d = t / h;
        const unsigned long long k = t - d * h;
        const unsigned int lo = start[d], hi = start[d + 1];
        float m = __int_as_float(0xff800000u);  // -inf
        for (unsigned int i = lo; i < hi; ++i) {
            m = fmaxf(m, x[(unsigned long long)order[i] * h + k]);
        }
        float z = 0.0f;
        for (unsigned int i = lo; i < hi; ++i) {
            z += expf(x[(unsigned long long)order[i] * h + k] - m);
        }
        for (unsigned int i = lo; i < hi; ++i) {
            const unsigned long long at = (unsigned long long)order[i] * h + k;
            out[at] = expf(x[at] - m) / z;
        }
    }
}
