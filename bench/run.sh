#!/usr/bin/env bash
# Sluice load benchmark: direct upstream vs nginx (the floor) vs Sluice, on loopback, pinned to cores.
# Run `bench/run.sh --help` for what it does.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"

# ---- defaults (each can be set in the environment or with the flags below) ----------------------
RUNS="${RUNS:-3}"                       # repetitions of every measured configuration
DURATION="${DURATION:-15s}"             # oha -z for fixed-rate runs
TTFT_SECONDS="${TTFT_SECONDS:-15}"      # measured seconds of each TTFT run
RATES="${RATES:-500 2000}"              # fixed request rates (req/s)
CONNS="${CONNS:-50}"                    # connections for fixed-rate runs
MAX_CONNS="${MAX_CONNS:-64}"            # connections for the max-throughput run
MAX_DURATION="${MAX_DURATION:-10s}"     # duration of the max-throughput run
STREAMS="${STREAMS:-1000 9000 10000}"   # open streams for the RSS test (10,000 needs > 20,000 fds)
RELAY_RATE="${RELAY_RATE:-100}"         # streams/s in the chunk-relay test
RELAY_TOKENS="${RELAY_TOKENS:-20}"      # chunks per stream in the chunk-relay test
RELAY_DELAY_MS="${RELAY_DELAY_MS:-5}"   # ms between chunks in the chunk-relay test
TOKENS="${TOKENS:-16}"                  # mock upstream: tokens per reply
SECTIONS="${SECTIONS:-nonstream stream ttft throughput relay rss}"
QUIET_WAIT="${QUIET_WAIT:-900}"         # seconds to wait for a quiet machine before each measurement
QUIET_CPU="${QUIET_CPU:-25}"            # "quiet" = machine-wide CPU busy below this % over 1 s
BUILD=1
PORT_UP="${PORT_UP:-18181}"; PORT_NG="${PORT_NG:-18182}"; PORT_GW="${PORT_GW:-18183}"
PORT_SLOW="${PORT_SLOW:-18184}"; PORT_STAMP="${PORT_STAMP:-18185}"; PORT_NG_STAMP="${PORT_NG_STAMP:-18186}"
OUT=""

usage() {
  cat <<EOF
Usage: bench/run.sh [options]

Measures what Sluice adds on top of an upstream, against nginx as the floor. Everything runs on
loopback (127.0.0.1), every load run is bounded in time or count. Three targets are measured in the
same run, interleaved, RUNS times each:
  direct  the mock upstream (target/release/sluice-mock-upstream --no-record), pinned to core 1
  nginx   nginx as a plain reverse proxy to it (1 worker, keep-alive pool, proxy_buffering off), core 0
  sluice  target/release/sluice serve (TOKIO_WORKER_THREADS=1), core 0
The load generators (oha, bench/streamclient.py) run on core 1, beside the upstream. Sluice runs
without virtual keys ([auth] required = false; bench/access.sh measures keys and limits). Everything
the script starts runs in a CPU cgroup of its own at the largest weight, so the machine's other
processes take only the bench's idle time (bench/cgroup.sh; BENCH_CGROUP=0: not).

Sections (SECTIONS, default "$SECTIONS"):
  nonstream   oha, non-streaming chat completions at fixed rates (\$RATES req/s, -c $CONNS, -z $DURATION,
              --latency-correction): p50/p99/p99.9 and the latency added over direct
  stream      the same with "stream":true: latency of the whole stream
  ttft        bench/streamclient.py ttft: time to first token (first SSE data event) at the same rates
  throughput  oha, non-streaming, no rate limit, -c $MAX_CONNS, -z $MAX_DURATION: req/s
  relay       bench/stamp_upstream.py stamps each chunk with CLOCK_MONOTONIC; streamclient.py relay
              measures read time minus stamp per chunk, direct / nginx / sluice
  rss         a fresh Sluice per count: VmRSS idle, then with each of \$STREAMS open streams (upstream with
              --tokens 1000 --token-delay-ms 1000), KB per open stream

Options:
  --runs N          repetitions (default $RUNS)
  --duration D      oha duration of fixed-rate runs, e.g. 15s (default $DURATION)
  --rates "A B"     fixed rates (default "$RATES")
  --sections "..."  subset of the sections above, in that order
  --streams "A B"   open-stream counts for the rss section (default "$STREAMS")
  --quick           smoke test of the harness: 1 run, 3 s per run, 200 streams (numbers not meaningful)
  --no-build        skip cargo build --release --bins
  --out DIR         results directory (default bench/results/<UTC timestamp>)
  -h, --help        this help

Environment: the same names in capitals (RUNS, DURATION, RATES, CONNS, MAX_CONNS, MAX_DURATION,
STREAMS, TOKENS, SECTIONS, QUIET_WAIT, QUIET_CPU, PORT_UP, PORT_NG, PORT_GW, PORT_SLOW, PORT_STAMP,
PORT_NG_STAMP). SLUICE_BIN and UPSTREAM_BIN replace the two binaries (only to test the harness).

Before each measurement the script waits (up to QUIET_WAIT s) until no rustc runs and the machine's
CPU is below QUIET_CPU % busy over one second; each measurement's noise (other processes' CPU during
it, rustc seen) is written to noise.tsv and flagged in the summary.

