// Host entry points of the CPU shim: every se3 CUDA kernel source compiled as C++ over
// cuda_shim.h, and one `shim_<kernel>` launcher per kernel taking the grid and block sizes and
// the kernel's arguments. Tests only (see se3-cuda-check/src/shim.rs).
#include "cuda_shim.h"

#include "exec/cuda/prelude.cuh"

#include "ops/gather/gather.cu"
#include "ops/scatter_add/scatter_add.cu"
#include "ops/segment_softmax/segment_softmax.cu"
#include "ops/relative_positions/relative_positions.cu"
#include "ops/layer_norm_gelu/layer_norm_gelu.cu"
#include "ops/layer_norm_gelu/layer_norm_gelu_grad.cu"
#include "ops/silu_layer_norm/silu_layer_norm.cu"
#include "ops/top_k/top_k.cu"
#include "ops/edge_conv/edge_conv.cu"
#include "ops/neighbors/knn.cu"
#include "ops/radial_hidden/radial_hidden.cu"
#include "ops/edge_contract/edge_contract.cu"
#include "ops/edge_conv/radial_edge_conv.cu"
#include "ops/adjacency/adjacency.cu"
#include "ops/egnn_edge/egnn_edge.cu"
#include "ops/edge_basis/edge_basis.cu"
#include "ops/head_attention/head_attention.cu"
#include "ops/neighbors/index_rows.cu"
#include "ops/top_k/take_along_rows.cu"
#include "ops/stack/stack.cu"
#include "ops/grad_scale/grad_scale.cu"
#include "ops/head_attention/head_attention_grad.cu"
#include "ops/egnn_edge/egnn_edge_backward.cu"
#include "exec/cuda/view_copy.cu"
#include "exec/cuda/reduce.cu"
#include "exec/cuda/elementwise.cu"

#define SHIM_LAUNCH(name, params, args)                                               \
    extern "C" void shim_##name(unsigned int grid, unsigned int block, params) {       \
        cuda_shim::launch(dim3(grid), dim3(block), [&] { name args; });              \
    }
#define P(...) __VA_ARGS__

SHIM_LAUNCH(gather_rows,
            P(const float* table, const float* idx, float* out, unsigned n, unsigned c,
              unsigned e),
            (table, idx, out, n, c, e))
SHIM_LAUNCH(scatter_add_atomic,
            P(const float* src, const float* idx, float* out, unsigned n, unsigned c,
              unsigned e),
            (src, idx, out, n, c, e))
SHIM_LAUNCH(bucket_count, P(const float* idx, unsigned* counts, unsigned n, unsigned e),
            (idx, counts, n, e))
SHIM_LAUNCH(bucket_scan,
            P(const unsigned* counts, unsigned* start, unsigned* cursor, unsigned n),
            (counts, start, cursor, n))
SHIM_LAUNCH(bucket_fill,
            P(const float* idx, unsigned* cursor, unsigned* order, unsigned n, unsigned e),
            (idx, cursor, order, n, e))
SHIM_LAUNCH(bucket_sort, P(const unsigned* start, unsigned* order, unsigned n),
            (start, order, n))
SHIM_LAUNCH(scatter_add_sorted,
            P(const float* src, const unsigned* start, const unsigned* order, float* out,
              unsigned n, unsigned c),
            (src, start, order, out, n, c))
SHIM_LAUNCH(segment_softmax_sorted,
            P(const float* x, const unsigned* start, const unsigned* order, float* out,
              unsigned n, unsigned h),
            (x, start, order, out, n, h))
SHIM_LAUNCH(relative_positions,
            P(const float* coords, const float* center, const float* neighbor, float* rel,
              float* dist, unsigned n, unsigned e),
            (coords, center, neighbor, rel, dist, n, e))
SHIM_LAUNCH(layer_norm_gelu_rows,
            P(const float* x, const float* bias, const float* gamma, const float* beta,
              float* out, unsigned rows, unsigned w, float eps),
            (x, bias, gamma, beta, out, rows, w, eps))
SHIM_LAUNCH(layer_norm_gelu_grad_rows,
            P(const float* x, const float* bias, const float* gamma, const float* beta,
              const float* g, float* out, unsigned rows, unsigned w, float eps),
            (x, bias, gamma, beta, g, out, rows, w, eps))
SHIM_LAUNCH(silu_layer_norm_rows,
            P(const float* x, const float* w, const float* bias, const float* gamma,
              const float* beta, float* out, unsigned rows, unsigned width, unsigned n_in,
              float eps),
            (x, w, bias, gamma, beta, out, rows, width, n_in, eps))
