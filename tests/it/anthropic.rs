//! The Anthropic side: `/v1/messages` in front of any provider, and OpenAI clients in front of the
//! Anthropic provider; tool calls and stream events both ways; Anthropic-shaped errors.

use serde_json::{Value, json};
use sluice::testkit::upstream::{Behavior, MockUpstream};

use crate::common::{TestApp, UPSTREAM_KEY, chat_body, chat_text, read_sse};

fn message_body(model: &str, stream: bool) -> Value {
    json!({
        "model": model, "max_tokens": 256, "stream": stream,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": "Hello"}]
    })
}

fn event_types(events: &[crate::common::Sse]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            assert_eq!(
                e.json()["type"],
                e.event.as_str(),
                "event name matches data.type"
            );
            e.event.clone()
        })
        .collect()
}

#[tokio::test]
async fn messages_non_stream_from_the_mock() {
    let app = TestApp::start(sluice::config::DEFAULT_CONFIG).await;
    let (status, body) = app
        .post_json("/v1/messages", &message_body("mock-claude", false))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["content"][0]["type"], "text");
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["usage"]["output_tokens"], 16);
    assert!(body["id"].as_str().unwrap().starts_with("msg_"));
}

#[tokio::test]
async fn messages_stream_has_the_anthropic_event_sequence() {
    let app = TestApp::start(sluice::config::DEFAULT_CONFIG).await;
    let events = read_sse(
        app.post("/v1/messages", &message_body("mock-claude", true))
            .await,
    )
    .await;
    let types = event_types(&events);
    assert_eq!(types.first().map(String::as_str), Some("message_start"));
    assert_eq!(types[1], "content_block_start");
    assert!(
        types[2..types.len() - 3]
            .iter()
            .all(|t| t == "content_block_delta"),
        "{types:?}"
    );
    assert_eq!(
        &types[types.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    let delta = events[events.len() - 2].json();
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 16);
    let text: String = events
        .iter()
        .filter(|e| e.event == "content_block_delta")
        .map(|e| e.json()["delta"]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text.split(' ').count(), 16);
}

#[tokio::test]
async fn messages_through_an_openai_upstream_translate_requests_and_tool_calls() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_behavior(Behavior {
        tool_call: Some(("get_weather".into(), r#"{"city":"Vienna"}"#.into())),
        ..Behavior::default()
    });
    let app = TestApp::with_upstream(&upstream, "", "").await;
    let request = json!({
        "model": "gpt", "max_tokens": 100, "system": "Be brief.",
        "tools": [{"name": "get_weather", "description": "weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "tool_choice": {"type": "any"},
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}, {"type": "text", "text": "And Vienna?"}]}
        ]
    });
    let (status, body) = app.post_json("/v1/messages", &request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stop_reason"], "tool_use");
    let block = body["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "tool_use")
        .unwrap();
    assert_eq!(block["name"], "get_weather");
    assert_eq!(block["input"], json!({"city": "Vienna"}));

    let sent = &upstream.requests()[0].body;
    assert_eq!(sent["model"], "gpt-upstream");
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(
        sent["messages"][2]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    assert_eq!(sent["messages"][3]["role"], "tool");
    assert_eq!(sent["messages"][3]["tool_call_id"], "toolu_1");
    assert_eq!(sent["tools"][0]["type"], "function");
    assert_eq!(sent["tool_choice"], "required");

    // The same as a stream: the tool call arrives as a tool_use block with input_json_delta pieces.
    let mut streaming = request.clone();
    streaming["stream"] = json!(true);
    let events = read_sse(app.post("/v1/messages", &streaming).await).await;
    let types = event_types(&events);
    assert_eq!(types.last().map(String::as_str), Some("message_stop"));
    let start = events
        .iter()
        .find(|e| e.event == "content_block_start")
        .unwrap()
        .json();
    assert_eq!(start["content_block"]["type"], "tool_use");
    let args: String = events
        .iter()
        .filter(|e| e.event == "content_block_delta")
        .map(|e| {
            e.json()["delta"]["partial_json"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"city": "Vienna"})
    );
    let delta = events
        .iter()
        .find(|e| e.event == "message_delta")
        .unwrap()
        .json();
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(
        upstream.requests()[1].body["stream_options"]["include_usage"],
        true
    );
}

#[tokio::test]
async fn openai_clients_reach_the_anthropic_provider() {
    let upstream = MockUpstream::start().await.unwrap();
    let app = TestApp::with_upstream(&upstream, "", "").await;
    let request = json!({
        "model": "claude",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        "stop": "END", "temperature": 0.3
    });
    let (status, body) = app.post_json("/v1/chat/completions", &request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from the mock upstream."
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 12);
    assert_eq!(body["usage"]["completion_tokens"], 6);

    let seen = upstream.requests().pop().unwrap();
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.header("x-api-key"), Some(UPSTREAM_KEY));
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.body["model"], "claude-upstream");
    assert_eq!(seen.body["system"], "Be brief.");
    assert_eq!(seen.body["max_tokens"], 4096);
    assert_eq!(seen.body["stop_sequences"], json!(["END"]));
    assert_eq!(
        seen.body["messages"],
        json!([{"role": "user", "content": "Hello"}])
    );

    // Streaming: Anthropic events become OpenAI chunks.
    let mut streaming = request;
    streaming["stream"] = json!(true);
    streaming["stream_options"] = json!({"include_usage": true});
    let events = read_sse(app.post("/v1/chat/completions", &streaming).await).await;
    assert_eq!(chat_text(&events), "Hello from the mock upstream.");
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let usage = events[events.len() - 2].json();
    assert_eq!(usage["usage"]["completion_tokens"], 6);
    assert_eq!(usage["usage"]["prompt_tokens"], 12);
}

#[tokio::test]
async fn openai_tool_calls_round_trip_through_the_anthropic_provider() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_behavior(Behavior {
        tool_call: Some(("lookup".into(), r#"{"q":"rust"}"#.into())),
        ..Behavior::default()
    });
    let app = TestApp::with_upstream(&upstream, "", "").await;
    let request = json!({
        "model": "claude",
        "messages": [
            {"role": "user", "content": "find rust"},
            {"role": "assistant", "tool_calls": [{"id": "toolu_0", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"go\"}"}}]},
            {"role": "tool", "tool_call_id": "toolu_0", "content": "go results"}
        ],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
        "tool_choice": "auto"
    });
    let (status, body) = app.post_json("/v1/chat/completions", &request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "lookup");
    assert_eq!(
        serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap(),
        json!({"q": "rust"})
    );

    let sent = &upstream.requests()[0].body;
    assert_eq!(sent["tools"][0]["name"], "lookup");
    assert_eq!(sent["tool_choice"]["type"], "auto");
    assert_eq!(sent["messages"][1]["content"][0]["type"], "tool_use");
    assert_eq!(
        sent["messages"][1]["content"][0]["input"],
        json!({"q": "go"})
    );
    assert_eq!(sent["messages"][2]["content"][0]["type"], "tool_result");

    let mut streaming = request;
    streaming["stream"] = json!(true);
    let events = read_sse(app.post("/v1/chat/completions", &streaming).await).await;
    let chunks: Vec<Value> = events
        .iter()
        .filter(|e| e.data != "[DONE]")
        .map(crate::common::Sse::json)
        .collect();
    let first = chunks
        .iter()
        .find_map(|c| {
            c["choices"][0]["delta"]["tool_calls"][0]
                .as_object()
                .cloned()
        })
        .unwrap();
    assert_eq!(first["function"]["name"], "lookup");
    let args: String = chunks
        .iter()
        .filter_map(|c| {
            c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"q": "rust"})
    );
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls")
    );
}