Needs (installs nothing): oha, nginx, taskset, python3 (>= 3.8), cargo, curl. See bench/README.md.
Output: raw JSON per measurement in the results directory, summary.json and summary.md there, and
the summary table on stdout.
EOF
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) RUNS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --rates) RATES="$2"; shift 2 ;;
    --sections) SECTIONS="$2"; shift 2 ;;
    --streams) STREAMS="$2"; shift 2 ;;
    --quick) RUNS=1; DURATION=3s; TTFT_SECONDS=3; MAX_DURATION=3s; STREAMS=200; QUIET_WAIT=0; shift ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---- tools ------------------------------------------------------------------------------------
missing=0
need() {
  if ! command -v "$1" >/dev/null 2>&1; then
    log "missing: $1 — install with: $2"; missing=1
  fi
}
need oha "cargo install oha --locked"
need nginx "apt-get update && apt-get install -y nginx-light   (or nginx)"
need taskset "apt-get install -y util-linux"
need python3 "apt-get install -y python3"
need cargo "rustup (https://rustup.rs)"
need curl "apt-get install -y curl"
[[ $missing == 0 ]] || die "install the missing tools above and run again"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 8))' || die "python3 >= 3.8 needed"
[[ $(nproc) -ge 2 ]] || die "needs at least 2 cores (the gateway on core 0, load and upstream on core 1)"

# oha's JSON flag changed name across versions
if oha --help 2>&1 | grep -q -- '--output-format'; then OHA_JSON=(--output-format json); else OHA_JSON=(-j); fi
OHA_WAIT=()
if oha --help 2>&1 | grep -q -- '--wait-ongoing-requests-after-deadline'; then
  OHA_WAIT=(--wait-ongoing-requests-after-deadline)
fi

# ---- file descriptors: 10,000 streams through Sluice need ~20,000 (client side + upstream side) --
hard=$(ulimit -Hn)
ulimit -Sn "$hard" 2>/dev/null || true
log "open-file limit: soft $(ulimit -Sn), hard $hard"

# ---- results directory ------------------------------------------------------------------------
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="${OUT:-$BENCH_DIR/results/$STAMP}"
mkdir -p "$OUT"
WORK="$(mktemp -d /tmp/sluice-bench.XXXXXX)"
log "results: $OUT   scratch: $WORK"

PIDS=()
# The bench's processes outweigh the machine's others for the CPU (bench/cgroup.sh; BENCH_CGROUP=0: not).
source "$BENCH_DIR/cgroup.sh"
bench_cgroup_enter
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  sleep 0.5
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  [[ -f "$WORK/nginx/nginx.pid" ]] && kill "$(cat "$WORK/nginx/nginx.pid")" 2>/dev/null || true
  bench_cgroup_leave
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Stop leftovers of an earlier, interrupted run of this script (only processes listening on our ports
# whose command line is one of ours), so the script can simply be run again.
for port in "$PORT_UP" "$PORT_NG" "$PORT_GW" "$PORT_SLOW" "$PORT_STAMP" "$PORT_NG_STAMP"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    pids=$(ss -Hltnp "sport = :$port" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u || true)
    for pid in $pids; do
      cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
      case "$cmd" in
        *sluice-bench*|*sluice-mock-upstream*|*"sluice serve"*|*stamp_upstream.py*)
          log "stopping leftover pid $pid on port $port: $cmd"; kill "$pid" 2>/dev/null || true ;;
        *) die "port $port is in use by pid $pid ($cmd); set PORT_* to free ports" ;;
      esac
    done
    sleep 1
  fi
