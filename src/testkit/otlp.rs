//! In-test OTLP collector: receives trace exports over OTLP/HTTP (protobuf) and OTLP/gRPC on one port
//! and keeps the decoded spans for assertions.
//!
//! Endpoints, on `127.0.0.1:PORT` (HTTP/1.1 and HTTP/2 cleartext on the same listener):
//! - `POST /v1/traces`: OTLP/HTTP, `content-type: application/x-protobuf`, body an
//!   `ExportTraceServiceRequest`; answered 200 with an empty `ExportTraceServiceResponse`.
//! - `POST /opentelemetry.proto.collector.trace.v1.TraceService/Export`: OTLP/gRPC (h2c, uncompressed),
//!   the same messages in gRPC framing, `grpc-status: 0` in the trailers.
//!
//! So [`OtlpReceiver::endpoint`] works as the base URL for either protocol. Waiting is notification
//! based ([`OtlpReceiver::wait_for_spans`]), never a sleep.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body::Frame;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How many spans are kept; older ones are forgotten first.
pub const MAX_RECEIVED_SPANS: usize = 10_000;

/// The gRPC method path of `TraceService/Export`.
const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The largest export accepted (the SDK's batches are far smaller).
const MAX_EXPORT_BYTES: usize = 16 * 1024 * 1024;

/// A running OTLP receiver. Cheap to clone: clones share the server and the stored spans.
///
/// The server task runs detached for the life of the tokio runtime it was started on.
#[derive(Clone, Debug)]
pub struct OtlpReceiver {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

/// One span as the receiver decoded it.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedSpan {
    /// Span name.
    pub name: String,
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// 16 lowercase hex digits, or empty for a root span.
    pub parent_span_id: String,
    /// OTLP `SpanKind`: 0 unspecified, 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    /// Status message (set with an error status).
    pub status_message: String,
    /// Span attributes by key.
    pub attributes: BTreeMap<String, AttrValue>,
    /// Attributes of the resource that exported the span (`service.name`, ...).
    pub resource: BTreeMap<String, AttrValue>,
    /// Name of the instrumentation scope (the tracer).
    pub scope: String,
}

impl ReceivedSpan {
    /// The attribute `key`, if present.
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes.get(key)
    }
}

/// An OTLP attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    /// `string_value`.
    String(String),
    /// `bool_value`.
    Bool(bool),
    /// `int_value`.
    Int(i64),
    /// `double_value`.
    Double(f64),
    /// `array_value`.
    Array(Vec<AttrValue>),
    /// `kvlist_value`.
    Map(BTreeMap<String, AttrValue>),
    /// `bytes_value`.
    Bytes(Vec<u8>),
    /// No value, or a kind this receiver does not decode (string-table references).
    Empty,
}

impl AttrValue {
    /// The string, if this is a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is an integer value.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Self::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// The number, if this is a double value.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Double(n) => Some(*n),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Shared {
    /// False for a counting receiver: exports are decoded and counted, their spans not kept.
    keep: bool,
    spans: Mutex<VecDeque<ReceivedSpan>>,
    /// Total spans received so far (not capped); every export bumps it, waking waiters.
    received: watch::Sender<usize>,
}

impl Shared {
    fn store(&self, request: ExportTraceServiceRequest) {
        if !self.keep {
            let count = request
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum::<usize>();
            self.received.send_modify(|n| *n += count);
            return;
        }
        let spans = decode_spans(request);
        let count = spans.len();
        {
            let mut stored = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
            for span in spans {
                while stored.len() >= MAX_RECEIVED_SPANS {
                    stored.pop_front();
                }
                stored.push_back(span);
            }
        }
        self.received.send_modify(|n| *n += count);
    }
}

