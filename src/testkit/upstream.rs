//! Mock LLM upstream: an HTTP server speaking the `OpenAI` and Anthropic wire formats for tests and benchmarks.
//!
//! The responses are hand-written `serde_json::json!` values, deliberately independent of the
//! gateway's own protocol types, so a bug in those types cannot hide itself in the tests.
//!
//! Endpoints (every request is recorded before it is answered):
//! - `POST /v1/chat/completions`: `OpenAI` chat, JSON or SSE (`"stream": true`).
//! - `POST /v1/completions`: `OpenAI` legacy `text_completion`, JSON or SSE.
//! - `POST /v1/embeddings`: deterministic 8-dimensional embeddings.
//! - `GET /v1/models`: `OpenAI` model list.
//! - `POST /v1/messages`: Anthropic messages, JSON or SSE with `event:` lines.
//!
//! What each response looks like is steered by a [`Behavior`], swappable at run time with
//! [`MockUpstream::set_behavior`].

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How many requests are kept by the recorder; older ones are forgotten first.
pub const MAX_RECORDED_REQUESTS: usize = 10_000;

/// The largest request body accepted (axum's default of 2 MiB is too small for some tests).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// A running mock upstream. Cheap to clone: every clone shares the same server and state.
///
/// The server task runs detached for the life of the tokio runtime it was started on; dropping
/// the handle does not stop it.
#[derive(Clone, Debug)]
pub struct MockUpstream {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

/// One request as the mock saw it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Request path without the query string, e.g. `/v1/chat/completions`.
    pub path: String,
    /// Every header in arrival order; names are lowercase, values lossily decoded as UTF-8.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON, or `Value::Null` when it was empty or not JSON.
    pub body: Value,
}

impl RecordedRequest {
    /// The first value of header `name` (matched case-insensitively), if present.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the mock answers. Changed with [`MockUpstream::set_behavior`]; applies to later requests.
#[derive(Clone, Debug)]
pub struct Behavior {
    /// The output fragments: one SSE content event each, joined for non-streaming replies.
    pub reply: Vec<String>,
    /// Delay before the first event of a stream (after the headers were sent).
    pub ttft: Duration,
    /// Delay before the response headers (applies to every endpoint and to failures).
    pub header_delay: Duration,
    /// Delay between two consecutive stream events.
    pub token_delay: Duration,
    /// Answer with this status and JSON body instead of a normal reply.
    pub fail: Option<(u16, Value)>,
    /// Streaming only: after this many content events the body stream errors, so the connection
    /// is aborted mid-body (no finish event, no `[DONE]`). Values past the number of content
    /// events abort right after the last one.
    pub drop_after: Option<usize>,
    /// Reply with a tool call `(name, arguments JSON)` instead of text (chat and messages only).
    pub tool_call: Option<(String, String)>,
    /// Reported prompt / input token count.
    pub prompt_tokens: u64,
    /// `OpenAI` streams: send the usage chunk when the request asked for it with
    /// `stream_options.include_usage` (real `OpenAI` behaviour). `false` never sends it.
    pub send_usage: bool,
}

impl Default for Behavior {
    fn default() -> Self {
        Self {
            reply: ["Hello", " from", " the", " mock", " upstream", "."]
                .into_iter()
                .map(String::from)
                .collect(),
            ttft: Duration::ZERO,
            header_delay: Duration::ZERO,
            token_delay: Duration::ZERO,
            fail: None,
            drop_after: None,
            tool_call: None,
            prompt_tokens: 12,
            send_usage: true,
        }
    }
}

/// State shared by the handle(s) and the server.
#[derive(Debug)]
struct Shared {
    behavior: RwLock<Arc<Behavior>>,
    recording: AtomicBool,
    requests: Mutex<VecDeque<RecordedRequest>>,
    /// Total number of requests recorded so far (not capped).
    recorded: watch::Sender<usize>,
    /// Number for the next response id.
    next_id: AtomicU64,
    /// Streams whose body was dropped before its natural end.
    dropped: watch::Sender<usize>,
    /// Streams that sent their last event.
    completed: watch::Sender<usize>,
    aborted: AtomicUsize,
}

impl Shared {
    fn new(behavior: Behavior) -> Self {
        Self {
            behavior: RwLock::new(Arc::new(behavior)),
            recording: AtomicBool::new(true),
            requests: Mutex::new(VecDeque::new()),
            recorded: watch::Sender::new(0),
            next_id: AtomicU64::new(1),
            dropped: watch::Sender::new(0),
            completed: watch::Sender::new(0),
            aborted: AtomicUsize::new(0),
        }
    }

