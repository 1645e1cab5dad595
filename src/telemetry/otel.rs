//! OpenTelemetry tracing: OTLP export through a batch span processor, W3C trace-context propagation,
//! the spans of each call, GenAI semantic-convention attribute names, and redaction of captured
//! prompt/completion content.
//!
//! How it fits together:
//!
//! - [`init`] builds an `SdkTracerProvider` whose spans go through the SDK's thread-based
//!   `BatchSpanProcessor` to an OTLP exporter (HTTP/protobuf or gRPC). It returns `None` when no
//!   endpoint is configured, so tracing export costs nothing unless asked for.
//! - [`install`] makes its tracer the one every call records with; [`CallSpans`] are the spans of one
//!   call: a server span from arrival to last byte (an internal span for the gateway's own calls) and
//!   a client span for its upstream attempt, built with the OTel SDK directly from what the call record
//!   (`telemetry::call`) collects. Their attributes are set once, when the call finishes.
//! - [`OtelGuard::shutdown`] flushes and stops the exporter; call it after the server stopped.
//!
//! **Why not `tracing` spans.** The OTel spans do not go through a `tracing` layer (and log lines
//! find their request's id without a span, `telemetry::request_scope`). The bridge
//! (`tracing-opentelemetry`) did its work on the request's thread at every step: building a span
//! builder per span, converting each recorded field through a visitor, entering and leaving on every
//! poll of the request future, and attaching events as span events. `bench/observability.sh` measured it at ~20 µs of request-
//! thread CPU per request; the direct spans cost a few.
//!
//! **Batching and overload.** The processor keeps finished spans in a bounded queue (2048 spans by
//! default, `OTEL_BSP_MAX_QUEUE_SIZE`) and exports batches of up to 64 ([`DEFAULT_EXPORT_BATCH_SIZE`],
//! `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`) every 5 s (`OTEL_BSP_SCHEDULE_DELAY`) or as soon as a batch is full,
//! from its own thread, which also encodes and sends the HTTP requests (`otlp_http`). When the queue is
//! full, new spans are
//! **dropped** — that is the SDK's behaviour, so a slow or dead collector never blocks or grows a request
//! path; the SDK logs the first drop and the total at shutdown (target `opentelemetry_sdk`).
//!
//! **Our own OTLP/HTTP exporter** (`otlp_http`, encoding in `otlp_encode`). The SDK's HTTP exporter
//! converted every batch into generated proto structs before encoding it, a third of the background
//! CPU with everything on; ours writes the same protobuf bytes straight from the spans. It sends from
//! the processor's own thread through a current-thread runtime it owns (the thread-based processor
//! drives exports with a plain `block_on`, where an async client finds no reactor), with the gateway's
//! own `reqwest`, retries and `OTEL_EXPORTER_OTLP_*HEADERS` as the SDK's exporter had them. gRPC uses
//! the SDK's tonic exporter, whose channel lives on the server's runtime.
//!
//! **Semantic conventions.** Attribute names follow the OpenTelemetry GenAI semantic conventions
//! ([`attr::SEMCONV_VERSION`], status "Development"): one span per model call, named
//! `"{gen_ai.operation.name} {gen_ai.request.model}"` (e.g. `chat gpt-4o`, see [`span_name`]), kind
//! CLIENT for the upstream call, SERVER for the request around it. Token counts are integers
//! ([`usage_attributes`]), finish reasons a string array ([`finish_reasons_attribute`]).

use std::borrow::Cow;
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{
    SpanKind, Status, TraceContextExt as _, TraceId, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Array, Context, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use regex::Regex;
use serde::Deserialize;

use super::otlp_http;

/// Base URL of the collector for all signals; `/v1/traces` is appended for HTTP.
pub const ENV_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// Full URL of the traces endpoint, used as given.
pub const ENV_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// Transport for all signals: `grpc` or `http/protobuf`.
pub const ENV_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// Transport for traces; wins over [`ENV_PROTOCOL`].
pub const ENV_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
/// The `service.name` resource attribute.
pub const ENV_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// `true` turns the SDK off whatever else is configured.
pub const ENV_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";

/// Largest batch of spans per export, unless `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` says otherwise.
pub const ENV_BSP_MAX_EXPORT_BATCH_SIZE: &str = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE";

/// Spans per export by default: 64 instead of the SDK's 512. Encoding a batch is a burst of CPU work
/// on the gateway's cores; `bench/observability.sh` measured the export's p99 cost at +2.5 ms with
/// batches of 512 and +0.85 ms with 64 (2,000 req/s, one core). More, smaller exports cost the
/// collector a little more per span; operators can raise it.
pub const DEFAULT_EXPORT_BATCH_SIZE: usize = 64;

/// `service.name` when neither the file nor `OTEL_SERVICE_NAME` sets one.
pub const DEFAULT_SERVICE_NAME: &str = "sluice";

/// Appended to captured content that was cut at `max_content_bytes`.
pub const TRUNCATED_MARKER: &str = "…[truncated]";

/// `[otel]` section: OTLP trace export and content capture.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtelConfig {
    /// Collector base URL, e.g. `http://127.0.0.1:4318` (HTTP; `/v1/traces` is appended) or
    /// `http://127.0.0.1:4317` (gRPC). Unset: export is off unless `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
    /// (full URL) or `OTEL_EXPORTER_OTLP_ENDPOINT` (base URL) is set.
    pub endpoint: Option<String>,
    /// Transport. Unset: `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, then `OTEL_EXPORTER_OTLP_PROTOCOL`,
    /// then HTTP/protobuf.
    pub protocol: Option<OtlpProtocol>,
    /// The `service.name` resource attribute. Unset: `OTEL_SERVICE_NAME`, then `sluice`.
    pub service_name: Option<String>,
    /// Fraction of new traces sampled, 0.0–1.0. Parent-based: a request carrying a `traceparent`
    /// follows the caller's sampling decision.
    pub sample_ratio: f64,
    /// Bound on one export (connect, send, response), retries included.
    #[serde(with = "humantime_serde")]
    pub export_timeout: Duration,
    /// Record prompt and completion content on spans (redacted, capped). Off by default: content is
    /// user data.
    pub capture_content: bool,
    /// Largest captured content per attribute, in bytes, marker included.
    pub max_content_bytes: usize,
}

impl Default for OtelConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: None,
            service_name: None,
            sample_ratio: 1.0,
            export_timeout: Duration::from_secs(10),
            capture_content: false,
            max_content_bytes: 4096,
        }
    }
}

