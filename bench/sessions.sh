#!/usr/bin/env bash
# Added latency of a session turn with HISTORY stored turns, SQLite and Redis backends, against the same
# call outside a session on the same gateway (interleaved, one keep-alive client).
#
#   bench/sessions.sh [RUNS] [SESSIONS] [HISTORY]     defaults: 3 300 50
#
# Sluice (mock provider, one Tokio worker) on core 0; the Python client and a private redis-server on
# core 1. Needs taskset, python3 and redis-server; builds the release binary first.
set -euo pipefail
RUNS="${1:-3}"; SESSIONS="${2:-300}"; HISTORY="${3:-50}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
cargo build --release --bins --quiet
OUT="$REPO/bench/results/sessions-$(date -u +%Y%m%dT%H%M%SZ)"; mkdir -p "$OUT"
WORK="$(mktemp -d)"; PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
PORT_GW="${PORT_GW:-18293}"; PORT_REDIS="${PORT_REDIS:-18297}"
KEY="sk-bench-sessions-0123456789"
SHA="$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)"
taskset -c 1 redis-server --port "$PORT_REDIS" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do redis-cli -p "$PORT_REDIS" ping >/dev/null 2>&1 && break; sleep 0.1; done

for run in $(seq "$RUNS"); do
  for backend in sqlite redis; do
    if [ "$backend" = sqlite ]; then
      state="[state]
backend = \"memory\"
path = \"$WORK/state-$run.db\""
    else
      redis-cli -p "$PORT_REDIS" flushall >/dev/null
      state="[state]
backend = \"redis\"
redis_url = \"redis://127.0.0.1:$PORT_REDIS\""
    fi
    cat >"$WORK/$backend.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT_GW"
shutdown_grace = "1s"
[log]
filter = "error"
[request_log]
enabled = false
[providers.mock]
kind = "mock"
output_tokens = 16
[models.bench]
provider = "mock"
[auth]
required = true
[[auth.keys]]
name = "bench"
secret_sha256 = "$SHA"
[sessions]
path = "$WORK/sessions-$run.db"
$state
TOML
    cp "$WORK/$backend.toml" "$OUT/"
    TOKIO_WORKER_THREADS=1 taskset -c 0 target/release/sluice serve --config "$WORK/$backend.toml" >"$WORK/sluice.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT_GW") 2>/dev/null && break; sleep 0.05; done
    taskset -c 1 python3 bench/sessions.py "http://127.0.0.1:$PORT_GW" "$KEY" "$SESSIONS" "$HISTORY" "$OUT/r$run-$backend.json"
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  done
done

python3 - "$OUT" "$RUNS" <<'PY'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
lines = ["| backend | plain p50 ms | plain p99 ms | session p50 ms | session p99 ms | added p50 | added p99 | per-run added p50 | per-run added p99 |",
         "|---|---|---|---|---|---|---|---|---|"]
for b in ("sqlite", "redis"):
    rs = [json.load(open(f"{out}/r{r}-{b}.json")) for r in range(1, runs + 1)]
    med = lambda k, p: statistics.median(r[k][str(p)] for r in rs)
    per50 = " / ".join("%+.3f" % r["added"]["50"] for r in rs)
    per99 = " / ".join("%+.3f" % r["added"]["99"] for r in rs)
    lines.append(f"| {b} | {med('plain', 50):.3f} | {med('plain', 99):.3f} | {med('session', 50):.3f} | {med('session', 99):.3f} | "
                 f"{med('added', 50):+.3f} | {med('added', 99):+.3f} | {per50} | {per99} |")
text = "\n".join(lines) + f"\n\nsamples per run: {rs[0]['samples']}; stored turns before the measured turn: {rs[0]['history_turns']}; turns sent with the last one: {rs[0]['sent_turns_last']}\n"
print(text)
open(f"{out}/summary.md", "w").write(text)
PY
