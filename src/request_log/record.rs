//! The wire and storage types: one [`RequestRecord`] per request with its [`TimelineEvent`]s, the
//! [`RequestSummary`] rows a listing returns, and the [`RequestFilter`] that selects them.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize};

/// Everything logged about one request. Built by the handler when the request ends (for a stream: when
/// the body ends or the client leaves) and handed to [`RequestLog::record`](super::RequestLog::record).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// The request id (`x-request-id`). Clients may choose it, so it is not unique: a lookup returns
    /// the newest record with that id.
    pub id: String,
    /// When the request arrived, in unix milliseconds.
    pub received_at: i64,
    /// The trace id, if the request was traced.
    pub trace_id: Option<String>,
    /// The id of the client key (never the key).
    pub key_id: Option<String>,
    /// The matched route, e.g. `/v1/chat/completions`.
    pub route: String,
    /// The HTTP method.
    pub method: String,
    /// The public model name the client asked for.
    pub model: Option<String>,
    /// The provider that served it.
    pub provider: Option<String>,
    /// The response status sent to the client.
    pub status: u16,
    /// Whether the response was streamed.
    pub stream: bool,
    /// Arrival to the end of the response (last byte, or disconnect), in milliseconds.
    #[serde(deserialize_with = "f64_or_nan")]
    pub latency_ms: f64,
    /// Arrival to the first content chunk sent, for streams.
    pub ttft_ms: Option<f64>,
    /// Time spent waiting for the upstream.
    pub upstream_ms: Option<f64>,
    /// Prompt tokens, as the provider reported them.
    pub input_tokens: Option<u64>,
    /// Completion tokens, as the provider reported them.
    pub output_tokens: Option<u64>,
    /// Cost as an exact decimal string (e.g. `"0.000150"`), never a float.
    pub cost_usd: Option<String>,
    /// Low-cardinality error kind (the metric label), if the request failed.
    pub error_kind: Option<String>,
    /// The error message; redacted before it is stored.
    pub error_message: Option<String>,
    /// Cache outcome (`"hit"`, `"miss"`, …), if the cache was consulted.
    pub cache: Option<String>,
    /// The request body; kept only with `capture_bodies`, then redacted and capped.
    pub request_body: Option<String>,
    /// The response body (for streams: the reassembled text or the raw events, as the caller chooses);
    /// kept only with `capture_bodies`, then redacted and capped.
    pub response_body: Option<String>,
    /// What happened when, in order.
    pub timeline: Vec<TimelineEvent>,
}

/// One step of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEvent {
    /// Milliseconds since `received_at`.
    #[serde(deserialize_with = "f64_or_nan")]
    pub at_ms: f64,
    /// `"received"`, `"upstream_attempt"`, `"first_token"`, `"done"`, …. Borrowed when it is one of
    /// the gateway's own step names, so building a record allocates nothing for it.
    pub name: Cow<'static, str>,
    /// Free text, e.g. the provider of an attempt or the error of a failed one.
    pub detail: Option<Cow<'static, str>>,
}

impl TimelineEvent {
    /// An event without detail.
    pub fn new(at_ms: f64, name: impl Into<Cow<'static, str>>) -> Self {
        Self {
            at_ms,
            name: name.into(),
            detail: None,
        }
    }

    /// An event with detail.
    pub fn with_detail(
        at_ms: f64,
        name: impl Into<Cow<'static, str>>,
        detail: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            at_ms,
            name: name.into(),
            detail: Some(detail.into()),
        }
    }
}

/// One row of a listing: the record without bodies, error message and timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestSummary {
    /// The request id.
    pub id: String,
    /// Arrival, unix milliseconds.
    pub received_at: i64,
    /// The trace id.
    pub trace_id: Option<String>,
    /// The client key id.
    pub key_id: Option<String>,
    /// The matched route.
    pub route: String,
    /// The HTTP method.
    pub method: String,
    /// The public model name.
    pub model: Option<String>,
    /// The provider.
    pub provider: Option<String>,
    /// The response status.
    pub status: u16,
    /// Whether it streamed.
    pub stream: bool,
    /// Total latency, milliseconds.
    #[serde(deserialize_with = "f64_or_nan")]
    pub latency_ms: f64,
    /// Time to first token, milliseconds.
    pub ttft_ms: Option<f64>,
    /// Upstream time, milliseconds.
    pub upstream_ms: Option<f64>,
    /// Prompt tokens.
    pub input_tokens: Option<u64>,
    /// Completion tokens.
    pub output_tokens: Option<u64>,
    /// Exact decimal cost.
    pub cost_usd: Option<String>,
    /// Error kind, if it failed.
    pub error_kind: Option<String>,
    /// Cache outcome.
    pub cache: Option<String>,
}

/// Which records a listing returns, newest first. Deserializes from a query string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestFilter {
    /// Only this public model name.
    pub model: Option<String>,
    /// Only this status.
    pub status: Option<u16>,
    /// Only records received at or after this unix millisecond.
    pub since_ms: Option<i64>,
    /// At most this many rows (default 50, capped at 1000).
    pub limit: u32,
}

impl RequestFilter {
    /// The default page size.
    pub const DEFAULT_LIMIT: u32 = 50;
    /// The largest page a listing returns, whatever `limit` asks.
    pub const MAX_LIMIT: u32 = 1000;

    /// `limit`, capped at [`Self::MAX_LIMIT`].
    pub fn effective_limit(&self) -> u32 {
        self.limit.min(Self::MAX_LIMIT)
    }
}

impl Default for RequestFilter {
    fn default() -> Self {
        Self {
            model: None,
            status: None,
            since_ms: None,
            limit: Self::DEFAULT_LIMIT,
        }
    }
}

/// The current time in unix milliseconds (0 if the clock is before 1970).
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// JSON has no NaN: serde_json writes a non-finite float as `null`, so read `null` back as NaN.
fn f64_or_nan<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}
