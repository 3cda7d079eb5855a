// CUDA kernel of `EgnnEdgeBackward` (the vector-Jacobian product of `egnn_edge`, formulas in
// backward.rs and the CPU kernel there): for destination node i, its edges e = i k .. (i + 1) k
// one after another, the forward re-run in shared memory (pre, SiLU(pre), z, m0, the gate,
// the coordinate hidden row), then the chain rule back through it with the node's output
// gradient g_i = [g_m (M), g_x (3)]. Writes out[e] = [d pre_e (H), d r_e (3)] for each edge
// and out[rows k + i] = [sum_e d pre_e, sum_e d r_e] for the node (out (rows k + rows, H + 3)).
// Weights and flags as `egnn_edge_nodes` (egnn_edge.cu); a self edge (r = 0) has no
// direction derivative. One block per node (grid-stride), the threads split each layer's
// outputs. The host checks H <= EGNN_BWD_MAX_HIDDEN, M <= EGNN_BWD_MAX_MSG and
// 4 M <= EGNN_BWD_MAX_COORS (else the op stays on the host).
// flags: 1 gate, 2 coordinate MLP, 4 coordinate scale, 8 clamp, 16 pool messages, 32 edge term.

#define EGNN_BWD_MAX_HIDDEN 1024u
#define EGNN_BWD_MAX_MSG 512u
#define EGNN_BWD_MAX_COORS 2048u

