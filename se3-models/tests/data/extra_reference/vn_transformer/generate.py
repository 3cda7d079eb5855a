# Dev-only: random VN-transformer 0.1.0 `VNTransformer` configs for the generality check of se3's
# VN-Transformer (se3-models/tests/vn_transformer.rs).
#
#   /tmp/se3-refenv/bin/python generate.py OUT_DIR [COUNT] [SEED] [--gradients]
#
# Draws COUNT configs (default 40) from a generator seeded with SEED (default 0): every constructor
# option (dim, depth 0-3, heads, dim_head, dim_feat, num_tokens with token features, bias_epsilon
# including negative values, l2_dist_attn, flash_attn, translation_equivariance or
# translation_invariant, reduce_dim_out) and inputs (batch 1-3, 1-9 nodes, no mask / random mask /
# a fully masked batch element). Each case folder has the layout of tests/reference/models:
# config.json, weights.safetensors (float32, the exact model), inputs.safetensors,
# outputs.safetensors (`<name>_f64` from the model in float64, `<name>_f32` in float32).
# Weights are drawn N(0, 1/fan_in) (initialisation does not matter for parity; this keeps the logits
# moderate), layer-norm gammas 1 + 0.1 N(0, 1), betas 0.1 N(0, 1). Coordinates are halved (up to 6
# times) while torch's own float32 run is more than 2e-5 (relative) from float64; draws still above
# that are skipped (printed), so a 1e-4 bound tests se3 and not float32's conditioning. config.json
# records the final figure as `torch_f32_vs_f64_max_rel`.
#
# --gradients also writes gradients.safetensors beside each case (the layout of
# /work/shared/reference/GRADIENTS.md): torch autograd in float64 of L = sum_o <o, cotangent.o>, the
# cotangents `cotangent.<o>` drawn N(0, 1) from seed SEED * 100003 + i + 2, `param.<key>` for every
# named parameter (zeros where one does not reach the outputs), `input.coors` and `input.feats`
# (dense features). The float32 bar of se3-models/tests/vn_gradients.rs also needs torch's own
# float32 gradients: run ../../vn_gradients/torch_float32_gradients.py on the case folders.
#
# OUT_DIR/rejected.json lists configs the library refuses (its constructor or forward raises),
# with the error; se3 must refuse them with a typed error.
import json, os, random, sys
import torch
from safetensors.torch import save_file
import VN_transformer
from VN_transformer import VNTransformer

ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
GRADIENTS = "--gradients" in sys.argv[1:]
OUT = ARGS[0]
COUNT = int(ARGS[1]) if len(ARGS) > 1 else 40
SEED = int(ARGS[2]) if len(ARGS) > 2 else 0


def draw_config(r):
    kw = dict(dim=r.choice([3, 4, 6, 8, 12]), depth=r.choice([0, 1, 1, 2, 2, 3]))
    if r.random() < 0.8:
        kw["heads"] = r.choice([1, 2, 3, 4])
    if r.random() < 0.8:
        kw["dim_head"] = r.choice([1, 2, 3, 4, 8])
    feats = r.choice(["none", "dense", "dense", "tokens"])
    if feats == "dense":
        kw["dim_feat"] = r.choice([1, 2, 3, 5])
    elif feats == "tokens":
        kw["num_tokens"] = r.choice([3, 7])
        kw["dim_feat"] = kw["dim"]
    if r.random() < 0.6:
        kw["bias_epsilon"] = r.choice([0.0, 1e-6, 1e-3, 0.1, 0.5, -0.5])
    attn = r.choice(["dot", "dot", "l2", "flash"])
    if attn == "l2":
        kw["l2_dist_attn"] = True
    elif attn == "flash":
        kw["flash_attn"] = True
    tr = r.choice(["none", "none", "equivariance", "invariant"])
    if tr == "equivariance":
        kw["translation_equivariance"] = True
    elif tr == "invariant":
        kw["translation_invariant"] = True
    if r.random() < 0.5:
        kw["reduce_dim_out"] = r.random() < 0.5
    return kw, feats


def draw_inputs(r, g, kw, feats):
    b, n = r.choice([1, 2, 3]), r.randint(1, 9)
    inp = {"coors": (torch.randn(b, n, 3, generator=g) * r.choice([0.5, 1.0, 3.0]) + r.uniform(-2, 2)).float()}
    if feats == "dense":
        inp["feats"] = torch.randn(b, n, kw["dim_feat"], generator=g).float()
    elif feats == "tokens":
        inp["feats"] = torch.randint(0, kw["num_tokens"], (b, n), generator=g)
    mask = r.choice(["none", "random", "random", "empty_row"])
    if mask != "none":
        m = torch.rand(b, n, generator=g) < 0.7
        m[:, 0] = True
        if mask == "empty_row":
            m[b - 1] = False
        inp["mask"] = m
    return inp


def redraw(model, g):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln.gamma"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("token_emb.weight"):
                p.copy_(torch.randn(p.shape, generator=g))
            elif p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g))
        for name, buf in model.named_buffers():
            if name.endswith("ln.beta"):
                buf.copy_(0.1 * torch.randn(buf.shape, generator=g))


def forward(model, inp, dtype):
    m = model.to(dtype)
    kw = {}
    if "feats" in inp:
        f = inp["feats"]
        kw["feats"] = f if f.dtype == torch.long else f.to(dtype)
    if "mask" in inp:
        kw["mask"] = inp["mask"]
    with torch.no_grad():
        out = m(inp["coors"].to(dtype), **kw)
    names = ["coors", "feats"] if "feats" in inp else ["out"]
    outs = out if isinstance(out, tuple) else (out,)
    return dict(zip(names, outs))


