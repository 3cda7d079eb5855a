// CUDA kernel of `silu_layer_norm` and `linear_silu_layer_norm`: per row r,
//   z = x_r + bias                 (n_in == 0: x is (R, W))
//   z = f_r w + bias               (n_in > 0: x is f (R, n_in), w (n_in, W) input x output)
//   y = (silu(z) - mean) / sqrt(var + eps) * gamma + beta,   silu(z) = z sigmoid(z),
// mean and biased variance of silu(z) over the row (two passes, as the CPU kernel).
// One warp per row (grid-stride over rows; launch with blockDim a multiple of 32): lane l owns
// the units l, l + 32, .. of the row, keeps silu(z) in `out` between the passes (it reads back
// only what it wrote, so no __syncwarp) and reduces with warp shuffles.

extern "C" __global__ void silu_layer_norm_rows(const float* __restrict__ x,
                                                const float* __restrict__ w,
                                                const float* __restrict__ bias,
                                                const float* __restrict__ gamma,
                                                const float* __restrict__ beta,
                                                float* __restrict__ out, unsigned int rows,
                                                unsigned int width, unsigned int n_in,
                                                float eps) {
    const unsigned int lane = threadIdx.x & 31u;
    const unsigned int warps = (gridDim.x * blockDim.x) >> 5;
    const float inv_w = 1.0f / (float)(width > 0 ? width : 1);
    for (unsigned int r = (blockIdx.x * blockDim.x + threadIdx.x) >> 5; r < rows; r += warps) {
        float* o = out + (unsigned long long)r * width;
        float s = 0.0f;
        if (n_in == 0) {
            const float* v = x + (unsigned long long)r * width;
            for (unsigned int k = lane; k < width; k += 32) {
                const float z = v[k] + bias[k];
                o[k] = z * se3_sigmoid(z);
                s += o[k];
            }
        } else {
            const float* f = x + (unsigned long long)r * n_in;
            for (unsigned int k = lane; k < width; k += 32) {
                float z = 0.0f;
                for (unsigned int i = 0; i < n_in; ++i) {
                    z += f[i] * w[(unsigned long long)i * width + k];
                }
                z += bias[k];
                o[k] = z * se3_sigmoid(z);
                s += o[k];
            }
        }
        const float mean = se3_warp_sum(s) * inv_w;
        float q = 0.0f;
        for (unsigned int k = lane; k < width; k += 32) {
            const float c = o[k] - mean;
            q += c * c;
        }
        const float inv = 1.0f / sqrtf(se3_warp_sum(q) * inv_w + eps);
        for (unsigned int k = lane; k < width; k += 32) {
            o[k] = (o[k] - mean) * inv * gamma[k] + beta[k];
        }
    }
}
