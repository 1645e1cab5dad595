#!/usr/bin/env python3
"""Median of the per-round added p99s in interleaved runs' summaries, and its ratio to `off`'s.

    bench/roundmedians.py bench/results/obs-*/summary.md

Reads the `per-round added p99` column that bench/pooled.py writes (one value per round, ms over the
direct upstream in the same round) and prints, per run and mode, each Sluice target's median of
those values and the ratio of that median to `off`'s. The pooled p99 of a run follows its worst
rounds; this says what a typical round looked like. A `*` (a segment with host steal) is read as the
value it marks. Standard library only.
"""
import statistics
import sys


def rounds(path):
    """{(mode, target): [per-round added p99 ms]} from one summary.md."""
    found = {}
    in_table = False
    for line in open(path, encoding="utf-8"):
        if not line.startswith("|"):
            in_table = False
            continue
        in_table = in_table or "per-round added p99" in line
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if in_table and len(cells) == 8 and cells[1].startswith("sluice ") and cells[7]:
            found[(cells[0], cells[1].removeprefix("sluice "))] = [float(v.rstrip("*")) for v in cells[7].split(" / ")]
    return found


def main():
    for path in sys.argv[1:]:
        found = rounds(path)
        for mode in ("nonstream", "stream"):
            off = found.get((mode, "off"))
            for (m, target), values in found.items():
                if m != mode or target == "off" or not off:
                    continue
                a, b = statistics.median(values), statistics.median(off)
                print(f"{path}: {mode} {target}/off median per-round added p99 {a:+.3f} / {b:+.3f} ms = {a / b:.2f}x")


if __name__ == "__main__":
    main()