#[tokio::test]
async fn messages_errors_are_anthropic_shaped() {
    let app = TestApp::start(sluice::config::DEFAULT_CONFIG).await;
    let (status, body) = app
        .post_json("/v1/messages", &message_body("nope", false))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "not_found_error");

    let resp = app
        .client
        .post(app.url("/v1/messages"))
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let (status, body) = app
        .post_json(
            "/v1/messages",
            &json!({"model": "mock-claude", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(status, 400, "max_tokens is required: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens")
    );
}

#[tokio::test]
async fn anthropic_upstream_errors() {
    let upstream = MockUpstream::start().await.unwrap();
    let app = TestApp::with_upstream(&upstream, "", "").await;
    upstream.set_behavior(Behavior {
        fail: Some((400, json!({"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long"}}))),
        ..Behavior::default()
    });
    let (status, body) = app
        .post_json("/v1/chat/completions", &chat_body("claude", "hi", false))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["message"], "prompt is too long");

    upstream.set_behavior(Behavior {
        drop_after: Some(2),
        ..Behavior::default()
    });
    let events = read_sse(
        app.post("/v1/chat/completions", &chat_body("claude", "hi", true))
            .await,
    )
    .await;
    let last = events.last().unwrap().json();
    assert_eq!(last["error"]["code"], "upstream_error", "{last}");
}
