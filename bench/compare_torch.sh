#!/usr/bin/env bash
# Training throughput side by side on one GPU: longnet-bench-train and the PyTorch baseline
# (bench/torch_longnet.py), for the 12-layer, 768-wide byte-level LongNetLM (12 heads, FFN
# 3072, grouped dilated attention w = 2048..32768, r = 1, 2, 4, 6, 12, RoPE, dropout 0,
# batch 1, bf16), at each sequence length. Run from the repository root:
#
#   LONGNET_BENCH_TRAIN=runs/bin/longnet-bench-train bash bench/compare_torch.sh [DATA]
#   bash bench/compare_torch.sh BENCH_TRAIN_BINARY [DATA]
#
# DATA: a byte file (default data/kjv.txt). Environment: SEQS (default "8192 32768
# 131072"), STEPS (10), WARMUP (3), PYTHON (python3), TORCH_FLAGS (e.g. --compile).
# Prints each run's JSON line, then a table: N, tokens/s of each, ours/torch, peak GiB.
set -euo pipefail

die() {
  echo "compare_torch.sh: $*" >&2
  exit 2
}

bin=${LONGNET_BENCH_TRAIN:-}
if [[ -z $bin ]]; then
  [[ $# -ge 1 ]] || die "give longnet-bench-train as LONGNET_BENCH_TRAIN or the first argument"
  bin=$1
  shift
fi
data=${1:-data/kjv.txt}
read -ra seqs <<<"${SEQS:-8192 32768 131072}"
steps=${STEPS:-10}
warmup=${WARMUP:-3}
python=${PYTHON:-python3}
[[ -x $bin ]] || die "$bin is not an executable (longnet-bench-train)"
[[ -f $data ]] || die "data file $data not found (a byte file such as data/kjv.txt)"
[[ -f bench/torch_longnet.py ]] || die "run from the repository root (bench/torch_longnet.py)"
"$python" -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null ||
  die "$python has no PyTorch with CUDA"
data=$(realpath "$data")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0

for n in "${seqs[@]}"; do
  cat >"$work/config-$n.json" <<EOF
{
  "model": {"vocab_size": 256, "d_model": 768, "n_heads": 12, "n_layers": 12, "d_ff": 3072,
            "segment_lengths": [2048, 4096, 8192, 16384, 32768],
            "dilation_rates": [1, 2, 4, 6, 12],
            "attention": "dilated", "mode": "grouped", "dropout": 0.0, "pos": "rope"},
  "data": {"format": "bytes", "train_path": "$data", "seq_len": $n, "batch_size": 1},
  "optim": {"lr": 0.0003, "schedule": "constant", "grad_clip": 1.0},
  "train": {"steps": $((warmup + steps)), "out_dir": "$work/out", "eval_every": 0,
            "ckpt_every": 0, "device": "cuda", "precision": "bf16"}
}
EOF
  echo "== N = $n: ours" >&2
  if "$bin" --config "$work/config-$n.json" --steps "$steps" --warmup "$warmup" >"$work/ours-$n.out"; then
    tail -n 1 "$work/ours-$n.out" | tee "$work/ours-$n.json"
  else
    echo "compare_torch.sh: longnet-bench-train failed at N = $n (see above)" >&2
    failed=1
  fi
  echo "== N = $n: torch" >&2
  # shellcheck disable=SC2086 # TORCH_FLAGS holds separate flags
  if "$python" bench/torch_longnet.py --seq "$n" --batch 1 --steps "$steps" --warmup "$warmup" \
    --data "$data" --device cuda ${TORCH_FLAGS:-} >"$work/torch-$n.out"; then
    tail -n 1 "$work/torch-$n.out" | tee "$work/torch-$n.json"
  else
    echo "compare_torch.sh: bench/torch_longnet.py failed at N = $n (see above)" >&2
    failed=1
  fi
done

"$python" - "$work" "${seqs[@]}" <<'EOF'
import json, os, sys

work, seqs = sys.argv[1], sys.argv[2:]


def load(side, n):
    path = os.path.join(work, f"{side}-{n}.json")
    return json.load(open(path)) if os.path.exists(path) else {}


def gib(result):
    peak = result.get("peak_gpu_bytes")
    return f"{peak / 2**30:.1f}" if peak else "-"


gpu = next((load("torch", n).get("gpu") for n in seqs if load("torch", n).get("gpu")), "?")
print(f"\nLongNetLM 12 x 768, grouped dilated attention, bf16, batch 1, on {gpu}")
print(f"{'N':>8} {'ours tok/s':>12} {'torch tok/s':>12} {'ours/torch':>11} "
      f"{'ours GiB':>9} {'torch GiB':>10}")
for n in seqs:
    ours, torch = load("ours", n), load("torch", n)
    a, b = ours.get("tokens_per_s"), torch.get("tokens_per_s")
    ratio = f"{a / b:.2f}" if a and b else "-"
    a, b = (f"{x:.0f}" if x else "-" for x in (a, b))
    print(f"{n:>8} {a:>12} {b:>12} {ratio:>11} {gib(ours):>9} {gib(torch):>10}")
EOF
exit $failed
