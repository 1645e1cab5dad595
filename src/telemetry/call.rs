//! The record of one request: handlers and the provider layer fill it in as the call goes; when the
//! response body ends (or the client leaves) it is finished once, and that single place writes the
//! access log, the metrics, the span attributes and the request-log entry.
//!
//! Shared as `Arc<Call>` through the request extensions (inserted by `middleware::observe`) and the
//! provider `CallContext`. One uncontended mutex guards the mutable part; streams touch it once per chunk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::TraceId;
use opentelemetry::{KeyValue, StringValue};
use rust_decimal::Decimal;

use super::Observability;
use super::access_log::AccessRecord;
use super::metrics::{
    CostLabels, Label, ModelLabels, OverheadLabels, RequestLabels, RouteLabels, TokenLabels,
    UpstreamErrorLabels,
};
use super::otel::{CallSpans, attr};
use crate::error::GatewayError;
use crate::protocol::openai::{
    ChatChunk, ChatCompletion, ChatMessage, Completion, EmbeddingsResponse, Usage,
};
use crate::state::AppState;
use crate::usage::{Price, TokenUsage, tokens};

/// What kind of call this is (`gen_ai.operation.name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Chat completions and Anthropic messages.
    Chat,
    /// Legacy text completions.
    TextCompletion,
    /// Embeddings.
    Embeddings,
}

impl Operation {
    /// The GenAI semantic-convention name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::TextCompletion => "text_completion",
            Self::Embeddings => "embeddings",
        }
    }
}

/// Request parameters recorded on the span.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestParams {
    /// `temperature`.
    pub temperature: Option<f64>,
    /// `top_p`.
    pub top_p: Option<f64>,
    /// Output token limit.
    pub max_tokens: Option<u32>,
}

/// One request, from arrival to its last byte.
pub struct Call {
    request_id: Arc<str>,
    route: Label,
    method: http::Method,
    received: Instant,
    received_at: SystemTime,
    finished: AtomicBool,
    capture: AtomicBool,
    /// `on_client_disconnect = "finish"`: the call is finished when the upstream ends, not the body.
    defer: AtomicBool,
    data: Mutex<CallData>,
}

#[derive(Default)]
struct CallData {
    operation: Option<Operation>,
    /// The virtual key's id (never the secret).
    key_id: Option<Arc<str>>,
    /// Limit and budget reservations, settled when the call finishes.
    admission: Option<crate::control::Admission>,
    /// What the admission settles instead of the call's own usage: tokens and cost of work done on the
    /// caller's behalf by internal calls (RAG judge calls), which record their own usage.
    charged: Option<(u64, Option<Decimal>)>,
    /// `x-ratelimit-*` headers for the response.
    limit_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// What the response cache did (`hit`, `miss`, `bypass`), when it was consulted.
    cache: Option<&'static str>,
    /// The model as the client named it (logs only).
    requested_model: Option<Arc<str>>,
    /// The configured public model (a metric label).
    model: Option<Label>,
    provider: Option<Label>,
    upstream_model: Option<Arc<str>>,
    price: Option<Price>,
    stream: bool,
    params: RequestParams,
    /// The call's OTel spans, when trace export is on; ended when the call finishes.
    spans: Option<CallSpans>,
    upstream_started: Option<Instant>,
    upstream_first_byte: Option<Instant>,
    upstream_done: Option<Instant>,
    headers_sent: Option<Instant>,
    first_token: Option<Instant>,
    response_id: Option<String>,
    response_model: Option<String>,
    finish_reasons: Vec<String>,
    usage: Option<Usage>,
    /// Output text of a stream while no usage has arrived, for counting if none ever does.
    streamed_text: String,
    /// The prompt of a stream, for counting if the upstream never reports usage.
    prompt: Option<Vec<ChatMessage>>,
    error: Option<GatewayError>,
    cost: Option<Decimal>,
    /// Captured content (only when capture is on).
    request_body: Option<String>,
    response_body: Option<String>,
    /// A finish waiting for the upstream to end (status, completed, where to write).
    pending_finish: Option<(u16, bool, AppState)>,
}