    fn behavior(&self) -> Arc<Behavior> {
        Arc::clone(&self.behavior.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn record(&self, request: RecordedRequest) {
        {
            let mut requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
            push_capped(&mut requests, request, MAX_RECORDED_REQUESTS);
        }
        self.recorded.send_modify(|n| *n += 1);
    }
}

/// Appends `item`, forgetting the oldest entries so that at most `cap` remain.
fn push_capped<T>(queue: &mut VecDeque<T>, item: T, cap: usize) {
    while queue.len() >= cap.max(1) {
        queue.pop_front();
    }
    queue.push_back(item);
}

impl MockUpstream {
    /// Binds `127.0.0.1:0` and serves the default [`Behavior`] in the background.
    ///
    /// # Errors
    /// When the listener cannot be bound.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        Self::start_on(listener, Behavior::default()).await
    }

    /// Serves `behavior` on an already bound `listener` in the background.
    ///
    /// # Errors
    /// When the listener's local address cannot be read.
    #[expect(
        clippy::unused_async,
        reason = "async in the public API so setup may await later without breaking callers"
    )]
    pub async fn start_on(listener: TcpListener, behavior: Behavior) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(behavior));
        let app = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(Arc::clone(&shared));
        let listener = listener.tap_io(|tcp| {
            // Small SSE frames must not wait for Nagle's algorithm.
            if let Err(err) = tcp.set_nodelay(true) {
                tracing::debug!(%err, "mock upstream: could not set TCP_NODELAY");
            }
        });
        let server = async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(%err, "mock upstream server stopped");
            }
        };
        #[expect(
            clippy::disallowed_methods,
            reason = "the mock server runs detached for the life of the test"
        )]
        tokio::spawn(server);
        Ok(Self { shared, addr })
    }

    /// The address the server listens on.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `OpenAI`-style base URL, `http://127.0.0.1:PORT/v1`.
    #[must_use]
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Replaces the behavior; requests arriving afterwards use it.
    pub fn set_behavior(&self, behavior: Behavior) {
        *self
            .shared
            .behavior
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(behavior);
    }

    /// The current behavior.
    #[must_use]
    pub fn behavior(&self) -> Behavior {
        Behavior::clone(&self.shared.behavior())
    }

    /// Turns request recording on (the default) or off. Benchmarks turn it off so memory and
    /// locking stay flat.
    pub fn set_recording(&self, on: bool) {
        self.shared.recording.store(on, Ordering::Relaxed);
    }

    /// Every request seen so far, oldest first (at most the last [`MAX_RECORDED_REQUESTS`]).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        let requests = self
            .shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        requests.iter().cloned().collect()
    }

    /// Waits until at least `n` requests have been recorded in total, or `timeout` passed, and
    /// returns the recorded requests either way (callers assert on the length). Woken by each
    /// recorded request, no polling. Requests that arrive while recording is off do not count.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<RecordedRequest> {
        let mut rx = self.shared.recorded.subscribe();
        if tokio::time::timeout(timeout, rx.wait_for(|&seen| seen >= n))
            .await
            .is_err()
        {
            tracing::debug!(n, "mock upstream: timed out waiting for requests");
        }
        self.requests()
    }

    /// Waits up to `timeout` for a streaming response body to be dropped before it finished (the
    /// client closed the connection). `true` once any stream of this server was dropped.
    pub async fn wait_stream_dropped(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.dropped.subscribe();
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|&n| n > 0)).await,
            Ok(Ok(_))
        )
    }

    /// Streams whose body was dropped before their natural end (client went away).
    #[must_use]
    pub fn streams_dropped(&self) -> usize {
        *self.shared.dropped.borrow()
    }

    /// Streams that sent their last event.
    #[must_use]
    pub fn streams_completed(&self) -> usize {
        *self.shared.completed.borrow()
    }

    /// Waits up to `timeout` until at least one stream of this server sent its last event.
    pub async fn wait_stream_completed(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.completed.subscribe();
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|&n| n > 0)).await,
            Ok(Ok(_))
        )
    }

    /// Streams aborted on purpose by [`Behavior::drop_after`] (counted neither as dropped nor
    /// as completed).
    #[must_use]
    pub fn streams_aborted(&self) -> usize {
        self.shared.aborted.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------------------------
// Request handling
// ---------------------------------------------------------------------------------------------

/// Which API a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    Models,
    Messages,
    WrongMethod,
    NotFound,
}

