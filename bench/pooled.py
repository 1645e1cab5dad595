#!/usr/bin/env python3
"""Summary of an interleaved modes.sh run (INTERLEAVE=1): latencies pooled per target over the rounds.

    pooled.py OUT LATDIR RUNS "direct off on ..."

LATDIR holds one file per segment, `r<round>-<nonstream|stream>-<target>.txt`, one latency in seconds per
line (oha's latency-corrected duration of every request). For each target: p50 and p99 of all its
requests; added = target - direct (pooled, same rounds); the ratio of each mode's added latency to
`off`'s; and a 90 % bootstrap interval of that ratio, resampling whole rounds (a round's segments ran
minutes apart from other rounds' but seconds apart from each other, so rounds are the independent
unit). Per-round values are listed too. CPU µs per request by thread comes from the segments'
`*.cpu.json` files (bench/threadcpu.py), as in modes.sh's own summary.

Host steal: a segment during which the hypervisor took either vCPU away for STOLEN_MS or more
(/proc/stat's steal time, recorded per segment by threadcpu.py snapshot-irq) is marked `*` in the
per-round column, and each ratio is also given over the segments without steal ("unstolen"): the
bench's VM stops its vCPUs for tens of ms at a time now and then when both are busy, which delays
every request in flight by as much, whatever the target. Both figures are printed; the steal each
target's segments saw is tabled, so a mode whose own CPU use drew more steal shows.

Host stops: when the run has examples/host_stops.rs's records (OUT/stops-cpu*.txt: one line per time
a real-time watcher on that CPU woke 1 ms or more late, so the CPU ran nothing) and each segment's
request intervals (LATDIR/r*.times.txt, wall clock), each ratio is given a third time over the
requests no stop touched ("clear of host stops"). A stop of L ms is widened to a window from
STOP_PAD (10 ms) before it to max(STOP_PAD, DRAIN x L) after it: the queue that built up behind it
drains afterwards, more slowly on a busier core (about L x rho / (1 - rho): 5.7 L at 85 % busy), so
DRAIN is generous for every target alike. A request meeting a window is left out, whatever its
target; how many each target lost is printed next to the ratio.

Standard library only: a pooled quantile of sorted segments is found by bisection on the value
(count of samples <= v summed over segments), so resampling never re-sorts.
"""
import bisect
import json
import os
import random
import statistics
import sys

QUANTILES = (0.50, 0.99)
BOOTSTRAP = 1000
# Steal (ms, on either CPU) from which a segment counts as stolen: one clock tick of /proc/stat.
STOLEN_MS = 10
# Windows around host stops (see above), in seconds.
STOP_PAD = 0.010
DRAIN = 10
# oha's clock starts this long at most after the segment's wall-clock stamp (modes.sh: `date`, then
# exec of taskset and oha, then oha's set-up; bench/oha_clock.py measures it: 25-37 ms with a build
# busy on both cores), so a request may have run up to this much later than its recorded interval
# says: its end is taken as that much later.
OHA_SLACK = 0.050


def load(latdir, run, mode, target):
    with open(f"{latdir}/r{run}-{mode}-{target}.txt") as f:
        return sorted(float(x) * 1000 for x in f if x.strip())


def stop_windows(out):
    """(merged windows [(from, to)] in wall-clock seconds, stops [(start, ms)]), or None without records."""
    names = sorted(n for n in os.listdir(out) if n.startswith("stops-cpu") and n.endswith(".txt"))
    if not names:
        return None
    stops = {}
    for name in names:
        with open(f"{out}/{name}") as f:
            stops[name[len("stops-"):-len(".txt")]] = [tuple(map(float, line.split())) for line in f if line.strip()]
    windows = sorted(
        (t - STOP_PAD, t + ms / 1000 + max(STOP_PAD, DRAIN * ms / 1000)) for per in stops.values() for t, ms in per
    )
    merged = []
    for a, b in windows:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return merged, stops


