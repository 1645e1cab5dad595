#!/usr/bin/env python3
"""Reads `perf sched timehist --state` output (bench/schedprobe.sh) and reports:

- the Tokio worker's waits for the core: after a wake-up (`sch delay`) or, when it was switched out
  runnable (state R, preempted), the time until it ran again;
- which other threads ran during those waits (total, count, longest piece);
- every thread's run lengths (count, p50, p99, max, total), to find the long bursts.

    python3 bench/schedwait.py timehist.txt
"""
import collections
import re
import sys

LINE = re.compile(r"\s*([\d.]+)\s+\[(\d+)\]\s+(.+?)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\S+)\s*$")


def thread(name):
    return re.sub(r"\[\d+(/\d+)?\]", "", name).strip()


def pct(values, q):
    return values[min(len(values) - 1, int(len(values) * q))]


def main(path):
    rows = []  # [start s, end s, thread, wait s, sch delay s, state at switch-out]
    for line in open(path):
        m = LINE.match(line)
        if not m:
            continue
        t, _cpu, name, wait, sch, run, state = m.groups()
        t, run = float(t), float(run) / 1000
        rows.append([t - run, t, thread(name), float(wait) / 1000, float(sch) / 1000, state])
    rows.sort()
    waits = []
    blame, longest, count = collections.Counter(), collections.defaultdict(float), collections.Counter()
    previous_state = None
    for r in rows:
        if not r[2].startswith("tokio-rt-worker"):
            continue
        wait = r[3] if previous_state == "R" else r[4]
        waits.append(wait * 1e6)
        start, end = r[0] - wait, r[0]
        for other in rows:
            if other[1] < start:
                continue
            if other[0] > end:
                break
            overlap = min(other[1], end) - max(other[0], start)
            if overlap > 0 and not other[2].startswith("tokio-rt-worker"):
                blame[other[2]] += overlap * 1e6
                count[other[2]] += 1
                longest[other[2]] = max(longest[other[2]], overlap * 1e6)
        previous_state = r[5]
    if not waits:
        sys.exit("no tokio-rt-worker in the trace")
    waits.sort()
    print(f"worker runs {len(waits)}; its waits for the core (µs): p50 {pct(waits, .5):.1f} "
          f"p90 {pct(waits, .9):.1f} p99 {pct(waits, .99):.1f} p99.9 {pct(waits, .999):.1f} "
          f"max {waits[-1]:.1f} total {sum(waits):.0f}")
    print("who ran while the worker waited: thread, total µs, pieces, longest µs")
    for name, total in blame.most_common(10):
        print(f"  {name:32s} {total:9.0f} {count[name]:6d} {longest[name]:8.1f}")
    runs = collections.defaultdict(list)
    for r in rows:
        runs[r[2]].append((r[1] - r[0]) * 1e6)
    print("run lengths (µs): thread, runs, p50, p99, max, total")
    for name, v in sorted(runs.items(), key=lambda kv: -sum(kv[1]))[:12]:
        v.sort()
        print(f"  {name:32s} {len(v):6d} {pct(v, .5):7.1f} {pct(v, .99):7.1f} {v[-1]:8.1f} {sum(v):9.0f}")


if __name__ == "__main__":
    main(sys.argv[1])
