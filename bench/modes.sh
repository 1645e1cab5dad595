#!/usr/bin/env bash
# Sluice in several configurations ("modes") against the upstream directly, interleaved in the same
# run: p50/p99, the latency each mode adds over direct, and its ratio to the mode `off`. Two suites:
#
#   SUITE=observability   off | logs | reqlog | otel | on   (bench/observability.sh; goal on/off <= 1.3x)
#       off = log filter error, no request log, no trace export; on = JSON access log at info to a file,
#       the SQLite request log, OTLP/HTTP export to a receiver; the others switch one part on alone.
#   SUITE=cache           off | hit | semantic | semantic-model: the same deterministic request with the
#       cache off, and on (every request after the warm-up a hit, never reaching the upstream). Goal:
#       hit p99 <= +0.5 ms. semantic: the exact tier off for the model, so every request is a semantic
#       hit (embedding + index + guards); SEMANTIC_EMBEDDER=hashing (default) or local (MiniLM: set
#       SLUICE_MINILM_DIR, and CARGO_FEATURES=local-embedder). semantic-model: embedded by an upstream
#       embeddings model (the mock upstream's, on loopback) through the provider layer.
#   SUITE=access          off | auth | memory | redis        (bench/access.sh; goal memory +0.1 ms,
#       redis +0.5 ms p50 over off) off = no key required; auth = a virtual key checked, no limits;
#       memory = the key with RPM, TPM, concurrency and budget limits plus model limits, in process;
#       redis = the same limits in a private redis-server (one Lua script round trip per call).
#
#   bench/modes.sh [RUNS] [RATE] [DURATION]     defaults: 3 2000 10s;  MODES="..." picks modes
#
# INTERLEAVE=1 (recommended for p99): every mode's Sluice runs for the whole measurement and the load
# alternates between them in segments of DURATION, RUNS rounds in rotating order; every request's
# latency is pooled per target and bench/pooled.py reports pooled p50/p99, the added latency, its
# ratio to `off` with a 90 % bootstrap interval over the rounds, and the same over the segments in
# which the hypervisor stole no vCPU time (steal from /proc/stat per segment; see bench/pooled.py),
# and over the requests that no stop of either CPU touched: examples/host_stops.rs watches each CPU
# from a real-time thread during the run and pooled.py leaves out the requests in flight around each
# stop it saw (HOST_STOPS=0: no watchers).
# Without it (the layout of the older results), each target's Sluice is started for its turn and each
# run's percentiles are medianed.
# The script and everything it starts run in a CPU cgroup of their own at the largest weight, so the
# machine's other processes take only the bench's idle time (bench/cgroup.sh; BENCH_CGROUP=0: not).
# TMPDIR decides where the log file and the request log are written (mktemp; /dev/shm for tmpfs).
# ALT="name=mode:binary ..." adds modes that run another Sluice binary with a mode's config: two builds
# compared in the same run (build the other one first and copy it out of target/).
#
# SLICE_MODES="a b": those modes' Tokio workers ask the kernel for an EEVDF slice of SLICE_NS
# (default 100000 = 0.1 ms; bench/slice.py), so that they preempt a running background thread on
# wake-up. With ALT naming the same binary, the same build with and without it in one run.
# OTLP_COUNT_ONLY=1: the OTLP receiver decodes and counts spans but keeps none (less of core 1's time).
# IDLE_MODES="a b": those modes' threads named in IDLE_THREADS (default sluice-reqlog, the request-log
# writer) become SCHED_IDLE after the warm-up (with ALT naming the same binary: one build both ways).
# BATCH_MODES="a b": those modes' background threads (all but the main thread and Tokio's) become
# SCHED_BATCH after the warm-up: same weight, but they do not preempt a running thread on wake-up.
# Sluice does this itself from 9059c5c on (src/telemetry/sched_class.rs); the knob is for older builds.
#
# PIN=process (default): the whole Sluice process on core 0, so its background threads (log writer,
# request-log writer, span export) compete with its request thread for the one core: the strictest
# layout. PIN=split: the request threads on core 0, the background threads on core 1 only (with the
# load generator and the upstream): a diagnosis layout, to tell the background threads' cost to the
# request thread through the shared core from their cost through handing work over.
# PIN=requests: the request threads on core 0 and the background threads free to run on either
# core (at the lowest priority, in the idle time of the load generator's and upstream's core too), as
# they do on any machine with a core to spare.
#
# Needs oha (cargo install oha --locked), taskset and python3 (and redis-server for the redis mode);
# builds the release binaries first. Pinning as in bench/run.sh: Sluice on core 0; upstream and oha on
# core 1; the OTLP receiver and redis-server on core 1 too, the receiver at nice 19 in its own process.
set -euo pipefail
RUNS="${1:-3}"; RATE="${2:-2000}"; DURATION="${3:-10s}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
cargo build --release --bins --quiet ${CARGO_FEATURES:+--features "$CARGO_FEATURES"}
# Its own cargo call: an example brings the dev-dependencies' features, which must not reach the bins.
if [ "${INTERLEAVE:-0}" = 1 ] && [ "${HOST_STOPS:-1}" = 1 ]; then cargo build --release --quiet --example host_stops; fi
SUITE="${SUITE:-observability}"
PIN="${PIN:-process}"
case "$PIN" in process|requests|split) ;; *) echo "PIN must be process, requests or split" >&2; exit 2 ;; esac
case "$SUITE" in
  observability) PREFIX=obs; DEFAULT_MODES="off on" ;;
  access) PREFIX=access; DEFAULT_MODES="off auth memory" ;;
  cache) PREFIX=cache; DEFAULT_MODES="off hit" ;;
  *) echo "unknown SUITE $SUITE" >&2; exit 2 ;;
