// CUDA kernel of `edge_contract_sum` for one head (launched once per head): for node i with
// edges e = i k + kk, neighbour j = nbr[e] (a missing or out-of-range j contributes nothing),
//   Kx_e[p, f, c] = sum_q basis[e, p, q, f] x[j, c, q],
//   y_i[c0 + o, p] = sum_{(f, c)} ( sum_h A_i[p, (f, c), h] W[((f, c), h), c0 + o]
//                                  + S_i[p, (f, c)] b[(f, c), c0 + o] ),
//   A_i[p, fc, h] = sum_kk a_ik Kx_e[p, fc] h_e[h],  S_i[p, fc] = sum_kk a_ik Kx_e[p, fc],
// the CPU kernel's reassociation (the radial network's last layer R_e is never formed).
// Rows of W and b are ordered (f, c), c fastest (cf = nf c_in of them, W has cf * hidden rows
// and `cols` columns). Output y [n, cols, mo].
// One block per node, grid-stride over nodes; per chunk of cc (f, c) rows, the block forms
// a_ik Kx in shared memory (mo cc k floats), then A (mo cc hidden floats), then each thread
// adds its outputs' share of A W + S b. The host checks mo k <= 2048 and mo hidden <= 4096.

#define EDGE_CONTRACT_KX 2048u
#define EDGE_CONTRACT_ACC 4096u

// The per-node tiles all of this file's kernels share, for node i and the chunk of (f, c)
// rows cf0 .. cf0 + m, computed by the block's threads together:
// s_kx[(p, r), kk] = scale_e Kx_e[p, cf0 + r] (scale = u when given, else 1; a missing or
// out-of-range neighbour gives 0).
__device__ __forceinline__ void edge_kx(const float* __restrict__ x,
                                        const float* __restrict__ nbr,
                                        const float* __restrict__ basis,
                                        const float* __restrict__ u, float* s_kx,
                                        unsigned int i, unsigned int cf0, unsigned int m,
                                        unsigned int n, unsigned int k, unsigned int c_in,
                                        unsigned int mi, unsigned int mo, unsigned int nf) {
    for (unsigned int t = threadIdx.x; t < mo * m * k; t += blockDim.x) {
        const unsigned int kk = t % k;
        const unsigned int r = (t / k) % m;
        const unsigned int p = t / (k * m);
        const unsigned long long e = (unsigned long long)i * k + kk;
        const float jf = nbr[e];
        float v = 0.0f;
        if (jf >= 0.0f && (unsigned long long)jf < n) {
            const unsigned long long j = (unsigned long long)jf;
            const unsigned int fc = cf0 + r;
            const unsigned int f = fc / c_in, c = fc - f * c_in;
            const float* bp = basis + ((e * mo + p) * mi) * nf + f;
            const float* xp = x + (j * c_in + c) * mi;
            for (unsigned int q = 0; q < mi; ++q) {
                v += bp[(unsigned long long)q * nf] * xp[q];
            }
            if (u != 0) {
                v *= u[e];
            }
        }
        s_kx[t] = v;
    }
}

// The rows r_i [cnt, mo] of node i folded into the chunk's rows of the last layer:
// s_fold[(p, r), h] = sum_o r_i[o, p] W[(cf0 + r, h), c0 + o],
// s_fb[(p, r)] = sum_o r_i[o, p] b[cf0 + r, c0 + o].
__device__ __forceinline__ void edge_fold(const float* __restrict__ w,
                                          const float* __restrict__ b,
                                          const float* __restrict__ ri, float* s_fold,
                                          float* s_fb, unsigned int cf0, unsigned int m,
                                          unsigned int mo, unsigned int hd, unsigned int cols,
                                          unsigned int c0, unsigned int cnt) {
    for (unsigned int t = threadIdx.x; t < mo * m * hd; t += blockDim.x) {
        const unsigned int h = t % hd, pr = t / hd;
        const unsigned int p = pr / m, r = pr - p * m;
        const float* wr = w + ((unsigned long long)(cf0 + r) * hd + h) * cols + c0;
        float v = 0.0f;
        for (unsigned int o = 0; o < cnt; ++o) {
            v += ri[o * mo + p] * wr[o];
        }
        s_fold[t] = v;
    }
    for (unsigned int t = threadIdx.x; t < mo * m; t += blockDim.x) {
        const unsigned int p = t / m, r = t - p * m;
        const float* br = b + (unsigned long long)(cf0 + r) * cols + c0;
        float v = 0.0f;
        for (unsigned int o = 0; o < cnt; ++o) {
            v += ri[o * mo + p] * br[o];
        }
        s_fb[t] = v;
    }
}

