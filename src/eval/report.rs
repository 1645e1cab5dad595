//! The self-contained HTML report of `sluice eval rag`: per metric, the mean with a 95% bootstrap
//! confidence interval, the count of null scores and errors, and a histogram of the scores as inline SVG
//! (no scripts, no external CSS or fonts: the file opens anywhere, offline); then the worst rows of each
//! metric with the judge's reasons, so a low score can be checked by reading why.

use std::fmt::Write as _;

use serde_json::Value;

use super::Metric;
use super::metrics::{bootstrap_mean_ci, mean};

/// Histogram bins over [0, 1].
const BINS: usize = 10;
/// Rows shown per metric in "worst rows".
const WORST: usize = 5;
/// Bootstrap resamples for the confidence interval (fixed seed: the same data gives the same report).
const RESAMPLES: usize = 2000;

/// Summary of one metric over a dataset.
#[derive(Debug, Clone)]
pub struct MetricSummary {
    /// The metric.
    pub metric: Metric,
    /// Scores that are numbers.
    pub values: Vec<f64>,
    /// Rows where the score is null (undefined for the row).
    pub nulls: usize,
    /// Rows where the metric failed.
    pub errors: usize,
    /// Mean of `values`.
    pub mean: Option<f64>,
    /// 95% bootstrap interval of the mean.
    pub ci: Option<(f64, f64)>,
}

/// Summaries of every metric that appears in `rows` (each row as in `results.jsonl`).
pub fn summarize(rows: &[Value]) -> Vec<MetricSummary> {
    Metric::ALL
        .into_iter()
        .filter_map(|metric| {
            let name = metric.as_str();
            let mut values = Vec::new();
            let (mut nulls, mut errors, mut seen) = (0, 0, false);
            for row in rows {
                if let Some(score) = row["scores"].get(name) {
                    seen = true;
                    match score.as_f64() {
                        Some(v) => values.push(v),
                        None => nulls += 1,
                    }
                }
                if row["errors"].get(name).is_some() {
                    seen = true;
                    errors += 1;
                }
            }
            seen.then(|| MetricSummary {
                metric,
                mean: (!values.is_empty()).then(|| mean(&values)),
                ci: bootstrap_mean_ci(&values, RESAMPLES, 0x5EED),
                values,
                nulls,
                errors,
            })
        })
        .collect()
}

/// The report as one HTML document.
pub fn render(title: &str, rows: &[Value]) -> String {
    let summaries = summarize(rows);
    let mut h = String::with_capacity(64 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n<style>{CSS}</style></head><body>\n<h1>{}</h1>\n<p>{} rows. Scores are 0–1, higher is better; null means the metric is undefined for the row (e.g. an answer without statements), an error means the judge failed. Intervals: 95% percentile bootstrap of the mean.</p>\n",
        esc(title),
        esc(title),
        rows.len()
    );
    h.push_str("<table class=\"summary\"><tr><th>metric</th><th>mean</th><th>95% CI</th><th>scored</th><th>null</th><th>errors</th></tr>\n");
    for s in &summaries {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            s.metric,
            s.mean.map_or_else(|| "–".to_owned(), |m| format!("{m:.3}")),
            s.ci.map_or_else(|| "–".to_owned(), |(lo, hi)| format!("{lo:.3} – {hi:.3}")),
            s.values.len(),
            s.nulls,
            s.errors
        );
    }
    h.push_str("</table>\n<h2>Distributions</h2>\n<div class=\"charts\">\n");
    for s in &summaries {
        h.push_str(&histogram(s));
    }
    h.push_str("</div>\n<h2>Worst rows</h2>\n");
    for s in &summaries {
        worst_rows(&mut h, s.metric, rows);
    }
    h.push_str("</body></html>\n");
    h
}

fn histogram(s: &MetricSummary) -> String {
    let mut counts = [0usize; BINS];
    for v in &s.values {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "clamped to 0..BINS"
        )]
        let bin = ((v.clamp(0.0, 1.0) * 10.0).floor() as usize).min(BINS - 1);
        counts[bin] += 1;
    }
    let max = counts.iter().copied().max().unwrap_or(0).max(1);
    let (w, hgt, bar) = (320, 160, 28);
    let mut svg = format!(
        "<figure class=\"chart\"><figcaption>{}</figcaption><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" role=\"img\" aria-label=\"histogram of {}\" data-metric=\"{}\">",
        s.metric,
        hgt + 20,
        s.metric,
        s.metric
    );
    for (i, c) in counts.iter().enumerate() {
        let h = c * (hgt - 10) / max;
        let x = 10 + i * (bar + 2);
        let _ = write!(
            svg,
            "<rect class=\"bar\" x=\"{x}\" y=\"{}\" width=\"{bar}\" height=\"{h}\"><title>{:.1}–{:.1}: {c}</title></rect>",
            hgt - h,
            bin_edge(i),
            bin_edge(i + 1)
        );
    }
    let _ = writeln!(
        svg,
        "<line x1=\"10\" y1=\"{hgt}\" x2=\"{}\" y2=\"{hgt}\" stroke=\"#333\"/><text x=\"10\" y=\"{}\">0</text><text x=\"{}\" y=\"{}\">1</text></svg></figure>",
        10 + BINS * (bar + 2),
        hgt + 15,
        BINS * (bar + 2),
        hgt + 15
    );
    svg
}

