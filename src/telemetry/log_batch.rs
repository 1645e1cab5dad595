//! Access-log lines reach the log writer thread in batches: the lines of [`ACCESS_TARGET`] wait in a
//! small buffer ([`BATCH_BYTES`]) and go to the writer as one message when it is full, when the
//! telemetry thread sweeps ([`flush`], every `background::SWEEP` = 100 ms at most) and at shutdown.
//! Every other line (start-up, warnings, errors) goes out at once, after what waits, so the order of
//! lines is kept.
//!
//! Why: the appender's thread (`tracing-appender`) blocks on its queue, so every line sent while it
//! sleeps wakes it: one futex wake on the sending thread, two context switches and a `write` to stdout
//! per access line, 2,000 times a second at 2,000 requests/s, on the core the request thread runs on.
//! `bench/observability.sh` (session 10) put the writer thread at ~9.5 µs of CPU per request, preempted
//! ~140 times per 1,000 requests (woken for nearly every line). In batches of 16 KiB (~35 JSON access
//! lines of ~470 bytes) it wakes ~60 times a second at 2,000 requests/s: 2.1–2.4 µs per request, ~25
//! preemptions per 1,000. (A linger in the writer thread, session 8, moved timer wake-ups onto the
//! request thread instead; this adds no timer.)
//!
//! The price: an access line may reach stdout up to ~100 ms after its request ended; a process killed
//! without a shutdown (SIGKILL, abort) loses the lines that wait, as the request log loses the batch
//! its writer has not written yet.
//!
//! Not a crate: `tracing-appender` has no batching of its own, and the rule of which lines may wait
//! is ours.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tracing_appender::non_blocking::{ErrorCounter, NonBlocking};
use tracing_subscriber::fmt::MakeWriter;

use super::ACCESS_TARGET;

/// Access-log bytes held before they go to the writer thread as one message.
pub const BATCH_BYTES: usize = 16 * 1024;

/// A log writer that batches access lines in front of `W` (the appender's [`NonBlocking`]).
pub struct Batched<W: Write> {
    shared: Arc<Shared<W>>,
}

impl<W: Write> Clone for Batched<W> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

struct Shared<W> {
    state: Mutex<State<W>>,
    /// Lines dropped with a batch beyond the one the appender counted for it.
    dropped_with_batches: AtomicUsize,
    /// The appender's count of dropped messages (a batch is one), when `W` is the appender.
    counter: Option<ErrorCounter>,
}

struct State<W> {
    inner: W,
    pending: Vec<u8>,
    lines: usize,
}

impl Batched<NonBlocking> {
    /// Batches in front of the appender, counting the lines of a dropped batch
    /// ([`Batched::dropped_lines`]).
    pub fn appender(inner: NonBlocking) -> Self {
        let counter = Some(inner.error_counter());
        Self::build(inner, counter)
    }
}

impl<W: Write> Batched<W> {
    /// Batches in front of any writer.
    #[cfg(test)]
    pub(super) fn new(inner: W) -> Self {
        Self::build(inner, None)
    }

    fn build(inner: W, counter: Option<ErrorCounter>) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    inner,
                    pending: Vec::with_capacity(BATCH_BYTES + 1024),
                    lines: 0,
                }),
                dropped_with_batches: AtomicUsize::new(0),
                counter,
            }),
        }
    }

    /// Sends what waits to the writer.
    pub fn flush(&self) {
        self.shared.send_pending(&mut self.shared.lock());
    }

    /// Lines the appender dropped because its queue was full, each line of a batch counted.
    pub fn dropped_lines(&self) -> usize {
        self.shared
            .counter
            .as_ref()
            .map_or(0, ErrorCounter::dropped_lines)
            + self.shared.dropped_with_batches.load(Ordering::Relaxed)
    }
}

impl<W: Write> Shared<W> {
    fn lock(&self) -> MutexGuard<'_, State<W>> {
        // A panic while holding the lock leaves at worst a partial line; logging goes on.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn send_pending(&self, state: &mut State<W>) {
        if state.pending.is_empty() {
            return;
        }
        let before = self.counter.as_ref().map(ErrorCounter::dropped_lines);
        let State {
            inner,
            pending,
            lines,
        } = state;
        // Log output has nowhere to report its own failure: the appender counts what it drops.
        drop(inner.write_all(pending));
        if let Some(before) = before
            && self
                .counter
                .as_ref()
                .is_some_and(|c| c.dropped_lines() > before)
        {
            self.dropped_with_batches
                .fetch_add(lines.saturating_sub(1), Ordering::Relaxed);
        }
        pending.clear();
        // A rare huge line (a long error message) does not keep its allocation for good.
        if pending.capacity() > 4 * BATCH_BYTES {
            pending.shrink_to(BATCH_BYTES + 1024);
        }
        *lines = 0;
    }
}

/// The writer of one log line, from [`Batched`]'s `MakeWriter`.
pub struct LineWriter<'a, W: Write> {
    shared: &'a Shared<W>,
    /// An access line: it may wait for a batch.
    batch: bool,
}