done

# ---- machine description ------------------------------------------------------------------------
{
  echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "mem_total: $(grep MemTotal /proc/meminfo | awk '{print $2, $3}')"
  echo "kernel: $(uname -srm)"
  echo "oha: $(oha --version 2>&1 | head -1)"
  echo "nginx: $(nginx -v 2>&1)"
  echo "python: $(python3 --version 2>&1)"
  echo "rustc: $(rustc --version 2>/dev/null || echo '?')"
  echo "git: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'no commit')"
  echo "nofile: $(ulimit -Sn)/$(ulimit -Hn)"
  echo "runs: $RUNS  duration: $DURATION  rates: $RATES  conns: $CONNS  max: -c $MAX_CONNS $MAX_DURATION  tokens: $TOKENS"
} >"$OUT/machine.txt"

# ---- build --------------------------------------------------------------------------------------
if [[ $BUILD == 1 ]]; then
  log "cargo build --release --bins"
  (cd "$REPO" && cargo build --release --bins) || die "build failed"
fi
SLUICE="${SLUICE_BIN:-$REPO/target/release/sluice}"                     # overridable to test the harness
UPSTREAM="${UPSTREAM_BIN:-$REPO/target/release/sluice-mock-upstream}"
[[ -x "$SLUICE" && -x "$UPSTREAM" ]] || die "missing $SLUICE or $UPSTREAM (build first)"
# Run private copies: a cargo build by someone else during the run must not swap the binary under us.
mkdir -p "$WORK/bin"
cp "$SLUICE" "$WORK/bin/sluice-under-test"; cp "$UPSTREAM" "$WORK/bin/sluice-mock-upstream"
{
  echo "sluice_binary: $SLUICE built $(date -u -r "$SLUICE" +%Y-%m-%dT%H:%M:%SZ) sha256 $(sha256sum "$SLUICE" | cut -c1-16)"
  echo "upstream_binary: $UPSTREAM built $(date -u -r "$UPSTREAM" +%Y-%m-%dT%H:%M:%SZ)"
  echo "git_status: $(git -C "$REPO" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | wc -l) changed files under src/ and Cargo.*"
} >>"$OUT/machine.txt"
SLUICE="$WORK/bin/sluice-under-test"; UPSTREAM="$WORK/bin/sluice-mock-upstream"

