# Dev-only: random equiformer-pytorch 0.5.4 `Equiformer` configs over its constructor options, run in
# torch (float64 and float32) for the generality check of the se3 graph (tests/equiformer_extra.rs).
#
#   /tmp/se3-refenv/bin/python generate.py OUT_DIR COUNT [FIRST_SEED]
#
# Case `eq_<seed>` draws its config, weights and inputs from `seed` (a rerun writes the same files).
# Layout as tests/reference/models: config.json, weights.safetensors (parameters rounded to float16
# before the forward passes and stored as F16, buffers F32), inputs.safetensors, outputs.safetensors
# (`type0_f64`, `type1_f64`, `type0_f32`, `type1_f32`). A config torch rejects (constructor or forward)
# gets `torch_error.txt` instead of outputs: se3 must reject it with a typed error.
# Seeds >= 1000 also draw `num_linear_attn_heads` (and `linear_attn_dim_head`).
# gradients.safetensors (as ../shared/reference/GRADIENTS.md): torch autograd in float64 of
# `L = sum_o <o, cotangent.o>` for seeded cotangents `cotangent.type<l>`: `param.<key>` for every
# parameter (zeros where none flows), `input.feats` (float features; `input.feats.<l>` for a dict of
# degrees) and `input.edges` (continuous edges); the coordinates' gradient is not stored (the library
# detaches it); none for `reversible` (the library's reversible backward fails in eval mode). Scaled by `embedding_grad_frac` through the embedding, as the library trains.
# Not drawn: adj_dim > 0 with num_adj_degrees_embed
# (crashes in the library; se3 builds the documented behaviour), max_sparse_neighbors below the bonds
# (random bond sampling).
import json, os, random, sys
import torch
from safetensors.torch import save_file
from equiformer_pytorch import Equiformer

OUT = sys.argv[1]
COUNT = int(sys.argv[2])
FIRST = int(sys.argv[3]) if len(sys.argv) > 3 else 0


def per_degree(r, nd, lo, hi):
    if r.random() < 0.5:
        return r.randint(lo, hi)
    return tuple(r.randint(lo, hi) for _ in range(nd))


def draw_config(r):
    nd = r.randint(1, 3)
    kw = dict(dim=per_degree(r, nd, 2, 8), num_degrees=nd, heads=per_degree(r, nd, 1, 3),
              dim_head=per_degree(r, nd, 1, 4), depth=r.randint(1, 2), radial_hidden_dim=r.randint(3, 10))
    o = dict(b=r.randint(1, 2), n=r.randint(3, 9), pad=r.random() < 0.5, adj=None,
             pooled=r.random() < 0.15)
    if r.random() < 0.75:
        kw["num_neighbors"] = r.randint(0 if r.random() < 0.3 else 1, 6)
    if r.random() < 0.25:
        kw["valid_radius"] = round(r.uniform(0.8, 2.5), 2)
    for k in ("reduce_dim_out", "single_headed_kv", "ff_include_htype_norms", "reversible"):
        if r.random() < 0.35:
            kw[k] = True
    if r.random() < 0.3:
        kw["l2_dist_attention"] = False
        if r.random() < 0.5:
            kw["attn_hidden_dim_mult"] = r.randint(1, 3)
        if r.random() < 0.5:
            kw["attn_leakyrelu_slope"] = round(r.uniform(0.0, 0.3), 2)
    if r.random() < 0.2:
        kw["gate_attn_head_outputs"] = False
    if kw.get("reduce_dim_out") and r.random() < 0.4:
        kw["linear_out"] = False
    if r.random() < 0.3:
        kw["num_tokens"] = r.randint(2, 6)
    elif nd >= 2 and r.random() < 0.2:
        kw["input_degrees"] = 2
        kw["dim_in"] = (r.randint(2, 5), r.randint(1, 3))
    elif r.random() < 0.2:
        kw["dim_in"] = r.randint(2, 6)
    if r.random() < 0.2:
        kw["num_positions"] = 10
    u = r.random()
    if u < 0.25:
        kw["num_edge_tokens"], kw["edge_dim"] = r.randint(2, 4), r.randint(1, 3)
    elif u < 0.4:
        kw["edge_dim"] = r.randint(1, 3)
    if r.random() < 0.35:
        kw["attend_sparse_neighbors"] = True
        o["adj"] = r.choice(["chain", "batch"])
        if r.random() < 0.3:
            kw["max_sparse_neighbors"] = 8
    if r.random() < 0.2:
        kw["num_adj_degrees_embed"] = r.randint(1, 3)
        o["adj"] = o["adj"] or "chain"
    if r.random() < 0.3:
        kw["embedding_grad_frac"] = round(r.random(), 2)
    if r.random() < 0.2:
        kw["splits"] = r.randint(1, 3)
    # occasional combinations torch rejects
    v = r.random()
    if v < 0.04:
        kw["attend_self"] = False
    elif v < 0.07 and isinstance(kw["dim"], tuple):
        kw["dim"] = kw["dim"] + (3,)
    elif v < 0.09:
        kw["num_edge_tokens"] = 3
        kw.pop("edge_dim", None)
    return kw, o


