#!/usr/bin/env bash
# Who holds Sluice's core while its request thread waits: one instance, everything on (or CFG=off),
# a steady load, and `perf sched` on core 0 for 3 s in the middle of it.
#
#   bench/schedprobe.sh [stream|nonstream]      BIN=other/sluice to probe another build; CFG=off
#   PROF=1: a CPU profile of the process instead (perf record -g), for `perf report --comm <thread>`
#
# Layout as bench/modes.sh's PIN=process: Sluice (one Tokio worker) on core 0; the mock upstream, the
# counting OTLP receiver (nice 19) and oha on core 1; 2,000 requests/s, 50 connections, 8 s. Prints
# oha's latency distribution and bench/schedwait.py's report: the worker's waits for the core (after
# a wake-up or a preemption), which threads ran meanwhile, and every thread's run lengths. perf makes
# the latencies worse than in modes.sh runs; the run lengths and who-ran-when are the point.
# Needs perf (perf_event_paranoid <= 1 or root), oha, taskset, python3. Files stay in the printed dir.
set -euo pipefail
MODE="${1:-stream}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
cargo build --release --bins --quiet
BIN="${BIN:-target/release/sluice}"
W="$(mktemp -d /tmp/sluice-schedprobe.XXXX)"; PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
PORT_UP="${PORT_UP:-18491}"; PORT_GW="${PORT_GW:-18493}"; PORT_OTLP="${PORT_OTLP:-18495}"
taskset -c 1 target/release/sluice-mock-upstream --listen "127.0.0.1:$PORT_UP" --no-record 2>"$W/up.log" &
PIDS+=($!)
nice -n 19 taskset -c 1 target/release/sluice-mock-upstream --listen "127.0.0.1:$PORT_OTLP" --no-record --otlp --otlp-count-only 2>"$W/otlp.log" &
PIDS+=($!)
for _ in $(seq 100); do grep -q "otlp receiver on" "$W/otlp.log" 2>/dev/null && break; sleep 0.1; done
OTLP="$(sed -n 's/^otlp receiver on //p' "$W/otlp.log")"
[ -n "$OTLP" ] || { echo "the mock upstream did not start its OTLP receiver" >&2; exit 1; }
{
  if [ "${CFG:-on}" = on ]; then
    printf '[log]\nfilter = "info"\nformat = "json"\n[request_log]\nenabled = true\npath = "%s/requests.db"\n' "$W"
    printf '[telemetry.otel]\nendpoint = "http://%s"\nprotocol = "http-protobuf"\n' "$OTLP"
  else
    printf '[log]\nfilter = "error"\n[request_log]\nenabled = false\n'
  fi
  printf '[auth]\nrequired = false\n[server]\nlisten = "127.0.0.1:%s"\nshutdown_grace = "1s"\n' "$PORT_GW"
  printf '[providers.up]\nkind = "openai"\nbase_url = "http://127.0.0.1:%s/v1"\n' "$PORT_UP"
  printf '[models.bench]\nprovider = "up"\nprice = { input = "0.15", output = "0.60" }\n'
} >"$W/sluice.toml"
TOKIO_WORKER_THREADS=1 taskset -c 0 "$BIN" serve --config "$W/sluice.toml" >"$W/sluice.log" 2>&1 &
SPID=$!; PIDS+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT_GW") 2>/dev/null && break; sleep 0.05; done
BODY='{"model":"bench","messages":[{"role":"user","content":"hi"}]}'
[ "$MODE" = stream ] && BODY='{"model":"bench","stream":true,"messages":[{"role":"user","content":"hi"}]}'
OHA=(taskset -c 1 oha --no-tui -m POST -H 'content-type: application/json' -d "$BODY" "http://127.0.0.1:$PORT_GW/v1/chat/completions")
"${OHA[@]}" -n 2000 -c 50 >/dev/null   # warm-up
"${OHA[@]}" -z 8s -c 50 -q 2000 --latency-correction >"$W/oha.txt" &
OHA_PID=$!
sleep 3   # the load is steady by now: probe its middle; not a synchronisation, the probe only samples
if [ "${PROF:-0}" = 1 ]; then
  perf record -F 4999 -g -p "$SPID" -o "$W/prof.data" -- sleep 3 >/dev/null 2>"$W/perf.err"
else
  perf sched record -C 0 -o "$W/sched.data" -- sleep 3 >/dev/null 2>"$W/perf.err"
fi
wait "$OHA_PID"
grep -A10 "Response time distribution" "$W/oha.txt"
if [ "${PROF:-0}" = 1 ]; then
  echo "profile: perf report -i $W/prof.data --comm <thread name> --percentage relative"
else
  perf sched timehist -i "$W/sched.data" --state >"$W/timehist.txt" 2>/dev/null
  python3 bench/schedwait.py "$W/timehist.txt"
fi
echo "files: $W"