impl OtelConfig {
    /// Checks the values that parse but cannot work.
    pub fn validate(&self) -> Result<(), OtelError> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(OtelError::Invalid(format!(
                "sample_ratio must be between 0.0 and 1.0, got {}",
                self.sample_ratio
            )));
        }
        if self.export_timeout.is_zero() {
            return Err(OtelError::Invalid(
                "export_timeout must be greater than 0".to_owned(),
            ));
        }
        if let Some(endpoint) = &self.endpoint {
            check_url("endpoint", endpoint)?;
        }
        if self.service_name.as_deref().is_some_and(str::is_empty) {
            return Err(OtelError::Invalid(
                "service_name must not be empty".to_owned(),
            ));
        }
        Ok(())
    }

    /// The content to record for `text`: `None` unless `capture_content` is on, else the redacted text
    /// capped at `max_content_bytes` (see [`capture`]).
    pub fn captured(&self, text: &str) -> Option<String> {
        self.capture_content
            .then(|| capture(text, self.max_content_bytes))
    }
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OtlpProtocol {
    /// OTLP/gRPC (collector port 4317 by convention).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318); the default.
    HttpProtobuf,
}

impl OtlpProtocol {
    /// Parses the value of `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`, `http/protobuf`).
    fn from_env_value(value: &str) -> Result<Self, OtelError> {
        match value.trim() {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" => Ok(Self::HttpProtobuf),
            other => Err(OtelError::Invalid(format!(
                "unsupported OTLP protocol {other:?}: use \"grpc\" or \"http/protobuf\""
            ))),
        }
    }
}

/// Why OpenTelemetry could not be started or stopped cleanly.
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    /// A value in `[otel]` or a standard `OTEL_*` variable cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// [`init`] was called outside a tokio runtime (the exporters run on it).
    #[error("OpenTelemetry must be initialised inside a tokio runtime")]
    NoRuntime,
    /// The HTTP client for the exporter could not be built.
    #[error("OTLP HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    /// The OTLP exporter rejected its configuration.
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// Flushing or shutting down lost spans or timed out.
    #[error("OpenTelemetry shutdown: {0}")]
    Shutdown(String),
}

/// Where and how traces are exported, after the file and the `OTEL_*` variables were combined.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ExportTarget {
    /// Full traces URL for HTTP, the collector URL for gRPC.
    url: String,
    protocol: OtlpProtocol,
    service_name: String,
}

/// Combines `config` with the standard variables read through `env`; `None` means export is off.
fn resolve(
    config: &OtelConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ExportTarget>, OtelError> {
    // Empty variables count as unset, as in the OTel specification.
    let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    if var(ENV_SDK_DISABLED).is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let protocol = match config.protocol {
        Some(protocol) => protocol,
        None => match var(ENV_TRACES_PROTOCOL).or_else(|| var(ENV_PROTOCOL)) {
            Some(value) => OtlpProtocol::from_env_value(&value)?,
            None => OtlpProtocol::HttpProtobuf,
        },
    };
    let signal_path = |base: &str| match protocol {
        OtlpProtocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
        OtlpProtocol::Grpc => base.to_owned(),
    };
    let url = if let Some(base) = config.endpoint.as_deref().filter(|e| !e.is_empty()) {
        signal_path(base)
    } else if let Some(full) = var(ENV_TRACES_ENDPOINT) {
        check_url(ENV_TRACES_ENDPOINT, &full)?;
        full
    } else if let Some(base) = var(ENV_ENDPOINT) {
        check_url(ENV_ENDPOINT, &base)?;
        signal_path(&base)
    } else {
        return Ok(None);
    };
    let service_name = config
        .service_name
        .clone()
        .or_else(|| var(ENV_SERVICE_NAME))
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
    Ok(Some(ExportTarget {
        url,
        protocol,
        service_name,
    }))
}

fn check_url(origin: &str, url: &str) -> Result<(), OtelError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| OtelError::Invalid(format!("{origin}: invalid URL {url:?}: {e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(()),
        _ => Err(OtelError::Invalid(format!(
            "{origin}: {url:?} must be an http:// or https:// URL with a host"
        ))),
    }
}

/// Starts OTLP trace export, or returns `None` when no endpoint is configured (nor `OTEL_*` set), or
/// `OTEL_SDK_DISABLED=true`. Also installs the W3C TraceContext propagator globally.
///
/// Must run inside a tokio runtime, which must outlive the guard's [`OtelGuard::shutdown`]: export
/// requests run on it. Does not install a global tracer provider; spans reach OTel only through
/// [`OtelGuard::layer`].
pub fn init(config: &OtelConfig) -> Result<Option<OtelGuard>, OtelError> {
    init_with_env(config, &|name| std::env::var(name).ok())
}

fn init_with_env(
    config: &OtelConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<OtelGuard>, OtelError> {
    config.validate()?;
    let Some(target) = resolve(config, env)? else {
        return Ok(None);
    };
    // Not used by the exporters (they get their own runtime below), but gRPC's channel and the
    // shutdown path expect to be inside one.
    tokio::runtime::Handle::try_current().map_err(|_| OtelError::NoRuntime)?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    // `BatchConfigBuilder::default()` reads the `OTEL_BSP_*` variables, so operators can resize the queue.
    let mut batch = BatchConfigBuilder::default();
    if std::env::var_os(ENV_BSP_MAX_EXPORT_BATCH_SIZE).is_none() {
        batch = batch.with_max_export_batch_size(DEFAULT_EXPORT_BATCH_SIZE);
    }
    let batch = batch.build();
    let processor = match target.protocol {
        OtlpProtocol::HttpProtobuf => {
            let headers = otlp_http::headers_from_env(env)?;
            let exporter =
                otlp_http::HttpExporter::new(&target.url, headers, config.export_timeout)?;
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch)
                .build()
        }
        // tonic's channel is created lazily on the current runtime; no connection is made here.
        OtlpProtocol::Grpc => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_protocol(Protocol::Grpc)
                .with_endpoint(target.url.clone())
                .with_timeout(config.export_timeout)
                .build()?;
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch)
                .build()
        }
    };
    let resource = Resource::builder()
        .with_service_name(target.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer_with_scope(
        InstrumentationScope::builder("sluice")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    );
    Ok(Some(OtelGuard {
        provider,
        tracer,
        target,
        export_timeout: config.export_timeout,
    }))
}

/// Keeps the tracer provider alive; [`OtelGuard::shutdown`] flushes it.
#[derive(Debug)]
pub struct OtelGuard {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    target: ExportTarget,
    export_timeout: Duration,
}

impl OtelGuard {
    /// Where spans go: the traces URL (HTTP) or collector URL (gRPC). For the start-up log line, which
    /// [`init`] cannot write itself (it runs before the subscriber is installed).
    pub fn endpoint(&self) -> &str {
        &self.target.url
    }

    /// The transport in use.
    pub fn protocol(&self) -> OtlpProtocol {
        self.target.protocol
    }

    /// The `service.name` in use.
    pub fn service_name(&self) -> &str {
        &self.target.service_name
    }

