// CUDA kernel of `head_attention`: softmax attention of every query node over every key node,
// per batch element and head, on channel-last q, k, v (b, n, c, H dh) (head h of node i: the
// c x dh block at channels h dh .. (h + 1) dh, flattened (cc, e) -> cc dh + e, d = c dh):
//   L_ij = alpha <q_i, k_j>                       (mode 0, alpha = s)
//   L_ij = alpha <q_i, k_j> - |q_i|^2 - |k_j|^2   (mode 1, alpha = 2 s)
// keys with mask 0 left out; out_i = sum_j softmax_j(L_ij) v_j. A batch element whose keys are
// all masked gets uniform weights over all keys, or zeros when zero_if_all_masked.
// One block per (batch, head, query) row, grid-stride; keys in chunks of blockDim: each thread
// forms one key's logit, then the chunk is folded into the row's running max, sum and output
// (the online softmax), the output held in shared memory. The host checks d <= HEAD_MAX_D
// and blockDim <= HEAD_MAX_THREADS; a wider head vector goes to `head_attention_rows_wide`,
// the same computation with the query read from global memory and the running output kept
// in the block's own output row (no other block touches it), so any d fits.

#define HEAD_MAX_D 2048u
#define HEAD_MAX_THREADS 256u

extern "C" __global__ void head_attention_rows(
    const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
    const float* __restrict__ mask, float* __restrict__ out, unsigned int b, unsigned int n,
    unsigned int c, unsigned int heads, unsigned int dh, float alpha, int mode,
    int zero_if_all_masked) {
    __shared__ float s_q[HEAD_MAX_D];
    __shared__ float s_acc[HEAD_MAX_D];
    __shared__ float s_w[HEAD_MAX_THREADS];
    __shared__ float s_red[32];
    const unsigned int d = c * dh, w = heads * dh;
    const unsigned int tid = threadIdx.x, nt = blockDim.x;
    if (d > HEAD_MAX_D || nt > HEAD_MAX_THREADS) {
        return;
    }
    const unsigned long long rows = (unsigned long long)b * heads * n;
    for (unsigned long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const unsigned int i = (unsigned int)(r % n);
        const unsigned int h = (unsigned int)((r / n) % heads);
        const unsigned int bi = (unsigned int)(r / ((unsigned long long)n * heads));
        // element t of node j's head vector in x
        const unsigned long long base = (unsigned long long)bi * n * c * w + h * dh;
        float keep_count = 0.0f;
        for (unsigned int j = tid; j < n; j += nt) {
            keep_count += mask[(unsigned long long)bi * n + j] != 0.0f ? 1.0f : 0.0f;
        }
        const bool any = se3_block_reduce(keep_count, s_red, false) > 0.0f;
        float* o = out + base + (unsigned long long)i * c * w;
        if (!any && zero_if_all_masked) {
            for (unsigned int t = tid; t < d; t += nt) {
                o[(t / dh) * w + t % dh] = 0.0f;
            }
            continue;
        }
        float qq_part = 0.0f;
        for (unsigned int t = tid; t < d; t += nt) {
            const float x = q[base + (unsigned long long)i * c * w + (t / dh) * w + t % dh];
            s_q[t] = x;
            s_acc[t] = 0.0f;
            qq_part += x * x;
        }
        const float qq = se3_block_reduce(qq_part, s_red, false);
        float m = SE3_NEG_INF, sum = 0.0f;
        for (unsigned int j0 = 0; j0 < n; j0 += nt) {
            const unsigned int j = j0 + tid;
            float logit = SE3_NEG_INF;
            if (j < n && (!any || mask[(unsigned long long)bi * n + j] != 0.0f)) {
                if (!any) {
                    logit = 0.0f;
                } else {
                    const float* kj = k + base + (unsigned long long)j * c * w;
                    float dot = 0.0f, kk = 0.0f;
                    for (unsigned int t = 0; t < d; ++t) {
                        const float x = kj[(t / dh) * w + t % dh];
                        dot += s_q[t] * x;
                        kk += x * x;
                    }
                    logit = alpha * dot;
                    if (mode == 1) {
                        logit -= qq + kk;
                    }
                }
            }
            const float mx = fmaxf(m, se3_block_reduce(logit, s_red, true));
            if (mx == SE3_NEG_INF) {
                continue;  // no kept key so far: nothing to fold (uniform across the block)
            }
            const float wgt = logit == SE3_NEG_INF ? 0.0f : expf(logit - mx);
            const float factor = m == SE3_NEG_INF ? 0.0f : expf(m - mx);
            s_w[tid] = wgt;
            sum = sum * factor + se3_block_reduce(wgt, s_red, false);
            const unsigned int chunk = n - j0 < nt ? n - j0 : nt;
            for (unsigned int t = tid; t < d; t += nt) {
                float a = s_acc[t] * factor;
                const unsigned long long off = base + (t / dh) * w + t % dh;
                for (unsigned int jj = 0; jj < chunk; ++jj) {
                    a += s_w[jj] * v[off + (unsigned long long)(j0 + jj) * c * w];
                }
                s_acc[t] = a;
            }
            m = mx;
            __syncthreads();
        }
        const float inv = 1.0f / sum;
        for (unsigned int t = tid; t < d; t += nt) {
            o[(t / dh) * w + t % dh] = s_acc[t] * inv;
        }
        __syncthreads();
    }
}

