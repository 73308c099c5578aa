#!/usr/bin/python3
"""Writes the golden fixtures that tests/test_golden.cpp checks our engine against.

Each case is a small composite computation done by PyTorch in float64 from a fixed seed;
its JSON file holds the inputs, the forward results and the gradients. A tensor is stored
as {"shape": [...], "data": [row-major values]}; floats are written with repr, which
round-trips a float64 exactly. Regenerate with:

    /usr/bin/python3 tests/golden/make_golden.py
"""

import json
import os

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))


def tensor_json(t):
    t = t.detach().contiguous()
    if t.is_floating_point():
        data = [float(v) for v in t.double().flatten().tolist()]
    else:
        data = [int(v) for v in t.flatten().tolist()]
    return {"shape": list(t.shape), "data": data}


def write(name, description, tensors):
    doc = {
        "generated_by": "tests/golden/make_golden.py",
        "torch_version": torch.__version__,
        "case": name,
        "description": description,
    }
    doc.update({key: tensor_json(value) for key, value in tensors.items()})
    path = os.path.join(HERE, name + ".json")
    # One line per key: diffs of a regenerated fixture stay readable.
    lines = [f" {json.dumps(key)}: {json.dumps(value)}" for key, value in doc.items()]
    with open(path, "w") as f:
        f.write("{\n" + ",\n".join(lines) + "\n}\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def log_softmax_nll():
    torch.manual_seed(1234)
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 7, (5,), dtype=torch.int64)
    loss = F.nll_loss(F.log_softmax(x, dim=-1), targets)
    loss.backward()
    write("log_softmax_nll",
          "loss = F.nll_loss(F.log_softmax(x, -1), targets), mean reduction",
          {"x": x, "targets": targets, "loss": loss, "grad_x": x.grad})


def matmul_chain():
    torch.manual_seed(2345)
    a = torch.randn(2, 1, 3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    c = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, dtype=torch.float64, requires_grad=True)
    y = (a @ b) @ c + bias  # [2, 3, 3, 2]
    w = torch.randn(y.shape, dtype=torch.float64)
    loss = (y * w).sum()
    loss.backward()
    write("matmul_chain",
          "y = (A @ B) @ C + bias with A [2,1,3,4], B [3,4,5], C [5,2], bias [2]; "
          "loss = (y * w).sum()",
          {"A": a, "B": b, "C": c, "bias": bias, "w": w, "y": y, "loss": loss,
           "grad_A": a.grad, "grad_B": b.grad, "grad_C": c.grad, "grad_bias": bias.grad})


def reduction_mix():
    torch.manual_seed(3456)
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    loss = (x.sum(dim=1).mean()
            + x.max(dim=2).values.sum() * 0.5
            + (x.exp().mean(dim=(0, 2), keepdim=True) * x).sum())
    loss.backward()
    # max along dim 2 must have a unique winner per row, or the gradient is ambiguous.
    top2 = x.detach().topk(2, dim=2).values
    assert (top2[..., 0] - top2[..., 1]).min() > 1e-6
    write("reduction_mix",
          "loss = x.sum(1).mean() + x.max(2).values.sum() * 0.5 "
          "+ (x.exp().mean((0, 2), keepdim=True) * x).sum()",
          {"x": x, "loss": loss, "grad_x": x.grad})


if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)
    log_softmax_nll()
    matmul_chain()
    reduction_mix()
