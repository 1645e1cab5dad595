//! Prometheus metrics: one registry per gateway (no globals, so tests and embedders get their own), the
//! metric families ops teams scrape, and the text rendering behind `GET /metrics`.
//!
//! Cardinality is bounded by construction: `model` and `provider` labels only ever take configured names
//! (unknown models are labelled `unknown`), `route` only matched route templates, `status` only HTTP
//! status codes. Histogram buckets are fixed here, chosen for LLM traffic: sub-millisecond gateway
//! overhead, seconds to first token, minutes of streaming.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// A label value that is cheap to clone (model and provider names are shared `Arc<str>`s).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Label(pub Arc<str>);

impl Label {
    /// A label from a static string.
    pub fn fixed(s: &'static str) -> Self {
        Self(Arc::from(s))
    }
}

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(&self.0)
    }
}

/// `route`, `model`, `provider`, `status`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Matched route template.
    pub route: Label,
    /// Public model name, or `unknown`/`none`.
    pub model: Label,
    /// Provider name, or `none`.
    pub provider: Label,
    /// HTTP status code.
    pub status: u16,
}

/// `route`, `model`, `provider` (latency histograms carry no status, to keep series few).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Matched route template.
    pub route: Label,
    /// Public model name.
    pub model: Label,
    /// Provider name.
    pub provider: Label,
}

/// `model`, `provider`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// Public model name.
    pub model: Label,
    /// Provider name.
    pub provider: Label,
}

/// `model`, `direction` (`input`, `output`, `cached_input`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// Public model name.
    pub model: Label,
    /// Which tokens.
    pub direction: &'static str,
}

/// `model` only.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CostLabels {
    /// Public model name.
    pub model: Label,
}

/// `provider`, `kind` (the `GatewayError` kind).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    /// Provider name.
    pub provider: Label,
    /// Error kind.
    pub kind: &'static str,
}

/// `route` only.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OverheadLabels {
    /// Matched route template.
    pub route: Label,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric family of the gateway.
pub struct Metrics {
    registry: Registry,
    /// `sluice_requests_total`.
    pub requests: Family<RequestLabels, Counter>,
    /// `sluice_request_duration_seconds`: request start to last byte.
    pub request_duration: HistogramFamily<RouteLabels>,
    /// `sluice_time_to_first_token_seconds`: request start to the first content token sent.
    pub time_to_first_token: HistogramFamily<ModelLabels>,
    /// `sluice_upstream_duration_seconds`: the upstream call, start to last byte.
    pub upstream_duration: HistogramFamily<ModelLabels>,
    /// `sluice_gateway_overhead_seconds`: time to response headers minus the upstream's share of it.
    pub gateway_overhead: HistogramFamily<OverheadLabels>,
    /// `sluice_tokens_total`.
    pub tokens: Family<TokenLabels, Counter>,
    /// `sluice_cost_usd_total`.
    pub cost_usd: Family<CostLabels, Counter<f64, AtomicU64>>,
    /// `sluice_inflight_requests`.
    pub inflight: Gauge,
    /// `sluice_upstream_errors_total`.
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    /// `sluice_request_log_shed_total`: request-log records dropped because the writer was behind.
    pub request_log_shed: Counter,
}

/// 100 µs .. 10 min: the whole range of LLM request durations.
fn duration_histogram() -> Histogram {
    Histogram::new([
        0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        30.0, 60.0, 120.0, 300.0, 600.0,
    ])
}

/// 10 µs .. 1 s: the gateway's own cost, which should sit in the first few buckets.
fn overhead_histogram() -> Histogram {
    Histogram::new([
        0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01,
        0.025, 0.1, 1.0,
    ])
}

impl Metrics {
    /// A fresh registry with every family registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let requests = Family::default();
        registry.register(
            "requests",
            "Requests served, by route, model, provider and status",
            requests.clone(),
        );
        let request_duration: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "request_duration",
            "Request duration, from arrival to the last byte of the response",
            Unit::Seconds,
            request_duration.clone(),
        );
        let time_to_first_token: HistogramFamily<ModelLabels> =
            Family::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "time_to_first_token",
            "Time from request arrival to the first content token relayed (streams)",
            Unit::Seconds,
            time_to_first_token.clone(),
        );
        let upstream_duration: HistogramFamily<ModelLabels> =
            Family::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "upstream_duration",
            "Duration of the upstream call, from sending the request to its last byte",
            Unit::Seconds,
            upstream_duration.clone(),
        );
        let gateway_overhead: HistogramFamily<OverheadLabels> =
            Family::new_with_constructor(overhead_histogram);
        registry.register_with_unit(
            "gateway_overhead",
            "Time to response headers minus the time spent waiting for the upstream: the gateway's own cost",
            Unit::Seconds,
            gateway_overhead.clone(),
        );
        let tokens = Family::default();
        registry.register(
            "tokens",
            "Tokens by model and direction (input, output, cached_input)",
            tokens.clone(),
        );
        let cost_usd = Family::default();
        registry.register(
            "cost_usd",
            "Cost in US dollars by model, from the price table",
            cost_usd.clone(),
        );
        let inflight = Gauge::default();
        registry.register(
            "inflight_requests",
            "Requests in flight (streams count until their last byte)",
            inflight.clone(),
        );
        let upstream_errors = Family::default();
        registry.register(
            "upstream_errors",
            "Upstream failures by provider and kind",
            upstream_errors.clone(),
        );
        let request_log_shed = Counter::default();
        registry.register(
            "request_log_shed",
            "Request-log records dropped because the background writer was behind",
            request_log_shed.clone(),
        );
        Self {
            registry,
            requests,
            request_duration,
            time_to_first_token,
            upstream_duration,
            gateway_overhead,
            tokens,
            cost_usd,
            inflight,
            upstream_errors,
            request_log_shed,
        }
    }

    /// The registry, for families added by later layers (cache, rate limits).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
            let _ = writeln!(out, "# metrics encoding failed");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
