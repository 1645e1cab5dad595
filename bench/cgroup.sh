# Sourced by bench scripts (modes.sh, stalls.sh, run.sh): `bench_cgroup_enter` moves the calling
# script, and so everything it starts afterwards, into a CPU cgroup of its own with the largest
# weight the kernel allows; `bench_cgroup_leave` (from the script's exit trap, after its processes
# are killed) moves it back and removes the group. BENCH_CGROUP=0: neither.
#
# Why (docs/BENCHMARKS.md, session 23): the bench machines run other services (RabbitMQ's Erlang VM
# took ~70 % of a core for ~0.4 s now and then; the kernel's kdamond runs for ~3 ms at a time). At
# equal weight such a burst takes a share of Sluice's core and requests queue behind it: 30 s of
# streams at 2,000/s had p99s of 27 and 82 ms, against 2.7 ms in the group, whatever the target.
# With the bench's processes weighted 256 times any other process (cgroup v1 `cpu.shares` 262144
# against 1024), the others run in the bench's idle time and take ~0.4 % of a core it wants. Inside
# the group nothing changes: Sluice's threads keep their classes and nice values (its background
# threads still enter `SCHED_BATCH`). Kernel threads that work for the bench (jbd2, kworkers) are
# outside the group too, so they also wait for the bench's idle time; the cores are not saturated in
# these benches (see each summary's busy shares). Needs root and a writable cgroup v1 `cpu`
# hierarchy, or cgroup v2 with the cpu controller enabled at the root; otherwise it says so and the
# bench runs as before.

bench_cgroup_enter() {
  BENCH_CGROUP_DIR=""
  [ "${BENCH_CGROUP:-1}" = 1 ] || return 0
  local v1=/sys/fs/cgroup/cpu g
  if [ -w "$v1/cgroup.procs" ] && [ -f "$v1/cpu.shares" ]; then
    g="$v1/sluice-bench-$$"
    if mkdir "$g" 2>/dev/null && echo 262144 >"$g/cpu.shares"; then
      # With real-time group scheduling a new group has no real-time budget, and the host_stops
      # watchers are SCHED_FIFO: give it 10 % of each CPU (they use ~1.5 %).
      if [ -f "$g/cpu.rt_runtime_us" ]; then echo 100000 >"$g/cpu.rt_runtime_us"; fi
      echo $$ >"$g/cgroup.procs" && BENCH_CGROUP_DIR="$g" && BENCH_CGROUP_PARENT="$v1"
    fi
  elif [ -f /sys/fs/cgroup/cgroup.subtree_control ] && grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control; then
    g="/sys/fs/cgroup/sluice-bench-$$"
    if mkdir "$g" 2>/dev/null && echo 10000 >"$g/cpu.weight"; then
      echo $$ >"$g/cgroup.procs" && BENCH_CGROUP_DIR="$g" && BENCH_CGROUP_PARENT=/sys/fs/cgroup
    fi
  fi
  if [ -z "$BENCH_CGROUP_DIR" ]; then
    echo "bench: no CPU cgroup could be made (root and cgroup v1 cpu or v2 with cpu needed); other processes compete with the bench at equal weight" >&2
    [ -n "${g:-}" ] && rmdir "$g" 2>/dev/null
  fi
  return 0
}

bench_cgroup_leave() {
  [ -n "${BENCH_CGROUP_DIR:-}" ] || return 0
  echo $$ >"$BENCH_CGROUP_PARENT/cgroup.procs" 2>/dev/null || true
  # The killed processes leave the group as they exit: wait for them, up to 5 s.
  for _ in $(seq 50); do rmdir "$BENCH_CGROUP_DIR" 2>/dev/null && return 0; sleep 0.1; done
  echo "bench: could not remove $BENCH_CGROUP_DIR (processes still in it)" >&2
}
