//! RAG evaluation end to end: `POST /v1/evaluations/rag` and online sampling of chat traffic, judged by
//! the scripted loopback judge (`testkit::judge`), whose verdicts follow word overlap, so every score
//! below is known in advance.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use sluice::testkit::judge::{Mode, ScriptedJudge};
use sluice::testkit::upstream::MockUpstream;

use crate::common::{TestApp, UPSTREAM_KEY, chat_body, read_sse, standard_config};

/// The standard config plus a `judge` model on the scripted judge, priced so its cost shows.
pub fn rag_config(upstream: &str, judge: &str, evaluation: &str) -> String {
    format!(
        r#"{}
[providers.judge]
kind = "openai"
base_url = "{judge}"
api_key_env = "SLUICE_TEST_UPSTREAM_KEY"

[models.judge]
provider = "judge"
price = {{ input = "1.00", output = "2.00" }}

[admin]
api_key_env = "SLUICE_TEST_UPSTREAM_KEY"

[evaluation]
judge_model = "judge"
embedding_model = "hashing"
embedding_dims = 256
{evaluation}
"#,
        standard_config(upstream, "", "")
    )
}

async fn start(evaluation: &str) -> (TestApp, ScriptedJudge, MockUpstream) {
    let judge = ScriptedJudge::start().await.unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let evaluation = if evaluation.contains("judge_timeout") {
        evaluation.to_owned()
    } else {
        format!("judge_timeout = \"1s\"\n{evaluation}")
    };
    let app = TestApp::start(&rag_config(
        &upstream.base_url(),
        &judge.base_url(),
        &evaluation,
    ))
    .await;
    (app, judge, upstream)
}

fn sample() -> Value {
    json!({
        "question": "What is the capital of France?",
        "contexts": [
            "Paris is the capital of France. It has about two million residents.",
            "Bananas are yellow fruit rich in potassium."
        ],
        "answer": "Paris is the capital of France. The Eiffel Tower was built in 1889.",
        "reference": "Paris is the capital of France."
    })
}

fn close(v: &Value, want: f64) -> bool {
    v.as_f64().is_some_and(|x| (x - want).abs() < 1e-9)
}

#[tokio::test]
async fn every_metric_is_scored_with_its_intermediates_and_cost() {
    let (app, judge, _up) = start("").await;
    let mut body = sample();
    body["metrics"] = json!([
        "faithfulness",
        "answer_relevancy",
        "context_precision",
        "context_relevance",
        "context_recall",
        "groundedness"
    ]);
    let (status, out) = app.post_json("/v1/evaluations/rag", &body).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["object"], "rag.evaluation");
    assert_eq!(out["errors"], json!({}), "{out}");
    let s = &out["scores"];
    // One of two statements is in the context.
    assert!(close(&s["faithfulness"], 0.5), "{out}");
    // The only useful chunk is ranked first.
    assert!(close(&s["context_precision"], 1.0), "{out}");
    // Chunk 1 rated 3/3, chunk 2 0/3.
    assert!(close(&s["context_relevance"], 0.5), "{out}");
    assert!(close(&s["context_recall"], 1.0), "{out}");
    assert!(close(&s["groundedness"], 0.5), "{out}");
    let relevancy = s["answer_relevancy"].as_f64().unwrap();
    assert!(relevancy > 0.0 && relevancy <= 1.0 + 1e-6, "{out}");

    let statements = &out["details"]["faithfulness"]["statements"];
    assert_eq!(statements[0]["text"], "Paris is the capital of France.");
    assert_eq!(statements[0]["verdict"], 1);
    assert_eq!(statements[1]["verdict"], 0);
    assert!(statements[1]["reason"].as_str().unwrap().contains("0%"));
    assert_eq!(
        out["details"]["context_precision"]["judged_against"],
        "reference"
    );
    assert_eq!(
        out["details"]["answer_relevancy"]["generated_questions"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    // statements + verdicts + questions + usefulness + relevance + recall + groundedness.
    assert_eq!(out["judge"]["calls"], 7, "{out}");
    assert_eq!(judge.calls(), 7);
    assert!(out["judge"]["cost_usd"].as_f64().unwrap() > 0.0, "{out}");
    assert!(judge.temperatures().iter().all(|t| *t == Some(0.0)));

    // The same request again: every judgment comes from the cache.
    let (_, again) = app.post_json("/v1/evaluations/rag", &body).await;
    assert_eq!(again["scores"], out["scores"]);
    assert_eq!(again["judge"]["calls"], 0, "{again}");
    assert_eq!(again["judge"]["cached"], 7, "{again}");
    assert_eq!(judge.calls(), 7);
}

#[tokio::test]
async fn an_answer_without_statements_scores_null_not_zero() {
    let (app, _judge, _up) = start("").await;
    let mut body = sample();
    body["answer"] = json!("I don't know.");
    body["metrics"] = json!(["faithfulness", "answer_relevancy"]);
    let (status, out) = app.post_json("/v1/evaluations/rag", &body).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["scores"]["faithfulness"], Value::Null, "{out}");
    assert!(
        out["scores"]
            .as_object()
            .unwrap()
            .contains_key("faithfulness")
    );
    assert_eq!(out["details"]["faithfulness"]["statements"], json!([]));
    // Noncommittal: answer relevancy is 0 by definition, even though the judge generated no question.
    assert_eq!(
        out["details"]["answer_relevancy"]["generated_questions"],
        json!([]),
        "{out}"
    );
    assert_eq!(
        out["details"]["answer_relevancy"]["noncommittal"], 1,
        "{out}"
    );
    assert!(close(&out["scores"]["answer_relevancy"], 0.0), "{out}");
}

