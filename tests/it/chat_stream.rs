//! Streaming: per-event relay, usage handling, keep-alive, errors before and after the first byte,
//! timeouts, client disconnect.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use sluice::testkit::upstream::{Behavior, MockUpstream};

use crate::common::{TestApp, chat_body, chat_text, read_sse};

#[tokio::test]
async fn mock_stream_is_well_formed() {
    let app = TestApp::start(sluice::config::DEFAULT_CONFIG).await;
    let resp = app
        .post(
            "/v1/chat/completions",
            &chat_body("mock-gpt", "hello", true),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    let events = read_sse(resp).await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks: Vec<_> = events[..events.len() - 1]
        .iter()
        .map(crate::common::Sse::json)
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "usage was not asked for"
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    assert_eq!(chat_text(&events).split(' ').count(), 16);
}

#[tokio::test]
async fn usage_is_always_requested_upstream_but_only_sent_when_asked() {
    let upstream = MockUpstream::start().await.unwrap();
    let app = TestApp::with_upstream(&upstream, "", "").await;

    let events = read_sse(
        app.post("/v1/chat/completions", &chat_body("gpt", "hi", true))
            .await,
    )
    .await;
    assert_eq!(chat_text(&events), "Hello from the mock upstream.");
    assert_eq!(
        upstream.requests()[0].body["stream_options"]["include_usage"],
        true
    );
    assert!(events.iter().filter(|e| e.data != "[DONE]").all(|e| {
        e.json()["choices"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
    }));

    let mut body = chat_body("gpt", "hi", true);
    body["stream_options"] = json!({"include_usage": true});
    let events = read_sse(app.post("/v1/chat/completions", &body).await).await;
    let usage_chunk = events[events.len() - 2].json();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 6);
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], 12);
    assert_eq!(events.last().unwrap().data, "[DONE]");
}

#[tokio::test]
async fn events_are_relayed_as_they_arrive() {
    let upstream = MockUpstream::start().await.unwrap();
    // The upstream sends its first event, then stays silent for a minute: a buffering gateway would
    // deliver nothing within the test's timeout.
    upstream.set_behavior(Behavior {
        token_delay: Duration::from_mins(1),
        ..Behavior::default()
    });
    let app = TestApp::with_upstream(&upstream, "", "").await;
    let resp = app
        .post("/v1/chat/completions", &chat_body("gpt", "hi", true))
        .await;
    let mut events = eventsource_stream::Eventsource::eventsource(resp.bytes_stream());
    let event = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("the first upstream event is relayed at once")
        .unwrap()
        .unwrap();
    let chunk: serde_json::Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(chunk["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(
        upstream.streams_completed(),
        0,
        "the upstream is still mid-stream"
    );
}

#[tokio::test]
async fn keep_alive_comments_flow_while_the_upstream_is_silent() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_behavior(Behavior {
        token_delay: Duration::from_mins(1),
        ..Behavior::default()
    });
    let app = TestApp::with_upstream(&upstream, "sse_keepalive = \"50ms\"", "").await;
    let resp = app
        .post("/v1/chat/completions", &chat_body("gpt", "hi", true))
        .await;
    let mut bytes = resp.bytes_stream();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = bytes.next().await {
            seen.extend_from_slice(&chunk.unwrap());
            if seen.windows(13).any(|w| w == b": keep-alive\n") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        found,
        Ok(true),
        "no keep-alive comment in {:?}",
        String::from_utf8_lossy(&seen)
    );
}

#[tokio::test]
async fn upstream_drop_mid_stream_becomes_an_error_event() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_behavior(Behavior {
        drop_after: Some(2),
        ..Behavior::default()
    });
    let app = TestApp::with_upstream(&upstream, "", "").await;
    let resp = app
        .post("/v1/chat/completions", &chat_body("gpt", "hi", true))
        .await;
    assert_eq!(resp.status(), 200);
    let events = read_sse(resp).await;
    let last = events.last().unwrap();
    assert_ne!(last.data, "[DONE]", "a cut stream must not look complete");
    let error = last.json();
    assert_eq!(error["error"]["type"], "server_error");
    assert_eq!(error["error"]["code"], "upstream_error");
    assert_eq!(chat_text(&events), "Hello from");
    app.assert_healthy().await;
}