esac
OUT="$REPO/bench/results/$PREFIX-$(date -u +%Y%m%dT%H%M%SZ)"; mkdir -p "$OUT"
echo "PIN=$PIN RUNS=$RUNS RATE=$RATE DURATION=$DURATION MODES=${MODES:-default} TMPDIR=${TMPDIR:-/tmp}" >"$OUT/layout.txt"
echo "SLICE_MODES=${SLICE_MODES:-} SLICE_NS=${SLICE_NS:-} BATCH_MODES=${BATCH_MODES:-} OTLP_COUNT_ONLY=${OTLP_COUNT_ONLY:-0}" >>"$OUT/layout.txt"
WORK="$(mktemp -d)"; PIDS=()
# The bench's processes outweigh the machine's others for the CPU (bench/cgroup.sh).
source bench/cgroup.sh
bench_cgroup_enter
echo "bench cgroup: ${BENCH_CGROUP_DIR:-none}" >>"$OUT/layout.txt"
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; bench_cgroup_leave; rm -rf "$WORK"; }
trap cleanup EXIT
# Killed or interrupted: exit (once the command running then ends), so the EXIT trap cleans up.
trap 'exit 130' INT TERM
PORT_UP="${PORT_UP:-18191}"; PORT_GW="${PORT_GW:-18193}"; PORT_OTLP_HOST="${PORT_OTLP_HOST:-18195}"
PORT_REDIS="${PORT_REDIS:-18197}"
# The bench key (a config key, stored as its SHA-256); sent by every request, ignored when not required.
BENCH_KEY="sk-bench-0123456789abcdef"
BENCH_KEY_SHA="$(printf %s "$BENCH_KEY" | sha256sum | cut -d' ' -f1)"
if oha --help 2>&1 | grep -q -- '--output-format'; then OHA_JSON=(--output-format json); else OHA_JSON=(-j); fi
OHA=(taskset -c 1 oha --no-tui "${OHA_JSON[@]}" -m POST -H 'content-type: application/json' -H "authorization: Bearer $BENCH_KEY")

