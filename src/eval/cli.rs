//! `sluice eval rag --dataset FILE.jsonl --judge-model M --out DIR`: an HTTP client of a running
//! gateway's `POST /v1/evaluations/rag` (like `sluice keys` is of the admin API), so the judge calls go
//! through that gateway's providers, limits, cache and cost accounting.
//!
//! Each dataset line is `{question, contexts[], answer, reference?, id?}`. Rows are sent in batches;
//! the results go to `DIR/results.jsonl` (one line per row: the row's id, question and answer with its
//! scores, errors and details) and `DIR/report.html` ([`super::report`]). A progress bar is drawn on
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
    let mut results = Vec::with_capacity(rows.len());
    let (mut calls, mut cached, mut cost) = (0u64, 0u64, None::<f64>);
    for (batch_no, batch) in rows.chunks(usize::from(args.batch_size)).enumerate() {
        let answer = match post_batch(&http, &endpoint, url, args, batch, api_key).await {
            Ok(a) => a,
            Err(e) => {
                bar.abandon();
                return Err(e);
            }
        };
        calls += answer["judge"]["calls"].as_u64().unwrap_or(0);
        cached += answer["judge"]["cached"].as_u64().unwrap_or(0);
        if let Some(c) = answer["judge"]["cost_usd"].as_f64() {
            cost = Some(cost.unwrap_or(0.0) + c);
        }
        for (i, (row, out)) in batch
            .iter()
            .zip(answer["data"].as_array().into_iter().flatten())
            .enumerate()
        {
            let index = batch_no * usize::from(args.batch_size) + i;
            results.push(json!({
                "index": index,
                "id": row.get("id").cloned().unwrap_or(Value::Null),
                "question": row["question"],
                "answer": row["answer"],
                "scores": out["scores"],
                "errors": out["errors"],
                "details": out["details"],
            }));
        }
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    write_outputs(&args.out, &args.dataset, &results)?;
    Ok(summary(&results, &args.out, calls, cached, cost))
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

fn write_outputs(out: &Path, dataset: &Path, results: &[Value]) -> Result<(), EvalCliError> {
    let write = |path: PathBuf, text: String| {
        std::fs::write(&path, text).map_err(|source| EvalCliError::Write { path, source })
    };
    std::fs::create_dir_all(out).map_err(|source| EvalCliError::Write {
        path: out.to_owned(),
        source,
    })?;
    let mut jsonl = String::new();
    for r in results {
        jsonl.push_str(&r.to_string());
        jsonl.push('\n');
    }
    write(out.join("results.jsonl"), jsonl)?;
    let title = format!(
        "RAG evaluation of {}",
        dataset.file_name().map_or_else(
            || dataset.display().to_string(),
            |f| f.to_string_lossy().into_owned()
        )
    );
    write(
        out.join("report.html"),
        super::report::render(&title, results),
    )
}
