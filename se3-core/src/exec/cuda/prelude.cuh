// Device functions shared by every se3 CUDA kernel source. NVRTC compiles each `.cu` file
// alone, so the backend and the compile check put this text in front of every source
// (`KernelSource::program`); the CPU shim includes it once before all of them. Names carry the
// `se3_` prefix so they cannot clash with a kernel file's own helpers.

// -inf as a float (no <math.h> under NVRTC).
#define SE3_NEG_INF (__int_as_float(0xff800000u))

// Sum of `v` over the 32 lanes of a warp (every lane gets it).
__device__ __forceinline__ float se3_warp_sum(float v) {
    for (int off = 16; off > 0; off >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, off);
    }
    return v;
}

// Maximum of `v` over the 32 lanes of a warp (every lane gets it).
__device__ __forceinline__ float se3_warp_max(float v) {
    for (int off = 16; off > 0; off >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    }
    return v;
}

// Sum (or, with `max`, maximum) of `v` over the block; every thread gets it. `red` is shared
// memory with one slot a warp (32 slots hold any block).
__device__ __forceinline__ float se3_block_reduce(float v, float* red, bool max) {
    v = max ? se3_warp_max(v) : se3_warp_sum(v);
    const unsigned int lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) {
        red[warp] = v;
    }
    __syncthreads();
    float r = max ? SE3_NEG_INF : 0.0f;
    for (unsigned int w = 0; w < (blockDim.x + 31u) >> 5; ++w) {
        r = max ? fmaxf(r, red[w]) : r + red[w];
    }
    return r;
}

// sigmoid(x) = 1 / (1 + e^-x).
__device__ __forceinline__ float se3_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// SiLU'(u) = s (1 + u (1 - s)), s = sigmoid(u).
__device__ __forceinline__ float se3_silu_grad(float u) {
    const float s = se3_sigmoid(u);
    return s * (1.0f + u * (1.0f - s));
}

// GELU with the exact erf, as torch's default: x Phi(x) = (x + |x| erf(|x| / sqrt 2)) / 2, erf by
// Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7), the CPU kernels' formula.
__device__ __forceinline__ float se3_gelu(float x) {
    const float a = fabsf(x);
    const float z = a * 0.70710678118654752f;
    const float t = 1.0f / (1.0f + 0.3275911f * z);
    const float poly =
        ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t +
         0.254829592f) * t;
    const float erf = 1.0f - poly * expf(-(z * z));
    return 0.5f * (x + a * erf);
}

// GELU'(x) = Phi(x) + x phi(x), erf by Abramowitz & Stegun 7.1.26 (the CPU kernel's formula):
// e = exp(-x^2 / 2) gives erf(|x| / sqrt 2) = 1 - poly(t) e and phi(x) = e / sqrt(2 pi).
__device__ __forceinline__ float se3_gelu_derivative(float x) {
    const float z = fabsf(x) * 0.70710678118654752f;
    const float t = 1.0f / (1.0f + 0.3275911f * z);
    const float poly =
        ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t +
         0.254829592f) * t;
    const float e = expf(-(z * z));
    const float erf = 1.0f - poly * e;
    return 0.5f + 0.5f * copysignf(erf, x) + x * 0.39894228040143268f * e;
}

// Sum of `v` over the block; every thread gets it (`red` as in `se3_block_reduce`).
__device__ __forceinline__ float se3_block_sum(float v, float* red) {
    return se3_block_reduce(v, red, false);
}
