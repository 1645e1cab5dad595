#!/usr/bin/env python3
"""Summarise one bench/run.sh results directory: summary.json + summary.md (Markdown tables), and print
the Markdown. Usage: bench/summarize.py bench/results/<timestamp>

Conventions: every latency is in milliseconds. "added" is target minus direct, computed within the same
run (the runs are interleaved, so direct/nginx/sluice of one run saw the same machine), then the median
over runs is shown. "runs" columns list every run's value in run order, so the spread is visible. A
run marked * had other processes using more than NOISE_PCT % of a core during it, or a rustc running.
"""

from __future__ import annotations

import glob
import json
import os
import re
import statistics
import sys

NOISE_PCT = 10
TARGETS = ["direct", "nginx", "sluice"]


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=2):
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}f}"


def fmt_added(v):
    if v is None:
        return "–"
    return ("+" if v >= 0 else "−") + fmt(abs(v), 3 if abs(v) < 1 else 2)


def oha_stats(d):
    """Latency stats (ms) and counters from one oha JSON file."""
    if d is None:
        return None
    lp = d.get("latencyPercentiles") or {}
    s = d.get("summary") or {}
    codes = d.get("statusCodeDistribution") or {}
    ok = sum(v for k, v in codes.items() if str(k).startswith("2"))
    bad = {k: v for k, v in codes.items() if not str(k).startswith("2")}
    errs = d.get("errorDistribution") or {}

    def ms(key):
        v = lp.get(key)
        return None if v is None else v * 1000

    return {
        "p50": ms("p50"),
        "p99": ms("p99"),
        "p99.9": ms("p99.9"),
        "rps": s.get("requestsPerSec"),
        "success_rate": s.get("successRate"),
        "ok": ok,
        "non_2xx": bad,
        "errors": errs,
    }


def oha_first_byte(d):
    """oha's time to the first body frame (from sending, not latency-corrected), in ms."""
    st = oha_stats(d)
    if st is None:
        return None
    fb = d.get("firstBytePercentiles") or {}
    for k in ("p50", "p99", "p99.9"):
        st[k] = None if fb.get(k) is None else fb[k] * 1000
    return st


def client_stats(d, key):
    if d is None or key not in d or not d[key].get("count"):
        return None
    x = d[key]
    return {
        "p50": x["p50"],
        "p99": x["p99"],
        "p99.9": x["p99.9"],
        "rps": d.get("achieved_rps"),
        "ok": d.get("ok"),
        "errors": d.get("errors") or {},
        "non_2xx": {},
        "sched_p99": (d.get(key.replace("_send", "_sched")) or {}).get("p99"),
    }


def noise_flags(out):
    flags = {}
    try:
        with open(os.path.join(out, "noise.tsv")) as f:
            next(f)
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 3:
                    name, pct, rustc = parts[0], int(parts[1] or 0), parts[2]
                    flags[name] = {"other_cpu_pct": pct, "rustc": rustc == "yes",
                                   "noisy": pct > NOISE_PCT or rustc == "yes",
                                   "proxy_cpu_pct": int(parts[4]) if len(parts) > 4 and parts[4] else None}
    except OSError:
        pass
    return flags


def runs_of(out):
    runs = set()
    for p in glob.glob(os.path.join(out, "r*-*.json")):
        m = re.match(r"r(\d+)-", os.path.basename(p))
        if m:
            runs.add(int(m.group(1)))
    return sorted(runs)


def latency_section(out, section, rates, runs, noise, reader):
    """rows[rate][target] = {per-run stats, medians, added}."""
    result = {}
    for rate in rates:
        per_target = {}
        for t in TARGETS:
            per_run = []
            for r in runs:
                name = f"r{r}-{section}-q{rate}-{t}"
                st = reader(load(os.path.join(out, name + ".json")))
                if st is not None:
                    st["run"] = r
                    st["noisy"] = noise.get(name, {}).get("noisy", False)
                    st["proxy_cpu_pct"] = noise.get(name, {}).get("proxy_cpu_pct")
                per_run.append(st)
            per_target[t] = per_run
        if not any(s for runs_ in per_target.values() for s in runs_):
            continue
        rows = {}
        for t in TARGETS:
            pr = per_target[t]
            row = {"runs": pr}
            for k in ("p50", "p99", "p99.9", "rps", "sched_p99", "proxy_cpu_pct"):
                row[k] = med([s.get(k) if s else None for s in pr])
            for k in ("p50", "p99", "p99.9"):
                added = []
                for s, d in zip(pr, per_target["direct"]):
                    added.append(s[k] - d[k] if s and d and s.get(k) is not None and d.get(k) is not None else None)
                row["added_" + k] = med(added) if t != "direct" else None
                row["added_" + k + "_runs"] = added if t != "direct" else None
            row["errors"] = sum(sum((s.get("errors") or {}).values()) + sum((s.get("non_2xx") or {}).values())
                                for s in pr if s)
            row["error_kinds"] = sorted({k for s in pr if s for k in list((s.get("errors") or {}).keys())
                                         + list((s.get("non_2xx") or {}).keys())})
            rows[t] = row
        result[str(rate)] = rows
    return result