/// The summary written when a call finishes (also what the request log stores).
#[derive(Debug, Clone)]
pub struct Finished {
    /// Request id.
    pub request_id: Arc<str>,
    /// HTTP status.
    pub status: u16,
    /// Arrival to last byte.
    pub latency: Duration,
    /// Arrival to the first content token (streams).
    pub ttft: Option<Duration>,
    /// Upstream call duration.
    pub upstream: Option<Duration>,
    /// Time to headers minus the upstream's share of it.
    pub overhead: Option<Duration>,
    /// Usage (reported by the upstream, or counted).
    pub usage: Option<Usage>,
    /// True if the usage was counted by Sluice rather than reported.
    pub usage_estimated: bool,
    /// Exact cost, if the model has a price.
    pub cost: Option<Decimal>,
    /// True if the stream ended before its natural end (client left, or an error).
    pub cut: bool,
}

impl Call {
    /// A new call, received now; `spans` are its OTel spans when trace export is on.
    pub fn new(
        request_id: Arc<str>,
        route: Label,
        method: http::Method,
        spans: Option<CallSpans>,
    ) -> Self {
        Self {
            request_id,
            route,
            method,
            received: Instant::now(),
            received_at: SystemTime::now(),
            finished: AtomicBool::new(false),
            capture: AtomicBool::new(false),
            defer: AtomicBool::new(false),
            data: Mutex::new(CallData {
                spans,
                ..CallData::default()
            }),
        }
    }

    /// A call the gateway makes for itself (the semantic cache's embedder, the RAG judge): recorded
    /// like a client's call, under the route label `internal`, in an OTel span with `purpose` as an
    /// attribute, a child of the request it works for when made inside one.
    pub fn internal(purpose: &'static str) -> Arc<Self> {
        let spans = super::otel::tracer().map(|tracer| {
            CallSpans::internal(
                tracer,
                "internal call".to_owned(),
                vec![KeyValue::new("sluice.purpose", purpose)],
            )
        });
        Arc::new(Self::new(
            Arc::from(uuid::Uuid::now_v7().to_string()),
            Label::fixed("internal"),
            http::Method::POST,
            spans,
        ))
    }

    /// A call that is not attached to a request (unit tests).
    pub fn detached() -> Arc<Self> {
        Arc::new(Self::new(
            Arc::from(""),
            Label::fixed("internal"),
            http::Method::POST,
            None,
        ))
    }

    fn data(&self) -> std::sync::MutexGuard<'_, CallData> {
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keep request and response content (request-log bodies, span content); off by default.
    pub fn capture_content(&self) {
        self.capture.store(true, Ordering::Relaxed);
    }

    /// Whether content is captured.
    pub fn captures_content(&self) -> bool {
        self.capture.load(Ordering::Relaxed)
    }

    /// The raw request body, when capturing.
    pub fn request_body(&self, body: &str) {
        self.data().request_body = Some(body.to_owned());
    }

    /// The caller's key id.
    pub fn set_key_id(&self, id: &str) {
        self.data().key_id = Some(Arc::from(id));
    }

    /// The caller's key id, if it used one.
    pub fn key_id(&self) -> Option<Arc<str>> {
        self.data().key_id.clone()
    }

    /// The reservations to settle when the call finishes, and the `x-ratelimit-*` headers.
    pub fn admitted(
        &self,
        admission: Option<crate::control::Admission>,
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
    ) {
        let mut d = self.data();
        d.admission = admission;
        d.limit_headers = headers;
    }

    /// Settles this call's admission with `tokens` and `cost` spent by internal calls made for it (the
    /// RAG judge), instead of this call's own usage (it has none). The internal calls keep their own
    /// metrics and request-log rows; only the caller's limits and budget are charged here.
    pub fn charge(&self, tokens: u64, cost: Option<Decimal>) {
        self.data().charged = Some((tokens, cost));
    }

    /// What the response cache did for this call.
    pub fn cache_outcome(&self, outcome: &'static str) {
        self.data().cache = Some(outcome);
    }

    /// The `x-ratelimit-*` headers of the call's admission (also set when it was refused).
    pub fn limit_headers(&self) -> Vec<(http::HeaderName, http::HeaderValue)> {
        self.data().limit_headers.clone()
    }