taskset -c 1 target/release/sluice-mock-upstream --listen "127.0.0.1:$PORT_UP" --no-record 2>"$WORK/up.log" &
PIDS+=($!)
# The OTLP receiver is a process of its own at the lowest priority: decoding span batches is the
# collector's cost, not Sluice's, and inside the upstream process it delayed upstream responses (the
# first runs of this script charged that to Sluice as a +9 ms p99). A production collector runs on
# other cores or machines. (Run as SCHED_IDLE instead, `chrt --idle 0`, it made no difference to the
# on/off p99 gap: runs obs-20261127T212034Z and obs-20261127T212738Z, docs/BENCHMARKS.md.)
OTLP_ARGS=(--otlp); if [ "${OTLP_COUNT_ONLY:-0}" = 1 ]; then OTLP_ARGS+=(--otlp-count-only); fi
nice -n 19 taskset -c 1 target/release/sluice-mock-upstream --listen "127.0.0.1:$PORT_OTLP_HOST" --no-record "${OTLP_ARGS[@]}" 2>"$WORK/otlp.log" &
OTLP_PID=$!; PIDS+=($!)
for _ in $(seq 100); do grep -q "otlp receiver on" "$WORK/otlp.log" 2>/dev/null && break; sleep 0.1; done
OTLP="$(sed -n 's/^otlp receiver on //p' "$WORK/otlp.log")"
[ -n "$OTLP" ] || { echo "the mock upstream did not start its OTLP receiver" >&2; exit 1; }