SHIM_LAUNCH(top_k_rows,
            P(const float* scores, const float* mask, float* keys, float* out, unsigned n,
              unsigned m, unsigned k, int largest),
            (scores, mask, keys, out, n, m, k, largest))
SHIM_LAUNCH(view_copy,
            P(const float* src, unsigned long long src_len, float* out,
              unsigned long long total, const ViewDesc* v),
            (src, src_len, out, total, *v))
SHIM_LAUNCH(reduce_sum, P(const float* x, float* out, unsigned outer, unsigned len,
                          unsigned inner),
            (x, out, outer, len, inner))
SHIM_LAUNCH(reduce_max, P(const float* x, float* out, unsigned outer, unsigned len,
                          unsigned inner),
            (x, out, outer, len, inner))
SHIM_LAUNCH(elementwise_program,
            P(const Instr* prog, unsigned len, const float* const* inputs, const int* scalar,
              unsigned out_reg, float* out, unsigned long long total),
            (prog, len, inputs, scalar, out_reg, out, total))
SHIM_LAUNCH(edge_conv_sorted,
            P(const float* x, const float* w, const float* src, const unsigned* start,
              const unsigned* order, float* out, unsigned m, unsigned ci, unsigned co,
              unsigned n, int diagonal),
            (x, w, src, start, order, out, m, ci, co, n, diagonal))
SHIM_LAUNCH(knn_rows,
            P(const float* coords, const float* mask, const float* batch, float* dists,
              float* out, unsigned n, unsigned k, float r2, int exclude_self),
            (coords, mask, batch, dists, out, n, k, r2, exclude_self))
SHIM_LAUNCH(radial_hidden_rows,
            P(const float* x, const float* w0, const float* b0, const float* g1,
              const float* be1, const float* w3, const float* b3, const float* g4,
              const float* be4, float* hidden1, float* out, unsigned np, unsigned e,
              unsigned n_in, unsigned h, float eps),
            (x, w0, b0, g1, be1, w3, b3, g4, be4, hidden1, out, np, e, n_in, h, eps))
SHIM_LAUNCH(edge_contract_sum_nodes,
            P(const float* x, const float* nbr, const float* basis, const float* hid,
              const float* a, const float* w, const float* b, float* out, unsigned n,
              unsigned k, unsigned c_in, unsigned mi, unsigned mo, unsigned nf, unsigned hd,
              unsigned cols, unsigned c0, unsigned cnt),
            (x, nbr, basis, hid, a, w, b, out, n, k, c_in, mi, mo, nf, hd, cols, c0, cnt))
SHIM_LAUNCH(radial_edge_conv_sorted,
            P(const float* x, const float* basis, const float* hid, const float* weight,
              const float* bias, const float* w, const float* src, const unsigned* start,
              const unsigned* order, float* out, unsigned m, unsigned n, unsigned ci,
              unsigned di, unsigned nf, unsigned mo, unsigned co, unsigned hd),
            (x, basis, hid, weight, bias, w, src, start, order, out, m, n, ci, di, nf, mo, co,
             hd))
SHIM_LAUNCH(edge_contract_logits_nodes,
            P(const float* x, const float* nbr, const float* basis, const float* hid,
              const float* q, const float* w, const float* b, float* out, unsigned n,
              unsigned k, unsigned c_in, unsigned mi, unsigned mo, unsigned nf, unsigned hd,
              unsigned cols, unsigned c0, unsigned cnt, unsigned head),
            (x, nbr, basis, hid, q, w, b, out, n, k, c_in, mi, mo, nf, hd, cols, c0, cnt, head))
SHIM_LAUNCH(edge_contract_edge_grad_nodes,
            P(const float* x, const float* nbr, const float* basis, const float* hid,
              const float* rows, const float* u, const float* w, const float* b, float* out,
              unsigned n, unsigned k, unsigned c_in, unsigned mi, unsigned mo, unsigned nf,
              unsigned hd, unsigned cols, unsigned c0, unsigned cnt, unsigned want_h,
              unsigned want_kx),
            (x, nbr, basis, hid, rows, u, w, b, out, n, k, c_in, mi, mo, nf, hd, cols, c0, cnt,
             want_h, want_kx))
SHIM_LAUNCH(edge_contract_weight_grad_nodes,
            P(const float* x, const float* nbr, const float* basis, const float* hid,
              const float* rows, const float* u, float* out, unsigned n, unsigned k,
              unsigned c_in, unsigned mi, unsigned mo, unsigned nf, unsigned hd, unsigned cols,
              unsigned c0, unsigned cnt),
            (x, nbr, basis, hid, rows, u, out, n, k, c_in, mi, mo, nf, hd, cols, c0, cnt))
