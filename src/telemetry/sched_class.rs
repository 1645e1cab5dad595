//! The scheduling class of Sluice's background threads (telemetry thread, log writer, span export,
//! request-log writer): Linux's `SCHED_BATCH`, entered by each thread as it starts ([`enter_batch`]),
//! or inherited from [`spawning_batch`] for threads a library starts; and `SCHED_IDLE` for the SQLite
//! checkpoints ([`enter_idle`], below).
//!
//! `SCHED_BATCH` has the weight of an ordinary thread (the same share of the core: nothing is starved
//! and nothing falls behind that did not before), but when it wakes up it never preempts the thread
//! that is running: it waits until the request thread blocks or uses up its slice. Until this, each
//! background wake-up (a timer, a queue that filled) could take the core from a request thread in the
//! middle of its work. On one shared core at 2,000 requests/s (`bench/observability.sh`, `BATCH_MODES`,
//! session 20 in `docs/BENCHMARKS.md`) it halved how often the request thread was preempted (21 → 9 per
//! 1,000 non-streaming requests, 47 → 24 streaming) for the same CPU. Once a background thread runs,
//! a waking request thread takes the core back as before (the threads also yield every few
//! microseconds of work: [`super::background::Pacer`]).
//!
//! Not `SCHED_IDLE`: with every background thread so (until 2026-11-27), streaming clients saw stalls
//! of tens of milliseconds about once a minute (session 6). Not `nice`: a niced thread that has the
//! core keeps it for its slice all the same.
//!
//! Only a thread in the ordinary class at nice 0 is moved, and its nice value stays 0: a process
//! started under `chrt` or `nice` keeps what the operator chose. `thread-priority` expresses a
//! normal-class thread's nice value through its cross-platform priority scale, on which
//! [`NICE_ZERO`] is nice 0 (checked by a test). Elsewhere than Linux these functions do nothing.
//!
//! **`SCHED_IDLE` for work that cannot yield** ([`enter_idle`]). A waking request thread takes the core
//! from a running batch thread only once that thread's slice protection ends (EEVDF's run-to-parity),
//! so work that holds the core in one call it cannot pace, such as a SQLite checkpoint (~0.3–0.5 ms of
//! copying and syncing), is waited out by whichever request arrives meanwhile. Measured with 1 ms
//! busy loops on a sleeping thread's core (`examples/wake_delay.rs`, docs/BENCHMARKS.md session 21):
//! it woke p90 443–459 µs and p99 ~1,050 µs late behind a batch thread, 82–89 µs and 115–120 µs
//! behind an idle one, 79–83 µs and 110–129 µs with nothing else there (the timer floor). An idle
//! thread runs only when nothing else wants the core and is preempted at once. Such work gets a thread
//! of its own that enters `SCHED_IDLE` for good, because leaving it takes `CAP_SYS_NICE`; whoever
//! hands it work must cope with it falling behind when the core never idles (the request log's writer
//! then does the checkpoint itself). Not for whole background threads (session 6, above).

/// `thread-priority`'s cross-platform priority (0–99) that it maps to nice 0 for normal-class threads.
#[cfg(target_os = "linux")]
const NICE_ZERO: u8 = 48;

/// The calling thread's scheduling class, as `/proc/thread-self/stat` reports it.
#[cfg(target_os = "linux")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Class {
    /// `SCHED_OTHER` = 0, `SCHED_BATCH` = 3, `SCHED_IDLE` = 5, real-time 1, 2, 6.
    policy: u32,
    nice: i32,
}

#[cfg(target_os = "linux")]
const SCHED_OTHER: u32 = 0;
#[cfg(target_os = "linux")]
const SCHED_BATCH: u32 = 3;
#[cfg(all(test, target_os = "linux"))]
const SCHED_IDLE: u32 = 5;

#[cfg(target_os = "linux")]
fn current() -> Option<Class> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the command name (which may contain spaces), from field 3 (state) on.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(Class {
        nice: fields.get(19 - 3)?.parse().ok()?,
        policy: fields.get(41 - 3)?.parse().ok()?,
    })
}

