// CUDA kernel of `egnn_edge` (the fused edge stage of an EGNN layer, egnn-pytorch 0.2.8):
// for destination node i with edges e = i k .. (i + 1) k, neighbour j = src[e] (a value
// outside 0..rows reads zero features and coordinates), validity v = valid[e],
//   r = x_i - x_j, d = |r|^2,
//   pre = SiLU(a_i + b_j + t_e + sum_q sin(d / 2^q) P[q] + cos(d / 2^q) P[F + q] + d P[2F])
//   m = SiLU(bias2 + pre W2),  m *= sigmoid(g . m + bg)                       (if gated)
//   w = clamp(v (w4 . SiLU(m W3 + b3) + b4), -c, c),  w *= s / max(|r|, 1e-8)  (if scaled)
//   out[i, 0..M] = sum_e v m,  out[i, M..M + 3] = sum_e w r,
// the formulas and order of the CPU kernel (`cpu.rs`); weights transposed as there: P
// (2F + 1, H), W2 (H, M), W3 (M, 4M), all rows contiguous.
// One block per node (grid-stride over nodes), edges one after another; the threads share the
// hidden rows of the edge in shared memory and split each layer's outputs. The host checks
// H <= EGNN_MAX_HIDDEN and 4 M <= EGNN_MAX_COORS (else the op stays on the host).
// flags: 1 gate, 2 coordinate MLP, 4 coordinate scale, 8 clamp, 16 pool messages, 32 edge term.

#define EGNN_MAX_HIDDEN 2048u
#define EGNN_MAX_COORS 2048u

extern "C" __global__ void egnn_edge_nodes(
    const float* __restrict__ hi, const float* __restrict__ hj, const float* __restrict__ coors,
    const float* __restrict__ src, const float* __restrict__ valid,
    const float* __restrict__ edge_term, const float* __restrict__ phi_t,
    const float* __restrict__ edge_out_t, const float* __restrict__ edge_out_bias,
    const float* __restrict__ gate_w, const float* __restrict__ coors_hidden_t,
    const float* __restrict__ coors_hidden_bias, const float* __restrict__ coors_out,
    const float* __restrict__ scalars, float* __restrict__ out, unsigned int rows,
    unsigned int k, unsigned int h, unsigned int m_dim, unsigned int f, unsigned int four_m,
    unsigned int flags) {
    __shared__ float s_pre[EGNN_MAX_HIDDEN];
    __shared__ float s_m[EGNN_MAX_COORS];
    __shared__ float s_red[32];
    __shared__ float s_geo[5];
    if (h > EGNN_MAX_HIDDEN || four_m > EGNN_MAX_COORS || m_dim > EGNN_MAX_COORS) {
        return;
    }
    // scalars: gate bias, coordinate output bias, coordinate scale, clamp
    const float gate_b = scalars[0], coors_b = scalars[1], coors_scale = scalars[2],
                clamp = scalars[3];
    const unsigned int tid = threadIdx.x, nt = blockDim.x;
    const unsigned int width = m_dim + 3;
    for (unsigned int i = blockIdx.x; i < rows; i += gridDim.x) {
        float* o = out + (unsigned long long)i * width;
        for (unsigned int t = tid; t < width; t += nt) {
            o[t] = 0.0f;
        }
        float shift[3] = {0.0f, 0.0f, 0.0f};
        for (unsigned int ke = 0; ke < k; ++ke) {
            const unsigned long long edge = (unsigned long long)i * k + ke;
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
            // first layer
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
                s_pre[t] = p * se3_sigmoid(p);
            }
            __syncthreads();
            // second layer (messages)
            float gate_part = 0.0f;
            for (unsigned int t = tid; t < m_dim; t += nt) {
                float v = edge_out_bias[t];
                for (unsigned int q = 0; q < h; ++q) {
                    v += s_pre[q] * edge_out_t[q * m_dim + t];
                }
                v = v * se3_sigmoid(v);
                s_m[t] = v;
                if (flags & 1u) {
                    gate_part += v * gate_w[t];
                }
            }
            if (flags & 1u) {
                const float g = se3_sigmoid(gate_b + se3_block_sum(gate_part, s_red));
                for (unsigned int t = tid; t < m_dim; t += nt) {
                    s_m[t] *= g;
                }
            }
            __syncthreads();
            const float v_e = valid[edge];
            if (flags & 16u) {
                for (unsigned int t = tid; t < m_dim; t += nt) {
                    o[t] += v_e * s_m[t];
                }
            }
            if (flags & 2u) {
                float part = 0.0f;
                for (unsigned int t = tid; t < four_m; t += nt) {
                    float c = coors_hidden_bias[t];
                    for (unsigned int q = 0; q < m_dim; ++q) {
                        c += s_m[q] * coors_hidden_t[q * four_m + t];
                    }
                    c = c * se3_sigmoid(c);
                    part += c * coors_out[t];
                }
                float w = (coors_b + se3_block_sum(part, s_red)) * v_e;
                if (flags & 8u) {
                    w = fminf(fmaxf(w, -clamp), clamp);
                }
                if (flags & 4u) {
                    w *= coors_scale / fmaxf(sqrtf(d), 1e-8f);
                }
                for (unsigned int a = 0; a < 3; ++a) {
                    shift[a] += w * s_geo[a];
                }
            }
        }
        if (tid == 0 && (flags & 2u)) {
            for (unsigned int a = 0; a < 3; ++a) {
                o[m_dim + a] = shift[a];
            }
        }
        __syncthreads();
    }
}
