//! The access record: one line per finished request. `telemetry::call` builds it when the log filter
//! lets [`ACCESS_TARGET`] through; a telemetry job ([`super::background`]) writes it.
//!
//! With the JSON log format the line is written straight into the log writer ([`AccessSink`], a
//! layer of the log subscriber that only holds the writer): the bytes the `tracing` event below
//! would give (a test compares both paths), built in one buffer with the member names as constants.
//! In the text format, or when the current subscriber has no sink, the record is a `tracing` event
//! of [`ACCESS_TARGET`] as before.
//!
//! Why: through `tracing` the event's ~22 fields go one by one through its field visitors (a
//! virtual call per field, each name escaped again) into the formatting layer's buffer, which is then
//! copied into the writer. Callgrind (`MODES="off on" bench/instructions.sh 2000`, run
//! instr-20261129T142930Z) counted ~13,400 instructions per access line that way, on the request
//! thread's core (most lines are written in the worker's idle time). Written directly, a line takes
//! ~7,000 (instr-20261129T144136Z; `docs/BENCHMARKS.md`, "Session 15"). Not a crate: the point is
//! to skip the generic event machinery for one line whose shape is fixed.
//!
//! One difference from the event: a line written directly never carries a `span` member. The event
//! is a root event, so it only had one when its job ran inline on a request's own thread inside the
//! request span (the telemetry queue full), and that member repeated the line's `request_id`.

use std::fmt::Display;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::TraceId;
use tracing::subscriber::Interest;
use tracing::{Level, Metadata, Subscriber};
use tracing_core::callsite::Callsite;
use tracing_core::metadata::Kind;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;

use super::ACCESS_TARGET;
use super::call::Finished;
use super::metrics::Label;
use crate::error::GatewayError;

/// One access-log record, written by a telemetry job.
pub(super) struct AccessRecord {
    /// A server error (logged at `warn`); `info` otherwise.
    pub warn: bool,
    pub message: &'static str,
    pub route: Label,
    pub method: http::Method,
    pub trace_id: Option<TraceId>,
    pub key_id: Option<Arc<str>>,
    pub cache: Option<&'static str>,
    /// The model as the client named it.
    pub model: Option<Arc<str>>,
    pub provider: Option<Label>,
    pub stream: bool,
    pub finished: Finished,
    pub error: Option<GatewayError>,
}

/// A line's usual length is ~450–650 bytes: one allocation.
const LINE_CAPACITY: usize = 768;

impl AccessRecord {
    /// Writes the line: straight into the current subscriber's [`AccessSink`] when it has one, else as
    /// a `tracing` event.
    pub(super) fn emit(self) {
        let written = tracing::dispatcher::get_default(|dispatch| {
            let Some(write) = dispatch
                .downcast_ref::<AccessSink>()
                .and_then(|sink| sink.write.as_ref())
            else {
                return false;
            };
            let mut line = Vec::with_capacity(LINE_CAPACITY);
            if self.write_json(SystemTime::now(), &mut line).is_err() {
                // Only a clock outside 1970–9999: the event path writes any time.
                return false;
            }
            write(self.metadata(), &line);
            true
        });
        if !written {
            self.emit_event();
        }
    }

    fn metadata(&self) -> &'static Metadata<'static> {
        if self.warn { &WARN_LINE } else { &INFO_LINE }
    }