#[expect(clippy::cast_precision_loss, reason = "bin indices are tiny")]
fn bin_edge(i: usize) -> f64 {
    i as f64 / BINS as f64
}

/// The lowest-scoring rows of `metric`, with the reasons of negative verdicts, and rows where it failed.
fn worst_rows(h: &mut String, metric: Metric, rows: &[Value]) {
    let name = metric.as_str();
    let mut scored: Vec<(f64, &Value)> = rows
        .iter()
        .filter_map(|r| {
            r["scores"]
                .get(name)
                .and_then(Value::as_f64)
                .map(|s| (s, r))
        })
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    let _ = writeln!(
        h,
        "<h3>{name}</h3><table class=\"worst\"><tr><th>row</th><th>score</th><th>question</th><th>why</th></tr>"
    );
    for (score, row) in scored.iter().take(WORST) {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{score:.3}</td><td>{}</td><td>{}</td></tr>",
            esc(&row_id(row)),
            esc(&clip(row["question"].as_str().unwrap_or_default(), 200)),
            reasons(&row["details"][name])
        );
    }
    for row in rows
        .iter()
        .filter(|r| r["errors"].get(name).is_some())
        .take(WORST)
    {
        let _ = writeln!(
            h,
            "<tr class=\"error\"><td>{}</td><td>error</td><td>{}</td><td>{}</td></tr>",
            esc(&row_id(row)),
            esc(&clip(row["question"].as_str().unwrap_or_default(), 200)),
            esc(row["errors"][name].as_str().unwrap_or_default())
        );
    }
    h.push_str("</table>\n");
}

fn row_id(row: &Value) -> String {
    match &row["id"] {
        Value::Null => row["index"].to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Negative verdicts and low ratings of a metric's details, as an HTML list.
fn reasons(details: &Value) -> String {
    let mut out = String::new();
    for list in ["statements", "chunks", "sentences"] {
        for item in details[list].as_array().into_iter().flatten() {
            let negative = item["verdict"].as_u64() == Some(0)
                || item["attributed"].as_u64() == Some(0)
                || item["score"].as_f64().is_some_and(|s| s < 2.0);
            if !negative {
                continue;
            }
            let what = item["text"]
                .as_str()
                .map_or_else(|| format!("chunk {}", item["index"]), |t| clip(t, 160));
            let _ = write!(
                out,
                "<li><b>{}</b>: {}</li>",
                esc(&what),
                esc(item["reason"].as_str().unwrap_or("no reason given"))
            );
        }
    }
    if details["noncommittal"].as_u64() == Some(1) {
        out.push_str("<li>the judge found the answer noncommittal</li>");
    }
    if out.is_empty() {
        String::new()
    } else {
        format!("<ul>{out}</ul>")
    }
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut t: String = s.chars().take(max).collect();
    t.push('…');
    t
}

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}\
.charts{display:flex;flex-wrap:wrap;gap:1em}.chart{margin:0}.bar{fill:#3b7dd8}tr.error td{background:#fdecea}\
figcaption{font-weight:bold}ul{margin:0;padding-left:1.2em}";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn summaries_count_nulls_and_errors_and_the_report_escapes() {
        let rows = vec![
            json!({"index": 0, "question": "<b>q</b>", "scores": {"faithfulness": 0.5}, "errors": {},
                   "details": {"faithfulness": {"statements": [{"text": "x", "verdict": 0, "reason": "not in <context>"}]}}}),
            json!({"index": 1, "question": "q2", "scores": {"faithfulness": null}, "errors": {}, "details": {}}),
            json!({"index": 2, "question": "q3", "scores": {}, "errors": {"faithfulness": "judge timed out"}, "details": {}}),
            json!({"index": 3, "question": "q4", "scores": {"faithfulness": 1.0}, "errors": {}, "details": {}}),
        ];
        let s = summarize(&rows);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].values.len(), s[0].nulls, s[0].errors), (2, 1, 1));
        assert_eq!(s[0].mean, Some(0.75));
        let html = render("Report <1>", &rows);
        assert!(html.contains("Report &lt;1&gt;"));
        assert!(html.contains("&lt;b&gt;q&lt;/b&gt;"));
        assert!(html.contains("not in &lt;context&gt;"));
        assert!(html.contains("judge timed out"));
        assert_eq!(html.matches("<rect class=\"bar\"").count(), BINS);
        assert!(!html.contains("<script"));
    }
}
