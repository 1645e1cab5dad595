//! Graceful shutdown during a stream: in-flight streams finish within the grace period; past it they end
//! with an error event; the real binary does the same on SIGTERM.

use std::process::Command;
use std::time::Duration;

use futures_util::StreamExt;
use sluice::testkit::upstream::{Behavior, MockUpstream};

use crate::common::{TestApp, chat_body, chat_text, read_sse, standard_config};

#[tokio::test]
async fn in_flight_streams_finish_after_the_signal() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_behavior(Behavior {
        token_delay: Duration::from_millis(100),
        ..Behavior::default()
    });
    let app = TestApp::with_upstream(&upstream, "", "").await;
    let resp = app
        .post("/v1/chat/completions", &chat_body("gpt", "hi", true))
        .await;
    assert_eq!(resp.status(), 200);
    app.shutdown.trigger();
    let events = read_sse(resp).await;
    assert_eq!(chat_text(&events), "Hello from the mock upstream.");
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let served = tokio::time::timeout(Duration::from_secs(10), app.server)
        .await
        .expect("server stopped")
        .unwrap();
    assert!(served.is_ok());
    // The listener is closed: new connections are refused.
    assert!(
        app.client
            .get(format!("{}/healthz", app.base))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn streams_still_open_after_the_grace_period_end_with_an_error_event() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_behavior(Behavior {
        token_delay: Duration::from_mins(1),
        ..Behavior::default()
    });
    let app = TestApp::start(
        &standard_config(&upstream.base_url(), "", "")
            .replace("shutdown_grace = \"5s\"", "shutdown_grace = \"200ms\""),
    )
    .await;
    let resp = app
        .post("/v1/chat/completions", &chat_body("gpt", "hi", true))
        .await;
    let mut events = eventsource_stream::Eventsource::eventsource(resp.bytes_stream());
    events.next().await.unwrap().unwrap();
    app.shutdown.trigger();
    let mut last = None;
    while let Some(event) = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("stream ended")
    {
        last = Some(event.unwrap().data);
    }
    let last: serde_json::Value = serde_json::from_str(&last.unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "server_shutting_down", "{last}");
    let served = tokio::time::timeout(Duration::from_secs(10), app.server)
        .await
        .expect("server stopped")
        .unwrap();
    assert!(served.is_ok());
}

#[tokio::test]
async fn the_binary_drains_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("sluice-sigterm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("sluice.toml");
    let text =
        sluice::config::DEFAULT_CONFIG.replace("token_delay = \"0ms\"", "token_delay = \"50ms\"");
    std::fs::write(&config, text).unwrap();
    let (mut child, addr, log) = crate::common::spawn_sluice_logging(&config, &dir, &[]).await;
    let client = reqwest::Client::new();
    // A first call's access line reaches stdout while the gateway runs (access lines wait for a
    // batch, `telemetry::log_batch`, at most until the telemetry thread's next sweep).
    let first = client
        .post(format!("http://{addr}/v1/embeddings"))
        .bearer_auth("sk-sluice-demo")
        .json(&serde_json::json!({"model": "mock-embed", "input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let first_line = loop {
        let record = log
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the first call's access line while the gateway runs");
        if record["target"] == sluice::telemetry::ACCESS_TARGET {
            break record;
        }
    };
    assert_eq!(first_line["route"], "/v1/embeddings", "{first_line}");
    let resp = client
        .post(format!("http://{addr}/v1/chat/completions"))
        .bearer_auth("sk-sluice-demo")
        .json(&chat_body("mock-gpt", "hi", true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let events = read_sse(resp).await;
    assert_eq!(
        events.last().unwrap().data,
        "[DONE]",
        "the stream completed during the drain"
    );
    assert_eq!(chat_text(&events).split(' ').count(), 16);
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    // The stream's request-log record, queued for the binary's worker's idle time
    // (`telemetry::background`), was written before it exited.
    let db = rusqlite::Connection::open(dir.join("requests.db")).unwrap();
    let (rows, streams, ok): (i64, i64, i64) = db
        .query_row(
            "SELECT count(*), sum(stream), sum(status = 200) FROM requests",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((rows, streams, ok), (2, 1, 2));
    // The stream's access line, which waited for a batch when the drain wrote it, is on stdout too.
    let access: Vec<serde_json::Value> = log
        .iter()
        .filter(|r| r["target"] == sluice::telemetry::ACCESS_TARGET)
        .collect();
    assert_eq!(access.len(), 1, "{access:?}");
    assert_eq!(access[0]["route"], "/v1/chat/completions");
    assert_eq!(access[0]["stream"], true);
    std::fs::remove_dir_all(dir).ok();
}