#[tokio::test]
async fn judge_failures_are_clear_per_metric_errors() {
    let (app, judge, _up) = start("").await;
    judge.set_mode(Some("faithfulness"), Mode::Malformed);
    judge.set_mode(Some("context_relevance"), Mode::Hang);
    judge.set_mode(Some("groundedness"), Mode::RateLimited);
    let mut body = sample();
    body["metrics"] = json!([
        "faithfulness",
        "context_precision",
        "context_relevance",
        "groundedness"
    ]);
    let (status, out) = app.post_json("/v1/evaluations/rag", &body).await;
    assert_eq!(status, 200, "{out}");
    let errors = &out["errors"];
    assert!(
        errors["faithfulness"]
            .as_str()
            .unwrap()
            .starts_with("malformed judge output"),
        "{out}"
    );
    assert_eq!(errors["context_relevance"], "judge timed out", "{out}");
    assert!(
        errors["groundedness"]
            .as_str()
            .unwrap()
            .starts_with("judge rate limited (429)"),
        "{out}"
    );
    // No silent 0: a failed metric has no score at all; the healthy one still has its score.
    let scores = out["scores"].as_object().unwrap();
    assert!(!scores.contains_key("faithfulness"));
    assert!(!scores.contains_key("context_relevance"));
    assert!(!scores.contains_key("groundedness"));
    assert!(close(&out["scores"]["context_precision"], 1.0), "{out}");
    // The statements step succeeded before the verdicts failed: it is kept for audit.
    assert_eq!(
        out["details"]["faithfulness"]["statements"][0],
        "Paris is the capital of France."
    );
    app.assert_healthy().await;
}

#[tokio::test]
async fn batches_keep_their_order() {
    let (app, _judge, _up) = start("").await;
    let mut other = sample();
    other["answer"] = json!("Bananas are yellow fruit.");
    let body = json!({
        "items": [sample(), other],
        "metrics": ["faithfulness"],
    });
    let (status, out) = app.post_json("/v1/evaluations/rag", &body).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["object"], "list");
    assert_eq!(out["data"][0]["index"], 0);
    assert!(
        close(&out["data"][0]["scores"]["faithfulness"], 0.5),
        "{out}"
    );
    assert!(
        close(&out["data"][1]["scores"]["faithfulness"], 1.0),
        "{out}"
    );
    assert_eq!(out["judge"]["calls"], 4);
}