    /// The line as `json_log::JsonEvent` writes the event of [`Self::emit_event`], newline included:
    /// timestamp, level, message, the fields in the event's order (absent ones left out), target.
    fn write_json(&self, now: SystemTime, out: &mut Vec<u8>) -> std::io::Result<()> {
        let Some(timestamp) = super::json_log::timestamp(now) else {
            return Err(std::io::Error::other(
                "clock outside what humantime formats",
            ));
        };
        let f = &self.finished;
        let mut line = Members(out);
        write!(
            line.0,
            "{{\"timestamp\":\"{timestamp}\",\"level\":\"{}\"",
            self.metadata().level().as_str()
        )?;
        line.str("message", self.message)?;
        line.str("request_id", &f.request_id)?;
        line.str("route", &self.route.0)?;
        line.str("method", self.method.as_str())?;
        if let Some(id) = self.trace_id {
            line.str("trace_id", super::otel::TraceIdHex::new(id).as_str())?;
        }
        line.opt_str("key_id", self.key_id.as_deref())?;
        line.opt_str("cache", self.cache)?;
        line.u64("status", u64::from(f.status));
        line.opt_str("model", self.model.as_deref())?;
        line.opt_str("provider", self.provider.as_ref().map(|l| &*l.0))?;
        line.bool("stream", self.stream);
        line.f64("latency_ms", ms(f.latency))?;
        line.opt_f64("ttft_ms", f.ttft.map(ms))?;
        line.opt_f64("upstream_ms", f.upstream.map(ms))?;
        line.opt_f64("overhead_ms", f.overhead.map(ms))?;
        if let Some(u) = f.usage {
            line.u64("input_tokens", u.prompt_tokens);
            line.u64("output_tokens", u.completion_tokens);
        }
        line.bool("usage_estimated", f.usage_estimated);
        if let Some(cost) = f.cost {
            line.str(
                "cost_usd",
                crate::usage::decimal_text::DecimalText::new(cost).as_str(),
            )?;
        }
        line.bool("cut", f.cut);
        if let Some(e) = &self.error {
            line.str("error.kind", e.kind())?;
            line.display("error.message", e)?;
        }
        line.str("target", ACCESS_TARGET)?;
        line.0.extend_from_slice(b"}\n");
        Ok(())
    }

