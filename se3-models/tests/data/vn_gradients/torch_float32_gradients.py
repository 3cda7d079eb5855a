"""PyTorch's own float32 gradients of the vn_* references, for the float32 accuracy bar of
se3-models/tests/vn_gradients.rs.

For each tests/reference/models/vn_*/ folder: VN-transformer 0.1.0 rebuilt in float32 from the
stored weights and inputs, L = sum over outputs o of sum(o * cotangent.o) with the cotangents of
gradients.safetensors, autograd; writes gradients_f32.safetensors beside it (param.<key> and
input.<name>, the float32 values stored as float64). Deterministic (no random draws).

Run: /tmp/se3-refenv/bin/python se3-models/tests/data/vn_gradients/torch_float32_gradients.py [FOLDER ...]
With folders given (e.g. the random cases of extra_reference/vn_transformer/cases that carry a
gradients.safetensors from `generate.py --gradients`), those instead of the vn_* references.
"""
import json
import pathlib
import sys

import torch
from safetensors.torch import load_file, save_file
from VN_transformer import VNTransformer

ROOT = pathlib.Path(__file__).resolve().parents[4] / "tests" / "reference" / "models"

FOLDERS = [pathlib.Path(a) for a in sys.argv[1:]] or sorted(ROOT.glob("vn_*"))

for folder in FOLDERS:
    cfg = json.loads((folder / "config.json").read_text())
    reference = load_file(folder / "gradients.safetensors")
    model = VNTransformer(**cfg["constructor_kwargs"]).float().eval()
    weights = load_file(folder / "weights.safetensors")
    model.load_state_dict({k: v.float() for k, v in weights.items()})
    stored = load_file(folder / "inputs.safetensors")
    kwargs = {}
    for arg, key in cfg["forward_kwargs"]["tensors"].items():
        t = stored[key]
        if t.is_floating_point():
            t = t.float().requires_grad_(True)
        kwargs[arg] = t
    out = model(**kwargs)
    outputs = {"coors": out[0], "feats": out[1]} if isinstance(out, tuple) else {"out": out}
    loss = sum((o * reference["cotangent." + k].float()).sum() for k, o in outputs.items())
    loss.backward()
    grads = {}
    for k, p in model.named_parameters():
        if "param." + k in reference:
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            grads["param." + k] = g.double().contiguous()
    for k, t in kwargs.items():
        if torch.is_tensor(t) and t.is_floating_point() and "input." + k in reference:
            grads["input." + k] = t.grad.double().contiguous()
    save_file(grads, str(folder / "gradients_f32.safetensors"))
    print(folder.name, len(grads), "tensors")
