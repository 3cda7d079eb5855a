#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (fuzz/seeds/<target>/) from the reference data and a
tiny TFN stack with random weights. Standard library only; run from anywhere:
    python3 fuzz/make_seeds.py
"""
import json
import os
import random
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
REF = os.path.join(HERE, "..", "tests", "reference")
SEEDS = os.path.join(HERE, "seeds")

DTYPE_SIZE = {"F16": 2, "F32": 4, "F64": 8, "BOOL": 1, "I64": 8}


def encode(dtype, values):
    fmt = {"F16": "e", "F32": "f", "F64": "d", "BOOL": "?", "I64": "q"}[dtype]
    return struct.pack("<%d%s" % (len(values), fmt), *values)


def safetensors(tensors):
    """tensors: list of (name, dtype, shape, values) -> bytes of a safetensors file."""
    header, blobs, offset = {}, [], 0
    for name, dtype, shape, values in tensors:
        blob = encode(dtype, values)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def write(target, name, data):
    os.makedirs(os.path.join(SEEDS, target), exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(os.path.join(SEEDS, target, name), mode) as f:
        f.write(data)


def tiny_tfn(rng):
    """A one-conv TFN stack {0: 1} -> {0: 1, 1: 1}: config text, f16 weights, inputs (1 x 4 nodes)."""
    config = {
        "class": "TFNStack",
        "library": {"name": "se3-transformer-pytorch", "version": "0.9.0"},
        "constructor_kwargs": {"fibers": [{"0": 1}, {"0": 1, "1": 1}], "self_interaction": True},
        "forward_kwargs": {"tensors": {"feats": "feats", "coors": "coors", "mask": "mask"}},
    }
    u = lambda n, c=0.0: [c + rng.uniform(-0.5, 0.5) for _ in range(n)]
    weights = []
    for pair in ["(0,0)", "(0,1)"]:
        p = "convs.0.kernel_unary.%s.rp.net." % pair
        weights += [
            (p + "0.weight", "F16", [128, 1], u(128)),
            (p + "0.bias", "F16", [128], u(128)),
            (p + "1.weight", "F16", [128], u(128, 1.0)),
            (p + "1.bias", "F16", [128], u(128)),
            (p + "3.weight", "F16", [128, 128], u(128 * 128)),
            (p + "3.bias", "F16", [128], u(128)),
            (p + "4.weight", "F16", [128], u(128, 1.0)),
            (p + "4.bias", "F16", [128], u(128)),
            (p + "6.weight", "F16", [1, 128], u(128)),
            (p + "6.bias", "F16", [1], u(1)),
        ]
    weights.append(("convs.0.self_interact.weights.0", "F16", [1, 1], u(1)))
    inputs = [
        ("coors", "F32", [1, 4, 3], u(12)),
        ("feats", "F32", [1, 4, 1], u(4)),
        ("mask", "BOOL", [1, 4], [True, True, True, False]),
    ]
    return json.dumps(config, indent=1), safetensors(weights), safetensors(inputs)


def main():
    rng = random.Random(16)
    if os.path.isdir(SEEDS):
        shutil.rmtree(SEEDS)
    config, weights, inputs = tiny_tfn(rng)
    write("safetensors_weights", "tiny_tfn.safetensors", weights)
    write("safetensors_weights", "one_f64.safetensors", safetensors([("a", "F64", [2], [1.0, -2.0])]))
    write("safetensors_weights", "empty.safetensors", safetensors([]))
    write("safetensors_inputs", "tiny_tfn.safetensors", inputs)
    models = os.path.join(REF, "models")
    for m in ["tfn_stack", "se3t_basic", "se3t_input_degrees2", "se3t_edge_tokens", "se3t_sparse_adj"]:
        shutil.copy(os.path.join(models, m, "inputs.safetensors"),
                    os.path.join(SEEDS, "safetensors_inputs", m + ".safetensors"))
    write("config_json", "tiny_tfn.json", config)
    for m in sorted(os.listdir(models)):
        if m.startswith("se3t_") or m.startswith("tfn"):
            with open(os.path.join(models, m, "config.json")) as f:
                c = json.load(f)
            # keep what the readers look at (the reference configs also carry long notes)
            keep = {k: c[k] for k in ["class", "library", "constructor_kwargs", "forward_kwargs"] if k in c}
            write("config_json", m + ".json", json.dumps(keep, indent=1))
    with open(os.path.join(REF, "math", "se3t_qj_signs.json")) as f:
        rows = json.load(f)["rows"]
    small = {"rows": [{k: r[k] for k in ["J", "d_in", "d_out", "sign"]} for r in rows]}
    write("qj_signs", "reference.json", json.dumps(small))
    write("qj_signs", "one_flip.json", '{"rows": [{"J": 2, "d_in": 1, "d_out": 1, "sign": 1}]}')
    packed = b""
    for part in [config.encode(), weights, inputs]:
        packed += struct.pack("<I", len(part)) + part
    write("infer", "tiny_tfn_oracle.bin", packed + b"\x00")
    write("infer", "tiny_tfn_graph.bin", packed + b"\x01")


if __name__ == "__main__":
    main()
