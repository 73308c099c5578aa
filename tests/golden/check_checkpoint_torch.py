"""Loads a longnet-train checkpoint with Hugging Face's safetensors (as PyTorch users do)
and checks that every tensor equals what a direct reading of the file's bytes gives, and
that the names and shapes match meta.json's model. Run where `safetensors` and `torch` are
installed (not in Debian 12): python3 tests/golden/check_checkpoint_torch.py CKPT_DIR"""
import json
import struct
import sys

import numpy as np
import torch
from safetensors.torch import load_file

DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32}


def raw_tensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        raw = data[8 + n + begin : 8 + n + end]
        out[name] = np.frombuffer(raw, dtype=DTYPES[entry["dtype"]]).reshape(entry["shape"])
    return out


def main(ckpt):
    meta = json.load(open(f"{ckpt}/meta.json"))
    model = meta["config"]["model"]
    for file in ("model.safetensors", "optimizer.safetensors"):
        loaded = load_file(f"{ckpt}/{file}")
        raw = raw_tensors(f"{ckpt}/{file}")
        assert set(loaded) == set(raw), (file, set(loaded) ^ set(raw))
        for name, tensor in loaded.items():
            assert torch.equal(tensor, torch.from_numpy(raw[name].copy())), (file, name)
        print(f"{file}: {len(loaded)} tensors load with safetensors.torch and match the bytes")
    weights = load_file(f"{ckpt}/model.safetensors")
    d, v = model["d_model"], model["vocab_size"]
    assert tuple(weights["embed_tokens.weight"].shape) == (v, d)
    assert tuple(weights["output_projection.weight"].shape) == (v, d)
    layers = {int(k.split(".")[1]) for k in weights if k.startswith("layers.")}
    assert layers == set(range(model["n_layers"])), layers
    print(f"model: {model['n_layers']} layers, d_model {d}, vocab {v}: names and shapes as meta.json says")


if __name__ == "__main__":
    main(sys.argv[1])
