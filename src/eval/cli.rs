//! `sluice eval rag --dataset FILE.jsonl --judge-model M --out DIR`: an HTTP client of a running
//! gateway's `POST /v1/evaluations/rag` (like `sluice keys` is of the admin API), so the judge calls go
//! through that gateway's providers, limits, cache and cost accounting.
//!
//! Each dataset line is `{question, contexts[], answer, reference?, id?}`. Rows are sent in batches;
//! the results go to `DIR/results.jsonl` (one line per row: the row's id, question and answer with its
//! scores, errors and details), appended as each batch finishes, and `DIR/report.html`
//! ([`super::report`]). A batch that fails stops the run with an error naming its rows; the rows
//! evaluated before it stay in `results.jsonl` (and in a report of them). A progress bar is drawn on
//! stderr when it is a terminal. The API key, if the gateway requires one, comes from the environment
//! variable named by `--api-key-env` (default `SLUICE_API_KEY`), never from a flag.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

/// `sluice eval ...`.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// Base URL of the gateway.
    #[arg(long, env = "SLUICE_URL", default_value = crate::cli::DEFAULT_URL, global = true)]
    pub url: String,
    /// The command.
    #[command(subcommand)]
    pub command: EvalCommand,
}

/// A `sluice eval` command.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum EvalCommand {
    /// Evaluate a JSONL dataset of RAG answers and write per-row results and an HTML report.
    Rag(RagArgs),
}

/// `sluice eval rag`.
#[derive(Debug, Clone, clap::Args)]
pub struct RagArgs {
    /// JSONL file, one `{question, contexts, answer, reference?, id?}` per line.
    #[arg(long)]
    pub dataset: PathBuf,
    /// The judge model (a model configured in the gateway); default: the gateway's
    /// `[evaluation] judge_model`.
    #[arg(long)]
    pub judge_model: Option<String>,
    /// Output directory (created if needed) for `results.jsonl` and `report.html`.
    #[arg(long)]
    pub out: PathBuf,
    /// Metrics to compute, comma-separated; default: the gateway's defaults.
    #[arg(long, value_delimiter = ',')]
    pub metrics: Vec<String>,
    /// Rows per request.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub batch_size: u16,
    /// Environment variable holding the gateway API key.
    #[arg(long, default_value = "SLUICE_API_KEY")]
    pub api_key_env: String,
}

/// Why `sluice eval rag` failed; the message is meant for the operator.
#[derive(Debug, thiserror::Error)]
pub enum EvalCliError {
    /// The dataset cannot be read or has a bad row.
    #[error("{0}")]
    Dataset(String),
    /// The output cannot be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No answer from the gateway.
    #[error("cannot reach Sluice at {url}: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The gateway refused the request.
    #[error("evaluation API: {status}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Its error message.
        message: String,
    },
    /// The gateway answered 200 with something that is not one result per row.
    #[error("evaluation API: unusable reply: {0}")]
    Reply(String),
    /// A batch failed after earlier ones succeeded: their rows are kept.
    #[error(
        "rows {first}-{last} failed: {source}; the {done} rows evaluated before them are in {}",
        results.display()
    )]
    Partial {
        /// First row of the failed batch (0-based, dataset order).
        first: usize,
        /// Last row of the failed batch.
        last: usize,
        /// Rows evaluated and written before it.
        done: usize,
        /// `results.jsonl`.
        results: PathBuf,
        /// Why the batch failed.
        source: Box<EvalCliError>,
    },
}

/// Longest wait for one batch (each row makes several judge calls).
const BATCH_TIMEOUT: Duration = Duration::from_mins(10);

/// Reads the dataset: every non-blank line a JSON object with the sample fields.
pub fn read_dataset(path: &Path) -> Result<Vec<Value>, EvalCliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EvalCliError::Dataset(format!("cannot read {}: {e}", path.display())))?;
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |m: &str| EvalCliError::Dataset(format!("{}:{}: {m}", path.display(), n + 1));
        let row: Value = serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
        if !row.is_object() {
            return Err(bad("not a JSON object"));
        }
        for field in ["question", "answer"] {
            if !row[field].is_string() {
                return Err(bad(&format!("`{field}` must be a string")));
            }
        }
        if !row["contexts"].is_array() {
            return Err(bad("`contexts` must be an array of strings"));
        }
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(EvalCliError::Dataset(format!(
            "{} holds no rows",
            path.display()
        )));
    }
    Ok(rows)
}

