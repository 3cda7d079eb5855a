"""Reference trajectories of torch.optim for se3's optimizer tests (float64).

Each case: a parameter of 7 values, 5 steps with fixed gradients g_t (drawn once below),
the optimizer's parameter after every step. Written to optim.json next to this script.
Run: /tmp/se3-refenv/bin/python make_optim_reference.py
"""
import json
import math
import os

import torch

torch.manual_seed(0)
N, STEPS = 7, 5
p0 = torch.randn(N, dtype=torch.float64)
grads = [torch.randn(N, dtype=torch.float64) for _ in range(STEPS)]

cases = {
    "sgd": (torch.optim.SGD, dict(lr=0.1)),
    "sgd_momentum": (torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
    "sgd_dampening_wd": (torch.optim.SGD, dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01)),
    "sgd_nesterov": (torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.02)),
    "adam": (torch.optim.Adam, dict(lr=1e-2)),
    "adam_wd": (torch.optim.Adam, dict(lr=3e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    "adamw": (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.05)),
}
out = {"p0": p0.tolist(), "grads": [g.tolist() for g in grads], "cases": {}}
for name, (cls, kw) in cases.items():
    p = torch.nn.Parameter(p0.clone())
    opt = cls([p], **kw)
    traj = []
    for g in grads:
        opt.zero_grad()
        p.grad = g.clone()
        opt.step()
        traj.append(p.detach().clone().tolist())
    out["cases"][name] = {"optimizer": cls.__name__, "kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()}, "params": traj}

# clip_grad_norm_ on two tensors
a = torch.randn(5, dtype=torch.float64) * 3
b = torch.randn(3, dtype=torch.float64) * 3
pa, pb = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64)), torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
pa.grad, pb.grad = a.clone(), b.clone()
total = torch.nn.utils.clip_grad_norm_([pa, pb], max_norm=1.5)
out["clip"] = {"grads": [a.tolist(), b.tolist()], "max_norm": 1.5, "total_norm": float(total),
               "clipped": [pa.grad.tolist(), pb.grad.tolist()]}

# LR schedules, 12 epochs from lr 0.1
def lrs(make):
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = make(opt)
    r = []
    for _ in range(12):
        r.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return r

out["schedules"] = {
    "linear_warmup": {"start_factor": 0.25, "total_iters": 4,
                      "lrs": lrs(lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.25, end_factor=1.0, total_iters=4))},
    "cosine": {"t_max": 10, "eta_min": 0.001,
               "lrs": lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10, eta_min=0.001))},
    "step": {"step_size": 3, "gamma": 0.5,
             "lrs": lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5))},
}
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "optim.json"), "w") as f:
    json.dump(out, f, indent=1)
print("wrote optim.json")