SHIM_LAUNCH(adjacency_init,
            P(const float* adj, float* reach, float* out, unsigned long long total),
            (adj, reach, out, total))
SHIM_LAUNCH(adjacency_step, P(const float* reach, float* next, float* out, unsigned n, float d),
            (reach, next, out, n, d))
SHIM_LAUNCH(egnn_edge_nodes,
            P(const float* hi, const float* hj, const float* coors, const float* src,
              const float* valid, const float* edge_term, const float* phi_t,
              const float* edge_out_t, const float* edge_out_bias, const float* gate_w,
              const float* coors_hidden_t, const float* coors_hidden_bias,
              const float* coors_out, const float* scalars, float* out, unsigned rows,
              unsigned k, unsigned h, unsigned m_dim, unsigned f, unsigned four_m,
              unsigned flags),
            (hi, hj, coors, src, valid, edge_term, phi_t, edge_out_t, edge_out_bias, gate_w,
             coors_hidden_t, coors_hidden_bias, coors_out, scalars, out, rows, k, h, m_dim, f,
             four_m, flags))
SHIM_LAUNCH(spherical_harmonics_rows,
            P(const float* rel, const unsigned* col_start, const unsigned* powers,
              const float* coefs, float* out, unsigned e, unsigned cols),
            (rel, col_start, powers, coefs, out, e, cols))
SHIM_LAUNCH(kernel_basis_rows,
            P(const float* rel, const float* dist, const unsigned* col_start,
              const unsigned* powers, const float* coefs, float* out, unsigned e,
              unsigned cols),
            (rel, dist, col_start, powers, coefs, out, e, cols))
SHIM_LAUNCH(head_attention_rows,
            P(const float* q, const float* k, const float* v, const float* mask, float* out,
              unsigned b, unsigned n, unsigned c, unsigned heads, unsigned dh, float alpha,
              int mode, int zero_if_all_masked),
            (q, k, v, mask, out, b, n, c, heads, dh, alpha, mode, zero_if_all_masked))
SHIM_LAUNCH(index_valid, P(const float* idx, float* out, unsigned long long total),
            (idx, out, total))
SHIM_LAUNCH(edge_centers,
            P(const float* idx, float* out, unsigned long long total, unsigned k),
            (idx, out, total, k))
SHIM_LAUNCH(take_along_rows,
            P(const float* values, const float* idx, float* out, unsigned n, unsigned m,
              unsigned k),
            (values, idx, out, n, m, k))
SHIM_LAUNCH(head_attention_rows_wide,
            P(const float* q, const float* k, const float* v, const float* mask, float* out,
              unsigned b, unsigned n, unsigned c, unsigned heads, unsigned dh, float alpha,
              int mode, int zero_if_all_masked),
            (q, k, v, mask, out, b, n, c, heads, dh, alpha, mode, zero_if_all_masked))
SHIM_LAUNCH(stack_slot,
            P(const float* src, float* out, unsigned long long len, unsigned long long offset),
            (src, out, len, offset))
SHIM_LAUNCH(grad_scale_forward, P(const float* x, float* out, unsigned long long total),
            (x, out, total))
SHIM_LAUNCH(head_attention_grad_stats,
            P(const float* q, const float* k, const float* v, const float* mask,
              const float* g, float* stats, unsigned b, unsigned n, unsigned c,
              unsigned heads, unsigned dh, float alpha, int mode, int with_r),
            (q, k, v, mask, g, stats, b, n, c, heads, dh, alpha, mode, with_r))
SHIM_LAUNCH(head_attention_grad_rows,
            P(const float* q, const float* k, const float* v, const float* mask,
              const float* g, const float* stats, float* out, unsigned b, unsigned n,
              unsigned c, unsigned heads, unsigned dh, float alpha, int mode,
              int zero_if_all_masked, int wrt),
            (q, k, v, mask, g, stats, out, b, n, c, heads, dh, alpha, mode,
             zero_if_all_masked, wrt))
SHIM_LAUNCH(egnn_edge_backward_nodes,
            P(const float* hi, const float* hj, const float* coors, const float* src,
              const float* valid, const float* edge_term, const float* grad,
              const float* phi_t, const float* edge_out_t, const float* edge_out_bias,
              const float* gate_w, const float* coors_hidden_t,
              const float* coors_hidden_bias, const float* coors_out,
              const float* scalars, float* out, unsigned rows, unsigned k, unsigned h,
              unsigned m_dim, unsigned f, unsigned four_m, unsigned flags),
            (hi, hj, coors, src, valid, edge_term, grad, phi_t, edge_out_t, edge_out_bias,
             gate_w, coors_hidden_t, coors_hidden_bias, coors_out, scalars, out, rows, k, h,
             m_dim, f, four_m, flags))