#[tokio::test]
async fn upstream_failure_before_first_byte_is_an_http_error() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_behavior(Behavior {
        fail: Some((
            503,
            json!({"error": {"message": "overloaded", "type": "server_error"}}),
        )),
        ..Behavior::default()
    });
    let app = TestApp::with_upstream(&upstream, "", "").await;
    let resp = app
        .post("/v1/chat/completions", &chat_body("gpt", "hi", true))
        .await;
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("overloaded"),
        "{body}"
    );
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_within_a_second() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_behavior(Behavior {
        reply: vec!["tok".to_owned(); 1000],
        token_delay: Duration::from_millis(50),
        ..Behavior::default()
    });
    let app = TestApp::with_upstream(&upstream, "", "").await;
    let resp = app
        .post("/v1/chat/completions", &chat_body("gpt", "hi", true))
        .await;
    let mut events = eventsource_stream::Eventsource::eventsource(resp.bytes_stream());
    for _ in 0..3 {
        events.next().await.unwrap().unwrap();
    }
    drop(events);
    assert!(
        upstream.wait_stream_dropped(Duration::from_secs(1)).await,
        "the upstream stream is still running"
    );
    assert_eq!(upstream.streams_completed(), 0);
}

#[tokio::test]
async fn finish_policy_keeps_the_upstream_running_after_a_disconnect() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_behavior(Behavior {
        reply: vec!["tok".to_owned(); 20],
        token_delay: Duration::from_millis(20),
        ..Behavior::default()
    });
    let app = TestApp::with_upstream(&upstream, "on_client_disconnect = \"finish\"", "").await;
    let resp = app
        .post("/v1/chat/completions", &chat_body("gpt", "hi", true))
        .await;
    let mut events = eventsource_stream::Eventsource::eventsource(resp.bytes_stream());
    events.next().await.unwrap().unwrap();
    drop(events);
    assert!(
        upstream
            .wait_stream_completed(Duration::from_secs(10))
            .await,
        "the upstream call was not finished"
    );
    assert_eq!(upstream.streams_dropped(), 0);
    // The call is accounted with the upstream's full usage, not just what the client saw.
    app.wait_finished(1).await;
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sluice_tokens_total{model=\"gpt\",direction=\"output\"} 20"),
        "{metrics}"
    );
}

#[tokio::test]
async fn first_byte_timeout_is_a_504() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_behavior(Behavior {
        header_delay: Duration::from_secs(30),
        ..Behavior::default()
    });
    let app = TestApp::with_upstream(&upstream, "", "first_byte_timeout = \"200ms\"").await;
    for stream in [false, true] {
        let (status, body) = app
            .post_json("/v1/chat/completions", &chat_body("gpt", "hi", stream))
            .await;
        assert_eq!(status, 504, "{body}");
        assert_eq!(body["error"]["code"], "upstream_timeout");
    }
}

#[tokio::test]
async fn idle_timeout_mid_stream_is_an_error_event() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_behavior(Behavior {
        token_delay: Duration::from_secs(30),
        ..Behavior::default()
    });
    let app = TestApp::with_upstream(&upstream, "", "idle_timeout = \"300ms\"").await;
    let events = read_sse(
        app.post("/v1/chat/completions", &chat_body("gpt", "hi", true))
            .await,
    )
    .await;
    let error = events.last().unwrap().json();
    assert_eq!(error["error"]["code"], "upstream_timeout", "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("idle"));
}

#[tokio::test]
async fn completion_streams_keep_their_shape() {
    let upstream = MockUpstream::start().await.unwrap();
    let app = TestApp::with_upstream(&upstream, "", "").await;
    for model in ["gpt", "mock-gpt"] {
        let events = read_sse(
            app.post(
                "/v1/completions",
                &json!({"model": model, "prompt": "hi", "stream": true}),
            )
            .await,
        )
        .await;
        assert_eq!(events.last().unwrap().data, "[DONE]");
        let text: String = events[..events.len() - 1]
            .iter()
            .map(|e| {
                let chunk = e.json();
                assert_eq!(chunk["object"], "text_completion", "{chunk}");
                chunk["choices"][0]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        assert!(!text.is_empty());
    }
}