impl Endpoint {
    fn of(method: &Method, path: &str) -> Self {
        let path = path.trim_end_matches('/');
        let (endpoint, want) = match path {
            "/v1/chat/completions" => (Self::Chat, Method::POST),
            "/v1/completions" => (Self::Completions, Method::POST),
            "/v1/embeddings" => (Self::Embeddings, Method::POST),
            "/v1/models" => (Self::Models, Method::GET),
            "/v1/messages" => (Self::Messages, Method::POST),
            _ => return Self::NotFound,
        };
        if *method == want {
            endpoint
        } else {
            Self::WrongMethod
        }
    }

    fn is_anthropic(self) -> bool {
        self == Self::Messages
    }
}

/// The few request fields the replies depend on, taken before the body moves into the recorder.
#[derive(Debug)]
struct Call {
    endpoint: Endpoint,
    body_is_object: bool,
    model: String,
    stream: bool,
    include_usage: bool,
    inputs: Option<Vec<String>>,
}

impl Call {
    fn new(endpoint: Endpoint, body: &Value) -> Self {
        let default_model = match endpoint {
            Endpoint::Embeddings => "text-embedding-3-small",
            Endpoint::Messages => "claude-mock",
            _ => "gpt-mock",
        };
        let inputs = if endpoint == Endpoint::Embeddings {
            embedding_inputs(body.get("input"))
        } else {
            None
        };
        Self {
            endpoint,
            body_is_object: body.is_object(),
            model: body
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or(default_model)
                .to_owned(),
            stream: body.get("stream").and_then(Value::as_bool) == Some(true),
            include_usage: body
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                == Some(true),
            inputs,
        }
    }
}

/// The texts of an embeddings `input`: a string, or an array of strings (other elements, such
/// as token arrays, are used in their JSON form).
fn embedding_inputs(input: Option<&Value>) -> Option<Vec<String>> {
    match input? {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) if !items.is_empty() => Some(
            items
                .iter()
                .map(|item| match item {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
        ),
        _ => None,
    }
}

/// The single handler: records the request, then answers according to the behavior.
async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json_body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    };
    let call = Call::new(Endpoint::of(&method, uri.path()), &json_body);
    if shared.recording.load(Ordering::Relaxed) {
        shared.record(RecordedRequest {
            method: method.as_str().to_owned(),
            path: uri.path().to_owned(),
            headers: headers
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str().to_owned(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: json_body,
        });
    }

    let behavior = shared.behavior();
    if !behavior.header_delay.is_zero() {
        tokio::time::sleep(behavior.header_delay).await;
    }

    match call.endpoint {
        Endpoint::NotFound => {
            return openai_error(StatusCode::NOT_FOUND, "not_found_error", "unknown path");
        }
        Endpoint::WrongMethod => {
            return openai_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "method not allowed",
            );
        }
        _ => {}
    }
    if call.endpoint.is_anthropic() {
        if !headers.contains_key("x-api-key") {
            return anthropic_error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "x-api-key header is required",
            );
        }
        if !headers.contains_key("anthropic-version") {
            return anthropic_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "anthropic-version: header is required",
            );
        }
    }
    if let Some((status, body)) = &behavior.fail {
        let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (status, axum::Json(body.clone())).into_response();
    }
    if call.endpoint != Endpoint::Models && !call.body_is_object {
        let message = "request body must be a JSON object";
        return if call.endpoint.is_anthropic() {
            anthropic_error(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        } else {
            openai_error(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        };
    }

    let id = shared.next_id();
    let mut response = match call.endpoint {
        Endpoint::Chat => chat(&shared, &behavior, &call, id),
        Endpoint::Completions => completions(&shared, &behavior, &call, id),
        Endpoint::Embeddings => embeddings(&call),
        Endpoint::Models => models(),
        Endpoint::Messages => messages(&shared, &behavior, &call, id),
        Endpoint::WrongMethod | Endpoint::NotFound => {
            openai_error(StatusCode::NOT_FOUND, "not_found_error", "unknown path")
        }
    };
    let request_id_header = if call.endpoint.is_anthropic() {
        "request-id"
    } else {
        "x-request-id"
    };
    if let Ok(value) = HeaderValue::from_str(&format!("req_mock_{id}")) {
        response.headers_mut().insert(request_id_header, value);
    }
    response
}

fn openai_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": null}});
    (status, axum::Json(body)).into_response()
}

