# Dev-only: random egnn-pytorch 0.2.8 configs (EGNN layer and EGNN_Network) drawn over every
# constructor option, run in float64 by the library, saved in the layout of tests/reference/models
# (config.json, weights.safetensors, inputs.safetensors, outputs.safetensors with `_f64` outputs).
#
#   /tmp/se3-refenv/bin/python generate_general.py OUT_DIR COUNT [SEED]
#   /tmp/se3-refenv/bin/python generate_general.py OUT_DIR fixed      (the hand-picked corner cases)
#   ... [--gradients] [--only=I,J,...]
#
# --gradients also writes gradients.safetensors beside each accepted case (the layout of
# /work/shared/reference/GRADIENTS.md): torch autograd in float64 of L = sum_o <o, cotangent.o> over
# the outputs feats and coors, the cotangents `cotangent.<o>` drawn N(0, 1) from seed + 2 (case seed
# as below), `param.<key>` for every named parameter (zeros where a parameter does not reach the
# outputs) and `input.<name>` for the float inputs (feats unless tokens, coors, dense edges; the
# library detaches nothing). --only=I,J,... runs only those case numbers (or fixed names).
#
# Case i uses seed SEED * 100003 + i (Python `random` for the config, torch for values), so a rerun
# writes the same files. Weights: the library's init, then every Linear weight redrawn as
# N(0,1)/sqrt(fan_in) (the library's std-1e-3 init would make the messages vanish), biases,
# LayerNorm affines, embeddings, global tokens and coors_norm.scale perturbed with 0.1*N(0,1).
# A config or input the library rejects is saved as config.json + inputs.safetensors +
# weights.safetensors (if the constructor ran) + expect_error.txt (the Python exception):
# se3 must refuse it with a typed error.
import json, math, os, random, sys
import torch
from torch import nn
from safetensors.torch import save_file
from egnn_pytorch import EGNN, EGNN_Network

FLAGS = [a for a in sys.argv[1:] if a.startswith("--")]
ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
OUT = ARGS[0]
FIXED_ONLY = ARGS[1] == "fixed"
COUNT = 0 if FIXED_ONLY else int(ARGS[1])
SEED = int(ARGS[2]) if len(ARGS) > 2 else 0
GRADIENTS = "--gradients" in FLAGS
ONLY = [x for f in FLAGS if f.startswith("--only=") for x in f[len("--only="):].split(",")]

# Corner cases: (network, kwargs, inputs). `adj="none"`: no bond at all (k = 0 neighbours);
# `mask="last_graph"`: every node of the last graph masked (uniform global attention);
# `adj="chain"` with only_sparse_neighbors and no degree loop: the self rank -1 plus two bonds at 0
# exceed k = 2, so PyTorch's topk tie order decides which bond is kept.
FIXED = {
    "egnn_fixed_sparse_no_bonds": (False, dict(dim=6, m_dim=4, only_sparse_neighbors=True,
                                   m_pool_method="mean"), dict(b=2, n=5, mask=True, adj="none")),
    "egnn_fixed_masked_graph_global": (True, dict(dim=6, depth=2, m_dim=4, num_nearest_neighbors=3,
                                       global_linear_attn_every=1, global_linear_attn_heads=2,
                                       global_linear_attn_dim_head=3, num_global_tokens=2),
                                       dict(b=2, n=5, mask="last_graph", adj=None)),
    "egnn_fixed_sparse_bond_ties": (True, dict(dim=5, depth=2, m_dim=3, only_sparse_neighbors=True),
                                    dict(b=1, n=9, mask=False, adj="chain")),
}


