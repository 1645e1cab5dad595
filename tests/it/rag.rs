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
    // Noncommittal: answer relevancy is 0 by definition.
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
    let (app, _judge, _up) = start("max_batch = 2\n").await;
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
    let (status, out) = app
        .post_json(
            "/v1/evaluations/rag",
            &with(&|b| b["judge_model"] = json!("nope")),
        )
        .await;
    assert_eq!(status, 404, "{out}");
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
    // Both requests asked the same question with the same contexts and got the same answer: the
    // second evaluation's judgments all came from the cache (statements, verdicts, questions,
    // usefulness, relevance: five calls).
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
    assert_eq!(m.get("sluice_rag_shed_total{}"), Some(&0.0), "{m:?}");
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
    // The request log shows the request with its scores.
    app.wait_finished(2).await;
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
    let one = tokio::time::timeout(Duration::from_secs(10), lookup)
        .await
        .expect("the request reached the request log");
    let faithfulness = one["rag"]["scores"]["faithfulness"].as_f64().unwrap();
    assert!((faithfulness - 1.0).abs() < 1e-9, "{one}");
    assert_eq!(one["rag"]["judge_model"], "judge");
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
    // The judge hangs: one evaluation runs, one waits for the worker, one sits in the queue; the rest
    // are shed (at least 2 of 5), and the chat answers are not delayed by any of it.
    judge.set_mode(None, Mode::Hang);
    for _ in 0..5 {
        let resp = app.post("/v1/chat/completions", &rag_chat(false)).await;
        assert_eq!(resp.status(), 200);
    }
    let m = scrape(&app).await;
    let shed = m["sluice_rag_shed_total{}"];
    assert!(shed >= 2.0, "{m:?}");
}