#[tokio::test]
async fn client_mistakes_are_400s_naming_the_field() {
    let (app, _judge, _up) = start("max_batch = 2\nmax_sample_bytes = 2000\n").await;
    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = sample();
        f(&mut b);
        b
    };
    let cases: Vec<(Value, &str)> = vec![
        (
            with(&|b| {
                b.as_object_mut().unwrap().remove("question");
            }),
            "question",
        ),
        (with(&|b| b["answer"] = json!(7)), "answer"),
        (with(&|b| b["contexts"] = json!("one chunk")), "contexts"),
        (with(&|b| b["contexts"] = json!([])), "contexts"),
        (with(&|b| b["contexts"] = json!(["ok", 3])), "contexts[1]"),
        (
            with(&|b| b["metrics"] = json!(["faithfulness", "vibes"])),
            "metrics",
        ),
        (with(&|b| b["metrics"] = json!([])), "metrics"),
        (with(&|b| b["colour"] = json!("red")), "colour"),
        (
            with(&|b| {
                b.as_object_mut().unwrap().remove("reference");
                b["metrics"] = json!(["context_recall"]);
            }),
            "reference",
        ),
        (json!({"items": [sample(), sample(), sample()]}), "items"),
        (json!({"items": []}), "items"),
        (
            json!({"items": [sample(), {"question": "q", "answer": "a"}]}),
            "items[1].contexts",
        ),
        (with(&|b| b["judge_model"] = json!(5)), "judge_model"),
        // An unknown judge is named as the field the request sent, not `model`.
        (with(&|b| b["judge_model"] = json!("nope")), "judge_model"),
        (
            json!({"items": [sample(), with(&|b| b["answer"] = json!("x".repeat(2000)))]}),
            "items[1]",
        ),
    ];
    for (body, param) in cases {
        let (status, out) = app.post_json("/v1/evaluations/rag", &body).await;
        assert_eq!(status, 400, "{param}: {out}");
        assert_eq!(out["error"]["type"], "invalid_request_error", "{out}");
        assert_eq!(out["error"]["param"], param, "{out}");
        assert!(
            out["error"]["message"].as_str().unwrap().contains(param),
            "{out}"
        );
    }
    // One sample over max_sample_bytes: the whole body is the sample, so no field is named.
    let (status, out) = app
        .post_json(
            "/v1/evaluations/rag",
            &with(&|b| b["contexts"] = json!(["y".repeat(2000)])),
        )
        .await;
    assert_eq!(status, 400, "{out}");
    assert_eq!(out["error"]["param"], Value::Null, "{out}");
    assert!(
        out["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 2000"),
        "{out}"
    );
    // At the limit it is evaluated.
    let mut at = sample();
    let size = |b: &Value| {
        ["question", "answer", "reference"]
            .iter()
            .map(|f| b[f].as_str().unwrap().len())
            .sum::<usize>()
            + b["contexts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().len())
                .sum::<usize>()
    };
    let pad = 2000 - size(&at);
    at["contexts"] = json!([
        at["contexts"][0],
        "z".repeat(pad + at["contexts"][1].as_str().unwrap().len())
    ]);
    assert_eq!(size(&at), 2000);
    at["metrics"] = json!(["context_relevance"]);
    let (status, out) = app.post_json("/v1/evaluations/rag", &at).await;
    assert_eq!(status, 200, "{out}");
    let resp = app
        .client
        .post(app.url("/v1/evaluations/rag"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn without_a_judge_the_api_says_so() {
    let upstream = MockUpstream::start().await.unwrap();
    let app = TestApp::start(&standard_config(&upstream.base_url(), "", "")).await;
    let (status, out) = app.post_json("/v1/evaluations/rag", &sample()).await;
    assert_eq!(status, 400, "{out}");
    assert_eq!(out["error"]["param"], "judge_model");
}

/// Parsed `/metrics` samples: `name{k=v,...}` (labels sorted) to value (histograms: their count).
pub async fn scrape(app: &TestApp) -> HashMap<String, f64> {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
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

fn rag_chat(stream: bool) -> Value {
    let mut body = chat_body("gpt", "Who sent this greeting?", stream);
    body["sluice"] = json!({"rag": {"contexts": [
        "The mock upstream sends a greeting: Hello from the mock upstream.",
        "Unrelated text about bananas."
    ]}});
    body
}

#[tokio::test]
async fn sampled_chat_traffic_is_evaluated_off_the_request_path() {
    let (app, judge, upstream) = start("sample_rate = 1.0\n").await;
    let resp = app.post("/v1/chat/completions", &rag_chat(false)).await;
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let streamed = app.post("/v1/chat/completions", &rag_chat(true)).await;
    assert_eq!(streamed.status(), 200);
    let text = crate::common::chat_text(&read_sse(streamed).await);
    assert_eq!(text, "Hello from the mock upstream.");
    assert!(
        app.state
            .rag
            .wait_evaluated(2, Duration::from_secs(10))
            .await,
        "online evaluations did not finish"
    );
    // The extension never reaches the upstream.
    for r in upstream.requests() {
        assert!(r.body.get("sluice").is_none(), "{}", r.body);
    }
    // Both requests asked the same question with the same contexts and got the same answer: whether the
    // two evaluations run one after the other (cache hits) or at once (online_concurrency 2: identical
    // misses share one call), the judge is asked each judgment once (statements, verdicts, questions,
    // usefulness, relevance: five calls). Deterministic either way.
    assert_eq!(judge.calls(), 5);
    let m = scrape(&app).await;
    for metric in [
        "faithfulness",
        "context_precision",
        "context_relevance",
        "answer_relevancy",
    ] {
        let key =
            format!("sluice_rag_score{{metric={metric},model=gpt,route=/v1/chat/completions}}");
        assert_eq!(m.get(&key), Some(&2.0), "{key}: {m:?}");
    }
    assert_eq!(m.get("sluice_rag_evaluations_total{}"), Some(&2.0), "{m:?}");
    for reason in ["queue_full", "too_large"] {
        let key = format!("sluice_rag_shed_total{{reason={reason}}}");
        assert_eq!(m.get(&key), Some(&0.0), "{key}: {m:?}");
    }
    // Judge calls are recorded like any call, under the `internal` route.
    let judge_calls = m
        .iter()
        .filter(|(k, _)| {
            k.starts_with("sluice_requests_total{")
                && k.contains("model=judge")
                && k.contains("route=internal")
        })
        .map(|(_, v)| *v)
        .sum::<f64>();
    assert!((judge_calls - 5.0).abs() < f64::EPSILON, "{m:?}");
    assert!(m["sluice_cost_usd_total{model=judge}"] > 0.0, "{m:?}");
    // The request log shows the request with its scores, and (bodies not captured) no content.
    app.wait_finished(2).await;
    let one = logged(&app, &id).await;
    let faithfulness = one["rag"]["scores"]["faithfulness"].as_f64().unwrap();
    assert!((faithfulness - 1.0).abs() < 1e-9, "{one}");
    assert_eq!(one["rag"]["judge_model"], "judge");
    assert!(one["rag"].get("details").is_none(), "{one}");
    assert!(!one["rag"].to_string().contains("Hello from"), "{one}");
}

/// `GET /admin/requests/{id}` once the request log has the request.
async fn logged(app: &TestApp, id: &str) -> Value {
    let lookup = async {
        loop {
            let resp = app
                .client
                .get(app.url(&format!("/admin/requests/{id}")))
                .bearer_auth(UPSTREAM_KEY)
                .send()
                .await
                .unwrap();
            if resp.status() == 200 {
                break resp.json::<Value>().await.unwrap();
            }
            // The request log writer batches records; wait for its flush.
            assert_eq!(resp.status(), 404);
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), lookup)
        .await
        .expect("the request reached the request log")
}

#[tokio::test]
async fn captured_online_details_are_stored_redacted() {
    let (app, _judge, _up) =
        start("sample_rate = 1.0\n\n[request_log]\ncapture_bodies = true\n").await;
    let mut body = rag_chat(false);
    body["messages"][0]["content"] =
        json!("Who sent this greeting? My api_key=sk-abcdefghijklmnopqrstuvwxyz0123456789");
    let resp = app.post("/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(
        app.state
            .rag
            .wait_evaluated(1, Duration::from_secs(10))
            .await
    );
    app.wait_finished(1).await;
    let one = logged(&app, &id).await;
    let details = &one["rag"]["details"];
    assert_eq!(
        details["faithfulness"]["statements"][0]["text"], "Hello from the mock upstream.",
        "{one}"
    );
    assert!(
        !one["rag"]
            .to_string()
            .contains("sk-abcdefghijklmnopqrstuvwxyz"),
        "{one}"
    );
}

#[tokio::test]
async fn a_malformed_extension_is_a_400_and_a_full_queue_sheds() {
    let (app, judge, _up) = start(
        "sample_rate = 1.0\nqueue_capacity = 1\nonline_concurrency = 1\njudge_timeout = \"60s\"\n",
    )
    .await;
    let mut bad = rag_chat(false);
    bad["sluice"]["rag"]["contexts"] = json!([1]);
    let (status, out) = app.post_json("/v1/chat/completions", &bad).await;
    assert_eq!(status, 400);
    assert_eq!(out["error"]["param"], "sluice.rag.contexts[0]");
    // Any other key of `sluice` is a mistake, not something to send upstream.
    let mut unknown = rag_chat(false);
    unknown["sluice"]["colour"] = json!("red");
    let (status, out) = app.post_json("/v1/chat/completions", &unknown).await;
    assert_eq!(status, 400, "{out}");
    assert_eq!(out["error"]["param"], "sluice.colour", "{out}");
    let mut alone = chat_body("gpt", "hi", false);
    alone["sluice"] = json!({"session": "x"});
    let (status, out) = app.post_json("/v1/chat/completions", &alone).await;
    assert_eq!(status, 400, "{out}");
    assert_eq!(out["error"]["param"], "sluice.session", "{out}");
    // The judge hangs: one evaluation runs, one waits for the worker, one sits in the queue; the rest
    // are shed (at least 2 of 5), and the chat answers are not delayed by any of it.
    judge.set_mode(None, Mode::Hang);
    for _ in 0..5 {
        let resp = app.post("/v1/chat/completions", &rag_chat(false)).await;
        assert_eq!(resp.status(), 200);
    }
    let m = scrape(&app).await;
    let shed = m["sluice_rag_shed_total{reason=queue_full}"];
    assert!(shed >= 2.0, "{m:?}");
    assert_eq!(
        m.get("sluice_rag_shed_total{reason=too_large}"),
        Some(&0.0),
        "{m:?}"
    );
}

async fn create_key(app: &TestApp, body: Value) -> (String, String) {
    app.create_key(UPSTREAM_KEY, body).await
}

async fn evaluate_as(app: &TestApp, secret: &str, body: &Value) -> (u16, Value) {
    let resp = app
        .client
        .post(app.url("/v1/evaluations/rag"))
        .bearer_auth(secret)
        .json(body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// The key's spend once nothing is reserved any more (the request's admission settles when it ends).
async fn settled_spend(app: &TestApp, id: &str) -> Value {
    let poll = async {
        loop {
            let key: Value = app
                .client
                .get(app.url(&format!("/admin/keys/{id}")))
                .bearer_auth(UPSTREAM_KEY)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if key["spend"]["reserved_usd"] == "0" {
                break key["spend"].clone();
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the evaluation's admission settled")
}

#[tokio::test]
async fn evaluations_are_admitted_and_charged_against_the_callers_key() {
    let (app, judge, _up) = start("").await;
    let mut body = sample();
    body["metrics"] = json!(["faithfulness", "context_relevance"]);
    // rpm = 1: one evaluation, then 429; its judge calls are charged to the key's budget.
    let (id, secret) = create_key(
        &app,
        json!({"name": "eval", "limits": {"rpm": 1}, "budget": {"usd": "10", "period": "total"}}),
    )
    .await;
    let (status, out) = evaluate_as(&app, &secret, &body).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["judge"]["calls"], 3, "{out}");
    let cost = out["judge"]["cost_usd"].as_f64().unwrap();
    assert!(cost > 0.0, "{out}");
    let settled = settled_spend(&app, &id).await;
    let spent: f64 = settled["spent_usd"].as_str().unwrap().parse().unwrap();
    assert!(
        (spent - cost).abs() < 1e-9,
        "spent {settled} vs judge cost {out}"
    );
    let (status, out) = evaluate_as(&app, &secret, &body).await;
    assert_eq!(status, 429, "{out}");
    assert_eq!(judge.calls(), 3, "a refused evaluation calls no judge");

    // A budget smaller than what the evaluation reserves refuses it up front.
    let (_, poor) = create_key(
        &app,
        json!({"name": "poor", "budget": {"usd": "0.001", "period": "total"}}),
    )
    .await;
    let (status, out) = evaluate_as(&app, &poor, &body).await;
    assert_eq!(status, 429, "{out}");
    assert_eq!(out["error"]["code"], "insufficient_quota", "{out}");
    assert_eq!(judge.calls(), 3);
    // Another tenant evaluating the same text gets no cached judgment of the first one's.
    let (_, other) = create_key(&app, json!({"name": "other"})).await;
    let (status, out) = evaluate_as(&app, &other, &body).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["judge"]["cached"], 0, "{out}");
    assert_eq!(out["judge"]["calls"], 3, "{out}");
    let (_, again) = evaluate_as(&app, &other, &body).await;
    assert_eq!(again["judge"]["cached"], 3, "{again}");
    let m = scrape(&app).await;
    assert_eq!(
        m.get("sluice_ratelimit_rejections_total{limit=requests,scope=key}"),
        Some(&1.0),
        "{m:?}"
    );
}

#[tokio::test]
async fn malformed_replies_are_not_cached_and_identical_judgments_share_one_call() {
    let (app, judge, _up) = start("").await;
    let mut body = sample();
    body["metrics"] = json!(["context_relevance"]);
    judge.set_mode(Some("context_relevance"), Mode::Malformed);
    let (_, out) = app.post_json("/v1/evaluations/rag", &body).await;
    assert!(out["errors"]["context_relevance"].is_string(), "{out}");
    // The judge recovers: the malformed reply was not cached, so it is asked again.
    judge.set_mode(Some("context_relevance"), Mode::Normal);
    let (_, out) = app.post_json("/v1/evaluations/rag", &body).await;
    assert!(close(&out["scores"]["context_relevance"], 0.5), "{out}");
    assert_eq!(out["judge"]["calls"], 1, "{out}");
    assert_eq!(judge.calls(), 2);
    // Two identical samples in one batch run at once: one judge call each step, the twin waits for it.
    let twin = json!({"items": [sample(), sample()], "metrics": ["faithfulness"]});
    let (status, out) = app.post_json("/v1/evaluations/rag", &twin).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["judge"]["calls"], 2, "{out}");
    assert_eq!(out["judge"]["cached"], 2, "{out}");
    assert_eq!(judge.calls(), 4);
}

#[tokio::test]
async fn a_saturated_judge_fails_waiting_metrics_as_busy_within_the_timeout() {
    let (app, judge, _up) = start("max_judge_calls = 1\njudge_timeout = \"1s\"\n").await;
    judge.set_mode(None, Mode::Hang);
    let mut body = sample();
    body["metrics"] = json!(["context_relevance", "context_precision"]);
    let started = std::time::Instant::now();
    let (status, out) = app.post_json("/v1/evaluations/rag", &body).await;
    assert_eq!(status, 200, "{out}");
    let mut errors: Vec<&str> = out["errors"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap())
        .collect();
    errors.sort_unstable();
    assert_eq!(
        errors,
        [
            "judge busy: no judge slot free within judge_timeout",
            "judge timed out"
        ],
        "{out}"
    );
    // One deadline for the wait and the call: both fail after about one judge_timeout, not two.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn answer_relevancy_without_an_embedder_is_refused_up_front() {
    let judge = ScriptedJudge::start().await.unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let config = rag_config(&upstream.base_url(), &judge.base_url(), "")
        .replace("embedding_model = \"hashing\"\n", "");
    let app = TestApp::start(&config).await;
    let mut body = sample();
    body["metrics"] = json!(["faithfulness", "answer_relevancy"]);
    let (status, out) = app.post_json("/v1/evaluations/rag", &body).await;
    assert_eq!(status, 400, "{out}");
    assert_eq!(out["error"]["param"], "metrics", "{out}");
    assert!(
        out["error"]["message"]
            .as_str()
            .unwrap()
            .contains("embedding_model"),
        "{out}"
    );
    assert_eq!(judge.calls(), 0, "refused before any judge call");
    // Without `metrics`, the defaults leave it out.
    body.as_object_mut().unwrap().remove("metrics");
    let (status, out) = app.post_json("/v1/evaluations/rag", &body).await;
    assert_eq!(status, 200, "{out}");
    assert!(out["scores"].get("answer_relevancy").is_none(), "{out}");
    assert!(out["errors"].get("answer_relevancy").is_none(), "{out}");
}

#[tokio::test]
async fn answer_relevancy_is_the_mean_cosine_of_the_generated_questions() {
    use sluice::embed::hashing::HashingEmbedder;
    use sluice::testkit::judge::content_words;
    let (app, _judge, _up) = start("").await;
    let mut body = sample();
    body["metrics"] = json!(["answer_relevancy"]);
    let (status, out) = app.post_json("/v1/evaluations/rag", &body).await;
    assert_eq!(status, 200, "{out}");
    // The scripted judge's questions: "What about" + six of the answer's content words, from the i-th on.
    let words: Vec<String> = content_words(body["answer"].as_str().unwrap())
        .into_iter()
        .collect();
    let questions: Vec<String> = (0..3)
        .map(|i| {
            let picked: Vec<&str> = words.iter().skip(i).take(6).map(String::as_str).collect();
            format!("What about {}?", picked.join(" "))
        })
        .collect();
    // The cosines, computed here from the hashing embedder's vectors (256 dims, as configured).
    let e = HashingEmbedder::new(256);
    let q = e.vector(body["question"].as_str().unwrap());
    let cosine = |text: &str| -> f64 {
        let v = e.vector(text);
        let dot: f64 = q
            .iter()
            .zip(&v)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum();
        let norm = |x: &[f32]| x.iter().map(|y| f64::from(*y).powi(2)).sum::<f64>().sqrt();
        dot / (norm(&q) * norm(&v))
    };
    let cosines: Vec<f64> = questions.iter().map(|g| cosine(g)).collect();
    let want = cosines.iter().sum::<f64>() / 3.0;
    assert!(want > 0.0 && want < 1.0, "{want}");
    let shown = out["details"]["answer_relevancy"]["generated_questions"]
        .as_array()
        .unwrap();
    assert_eq!(shown.len(), 3, "{out}");
    for ((s, q), c) in shown.iter().zip(&questions).zip(&cosines) {
        assert_eq!(s["question"], q.as_str(), "{out}");
        assert!(
            (s["cosine"].as_f64().unwrap() - c).abs() < 1e-6,
            "{c}: {out}"
        );
    }
    let got = out["scores"]["answer_relevancy"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-6, "got {got}, want {want}: {out}");
    assert_eq!(
        out["details"]["answer_relevancy"]["embedder"],
        "hashing-256"
    );
}

#[tokio::test]
async fn a_judge_5xx_is_a_per_metric_error_and_the_gateway_stays_healthy() {
    let (app, judge, _up) = start("").await;
    judge.set_mode(Some("context_relevance"), Mode::ServerError);
    let mut body = sample();
    body["metrics"] = json!(["context_relevance", "context_precision"]);
    let (status, out) = app.post_json("/v1/evaluations/rag", &body).await;
    assert_eq!(status, 200, "{out}");
    let error = out["errors"]["context_relevance"].as_str().unwrap();
    assert!(error.starts_with("judge call failed"), "{out}");
    assert!(out["scores"].get("context_relevance").is_none(), "{out}");
    assert!(close(&out["scores"]["context_precision"], 1.0), "{out}");
    app.assert_healthy().await;
    // The judge recovers: the failure was not cached.
    judge.set_mode(Some("context_relevance"), Mode::Normal);
    let (status, out) = app.post_json("/v1/evaluations/rag", &body).await;
    assert_eq!(status, 200, "{out}");
    assert!(close(&out["scores"]["context_relevance"], 0.5), "{out}");
}

#[tokio::test]
async fn json_that_fails_a_metrics_checks_is_not_cached() {
    let (app, judge, _up) = start("").await;
    // Well-formed JSON, one verdict short of the two statements.
    judge.set_mode(Some("faithfulness"), Mode::ShortList);
    let mut body = sample();
    body["metrics"] = json!(["faithfulness"]);
    let (status, out) = app.post_json("/v1/evaluations/rag", &body).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(
        out["errors"]["faithfulness"],
        "malformed judge output: 1 entries in `verdicts`, expected 2",
        "{out}"
    );
    assert_eq!(judge.calls(), 2);
    // The same request again: the statements come from the cache, the verdicts are asked again.
    let (_, again) = app.post_json("/v1/evaluations/rag", &body).await;
    assert!(again["errors"]["faithfulness"].is_string(), "{again}");
    assert_eq!(again["judge"]["calls"], 1, "{again}");
    assert_eq!(again["judge"]["cached"], 1, "{again}");
    assert_eq!(judge.calls(), 3);
    judge.set_mode(Some("faithfulness"), Mode::Normal);
    let (_, fixed) = app.post_json("/v1/evaluations/rag", &body).await;
    assert!(close(&fixed["scores"]["faithfulness"], 0.5), "{fixed}");
    assert_eq!(judge.calls(), 4);
}

#[tokio::test]
async fn online_samples_over_max_sample_bytes_are_shed_as_too_large() {
    let (app, judge, _up) = start("sample_rate = 1.0\nmax_sample_bytes = 300\n").await;
    let question = "Who sent this greeting?";
    let with_contexts = |contexts: Value, stream: bool| {
        let mut body = chat_body("gpt", question, stream);
        body["sluice"] = json!({"rag": {"contexts": contexts}});
        body
    };
    // Question and contexts alone are over the cap: shed when the request arrives.
    let resp = app
        .post(
            "/v1/chat/completions",
            &with_contexts(json!(["x".repeat(400)]), false),
        )
        .await;
    assert_eq!(resp.status(), 200);
    // Ten bytes left for the answer ("Hello from the mock upstream." is 29): shed, streamed or not.
    let tight = json!(["y".repeat(300 - question.len() - 10)]);
    let resp = app
        .post("/v1/chat/completions", &with_contexts(tight.clone(), false))
        .await;
    assert_eq!(resp.status(), 200);
    let streamed = app
        .post("/v1/chat/completions", &with_contexts(tight, true))
        .await;
    assert_eq!(streamed.status(), 200);
    let events = read_sse(streamed).await;
    assert_eq!(
        crate::common::chat_text(&events),
        "Hello from the mock upstream."
    );
    // Within the cap: evaluated.
    let resp = app.post("/v1/chat/completions", &rag_chat(false)).await;
    assert_eq!(resp.status(), 200);
    assert!(
        app.state
            .rag
            .wait_evaluated(1, Duration::from_secs(10))
            .await
    );
    let m = scrape(&app).await;
    assert_eq!(
        m.get("sluice_rag_shed_total{reason=too_large}"),
        Some(&3.0),
        "{m:?}"
    );
    assert_eq!(
        m.get("sluice_rag_shed_total{reason=queue_full}"),
        Some(&0.0),
        "{m:?}"
    );
    assert_eq!(m.get("sluice_rag_evaluations_total{}"), Some(&1.0), "{m:?}");
    // Only the one sample within the cap was judged (five judgments).
    assert_eq!(judge.calls(), 5);
}

/// An OpenAI-compatible upstream that answers with two choices, choice 1 first (as `n` = 2 can).
async fn two_choice_upstream() -> String {
    use axum::response::IntoResponse;
    async fn chat(axum::Json(body): axum::Json<Value>) -> axum::response::Response {
        let chunk = |index: u32, delta: Value, finish: Option<&str>| {
            json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                   "choices": [{"index": index, "delta": delta, "finish_reason": finish}]})
        };
        if body["stream"] == json!(true) {
            let events = [
                chunk(
                    1,
                    json!({"role": "assistant", "content": "Bananas are yellow."}),
                    None,
                ),
                chunk(
                    0,
                    json!({"role": "assistant", "content": "Hello from"}),
                    None,
                ),
                chunk(1, json!({"content": " Bananas are ripe."}), None),
                chunk(0, json!({"content": " the mock upstream."}), None),
                chunk(0, json!({}), Some("stop")),
                chunk(1, json!({}), Some("stop")),
            ];
            let mut text = String::new();
            for e in &events {
                text.push_str("data: ");
                text.push_str(&e.to_string());
                text.push_str("\n\n");
            }
            text.push_str("data: [DONE]\n\n");
            return ([("content-type", "text/event-stream")], text).into_response();
        }
        axum::Json(json!({
            "id": "c", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [
                {"index": 1, "message": {"role": "assistant", "content": "Bananas are yellow."}, "finish_reason": "stop"},
                {"index": 0, "message": {"role": "assistant", "content": "Hello from the mock upstream."}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 10, "total_tokens": 15}
        }))
        .into_response()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(chat));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/v1")
}

#[tokio::test]
async fn online_evaluation_takes_choice_zero_only() {
    let judge = ScriptedJudge::start().await.unwrap();
    let upstream = two_choice_upstream().await;
    let app = TestApp::start(&rag_config(
        &upstream,
        &judge.base_url(),
        "judge_timeout = \"5s\"\nsample_rate = 1.0\n\n[request_log]\ncapture_bodies = true\n",
    ))
    .await;
    let mut ids = Vec::new();
    for stream in [false, true] {
        let mut body = rag_chat(stream);
        body["n"] = json!(2);
        let resp = app.post("/v1/chat/completions", &body).await;
        assert_eq!(resp.status(), 200);
        ids.push(resp.headers()["x-request-id"].to_str().unwrap().to_owned());
        if stream {
            read_sse(resp).await;
        } else {
            resp.bytes().await.unwrap();
        }
    }
    assert!(
        app.state
            .rag
            .wait_evaluated(2, Duration::from_secs(10))
            .await
    );
    app.wait_finished(2).await;
    for id in ids {
        let one = logged(&app, &id).await;
        let statements: Vec<&str> = one["rag"]["details"]["faithfulness"]["statements"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["text"].as_str().unwrap())
            .collect();
        assert_eq!(statements, ["Hello from the mock upstream."], "{one}");
    }
}
