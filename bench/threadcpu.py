#!/usr/bin/env python3
"""CPU time of a process by thread, from /proc (Linux), at nanosecond resolution.

    threadcpu.py snapshot PID > before.json     # {thread name: cumulative ns on CPU}
    threadcpu.py diff before.json after.json N  # CPU microseconds per request (N requests) by thread;
                                                #   "NAME (minflt)", "NAME (preempted)", "NAME (slept)":
                                                #   per 1,000 requests
    threadcpu.py snapshot-irq > before.json     # machine-wide interrupts by kind and CPU, and each CPU's
                                                #   steal and busy time; diff as above ("... (ms)": totals)

Latency percentiles on a shared 2-core machine move by more than a few microseconds from run to run;
CPU time per request is steadier and says where the time goes (request threads vs background threads).
Thread names come from /proc/PID/task/TID/comm; threads with the same name are summed (Tokio workers
are all `tokio-runtime-w`). schedstat's first field is the time spent on the CPU in ns, its second the time spent runnable but
waiting for a CPU (reported as "NAME (waiting)", not counted in the total).
"""
import json
import os
import sys
import time
from collections import defaultdict


def snapshot(pid):
    by_name = defaultdict(int)
    task_dir = f"/proc/{pid}/task"
    for tid in os.listdir(task_dir):
        try:
            with open(f"{task_dir}/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"{task_dir}/{tid}/schedstat") as f:
                run_ns, wait_ns = (int(x) for x in f.read().split()[:2])
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended between listing and reading
        by_name[name] += run_ns
        # Runnable but waiting for the core: time a request thread lost to other threads.
        by_name[f"{name} (waiting)"] += wait_ns
        try:
            with open(f"{task_dir}/{tid}/stat") as f:
                # Fields after the parenthesised name; minflt is the 10th field of the line.
                minflt = int(f.read().rsplit(")", 1)[1].split()[7])
            with open(f"{task_dir}/{tid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except (FileNotFoundError, ProcessLookupError):
            continue
        # Counts, reported per 1,000 requests: page faults served without I/O (first touches of new
        # memory, or memory the allocator gave back and touched again), and times the thread was
        # preempted (involuntary context switches).
        by_name[f"{name} (minflt)"] += minflt
        by_name[f"{name} (preempted)"] += int(status.get("nonvoluntary_ctxt_switches", "0"))
        # Times the thread blocked (voluntary context switches): for a Tokio worker, how often it found
        # nothing to run and slept; fewer per request means a busier core.
        by_name[f"{name} (slept)"] += int(status.get("voluntary_ctxt_switches", "0"))
    return dict(by_name)


def diff(before, after, requests):
    # A thread that ended between the snapshots loses its time; one that started counts from zero.
    out = {}
    for name in sorted(set(before) | set(after)):
        n = after.get(name, 0) - before.get(name, 0)
        if name.endswith("(ms)"):
            out[name] = n  # a total over the interval, not per request
        elif n > 0 and name.endswith(("(minflt)", "(preempted)", "(slept)", "(irq)")):
            out[name] = round(n * 1000 / requests, 1)  # per 1,000 requests
        elif n > 0:
            out[name] = round(n / 1000 / requests, 2)  # ns to µs per request
    out["total"] = round(sum(v for k, v in out.items() if not k.endswith(")")), 2)
    return out


def snapshot_irq():
    """Interrupts by kind and CPU since boot, machine-wide (/proc/interrupts): "RES cpu0 (irq)"...
    Rescheduling (RES) and function-call (CAL) IPIs and TLB shootdowns each cost a VM exit here."""
    out = {}
    with open("/proc/interrupts") as f:
        cpus = f.readline().split()
        for line in f:
            label, _, rest = line.partition(":")
            fields = rest.split()
            counts = [int(x) for x in fields[: len(cpus)] if x.isdigit()]
            name = label.strip() if not label.strip().isdigit() else (fields[-1] if fields else label.strip())
            for cpu, n in enumerate(counts):
                out[f"{name} cpu{cpu} (irq)"] = n
    # Steal time (/proc/stat, in clock ticks of 10 ms): time the hypervisor ran something else while
    # this vCPU had work. On the bench's VM the vCPUs stop for tens of ms now and then when both are
    # busy (a busy loop's clock gaps come with a rise of the steal counter, bench/host_steal.py): the
    # guest cannot prevent it, though the busier it is the more often it happens. bench/pooled.py
    # marks the segments with steal.
    # Busy time (user, nice, system, irq, softirq) per CPU and the clock, so that a segment's load on
    # each core shows: a load generator's core near 100 % would time its own requests late.
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        for line in f:
            fields = line.split()
            if fields[0].startswith("cpu") and fields[0] != "cpu":
                ticks = [int(x) for x in fields[1:9]]
                out[f"stolen {fields[0]} (ms)"] = round(ticks[7] * tick_ms)
                out[f"busy {fields[0]} (ms)"] = round((ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]) * tick_ms)
    out["clock (ms)"] = round(time.monotonic() * 1000)
    return out


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "snapshot":
        json.dump(snapshot(sys.argv[2]), sys.stdout)
    elif len(sys.argv) == 2 and sys.argv[1] == "snapshot-irq":
        json.dump(snapshot_irq(), sys.stdout)
    elif len(sys.argv) == 5 and sys.argv[1] == "diff":
        with open(sys.argv[2]) as f:
            before = json.load(f)
        with open(sys.argv[3]) as f:
            after = json.load(f)
        json.dump(diff(before, after, max(int(sys.argv[4]), 1)), sys.stdout)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
