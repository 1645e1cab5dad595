//! Every client mistake gets a 4xx in the OpenAI error shape naming the problem; upstream failures map to
//! 502/504 or pass through; hostile bodies never hurt the server.

use serde_json::{Value, json};
use sluice::testkit::upstream::{Behavior, MockUpstream};

use crate::common::{TestApp, UPSTREAM_KEY, chat_body, standard_config};

async fn raw(app: &TestApp, content_type: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut req = app.client.post(app.url("/v1/chat/completions")).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("error bodies are JSON"))
}

fn assert_error_shape(body: &Value) {
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "{body}"
    );
}

#[tokio::test]
async fn malformed_and_hostile_bodies_get_400s_and_the_server_stays_up() {
    let app = TestApp::start(sluice::config::DEFAULT_CONFIG).await;
    let json = Some("application/json");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            br#"{"model":"mock-gpt","messages":[{"role":"us"#.to_vec(),
            "not valid JSON",
        ),
        ("empty", Vec::new(), "not valid JSON"),
        (
            "wrong type",
            br#"{"model":"mock-gpt","messages":"hello"}"#.to_vec(),
            "messages",
        ),
        (
            "nested wrong type",
            br#"{"model":"mock-gpt","messages":[{"role":"user","content":5}]}"#.to_vec(),
            "messages[0]",
        ),
        ("missing model", br#"{"messages":[]}"#.to_vec(), "model"),
        (
            "empty messages",
            br#"{"model":"mock-gpt","messages":[]}"#.to_vec(),
            "messages",
        ),
        (
            "invalid utf-8",
            b"{\"model\":\"mock-gpt\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}"
                .to_vec(),
            "not valid JSON",
        ),
        (
            "deeply nested",
            format!(
                "{{\"model\":\"mock-gpt\",\"messages\":[],\"metadata\":{}{}}}",
                "[".repeat(50_000),
                "]".repeat(50_000)
            )
            .into_bytes(),
            "recursion limit",
        ),
        (
            "number out of range",
            br#"{"model":"mock-gpt","messages":[],"max_tokens":-1}"#.to_vec(),
            "max_tokens",
        ),
        ("not an object", b"[1,2,3]".to_vec(), "Invalid request body"),
    ];
    for (name, body, mention) in cases {
        let (status, resp) = raw(&app, json, body).await;
        assert_eq!(status, 400, "{name}: {resp}");
        assert_error_shape(&resp);
        assert_eq!(resp["error"]["type"], "invalid_request_error", "{name}");
        let text = resp["error"].to_string();
        assert!(
            text.contains(mention),
            "{name}: expected {mention:?} in {text}"
        );
    }
    app.assert_healthy().await;
}

#[tokio::test]
async fn content_type_must_be_json() {
    let app = TestApp::start(sluice::config::DEFAULT_CONFIG).await;
    let body = chat_body("mock-gpt", "hi", false).to_string().into_bytes();
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let (status, resp) = raw(&app, ct, body.clone()).await;
        assert_eq!(status, 415, "{ct:?}: {resp}");
        assert_error_shape(&resp);
    }
    let (status, _) = raw(&app, Some("application/json; charset=utf-8"), body).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let config = sluice::config::DEFAULT_CONFIG
        .replace("max_body_bytes = 10485760", "max_body_bytes = 1048576");
    let app = TestApp::start(&config).await;
    let big = format!(
        r#"{{"model":"mock-gpt","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "a".repeat(10_000_000)
    );
    let (status, resp) = raw(&app, Some("application/json"), big.into_bytes()).await;
    assert_eq!(status, 413, "{resp}");
    assert_eq!(resp["error"]["code"], "request_too_large");
    assert!(
        resp["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1048576")
    );
    app.assert_healthy().await;
}

#[tokio::test]
async fn unknown_model_route_and_method() {
    let app = TestApp::start(sluice::config::DEFAULT_CONFIG).await;
    let (status, body) = app
        .post_json("/v1/chat/completions", &chat_body("gpt-9000", "hi", false))
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "model_not_found");
    assert_eq!(body["error"]["param"], "model");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gpt-9000")
    );

    let resp = app
        .client
        .post(app.url("/v1/nope"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unknown_url");

    let resp = app
        .client
        .get(app.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let body: Value = resp.json().await.unwrap();
    assert_error_shape(&body);
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn upstream_client_errors_pass_through_with_their_message() {
    let upstream = MockUpstream::start().await.unwrap();
    let app = TestApp::with_upstream(&upstream, "", "").await;
    for (status, kind) in [
        (400, "invalid_request_error"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
    ] {
        upstream.set_behavior(Behavior {
            fail: Some((status, json!({"error": {"message": format!("upstream says {status}"), "type": kind, "param": "tools", "code": "bad"}}))),
            ..Behavior::default()
        });
        let (got, body) = app
            .post_json("/v1/chat/completions", &chat_body("gpt", "hi", false))
            .await;
        assert_eq!(got, status, "{body}");
        assert_eq!(body["error"]["message"], format!("upstream says {status}"));
        assert_eq!(body["error"]["type"], kind);
        assert_eq!(body["error"]["param"], "tools");
    }
}

#[tokio::test]
async fn upstream_server_errors_and_bad_credentials_are_502_without_secrets() {
    let upstream = MockUpstream::start().await.unwrap();
    let app = TestApp::with_upstream(&upstream, "", "").await;
    for status in [500, 503, 401] {
        upstream.set_behavior(Behavior {
            fail: Some((
                status,
                json!({"error": {"message": "nope", "type": "server_error"}}),
            )),
            ..Behavior::default()
        });
        let (got, body) = app
            .post_json("/v1/chat/completions", &chat_body("gpt", "hi", false))
            .await;
        assert_eq!(got, 502, "{status}: {body}");
        assert_eq!(body["error"]["type"], "server_error");
        assert!(!body.to_string().contains(UPSTREAM_KEY));
    }
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
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
    for stream in [false, true] {
        let (status, body) = app
            .post_json("/v1/chat/completions", &chat_body("gpt", "hi", stream))
            .await;
        assert_eq!(status, 502, "{body}");
        assert_eq!(body["error"]["code"], "upstream_error");
        assert!(
            !body.to_string().contains("127.0.0.1"),
            "no upstream addresses in client errors: {body}"
        );
    }
}

#[tokio::test]
async fn a_panic_becomes_a_500_in_the_error_shape() {
    let config = sluice::config::DEFAULT_CONFIG
        .replace("fail_every = 0", "fail_every = 1")
        .replace("failure_mode = \"error\"", "failure_mode = \"panic\"");
    let app = TestApp::start(&config).await;
    let (status, body) = app
        .post_json("/v1/chat/completions", &chat_body("mock-gpt", "hi", false))
        .await;
    assert_eq!(status, 500);
    assert_error_shape(&body);
    assert!(
        !body.to_string().contains("injected"),
        "no internal detail in 5xx bodies: {body}"
    );
    app.assert_healthy().await;
}
