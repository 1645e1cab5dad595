//! Many streams at once: 1,000 concurrent streams through the HTTP provider all complete with the right
//! content, and no stream receives another's chunks.

use std::collections::HashSet;
use std::time::Duration;

use sluice::testkit::upstream::{Behavior, MockUpstream};

use crate::common::{TestApp, chat_body, chat_text, read_sse};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_streams_complete_with_the_right_content() {
    const STREAMS: usize = 1000;
    let upstream = MockUpstream::start().await.unwrap();
    // A small delay between tokens keeps all streams open at the same time.
    upstream.set_behavior(Behavior {
        token_delay: Duration::from_millis(20),
        ..Behavior::default()
    });
    let app = TestApp::with_upstream(&upstream, "", "").await;
    let tasks: Vec<_> = (0..STREAMS)
        .map(|i| {
            let client = app.client.clone();
            let url = app.url("/v1/chat/completions");
            tokio::spawn(async move {
                let resp = client
                    .post(url)
                    .json(&chat_body("gpt", &format!("stream {i}"), true))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
                let events = read_sse(resp).await;
                assert_eq!(
                    events.last().unwrap().data,
                    "[DONE]",
                    "stream {i} did not complete"
                );
                let ids: HashSet<String> = events[..events.len() - 1]
                    .iter()
                    .map(|e| e.json()["id"].as_str().unwrap().to_owned())
                    .collect();
                assert_eq!(
                    ids.len(),
                    1,
                    "stream {i} mixed chunks of several responses: {ids:?}"
                );
                (chat_text(&events), ids.into_iter().next().unwrap())
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for task in tasks {
        let (text, id) = task.await.unwrap();
        assert_eq!(text, "Hello from the mock upstream.");
        ids.insert(id);
    }
    assert_eq!(
        ids.len(),
        STREAMS,
        "every stream had its own upstream response"
    );
    assert_eq!(upstream.streams_completed(), STREAMS);
    app.assert_healthy().await;
}