    /// The request id.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// What the handler learnt from the body.
    pub fn begin(&self, operation: Operation, model: &str, stream: bool, params: RequestParams) {
        let mut d = self.data();
        d.operation = Some(operation);
        d.stream = stream;
        d.params = params;
        // Not a metric label yet: only a configured model becomes one (in `upstream_attempt`), so a
        // client sending random model names cannot grow the series.
        d.requested_model = Some(Arc::from(model));
    }

    /// Keeps the prompt of a stream, to count its tokens if the upstream never reports usage.
    pub fn keep_prompt(&self, messages: &[ChatMessage]) {
        self.data().prompt = Some(messages.to_vec());
    }

    /// The model resolved to a route; starts the upstream attempt span.
    pub fn upstream_attempt(
        &self,
        model: &Arc<str>,
        provider: &str,
        upstream_model: &Arc<str>,
        price: Option<Price>,
    ) {
        let mut d = self.data();
        let operation = d.operation.unwrap_or(Operation::Chat).as_str();
        // The request attributes are set when the span ends (on the telemetry thread for the last
        // attempt); an earlier attempt's span ends here, with its own.
        let earlier = if d.spans.is_some() {
            UpstreamRequest::of(&d).map_or_else(Vec::new, UpstreamRequest::attributes)
        } else {
            Vec::new()
        };
        if let Some(spans) = &mut d.spans {
            spans.start_upstream(super::otel::span_name(operation, upstream_model), earlier);
        }
        d.model = Some(Label(Arc::clone(model)));
        d.provider = Some(Label(Arc::from(provider)));
        d.upstream_model = Some(Arc::clone(upstream_model));
        d.price = price;
        d.upstream_started = Some(Instant::now());
    }

    /// Adds the W3C trace context of the upstream attempt to an upstream request (nothing when trace
    /// export is off).
    pub fn inject_trace_context(&self, headers: &mut http::HeaderMap) {
        if let Some(spans) = &self.data().spans {
            spans.inject(headers);
        }
    }

    /// The upstream answered (non-streaming response, or the first stream event).
    pub fn upstream_responded(&self) {
        let mut d = self.data();
        let now = Instant::now();
        d.upstream_first_byte.get_or_insert(now);
    }

    /// The upstream call is over.
    pub fn upstream_done(&self) {
        let pending = {
            let mut d = self.data();
            d.upstream_done.get_or_insert(Instant::now());
            d.pending_finish.take()
        };
        if let Some((status, completed, state)) = pending {
            self.finish(status, completed, &state.obs);
        }
    }

    /// The upstream keeps running after a client disconnect: account the call when it ends.
    pub fn finish_after_upstream(&self) {
        self.defer.store(true, Ordering::Relaxed);
    }

    /// What the response body does at its end or drop: finishes the call, or, when the upstream is
    /// still being read to its end (`on_client_disconnect = "finish"`), leaves that to `upstream_done`.
    pub fn finish_or_defer(&self, status: u16, completed: bool, state: &AppState) {
        if self.defer.load(Ordering::Relaxed) {
            let mut d = self.data();
            if d.upstream_started.is_some() && d.upstream_done.is_none() {
                d.pending_finish = Some((status, completed, state.clone()));
                return;
            }
        }
        self.finish(status, completed, &state.obs);
    }

    /// Answered from the cache: the model becomes the metric label (as for an upstream call) and the
    /// provider label is `cache`; no upstream attempt, no usage, no cost.
    pub fn served_from_cache(&self, model: &Arc<str>, outcome: &'static str) {
        let mut d = self.data();
        d.model = Some(Label(Arc::clone(model)));
        d.provider = Some(Label::fixed("cache"));
        d.cache = Some(outcome);
    }

    /// A whole (non-streaming) response.
    pub fn response(&self, response: &impl ObservedResponse) {
        let mut d = self.data();
        let now = Instant::now();
        d.upstream_first_byte.get_or_insert(now);
        d.upstream_done.get_or_insert(now);
        d.response_id = Some(response.id().to_owned());
        d.response_model = Some(response.model().to_owned());
        d.finish_reasons = response.finish_reasons();
        d.usage = response.usage();
        if self.captures_content() {
            d.response_body = serde_json::to_string(response).ok();
        }
    }