// `head_attention_rows` for any head vector size d: the query row is read from global memory
// and the running (unnormalised) output accumulates in the output row itself, each thread
// owning the elements t = tid, tid + blockDim, ... of it. The host checks only
// blockDim <= HEAD_MAX_THREADS.
extern "C" __global__ void head_attention_rows_wide(
    const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
    const float* __restrict__ mask, float* __restrict__ out, unsigned int b, unsigned int n,
    unsigned int c, unsigned int heads, unsigned int dh, float alpha, int mode,
    int zero_if_all_masked) {
    __shared__ float s_w[HEAD_MAX_THREADS];
    __shared__ float s_red[32];
    const unsigned int d = c * dh, w = heads * dh;
    const unsigned int tid = threadIdx.x, nt = blockDim.x;
    if (nt > HEAD_MAX_THREADS) {
        return;
    }
    const unsigned long long rows = (unsigned long long)b * heads * n;
    for (unsigned long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const unsigned int i = (unsigned int)(r % n);
        const unsigned int h = (unsigned int)((r / n) % heads);
        const unsigned int bi = (unsigned int)(r / ((unsigned long long)n * heads));
        const unsigned long long base = (unsigned long long)bi * n * c * w + h * dh;
        float keep_count = 0.0f;
        for (unsigned int j = tid; j < n; j += nt) {
            keep_count += mask[(unsigned long long)bi * n + j] != 0.0f ? 1.0f : 0.0f;
        }
        const bool any = se3_block_reduce(keep_count, s_red, false) > 0.0f;
        const float* qi = q + base + (unsigned long long)i * c * w;
        float* o = out + base + (unsigned long long)i * c * w;
        float qq_part = 0.0f;
        for (unsigned int t = tid; t < d; t += nt) {
            const float x = qi[(t / dh) * w + t % dh];
            o[(t / dh) * w + t % dh] = 0.0f;
            qq_part += x * x;
        }
        if (!any && zero_if_all_masked) {
            __syncthreads();
            continue;
        }
        const float qq = se3_block_reduce(qq_part, s_red, false);
        float m = SE3_NEG_INF, sum = 0.0f;
        for (unsigned int j0 = 0; j0 < n; j0 += nt) {
            const unsigned int j = j0 + tid;
            float logit = SE3_NEG_INF;
            if (j < n && (!any || mask[(unsigned long long)bi * n + j] != 0.0f)) {
                if (!any) {
                    logit = 0.0f;
                } else {
                    const float* kj = k + base + (unsigned long long)j * c * w;
                    float dot = 0.0f, kk = 0.0f;
                    for (unsigned int t = 0; t < d; ++t) {
                        const unsigned int off = (t / dh) * w + t % dh;
                        const float x = kj[off];
                        dot += qi[off] * x;
                        kk += x * x;
                    }
                    logit = alpha * dot;
                    if (mode == 1) {
                        logit -= qq + kk;
                    }
                }
            }
            const float mx = fmaxf(m, se3_block_reduce(logit, s_red, true));
            if (mx == SE3_NEG_INF) {
                continue;
            }
            const float wgt = logit == SE3_NEG_INF ? 0.0f : expf(logit - mx);
            const float factor = m == SE3_NEG_INF ? 0.0f : expf(m - mx);
            s_w[tid] = wgt;
            sum = sum * factor + se3_block_reduce(wgt, s_red, false);
            const unsigned int chunk = n - j0 < nt ? n - j0 : nt;
            for (unsigned int t = tid; t < d; t += nt) {
                const unsigned long long off = (t / dh) * w + t % dh;
                float a = o[off] * factor;
                for (unsigned int jj = 0; jj < chunk; ++jj) {
                    a += s_w[jj] * v[base + off + (unsigned long long)(j0 + jj) * c * w];
                }
                o[off] = a;
            }
            m = mx;
            __syncthreads();
        }
        const float inv = 1.0f / sum;
        for (unsigned int t = tid; t < d; t += nt) {
            o[(t / dh) * w + t % dh] *= inv;
        }
        __syncthreads();
    }
}
