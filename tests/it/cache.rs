//! The exact response cache: hits never reach the upstream, stream replays equal the original, tenants
//! never share, Cache-Control is honoured, and only complete, deterministic replies are stored.

use std::time::Duration;

use serde_json::{Value, json};
use sluice::testkit::upstream::{Behavior, MockUpstream};

use crate::common::{TestApp, read_sse, standard_config};

const KEY_A: &str = "sk-cache-key-a-0123456789";
const KEY_B: &str = "sk-cache-key-b-0123456789";

fn sha(secret: &str) -> String {
    sluice::control::encode_hash(&sluice::control::keys::hash_secret(secret))
}

async fn start(upstream: &MockUpstream) -> TestApp {
    let config = format!(
        "{}\n[auth]\nrequired = true\n[[auth.keys]]\nname = \"a\"\nsecret_sha256 = \"{}\"\n\
         [[auth.keys]]\nname = \"b\"\nsecret_sha256 = \"{}\"\n",
        standard_config(&upstream.base_url(), "", ""),
        sha(KEY_A),
        sha(KEY_B),
    );
    TestApp::start_secured(&config, tempfile::tempdir().unwrap()).await
}

fn body(stream: bool, temperature: f64) -> Value {
    json!({"model": "gpt", "stream": stream, "temperature": temperature,
           "messages": [{"role": "user", "content": "What is the capital of Austria?"}]})
}

async fn call(
    app: &TestApp,
    key: &str,
    body: &Value,
    cache_control: Option<&str>,
) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(body);
    if let Some(cc) = cache_control {
        req = req.header("cache-control", cc);
    }
    req.send().await.unwrap()
}