/// Runs `sluice eval rag`; returns the summary to print.
pub async fn run_rag(
    args: &RagArgs,
    url: &str,
    api_key: Option<&str>,
) -> Result<String, EvalCliError> {
    let rows = read_dataset(&args.dataset)?;
    let endpoint = format!("{}/v1/evaluations/rag", url.trim_end_matches('/'));
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(BATCH_TIMEOUT)
        .user_agent(concat!("sluice-cli/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| EvalCliError::Unreachable {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(rows.len() as u64),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} evaluating [{bar:40}] {pos}/{len} rows ({eta} left)",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    let results_path = args.out.join("results.jsonl");
    let mut file = create_results(&args.out, &results_path)?;
    let mut results = Vec::with_capacity(rows.len());
    let (mut calls, mut cached, mut cost) = (0u64, 0u64, None::<f64>);
    let batch_size = usize::from(args.batch_size);
    for (batch_no, batch) in rows.chunks(batch_size).enumerate() {
        let first = batch_no * batch_size;
        let done = results.len();
        let outcome = async {
            let answer = post_batch(&http, &endpoint, url, args, batch, api_key).await?;
            let rows = batch_rows(first, batch, &answer)?;
            append(&mut file, &results_path, &rows)?;
            Ok::<_, EvalCliError>((answer, rows))
        }
        .await;
        let (answer, rows) = match outcome {
            Ok(ok) => ok,
            Err(e) => {
                bar.abandon();
                // What was evaluated before stays: in results.jsonl already, and in a report of it.
                if done > 0 {
                    write_report(&args.out, &args.dataset, &results)?;
                }
                return Err(EvalCliError::Partial {
                    first,
                    last: first + batch.len() - 1,
                    done,
                    results: results_path,
                    source: Box::new(e),
                });
            }
        };
        calls += answer["judge"]["calls"].as_u64().unwrap_or(0);
        cached += answer["judge"]["cached"].as_u64().unwrap_or(0);
        if let Some(c) = answer["judge"]["cost_usd"].as_f64() {
            cost = Some(cost.unwrap_or(0.0) + c);
        }
        results.extend(rows);
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    write_report(&args.out, &args.dataset, &results)?;
    Ok(summary(&results, &args.out, calls, cached, cost))
}

/// The result rows of one batch from the API's answer: exactly one `data` entry per row, in order.
fn batch_rows(first: usize, batch: &[Value], answer: &Value) -> Result<Vec<Value>, EvalCliError> {
    let data = answer["data"]
        .as_array()
        .ok_or_else(|| EvalCliError::Reply("no `data` list".to_owned()))?;
    if data.len() != batch.len() {
        return Err(EvalCliError::Reply(format!(
            "{} results for a batch of {} rows",
            data.len(),
            batch.len()
        )));
    }
    Ok(batch
        .iter()
        .zip(data)
        .enumerate()
        .map(|(i, (row, out))| {
            json!({
                "index": first + i,
                "id": row.get("id").cloned().unwrap_or(Value::Null),
                "question": row["question"],
                "answer": row["answer"],
                "scores": out["scores"],
                "errors": out["errors"],
                "details": out["details"],
            })
        })
        .collect())
}

/// Creates the output directory and an empty `results.jsonl`.
fn create_results(out: &Path, path: &Path) -> Result<std::fs::File, EvalCliError> {
    std::fs::create_dir_all(out).map_err(|source| EvalCliError::Write {
        path: out.to_owned(),
        source,
    })?;
    std::fs::File::create(path).map_err(|source| EvalCliError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Appends result rows to `results.jsonl`, one JSON line each, flushed before the next batch starts.
fn append(file: &mut std::fs::File, path: &Path, rows: &[Value]) -> Result<(), EvalCliError> {
    use std::io::Write as _;
    let mut text = String::new();
    for r in rows {
        text.push_str(&r.to_string());
        text.push('\n');
    }
    file.write_all(text.as_bytes())
        .and_then(|()| file.flush())
        .map_err(|source| EvalCliError::Write {
            path: path.to_owned(),
            source,
        })
}

/// What the command prints: counts, judge usage and per-metric means with intervals.
fn summary(results: &[Value], out: &Path, calls: u64, cached: u64, cost: Option<f64>) -> String {
    use std::fmt::Write as _;
    let mut summary = format!(
        "{} rows evaluated; judge calls: {calls} (+{cached} cached){}\n",
        results.len(),
        cost.map_or_else(String::new, |c| format!(", cost ${c:.4}"))
    );
    for s in super::report::summarize(results) {
        let _ = writeln!(
            summary,
            "  {:<18} mean {}  95% CI {}  (null {}, errors {})",
            s.metric.as_str(),
            s.mean.map_or_else(|| "–".to_owned(), |m| format!("{m:.3}")),
            s.ci.map_or_else(|| "–".to_owned(), |(lo, hi)| format!("[{lo:.3}, {hi:.3}]")),
            s.nulls,
            s.errors
        );
    }
    let _ = write!(
        summary,
        "results: {}\nreport:  {}",
        out.join("results.jsonl").display(),
        out.join("report.html").display()
    );
    summary
}

/// Sends one batch; the API's answer.
async fn post_batch(
    http: &reqwest::Client,
    endpoint: &str,
    url: &str,
    args: &RagArgs,
    batch: &[Value],
    api_key: Option<&str>,
) -> Result<Value, EvalCliError> {
    let items: Vec<Value> = batch
        .iter()
        .map(|r| {
            let mut item = json!({"question": r["question"], "contexts": r["contexts"], "answer": r["answer"]});
            if r["reference"].is_string() {
                item["reference"] = r["reference"].clone();
            }
            item
        })
        .collect();
    let mut body = json!({"items": items});
    if let Some(m) = &args.judge_model {
        body["judge_model"] = json!(m);
    }
    if !args.metrics.is_empty() {
        body["metrics"] = json!(args.metrics);
    }
    let mut req = http.post(endpoint).json(&body);
    if let Some(key) = api_key {
        req = req.bearer_auth(key);
    }
    let resp = req.send().await.map_err(|e| EvalCliError::Unreachable {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    let status = resp.status().as_u16();
    let answer: Value = resp.json().await.unwrap_or(Value::Null);
    if status != 200 {
        let message = answer["error"]["message"]
            .as_str()
            .unwrap_or("no error message")
            .to_owned();
        return Err(EvalCliError::Api { status, message });
    }
    Ok(answer)
}

fn write_report(out: &Path, dataset: &Path, results: &[Value]) -> Result<(), EvalCliError> {
    let title = format!(
        "RAG evaluation of {}",
        dataset.file_name().map_or_else(
            || dataset.display().to_string(),
            |f| f.to_string_lossy().into_owned()
        )
    );
    let path = out.join("report.html");
    std::fs::write(&path, super::report::render(&title, results))
        .map_err(|source| EvalCliError::Write { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_must_hold_one_result_per_row() {
        let batch = [
            json!({"question": "q1", "answer": "a1", "id": "x"}),
            json!({"question": "q2", "answer": "a2"}),
        ];
        let one = json!({"data": [{"scores": {"faithfulness": 1.0}, "errors": {}, "details": {}}]});
        let e = batch_rows(4, &batch, &one).unwrap_err().to_string();
        assert!(e.contains("1 results for a batch of 2 rows"), "{e}");
        let e = batch_rows(4, &batch, &json!({"object": "list"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no `data` list"), "{e}");
        let two =
            json!({"data": [{"scores": {"faithfulness": 1.0}}, {"scores": {"faithfulness": 0.5}}]});
        let rows = batch_rows(4, &batch, &two).unwrap();
        assert_eq!(rows[0]["index"], 4);
        assert_eq!(rows[0]["id"], "x");
        assert_eq!(rows[1]["index"], 5);
        assert_eq!(rows[1]["question"], "q2");
        assert_eq!(rows[1]["scores"]["faithfulness"], 0.5);
    }
}
