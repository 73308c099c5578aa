"""GPU milliseconds per kernel name from an Nsight Compute csv of gpu__time_duration.sum.

usage: kernel_times.py KERNELS_CSV [STEPS]

Sums every launch's duration per kernel (template arguments kept, call arguments dropped),
divides by STEPS (1) and prints the total and the kernels by time, with launches per step.
"""
import collections
import csv
import re
import sys


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    steps = float(sys.argv[2]) if len(sys.argv) == 3 else 1.0
    with open(sys.argv[1]) as f:
        lines = [line for line in f if line.startswith('"')]
    total = collections.defaultdict(float)
    count = collections.Counter()
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = re.sub(r"\(.*", "", row["Kernel Name"])[:100]
        total[name] += float(row["Metric Value"].replace(",", "")) * 1e-6  # ns -> ms
        count[name] += 1
    if not total:
        sys.exit(f"kernel_times.py: no gpu__time_duration.sum rows in {sys.argv[1]}")
    print(f"total {sum(total.values()) / steps:.2f} ms of kernels per step")
    for name, ms in sorted(total.items(), key=lambda kv: -kv[1]):
        print(f"{ms / steps:9.3f} ms {count[name] / steps:6.0f}x  {name}")


if __name__ == "__main__":
    main()
