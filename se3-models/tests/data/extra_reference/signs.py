import json
from se3_transformer_pytorch.basis import basis_transformation_Q_J
from safetensors.numpy import load_file
ref = load_file('/work/wt-models/tests/reference/math/se3t_qj.safetensors')
rows = json.load(open('/work/wt-models/tests/reference/math/se3t_qj_signs.json'))['rows']
out = []
for r in rows:
    J, di, do = r['J'], r['d_in'], r['d_out']
    q = basis_transformation_Q_J(J, di, do).numpy()
    rq = ref[f'qj_J{J}_in{di}_out{do}']
    s = r['sign'] if abs(q - rq).max() < 1e-6 else -r['sign']
    assert abs(q - (s * r['sign']) * rq).max() < 1e-6
    out.append(dict(J=J, d_in=di, d_out=do, sign=s))
json.dump({"rows": out}, open('/work/scratch-models/local_signs.json', 'w'))