    /// One stream chunk as it passes.
    pub fn chunk(&self, chunk: &impl ObservedChunk) {
        let mut d = self.data();
        let now = Instant::now();
        d.upstream_first_byte.get_or_insert(now);
        if d.response_id.is_none() && !chunk.id().is_empty() {
            d.response_id = Some(chunk.id().to_owned());
            d.response_model = Some(chunk.model().to_owned());
        }
        let capture = self.captures_content();
        chunk.each_text(&mut |text| {
            if !text.is_empty() {
                d.first_token.get_or_insert(now);
                if d.usage.is_none() {
                    d.streamed_text.push_str(text);
                }
                if capture {
                    d.response_body.get_or_insert_default().push_str(text);
                }
            }
        });
        chunk.each_finish_reason(&mut |reason| d.finish_reasons.push(reason.to_owned()));
        if let Some(usage) = chunk.usage() {
            d.usage = Some(usage);
            d.streamed_text = String::new();
            d.upstream_done.get_or_insert(now);
        }
    }

    /// Response headers are about to be sent.
    pub fn headers_sent(&self) {
        self.data().headers_sent.get_or_insert(Instant::now());
    }

    /// The error that ended the request (HTTP error or stream error event).
    pub fn fail(&self, error: &GatewayError) {
        let mut d = self.data();
        if d.error.is_none() {
            d.error = Some(error.clone());
        }
    }

    /// Cost and overhead of a non-streaming response, for its headers; computed once and reused at finish.
    pub fn cost_and_overhead(&self) -> (Option<Decimal>, Option<Duration>) {
        let mut d = self.data();
        let now = Instant::now();
        d.headers_sent.get_or_insert(now);
        let cost = price_of(&d);
        d.cost = cost;
        (cost, overhead(self.received, &d))
    }

    /// Finishes the call once: metrics, span attributes, access log, request log. `completed` is false
    /// when the body was dropped before its end (client disconnect).
    pub fn finish(&self, status: u16, completed: bool, obs: &Observability) -> Option<Finished> {
        if self.finished.swap(true, Ordering::AcqRel) {
            return None;
        }
        let now = Instant::now();
        let mut d = self.data();
        let mut usage_estimated = false;
        if d.usage.is_none() && d.stream {
            let model = d.upstream_model.as_deref().unwrap_or_default().to_owned();
            let input = d.prompt.as_deref().map_or(0, |m| count_prompt(&model, m));
            let output = tokens::count_text(&model, &d.streamed_text);
            if input + output > 0 {
                d.usage = Some(Usage::new(input, output));
                usage_estimated = true;
            }
        }
        if d.cost.is_none() {
            d.cost = price_of(&d);
        }
        let finished = Finished {
            request_id: Arc::clone(&self.request_id),
            status,
            latency: now - self.received,
            ttft: d.first_token.map(|t| t - self.received),
            upstream: d
                .upstream_started
                .map(|s| d.upstream_done.unwrap_or(now) - s),
            overhead: overhead(self.received, &d),
            usage: d.usage,
            usage_estimated,
            cost: d.cost,
            cut: !completed || d.error.is_some() && d.stream,
        };
        if let Some(admission) = d.admission.take() {
            if let Some((tokens, cost)) = d.charged {
                admission.settle(Some(tokens), cost);
            } else {
                let tokens = finished
                    .usage
                    .map(|u| u.prompt_tokens.saturating_add(u.completion_tokens));
                admission.settle(tokens, finished.cost);
            }
        }
        self.record_metrics(&d, &finished, obs);
        let trace_id = d.spans.as_ref().and_then(CallSpans::trace_id);
        // The access line, the spans' end and the request-log record are written by the telemetry
        // thread; what they need is handed over as is (shared strings, ids and instants), and
        // formatted there.
        let spans = self.span_ending(&mut d, &finished, obs);
        let access = self.access_record(&d, &finished, trace_id);
        let entry = if obs.request_log.is_some() {
            let mut summary = self.summary(&d);
            summary.trace_id = trace_id;
            if obs.capture_bodies {
                summary.request_body = d.request_body.take();
                summary.response_body = d.response_body.take();
            }
            let entry = obs.request_log_entry(self, summary, &finished);
            match entry {
                // Bodies are cut to the request log's limit when queued: done here, so that whole
                // bodies never wait in the telemetry thread's queue.
                Some(entry) if obs.capture_bodies => {
                    entry.write();
                    None
                }
                entry => entry,
            }
        } else {
            None
        };
        drop(d);
        if spans.is_none() && access.is_none() && entry.is_none() {
            obs.finished_calls.send_modify(|n| *n += 1);
        } else {
            let finished_calls = Arc::clone(&obs.finished_calls);
            // Counted once written, so that waiting for finished calls includes their logs, spans and
            // request-log records.
            super::background::run(move || {
                if let Some(spans) = spans {
                    spans.end();
                }
                if let Some(access) = access {
                    access.emit();
                }
                if let Some(entry) = entry {
                    entry.write();
                }
                finished_calls.send_modify(|n| *n += 1);
            });
        }
        Some(finished)
    }

