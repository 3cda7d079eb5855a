# The Q_J sign table of the machine this runs on (CONVENTIONS 2.3), for `set_qj_signs` /
# `se3 infer --qj-signs`: run it with the Python that has se3-transformer-pytorch, on the machine
# (LAPACK build) that made the weights.
#
#   python signs.py OUT.json
#
# Each (J, d_in, d_out) up to degree 3 is compared with the reference Q_J of tests/reference/math
# (whose signs se3-core ships). Degrees above 3 have no reference values: their rows in
# qj_signs.json here were found by comparing this machine's Q_J with se3-core's `q_j` (sign +1
# relative to its Clebsch-Gordan table beyond degree 3) dumped from Rust.
import json, os, sys
from se3_transformer_pytorch.basis import basis_transformation_Q_J
from safetensors.numpy import load_file

MATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../../tests/reference/math")
ref = load_file(os.path.join(MATH, "se3t_qj.safetensors"))
rows = json.load(open(os.path.join(MATH, "se3t_qj_signs.json")))["rows"]
out = []
for r in rows:
    J, di, do = r["J"], r["d_in"], r["d_out"]
    q = basis_transformation_Q_J(J, di, do).numpy()
    rq = ref[f"qj_J{J}_in{di}_out{do}"]
    s = r["sign"] if abs(q - rq).max() < 1e-6 else -r["sign"]
    assert abs(q - (s * r["sign"]) * rq).max() < 1e-6
    out.append(dict(J=J, d_in=di, d_out=do, sign=s))
json.dump({"rows": out}, open(sys.argv[1], "w"))
print(f"{len(out)} triples, {sum(r['sign'] != x['sign'] for r, x in zip(rows, out))} differ from the reference")