def layer_kwargs(r, network):
    kw = dict(m_dim=r.randint(2, 10))
    if r.random() < 0.5:
        kw["fourier_features"] = r.randint(1, 3)
    if r.random() < 0.5:
        kw["norm_coors"] = True
        kw["norm_coors_scale_init"] = round(r.uniform(0.1, 1.0), 3)
    if not network and r.random() < 0.5:
        kw["norm_feats"] = True
    u = r.random()
    if u < 0.15:
        kw["update_feats"] = False
    elif u < 0.3:
        kw["update_coors"] = False
    elif u < 0.32:
        kw["update_feats"] = False
        kw["update_coors"] = False  # rejected by the library
    if r.random() < 0.5:
        kw["m_pool_method"] = r.choice(["sum", "mean", "mean", "max" if r.random() < 0.1 else "sum"])
    if r.random() < 0.4:
        kw["soft_edges"] = True
    if r.random() < 0.4:
        kw["coor_weights_clamp_value"] = round(r.uniform(0.2, 3.0), 3)
    if r.random() < 0.2:
        kw["dropout"] = 0.1
    return kw


def draw(r):
    network = r.random() < 0.6
    dim = r.randint(3, 12)
    b, n = r.randint(1, 3), r.randint(3, 10)
    kw = dict(dim=dim, **layer_kwargs(r, network))
    inp = dict(b=b, n=n, mask=r.random() < 0.6, adj=None, edges=None)
    sel = r.random()
    if sel < 0.35:
        pass  # every node is a neighbour
    elif sel < 0.75:
        kw["num_nearest_neighbors"] = r.randint(1, n + (1 if r.random() < 0.05 else 0))
        if r.random() < 0.5:
            kw["valid_radius"] = round(r.uniform(0.5, 6.0), 3)
        if r.random() < 0.3:
            inp["adj"] = r.choice(["chain", "random", "batch"])
    else:
        kw["only_sparse_neighbors"] = True
        inp["adj"] = r.choice(["chain", "random", "batch"])
        if r.random() < 0.3:
            kw["num_nearest_neighbors"] = r.randint(1, 3)
    if network:
        kw["depth"] = r.randint(1, 3)
        if r.random() < 0.4:
            kw["num_tokens"] = r.randint(2, 8)
        if r.random() < 0.4:
            kw["num_positions"] = n + r.randint(0, 4)
        if r.random() < 0.5:
            kw["edge_dim"] = r.randint(1, 4)
            if r.random() < 0.5:
                kw["num_edge_tokens"] = r.randint(2, 5)
        if r.random() < 0.4:
            kw["num_adj_degrees"] = r.randint(1, 3)
            kw["adj_dim"] = r.choice([0, 2, 3])
            inp["adj"] = inp["adj"] or r.choice(["chain", "random", "batch"])
        if r.random() < 0.4:
            kw["global_linear_attn_every"] = r.randint(1, 2)
            kw["global_linear_attn_heads"] = r.randint(1, 3)
            kw["global_linear_attn_dim_head"] = r.randint(2, 6)
            kw["num_global_tokens"] = r.randint(1, 3)
    else:
        if r.random() < 0.5:
            kw["edge_dim"] = r.randint(1, 4)
    return network, kw, inp