fn anthropic_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    (status, axum::Json(body)).into_response()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Splits `s` into at most `n` non-empty pieces of roughly equal length, on char boundaries.
fn split_pieces(s: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    if chars.is_empty() {
        return Vec::new();
    }
    let size = chars.len().div_ceil(n.max(1));
    chars
        .chunks(size)
        .map(|chunk| chunk.iter().collect())
        .collect()
}

/// The content fragments of a reply: the text fragments, or the tool-call argument pieces.
fn fragments(behavior: &Behavior) -> Vec<String> {
    match &behavior.tool_call {
        Some((_, arguments)) => split_pieces(arguments, 3),
        None => behavior.reply.clone(),
    }
}

fn openai_usage(prompt: u64, completion: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0
        }
    })
}

/// Adds `"usage": null` to a chunk, as `OpenAI` does on every chunk when usage was requested.
fn with_null_usage(mut chunk: Value, include_usage: bool) -> Value {
    if include_usage && let Some(object) = chunk.as_object_mut() {
        object.insert("usage".to_owned(), Value::Null);
    }
    chunk
}

// ---------------------------------------------------------------------------------------------
// OpenAI
// ---------------------------------------------------------------------------------------------

fn chat(shared: &Arc<Shared>, behavior: &Behavior, call: &Call, id: u64) -> Response {
    let id = format!("chatcmpl-mock-{id}");
    let created = unix_now();
    let model = call.model.as_str();
    let pieces = fragments(behavior);
    let completion_tokens = count(pieces.len());
    let finish_reason = if behavior.tool_call.is_some() {
        "tool_calls"
    } else {
        "stop"
    };

    if !call.stream {
        let message = match &behavior.tool_call {
            Some((name, arguments)) => json!({
                "role": "assistant",
                "content": null,
                "tool_calls": [{
                    "id": "call_mock_1",
                    "type": "function",
                    "function": {"name": name, "arguments": arguments}
                }],
                "refusal": null
            }),
            None => json!({"role": "assistant", "content": pieces.concat(), "refusal": null}),
        };
        let body = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": finish_reason
            }],
            "usage": openai_usage(behavior.prompt_tokens, completion_tokens),
            "service_tier": "default",
            "system_fingerprint": "fp_mock"
        });
        return axum::Json(body).into_response();
    }

    let chunk = |delta: Value, finish: Option<&str>| {
        let chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
        });
        with_null_usage(chunk, call.include_usage)
    };
    let first_delta = match &behavior.tool_call {
        Some((name, _)) => json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{
                "index": 0,
                "id": "call_mock_1",
                "type": "function",
                "function": {"name": name, "arguments": ""}
            }],
            "refusal": null
        }),
        None => json!({"role": "assistant", "content": "", "refusal": null}),
    };
    let head = vec![sse_data(&chunk(first_delta, None))];
    let content = if behavior.tool_call.is_some() {
        let delta = json!({"tool_calls": [{"index": 0, "function": {"arguments": ""}}]});
        let pointer = "/choices/0/delta/tool_calls/0/function/arguments";
        fill_each(chunk(delta, None), pointer, &pieces, sse_data)
    } else {
        let delta = json!({"content": ""});
        fill_each(
            chunk(delta, None),
            "/choices/0/delta/content",
            &pieces,
            sse_data,
        )
    };
    let mut tail = vec![sse_data(&chunk(json!({}), Some(finish_reason)))];
    if call.include_usage && behavior.send_usage {
        tail.push(sse_data(&json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": "fp_mock",
            "choices": [],
            "usage": openai_usage(behavior.prompt_tokens, completion_tokens)
        })));
    }
    tail.push(Bytes::from_static(b"data: [DONE]\n\n"));
    sse_response(shared, behavior, SsePlan::new(head, content, tail))
}

fn completions(shared: &Arc<Shared>, behavior: &Behavior, call: &Call, id: u64) -> Response {
    let id = format!("cmpl-mock-{id}");
    let created = unix_now();
    let model = call.model.as_str();
    let completion_tokens = count(behavior.reply.len());
    let usage = json!({
        "prompt_tokens": behavior.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": behavior.prompt_tokens + completion_tokens
    });

    if !call.stream {
        let body = json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{
                "text": behavior.reply.concat(),
                "index": 0,
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": usage,
            "system_fingerprint": "fp_mock"
        });
        return axum::Json(body).into_response();
    }

    let chunk = |text: &str, finish: Option<&str>| {
        let chunk = json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}],
            "model": model,
            "system_fingerprint": "fp_mock"
        });
        with_null_usage(chunk, call.include_usage)
    };
    let content = fill_each(
        chunk("", None),
        "/choices/0/text",
        &behavior.reply,
        sse_data,
    );
    let mut tail = vec![sse_data(&chunk("", Some("stop")))];
    if call.include_usage && behavior.send_usage {
        tail.push(sse_data(&json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "choices": [],
            "model": model,
            "system_fingerprint": "fp_mock",
            "usage": usage
        })));
    }
    tail.push(Bytes::from_static(b"data: [DONE]\n\n"));
    sse_response(shared, behavior, SsePlan::new(Vec::new(), content, tail))
}

