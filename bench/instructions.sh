#!/usr/bin/env bash
# Instructions per request on the request thread, by observability mode, counted by callgrind.
#
#   bench/instructions.sh [REQUESTS]        default 2000; MODES="off logs reqlog otel on" picks modes;
#                                           STREAM=1 sends streaming requests instead; BIN=path counts
#                                           another build of sluice (a copy of an earlier target/release/sluice);
#                                           PREFILL=N first logs N requests into the request log (modes
#                                           reqlog and on) with the same build, not counted, so the
#                                           counted inserts go into a log of that size (deeper B-trees)
#
# Latency percentiles on a shared machine move by more than the few microseconds a telemetry change
# is worth; an instruction count does not (valgrind counts the same for the same binary and input,
# whatever else the machine does). Each mode's Sluice runs under `valgrind --tool=callgrind
# --separate-threads=yes` with one Tokio worker, serves 200 warm-up and REQUESTS measured chat
# requests (non-streaming unless STREAM=1; oha, 10 connections) against the mock upstream, and
# stops; the worker is the thread with the most instructions. Reported: the worker's instructions
# per request (warm-up and start-up included, the same in every mode) and each mode's difference to
# `off`; and the same for all other threads together (the background threads, with start-up and
# shutdown).
# Modes as in bench/modes.sh (SUITE=observability): logs = JSON access log at info, reqlog = the
# SQLite request log, otel = OTLP/HTTP export to a receiver, on = all three.
#
# Instructions are not time (cache misses and the allocator's cross-thread frees are not in them),
# so this finds and sizes the work a change adds or removes; bench/observability.sh measures latency.
# Needs valgrind, oha and python3; builds the release binaries first. Output: the table, and the
# callgrind files in bench/results/instr-<UTC time>/ (callgrind_annotate reads them).
set -euo pipefail
REQUESTS="${1:-2000}"
MODES="${MODES:-off logs reqlog otel on}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
cargo build --release --bins --quiet
BIN="${BIN:-target/release/sluice}"
OUT="$REPO/bench/results/instr-$(date -u +%Y%m%dT%H%M%SZ)"; mkdir -p "$OUT"
echo "STREAM=${STREAM:-0} REQUESTS=$REQUESTS MODES=$MODES BIN=$BIN PREFILL=${PREFILL:-0}" >"$OUT/layout.txt"
WORK="$(mktemp -d)"; PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
PORT_UP="${PORT_UP:-18391}"; PORT_GW="${PORT_GW:-18393}"; PORT_OTLP="${PORT_OTLP:-18395}"
target/release/sluice-mock-upstream --listen "127.0.0.1:$PORT_UP" --no-record 2>"$WORK/up.log" &
PIDS+=($!)
target/release/sluice-mock-upstream --listen "127.0.0.1:$PORT_OTLP" --no-record --otlp 2>"$WORK/otlp.log" &
PIDS+=($!)
for _ in $(seq 100); do grep -q "otlp receiver on" "$WORK/otlp.log" 2>/dev/null && break; sleep 0.1; done
OTLP="$(sed -n 's/^otlp receiver on //p' "$WORK/otlp.log")"
[ -n "$OTLP" ] || { echo "the mock upstream did not start its OTLP receiver" >&2; exit 1; }
BODY='{"model":"bench","messages":[{"role":"user","content":"hi"}]}'
if [ "${STREAM:-0}" = 1 ]; then BODY='{"model":"bench","stream":true,"messages":[{"role":"user","content":"hi"}]}'; fi
OHA=(oha --no-tui -c 10 -m POST -H 'content-type: application/json' -d "$BODY" "http://127.0.0.1:$PORT_GW/v1/chat/completions")

for mode in $MODES; do
  {
    case " $mode " in " logs "|" on ") printf '[log]\nfilter = "info"\nformat = "json"\n' ;; *) printf '[log]\nfilter = "error"\n' ;; esac
    case " $mode " in " reqlog "|" on ") printf '[request_log]\nenabled = true\npath = "%s/requests-%s.db"\n' "$WORK" "$mode" ;; *) printf '[request_log]\nenabled = false\n' ;; esac
    case " $mode " in " otel "|" on ") printf '[telemetry.otel]\nendpoint = "http://%s"\nprotocol = "http-protobuf"\n' "$OTLP" ;; esac
    printf '[server]\nlisten = "127.0.0.1:%s"\nshutdown_grace = "2s"\n[auth]\nrequired = false\n' "$PORT_GW"
    printf '[providers.up]\nkind = "openai"\nbase_url = "http://127.0.0.1:%s/v1"\n' "$PORT_UP"
    printf '[models.bench]\nprovider = "up"\nprice = { input = "0.15", output = "0.60" }\n'
  } >"$OUT/$mode.toml"
  if [ "${PREFILL:-0}" -gt 0 ] && grep -q '^enabled = true' "$OUT/$mode.toml"; then
    "$BIN" serve --config "$OUT/$mode.toml" >"$WORK/prefill-$mode.log" 2>&1 &
    pid=$!
    for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT_GW") 2>/dev/null && break; sleep 0.1; done
    oha --no-tui -c 50 -m POST -H 'content-type: application/json' -d "$BODY" -n "$PREFILL" \
      "http://127.0.0.1:$PORT_GW/v1/chat/completions" >/dev/null
    kill -TERM "$pid"; wait "$pid" || true
  fi
  TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --separate-threads=yes \
    --callgrind-out-file="$OUT/callgrind.$mode.%p" \
    "$BIN" serve --config "$OUT/$mode.toml" >"$WORK/sluice-$mode.log" 2>"$WORK/valgrind-$mode.log" &
  pid=$!
  for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT_GW") 2>/dev/null && break; sleep 0.1; done
  "${OHA[@]}" -n 200 >/dev/null
  "${OHA[@]}" -n "$REQUESTS" >/dev/null
  kill -TERM "$pid"; wait "$pid" || true
done

python3 - "$OUT" "$REQUESTS" "$MODES" <<'PY'
import glob, re, sys
out, requests, modes = sys.argv[1], int(sys.argv[2]) + 200, sys.argv[3].split()
worker, others = {}, {}
for mode in modes:
    totals = []
    for f in glob.glob(f"{out}/callgrind.{mode}.*-*"):
        with open(f) as fh:
            for line in fh:
                if line.startswith("summary:"):
                    totals.append(int(line.split()[1]))
                    break
    worker[mode] = max(totals) / requests
    others[mode] = (sum(totals) - max(totals)) / requests
lines = ["| mode | request-thread instructions per request | mode - off | other threads per request | mode - off |",
         "|---|---|---|---|---|"]
for mode in modes:
    diff = f"{worker[mode] - worker['off']:+,.0f}" if "off" in worker and mode != "off" else ""
    odiff = f"{others[mode] - others['off']:+,.0f}" if "off" in others and mode != "off" else ""
    lines.append(f"| {mode} | {worker[mode]:,.0f} | {diff} | {others[mode]:,.0f} | {odiff} |")
text = "\n".join(lines)
print(text)
open(f"{out}/summary.md", "w").write(text + "\n")
PY
cat "$OUT/layout.txt" >>"$OUT/summary.md"
