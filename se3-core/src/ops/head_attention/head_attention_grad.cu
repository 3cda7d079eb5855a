// CUDA kernels of the vector-Jacobian product of `head_attention` (`HeadAttentionGrad`, the
// CPU kernel in backward_cpu.rs): one input's gradient (`wrt` 0 queries, 1 keys, 2 values)
// from q, k, v (b, n, c, H dh), the key mask (b, n) and the output gradient g (b, n, c, H dh),
// head h of node i the c x dh block at channels h dh .. (h + 1) dh (flattened t = cc dh + e,
// d = c dh), logits as the forward (mode 0: L_ij = alpha <q_i, k_j>; mode 1: L_ij =
// alpha <q_i, k_j> - |q_i|^2 - |k_j|^2, alpha = 2 s), masked keys left out. With
// A = softmax_j(L) per query row, dA_ij = <g_i, v_j>, r_i = sum_j A_ij dA_ij and
// dL_ij = A_ij (dA_ij - r_i):
//   dV_j = sum_i A_ij g_i,
//   dQ_i = alpha sum_j dL_ij k_j   (mode 1: - 2 q_i sum_j dL_ij),
//   dK_j = alpha sum_i dL_ij q_i   (mode 1: - 2 k_j sum_i dL_ij).
// A batch element whose keys are all masked has weights independent of q and k: its dV rows
// are the mean of its g rows (zero with zero_if_all_masked), its dQ and dK rows zero.
//
// Two launches. `head_attention_grad_stats`: one block per (batch, head, query) row, keys in
// chunks of blockDim with an online softmax, writes (max, sum, r) of the row. Then
// `head_attention_grad_rows`: one block per (batch, head, node) row of the gradient, the other
// side's nodes in chunks of blockDim (each thread one node: its logit from the stats, its
// weight A or dL into shared memory), folded into the gradient row, which accumulates in the
// output itself (the block owns it), so any head vector size fits. The host checks
// blockDim <= HAG_MAX_THREADS.

#define HAG_MAX_THREADS 256u

// <a, b> and |b|^2 over the head vectors at a and b (element t at (t / dh) w + t % dh).
__device__ __forceinline__ float hag_dot(const float* a, const float* b, unsigned int d,
                                         unsigned int dh, unsigned int w, float* bb) {
    float dot = 0.0f, sq = 0.0f;
    for (unsigned int t = 0; t < d; ++t) {
        const unsigned int off = (t / dh) * w + t % dh;
        const float x = b[off];
        dot += a[off] * x;
        sq += x * x;
    }
    *bb = sq;
    return dot;
}

// Whether batch element bi has a kept key (every thread gets it).
__device__ __forceinline__ bool hag_any_kept(const float* mask, unsigned int bi, unsigned int n,
                                             float* red) {
    float count = 0.0f;
    for (unsigned int j = threadIdx.x; j < n; j += blockDim.x) {
        count += mask[(unsigned long long)bi * n + j] != 0.0f ? 1.0f : 0.0f;
    }
    return se3_block_reduce(count, red, false) > 0.0f;
}

// |x|^2 of the head vector at x over the block (every thread gets it).
__device__ __forceinline__ float hag_norm2(const float* x, unsigned int d, unsigned int dh,
                                           unsigned int w, float* red) {
    float part = 0.0f;
    for (unsigned int t = threadIdx.x; t < d; t += blockDim.x) {
        const float v = x[(t / dh) * w + t % dh];
        part += v * v;
    }
    return se3_block_reduce(part, red, false);
}

extern "C" __global__ void head_attention_grad_stats(
    const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
    const float* __restrict__ mask, const float* __restrict__ g, float* __restrict__ stats,
    unsigned int b, unsigned int n, unsigned int c, unsigned int heads, unsigned int dh,
    float alpha, int mode, int with_r) {
    __shared__ float s_red[32];
    const unsigned int d = c * dh, w = heads * dh;
    const unsigned int tid = threadIdx.x, nt = blockDim.x;
    if (nt > HAG_MAX_THREADS) {
        return;
    }
    const unsigned long long rows = (unsigned long long)b * heads * n;
    for (unsigned long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const unsigned int i = (unsigned int)(r % n);
        const unsigned int h = (unsigned int)((r / n) % heads);
        const unsigned int bi = (unsigned int)(r / ((unsigned long long)n * heads));
        const unsigned long long base = (unsigned long long)bi * n * c * w + h * dh;
        const bool any = hag_any_kept(mask, bi, n, s_red);
        const float* qi = q + base + (unsigned long long)i * c * w;
        const float* gi = g + base + (unsigned long long)i * c * w;
        const float qq = hag_norm2(qi, d, dh, w, s_red);
        float m = SE3_NEG_INF, sum = 0.0f, racc = 0.0f;
        for (unsigned int j0 = 0; j0 < n && any; j0 += nt) {
            const unsigned int j = j0 + tid;
            float logit = SE3_NEG_INF, da = 0.0f;
            if (j < n && mask[(unsigned long long)bi * n + j] != 0.0f) {
                const unsigned long long at = base + (unsigned long long)j * c * w;
                float kk = 0.0f, vv = 0.0f;
                logit = alpha * hag_dot(qi, k + at, d, dh, w, &kk);
                if (mode == 1) {
                    logit -= qq + kk;
                }
                if (with_r) {
                    da = hag_dot(gi, v + at, d, dh, w, &vv);
                }
            }
            const float mx = fmaxf(m, se3_block_reduce(logit, s_red, true));
            if (mx == SE3_NEG_INF) {
                continue;  // no kept key so far (uniform across the block)
            }
            const float wgt = logit == SE3_NEG_INF ? 0.0f : expf(logit - mx);
            const float factor = m == SE3_NEG_INF ? 0.0f : expf(m - mx);
            sum = sum * factor + se3_block_reduce(wgt, s_red, false);
            racc = racc * factor + se3_block_reduce(wgt * da, s_red, false);
            m = mx;
        }
        if (tid == 0) {
            stats[r * 3] = any ? m : 0.0f;
            stats[r * 3 + 1] = any ? sum : 1.0f;
            stats[r * 3 + 2] = any ? racc / sum : 0.0f;
        }
        __syncthreads();
    }
}

