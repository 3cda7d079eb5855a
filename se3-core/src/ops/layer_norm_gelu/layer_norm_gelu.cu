// CUDA kernel of `layer_norm_gelu`: per row v of x (R, W),
//   y = gelu((v + bias - mean) / sqrt(var + eps) * gamma + beta),
// mean and biased variance over the row (two passes, as the CPU kernel), exact GELU
// x Phi(x) with erf by Abramowitz & Stegun 7.1.26 (the CPU kernel's formula).
// One warp per row (grid-stride over rows; launch with blockDim a multiple of 32), lanes
// stride over the row and reduce with warp shuffles.

extern "C" __global__ void layer_norm_gelu_rows(const float* __restrict__ x,
                                                const float* __restrict__ bias,
                                                const float* __restrict__ gamma,
                                                const float* __restrict__ beta,
                                                float* __restrict__ out, unsigned int rows,
                                                unsigned int w, float eps) {
    const unsigned int lane = threadIdx.x & 31u;
    const unsigned int warps = (gridDim.x * blockDim.x) >> 5;
    const float inv_w = 1.0f / (float)(w > 0 ? w : 1);
    for (unsigned int r = (blockIdx.x * blockDim.x + threadIdx.x) >> 5; r < rows; r += warps) {
        const float* v = x + (unsigned long long)r * w;
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
        for (unsigned int k = lane; k < w; k += 32) {
            o[k] = se3_gelu((v[k] + bias[k] - mean) * inv * gamma[k] + beta[k]);
        }
    }
}
