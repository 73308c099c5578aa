#!/usr/bin/env python3
"""Where a traced GPU run's time went: reads bench/kernel_trace.cpp's file and, over the last
of PARTS equal parts of the device's records (the last step of a run of PARTS equal steps),
prints the device's busy and idle time, kernel time by name, and the idle time by cause: the
host API call in progress while the device waited for its next launch (a synchronising copy,
an allocation, ...), "host" for gaps where the host ran no CUDA call (its own work), and
"launch" where the next launch was issued in time.

usage: kernel_gaps.py TRACE.tsv [--parts N] [--top N]
"""
import argparse
import bisect
import collections
import shutil
import subprocess


def demangle(names):
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout
    return dict(zip(names, out.splitlines()))


def short(name, width=90):
    # Drop template arguments and parameter lists: the function is what tells kernels apart.
    depth, kept = 0, []
    for ch in name:
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth -= 1
        elif depth == 0:
            kept.append(ch)
    s = "".join(kept).replace("void ", "").strip() or name
    return s[:width]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("--parts", type=int, default=3)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--min-gap-us", type=float, default=1.0)
    args = ap.parse_args()

    device, host, launch_of = [], [], {}
    with open(args.trace) as f:
        for row in f:
            kind, start, end, corr, what = row.rstrip("\n").split("\t", 4)
            rec = (int(start), int(end), int(corr), what, kind)
            if kind in "KCS":
                device.append(rec)
            else:
                host.append(rec)
                if kind == "R" or int(corr) not in launch_of:
                    launch_of[int(corr)] = rec
    if not device:
        raise SystemExit("no device records in " + args.trace)
    device.sort()
    host.sort()
    host_starts = [h[0] for h in host]
    longest_call = max((h[1] - h[0] for h in host), default=0)
    part = device[len(device) - len(device) // args.parts:]
    t0, t1 = part[0][0], max(r[1] for r in part)
    names = demangle(sorted({r[3] for r in part if r[4] == "K"}))

    by_name = collections.defaultdict(lambda: [0, 0])
    busy, idle = 0, collections.Counter()
    idle_before = collections.Counter()
    reach = t0
    for start, end, corr, what, kind in part:
        label = short(names.get(what, what)) if kind == "K" else {"C": "copy", "S": "memset"}[kind]
        gap = start - reach
        if gap > args.min_gap_us * 1e3:
            launch = launch_of.get(corr)
            cause = "launch"
            if launch is not None and launch[0] > reach:
                # The host issued this launch only after the device ran dry: what was it in?
                calls = []
                i = bisect.bisect_left(host_starts, launch[0]) - 1
                stop = max(-1, i - 5000)  # bounded walk back: calls started long before end
                while i > stop and host[i][0] > reach - longest_call:
                    h = host[i]
                    if h[4] == "R" and h[1] > reach and h[2] != corr:
                        calls.append(h)
                    i -= 1
                longest = max(calls, key=lambda h: min(h[1], launch[0]) - max(h[0], reach),
                              default=None)
                covered = (min(longest[1], launch[0]) - max(longest[0], reach)
                           if longest else 0)
                cause = longest[3] if covered > 0.3 * (launch[0] - reach) else "host"
            idle[cause] += gap
            idle_before[label] += gap
        busy += max(0, end - max(start, reach))
        reach = max(reach, end)
        by_name[label][0] += end - start
        by_name[label][1] += 1

    span = t1 - t0
    ms = 1e-6
    print(f"window: last 1/{args.parts} of {len(device)} device records ({len(part)}): "
          f"{span * ms:.2f} ms, busy {busy * ms:.2f} ms ({100 * busy / span:.1f}%), "
          f"idle {(span - busy) * ms:.2f} ms")
    print(f"\nidle by cause (gaps over {args.min_gap_us} us):")
    for cause, t in idle.most_common(args.top):
        print(f"  {t * ms:9.2f} ms  {cause}")
    print("\nidle before (the record that ended the gap):")
    for label, t in idle_before.most_common(15):
        print(f"  {t * ms:9.2f} ms  {label}")
    print("\ndevice time by name:")
    for label, (t, n) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"  {t * ms:9.2f} ms {n:6d}x  {label}")


if __name__ == "__main__":
    main()
