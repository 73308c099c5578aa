#!/usr/bin/env python3
"""PyTorch peers of longnet-bench-attention --device cuda, with the same fields.

    python3 bench/torch_attention.py [--device cuda|cpu] [--sizes N,...] [--max-n N]
        [--dense-max-n N] [--heads H] [--head-dim D] [--segment-lengths W,...]
        [--dilation-rates R,...] [--reps R] [--dtype bf16|f32]

Cases, causal, batch 1, at each N:
- dense: F.scaled_dot_product_attention(is_causal=True) on (1, H, N, D), restricted to the
  flash backend on CUDA (up to --dense-max-n, since it is quadratic);
- dilated_grouped: grouped-mode dilated attention from bench/torch_longnet.py (SDPA per
  segment and head group, the approach of dilated-attention-pytorch) on (1, N, H, D).
Forward and forward+backward times are medians of --reps calls after a warm-up call (CUDA
events on the GPU, wall clock on the CPU); inputs require grad, so the forward is a training
forward. Useful TFLOP/s count 4 D flops per visible (query, key) pair forward and 2.5 times
that backward, as longnet-bench-attention does. peak_gpu_bytes is
torch.cuda.max_memory_allocated after a reset, inputs included. A case that runs out of
memory prints a line with "skipped". One JSON line per case. PyTorch without SDPA (Debian's
1.13) falls back to the explicit softmax of torch_longnet.py: the CPU at tiny sizes is for
checking the script.
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_longnet import (  # noqa: E402
    DILATION_RATES, SEGMENT_LENGTHS, grouped_dilated_attention, head_groups, segment_attention)


def attention_pairs(segment_lengths, dilation_rates, grouped, causal, n, heads):
    """Visible (query, key) pairs over all heads, as longnet-bench-attention counts them
    (a key selected by two branches of paper mode counts twice)."""
    m = len(segment_lengths)
    group_of = {}
    for g, (h0, size) in enumerate(head_groups(heads, m)):
        group_of.update({h: g for h in range(h0, h0 + size)})
    pairs = 0
    for h in range(heads):
        for b, (w, r) in enumerate(zip(segment_lengths, dilation_rates)):
            if grouped and b != group_of[h]:
                continue
            w = min(w, n)
            j = b % r if grouped else h % r
            for t0 in range(0, n, w):
                first, end = t0 + j, min(t0 + w, n)
                rows = (end - first + r - 1) // r if first < end else 0
                pairs += rows * (rows + 1) // 2 if causal else rows * rows
    return pairs


def flash_only(device):
    """The flash SDPA backend alone where PyTorch can pin it, else no restriction."""
    if device.type == "cuda" and hasattr(torch.nn, "attention"):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        return sdpa_kernel(SDPBackend.FLASH_ATTENTION)
    return contextlib.nullcontext()


def median_ms(fn, reps, device):
    """Median of reps timed calls of fn after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, stop = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        else:
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def git_commit():
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def positive_list(text):
    values = [int(x) for x in text.split(",")]
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"wants positive integers, got '{text}'")
    return values


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    parser.add_argument("--sizes", type=positive_list,
                        default=[2**p for p in range(15, 22)])  # 32768 .. 2097152
    parser.add_argument("--max-n", type=int, default=2097152)
    parser.add_argument("--dense-max-n", type=int, default=131072)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--segment-lengths", type=positive_list, default=SEGMENT_LENGTHS)
    parser.add_argument("--dilation-rates", type=positive_list, default=DILATION_RATES)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    if len(args.segment_lengths) != len(args.dilation_rates):
        parser.error("--segment-lengths and --dilation-rates need the same number of values")

    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[args.dtype]
    gpu = device.type == "cuda"
    name = (f"{device}: {torch.cuda.get_device_name(device)}" if gpu else "cpu")
    h, d = args.heads, args.head_dim
    segments, rates = args.segment_lengths, args.dilation_rates
    sdpa = "flash" if gpu and hasattr(torch.nn, "attention") else (
        "sdpa" if hasattr(torch.nn.functional, "scaled_dot_product_attention") else "explicit")
    common = {"bench": "attention", "impl": "torch", "heads": h, "head_dim": d,
              "dtype": args.dtype, "causal": True, "device": name, "commit": git_commit(),
              "torch": torch.__version__}
    first_per_token = {}

    def dense(q, k, v):
        with flash_only(device):
            return segment_attention(q, k, v, True)

    def grouped(q, k, v):
        return grouped_dilated_attention(q, k, v, segments, rates, True)

    for n in (n for n in args.sizes if n <= args.max_n):
        cases = [("dense", (1, h, n, d), dense, [n], [1], False, {"backend": sdpa})]
        cases.append(("dilated_grouped", (1, n, h, d), grouped, segments, rates, True,
                      {"segment_lengths": segments, "dilation_rates": rates}))
        for case, shape, op, case_segments, case_rates, is_grouped, config in cases:
            if case == "dense" and n > args.dense_max_n:
                continue
            line = dict(common, case=case, n=n, config=config)
            generator = torch.Generator(device).manual_seed(n)
            q, k, v, dout = (torch.randn(shape, generator=generator, device=device, dtype=dtype)
                             for _ in range(4))
            for x in (q, k, v):
                x.requires_grad_()

            def fwd_bwd():
                for x in (q, k, v):
                    x.grad = None
                op(q, k, v).backward(dout)

            try:
                if gpu:
                    torch.cuda.synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                fwd_ms = median_ms(lambda: op(q, k, v), args.reps, device)
                fwd_bwd_ms = median_ms(fwd_bwd, args.reps, device)
            except torch.cuda.OutOfMemoryError as e:
                line["skipped"] = f"out of GPU memory: {str(e).splitlines()[0]}"
                print(json.dumps(line), flush=True)
                print(f"  {case} n={n} skipped: out of GPU memory", file=sys.stderr)
                continue
            finally:
                del q, k, v, dout
                if gpu:
                    torch.cuda.empty_cache()
            flops = 4.0 * d * attention_pairs(case_segments, case_rates, is_grouped, True, n, h)
            per_token = (fwd_ms / n, fwd_bwd_ms / n)
            first = first_per_token.setdefault(case, per_token)
            line.update({
                "fwd_ms": round(fwd_ms, 3),
                "fwd_bwd_ms": round(fwd_bwd_ms, 3),
                "fwd_reps": args.reps,
                "fwd_bwd_reps": args.reps,
                "fwd_bwd_tokens_per_s": round(n / (fwd_bwd_ms / 1e3)),
                "fwd_per_token_rel": round(per_token[0] / first[0], 3),
                "fwd_bwd_per_token_rel": round(per_token[1] / first[1], 3),
                "fwd_tflops": round(flops / fwd_ms * 1e-9, 3),
                "fwd_bwd_tflops": round(3.5 * flops / fwd_bwd_ms * 1e-9, 3),
            })
            if gpu:
                line["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device)
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