    fn record_metrics(&self, d: &CallData, f: &Finished, obs: &Observability) {
        let m = &obs.metrics;
        let none = || Label::fixed("none");
        let model = d.model.clone().unwrap_or_else(none);
        let provider = d.provider.clone().unwrap_or_else(none);
        m.requests
            .get_or_create(&RequestLabels {
                route: self.route.clone(),
                model: model.clone(),
                provider: provider.clone(),
                status: f.status,
            })
            .inc();
        m.request_duration
            .get_or_create(&RouteLabels {
                route: self.route.clone(),
                model: model.clone(),
                provider: provider.clone(),
            })
            .observe(f.latency.as_secs_f64());
        let by_model = ModelLabels {
            model: model.clone(),
            provider: provider.clone(),
        };
        if let Some(ttft) = f.ttft {
            m.time_to_first_token
                .get_or_create(&by_model)
                .observe(ttft.as_secs_f64());
        }
        if let Some(upstream) = f.upstream {
            m.upstream_duration
                .get_or_create(&by_model)
                .observe(upstream.as_secs_f64());
        }
        if let Some(overhead) = f.overhead {
            m.gateway_overhead
                .get_or_create(&OverheadLabels {
                    route: self.route.clone(),
                })
                .observe(overhead.as_secs_f64());
        }
        if let Some(usage) = f.usage {
            let cached = usage.prompt_tokens_details.map_or(0, |p| p.cached_tokens);
            for (direction, n) in [
                ("input", usage.prompt_tokens),
                ("output", usage.completion_tokens),
                ("cached_input", cached),
            ] {
                if n > 0 {
                    m.tokens
                        .get_or_create(&TokenLabels {
                            model: model.clone(),
                            direction,
                        })
                        .inc_by(n);
                }
            }
        }
        if let Some(cost) = f
            .cost
            .and_then(|c| rust_decimal::prelude::ToPrimitive::to_f64(&c))
        {
            m.cost_usd.get_or_create(&CostLabels { model }).inc_by(cost);
        }
        if let Some(e) = &d.error
            && matches!(
                e,
                GatewayError::UpstreamFailed { .. }
                    | GatewayError::UpstreamTimeout { .. }
                    | GatewayError::UpstreamRejected { .. }
            )
        {
            m.upstream_errors
                .get_or_create(&UpstreamErrorLabels {
                    provider,
                    kind: e.kind(),
                })
                .inc();
        }
    }

    /// What ending the OTel spans needs, taken from the call (`None` without spans).
    fn span_ending(
        &self,
        d: &mut CallData,
        f: &Finished,
        obs: &Observability,
    ) -> Option<SpanEnding> {
        let spans = d.spans.take()?;
        // Redacted and capped here, so that what waits in the telemetry thread's queue is bounded.
        let max = obs.otel.max_content_bytes;
        let content = obs.otel.capture_content.then(|| {
            (
                d.request_body
                    .as_deref()
                    .map(|b| super::otel::capture(b, max)),
                d.response_body
                    .as_deref()
                    .map(|b| super::otel::capture(b, max)),
            )
        });
        Some(SpanEnding {
            spans,
            method: self.method.clone(),
            route: self.route.clone(),
            request_id: Arc::clone(&self.request_id),
            upstream_request: UpstreamRequest::of(d),
            status: f.status,
            error: d.error.as_ref().map(GatewayError::kind),
            response_model: d.response_model.take(),
            response_id: d.response_id.take(),
            finish_reasons: std::mem::take(&mut d.finish_reasons),
            usage: f.usage,
            ttft: f.ttft,
            cost: f.cost,
            content,
            upstream_end: d
                .upstream_done
                .map(|t| self.received_at + (t - self.received)),
        })
    }

