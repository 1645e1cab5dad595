#!/usr/bin/env python3
"""Several interleaved runs of the same modes pooled into one: their rounds numbered on, one summary.

    bench/poolruns.py OUT RUN_DIR [RUN_DIR ...]

Each RUN_DIR is a finished `INTERLEAVE=1 bench/modes.sh` run (bench/results/obs-*, with its `lat/`
per-request files, which stay on the machine that ran it). OUT (a new directory) gets links to every
run's segment files under new round numbers (run 1's rounds first), the host-stop records of all runs
(wall-clock times, so they concatenate), and `bench/pooled.py`'s summary over all the rounds:
OUT/summary.md. The targets pooled are those every run has (direct and `off` at least; a run's
other modes are left out, and said so); the rate and duration are the runs' own, not checked.

Why: one run's pooled p99 follows its few worst rounds, and its bootstrap interval over 12 rounds is
wide; several runs pooled give the same figure over four times the rounds, with an interval that
says how much the runs agree. Standard library only.
"""
import os
import re
import subprocess
import sys

SEGMENT = re.compile(r"^r(\d+)-(.*)$")


def rounds(run_dir):
    """The round numbers of a run, from its per-request files."""
    found = set()
    for name in os.listdir(os.path.join(run_dir, "lat")):
        m = SEGMENT.match(name)
        if m:
            found.add(int(m.group(1)))
    return sorted(found)


def targets(run_dir):
    """direct and the run's modes (the targets of its per-request files)."""
    names = set()
    for name in os.listdir(os.path.join(run_dir, "lat")):
        m = re.match(r"^r\d+-(?:nonstream|stream)-([^.]+)\.txt$", name)
        if m:
            names.add(m.group(1))
    return names


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, runs = sys.argv[1], sys.argv[2:]
    for run in runs:
        if not os.path.isdir(os.path.join(run, "lat")):
            sys.exit(f"{run}: no lat/ (per-request files stay on the machine that made the run)")
    known = set.intersection(*(targets(run) for run in runs))
    if "direct" not in known or "off" not in known:
        sys.exit("the runs do not all have direct and off segments in lat/")
    for run in runs:
        left_out = targets(run) - known
        if left_out:
            print(f"{run}: left out {' '.join(sorted(left_out))} (not in every run)", file=sys.stderr)
    os.makedirs(os.path.join(out, "lat"))
    offset = 0
    stops = {}
    for run in runs:
        run = os.path.abspath(run)
        numbers = rounds(run)
        renumber = {n: offset + i + 1 for i, n in enumerate(numbers)}
        for sub in ("", "lat"):
            for name in os.listdir(os.path.join(run, sub)):
                m = SEGMENT.match(name)
                if m and int(m.group(1)) in renumber:
                    new = f"r{renumber[int(m.group(1))]}-{m.group(2)}"
                    os.symlink(os.path.join(run, sub, name), os.path.join(out, sub, new))
        for name in os.listdir(run):
            if name.startswith("stops-cpu") and name.endswith(".txt"):
                with open(os.path.join(run, name), encoding="utf-8") as f:
                    stops.setdefault(name, []).append(f.read())
        offset += len(numbers)
    for name, parts in stops.items():
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            f.write("".join(parts))
    modes = sorted(known - {"direct", "off"})
    order = ["direct", "off", *modes]
    with open(os.path.join(out, "layout.txt"), "w", encoding="utf-8") as f:
        f.write(f"pooled runs: {' '.join(runs)}\nrounds: {offset}\n")
    subprocess.run(
        [sys.executable, os.path.join(os.path.dirname(__file__), "pooled.py"), out,
         os.path.join(out, "lat"), str(offset), " ".join(order)],
        check=True,
    )


if __name__ == "__main__":
    main()
