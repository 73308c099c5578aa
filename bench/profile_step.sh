#!/usr/bin/env bash
# GPU time per kernel of one training step of the 12 x 768 byte-level LongNetLM (grouped
# dilated attention, bf16), measured by Nsight Compute (gpu__time_duration of every launch of
# a warm-up step and a timed step), summed per kernel name by bench/kernel_times.py. Run from
# the repository root on the GPU machine:
#
#   LONGNET_BENCH_TRAIN=runs/bin/longnet-bench-train bash bench/profile_step.sh DATA [N] [LAYERS]
#
# N: tokens per sequence (131072), LAYERS: decoder layers (2; the per-layer rows scale to 12).
# Environment: NCU (ncu on PATH, else /usr/local/cuda/bin/ncu), OUT_DIR (a temporary folder:
# keeps the csv there when set), PYTHON (python3).
set -euo pipefail

die() {
  echo "profile_step.sh: $*" >&2
  exit 2
}

bin=${LONGNET_BENCH_TRAIN:-}
[[ -n $bin && -x $bin ]] || die "set LONGNET_BENCH_TRAIN to a longnet-bench-train binary"
[[ $# -ge 1 ]] || die "usage: profile_step.sh DATA [N] [LAYERS]"
data=$1
n=${2:-131072}
layers=${3:-2}
[[ -f $data ]] || die "no data file $data"
[[ -f bench/kernel_times.py ]] || die "run from the repository root (bench/kernel_times.py)"
ncu=${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}
[[ -x $ncu ]] || die "no Nsight Compute (ncu) found; set NCU"
python=${PYTHON:-python3}

if [[ -n ${OUT_DIR:-} ]]; then
  work=$OUT_DIR
  mkdir -p "$work"
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi
cat >"$work/config.json" <<JSON
{
  "model": {"vocab_size": 256, "d_model": 768, "n_heads": 12, "n_layers": $layers, "d_ff": 3072,
            "segment_lengths": [2048, 4096, 8192, 16384, 32768],
            "dilation_rates": [1, 2, 4, 6, 12],
            "attention": "dilated", "mode": "grouped", "dropout": 0.0, "pos": "rope"},
  "data": {"format": "bytes", "train_path": "$data", "seq_len": $n, "batch_size": 1},
  "optim": {"lr": 0.0003, "schedule": "constant", "grad_clip": 1.0},
  "train": {"steps": 10, "out_dir": "$work/run", "eval_every": 0, "ckpt_every": 0,
            "device": "cuda", "precision": "bf16"}
}
JSON
"$ncu" --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
  "$bin" --config "$work/config.json" --steps 1 --warmup 1 >"$work/kernels.csv" 2>"$work/ncu.err" ||
  {
    tail -20 "$work/ncu.err" >&2
    die "ncu failed"
  }
# Two steps ran (warm-up and timed): per-step figures are half the sums.
"$python" bench/kernel_times.py "$work/kernels.csv" 2