def load_clear(latdir, run, mode, target, windows):
    """(sorted latencies in ms of the segment's requests that no stop window touched, requests in all)."""
    with open(f"{latdir}/r{run}-{mode}-{target}.txt") as f:
        durations = [float(x) * 1000 for x in f if x.strip()]
    with open(f"{latdir}/r{run}-{mode}-{target}.times.txt") as f:
        times = [tuple(map(float, line.split())) for line in f if line.strip()]
    if len(times) != len(durations):
        sys.exit(f"r{run}-{mode}-{target}: {len(times)} intervals for {len(durations)} latencies")
    starts = [w[0] for w in windows]
    kept = []
    for (start, end), d in zip(times, durations):
        # Windows are sorted and disjoint: only the last one to open before the request's (late) end
        # can reach back to its start.
        i = bisect.bisect_right(starts, end + OHA_SLACK)
        if not (i and windows[i - 1][1] >= start):
            kept.append(d)
    return sorted(kept), len(durations)


def stolen_ms(out, run, mode, target):
    """Steal time per CPU during a segment, or None for runs recorded before it was."""
    try:
        with open(f"{out}/r{run}-{mode}-{target}.irq.json") as f:
            irq = json.load(f)
    except FileNotFoundError:
        return None
    cpus = [v for k, v in sorted(irq.items()) if k.startswith("stolen ")]
    return cpus or None


def busy_percent(out, rounds, mode, target):
    """Median over segments of each CPU's busy share, "cpu0 / cpu1", or "" when not recorded."""
    shares = {}
    for r in rounds:
        with open(f"{out}/r{r}-{mode}-{target}.irq.json") as f:
            irq = json.load(f)
        clock = irq.get("clock (ms)")
        for k, v in irq.items():
            if k.startswith("busy ") and clock:
                shares.setdefault(k.split()[1], []).append(100 * v / clock)
    return " / ".join(f"{statistics.median(v):.0f} %" for _, v in sorted(shares.items()))


def quantile(segments, q):
    """The q-quantile (lower) of the union of sorted lists, to 0.1 µs."""
    segments = [s for s in segments if s]  # a segment may lose every request to host stops
    total = sum(len(s) for s in segments)
    rank = max(1, int(q * total + 0.999999))  # samples that must be <= the answer
    lo = min(s[0] for s in segments)
    hi = max(s[-1] for s in segments)
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2
        if sum(bisect.bisect_right(s, mid) for s in segments) >= rank:
            hi = mid
        else:
            lo = mid
    return hi


