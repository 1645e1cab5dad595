//! The production request log: one SQLite row per request, written off the request path, queried by
//! the admin API.
//!
//! Data path: when a request ends, its handler builds a [`RequestRecord`] and calls
//! [`RequestLog::record`], which never blocks or awaits: bodies are cut to `max_body_bytes` plus a
//! small margin (no allocation unless a body is cut), and the record is offered to a bounded queue; if
//! the queue is full it is dropped and counted ([`RequestLog::shed_count`], export it as a metric).
//! One writer thread (`writer.rs`) takes records off the queue, redacts secrets in bodies and error
//! messages ([`redact()`]), caps bodies exactly with a marker, inserts them in batched transactions and
//! applies retention (`store.rs`). Listings and lookups ([`RequestLog::query`], [`RequestLog::get`]) use
//! a second, read-only connection: in WAL mode readers do not wait for the writer.
//!
//! Lifecycle: [`RequestLog::open`] (at start-up, from `[request_log]`) returns the cheap-clone handle
//! (put it in `AppState`) and a [`WriterHandle`]; at shutdown, after `axum::serve` has returned and the
//! task tracker is drained (so no handler can still record), `writer.shutdown(timeout).await` writes
//! every queued record before the process exits. Export [`RequestLog::shed_count`] (and
//! [`RequestLog::failed_count`]) as counters; serve listings with [`RequestLog::query_async`] and
//! [`RequestLog::get_async`].
//!
//! Redaction runs on the writer thread rather than in `record()`: it is the one costly step (a few
//! regex passes over up to `max_body_bytes`), and the request path should not pay for it. The margin
//! kept by the request-path cut makes the result the same as redacting first: a secret that straddles
//! the final cap is still whole when the writer masks it.

mod checkpointer;
mod config;
mod record;
mod redact;
mod store;
#[cfg(test)]
mod tests;
mod timeline;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

pub use config::RequestLogConfig;
pub use record::{RequestFilter, RequestRecord, RequestSummary, TimelineEvent, now_unix_ms};
pub use redact::{REDACTED, redact};

use checkpointer::Checkpointer;
use store::{Retention, SeqSource};
use writer::{Counters, Queued, Tuning, Writer};

/// Error messages are stored redacted and capped at this many bytes, whatever `capture_bodies` says.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 4096;

/// Failures of the request log.
#[derive(Debug, thiserror::Error)]
pub enum RequestLogError {
    /// The `[request_log]` section is unusable.
    #[error("request_log config: {0}")]
    InvalidConfig(String),
    /// The database could not be opened or prepared.
    #[error("request log database {}: {source}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// The database was written by a newer Sluice.
    #[error("request log schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew {
        /// `user_version` in the file.
        found: i64,
        /// The version this build writes.
        supported: i64,
    },
    /// A query failed.
    #[error("request log query: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The writer thread could not be started.
    #[error("request log writer thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The blocking query task failed.
    #[error("request log query task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// `request_log.enabled` is false.
    #[error("the request log is disabled")]
    Disabled,
}

/// The request log handle: cheap to clone, `record()` from anywhere.
#[derive(Clone)]
pub struct RequestLog {
    /// `None` when the log is disabled.
    shared: Option<Arc<Shared>>,
}

struct Shared {
    tx: mpsc::Sender<Queued>,
    counters: Arc<Counters>,
    capture_bodies: bool,
    /// `max_body_bytes` plus the redaction margin: the request-path cut.
    body_cut: usize,
    /// The read connection; a `Mutex` because a connection is not `Sync` (queries are short).
    reader: Mutex<Connection>,
}

impl RequestLog {
    /// Opens (or creates) the database, starts the writer thread and returns the handle and the
    /// writer's shutdown handle. With `enabled = false` it returns a log that drops every record.
    pub fn open(config: &RequestLogConfig) -> Result<(Self, WriterHandle), RequestLogError> {
        Self::open_with(config, Tuning::default())
    }