extern "C" __global__ void edge_contract_sum_nodes(
    const float* __restrict__ x, const float* __restrict__ nbr, const float* __restrict__ basis,
    const float* __restrict__ hid, const float* __restrict__ a, const float* __restrict__ w,
    const float* __restrict__ b, float* __restrict__ out, unsigned int n, unsigned int k,
    unsigned int c_in, unsigned int mi, unsigned int mo, unsigned int nf, unsigned int hd,
    unsigned int cols, unsigned int c0, unsigned int cnt) {
    __shared__ float s_kx[EDGE_CONTRACT_KX];
    __shared__ float s_acc[EDGE_CONTRACT_ACC];
    const unsigned int cf = nf * c_in;
    if (k == 0 || mo == 0 || cf == 0 || mo * k > EDGE_CONTRACT_KX ||
        mo * hd > EDGE_CONTRACT_ACC) {
        return;
    }
    unsigned int cc = EDGE_CONTRACT_KX / (mo * k);
    if (hd > 0 && EDGE_CONTRACT_ACC / (mo * hd) < cc) {
        cc = EDGE_CONTRACT_ACC / (mo * hd);
    }
    if (cc > cf) {
        cc = cf;
    }
    const unsigned int tid = threadIdx.x, nt = blockDim.x;
    for (unsigned int i = blockIdx.x; i < n; i += gridDim.x) {
        for (unsigned int cf0 = 0; cf0 < cf; cf0 += cc) {
            const unsigned int m = cf - cf0 < cc ? cf - cf0 : cc;
            // s_kx[(p, r), kk] = a_ik Kx_e[p, cf0 + r]
            edge_kx(x, nbr, basis, a, s_kx, i, cf0, m, n, k, c_in, mi, mo, nf);
            __syncthreads();
            // s_acc[(p, r), h] = sum_kk s_kx[(p, r), kk] hid[e, h]
            for (unsigned int t = tid; t < mo * m * hd; t += nt) {
                const unsigned int h = t % hd;
                const unsigned int pr = t / hd;
                float v = 0.0f;
                for (unsigned int kk = 0; kk < k; ++kk) {
                    v += s_kx[pr * k + kk] * hid[((unsigned long long)i * k + kk) * hd + h];
                }
                s_acc[t] = v;
            }
            __syncthreads();
            for (unsigned int t = tid; t < mo * cnt; t += nt) {
                const unsigned int o = t % cnt, p = t / cnt;
                const unsigned long long col = c0 + o;
                float v = 0.0f;
                for (unsigned int r = 0; r < m; ++r) {
                    const unsigned int pr = p * m + r;
                    const float* wr = w + ((unsigned long long)(cf0 + r) * hd) * cols + col;
                    for (unsigned int h = 0; h < hd; ++h) {
                        v += s_acc[pr * hd + h] * wr[(unsigned long long)h * cols];
                    }
                    float s = 0.0f;
                    for (unsigned int kk = 0; kk < k; ++kk) {
                        s += s_kx[pr * k + kk];
                    }
                    v += s * b[(unsigned long long)(cf0 + r) * cols + col];
                }
                float* y = out + ((unsigned long long)i * cols + col) * mo + p;
                *y = cf0 == 0 ? v : *y + v;
            }
            __syncthreads();
        }
    }
}

// CUDA kernel of `edge_contract_logits` for one head `head` (launched once per head), the CPU
// kernel's reassociation: the query is folded into the last layer first,
//   F_i[p, fc, h] = sum_o q_i[o, p] W[(fc, h), c0 + o],  G_i[p, fc] = sum_o q_i[o, p] b[fc, c0 + o],
//   g_ik[h] = sum_{p, fc} Kx_ik[p, fc] F_i[p, fc, h],   B_ik = sum_{p, fc} Kx_ik[p, fc] G_i[p, fc],
//   l[head, i, kk] = g_ik . h_ik + B_ik,
// q [n, cnt, mo], out [heads, n, k]. One block per node, grid-stride over nodes, chunks of
// (f, c) rows in shared memory as above. The host checks mo k <= 2048, mo hidden <= 2048,
// k hidden <= 4096, k <= 256 and mo <= 512.