common="[server]
listen = \"127.0.0.1:$PORT_GW\"
shutdown_grace = \"1s\"
[providers.up]
kind = \"openai\"
base_url = \"http://127.0.0.1:$PORT_UP/v1\"
[models.bench]
provider = \"up\"
price = { input = \"0.15\", output = \"0.60\" }"
off_log='[log]\nfilter = "error"\n'; on_log='[log]\nfilter = "info"\nformat = "json"\n'
off_rl='[request_log]\nenabled = false\n'; on_rl="[request_log]\nenabled = true\npath = \"$WORK/requests.db\"\n"
on_otel="[telemetry.otel]\nendpoint = \"http://$OTLP\"\nprotocol = \"http-protobuf\"\n"
MODES="${MODES:-$DEFAULT_MODES}"
no_auth='[auth]\nrequired = false\n'
key_auth="[auth]\nrequired = true\n[[auth.keys]]\nname = \"bench\"\nsecret_sha256 = \"$BENCH_KEY_SHA\"\n"
# Limits far above the offered load: every check runs and passes.
key_limits='limits = { rpm = 100000000, tpm = 1000000000000, max_concurrent = 100000 }\nbudget = { usd = "1000000000", period = "month" }\n'
model_limits='[models.bench.limits]\nrpm = 100000000\ntpm = 1000000000000\nmax_concurrent = 100000\n'
memory_state="[state]\nbackend = \"memory\"\npath = \"$WORK/state.db\"\n"
redis_state="[state]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:$PORT_REDIS\"\n"
cache_off='[cache]\nenabled = false\n'
if [ "$SUITE" = cache ]; then
  printf '%s\n'"$off_log$off_rl$no_auth$cache_off" "$common" >"$WORK/off.toml"
  printf '%s\n'"$off_log$off_rl$no_auth" "$common" >"$WORK/hit.toml"
  semantic_model='[models.bench.cache]\nexact = false\nsemantic = true\n'
  local_dir="${SLUICE_MINILM_DIR:-$REPO/models/all-MiniLM-L6-v2}"
  { printf "$off_log$off_rl$no_auth"; printf '%s\n' "$common"; printf "$semantic_model";
    printf '[cache.semantic]\nembedder = "%s"\nmodel_dir = "%s"\n' "${SEMANTIC_EMBEDDER:-hashing}" "$local_dir"
  } >"$WORK/semantic.toml"
  { printf "$off_log$off_rl$no_auth"; printf '%s\n' "$common"; printf "$semantic_model";
    printf '[models.emb]\nprovider = "up"\nupstream = "text-embedding-3-small"\n'
    printf '[cache.semantic]\nembedder = "model"\nembedding_model = "emb"\ndimensions = 8\n'
  } >"$WORK/semantic-model.toml"
elif [ "$SUITE" = observability ]; then
  printf '%s\n'"$off_log$off_rl$no_auth" "$common" >"$WORK/off.toml"
  printf '%s\n'"$on_log$on_rl$on_otel$no_auth" "$common" >"$WORK/on.toml"
  printf '%s\n'"$on_log$off_rl$no_auth" "$common" >"$WORK/logs.toml"
  printf '%s\n'"$off_log$on_rl$no_auth" "$common" >"$WORK/reqlog.toml"
  printf '%s\n'"$off_log$off_rl$on_otel$no_auth" "$common" >"$WORK/otel.toml"
else
  printf '%s\n'"$off_log$off_rl$no_auth$memory_state" "$common" >"$WORK/off.toml"
  printf '%s\n'"$off_log$off_rl$key_auth$memory_state" "$common" >"$WORK/auth.toml"
  printf '%s\n'"$off_log$off_rl$key_auth$key_limits$memory_state$model_limits" "$common" >"$WORK/memory.toml"
  printf '%s\n'"$off_log$off_rl$key_auth$key_limits$redis_state$model_limits" "$common" >"$WORK/redis.toml"
  if [[ " $MODES " == *" redis "* ]]; then
    taskset -c 1 redis-server --port "$PORT_REDIS" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do redis-cli -p "$PORT_REDIS" ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
fi
# ALT="name=mode:binary ...": extra modes running another build of Sluice with a mode's config, to
# compare two builds in the same interleaved run (e.g. ALT="wake=on:/tmp/sluice-wake").
declare -A BIN_OF
for spec in ${ALT:-}; do
  name="${spec%%=*}"; cfg="${spec#*=}"; cfg="${cfg%%:*}"; BIN_OF[$name]="${spec#*:}"
  cp "$WORK/$cfg.toml" "$WORK/$name.toml"; MODES="$MODES $name"
  echo "mode $name: config $cfg, binary ${BIN_OF[$name]} ($(sha256sum <"${BIN_OF[$name]}" | cut -c1-12))" >>"$OUT/layout.txt"
done
for m in $MODES; do cp "$WORK/$m.toml" "$OUT/"; done

BODY='{"model":"bench","messages":[{"role":"user","content":"hi"}]}'
SBODY='{"model":"bench","stream":true,"messages":[{"role":"user","content":"hi"}]}'
if [ "$SUITE" = cache ]; then
  # Deterministic, so cacheable: after the warm-up every request of the `hit` mode is a cache hit.
  BODY='{"model":"bench","temperature":0,"messages":[{"role":"user","content":"hi"}]}'
  SBODY='{"model":"bench","stream":true,"temperature":0,"messages":[{"role":"user","content":"hi"}]}'
fi

# Waits until a started Sluice accepts connections on port $2, warms it up, then pins it (PIN, see the
# top; after the warm-up, since the telemetry thread starts with the first finished request).
start_pinned() {
  local pid=$1 port=$2 mode=${3:-}
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
  "${OHA[@]}" -n 2000 -c 50 -d "$BODY" "http://127.0.0.1:$port/v1/chat/completions" >/dev/null   # warm-up
  if [[ " ${SLICE_MODES:-} " == *" $mode "* ]]; then
    for task in /proc/"$pid"/task/*; do
      if [ "$(cat "$task/comm")" = tokio-rt-worker ]; then python3 bench/slice.py set "${SLICE_NS:-100000}" "${task##*/}"; fi
    done
  fi
  if [[ " ${BATCH_MODES:-} " == *" $mode "* ]]; then
    for task in /proc/"$pid"/task/*; do
      case "$(cat "$task/comm")" in sluice|tokio-rt-worker) ;; *) chrt --batch -p 0 "${task##*/}" ;; esac
    done
  fi
  if [[ " ${IDLE_MODES:-} " == *" $mode "* ]]; then
    # Those threads (by name, default the request-log writer) into SCHED_IDLE: an experiment knob.
    for task in /proc/"$pid"/task/*; do
      if [[ " ${IDLE_THREADS:-sluice-reqlog} " == *" $(cat "$task/comm") "* ]]; then chrt --idle -p 0 "${task##*/}"; fi
    done
  fi
  if [ "$PIN" != process ]; then
    # The request threads (main thread, Tokio worker and blocking pool) to core 0; threads they
    # start later inherit it. The background threads keep both cores, or core 1 alone (split).
    for task in /proc/"$pid"/task/*; do
      case "$(cat "$task/comm")" in
        sluice|tokio-rt-worker) taskset -p -c 0 "${task##*/}" >/dev/null ;;
        *) if [ "$PIN" = split ]; then taskset -p -c 1 "${task##*/}" >/dev/null; fi ;;
      esac
    done
  fi
}
if [ "$PIN" = process ]; then CORES=0; else CORES=0,1; fi

