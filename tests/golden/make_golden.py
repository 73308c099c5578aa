#!/usr/bin/python3
"""Writes the golden fixtures that tests/test_golden.cpp and tests/test_nn.cpp check against.

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


# nn modules and losses (tests/test_nn.cpp).


def nn_linear():
    torch.manual_seed(4567)
    lin = torch.nn.Linear(4, 3)
    x = torch.randn(2, 5, 4, requires_grad=True)
    y = lin(x)
    w = torch.randn(y.shape)
    loss = (y * w).sum()
    loss.backward()
    write("nn_linear",
          "y = nn.Linear(4, 3)(x) with x [2,5,4] (weight [out, in]); loss = (y * w).sum()",
          {"weight": lin.weight, "bias": lin.bias, "x": x, "w": w, "y": y, "loss": loss,
           "grad_x": x.grad, "grad_weight": lin.weight.grad, "grad_bias": lin.bias.grad})


def nn_layer_norm():
    torch.manual_seed(5678)
    ln = torch.nn.LayerNorm(6)
    with torch.no_grad():
        ln.weight.copy_(torch.randn(6))
        ln.bias.copy_(torch.randn(6))
    x = (torch.randn(3, 4, 6) * 2 + 0.5).requires_grad_()
    y = ln(x)
    w = torch.randn(y.shape)
    loss = (y * w).sum()
    loss.backward()
    write("nn_layer_norm",
          "y = nn.LayerNorm(6, eps=1e-5) with random affine weight and bias, x [3,4,6]; "
          "loss = (y * w).sum()",
          {"weight": ln.weight, "bias": ln.bias, "x": x, "w": w, "y": y, "loss": loss,
           "grad_x": x.grad, "grad_weight": ln.weight.grad, "grad_bias": ln.bias.grad})


def nn_cross_entropy():
    torch.manual_seed(6789)
    logits = (torch.randn(2, 5, 7) * 2).requires_grad_()
    targets = torch.randint(0, 7, (2, 5), dtype=torch.int64)
    targets[0, 1] = -100
    targets[1, 3] = -100
    loss = F.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1), ignore_index=-100)
    loss.backward()
    write("nn_cross_entropy",
          "loss = F.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1), "
          "ignore_index=-100) with logits [2,5,7] and two ignored targets; mean over the rest",
          {"logits": logits, "targets": targets, "loss": loss, "grad_logits": logits.grad})


def rotary(x, offset, theta=10000.0, scale_base=None, downscale=False):
    """The formulas of nn/positional.h: RoPE on interleaved pairs, XPOS scale on top."""
    _, n, _, d = x.shape
    pos = torch.arange(offset, offset + n, dtype=torch.float64)[:, None]
    i = torch.arange(0, d // 2, dtype=torch.float64)[None, :]
    angle = pos * theta ** (-2 * i / d)
    cos, sin = angle.cos(), angle.sin()
    if scale_base is not None:
        s = ((2 * i + 0.4 * d) / (1.4 * d)) ** (pos / scale_base)
        if downscale:
            s = 1 / s
        cos, sin = cos * s, sin * s
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


def torchscale_xpos(x, offset, downscale, scale_base=512):
    """torchscale's XPOS (component/xpos_relative_position.py), x of shape (B*H, N, D)."""
    def fixed_pos_embedding(x):
        seq_len, dim = x.shape
        inv_freq = 1.0 / (10000 ** (torch.arange(0, dim) / dim))
        sinusoid_inp = torch.einsum(
            "i , j -> i j", torch.arange(0, seq_len, dtype=torch.float), inv_freq).to(x)
        return torch.sin(sinusoid_inp), torch.cos(sinusoid_inp)

    def rotate_every_two(x):
        x1 = x[:, :, ::2]
        x2 = x[:, :, 1::2]
        return torch.stack((-x2, x1), dim=-1).flatten(-2)

    def duplicate_interleave(m):
        dim0 = m.shape[0]
        return m.view(-1, 1).repeat(1, 2).view(dim0, -1)

    head_dim = x.shape[-1]
    base = (torch.arange(0, head_dim, 2) + 0.4 * head_dim) / (1.4 * head_dim)
    length = x.shape[1]
    min_pos = -(length + offset) // 2
    max_pos = length + offset + min_pos
    scale = base ** torch.arange(min_pos, max_pos, 1).to(base).div(scale_base)[:, None]
    sin, cos = fixed_pos_embedding(scale)
    if scale.shape[0] > length:
        scale, sin, cos = scale[-length:], sin[-length:], cos[-length:]
    if downscale:
        scale = 1 / scale
    sin, cos = map(lambda t: duplicate_interleave(t * scale), (sin, cos))
    return (x * cos) + (rotate_every_two(x) * sin)


def nn_rotary():
    torch.manual_seed(7890)
    offset = 3
    shape = (2, 4, 2, 6)  # B, N, H, D
    x = torch.randn(shape, requires_grad=True)
    q = torch.randn(shape, requires_grad=True)
    k = torch.randn(shape, requires_grad=True)
    w = torch.randn(shape)
    rope = rotary(x, offset)
    xpos_q = rotary(q, offset, scale_base=512.0)
    xpos_k = rotary(k, offset, scale_base=512.0, downscale=True)
    (rope * w).sum().backward()
    (xpos_q * w).sum().backward()
    (xpos_k * w).sum().backward()

    # Our uncentred XPOS gives the attention scores of torchscale's centred one.
    def heads_first(t):
        b, n, h, d = t.shape
        return t.detach().permute(0, 2, 1, 3).reshape(b * h, n, d)
    ours = heads_first(xpos_q) @ heads_first(xpos_k).transpose(1, 2)
    theirs = (torchscale_xpos(heads_first(q), offset, False)
              @ torchscale_xpos(heads_first(k), offset, True).transpose(1, 2))
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6), (ours - theirs).abs().max()

    write("nn_rotary",
          "x, q, k [B=2, N=4, H=2, D=6] at position_offset 3: rope = apply_rope(x, 3), "
          "xpos_q = apply_xpos(q, 3, downscale=False), xpos_k = apply_xpos(k, 3, "
          "downscale=True) with theta 10000, scale_base 512, from the formulas of "
          "nn/positional.h; grads of (out * w).sum()",
          {"x": x, "q": q, "k": k, "w": w, "rope": rope, "xpos_q": xpos_q, "xpos_k": xpos_k,
           "grad_x": x.grad, "grad_q": q.grad, "grad_k": k.grad})


if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)
    log_softmax_nll()
    matmul_chain()
    reduction_mix()
    nn_linear()
    nn_layer_norm()
    nn_cross_entropy()
    nn_rotary()
