#!/usr/bin/env python3
"""Who used the CPU, every 200 ms: run beside a bench to see what else the machine was doing.

    bench/proc_sampler.py SECONDS OUT       e.g. bench/proc_sampler.py 75 /tmp/cpu.txt & bench/stalls.sh off 60

Pinned to CPU 1. Every 200 ms it writes one line to OUT: the wall-clock time (seconds since the
epoch), each CPU's /proc/stat ticks in the interval (user/nice/system/idle/iowait/irq/softirq/
steal, 10 ms each), and the six processes with the most CPU ticks in it (user + system, all
threads). A process that is not the bench's taking ten or more ticks of an interval is a neighbour
burst. Scanning /proc costs a few ms per sample on CPU 1. Standard library only.

What it found (docs/BENCHMARKS.md, session 23): RabbitMQ's Erlang VM (`beam.smp`) taking 14 ticks
of 20 in two intervals in a row, at the moment a streaming stall of 700 requests over 361 ms began.
"""
import os
import sys
import time


def snapshot():
    procs = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # the process ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        procs[(pid, name)] = int(fields[11]) + int(fields[12])  # utime + stime
    cpus = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3] != " ":
                fields = line.split()
                cpus[fields[0]] = [int(v) for v in fields[1:9]]
    return procs, cpus


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    seconds, path = float(sys.argv[1]), sys.argv[2]
    os.sched_setaffinity(0, {1})
    start = time.time()
    prev = snapshot()
    with open(path, "w") as out:
        while time.time() - start < seconds:
            time.sleep(0.2)
            cur = snapshot()
            top = sorted(
                ((ticks - prev[0].get(key, ticks), key[1]) for key, ticks in cur[0].items()), reverse=True
            )[:6]
            cpus = " ".join(
                f"{cpu}:" + "/".join(str(a - b) for a, b in zip(cur[1][cpu], prev[1][cpu])) for cpu in sorted(cur[1])
            )
            procs = " ".join(f"{name}={ticks}" for ticks, name in top if ticks > 0)
            out.write(f"{time.time():.2f} {cpus} | {procs}\n")
            out.flush()
            prev = cur


if __name__ == "__main__":
    main()
