//! Wire-format snapshots (insta): error bodies, non-streaming responses, chunk and event sequences.
//! Ids and timestamps are redacted; everything else must match byte for byte.

use insta::assert_json_snapshot;
use serde_json::{Value, json};
use sluice::testkit::upstream::MockUpstream;

use crate::common::{TestApp, chat_body, read_sse, standard_config};

async fn errors(app: &TestApp) -> Value {
    let mut out = serde_json::Map::new();
    let bad_json = app
        .client
        .post(app.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    out.insert("400_malformed".into(), bad_json.json().await.unwrap());
    out.insert(
        "400_field".into(),
        app.post_json(
            "/v1/chat/completions",
            &json!({"model": "mock-gpt", "messages": [{"content": "x"}]}),
        )
        .await
        .1,
    );
    out.insert(
        "404_model".into(),
        app.post_json("/v1/chat/completions", &chat_body("nope", "x", false))
            .await
            .1,
    );
    out.insert(
        "404_route".into(),
        app.client
            .get(app.url("/v2/x"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap(),
    );
    out.insert(
        "405".into(),
        app.client
            .get(app.url("/v1/embeddings"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap(),
    );
    let no_ct = app
        .client
        .post(app.url("/v1/chat/completions"))
        .body("{}")
        .send()
        .await
        .unwrap();
    out.insert("415".into(), no_ct.json().await.unwrap());
    out.insert(
        "502".into(),
        app.post_json("/v1/chat/completions", &chat_body("gpt", "x", false))
            .await
            .1,
    );
    out.insert("anthropic_404".into(), app.post_json("/v1/messages", &json!({"model": "nope", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]})).await.1);
    Value::Object(out)
}

#[tokio::test]
async fn error_bodies() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let app = TestApp::start(&standard_config(
        &format!("http://127.0.0.1:{port}/v1"),
        "",
        "",
    ))
    .await;
    assert_json_snapshot!(errors(&app).await);
}

#[tokio::test]
async fn mock_chat_response_and_stream() {
    let app = TestApp::start(sluice::config::DEFAULT_CONFIG).await;
    let (_, body) = app
        .post_json(
            "/v1/chat/completions",
            &chat_body("mock-gpt", "snapshot me", false),
        )
        .await;
    assert_json_snapshot!("mock_chat_response", body, {".id" => "[id]", ".created" => "[created]"});

    let mut request = chat_body("mock-gpt", "snapshot me", true);
    request["max_tokens"] = json!(3);
    request["stream_options"] = json!({"include_usage": true});
    let events = read_sse(app.post("/v1/chat/completions", &request).await).await;
    let frames: Vec<Value> = events
        .iter()
        .map(|e| {
            if e.data == "[DONE]" {
                json!("[DONE]")
            } else {
                e.json()
            }
        })
        .collect();
    assert_json_snapshot!("mock_chat_stream", frames, {"[].id" => "[id]", "[].created" => "[created]"});
}

#[tokio::test]
async fn messages_response_and_stream() {
    let app = TestApp::start(sluice::config::DEFAULT_CONFIG).await;
    let request = json!({"model": "mock-claude", "max_tokens": 3, "messages": [{"role": "user", "content": "snapshot me"}]});
    let (_, body) = app.post_json("/v1/messages", &request).await;
    assert_json_snapshot!("messages_response", body, {".id" => "[id]"});

    let mut streaming = request;
    streaming["stream"] = json!(true);
    let events = read_sse(app.post("/v1/messages", &streaming).await).await;
    let frames: Vec<Value> = events
        .iter()
        .map(|e| json!({"event": e.event, "data": e.json()}))
        .collect();
    assert_json_snapshot!("messages_stream", frames, {"[].data.message.id" => "[id]"});
}

#[tokio::test]
async fn upstream_stream_relay_and_cut() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_behavior(sluice::testkit::upstream::Behavior {
        drop_after: Some(1),
        ..Default::default()
    });
    let app = TestApp::with_upstream(&upstream, "", "").await;
    let events = read_sse(
        app.post("/v1/chat/completions", &chat_body("gpt", "x", true))
            .await,
    )
    .await;
    let frames: Vec<Value> = events.iter().map(crate::common::Sse::json).collect();
    assert_json_snapshot!("cut_stream", frames, {"[].id" => "[id]", "[].created" => "[created]"});
}