def make_adj(kind, b, n, g):
    if kind == "chain":
        a = torch.zeros(n, n, dtype=torch.bool)
        for i in range(n - 1):
            a[i, i + 1] = a[i + 1, i] = True
        return a
    a = torch.rand(b, n, n, generator=g) > 0.7
    return a | a.transpose(1, 2)


def make_inputs(kw, o, g):
    b, n = o["b"], o["n"]
    inp, names = {}, {}
    dim = kw["dim"] if isinstance(kw["dim"], tuple) else (kw["dim"],) * kw["num_degrees"]
    dim_in = kw.get("dim_in", (dim[0],))
    dim_in = dim_in if isinstance(dim_in, tuple) else (dim_in,)
    if kw.get("num_tokens"):
        feats = torch.randint(0, kw["num_tokens"], (b, n), generator=g)
        inp["feats"] = feats; names["inputs"] = "feats"
    elif kw.get("input_degrees", 1) > 1:
        feats = {l: torch.randn(b, n, dim_in[l], 2 * l + 1, generator=g) for l in range(len(dim_in))}
        for l, t in feats.items():
            inp[f"feats{l}"] = t
        names["inputs"] = {str(l): f"feats{l}" for l in feats}
    else:
        feats = torch.randn(b, n, dim_in[0], generator=g)
        inp["feats"] = feats; names["inputs"] = "feats"
    inp["coors"] = torch.randn(b, n, 3, generator=g) * 1.5; names["coors"] = "coors"
    if o["pad"]:
        mask = torch.ones(b, n, dtype=torch.bool)
        mask[-1, n - 1] = False
        inp["mask"] = mask; names["mask"] = "mask"
    if o["adj"]:
        inp["adj_mat"] = make_adj(o["adj"], b, n, g); names["adj_mat"] = "adj_mat"
    if kw.get("num_edge_tokens"):
        inp["edges"] = torch.randint(0, kw["num_edge_tokens"], (b, n, n), generator=g); names["edges"] = "edges"
    elif kw.get("edge_dim"):
        inp["edges"] = torch.randn(b, n, n, kw["edge_dim"], generator=g); names["edges"] = "edges"
    return feats, inp, names


def js(v):
    return list(v) if isinstance(v, tuple) else v