extern "C" __global__ void head_attention_grad_rows(
    const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
    const float* __restrict__ mask, const float* __restrict__ g,
    const float* __restrict__ stats, float* __restrict__ out, unsigned int b, unsigned int n,
    unsigned int c, unsigned int heads, unsigned int dh, float alpha, int mode,
    int zero_if_all_masked, int wrt) {
    __shared__ float s_w[HAG_MAX_THREADS];
    __shared__ float s_red[32];
    const unsigned int d = c * dh, w = heads * dh;
    const unsigned int tid = threadIdx.x, nt = blockDim.x;
    if (nt > HAG_MAX_THREADS) {
        return;
    }
    const unsigned long long rows = (unsigned long long)b * heads * n;
    for (unsigned long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const unsigned int x = (unsigned int)(r % n);
        const unsigned int h = (unsigned int)((r / n) % heads);
        const unsigned int bi = (unsigned int)(r / ((unsigned long long)n * heads));
        const unsigned long long base = (unsigned long long)bi * n * c * w + h * dh;
        const unsigned long long row0 = ((unsigned long long)bi * heads + h) * n;
        const unsigned long long at_x = base + (unsigned long long)x * c * w;
        float* o = out + at_x;
        for (unsigned int t = tid; t < d; t += nt) {
            o[(t / dh) * w + t % dh] = 0.0f;
        }
        const bool any = hag_any_kept(mask, bi, n, s_red);
        if (!any) {
            if (wrt == 2 && !zero_if_all_masked) {
                // uniform weights: every value row receives the mean of the output gradients
                const float inv = 1.0f / (float)n;
                for (unsigned int t = tid; t < d; t += nt) {
                    const unsigned long long off = (t / dh) * w + t % dh;
                    float s = 0.0f;
                    for (unsigned int i = 0; i < n; ++i) {
                        s += g[base + off + (unsigned long long)i * c * w] * inv;
                    }
                    o[off] = s;
                }
            }
            __syncthreads();
            continue;
        }
        if (wrt != 0 && mask[(unsigned long long)bi * n + x] == 0.0f) {
            __syncthreads();
            continue;  // a masked key has weight 0 for every query: no key or value gradient
        }
        // the gradient row's own head vector enters the L2 logits of every pair
        const float own2 = mode == 1 ? hag_norm2((wrt == 0 ? q : k) + at_x, d, dh, w, s_red)
                                     : 0.0f;
        float dl_sum = 0.0f;
        for (unsigned int y0 = 0; y0 < n; y0 += nt) {
            const unsigned int y = y0 + tid;
            float wgt = 0.0f;
            if (y < n) {
                // pair (query i, key j) of this thread
                const unsigned int i = wrt == 0 ? x : y, j = wrt == 0 ? y : x;
                const unsigned long long at_i = base + (unsigned long long)i * c * w;
                const unsigned long long at_j = base + (unsigned long long)j * c * w;
                if (mask[(unsigned long long)bi * n + j] != 0.0f) {
                    const float* st = stats + (row0 + i) * 3;
                    float kk = 0.0f, qq = 0.0f;
                    float logit = alpha * hag_dot(q + at_i, k + at_j, d, dh, w, &kk);
                    if (mode == 1) {
                        if (wrt == 0) {
                            qq = own2;
                        } else {
                            hag_dot(q + at_i, q + at_i, d, dh, w, &qq);
                        }
                        logit -= qq + kk;
                    }
                    const float a = expf(logit - st[0]) / st[1];
                    if (wrt == 2) {
                        wgt = a;
                    } else {
                        float vv = 0.0f;
                        const float da = hag_dot(g + at_i, v + at_j, d, dh, w, &vv);
                        const float dl = a * (da - st[2]);
                        dl_sum += dl;
                        wgt = alpha * dl;
                    }
                }
            }
            __syncthreads();
            s_w[tid] = wgt;
            __syncthreads();
            // the other side's rows: keys (dQ), queries (dK) or output gradients (dV)
            const float* other = wrt == 0 ? k : (wrt == 1 ? q : g);
            const unsigned int chunk = n - y0 < nt ? n - y0 : nt;
            for (unsigned int t = tid; t < d; t += nt) {
                const unsigned long long off = (t / dh) * w + t % dh;
                float acc = o[off];
                for (unsigned int yy = 0; yy < chunk; ++yy) {
                    acc += s_w[yy] * other[base + off + (unsigned long long)(y0 + yy) * c * w];
                }
                o[off] = acc;
            }
        }
        if (mode == 1 && wrt != 2) {
            const float t2 = -2.0f * se3_block_reduce(dl_sum, s_red, false);
            const float* own = (wrt == 0 ? q : k) + at_x;
            for (unsigned int t = tid; t < d; t += nt) {
                const unsigned long long off = (t / dh) * w + t % dh;
                o[off] += t2 * own[off];
            }
        }
        __syncthreads();
    }
}
