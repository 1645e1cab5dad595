//! How long a thread that wakes from a sleep waits for its core while another thread runs bursts of
//! work there that never yield, by the other thread's scheduling class: the measurement behind
//! `telemetry::sched_class`'s choice of `SCHED_IDLE` for SQLite checkpoints (docs/BENCHMARKS.md,
//! session 21). Linux only.
//!
//! ```text
//! taskset -c 0 cargo run --release --example wake_delay -- CLASS [BURST_US] [WAKES]
//! ```
//! CLASS: `none` (no second thread: the machine's timer floor), `batch` or `idle` (the second thread
//! enters that class through `sched_class`, then loops: BURST_US of busy work, default 1000, then a
//! 5 ms sleep). The first thread, in the ordinary class like a request thread, sleeps WAKES times
//! (default 4000) for 200–1700 µs and records how late it ran after each sleep's end. Pin the process
//! to one core (`taskset`) so that both threads share it. Prints the delay's percentiles in µs.

#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    reason = "a measurement program: it prints its results and stops at the first failure"
)]

#[cfg(target_os = "linux")]
fn main() {
    use std::time::{Duration, Instant};

    use sluice::telemetry::sched_class;

    let args: Vec<String> = std::env::args().skip(1).collect();
    let class = args.first().map_or("none", String::as_str).to_owned();
    let burst = Duration::from_micros(args.get(1).map_or(1000, |a| a.parse().unwrap()));
    let wakes: usize = args.get(2).map_or(4000, |a| a.parse().unwrap());
    assert!(
        matches!(class.as_str(), "none" | "batch" | "idle"),
        "CLASS is none, batch or idle"
    );
    if class != "none" {
        let entered = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let ok = if class == "batch" {
                sched_class::enter_batch()
            } else {
                sched_class::enter_idle()
            };
            entered.0.send(ok).unwrap();
            loop {
                let start = Instant::now();
                while start.elapsed() < burst {
                    std::hint::spin_loop();
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        assert!(entered.1.recv().unwrap(), "could not enter the class");
    }
    // A fixed pseudo-random sequence of sleeps (a linear congruential generator), so runs compare.
    let mut seed: u64 = 1;
    let mut delays: Vec<Duration> = (0..wakes)
        .map(|_| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let sleep = Duration::from_micros(200 + (seed >> 33) % 1500);
            let due = Instant::now() + sleep;
            std::thread::sleep(sleep);
            let late = Instant::now().saturating_duration_since(due);
            // A little work after each wake-up, as a request thread would do.
            let start = Instant::now();
            while start.elapsed() < Duration::from_micros(30) {
                std::hint::spin_loop();
            }
            late
        })
        .collect();
    delays.sort_unstable();
    let at = |q: f64| {
        let i = ((delays.len() as f64 - 1.0) * q).round();
        // In range: q is at most 1.
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "0 <= i < len"
        )]
        let i = i as usize;
        delays[i].as_secs_f64() * 1e6
    };
    println!(
        "other thread {} (bursts of {} µs): wake-up delay p50 {:.0} p90 {:.0} p99 {:.0} p99.9 {:.0} max {:.0} µs ({wakes} wake-ups)",
        args.first().map_or("none", String::as_str),
        burst.as_micros(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(0.999),
        at(1.0),
    );
}

#[cfg(not(target_os = "linux"))]
fn main() {
    println!("wake_delay measures Linux scheduling classes; nothing to do here");
}
