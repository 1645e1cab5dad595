#!/usr/bin/env python3
"""Does the hypervisor stop this VM's vCPUs? Busy loops that read the clock and record its gaps.

    bench/host_steal.py SECONDS CPU[,CPU...]       e.g. bench/host_steal.py 40 0   then   40 0,1

One process per CPU named, pinned to it, spins for SECONDS reading the monotonic clock and records
every gap of 1 ms or more (time the loop did not run: preempted by something in the guest, an
interrupt, or the hypervisor running another guest on the physical core). Prints per CPU how many
gaps of >= 1 / 5 / 10 ms, the longest, the steal time /proc/stat counted for that CPU meanwhile, and
the gaps of >= 10 ms that started within 5 ms of one on another CPU (the whole VM stopped at once).
Run it with nothing else busy. Standard library only.

Why (docs/BENCHMARKS.md, session 22): the latency benches put Sluice on core 0 and the load generator
and upstream on core 1; on the bench's VM, with both vCPUs busy, they stopped for up to 41 ms now
and then while the steal counter rose, and with one busy they did not. Such a stop delays
every request in flight, whatever the target, and made single 5 s segments of any target tens of ms
slow at p99; bench/pooled.py reports ratios with and without the segments that saw steal.

Mind (session 23): these loops are ordinary threads, so a gap is also any time another process of
the guest had the CPU (RabbitMQ's Erlang VM, the kernel's kdamond). A real-time watcher on the same
CPUs (examples/host_stops.rs) saw stops of at most 9.3 ms while these loops had gaps of up to 74 ms:
the long gaps were the guest's own processes, and the host's stops are the short ones. The benches
now keep the other processes off (bench/cgroup.sh) and record the host's stops (host_stops.rs).
"""
import os
import sys
import time
from multiprocessing import Process, Queue

TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def steal_ms():
    """{cpu index: steal ms since boot}."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            fields = line.split()
            if fields[0].startswith("cpu") and fields[0] != "cpu":
                out[int(fields[0][3:])] = int(fields[8]) * TICK_MS
    return out


def spin(cpu, seconds, start, results):
    os.sched_setaffinity(0, {cpu})
    gaps = []
    clock = time.monotonic
    prev = clock()
    end = start + seconds
    while prev < end:
        now = clock()
        if now - prev >= 0.001:
            gaps.append((prev - start, (now - prev) * 1000))
        prev = now
    results.put((cpu, gaps))


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    seconds = float(sys.argv[1])
    cpus = [int(c) for c in sys.argv[2].split(",")]
    results = Queue()
    before = steal_ms()
    start = time.monotonic() + 0.2  # every process starts its window together
    procs = [Process(target=spin, args=(c, seconds, start, results)) for c in cpus]
    for p in procs:
        p.start()
    gaps = dict(results.get() for _ in procs)
    for p in procs:
        p.join()
    after = steal_ms()
    for cpu in cpus:
        lengths = [g for _, g in gaps[cpu]]
        print(
            f"cpu{cpu}: gaps >= 1 ms {len(lengths)}, >= 5 ms {sum(g >= 5 for g in lengths)}, "
            f">= 10 ms {sum(g >= 10 for g in lengths)}, longest {max(lengths, default=0):.1f} ms; "
            f"steal {after[cpu] - before[cpu]:.0f} ms"
        )
    if len(cpus) > 1:
        long = {c: [(t, g) for t, g in gaps[c] if g >= 10] for c in cpus}
        together = [
            (t, g, c)
            for c in cpus
            for t, g in long[c]
            if any(abs(t - t2) * 1000 < 5 for c2 in cpus if c2 != c for t2, _ in long[c2])
        ]
        print(f"gaps >= 10 ms that began within 5 ms of one on another CPU: {len(together)}")
        for t, g, c in sorted(together):
            print(f"  {t:7.3f} s  cpu{c}  {g:.1f} ms")


if __name__ == "__main__":
    main()
