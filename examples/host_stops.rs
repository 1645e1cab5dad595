//! When a CPU could not run anything: the stops a latency bench must not charge to Sluice. Linux only.
//!
//! ```text
//! chrt -f 50 taskset -c CPU target/release/examples/host_stops [PERIOD_US] [MIN_GAP_US]
//! ```
//! Under a real-time policy (`chrt -f`), pinned to one CPU, it wakes every PERIOD_US (default 1000)
//! and checks how late it woke. A real-time thread preempts every ordinary thread at once, so it is
//! late by more than a few tens of µs only when the CPU itself was not running the guest: the
//! hypervisor had stopped the vCPU (steal), or interrupts were off. Each lateness of MIN_GAP_US or
//! more (default 1000) is printed at once as one line, `START_S LENGTH_MS`: when the wake-up was due,
//! in seconds since the Unix epoch (the clock of Python's `time.time()`, to line the stops up with
//! the requests of a bench), and how long it was missed by. Runs until killed. A stop shorter than PERIOD_US that falls between two wake-ups is not
//! seen.
//!
//! Why (docs/BENCHMARKS.md, session 23): the bench's VM has its vCPUs stopped for up to tens of
//! milliseconds at a time when both are busy (`bench/host_steal.py`), which delays every request in
//! flight whichever target is measured. `bench/modes.sh` runs one of these per CPU during an
//! interleaved run, and `bench/pooled.py` reports latencies again without the requests a stop
//! touched. Native rather than Python: a Python loop costs ~37 µs of CPU per wake-up (3.7 % of a core
//! at 1 ms); this one a few µs, taken from every target alike.

#![expect(
    clippy::unwrap_used,
    reason = "a measurement program: it stops at the first failure"
)]

#[cfg(target_os = "linux")]
fn main() {
    use std::io::Write as _;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let period = Duration::from_micros(args.first().copied().unwrap_or(1000));
    let min_gap = Duration::from_micros(args.get(1).copied().unwrap_or(1000));
    let mut out = std::io::stdout().lock();
    let mut due = Instant::now() + period;
    loop {
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let woke = Instant::now();
        let late = woke.saturating_duration_since(due);
        if late >= min_gap {
            // The wall clock only to print when: the lateness is measured on the monotonic one.
            let due_wall = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .saturating_sub(late);
            writeln!(
                out,
                "{:.6} {:.3}",
                due_wall.as_secs_f64(),
                late.as_secs_f64() * 1e3
            )
            .unwrap();
            out.flush().unwrap();
        }
        // The next wake-up one period after this one was due; after a stop, one period from now.
        due += period;
        if due < woke {
            due = woke + period;
        }
    }
}

#[cfg(not(target_os = "linux"))]
#[expect(clippy::print_stdout, reason = "says why it does nothing")]
fn main() {
    println!("host_stops watches Linux CPUs; nothing to do here");
}
