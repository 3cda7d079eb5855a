# Dev-only: many small se3-transformer-pytorch 0.9 configs combining the options of issue 7 in ways the
# reference configs do not, for the generality check (tests/extra_parity.rs).
#
#   /work/venv-models/bin/python generate_general.py OUT_DIR [NAME_SUBSTRING ...]
#
# Same folder layout as tests/reference/models (config.json, weights.safetensors, inputs.safetensors,
# outputs.safetensors with `_f64` and `_f32` outputs). To keep the files small every parameter is
# rounded to float16 *before* the forward passes (so the float16 file is the exact model) and stored
# as F16; buffers (rotary inv_freq) stay F32. Inputs are float32 (exact in float64) or int64/bool.
# Seeds are fixed per case name (crc32), so a rerun writes the same files.
#
#   /tmp/se3-refenv/bin/python generate_general.py --gradients FOLDER [FOLDER ...]
#
# writes gradients.safetensors into existing case folders (the layout of
# /work/shared/reference/GRADIENTS.md), from their stored weights and inputs, not redrawn: torch
# autograd in float64 of L = sum_o <o, cotangent.o>, the cotangents `cotangent.<o>` drawn N(0, 1)
# from seed crc32(name) + 2; `param.<key>` for every named parameter (zeros where one does not reach
# the outputs); `input.<name>` (inputs-file names) for float features, continuous edges and global
# features; not the coordinates (the library computes its basis without gradient, so its coordinate
# gradient is not the derivative). Q_J: the folders' outputs were made with the generating machine's
# Q_J signs (qj_signs.json); the library's Q_J is first replaced by those and the float64 outputs
# must reproduce outputs.safetensors to 1e-10 (checks weights, inputs and the replacement), then by
# the reference Q_J of tests/reference/math (the signs se3 ships, with which se3's differentiable
# path runs) for the gradients. Reversible trunks are differentiated in train mode (the library's
# reversible backward needs the RNG state recorded in training; the model has no dropout, so the
# forward is the eval forward: checked against the stored outputs too). Gradients are stored as
# float32 (the float64 values rounded: 6e-8 relative, far below the 1e-4 the test asks) to keep the
# files at the size of the float16 weights times two.
import json, os, sys, zlib
import torch
from safetensors.torch import save_file
from se3_transformer_pytorch import SE3Transformer

OUT = sys.argv[1]
ONLY = sys.argv[2:]


def case(name, kw, lits=None, **inp):
    return name, kw, lits or {}, inp


