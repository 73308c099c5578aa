#!/usr/bin/env bash
# Distributed training on one node (issue 7): longnet-bench-train on 1 process and under
# mpirun on P, for the 12-layer, 768-wide byte-level LongNetLM (grouped dilated attention
# w = 2048..32768, r = 1, 2, 4, 6, 12, bf16, batch 1). Run from the repository root:
#
#   LONGNET_BENCH_TRAIN=runs/bin/longnet-bench-train bash bench/scaling.sh [DATA]
#
# 1. Data parallel at N tokens per rank (DP_SEQ, default 131072): tokens/s on 1 rank and on
#    each P of RANKS (default "2"; "2 4 8" on an 8-GPU node), the efficiency
#    tokens/s(P) / (P x tokens/s(1)), and the gradient bytes sent per step, for each
#    compression in COMPRESSIONS ("none topk powersgd").
# 2. Sequence parallel: the longest sequence of SP_SEQS (default 1M, 1.5M, 2M, 3M and 4M
#    tokens: the double of each up to 2M is there too, so "twice the 1-GPU maximum" can be
#    read off; each a multiple of 32768 x P for P = 2, so no segment crosses a slice) whose
#    training step fits, on 1 rank and on each P, with recompute and ffn_chunk 131072.
#
# Environment: DEVICE (cuda), STEPS (3), WARMUP (1), MPIRUN (mpirun), LAYERS (12), D_MODEL
# (768), HEADS (12), D_FF (3072), SEGMENTS ("2048, 4096, 8192, 16384, 32768"), RATES
# ("1, 2, 4, 6, 12"): the last ones shrink the model for a dry run on the CPU.
# Prints each run's JSON line, then a summary.
set -euo pipefail

die() {
  echo "scaling.sh: $*" >&2
  exit 2
}

bin=${LONGNET_BENCH_TRAIN:-}
[[ -n $bin && -x $bin ]] || die "set LONGNET_BENCH_TRAIN to a longnet-bench-train binary"
data=${1:-data/kjv.txt}
[[ -f $data ]] || die "data file $data not found (a byte file such as data/kjv.txt)"
data=$(realpath "$data")
device=${DEVICE:-cuda}
read -ra rank_counts <<<"${RANKS:-2}"
steps=${STEPS:-3}
warmup=${WARMUP:-1}
read -ra compressions <<<"${COMPRESSIONS:-none topk powersgd}"
read -ra sp_seqs <<<"${SP_SEQS:-1048576 1572864 2097152 3145728 4194304}"
mpirun=(${MPIRUN:-mpirun} --oversubscribe -x NCCL_NVLS_ENABLE=0)
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The data (training and, unused, validation windows: both read the whole file) must hold
# the longest sequence: a shorter file (the KJV's 4.4 MB against 4M tokens) is used several
# times over.
longest=$(printf '%s\n' "${sp_seqs[@]}" "${DP_SEQ:-131072}" | sort -n | tail -n 1)
size=$(stat -c %s "$data")
if ((size <= longest + 1)); then
  repeats=$(((longest + 1) / size + 1))
  for ((i = 0; i < repeats; ++i)); do cat "$data"; done >"$work/data.txt"
  echo "scaling.sh: $data holds $size bytes, less than the longest sequence needs; using it" \
    "$repeats times over" >&2
  data=$work/data.txt
fi

# config N DIST_JSON EXTRA_TRAIN_JSON -> path of a config file
config() {
  local file=$work/config-$RANDOM.json
  cat >"$file" <<EOF
{
  "model": {"vocab_size": 256, "d_model": ${D_MODEL:-768}, "n_heads": ${HEADS:-12},
            "n_layers": ${LAYERS:-12}, "d_ff": ${D_FF:-3072},
            "segment_lengths": [${SEGMENTS:-2048, 4096, 8192, 16384, 32768}],
            "dilation_rates": [${RATES:-1, 2, 4, 6, 12}],
            "attention": "dilated", "mode": "grouped", "dropout": 0.0, "pos": "rope"},
  "data": {"format": "bytes", "train_path": "$data", "val_path": "$data", "seq_len": $1,
           "batch_size": 1},
  "optim": {"lr": 0.0003, "schedule": "constant", "grad_clip": 1.0},
  "train": {"steps": $((warmup + steps + 1)), "out_dir": "$work/out", "eval_every": 0,
            "ckpt_every": 0, "device": "$device", "precision": "bf16" $3},
  "dist": $2
}
EOF
  echo "$file"
}