    /// The underlying provider (for tests and custom tracers).
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// Exports what is queued, then stops the processor. Call after the server stopped, on the runtime
    /// that was current in [`init`], before it shuts down. Takes at most about 5 s (the SDK's fixed
    /// flush wait) plus twice `export_timeout` when the collector is slow or gone; an error then says
    /// what was lost, and is worth a warning, not a failed exit.
    pub async fn shutdown(self) -> Result<(), OtelError> {
        let provider = self.provider;
        let grace = self.export_timeout.saturating_mul(2);
        // The SDK's flush and shutdown block this thread until the export finished, and the export runs
        // on this runtime: on a worker (or the only thread of a current-thread runtime) that would
        // deadlock, so block a blocking-pool thread instead.
        let result = tokio::task::spawn_blocking(move || {
            let flushed = provider.force_flush();
            let stopped = provider.shutdown_with_timeout(grace);
            flushed.and(stopped)
        })
        .await
        .map_err(|e| OtelError::Shutdown(e.to_string()))?;
        result.map_err(|e| OtelError::Shutdown(e.to_string()))
    }
}

// === Spans ===

/// The tracer calls record their spans with, once [`install`]ed.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Makes `guard`'s tracer the one every call records its spans with. Process-wide, like the log
/// subscriber: the first call wins.
pub fn install(guard: &OtelGuard) {
    // A second install (tests start several apps in one process) keeps the first tracer.
    drop(TRACER.set(guard.tracer.clone()));
}

/// The installed tracer, if trace export is on.
pub fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get()
}