def transforms(kw, name):
    if name == "feats":
        return "invariant" if kw.get("bias_epsilon", 0) <= 0 else "approximately invariant (bias_epsilon > 0)"
    if kw.get("translation_equivariance"):
        return "E(3)-equivariant coordinates: rotates and translates"
    return "rotates by R: out(x R^T) = out(x) R^T" + (" (translation-invariant)" if kw.get("translation_invariant") else "")


def rel(a, b):
    return float((a.double() - b).abs().max() / b.abs().max().clamp(min=1e-30))


def write_case(d, name, kw, inp, model, outs64, outs32, torch_f32_err):
    os.makedirs(d, exist_ok=True)
    tensors = {k: k for k in inp}
    cfg = {
        "name": name,
        "class": "VN_transformer.VNTransformer",
        "library": {"name": "VN-transformer", "version": "0.1.0", "torch": torch.__version__},
        "constructor_kwargs": kw,
        "forward_kwargs": {"tensors": tensors, "literals": {}},
        "outputs": {k: {"shape": list(v.shape), "transforms_as": transforms(kw, k)} for k, v in outs64.items()},
        "generator": f"generate.py seed {SEED}",
        "torch_f32_vs_f64_max_rel": torch_f32_err,
    }
    with open(os.path.join(d, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=1)
    sd = {k: v.detach().float().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(d, "weights.safetensors"))
    save_file({k: v.contiguous() for k, v in inp.items()}, os.path.join(d, "inputs.safetensors"))
    o = {f"{k}_f64": v.double().contiguous() for k, v in outs64.items()}
    o.update({f"{k}_f32": v.float().contiguous() for k, v in outs32.items()})
    save_file(o, os.path.join(d, "outputs.safetensors"))


def gradients(model, inp, outs64, seed):
    """torch float64 autograd of sum_o <o, cotangent.o> (see --gradients above)."""
    m = model.double()
    g = torch.Generator().manual_seed(seed + 2)
    cot = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in outs64.items()}
    leaves = {k: v.double().clone().requires_grad_(True) for k, v in inp.items() if v.is_floating_point()}
    kw = {k: leaves.get(k, v) for k, v in inp.items() if k != "coors"}
    m.zero_grad()
    with torch.enable_grad():
        out = m(leaves["coors"], **kw)
        outs = dict(zip(outs64, out if isinstance(out, tuple) else (out,)))
        sum((outs[k] * c).sum() for k, c in cot.items()).backward()
    res = {f"cotangent.{k}": c for k, c in cot.items()}
    for k, p in m.named_parameters():
        res[f"param.{k}"] = (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
    for k, t in leaves.items():
        res[f"input.{k}"] = t.grad.detach().clone()
    return {k: v.contiguous() for k, v in res.items()}


REJECTED = [
    dict(dim=8, depth=1, l2_dist_attn=True, flash_attn=True),
    dict(dim=8, depth=1, translation_equivariance=True, translation_invariant=True),
    dict(dim=8, depth=1, heads=2, dim_head=4, no_such_kwarg=1),
    dict(depth=1),
]


def main():
    r = random.Random(SEED)
    os.makedirs(OUT, exist_ok=True)
    made = skipped = 0
    for i in range(COUNT):
        kw, feats = draw_config(r)
        name = f"vn_rand_{SEED}_{i:03d}"
        g = torch.Generator().manual_seed(SEED * 100003 + i)
        torch.manual_seed(SEED * 100003 + i)
        model = VNTransformer(**kw).eval()
        redraw(model, g)
        # the float32 weights are the model: round them once, then run both precisions from them
        with torch.no_grad():
            for p in list(model.parameters()) + list(model.buffers()):
                p.copy_(p.float().double())
        inp = draw_inputs(r, g, kw, feats)
        # Some draws are ill-conditioned in float32 for torch itself (large coordinates feeding
        # l2-distance logits, deep stacks): shrink the coordinates until torch's own float32 run
        # is within 2e-5 of float64, so that a 1e-4 bound tests se3 and not the draw.
        for attempt in range(7):
            if attempt > 0:
                inp["coors"] = (inp["coors"] * 0.5).float()
            outs32 = forward(model.float(), inp, torch.float32)
            outs64 = forward(model.double(), inp, torch.float64)
            err = max(rel(outs32[k], outs64[k]) for k in outs64)
            if err <= 2e-5:
                break
        if err > 2e-5:
            print(f"{name}: skipped, ill-conditioned (torch float32 vs float64 {err:.1e}): {kw}")
            skipped += 1
            continue
        model = model.float()
        write_case(os.path.join(OUT, name), name, kw, inp, model, outs64, outs32, err)
        if GRADIENTS:
            save_file(gradients(model, inp, outs64, SEED * 100003 + i),
                      os.path.join(OUT, name, "gradients.safetensors"))
        made += 1
    rejected = []
    for kw in REJECTED:
        try:
            VNTransformer(**kw)
            err = None
        except Exception as e:  # the library raises AssertionError / TypeError
            err = f"{type(e).__name__}: {e}"
        if err is not None:
            rejected.append({"constructor_kwargs": kw, "torch_error": err})
    with open(os.path.join(OUT, "rejected.json"), "w") as fh:
        json.dump(rejected, fh, indent=1)
    print(f"wrote {made} cases ({skipped} ill-conditioned draws skipped) and {len(rejected)} rejected configs to {OUT}")


if __name__ == "__main__":
    main()