# inp options: b, n, pad (nodes masked at the end of the last batch element), adj ("chain", "star",
# "batch", "dense"), nbr_mask (probability of keeping a pair), n_global, scale (coordinate scale),
# edges_float (continuous edges even with num_edge_tokens unset)
CASES = [
    case("g_deg1_heads1_identity_out", dict(dim=6, heads=1, dim_head=6, depth=1, num_degrees=1,
         num_neighbors=4), dict(return_type=0), b=2, n=7, pad=2),
    case("g_deg1_dimhead_noself_depth3", dict(dim=5, heads=3, dim_head=2, depth=3, num_degrees=1,
         attend_self=False, num_neighbors=3), {}, b=1, n=8),
    case("g_in3_out3_dict_dims", dict(dim=3, input_degrees=3, dim_in=(2, 3, 1), num_degrees=3,
         output_degrees=3, dim_out=(2, 1, 2), heads=2, dim_head=3, depth=1, num_neighbors=4),
         {}, b=2, n=6, pad=1),
    case("g_out2_rt1_reduce", dict(dim=4, heads=2, dim_head=3, depth=1, num_degrees=2, output_degrees=2,
         reduce_dim_out=True, num_neighbors=4), dict(return_type=1), b=2, n=6, pad=1),
    case("g_out3_both_reduce", dict(dim=3, heads=1, dim_head=4, depth=1, num_degrees=3, output_degrees=3,
         reduce_dim_out=True, num_neighbors=3), {}, b=1, n=6),
    case("g_out2_rt0_noreduce", dict(dim=4, heads=2, dim_head=2, depth=2, num_degrees=2, output_degrees=2,
         num_neighbors=5), dict(return_type=0), b=1, n=7),
    case("g_sparse_only_k0", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=2, num_neighbors=0,
         attend_sparse_neighbors=True), dict(return_type=0), b=2, n=8, pad=2, adj="chain"),
    case("g_sparse_cap_eq_plus_knn", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=1, num_neighbors=2,
         attend_sparse_neighbors=True, max_sparse_neighbors=3), dict(return_type=0), b=1, n=9, adj="star3"),
    case("g_sparse_cap_above", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=1, num_neighbors=1,
         attend_sparse_neighbors=True, max_sparse_neighbors=5), dict(return_type=0), b=2, n=8, adj="chain"),
    case("g_adj3_emb_no_sparse", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=1, num_neighbors=4,
         num_adj_degrees=3, adj_dim=3), dict(return_type=0), b=1, n=9, adj="chain"),
    case("g_adj2_nodim_sparse", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=1, num_neighbors=1,
         attend_sparse_neighbors=True, num_adj_degrees=2, adj_dim=0), dict(return_type=0), b=1, n=9,
         adj="chain"),
    case("g_adj_batch3d_emb", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=1, num_neighbors=2,
         attend_sparse_neighbors=True, num_adj_degrees=2, adj_dim=2), dict(return_type=0), b=2, n=8,
         adj="batch", pad=1),
    case("g_edge_tokens_fourier2", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=1, num_neighbors=4,
         num_edge_tokens=4, edge_dim=2, fourier_encode_dist=True, rel_dist_num_fourier_features=2),
         dict(return_type=0), b=2, n=7),
    case("g_cont_edges_adj_emb", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=1, num_neighbors=4,
         edge_dim=3, num_adj_degrees=2, adj_dim=2), dict(return_type=0), b=2, n=7, adj="chain"),
    case("g_fourier_only", dict(dim=4, heads=1, dim_head=3, depth=1, num_degrees=2, num_neighbors=3,
         fourier_encode_dist=True, rel_dist_num_fourier_features=1), dict(return_type=0), b=1, n=6),
    case("g_global_type1", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=2, output_degrees=2,
         global_feats_dim=3, num_neighbors=4), dict(return_type=1), b=2, n=6, n_global=3),
    case("g_global_onehead_nullkv_noself", dict(dim=4, heads=2, dim_head=3, depth=1, num_degrees=1,
         global_feats_dim=2, one_headed_key_values=True, use_null_kv=True, attend_self=False,
         num_neighbors=3), dict(return_type=0), b=2, n=6, n_global=1, pad=1),
    case("g_causal_radius_cut", dict(dim=4, heads=2, dim_head=2, depth=2, num_degrees=1, causal=True,
         valid_radius=1.2, num_neighbors=4), dict(return_type=0), b=2, n=8, pad=2),
    case("g_linear_keys_noself_deg3", dict(dim=3, heads=2, dim_head=2, depth=1, num_degrees=3,
         output_degrees=1, linear_proj_keys=True, attend_self=False, num_neighbors=3), {}, b=1, n=6),
    case("g_tie_onehead", dict(dim=4, heads=3, dim_head=2, depth=1, num_degrees=2, output_degrees=2,
         tie_key_values=True, one_headed_key_values=True, num_neighbors=4), {}, b=1, n=6),
    case("g_rotary_pos_only", dict(dim=4, heads=2, dim_head=6, depth=1, num_degrees=1, rotary_position=True,
         num_neighbors=4), dict(return_type=0), b=2, n=7, pad=1),
    case("g_rotary_both_passthrough", dict(dim=4, heads=1, dim_head=9, depth=1, num_degrees=1,
         rotary_position=True, rotary_rel_dist=True, num_neighbors=4), dict(return_type=0), b=1, n=7),
    case("g_rotary_dist_nullkv_causal", dict(dim=4, heads=2, dim_head=4, depth=1, num_degrees=2,
         rotary_rel_dist=True, use_null_kv=True, causal=True, num_neighbors=4), dict(return_type=0),
         b=1, n=7),
    case("g_onehead_linear_rotary_nullkv", dict(dim=4, heads=2, dim_head=4, depth=1, num_degrees=2,
         output_degrees=2, one_headed_key_values=True, linear_proj_keys=True, rotary_position=True,
         rotary_rel_dist=True, use_null_kv=True, num_neighbors=4), dict(return_type=1), b=1, n=6),
    case("g_nullkv_noself_pad", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=2, use_null_kv=True,
         attend_self=False, num_neighbors=3), dict(return_type=0), b=2, n=6, pad=2),
    case("g_noself_pad", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=1, attend_self=False,
         num_neighbors=3), dict(return_type=0), b=2, n=7, pad=3),
    case("g_convs2_gated_normout", dict(dim=3, heads=2, dim_head=2, depth=1, num_degrees=2, output_degrees=2,
         num_conv_layers=2, norm_gated_scale=True, norm_out=True, num_neighbors=3), {}, b=1, n=6),
    case("g_egnn_both_reduce_edges", dict(dim=4, depth=2, use_egnn=True, hidden_fiber_dict={0: 4, 1: 2, 2: 1},
         egnn_hidden_dim=5, num_edge_tokens=3, edge_dim=2, reduce_dim_out=True, num_neighbors=4), {},
         b=2, n=7, pad=1),
    case("g_egnn_deg0_only", dict(dim=4, depth=1, use_egnn=True, num_degrees=1, egnn_hidden_dim=4,
         num_neighbors=3), dict(return_type=0), b=1, n=6),
    case("g_egnn_clamp_adj_nbrmask", dict(dim=4, depth=1, use_egnn=True, num_degrees=2, egnn_hidden_dim=4,
         egnn_weights_clamp_value=0.05, attend_sparse_neighbors=True, num_adj_degrees=2, adj_dim=2,
         num_neighbors=2), dict(return_type=1), b=1, n=8, adj="chain", nbr_mask=0.7),
    case("g_egnn_pooled_ff", dict(dim=4, depth=1, use_egnn=True, num_degrees=2, egnn_hidden_dim=4,
         egnn_feedforward=True, num_neighbors=3), dict(return_pooled=True), b=2, n=6, pad=2),
    case("g_reversible_deg3_depth3", dict(dim=2, heads=1, dim_head=2, depth=3, num_degrees=3, output_degrees=3,
         reversible=True, num_neighbors=3), {}, b=1, n=5),
    case("g_reversible_nullkv_rt0", dict(dim=4, heads=2, dim_head=2, depth=2, num_degrees=1, reversible=True,
         use_null_kv=True, num_neighbors=3), dict(return_type=0), b=2, n=6, pad=1),
    case("g_hidden_gap_out_gap", dict(dim=3, heads=2, dim_head=2, depth=1, hidden_fiber_dict={0: 3, 2: 2},
         out_fiber_dict={0: 2, 2: 1}, num_neighbors=3), {}, b=1, n=6),
    case("g_hidden_no_type0", dict(dim=3, heads=1, dim_head=2, depth=1, hidden_fiber_dict={1: 2},
         out_fiber_dict={0: 2, 1: 1}, num_neighbors=3), {}, b=1, n=6),
    case("g_out_fiber_type1_only", dict(dim=3, heads=2, dim_head=2, depth=1, num_degrees=2,
         out_fiber_dict={1: 2}, num_neighbors=3), {}, b=1, n=6),
    case("g_deg4_radius_cut", dict(dim=2, heads=1, dim_head=2, depth=1, num_degrees=4, output_degrees=2,
         valid_radius=1.0, num_neighbors=5), {}, b=1, n=7),
    case("g_splits3_uneven", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=2, splits=3,
         num_neighbors=4), dict(return_type=0), b=1, n=7),
    case("g_splits1_diffcoors", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=2, splits=1,
         differentiable_coors=True, num_neighbors=4), dict(return_type=0), b=1, n=7),
    case("g_tokens_positions", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=1, num_tokens=5,
         num_positions=9, num_neighbors=3), dict(return_type=0), b=2, n=7, pad=1),
    case("g_positions_float", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=1, num_positions=8,
         num_neighbors=3), dict(return_type=0), b=1, n=7),
    case("g_nbrmask_causal_pad", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=1, causal=True,
         num_neighbors=3), dict(return_type=0), b=2, n=7, pad=2, nbr_mask=0.6),
    case("g_inf_neighbors_radius", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=2, valid_radius=1.5),
         dict(return_type=0), b=1, n=6),
    case("g_n2_minimal", dict(dim=3, heads=2, dim_head=2, depth=1, num_degrees=2, output_degrees=2,
         num_neighbors=3), {}, b=1, n=2),
    case("g_pooled_type1_global", dict(dim=3, heads=2, dim_head=2, depth=1, num_degrees=2, output_degrees=2,
         global_feats_dim=2, num_neighbors=3), dict(return_pooled=True, return_type=1), b=2, n=6, n_global=2,
         pad=2),
    case("g_egnn_fourier_edges_float", dict(dim=4, depth=1, use_egnn=True, num_degrees=2, egnn_hidden_dim=4,
         edge_dim=2, fourier_encode_dist=True, rel_dist_num_fourier_features=2, num_neighbors=3),
         dict(return_type=0), b=1, n=6),
    case("g_in2_dim_in_tuple_sparse", dict(dim=3, input_degrees=2, dim_in=(1, 2), num_degrees=2,
         heads=2, dim_head=2, depth=1, num_neighbors=2, attend_sparse_neighbors=True), dict(return_type=0),
         b=2, n=7, adj="batch"),
    # second round: interactions of options
    case("h_feats_dict_single_degree", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=2,
         num_neighbors=3), dict(return_type=0), b=1, n=6, dict_feats=True),
    case("h_hidden_equal_dims_identity_out", dict(dim=4, heads=1, dim_head=4, depth=1,
         hidden_fiber_dict={0: 4, 1: 4}, output_degrees=2, num_neighbors=3), {}, b=1, n=6),
    case("h_hidden_unequal_onehead", dict(dim=4, heads=1, dim_head=4, depth=1, one_headed_key_values=True,
         hidden_fiber_dict={0: 4, 1: 3}, output_degrees=2, num_neighbors=3), {}, b=1, n=6),
    case("h_numdeg_above_fiber", dict(dim=3, heads=2, dim_head=2, depth=1, num_degrees=3,
         hidden_fiber_dict={0: 3, 1: 2}, output_degrees=3, num_neighbors=3), {}, b=1, n=6),
    case("h_rt2_of3", dict(dim=2, heads=2, dim_head=2, depth=1, num_degrees=3, output_degrees=3,
         num_neighbors=3), dict(return_type=2), b=2, n=5),
    case("h_reduce_pooled_b1", dict(dim=3, heads=2, dim_head=2, depth=1, num_degrees=2, output_degrees=2,
         reduce_dim_out=True, num_neighbors=3), dict(return_pooled=True), b=1, n=6),
    case("h_reduce_pooled_b2_rt0", dict(dim=3, heads=2, dim_head=2, depth=1, num_degrees=1,
         reduce_dim_out=True, num_neighbors=3), dict(return_pooled=True), b=2, n=6, pad=2),
    case("h_pool_all_masked", dict(dim=3, heads=2, dim_head=2, depth=1, num_degrees=2, output_degrees=2,
         num_neighbors=3), dict(return_pooled=True), b=2, n=5, pad=5),
    case("h_egnn_global_rotary", dict(dim=4, depth=1, use_egnn=True, num_degrees=2, egnn_hidden_dim=4,
         global_feats_dim=2, rotary_position=True, dim_head=4, num_neighbors=3), dict(return_type=0),
         b=1, n=6, n_global=2),
    case("h_egnn_outfiber_reversible", dict(dim=4, depth=1, use_egnn=True, num_degrees=2, egnn_hidden_dim=4,
         out_fiber_dict={0: 2, 1: 2}, reversible=True, num_neighbors=3), {}, b=1, n=6),
    case("h_egnn_causal_gap", dict(dim=4, depth=2, use_egnn=True, hidden_fiber_dict={0: 3, 2: 2},
         egnn_hidden_dim=4, causal=True, num_neighbors=3), {}, b=2, n=6, pad=1),
    case("h_egnn_rt1_outdeg_ignored", dict(dim=4, depth=1, use_egnn=True, num_degrees=2, output_degrees=3,
         egnn_hidden_dim=3, num_neighbors=3), dict(return_type=1), b=1, n=5),
    case("h_sparse_radius_cut", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=1, num_neighbors=3,
         attend_sparse_neighbors=True, valid_radius=0.8), dict(return_type=0), b=1, n=9, adj="chain"),
    case("h_noself_radius_cut", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=2, attend_self=False,
         valid_radius=0.6, num_neighbors=3), dict(return_type=0), b=1, n=7),
    case("h_noself_nbrmask_rows_empty", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=1,
         attend_self=False, num_neighbors=3), dict(return_type=0), b=1, n=7, nbr_mask=0.15),
    case("h_fourier_edgetok_adj", dict(dim=3, heads=2, dim_head=2, depth=1, num_degrees=1, num_neighbors=3,
         num_edge_tokens=3, edge_dim=2, fourier_encode_dist=True, num_adj_degrees=2, adj_dim=2,
         attend_sparse_neighbors=True), dict(return_type=0), b=2, n=7, adj="chain"),
    case("h_causal_sparse_k0", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=1, num_neighbors=0,
         attend_sparse_neighbors=True, causal=True), dict(return_type=0), b=1, n=8, adj="chain"),
    case("h_k_exceeds_n", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=1, num_neighbors=20,
         attend_sparse_neighbors=True), dict(return_type=0), b=1, n=5, adj="chain"),
    case("h_global_causal_mask", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=1, global_feats_dim=3,
         causal=True, use_null_kv=True, num_neighbors=3), dict(return_type=0), b=2, n=6, n_global=4, pad=2),
    case("h_dim_in_int", dict(dim=4, dim_in=2, dim_out=3, heads=2, dim_head=2, depth=1, num_degrees=2,
         output_degrees=2, num_neighbors=3), {}, b=1, n=6),
    case("h_reversible_depth1_rotary", dict(dim=4, heads=2, dim_head=4, depth=1, num_degrees=1,
         reversible=True, rotary_position=True, one_headed_key_values=True, num_neighbors=3),
         dict(return_type=0), b=1, n=6),
    case("h_convs_noself_nbrmask", dict(dim=3, heads=2, dim_head=2, depth=1, num_degrees=2, num_conv_layers=1,
         attend_self=False, num_neighbors=3, norm_gated_scale=True), dict(return_type=0), b=1, n=6,
         nbr_mask=0.5),
    case("h_tie_global_linear_none", dict(dim=4, heads=2, dim_head=3, depth=1, num_degrees=1,
         tie_key_values=True, global_feats_dim=2, num_neighbors=3), dict(return_type=0), b=1, n=6, n_global=1),
    case("h_splits_gt_n", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=1, splits=10,
         num_neighbors=3), dict(return_type=0), b=1, n=4),
    # third round
    case("i_no_mask", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=1, num_neighbors=3),
         dict(return_type=0), b=2, n=6, no_mask=True),
    case("i_rt1_forced_type0", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=2, output_degrees=1,
         num_neighbors=3), dict(return_type=1), b=1, n=6),
    case("i_output_degrees_none_reduce", dict(dim=3, heads=2, dim_head=2, depth=1, num_degrees=2,
         output_degrees=None, reduce_dim_out=True, num_neighbors=3), {}, b=1, n=6),
    case("i_max_sparse_zero", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=1, num_neighbors=2,
         attend_sparse_neighbors=True, max_sparse_neighbors=0), dict(return_type=0), b=1, n=7, adj="chain"),
    case("i_adj1_emb_directed", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=1, num_neighbors=2,
         attend_sparse_neighbors=True, num_adj_degrees=3, adj_dim=2), dict(return_type=0), b=1, n=8,
         adj="directed"),
    case("i_adj_degree1_emb", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=1, num_neighbors=3,
         num_adj_degrees=1, adj_dim=3), dict(return_type=0), b=1, n=7, adj="chain"),
    case("i_linear_global_nullkv", dict(dim=4, heads=2, dim_head=3, depth=1, num_degrees=2, output_degrees=2,
         linear_proj_keys=True, global_feats_dim=2, use_null_kv=True, num_neighbors=3), {}, b=1, n=6,
         n_global=2),
    case("i_coincident_points", dict(dim=3, heads=2, dim_head=2, depth=1, num_degrees=2, output_degrees=2,
         num_neighbors=3), {}, b=1, n=6, dup=True),
    case("i_egnn_coincident", dict(dim=4, depth=1, use_egnn=True, num_degrees=2, egnn_hidden_dim=4,
         num_neighbors=3), {}, b=1, n=6, dup=True),
    case("i_egnn_noself_nbrmask", dict(dim=4, depth=1, use_egnn=True, num_degrees=2, egnn_hidden_dim=4,
         attend_self=False, num_neighbors=3), {}, b=1, n=7, nbr_mask=0.2),
    case("i_sparse_inf_neighbors", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=1,
         attend_sparse_neighbors=True, valid_radius=1.0), dict(return_type=0), b=1, n=6, adj="chain"),
    case("i_python_infinities", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=1,
         num_neighbors=float("inf"), valid_radius=float("inf"), max_sparse_neighbors=float("inf"),
         attend_sparse_neighbors=True, egnn_weights_clamp_value=float("inf")), dict(return_type=0), b=1, n=6,
         adj="chain", nbr_mask=0.5),
    case("i_egnn_big_n_partial_sort_ties", dict(dim=2, depth=1, use_egnn=True, num_degrees=2, egnn_hidden_dim=2,
         causal=True, num_neighbors=1), {}, b=1, n=70),
    case("i_rotary_zero_width", dict(dim=4, heads=2, dim_head=1, depth=1, num_degrees=1, rotary_position=True,
         rotary_rel_dist=True, num_neighbors=3), dict(return_type=0), b=1, n=6),
    case("i_rotary_odd_rejected", dict(dim=4, heads=2, dim_head=5, depth=1, num_degrees=1, rotary_position=True,
         num_neighbors=3), dict(return_type=0), b=1, n=6),
    # fourth round: everything at once, larger degrees (local only: big weights)
    case("j_deg5", dict(dim=2, heads=1, dim_head=2, depth=1, num_degrees=5, output_degrees=5,
         num_neighbors=3), {}, b=1, n=5),
    case("j_kitchen_sink", dict(dim=4, heads=3, dim_head=5, depth=2, num_degrees=3, input_degrees=2,
         dim_in=(3, 2), output_degrees=3, dim_out=(2, 2, 1), num_edge_tokens=3, edge_dim=2,
         fourier_encode_dist=True, rel_dist_num_fourier_features=2, num_adj_degrees=2, adj_dim=2,
         attend_sparse_neighbors=True, num_neighbors=3, global_feats_dim=2, use_null_kv=True,
         one_headed_key_values=True, norm_gated_scale=True, num_conv_layers=1, norm_out=True,
         valid_radius=2.0), {}, b=2, n=10, pad=2, adj="batch", n_global=2, nbr_mask=0.8),
    case("j_kitchen_sink_rev_rotary", dict(dim=4, heads=2, dim_head=9, depth=2, num_degrees=2, output_degrees=2,
         reversible=True, rotary_position=True, rotary_rel_dist=True, tie_key_values=True, causal=True,
         num_edge_tokens=2, edge_dim=1, num_neighbors=4, reduce_dim_out=True), dict(return_pooled=True),
         b=2, n=12, pad=3),
    case("j_egnn_sink", dict(dim=4, depth=2, use_egnn=True, hidden_fiber_dict={0: 5, 1: 2, 3: 1}, num_degrees=4,
         egnn_hidden_dim=6, egnn_feedforward=True, egnn_weights_clamp_value=0.3, edge_dim=2,
         num_adj_degrees=3, adj_dim=2, attend_sparse_neighbors=True, num_neighbors=2, causal=True,
         out_fiber_dict={0: 2, 1: 1, 3: 1}, norm_out=True, norm_gated_scale=True, reduce_dim_out=True),
         {}, b=2, n=9, pad=1, adj="chain", nbr_mask=0.6),
    case("k_dim_tuple", dict(dim=(4, 2, 3), heads=2, dim_head=2, depth=1, num_degrees=3, output_degrees=3,
         num_neighbors=3), {}, b=1, n=6),
    case("k_dim_tuple_short_hidden", dict(dim=(4, 2), heads=2, dim_head=2, depth=1, num_degrees=3,
         output_degrees=2, input_degrees=2, num_neighbors=3), {}, b=1, n=6),
    case("k_dim_out_short", dict(dim=3, dim_out=(2,), heads=2, dim_head=2, depth=1, num_degrees=2,
         output_degrees=2, num_neighbors=3), {}, b=1, n=6),
    case("k_egnn_dim_tuple", dict(dim=(4, 2), depth=1, use_egnn=True, num_degrees=3, egnn_hidden_dim=3,
         num_neighbors=3), {}, b=2, n=6, pad=1),
    case("k_positions_broadcast_dim1", dict(dim=1, dim_in=3, heads=2, dim_head=2, depth=1, num_degrees=1,
         num_positions=8, num_neighbors=3), dict(return_type=0), b=2, n=6),
    case("k_positions_dim_in_mismatch", dict(dim=3, dim_in=2, heads=2, dim_head=2, depth=1, num_degrees=1,
         num_positions=8, num_neighbors=3), dict(return_type=0), b=1, n=6),
    # degree 0 only: Q_J is [[1]] on every machine, so this case does not depend on the sign table
    case("m_tie_kv_cont_edges_adj_emb", dict(dim=4, heads=2, dim_head=2, depth=1, num_degrees=1,
         tie_key_values=True, edge_dim=2, num_adj_degrees=2, adj_dim=2, num_neighbors=4),
         dict(return_type=0), b=2, n=7, pad=1, adj="chain"),
    case("k_dim_in_short", dict(dim=3, dim_in=(2,), input_degrees=2, heads=2, dim_head=2, depth=1,
         num_degrees=1, num_neighbors=3), dict(return_type=0), b=1, n=6),
]


