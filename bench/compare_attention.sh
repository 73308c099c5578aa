#!/usr/bin/env bash
# Attention side by side on one GPU: longnet-bench-attention --device cuda (dense, paper and
# grouped dilated attention) and its PyTorch peers bench/torch_attention.py (flash SDPA dense,
# grouped dilated attention by SDPA per segment), batch 1, 12 heads x 64, bf16, causal,
# w = 2048..32768, r = 1, 2, 4, 6, 12. Run from the repository root:
#
#   LONGNET_BENCH_ATTENTION=runs/bin/longnet-bench-attention bash bench/compare_attention.sh
#   bash bench/compare_attention.sh BENCH_ATTENTION_BINARY
#
# Environment: SIZES (comma-separated, default 32768,...,2097152), REPS (5), DENSE_MAX_N
# (131072), PYTHON (python3). Prints our table, each JSON line, then a table: N, case, f+b ms
# of each, torch/ours, f+b TFLOP/s of each, peak GiB of each; and the two targets of DESIGN.md
# section 10: grouped mode's speedup over PyTorch at 1M tokens, and paper mode's useful
# TFLOP/s over dense flash SDPA's at the largest N where both ran.
set -euo pipefail

die() {
  echo "compare_attention.sh: $*" >&2
  exit 2
}

bin=${LONGNET_BENCH_ATTENTION:-}
if [[ -z $bin ]]; then
  [[ $# -ge 1 ]] || die "give longnet-bench-attention as LONGNET_BENCH_ATTENTION or the first argument"
  bin=$1
  shift
fi
sizes=${SIZES:-32768,65536,131072,262144,524288,1048576,2097152}
reps=${REPS:-5}
dense_max_n=${DENSE_MAX_N:-131072}
python=${PYTHON:-python3}
[[ -x $bin ]] || die "$bin is not an executable (longnet-bench-attention)"
[[ -f bench/torch_attention.py ]] || die "run from the repository root (bench/torch_attention.py)"
"$python" -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null ||
  die "$python has no PyTorch with CUDA"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0
flags=(--device cuda --sizes "$sizes" --reps "$reps" --dense-max-n "$dense_max_n")

echo "== ours" >&2
if "$bin" "${flags[@]}" >"$work/ours.out"; then
  cat "$work/ours.out"
else
  cat "$work/ours.out"
  echo "compare_attention.sh: longnet-bench-attention failed (see above)" >&2
  failed=1
fi
echo "== torch" >&2
if ! "$python" bench/torch_attention.py "${flags[@]}" | tee "$work/torch.out"; then
  echo "compare_attention.sh: bench/torch_attention.py failed (see above)" >&2
  failed=1
fi

"$python" - "$work" <<'EOF'
import json, os, sys

work = sys.argv[1]
results = {}  # (impl, case, n) -> JSON line of a case that ran
skipped = set()  # (impl, case, n) of the cases that ran out of memory
for side in ("ours", "torch"):
    with open(os.path.join(work, f"{side}.out")) as f:
        for text in f:
            if text.startswith("{"):
                line = json.loads(text)
                key = line["impl"], line["case"], line["n"]
                if "skipped" in line:
                    skipped.add(key)
                else:
                    results[key] = line

some = next(iter(results.values()), {})
print(f"\nattention, causal, {some.get('dtype')}, batch 1, {some.get('heads')} heads x "
      f"{some.get('head_dim')}, on {some.get('device')}; torch/ours > 1: ours faster; "
      "oom: out of memory")
print(f"{'N':>8} {'case':<16} {'ours f+b ms':>12} {'torch f+b ms':>13} {'torch/ours':>11} "
      f"{'ours TF/s':>10} {'torch TF/s':>11} {'ours GiB':>9} {'torch GiB':>10}")
sizes = sorted({n for _, _, n in results.keys() | skipped})
for n in sizes:
    for case in ("dense", "dilated_paper", "dilated_grouped"):
        ours, torch = results.get(("longnet", case, n)), results.get(("torch", case, n))
        oom = {impl for impl in ("longnet", "torch") if (impl, case, n) in skipped}
        if not ours and not torch and not oom:
            continue

        def cell(r, key, fmt, impl):
            return format(r[key], fmt) if r else "oom" if impl in oom else "-"

        def gib(r, impl):
            return f"{r['peak_gpu_bytes'] / 2**30:.2f}" if r else "oom" if impl in oom else "-"

        ratio = f"{torch['fwd_bwd_ms'] / ours['fwd_bwd_ms']:.2f}" if ours and torch else "-"
        print(f"{n:>8} {case:<16} {cell(ours, 'fwd_bwd_ms', '.2f', 'longnet'):>12} "
              f"{cell(torch, 'fwd_bwd_ms', '.2f', 'torch'):>13} {ratio:>11} "
              f"{cell(ours, 'fwd_bwd_tflops', '.1f', 'longnet'):>10} "
              f"{cell(torch, 'fwd_bwd_tflops', '.1f', 'torch'):>11} "
              f"{gib(ours, 'longnet'):>9} {gib(torch, 'torch'):>10}")

print()
both = [n for n in sizes if ("longnet", "dilated_grouped", n) in results
        and ("torch", "dilated_grouped", n) in results]
if both:
    n = 1048576 if 1048576 in both else both[-1]
    ours, torch = results["longnet", "dilated_grouped", n], results["torch", "dilated_grouped", n]
    print(f"grouped mode f+b at N = {n}: torch {torch['fwd_bwd_ms']:.2f} ms / ours "
          f"{ours['fwd_bwd_ms']:.2f} ms = {torch['fwd_bwd_ms'] / ours['fwd_bwd_ms']:.2f}x "
          f"(target >= 4x at 1048576)")
else:
    print("grouped mode: no N where both ran")
both = [n for n in sizes if ("longnet", "dilated_paper", n) in results
        and ("torch", "dense", n) in results]
if both:
    n = both[-1]
    ours, torch = results["longnet", "dilated_paper", n], results["torch", "dense", n]
    for key, what in (("fwd_bwd_tflops", "f+b"), ("fwd_tflops", "fwd")):
        print(f"paper mode / dense flash SDPA, useful TFLOP/s {what} at N = {n}: "
              f"{ours[key]:.1f} / {torch[key]:.1f} = {ours[key] / torch[key]:.2f} "
              f"(target >= 0.70)")
else:
    print("paper mode: no N where it and dense flash SDPA both ran")
EOF
exit $failed
