//! The background writer: one dedicated std thread owns the write connection, takes records off the
//! bounded queue, redacts their bodies, inserts them in batched transactions and applies retention.
//!
//! Why a std thread and not a task: every SQLite call blocks (for milliseconds, or up to the busy
//! timeout when another process holds the lock). On an async worker that would stall unrelated
//! requests; on the blocking pool (even through the `TaskTracker`) it would pin a pool thread for the
//! life of the process, and its final flush would depend on the runtime still running. A named thread
//! owns the `!Sync` connection outright, shows up as `sluice-reqlog` in thread dumps and can finish
//! its final flush whatever state the async runtime is in; `WriterHandle::shutdown` joins it. Inside it, a current-thread tokio
//! runtime (time only) waits on the queue with a timer; nothing else runs there, so blocking it is fine.
//!
//! Batching: the first record of a batch starts a `linger` timer; when it fires what is queued is
//! taken, up to `batch_max` per transaction (if a full batch is already waiting there is no linger).
//! Sleeping through the linger rather than waking per record keeps `record()` free of thread wake-ups
//! under load, and one transaction per linger keeps WAL growth and index page rewrites low. After
//! each batch the WAL is checkpointed (SQLite's automatic checkpoint is off): a copy of one batch's
//! pages, instead of SQLite's ~4 MB copy every 1000 pages inside a commit, which held the request
//! threads' core for ~5 ms (`docs/BENCHMARKS.md`, session 8); the WAL stays small. The copy runs on
//! the idle-class checkpoint thread (`checkpointer.rs`), or here when that thread falls behind.
//!
//! Retention: a step after every batch deletes what the retention rules say, at most
//! [`RETENTION_CHUNK`] rows per rule, in statements of a few rows with the core yielded between them
//! (`store::apply_retention`), so deletes keep pace with inserts and never come as one long run.
//!
//! Failure: a batch that fails with a transient error (lock, full disk) is kept and retried with
//! backoff; meanwhile no more is taken off the queue, so the queue fills and `record()` sheds. A batch
//! that fails for another reason (a record SQLite refuses, or a key already taken: `store::SeqSource`)
//! is retried one record at a time, each under a free key, and the failures are counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::checkpointer::{self, Checkpointer};
use super::record::{RequestRecord, now_unix_ms};
use super::redact;
use super::store::{self, Retention, SeqSource};

/// A record on its way to the writer, with the body sizes before the request-path cut.
pub(crate) struct Queued {
    pub record: RequestRecord,
    pub request_body_len: Option<usize>,
    pub response_body_len: Option<usize>,
    pub error_message_len: Option<usize>,
}

impl Queued {
    /// Redacts and caps bodies and the error message: the form that is stored.
    fn finish(self, max_body_bytes: usize) -> RequestRecord {
        let mut r = self.record;
        r.request_body = r.request_body.map(|b| {
            redact::finish_body(&b, self.request_body_len.unwrap_or(b.len()), max_body_bytes)
        });
        r.response_body = r.response_body.map(|b| {
            redact::finish_body(
                &b,
                self.response_body_len.unwrap_or(b.len()),
                max_body_bytes,
            )
        });
        r.error_message = r.error_message.map(|m| {
            redact::finish_body(
                &m,
                self.error_message_len.unwrap_or(m.len()),
                super::MAX_ERROR_MESSAGE_BYTES,
            )
        });
        r
    }
}

/// Counters shared by the handle (shed) and the writer (written, failed).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Records dropped by `record()`: queue full, or the log shut down.
    pub shed: AtomicU64,
    /// Records committed to the database.
    pub written: AtomicU64,
    /// Records taken by the writer but not stored (write error, or abandoned at shutdown).
    pub failed: AtomicU64,
}

/// Most rows a retention step deletes per rule, in one transaction (`store::apply_retention`). A step
/// follows every batch (and runs every `retention_interval` when no records come), and one that hit
/// this limit is followed by another at once, so a full log stays within about a batch of its
/// limits: at twice `batch_max`, deleting outpaces inserting until a backlog is gone. Until session
/// 16 retention ran once a minute with steps of 10,000 rows: with a full log at 2,000 requests/s that
/// was a minute's surplus (120,000 rows) deleted in steps each holding the core for 30–50 ms in one
/// statement, then ~2.4 ms committing and ~7 ms checkpointing (`bench/reqlog_bursts.py` offline,
/// `docs/BENCHMARKS.md` session 16); now the longest statement is 0.1–0.15 ms.
pub(crate) const RETENTION_CHUNK: u32 = 512;