impl OtlpReceiver {
    /// Binds `127.0.0.1:0` and serves in the background.
    ///
    /// # Errors
    /// When the listener cannot be bound.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(true).await
    }

    /// A receiver that decodes each export and counts its spans but keeps none ([`Self::spans`] stays
    /// empty, [`Self::received`] counts): for benchmarks, where turning every span into strings and
    /// maps would load the load generator's core with work a real collector does elsewhere.
    ///
    /// # Errors
    /// When the listener cannot be bound.
    pub async fn start_counting() -> std::io::Result<Self> {
        Self::start_with(false).await
    }

    async fn start_with(keep: bool) -> std::io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            keep,
            spans: Mutex::new(VecDeque::new()),
            received: watch::Sender::new(0),
        });
        let app = Router::new()
            .route("/v1/traces", post(export_http))
            .route(GRPC_EXPORT_PATH, post(export_grpc))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_EXPORT_BYTES))
            .with_state(Arc::clone(&shared));
        let server = async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(%err, "OTLP receiver stopped");
            }
        };
        #[expect(
            clippy::disallowed_methods,
            reason = "the test receiver runs detached for the life of the test"
        )]
        tokio::spawn(server);
        Ok(Self { shared, addr })
    }

    /// The address the receiver listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The collector base URL, `http://127.0.0.1:PORT`, for either protocol.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far (the last [`MAX_RECEIVED_SPANS`]), in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared
            .spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// How many spans arrived so far, kept or not.
    pub fn received(&self) -> usize {
        *self.shared.received.borrow()
    }

    /// Forgets the spans received so far.
    pub fn clear(&self) {
        self.shared
            .spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Waits until `pred` holds for the received spans or `timeout` passes, then returns the spans
    /// (check them: on timeout `pred` does not hold). Woken by each export, not by polling.
    pub async fn wait_for_spans(
        &self,
        pred: impl Fn(&[ReceivedSpan]) -> bool,
        timeout: Duration,
    ) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.shared.received.subscribe();
        loop {
            // Mark the current version seen before looking, so an export in between still wakes us.
            changes.borrow_and_update();
            let spans = self.spans();
            if pred(&spans) {
                return spans;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return self.spans(),
            }
        }
    }
}

async fn export_http(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let is_protobuf = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-protobuf"));
    if !is_protobuf {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "only application/x-protobuf is supported",
        )
            .into_response();
    }
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            shared.store(request);
            (
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                ExportTraceServiceResponse::default().encode_to_vec(),
            )
                .into_response()
        }
        Err(err) => (StatusCode::BAD_REQUEST, format!("invalid protobuf: {err}")).into_response(),
    }
}

async fn export_grpc(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let decoded = grpc_unframe(&body)
        .and_then(|message| ExportTraceServiceRequest::decode(message).map_err(|e| e.to_string()));
    let (reply, status, message) = match decoded {
        Ok(request) => {
            shared.store(request);
            let reply = ExportTraceServiceResponse::default().encode_to_vec();
            (Some(grpc_frame(&reply)), "0", String::new())
        }
        // 3 = INVALID_ARGUMENT
        Err(err) => (None, "3", err),
    };
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static(status));
    if let Ok(value) = HeaderValue::from_str(&message)
        && !message.is_empty()
    {
        trailers.insert("grpc-message", value);
    }
    (
        [(header::CONTENT_TYPE, "application/grpc")],
        Body::new(GrpcBody {
            data: reply,
            trailers: Some(trailers),
        }),
    )
        .into_response()
}

/// The message of a unary gRPC request: one uncompressed length-prefixed frame.
fn grpc_unframe(body: &Bytes) -> Result<Bytes, String> {
    let Some((&[compressed, a, b, c, d], rest)) = body.split_first_chunk::<5>() else {
        return Err("short gRPC frame".to_owned());
    };
    if compressed != 0 {
        return Err("compressed gRPC messages are not supported".to_owned());
    }
    let len = usize::try_from(u32::from_be_bytes([a, b, c, d])).map_err(|e| e.to_string())?;
    if len != rest.len() {
        return Err(format!(
            "gRPC frame says {len} bytes, body has {}",
            rest.len()
        ));
    }
    Ok(body.slice(5..))
}

fn grpc_frame(message: &[u8]) -> Bytes {
    let len = u32::try_from(message.len()).unwrap_or(u32::MAX);
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    Bytes::from(framed)
}

/// A gRPC response body: the message, then the trailers carrying `grpc-status`.
struct GrpcBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

fn decode_spans(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| attributes(r.attributes))
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            let scope = scope_spans.scope.map(|s| s.name).unwrap_or_default();
            for span in scope_spans.spans {
                let status = span.status.unwrap_or_default();
                out.push(ReceivedSpan {
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    kind: span.kind,
                    status_code: status.code,
                    status_message: status.message,
                    attributes: attributes(span.attributes),
                    resource: resource.clone(),
                    scope: scope.clone(),
                });
            }
        }
    }
    out
}

fn attributes(pairs: Vec<KeyValue>) -> BTreeMap<String, AttrValue> {
    pairs
        .into_iter()
        .map(|kv| (kv.key, any_value(kv.value)))
        .collect()
}