/// W3C Trace Context header names.
static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
static TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// The remote parent carried by a client's W3C `traceparent`/`tracestate` headers (the current
/// context, normally empty, when absent or malformed). Most requests carry none: that case is one
/// header lookup, not the propagator's (which looks both names up as strings).
pub fn extract_parent(headers: &http::HeaderMap) -> Context {
    if !headers.contains_key(&TRACEPARENT) {
        return Context::current();
    }
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Room for the attributes an upstream span ends with (request, response, usage, cost, content,
/// error): the SDK keeps the vector it is started with, so ending it does not grow the vector
/// attribute by attribute.
const UPSTREAM_SPAN_ATTRIBUTES: usize = 16;

/// Room for the attributes a server span ends with (method, route, request id, status, error).
pub const SERVER_SPAN_ATTRIBUTES: usize = 5;

/// The OTel spans of one call, built with the SDK directly (see the module docs for why): the call's
/// own span, started when it arrived, and the client span of its upstream attempt. The SDK's sampler
/// decides at the start (parent-based: a caller's decision is kept); an unsampled call's spans are
/// inert, and its trace context still travels upstream with the decision.
pub struct CallSpans {
    tracer: SdkTracer,
    /// Context holding the call's span (server or internal), under its parent.
    call: Context,
    /// Context holding the upstream attempt's client span, under `call`.
    upstream: Option<Context>,
}

impl CallSpans {
    /// The server span of a request named `name`, child of the caller's W3C trace context when
    /// `headers` carry one.
    pub fn server(
        tracer: &SdkTracer,
        name: String,
        headers: &http::HeaderMap,
        attributes: Vec<KeyValue>,
    ) -> Self {
        Self::start(
            tracer,
            name,
            SpanKind::Server,
            &extract_parent(headers),
            attributes,
        )
    }

    /// The span of a call the gateway makes for itself (the semantic cache's embedder, the RAG judge):
    /// child of the current context, that is the request it works for when it runs inside one (the
    /// request future runs with its call's context attached, see [`CallSpans::context`]).
    pub fn internal(tracer: &SdkTracer, name: String, attributes: Vec<KeyValue>) -> Self {
        Self::start(
            tracer,
            name,
            SpanKind::Internal,
            &Context::current(),
            attributes,
        )
    }

    fn start(
        tracer: &SdkTracer,
        name: String,
        kind: SpanKind,
        parent: &Context,
        attributes: Vec<KeyValue>,
    ) -> Self {
        let span = tracer.build_with_context(
            tracer
                .span_builder(name)
                .with_kind(kind)
                .with_attributes(attributes),
            parent,
        );
        Self {
            tracer: tracer.clone(),
            call: parent.with_span(span),
            upstream: None,
        }
    }

    /// Starts the client span of the upstream attempt; its attributes are set when it ends. A second
    /// attempt replaces the first, which ends then with `earlier` (the first attempt's attributes).
    pub fn start_upstream(&mut self, name: String, earlier: Vec<KeyValue>) {
        let span = self.tracer.build_with_context(
            self.tracer
                .span_builder(name)
                .with_kind(SpanKind::Client)
                .with_attributes(Vec::with_capacity(UPSTREAM_SPAN_ATTRIBUTES)),
            &self.call,
        );
        if let Some(previous) = self.upstream.replace(self.call.with_span(span)) {
            let span = previous.span();
            span.set_attributes(earlier);
            span.end();
        }
    }

    /// The context of the call's span, to attach while the call's work runs (internal calls made
    /// from there become its children).
    pub fn context(&self) -> &Context {
        &self.call
    }

    /// Adds `traceparent` (and `tracestate` when not empty) for the upstream attempt's span (the
    /// call's own span before one started) to an upstream request.
    ///
    /// Written here rather than with `TraceContextPropagator::inject_context`, which formats the ids
    /// through `format!` and parses both header names on every call, on the request thread (a visible
    /// share of what trace export cost it in `bench/instructions.sh`), and sends an empty `tracestate`
    /// when there is none. The format is W3C Trace Context level 1, version `00`; extraction still
    /// uses the propagator.
    pub fn inject(&self, headers: &mut http::HeaderMap) {
        let context = self.upstream.as_ref().unwrap_or(&self.call);
        let span = context.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return;
        }
        if let Ok(value) = http::HeaderValue::from_bytes(&traceparent(sc)) {
            headers.insert(&TRACEPARENT, value);
        }
        if *sc.trace_state() != opentelemetry::trace::TraceState::default()
            && let Ok(value) = http::HeaderValue::from_str(&sc.trace_state().header())
        {
            headers.insert(&TRACESTATE, value);
        }
    }

    /// The trace id, for logs (it displays as 32 lowercase hex digits); `None` when the call is not
    /// sampled.
    pub fn trace_id(&self) -> Option<opentelemetry::trace::TraceId> {
        let span = self.call.span();
        let context = span.span_context();
        (context.is_valid() && context.is_sampled()).then(|| context.trace_id())
    }

    /// Ends both spans: the upstream span at `upstream_end` (or now) with `upstream` attributes, the
    /// call's span now with `call` attributes. An `error` (the `error.type` value) marks the spans
    /// it belongs to as failed: the upstream span when the call had one, the call's span when
    /// `call_failed` (a 5xx).
    pub fn end(
        self,
        call: Vec<KeyValue>,
        upstream: Vec<KeyValue>,
        error: Option<&'static str>,
        call_failed: bool,
        upstream_end: Option<std::time::SystemTime>,
    ) {
        if let Some(context) = &self.upstream {
            let span = context.span();
            if span.is_recording() {
                span.set_attributes(upstream);
                if let Some(kind) = error {
                    span.set_attribute(KeyValue::new(attr::ERROR_TYPE, kind));
                    span.set_status(Status::error(kind));
                }
            }
            match upstream_end {
                Some(at) => span.end_with_timestamp(at),
                None => span.end(),
            }
        }
        let span = self.call.span();
        if span.is_recording() {
            span.set_attributes(call);
            if let Some(kind) = error {
                span.set_attribute(KeyValue::new(attr::ERROR_TYPE, kind));
                if call_failed {
                    span.set_status(Status::error(kind));
                }
            }
        }
        span.end();
    }
}

/// Lowercase hex digits of `bytes` into `out`, two per byte.
fn hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// A trace id's 32 lowercase hex digits, as its `Display` writes them (`{:032x}` of a `u128`, which
/// went through the formatter's padding: ~750 instructions per access line, callgrind run
/// instr-20261128T220258Z), for the access line and the request log.
pub(super) struct TraceIdHex([u8; 32]);

impl TraceIdHex {
    pub(super) fn new(id: TraceId) -> Self {
        let mut out = [b'0'; 32];
        hex(&mut out, &id.to_bytes());
        Self(out)
    }

    pub(super) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// `00-{trace id}-{span id}-{flags}` in lowercase hex: the W3C `traceparent` value of `sc`.
fn traceparent(sc: &opentelemetry::trace::SpanContext) -> [u8; 55] {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex(&mut out[3..35], &sc.trace_id().to_bytes());
    hex(&mut out[36..52], &sc.span_id().to_bytes());
    hex(
        &mut out[53..55],
        &[(sc.trace_flags() & opentelemetry::trace::TraceFlags::SAMPLED).to_u8()],
    );
    out
}

// === GenAI attributes ===

/// OpenTelemetry GenAI semantic-convention attribute names, and Sluice's own.
pub mod attr {
    /// The semantic-conventions release the names were checked against (GenAI, "Development").
    pub const SEMCONV_VERSION: &str = "1.37.0";

    /// `gen_ai.operation.name`: see [`operation`].
    pub const OPERATION_NAME: &str = "gen_ai.operation.name";
    /// `gen_ai.provider.name` (replaced `gen_ai.system` in 1.37): see [`provider`].
    pub const PROVIDER_NAME: &str = "gen_ai.provider.name";
    /// `gen_ai.request.model`: the model the client asked for.
    pub const REQUEST_MODEL: &str = "gen_ai.request.model";
    /// `gen_ai.response.model`: the model the upstream says answered.
    pub const RESPONSE_MODEL: &str = "gen_ai.response.model";
    /// `gen_ai.response.id`: the upstream's completion id.
    pub const RESPONSE_ID: &str = "gen_ai.response.id";
    /// `gen_ai.response.finish_reasons`: string array, one per choice (set with
    /// [`record_finish_reasons`](super::record_finish_reasons)).
    pub const RESPONSE_FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
    /// `gen_ai.usage.input_tokens`: int.
    pub const USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
    /// `gen_ai.usage.output_tokens`: int.
    pub const USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
    /// `gen_ai.request.temperature`: double.
    pub const REQUEST_TEMPERATURE: &str = "gen_ai.request.temperature";
    /// `gen_ai.request.max_tokens`: int.
    pub const REQUEST_MAX_TOKENS: &str = "gen_ai.request.max_tokens";
    /// `gen_ai.request.top_p`: double.
    pub const REQUEST_TOP_P: &str = "gen_ai.request.top_p";
    /// `gen_ai.input.messages`: captured prompt (opt-in, see `OtelConfig::capture_content`).
    pub const INPUT_MESSAGES: &str = "gen_ai.input.messages";
    /// `gen_ai.output.messages`: captured completion (opt-in).
    pub const OUTPUT_MESSAGES: &str = "gen_ai.output.messages";
    /// `error.type`: low-cardinality error class when the call failed.
    pub const ERROR_TYPE: &str = "error.type";
    /// `server.address`: the upstream host.
    pub const SERVER_ADDRESS: &str = "server.address";
    /// `sluice.time_to_first_token_ms`: time from sending the request to the first content chunk.
    pub const TIME_TO_FIRST_TOKEN_MS: &str = "sluice.time_to_first_token_ms";
    /// `sluice.cost_usd`: estimated cost of the call, double.
    pub const COST_USD: &str = "sluice.cost_usd";

    /// Well-known `gen_ai.operation.name` values.
    pub mod operation {
        /// Chat completion.
        pub const CHAT: &str = "chat";
        /// Legacy text completion.
        pub const TEXT_COMPLETION: &str = "text_completion";
        /// Embeddings.
        pub const EMBEDDINGS: &str = "embeddings";
    }

    /// Well-known `gen_ai.provider.name` values.
    pub mod provider {
        /// OpenAI.
        pub const OPENAI: &str = "openai";
        /// Anthropic.
        pub const ANTHROPIC: &str = "anthropic";
    }
}

/// The GenAI span name: `"{operation} {model}"`, e.g. `chat gpt-4o` (just the operation without a model).
pub fn span_name(operation: &str, model: &str) -> String {
    if model.is_empty() {
        operation.to_owned()
    } else {
        format!("{operation} {model}")
    }
}

/// `gen_ai.usage.input_tokens` and `gen_ai.usage.output_tokens` as integers (converted to `i64`,
/// saturating).
pub fn usage_attributes(input_tokens: u64, output_tokens: u64) -> [KeyValue; 2] {
    [
        KeyValue::new(attr::USAGE_INPUT_TOKENS, saturating_i64(input_tokens)),
        KeyValue::new(attr::USAGE_OUTPUT_TOKENS, saturating_i64(output_tokens)),
    ]
}

/// `gen_ai.response.finish_reasons` as a string array.
pub fn finish_reasons_attribute(reasons: &[String]) -> KeyValue {
    let values: Vec<StringValue> = reasons
        .iter()
        .map(|r| StringValue::from(r.clone()))
        .collect();
    KeyValue::new(
        attr::RESPONSE_FINISH_REASONS,
        Value::Array(Array::String(values)),
    )
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

// === Content capture ===

/// Extra bytes beyond `max_bytes` that are scanned for secrets before the final cut, so that a secret
/// straddling the cut is still recognised whole (bearer tokens and keys are far shorter).
const REDACTION_LOOKAHEAD: usize = 4096;

/// Secret patterns and their replacements, applied in order. `None` if a pattern failed to compile,
/// which [`capture`] treats as "redact everything".
static REDACTIONS: LazyLock<Option<Vec<(Regex, &'static str)>>> = LazyLock::new(|| {
    let patterns: [(&str, &'static str); 4] = [
        // "api_key": "…", "password": "…", "client_secret": "…", "access_token": "…" (any prefix).
        (
            r#"(?i)("[a-z0-9_\-]*(?:api[_\-]?key|password|passwd|secret|token)"\s*:\s*)"(?:[^"\\]|\\.)*""#,
            r#"$1"[REDACTED]""#,
        ),
        // api_key=…, token=… in query strings and env-style text.
        (
            r"(?i)\b([a-z0-9_\-]*(?:api[_\-]?key|password|secret|token))=[^&\s]+",
            "$1=[REDACTED]",
        ),
        (r"(?i)\b(bearer)\s+[a-z0-9\-._~+/]+=*", "$1 [REDACTED]"),
        // OpenAI (sk-…, sk-proj-…) and Anthropic (sk-ant-…) keys.
        (r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_\-]{16,}", "[REDACTED]"),
    ];
    patterns
        .into_iter()
        .map(|(pattern, replacement)| Regex::new(pattern).ok().map(|re| (re, replacement)))
        .collect()
});

/// Prepares prompt or completion text for a span attribute: masks secrets (bearer tokens, `sk-…`,
/// `sk-ant-…`, `sk-proj-…` keys, string values of JSON fields named like `api_key`, `password`,
/// `secret`, `token`, and `key=value` pairs of those names), then caps the result at `max_bytes`
/// on a char boundary, ending it with [`TRUNCATED_MARKER`]. The result is at most `max_bytes` long
/// unless `max_bytes` is smaller than the marker itself.
pub fn capture(text: &str, max_bytes: usize) -> String {
    // Scan only what can end up in the output (plus a margin), not a whole 1 MB prompt.
    let scanned = &text[..text.floor_char_boundary(max_bytes.saturating_add(REDACTION_LOOKAHEAD))];
    let Some(redactions) = REDACTIONS.as_ref() else {
        return "[REDACTED: content capture unavailable]".to_owned();
    };
    let mut redacted = Cow::Borrowed(scanned);
    for (pattern, replacement) in redactions {
        if let Cow::Owned(replaced) = pattern.replace_all(&redacted, *replacement) {
            redacted = Cow::Owned(replaced);
        }
    }
    let was_cut = scanned.len() < text.len();
    if redacted.len() <= max_bytes && !was_cut {
        return redacted.into_owned();
    }
    let keep = redacted.floor_char_boundary(max_bytes.saturating_sub(TRUNCATED_MARKER.len()));
    let mut out = String::with_capacity(keep + TRUNCATED_MARKER.len());
    out.push_str(&redacted[..keep]);
    out.push_str(TRUNCATED_MARKER);
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use opentelemetry::trace::TraceContextExt as _;

    use super::*;
    use crate::testkit::otlp::{AttrValue, OtlpReceiver, ReceivedSpan};

    const WAIT: Duration = Duration::from_secs(10);

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn config_for(endpoint: String) -> OtelConfig {
        OtelConfig {
            endpoint: Some(endpoint),
            ..OtelConfig::default()
        }
    }

    /// Starts export to `receiver` (ignoring the process's `OTEL_*` variables).
    fn start(config: &OtelConfig) -> OtelGuard {
        init_with_env(config, &no_env)
            .expect("init")
            .expect("export enabled")
    }

    fn by_name<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no span {name:?} in {spans:#?}"))
    }

    #[test]
    fn traceparent_is_what_the_w3c_propagator_writes() {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
        for (trace, span, flags) in [
            (
                0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736_u128,
                0x00f0_67aa_0ba9_02b7_u64,
                1_u8,
            ),
            (1, 1, 0),
            (u128::MAX, u64::MAX, 0xff),
        ] {
            let sc = SpanContext::new(
                TraceId::from(trace),
                SpanId::from(span),
                TraceFlags::new(flags),
                true,
                TraceState::default(),
            );
            let mut expected = HashMap::new();
            TraceContextPropagator::new().inject_context(
                &Context::new().with_remote_span_context(sc.clone()),
                &mut expected,
            );
            assert_eq!(
                std::str::from_utf8(&traceparent(&sc)).unwrap(),
                expected["traceparent"],
            );
        }
        assert_eq!(
            &traceparent(&SpanContext::new(
                TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736_u128),
                SpanId::from(0x00f0_67aa_0ba9_02b7_u64),
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            )),
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
    }

    #[test]
    fn trace_id_hex_is_what_display_writes() {
        use opentelemetry::trace::TraceId;
        for id in [
            0_u128,
            1,
            0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
            u128::MAX,
        ] {
            let id = TraceId::from(id);
            assert_eq!(TraceIdHex::new(id).as_str(), id.to_string());
        }
    }

    #[test]
    fn config_parses_with_defaults_and_rejects_unknown_fields() {
        let config: OtelConfig = serde_json::from_value(serde_json::json!({
            "endpoint": "http://collector:4318",
            "protocol": "grpc",
            "export_timeout": "3s",
            "capture_content": true,
        }))
        .unwrap();
        assert_eq!(config.protocol, Some(OtlpProtocol::Grpc));
        assert_eq!(config.export_timeout, Duration::from_secs(3));
        assert!((config.sample_ratio - 1.0).abs() < f64::EPSILON);
        assert_eq!(config.max_content_bytes, 4096);
        let http: OtelConfig =
            serde_json::from_value(serde_json::json!({ "protocol": "http-protobuf" })).unwrap();
        assert_eq!(http.protocol, Some(OtlpProtocol::HttpProtobuf));
        let err = serde_json::from_value::<OtelConfig>(serde_json::json!({ "endpont": "x" }))
            .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn validate_rejects_bad_values() {
        for bad in [
            OtelConfig {
                sample_ratio: 1.5,
                ..OtelConfig::default()
            },
            OtelConfig {
                sample_ratio: f64::NAN,
                ..OtelConfig::default()
            },
            OtelConfig {
                export_timeout: Duration::ZERO,
                ..OtelConfig::default()
            },
            config_for("collector:4318".to_owned()),
            config_for("ftp://collector".to_owned()),
        ] {
            assert!(bad.validate().is_err(), "{bad:?} accepted");
        }
        OtelConfig::default().validate().unwrap();
    }

    #[test]
    fn export_is_off_without_endpoint_or_env() {
        assert_eq!(resolve(&OtelConfig::default(), &no_env).unwrap(), None);
        let guard = init_with_env(&OtelConfig::default(), &no_env).unwrap();
        assert!(guard.is_none());
    }

    #[test]
    fn file_wins_over_env_and_env_fills_gaps() {
        let env = env_of(&[
            (ENV_ENDPOINT, "http://env-collector:4318/"),
            (ENV_PROTOCOL, "grpc"),
            (ENV_SERVICE_NAME, "from-env"),
        ]);
        // Nothing in the file: everything from the environment (base URL; gRPC keeps it as is).
        let target = resolve(&OtelConfig::default(), &env).unwrap().unwrap();
        assert_eq!(target.url, "http://env-collector:4318/");
        assert_eq!(target.protocol, OtlpProtocol::Grpc);
        assert_eq!(target.service_name, "from-env");
        // The file sets all three.
        let config = OtelConfig {
            endpoint: Some("http://file-collector:4318".to_owned()),
            protocol: Some(OtlpProtocol::HttpProtobuf),
            service_name: Some("from-file".to_owned()),
            ..OtelConfig::default()
        };
        let target = resolve(&config, &env).unwrap().unwrap();
        assert_eq!(target.url, "http://file-collector:4318/v1/traces");
        assert_eq!(target.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(target.service_name, "from-file");
    }

    #[test]
    fn env_endpoints_follow_the_otlp_rules() {
        // The signal-specific URL is used as given and wins over the base URL.
        let env = env_of(&[
            (ENV_ENDPOINT, "http://base:4318"),
            (ENV_TRACES_ENDPOINT, "http://traces:4318/custom/path"),
        ]);
        let target = resolve(&OtelConfig::default(), &env).unwrap().unwrap();
        assert_eq!(target.url, "http://traces:4318/custom/path");
        assert_eq!(target.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(target.service_name, DEFAULT_SERVICE_NAME);
        // The base URL gets the signal path for HTTP.
        let env = env_of(&[(ENV_ENDPOINT, "http://base:4318")]);
        let target = resolve(&OtelConfig::default(), &env).unwrap().unwrap();
        assert_eq!(target.url, "http://base:4318/v1/traces");
        // The traces protocol variable wins over the general one.
        let env = env_of(&[
            (ENV_ENDPOINT, "http://base:4317"),
            (ENV_PROTOCOL, "http/protobuf"),
            (ENV_TRACES_PROTOCOL, "grpc"),
        ]);
        let target = resolve(&OtelConfig::default(), &env).unwrap().unwrap();
        assert_eq!(target.protocol, OtlpProtocol::Grpc);
        // Unsupported protocol, malformed URL, empty values, SDK disabled.
        let env = env_of(&[
            (ENV_ENDPOINT, "http://base:4318"),
            (ENV_PROTOCOL, "http/json"),
        ]);
        assert!(resolve(&OtelConfig::default(), &env).is_err());
        let env = env_of(&[(ENV_ENDPOINT, "not a url")]);
        assert!(resolve(&OtelConfig::default(), &env).is_err());
        let env = env_of(&[(ENV_ENDPOINT, "  ")]);
        assert_eq!(resolve(&OtelConfig::default(), &env).unwrap(), None);
        let env = env_of(&[
            (ENV_ENDPOINT, "http://base:4318"),
            (ENV_SDK_DISABLED, "TRUE"),
        ]);
        assert_eq!(
            resolve(&config_for("http://x:1".to_owned()), &env).unwrap(),
            None
        );
    }

    #[test]
    fn init_outside_a_runtime_is_an_error() {
        let err = init_with_env(&config_for("http://127.0.0.1:9".to_owned()), &no_env).unwrap_err();
        assert!(matches!(err, OtelError::NoRuntime), "{err}");
    }

    #[tokio::test]
    async fn a_malformed_collector_header_variable_stops_start_up_without_showing_its_value() {
        let env = env_of(&[("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "api-key sk-secret-123")]);
        let err = init_with_env(&config_for("http://127.0.0.1:9".to_owned()), &env).unwrap_err();
        assert!(matches!(err, OtelError::Invalid(_)), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("OTEL_EXPORTER_OTLP_TRACES_HEADERS"),
            "{message}"
        );
        assert!(!message.contains("sk-secret"), "{message}");
        // gRPC takes its headers from the same variables through the SDK's exporter, not from here.
        let grpc = OtelConfig {
            protocol: Some(OtlpProtocol::Grpc),
            ..config_for("http://127.0.0.1:9".to_owned())
        };
        drop(init_with_env(&grpc, &env).unwrap());
    }

    /// A request with a GenAI upstream call, recorded the way `telemetry::call` does; returns the
    /// request's trace id as [`CallSpans::trace_id`] reports it.
    fn emit_chat_call(tracer: &SdkTracer) -> Option<String> {
        let mut spans = CallSpans::server(
            tracer,
            "POST /v1/chat/completions".to_owned(),
            &http::HeaderMap::new(),
            vec![KeyValue::new("http.route", "/v1/chat/completions")],
        );
        spans.start_upstream(span_name(attr::operation::CHAT, "gpt-4o"), Vec::new());
        let trace = spans.trace_id();
        // Request and response attributes are all set at the end.
        let mut upstream = vec![
            KeyValue::new(attr::OPERATION_NAME, attr::operation::CHAT),
            KeyValue::new(attr::PROVIDER_NAME, attr::provider::OPENAI),
            KeyValue::new(attr::REQUEST_MODEL, "gpt-4o"),
            KeyValue::new(attr::REQUEST_TEMPERATURE, 0.2),
            KeyValue::new(attr::REQUEST_MAX_TOKENS, 256_i64),
            KeyValue::new(attr::RESPONSE_MODEL, "gpt-4o-2024-08-06"),
            KeyValue::new(attr::RESPONSE_ID, "chatcmpl-123"),
            KeyValue::new(attr::TIME_TO_FIRST_TOKEN_MS, 42_i64),
            KeyValue::new(attr::COST_USD, 0.0015),
            finish_reasons_attribute(&["stop".to_owned()]),
        ];
        upstream.extend(usage_attributes(12, u64::MAX));
        spans.end(
            vec![KeyValue::new("http.response.status_code", 200_i64)],
            upstream,
            None,
            false,
            None,
        );
        trace.map(|t| t.to_string())
    }

    #[tokio::test]
    async fn spans_with_genai_fields_reach_the_collector() {
        let receiver = OtlpReceiver::start().await.unwrap();
        let guard = start(&OtelConfig {
            service_name: Some("sluice-test".to_owned()),
            ..config_for(receiver.endpoint())
        });
        let request_trace = emit_chat_call(&guard.tracer);
        guard.shutdown().await.unwrap();

        let spans = receiver.wait_for_spans(|s| s.len() >= 2, WAIT).await;
        assert_eq!(spans.len(), 2, "{spans:#?}");
        let request = by_name(&spans, "POST /v1/chat/completions");
        let call = by_name(&spans, "chat gpt-4o");
        // Parent/child and trace id.
        assert_eq!(call.trace_id, request.trace_id);
        assert_eq!(call.parent_span_id, request.span_id);
        assert!(request.parent_span_id.is_empty());
        assert_eq!(Some(request.trace_id.clone()), request_trace);
        assert_eq!(request.trace_id.len(), 32);
        assert_eq!(call.span_id.len(), 16);
        // Kinds (OTLP enum: 2 = server, 3 = client).
        assert_eq!(request.kind, 2);
        assert_eq!(call.kind, 3);
        // Attributes, with their types.
        let s = |v: &str| Some(AttrValue::String(v.to_owned()));
        assert_eq!(call.attr(attr::OPERATION_NAME).cloned(), s("chat"));
        assert_eq!(call.attr(attr::PROVIDER_NAME).cloned(), s("openai"));
        assert_eq!(call.attr(attr::REQUEST_MODEL).cloned(), s("gpt-4o"));
        assert_eq!(
            call.attr(attr::RESPONSE_MODEL).cloned(),
            s("gpt-4o-2024-08-06")
        );
        assert_eq!(call.attr(attr::RESPONSE_ID).cloned(), s("chatcmpl-123"));
        assert_eq!(
            call.attr(attr::USAGE_INPUT_TOKENS),
            Some(&AttrValue::Int(12))
        );
        // u64 beyond i64 saturates instead of wrapping or becoming text.
        assert_eq!(
            call.attr(attr::USAGE_OUTPUT_TOKENS),
            Some(&AttrValue::Int(i64::MAX))
        );
        assert_eq!(
            call.attr(attr::REQUEST_MAX_TOKENS),
            Some(&AttrValue::Int(256))
        );
        assert_eq!(
            call.attr(attr::REQUEST_TEMPERATURE),
            Some(&AttrValue::Double(0.2))
        );
        assert_eq!(
            call.attr(attr::TIME_TO_FIRST_TOKEN_MS),
            Some(&AttrValue::Int(42))
        );
        assert_eq!(call.attr(attr::COST_USD), Some(&AttrValue::Double(0.0015)));
        assert_eq!(
            call.attr(attr::RESPONSE_FINISH_REASONS),
            Some(&AttrValue::Array(vec![AttrValue::String(
                "stop".to_owned()
            )]))
        );
        assert_eq!(
            request.attr("http.route").cloned(),
            s("/v1/chat/completions")
        );
        assert_eq!(
            request.attr("http.response.status_code"),
            Some(&AttrValue::Int(200))
        );
        assert_eq!(request.attr(attr::USAGE_INPUT_TOKENS), None);
        // Resource.
        assert_eq!(call.resource.get("service.name").cloned(), s("sluice-test"));
        assert_eq!(
            call.resource.get("service.version").cloned(),
            s(env!("CARGO_PKG_VERSION"))
        );
    }

    #[tokio::test]
    async fn incoming_traceparent_becomes_the_parent_and_is_sent_upstream() {
        let receiver = OtlpReceiver::start().await.unwrap();
        let guard = start(&config_for(receiver.endpoint()));
        let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let caller_span = "00f067aa0ba902b7";
        let mut incoming = http::HeaderMap::new();
        incoming.insert(
            "traceparent",
            format!("00-{caller_trace}-{caller_span}-01")
                .parse()
                .unwrap(),
        );
        incoming.insert("tracestate", "vendor=1".parse().unwrap());

        let parent = extract_parent(&incoming);
        assert_eq!(
            parent.span().span_context().trace_id().to_string(),
            caller_trace
        );
        assert!(parent.span().span_context().is_remote());

        let mut spans = CallSpans::server(&guard.tracer, "request".to_owned(), &incoming, vec![]);
        spans.start_upstream("upstream".to_owned(), vec![]);
        let mut outgoing = http::HeaderMap::new();
        spans.inject(&mut outgoing);
        let logged = spans.trace_id();
        spans.end(vec![], vec![], Some("upstream_failed"), true, None);
        guard.shutdown().await.unwrap();

        assert_eq!(logged.map(|t| t.to_string()).as_deref(), Some(caller_trace));
        let traceparent = outgoing["traceparent"].to_str().unwrap();
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1], caller_trace);
        assert_eq!(parts[2].len(), 16);
        assert!(parts[2].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(
            parts[2], caller_span,
            "the upstream gets our span as its parent"
        );
        assert_eq!(parts[3], "01");
        assert_eq!(outgoing["tracestate"], "vendor=1");

        let spans = receiver.wait_for_spans(|s| s.len() >= 2, WAIT).await;
        let request = by_name(&spans, "request");
        let upstream = by_name(&spans, "upstream");
        assert_eq!(request.trace_id, caller_trace);
        assert_eq!(request.parent_span_id, caller_span);
        assert_eq!(upstream.parent_span_id, request.span_id);
        assert_eq!(upstream.span_id, parts[2]);
        // The failure is on both spans (a 5xx), as error.type and status.
        for span in [request, upstream] {
            assert_eq!(
                span.attr(attr::ERROR_TYPE),
                Some(&AttrValue::String("upstream_failed".to_owned()))
            );
        }
    }

    #[tokio::test]
    async fn internal_calls_are_children_of_the_attached_context() {
        let receiver = OtlpReceiver::start().await.unwrap();
        let guard = start(&config_for(receiver.endpoint()));
        let request = CallSpans::server(
            &guard.tracer,
            "request".to_owned(),
            &http::HeaderMap::new(),
            vec![],
        );
        let internal = {
            let _attached = request.context().clone().attach();
            CallSpans::internal(&guard.tracer, "internal call".to_owned(), vec![])
        };
        let detached = CallSpans::internal(&guard.tracer, "detached".to_owned(), vec![]);
        for spans in [internal, detached, request] {
            spans.end(vec![], vec![], None, false, None);
        }
        guard.shutdown().await.unwrap();
        let spans = receiver.wait_for_spans(|s| s.len() >= 3, WAIT).await;
        let request = by_name(&spans, "request");
        let internal = by_name(&spans, "internal call");
        assert_eq!(internal.parent_span_id, request.span_id);
        assert_eq!(internal.trace_id, request.trace_id);
        assert_eq!(internal.kind, 1, "internal");
        assert!(by_name(&spans, "detached").parent_span_id.is_empty());
    }

    #[tokio::test]
    async fn unsampled_caller_is_respected() {
        let receiver = OtlpReceiver::start().await.unwrap();
        let guard = start(&config_for(receiver.endpoint()));
        let mut incoming = http::HeaderMap::new();
        incoming.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
                .parse()
                .unwrap(),
        );
        let mut spans = CallSpans::server(&guard.tracer, "unsampled".to_owned(), &incoming, vec![]);
        spans.start_upstream("unsampled upstream".to_owned(), vec![]);
        let mut outgoing = http::HeaderMap::new();
        spans.inject(&mut outgoing);
        let logged = spans.trace_id();
        spans.end(vec![], vec![], None, false, None);
        guard.shutdown().await.unwrap();
        assert_eq!(logged, None);
        // The decision still travels upstream.
        assert!(outgoing["traceparent"].to_str().unwrap().ends_with("-00"));
        assert!(
            receiver
                .spans()
                .iter()
                .all(|s| !s.name.starts_with("unsampled"))
        );
    }

    #[test]
    fn malformed_traceparent_is_no_parent() {
        let headers = http::HeaderMap::new();
        assert!(!extract_parent(&headers).span().span_context().is_valid());
        let mut bad = http::HeaderMap::new();
        bad.insert("traceparent", "garbage".parse().unwrap());
        assert!(!extract_parent(&bad).span().span_context().is_valid());
    }

    #[tokio::test]
    async fn sample_ratio_zero_exports_nothing() {
        let receiver = OtlpReceiver::start().await.unwrap();
        let guard = start(&OtelConfig {
            sample_ratio: 0.0,
            ..config_for(receiver.endpoint())
        });
        let spans = CallSpans::server(
            &guard.tracer,
            "dropped".to_owned(),
            &http::HeaderMap::new(),
            vec![],
        );
        assert_eq!(spans.trace_id(), None);
        spans.end(vec![], vec![], None, false, None);
        guard.shutdown().await.unwrap();
        assert!(receiver.spans().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grpc_exporter_delivers_to_the_receiver() {
        let receiver = OtlpReceiver::start().await.unwrap();
        let guard = start(&OtelConfig {
            protocol: Some(OtlpProtocol::Grpc),
            ..config_for(receiver.endpoint())
        });
        assert_eq!(guard.protocol(), OtlpProtocol::Grpc);
        assert_eq!(guard.endpoint(), receiver.endpoint());
        assert_eq!(guard.service_name(), DEFAULT_SERVICE_NAME);
        CallSpans::server(
            &guard.tracer,
            "over grpc".to_owned(),
            &http::HeaderMap::new(),
            vec![KeyValue::new(attr::REQUEST_MODEL, "m")],
        )
        .end(vec![], vec![], None, false, None);
        guard.shutdown().await.unwrap();
        let spans = receiver.wait_for_spans(|s| !s.is_empty(), WAIT).await;
        let span = by_name(&spans, "over grpc");
        assert_eq!(
            span.attr(attr::REQUEST_MODEL),
            Some(&AttrValue::String("m".to_owned()))
        );
    }

    #[tokio::test]
    async fn shutdown_with_an_unreachable_collector_is_bounded() {
        // A port that was just free: the connection is refused at once.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let guard = start(&OtelConfig {
            export_timeout: Duration::from_millis(500),
            ..config_for(format!("http://{closed}"))
        });
        CallSpans::server(
            &guard.tracer,
            "lost".to_owned(),
            &http::HeaderMap::new(),
            vec![],
        )
        .end(vec![], vec![], None, false, None);
        let started = std::time::Instant::now();
        let result = guard.shutdown().await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        let err = result.unwrap_err();
        assert!(matches!(err, OtelError::Shutdown(_)), "{err}");
    }

    #[test]
    fn span_name_follows_the_convention() {
        assert_eq!(span_name("chat", "gpt-4o"), "chat gpt-4o");
        assert_eq!(span_name("embeddings", ""), "embeddings");
    }

    #[test]
    fn redaction_patterns_compile() {
        assert!(REDACTIONS.as_ref().is_some_and(|r| r.len() == 4));
    }

    #[test]
    fn capture_masks_secrets() {
        let cases = [
            (
                "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc-_def==",
                "Authorization: Bearer [REDACTED]",
            ),
            ("bearer abc123", "bearer [REDACTED]"),
            (
                "use sk-abcdefghijklmnopqrstuvwx please",
                "use [REDACTED] please",
            ),
            (
                "key sk-proj-AbC_12345678901234567890-xyz.",
                "key [REDACTED].",
            ),
            (
                "anthropic sk-ant-api03-abcdefghijklmnop_QRSTU",
                "anthropic [REDACTED]",
            ),
            (
                r#"{"api_key": "abc", "password":"p\"w", "model": "gpt-4o"}"#,
                r#"{"api_key": "[REDACTED]", "password":"[REDACTED]", "model": "gpt-4o"}"#,
            ),
            (
                r#"{"client_secret":"s","refresh_token":"t","max_tokens":5,"API-KEY":"k"}"#,
                r#"{"client_secret":"[REDACTED]","refresh_token":"[REDACTED]","max_tokens":5,"API-KEY":"[REDACTED]"}"#,
            ),
            (
                "GET /x?api_key=abc123&q=1 token=xyz",
                "GET /x?api_key=[REDACTED]&q=1 token=[REDACTED]",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(capture(input, 4096), expected, "input: {input}");
        }
    }

    #[test]
    fn capture_leaves_ordinary_text_alone() {
        for text in [
            "",
            "Tell me about sk-learn and the sk- prefix.",
            "The max_tokens limit is 256; a token is a word piece.",
            "Our password policy requires 12 characters.",
            "héllo wörld ✓",
        ] {
            assert_eq!(capture(text, 4096), text);
        }
    }

    #[test]
    fn capture_truncates_on_a_char_boundary() {
        let text = "é".repeat(100); // 200 bytes
        let out = capture(&text, 51);
        assert!(out.len() <= 51, "{} bytes", out.len());
        assert!(out.ends_with(TRUNCATED_MARKER));
        let kept = out.strip_suffix(TRUNCATED_MARKER).unwrap();
        assert_eq!(kept, "é".repeat(18)); // 51 - 14 = 37 bytes -> 18 whole chars
        // Exactly at the limit: untouched.
        assert_eq!(capture(&"a".repeat(64), 64), "a".repeat(64));
        // A limit smaller than the marker yields just the marker.
        assert_eq!(capture("abcdefghijklmnopqrstuvwxyz", 3), TRUNCATED_MARKER);
    }

    #[test]
    fn capture_redacts_before_cutting() {
        // The key straddles the cut: it must not leak as a shorter, unrecognisable prefix.
        // Cutting first would keep "sk-ab" at a 60-byte cap.
        let text = format!(
            "{} sk-abcdefghijklmnopqrstuvwxyz0123 {}",
            "x".repeat(40),
            "tail ".repeat(10)
        );
        let out = capture(&text, 60);
        assert!(!out.contains("sk-"), "{out}");
        assert!(out.len() <= 60, "{out}");
        assert_eq!(out, format!("{} [REDA{TRUNCATED_MARKER}", "x".repeat(40)));
        // Huge input: only the head is scanned, the result is still capped.
        let huge = format!("{} sk-abcdefghijklmnopqrstuvwxyz", "y".repeat(1_000_000));
        let out = capture(&huge, 100);
        assert!(out.len() <= 100);
    }

    #[test]
    fn captured_respects_the_switch() {
        let off = OtelConfig::default();
        assert_eq!(off.captured("secret prompt"), None);
        let on = OtelConfig {
            capture_content: true,
            max_content_bytes: 20,
            ..OtelConfig::default()
        };
        assert_eq!(on.captured("short"), Some("short".to_owned()));
        assert!(on.captured(&"z".repeat(100)).unwrap().len() <= 20);
    }
}
