//! Observability: logging set-up (tracing-subscriber, text or JSON), OpenTelemetry export and spans,
//! Prometheus metrics, the per-request [`call::Call`] record, the request log it feeds, and the
//! telemetry thread ([`background`]) that writes a finished call's log line, spans and record.

mod access_log;
pub mod background;
pub mod call;
pub mod json_log;
pub mod log_batch;
pub mod metrics;
pub mod otel;
mod otlp_encode;
mod otlp_http;
pub mod request_scope;
pub mod sched_class;
pub mod span_fields;
pub mod text_log;

use std::io::IsTerminal;

use serde::Deserialize;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{FilterFn, filter_fn};
use tracing_subscriber::fmt;
use tracing_subscriber::prelude::*;

use crate::config::{LogConfig, LogFormat};
use crate::error::GatewayError;
use crate::request_log::{RequestLog, RequestRecord, TimelineEvent};
use crate::usage::decimal_text::DecimalText;
use call::{Call, CallSummary, Finished};
use metrics::Metrics;

/// `[telemetry]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Prometheus metrics.
    pub metrics: MetricsConfig,
    /// OpenTelemetry trace export.
    pub otel: otel::OtelConfig,
}

/// `[telemetry.metrics]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `GET /metrics`.
    pub enabled: bool,
    /// Serve it on its own listener instead of the main one (e.g. `127.0.0.1:9090`).
    pub listen: Option<std::net::SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
        }
    }
}

/// Where finished calls are written: metrics and the request log.
pub struct Observability {
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// The request log, when enabled.
    pub request_log: Option<RequestLog>,
    /// Capture request and response bodies into the request log.
    pub capture_bodies: bool,
    /// Span content capture (`telemetry.otel.capture_content`), with its size cap.
    pub otel: otel::OtelConfig,
    /// Count of finished calls, for waiting on them (tests, admin tooling) without polling.
    pub finished_calls: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl Observability {
    /// Observability with fresh metrics.
    pub fn new(
        request_log: Option<RequestLog>,
        capture_bodies: bool,
        otel: otel::OtelConfig,
    ) -> Self {
        Self {
            metrics: Metrics::new(),
            request_log,
            capture_bodies,
            otel,
            finished_calls: std::sync::Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    /// Whether request and response content is kept for the request log or spans.
    pub fn captures_content(&self) -> bool {
        (self.capture_bodies && self.request_log.is_some()) || self.otel.capture_content
    }

    /// Waits until at least `n` calls have finished; false on timeout.
    pub async fn wait_finished(&self, n: u64, timeout: std::time::Duration) -> bool {
        let mut rx = self.finished_calls.subscribe();
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|&done| done >= n)).await,
            Ok(Ok(_))
        )
    }

    /// What the request log needs of a finished call, to write on the telemetry thread
    /// ([`RequestLogEntry::write`]); `None` when the request log is off.
    pub fn request_log_entry(
        &self,
        call: &Call,
        summary: CallSummary,
        finished: &Finished,
    ) -> Option<RequestLogEntry> {
        Some(RequestLogEntry {
            log: self.request_log.clone()?,
            shed: self.metrics.request_log_shed.clone(),
            received_at: call.received_unix_ms(),
            route: call.route_label(),
            method: call.method().clone(),
            summary,
            finished: finished.clone(),
        })
    }
}

/// A finished call's request-log entry on its way to the request log.
pub struct RequestLogEntry {
    log: RequestLog,
    shed: prometheus_client::metrics::counter::Counter,
    received_at: i64,
    route: metrics::Label,
    method: http::Method,
    summary: CallSummary,
    finished: Finished,
}

