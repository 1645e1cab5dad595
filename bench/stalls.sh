#!/usr/bin/env bash
# Long stalls: one Sluice instance with one Tokio worker on core 0 (upstream, OTLP receiver and oha on
# core 1, as in modes.sh), a steady open-loop load for SECONDS, and the count of requests slower than
# 10 ms with p50/p99/p99.9/max. Percentiles of short segments hide rare stalls of tens of ms; this
# counts them. Found the stalls tied to background-thread priority of 2026-11-27 (docs/BENCHMARKS.md,
# "Session 6").
#
#   bench/stalls.sh MODE [SECONDS] [stream|nonstream] [REPEAT]     defaults: 30 s, stream, 1
#
# MODE: off | logs | reqlog | otel | on (as in modes.sh). After the warm-up the script can move or
# re-prioritise Sluice's background threads (every thread but the main thread and the Tokio workers):
#   BG_CORES=1      pin them to core 1 (the request threads stay on core 0)
#   BG_POLICY=idle  make them SCHED_IDLE;  BG_NICE=19  SCHED_OTHER at that nice value
# BIN=path runs another Sluice binary (and skips the build). Needs oha, taskset, chrt, python3. Results: bench/results/stalls-*.
set -euo pipefail
MODE="${1:?usage: bench/stalls.sh MODE [SECONDS] [stream|nonstream] [REPEAT]}"
SECS="${2:-30}"; KIND="${3:-stream}"; REPEAT="${4:-1}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
if [ -z "${BIN:-}" ]; then cargo build --release --bins --quiet; fi
BIN="${BIN:-target/release/sluice}"
OUT="$REPO/bench/results/stalls-$(date -u +%Y%m%dT%H%M%SZ)"; mkdir -p "$OUT"
WORK="$(mktemp -d)"; PIDS=()
# The bench's processes outweigh the machine's others for the CPU (bench/cgroup.sh).
source bench/cgroup.sh
bench_cgroup_enter
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; bench_cgroup_leave; rm -rf "$WORK"; }
trap cleanup EXIT
# Killed or interrupted: exit (once the command running then ends), so the EXIT trap cleans up.
trap 'exit 130' INT TERM
PORT_UP="${PORT_UP:-18491}"; PORT_GW="${PORT_GW:-18493}"; PORT_OTLP_HOST="${PORT_OTLP_HOST:-18495}"

taskset -c 1 target/release/sluice-mock-upstream --listen "127.0.0.1:$PORT_UP" --no-record 2>"$WORK/up.log" &
PIDS+=($!)
nice -n 19 taskset -c 1 target/release/sluice-mock-upstream --listen "127.0.0.1:$PORT_OTLP_HOST" --no-record --otlp 2>"$WORK/otlp.log" &
PIDS+=($!)
for _ in $(seq 100); do grep -q "otlp receiver on" "$WORK/otlp.log" 2>/dev/null && break; sleep 0.1; done
OTLP="$(sed -n 's/^otlp receiver on //p' "$WORK/otlp.log")"
[ -n "$OTLP" ] || { echo "the mock upstream did not start its OTLP receiver" >&2; exit 1; }

{
  printf '[server]\nlisten = "127.0.0.1:%s"\nshutdown_grace = "1s"\n' "$PORT_GW"
  printf '[providers.up]\nkind = "openai"\nbase_url = "http://127.0.0.1:%s/v1"\n' "$PORT_UP"
  printf '[models.bench]\nprovider = "up"\nprice = { input = "0.15", output = "0.60" }\n[auth]\nrequired = false\n'
  case "$MODE" in logs|on) printf '[log]\nfilter = "info"\nformat = "json"\n' ;; *) printf '[log]\nfilter = "error"\n' ;; esac
  case "$MODE" in
    reqlog|on) printf '[request_log]\nenabled = true\npath = "%s/requests.db"\n' "$WORK" ;;
    *) printf '[request_log]\nenabled = false\n' ;;
  esac
  case "$MODE" in otel|on) printf '[telemetry.otel]\nendpoint = "http://%s"\nprotocol = "http-protobuf"\n' "$OTLP" ;; esac
} >"$WORK/sluice.toml"
cp "$WORK/sluice.toml" "$OUT/"

