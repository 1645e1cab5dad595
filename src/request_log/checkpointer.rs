//! The request log's WAL checkpoints, on a thread of their own (`sluice-walckpt`) in Linux's
//! `SCHED_IDLE` class.
//!
//! After each batch the writer asks for a checkpoint here ([`Checkpointer::request`], which never
//! waits) instead of running it itself. A checkpoint copies the batch's pages from the WAL into the
//! database file and syncs both, in one SQLite call that cannot be split or paced: ~0.3–0.5 ms of CPU
//! on the core the request threads share, ten times a second at 2,000 requests/s
//! (`bench/checkpoint_cost.py`, `bench/schedprobe.sh`; docs/BENCHMARKS.md session 21). On the
//! writer's `SCHED_BATCH` thread a request thread that woke meanwhile waited for the rest of it; at
//! `SCHED_IDLE` the checkpoint runs only while the core has nothing else to do and gives it up at
//! once (`telemetry::sched_class`). Its own thread because a thread can enter `SCHED_IDLE` but not
//! leave it without `CAP_SYS_NICE`.
//!
//! Falling behind: on a core that never idles the checkpoints wait. Requests made meanwhile are
//! served by one checkpoint (it copies whatever the WAL holds), and once [`MAX_LAG`] of them wait the
//! writer checkpoints itself after each batch, as it did before this thread, until this one catches
//! up: the WAL stays within about [`MAX_LAG`] batches. A PASSIVE checkpoint never blocks the writer's
//! commits (WAL), and two at once just leave the second with nothing or `SQLITE_BUSY`.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use rusqlite::Connection;

use super::store;

/// Unserved checkpoint requests (batches) after which the writer checkpoints itself.
pub(crate) const MAX_LAG: u64 = 16;

/// Handle to the checkpoint thread.
pub(crate) struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Checkpoints asked for so far.
    requested: u64,
    /// Requests served: every request up to this one was made before a checkpoint that has finished.
    served: u64,
    stop: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Checkpointer {
    /// Starts the thread; it checkpoints through `conn`, a connection of its own to the log's file.
    pub(crate) fn spawn(conn: Connection) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name("sluice-walckpt".to_owned())
            .spawn({
                let shared = Arc::clone(&shared);
                move || {
                    crate::telemetry::sched_class::enter_idle();
                    run(&conn, &shared);
                    if let Err((_, e)) = conn.close() {
                        tracing::debug!(error = %e, "request log: closing the checkpoint connection failed");
                    }
                }
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Tests: a handle whose requests are never served, as if its thread never got the core.
    #[cfg(test)]
    pub(crate) fn stalled() -> Self {
        Self {
            shared: Arc::default(),
            thread: None,
        }
    }

    /// Asks for a checkpoint of what the WAL holds now; returns at once.
    pub(crate) fn request(&self) {
        self.shared.lock().requested += 1;
        self.shared.changed.notify_all();
    }

    /// Requests not yet served.
    pub(crate) fn lag(&self) -> u64 {
        let state = self.shared.lock();
        state.requested - state.served
    }

    /// Waits until every request made so far is served (tests: a condition variable, no sleeps).
    #[cfg(test)]
    pub(crate) fn wait_served(&self) {
        let mut state = self.shared.lock();
        let target = state.requested;
        while state.served < target {
            state = self
                .shared
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Stops the thread after the checkpoint in progress (if any) and waits until it has closed its
    /// connection, so that the writer's connection is the last one and its close checkpoints the rest.
    pub(crate) fn stop(mut self) {
        self.signal_stop();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("request log: the checkpoint thread panicked");
        }
    }

    fn signal_stop(&self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
    }
}

impl Drop for Checkpointer {
    /// A handle dropped without [`Checkpointer::stop`] (a writer that panicked) still ends the thread.
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// The thread: one checkpoint whenever requests wait, until told to stop.
fn run(conn: &Connection, shared: &Shared) {
    let mut state = shared.lock();
    while !state.stop {
        if state.served == state.requested {
            state = shared
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        }
        let serving = state.requested;
        drop(state);
        if let Err(e) = store::checkpoint(conn) {
            // A reader on an old snapshot, or the writer's own checkpoint at the same moment: the
            // frames stay for the next one.
            tracing::debug!(error = %e, "request log: checkpoint failed");
        }
        state = shared.lock();
        state.served = serving;
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new log whose first transaction (100 kB) is committed to the WAL and not yet copied into
    /// the database file; the writer's connection and one for the checkpoint thread.
    fn log_with_wal(dir: &std::path::Path) -> (Connection, Connection) {
        let path = dir.join("requests.db");
        let writer = store::open_writer(&path, std::time::Duration::from_secs(1)).unwrap();
        writer
            .execute_batch(
                "CREATE TABLE filler (x BLOB); INSERT INTO filler VALUES (zeroblob(100000));",
            )
            .unwrap();
        (writer, store::open_checkpoint_connection(&path).unwrap())
    }

    fn db_file_len(dir: &std::path::Path) -> u64 {
        std::fs::metadata(dir.join("requests.db")).unwrap().len()
    }

    #[test]
    fn a_request_is_served_by_a_checkpoint_on_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (_writer, ck_conn) = log_with_wal(dir.path());
        assert!(db_file_len(dir.path()) < 100_000, "nothing copied yet");
        let ck = Checkpointer::spawn(ck_conn).unwrap();
        assert_eq!(ck.lag(), 0);
        ck.request();
        ck.request();
        ck.wait_served();
        assert_eq!(ck.lag(), 0);
        assert!(db_file_len(dir.path()) > 100_000, "the WAL was copied");
        ck.stop();
    }

    #[test]
    fn stop_ends_the_thread_and_closes_its_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, ck_conn) = log_with_wal(dir.path());
        let ck = Checkpointer::spawn(ck_conn).unwrap();
        ck.stop();
        // The writer's is now the only connection: closing it checkpoints and removes the WAL.
        writer.close().unwrap();
        assert!(!dir.path().join("requests.db-wal").exists());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_thread_runs_in_the_idle_class() {
        let dir = tempfile::tempdir().unwrap();
        let (_writer, ck_conn) = log_with_wal(dir.path());
        let ck = Checkpointer::spawn(ck_conn).unwrap();
        ck.request();
        ck.wait_served();
        let policies: Vec<String> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(Result::ok)
            .filter(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|comm| comm.trim() == "sluice-walckpt")
            })
            .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
            .map(|stat| {
                // Field 41 (policy), counted from field 3, the first after the command name.
                let after_comm = stat.rsplit_once(')').unwrap().1.to_owned();
                after_comm
                    .split_whitespace()
                    .nth(41 - 3)
                    .unwrap()
                    .to_owned()
            })
            .collect();
        ck.stop();
        // Other tests may run checkpoint threads of their own meanwhile: each must be idle.
        assert!(!policies.is_empty());
        assert!(policies.iter().all(|p| p == "5"), "{policies:?}");
    }
}