def perturb(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and not name.endswith("emb.weight") and name != "global_tokens":
                p.copy_(torch.randn_like(p) / math.sqrt(p.shape[1]))
            else:
                p.add_(0.1 * torch.randn_like(p))


def adjacency(kind, b, n, g):
    if kind == "none":
        return torch.zeros(n, n, dtype=torch.bool)
    if kind == "chain":
        i = torch.arange(n)
        return (i[:, None] - i[None, :]).abs() == 1
    if kind == "random":
        a = torch.rand(n, n, generator=g) < 0.3
        return a | a.t()
    a = torch.rand(b, n, n, generator=g) < 0.3
    return a | a.transpose(1, 2)


def run_case(i, fixed=None):
    name = fixed or f"egnn_rand_{SEED}_{i:03d}"
    r = random.Random(SEED * 100003 + i)
    torch.manual_seed(SEED * 100003 + i)
    g = torch.Generator().manual_seed(SEED * 100003 + i)
    network, kw, spec = FIXED[fixed] if fixed else draw(r)
    b, n = spec["b"], spec["n"]
    cls = "egnn_pytorch.EGNN_Network" if network else "egnn_pytorch.EGNN"
    inputs = {}
    if network and kw.get("num_tokens"):
        inputs["feats"] = torch.randint(0, kw["num_tokens"], (b, n), generator=g)
    else:
        inputs["feats"] = torch.randn(b, n, kw["dim"], generator=g).float()
    inputs["coors"] = (torch.randn(b, n, 3, generator=g) * r.choice([0.5, 1.0, 2.0])).float()
    if spec["mask"]:
        m = torch.ones(b, n, dtype=torch.bool)
        if spec["mask"] == "last_graph":
            m[-1] = False
        else:
            m[-1, n - r.randint(1, max(1, n // 2)):] = False
        inputs["mask"] = m
    if spec["adj"]:
        inputs["adj_mat"] = adjacency(spec["adj"], b, n, g)
    ed = kw.get("edge_dim", 0)
    if ed > 0:
        if network and kw.get("num_edge_tokens"):
            inputs["edges"] = torch.randint(0, kw["num_edge_tokens"], (b, n, n), generator=g)
        else:
            inputs["edges"] = torch.randn(b, n, n, ed, generator=g).float()
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    cfg = dict(name=name, **{"class": cls}, library=dict(name="egnn-pytorch", version="0.2.8",
               torch=torch.__version__), constructor_kwargs=kw,
               forward_kwargs=dict(tensors={k: k for k in inputs}, literals={}),
               outputs=dict(feats=dict(shape=[b, n, kw["dim"]], transforms_as="invariant"),
                            coors=dict(shape=[b, n, 3], transforms_as="E(3): rotates and translates")))
    with open(os.path.join(d, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=1)
    save_file({k: v.contiguous() for k, v in inputs.items()}, os.path.join(d, "inputs.safetensors"))
    try:
        model = (EGNN_Network if network else EGNN)(**kw)
    except Exception as e:  # noqa: BLE001
        open(os.path.join(d, "expect_error.txt"), "w").write(f"{type(e).__name__}: {e}\n")
        return name, "rejected (constructor)"
    perturb(model)
    model.eval()
    sd = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(d, "weights.safetensors"))
    model = model.double()
    args = {k: (v.double() if v.is_floating_point() else v) for k, v in inputs.items()}
    try:
        with torch.no_grad():
            feats, coors = model(**args)
    except Exception as e:  # noqa: BLE001
        open(os.path.join(d, "expect_error.txt"), "w").write(f"{type(e).__name__}: {e}\n")
        return name, "rejected (forward)"
    save_file({"feats_f64": feats.contiguous(), "coors_f64": coors.contiguous()},
              os.path.join(d, "outputs.safetensors"))
    if GRADIENTS:
        # the library adds position embeddings to `feats` in place: fresh arguments
        args = {k: (v.double() if v.is_floating_point() else v) for k, v in inputs.items()}
        grads = gradients(model, args, {"feats": feats, "coors": coors}, SEED * 100003 + i)
        save_file(grads, os.path.join(d, "gradients.safetensors"))
        return name, f"ok, {len(grads)} gradient tensors"
    return name, "ok"


def gradients(model, args, outs, seed):
    """torch float64 autograd of sum_o <o, cotangent.o> (see --gradients above)."""
    g = torch.Generator().manual_seed(seed + 2)
    cot = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in outs.items()}
    leaves = {k: v.clone().requires_grad_(True) for k, v in args.items() if v.is_floating_point()}
    model.zero_grad()
    with torch.enable_grad():
        # clones: the library adds to `feats` in place, which a leaf does not allow
        feats, coors = model(**{**args, **{k: t.clone() for k, t in leaves.items()}})
        loss = (feats * cot["feats"]).sum() + (coors * cot["coors"]).sum()
        loss.backward()
    res = {f"cotangent.{k}": c for k, c in cot.items()}
    for k, p in model.named_parameters():
        res[f"param.{k}"] = (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
    for k, t in leaves.items():
        res[f"input.{k}"] = (t.grad if t.grad is not None else torch.zeros_like(t)).detach().clone()
    return {k: v.contiguous() for k, v in res.items()}


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    if FIXED_ONLY:
        for i, name in enumerate(FIXED):
            if not ONLY or name in ONLY:
                print(*run_case(i, name))
    for i in range(COUNT):
        if not ONLY or str(i) in ONLY:
            print(*run_case(i))
