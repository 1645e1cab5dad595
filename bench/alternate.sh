#!/usr/bin/env bash
# Two Sluice builds, everything on (JSON access log, request log, OTLP/HTTP export), loaded alone and
# in turn: per run, the Tokio worker's CPU per request, how often it slept (found nothing to run) and
# how often it was preempted, per 1,000 requests. For telling a build's cost from the machine's state:
# when the core is busier the worker sleeps less and its CPU per request rises, whichever build runs
# (docs/BENCHMARKS.md, session 10).
#
#   bench/alternate.sh BINARY_A BINARY_B [ROUNDS] [RATE] [DURATION]   defaults: 3 2000 8s
#   STREAM=0 sends non-streaming requests (default: streaming)
#
# Pinned as bench/modes.sh: both Sluices on core 0 (one Tokio worker each; the idle one costs
# nothing), upstream, OTLP receiver (nice 19) and oha on core 1. Needs oha, taskset and python3;
# builds the mock upstream first.
set -euo pipefail
A="$1"; B="$2"; ROUNDS="${3:-3}"; RATE="${4:-2000}"; DURATION="${5:-8s}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
cargo build --release --bins --quiet
WORK="$(mktemp -d)"; PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
PORT_UP="${PORT_UP:-18591}"; PORT_OTLP="${PORT_OTLP:-18595}"; PORT_A=18593; PORT_B=18594
if oha --help 2>&1 | grep -q -- '--output-format'; then OHA_JSON=(--output-format json); else OHA_JSON=(-j); fi
BODY='{"model":"bench","stream":true,"messages":[{"role":"user","content":"hi"}]}'
[ "${STREAM:-1}" = 0 ] && BODY='{"model":"bench","messages":[{"role":"user","content":"hi"}]}'
OHA=(taskset -c 1 oha --no-tui "${OHA_JSON[@]}" -m POST -H 'content-type: application/json' -d "$BODY")

taskset -c 1 target/release/sluice-mock-upstream --listen "127.0.0.1:$PORT_UP" --no-record 2>"$WORK/up.log" &
PIDS+=($!)
nice -n 19 taskset -c 1 target/release/sluice-mock-upstream --listen "127.0.0.1:$PORT_OTLP" --no-record \
  --otlp --otlp-count-only 2>"$WORK/otlp.log" &
PIDS+=($!)
for _ in $(seq 100); do grep -q "otlp receiver on" "$WORK/otlp.log" 2>/dev/null && break; sleep 0.1; done
OTLP="$(sed -n 's/^otlp receiver on //p' "$WORK/otlp.log")"
[ -n "$OTLP" ] || { echo "the mock upstream did not start its OTLP receiver" >&2; exit 1; }

declare -A PID_OF PORT_OF=([a]=$PORT_A [b]=$PORT_B) BIN_OF=([a]=$A [b]=$B)
for n in a b; do
  printf '[log]\nfilter = "info"\nformat = "json"\n[request_log]\nenabled = true\npath = "%s/requests-%s.db"\n' "$WORK" "$n" >"$WORK/$n.toml"
  printf '[telemetry.otel]\nendpoint = "http://%s"\nprotocol = "http-protobuf"\n[auth]\nrequired = false\n' "$OTLP" >>"$WORK/$n.toml"
  printf '[server]\nlisten = "127.0.0.1:%s"\n[providers.up]\nkind = "openai"\nbase_url = "http://127.0.0.1:%s/v1"\n' "${PORT_OF[$n]}" "$PORT_UP" >>"$WORK/$n.toml"
  printf '[models.bench]\nprovider = "up"\nprice = { input = "0.15", output = "0.60" }\n' >>"$WORK/$n.toml"
  TOKIO_WORKER_THREADS=1 taskset -c 0 "${BIN_OF[$n]}" serve --config "$WORK/$n.toml" >"$WORK/sluice-$n.log" 2>&1 &
  PID_OF[$n]=$!; PIDS+=($!)
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/${PORT_OF[$n]}") 2>/dev/null && break; sleep 0.05; done
  "${OHA[@]}" -n 2000 -c 50 "http://127.0.0.1:${PORT_OF[$n]}/v1/chat/completions" >/dev/null   # warm-up
done

echo "| round | build | requests | worker CPU µs/request | worker slept / 1k | worker preempted / 1k |"
echo "|---|---|---|---|---|---|"
for round in $(seq "$ROUNDS"); do
  for n in a b; do
    python3 bench/threadcpu.py snapshot "${PID_OF[$n]}" >"$WORK/before.json"
    "${OHA[@]}" -z "$DURATION" -c 50 -q "$RATE" --latency-correction "http://127.0.0.1:${PORT_OF[$n]}/v1/chat/completions" >"$WORK/oha.json"
    python3 bench/threadcpu.py snapshot "${PID_OF[$n]}" >"$WORK/after.json"
    requests="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["statusCodeDistribution"].get("200", 0))' "$WORK/oha.json")"
    python3 bench/threadcpu.py diff "$WORK/before.json" "$WORK/after.json" "$requests" >"$WORK/diff.json"
    python3 - "$WORK/diff.json" "$round" "${BIN_OF[$n]}" "$requests" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
w = "tokio-rt-worker"
print(f"| {sys.argv[2]} | {sys.argv[3]} | {sys.argv[4]} | {d.get(w, 0):.1f} | {d.get(w + ' (slept)', 0):.0f} | {d.get(w + ' (preempted)', 0):.0f} |")
PY
  done
done