fn any_value(value: Option<AnyValue>) -> AttrValue {
    match value.and_then(|v| v.value) {
        Some(any_value::Value::StringValue(s)) => AttrValue::String(s),
        Some(any_value::Value::BoolValue(b)) => AttrValue::Bool(b),
        Some(any_value::Value::IntValue(n)) => AttrValue::Int(n),
        Some(any_value::Value::DoubleValue(n)) => AttrValue::Double(n),
        Some(any_value::Value::ArrayValue(a)) => {
            AttrValue::Array(a.values.into_iter().map(|v| any_value(Some(v))).collect())
        }
        Some(any_value::Value::KvlistValue(kv)) => AttrValue::Map(attributes(kv.values)),
        Some(any_value::Value::BytesValue(b)) => AttrValue::Bytes(b),
        Some(any_value::Value::StringValueStrindex(_)) | None => AttrValue::Empty,
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(value) }),
            ..KeyValue::default()
        }
    }

    fn request(names: &[&str]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv(
                        "service.name",
                        any_value::Value::StringValue("svc".into()),
                    )],
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: names
                        .iter()
                        .map(|name| Span {
                            name: (*name).to_owned(),
                            trace_id: vec![0xab; 16],
                            span_id: vec![0x01; 8],
                            kind: 3,
                            attributes: vec![
                                kv("n", any_value::Value::IntValue(5)),
                                kv("b", any_value::Value::BoolValue(true)),
                            ],
                            ..Span::default()
                        })
                        .collect(),
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        }
    }

    async fn post(receiver: &OtlpReceiver, content_type: &str, body: Vec<u8>) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}/v1/traces", receiver.endpoint()))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_counting_receiver_counts_spans_and_keeps_none() {
        let receiver = OtlpReceiver::start_counting().await.unwrap();
        for names in [&["a", "b"][..], &["c"][..]] {
            let response = post(
                &receiver,
                "application/x-protobuf",
                request(names).encode_to_vec(),
            )
            .await;
            assert_eq!(response.status(), 200);
        }
        let garbage = post(&receiver, "application/x-protobuf", vec![0xff; 8]).await;
        assert_eq!(garbage.status(), 400, "still decodes what it counts");
        assert_eq!(receiver.received(), 3);
        assert!(receiver.spans().is_empty());
    }

    #[tokio::test]
    async fn decodes_an_http_export() {
        let receiver = OtlpReceiver::start().await.unwrap();
        let response = post(
            &receiver,
            "application/x-protobuf",
            request(&["a", "b"]).encode_to_vec(),
        )
        .await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/x-protobuf");
        let body = response.bytes().await.unwrap();
        ExportTraceServiceResponse::decode(body).unwrap();

        let spans = receiver
            .wait_for_spans(|s| s.len() == 2, Duration::from_secs(5))
            .await;
        assert_eq!(spans.len(), 2);
        let a = &spans[0];
        assert_eq!(a.name, "a");
        assert_eq!(a.trace_id, "ab".repeat(16));
        assert_eq!(a.span_id, "0101010101010101");
        assert_eq!(a.parent_span_id, "");
        assert_eq!(a.kind, 3);
        assert_eq!(a.attr("n").and_then(AttrValue::as_i64), Some(5));
        assert_eq!(a.attr("b"), Some(&AttrValue::Bool(true)));
        assert_eq!(
            a.resource.get("service.name").and_then(AttrValue::as_str),
            Some("svc")
        );
        receiver.clear();
        assert!(receiver.spans().is_empty());
    }

    #[tokio::test]
    async fn rejects_wrong_content_type_and_garbage() {
        let receiver = OtlpReceiver::start().await.unwrap();
        let response = post(&receiver, "application/json", b"{}".to_vec()).await;
        assert_eq!(response.status(), 415);
        let response = post(&receiver, "application/x-protobuf", vec![0xff, 0xff, 0xff]).await;
        assert_eq!(response.status(), 400);
        assert!(receiver.spans().is_empty());
    }

    #[tokio::test]
    async fn wait_times_out_with_what_arrived() {
        let receiver = OtlpReceiver::start().await.unwrap();
        let spans = receiver
            .wait_for_spans(|s| !s.is_empty(), Duration::from_millis(50))
            .await;
        assert!(spans.is_empty());
    }

    #[tokio::test]
    async fn keeps_only_the_most_recent_spans() {
        let receiver = OtlpReceiver::start().await.unwrap();
        let names: Vec<String> = (0..=MAX_RECEIVED_SPANS).map(|i| i.to_string()).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        receiver.shared.store(request(&refs));
        let spans = receiver.spans();
        assert_eq!(spans.len(), MAX_RECEIVED_SPANS);
        assert_eq!(spans[0].name, "1");
    }

    #[test]
    fn grpc_framing_round_trips() {
        let framed = grpc_frame(b"hello");
        assert_eq!(&framed[..5], &[0, 0, 0, 0, 5]);
        assert_eq!(grpc_unframe(&framed).unwrap(), Bytes::from_static(b"hello"));
        assert!(grpc_unframe(&Bytes::from_static(&[0, 0])).is_err());
        assert!(grpc_unframe(&Bytes::from_static(&[1, 0, 0, 0, 0])).is_err());
        assert!(grpc_unframe(&Bytes::from_static(&[0, 0, 0, 0, 9, 1])).is_err());
    }
}