# run NAME RANKS CONFIG: the JSON line in $work/NAME.json, or nothing when it failed
run() {
  local name=$1 n=$2 file=$3
  local launcher=()
  [[ $n -gt 1 ]] && launcher=("${mpirun[@]}" -np "$n")
  echo "== $name" >&2
  if "${launcher[@]}" "$bin" --config "$file" --steps "$steps" --warmup "$warmup" \
    >"$work/$name.out" 2>"$work/$name.err"; then
    tail -n 1 "$work/$name.out" | tee "$work/$name.json"
  else
    echo "   failed: $(grep -m1 -iE 'memory|error' "$work/$name.err" || tail -n 1 "$work/$name.err")" >&2
  fi
}

dp_seq=${DP_SEQ:-131072}
run dp-1 1 "$(config "$dp_seq" '{}' '')"
for p in "${rank_counts[@]}"; do
  for c in "${compressions[@]}"; do
    run "dp-$p-$c" "$p" "$(config "$dp_seq" "{\"compression\": \"$c\"}" '')"
  done
done
extra=', "recompute": true, "ffn_chunk": 131072'
for n in "${sp_seqs[@]}"; do
  run "sp-1-$n" 1 "$(config "$n" '{}' "$extra")"
  for p in "${rank_counts[@]}"; do
    run "sp-$p-$n" "$p" "$(config "$n" '{"sequence_parallel": true}' "$extra")"
  done
done

python3 - "$work" "${rank_counts[*]}" "$dp_seq" "${compressions[*]}" "${sp_seqs[*]}" <<'EOF'
import json, os, sys

work, rank_counts, dp_seq = sys.argv[1], [int(p) for p in sys.argv[2].split()], sys.argv[3]
compressions, sp_seqs = sys.argv[4].split(), [int(n) for n in sys.argv[5].split()]


def load(name):
    path = os.path.join(work, name + ".json")
    return json.load(open(path)) if os.path.exists(path) else None


one = load("dp-1")
print(f"\ndata parallel, {dp_seq} tokens per rank, on {one['device'] if one else '?'}")
print(f"{'ranks':>5} {'compression':>11} {'tok/s':>10} {'step ms':>9} {'efficiency':>10} "
      f"{'MB sent/step':>12} {'peak GiB':>8}")
if one:
    print(f"{1:>5} {'-':>11} {one['tokens_per_s']:>10.0f} {one['step_ms_median']:>9.1f} "
          f"{'1.00':>10} {'0':>12} {one.get('peak_gpu_bytes', 0) / 2**30:>8.1f}")
for ranks in rank_counts:
    for c in compressions:
        r = load(f"dp-{ranks}-{c}")
        if not r:
            print(f"{ranks:>5} {c:>11} failed")
            continue
        eff = f"{r['tokens_per_s'] / (ranks * one['tokens_per_s']):.3f}" if one else "-"
        print(f"{ranks:>5} {c:>11} {r['tokens_per_s']:>10.0f} {r['step_ms_median']:>9.1f} "
              f"{eff:>10} {r.get('bytes_sent_per_step', 0) / 2**20:>12.1f} "
              f"{r.get('peak_gpu_bytes', 0) / 2**30:>8.1f}")

print("\nsequence parallel (recompute, ffn_chunk 131072): longest sequence that trained")
for n_ranks in [1] + rank_counts:
    fits = [n for n in sp_seqs if load(f"sp-{n_ranks}-{n}")]
    best = max(fits) if fits else None
    detail = ""
    if best:
        r = load(f"sp-{n_ranks}-{best}")
        detail = (f" ({r['step_ms_median'] / 1e3:.2f} s per step, "
                  f"{r.get('peak_gpu_bytes', 0) / 2**30:.1f} GiB peak per rank)")
    print(f"{n_ranks} rank(s): {best if best else 'none of ' + str(sp_seqs)}{detail}")
EOF