fn cache_header(resp: &reqwest::Response) -> String {
    resp.headers()["x-sluice-cache"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_repeated_deterministic_request_is_answered_without_the_upstream() {
    let upstream = MockUpstream::start().await.unwrap();
    let app = start(&upstream).await;
    let first = call(&app, KEY_A, &body(false, 0.0), None).await;
    assert_eq!(cache_header(&first), "miss");
    let first: Value = first.json().await.unwrap();
    let second = call(&app, KEY_A, &body(false, 0.0), None).await;
    assert_eq!(second.status(), 200);
    assert_eq!(cache_header(&second), "hit");
    let second: Value = second.json().await.unwrap();
    assert_eq!(second, first);
    assert_eq!(
        upstream.requests().len(),
        1,
        "the hit never reached the upstream"
    );
    // The same request streamed: replayed from the stored completion, same text and usage.
    let streamed = call(
        &app,
        KEY_A,
        &body(true, 0.0)
            .as_object()
            .cloned()
            .map(|mut m| {
                m.insert("stream_options".into(), json!({"include_usage": true}));
                Value::Object(m)
            })
            .unwrap(),
        None,
    )
    .await;
    assert_eq!(cache_header(&streamed), "hit");
    let events = read_sse(streamed).await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let text: String = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(&e.data).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(
        text,
        first["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert_eq!(upstream.requests().len(), 1);
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "sluice_cache_lookups_total{tier=\"exact\",result=\"hit\"} 2",
        "sluice_cache_lookups_total{tier=\"exact\",result=\"miss\"} 1",
        "sluice_cache_entries{tier=\"exact\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing:\n{metrics}"
        );
    }
    // The request log says which calls were hits (read after a stop, which flushes it).
    app.wait_finished(3).await;
    let (_dir, log) = app.stop().await;
    let records = log
        .unwrap()
        .query_async(sluice::request_log::RequestFilter::default())
        .await
        .unwrap();
    let mut outcomes: Vec<Option<String>> = records.into_iter().map(|r| r.cache).collect();
    outcomes.sort();
    assert_eq!(
        outcomes,
        vec![
            Some("hit".to_owned()),
            Some("hit".to_owned()),
            Some("miss".to_owned())
        ]
    );
}

#[tokio::test]
async fn a_stream_hit_replays_the_original_stream() {
    let upstream = MockUpstream::start().await.unwrap();
    let app = start(&upstream).await;
    let mut b = body(true, 0.0);
    b["stream_options"] = json!({"include_usage": true});
    let original = call(&app, KEY_A, &b, None).await;
    assert_eq!(cache_header(&original), "miss");
    let original: Vec<String> = read_sse(original)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    let replay = call(&app, KEY_A, &b, None).await;
    assert_eq!(cache_header(&replay), "hit");
    let replay: Vec<String> = read_sse(replay).await.into_iter().map(|e| e.data).collect();
    assert_eq!(replay, original, "same chunks, same usage, same [DONE]");
    assert_eq!(upstream.requests().len(), 1);
    // Without include_usage the replay leaves the usage chunk out, like the original would.
    let plain = call(&app, KEY_A, &body(true, 0.0), None).await;
    let plain: Vec<String> = read_sse(plain).await.into_iter().map(|e| e.data).collect();
    assert_eq!(plain.len(), original.len() - 1);
}

#[tokio::test]
async fn tenants_never_share_an_answer() {
    let upstream = MockUpstream::start().await.unwrap();
    let app = start(&upstream).await;
    assert_eq!(
        cache_header(&call(&app, KEY_A, &body(false, 0.0), None).await),
        "miss"
    );
    assert_eq!(
        cache_header(&call(&app, KEY_B, &body(false, 0.0), None).await),
        "miss"
    );
    assert_eq!(upstream.requests().len(), 2);
    assert_eq!(
        cache_header(&call(&app, KEY_B, &body(false, 0.0), None).await),
        "hit"
    );
}

#[tokio::test]
async fn cache_control_and_sampling_decide_what_is_cached() {
    let upstream = MockUpstream::start().await.unwrap();
    let app = start(&upstream).await;
    // no-store: answered, not stored.
    assert_eq!(
        cache_header(&call(&app, KEY_A, &body(false, 0.0), Some("no-store")).await),
        "miss"
    );
    assert_eq!(
        cache_header(&call(&app, KEY_A, &body(false, 0.0), None).await),
        "miss"
    );
    // Stored now; no-cache skips the lookup (and refreshes the entry).
    assert_eq!(
        cache_header(&call(&app, KEY_A, &body(false, 0.0), Some("no-cache")).await),
        "bypass"
    );
    assert_eq!(
        cache_header(&call(&app, KEY_A, &body(false, 0.0), None).await),
        "hit"
    );
    assert_eq!(upstream.requests().len(), 3);
    // Random sampling is never served from the cache.
    for _ in 0..2 {
        assert_eq!(
            cache_header(&call(&app, KEY_A, &body(false, 0.7), None).await),
            "bypass"
        );
    }
    assert_eq!(upstream.requests().len(), 5);
}

#[tokio::test]
async fn errors_and_cut_streams_are_not_stored() {
    let upstream = MockUpstream::start().await.unwrap();
    let app = start(&upstream).await;
    upstream.set_behavior(Behavior {
        fail: Some((
            500,
            json!({"error": {"message": "boom", "type": "server_error"}}),
        )),
        ..Behavior::default()
    });
    assert_eq!(
        call(&app, KEY_A, &body(false, 0.0), None).await.status(),
        502
    );
    // A stream cut by the client.
    upstream.set_behavior(Behavior {
        token_delay: Duration::from_millis(30),
        ..Behavior::default()
    });
    let resp = call(&app, KEY_A, &body(true, 0.0), None).await;
    let mut bytes = resp.bytes_stream();
    futures_util::StreamExt::next(&mut bytes)
        .await
        .unwrap()
        .unwrap();
    drop(bytes);
    assert!(upstream.wait_stream_dropped(Duration::from_secs(5)).await);
    // A stream the upstream breaks.
    upstream.set_behavior(Behavior {
        drop_after: Some(2),
        ..Behavior::default()
    });
    read_sse(call(&app, KEY_A, &body(true, 0.0), None).await).await;
    upstream.set_behavior(Behavior::default());
    let resp = call(&app, KEY_A, &body(false, 0.0), None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(cache_header(&resp), "miss", "nothing was stored before");
    assert_eq!(upstream.requests().len(), 4);
}