/// Switches the calling thread into a normal-class policy (ordinary, batch or idle), at nice 0.
#[cfg(target_os = "linux")]
fn set(policy: thread_priority::unix::NormalThreadSchedulePolicy) -> bool {
    use thread_priority::unix::{
        ThreadSchedulePolicy, set_thread_priority_and_policy, thread_native_id,
    };
    use thread_priority::{ThreadPriority, ThreadPriorityValue};
    let Ok(nice_zero) = ThreadPriorityValue::try_from(NICE_ZERO) else {
        return false;
    };
    set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Crossplatform(nice_zero),
        ThreadSchedulePolicy::Normal(policy),
    )
    .is_ok()
}

/// Moves the calling thread into `SCHED_BATCH` if it is in the ordinary class at nice 0; true if it
/// did. Background threads call it first thing.
pub fn enter_batch() -> bool {
    #[cfg(target_os = "linux")]
    {
        current()
            == Some(Class {
                policy: SCHED_OTHER,
                nice: 0,
            })
            && set(thread_priority::unix::NormalThreadSchedulePolicy::Batch)
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Runs `f` with the calling thread in `SCHED_BATCH` (see [`enter_batch`]), so that the threads `f`
/// starts, which inherit the class, are batch threads: for the threads libraries start (the span
/// exporter's, the log appender's). The calling thread is back in its class afterwards.
pub fn spawning_batch<T>(f: impl FnOnce() -> T) -> T {
    let entered = enter_batch();
    let out = f();
    #[cfg(target_os = "linux")]
    if entered && !set(thread_priority::unix::NormalThreadSchedulePolicy::Other) {
        tracing::warn!("could not return a thread to the ordinary scheduling class");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = entered;
    out
}

/// Moves the calling thread into `SCHED_IDLE` for the rest of its life if it is in the ordinary or
/// the batch class at nice 0; true if it did. For a thread of its own whose work cannot yield (see the
/// module's docs); it cannot come back.
pub fn enter_idle() -> bool {
    #[cfg(target_os = "linux")]
    {
        matches!(
            current(),
            Some(Class {
                policy: SCHED_OTHER | SCHED_BATCH,
                nice: 0
            })
        ) && set(thread_priority::unix::NormalThreadSchedulePolicy::Idle)
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_thread_enters_batch_at_nice_zero() {
        // A fresh thread in each test: a test must not change the class of the harness's threads.
        let (before, entered, after) = std::thread::spawn(|| (current(), enter_batch(), current()))
            .join()
            .unwrap();
        assert_eq!(
            before,
            Some(Class {
                policy: SCHED_OTHER,
                nice: 0
            })
        );
        assert!(entered);
        assert_eq!(
            after,
            Some(Class {
                policy: SCHED_BATCH,
                nice: 0
            })
        );
    }

    #[test]
    fn threads_started_inside_spawning_batch_are_batch_and_the_caller_is_restored() {
        let (child, caller_after) = std::thread::spawn(|| {
            let child = spawning_batch(|| std::thread::spawn(current).join().unwrap());
            (child, current())
        })
        .join()
        .unwrap();
        assert_eq!(
            child,
            Some(Class {
                policy: SCHED_BATCH,
                nice: 0
            })
        );
        assert_eq!(
            caller_after,
            Some(Class {
                policy: SCHED_OTHER,
                nice: 0
            })
        );
    }

    #[test]
    fn a_thread_enters_idle_from_the_ordinary_or_the_batch_class() {
        for from_batch in [false, true] {
            let (entered, after) = std::thread::spawn(move || {
                if from_batch {
                    assert!(enter_batch());
                }
                (enter_idle(), current())
            })
            .join()
            .unwrap();
            assert!(entered, "from batch: {from_batch}");
            assert_eq!(
                after,
                Some(Class {
                    policy: SCHED_IDLE,
                    nice: 0
                }),
                "from batch: {from_batch}"
            );
        }
    }

    #[test]
    fn a_thread_the_operator_put_elsewhere_is_left_alone() {
        let (entered, after) = std::thread::spawn(|| {
            use thread_priority::unix::{
                NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
                thread_native_id,
            };
            set_thread_priority_and_policy(
                thread_native_id(),
                thread_priority::ThreadPriority::Min,
                ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
            )
            .unwrap();
            (enter_batch(), current())
        })
        .join()
        .unwrap();
        assert!(!entered);
        assert_eq!(
            after.map(|c| c.policy),
            Some(SCHED_IDLE),
            "still SCHED_IDLE"
        );
    }
}