    pub(crate) fn open_with(
        config: &RequestLogConfig,
        tuning: Tuning,
    ) -> Result<(Self, WriterHandle), RequestLogError> {
        config.validate().map_err(RequestLogError::InvalidConfig)?;
        if !config.enabled {
            return Ok((Self::disabled(), WriterHandle { inner: None }));
        }
        let conn = store::open_writer(&config.path, tuning.busy_timeout)?;
        let reader = store::open_reader(&config.path)?;
        // Without the checkpoint thread the writer checkpoints itself, as it would when it lags.
        let checkpointer = store::open_checkpoint_connection(&config.path)
            .and_then(|conn| Checkpointer::spawn(conn).map_err(RequestLogError::Spawn))
            .inspect_err(|e| {
                tracing::warn!(error = %e, "request log: no checkpoint thread; the writer checkpoints");
            })
            .ok();
        #[cfg(test)]
        let checkpointer = if tuning.stalled_checkpointer {
            Some(Checkpointer::stalled())
        } else {
            checkpointer
        };
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let (stop_tx, stop_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let counters = Arc::new(Counters::default());
        let abandon = Arc::new(AtomicBool::new(false));
        let thread = Writer {
            conn,
            checkpointer,
            rx,
            stop: stop_rx,
            done: done_tx,
            counters: Arc::clone(&counters),
            abandon: Arc::clone(&abandon),
            retention: Retention {
                max_age: config.retention_age,
                max_rows: config.retention_max_rows,
            },
            seqs: SeqSource::new(),
            max_body_bytes: config.max_body_bytes,
            tuning,
        }
        .spawn()
        .map_err(RequestLogError::Spawn)?;
        tracing::info!(path = %config.path.display(), capture_bodies = config.capture_bodies,
            "request log open");
        let log = Self {
            shared: Some(Arc::new(Shared {
                tx,
                counters: Arc::clone(&counters),
                capture_bodies: config.capture_bodies,
                body_cut: config
                    .max_body_bytes
                    .saturating_add(redact::REDACTION_MARGIN),
                reader: Mutex::new(reader),
            })),
        };
        let writer = WriterHandle {
            inner: Some(WriterInner {
                stop: stop_tx,
                done: done_rx,
                thread,
                counters,
                abandon,
            }),
        };
        Ok((log, writer))
    }

    /// A log that drops every record and answers queries with [`RequestLogError::Disabled`].
    pub fn disabled() -> Self {
        Self { shared: None }
    }

    /// False for a disabled log.
    pub fn is_enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// Whether bodies are kept; when false, don't bother building them for [`Self::record`].
    pub fn captures_bodies(&self) -> bool {
        self.shared.as_ref().is_some_and(|s| s.capture_bodies)
    }

    /// Queues `record` for writing. Never blocks, never awaits: if the queue is full (or the log has
    /// shut down) the record is dropped and [`Self::shed_count`] goes up. Bodies are dropped unless
    /// `capture_bodies` is set, and cut to `max_body_bytes` (plus a small margin, trimmed after
    /// redaction) otherwise.
    pub fn record(&self, mut record: RequestRecord) {
        let Some(shared) = self.shared.as_deref() else {
            return;
        };
        let (request_body_len, response_body_len) = if shared.capture_bodies {
            (
                redact::cut_in_place(&mut record.request_body, shared.body_cut),
                redact::cut_in_place(&mut record.response_body, shared.body_cut),
            )
        } else {
            record.request_body = None;
            record.response_body = None;
            (None, None)
        };
        let error_message_len = redact::cut_in_place(
            &mut record.error_message,
            MAX_ERROR_MESSAGE_BYTES + redact::REDACTION_MARGIN,
        );
        let queued = Queued {
            record,
            request_body_len,
            response_body_len,
            error_message_len,
        };
        if shared.tx.try_send(queued).is_err() {
            shared.counters.shed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records dropped because the queue was full or the log had shut down.
    pub fn shed_count(&self) -> u64 {
        self.counter(|c| &c.shed)
    }

    /// Records committed to the database since `open`.
    pub fn written_count(&self) -> u64 {
        self.counter(|c| &c.written)
    }

    /// Records accepted but not stored: rejected by SQLite, or dropped by a shutdown that timed out.
    pub fn failed_count(&self) -> u64 {
        self.counter(|c| &c.failed)
    }

    fn counter(&self, which: fn(&Counters) -> &std::sync::atomic::AtomicU64) -> u64 {
        self.shared
            .as_ref()
            .map_or(0, |s| which(&s.counters).load(Ordering::Relaxed))
    }

    /// Records matching `filter`, newest first, at most [`RequestFilter::MAX_LIMIT`]. Blocks on SQLite:
    /// from async code use [`Self::query_async`] (or `spawn_blocking`).
    pub fn query(&self, filter: &RequestFilter) -> Result<Vec<RequestSummary>, RequestLogError> {
        let shared = self.shared.as_ref().ok_or(RequestLogError::Disabled)?;
        let reader = shared.reader.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(store::query(&reader, filter)?)
    }

    /// The newest record with this request id, with bodies and timeline. Blocks on SQLite: from async
    /// code use [`Self::get_async`].
    pub fn get(&self, id: &str) -> Result<Option<RequestRecord>, RequestLogError> {
        let shared = self.shared.as_ref().ok_or(RequestLogError::Disabled)?;
        let reader = shared.reader.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(store::get(&reader, id)?)
    }

    /// [`Self::query`] on tokio's blocking pool.
    pub async fn query_async(
        &self,
        filter: RequestFilter,
    ) -> Result<Vec<RequestSummary>, RequestLogError> {
        let log = self.clone();
        tokio::task::spawn_blocking(move || log.query(&filter)).await?
    }

    /// [`Self::get`] on tokio's blocking pool.
    pub async fn get_async(&self, id: String) -> Result<Option<RequestRecord>, RequestLogError> {
        let log = self.clone();
        tokio::task::spawn_blocking(move || log.get(&id)).await?
    }
}

impl std::fmt::Debug for RequestLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestLog")
            .field("enabled", &self.is_enabled())
            .field("capture_bodies", &self.captures_bodies())
            .field("shed", &self.shed_count())
            .field("written", &self.written_count())
            .finish_non_exhaustive()
    }
}

/// Owns the writer thread. Call [`Self::shutdown`] once the server has stopped; dropping the handle
/// instead also makes the writer drain the queue and stop, but nobody waits for it.
#[must_use = "call `shutdown` so queued records are written before exit"]
pub struct WriterHandle {
    /// `None` for a disabled log.
    inner: Option<WriterInner>,
}

struct WriterInner {
    stop: oneshot::Sender<()>,
    done: oneshot::Receiver<()>,
    thread: JoinHandle<()>,
    counters: Arc<Counters>,
    abandon: Arc<AtomicBool>,
}

impl WriterHandle {
    /// Stops the writer: the queue is closed (later records are shed), everything already queued is
    /// written, the database is closed and the thread joined. Returns how many records were committed
    /// during the call. If that takes longer than `timeout`, gives up: records not yet written are
    /// dropped and counted in [`RequestLog::failed_count`], and the thread is left to exit on its own.
    pub async fn shutdown(self, timeout: Duration) -> usize {
        let Some(w) = self.inner else {
            return 0;
        };
        let before = w.counters.written.load(Ordering::Acquire);
        // An error means the writer already stopped (every `RequestLog` was dropped).
        w.stop.send(()).ok();
        match tokio::time::timeout(timeout, w.done).await {
            Ok(finished) => {
                if finished.is_err() {
                    tracing::error!("request log writer ended without draining its queue");
                }
                // The thread has nothing left to do but return; join off the async workers anyway.
                let thread = w.thread;
                if !matches!(
                    tokio::task::spawn_blocking(move || thread.join()).await,
                    Ok(Ok(()))
                ) {
                    tracing::error!("request log writer thread panicked");
                }
            }
            Err(_elapsed) => {
                w.abandon.store(true, Ordering::Release);
                tracing::warn!(
                    ?timeout,
                    "request log writer did not finish in time; unwritten records are dropped"
                );
            }
        }
        let after = w.counters.written.load(Ordering::Acquire);
        usize::try_from(after.saturating_sub(before)).unwrap_or(usize::MAX)
    }
}

impl std::fmt::Debug for WriterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterHandle")
            .field("running", &self.inner.is_some())
            .finish_non_exhaustive()
    }
}