    /// The access record, when the log filter lets it through: the access line's values.
    fn access_record(
        &self,
        d: &CallData,
        f: &Finished,
        trace_id: Option<TraceId>,
    ) -> Option<AccessRecord> {
        let (warn, message) = match &d.error {
            Some(e) if e.status().is_server_error() => (true, "request failed"),
            Some(_) => (false, "request rejected"),
            None => (false, "request served"),
        };
        let enabled = if warn {
            tracing::enabled!(target: super::ACCESS_TARGET, tracing::Level::WARN)
        } else {
            tracing::enabled!(target: super::ACCESS_TARGET, tracing::Level::INFO)
        };
        enabled.then(|| AccessRecord {
            warn,
            message,
            route: self.route.clone(),
            method: self.method.clone(),
            trace_id,
            key_id: d.key_id.clone(),
            cache: d.cache,
            model: d.requested_model.clone(),
            provider: d.provider.clone(),
            stream: d.stream,
            finished: f.clone(),
            error: d.error.clone(),
        })
    }

    /// Arrival time (unix ms) and route, for the request log.
    pub fn received_unix_ms(&self) -> i64 {
        self.received_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    /// The matched route.
    pub fn route(&self) -> &str {
        &self.route.0
    }

    /// The matched route as its metric label (a shared string).
    pub fn route_label(&self) -> Label {
        self.route.clone()
    }

    /// The HTTP method.
    pub fn method(&self) -> &http::Method {
        &self.method
    }

    fn summary(&self, d: &CallData) -> CallSummary {
        let since = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(self.received));
        CallSummary {
            cache: d.cache,
            key_id: d.key_id.clone(),
            model: d.requested_model.clone(),
            provider: d.provider.clone(),
            stream: d.stream,
            error: d.error.clone(),
            marks: [
                (since(d.upstream_started), "upstream_attempt"),
                (since(d.upstream_first_byte), "upstream_first_byte"),
                (since(d.headers_sent), "headers_sent"),
                (since(d.first_token), "first_token"),
                (since(d.upstream_done), "upstream_done"),
            ],
            trace_id: None,
            request_body: None,
            response_body: None,
        }
    }
}

/// What ends a call's OTel spans, moved to the telemetry thread.
struct SpanEnding {
    spans: CallSpans,
    method: http::Method,
    route: Label,
    request_id: Arc<str>,
    /// What the upstream attempt asked for (`None` without an attempt).
    upstream_request: Option<UpstreamRequest>,
    status: u16,
    error: Option<&'static str>,
    response_model: Option<String>,
    response_id: Option<String>,
    finish_reasons: Vec<String>,
    usage: Option<Usage>,
    ttft: Option<Duration>,
    cost: Option<Decimal>,
    /// Captured (redacted, capped) request and response content, when `capture_content` is on.
    content: Option<(Option<String>, Option<String>)>,
    upstream_end: Option<SystemTime>,
}

