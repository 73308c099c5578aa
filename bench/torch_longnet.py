#!/usr/bin/env python3
"""PyTorch baseline for longnet-bench-train: our LongNetLM built from PyTorch modules.

    python3 bench/torch_longnet.py --seq N --batch B --steps S --warmup W --data FILE
                                   [--device cuda|cpu] [--compile]

The model is the one models/longnet.cpp builds (decoder-only, MAGNETO sub-LayerNorms and
init gains, RoPE on q and k, exact GELU, final LayerNorm, output projection without bias),
with the same parameter names and count. Attention is grouped-mode dilated attention
(DESIGN.md section 5) written with PyTorch ops the way dilated-attention-pytorch does it:
per head group, view the sequence as segments, take every r-th row from the group's
offset, run F.scaled_dot_product_attention on the compact rows and scatter the result back
(divided by the number of groups); without its two defects (head ranges g * size, and
normalising by a sum over the sequence). Training as train/trainer.cpp with the optim
settings bench/compare_torch.sh gives ours: bf16 autocast over f32 weights on CUDA (plain
f32 on the CPU, which is for tests), cross-entropy, global-norm clipping at 1.0 (a step
with a non-finite loss or norm is skipped), AdamW (constant lr 3e-4, betas 0.9/0.95, eps
1e-8, weight decay 0.1 on parameters with dim >= 2; fused on CUDA).
Batches are random windows of seq + 1 bytes of the data file.

Prints one JSON line: tokens/s from the median step time, and the peak of
torch.cuda.max_memory_allocated. PyTorch versions without F.scaled_dot_product_attention
(Debian's 1.13) use an explicit softmax(q k^T) with the same masking, so the script runs
on the CPU at tiny sizes too.
"""

import argparse
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

SEGMENT_LENGTHS = [2048, 4096, 8192, 16384, 32768]
DILATION_RATES = [1, 2, 4, 6, 12]


def explicit_attention(q, k, v, causal):
    """softmax(q k^T / sqrt(D)) v on (..., L, D); causal masks keys after the query."""
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if causal:
        n = q.shape[-2]
        future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    return scores.softmax(-1) @ v


def segment_attention(q, k, v, causal):
    """Attention on (batch, heads, L, D): SDPA where PyTorch has it."""
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return explicit_attention(q, k, v, causal)