# ---- quiet-machine gate and noise accounting ----------------------------------------------------
cpu_busy_pct() {  # machine-wide CPU busy % over $1 seconds
  local a b
  read -r -a a < <(grep '^cpu ' /proc/stat)
  sleep "$1"
  read -r -a b < <(grep '^cpu ' /proc/stat)
  local idle=$(( (b[4] + b[5]) - (a[4] + a[5]) )) total=0 i
  for i in 1 2 3 4 5 6 7 8; do total=$(( total + b[i] - a[i] )); done
  echo $(( total > 0 ? 100 * (total - idle) / total : 0 ))
}
rustc_running() { pgrep -x rustc >/dev/null 2>&1 || pgrep -f 'bin/rustc|cargo build|cargo test|cargo clippy' >/dev/null 2>&1; }
wait_quiet() {
  local waited=0 busy
  while :; do
    busy=$(cpu_busy_pct 1)
    if ! rustc_running && (( busy < QUIET_CPU )); then return 0; fi
    if (( waited >= QUIET_WAIT )); then
      log "machine still busy (cpu ${busy}%, rustc: $(rustc_running && echo yes || echo no)); measuring anyway, flagged"
      return 0
    fi
    (( waited % 60 == 0 )) && log "waiting for a quiet machine (cpu ${busy}%, rustc: $(rustc_running && echo yes || echo no))"
    sleep 4; waited=$((waited + 5))
  done
}
# CPU ticks used by everything except our own processes during a measurement: other agents' noise.
# Ours = the live benchmark processes (upstream, nginx, sluice, stamp upstream) plus every finished
# child of this shell (oha, streamclient.py: counted in our cutime/cstime once reaped).
ours_ticks() {
  local t=0 pid stat
  for pid in "${PIDS[@]}"; do
    stat=$(cut -d' ' -f14-15 "/proc/$pid/stat" 2>/dev/null) || continue
    t=$(( t + ${stat% *} + ${stat#* } ))
  done
  if [[ -n "${NGINX_PID:-}" ]]; then  # nginx worker (child of the master we started)
    for pid in $(pgrep -P "$NGINX_PID" 2>/dev/null); do
      stat=$(cut -d' ' -f14-15 "/proc/$pid/stat" 2>/dev/null) || continue
      t=$(( t + ${stat% *} + ${stat#* } ))
    done
  fi
  stat=$(cut -d' ' -f16-17 "/proc/$$/stat")
  echo $(( t + ${stat% *} + ${stat#* } ))
}
all_ticks() { awk '/^cpu /{print $2+$3+$4}' /proc/stat; }  # user+nice+system, as process times count
proxy_ticks() {  # CPU ticks of the process on core 0 (sluice, or the nginx worker)
  local t=0 pid stat
  for pid in ${SLUICE_PID:-} $( [[ -n "${NGINX_PID:-}" ]] && pgrep -P "$NGINX_PID" 2>/dev/null ); do
    stat=$(cut -d' ' -f14-15 "/proc/$pid/stat" 2>/dev/null) || continue
    t=$(( t + ${stat% *} + ${stat#* } ))
  done
  echo "$t"
}
echo -e "measurement\tother_cpu_pct\trustc_seen\tloadavg_after\tproxy_cpu_pct" >"$OUT/noise.tsv"
measure() {  # measure NAME CMD... : gate, run, record the noise
  local name="$1"; shift
  wait_quiet
  local a0 o0 a1 o1 p0 p1 rs=no
  a0=$(all_ticks); o0=$(ours_ticks); p0=$(proxy_ticks)
  rustc_running && rs=yes
  "$@"
  rustc_running && rs=yes
  a1=$(all_ticks); o1=$(ours_ticks); p1=$(proxy_ticks)
  local secs_ticks=$(( a1 - a0 - (o1 - o0) ))
  # other processes' CPU as % of one core over the measurement, approximated from ticks (100/s)
  local dur=${MEASURE_SECONDS:-1}
  echo -e "$name\t$(( secs_ticks < 0 ? 0 : secs_ticks / dur ))\t$rs\t$(cut -d' ' -f1 /proc/loadavg)\t$(( (p1 - p0) / dur ))" >>"$OUT/noise.tsv"
}

# ---- configs --------------------------------------------------------------------------------------
mkdir -p "$WORK/nginx/logs" "$WORK/nginx/tmp"
cat >"$WORK/nginx/nginx.conf" <<EOF
# generated by bench/run.sh: nginx as a plain reverse proxy, the floor
worker_processes 1;
worker_rlimit_nofile $(ulimit -Sn);
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/tmp/body;
  proxy_temp_path $WORK/nginx/tmp/proxy;
  fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
  uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
  scgi_temp_path $WORK/nginx/tmp/scgi;
  keepalive_requests 1000000;
  upstream up    { server 127.0.0.1:$PORT_UP;    keepalive 256; keepalive_requests 1000000; }
  upstream stamp { server 127.0.0.1:$PORT_STAMP; keepalive 256; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$PORT_NG;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
    }
  }
  server {
    listen 127.0.0.1:$PORT_NG_STAMP;
    location / {
      proxy_pass http://stamp;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
    }
  }
}
EOF
cat >"$WORK/sluice.toml" <<EOF
# generated by bench/run.sh
[server]
listen = "127.0.0.1:$PORT_GW"
shutdown_grace = "1s"

# No virtual keys: the headline measures the proxy path (bench/access.sh measures key checks and
# limits); Sluice requires a key by default since issue 4, which this harness predates.
[auth]
required = false

[providers.up]
kind = "openai"
base_url = "http://127.0.0.1:$PORT_UP/v1"

[providers.slow]
kind = "openai"
base_url = "http://127.0.0.1:$PORT_SLOW/v1"

[providers.stamp]
kind = "openai"
base_url = "http://127.0.0.1:$PORT_STAMP/v1"

[models.bench]
provider = "up"

[models.slow]
provider = "slow"

[models.stamp]
provider = "stamp"

[log]
filter = "warn"

# Everything else is Sluice's default (metrics and the SQLite request log are on by default); only the
# request log's file is moved out of the working directory.
[request_log]
path = "$WORK/sluice-requests.db"
EOF
cp "$WORK/nginx/nginx.conf" "$OUT/nginx.conf"; cp "$WORK/sluice.toml" "$OUT/sluice.toml"

# ---- process control ----------------------------------------------------------------------------
wait_port() {  # wait_port PORT PID NAME
  local i
  for i in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || die "$3 exited during start-up (see $OUT/$3.log)"
    sleep 0.05
  done
  die "$3 did not listen on port $1 (see $OUT/$3.log)"
}
stop_pid() {
  local pid=$1 i
  kill "$pid" 2>/dev/null || return 0
  for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}
start_upstream() {  # start_upstream PORT NAME ARGS... (core 1)
  local port=$1 name=$2; shift 2
  taskset -c 1 "$UPSTREAM" --listen "127.0.0.1:$port" --no-record "$@" >>"$OUT/$name.log" 2>&1 &
  STARTED_PID=$!; PIDS+=("$STARTED_PID"); wait_port "$port" "$STARTED_PID" "$name"
}
start_nginx() {
  taskset -c 0 nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' >>"$OUT/nginx.log" 2>&1 &
  NGINX_PID=$!; PIDS+=("$NGINX_PID"); wait_port "$PORT_NG" "$NGINX_PID" nginx
}
start_sluice() {
  TOKIO_WORKER_THREADS=1 taskset -c 0 "$SLUICE" serve --config "$WORK/sluice.toml" >>"$OUT/sluice.log" 2>&1 &
  SLUICE_PID=$!; PIDS+=("$SLUICE_PID"); wait_port "$PORT_GW" "$SLUICE_PID" sluice
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT_GW/healthz") || true
  [[ $code == 200 ]] || die "sluice /healthz answered $code"
}
rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/{print $2}' "/proc/$1/status"; }
fds() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }

declare -A URL=(
  [direct]="http://127.0.0.1:$PORT_UP/v1/chat/completions"
  [nginx]="http://127.0.0.1:$PORT_NG/v1/chat/completions"
  [sluice]="http://127.0.0.1:$PORT_GW/v1/chat/completions"
)
TARGETS=(direct nginx sluice)
BODY='{"model":"bench","messages":[{"role":"user","content":"hi"}]}'
SBODY='{"model":"bench","stream":true,"messages":[{"role":"user","content":"hi"}]}'
OHA_BASE=(--no-tui "${OHA_JSON[@]}" "${OHA_WAIT[@]}" -m POST -H 'content-type: application/json')
secs() { local d=$1; d=${d%s}; echo "${d%.*}"; }

# ---- start -------------------------------------------------------------------------------------
start_upstream "$PORT_UP" upstream --tokens "$TOKENS" --ttft-ms 0 --token-delay-ms 0; UP_PID=$STARTED_PID
start_nginx
wait_quiet
start_sluice
sleep 1
echo "{\"rss_kb\": $(rss_kb "$SLUICE_PID"), \"note\": \"VmRSS of the main sluice 1 s after start, before any request\"}" >"$OUT/sluice-idle-start.json"
log "sluice pid $SLUICE_PID idle RSS $(rss_kb "$SLUICE_PID") kB; upstream pid $UP_PID; nginx pid $NGINX_PID"

# smoke test: every target answers both kinds of request
for t in "${TARGETS[@]}"; do
  code=$(curl -s -o "$OUT/smoke-$t.json" -w '%{http_code}' -H 'content-type: application/json' -d "$BODY" "${URL[$t]}")
  [[ $code == 200 ]] || die "$t non-streaming answered HTTP $code: $(head -c 300 "$OUT/smoke-$t.json")"
  code=$(curl -s -N -o "$OUT/smoke-$t.sse" -w '%{http_code}' -H 'content-type: application/json' -d "$SBODY" "${URL[$t]}")
  [[ $code == 200 ]] || die "$t streaming answered HTTP $code: $(head -c 300 "$OUT/smoke-$t.sse")"
  grep -q '^data: \[DONE\]' "$OUT/smoke-$t.sse" || die "$t stream has no [DONE]: $(head -c 300 "$OUT/smoke-$t.sse")"
done
log "smoke test ok; warming up"
for t in "${TARGETS[@]}"; do
  taskset -c 1 oha "${OHA_BASE[@]}" -n 5000 -c "$CONNS" -d "$BODY" "${URL[$t]}" >/dev/null
  taskset -c 1 oha "${OHA_BASE[@]}" -n 2000 -c "$CONNS" -d "$SBODY" "${URL[$t]}" >/dev/null
done

has() { [[ " $SECTIONS " == *" $1 "* ]]; }
oha_run() {  # oha_run FILE ARGS...
  local f=$1; shift
  taskset -c 1 oha "${OHA_BASE[@]}" "$@" >"$f.tmp" && mv "$f.tmp" "$f"
}

# ---- measured sections, interleaved by repetition -------------------------------------------------
for run in $(seq 1 "$RUNS"); do
  log "=== run $run/$RUNS"
  for rate in $RATES; do
    if has nonstream; then
      for t in "${TARGETS[@]}"; do
        log "nonstream q=$rate $t"
        MEASURE_SECONDS=$(secs "$DURATION") measure "r$run-nonstream-q$rate-$t" \
          oha_run "$OUT/r$run-nonstream-q$rate-$t.json" -z "$DURATION" -c "$CONNS" -q "$rate" --latency-correction -d "$BODY" "${URL[$t]}"
      done
    fi
    if has stream; then
      for t in "${TARGETS[@]}"; do
        log "stream q=$rate $t"
        MEASURE_SECONDS=$(secs "$DURATION") measure "r$run-stream-q$rate-$t" \
          oha_run "$OUT/r$run-stream-q$rate-$t.json" -z "$DURATION" -c "$CONNS" -q "$rate" --latency-correction -d "$SBODY" "${URL[$t]}"
      done
    fi
    if has ttft; then
      for t in "${TARGETS[@]}"; do
        log "ttft q=$rate $t"
        MEASURE_SECONDS=$((TTFT_SECONDS + 2)) measure "r$run-ttft-q$rate-$t" \
          taskset -c 1 python3 "$BENCH_DIR/streamclient.py" ttft --url "${URL[$t]}" --body "$SBODY" \
            --rate "$rate" --duration "$TTFT_SECONDS" --warmup 2 -c "$CONNS" --out "$OUT/r$run-ttft-q$rate-$t.json"
      done
    fi
  done
  if has throughput; then
    for t in "${TARGETS[@]}"; do
      log "throughput -c $MAX_CONNS $t"
      MEASURE_SECONDS=$(secs "$MAX_DURATION") measure "r$run-throughput-$t" \
        oha_run "$OUT/r$run-throughput-$t.json" -z "$MAX_DURATION" -c "$MAX_CONNS" -d "$BODY" "${URL[$t]}"
    done
  fi
done
echo "{\"rss_kb\": $(rss_kb "$SLUICE_PID"), \"hwm_kb\": $(hwm_kb "$SLUICE_PID"), \"note\": \"VmRSS/VmHWM of the main sluice after all load sections\"}" >"$OUT/sluice-after-load.json"
log "main sluice after load: RSS $(rss_kb "$SLUICE_PID") kB, HWM $(hwm_kb "$SLUICE_PID") kB"
grep -v '^$' "$OUT/sluice.log" >/dev/null 2>&1 && log "sluice logged warnings/errors: see $OUT/sluice.log ($(wc -l <"$OUT/sluice.log") lines)"

# ---- chunk relay ----------------------------------------------------------------------------------
if has relay; then
  taskset -c 1 python3 "$BENCH_DIR/stamp_upstream.py" --listen "127.0.0.1:$PORT_STAMP" \
    --tokens "$RELAY_TOKENS" --token-delay-ms "$RELAY_DELAY_MS" >>"$OUT/stamp.log" 2>&1 &
  STAMP_PID=$!; PIDS+=("$STAMP_PID"); wait_port "$PORT_STAMP" "$STAMP_PID" stamp
  declare -A RURL=(
    [direct]="http://127.0.0.1:$PORT_STAMP/v1/chat/completions"
    [nginx]="http://127.0.0.1:$PORT_NG_STAMP/v1/chat/completions"
    [sluice]="http://127.0.0.1:$PORT_GW/v1/chat/completions"
  )
  RBODY='{"model":"stamp","stream":true,"messages":[{"role":"user","content":"hi"}]}'
  for run in $(seq 1 "$RUNS"); do
    for t in "${TARGETS[@]}"; do
      log "relay r$run $t"
      MEASURE_SECONDS=$((TTFT_SECONDS + 2)) measure "r$run-relay-$t" \
        taskset -c 1 python3 "$BENCH_DIR/streamclient.py" relay --url "${RURL[$t]}" --body "$RBODY" \
          --rate "$RELAY_RATE" --duration "$TTFT_SECONDS" --warmup 2 -c 20 --out "$OUT/r$run-relay-$t.json"
    done
  done
  stop_pid "$STAMP_PID"
fi

# ---- RSS with open streams ------------------------------------------------------------------------
if has rss; then
  # Every stream count gets a fresh Sluice: memory kept by the allocator after one test would
  # otherwise be reused by the next and hide part of its cost.
  stop_pid "$SLUICE_PID"
  start_upstream "$PORT_SLOW" upstream-slow --tokens 1000 --ttft-ms 0 --token-delay-ms 1000; SLOW_PID=$STARTED_PID
  HBODY='{"model":"slow","stream":true,"messages":[{"role":"user","content":"hi"}]}'
  for run in $(seq 1 "$RUNS"); do
    entries=""
    idle=""
    for n in $STREAMS; do
      wait_quiet
      start_sluice
      sleep 2
      idle_n=$(rss_kb "$SLUICE_PID"); idle=${idle:-$idle_n}
      log "rss r$run: fresh sluice idle RSS $idle_n kB"
      rm -f "$WORK/ready"
      taskset -c 1 python3 "$BENCH_DIR/streamclient.py" hold --url "${URL[sluice]}" --body "$HBODY" \
        --streams "$n" --concurrency 250 --open-timeout 30 --hold 300 --ready-file "$WORK/ready" \
        >"$OUT/r$run-hold-$n.json" 2>>"$OUT/hold.log" &
      hold_pid=$!; PIDS+=("$hold_pid")
      for _ in $(seq 1 1200); do [[ -f "$WORK/ready" ]] && break; kill -0 "$hold_pid" 2>/dev/null || break; sleep 0.1; done
      [[ -f "$WORK/ready" ]] || die "hold client for $n streams did not get ready (see $OUT/hold.log)"
      sleep 3
      s1=$(rss_kb "$SLUICE_PID"); sleep 2; s2=$(rss_kb "$SLUICE_PID"); sleep 2; s3=$(rss_kb "$SLUICE_PID")
      nfd=$(fds "$SLUICE_PID")
      opened=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["open"])' "$WORK/ready")
      log "rss r$run: $opened/$n streams open: RSS $s1 $s2 $s3 kB, $nfd fds"
      kill -TERM "$hold_pid" 2>/dev/null || true
      wait "$hold_pid" 2>/dev/null || true
      sleep 3
      after=$(rss_kb "$SLUICE_PID")
      entries+="${entries:+,}\"$n\": {\"requested\": $n, \"open\": $opened, \"idle_kb\": $idle_n, \"rss_kb_samples\": [$s1, $s2, $s3], \"fds\": $nfd, \"rss_kb_after_close\": $after, \"hwm_kb\": $(hwm_kb "$SLUICE_PID"), \"hold\": $(cat "$WORK/ready")}"
      stop_pid "$SLUICE_PID"
    done
    echo "{\"idle_kb\": $idle, \"streams\": {$entries}}" >"$OUT/r$run-rss.json"
  done
  stop_pid "$SLOW_PID"
fi

# ---- summary ------------------------------------------------------------------------------------
python3 "$BENCH_DIR/summarize.py" "$OUT"