def runs_cell(vals, noisy=None, digits=2):
    cells = []
    for i, v in enumerate(vals):
        c = fmt(v, digits)
        if noisy and i < len(noisy) and noisy[i]:
            c += "*"
        cells.append(c)
    return " / ".join(cells)


def md_latency(title, data, note, sched=False):
    lines = [f"### {title}", "", note, ""]
    head = "| rate | target | p50 | p99 | p99.9 | added p50 | added p99 | added p99.9 | p50 per run | p99 per run | achieved req/s | core-0 CPU % | errors |"
    if sched:
        head = head.replace("| achieved", "| p99 from schedule | achieved")
    lines.append(head)
    lines.append("|" + "---|" * (head.count("|") - 1))
    for rate, rows in data.items():
        for t in TARGETS:
            row = rows.get(t)
            if not row:
                continue
            noisy = [bool(s and s.get("noisy")) for s in row["runs"]]
            cells = [
                f"{rate}/s" if t == "direct" else "",
                t,
                fmt(row["p50"], 3),
                fmt(row["p99"], 3),
                fmt(row["p99.9"], 3),
                fmt_added(row["added_p50"]) if t != "direct" else "",
                fmt_added(row["added_p99"]) if t != "direct" else "",
                fmt_added(row["added_p99.9"]) if t != "direct" else "",
                runs_cell([s.get("p50") if s else None for s in row["runs"]], noisy, 3),
                runs_cell([s.get("p99") if s else None for s in row["runs"]], noisy, 3),
            ]
            if sched:
                cells.append(fmt(row["sched_p99"], 3))
            cells.append(fmt(row["rps"], 0))
            cells.append(fmt(row["proxy_cpu_pct"], 0) if t != "direct" else "")
            err = str(row["errors"])
            if row["errors"]:
                err += " (" + ", ".join(row["error_kinds"])[:120] + ")"
            cells.append(err)
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    out = sys.argv[1]
    runs = runs_of(out)
    noise = noise_flags(out)
    rates = sorted({int(m.group(1)) for p in glob.glob(os.path.join(out, "r*-q*-*.json"))
                    if (m := re.search(r"-q(\d+)-", os.path.basename(p)))})
    summary = {"runs": runs, "rates": rates, "noise": noise}
    summary["nonstream"] = latency_section(out, "nonstream", rates, runs, noise, oha_stats)
    summary["stream"] = latency_section(out, "stream", rates, runs, noise, oha_stats)
    summary["ttft"] = latency_section(out, "ttft", rates, runs, noise, lambda d: client_stats(d, "ttft_send"))
    summary["ttft_oha"] = latency_section(out, "stream", rates, runs, noise, oha_first_byte)
    summary["ttft_total"] = latency_section(out, "ttft", rates, runs, noise, lambda d: client_stats(d, "total_send"))

    # throughput
    thr = {}
    for t in TARGETS:
        vals, ok, noisy = [], [], []
        for r in runs:
            name = f"r{r}-throughput-{t}"
            st = oha_stats(load(os.path.join(out, name + ".json")))
            vals.append(st["rps"] if st else None)
            ok.append(st["success_rate"] if st else None)
            noisy.append(noise.get(name, {}).get("noisy", False))
        if any(v is not None for v in vals):
            cpu = [noise.get(f"r{r}-throughput-{t}", {}).get("proxy_cpu_pct") for r in runs]
            thr[t] = {"rps_runs": vals, "rps": med(vals), "success_rate_runs": ok, "noisy": noisy,
                      "proxy_cpu_pct": med(cpu) if t != "direct" else None}
    summary["throughput"] = thr

    # relay
    relay = {}
    direct_runs = []
    for t in TARGETS:
        vals = []
        for r in runs:
            d = load(os.path.join(out, f"r{r}-relay-{t}.json"))
            c = (d or {}).get("chunk_relay") or {}
            vals.append({"p50": c.get("p50"), "p99": c.get("p99"), "count": c.get("count"),
                         "errors": (d or {}).get("errors")} if c.get("count") else None)
        if t == "direct":
            direct_runs = vals
        if any(vals):
            row = {"runs": vals, "p50": med([v["p50"] for v in vals if v]), "p99": med([v["p99"] for v in vals if v])}
            if t != "direct":
                row["added_p50"] = med([v["p50"] - d["p50"] for v, d in zip(vals, direct_runs) if v and d])
                row["added_p99"] = med([v["p99"] - d["p99"] for v, d in zip(vals, direct_runs) if v and d])
            relay[t] = row
    summary["relay"] = relay

    # rss
    rss_runs = [load(os.path.join(out, f"r{r}-rss.json")) for r in runs]
    rss_runs = [x for x in rss_runs if x]
    rss = {}
    if rss_runs:
        rss["idle_kb_runs"] = [x["idle_kb"] for x in rss_runs]
        rss["idle_kb"] = med(rss["idle_kb_runs"])
        counts = sorted({int(n) for x in rss_runs for n in x.get("streams", {})})
        rss["streams"] = {}
        for n in counts:
            entries = [x["streams"].get(str(n)) for x in rss_runs]
            per = []
            for x, e in zip(rss_runs, entries):
                if not e or not e.get("open"):
                    per.append(None)
                    continue
                rss_open = max(e["rss_kb_samples"])
                idle = e.get("idle_kb", x["idle_kb"])  # per-count fresh process (newer runs) or per run
                per.append({"open": e["open"], "rss_kb": rss_open, "fds": e.get("fds"), "idle_kb": idle,
                            "kb_per_stream": (rss_open - idle) / e["open"],
                            "rss_after_close_kb": e.get("rss_kb_after_close"),
                            "errors": (e.get("hold") or {}).get("errors")})
            rss["streams"][str(n)] = {
                "runs": per,
                "rss_kb": med([p["rss_kb"] for p in per if p]),
                "kb_per_stream": med([p["kb_per_stream"] for p in per if p]),
                "open": med([p["open"] for p in per if p]),
            }
    for f, key in (("sluice-idle-start.json", "main_idle_start"), ("sluice-after-load.json", "main_after_load")):
        d = load(os.path.join(out, f))
        if d:
            rss[key] = d
    summary["rss"] = rss

    # goals
    goals = []

    def at(section, rate, t, k):
        try:
            return summary[section][str(rate)][t][k]
        except (KeyError, TypeError):
            return None

    goals.append(("non-streaming added p50 at 2,000 req/s", "≤ 0.1 ms", at("nonstream", 2000, "sluice", "added_p50"), 0.1, "ms"))
    goals.append(("non-streaming added p99 at 2,000 req/s", "≤ 0.5 ms", at("nonstream", 2000, "sluice", "added_p99"), 0.5, "ms"))
    goals.append(("TTFT added p50 at 2,000 req/s", "≤ 0.1 ms", at("ttft", 2000, "sluice", "added_p50"), 0.1, "ms"))
    goals.append(("TTFT added p99 at 2,000 req/s", "≤ 0.5 ms", at("ttft", 2000, "sluice", "added_p99"), 0.5, "ms"))
    goals.append(("max throughput, one core", "≥ 10,000 req/s", (thr.get("sluice") or {}).get("rps"), -10000, "req/s"))
    goals.append(("idle RSS", "≤ 20 MB", (rss.get("idle_kb") / 1024) if rss.get("idle_kb") else None, 20, "MB"))
    for n, e in (rss.get("streams") or {}).items():
        goals.append((f"memory per open stream ({n} streams)", "≤ 16 KB", e.get("kb_per_stream"), 16, "KB"))
    goals.append(("chunk relay, added p50", "≤ 50 µs", ((relay.get("sluice") or {}).get("added_p50") or 0) * 1000
                  if relay.get("sluice") else None, 50, "µs"))
    summary["goals"] = [{"goal": g, "target": tgt, "measured": v, "unit": u,
                         "met": None if v is None else (v >= -lim if lim < 0 else v <= lim)} for g, tgt, v, lim, u in goals]

    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)

    # markdown
    L = [f"## Results: {os.path.basename(os.path.normpath(out))}", ""]
    L.append(f"Runs: {len(runs)}. Medians over runs; 'per run' lists each run in order; * = noisy run "
             f"(other processes used > {NOISE_PCT} % of a core, or rustc ran). Latencies in ms. "
             f"'core-0 CPU %' = CPU used by the proxy under test (sluice or the nginx worker), % of its core.")
    L.append("")
    L.append("### Against the goals")
    L.append("")
    L.append("| goal | target | measured (median of runs) | met |")
    L.append("|---|---|---|---|")
    for g in summary["goals"]:
        v = g["measured"]
        vs = "not measured" if v is None else (fmt_added(v) if g["unit"] == "ms" and "added" in g["goal"] else fmt(v, 2)) + " " + g["unit"]
        L.append(f"| {g['goal']} | {g['target']} | {vs} | {'–' if g['met'] is None else ('yes' if g['met'] else 'NO')} |")
    L.append("")
    if summary["nonstream"]:
        L += md_latency("Non-streaming, fixed rate (oha, latency-corrected)", summary["nonstream"],
                        "Whole-response latency of `POST /v1/chat/completions`.")
    if summary["stream"]:
        L += md_latency("Streaming, whole stream, fixed rate (oha, latency-corrected)", summary["stream"],
                        "Latency until the end of the SSE stream (all chunks and `[DONE]`).")
    if summary["ttft"]:
        L += md_latency("Streaming, time to first token, fixed rate (streamclient.py)", summary["ttft"],
                        "From writing the request to reading the first SSE `data:` event. 'p99 from schedule' "
                        "counts the wait for a free connection too (latency correction).", sched=True)
    if summary["ttft_oha"]:
        L += md_latency("Streaming, time to first body byte, cross-check (oha, same runs as the whole-stream table)",
                        summary["ttft_oha"], "oha's `firstBytePercentiles`: from sending the request to the first body "
                        "frame, not latency-corrected.")
    if thr:
        L += ["### Max throughput, non-streaming (oha, no rate limit)", "",
              "| target | req/s (median) | per run | success rate per run | core-0 CPU % |", "|---|---|---|---|---|"]
        for t, row in thr.items():
            L.append(f"| {t} | {fmt(row['rps'], 0)} | {runs_cell(row['rps_runs'], row['noisy'], 0)} | "
                     f"{' / '.join(fmt(x, 4) for x in row['success_rate_runs'])} | {fmt(row['proxy_cpu_pct'], 0)} |")
        L.append("")
    if relay:
        L += ["### Chunk relay (stamp_upstream.py → target → streamclient.py relay)", "",
              "Per chunk: client read time minus the upstream's write stamp (same CLOCK_MONOTONIC). "
              "Added = target minus direct, per run.", "",
              "| target | p50 | p99 | added p50 | added p99 | p50 per run | chunks per run |", "|---|---|---|---|---|---|---|"]
        for t, row in relay.items():
            L.append(f"| {t} | {fmt(row['p50'], 3)} | {fmt(row['p99'], 3)} | "
                     f"{fmt_added(row.get('added_p50')) if t != 'direct' else ''} | "
                     f"{fmt_added(row.get('added_p99')) if t != 'direct' else ''} | "
                     f"{runs_cell([v['p50'] if v else None for v in row['runs']], None, 3)} | "
                     f"{' / '.join(str(v['count']) if v else '–' for v in row['runs'])} |")
        L.append("")
    if rss:
        L += ["### Sluice memory (VmRSS)", ""]
        if rss.get("idle_kb") is not None:
            L.append(f"- fresh process, idle: {fmt(rss['idle_kb'] / 1024, 1)} MB median "
                     f"(per run: {' / '.join(fmt(x / 1024, 1) for x in rss['idle_kb_runs'])} MB)")
        if rss.get("main_idle_start"):
            L.append(f"- main benchmark process 1 s after start: {fmt(rss['main_idle_start']['rss_kb'] / 1024, 1)} MB")
        if rss.get("main_after_load"):
            a = rss["main_after_load"]
            L.append(f"- main benchmark process after all load sections: RSS {fmt(a['rss_kb'] / 1024, 1)} MB, "
                     f"peak (VmHWM) {fmt(a['hwm_kb'] / 1024, 1)} MB")
        L.append("")
        if rss.get("streams"):
            L += ["| streams requested | open (median) | RSS open, MB | KB per open stream | KB/stream per run | fds per run | RSS after close, MB per run | errors |",
                  "|---|---|---|---|---|---|---|---|"]
            for n, e in rss["streams"].items():
                per = e["runs"]
                errs = "; ".join(json.dumps(p["errors"]) for p in per if p and p.get("errors")) or "0"
                L.append(f"| {n} | {fmt(e['open'], 0)} | {fmt((e['rss_kb'] or 0) / 1024, 1)} | {fmt(e['kb_per_stream'], 1)} | "
                         f"{' / '.join(fmt(p['kb_per_stream'], 1) if p else '–' for p in per)} | "
                         f"{' / '.join(str(p['fds']) if p else '–' for p in per)} | "
                         f"{' / '.join(fmt(p['rss_after_close_kb'] / 1024, 1) if p and p.get('rss_after_close_kb') else '–' for p in per)} | "
                         f"{errs[:200]} |")
            L.append("")
    noisy = [k for k, v in noise.items() if v["noisy"]]
    L.append(f"Noise: {len(noisy)} of {len(noise)} measurements flagged noisy" + (f" ({', '.join(noisy[:12])}{'…' if len(noisy) > 12 else ''})." if noisy else "."))
    L.append("")
    text = "\n".join(L)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
