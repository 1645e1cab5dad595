//! Traces and logs end to end, in a test binary of its own because it installs the process-wide
//! subscriber: spans with their GenAI attributes reach an in-test OTLP receiver, the client's W3C trace
//! context is continued and propagated upstream, and no secret appears in logs, spans or error bodies.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test code"
)]

#[path = "it/common.rs"]
#[expect(dead_code, reason = "this binary uses part of the shared harness")]
mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use sluice::config::LogConfig;
use sluice::testkit::otlp::{AttrValue, OtlpReceiver, ReceivedSpan};
use sluice::testkit::upstream::{Behavior, MockUpstream};

use common::{TestApp, UPSTREAM_KEY, chat_body, read_sse, standard_config};

const CLIENT_SECRET: &str = "sk-client-secret-do-not-log-0123456789";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Captured {
    type Writer = Self;
    fn make_writer(&'w self) -> Self {
        self.clone()
    }
}

fn find<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.name == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario in one process: the subscriber it installs is global"
)]
async fn spans_reach_otlp_and_secrets_reach_nothing() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let config = format!(
        "{}\n[telemetry.otel]\nendpoint = \"{}\"\nprotocol = \"http-protobuf\"\ncapture_content = true\n\
         [admin]\napi_key_env = \"SLUICE_TEST_UPSTREAM_KEY\"\n",
        standard_config(&upstream.base_url(), "", ""),
        receiver.endpoint()
    );
    let parsed = sluice::Config::from_toml(&config).unwrap();
    let guard = sluice::telemetry::otel::init(&parsed.telemetry.otel)
        .unwrap()
        .expect("export configured");
    let logs = Captured::default();
    let log_config = LogConfig {
        filter: "info".to_owned(),
        format: sluice::config::LogFormat::Json,
    };
    sluice::telemetry::install(&log_config, Some(&guard), logs.clone(), false);
    let app = TestApp::start(&config).await;

    // 1. Non-streaming, with the client's trace context and its own credentials.
    // The prompt carries a secret: captured content must be redacted.
    let mut body = chat_body(
        "gpt",
        &format!("my key is {CLIENT_SECRET}, keep it safe"),
        false,
    );
    body["temperature"] = json!(0.5);
    body["max_tokens"] = json!(50);
    let resp = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_SECRET)
        .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let traced_request = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let upstream_traceparent = upstream.requests()[0]
        .header("traceparent")
        .unwrap()
        .to_owned();
    assert!(
        upstream_traceparent.starts_with(&format!("00-{TRACE_ID}-")),
        "{upstream_traceparent}"
    );

    // 2. A stream through the Anthropic provider.
    let events = read_sse(
        app.post("/v1/chat/completions", &chat_body("claude", "hi", true))
            .await,
    )
    .await;
    assert_eq!(events.last().unwrap().data, "[DONE]");

    // 3. An upstream failure with the gateway's key in play.
    upstream.set_behavior(Behavior {
        fail: Some((
            401,
            json!({"error": {"message": "bad key", "type": "auth"}}),
        )),
        ..Behavior::default()
    });
    let (status, error_body) = app
        .post_json("/v1/chat/completions", &chat_body("gpt", "x", false))
        .await;
    assert_eq!(status, 502);
    assert!(!error_body.to_string().contains(UPSTREAM_KEY));

    // 4. A line logged while a request is served carries its id: creating a key through the admin
    // API logs "API key created" (the upstream key variable doubles as the admin key's).
    let created = app
        .client
        .post(app.url("/admin/keys"))
        .bearer_auth(UPSTREAM_KEY)
        .header("x-request-id", "rid-admin-4")
        .json(&json!({"name": "logged"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let new_secret = created["secret"].as_str().unwrap().to_owned();

    app.wait_finished(4).await;
    let (_dir, request_log) = app.stop().await;
    let record = request_log
        .unwrap()
        .get(&traced_request)
        .unwrap()
        .expect("recorded");
    assert_eq!(
        record.trace_id.as_deref(),
        Some(TRACE_ID),
        "the request log names the trace"
    );
    guard.shutdown().await.unwrap();
    let spans = receiver
        .wait_for_spans(
            |s| s.iter().filter(|s| s.kind == 3).count() >= 3,
            Duration::from_secs(10),
        )
        .await;

    // The non-streaming call: a server span continuing the client's trace, with a client child span.
    let chat = find(&spans, "chat gpt-upstream");
    let call = chat
        .iter()
        .find(|s| s.trace_id == TRACE_ID)
        .expect("upstream span in the client's trace");
    assert_eq!(call.kind, 3, "client span");
    let attr = |key: &str| {
        call.attr(key)
            .unwrap_or_else(|| panic!("{key} missing on {call:#?}"))
    };
    assert_eq!(attr("gen_ai.operation.name").as_str(), Some("chat"));
    assert_eq!(attr("gen_ai.provider.name").as_str(), Some("up"));
    assert_eq!(attr("gen_ai.request.model").as_str(), Some("gpt-upstream"));
    assert_eq!(attr("gen_ai.response.model").as_str(), Some("gpt-upstream"));
    assert!(
        attr("gen_ai.response.id")
            .as_str()
            .unwrap()
            .starts_with("chatcmpl-mock-")
    );
    assert_eq!(attr("gen_ai.usage.input_tokens").as_i64(), Some(12));
    assert_eq!(attr("gen_ai.usage.output_tokens").as_i64(), Some(6));
    assert_eq!(attr("gen_ai.request.temperature").as_f64(), Some(0.5));
    assert_eq!(attr("gen_ai.request.max_tokens").as_i64(), Some(50));
    assert_eq!(
        format!("{:?}", attr("gen_ai.response.finish_reasons")),
        r#"Array([String("stop")])"#
    );
    let server = spans
        .iter()
        .find(|s| s.span_id == call.parent_span_id)
        .expect("parent request span");
    assert_eq!(server.kind, 2, "server span");
    assert_eq!(
        server
            .attr("http.response.status_code")
            .and_then(AttrValue::as_i64),
        Some(200)
    );
    assert_eq!(
        server.attr("http.route").and_then(AttrValue::as_str),
        Some("/v1/chat/completions")
    );
    assert_eq!(
        server
            .attr("http.request.method")
            .and_then(AttrValue::as_str),
        Some("POST")
    );
    assert!(
        server
            .attr("sluice.request_id")
            .and_then(AttrValue::as_str)
            .is_some_and(|id| !id.is_empty()),
        "{server:?}"
    );
    assert!(
        server.attr("gen_ai.usage.input_tokens").is_none(),
        "GenAI attributes belong to the client span"
    );
    assert_eq!(server.trace_id, TRACE_ID);
    assert!(
        upstream_traceparent.contains(&call.span_id),
        "the upstream sees the client span as parent"
    );

    let input = attr("gen_ai.input.messages").as_str().unwrap();
    assert!(
        input.contains("keep it safe") && input.contains("REDACTED"),
        "{input}"
    );
    let output = attr("gen_ai.output.messages").as_str().unwrap();
    assert!(output.contains("Hello from the mock upstream."), "{output}");

    // The stream: usage and time to first token on the Anthropic call.
    let stream = find(&spans, "chat claude-upstream");
    let stream = stream.first().expect("anthropic span");
    assert_eq!(
        stream
            .attr("gen_ai.provider.name")
            .and_then(AttrValue::as_str),
        Some("claude")
    );
    assert_eq!(
        stream
            .attr("gen_ai.usage.output_tokens")
            .and_then(AttrValue::as_i64),
        Some(6)
    );
    assert!(
        stream
            .attr("sluice.time_to_first_token_ms")
            .and_then(AttrValue::as_f64)
            .is_some()
    );

    // The failure is marked on its span.
    assert!(
        spans
            .iter()
            .any(|s| s.attr("error.type").and_then(AttrValue::as_str) == Some("upstream_failed"))
    );

    // No secret anywhere.
    let span_text = format!("{spans:?}");
    let log_text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    for secret in [UPSTREAM_KEY, CLIENT_SECRET, new_secret.as_str()] {
        assert!(!span_text.contains(secret), "secret in spans");
        assert!(!log_text.contains(secret), "secret in logs");
    }
    // One access record per request, with what ops teams need.
    let records: Vec<Value> = log_text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["message"] == "request served" || r["message"] == "request failed")
        .collect();
    assert_eq!(records.len(), 4, "{log_text}");
    // Records are written in the order calls finish, and a stream finishes in a task of its own
    // after its last byte: the next request's record may come first. Find each by what it was.
    let first = records
        .iter()
        .find(|r| r["status"] == 200 && r["stream"] == false)
        .expect("the non-streaming call's record");
    let failed = records
        .iter()
        .find(|r| r["status"] == 502)
        .expect("the failed call's record");
    for field in [
        "status",
        "model",
        "provider",
        "latency_ms",
        "input_tokens",
        "output_tokens",
        "overhead_ms",
    ] {
        assert!(first.get(field).is_some(), "{field} missing in {first}");
    }
    assert_eq!(first["request_id"].as_str().map(str::len), Some(36));
    assert_eq!(first["route"], "/v1/chat/completions");
    assert_eq!(first["method"], "POST");
    assert_eq!(first["target"], sluice::telemetry::ACCESS_TARGET);
    assert_eq!(
        first["trace_id"], TRACE_ID,
        "the access record names the trace"
    );
    assert_eq!(failed["error.kind"], "upstream_failed");
    // The line logged inside the admin call names the request it was written for; lines written
    // outside any request (start-up) name none.
    let lines: Vec<Value> = log_text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect();
    let key_created = lines
        .iter()
        .find(|l| l["message"] == "API key created")
        .unwrap_or_else(|| panic!("no key-created line: {log_text}"));
    assert_eq!(
        key_created["span"],
        json!({"request_id": "rid-admin-4", "name": "request"}),
        "{key_created}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["request_id"] == "rid-admin-4" && r["route"] == "/admin/keys"),
        "the admin call's access record has the same id"
    );
    assert!(
        lines
            .iter()
            .filter(|l| l["message"] != "API key created")
            .all(|l| l.get("span").is_none()),
        "{log_text}"
    );
}