impl SpanEnding {
    /// GenAI attributes go on the client span of the upstream call (where the convention puts them);
    /// the server span gets the status and the error, which exist for every request.
    fn end(self) {
        let call = vec![
            KeyValue::new("http.request.method", self.method.to_string()),
            KeyValue::new("http.route", StringValue::from(self.route.0)),
            KeyValue::new("sluice.request_id", StringValue::from(self.request_id)),
            KeyValue::new("http.response.status_code", i64::from(self.status)),
        ];
        let mut upstream = self
            .upstream_request
            .map_or_else(Vec::new, UpstreamRequest::attributes);
        upstream.reserve(10);
        if let Some(model) = self.response_model {
            upstream.push(KeyValue::new(attr::RESPONSE_MODEL, model));
        }
        if let Some(id) = self.response_id {
            upstream.push(KeyValue::new(attr::RESPONSE_ID, id));
        }
        if !self.finish_reasons.is_empty() {
            upstream.push(super::otel::finish_reasons_attribute(&self.finish_reasons));
        }
        if let Some(u) = self.usage {
            upstream.extend(super::otel::usage_attributes(
                u.prompt_tokens,
                u.completion_tokens,
            ));
        }
        if let Some(t) = self.ttft {
            upstream.push(KeyValue::new(
                attr::TIME_TO_FIRST_TOKEN_MS,
                t.as_secs_f64() * 1000.0,
            ));
        }
        if let Some(c) = self
            .cost
            .and_then(|c| rust_decimal::prelude::ToPrimitive::to_f64(&c))
        {
            upstream.push(KeyValue::new(attr::COST_USD, c));
        }
        if let Some((request, response)) = self.content {
            if let Some(captured) = request {
                upstream.push(KeyValue::new(attr::INPUT_MESSAGES, captured));
            }
            if let Some(captured) = response {
                upstream.push(KeyValue::new(attr::OUTPUT_MESSAGES, captured));
            }
        }
        self.spans.end(
            call,
            upstream,
            self.error,
            self.status >= 500,
            self.upstream_end,
        );
    }
}