BODY='{"model":"bench","messages":[{"role":"user","content":"hi"}]}'
if [ "$KIND" = stream ]; then BODY='{"model":"bench","stream":true,"messages":[{"role":"user","content":"hi"}]}'; fi
if oha --help 2>&1 | grep -q -- '--output-format'; then OHA_JSON=(--output-format json); else OHA_JSON=(-j); fi
OHA=(taskset -c 1 oha --no-tui "${OHA_JSON[@]}" -m POST -H 'content-type: application/json')
URL="http://127.0.0.1:$PORT_GW/v1/chat/completions"
echo "MODE=$MODE SECONDS=$SECS KIND=$KIND BG_CORES=${BG_CORES:-} BG_POLICY=${BG_POLICY:-} BG_NICE=${BG_NICE:-} BIN=$BIN cgroup=${BENCH_CGROUP_DIR:-none}" | tee "$OUT/summary.md"

for run in $(seq "$REPEAT"); do
  TOKIO_WORKER_THREADS=1 taskset -c 0 "$BIN" serve --config "$WORK/sluice.toml" >"$WORK/sluice.log" 2>&1 &
  SL=$!; PIDS+=("$SL")
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT_GW") 2>/dev/null && break; sleep 0.05; done
  "${OHA[@]}" -n 2000 -c 50 -d "$BODY" "$URL" >/dev/null   # warm-up: the background threads exist now
  for task in /proc/"$SL"/task/*; do
    tid="${task##*/}"
    case "$(cat "$task/comm")" in sluice|tokio-rt-worker) continue ;; esac
    if [ -n "${BG_CORES:-}" ]; then taskset -p -c "$BG_CORES" "$tid" >/dev/null; fi
    if [ "${BG_POLICY:-}" = idle ]; then chrt --idle -p 0 "$tid"; fi
    if [ -n "${BG_NICE:-}" ]; then chrt --other -p 0 "$tid"; renice -n "$BG_NICE" -p "$tid" >/dev/null; fi
  done
  rm -f "$WORK/seg.db"
  "${OHA[@]}" -z "${SECS}s" -c 50 -q 2000 --latency-correction -d "$BODY" --db-url "$WORK/seg.db" "$URL" >/dev/null 2>&1
  kill -TERM "$SL"; wait "$SL" 2>/dev/null || true
  python3 - "$WORK/seg.db" <<'PY' | tee -a "$OUT/summary.md"
import sqlite3, sys
d = sorted(x for (x,) in sqlite3.connect(sys.argv[1]).execute("select duration from oha"))
n = len(d)
q = lambda p: d[min(n - 1, int(n * p))] * 1e3  # noqa: E731
print(f"n={n} p50={q(0.5):.3f} p99={q(0.99):.3f} p99.9={q(0.999):.3f} max={d[-1] * 1e3:.1f} ms; "
      f"over 10 ms: {sum(x > 0.010 for x in d)}")
# Episodes: the slow requests (over 10 ms) grouped by overlapping intervals. One stall of the
# process or its core delays every request in flight at once (one episode of many requests); a
# slow connection or stream delays its own requests only (episodes of one).
slow = sorted(sqlite3.connect(sys.argv[1]).execute(
    "select coalesce(start_latency_correction, start), end from oha where duration > 0.010"))
episodes = []
for start, end in slow:
    if episodes and start <= episodes[-1][1]:
        episodes[-1][1] = max(episodes[-1][1], end)
        episodes[-1][2] += 1
    else:
        episodes.append([start, end, 1])
if episodes:
    big = max(episodes, key=lambda e: e[2])
    print(f"  episodes of requests over 10 ms: {len(episodes)}, of one request {sum(e[2] == 1 for e in episodes)}; "
          f"largest {big[2]} requests over {1e3 * (big[1] - big[0]):.1f} ms at {big[0]:.3f} s; "
          "starts (s): " + " ".join(f"{e[0]:.2f}({e[2]})" for e in episodes[:30]))
PY
  cp "$WORK/seg.db" "$OUT/seg-$run.db"
done
