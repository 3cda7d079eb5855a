// CUDA kernel of `radial_hidden`: for network p and edge e (one row of the output
// [P, E, H]),
//   h1 = gelu(LN(x_e W0_p + b0_p) g1_p + be1_p),  h = gelu(LN(h1 W3_p + b3_p) g4_p + be4_p),
// W0_p [n_in, H] and W3_p [H, H] stored input x output, LayerNorm over the H units with the
// biased variance (two passes, as the CPU kernel), exact GELU x Phi(x) with erf by
// Abramowitz & Stegun 7.1.26 (the CPU kernel's formula).
// One warp per row (grid-stride over the P * E rows; launch with blockDim a multiple of 32):
// lane l owns the units l, l + 32, ..; LayerNorm sums reduce with warp shuffles; h1 is
// written to the `hidden1` scratch [P, E, H] so every lane can read all of it in the second
// layer (after a __syncwarp).

// In place over the lane's units of `row` (width h): v <- gelu(LN(v) * gamma + beta).
__device__ __forceinline__ void radial_ln_gelu(float* row, const float* gamma,
                                               const float* beta, unsigned int h,
                                               unsigned int lane, float eps) {
    const float inv_h = 1.0f / (float)h;
    float s = 0.0f;
    for (unsigned int k = lane; k < h; k += 32) {
        s += row[k];
    }
    const float mean = se3_warp_sum(s) * inv_h;
    float q = 0.0f;
    for (unsigned int k = lane; k < h; k += 32) {
        const float c = row[k] - mean;
        q += c * c;
    }
    const float inv = 1.0f / sqrtf(se3_warp_sum(q) * inv_h + eps);
    for (unsigned int k = lane; k < h; k += 32) {
        row[k] = se3_gelu((row[k] - mean) * inv * gamma[k] + beta[k]);
    }
}

extern "C" __global__ void radial_hidden_rows(
    const float* __restrict__ x, const float* __restrict__ w0, const float* __restrict__ b0,
    const float* __restrict__ g1, const float* __restrict__ be1, const float* __restrict__ w3,
    const float* __restrict__ b3, const float* __restrict__ g4, const float* __restrict__ be4,
    float* __restrict__ hidden1, float* __restrict__ out, unsigned int np, unsigned int e,
    unsigned int n_in, unsigned int h, float eps) {
    const unsigned int lane = threadIdx.x & 31u;
    const unsigned long long warps = (gridDim.x * blockDim.x) >> 5;
    const unsigned long long rows = (unsigned long long)np * e;
    if (h == 0) {
        return;
    }
    for (unsigned long long r = (blockIdx.x * blockDim.x + threadIdx.x) >> 5; r < rows;
         r += warps) {
        const unsigned long long p = r / e;
        const unsigned long long edge = r - p * e;
        const float* xe = x + edge * n_in;
        const float* w0p = w0 + p * n_in * h;
        const float* w3p = w3 + p * h * h;
        const unsigned long long v = p * h;
        float* z1 = hidden1 + r * h;
        float* z2 = out + r * h;
        for (unsigned int k = lane; k < h; k += 32) {
            float z = 0.0f;
            for (unsigned int i = 0; i < n_in; ++i) {
                z += xe[i] * w0p[(unsigned long long)i * h + k];
            }
            z1[k] = z + b0[v + k];
        }
        radial_ln_gelu(z1, g1 + v, be1 + v, h, lane, eps);
        __syncwarp();
        for (unsigned int k = lane; k < h; k += 32) {
            float z = 0.0f;
            for (unsigned int j = 0; j < h; ++j) {
                z += z1[j] * w3p[(unsigned long long)j * h + k];
            }
            z2[k] = z + b3[v + k];
        }
        radial_ln_gelu(z2, g4 + v, be4 + v, h, lane, eps);
    }
}
