#!/usr/bin/env python3
"""Checks the grouped-mode dilated attention of bench/torch_longnet.py.

    python3 bench/check_torch_attention.py [--longnet-attention BIN]

On random q, k, v and output gradients (odd N, short last segments, uneven head groups,
r > 1, causal and not):
- where PyTorch has F.scaled_dot_product_attention, the SDPA path equals the explicit
  softmax(q k^T) path (f64 on the CPU, and f32 on CUDA when there is a GPU);
- with BIN (our longnet-attention, e.g. build/train/longnet-attention), our CPU kernel in
  f32 equals the PyTorch function in f64 on the same inputs: outputs and gradients.
Prints the largest absolute difference of each comparison; exits 1 if one is too large.
"""

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_longnet import explicit_attention, grouped_dilated_attention  # noqa: E402

# (B, N, H, D, segment_lengths, dilation_rates, causal)
CASES = [
    (2, 37, 5, 8, [4, 8, 16], [1, 2, 3], True),  # groups of 2, 2, 1 heads; tails 1, 5, 5
    (1, 33, 3, 4, [8, 16], [2, 2], True),  # the last segment (1 row) is below offset 1
    (1, 9, 4, 8, [4, 16], [1, 2], False),  # w > N: one segment
    (1, 101, 12, 16, [4, 8, 16, 24, 48], [1, 2, 4, 6, 12], True),  # the bench's pattern
]


def run_torch(case, q, k, v, grad_out, attend=None):
    """Output and input gradients of grouped_dilated_attention for one case."""
    _, _, _, _, segments, rates, causal = case
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    extra = {"attend": attend} if attend else {}
    out = grouped_dilated_attention(q, k, v, segments, rates, causal, **extra)
    out.backward(grad_out)
    return {"out": out, "grad_q": q.grad, "grad_k": k.grad, "grad_v": v.grad}


def largest_difference(a, b):
    return max((a[name].double().cpu() - b[name].double().cpu()).abs().max().item() for name in a)


def save_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        blob = t.contiguous().float().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def load_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + size])
    header.pop("__metadata__", None)
    tensors = {}
    for name, info in header.items():
        assert info["dtype"] == "F32", f"{path}: {name} is {info['dtype']}"
        begin, end = info["data_offsets"]
        data = bytearray(raw[8 + size + begin:8 + size + end])
        tensors[name] = torch.frombuffer(data, dtype=torch.float32).reshape(info["shape"])
    return tensors


def run_ours(binary, case, tensors, workdir):
    _, _, _, _, segments, rates, causal = case
    config = {"kind": "dilated", "mode": "grouped", "causal": causal,
              "segment_lengths": segments, "dilation_rates": rates,
              "device": "cpu", "dtype": "f32"}
    paths = {name: os.path.join(workdir, name) for name in ("attn.json", "in", "out")}
    with open(paths["attn.json"], "w") as f:
        json.dump(config, f)
    save_safetensors(paths["in"], tensors)
    subprocess.run([binary, "--config", paths["attn.json"], "--in", paths["in"],
                    "--out", paths["out"]], check=True)
    return load_safetensors(paths["out"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--longnet-attention", metavar="BIN",
                        help="our longnet-attention executable (built with the CPU kernels)")
    args = parser.parse_args()
    has_sdpa = hasattr(torch.nn.functional, "scaled_dot_product_attention")
    if not has_sdpa and not args.longnet_attention:
        sys.exit("check_torch_attention.py: PyTorch " + torch.__version__ + " has no SDPA "
                 "path to check; give --longnet-attention BIN to compare with ours")
    gen = torch.Generator().manual_seed(5)
    failed = False

    def report(what, case, diff, tolerance):
        nonlocal failed
        ok = diff <= tolerance
        failed |= not ok
        b, n, h, d, segments, rates, causal = case
        print(f"{'ok  ' if ok else 'FAIL'} {what:<26} B={b} N={n} H={h} D={d} w={segments} "
              f"r={rates} causal={causal}: max |diff| {diff:.2e} (tolerance {tolerance:.0e})")

    with tempfile.TemporaryDirectory() as workdir:
        for case in CASES:
            b, n, h, d = case[:4]
            q, k, v, grad_out = (torch.randn(b, n, h, d, generator=gen) for _ in range(4))
            reference = run_torch(case, *(x.double() for x in (q, k, v, grad_out)))
            if has_sdpa:
                explicit = run_torch(case, *(x.double() for x in (q, k, v, grad_out)),
                                     attend=explicit_attention)
                report("SDPA vs explicit, f64", case, largest_difference(reference, explicit),
                       1e-12)
                if torch.cuda.is_available():
                    on_gpu = [x.cuda() for x in (q, k, v, grad_out)]
                    sdpa = run_torch(case, *on_gpu)
                    explicit = run_torch(case, *on_gpu, attend=explicit_attention)
                    report("SDPA vs explicit, f32 GPU", case, largest_difference(sdpa, explicit),
                           1e-5)
            if args.longnet_attention:
                tensors = {"q": q, "k": k, "v": v, "grad_out": grad_out}
                ours = run_ours(args.longnet_attention, case, tensors, workdir)
                report("ours f32 vs torch f64", case, largest_difference(reference, ours), 2e-6)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
