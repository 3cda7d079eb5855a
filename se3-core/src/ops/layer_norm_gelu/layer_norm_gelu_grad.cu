// CUDA kernel of the vector-Jacobian product of `layer_norm_gelu` (backward_cpu.rs has the
// formula): per row v of x (R, W) and its output gradient g,
//   n = (v + bias - mean) / sqrt(var + eps), a = n gamma + beta, g_a = g GELU'(a),
//   g_n = g_a gamma, dx = (g_n - mean g_n - n mean(g_n n)) / sqrt(var + eps),
// written to rows 0 .. R of out (R + 3, W); the column sums d bias = sum dx,
// d gamma = sum g_a n, d beta = sum g_a are added atomically to rows R, R + 1, R + 2, which
// the caller zeroes. One warp per row (grid-stride over rows; blockDim a multiple of 32); the
// statistics are recomputed, nothing is stored by the forward.

extern "C" __global__ void layer_norm_gelu_grad_rows(const float* __restrict__ x,
                                                     const float* __restrict__ bias,
                                                     const float* __restrict__ gamma,
                                                     const float* __restrict__ beta,
                                                     const float* __restrict__ g,
                                                     float* __restrict__ out, unsigned int rows,
                                                     unsigned int w, float eps) {
    const unsigned int lane = threadIdx.x & 31u;
    const unsigned int warps = (gridDim.x * blockDim.x) >> 5;
    const float inv_w = 1.0f / (float)(w > 0 ? w : 1);
    float* d_bias = out + (unsigned long long)rows * w;
    float* d_gamma = d_bias + w;
    float* d_beta = d_gamma + w;
    for (unsigned int r = (blockIdx.x * blockDim.x + threadIdx.x) >> 5; r < rows; r += warps) {
        const float* v = x + (unsigned long long)r * w;
        const float* gr = g + (unsigned long long)r * w;
        float* o = out + (unsigned long long)r * w;
        float s = 0.0f;
        for (unsigned int k = lane; k < w; k += 32) {
            s += v[k] + bias[k];
        }
        const float mean = se3_warp_sum(s) * inv_w;
        float q = 0.0f;
        for (unsigned int k = lane; k < w; k += 32) {
            const float c = v[k] + bias[k] - mean;
            q += c * c;
        }
        const float inv = 1.0f / sqrtf(se3_warp_sum(q) * inv_w + eps);
        float m1 = 0.0f, m2 = 0.0f;
        for (unsigned int k = lane; k < w; k += 32) {
            const float n = (v[k] + bias[k] - mean) * inv;
            const float ga = gr[k] * se3_gelu_derivative(n * gamma[k] + beta[k]);
            atomicAdd(d_beta + k, ga);
            atomicAdd(d_gamma + k, ga * n);
            const float gn = ga * gamma[k];
            m1 += gn;
            m2 += gn * n;
        }
        m1 = se3_warp_sum(m1) * inv_w;
        m2 = se3_warp_sum(m2) * inv_w;
        for (unsigned int k = lane; k < w; k += 32) {
            const float n = (v[k] + bias[k] - mean) * inv;
            const float ga = gr[k] * se3_gelu_derivative(n * gamma[k] + beta[k]);
            const float dx = inv * (ga * gamma[k] - m1 - n * m2);
            o[k] = dx;
            atomicAdd(d_bias + k, dx);
        }
    }
}