fn embeddings(call: &Call) -> Response {
    let Some(inputs) = &call.inputs else {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "'input' must be a non-empty string or array",
        );
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            json!({"object": "embedding", "index": index, "embedding": embed(text)})
        })
        .collect();
    let tokens: u64 = inputs
        .iter()
        .map(|text| count(text.split_whitespace().count().max(1)))
        .sum();
    axum::Json(json!({
        "object": "list",
        "data": data,
        "model": call.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}
    }))
    .into_response()
}

/// Eight floats derived from `text` alone (FNV-1a seed, splitmix64 sequence), L2-normalised.
fn embed(text: &str) -> Vec<f64> {
    let mut state = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    let raw: Vec<f64> = (0..8)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let top = u32::try_from(z >> 40).unwrap_or_default();
            f64::from(top) / f64::from(1_u32 << 23) - 1.0
        })
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > 0.0 {
        raw.iter().map(|x| x / norm).collect()
    } else {
        raw
    }
}

fn models() -> Response {
    let data: Vec<Value> = [
        "gpt-4o-mini",
        "gpt-4o",
        "gpt-3.5-turbo-instruct",
        "text-embedding-3-small",
    ]
    .into_iter()
    .map(|id| json!({"id": id, "object": "model", "created": 1_686_935_002, "owned_by": "openai"}))
    .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

// ---------------------------------------------------------------------------------------------
// Anthropic
// ---------------------------------------------------------------------------------------------

fn messages(shared: &Arc<Shared>, behavior: &Behavior, call: &Call, id: u64) -> Response {
    let id = format!("msg_mock_{id}");
    let model = call.model.as_str();
    let pieces = fragments(behavior);
    let output_tokens = count(pieces.len());
    let stop_reason = if behavior.tool_call.is_some() {
        "tool_use"
    } else {
        "end_turn"
    };

    if !call.stream {
        let block = match &behavior.tool_call {
            Some((name, arguments)) => json!({
                "type": "tool_use",
                "id": "toolu_mock_1",
                "name": name,
                "input": serde_json::from_str::<Value>(arguments).unwrap_or_else(|_| json!({}))
            }),
            None => json!({"type": "text", "text": pieces.concat()}),
        };
        let body = json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [block],
            "stop_reason": stop_reason,
            "stop_sequence": null,
            "usage": {
                "input_tokens": behavior.prompt_tokens,
                "output_tokens": output_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0
            }
        });
        return axum::Json(body).into_response();
    }

    let start_block = match &behavior.tool_call {
        Some((name, _)) => {
            json!({"type": "tool_use", "id": "toolu_mock_1", "name": name, "input": {}})
        }
        None => json!({"type": "text", "text": ""}),
    };
    let head = vec![
        sse_event(
            "message_start",
            &json!({
                "type": "message_start",
                "message": {
                    "id": id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": {
                        "input_tokens": behavior.prompt_tokens,
                        "output_tokens": 1,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 0
                    }
                }
            }),
        ),
        sse_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": start_block}),
        ),
        sse_event("ping", &json!({"type": "ping"})),
    ];
    let (delta, pointer) = if behavior.tool_call.is_some() {
        let delta = json!({"type": "input_json_delta", "partial_json": ""});
        (delta, "/delta/partial_json")
    } else {
        (json!({"type": "text_delta", "text": ""}), "/delta/text")
    };
    let content = fill_each(
        json!({"type": "content_block_delta", "index": 0, "delta": delta}),
        pointer,
        &pieces,
        |event| sse_event("content_block_delta", event),
    );
    let tail = vec![
        sse_event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ),
        sse_event(
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                "usage": {"output_tokens": output_tokens}
            }),
        ),
        sse_event("message_stop", &json!({"type": "message_stop"})),
    ];
    sse_response(shared, behavior, SsePlan::new(head, content, tail))
}

// ---------------------------------------------------------------------------------------------
// SSE streaming
// ---------------------------------------------------------------------------------------------

