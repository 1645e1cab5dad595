//! The official OpenAI and Anthropic Python SDKs work against Sluice unchanged (stream and non-stream).
//! `scripts/test` installs the pinned SDKs and sets `SLUICE_SDK_PYTHON`; under `CI=true` a missing
//! interpreter fails the test instead of skipping it.

use std::process::Command;

use crate::common::TestApp;

fn python() -> Option<String> {
    if let Ok(python) = std::env::var("SLUICE_SDK_PYTHON") {
        return Some(python);
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "CI=true but SLUICE_SDK_PYTHON is not set: run the suite through scripts/test"
    );
    eprintln!("skipping SDK test: SLUICE_SDK_PYTHON not set (scripts/test sets it)");
    None
}

async fn run_script(script: &str, app: &TestApp) -> serde_json::Value {
    let python = python().unwrap();
    let script = format!("{}/tests/sdk/{script}", env!("CARGO_MANIFEST_DIR"));
    let base = app.base.clone();
    let out =
        tokio::task::spawn_blocking(move || Command::new(python).arg(script).arg(base).output())
            .await
            .unwrap()
            .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sdk_config() -> String {
    // A second mock provider that breaks every stream halfway, to see how the SDK reports it.
    format!(
        "{}\n[providers.broken]\nkind = \"mock\"\nfail_every = 1\nfailure_mode = \"mid_stream\"\n\n[models.mock-broken]\nprovider = \"broken\"\n",
        sluice::config::DEFAULT_CONFIG
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_works_unchanged() {
    if python().is_none() {
        return;
    }
    let app = TestApp::start(&sdk_config()).await;
    let out = run_script("openai_sdk.py", &app).await;
    let text = out["chat_text"].as_str().unwrap();
    assert_eq!(text.split(' ').count(), 16, "{out}");
    assert_eq!(
        out["stream_text"], text,
        "stream and non-stream give the same deterministic reply"
    );
    assert_eq!(out["stream_usage"], out["chat_usage"]);
    assert!(!out["completion_text"].as_str().unwrap().is_empty());
    assert_eq!(out["embeddings"], 2);
    assert_eq!(
        out["models"],
        serde_json::json!(["mock-broken", "mock-claude", "mock-embed", "mock-gpt"])
    );
    assert_eq!(out["not_found"], 404);
    assert_eq!(
        out["mid_stream_error"], "APIError",
        "a cut stream raises in the SDK: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_sdk_works_unchanged() {
    if python().is_none() {
        return;
    }
    let app = TestApp::start(&sdk_config()).await;
    let out = run_script("anthropic_sdk.py", &app).await;
    assert_eq!(
        out["text"].as_str().unwrap().split(' ').count(),
        16,
        "{out}"
    );
    assert_eq!(out["stop_reason"], "end_turn");
    assert_eq!(out["usage"][1], 16);
    assert_eq!(out["stream_text"], out["text"]);
    assert_eq!(out["stream_stop_reason"], "end_turn");
    assert_eq!(out["stream_output_tokens"], 16);
    assert_eq!(out["not_found"], 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_holds_a_session_with_an_extra_header() {
    if python().is_none() {
        return;
    }
    let app = TestApp::start(&sdk_config()).await;
    let out = run_script("openai_sessions.py", &app).await;
    assert_eq!(
        out["turns"],
        serde_json::json!([
            {"input": "My name is Ada.", "output": out["first"], "cut": false},
            {"input": "What is my name?", "output": out["second"], "cut": false},
        ]),
        "{out}"
    );
    assert!(!out["second"].as_str().unwrap().is_empty());
}