impl<W: Write> Write for LineWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut state = self.shared.lock();
        if self.batch {
            state.pending.extend_from_slice(buf);
            state.lines += 1;
            if state.pending.len() >= BATCH_BYTES {
                self.shared.send_pending(&mut state);
            }
        } else {
            self.shared.send_pending(&mut state);
            drop(state.inner.write_all(buf));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a, W: Write + 'a> MakeWriter<'a> for Batched<W> {
    type Writer = LineWriter<'a, W>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
            batch: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
            batch: meta.target() == ACCESS_TARGET,
        }
    }
}

/// The process's batching log writer, once [`register`]ed: what [`flush`] sends.
static INSTALLED: OnceLock<Batched<NonBlocking>> = OnceLock::new();

/// Makes `batched` the writer [`flush`] flushes (the first registration wins, like the subscriber).
pub fn register(batched: &Batched<NonBlocking>) {
    drop(INSTALLED.set(batched.clone()));
}

/// Sends the access lines that wait to the log writer thread: the telemetry thread's sweep and
/// shutdown call it.
pub fn flush() {
    if let Some(batched) = INSTALLED.get() {
        batched.flush();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use tracing_appender::non_blocking::NonBlockingBuilder;

    use super::*;

    /// A writer that records each `write` call as one message.
    #[derive(Clone, Default)]
    struct Messages(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Messages {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Messages {
        fn taken(&self) -> Vec<String> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .map(|m| String::from_utf8(m.clone()).unwrap())
                .collect()
        }
    }

    fn subscriber(batched: Batched<Messages>) -> impl tracing::Subscriber {
        tracing_subscriber::fmt()
            .with_writer(batched)
            .with_ansi(false)
            .without_time()
            .finish()
    }

    #[test]
    fn access_lines_wait_for_a_full_batch_or_a_flush_and_others_go_out_at_once_in_order() {
        let out = Messages::default();
        let batched = Batched::new(out.clone());
        tracing::subscriber::with_default(subscriber(batched.clone()), || {
            tracing::info!(target: ACCESS_TARGET, n = 1, "request");
            tracing::info!(target: ACCESS_TARGET, n = 2, "request");
            assert!(out.taken().is_empty(), "access lines wait");
            tracing::warn!("something else");
            let sent = out.taken();
            assert_eq!(sent.len(), 2, "{sent:?}");
            assert!(
                sent[0].contains("n=1") && sent[0].contains("n=2") && sent[0].lines().count() == 2,
                "one message with both waiting lines first: {sent:?}"
            );
            assert!(sent[1].contains("something else"), "{sent:?}");
            tracing::info!(target: ACCESS_TARGET, n = 3, "request");
            assert_eq!(out.taken().len(), 2);
            batched.flush();
            let sent = out.taken();
            assert_eq!(sent.len(), 3);
            assert!(sent[2].contains("n=3"), "{sent:?}");
            batched.flush();
            assert_eq!(out.taken().len(), 3, "nothing waits, nothing is sent");
        });
    }

    #[test]
    fn a_full_batch_goes_out_without_a_flush() {
        let out = Messages::default();
        let batched = Batched::new(out.clone());
        tracing::subscriber::with_default(subscriber(batched), || {
            let mut lines = 0;
            while out.taken().is_empty() {
                tracing::info!(target: ACCESS_TARGET, pad = "x".repeat(100), "request");
                lines += 1;
                assert!(
                    lines <= BATCH_BYTES / 100 + 1,
                    "sent by the time it holds a batch"
                );
            }
            let sent = out.taken();
            assert!(sent[0].len() >= BATCH_BYTES, "{}", sent[0].len());
            assert_eq!(sent[0].lines().count(), lines);
        });
    }

    #[test]
    fn a_huge_line_does_not_keep_its_buffer() {
        let out = Messages::default();
        let batched = Batched::new(out.clone());
        let mut access = LineWriter {
            shared: &batched.shared,
            batch: true,
        };
        let huge = vec![b'x'; 64 * BATCH_BYTES];
        access.write_all(&huge).unwrap();
        assert_eq!(out.taken()[0].len(), huge.len(), "sent whole");
        let capacity = batched.shared.lock().pending.capacity();
        assert!(capacity <= 4 * BATCH_BYTES, "{capacity}");
    }

    /// A writer that says when it is in a write and blocks there until told to go on (or the sender
    /// is gone), so the appender's queue fills.
    struct Stalled {
        writing: mpsc::Sender<()>,
        go: mpsc::Receiver<()>,
    }

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.writing.send(()).ok();
            self.go.recv().ok();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_dropped_batch_counts_every_line_in_it() {
        let (writing, in_write) = mpsc::channel();
        let (go, stalled) = mpsc::channel();
        let (appender, guard) = NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(1)
            .finish(Stalled {
                writing,
                go: stalled,
            });
        let batched = Batched::appender(appender);
        let mut access = LineWriter {
            shared: &batched.shared,
            batch: true,
        };
        // The writer thread takes the first message and blocks in its write; the second fills the
        // queue of one; the batch after that is dropped whole.
        access.write_all(b"first\n").unwrap();
        batched.flush();
        in_write.recv().unwrap();
        access.write_all(b"second\n").unwrap();
        batched.flush();
        assert_eq!(batched.dropped_lines(), 0);
        for _ in 0..5 {
            access.write_all(b"line\n").unwrap();
        }
        batched.flush();
        assert_eq!(batched.dropped_lines(), 5);
        drop(go);
        drop(guard);
    }
}
