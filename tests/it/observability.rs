//! Metrics, cost, the request log and the admin API, checked against known traffic.

#![expect(
    clippy::float_cmp,
    clippy::cast_precision_loss,
    reason = "metric samples here are small integer counts, exactly representable in f64"
)]

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::{Value, json};
use sluice::testkit::upstream::{Behavior, MockUpstream};

use crate::common::{TestApp, UPSTREAM_KEY, chat_body, read_sse, standard_config};

const PRICED: &str = "
[models.priced]
provider = \"mock\"
price = { input = \"2.50\", output = \"10.00\" }
";

fn cost(prompt: u64, completion: u64) -> Decimal {
    (Decimal::from(prompt) * Decimal::from_str("2.50").unwrap()
        + Decimal::from(completion) * Decimal::from(10))
        / Decimal::from(1_000_000)
}

async fn scrape(app: &TestApp) -> HashMap<String, f64> {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition");
    let mut out = HashMap::new();
    for s in scrape.samples {
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(h) => h.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => continue,
        };
        out.insert(format!("{}{{{}}}", s.metric, labels.join(",")), value);
    }
    out
}

#[tokio::test]
async fn metrics_and_cost_match_known_traffic() {
    let app = TestApp::start(&format!("{}{PRICED}", sluice::config::DEFAULT_CONFIG)).await;
    let (mut prompt, mut completion, mut total_cost) = (0, 0, Decimal::ZERO);
    for i in 0..3 {
        let resp = app
            .post(
                "/v1/chat/completions",
                &chat_body("priced", &format!("question number {i}"), false),
            )
            .await;
        let header = resp.headers()["x-sluice-cost-usd"]
            .to_str()
            .unwrap()
            .to_owned();
        let overhead: f64 = resp.headers()["x-sluice-overhead-ms"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(overhead >= 0.0);
        let body: Value = resp.json().await.unwrap();
        let (p, c) = (
            body["usage"]["prompt_tokens"].as_u64().unwrap(),
            body["usage"]["completion_tokens"].as_u64().unwrap(),
        );
        assert_eq!(
            Decimal::from_str(&header).unwrap(),
            cost(p, c),
            "exact decimal cost in the header"
        );
        prompt += p;
        completion += c;
        total_cost += cost(p, c);
    }
    for i in 0..2 {
        let mut body = chat_body("priced", &format!("streamed question {i}"), true);
        body["stream_options"] = json!({"include_usage": true});
        let events = read_sse(app.post("/v1/chat/completions", &body).await).await;
        let usage = &events[events.len() - 2].json()["usage"];
        let (p, c) = (
            usage["prompt_tokens"].as_u64().unwrap(),
            usage["completion_tokens"].as_u64().unwrap(),
        );
        prompt += p;
        completion += c;
        total_cost += cost(p, c);
    }
    app.wait_finished(5).await;
    let m = scrape(&app).await;
    let labels = "model=priced,provider=mock,route=/v1/chat/completions,status=200";
    assert_eq!(
        m[&format!("sluice_requests_total{{{labels}}}")],
        5.0,
        "{m:#?}"
    );
    assert_eq!(
        m["sluice_tokens_total{direction=input,model=priced}"],
        prompt as f64
    );
    assert_eq!(
        m["sluice_tokens_total{direction=output,model=priced}"],
        completion as f64
    );
    let cost_metric = m["sluice_cost_usd_total{model=priced}"];
    let expected: f64 = total_cost.to_string().parse().unwrap();
    assert!(
        (cost_metric - expected).abs() < 1e-12,
        "{cost_metric} vs {expected}"
    );
    assert_eq!(
        m["sluice_time_to_first_token_seconds_count{model=priced,provider=mock}"],
        2.0
    );
    assert_eq!(
        m["sluice_gateway_overhead_seconds_count{route=/v1/chat/completions}"],
        5.0
    );
    assert_eq!(m["sluice_inflight_requests{}"], 0.0);
}

#[tokio::test]
async fn anthropic_messages_are_priced_too() {
    let app = TestApp::start(&format!("{}{PRICED}", sluice::config::DEFAULT_CONFIG)).await;
    let resp = app
        .post("/v1/messages", &json!({"model": "priced", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    let header = resp.headers()["x-sluice-cost-usd"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = resp.json().await.unwrap();
    let (p, c) = (
        body["usage"]["input_tokens"].as_u64().unwrap(),
        body["usage"]["output_tokens"].as_u64().unwrap(),
    );
    assert_eq!(Decimal::from_str(&header).unwrap(), cost(p, c));
}

fn priced_upstream_config(upstream: &MockUpstream, extra: &str) -> String {
    // `gpt-4o-mini` is priced from the built-in table.
    format!(
        "{}\n[models.mini]\nprovider = \"up\"\nupstream = \"gpt-4o-mini\"\n{extra}",
        standard_config(&upstream.base_url(), "", "")
    )
}

#[tokio::test]
async fn a_stream_cut_by_the_client_is_still_counted_and_priced() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_behavior(Behavior {
        reply: vec![" tok".to_owned(); 1000],
        token_delay: Duration::from_millis(20),
        ..Behavior::default()
    });
    let app = TestApp::start(&priced_upstream_config(&upstream, "")).await;
    let resp = app
        .post("/v1/chat/completions", &chat_body("mini", "count me", true))
        .await;
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let mut events = eventsource_stream::Eventsource::eventsource(resp.bytes_stream());
    for _ in 0..5 {
        futures_util::StreamExt::next(&mut events)
            .await
            .unwrap()
            .unwrap();
    }
    drop(events);
    app.wait_finished(1).await;
    let (_dir, log) = app.stop().await;
    let record = log.unwrap().get(&id).unwrap().expect("recorded");
    assert!(record.output_tokens.unwrap() >= 4, "{record:?}");
    assert!(record.input_tokens.unwrap() > 0);
    assert!(Decimal::from_str(record.cost_usd.as_deref().unwrap()).unwrap() > Decimal::ZERO);
    assert!(
        record.timeline.iter().any(|e| e.name == "cut"),
        "{:?}",
        record.timeline
    );
}

#[tokio::test]
async fn streams_without_upstream_usage_are_counted_with_the_tokenizer() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_behavior(Behavior {
        send_usage: false,
        ..Behavior::default()
    });
    let app = TestApp::start(&priced_upstream_config(&upstream, "")).await;
    let resp = app
        .post("/v1/chat/completions", &chat_body("mini", "count me", true))
        .await;
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let events = read_sse(resp).await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    app.wait_finished(1).await;
    let (_dir, log) = app.stop().await;
    let record = log.unwrap().get(&id).unwrap().expect("recorded");
    let expected =
        sluice::usage::tokens::count_text("gpt-4o-mini", "Hello from the mock upstream.");
    assert_eq!(record.output_tokens, Some(expected));
    assert!(record.timeline.iter().any(|e| e.name == "done"));
}

#[tokio::test]
async fn the_request_log_survives_a_restart_and_the_admin_api_reads_it() {
    let upstream = MockUpstream::start().await.unwrap();
    let config = priced_upstream_config(
        &upstream,
        "[admin]\napi_key_env = \"SLUICE_TEST_UPSTREAM_KEY\"\n",
    );
    let app = TestApp::start(&config).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let resp = app
            .post(
                "/v1/chat/completions",
                &chat_body("mini", &format!("q{i}"), i == 2),
            )
            .await;
        ids.push(resp.headers()["x-request-id"].to_str().unwrap().to_owned());
        resp.bytes().await.unwrap();
    }
    let (status, _) = app
        .post_json(
            "/v1/chat/completions",
            &chat_body("no-such-model", "x", false),
        )
        .await;
    assert_eq!(status, 404);
    app.wait_finished(4).await;
    let (dir, _) = app.stop().await;

    let app = TestApp::start_in(&config, dir).await;
    let admin = |path: &str| app.client.get(app.url(path)).bearer_auth(UPSTREAM_KEY);
    let list: Value = admin("/admin/requests")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 4, "{list}");
    let only_404: Value = admin("/admin/requests?status=404")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(only_404["data"].as_array().unwrap().len(), 1);
    let one: Value = admin(&format!("/admin/requests/{}", ids[2]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["model"], "mini");
    assert_eq!(one["stream"], true);
    let names: Vec<&str> = one["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for step in ["received", "upstream_attempt", "first_token", "done"] {
        assert!(names.contains(&step), "{names:?}");
    }
    assert!(one["cost_usd"].as_str().is_some());

    let missing = admin("/admin/requests/nope").send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let anonymous = app
        .client
        .get(app.url("/admin/requests"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let wrong = app
        .client
        .get(app.url("/admin/requests"))
        .bearer_auth("sk-wrong-key-but-long-enough")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
}

#[tokio::test]
async fn the_admin_api_is_denied_without_a_configured_key() {
    let app = TestApp::start(sluice::config::DEFAULT_CONFIG).await;
    let resp = app
        .client
        .get(app.url("/admin/requests"))
        .bearer_auth("anything-at-all-1234")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "permission_error");
}

#[tokio::test]
async fn captured_bodies_are_redacted_and_kept_only_when_enabled() {
    let upstream = MockUpstream::start().await.unwrap();
    let secret = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789";
    for capture in [false, true] {
        let config = priced_upstream_config(
            &upstream,
            &format!("[request_log]\ncapture_bodies = {capture}\n"),
        );
        let app = TestApp::start(&config).await;
        let prompt = format!("here is my key {secret} please use it");
        let resp = app
            .post("/v1/chat/completions", &chat_body("mini", &prompt, true))
            .await;
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        read_sse(resp).await;
        app.wait_finished(1).await;
        let (_dir, log) = app.stop().await;
        let record = log.unwrap().get(&id).unwrap().expect("recorded");
        if capture {
            let request = record.request_body.expect("request body kept");
            assert!(
                request.contains("please use it") && !request.contains(secret),
                "{request}"
            );
            assert_eq!(
                record.response_body.as_deref(),
                Some("Hello from the mock upstream.")
            );
        } else {
            assert_eq!((record.request_body, record.response_body), (None, None));
        }
    }
}

#[tokio::test]
async fn unknown_model_names_do_not_become_metric_labels() {
    let app = TestApp::start(sluice::config::DEFAULT_CONFIG).await;
    for i in 0..20 {
        let (status, _) = app
            .post_json(
                "/v1/chat/completions",
                &chat_body(&format!("random-model-{i}"), "x", false),
            )
            .await;
        assert_eq!(status, 404);
    }
    app.wait_finished(20).await;
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !text.contains("random-model"),
        "client-chosen names leaked into labels"
    );
    let m = scrape(&app).await;
    assert_eq!(
        m["sluice_requests_total{model=none,provider=none,route=/v1/chat/completions,status=404}"],
        20.0
    );
}

/// Every thread of process `pid` with its scheduling policy (`/proc/<pid>/task/<tid>/stat` field 41:
/// 0 `SCHED_OTHER`, 3 `SCHED_BATCH`).
#[cfg(target_os = "linux")]
fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(task.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        let Ok(stat) = std::fs::read_to_string(task.join("stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        out.push((comm.trim().to_owned(), fields[41 - 3].parse().unwrap()));
    }
    out
}

/// The binary's background threads (telemetry thread, log writer, span export, request-log writer)
/// run as `SCHED_BATCH`, the request log's checkpoint thread as `SCHED_IDLE`, its request threads in
/// the ordinary class (`telemetry::sched_class`).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_binary_runs_its_background_threads_as_batch_and_its_request_threads_as_usual() {
    let receiver = sluice::testkit::otlp::OtlpReceiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, sluice::config::DEFAULT_CONFIG).unwrap();
    let endpoint = receiver.endpoint();
    let (mut child, addr, log) = crate::common::spawn_sluice_logging(
        &config,
        dir.path(),
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    )
    .await;
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .bearer_auth("sk-sluice-demo")
        .json(&chat_body("mock-gpt", "hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The access line is written through the telemetry thread: it exists once the line is out.
    loop {
        let record = log
            .recv_timeout(Duration::from_secs(10))
            .expect("the call's access line");
        if record["target"] == sluice::telemetry::ACCESS_TARGET {
            break;
        }
    }
    let threads = thread_policies(child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    let policy_of = |name: &str| -> Vec<u32> {
        threads
            .iter()
            .filter(|(comm, _)| comm == name)
            .map(|(_, policy)| *policy)
            .collect()
    };
    // Thread names as the kernel keeps them: 15 bytes.
    for background in [
        "sluice-telemetr",
        "sluice-log-writ",
        "sluice-reqlog",
        "OpenTelemetry.T",
    ] {
        assert_eq!(policy_of(background), [3], "{background}: {threads:?}");
    }
    assert_eq!(policy_of("sluice-walckpt"), [5], "{threads:?}");
    assert_eq!(policy_of("sluice"), [0], "main thread: {threads:?}");
    let workers = policy_of("tokio-rt-worker");
    assert!(
        !workers.is_empty() && workers.iter().all(|&p| p == 0),
        "{threads:?}"
    );
}