extern "C" __global__ void egnn_edge_backward_nodes(
    const float* __restrict__ hi, const float* __restrict__ hj, const float* __restrict__ coors,
    const float* __restrict__ src, const float* __restrict__ valid,
    const float* __restrict__ edge_term, const float* __restrict__ grad,
    const float* __restrict__ phi_t, const float* __restrict__ edge_out_t,
    const float* __restrict__ edge_out_bias, const float* __restrict__ gate_w,
    const float* __restrict__ coors_hidden_t, const float* __restrict__ coors_hidden_bias,
    const float* __restrict__ coors_out, const float* __restrict__ scalars,
    float* __restrict__ out, unsigned int rows, unsigned int k, unsigned int h,
    unsigned int m_dim, unsigned int f, unsigned int four_m, unsigned int flags) {
    __shared__ float s_pre[EGNN_BWD_MAX_HIDDEN];  // pre-activation of the first layer
    __shared__ float s_hid[EGNN_BWD_MAX_HIDDEN];  // SiLU(pre)
    __shared__ float s_z[EGNN_BWD_MAX_MSG];       // z, then d z
    __shared__ float s_m0[EGNN_BWD_MAX_MSG];      // SiLU(z)
    __shared__ float s_dm[EGNN_BWD_MAX_MSG];      // d m
    __shared__ float s_c[EGNN_BWD_MAX_COORS];     // c_pre, then d c
    __shared__ float s_red[32];
    __shared__ float s_geo[5];
    if (h > EGNN_BWD_MAX_HIDDEN || m_dim > EGNN_BWD_MAX_MSG || four_m > EGNN_BWD_MAX_COORS) {
        return;
    }
    const float gate_b = scalars[0], coors_b = scalars[1], coors_scale = scalars[2],
                clamp = scalars[3];
    const unsigned int tid = threadIdx.x, nt = blockDim.x;
    const unsigned int width = h + 3;
    for (unsigned int i = blockIdx.x; i < rows; i += gridDim.x) {
        float* node = out + ((unsigned long long)rows * k + i) * width;
        for (unsigned int t = tid; t < width; t += nt) {
            node[t] = 0.0f;
        }
        const float* g_m = grad + (unsigned long long)i * (m_dim + 3);
        const float* g_x = g_m + m_dim;
        for (unsigned int ke = 0; ke < k; ++ke) {
            const unsigned long long edge = (unsigned long long)i * k + ke;
            float* eo = out + edge * width;
            __syncthreads();
            if (tid == 0) {
                const float jf = src[edge];
                const bool has = jf >= 0.0f && jf < (float)rows;
                const unsigned int j = has ? (unsigned int)jf : 0u;
                float d = 0.0f;
                for (unsigned int a = 0; a < 3; ++a) {
                    const float r = coors[i * 3 + a] - (has ? coors[j * 3 + a] : 0.0f);
                    s_geo[a] = r;
                    d += r * r;
                }
                s_geo[3] = d;
                s_geo[4] = has ? jf : -1.0f;
            }
            __syncthreads();
            const float d = s_geo[3];
            const float jf = s_geo[4];
            const float rel[3] = {s_geo[0], s_geo[1], s_geo[2]};
            // forward: first layer
            for (unsigned int t = tid; t < h; t += nt) {
                float p = hi[(unsigned long long)i * h + t];
                if (jf >= 0.0f) {
                    p += hj[(unsigned long long)jf * h + t];
                }
                if (flags & 32u) {
                    p += edge_term[edge * h + t];
                }
                float scale = 1.0f;
                for (unsigned int q = 0; q < f; ++q) {
                    const float arg = d * scale;
                    p += sinf(arg) * phi_t[q * h + t];
                    p += cosf(arg) * phi_t[(f + q) * h + t];
                    scale *= 0.5f;
                }
                p += d * phi_t[2 * f * h + t];
                s_pre[t] = p;
                s_hid[t] = p * se3_sigmoid(p);
            }
            __syncthreads();
            // forward: second layer and gate
            float gate_part = 0.0f;
            for (unsigned int t = tid; t < m_dim; t += nt) {
                float z = edge_out_bias[t];
                for (unsigned int q = 0; q < h; ++q) {
                    z += s_hid[q] * edge_out_t[q * m_dim + t];
                }
                const float m0 = z * se3_sigmoid(z);
                s_z[t] = z;
                s_m0[t] = m0;
                if (flags & 1u) {
                    gate_part += m0 * gate_w[t];
                }
            }
            const float gamma =
                (flags & 1u) ? se3_sigmoid(gate_b + se3_block_sum(gate_part, s_red))
                             : 1.0f;
            const float v_e = valid[edge];
            for (unsigned int t = tid; t < m_dim; t += nt) {
                s_dm[t] = (flags & 16u) ? v_e * g_m[t] : 0.0f;
            }
            __syncthreads();
            float d_rel[3] = {0.0f, 0.0f, 0.0f};
            float d_d = 0.0f;
            if (flags & 2u) {
                // forward: coordinate weight w from the hidden row c_pre = m W3 + b3
                float part = 0.0f;
                for (unsigned int t = tid; t < four_m; t += nt) {
                    float c = coors_hidden_bias[t];
                    for (unsigned int q = 0; q < m_dim; ++q) {
                        c += gamma * s_m0[q] * coors_hidden_t[q * four_m + t];
                    }
                    s_c[t] = c;
                    part += c * se3_sigmoid(c) * coors_out[t];
                }
                const float w0 = coors_b + se3_block_sum(part, s_red);
                const float w1 = w0 * v_e;
                const float w2 = (flags & 8u) ? fminf(fmaxf(w1, -clamp), clamp) : w1;
                const bool inside = !(flags & 8u) || (w1 >= -clamp && w1 <= clamp);
                float factor = 1.0f, iota = 0.0f;
                if (flags & 4u) {
                    iota = d > 0.0f ? 1.0f / fmaxf(sqrtf(d), 1e-8f) : 0.0f;
                    factor = coors_scale * iota;
                }
                const float w = w2 * factor;
                const float d_w = g_x[0] * rel[0] + g_x[1] * rel[1] + g_x[2] * rel[2];
                for (unsigned int a = 0; a < 3; ++a) {
                    d_rel[a] += w * g_x[a];
                }
                if ((flags & 4u) && sqrtf(d) > 1e-8f) {
                    d_d -= d_w * w2 * coors_scale * iota * iota * iota * 0.5f;
                }
                const float d_w0 = inside ? d_w * factor * v_e : 0.0f;
                for (unsigned int t = tid; t < four_m; t += nt) {
                    s_c[t] = d_w0 * coors_out[t] * se3_silu_grad(s_c[t]);
                }
                __syncthreads();
                // d m += W3^T d c (coors_hidden_t is (M, 4M))
                for (unsigned int q = tid; q < m_dim; q += nt) {
                    float acc = 0.0f;
                    for (unsigned int t = 0; t < four_m; ++t) {
                        acc += coors_hidden_t[q * four_m + t] * s_c[t];
                    }
                    s_dm[q] += acc;
                }
                __syncthreads();
            }
            // back through the gate and the second layer's SiLU: d z in place of z
            float du = 0.0f;
            if (flags & 1u) {
                float part = 0.0f;
                for (unsigned int t = tid; t < m_dim; t += nt) {
                    part += s_dm[t] * s_m0[t];
                }
                du = se3_block_sum(part, s_red) * gamma * (1.0f - gamma);
            }
            for (unsigned int t = tid; t < m_dim; t += nt) {
                const float dz = (flags & 1u) ? gamma * s_dm[t] + du * gate_w[t] : s_dm[t];
                s_z[t] = dz * se3_silu_grad(s_z[t]);
            }
            __syncthreads();
            // d pre = (W2^T d z) SiLU'(pre) (edge_out_t is (H, M)); d d through phi(d)
            float dd_part = 0.0f;
            for (unsigned int p = tid; p < h; p += nt) {
                float acc = 0.0f;
                for (unsigned int t = 0; t < m_dim; ++t) {
                    acc += edge_out_t[p * m_dim + t] * s_z[t];
                }
                const float dh = acc * se3_silu_grad(s_pre[p]);
                float scale = 1.0f;
                for (unsigned int q = 0; q < f; ++q) {
                    const float arg = d * scale;
                    dd_part += dh * scale *
                               (cosf(arg) * phi_t[q * h + p] - sinf(arg) * phi_t[(f + q) * h + p]);
                    scale *= 0.5f;
                }
                dd_part += dh * phi_t[2 * f * h + p];
                eo[p] = dh;
                node[p] += dh;
            }
            d_d += se3_block_sum(dd_part, s_red);
            if (tid == 0) {
                for (unsigned int a = 0; a < 3; ++a) {
                    const float dr = d_rel[a] + 2.0f * d_d * rel[a];
                    eo[h + a] = dr;
                    node[h + a] += dr;
                }
            }
        }
        __syncthreads();
    }
}
