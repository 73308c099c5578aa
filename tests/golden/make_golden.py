#!/usr/bin/python3
"""Writes the golden fixtures that tests/test_golden.cpp and tests/test_nn.cpp check against.

Each case is a small composite computation done by PyTorch in float64 from a fixed seed;
its JSON file holds the inputs, the forward results and the gradients. A tensor is stored
as {"shape": [...], "data": [row-major values]}; floats are written with repr, which
round-trips a float64 exactly. Regenerate with:

    /usr/bin/python3 tests/golden/make_golden.py
"""

import json
import math
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


# Models: multihead dilated attention and one decoder layer (tests/test_models_golden.cpp).
# Plain PyTorch from the definitions of DESIGN.md section 5: every branch and segment picks
# its positions by explicit index lists, and each query's softmax runs over the keys it
# gathered; nothing here follows the C++ kernels.


def dilated_reference(q, k, v, segment_lengths, dilation_rates, mode, causal):
    """q, k, v (B, N, H, D) -> (B, N, H, D) by per-(batch, head, query) index selection."""
    b_size, n, h_size, d = q.shape
    scale = d ** -0.5
    m = len(segment_lengths)
    if mode == "paper":
        branches_of_head = [[(br, h % dilation_rates[br]) for br in range(m)]
                            for h in range(h_size)]
    else:  # grouped: contiguous groups, the first H mod m one head larger
        sizes = [h_size // m + (1 if g < h_size % m else 0) for g in range(m)]
        group_of_head = [g for g in range(m) for _ in range(sizes[g])]
        branches_of_head = [[(g, g % dilation_rates[g])] for g in group_of_head]
    out = torch.zeros_like(q)
    rows = []
    for h in range(h_size):
        # keys[p]: the keys query p gathers over the head's branches (a multiset for paper),
        # per branch for grouped mode.
        keys = [[] for _ in range(n)]
        for br, j in branches_of_head[h]:
            w, r = segment_lengths[br], dilation_rates[br]
            for t0 in range(0, n, w):
                sel = list(range(t0 + j, min(t0 + w, n), r))
                for p in sel:
                    keys[p].append((br, [s for s in sel if not causal or s <= p]))
        for p in range(n):
            if mode == "paper":
                groups = [[s for _, ks in keys[p] for s in ks]] if keys[p] else []
            else:
                groups = [ks for _, ks in keys[p]]
            for ks in groups:
                idx = torch.tensor(ks, dtype=torch.int64)
                for bi in range(b_size):
                    scores = (k[bi, idx, h, :] @ q[bi, p, h, :]) * scale
                    o = torch.softmax(scores, dim=0) @ v[bi, idx, h, :]
                    if mode == "grouped":
                        o = o / m
                    rows.append((bi, p, h, o))
    # Assemble without in-place writes into a leaf-derived tensor: a sum of one-hot scatters.
    for bi, p, h, o in rows:
        hot = torch.zeros(b_size, n, h_size, 1)
        hot[bi, p, h, 0] = 1.0
        out = out + hot * o
    return out


def check_dilated_reference():
    """Two independent readings of the definition agree with dilated_reference: one branch
    covering the sequence at rate 1 is dense causal attention, and paper mode is the
    per-branch softmaxes mixed with weights proportional to their denominators (eq. 10)."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 11, 2, 4, generator=gen) for _ in range(3))
    scores = torch.einsum("bphd,bshd->bhps", q, k) * 0.5
    scores = scores.masked_fill(torch.ones(11, 11).triu(1).bool(), float("-inf"))
    dense = torch.einsum("bhps,bshd->bphd", scores.softmax(-1), v)
    ours = dilated_reference(q, k, v, [16], [1], "paper", True)
    assert torch.allclose(ours, dense, rtol=0, atol=1e-13), (ours - dense).abs().max()
    num, den = torch.zeros(2, 11, 2, 4), torch.zeros(2, 11, 2, 1)
    for w, r in ((4, 1), (8, 2)):
        for h in range(2):
            for t0 in range(0, 11, w):
                sel = torch.arange(t0 + h % r, min(t0 + w, 11), r)
                s = torch.einsum("bpd,bsd->bps", q[:, sel, h], k[:, sel, h]) * 0.5
                s = s.masked_fill(sel[:, None] < sel[None, :], float("-inf"))
                z = s.exp().sum(-1, keepdim=True)
                num[:, sel, h] += z * torch.einsum("bps,bsd->bpd", s.softmax(-1), v[:, sel, h])
                den[:, sel, h] += z
    ours = dilated_reference(q, k, v, [4, 8], [1, 2], "paper", True)
    assert torch.allclose(ours, num / den, rtol=0, atol=1e-13), (ours - num / den).abs().max()


def random_linear(in_dim, out_dim):
    lin = torch.nn.Linear(in_dim, out_dim)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out_dim, in_dim) * 0.6)
        lin.bias.copy_(torch.randn(out_dim) * 0.2)
    return lin


def random_layer_norm(dim):
    ln = torch.nn.LayerNorm(dim, eps=1e-5)
    with torch.no_grad():
        ln.weight.copy_(1 + 0.3 * torch.randn(dim))
        ln.bias.copy_(0.2 * torch.randn(dim))
    return ln


class ReferenceMHA(torch.nn.Module):
    """q/k/v projections, RoPE on q and k, dilated attention, sub-LayerNorm, out_proj."""

    def __init__(self, embed, heads, segment_lengths, dilation_rates, mode, causal, rope):
        super().__init__()
        self.heads, self.rope = heads, rope
        self.attn = (segment_lengths, dilation_rates, mode, causal)
        self.q_proj = random_linear(embed, embed)
        self.k_proj = random_linear(embed, embed)
        self.v_proj = random_linear(embed, embed)
        self.out_proj = random_linear(embed, embed)
        self.inner_attn_ln = random_layer_norm(embed)

    def forward(self, x):
        b, n, e = x.shape
        q, k, v = (proj(x).reshape(b, n, self.heads, e // self.heads)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        if self.rope:
            q, k = rotary(q, 0), rotary(k, 0)
        a = dilated_reference(q, k, v, *self.attn).reshape(b, n, e)
        return self.out_proj(self.inner_attn_ln(a))


class ReferenceFFN(torch.nn.Module):
    def __init__(self, d_model, d_ff):
        super().__init__()
        self.fc1 = random_linear(d_model, d_ff)
        self.ffn_layernorm = random_layer_norm(d_ff)
        self.fc2 = random_linear(d_ff, d_model)

    def forward(self, x):
        return self.fc2(self.ffn_layernorm(F.gelu(self.fc1(x))))


class ReferenceDecoderLayer(torch.nn.Module):
    """Pre-norm: x + self_attn(ln(x)) [causal], then + ffn(ln(x)); dropout 0."""

    def __init__(self, d_model, heads, d_ff, segment_lengths, dilation_rates, rope):
        super().__init__()
        self.self_attn_layer_norm = random_layer_norm(d_model)
        self.self_attn = ReferenceMHA(d_model, heads, segment_lengths, dilation_rates,
                                      "paper", True, rope)
        self.final_layer_norm = random_layer_norm(d_model)
        self.ffn = ReferenceFFN(d_model, d_ff)

    def forward(self, x):
        x = x + self.self_attn(self.self_attn_layer_norm(x))
        return x + self.ffn(self.final_layer_norm(x))


def module_case(name, description, module, x):
    """Writes x, w, y, loss = (y * w).sum(), every parameter under its own name, and the
    gradients as grad_x and grad_<parameter name>."""
    x = x.requires_grad_()
    y = module(x)
    w = torch.randn(y.shape)
    loss = (y * w).sum()
    loss.backward()
    tensors = {"x": x, "w": w, "y": y, "loss": loss, "grad_x": x.grad}
    for pname, param in module.named_parameters():
        tensors[pname] = param
        tensors["grad_" + pname] = param.grad
    write(name, description, tensors)


def mha_dilated_paper_rope():
    check_dilated_reference()
    torch.manual_seed(8901)
    mha = ReferenceMHA(8, 2, [4, 8], [1, 2], "paper", True, True)
    module_case("mha_dilated_paper_rope",
                "MultiheadDilatedAttention self-attention, embed 8, 2 heads, dilated paper "
                "mode, causal, segment_lengths [4, 8], dilation_rates [1, 2], RoPE on q and "
                "k (offset 0), sub-LayerNorm (eps 1e-5) before out_proj, x [B=2, N=11, 8]; "
                "parameters under their C++ names; loss = (y * w).sum()",
                mha, torch.randn(2, 11, 8))


def mha_dilated_grouped():
    torch.manual_seed(9012)
    mha = ReferenceMHA(12, 3, [3, 6], [1, 2], "grouped", True, False)
    module_case("mha_dilated_grouped",
                "MultiheadDilatedAttention self-attention, embed 12, 3 heads, dilated grouped "
                "mode (groups of heads {0, 1} -> branch 0, {2} -> branch 1 at offset 1), "
                "causal, segment_lengths [3, 6], dilation_rates [1, 2], no position encoding, "
                "sub-LayerNorm before out_proj, x [B=2, N=11, 12]; loss = (y * w).sum()",
                mha, torch.randn(2, 11, 12))


def lm_layer():
    torch.manual_seed(1357)
    layer = ReferenceDecoderLayer(8, 2, 16, [4, 8], [1, 2], True)
    module_case("lm_layer",
                "one LongNetLM DecoderLayer without cross-attention: d_model 8, 2 heads, d_ff "
                "16, causal dilated paper attention [4, 8] / [1, 2], RoPE, dropout 0; "
                "x + self_attn(self_attn_layer_norm(x)), then + ffn(final_layer_norm(.)) with "
                "ffn = fc2(ffn_layernorm(gelu_erf(fc1(.)))); x [B=2, N=11, 8]; "
                "loss = (y * w).sum()",
                layer, torch.randn(2, 11, 8))


# Optimisation (tests/test_optim.cpp).


def cosine_lr(lr, warmup_steps, total_steps, min_lr_ratio, step):
    """scheduled_lr of train/optim.h for the cosine schedule."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    last = total_steps - 1
    progress = (min(step, last) - warmup_steps) / max(last - warmup_steps, 1)
    min_lr = min_lr_ratio * lr
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)