impl RequestLogEntry {
    /// Builds the record and queues it for the request log's writer; never blocks (sheds, and counts,
    /// when the writer is behind).
    pub fn write(self) {
        let Self {
            log,
            shed,
            received_at,
            route,
            method,
            summary,
            finished,
        } = self;
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        let error_kind = summary.error.as_ref().map(GatewayError::kind);
        let mut steps: Vec<(f64, &'static str)> = summary
            .marks
            .into_iter()
            .filter_map(|(at, name)| Some((ms(at?), name)))
            .collect();
        steps.sort_by(|a, b| a.0.total_cmp(&b.0));
        let timeline: Vec<TimelineEvent> = std::iter::once((0.0, "received"))
            .chain(steps)
            .map(|(at_ms, name)| TimelineEvent::new(at_ms, name))
            .chain(std::iter::once(TimelineEvent {
                at_ms: ms(finished.latency),
                name: if finished.cut { "cut" } else { "done" }.into(),
                detail: error_kind.map(Into::into),
            }))
            .collect();
        let record = RequestRecord {
            id: finished.request_id.to_string(),
            received_at,
            trace_id: summary
                .trace_id
                .map(|t| otel::TraceIdHex::new(t).as_str().to_owned()),
            key_id: summary.key_id.as_deref().map(str::to_owned),
            route: route.0.to_string(),
            method: method.to_string(),
            model: summary.model.as_deref().map(str::to_owned),
            provider: summary.provider.map(|p| p.0.to_string()),
            status: finished.status,
            stream: summary.stream,
            latency_ms: ms(finished.latency),
            ttft_ms: finished.ttft.map(ms),
            upstream_ms: finished.upstream.map(ms),
            input_tokens: finished.usage.map(|u| u.prompt_tokens),
            output_tokens: finished.usage.map(|u| u.completion_tokens),
            cost_usd: finished
                .cost
                .map(|c| DecimalText::new(c.normalize()).as_str().to_owned()),
            error_kind: error_kind.map(str::to_owned),
            error_message: summary.error.map(|e| e.to_string()),
            cache: summary.cache.map(str::to_owned),
            request_body: summary.request_body,
            response_body: summary.response_body,
            timeline,
        };
        let shed_before = log.shed_count();
        log.record(record);
        let lost = log.shed_count().saturating_sub(shed_before);
        if lost > 0 {
            shed.inc_by(lost);
        }
    }
}

/// Waits until the telemetry thread ([`background`]) has written what it holds: at shutdown, before
/// the request log is flushed and the spans are exported. False on timeout.
pub async fn drain_background(timeout: std::time::Duration) -> bool {
    tokio::task::spawn_blocking(move || background::drain(timeout))
        .await
        .unwrap_or(false)
}

/// Target of the access record, one per request (`telemetry::call`): a root event carrying its own
/// request id, route and method, so formatting it needs no span lookup (`RUST_LOG=sluice::access=off`
/// turns it off).
pub const ACCESS_TARGET: &str = "sluice::access";

/// The OTel server span of one request, child of the client's W3C trace context when it sent one;
/// `None` when trace export is off.
pub fn request_spans(
    method: &http::Method,
    route: &std::sync::Arc<str>,
    headers: &http::HeaderMap,
) -> Option<otel::CallSpans> {
    let tracer = otel::tracer()?;
    // Its attributes (method, route, request id, status) are set when it ends (`telemetry::call`),
    // on the telemetry thread.
    Some(otel::CallSpans::server(
        tracer,
        format!("{method} {route}"),
        headers,
        Vec::with_capacity(otel::SERVER_SPAN_ATTRIBUTES),
    ))
}

/// What [`init`] started: the trace exporter, if configured, and the log writer thread. Keep it until
/// the server stopped; [`TelemetryGuard::shutdown`] flushes both.
pub struct TelemetryGuard {
    /// The OTLP exporter, when trace export is configured.
    pub otel: Option<otel::OtelGuard>,
    /// Declared before `log`: dropped first, it sends the access lines that wait to the writer
    /// thread before the writer thread stops (also when the guard is dropped without `shutdown`).
    batched: FlushOnDrop,
    log: tracing_appender::non_blocking::WorkerGuard,
}

/// The access-line batcher, flushed when dropped.
struct FlushOnDrop(log_batch::Batched<tracing_appender::non_blocking::NonBlocking>);

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        self.0.flush();
    }
}