if [ "${INTERLEAVE:-0}" = 1 ]; then
  # Every mode's Sluice runs for the whole measurement (each on its own port, all pinned alike; an
  # instance without load is idle) and the load moves between them and the upstream in segments of
  # DURATION: round r takes the targets in an order rotated by r and reversed every other round, so
  # no target always follows another. Latencies of every request (oha --db-url) are pooled per
  # target; bench/pooled.py reports pooled p50/p99, the latency each mode adds over direct, its ratio
  # to `off`, and a bootstrap interval of that ratio over the rounds.
  echo "INTERLEAVE=1" >>"$OUT/layout.txt"
  mkdir -p "$WORK/lat"
  declare -A PID_OF URL_OF
  i=0
  for m in $MODES; do
    port=$((${PORT_MODES:-18300} + i)); i=$((i + 1))
    sed -e "s/127.0.0.1:$PORT_GW/127.0.0.1:$port/" -e "s#$WORK/requests.db#$WORK/requests-$m.db#" \
      -e "s#$WORK/state.db#$WORK/state-$m.db#" "$WORK/$m.toml" >"$WORK/$m-interleaved.toml"
    TOKIO_WORKER_THREADS=1 taskset -c "$CORES" "${BIN_OF[$m]:-target/release/sluice}" serve --config "$WORK/$m-interleaved.toml" >"$WORK/sluice-$m.log" 2>&1 &
    PID_OF[$m]=$!; PIDS+=($!)
    start_pinned "${PID_OF[$m]}" "$port" "$m"
    URL_OF[$m]="http://127.0.0.1:$port/v1/chat/completions"
  done
  URL_OF[direct]="http://127.0.0.1:$PORT_UP/v1/chat/completions"
  read -r -a TARGETS <<<"direct $MODES"
  n=${#TARGETS[@]}
  python3 bench/threadcpu.py snapshot "$OTLP_PID" >"$WORK/receiver-before.json"
  if [ "${HOST_STOPS:-1}" = 1 ]; then
    # One watcher per CPU, real-time, waking every 1 ms: its late wake-ups of 1 ms or more are the
    # times that CPU ran nothing (examples/host_stops.rs), in wall-clock seconds like seg.base below.
    for c in 0 1; do
      chrt -f 50 taskset -c "$c" target/release/examples/host_stops 1000 1000 >"$OUT/stops-cpu$c.txt" &
      PIDS+=($!)
    done
  fi
  for run in $(seq "$RUNS"); do
    order=()
    for k in $(seq 0 $((n - 1))); do order+=("${TARGETS[$(((k + run - 1) % n))]}"); done
    if [ $((run % 2)) = 0 ]; then
      for ((a = 0, b = n - 1; a < b; a++, b--)); do t="${order[a]}"; order[a]="${order[b]}"; order[b]="$t"; done
    fi
    for mode in nonstream stream; do
      body="$BODY"; [ "$mode" = stream ] && body="$SBODY"
      for target in "${order[@]}"; do
        pid="${PID_OF[$target]:-}"
        [ -n "$pid" ] && python3 bench/threadcpu.py snapshot "$pid" >"$WORK/cpu-before.json"
        rm -f "$WORK/seg.db"
        python3 bench/threadcpu.py snapshot-irq >"$WORK/irq-before.json"
        # oha's request times are relative to its start, a few ms after this wall-clock stamp.
        date +%s.%N >"$WORK/seg.base"
        "${OHA[@]}" -z "$DURATION" -c 50 -q "$RATE" --latency-correction -d "$body" --db-url "$WORK/seg.db" "${URL_OF[$target]}" >"$OUT/r$run-$mode-$target.json"
        # Each request's latency, and its interval (from its scheduled start, as the latency counts
        # it) on the wall clock, line for line.
        python3 - "$WORK/seg.db" "$WORK/seg.base" "$WORK/lat/r$run-$mode-$target" <<'PY'
import sqlite3, sys
base = float(open(sys.argv[2]).read())
rows = sqlite3.connect(sys.argv[1]).execute("select duration, coalesce(start_latency_correction, start), end from oha").fetchall()
with open(f"{sys.argv[3]}.txt", "w") as lat, open(f"{sys.argv[3]}.times.txt", "w") as times:
    lat.writelines(f"{d:.9f}\n" for d, _, _ in rows)
    times.writelines(f"{base + s:.6f} {base + e:.6f}\n" for _, s, e in rows)
PY
        python3 bench/threadcpu.py snapshot-irq >"$WORK/irq-after.json"
        python3 bench/threadcpu.py diff "$WORK/irq-before.json" "$WORK/irq-after.json" "$(wc -l <"$WORK/lat/r$run-$mode-$target.txt")" >"$OUT/r$run-$mode-$target.irq.json"
        if [ -n "$pid" ]; then
          python3 bench/threadcpu.py snapshot "$pid" >"$WORK/cpu-after.json"
          python3 bench/threadcpu.py diff "$WORK/cpu-before.json" "$WORK/cpu-after.json" "$(wc -l <"$WORK/lat/r$run-$mode-$target.txt")" >"$OUT/r$run-$mode-$target.cpu.json"
        fi
      done
    done
  done
  # The receiver's CPU per request exported (modes with OTLP export): what it took from core 1.
  python3 bench/threadcpu.py snapshot "$OTLP_PID" >"$WORK/receiver-after.json"
  exported=0
  for m in $MODES; do
    if grep -q telemetry.otel "$WORK/$m.toml"; then
      for f in "$WORK"/lat/*-"$m".txt; do exported=$((exported + $(wc -l <"$f"))); done
    fi
  done
  python3 bench/threadcpu.py diff "$WORK/receiver-before.json" "$WORK/receiver-after.json" "$exported" >"$OUT/receiver.cpu.json"
  # Every request's latency and interval stay with the run (not committed: results/.gitignore).
  mv "$WORK/lat" "$OUT/lat"
  python3 bench/pooled.py "$OUT" "$OUT/lat" "$RUNS" "direct $MODES"
  echo "OTLP receiver, CPU µs per exported request: $(cat "$OUT/receiver.cpu.json")" | tee -a "$OUT/summary.md"
  exit 0
fi

for run in $(seq "$RUNS"); do
  for target in direct $MODES; do
    if [ "$target" = direct ]; then
      url="http://127.0.0.1:$PORT_UP/v1/chat/completions"
    else
      TOKIO_WORKER_THREADS=1 taskset -c "$CORES" "${BIN_OF[$target]:-target/release/sluice}" serve --config "$WORK/$target.toml" >"$WORK/sluice-$target.log" 2>&1 &
      pid=$!
      start_pinned "$pid" "$PORT_GW" "$target"
      url="http://127.0.0.1:$PORT_GW/v1/chat/completions"
    fi
    for mode in nonstream stream; do
      body="$BODY"; [ "$mode" = stream ] && body="$SBODY"
      [ "$target" != direct ] && python3 bench/threadcpu.py snapshot "$pid" >"$WORK/cpu-before.json"
      "${OHA[@]}" -z "$DURATION" -c 50 -q "$RATE" --latency-correction -d "$body" "$url" >"$OUT/r$run-$mode-$target.json"
      if [ "$target" != direct ]; then
        python3 bench/threadcpu.py snapshot "$pid" >"$WORK/cpu-after.json"
        n="$(python3 -c 'import json,sys; print(sum(json.load(open(sys.argv[1]))["statusCodeDistribution"].values()))' "$OUT/r$run-$mode-$target.json")"
        python3 bench/threadcpu.py diff "$WORK/cpu-before.json" "$WORK/cpu-after.json" "$n" >"$OUT/r$run-$mode-$target.cpu.json"
      fi
    done
    if [ "$target" != direct ]; then kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; fi
  done
done
{ cat "$OUT/layout.txt"; echo "access-log bytes written by the last instance: $(wc -c <"$WORK/sluice-$target.log")"; } >"$OUT/notes.txt"
echo "requests in the request log: $(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from requests').fetchone()[0])" "$WORK/requests.db" 2>/dev/null || echo '?')" >>"$OUT/notes.txt"

MODES="$MODES" python3 - "$OUT" "$RUNS" <<'PY'
import json, os, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
def pct(f, k):
    d = json.load(open(f"{out}/{f}.json"))
    return d["latencyPercentiles"][k] * 1000
lines = ["| mode | target | p50 ms | p99 ms | added p50 | added p99 | per-run added p50 | per-run added p99 |",
         "|---|---|---|---|---|---|---|---|"]
ratios = {}
for mode in ("nonstream", "stream"):
    added = {}
    base50 = [pct(f"r{r}-{mode}-direct", "p50") for r in range(1, runs + 1)]
    base99 = [pct(f"r{r}-{mode}-direct", "p99") for r in range(1, runs + 1)]
    lines.append(f"| {mode} | direct | {statistics.median(base50):.3f} | {statistics.median(base99):.3f} | | | | |")
    for t in os.environ["MODES"].split():
        p50 = [pct(f"r{r}-{mode}-{t}", "p50") for r in range(1, runs + 1)]
        p99 = [pct(f"r{r}-{mode}-{t}", "p99") for r in range(1, runs + 1)]
        a50 = [x - b for x, b in zip(p50, base50)]
        a99 = [x - b for x, b in zip(p99, base99)]
        added[t] = (statistics.median(a50), statistics.median(a99))
        lines.append(f"| {mode} | sluice {t} | {statistics.median(p50):.3f} | {statistics.median(p99):.3f} | "
                     f"{added[t][0]:+.3f} | {added[t][1]:+.3f} | {' / '.join(f'{x:+.3f}' for x in a50)} | "
                     f"{' / '.join(f'{x:+.3f}' for x in a99)} |")
    ratios[mode] = {t: (a[0] / added["off"][0], a[1] / added["off"][1], a[0] - added["off"][0], a[1] - added["off"][1])
                    for t, a in added.items() if t != "off"}
text = "\n".join(lines) + "\n\n" + "\n".join(
    f"- {m}: added latency {t}/off = {r50:.2f}x at p50, {r99:.2f}x at p99; "
    f"{t} - off = {d50:+.3f} ms at p50, {d99:+.3f} ms at p99"
    for m, per in ratios.items() for t, (r50, r99, d50, d99) in per.items())
# CPU time of the Sluice process per request (bench/threadcpu.py): steadier than latency percentiles on
# a shared machine, and split into the request threads (Tokio workers) and the background threads.
cpu = ["| mode | target | CPU µs/request (median) | request threads | background threads | per run | worker runnable, waiting for the core (µs/request) |", "|---|---|---|---|---|---|---|"]
for mode in ("nonstream", "stream"):
    for t in os.environ["MODES"].split():
        runs_cpu = [json.load(open(f"{out}/r{r}-{mode}-{t}.cpu.json")) for r in range(1, runs + 1)]
        total = [c["total"] for c in runs_cpu]
        # The main thread (`sluice`, which accepts connections) and the Tokio workers (and blocking pool).
        workers = [sum(v for k, v in c.items() if (k.startswith("tokio-") or k == "sluice") and not k.endswith(")")) for c in runs_cpu]
        waiting = [c.get("tokio-rt-worker (waiting)", 0.0) for c in runs_cpu]
        cpu.append(f"| {mode} | sluice {t} | {statistics.median(total):.1f} | {statistics.median(workers):.1f} | "
                   f"{statistics.median([a - b for a, b in zip(total, workers)]):.1f} | "
                   f"{' / '.join(f'{x:.1f}' for x in total)} | {' / '.join(f'{x:.1f}' for x in waiting)} |")
text += "\n\n" + "\n".join(cpu)
text += "\n\n" + open(f"{out}/notes.txt").read()
print(text)
open(f"{out}/summary.md", "w").write(text + "\n")
PY