def make_adj(kind, b, n, g):
    if kind == "chain":
        a = torch.zeros(n, n, dtype=torch.bool)
        for i in range(n - 1):
            a[i, i + 1] = a[i + 1, i] = True
        a[0, n // 2] = a[n // 2, 0] = True
        return a
    if kind == "star3":  # node 0 bonded to 1, 2, 3; a chain elsewhere: at most 3 bonds per node
        a = torch.zeros(n, n, dtype=torch.bool)
        for j in (1, 2, 3):
            a[0, j] = a[j, 0] = True
        for i in range(4, n - 1):
            a[i, i + 1] = a[i + 1, i] = True
        return a
    if kind == "batch":  # different symmetric random bonds per batch element, self bonds set too
        a = torch.rand(b, n, n, generator=g) > 0.7
        a = a | a.transpose(1, 2)
        a[:, torch.arange(n), torch.arange(n)] = True
        return a
    if kind == "directed":  # i -> i + 1 and 0 -> 3 only
        a = torch.zeros(n, n, dtype=torch.bool)
        for i in range(n - 1):
            a[i, i + 1] = True
        a[0, min(3, n - 1)] = True
        return a
    raise ValueError(kind)


def make_inputs(kw, o, g):
    b, n = o.get("b", 2), o.get("n", 8)
    inp, names = {}, {}
    dim_in = kw.get("dim_in", kw["dim"])
    ideg = kw.get("input_degrees", 1)
    dim_in = tuple(dim_in) if isinstance(dim_in, (tuple, list)) else (dim_in,) * ideg
    if kw.get("num_tokens"):
        feats = torch.randint(0, kw["num_tokens"], (b, n), generator=g)
        inp["feats"] = feats; names["feats"] = "feats"
    elif ideg > 1 or o.get("dict_feats"):
        # a dim_in tuple shorter than input_degrees: the extra degrees are passed but unused
        feats = {str(l): torch.randn(b, n, dim_in[l] if l < len(dim_in) else 2, 2 * l + 1, generator=g)
                 for l in range(ideg)}
        for l, t in feats.items():
            inp[f"feats_type{l}"] = t
        names["feats"] = {l: f"feats_type{l}" for l in feats}
    else:
        feats = torch.randn(b, n, dim_in[0], generator=g)
        inp["feats"] = feats; names["feats"] = "feats"
    inp["coors"] = torch.randn(b, n, 3, generator=g) * o.get("scale", 1.0); names["coors"] = "coors"
    mask = torch.ones(b, n, dtype=torch.bool)
    if o.get("pad"):
        mask[-1, n - o["pad"]:] = False
    if o.get("dup"):  # node 1 on top of node 0
        inp["coors"][:, 1] = inp["coors"][:, 0]
    if not o.get("no_mask"):
        inp["mask"] = mask; names["mask"] = "mask"
    if o.get("adj"):
        inp["adj_mat"] = make_adj(o["adj"], b, n, g); names["adj_mat"] = "adj_mat"
    if kw.get("num_edge_tokens"):
        inp["edges"] = torch.randint(0, kw["num_edge_tokens"], (b, n, n), generator=g); names["edges"] = "edges"
    elif kw.get("edge_dim"):
        inp["edges"] = torch.randn(b, n, n, kw["edge_dim"], generator=g); names["edges"] = "edges"
    if kw.get("global_feats_dim"):
        inp["global_feats"] = torch.randn(b, o.get("n_global", 2), kw["global_feats_dim"], generator=g)
        names["global_feats"] = "global_feats"
    if o.get("nbr_mask"):
        inp["neighbor_mask"] = torch.rand(b, n, n, generator=g) < o["nbr_mask"]
        names["neighbor_mask"] = "neighbor_mask"
    return feats, inp, names


def forward_args(feats, inp, dtype):
    def cv(t):
        return t.to(dtype) if t.is_floating_point() else t
    if isinstance(feats, dict):
        f = {k: cv(v).clone() for k, v in feats.items()}
    else:
        f = cv(feats).clone()
    rest = {k: cv(v).clone() for k, v in inp.items() if k in ("coors", "mask", "adj_mat", "edges",
                                                               "global_feats", "neighbor_mask")}
    return f, rest


def js(v):
    if isinstance(v, dict):
        return {str(k): x for k, x in v.items()}
    if isinstance(v, tuple):
        return list(v)
    return v


def write_config(d, name, kw, lits, names):
    cfg = {"name": name, "class": "se3_transformer_pytorch.SE3Transformer",
           "library": {"name": "se3-transformer-pytorch", "version": "0.9.0", "torch": torch.__version__},
           "constructor_kwargs": {k: js(v) for k, v in kw.items()},
           "forward_kwargs": {"tensors": names, "literals": lits},
           "notes": "generate_general.py: parameters rounded to float16 before the forward passes"}
    with open(os.path.join(d, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=1)


def rejected(name, kw, lits, err, sd=None, inp=None, names=None):
    """A combination torch rejects: the folder holds `torch_error.txt` (and the weights and inputs when
    the constructor passed), and the Rust side must give a typed error too."""
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    write_config(d, name, kw, lits, names or {})
    if sd is not None:
        save_file(sd, os.path.join(d, "weights.safetensors"))
        save_file({k: v.contiguous() for k, v in inp.items()}, os.path.join(d, "inputs.safetensors"))
    with open(os.path.join(d, "torch_error.txt"), "w") as fh:
        fh.write(f"{type(err).__name__}: {err}\n")
    print(f"{name}: torch error {type(err).__name__}: {err}")


def run_case(name, kw, lits, o):
    seed = zlib.crc32(name.encode())
    torch.manual_seed(seed)
    try:
        m = SE3Transformer(**kw).eval()
    except Exception as e:
        return rejected(name, kw, lits, e)
    pnames = {k for k, _ in m.named_parameters()}
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
            p.copy_(p.half().float())
    g = torch.Generator().manual_seed(seed + 1)
    feats, inp, names = make_inputs(kw, o, g)
    cap = kw.get("max_sparse_neighbors", float("inf"))
    if kw.get("attend_sparse_neighbors") and 0 < cap < float("inf"):
        a = inp["adj_mat"].clone()
        a = a if a.dim() == 3 else a[None]
        a[:, torch.arange(a.shape[1]), torch.arange(a.shape[1])] = False
        if cap < a.sum(-1).max().item():
            # torch draws which bonds to keep (uniform noise): not reproducible, not a parity case
            print(f"{name}: skipped (bonds subsampled by max_sparse_neighbors)")
            return
    sd = {}
    for k, v in m.state_dict().items():
        sd[k] = (v.detach().half() if k in pnames else v.detach().float()).contiguous()
    outs = {}
    for dt, suf in [(torch.float64, "_f64"), (torch.float32, "_f32")]:
        mm = m.double() if dt == torch.float64 else m.float()
        f, rest = forward_args(feats, inp, dt)
        try:
            with torch.no_grad():
                r = mm(f, **rest, **lits)
        except Exception as e:
            return rejected(name, kw, lits, e, sd, inp, names)
        if torch.is_tensor(r):
            outs["out" + suf] = r
        else:
            for l, t in r.items():
                outs[f"type{l}" + suf] = t
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    save_file(sd, os.path.join(d, "weights.safetensors"))
    save_file({k: v.contiguous() for k, v in inp.items()}, os.path.join(d, "inputs.safetensors"))
    save_file({k: v.contiguous() for k, v in outs.items()}, os.path.join(d, "outputs.safetensors"))
    write_config(d, name, kw, lits, names)
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"{name}: {size // 1024} KiB", {k: tuple(v.shape) for k, v in outs.items() if k.endswith("_f64")})


def random_case(i, rng):
    """A random combination of options (the `--random N` mode): sizes small, torch's asserts respected
    where cheap (the rest is skipped when torch raises)."""
    r = rng.random
    ch = rng.choice
    kw = dict(dim=ch([2, 3, 4]), heads=ch([1, 2, 3]), dim_head=ch([1, 2, 3, 4, 5]), depth=ch([1, 1, 2]))
    egnn = r() < 0.2
    if r() < 0.2:
        degs = sorted(rng.sample([0, 1, 2], ch([1, 2])) + ([0] if egnn else []))
        kw["hidden_fiber_dict"] = {d: ch([1, 2, 3]) for d in set(degs)}
        nd = max(kw["hidden_fiber_dict"]) + 1
    else:
        nd = ch([1, 2, 2, 3])
        kw["num_degrees"] = nd
    ideg = ch([1, 1, min(2, nd)])
    kw["input_degrees"] = ideg
    if r() < 0.3:
        kw["dim_in"] = tuple(ch([1, 2, 3]) for _ in range(ideg))
    if egnn:
        kw.update(use_egnn=True, egnn_hidden_dim=ch([2, 4]), egnn_feedforward=r() < 0.5)
        if r() < 0.4:
            kw["egnn_weights_clamp_value"] = ch([0.05, 0.5])
    elif r() < 0.25:
        kw["out_fiber_dict"] = {d: ch([1, 2]) for d in rng.sample(range(nd), ch([1, min(2, nd)]))}
    else:
        kw["output_degrees"] = ch([1, nd, None]) if nd > 1 else 1
        if r() < 0.3 and kw["output_degrees"]:
            kw["dim_out"] = tuple(ch([1, 2, 3]) for _ in range(kw["output_degrees"]))
    kw["attend_self"] = r() < 0.7
    if kw["attend_self"] and r() < 0.3:
        kw["causal"] = True
    sparse = r() < 0.3
    if sparse:
        kw["attend_sparse_neighbors"] = True
        if r() < 0.3:
            kw["max_sparse_neighbors"] = ch([0, 3, 6])
    kw["num_neighbors"] = ch(([0] if sparse else []) + [1, 2, 3, 5, float("inf")])
    if r() < 0.3:
        kw["valid_radius"] = ch([0.7, 1.2, 2.0])
    if r() < 0.25:
        kw["num_adj_degrees"] = ch([1, 2, 3])
        kw["adj_dim"] = ch([0, 2])
    e = r()
    if e < 0.2:
        kw.update(num_edge_tokens=3, edge_dim=ch([1, 2]))
    elif e < 0.35:
        kw["edge_dim"] = ch([1, 2])
    if r() < 0.25:
        kw.update(fourier_encode_dist=True, rel_dist_num_fourier_features=ch([1, 2, 4]))
    rev = not egnn and r() < 0.15
    if rev:
        kw["reversible"] = True
    elif r() < 0.2:
        kw["global_feats_dim"] = ch([1, 3])
    if not egnn:
        a = r()
        if a < 0.2:
            kw["linear_proj_keys"] = True
        elif a < 0.4:
            kw["tie_key_values"] = True
        if r() < 0.3:
            kw["one_headed_key_values"] = True
        if kw["attend_self"] and r() < 0.25:
            kw["rotary_position"] = r() < 0.7
            kw["rotary_rel_dist"] = not kw["rotary_position"] or r() < 0.5
            nrot = int(kw["rotary_position"]) + int(kw["rotary_rel_dist"])
            kw["dim_head"] = ch([4, 6, 8, 9]) if nrot == 2 else ch([2, 4, 5, 6])
        if r() < 0.3:
            kw["use_null_kv"] = True
    for f, p in [("norm_gated_scale", 0.25), ("norm_out", 0.2), ("reduce_dim_out", 0.2),
                 ("differentiable_coors", 0.1)]:
        if r() < p:
            kw[f] = True
    if r() < 0.2:
        kw["num_conv_layers"] = 1
    if r() < 0.2:
        kw["splits"] = ch([1, 3, 7])
    n = ch([2, 3, 5, 6, 8, 9, 10, 12])
    o = dict(b=ch([1, 2]), n=n)
    if ideg == 1 and "dim_in" not in kw and r() < 0.15:
        kw["num_tokens"] = 5
    if ideg == 1 and r() < 0.1:
        kw["num_positions"] = 10
    if r() < 0.4:
        o["pad"] = ch([1, 2])
    if r() < 0.2:
        o["nbr_mask"] = ch([0.3, 0.7])
    if sparse or kw.get("num_adj_degrees"):
        o["adj"] = ch(["chain", "batch", "directed"])
    if kw.get("global_feats_dim"):
        o["n_global"] = ch([1, 2])
    if r() < 0.1:
        o["dup"] = True
    if r() < 0.1:
        o["no_mask"] = True
    if r() < 0.1 and not kw.get("num_tokens") and not kw.get("num_positions") and "num_degrees" in kw:
        kw["dim"] = tuple(ch([2, 3]) for _ in range(ch([1, nd])))
    lits = {}
    if r() < 0.3:
        lits["return_type"] = ch([0, 0, 1, 2])
    if r() < 0.2:
        lits["return_pooled"] = True
    return case(f"r{i:03d}", kw, lits, **o)


def gradients_for_folder(d):
    from safetensors.torch import load_file
    import se3_transformer_pytorch.basis as basis_mod
    here = os.path.dirname(os.path.abspath(__file__))
    math_dir = os.path.join(here, "../../../../tests/reference/math")
    ref_qj = load_file(os.path.join(math_dir, "se3t_qj.safetensors"))
    ref_sign = {(r["J"], r["d_in"], r["d_out"]): r["sign"]
                for r in json.load(open(os.path.join(math_dir, "se3t_qj_signs.json")))["rows"]}
    gen_sign = {(r["J"], r["d_in"], r["d_out"]): r["sign"]
                for r in json.load(open(os.path.join(here, "qj_signs.json")))["rows"]}

    def use_qj(table):
        # Q_J of a machine whose signs (relative to the Wigner 3j) are `table`; the reference
        # Q_J is ref_sign * 3j, as the library returns it (float32)
        def qj(J, d_in, d_out, *a, **k):
            key = (J, d_in, d_out)
            flip = 1.0 if table is None else float(table[key] * ref_sign[key])
            return flip * ref_qj[f"qj_J{J}_in{d_in}_out{d_out}"].float()
        basis_mod.basis_transformation_Q_J = qj

    cfg = json.load(open(os.path.join(d, "config.json")))
    name = cfg["name"]
    kw = {}
    for k, v in cfg["constructor_kwargs"].items():
        if k in ("hidden_fiber_dict", "out_fiber_dict"):
            v = {int(a): b for a, b in v.items()}
        elif isinstance(v, list):
            v = tuple(v)
        kw[k] = v
    lits = cfg["forward_kwargs"]["literals"]
    names = cfg["forward_kwargs"]["tensors"]
    stored = load_file(os.path.join(d, "inputs.safetensors"))
    want = load_file(os.path.join(d, "outputs.safetensors"))
    weights = load_file(os.path.join(d, "weights.safetensors"))
    m = SE3Transformer(**kw)
    m.load_state_dict({k: v.double() for k, v in weights.items()})
    m = m.double().train(bool(kw.get("reversible")))
    seed = zlib.crc32(name.encode())
    g = torch.Generator().manual_seed(seed + 2)

    def run(leaves):
        # clones: the library adds position embeddings to the features in place
        leaves = {k: t.clone() for k, t in leaves.items()}
        if isinstance(names["feats"], dict):
            feats = {l: leaves.get(f, stored[f]) for l, f in names["feats"].items()}
        else:
            feats = leaves.get(names["feats"], stored[names["feats"]])
        cv = lambda t: t.double() if t.is_floating_point() else t
        feats = {l: cv(t) for l, t in feats.items()} if isinstance(feats, dict) else cv(feats)
        rest = {a: cv(leaves.get(f, stored[f])) for a, f in names.items() if a != "feats"}
        r = m(feats, **rest, **lits)
        return {"out": r} if torch.is_tensor(r) else {f"type{l}": t for l, t in r.items()}

    use_qj(gen_sign)
    with torch.no_grad():
        outs = run({})
    err = max(float((outs[k] - want[k + "_f64"]).abs().max() / want[k + "_f64"].abs().max())
              for k in outs)
    assert err < 1e-10, f"{name}: rebuilt model off the stored outputs by {err:.2e}"
    use_qj(None)
    cot = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in outs.items()}
    leaf_names = [f for a, f in names.items() if a in ("edges", "global_feats")]
    leaf_names += list(names["feats"].values()) if isinstance(names["feats"], dict) else [names["feats"]]
    leaves = {f: stored[f].double().clone().requires_grad_(True)
              for f in leaf_names if stored[f].is_floating_point()}
    m.zero_grad()
    outs = run(leaves)
    sum((outs[k] * c).sum() for k, c in cot.items()).backward()
    res = {f"cotangent.{k}": c for k, c in cot.items()}
    for k, p in m.named_parameters():
        res[f"param.{k}"] = p.grad if p.grad is not None else torch.zeros_like(p)
    for f, t in leaves.items():
        res[f"input.{f}"] = t.grad if t.grad is not None else torch.zeros_like(t)
    save_file({k: v.detach().float().contiguous() for k, v in res.items()},
              os.path.join(d, "gradients.safetensors"))
    size = os.path.getsize(os.path.join(d, "gradients.safetensors"))
    print(f"{name}: outputs reproduced to {err:.1e}; {len(res)} tensors, {size // 1024} KiB")


if OUT == "--gradients":
    for folder in ONLY:
        gradients_for_folder(folder)
    sys.exit(0)

if ONLY and ONLY[0] == "--random":
    import random as _random
    _rng = _random.Random(int(ONLY[2]) if len(ONLY) > 2 else 0)
    CASES = [random_case(i, _rng) for i in range(int(ONLY[1]))]
    ONLY = []

for name, kw, lits, o in CASES:
    if ONLY and not any(s in name for s in ONLY):
        continue
    run_case(name, kw, lits, o)
