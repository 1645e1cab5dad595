//! `sluice eval rag` against a running gateway with the scripted judge: per-row results, the HTML report,
//! and the report rendered by a real headless browser.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sluice::testkit::judge::{Mode, ScriptedJudge};
use sluice::testkit::upstream::MockUpstream;

use crate::common::TestApp;
use crate::rag::rag_config;

fn dataset(dir: &Path) -> PathBuf {
    let rows = [
        json!({"id": "grounded", "question": "What is the capital of France?",
               "contexts": ["Paris is the capital of France.", "Bananas are yellow."],
               "answer": "Paris is the capital of France.", "reference": "Paris is the capital of France."}),
        json!({"id": "half", "question": "What is the capital of France?",
               "contexts": ["Bananas are yellow.", "Paris is the capital of France."],
               "answer": "Paris is the capital of France. The Eiffel Tower was built in 1889."}),
        json!({"id": "refusal", "question": "Who wrote Hamlet?",
               "contexts": ["Hamlet is a tragedy."], "answer": "I don't know."}),
    ];
    let path = dir.join("dataset.jsonl");
    let text = rows
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&path, text).unwrap();
    path
}

async fn run_cli(app: &TestApp, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["eval", "rag", "--url", &app.base])
        .args(args)
        .env_remove("SLUICE_API_KEY")
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_cli_writes_results_and_a_report_that_a_browser_renders() {
    let judge = ScriptedJudge::start().await.unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let app = TestApp::start(&rag_config(&upstream.base_url(), &judge.base_url(), "")).await;
    judge.set_mode(Some("groundedness"), Mode::Malformed);
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let out = dir.path().join("out");
    let output = run_cli(
        &app,
        &[
            "--dataset",
            data.to_str().unwrap(),
            "--judge-model",
            "judge",
            "--out",
            out.to_str().unwrap(),
            "--metrics",
            "faithfulness,context_precision,groundedness",
            "--batch-size",
            "2",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("3 rows evaluated"), "{stdout}");
    assert!(stdout.contains("faithfulness"), "{stdout}");

    let rows: Vec<Value> = std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["id"], "grounded");
    assert_eq!(rows[0]["scores"]["faithfulness"], 1.0);
    assert_eq!(rows[1]["scores"]["faithfulness"], 0.5);
    // The useful chunk is ranked second: average precision 1/2.
    assert_eq!(rows[1]["scores"]["context_precision"], 0.5);
    assert_eq!(rows[2]["scores"]["faithfulness"], Value::Null);
    for row in &rows {
        assert!(
            row["errors"]["groundedness"]
                .as_str()
                .unwrap()
                .starts_with("malformed judge output"),
            "{row}"
        );
    }

    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        report.contains("The Eiffel Tower was built in 1889."),
        "worst rows show the unsupported statement"
    );
    assert!(!report.contains("<script"));
    render_in_browser(
        &out.join("report.html"),
        &["faithfulness", "context_precision"],
    )
    .await;

    // A bad dataset row is reported with its line, and nothing is sent.
    std::fs::write(
        &data,
        "{\"question\": \"q\", \"answer\": \"a\", \"contexts\": []}\n{\"question\": 1}\n",
    )
    .unwrap();
    let calls = judge.calls();
    let output = run_cli(
        &app,
        &[
            "--dataset",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("dataset.jsonl:2"), "{stderr}");
    assert_eq!(judge.calls(), calls);
}

/// A browser that runs: `SLUICE_BROWSER` (set by `scripts/test`), else the first of the usual names
/// whose `--version` succeeds (a snap shim without snapd fails it).
fn browser() -> Option<String> {
    let runs = |b: &str| {
        std::process::Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if let Some(b) = std::env::var("SLUICE_BROWSER").ok().filter(|b| runs(b)) {
        return Some(b);
    }
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .into_iter()
    .find(|b| runs(b))
    .map(str::to_owned)
}

/// Opens the report in headless Chromium and checks the rendered DOM holds one chart per metric, each
/// with its ten bars, at least one of them drawn with a height.
async fn render_in_browser(report: &Path, metrics: &[&str]) {
    let Some(browser) = browser() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is required under CI (scripts/test installs it)"
        );
        eprintln!(
            "SKIPPED: no chromium found; install it (apt-get install chromium) to render the report"
        );
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}", report.display());
    let output = tokio::process::Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--virtual-time-budget=2000", "--dump-dom", &url])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let dom = String::from_utf8_lossy(&output.stdout);
    for metric in metrics {
        let start = dom
            .find(&format!("data-metric=\"{metric}\""))
            .unwrap_or_else(|| panic!("no chart for {metric} in the rendered DOM:\n{dom}"));
        let chart = &dom[start..start + dom[start..].find("</svg>").unwrap()];
        assert_eq!(chart.matches("<rect class=\"bar\"").count(), 10, "{chart}");
        assert!(
            chart
                .split("height=\"")
                .skip(1)
                .any(|h| !h.starts_with("0\"")),
            "every bar of {metric} is empty: {chart}"
        );
    }
    let png = profile.path().join("report.png");
    let shot = tokio::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", png.display()))
        .args(["--window-size=1200,900", &url])
        .output()
        .await
        .unwrap();
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    assert!(std::fs::metadata(&png).unwrap().len() > 1000);
}

#[tokio::test]
async fn a_failed_batch_keeps_the_rows_evaluated_before_it() {
    let judge = ScriptedJudge::start().await.unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let app = TestApp::start(&rag_config(&upstream.base_url(), &judge.base_url(), "")).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dataset.jsonl");
    let good = |id: &str| {
        json!({"id": id, "question": "What is the capital of France?",
               "contexts": ["Paris is the capital of France."],
               "answer": "Paris is the capital of France."})
        .to_string()
    };
    // The third row passes the CLI's own checks but the API refuses it (no context): batch 2 fails.
    let bad = json!({"id": "c", "question": "q", "contexts": [], "answer": "a"}).to_string();
    std::fs::write(&data, [good("a"), good("b"), bad].join("\n")).unwrap();
    let out = dir.path().join("out");
    let output = run_cli(
        &app,
        &[
            "--dataset",
            data.to_str().unwrap(),
            "--judge-model",
            "judge",
            "--out",
            out.to_str().unwrap(),
            "--metrics",
            "faithfulness",
            "--batch-size",
            "2",
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("rows 2-2 failed"), "{stderr}");
    assert!(stderr.contains("evaluation API: 400"), "{stderr}");
    assert!(
        stderr.contains("the 2 rows evaluated before them"),
        "{stderr}"
    );
    let rows: Vec<Value> = std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["id"], "a");
    assert_eq!(rows[1]["id"], "b");
    assert_eq!(rows[1]["scores"]["faithfulness"], 1.0);
    assert!(out.join("report.html").exists());
}
