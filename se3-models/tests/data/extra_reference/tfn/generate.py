# Dev-only: random tensor-field-network stacks (se3-transformer-pytorch 0.9 ConvSE3 + NormSE3, the
# `TFNStack` layout of tests/reference/models/tfn_stack) with torch float64 gradients, for
# se3-models/tests/gradients.rs.
#
#   /tmp/se3-refenv/bin/python generate.py OUT_DIR COUNT [SEED]
#   /tmp/se3-refenv/bin/python generate.py --check REFERENCE_FOLDER     (rebuild tfn_stack, compare)
#
# The stack (as tfn_stack's config.json describes it): conv i = ConvSE3(fiber i, fiber i + 1,
# self_interaction, pool = True, no edges, no Fourier features), each but the last followed by
# NormSE3(fiber i + 1, GELU); input {"0": feats[..., None]}; node i's neighbours are every j != i
# in ascending order; rel_pos = coors_i - coors_j, rel_dist = |rel_pos|; neighbour mask
# mask_i & mask_j; basis = get_basis(rel_pos, max degree of the fibers); outputs `type<l>`
# (b, n, channels, 2l + 1) for the last fiber's degrees. Q_J is the reference one of
# tests/reference/math (the signs se3 ships), whatever this machine's LAPACK returns.
#
# Case i draws from seed SEED * 100003 + i: 2-3 fibers of degrees up to 1 (channels 1-3; small,
# each degree pair is a 128-wide radial network), self_interaction, batch 1-2, 3-7 nodes, the
# last nodes of the last graph masked half the time. Parameters: the library's init plus
# 0.1 N(0, 1), rounded to float16 before anything runs and stored as F16 (the file is the exact
# model). Files: config.json, weights.safetensors, inputs.safetensors (feats / coors float32, mask),
# outputs.safetensors (`type<l>_f64`), gradients.safetensors (GRADIENTS.md layout: torch float64
# autograd of L = sum_l <type<l>, cotangent.type<l>>, cotangents N(0, 1) from seed + 2,
# `param.<key>`, `input.feats`; not the coordinates: the library's basis is not differentiated),
# stored as float32 to keep the files small (6e-8 relative rounding).
import json, os, random, sys
import torch
from torch import nn
from safetensors.torch import load_file, save_file
import se3_transformer_pytorch.basis as basis_mod
from se3_transformer_pytorch.se3_transformer_pytorch import ConvSE3, NormSE3, Fiber

HERE = os.path.dirname(os.path.abspath(__file__))
REF_QJ = load_file(os.path.join(HERE, "../../../../../tests/reference/math/se3t_qj.safetensors"))


def reference_qj(J, d_in, d_out, *args, **kwargs):
    return REF_QJ[f"qj_J{J}_in{d_in}_out{d_out}"].float()


basis_mod.basis_transformation_Q_J = reference_qj


class TFNStack(nn.Module):
    def __init__(self, fibers, self_interaction=True, splits=4):
        super().__init__()
        fs = [Fiber({int(d): c for d, c in f.items()}) for f in fibers]
        self.max_degree = max(int(d) for f in fibers for d in f)
        self.convs = nn.ModuleList(ConvSE3(a, b, self_interaction=self_interaction, pool=True,
                                           splits=splits) for a, b in zip(fs, fs[1:]))
        self.norms = nn.ModuleList(NormSE3(f, nonlin=nn.GELU()) for f in fs[1:-1])

    def forward(self, feats, coors, mask):
        b, n, _ = feats.shape
        idx = torch.tensor([[j for j in range(n) if j != i] for i in range(n)])
        idx = idx[None].expand(b, n, n - 1)
        rel = coors[:, :, None, :] - coors[:, None, :, :]
        rel = rel.gather(2, idx[..., None].expand(b, n, n - 1, 3))
        dist = rel.norm(dim=-1)
        nbr_mask = mask[:, :, None] & mask.gather(1, idx.reshape(b, -1)).reshape(b, n, n - 1)
        basis = basis_mod.get_basis(rel, self.max_degree)
        x = {"0": feats[..., None]}
        for i, conv in enumerate(self.convs):
            x = conv(x, (idx, nbr_mask, None), rel_dist=dist, basis=basis)
            if i < len(self.norms):
                x = self.norms[i](x)
        return {f"type{l}": t for l, t in x.items()}