impl TelemetryGuard {
    /// Log lines dropped because the writer thread was behind (see [`LOG_BUFFER_MESSAGES`]).
    pub fn dropped_log_lines(&self) -> usize {
        self.batched.0.dropped_lines()
    }

    /// Writes what the telemetry thread still holds, then flushes spans, then the log lines queued.
    pub async fn shutdown(self) {
        let Self { otel, batched, log } = self;
        if !drain_background(std::time::Duration::from_secs(5)).await {
            tracing::warn!(
                "telemetry thread not drained at shutdown: some spans or access lines may be lost"
            );
        }
        if let Some(otel) = otel
            && let Err(e) = otel.shutdown().await
        {
            tracing::warn!(error = %e, "span export incomplete at shutdown");
        }
        let dropped = batched.0.dropped_lines();
        if dropped > 0 {
            tracing::warn!(dropped, "log lines dropped because stdout was too slow");
        }
        // The access lines that wait go to the writer thread; dropping the worker guard then writes
        // out what is queued (bounded by the appender's own timeout).
        drop(batched);
        drop(log);
    }
}

/// Messages queued for the log writer thread before new ones are dropped (counted, see
/// [`TelemetryGuard::dropped_log_lines`]); a stalled stdout can never block or grow a request. A
/// message is a line, or a batch of access lines of up to [`log_batch::BATCH_BYTES`]
/// ([`log_batch`]): at most ~32 MiB queued.
pub const LOG_BUFFER_MESSAGES: usize = 2 * 1024;

/// Installs the global subscriber: the configured log format on stdout, written by a background thread
/// (the request path only formats and queues a line); and the OpenTelemetry tracer when configured.
/// Returns the guard to flush at shutdown. Safe to call more than once (later calls keep the first
/// subscriber).
pub fn init(
    config: &LogConfig,
    otel_config: &otel::OtelConfig,
) -> Result<TelemetryGuard, otel::OtelError> {
    // The span exporter's and the log writer's threads are started here: as background threads.
    let (otel, (writer, log)) = sched_class::spawning_batch(|| {
        let otel = otel::init(otel_config)?;
        let log = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(LOG_BUFFER_MESSAGES)
            .thread_name("sluice-log-writer")
            .finish(BackgroundWriter::new(std::io::stdout()));
        Ok::<_, otel::OtelError>((otel, log))
    })?;
    let batched = log_batch::Batched::appender(writer);
    log_batch::register(&batched);
    install(
        config,
        otel.as_ref(),
        batched.clone(),
        std::io::stdout().is_terminal(),
    );
    Ok(TelemetryGuard {
        otel,
        batched: FlushOnDrop(batched),
        log,
    })
}

/// The log writer thread's output. The appender's thread takes every queued message (a line, or a
/// batch of access lines: [`log_batch`]), then flushes once its queue is empty: with a buffer in
/// between, a burst is one `write` to stdout. If it falls behind, the bounded queue drops messages and
/// counts them. Like every background thread it runs as `SCHED_BATCH` ([`sched_class`]) and yields the
/// core every [`LINES_PER_YIELD`] messages (see [`background`] for why).
struct BackgroundWriter<W: std::io::Write> {
    inner: std::io::BufWriter<W>,
    pacer: background::Pacer,
}

/// Messages the log writer thread writes between yields of the core.
const LINES_PER_YIELD: u32 = 4;

impl<W: std::io::Write> BackgroundWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner: std::io::BufWriter::with_capacity(64 * 1024, inner),
            pacer: background::Pacer::new(LINES_PER_YIELD),
        }
    }
}

impl<W: std::io::Write> std::io::Write for BackgroundWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The appender writes each line with one call.
        self.pacer.tick();
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Events pass, spans do not (see [`install`]). No level hint: stacked global filters take the most
/// verbose hint, so the log filter's alone decides the maximum level.
fn no_spans() -> FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool> {
    filter_fn(|meta| !meta.is_span())
}