/// One encoded event per piece: `template` with the string at `pointer` set to the piece.
/// Reusing one value keeps the per-token cost to a serialisation (this is the benchmark hot path).
fn fill_each(
    mut template: Value,
    pointer: &str,
    pieces: &[String],
    encode: impl Fn(&Value) -> Bytes,
) -> Vec<Bytes> {
    pieces
        .iter()
        .map(|piece| {
            if let Some(slot) = template.pointer_mut(pointer) {
                *slot = Value::String(piece.clone());
            }
            encode(&template)
        })
        .collect()
}

fn sse_data(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

fn sse_event(name: &str, value: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {value}\n\n"))
}

/// A stream's pre-serialised events: preamble, content events (counted by `drop_after`), epilogue.
#[derive(Debug)]
struct SsePlan {
    head: Vec<Bytes>,
    content: Vec<Bytes>,
    tail: Vec<Bytes>,
}

impl SsePlan {
    fn new(head: Vec<Bytes>, content: Vec<Bytes>, tail: Vec<Bytes>) -> Self {
        Self {
            head,
            content,
            tail,
        }
    }
}

/// Lives inside a streaming body; tells the shared state how the stream ended.
#[derive(Debug)]
struct StreamGuard {
    shared: Arc<Shared>,
    finished: bool,
}

impl StreamGuard {
    fn complete(&mut self) {
        self.finished = true;
        self.shared.completed.send_modify(|n| *n += 1);
    }

    fn abort(&mut self) {
        self.finished = true;
        self.shared.aborted.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.dropped.send_modify(|n| *n += 1);
        }
    }
}

/// Sleeps `ttft` before the first event and `token_delay` before each later one.
#[derive(Debug)]
struct Pacer {
    next: Duration,
    between: Duration,
}

impl Pacer {
    async fn wait(&mut self) {
        let delay = std::mem::replace(&mut self.next, self.between);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

fn sse_response(shared: &Arc<Shared>, behavior: &Behavior, plan: SsePlan) -> Response {
    let guard = StreamGuard {
        shared: Arc::clone(shared),
        finished: false,
    };
    let mut pacer = Pacer {
        next: behavior.ttft,
        between: behavior.token_delay,
    };
    let SsePlan {
        head,
        content,
        tail,
    } = plan;
    // Abort after this many content events; past the end means right after the last one.
    let abort_at = behavior.drop_after.map(|n| n.min(content.len()));
    let stream = async_stream::stream! {
        let mut guard = guard;
        for event in head {
            pacer.wait().await;
            yield Ok::<Bytes, std::io::Error>(event);
        }
        for (sent, event) in content.into_iter().enumerate() {
            if abort_at == Some(sent) {
                break;
            }
            pacer.wait().await;
            yield Ok(event);
        }
        if abort_at.is_some() {
            // Give hyper one `Pending` so it flushes what was sent; an error arriving while the
            // events are still buffered would lose them (and the headers) along with the stream.
            tokio::task::yield_now().await;
            guard.abort();
            yield Err(std::io::Error::other("mock upstream: drop_after reached, aborting the stream"));
        } else {
            for event in tail {
                pacer.wait().await;
                yield Ok(event);
            }
            guard.complete();
        }
    };
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recordings_are_capped_oldest_first() {
        let mut queue = VecDeque::new();
        for i in 0..10 {
            push_capped(&mut queue, i, 3);
        }
        assert_eq!(queue, VecDeque::from([7, 8, 9]));
    }

    #[test]
    fn arguments_split_in_three_pieces() {
        let pieces = split_pieces(r#"{"city":"Paris"}"#, 3);
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces.concat(), r#"{"city":"Paris"}"#);
        assert_eq!(split_pieces("ab", 3), vec!["a", "b"]);
        assert!(split_pieces("", 3).is_empty());
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embed("hello");
        assert_eq!(a, embed("hello"));
        assert_ne!(a, embed("world"));
        assert_eq!(a.len(), 8);
        let norm: f64 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-9);
    }

    #[test]
    fn endpoints_are_routed_by_method_and_path() {
        assert_eq!(
            Endpoint::of(&Method::POST, "/v1/chat/completions/"),
            Endpoint::Chat
        );
        assert_eq!(
            Endpoint::of(&Method::GET, "/v1/chat/completions"),
            Endpoint::WrongMethod
        );
        assert_eq!(Endpoint::of(&Method::GET, "/v2/x"), Endpoint::NotFound);
    }
}