def adamw_steps():
    torch.manual_seed(2468)
    steps, max_norm = 5, 1.0
    weight = torch.randn(4, 3, requires_grad=True)
    bias = torch.randn(4, requires_grad=True)
    initial = {"weight_0": weight.detach().clone(), "bias_0": bias.detach().clone()}
    # Gradient norms 5.8, 0.42, 2.7, 0.21, 1.1: steps 0, 2 and 4 clip.
    grad_scale = torch.tensor([2.0, 0.1, 0.75, 0.05, 0.3])[:, None]
    grad_weight = torch.randn(steps, 4, 3) * grad_scale[:, :, None]
    grad_bias = torch.randn(steps, 4) * grad_scale
    opt = torch.optim.AdamW([{"params": [weight], "weight_decay": 0.1},
                             {"params": [bias], "weight_decay": 0.0}],
                            lr=0.05, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    lrs, norms, weights, biases = [], [], [], []
    for t in range(steps):
        lr = cosine_lr(0.05, 2, steps, 0.1, t)
        for group in opt.param_groups:
            group["lr"] = lr
        weight.grad = grad_weight[t].clone()
        bias.grad = grad_bias[t].clone()
        norm = torch.nn.utils.clip_grad_norm_([weight, bias], max_norm)
        opt.step()
        lrs.append(lr)
        norms.append(float(norm))
        weights.append(weight.detach().clone())
        biases.append(bias.detach().clone())
    clipped = [n > max_norm for n in norms]
    assert any(clipped) and not all(clipped), norms
    write("adamw_steps",
          "5 steps of torch.optim.AdamW(betas=(0.9, 0.95), eps=1e-8, foreach=False) on a "
          "weight [4,3] (weight_decay 0.1) and a bias [4] (weight_decay 0) from weight_0, "
          "bias_0; step t sets the gradients grad_weight[t], grad_bias[t], clips them with "
          "clip_grad_norm_(max_norm=1) (grad_norm[t], before clipping) and steps with lr[t] "
          "= cosine schedule (peak 0.05, warmup 2, total 5, min ratio 0.1); weight[t], "
          "bias[t] after step t; the moments after the last step",
          {**initial, "grad_weight": grad_weight, "grad_bias": grad_bias,
           "lr": torch.tensor(lrs), "grad_norm": torch.tensor(norms),
           "weight": torch.stack(weights), "bias": torch.stack(biases),
           "exp_avg.weight": opt.state[weight]["exp_avg"],
           "exp_avg_sq.weight": opt.state[weight]["exp_avg_sq"],
           "exp_avg.bias": opt.state[bias]["exp_avg"],
           "exp_avg_sq.bias": opt.state[bias]["exp_avg_sq"]})


if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)
    log_softmax_nll()
    matmul_chain()
    reduction_mix()
    nn_linear()
    nn_layer_norm()
    nn_cross_entropy()
    nn_rotary()
    mha_dilated_paper_rope()
    mha_dilated_grouped()
    lm_layer()
    adamw_steps()