def build(kw, weights=None):
    m = TFNStack(**kw)
    if weights is not None:
        m.load_state_dict({k: v.double() for k, v in weights.items()})
    return m.double().eval()


def check(folder):
    cfg = json.load(open(os.path.join(folder, "config.json")))
    m = build(cfg["constructor_kwargs"], load_file(os.path.join(folder, "weights.safetensors")))
    inp = load_file(os.path.join(folder, "inputs.safetensors"))
    want = load_file(os.path.join(folder, "outputs.safetensors"))
    with torch.no_grad():
        out = m(inp["feats"].double(), inp["coors"].double(), inp["mask"])
    err = max(float((o - want[k + "_f64"]).abs().max() / want[k + "_f64"].abs().max()) for k, o in out.items())
    print(f"{cfg['name']}: rebuilt stack against its stored float64 outputs: {err:.2e}")
    assert err < 1e-10


def case(i):
    seed = SEED * 100003 + i
    r = random.Random(seed)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    nf = r.choice([2, 3])
    fibers = [{"0": r.randint(1, 3)}]
    for _ in range(nf - 1):
        degs = sorted(r.sample([0, 1], r.choice([1, 2])))
        fibers.append({str(d): r.randint(1, 2) for d in degs})
    kw = dict(fibers=fibers, self_interaction=r.random() < 0.8, splits=4)
    b, n = r.choice([1, 2]), r.randint(3, 7)
    name = f"tfn_rand_{SEED}_{i:03d}"
    m = TFNStack(**kw)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
            p.copy_(p.half().float())
    m = m.double().eval()
    feats = torch.randn(b, n, int(fibers[0]["0"]), generator=g).float()
    coors = torch.randn(b, n, 3, generator=g).float()
    mask = torch.ones(b, n, dtype=torch.bool)
    if r.random() < 0.5:
        mask[-1, n - r.randint(1, max(1, n // 2)):] = False
    with torch.no_grad():
        outs = m(feats.double(), coors.double(), mask)
    gc = torch.Generator().manual_seed(seed + 2)
    cot = {k: torch.randn(v.shape, generator=gc, dtype=torch.float64) for k, v in outs.items()}
    f = feats.double().clone().requires_grad_(True)
    m.zero_grad()
    out = m(f, coors.double(), mask)
    sum((out[k] * c).sum() for k, c in cot.items()).backward()
    grads = {f"cotangent.{k}": c for k, c in cot.items()}
    for k, p in m.named_parameters():
        grads[f"param.{k}"] = p.grad if p.grad is not None else torch.zeros_like(p)
    grads["input.feats"] = f.grad
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    last = fibers[-1]
    cfg = {"name": name, "class": "TFNStack (se3-models/tests/data/extra_reference/tfn/generate.py)",
           "library": {"name": "se3-transformer-pytorch", "version": "0.9.0", "torch": torch.__version__},
           "constructor_kwargs": kw,
           "forward_kwargs": {"tensors": {"feats": "feats", "coors": "coors", "mask": "mask"}, "literals": {}},
           "outputs": {f"type{l}": {"shape": [b, n, c, 2 * int(l) + 1],
                                    "transforms_as": "invariant" if l == "0" else f"degree {l}"}
                       for l, c in last.items()},
           "notes": "parameters rounded to float16 before the forward pass; Q_J of tests/reference/math"}
    with open(os.path.join(d, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=1)
    save_file({k: v.detach().half().contiguous() for k, v in m.state_dict().items()},
              os.path.join(d, "weights.safetensors"))
    save_file({"feats": feats, "coors": coors, "mask": mask}, os.path.join(d, "inputs.safetensors"))
    save_file({f"{k}_f64": v.contiguous() for k, v in outs.items()}, os.path.join(d, "outputs.safetensors"))
    save_file({k: v.detach().float().contiguous() for k, v in grads.items()},
              os.path.join(d, "gradients.safetensors"))
    size = sum(os.path.getsize(os.path.join(d, x)) for x in os.listdir(d))
    print(f"{name}: {size // 1024} KiB, b={b} n={n} {kw}")


if __name__ == "__main__":
    if sys.argv[1] == "--check":
        check(sys.argv[2])
        sys.exit(0)
    OUT = sys.argv[1]
    COUNT = int(sys.argv[2])
    SEED = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    for i in range(COUNT):
        case(i)
