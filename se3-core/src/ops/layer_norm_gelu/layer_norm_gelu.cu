// CUDA kernel of `layer_norm_gelu`: per row v of x (R, W),
//   y = gelu((v + bias - mean) / sqrt(var + eps) * gamma + beta),
// mean and biased variance over the row (two passes, as the CPU kernel), exact GELU
// x Phi(x) with erf by Abramowitz & Stegun 7.1.26 (the CPU kernel's formula).
// One warp per row (grid-stride over rows; launch with blockDim a multiple of 32), lanes
// stride over the row and reduce with warp shuffles.

__device__ __forceinline__ float warp_sum(float v) {
    for (int off = 16; off > 0; off >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, off);
    }
    return v;
}

__device__ __forceinline__ float gelu_as(float x) {
    const float a = fabsf(x);
    const float z = a * 0.70710678118654752f;
    const float t = 1.0f / (1.0f + 0.3275911f * z);
    const float poly =
        ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t +
         0.254829592f) * t;
    const float erf = 1.0f - poly * expf(-(z * z));
    return 0.5f * (x + a * erf);
}

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
        const float mean = warp_sum(s) * inv_w;
        float q = 0.0f;
        for (unsigned int k = lane; k < w; k += 32) {
            const float c = v[k] + bias[k] - mean;
            q += c * c;
        }
        const float inv = 1.0f / sqrtf(warp_sum(q) * inv_w + eps);
        for (unsigned int k = lane; k < w; k += 32) {
            o[k] = gelu_as((v[k] + bias[k] - mean) * inv * gamma[k] + beta[k]);
        }
    }
}