/// Installs the global subscriber writing logs to `writer` (tests capture logs this way), and `otel`'s
/// tracer for the calls' spans ([`otel::install`]).
///
/// Log lines written while a request is served carry its id ([`request_scope`]) and no span: the
/// access record carries a call's values, and a span (ours or a library's) would be created, entered
/// and formatted on the request path for nothing.
///
/// Both filters are global (the log layer is the only layer that records anything; the access sink
/// only holds the writer for access lines written without `tracing`, `access_log`): a per-layer
/// filter made every span enter, exit and close, and every event, go through its bookkeeping on the
/// request thread, and spans no one records were still created.
pub fn install<W>(config: &LogConfig, otel: Option<&otel::OtelGuard>, writer: W, ansi: bool)
where
    W: for<'w> fmt::MakeWriter<'w> + Clone + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.filter));
    if let Some(otel) = otel {
        otel::install(otel);
    }
    // Already installed (tests start several apps in one process): keep the first.
    drop(log_subscriber(filter, config.format, writer, ansi).try_init());
}

/// The log subscriber of [`install`]: `filter` and [`no_spans`] as global filters, then the
/// log layer in `format`, then the access sink (the JSON format's direct access lines).
fn log_subscriber<W>(
    filter: EnvFilter,
    format: LogFormat,
    writer: W,
    ansi: bool,
) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> fmt::MakeWriter<'w> + Clone + Send + Sync + 'static,
{
    let (layer, access) = match format {
        LogFormat::Json => (
            fmt::layer()
                .fmt_fields(span_fields::JsonSpanFields)
                .event_format(json_log::JsonEvent)
                .with_writer(writer.clone())
                .boxed(),
            access_log::AccessSink::to(writer),
        ),
        LogFormat::Text => (
            fmt::layer()
                .event_format(text_log::TextEvent::new(ansi))
                .with_ansi(ansi)
                .with_writer(writer)
                .boxed(),
            access_log::AccessSink::none(),
        ),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(no_spans())
        .with(layer)
        .with(access)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn the_log_filter_alone_sets_the_level_and_no_span_is_made() {
        for format in [LogFormat::Json, LogFormat::Text] {
            let subscriber = log_subscriber(EnvFilter::new("info"), format, std::io::sink, false);
            assert_eq!(
                tracing::Subscriber::max_level_hint(&subscriber),
                Some(tracing::level_filters::LevelFilter::INFO)
            );
            tracing::subscriber::with_default(subscriber, || {
                assert!(tracing::info_span!("request").is_disabled());
                assert!(tracing::error_span!("internal call").is_disabled());
                assert!(tracing::enabled!(tracing::Level::INFO));
                assert!(!tracing::enabled!(tracing::Level::DEBUG));
            });
        }
    }

    #[test]
    fn background_writer_batches_lines_until_flushed() {
        let mut writer = BackgroundWriter::new(Vec::new());
        writer.write_all(b"{\"a\":1}\n").unwrap();
        writer.write_all(b"{\"b\":2}\n").unwrap();
        assert!(writer.inner.get_ref().is_empty(), "buffered, not written");
        writer.flush().unwrap();
        assert_eq!(writer.inner.get_ref().as_slice(), b"{\"a\":1}\n{\"b\":2}\n");
    }

    #[test]
    fn access_lines_waiting_for_a_batch_are_written_when_the_guard_goes() {
        let sink = json_log::tests::Buf::default();
        let (appender, log) = tracing_appender::non_blocking(sink.clone());
        let batched = log_batch::Batched::appender(appender);
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(batched.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: ACCESS_TARGET, "request served");
        });
        // The guard's order: the batch first, then the appender's thread.
        drop(FlushOnDrop(batched));
        drop(log);
        let lines = sink.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["fields"]["message"], "request served", "{lines:?}");
    }
}