def write(d, name, kw, lits, names, sd=None, inp=None, outs=None, err=None):
    os.makedirs(d, exist_ok=True)
    cfg = {"name": name, "class": "equiformer_pytorch.equiformer_pytorch.Equiformer",
           "library": {"name": "equiformer-pytorch", "version": "0.5.4", "torch": torch.__version__},
           "constructor_kwargs": {k: js(v) for k, v in kw.items()},
           "forward_kwargs": {"tensors": names, "literals": lits},
           "notes": "equiformer/generate.py: parameters rounded to float16 before the forward passes"}
    with open(os.path.join(d, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=1)
    if sd is not None:
        save_file(sd, os.path.join(d, "weights.safetensors"))
        save_file({k: v.contiguous() for k, v in inp.items()}, os.path.join(d, "inputs.safetensors"))
    if outs is not None:
        save_file({k: v.contiguous() for k, v in outs.items()}, os.path.join(d, "outputs.safetensors"))
    if err is not None:
        with open(os.path.join(d, "torch_error.txt"), "w") as fh:
            fh.write(f"{type(err).__name__}: {err}\n")


def gradients(m, feats, inp, lits, outs, seed):
    g = torch.Generator().manual_seed(seed + 2)
    cot = {k[:-4]: torch.randn(v.shape, generator=g, dtype=torch.float64)
           for k, v in outs.items() if k.endswith("_f64")}
    leaves = {}
    if isinstance(feats, dict):
        f = {}
        for l, t in feats.items():
            f[l] = t.double().clone().requires_grad_(True)
            leaves[f"input.feats.{l}"] = f[l]
    elif feats.is_floating_point():
        f = feats.double().clone().requires_grad_(True)
        leaves["input.feats"] = f
    else:
        f = feats.clone()
    rest = {}
    for k, v in inp.items():
        if k not in ("coors", "mask", "adj_mat", "edges"):
            continue
        v = v.double() if v.is_floating_point() else v
        if k == "edges" and v.is_floating_point():
            v = v.clone().requires_grad_(True)
            leaves["input.edges"] = v
        rest[k] = v
    m.zero_grad()
    ret = m(dict(f) if isinstance(f, dict) else f, **rest, **lits)
    loss = sum((getattr(ret, k) * c).sum() for k, c in cot.items())
    loss.backward()
    res = {f"cotangent.{k}": c for k, c in cot.items()}
    for k, p in m.named_parameters():
        res[f"param.{k}"] = (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
    for k, t in leaves.items():
        res[k] = (t.grad if t.grad is not None else torch.zeros_like(t)).detach().clone()
    return {k: v.contiguous() for k, v in res.items()}


def run(seed):
    name = f"eq_{seed}"
    r = random.Random(seed)
    kw, o = draw_config(r)
    if seed >= 1000 and random.Random(-seed).random() < 0.6:
        # second series: also Taylor-series linear-attention heads (own RNG, so the first series
        # keeps its configs)
        r2 = random.Random(-seed - 1)
        kw["num_linear_attn_heads"] = r2.randint(1, 2)
        if r2.random() < 0.5:
            kw["linear_attn_dim_head"] = r2.randint(1, 4)
    lits = {"return_pooled": True} if o["pooled"] else {}
    d = os.path.join(OUT, name)
    torch.manual_seed(seed)
    try:
        m = Equiformer(**kw).eval()
    except Exception as e:
        write(d, name, kw, lits, {}, err=e)
        return f"{name}: constructor error {type(e).__name__}"
    pnames = {k for k, _ in m.named_parameters()}
    with torch.no_grad():
        for k, p in m.state_dict().items():
            if k.startswith("basis:"):
                continue
            if "gamma" in k or "transforms" in k:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif p.dim() >= 2:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
            else:
                p.copy_(0.1 * torch.randn_like(p))
            if k in pnames or k.endswith("beta"):
                p.copy_(p.half().float())
    g = torch.Generator().manual_seed(seed + 1)
    feats, inp, names = make_inputs(kw, o, g)
    sd = {k: (v.detach().half() if (k in pnames or k.endswith("beta")) else v.detach().float()).contiguous()
          for k, v in m.state_dict().items()}
    outs = {}
    for dt, suf in [(torch.float64, "_f64"), (torch.float32, "_f32")]:
        mm = m.double() if dt == torch.float64 else m.float()
        cv = lambda t: t.to(dt) if t.is_floating_point() else t
        f = {l: cv(t).clone() for l, t in feats.items()} if isinstance(feats, dict) else cv(feats).clone()
        rest = {k: cv(v).clone() for k, v in inp.items() if k in ("coors", "mask", "adj_mat", "edges")}
        try:
            with torch.no_grad():
                ret = mm(f, **rest, **lits)
        except Exception as e:
            write(d, name, kw, lits, names, sd, inp, err=e)
            return f"{name}: forward error {type(e).__name__}: {str(e)[:80]}"
        outs["type0" + suf] = ret.type0
        if ret.type1 is not None:
            outs["type1" + suf] = ret.type1
    write(d, name, kw, lits, names, sd, inp, outs)
    if not kw.get("reversible"):
        # the library's reversible backward fails in eval mode (its saved RNG state is None)
        save_file(gradients(m.double(), feats, inp, lits, outs, seed), os.path.join(d, "gradients.safetensors"))
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    return f"{name}: {size // 1024} KiB {kw}"


for s in range(FIRST, FIRST + COUNT):
    print(run(s), flush=True)
