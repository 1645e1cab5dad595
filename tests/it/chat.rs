//! Non-streaming endpoints: chat, completions, embeddings, models; field pass-through; request ids.

use serde_json::json;
use sluice::testkit::upstream::{Behavior, MockUpstream};

use crate::common::{TestApp, UPSTREAM_KEY, chat_body};

#[tokio::test]
async fn mock_provider_answers_without_network() {
    let app = TestApp::start(sluice::config::DEFAULT_CONFIG).await;
    let (status, body) = app
        .post_json(
            "/v1/chat/completions",
            &chat_body("mock-gpt", "hello", false),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert!(
        !body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    assert_eq!(body["usage"]["completion_tokens"], 16);
}

/// The README's demo: the embedded default's public key, a priced mock model, and the cost and
/// overhead headers on a non-streaming answer, the cost equal to the usage times the demo price.
#[tokio::test]
async fn the_embedded_demo_is_priced() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start_secured(sluice::config::DEFAULT_CONFIG, dir).await;
    let resp = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth("sk-sluice-demo")
        .json(&chat_body("mock-gpt", "what does this cost?", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cost: rust_decimal::Decimal = resp.headers()["x-sluice-cost-usd"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(resp.headers().contains_key("x-sluice-overhead-ms"));
    let body: serde_json::Value = resp.json().await.unwrap();
    let tokens = |k: &str| rust_decimal::Decimal::from(body["usage"][k].as_u64().unwrap());
    let expected = (tokens("prompt_tokens") * rust_decimal::Decimal::new(15, 2)
        + tokens("completion_tokens") * rust_decimal::Decimal::new(60, 2))
        / rust_decimal::Decimal::from(1_000_000);
    assert!(cost > rust_decimal::Decimal::ZERO);
    assert_eq!(cost, expected, "{body}");
}

#[tokio::test]
async fn every_uninterpreted_field_reaches_the_upstream_unchanged() {
    let upstream = MockUpstream::start().await.unwrap();
    let app = TestApp::with_upstream(&upstream, "", "").await;
    let request = json!({
        "model": "gpt",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [
                {"type": "text", "text": "what is in this image?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
            ], "name": "alice"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "result"}
        ],
        "tools": [{"type": "function", "function": {"name": "lookup", "description": "d",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}, "strict": true}}],
        "tool_choice": {"type": "function", "function": {"name": "lookup"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}},
        "seed": 42, "logprobs": true, "top_logprobs": 2, "n": 1, "stop": ["END"], "user": "user-7",
        "reasoning_effort": "high", "temperature": 0.2, "top_p": 0.9, "max_completion_tokens": 100,
        "parallel_tool_calls": false, "metadata": {"k": "v"}, "service_tier": "auto", "store": false,
        "some_future_field": {"nested": [1, 2, 3]}
    });
    let (status, _) = app.post_json("/v1/chat/completions", &request).await;
    assert_eq!(status, 200);
    let seen = upstream.requests().pop().unwrap();
    assert_eq!(seen.path, "/v1/chat/completions");
    let mut expected = request;
    expected["model"] = json!("gpt-upstream");
    // `content: null` is equivalent to an absent content and is not re-serialised.
    expected["messages"][2]
        .as_object_mut()
        .unwrap()
        .remove("content");
    assert_eq!(seen.body, expected);
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str())
    );
}

#[tokio::test]
async fn tool_calls_come_back_unchanged() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_behavior(Behavior {
        tool_call: Some(("get_weather".into(), r#"{"city":"Vienna"}"#.into())),
        ..Behavior::default()
    });
    let app = TestApp::with_upstream(&upstream, "", "").await;
    let (status, body) = app
        .post_json("/v1/chat/completions", &chat_body("gpt", "weather?", false))
        .await;
    assert_eq!(status, 200, "{body}");
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], r#"{"city":"Vienna"}"#);
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        body["system_fingerprint"], "fp_mock",
        "unknown response fields pass through"
    );
}

#[tokio::test]
async fn request_id_is_echoed_and_sent_upstream() {
    let upstream = MockUpstream::start().await.unwrap();
    let app = TestApp::with_upstream(&upstream, "", "").await;
    let resp = app
        .client
        .post(app.url("/v1/chat/completions"))
        .header("x-request-id", "req-abc-123")
        .json(&chat_body("gpt", "hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "req-abc-123");
    assert_eq!(
        upstream.requests()[0].header("x-request-id"),
        Some("req-abc-123")
    );

    // Without one, Sluice makes one up and still sends it both ways.
    let resp = app
        .post("/v1/chat/completions", &chat_body("gpt", "hi", false))
        .await;
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(
        upstream.requests()[1].header("x-request-id"),
        Some(id.as_str())
    );
}

#[tokio::test]
async fn completions_pass_through_and_translate() {
    let upstream = MockUpstream::start().await.unwrap();
    let app = TestApp::with_upstream(&upstream, "", "").await;
    let (status, body) = app
        .post_json(
            "/v1/completions",
            &json!({"model": "gpt", "prompt": "Say hi", "max_tokens": 5, "echo": false}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][0]["text"], "Hello from the mock upstream.");
    assert_eq!(upstream.requests()[0].path, "/v1/completions");
    assert_eq!(upstream.requests()[0].body["echo"], false);

    // A chat-only provider serves completions through a one-message chat.
    let (status, body) = app
        .post_json(
            "/v1/completions",
            &json!({"model": "mock-gpt", "prompt": "Say hi"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert!(!body["choices"][0]["text"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn embeddings_through_upstream_and_mock() {
    let upstream = MockUpstream::start().await.unwrap();
    let app = TestApp::with_upstream(&upstream, "", "").await;
    let (status, body) = app
        .post_json(
            "/v1/embeddings",
            &json!({"model": "gpt", "input": ["a", "b"], "encoding_format": "float"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(upstream.requests()[0].body["encoding_format"], "float");

    let (status, body) = app
        .post_json(
            "/v1/embeddings",
            &json!({"model": "mock-embed", "input": "x", "dimensions": 8}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 8);

    let (status, body) = app
        .post_json("/v1/embeddings", &json!({"model": "claude", "input": "x"}))
        .await;
    assert_eq!(status, 400, "Anthropic has no embeddings API: {body}");
    assert_eq!(body["error"]["code"], "unsupported_operation");
}

#[tokio::test]
async fn models_are_listed_in_both_shapes() {
    let app = TestApp::start(sluice::config::DEFAULT_CONFIG).await;
    let body: serde_json::Value = app
        .client
        .get(app.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["mock-claude", "mock-embed", "mock-gpt"]);

    let body: serde_json::Value = app
        .client
        .get(app.url("/v1/models"))
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["data"][0]["type"], "model");
    assert_eq!(body["has_more"], false);

    let one = app
        .client
        .get(app.url("/v1/models/mock-gpt"))
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    let missing = app
        .client
        .get(app.url("/v1/models/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn health_and_readiness() {
    let app = TestApp::start(sluice::config::DEFAULT_CONFIG).await;
    app.assert_healthy().await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}
