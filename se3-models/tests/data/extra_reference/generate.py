# Dev-only: extra reference runs of se3-transformer-pytorch on configs not in tests/reference.
import json, os, sys, torch
from safetensors.torch import save_file
from se3_transformer_pytorch import SE3Transformer

OUT = sys.argv[1]
torch.manual_seed(1)
B, N = 2, 10

CASES = {
 "u_three_degrees_noself": (dict(dim=6, heads=3, dim_head=2, depth=2, num_degrees=3, output_degrees=3,
                               num_neighbors=4, valid_radius=1.3, attend_self=False), {}),
 "u_perdegree_sparse_only": (dict(dim=4, dim_in=(3, 2), input_degrees=2, num_degrees=3,
                               hidden_fiber_dict={0: 5, 1: 3, 2: 2}, out_fiber_dict={0: 2, 1: 3},
                               heads=2, dim_head=3, depth=1, num_neighbors=0, attend_sparse_neighbors=True,
                               num_adj_degrees=3, adj_dim=2, reduce_dim_out=True, num_conv_layers=2,
                               norm_out=True, norm_gated_scale=True), dict(return_pooled=True)),
 "u_egnn_ff_fourier": (dict(dim=6, depth=2, num_neighbors=5, use_egnn=True, hidden_fiber_dict={0: 6, 1: 3, 2: 2},
                               egnn_hidden_dim=8, egnn_feedforward=True, egnn_weights_clamp_value=0.5, edge_dim=3,
                               fourier_encode_dist=True, rel_dist_num_fourier_features=3), {}),
 "u_rotary_pos_onehead_causal_global": (dict(dim=8, heads=2, dim_head=4, depth=1, num_degrees=2, output_degrees=2,
                               rotary_position=True, one_headed_key_values=True, causal=True, global_feats_dim=3,
                               linear_proj_keys=True, num_positions=12), {}),
 "u_reversible_tied_rotdist_edges": (dict(dim=4, heads=1, dim_head=4, depth=2, num_degrees=2, output_degrees=2,
                               reversible=True, tie_key_values=True, rotary_rel_dist=True, num_edge_tokens=3,
                               edge_dim=2, num_neighbors=5), dict(return_type=1)),
 "u_nullkv_both_rotary_nbrmask": (dict(dim=6, heads=2, dim_head=4, depth=2, num_degrees=3, output_degrees=3,
                               dim_out=(4, 3, 2), use_null_kv=True, rotary_position=True, rotary_rel_dist=True,
                               num_positions=10, valid_radius=1.6, num_neighbors=6, tokens=None) , {}),
}

def make_inputs(m, kw):
    inp = {}
    dim_in = kw.get("dim_in", kw["dim"])
    dim_in = dim_in if isinstance(dim_in, tuple) else (dim_in,) * kw.get("input_degrees", 1)
    if kw.get("input_degrees", 1) > 1:
        feats = {str(l): torch.randn(B, N, dim_in[l], 2 * l + 1) for l in range(kw["input_degrees"])}
    else:
        feats = torch.randn(B, N, dim_in[0])
    inp["coors"] = torch.randn(B, N, 3)
    mask = torch.ones(B, N, dtype=torch.bool); mask[1, -2:] = False
    inp["mask"] = mask
    if kw.get("attend_sparse_neighbors") or kw.get("num_adj_degrees"):
        adj = torch.zeros(N, N, dtype=torch.bool)
        for i in range(N - 1):
            adj[i, i + 1] = adj[i + 1, i] = True
        adj[0, 5] = adj[5, 0] = True
        inp["adj_mat"] = adj
    if kw.get("num_edge_tokens"):
        inp["edges"] = torch.randint(0, kw["num_edge_tokens"], (B, N, N))
    elif kw.get("edge_dim"):
        inp["edges"] = torch.randn(B, N, N, kw["edge_dim"])
    if kw.get("global_feats_dim"):
        inp["global_feats"] = torch.randn(B, 2, kw["global_feats_dim"])
    if "u_nullkv" in name:
        nm = torch.rand(B, N, N) > 0.3
        inp["neighbor_mask"] = nm
    return feats, inp

for name, (kw, lits) in CASES.items():
    kw = {k: v for k, v in kw.items() if k != "tokens"}
    torch.manual_seed(abs(hash(name)) % 1000)
    m = SE3Transformer(**kw).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    feats, inp = make_inputs(m, kw)
    sd = {k: v.detach().float().contiguous() for k, v in m.state_dict().items()}
    d = os.path.join(OUT, name); os.makedirs(d, exist_ok=True)
    save_file(sd, os.path.join(d, "weights.safetensors"))
    tensors = {}
    names = {}
    if isinstance(feats, dict):
        for l, t in feats.items():
            tensors[f"feats_type{l}"] = t
        names["feats"] = {l: f"feats_type{l}" for l in feats}
    else:
        tensors["feats"] = feats; names["feats"] = "feats"
    for k, v in inp.items():
        tensors[k] = v; names[k] = k
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(d, "inputs.safetensors"))
    def run(dtype):
        mm = m.double() if dtype == torch.float64 else m.float()
        f = {k: v.to(dtype) for k, v in feats.items()} if isinstance(feats, dict) else feats.to(dtype)
        kw2 = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in inp.items()}
        with torch.no_grad():
            return mm(f, **kw2, **lits)
    outs = {}
    for dt, suf in [(torch.float64, "_f64"), (torch.float32, "_f32")]:
        o = run(dt)
        if torch.is_tensor(o):
            outs["out" + suf] = o
        else:
            for l, t in o.items():
                outs[f"type{l}" + suf] = t
    save_file({k: v.contiguous() for k, v in outs.items()}, os.path.join(d, "outputs.safetensors"))
    def js(v):
        if isinstance(v, dict): return {str(k): x for k, x in v.items()}
        if isinstance(v, tuple): return list(v)
        return v
    cfg = {"name": name, "class": "se3_transformer_pytorch.SE3Transformer",
           "library": {"name": "se3-transformer-pytorch", "version": "0.9.0", "torch": torch.__version__},
           "constructor_kwargs": {k: js(v) for k, v in kw.items()},
           "forward_kwargs": {"tensors": names, "literals": lits}}
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=1)
    print(name, {k: tuple(v.shape) for k, v in outs.items()})