def main():
    out, latdir, runs, targets = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split()
    modes = [t for t in targets if t != "direct"]
    rounds = list(range(1, runs + 1))
    lines = [
        "| mode | target | requests | pooled p50 ms | pooled p99 ms | added p50 | added p99 | per-round added p99 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    steal_lines = []
    stops = stop_windows(out)
    if stops and not os.path.exists(f"{latdir}/r1-nonstream-direct.times.txt"):
        stops = None
    for mode in ("nonstream", "stream"):
        lat = {t: {r: load(latdir, r, mode, t) for r in rounds} for t in targets}
        steal = {t: {r: stolen_ms(out, r, mode, t) for r in rounds} for t in targets}
        has_steal = all(v is not None for per in steal.values() for v in per.values())
        kept = {t: {r for r in rounds if not has_steal or max(steal[t][r]) < STOLEN_MS} for t in targets}

        def added(rs, t, q, lat=lat):
            return quantile([lat[t][r] for r in rs], q) - quantile([lat["direct"][r] for r in rs], q)

        if stops:
            clear, lost = {}, {}
            for t in targets:
                segs = {r: load_clear(latdir, r, mode, t, stops[0]) for r in rounds}
                clear[t] = {r: kept for r, (kept, _) in segs.items()}
                lost[t] = 1 - sum(len(k) for k in clear[t].values()) / sum(n for _, n in segs.values())

        def added_unstolen(rs, t, q):
            mine = [lat[t][r] for r in rs if r in kept[t]]
            base = [lat["direct"][r] for r in rs if r in kept["direct"]]
            return quantile(mine, q) - quantile(base, q) if mine and base else None

        if has_steal:
            for t in targets:
                per_cpu = [sum(steal[t][r][c] for r in rounds) for c in range(len(steal[t][rounds[0]]))]
                steal_lines.append(
                    f"| {mode} | {t} | {len(rounds) - len(kept[t])} of {len(rounds)} | "
                    + " / ".join(str(ms) for ms in per_cpu) + f" | {busy_percent(out, rounds, mode, t)} |"
                )

        for t in targets:
            p = [quantile(list(lat[t].values()), q) for q in QUANTILES]
            n = sum(len(v) for v in lat[t].values())
            if t == "direct":
                lines.append(f"| {mode} | direct | {n} | {p[0]:.3f} | {p[1]:.3f} | | | |")
                continue
            per_round = " / ".join(
                f"{added([r], t, 0.99):+.3f}{'' if r in kept[t] else '*'}" for r in rounds
            )
            lines.append(
                f"| {mode} | sluice {t} | {n} | {p[0]:.3f} | {p[1]:.3f} | {added(rounds, t, 0.50):+.3f} | "
                f"{added(rounds, t, 0.99):+.3f} | {per_round} |"
            )
        rng = random.Random(1)
        samples = [[rng.choice(rounds) for _ in rounds] for _ in range(BOOTSTRAP)]
        for t in modes:
            if t == "off":
                continue
            for q in QUANTILES:
                ratio = added(rounds, t, q) / added(rounds, "off", q)
                boot = sorted(added(rs, t, q) / added(rs, "off", q) for rs in samples)
                lo, hi = boot[int(0.05 * BOOTSTRAP)], boot[int(0.95 * BOOTSTRAP) - 1]
                diff = added(rounds, t, q) - added(rounds, "off", q)
                verdicts.append(
                    f"- {mode}: added latency {t}/off at p{round(q * 100)} = {ratio:.2f}x "
                    f"(90 % bootstrap over rounds {lo:.2f}x - {hi:.2f}x); {t} - off = {diff:+.3f} ms"
                )
                if has_steal:
                    mine, off = added_unstolen(rounds, t, q), added_unstolen(rounds, "off", q)
                    boot = sorted(
                        a / b
                        for a, b in ((added_unstolen(rs, t, q), added_unstolen(rs, "off", q)) for rs in samples)
                        if a is not None and b is not None
                    )
                    if mine is not None and off is not None and boot:
                        lo, hi = boot[int(0.05 * len(boot))], boot[int(0.95 * len(boot)) - 1]
                        verdicts.append(
                            f"  - unstolen segments only ({len(kept[t])} {t}, {len(kept['off'])} off, "
                            f"{len(kept['direct'])} direct): {mine / off:.2f}x ({lo:.2f}x - {hi:.2f}x); "
                            f"{t} - off = {mine - off:+.3f} ms"
                        )
                if stops:
                    mine, off = added(rounds, t, q, clear), added(rounds, "off", q, clear)
                    boot = sorted(added(rs, t, q, clear) / added(rs, "off", q, clear) for rs in samples)
                    lo, hi = boot[int(0.05 * BOOTSTRAP)], boot[int(0.95 * BOOTSTRAP) - 1]
                    verdicts.append(
                        f"  - requests clear of host stops (left out: {t} {100 * lost[t]:.1f} %, off "
                        f"{100 * lost['off']:.1f} %, direct {100 * lost['direct']:.1f} %): {mine / off:.2f}x "
                        f"({lo:.2f}x - {hi:.2f}x); {t} - off = {mine - off:+.3f} ms; added p{round(q * 100)} "
                        f"{t} {mine:+.3f}, off {off:+.3f} ms"
                    )
    text = "\n".join(lines) + "\n\n" + "\n".join(verdicts)
    if stops:
        windows, per_cpu = stops
        text += "\n\nHost stops seen (examples/host_stops.rs, late wake-ups of >= 1 ms): " + "; ".join(
            f"{cpu} {len(v)} (>= 5 ms {sum(ms >= 5 for _, ms in v)}, >= 10 ms {sum(ms >= 10 for _, ms in v)}, "
            f"longest {max((ms for _, ms in v), default=0):.1f} ms, {sum(ms for _, ms in v):.0f} ms in all)"
            for cpu, v in sorted(per_cpu.items())
        ) + f"; windows left out {sum(b - a for a, b in windows):.1f} s in all (STOP_PAD {STOP_PAD * 1000:.0f} ms, DRAIN {DRAIN}x)."
    if steal_lines:
        text += (
            f"\n\n| mode | target | segments with steal >= {STOLEN_MS} ms | steal ms cpu0 / cpu1 (all segments) | busy cpu0 / cpu1 (median) |\n"
            "|---|---|---|---|---|\n" + "\n".join(steal_lines)
        )
    cpu = [
        "| mode | target | CPU µs/request (median of segments) | request threads | background threads | worker waiting for the core | worker minor faults / 1k requests | worker preempted / 1k requests |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode in ("nonstream", "stream"):
        for t in modes:
            segs = [json.load(open(f"{out}/r{r}-{mode}-{t}.cpu.json")) for r in rounds]
            total = [c["total"] for c in segs]
            workers = [
                sum(v for k, v in c.items() if (k.startswith("tokio-") or k == "sluice") and not k.endswith(")"))
                for c in segs
            ]

            def worker(what):
                return statistics.median(c.get(f"tokio-rt-worker ({what})", 0.0) for c in segs)

            cpu.append(
                f"| {mode} | sluice {t} | {statistics.median(total):.1f} | {statistics.median(workers):.1f} | "
                f"{statistics.median([a - b for a, b in zip(total, workers)]):.1f} | {worker('waiting'):.1f} | "
                f"{worker('minflt'):.0f} | {worker('preempted'):.0f} |"
            )
    text += "\n\n" + "\n".join(cpu)
    # Machine-wide interrupts per 1,000 requests during each target's segments (threadcpu.py
    # snapshot-irq), median of segments: IPIs and device interrupts each cost a VM exit here.
    if os.path.exists(f"{out}/r{rounds[0]}-nonstream-direct.irq.json"):
        kinds = ("RES", "CAL", "TLB", "LOC")
        irq = ["| mode | target | " + " | ".join(f"{k} cpu0 / cpu1" for k in kinds) + " | device interrupts cpu0 / cpu1 |",
               "|---|---|" + "---|" * (len(kinds) + 1)]
        for mode in ("nonstream", "stream"):
            for t in targets:
                segs = [json.load(open(f"{out}/r{r}-{mode}-{t}.irq.json")) for r in rounds]

                def med(pred, cpu):
                    return statistics.median(
                        sum(v for k, v in c.items() if k.endswith(f" cpu{cpu} (irq)") and pred(k.split(" ")[0]))
                        for c in segs
                    )

                cells = [f"{med(lambda n, k=k: n == k, 0):.0f} / {med(lambda n, k=k: n == k, 1):.0f}" for k in kinds]
                dev = lambda n: n not in kinds and not n.isupper()  # noqa: E731
                cells.append(f"{med(dev, 0):.0f} / {med(dev, 1):.0f}")
                irq.append(f"| {mode} | {t} | " + " | ".join(cells) + " |")
        text += "\n\n" + "\n".join(irq)
    text += "\n\n" + open(f"{out}/layout.txt").read()
    print(text)
    with open(f"{out}/summary.md", "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