    /// The access line as a root event (no parent span) with the request's own id, route and method.
    fn emit_event(self) {
        let f = &self.finished;
        let (input, output) = f.usage.map_or((None, None), |u| {
            (Some(u.prompt_tokens), Some(u.completion_tokens))
        });
        let cost = f.cost.map(tracing::field::display);
        let error_kind = self.error.as_ref().map(GatewayError::kind);
        let error = self.error.as_ref().map(tracing::field::display);
        let trace_id = self.trace_id.map(super::otel::TraceIdHex::new);
        macro_rules! access {
            ($level:expr) => {
                tracing::event!(
                    target: ACCESS_TARGET,
                    parent: None,
                    $level,
                    request_id = &*f.request_id,
                    route = &*self.route.0,
                    method = %self.method,
                    trace_id = trace_id.as_ref().map(|t| tracing::field::display(t.as_str())),
                    key_id = self.key_id.as_deref(),
                    cache = self.cache,
                    status = f.status,
                    model = self.model.as_deref(),
                    provider = self.provider.as_ref().map(|l| &*l.0),
                    stream = self.stream,
                    latency_ms = ms(f.latency),
                    ttft_ms = f.ttft.map(ms),
                    upstream_ms = f.upstream.map(ms),
                    overhead_ms = f.overhead.map(ms),
                    input_tokens = input,
                    output_tokens = output,
                    usage_estimated = f.usage_estimated,
                    cost_usd = cost,
                    cut = f.cut,
                    error.kind = error_kind,
                    error.message = error,
                    "{}",
                    self.message
                )
            };
        }
        if self.warn {
            access!(Level::WARN);
        } else {
            access!(Level::INFO);
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Writes `,"name":value` members into a line; names are plain ASCII that JSON need not escape.
struct Members<'a>(&'a mut Vec<u8>);

impl Members<'_> {
    fn name(&mut self, name: &str) {
        self.0.extend_from_slice(b",\"");
        self.0.extend_from_slice(name.as_bytes());
        self.0.extend_from_slice(b"\":");
    }

    /// A JSON string, escaped by `serde_json` (what `serde_json` does not escape needs no escaping).
    fn str(&mut self, name: &str, value: &str) -> std::io::Result<()> {
        self.name(name);
        serde_json::to_writer(&mut *self.0, value).map_err(std::io::Error::other)
    }

    fn opt_str(&mut self, name: &str, value: Option<&str>) -> std::io::Result<()> {
        value.map_or(Ok(()), |v| self.str(name, v))
    }

    fn display(&mut self, name: &str, value: impl Display) -> std::io::Result<()> {
        self.str(name, &value.to_string())
    }

    fn u64(&mut self, name: &str, value: u64) {
        self.name(name);
        self.0
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    fn bool(&mut self, name: &str, value: bool) {
        self.name(name);
        self.0
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    /// As the span fields write floats: shortest round-trip digits (`ryu`, as `serde_json`), and a
    /// string for what JSON has no number for (NaN, infinities).
    fn f64(&mut self, name: &str, value: f64) -> std::io::Result<()> {
        if value.is_finite() {
            self.name(name);
            self.0
                .extend_from_slice(ryu::Buffer::new().format_finite(value).as_bytes());
            Ok(())
        } else {
            self.display(name, value)
        }
    }

    fn opt_f64(&mut self, name: &str, value: Option<f64>) -> std::io::Result<()> {
        value.map_or(Ok(()), |v| self.f64(name, v))
    }
}

/// Where access lines are written directly: a layer of the log subscriber that holds its writer (and
/// does nothing else), found by [`AccessRecord::emit`] with `downcast_ref`. Without a writer (the
/// text format) lines go through `tracing`.
pub(super) struct AccessSink {
    write: Option<LineWriter>,
}

type LineWriter = Box<dyn Fn(&'static Metadata<'static>, &[u8]) + Send + Sync>;

impl AccessSink {
    /// Lines go to `writer`, asked for a writer with the line's metadata (target [`ACCESS_TARGET`],
    /// its level), as the formatting layer asks for an event's; write errors are ignored, as there.
    pub(super) fn to<W>(writer: W) -> Self
    where
        W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    {
        Self {
            write: Some(Box::new(move |meta, line| {
                drop(writer.make_writer_for(meta).write_all(line));
            })),
        }
    }

    /// No direct lines: every access record is a `tracing` event.
    pub(super) fn none() -> Self {
        Self { write: None }
    }
}

impl<S: Subscriber> Layer<S> for AccessSink {}

/// The metadata an access line is written with: what a log writer may route on (the access-line
/// batching of `log_batch` does, by target). Never dispatched as an event.
struct LineCallsite(&'static Metadata<'static>);

impl Callsite for LineCallsite {
    fn set_interest(&self, _interest: Interest) {}

    fn metadata(&self) -> &Metadata<'_> {
        self.0
    }
}

static INFO_CALLSITE: LineCallsite = LineCallsite(&INFO_LINE);
static INFO_LINE: Metadata<'static> = tracing_core::metadata! {
    name: "access line",
    target: ACCESS_TARGET,
    level: Level::INFO,
    fields: &[],
    callsite: &INFO_CALLSITE,
    kind: Kind::EVENT,
};
static WARN_CALLSITE: LineCallsite = LineCallsite(&WARN_LINE);
static WARN_LINE: Metadata<'static> = tracing_core::metadata! {
    name: "access line",
    target: ACCESS_TARGET,
    level: Level::WARN,
    fields: &[],
    callsite: &WARN_CALLSITE,
    kind: Kind::EVENT,
};

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::prelude::*;

    use super::*;
    use crate::config::LogFormat;
    use crate::protocol::openai::Usage;
    use crate::telemetry::json_log::JsonEvent;
    use crate::telemetry::json_log::tests::Buf;
    use crate::telemetry::log_batch::Batched;
    use crate::telemetry::span_fields::JsonSpanFields;

    fn finished(request_id: &str) -> Finished {
        Finished {
            request_id: Arc::from(request_id),
            status: 200,
            latency: Duration::from_micros(1_250),
            ttft: None,
            upstream: None,
            overhead: None,
            usage: None,
            usage_estimated: false,
            cost: None,
            cut: false,
        }
    }

    fn record(warn: bool, message: &'static str, finished: Finished) -> AccessRecord {
        AccessRecord {
            warn,
            message,
            route: Label(Arc::from("/v1/chat/completions")),
            method: http::Method::POST,
            trace_id: None,
            key_id: None,
            cache: None,
            model: None,
            provider: None,
            stream: false,
            finished,
            error: None,
        }
    }

    /// Every member present, strings that need escaping, a server error (`warn`); every member
    /// absent; a client error.
    fn records() -> Vec<AccessRecord> {
        let mut full = record(true, "request failed", finished("r-\"1\"\n"));
        full.finished.status = 502;
        full.finished.ttft = Some(Duration::from_nanos(3_456_789));
        full.finished.upstream = Some(Duration::from_millis(12));
        full.finished.overhead = Some(Duration::from_nanos(100));
        full.finished.usage = Some(Usage {
            prompt_tokens: 12,
            completion_tokens: u64::MAX,
            total_tokens: 0,
            prompt_tokens_details: None,
        });
        full.finished.usage_estimated = true;
        full.finished.cost = Some(rust_decimal::Decimal::new(123_456, 9));
        full.finished.cut = true;
        full.trace_id = Some(TraceId::from_bytes([0xab; 16]));
        full.key_id = Some(Arc::from("key \\ ✓ \u{1}"));
        full.cache = Some("miss");
        full.model = Some(Arc::from("gpt\t4o"));
        full.provider = Some(Label(Arc::from("openai")));
        full.stream = true;
        full.error = Some(GatewayError::UpstreamFailed {
            provider: "openai".to_owned(),
            message: "reset by \"peer\"".to_owned(),
        });
        let bare = record(false, "request served", finished("r-2"));
        let mut rejected = record(false, "request rejected", finished("r-3"));
        rejected.finished.status = 404;
        rejected.error = Some(GatewayError::ModelNotFound("nope".to_owned()));
        vec![full, bare, rejected]
    }

    fn lines(buf: &Buf) -> Vec<String> {
        buf.text().lines().map(str::to_owned).collect()
    }

    /// `{"timestamp":"2026-11-29T14:50:00.123456Z"` is 43 bytes; the rest must be equal.
    fn without_timestamp(line: &str) -> &str {
        assert!(line.starts_with("{\"timestamp\":\""), "{line}");
        let (timestamp, rest) = line[14..].split_at(27);
        assert!(humantime::parse_rfc3339(timestamp).is_ok(), "{line}");
        rest
    }

    /// Emits [`records`] through Sluice's log subscriber in `format`, into `writer`.
    fn emit_through<W>(format: LogFormat, writer: W)
    where
        W: for<'w> MakeWriter<'w> + Clone + Send + Sync + 'static,
    {
        tracing::subscriber::with_default(
            super::super::log_subscriber(EnvFilter::new("info"), format, writer, false),
            || records().into_iter().for_each(AccessRecord::emit),
        );
    }

    #[test]
    fn a_direct_line_is_the_event_line_byte_for_byte() {
        let direct = Buf::default();
        let event = Buf::default();
        let d = direct.clone();
        emit_through(LogFormat::Json, move || d.clone());
        // The event path: the same JSON layer, no sink.
        let e = event.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(JsonSpanFields)
                .event_format(JsonEvent)
                .with_writer(move || e.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            records().into_iter().for_each(AccessRecord::emit);
        });
        let (direct, event) = (lines(&direct), lines(&event));
        assert_eq!(direct.len(), 3, "{direct:?}");
        assert_eq!(event.len(), 3, "{event:?}");
        for (d, e) in direct.iter().zip(&event) {
            assert_eq!(without_timestamp(d), without_timestamp(e));
            serde_json::from_str::<serde_json::Value>(d).unwrap();
        }
        // Spot checks of the values (the comparison above checked every byte and the order).
        let full: serde_json::Value = serde_json::from_str(&direct[0]).unwrap();
        assert_eq!(full["level"], "WARN");
        assert_eq!(full["request_id"], "r-\"1\"\n");
        assert_eq!(full["key_id"], "key \\ ✓ \u{1}");
        assert_eq!(full["trace_id"], "ab".repeat(16));
        assert_eq!(full["output_tokens"], u64::MAX);
        assert_eq!(full["ttft_ms"], 3.456_789);
        assert_eq!(full["cost_usd"], "0.000123456");
        assert_eq!(full["error.kind"], "upstream_failed");
        assert_eq!(full["target"], ACCESS_TARGET);
        let bare: serde_json::Value = serde_json::from_str(&direct[1]).unwrap();
        assert_eq!(bare["level"], "INFO");
        assert!(bare.get("model").is_none() && bare.get("ttft_ms").is_none());
    }

    #[test]
    fn the_text_format_writes_the_event() {
        let out = Buf::default();
        let o = out.clone();
        emit_through(LogFormat::Text, move || o.clone());
        let lines = lines(&out);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[0].contains(" WARN ") && lines[0].contains("status=502"),
            "{lines:?}"
        );
        assert!(!lines[0].starts_with('{'), "{lines:?}");
    }

    #[test]
    fn direct_lines_are_access_lines_to_the_batching_writer() {
        let out = Buf::default();
        let batched = Batched::new(out.clone());
        emit_through(LogFormat::Json, batched.clone());
        // Held for a batch, as every access line is, until the batch is sent.
        assert!(lines(&out).is_empty());
        batched.flush();
        assert_eq!(lines(&out).len(), 3);
    }
}