def head_groups(num_heads, groups):
    """(first head, size) of each group: contiguous, the first num_heads mod groups one larger."""
    sizes = [num_heads // groups + (1 if g < num_heads % groups else 0) for g in range(groups)]
    return [(sum(sizes[:g]), sizes[g]) for g in range(groups)]


def grouped_dilated_attention(q, k, v, segment_lengths, dilation_rates, causal,
                              attend=segment_attention):
    """Grouped-mode dilated attention: q, k, v (B, N, H, D) contiguous -> (B, N, H, D).

    Group g (heads from head_groups) uses segment length w_g and rate r_g at offset
    g mod r_g. Segments are [s w, (s + 1) w); a shorter last one is handled on its own.
    Positions a group does not select stay 0; every output is divided by the group count.
    """
    b, n, h, d = q.shape
    m = len(segment_lengths)
    out = torch.zeros_like(q)
    for g, ((h0, size), w, r) in enumerate(
            zip(head_groups(h, m), segment_lengths, dilation_rates)):
        offset = g % r
        w = min(w, n)
        whole = n // w
        # (first position, segment count, segment length): the whole segments, then the rest.
        for start, count, length in ((0, whole, w), (whole * w, 1, n - whole * w)):
            if length <= offset or size == 0:
                continue

            def compact(x):
                x = x[:, start:start + count * length].view(b, count, length, h, d)
                return x[:, :, offset::r, h0:h0 + size]

            rows = compact(q).shape[2]

            def fold(x):
                return compact(x).reshape(b * count, rows, size, d).transpose(1, 2)

            o = attend(fold(q), fold(k), fold(v), causal)
            compact(out).copy_(o.transpose(1, 2).reshape(b, count, rows, size, d) / m)
    return out


def rotary_tables(length, head_dim, device, theta=10000.0):
    """cos and sin (length, 1, head_dim / 2) f32 of angle pos * theta^(-2i / head_dim)."""
    i = torch.arange(0, head_dim // 2, dtype=torch.float64, device=device)
    pos = torch.arange(length, dtype=torch.float64, device=device)
    angle = pos[:, None] * theta ** (-2.0 * i / head_dim)
    return angle.cos().float()[:, None], angle.sin().float()[:, None]


def apply_rope(x, cos, sin):
    """nn/positional.cpp's RoPE on x (B, N, H, D): pair (2i, 2i + 1) rotates, in f32."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    y = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return y.reshape(x.shape).to(x.dtype)


def xavier_linear(in_dim, out_dim, gain, bias=True):
    layer = nn.Linear(in_dim, out_dim, bias=bias)
    nn.init.xavier_normal_(layer.weight, gain)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


class MultiheadDilatedAttention(nn.Module):
    """attention/multihead.cpp: projections, RoPE, attention, inner_attn_ln, out_proj."""

    def __init__(self, d_model, num_heads, segment_lengths, dilation_rates, gamma, eps):
        super().__init__()
        self.num_heads = num_heads
        self.branches = (segment_lengths, dilation_rates)
        self.q_proj = xavier_linear(d_model, d_model, 1.0)
        self.k_proj = xavier_linear(d_model, d_model, 1.0)
        self.v_proj = xavier_linear(d_model, d_model, gamma)
        self.out_proj = xavier_linear(d_model, d_model, gamma)
        self.inner_attn_ln = nn.LayerNorm(d_model, eps=eps)

    def forward(self, x, cos, sin):
        b, n, e = x.shape
        q, k, v = (proj(x).view(b, n, self.num_heads, e // self.num_heads)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        a = grouped_dilated_attention(q, k, v, *self.branches, causal=True)
        return self.out_proj(self.inner_attn_ln(a.reshape(b, n, e)))


class FeedForward(nn.Module):
    """fc2(ffn_layernorm(gelu(fc1(x)))), as models/transformer.cpp."""

    def __init__(self, d_model, d_ff, gamma, eps):
        super().__init__()
        self.fc1 = xavier_linear(d_model, d_ff, gamma)
        self.ffn_layernorm = nn.LayerNorm(d_ff, eps=eps)
        self.fc2 = xavier_linear(d_ff, d_model, gamma)

    def forward(self, x):
        return self.fc2(self.ffn_layernorm(F.gelu(self.fc1(x))))


class DecoderLayer(nn.Module):
    """Pre-norm: x += self_attn(ln(x)) [causal]; x += ffn(ln(x)). Dropout 0."""

    def __init__(self, d_model, num_heads, d_ff, segment_lengths, dilation_rates, gamma, eps):
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(d_model, eps=eps)
        self.self_attn = MultiheadDilatedAttention(d_model, num_heads, segment_lengths,
                                                   dilation_rates, gamma, eps)
        self.final_layer_norm = nn.LayerNorm(d_model, eps=eps)
        self.ffn = FeedForward(d_model, d_ff, gamma, eps)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.self_attn_layer_norm(x), cos, sin)
        return x + self.ffn(self.final_layer_norm(x))


class LongNetLM(nn.Module):
    """models/longnet.cpp's LongNetLM; forward returns the mean cross-entropy."""

    def __init__(self, vocab_size=256, d_model=768, num_heads=12, num_layers=12, d_ff=3072,
                 segment_lengths=SEGMENT_LENGTHS, dilation_rates=DILATION_RATES, eps=1e-5):
        super().__init__()
        self.head_dim = d_model // num_heads
        gamma = math.sqrt(math.log(2 * num_layers))  # MAGNETO, decoder-only
        self.embed_tokens = nn.Embedding(vocab_size, d_model)  # N(0, 1), as ours
        self.layers = nn.ModuleList(
            DecoderLayer(d_model, num_heads, d_ff, segment_lengths, dilation_rates, gamma, eps)
            for _ in range(num_layers))
        self.layer_norm = nn.LayerNorm(d_model, eps=eps)
        self.output_projection = xavier_linear(d_model, vocab_size, 1.0, bias=False)

    def forward(self, inputs, targets):
        cos, sin = rotary_tables(inputs.shape[1], self.head_dim, inputs.device)
        x = self.embed_tokens(inputs)
        for layer in self.layers:
            x = layer(x, cos, sin)
        logits = self.output_projection(self.layer_norm(x))
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def make_optimizer(model, device):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    fused = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=3e-4, betas=(0.9, 0.95), eps=1e-8, **fused)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--data", required=True, help="byte file (e.g. data/kjv.txt)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = parser.parse_args()
    if min(args.seq, args.batch, args.steps) < 1 or args.warmup < 0:
        parser.error("--seq, --batch and --steps must be >= 1, --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("torch_longnet.py: --device cuda but PyTorch sees no CUDA device")
    if args.compile and not hasattr(torch, "compile"):
        sys.exit(f"torch_longnet.py: --compile needs PyTorch 2, this is {torch.__version__}")
    device = torch.device(args.device)
    with open(args.data, "rb") as f:
        data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
    if data.numel() < args.seq + 1:
        sys.exit(f"torch_longnet.py: {args.data} has {data.numel()} bytes; --seq {args.seq} "
                 f"needs at least {args.seq + 1}")

    torch.manual_seed(1)
    model = LongNetLM().to(device)
    parameters = sum(p.numel() for p in model.parameters())
    optimizer = make_optimizer(model, device)
    forward = torch.compile(model) if args.compile else model
    sampler = torch.Generator().manual_seed(2)
    cuda = device.type == "cuda"

    def step():
        starts = torch.randint(0, data.numel() - args.seq, (args.batch,), generator=sampler)
        batch = torch.stack([data[s:s + args.seq + 1] for s in starts.tolist()]).long()
        batch = batch.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = forward(batch[:, :-1], batch[:, 1:])
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        loss = loss.item()
        if math.isfinite(loss) and math.isfinite(norm.item()):
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        step()
    seconds = []
    start = time.perf_counter()
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        seconds.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    tokens = args.batch * args.seq
    median = sorted(seconds)[len(seconds) // 2]  # as longnet-bench-train
    print(json.dumps({
        "bench": "train_torch",
        "seq": args.seq,
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "compile": args.compile,
        "parameters": parameters,
        "tokens_per_step": tokens,
        "step_ms_median": round(median * 1e3, 3),
        "tokens_per_s": round(tokens / median, 3),
        "tokens_per_s_overall": round(tokens * args.steps / total, 3),
        "peak_gpu_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
        "loss": round(loss, 6),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
    }))


if __name__ == "__main__":
    main()