/// Knobs that are constants in production and shortened in tests.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tuning {
    /// Most records per transaction.
    pub batch_max: usize,
    /// How long the first record of a batch waits for company.
    pub linger: Duration,
    /// Time between retention passes while no records come (one follows every batch, and a pass that
    /// hit its chunk limit is followed by another at once).
    pub retention_interval: Duration,
    /// Most rows one retention step deletes per rule.
    pub retention_chunk: u32,
    /// SQLite busy timeout of the write connection.
    pub busy_timeout: Duration,
    /// First and largest pause between retries of a failed batch.
    pub retry_backoff: (Duration, Duration),
    /// Tests: the checkpoint thread is replaced by one that never serves a request (a thread that
    /// never gets the core).
    #[cfg(test)]
    pub stalled_checkpointer: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            batch_max: 256,
            linger: Duration::from_millis(100),
            retention_interval: Duration::from_mins(1),
            retention_chunk: RETENTION_CHUNK,
            busy_timeout: Duration::from_secs(1),
            retry_backoff: (Duration::from_millis(50), Duration::from_secs(2)),
            #[cfg(test)]
            stalled_checkpointer: false,
        }
    }
}

/// Everything the writer thread owns.
pub(crate) struct Writer {
    pub conn: Connection,
    /// The idle-class checkpoint thread; `None` if it could not be started.
    pub checkpointer: Option<Checkpointer>,
    pub rx: mpsc::Receiver<Queued>,
    pub stop: oneshot::Receiver<()>,
    pub done: oneshot::Sender<()>,
    pub counters: Arc<Counters>,
    /// Set by a shutdown that timed out: stop retrying, drop what is left.
    pub abandon: Arc<AtomicBool>,
    pub retention: Retention,
    /// The keys of new rows.
    pub seqs: SeqSource,
    pub max_body_bytes: usize,
    pub tuning: Tuning,
}

