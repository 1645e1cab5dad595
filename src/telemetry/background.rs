//! Where a finished call's telemetry (its access-log line, the end of its OTel spans, its request-log
//! record) is written, so the request itself only hands the data over: in the runtime's idle time
//! when the call ran on the server's runtime (below, "First choice"), else on the telemetry thread.
//!
//! Why: at 2,000 requests/s on one core, formatting the access record through the log layer and
//! building the spans' attributes were ~8 µs of the request thread's ~100 µs per request
//! (`bench/observability.sh`, perf). Under an open-loop load a request's tail latency is the work of
//! the requests queued ahead of it on that thread, so those microseconds showed up several times over
//! at p99. Here they run on a thread of their own.
//!
//! **Normal weight, on purpose** (this thread and every other background thread: log writer, span
//! export, request-log writer, checkpoints; since session 20 in the `SCHED_BATCH` class, which has
//! the same weight but does not preempt a running request thread when it wakes:
//! [`super::sched_class`]). Until 2026-11-27 they ran as `SCHED_IDLE`, so that a
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
//! messages, a message being a line or a batch of access lines). A thread at normal priority that
//! has the core keeps it until its scheduler slice is used up (about 1.4 ms here, checked at the
//! next 250 Hz tick) even when a request thread wakes up, because the request thread, the heavier
//! user of the core, is usually not owed time.
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
//! **First choice: the runtime's idle time** ([`on_worker_park`]). A job queued on a Tokio worker of
//! the server's runtime ([`server_runtime`]) waits in a small queue ([`IDLE_QUEUE_JOBS`]) until a
//! worker has nothing left to run and is about to sleep; it runs there, a few jobs per park
//! ([`JOBS_PER_PARK`]). A burst of requests is served back to back and its jobs run in the gap after
//! it, with no thread to wake and no context switch. The telemetry thread above takes what the idle
//! queue cannot hold (workers that seldom go idle: saturation) and sweeps it every [`SWEEP`], so a job
//! waits at most that long when no worker goes idle. Why: with everything on, `bench/schedprobe.sh`
//! (session 9, at 2,000 requests/s on one core) found the telemetry thread, woken once per request or
//! per millisecond, the thread that most often held the core while the request thread waited for it
//! (1,000–6,900 times in 3 s; `docs/BENCHMARKS.md`, "Session 9").
//!
//! Not `tracing-appender` or a crate's thread pool: the jobs are closures over a call's data, and the
//! run-inline-when-full rule and the linger are the point; std's bounded channel does the rest.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{
    Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, sync_channel,
};
use std::sync::{LazyLock, OnceLock};
use std::time::{Duration, Instant};

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

/// Jobs waiting for a worker's idle time before new ones go to the telemetry thread. Small: at 2,000
/// requests/s a worker goes idle after about every request, so this holds one or two jobs; a full
/// queue means the workers are busy, and then the thread is the better place.
pub const IDLE_QUEUE_JOBS: usize = 64;

/// Jobs a worker runs each time it is about to sleep (~10–20 µs each): a request arriving meanwhile
/// waits at most that long. What is left runs at the next park or the next [`SWEEP`].
pub const JOBS_PER_PARK: usize = 4;

/// How often the telemetry thread runs what waits in the idle queue, for when no worker goes idle.
pub const SWEEP: Duration = Duration::from_millis(100);

thread_local! {
    /// True on a worker that runs [`on_worker_park`]: jobs queued here wait for the idle time.
    static IDLE_RUNNER: Cell<bool> = const { Cell::new(false) };
}

/// Jobs for the workers' idle time; multi-consumer, since any worker that goes idle may take them.
static IDLE: LazyLock<(
    crossbeam_channel::Sender<Job>,
    crossbeam_channel::Receiver<Job>,
)> = LazyLock::new(|| crossbeam_channel::bounded(IDLE_QUEUE_JOBS));

/// Idle-queue jobs taken but not yet finished, so that [`drain`] can wait for them.
static IDLE_RUNNING: AtomicUsize = AtomicUsize::new(0);

/// The server's runtime: multi-threaded, its workers running queued telemetry jobs when they go idle.
/// `TOKIO_WORKER_THREADS` sets the worker count, as for any Tokio runtime.
///
/// # Errors
/// When the runtime cannot be started (threads, the I/O driver).
pub fn server_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    server_runtime_builder().build()
}

/// [`server_runtime`]'s builder: every thread of the runtime queues its jobs for the idle time
/// ([`on_thread_start`]), and every worker runs them when it is about to sleep ([`on_worker_park`]).
pub fn server_runtime_builder() -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .enable_all()
        .on_thread_start(on_thread_start)
        .on_thread_park(on_worker_park);
    builder
}

/// Tokio's `on_thread_start` hook: jobs queued on this thread wait for a worker's idle time. (On the
/// runtime's blocking threads too, which never park: their jobs run at a worker's next park.)
pub fn on_thread_start() {
    IDLE_RUNNER.set(true);
}

/// Tokio's `on_thread_park` hook, run on a worker with nothing left to run, just before it sleeps:
/// runs up to [`JOBS_PER_PARK`] queued jobs.
pub fn on_worker_park() {
    run_idle_jobs(JOBS_PER_PARK);
}

/// Runs up to `limit` jobs from the idle queue on this thread; how many ran.
fn run_idle_jobs(limit: usize) -> usize {
    let mut ran = 0;
    while ran < limit {
        let Some(job) = take_idle_job() else { break };
        job.call();
        ran += 1;
    }
    ran
}

