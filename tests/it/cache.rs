//! The exact response cache: hits never reach the upstream, stream replays equal the original, tenants
//! never share, Cache-Control is honoured, and only complete, deterministic replies are stored.

use std::time::Duration;

use serde_json::{Value, json};
use sluice::testkit::upstream::{Behavior, MockUpstream};

use crate::common::{TestApp, read_sse, standard_config};

const KEY_A: &str = "sk-cache-key-a-0123456789";
const KEY_B: &str = "sk-cache-key-b-0123456789";
const KEY_C: &str = "sk-cache-key-c-0123456789";

fn sha(secret: &str) -> String {
    sluice::control::encode_hash(&sluice::control::keys::hash_secret(secret))
}

async fn start(upstream: &MockUpstream) -> TestApp {
    start_with(upstream, "").await
}

/// Keys a and b (cache on), c (exact tier off for it); `extra` is appended to the config.
async fn start_with(upstream: &MockUpstream, extra: &str) -> TestApp {
    let config = format!(
        "{}\n[auth]\nrequired = true\n[[auth.keys]]\nname = \"a\"\nsecret_sha256 = \"{}\"\n\
         [[auth.keys]]\nname = \"b\"\nsecret_sha256 = \"{}\"\n\
         [[auth.keys]]\nname = \"c\"\nsecret_sha256 = \"{}\"\ncache = {{ exact = false }}\n{extra}",
        standard_config(&upstream.base_url(), "", ""),
        sha(KEY_A),
        sha(KEY_B),
        sha(KEY_C),
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

/// The semantic tier with the deterministic hashing embedder, on for every model; the admin API on;
/// a price for `gpt` (1,000 USD per million tokens each way) so savings are counted.
const SEMANTIC: &str = "[cache.semantic]\nembedder = \"hashing\"\nenabled = true\n\
    [admin]\napi_key_env = \"SLUICE_TEST_UPSTREAM_KEY\"\n\
    [models.gpt.price]\ninput = \"1000\"\noutput = \"1000\"\n";

fn ask(text: &str) -> Value {
    json!({"model": "gpt", "temperature": 0, "messages": [{"role": "user", "content": text}]})
}

async fn metrics(app: &TestApp) -> String {
    app.client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the sample `name` exactly (labels included), as written, or `absent`.
fn sample(metrics: &str, name: &str) -> String {
    metrics
        .lines()
        .find_map(|l| Some(l.strip_prefix(name)?.strip_prefix(' ')?.trim().to_owned()))
        .unwrap_or_else(|| "absent".to_owned())
}

#[tokio::test]
async fn a_near_duplicate_is_a_semantic_hit_within_its_tenant_only() {
    let upstream = MockUpstream::start().await.unwrap();
    let app = start_with(&upstream, SEMANTIC).await;
    let original = call(&app, KEY_A, &ask("What is the capital of Austria?"), None).await;
    assert_eq!(cache_header(&original), "miss");
    let original: Value = original.json().await.unwrap();
    let near = call(&app, KEY_A, &ask("what is the capital of austria"), None).await;
    assert_eq!(cache_header(&near), "semantic-hit");
    let similarity: f64 = near.headers()["x-sluice-cache-similarity"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((0.8..=1.0).contains(&similarity), "{similarity}");
    assert_eq!(near.json::<Value>().await.unwrap(), original);
    assert_eq!(upstream.requests().len(), 1, "served without the upstream");
    // Another tenant asking the same never gets it.
    let other = call(&app, KEY_B, &ask("what is the capital of austria"), None).await;
    assert_eq!(cache_header(&other), "miss");
    // An unrelated question is not a hit.
    let unrelated = call(
        &app,
        KEY_A,
        &ask("How do I reverse a list in Python?"),
        None,
    )
    .await;
    assert_eq!(cache_header(&unrelated), "miss");
    assert_eq!(upstream.requests().len(), 3);
    // A near-miss that needs another answer is refused by the guards, whatever the similarity.
    let swapped = call(&app, KEY_A, &ask("What is the capital of Australia?"), None).await;
    assert_eq!(cache_header(&swapped), "miss");
    assert_ne!(swapped.json::<Value>().await.unwrap(), original);
    assert_eq!(upstream.requests().len(), 4);
    let m = metrics(&app).await;
    assert_eq!(
        sample(
            &m,
            "sluice_cache_lookups_total{tier=\"semantic\",result=\"hit\"}"
        ),
        "1"
    );
    assert_eq!(
        sample(&m, "sluice_cache_entries{tier=\"semantic\"}"),
        "4",
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "sluice_cache_semantic_rejections_total{reason=\"entities\"}"
        ),
        "1",
        "{m}"
    );
    // The hit is recorded under its model, served by `cache`, and its original cost is saved.
    app.wait_finished(5).await;
    let m = metrics(&app).await;
    assert_eq!(
        sample(
            &m,
            "sluice_requests_total{route=\"/v1/chat/completions\",model=\"gpt\",provider=\"cache\",status=\"200\"}"
        ),
        "1",
        "{m}"
    );
    let usage = &original["usage"];
    let cost = (usage["prompt_tokens"].as_f64().unwrap()
        + usage["completion_tokens"].as_f64().unwrap())
        * 1000.0
        / 1e6;
    let saved: f64 = sample(&m, "sluice_cache_saved_usd_total{model=\"gpt\"}")
        .parse()
        .unwrap();
    assert!((saved - cost).abs() < 1e-9, "saved {saved}, cost {cost}");
    assert!(
        m.lines().any(
            |l| l.starts_with("sluice_cache_lookup_duration_seconds_count{tier=\"semantic\"} ")
        )
    );
}

#[tokio::test]
async fn a_regenerate_after_a_semantic_hit_is_learned_and_stored_fresh() {
    let upstream = MockUpstream::start().await.unwrap();
    let app = start_with(&upstream, SEMANTIC).await;
    call(&app, KEY_A, &ask("What is the capital of Austria?"), None).await;
    let variant = ask("what is the capital of austria");
    assert_eq!(
        cache_header(&call(&app, KEY_A, &variant, None).await),
        "semantic-hit"
    );
    // The caller did not like it and asks again, bypassing the cache.
    let fresh = call(&app, KEY_A, &variant, Some("no-cache")).await;
    assert_eq!(cache_header(&fresh), "bypass");
    assert_eq!(upstream.requests().len(), 2);
    let m = metrics(&app).await;
    assert_eq!(
        sample(&m, "sluice_cache_semantic_learned_total"),
        "1",
        "{m}"
    );
    // Its own fresh answer is what it gets from now on.
    let fresh: Value = fresh.json().await.unwrap();
    let again = call(&app, KEY_A, &variant, None).await;
    assert_eq!(cache_header(&again), "hit");
    assert_eq!(again.json::<Value>().await.unwrap(), fresh);
}

#[tokio::test]
async fn switches_per_key_and_per_model_and_bad_cache_headers() {
    let upstream = MockUpstream::start().await.unwrap();
    let app = start_with(&upstream, "[models.claude.cache]\nexact = false\n").await;
    // Key c has the cache off: no lookup, no header.
    for _ in 0..2 {
        let resp = call(&app, KEY_C, &body(false, 0.0), None).await;
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().get("x-sluice-cache").is_none());
    }
    assert_eq!(upstream.requests().len(), 2);
    // Model claude has it off for everyone.
    let claude = json!({"model": "claude", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..2 {
        assert!(
            call(&app, KEY_A, &claude, None)
                .await
                .headers()
                .get("x-sluice-cache")
                .is_none()
        );
    }
    assert_eq!(upstream.requests().len(), 4);
    // A random-sampling request is cached when the caller forces it.
    let random = body(false, 0.9);
    for expected in ["miss", "hit"] {
        let resp = app
            .client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(KEY_A)
            .header("x-sluice-cache-force", "true")
            .json(&random)
            .send()
            .await
            .unwrap();
        assert_eq!(cache_header(&resp), expected);
    }
    // Unreadable cache headers are the client's mistake, named.
    for (header, value) in [
        ("x-sluice-cache-ttl", "soon"),
        ("x-sluice-cache-force", "maybe"),
    ] {
        let resp = app
            .client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(KEY_A)
            .header(header, value)
            .json(&body(false, 0.0))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{header}: {value}");
        let err: Value = resp.json().await.unwrap();
        assert!(
            err["error"]["message"].as_str().unwrap().contains(header),
            "{err}"
        );
    }
    assert_eq!(upstream.requests().len(), 5);
}

#[tokio::test]
async fn anthropic_messages_are_cached_and_replayed_in_their_own_shape() {
    let upstream = MockUpstream::start().await.unwrap();
    let app = start(&upstream).await;
    let message = |stream: bool| {
        json!({"model": "claude", "max_tokens": 50, "temperature": 0, "stream": stream,
               "messages": [{"role": "user", "content": "What is the capital of Austria?"}]})
    };
    let post = |body: Value| {
        app.client
            .post(app.url("/v1/messages"))
            .header("x-api-key", KEY_A)
            .json(&body)
            .send()
    };
    let first = post(message(false)).await.unwrap();
    assert_eq!(cache_header(&first), "miss");
    let first: Value = first.json().await.unwrap();
    let second = post(message(false)).await.unwrap();
    assert_eq!(cache_header(&second), "hit");
    assert_eq!(second.json::<Value>().await.unwrap(), first);
    // Streamed: the stored reply as Anthropic events, message_start to message_stop.
    let streamed = post(message(true)).await.unwrap();
    assert_eq!(cache_header(&streamed), "hit");
    let events = read_sse(streamed).await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    let text: String = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(&e.data).ok())
        .filter_map(|v| v["delta"]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, first["content"][0]["text"].as_str().unwrap());
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test]
async fn text_completions_are_cached_whole_and_streamed() {
    let upstream = MockUpstream::start().await.unwrap();
    let app = start(&upstream).await;
    let completion = |stream: bool| json!({"model": "gpt", "prompt": "Say hello", "temperature": 0, "stream": stream});
    let post = |body: Value| {
        app.client
            .post(app.url("/v1/completions"))
            .bearer_auth(KEY_A)
            .json(&body)
            .send()
    };
    let first = post(completion(false)).await.unwrap();
    assert_eq!(cache_header(&first), "miss");
    let first: Value = first.json().await.unwrap();
    let second = post(completion(false)).await.unwrap();
    assert_eq!(cache_header(&second), "hit");
    assert_eq!(second.json::<Value>().await.unwrap(), first);
    let streamed = post(completion(true)).await.unwrap();
    assert_eq!(cache_header(&streamed), "hit");
    let events = read_sse(streamed).await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let text: String = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(&e.data).ok())
        .filter_map(|v| v["choices"][0]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, first["choices"][0]["text"].as_str().unwrap());
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test]
async fn the_admin_api_reports_and_purges_by_key_and_model() {
    let upstream = MockUpstream::start().await.unwrap();
    let app = start_with(&upstream, SEMANTIC).await;
    let admin = |m: reqwest::Method, path: &str| {
        app.client
            .request(m, app.url(path))
            .bearer_auth(crate::common::UPSTREAM_KEY)
    };
    call(&app, KEY_A, &ask("What is the capital of Austria?"), None).await;
    call(&app, KEY_B, &ask("What is the capital of Austria?"), None).await;
    let stats: Value = admin(reqwest::Method::GET, "/admin/cache")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["entries"], 2, "{stats}");
    assert_eq!(stats["semantic"]["entries"], 2, "{stats}");
    assert_eq!(stats["semantic"]["embedder"], "hashing-256");
    // Without the admin key: denied.
    let denied = app
        .client
        .get(app.url("/admin/cache"))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    let purged: Value = admin(reqwest::Method::DELETE, "/admin/cache?key=cfg_a")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(purged["purged"]["exact"], 1, "{purged}");
    assert_eq!(purged["purged"]["semantic"], 1, "{purged}");
    assert_eq!(
        cache_header(&call(&app, KEY_A, &ask("What is the capital of Austria?"), None).await),
        "miss"
    );
    assert_eq!(
        cache_header(&call(&app, KEY_B, &ask("What is the capital of Austria?"), None).await),
        "hit"
    );
    let purged: Value = admin(reqwest::Method::DELETE, "/admin/cache?model=gpt")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(purged["purged"]["exact"], 2, "{purged}");
    let bad = admin(reqwest::Method::DELETE, "/admin/cache?tenant=x")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}
