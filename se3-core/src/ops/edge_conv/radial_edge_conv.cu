// CUDA kernel of `radial_edge_conv` (one degree pair, reassociated as the CPU kernel): for
// destination node n over its edges e (bucketed by destination; an edge with src -1 or out of
// range, or pooling weight 0, contributes nothing),
//   Kx_e[p, (c, f)] = sum_q (w_e x[src e, c, q]) K_e[q, f, p],
//   A[p, (c, f), h] = sum_e Kx_e[p, (c, f)] h_e[h],   B[p, (c, f)] = sum_e Kx_e[p, (c, f)],
//   out[n, o, p] = sum_{(c, f)} ( sum_h weight[(o, c, f), h] A[p, (c, f), h]
//                               + bias[(o, c, f)] B[p, (c, f)] ),
// so the per-edge radial weights R_e = weight h_e + bias are never formed. x (M, c_in di)
// rows (c, q), basis (E, di, nf mo) laid out [q, (f, p)], h (E, hd), weight (c_out c_in nf, hd),
// bias (c_out c_in nf,), out (N, c_out mo) rows (o, p).
// One block per node, grid-stride over nodes; per chunk of cc (c, f) columns, A and B of the
// chunk are accumulated in shared memory one edge at a time (Kx of the edge first), then each
// thread adds its outputs' share. The host checks mo hd <= 4096.

#define RADIAL_CONV_KX 1024u
#define RADIAL_CONV_ACC 4096u

extern "C" __global__ void radial_edge_conv_sorted(
    const float* __restrict__ x, const float* __restrict__ basis, const float* __restrict__ hid,
    const float* __restrict__ weight, const float* __restrict__ bias,
    const float* __restrict__ w, const float* __restrict__ src,
    const unsigned int* __restrict__ start, const unsigned int* __restrict__ order,
    float* __restrict__ out, unsigned int m, unsigned int n, unsigned int ci, unsigned int di,
    unsigned int nf, unsigned int mo, unsigned int co, unsigned int hd) {
    __shared__ float s_kx[RADIAL_CONV_KX];
    __shared__ float s_b[RADIAL_CONV_KX];
    __shared__ float s_acc[RADIAL_CONV_ACC];
    const unsigned int cf = ci * nf;
    if (mo == 0 || co == 0 || mo > RADIAL_CONV_KX || mo * hd > RADIAL_CONV_ACC) {
        return;
    }
    unsigned int cc = RADIAL_CONV_KX / mo;
    if (hd > 0 && RADIAL_CONV_ACC / (mo * hd) < cc) {
        cc = RADIAL_CONV_ACC / (mo * hd);
    }
    if (cc > cf) {
        cc = cf;
    }
    const unsigned int tid = threadIdx.x, nt = blockDim.x;
    const unsigned int fm = nf * mo;
    for (unsigned int i = blockIdx.x; i < n; i += gridDim.x) {
        float* y = out + (unsigned long long)i * co * mo;
        if (cf == 0) {
            for (unsigned int t = tid; t < co * mo; t += nt) {
                y[t] = 0.0f;
            }
            continue;
        }
        for (unsigned int cf0 = 0; cf0 < cf; cf0 += cc) {
            const unsigned int mc = cf - cf0 < cc ? cf - cf0 : cc;
            for (unsigned int t = tid; t < mo * mc; t += nt) {
                s_b[t] = 0.0f;
            }
            for (unsigned int t = tid; t < mo * mc * hd; t += nt) {
                s_acc[t] = 0.0f;
            }
            for (unsigned int s = start[i]; s < start[i + 1]; ++s) {
                const unsigned long long e = order[s];
                const float sv = src[e];
                const float we = w[e];
                if (!(sv >= 0.0f) || (unsigned long long)sv >= m || we == 0.0f) {
                    continue;  // the same for every thread of the block
                }
                const unsigned long long j = (unsigned long long)sv;
                __syncthreads();  // the previous edge's s_kx is no longer read
                // s_kx[(p, r)] = Kx_e[p, cf0 + r]
                for (unsigned int t = tid; t < mo * mc; t += nt) {
                    const unsigned int p = t / mc, r = t - p * mc;
                    const unsigned int fc = cf0 + r;
                    const unsigned int c = fc / nf, f = fc - c * nf;
                    const float* xs = x + (j * ci + c) * di;
                    const float* kb = basis + e * di * fm + f * mo + p;
                    float v = 0.0f;
                    for (unsigned int q = 0; q < di; ++q) {
                        v += (we * xs[q]) * kb[(unsigned long long)q * fm];
                    }
                    s_kx[t] = v;
                    s_b[t] += v;
                }
                __syncthreads();
                const float* he = hid + e * hd;
                for (unsigned int t = tid; t < mo * mc * hd; t += nt) {
                    s_acc[t] += s_kx[t / hd] * he[t % hd];
                }
            }
            __syncthreads();
            for (unsigned int t = tid; t < co * mo; t += nt) {
                const unsigned int o = t / mo, p = t - o * mo;
                float v = 0.0f;
                for (unsigned int r = 0; r < mc; ++r) {
                    const unsigned long long row = (unsigned long long)o * cf + cf0 + r;
                    const float* wr = weight + row * hd;
                    const float* ar = s_acc + (p * mc + r) * hd;
                    for (unsigned int h = 0; h < hd; ++h) {
                        v += ar[h] * wr[h];
                    }
                    v += bias[row] * s_b[p * mc + r];
                }
                y[t] = cf0 == 0 ? v : y[t] + v;
            }
            __syncthreads();
        }
    }
}