/// The next job of the idle queue, counted in [`IDLE_RUNNING`] until it has run (or been dropped).
fn take_idle_job() -> Option<IdleJob> {
    // Most parks find nothing queued: no atomic read-modify-write for them.
    if IDLE.1.is_empty() {
        return None;
    }
    IDLE_RUNNING.fetch_add(1, Ordering::AcqRel);
    if let Ok(job) = IDLE.1.try_recv() {
        Some(IdleJob(Some(job)))
    } else {
        IDLE_RUNNING.fetch_sub(1, Ordering::AcqRel);
        None
    }
}

/// A job taken from the idle queue; [`drain`] waits for it until it has run or is dropped.
struct IdleJob(Option<Job>);

impl IdleJob {
    fn call(mut self) {
        if let Some(job) = self.0.take() {
            job();
        }
    }
}

impl Drop for IdleJob {
    fn drop(&mut self) {
        IDLE_RUNNING.fetch_sub(1, Ordering::AcqRel);
    }
}

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
    pub(super) const fn pending(&self) -> u32 {
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

/// Runs `job` later: in a worker's idle time when called on a worker of [`server_runtime`], else (or
/// when the idle queue is full) on the telemetry thread, or right here when its queue is full too.
pub fn run(job: impl FnOnce() + Send + 'static) {
    let mut job: Job = Box::new(job);
    if IDLE_RUNNER.get() {
        // The thread sweeps the idle queue, so it must exist.
        if queue().is_some() {
            match IDLE.0.try_send(job) {
                Ok(()) => return,
                Err(e) => job = e.into_inner(),
            }
        }
    }
    to_thread(job);
}

/// Runs `job` on the telemetry thread, or right here when its queue is full.
fn to_thread(job: Job) {
    match queue() {
        Some(tx) => match tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => job(),
        },
        None => job(),
    }
}

/// Waits (blocking, up to `timeout`) until every job queued before this call has run: at shutdown,
/// before the spans are flushed and the log writer stops. Runs what waits for a worker's idle time
/// on the calling thread. False on timeout.
pub fn drain(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while run_idle_jobs(IDLE_QUEUE_JOBS) > 0 {}
    // A worker may have taken a job just before: it runs for microseconds.
    while IDLE_RUNNING.load(Ordering::Acquire) > 0 {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::yield_now();
    }
    let (done_tx, done_rx) = sync_channel::<()>(1);
    let job: Job = Box::new(move || {
        done_tx.send(()).ok();
    });
    to_thread(job);
    done_rx
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .is_ok()
}

fn work(rx: &Receiver<Job>) {
    super::sched_class::enter_batch();
    let mut pacer = Pacer::new(JOBS_PER_YIELD);
    let mut run = |job: Job| {
        job();
        pacer.tick();
    };
    // Idle-queue jobs, paced like the thread's own.
    let run_idle = || {
        while let Some(job) = take_idle_job() {
            job.call();
            std::thread::yield_now();
        }
    };
    loop {
        // About to wait: the access lines that wait for a batch go out (every `SWEEP` at most).
        super::log_batch::flush();
        let job = match rx.recv_timeout(SWEEP) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                // No worker went idle for a while (or none is ours): run what waits for one.
                run_idle();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
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
            // Jobs come here when the idle queue is full: the workers are busy, so take those too.
            run_idle();
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
    fn jobs_queued_on_a_server_worker_run_when_it_goes_idle() {
        let runtime = server_runtime_builder()
            .worker_threads(1)
            .thread_name("idle-test-worker")
            .build()
            .unwrap();
        let (tx, rx) = sync_channel(8);
        let busy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let task_busy = Arc::clone(&busy);
        runtime.spawn(async move {
            for i in 0..3 {
                let tx = tx.clone();
                let busy = Arc::clone(&task_busy);
                run(move || {
                    let name = std::thread::current().name().map(str::to_owned);
                    tx.send((i, name, busy.load(Ordering::SeqCst))).unwrap();
                });
            }
            // Still this task's poll: the worker is busy, so none of them may have run.
            task_busy.store(false, Ordering::SeqCst);
        });
        let got: Vec<_> = (0..3)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        for (i, (n, name, busy_then)) in got.into_iter().enumerate() {
            assert_eq!(n, i, "in order");
            assert_eq!(name.as_deref(), Some("idle-test-worker"), "on the worker");
            assert!(!busy_then, "only once the worker had nothing left to run");
        }
    }

    #[test]
    fn idle_jobs_run_without_a_worker_going_idle_and_drain_runs_them() {
        IDLE_RUNNER.set(true);
        let caller = std::thread::current().id();
        // No worker here: the telemetry thread's sweep runs it.
        let (tx, rx) = sync_channel(1);
        run(move || tx.send(std::thread::current().id()).unwrap());
        let ran_on = rx.recv_timeout(SWEEP * 100).unwrap();
        assert_ne!(ran_on, caller);
        // Queued, then drained: drain runs what waits in the idle queue before it returns.
        let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for _ in 0..IDLE_QUEUE_JOBS / 2 {
            let ran = Arc::clone(&ran);
            run(move || {
                ran.fetch_add(1, Ordering::SeqCst);
            });
        }
        assert!(drain(Duration::from_secs(10)));
        assert_eq!(ran.load(Ordering::SeqCst), IDLE_QUEUE_JOBS / 2);
        IDLE_RUNNER.set(false);
    }

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