impl Writer {
    /// Starts the writer thread. It runs until the `WriterHandle` says stop (or is dropped), or every
    /// `RequestLog` is gone; then it drains the queue, closes the database and signals `done`.
    pub(crate) fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        std::thread::Builder::new()
            .name("sluice-reqlog".to_owned())
            .spawn(move || {
                crate::telemetry::sched_class::enter_batch();
                runtime.block_on(self.run());
            })
    }

    async fn run(mut self) {
        let batch_max = self.tuning.batch_max;
        let mut pending: Vec<Queued> = Vec::with_capacity(batch_max);
        let mut next_retention = Instant::now();
        let mut stopping = false;
        // `self.stop` is polled only until it completes: each select that sees it sets `stopping`,
        // and the loop ends after that round's flush.
        while !stopping {
            if Instant::now() >= next_retention {
                next_retention = self.retention_step();
            }
            // Idle: wait for the first record of a batch, the stop signal or the next retention pass.
            tokio::select! {
                biased;
                _ = &mut self.stop => stopping = true,
                n = self.rx.recv_many(&mut pending, batch_max) => {
                    if n == 0 {
                        // Every sender is gone and the queue is empty.
                        break;
                    }
                }
                () = tokio::time::sleep_until(next_retention) => continue,
            }
            if !stopping && pending.len() < batch_max {
                tokio::select! {
                    biased;
                    _ = &mut self.stop => stopping = true,
                    () = tokio::time::sleep(self.tuning.linger) => {}
                }
            }
            if self.write_queued(&mut pending).await && !stopping {
                // Deletes keep pace with inserts: a retention step after every batch.
                next_retention = self.retention_step();
            }
        }
        // Shutdown: refuse new records (they are shed), then write everything already queued.
        // `recv_many` returns 0 only once the queue is closed, empty and no send is in flight.
        self.rx.close();
        while self.rx.recv_many(&mut pending, batch_max).await > 0 {
            if self.abandon.load(Ordering::Acquire) {
                self.counters
                    .failed
                    .fetch_add(as_u64(pending.len()), Ordering::Relaxed);
                pending.clear();
            } else {
                self.write_batch(&mut pending).await;
            }
        }
        self.finish();
    }

    /// Tops `pending` up from the queue and writes it as one batch; false if there was nothing to
    /// write. One batch per round, so that under sustained load the loop still gets back to the stop
    /// signal and to retention between batches.
    async fn write_queued(&mut self, pending: &mut Vec<Queued>) -> bool {
        while pending.len() < self.tuning.batch_max {
            match self.rx.try_recv() {
                Ok(q) => pending.push(q),
                Err(_) => break,
            }
        }
        if pending.is_empty() {
            return false;
        }
        self.write_batch(pending).await;
        true
    }

    /// Writes one batch, retrying transient failures until it succeeds or shutdown gives up on it.
    /// Empties `pending` either way.
    async fn write_batch(&mut self, pending: &mut Vec<Queued>) {
        let max_body_bytes = self.max_body_bytes;
        let records: Vec<RequestRecord> = pending
            .drain(..)
            .map(|q| q.finish(max_body_bytes))
            .collect();
        let n = as_u64(records.len());
        let (mut backoff, max_backoff) = self.tuning.retry_backoff;
        let mut attempts: u32 = 0;
        loop {
            match store::insert_batch(&mut self.conn, &mut self.seqs, &records) {
                Ok(()) => {
                    self.counters.written.fetch_add(n, Ordering::Relaxed);
                    if attempts > 0 {
                        tracing::info!(attempts, records = n, "request log: write recovered");
                    }
                    self.checkpoint();
                    return;
                }
                Err(e) if store::is_transient(&e) => {
                    if attempts == 0 {
                        tracing::warn!(error = %e, records = n,
                            "request log: write failed, retrying; new records are shed meanwhile");
                    }
                    attempts += 1;
                    if self.abandon.load(Ordering::Acquire) {
                        self.counters.failed.fetch_add(n, Ordering::Relaxed);
                        tracing::error!(records = n, "request log: batch dropped at shutdown");
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(max_backoff);
                }
                Err(e) => {
                    tracing::warn!(error = %e, records = n,
                        "request log: batch rejected, writing its records one by one");
                    for record in &records {
                        match store::insert_one(&mut self.conn, record) {
                            Ok(()) => self.counters.written.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                tracing::warn!(id = %record.id, error = %e, "request log: record dropped");
                                self.counters.failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                    return;
                }
            }
        }
    }

    /// Has the WAL checkpointed after a batch (the connection has automatic checkpoints off, see
    /// `store::open_writer`): by the checkpoint thread, unless it lags [`checkpointer::MAX_LAG`]
    /// requests behind (a core that never idles) or is missing; then here, with the core yielded first:
    /// the commit before it and the copy are each a burst a waiting request thread should not sit
    /// behind back to back. A failure (a reader holding an old snapshot, say) leaves the frames for the
    /// next one.
    fn checkpoint(&self) {
        if let Some(ck) = &self.checkpointer
            && ck.lag() < checkpointer::MAX_LAG
        {
            ck.request();
            return;
        }
        std::thread::yield_now();
        if let Err(e) = store::checkpoint(&self.conn) {
            tracing::debug!(error = %e, "request log: checkpoint failed");
        }
    }

    /// One retention step; returns when the next one is due.
    fn retention_step(&mut self) -> Instant {
        let now = Instant::now();
        let step = store::apply_retention(
            &mut self.conn,
            &self.retention,
            now_unix_ms(),
            self.tuning.retention_chunk,
        );
        match step {
            Ok(step) => {
                if step.deleted > 0 {
                    tracing::debug!(deleted = step.deleted, "request log: retention");
                }
                if step.more {
                    now
                } else {
                    now + self.tuning.retention_interval
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "request log: retention failed");
                now + self.tuning.retention_interval
            }
        }
    }

    /// Stops the checkpoint thread, closes the database (checkpointing the WAL) and then tells the
    /// handle the writer is done.
    fn finish(self) {
        let Writer {
            conn,
            checkpointer,
            done,
            counters,
            ..
        } = self;
        // Its connection first, so that closing the writer's (the last) checkpoints what is left.
        if let Some(ck) = checkpointer {
            ck.stop();
        }
        if let Err((_, e)) = conn.close() {
            tracing::warn!(error = %e, "request log: closing the database failed");
        }
        tracing::info!(
            written = counters.written.load(Ordering::Relaxed),
            shed = counters.shed.load(Ordering::Relaxed),
            failed = counters.failed.load(Ordering::Relaxed),
            "request log writer stopped"
        );
        // Nobody waiting (the handle was dropped) is fine.
        done.send(()).ok();
    }
}

fn as_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}
