//! The telemetry thread: writes what a finished call leaves for later (its access-log line, the end of
//! its OTel spans, its request-log record), so the request's own thread only hands the data over.
//!
//! Why: at 2,000 requests/s on one core, formatting the access record through the log layer and
//! building the spans' attributes were ~8 µs of the request thread's ~100 µs per request
//! (`bench/observability.sh`, perf). Under an open-loop load a request's tail latency is the work of
//! the requests queued ahead of it on that thread, so those microseconds showed up several times over
//! at p99. Here they run on a thread of their own.
//!
//! **Normal priority, on purpose** (this thread and every other background thread: log writer, span
//! export, request-log writer, checkpoints). Until 2026-11-27 they ran as `SCHED_IDLE`, so that a
//! waking request thread would preempt them at once. With them so, and the request log or span
//! export on, streaming clients saw stalls of 10 to 130 ms about once a minute (40 s at 2,000
//! streams/s, Sluice on one core: 191–575 requests over 10 ms against 8–35 with everything off); at
//! normal priority on the same core, 0–15. Why is not known: the two stalls traced with
//! `perf sched` showed Sluice's core idle, its worker asleep in `epoll_wait`, and the load generator's
//! own threads busy on the other core, so the effect may reach the client through the timing of
//! responses rather than by holding up Sluice's request thread. The price of normal priority, on a
//! single shared core, is that a background burst may hold the core for a scheduler slice (it
//! raised non-streaming p99 by ~1 ms in the same-run comparison, until the yields below): chosen as
//! the bounded cost (`bench/stalls.sh`, `docs/BENCHMARKS.md` "Session 6", which says how to reopen
//! the question). A background thread that falls behind under overload is still bounded: this queue
//! runs jobs inline when full, the other queues shed and count.
//!
//! **Cooperative: every background thread yields the core every ~15–30 µs of work** ([`Pacer`]:
//! this thread after every job, the request-log writer every 4 records, the log writer every 4
//! lines). A thread at normal priority that has the core keeps it until its scheduler slice is used
//! up (about 1.4 ms here, checked at the next 250 Hz tick) even when a request thread wakes up,
//! because the request thread, the heavier user of the core, is usually not owed time.
//! `sched_yield` ends that: a waiting request thread runs next. Measured on one shared core
//! (session 7, `docs/BENCHMARKS.md`): the request log alone, yielding every 16 records, went from
//! 1.91× to 1.06× of `off`'s added p99 (non-streaming) with the same CPU, where smaller
//! transactions got 1.50× for 40 % more CPU; neither a short slice for the request threads nor
//! `SCHED_BATCH` for these threads made a difference. A yield with nothing else to run is one system
//! call that returns at once; the background CPU per request did not change measurably.
//!
//! Bounds: the queue holds [`QUEUE_JOBS`] jobs; when it is full (the thread cannot keep up: the core
//! is saturated) a job runs on the caller's thread instead, as it did before this thread existed, so
//! nothing is lost and the queue cannot grow. A steady stream of jobs does not wake the thread once
//! per job: after a job it takes what is queued and waits [`LINGER`] for more before blocking again.
//!
//! Not `tracing-appender` or a crate's thread pool: the jobs are closures over a call's data, and the
//! run-inline-when-full rule and the linger are the point; std's bounded channel does the rest.

use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send>;

/// Jobs queued before new ones run on the caller's thread (each a few hundred bytes).
pub const QUEUE_JOBS: usize = 16 * 1024;

/// How long the thread waits for more work after a job before it blocks (and needs waking).
pub const LINGER: Duration = Duration::from_millis(1);

/// Jobs this thread runs between yields (a job is ~5–20 µs: a call's access line, span ends and
/// request-log record). One: every 4 (and 16 records, 16 lines for the other threads) left
/// non-streaming p99 at 1.49× of `off`, every job (and 4, 4) at 1.07×, same CPU
/// (obs-20261128T020202Z).
pub const JOBS_PER_YIELD: u32 = 1;

/// Counts units of background work and yields the core after every `every` of them, so that a
/// request thread waiting for the core gets it within that much work (see the module docs).
#[derive(Debug)]
pub struct Pacer {
    every: u32,
    done: u32,
}

impl Pacer {
    /// Yields after every `every` units (at least 1).
    pub const fn new(every: u32) -> Self {
        Self {
            every: if every == 0 { 1 } else { every },
            done: 0,
        }
    }

    /// One unit done; yields the core if it was the `every`-th since the last yield.
    pub fn tick(&mut self) {
        self.done += 1;
        if self.done >= self.every {
            self.done = 0;
            std::thread::yield_now();
        }
    }

    /// Units done since the last yield (for tests: the yield itself cannot be observed).
    #[cfg(test)]
    const fn pending(&self) -> u32 {
        self.done
    }
}

/// The queue's sending side; `None` if the thread could not be started (jobs then run inline).
static QUEUE: OnceLock<Option<SyncSender<Job>>> = OnceLock::new();

fn queue() -> Option<&'static SyncSender<Job>> {
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = sync_channel::<Job>(QUEUE_JOBS);
            std::thread::Builder::new()
                .name("sluice-telemetry".to_owned())
                .spawn(move || work(&rx))
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// Runs `job` on the telemetry thread, or right here when its queue is full.
pub fn run(job: impl FnOnce() + Send + 'static) {
    let job: Job = Box::new(job);
    match queue() {
        Some(tx) => match tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => job(),
        },
        None => job(),
    }
}

/// Waits (blocking, up to `timeout`) until every job queued before this call has run: at shutdown,
/// before the spans are flushed and the log writer stops. False on timeout.
pub fn drain(timeout: Duration) -> bool {
    let (done_tx, done_rx) = sync_channel::<()>(1);
    run(move || {
        done_tx.send(()).ok();
    });
    done_rx.recv_timeout(timeout).is_ok()
}

fn work(rx: &Receiver<Job>) {
    let mut pacer = Pacer::new(JOBS_PER_YIELD);
    let mut run = |job: Job| {
        job();
        pacer.tick();
    };
    while let Ok(job) = rx.recv() {
        run(job);
        // Busy: run what is queued, then give the next jobs a moment to arrive, so that a steady
        // stream is taken in batches instead of each `run` waking this thread.
        loop {
            loop {
                match rx.try_recv() {
                    Ok(job) => run(job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            std::thread::sleep(LINGER);
            match rx.try_recv() {
                Ok(job) => run(job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn a_pacer_yields_after_every_nth_unit() {
        let mut pacer = Pacer::new(3);
        let pending: Vec<u32> = (0..7)
            .map(|_| {
                pacer.tick();
                pacer.pending()
            })
            .collect();
        // The count restarts at each yield: after units 3 and 6.
        assert_eq!(pending, [1, 2, 0, 1, 2, 0, 1]);
        let mut every_unit = Pacer::new(0);
        every_unit.tick();
        assert_eq!(every_unit.pending(), 0, "zero means every unit");
    }

    #[test]
    fn jobs_run_in_order_off_the_caller_and_drain_waits_for_them() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let caller = std::thread::current().id();
        for i in 0..1000 {
            let seen = Arc::clone(&seen);
            run(move || {
                seen.lock()
                    .unwrap()
                    .push((i, std::thread::current().id() != caller));
            });
        }
        assert!(drain(Duration::from_secs(10)));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1000);
        assert!(
            seen.iter().enumerate().all(|(i, (j, _))| i == *j),
            "in order"
        );
        // The queue holds far more than 1000 jobs: none ran on the caller's thread.
        assert!(seen.iter().all(|(_, elsewhere)| *elsewhere));
    }
}
