#!/usr/bin/env bash
# Where the GPU time of a training step goes: longnet-bench-train on the 12 x 768 byte-level
# LongNetLM (grouped dilated attention, bf16), one warm-up step and two timed ones, under the
# CUPTI tracer of bench/kernel_trace.cpp; then bench/kernel_gaps.py on the last step: device
# busy and idle time, idle time by the host call in progress, device time per kernel. Run
# from the repository root on the GPU machine:
#
#   LONGNET_BENCH_TRAIN=build/bench/longnet-bench-train bash bench/trace_step.sh DATA [N] [LAYERS]
#
# N: tokens per sequence (131072), LAYERS: decoder layers (12). Environment:
# LONGNET_KERNEL_TRACE_LIB (the tracer; default liblongnet-kernel-trace.so beside the binary),
# OUT_DIR (a folder that keeps the config and the trace; else a temporary one), PYTHON
# (python3).
set -euo pipefail

die() {
  echo "trace_step.sh: $*" >&2
  exit 2
}

bin=${LONGNET_BENCH_TRAIN:-}
[[ -n $bin && -x $bin ]] || die "set LONGNET_BENCH_TRAIN to a longnet-bench-train binary"
[[ $# -ge 1 ]] || die "usage: trace_step.sh DATA [N] [LAYERS]"
data=$1
n=${2:-131072}
layers=${3:-12}
[[ -f $data ]] || die "no data file $data"
[[ -f bench/kernel_gaps.py ]] || die "run from the repository root (bench/kernel_gaps.py)"
tracer=${LONGNET_KERNEL_TRACE_LIB:-$(dirname "$bin")/liblongnet-kernel-trace.so}
[[ -f $tracer ]] || die "no tracer at $tracer (built where the CUDA toolkit has CUPTI); set LONGNET_KERNEL_TRACE_LIB"
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
# The preload goes to the traced binary alone (a launcher in between would trace nothing).
LONGNET_KERNEL_TRACE=$work/trace.tsv LD_PRELOAD=$tracer \
  "$bin" --config "$work/config.json" --steps 2 --warmup 1
# Three steps ran: the last third of the device's records is the last step.
"$python" bench/kernel_gaps.py "$work/trace.tsv" --parts 3