/// What the request log needs from the call data, taken under the lock without formatting anything
/// (shared strings, ids, durations): the record is built from it on the telemetry thread.
pub struct CallSummary {
    /// What the response cache did.
    pub cache: Option<&'static str>,
    /// The caller's key id.
    pub key_id: Option<Arc<str>>,
    /// The model as the client named it.
    pub model: Option<Arc<str>>,
    /// Provider name.
    pub provider: Option<Label>,
    /// Streaming request.
    pub stream: bool,
    /// The error that ended the request.
    pub error: Option<GatewayError>,
    /// The timeline's steps after `received`: time since arrival, when the step happened.
    pub marks: [(Option<Duration>, &'static str); 5],
    /// The trace id, when the call was sampled.
    pub trace_id: Option<TraceId>,
    /// Captured request body (only when body capture is on).
    pub request_body: Option<String>,
    /// Captured response body or streamed text (only when body capture is on).
    pub response_body: Option<String>,
}

/// Prompts longer than this are estimated at four bytes per token instead of tokenized: this runs on
/// the request's thread when a stream ends without usage, and a client must not be able to make it
/// tokenize megabytes by hanging up.
const TOKENIZE_LIMIT_BYTES: usize = 256 * 1024;

/// Input tokens of `messages`: tokenized up to 256 KiB of text, estimated at four bytes per token
/// beyond (a client must not be able to make the gateway tokenize megabytes).
pub fn count_prompt(model: &str, messages: &[ChatMessage]) -> u64 {
    let bytes: usize = messages
        .iter()
        .map(|m| {
            m.content.as_ref().map_or(0, |c| match c {
                crate::protocol::openai::MessageContent::Text(t) => t.len(),
                crate::protocol::openai::MessageContent::Parts(p) => {
                    p.iter().map(|v| v.to_string().len()).sum()
                }
            })
        })
        .sum();
    if bytes > TOKENIZE_LIMIT_BYTES {
        (bytes / 4) as u64
    } else {
        tokens::count_messages(model, messages)
    }
}

/// What an upstream attempt asked for: its span's GenAI request attributes, made into attributes where
/// the span ends.
struct UpstreamRequest {
    operation: Operation,
    provider: Label,
    model: Arc<str>,
    params: RequestParams,
}

impl UpstreamRequest {
    /// The call's current attempt (none before one started).
    fn of(d: &CallData) -> Option<Self> {
        Some(Self {
            operation: d.operation.unwrap_or(Operation::Chat),
            provider: d.provider.clone()?,
            model: Arc::clone(d.upstream_model.as_ref()?),
            params: d.params,
        })
    }

    fn attributes(self) -> Vec<KeyValue> {
        let params = self.params;
        let optional = [
            params
                .temperature
                .map(|t| KeyValue::new(attr::REQUEST_TEMPERATURE, t)),
            params.top_p.map(|p| KeyValue::new(attr::REQUEST_TOP_P, p)),
            params
                .max_tokens
                .map(|m| KeyValue::new(attr::REQUEST_MAX_TOKENS, i64::from(m))),
        ];
        [
            KeyValue::new(attr::OPERATION_NAME, self.operation.as_str()),
            KeyValue::new(attr::PROVIDER_NAME, StringValue::from(self.provider.0)),
            KeyValue::new(attr::REQUEST_MODEL, StringValue::from(self.model)),
        ]
        .into_iter()
        .chain(optional.into_iter().flatten())
        .collect()
    }
}

fn price_of(d: &CallData) -> Option<Decimal> {
    let (price, usage) = (d.price.as_ref()?, d.usage.as_ref()?);
    Some(crate::usage::cost(price, &TokenUsage::from(usage)))
}

fn overhead(received: Instant, d: &CallData) -> Option<Duration> {
    let headers = d.headers_sent?;
    let upstream_wait = match (d.upstream_started, d.upstream_first_byte) {
        (Some(s), Some(f)) => f.saturating_duration_since(s),
        _ => Duration::ZERO,
    };
    Some(
        headers
            .saturating_duration_since(received)
            .saturating_sub(upstream_wait),
    )
}

/// What the call needs to see of a stream chunk.
pub trait ObservedChunk {
    /// Response id.
    fn id(&self) -> &str;
    /// Response model.
    fn model(&self) -> &str;
    /// Calls `f` with each piece of generated text (content, tool call arguments).
    fn each_text(&self, f: &mut dyn FnMut(&str));
    /// Calls `f` with each finish reason.
    fn each_finish_reason(&self, f: &mut dyn FnMut(&str));
    /// Usage, on the final chunk.
    fn usage(&self) -> Option<Usage>;
}

impl ObservedChunk for ChatChunk {
    fn id(&self) -> &str {
        &self.id
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn each_text(&self, f: &mut dyn FnMut(&str)) {
        for c in &self.choices {
            if let Some(text) = &c.delta.content {
                f(text);
            }
            for call in c.delta.tool_calls.iter().flatten() {
                if let Some(function) = &call.function {
                    f(function.name.as_deref().unwrap_or_default());
                    f(function.arguments.as_deref().unwrap_or_default());
                }
            }
        }
    }

    fn each_finish_reason(&self, f: &mut dyn FnMut(&str)) {
        self.choices
            .iter()
            .filter_map(|c| c.finish_reason.as_deref())
            .for_each(f);
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

impl ObservedChunk for Completion {
    fn id(&self) -> &str {
        &self.id
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn each_text(&self, f: &mut dyn FnMut(&str)) {
        self.choices.iter().for_each(|c| f(&c.text));
    }

    fn each_finish_reason(&self, f: &mut dyn FnMut(&str)) {
        self.choices
            .iter()
            .filter_map(|c| c.finish_reason.as_deref())
            .for_each(f);
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

/// What the call needs to see of a whole (non-streaming) response.
pub trait ObservedResponse: serde::Serialize {
    /// Response id.
    fn id(&self) -> &str;
    /// Response model.
    fn model(&self) -> &str;
    /// Finish reasons of the choices.
    fn finish_reasons(&self) -> Vec<String>;
    /// Usage.
    fn usage(&self) -> Option<Usage>;
}

/// Chat completions and text completions have the same id, model, choices-with-finish-reason and
/// usage fields.
macro_rules! observed_response_with_choices {
    ($($t:ty),*) => {$(
        impl ObservedResponse for $t {
            fn id(&self) -> &str {
                &self.id
            }

            fn model(&self) -> &str {
                &self.model
            }

            fn finish_reasons(&self) -> Vec<String> {
                self.choices.iter().filter_map(|c| c.finish_reason.clone()).collect()
            }

            fn usage(&self) -> Option<Usage> {
                self.usage
            }
        }
    )*};
}

observed_response_with_choices!(ChatCompletion, Completion);

impl ObservedResponse for EmbeddingsResponse {
    fn id(&self) -> &'static str {
        ""
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn finish_reasons(&self) -> Vec<String> {
        Vec::new()
    }

    fn usage(&self) -> Option<Usage> {
        self.usage.map(|u| Usage::new(u.prompt_tokens, 0))
    }
}
