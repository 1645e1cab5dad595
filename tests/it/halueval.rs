//! The HaluEval validation script (`scripts/halueval`) end to end on the committed 20-pair QA fixture
//! (`tests/data/halueval`, no download), against the gateway with the scripted judge: proves the plumbing
//! (pairing, the API, paired accuracy, AUC and bootstrap intervals), not the quality of any judge. The
//! expected accuracy and AUC are computed here from the fixture with the scripted judge's rules.

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
            "--data-file",
            &format!("{root}/tests/data/halueval/qa_20.jsonl"),
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .await
    else {
        return skip("python3 is not installed");
    };
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
    let (want_accuracy, want_auc, want_skipped) =
        expected(&format!("{root}/tests/data/halueval/qa_20.jsonl"));
    assert_eq!(j["skipped_pairs"], want_skipped, "{result}");
    assert!(
        (j["paired_accuracy"].as_f64().unwrap() - want_accuracy).abs() < 1e-4,
        "paired accuracy: want {want_accuracy}, {result}"
    );
    assert!(
        (j["auc"].as_f64().unwrap() - want_auc).abs() < 1e-4,
        "auc: want {want_auc}, {result}"
    );
    let lexical = result["lexical_unsupported_words"]["paired_accuracy"]
        .as_f64()
        .unwrap();
    assert!((0.0..=1.0).contains(&lexical));
}

/// The scripted judge's faithfulness of `answer`: the share of its sentences whose content words are at
/// least 60% in the knowledge; `None` for a refusal or an answer without sentences.
fn scripted_faithfulness(answer: &str, knowledge: &str) -> Option<f64> {
    let lower = answer.to_lowercase();
    if ["don't know", "do not know", "not sure", "cannot answer"]
        .iter()
        .any(|p| lower.contains(p))
    {
        return None;
    }
    let sentences = sluice::eval::metrics::sentences(answer);
    if sentences.is_empty() {
        return None;
    }
    let supported = sentences
        .iter()
        .filter(|s| sluice::testkit::judge::support(s, knowledge) >= 0.6)
        .count();
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let f = supported as f64 / sentences.len() as f64;
    Some(f)
}

/// Paired accuracy (ties one half), AUC (Mann-Whitney, ties one half) and skipped pairs of the fixture.
fn expected(path: &str) -> (f64, f64, u64) {
    let mut right = Vec::new();
    let mut wrong = Vec::new();
    let mut skipped = 0;
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        let k = r["knowledge"].as_str().unwrap();
        let scores = (
            scripted_faithfulness(r["right_answer"].as_str().unwrap(), k),
            scripted_faithfulness(r["hallucinated_answer"].as_str().unwrap(), k),
        );
        if let (Some(a), Some(b)) = scores {
            right.push(a);
            wrong.push(b);
        } else {
            skipped += 1;
        }
    }
    let half = |a: f64, b: f64| {
        if a > b {
            1.0
        } else if (a - b).abs() < f64::EPSILON {
            0.5
        } else {
            0.0
        }
    };
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let n = right.len() as f64;
    let accuracy = right
        .iter()
        .zip(&wrong)
        .map(|(a, b)| half(*a, *b))
        .sum::<f64>()
        / n;
    let auc = right
        .iter()
        .map(|a| wrong.iter().map(|b| half(*a, *b)).sum::<f64>())
        .sum::<f64>()
        / (n * n);
    (accuracy, auc, skipped)
}