#define LOGITS_KX 2048u
#define LOGITS_FOLD 2048u
#define LOGITS_FB 512u
#define LOGITS_G 4096u
#define LOGITS_K 256u

extern "C" __global__ void edge_contract_logits_nodes(
    const float* __restrict__ x, const float* __restrict__ nbr, const float* __restrict__ basis,
    const float* __restrict__ hid, const float* __restrict__ q, const float* __restrict__ w,
    const float* __restrict__ b, float* __restrict__ out, unsigned int n, unsigned int k,
    unsigned int c_in, unsigned int mi, unsigned int mo, unsigned int nf, unsigned int hd,
    unsigned int cols, unsigned int c0, unsigned int cnt, unsigned int head) {
    __shared__ float s_kx[LOGITS_KX];
    __shared__ float s_fold[LOGITS_FOLD];
    __shared__ float s_fb[LOGITS_FB];
    __shared__ float s_g[LOGITS_G];
    __shared__ float s_bl[LOGITS_K];
    const unsigned int cf = nf * c_in;
    if (k == 0 || mo == 0 || cf == 0 || k > LOGITS_K || mo > LOGITS_FB ||
        mo * k > LOGITS_KX || mo * hd > LOGITS_FOLD || k * hd > LOGITS_G) {
        return;
    }
    unsigned int cc = LOGITS_KX / (mo * k);
    if (hd > 0 && LOGITS_FOLD / (mo * hd) < cc) {
        cc = LOGITS_FOLD / (mo * hd);
    }
    if (LOGITS_FB / mo < cc) {
        cc = LOGITS_FB / mo;
    }
    if (cc > cf) {
        cc = cf;
    }
    const unsigned int tid = threadIdx.x, nt = blockDim.x;
    for (unsigned int i = blockIdx.x; i < n; i += gridDim.x) {
        for (unsigned int t = tid; t < k * hd; t += nt) {
            s_g[t] = 0.0f;
        }
        for (unsigned int t = tid; t < k; t += nt) {
            s_bl[t] = 0.0f;
        }
        const float* qi = q + (unsigned long long)i * cnt * mo;
        for (unsigned int cf0 = 0; cf0 < cf; cf0 += cc) {
            const unsigned int m = cf - cf0 < cc ? cf - cf0 : cc;
            edge_kx(x, nbr, basis, 0, s_kx, i, cf0, m, n, k, c_in, mi, mo, nf);
            edge_fold(w, b, qi, s_fold, s_fb, cf0, m, mo, hd, cols, c0, cnt);
            __syncthreads();
            for (unsigned int t = tid; t < k * hd; t += nt) {
                const unsigned int kk = t / hd, h = t - kk * hd;
                float v = 0.0f;
                for (unsigned int pr = 0; pr < mo * m; ++pr) {
                    v += s_kx[pr * k + kk] * s_fold[pr * hd + h];
                }
                s_g[t] += v;
            }
            for (unsigned int t = tid; t < k; t += nt) {
                float v = 0.0f;
                for (unsigned int pr = 0; pr < mo * m; ++pr) {
                    v += s_kx[pr * k + t] * s_fb[pr];
                }
                s_bl[t] += v;
            }
            __syncthreads();
        }
        for (unsigned int t = tid; t < k; t += nt) {
            const float* he = hid + ((unsigned long long)i * k + t) * hd;
            float v = s_bl[t];
            for (unsigned int h = 0; h < hd; ++h) {
                v += s_g[t * hd + h] * he[h];
            }
            out[((unsigned long long)head * n + i) * k + t] = v;
        }
        __syncthreads();
    }
}

// The last radial layer's gradients of `edge_contract` (backward_cpu.rs has the
// formulas), one launch per head, a block per node (grid-stride over nodes), chunks of (f, c)
// rows in shared memory as the forward kernels in edge_contract.cu. Per head, the rows
// r [n, cnt, mo] (the output's gradient for sums, the queries for logits) and the edge weights
// u [n, k] (the pooling / attention weights for sums, the logits' gradient for logits):
//
// edge_contract_edge_grad_nodes: out [n k, width], per edge the radial hidden values' gradient
// (with want_h, columns 0 .. hidden) then the message's (with want_kx, mo cf columns):
//   out[e, h] += u_e g_e[h],  g_e[h] = sum_{p, fc} Kx_e[p, fc] F_i[p, fc, h],
//   out[e, off + p cf + fc] += u_e (sum_h h_e[h] F_i[p, fc, h] + B_i[p, fc]),
//   F_i[p, fc, h] = sum_o r_i[o, p] W[(fc, h), c0 + o],  B_i[p, fc] = sum_o r_i[o, p] b[fc, c0 + o]
// (the logits kernel with the queries r); the caller zeroes out, and the heads' launches add in
// turn.
//
// edge_contract_weight_grad_nodes: out [cf hidden + cf, cols] (dW then db, zeroed by the caller)
//   dW[(fc, h), c0 + o] += sum_p A_i[p, fc, h] r_i[o, p],  A_i[p, fc, h] = sum_kk u_ik Kx_ik[p, fc] h_ik[h]
//   db[fc, c0 + o]      += sum_p S_i[p, fc] r_i[o, p],     S_i[p, fc] = sum_kk u_ik Kx_ik[p, fc]
// added atomically (every node adds to every entry of its head's columns).
//
// The host checks mo k <= 2048, mo hidden <= 4096, k hidden <= 4096 and mo <= 512.

#define EDGE_GRAD_KX 2048u
#define EDGE_GRAD_ACC 4096u
#define EDGE_GRAD_G 4096u
#define EDGE_GRAD_FB 512u

// The chunk of (f, c) rows per node: what the shared buffers hold.
__device__ __forceinline__ unsigned int edge_grad_chunk(unsigned int cf, unsigned int mo,
                                                            unsigned int k, unsigned int hd) {
    unsigned int cc = EDGE_GRAD_KX / (mo * k);
    if (hd > 0 && EDGE_GRAD_ACC / (mo * hd) < cc) {
        cc = EDGE_GRAD_ACC / (mo * hd);
    }
    if (EDGE_GRAD_FB / mo < cc) {
        cc = EDGE_GRAD_FB / mo;
    }
    return cc > cf ? cf : cc;
}

extern "C" __global__ void edge_contract_edge_grad_nodes(
    const float* __restrict__ x, const float* __restrict__ nbr, const float* __restrict__ basis,
    const float* __restrict__ hid, const float* __restrict__ rows, const float* __restrict__ u,
    const float* __restrict__ w, const float* __restrict__ b, float* __restrict__ out,
    unsigned int n, unsigned int k, unsigned int c_in, unsigned int mi, unsigned int mo,
    unsigned int nf, unsigned int hd, unsigned int cols, unsigned int c0, unsigned int cnt,
    unsigned int want_h, unsigned int want_kx) {
    __shared__ float s_kx[EDGE_GRAD_KX];
    __shared__ float s_fold[EDGE_GRAD_ACC];
    __shared__ float s_g[EDGE_GRAD_G];
    __shared__ float s_fb[EDGE_GRAD_FB];
    const unsigned int cf = nf * c_in;
    if (k == 0 || mo == 0 || cf == 0 || mo * k > EDGE_GRAD_KX || mo * hd > EDGE_GRAD_ACC ||
        k * hd > EDGE_GRAD_G || mo > EDGE_GRAD_FB) {
        return;
    }
    const unsigned int cc = edge_grad_chunk(cf, mo, k, hd);
    const unsigned int width = (want_h ? hd : 0u) + (want_kx ? mo * cf : 0u);
    const unsigned int off = want_h ? hd : 0u;
    const unsigned int tid = threadIdx.x, nt = blockDim.x;
    for (unsigned int i = blockIdx.x; i < n; i += gridDim.x) {
        for (unsigned int t = tid; t < k * hd; t += nt) {
            s_g[t] = 0.0f;
        }
        const float* ri = rows + (unsigned long long)i * cnt * mo;
        for (unsigned int cf0 = 0; cf0 < cf; cf0 += cc) {
            const unsigned int m = cf - cf0 < cc ? cf - cf0 : cc;
            edge_kx(x, nbr, basis, 0, s_kx, i, cf0, m, n, k, c_in, mi, mo, nf);
            edge_fold(w, b, ri, s_fold, s_fb, cf0, m, mo, hd, cols, c0, cnt);
            __syncthreads();
            if (want_h) {
                for (unsigned int t = tid; t < k * hd; t += nt) {
                    const unsigned int kk = t / hd, h = t - kk * hd;
                    float v = 0.0f;
                    for (unsigned int pr = 0; pr < mo * m; ++pr) {
                        v += s_kx[pr * k + kk] * s_fold[pr * hd + h];
                    }
                    s_g[t] += v;
                }
            }
            if (want_kx) {
                // the chunk's columns of the message's gradient, one (edge, p, r) a thread
                for (unsigned int t = tid; t < k * mo * m; t += nt) {
                    const unsigned int kk = t / (mo * m), pr = t - kk * (mo * m);
                    const unsigned int p = pr / m, r = pr - p * m;
                    const unsigned long long e = (unsigned long long)i * k + kk;
                    const float* he = hid + e * hd;
                    float v = s_fb[pr];
                    for (unsigned int h = 0; h < hd; ++h) {
                        v += he[h] * s_fold[pr * hd + h];
                    }
                    out[e * width + off + p * cf + cf0 + r] += u[e] * v;
                }
            }
            __syncthreads();
        }
        if (want_h) {
            for (unsigned int t = tid; t < k * hd; t += nt) {
                const unsigned long long e = (unsigned long long)i * k + t / hd;
                out[e * width + t % hd] += u[e] * s_g[t];
            }
        }
        __syncthreads();
    }
}

extern "C" __global__ void edge_contract_weight_grad_nodes(
    const float* __restrict__ x, const float* __restrict__ nbr, const float* __restrict__ basis,
    const float* __restrict__ hid, const float* __restrict__ rows, const float* __restrict__ u,
    float* __restrict__ out, unsigned int n, unsigned int k, unsigned int c_in, unsigned int mi,
    unsigned int mo, unsigned int nf, unsigned int hd, unsigned int cols, unsigned int c0,
    unsigned int cnt) {
    __shared__ float s_kx[EDGE_GRAD_KX];
    __shared__ float s_acc[EDGE_GRAD_ACC];
    const unsigned int cf = nf * c_in;
    if (k == 0 || mo == 0 || cf == 0 || mo * k > EDGE_GRAD_KX || mo * hd > EDGE_GRAD_ACC) {
        return;
    }
    const unsigned int cc = edge_grad_chunk(cf, mo, k, hd);
    const unsigned int tid = threadIdx.x, nt = blockDim.x;
    float* db = out + (unsigned long long)cf * hd * cols;
    for (unsigned int i = blockIdx.x; i < n; i += gridDim.x) {
        const float* ri = rows + (unsigned long long)i * cnt * mo;
        for (unsigned int cf0 = 0; cf0 < cf; cf0 += cc) {
            const unsigned int m = cf - cf0 < cc ? cf - cf0 : cc;
            edge_kx(x, nbr, basis, u, s_kx, i, cf0, m, n, k, c_in, mi, mo, nf);
            __syncthreads();
            // s_acc[(p, r), h] = sum_kk s_kx[(p, r), kk] hid[e, h]
            for (unsigned int t = tid; t < mo * m * hd; t += nt) {
                const unsigned int h = t % hd, pr = t / hd;
                float v = 0.0f;
                for (unsigned int kk = 0; kk < k; ++kk) {
                    v += s_kx[pr * k + kk] * hid[((unsigned long long)i * k + kk) * hd + h];
                }
                s_acc[t] = v;
            }
            __syncthreads();
            for (unsigned int t = tid; t < m * hd * cnt; t += nt) {
                const unsigned int o = t % cnt, rh = t / cnt;
                const unsigned int r = rh / hd, h = rh - r * hd;
                float v = 0.0f;
                for (unsigned int p = 0; p < mo; ++p) {
                    v += s_acc[(p * m + r) * hd + h] * ri[o * mo + p];
                }
                atomicAdd(out + ((unsigned long long)(cf0 + r) * hd + h) * cols + c0 + o, v);
            }
            for (unsigned int t = tid; t < m * cnt; t += nt) {
                const unsigned int o = t % cnt, r = t / cnt;
                float v = 0.0f;
                for (unsigned int p = 0; p < mo; ++p) {
                    float s = 0.0f;
                    for (unsigned int kk = 0; kk < k; ++kk) {
                        s += s_kx[(p * m + r) * k + kk];
                    }
                    v += s * ri[o * mo + p];
                }
                atomicAdd(db + (unsigned long long)(cf0 + r) * cols + c0 + o, v);
            }
            __syncthreads();
        }
    }
}
