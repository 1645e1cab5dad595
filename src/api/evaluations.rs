//! `POST /v1/evaluations/rag`: RAG quality scores of one sample or a batch, judged by a configured model.
//!
//! Body: `{question, contexts[], answer, reference?, metrics?, judge_model?}`, or a batch
//! `{items: [{question, contexts[], answer, reference?}], metrics?, judge_model?}`. Every client mistake
//! is a 400 naming the field; a judge failure is a per-metric error in a 200 answer, never a 5xx.

use axum::Json;
use axum::extract::State;
use futures_util::stream::{self, StreamExt};
use serde_json::{Map, Value, json};

use super::admit::admit;
use super::extract::OpenAiJson;
use crate::control::Estimate;
use crate::error::GatewayError;
use crate::eval::Metric;
use crate::eval::judge::{JUDGE_MAX_TOKENS, Tally};
use crate::eval::online::Limits;
use crate::eval::rag::Sample;
use crate::provider::CallContext;
use crate::state::AppState;
use crate::telemetry::call::{Operation, RequestParams};

/// Samples of one batch evaluated at once (judge calls are bounded separately).
const BATCH_CONCURRENCY: usize = 4;

const SAMPLE_FIELDS: [&str; 4] = ["question", "contexts", "answer", "reference"];
const REQUEST_FIELDS: [&str; 3] = ["metrics", "judge_model", "items"];

/// Evaluates one sample or a batch.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn create_rag_evaluation(
    State(state): State<AppState>,
    ctx: CallContext,
    OpenAiJson(body): OpenAiJson<Value>,
) -> Result<Json<Value>, GatewayError> {
    let rag = &state.rag;
    let Value::Object(body) = body else {
        return Err(GatewayError::invalid(
            "the body must be a JSON object",
            None,
        ));
    };
    let batch = body.contains_key("items");
    for key in body.keys() {
        let known = REQUEST_FIELDS.contains(&key.as_str())
            || (!batch && SAMPLE_FIELDS.contains(&key.as_str()));
        if !known {
            return Err(GatewayError::invalid(
                format!("unknown field `{key}`"),
                Some(key),
            ));
        }
    }
    let judge = judge_model(&body, rag.evaluator.default_judge.as_deref())?;
    // An unknown judge is the request's `judge_model` (or the config's), not a `model` it never sent.
    if state.providers.route(&judge).is_err() {
        return Err(GatewayError::invalid(
            format!("`judge_model`: unknown model `{judge}`"),
            Some("judge_model"),
        ));
    }
    let requested = parse_metrics(body.get("metrics"))?;
    if requested
        .as_ref()
        .is_some_and(|m| m.contains(&Metric::AnswerRelevancy))
        && !rag.evaluator.has_embedder()
    {
        return Err(GatewayError::invalid(
            "`metrics`: answer_relevancy needs an embeddings model, and none is configured \
             ([evaluation] embedding_model)",
            Some("metrics"),
        ));
    }
    let samples = samples(&body, batch, &rag.limits)?;
    let plans = plan(requested.as_deref(), &samples, batch, &rag.evaluator)?;
    // The caller's limits and budget, and the judge model's, apply to the whole evaluation: one request
    // (rpm, concurrency held until the answer is sent), reserving the judge calls it plans; the judge
    // calls' real tokens and cost settle the admission when the request finishes.
    ctx.call.begin(
        Operation::Chat,
        &judge,
        false,
        RequestParams {
            temperature: Some(0.0),
            top_p: None,
            max_tokens: Some(JUDGE_MAX_TOKENS),
        },
    );
    admit(&state, &ctx, &judge, || estimate(&judge, &samples, &plans)).await?;
    let tally = Tally::for_caller(ctx.caller.key_id());
    let (judge_ref, tally_ref, evaluator) = (&judge, &tally, &rag.evaluator);
    let evaluations: Vec<Value> = stream::iter(samples.into_iter().zip(plans))
        .map(|(sample, metrics)| async move {
            evaluator
                .evaluate(judge_ref, &sample, &metrics, tally_ref)
                .await
        })
        .buffered(BATCH_CONCURRENCY)
        .map(|e| e.to_json())
        .collect()
        .await;
    let (tokens, cost) = tally.spent();
    ctx.call.charge(tokens, cost);
    if batch {
        let data: Vec<Value> = evaluations
            .into_iter()
            .enumerate()
            .map(|(index, mut e)| {
                e["index"] = json!(index);
                e
            })
            .collect();
        Ok(Json(json!({
            "object": "list",
            "judge_model": judge,
            "data": data,
            "judge": tally.to_json(),
        })))
    } else {
        let mut out = evaluations.into_iter().next().unwrap_or_else(|| json!({}));
        out["object"] = json!("rag.evaluation");
        out["judge_model"] = json!(judge);
        out["judge"] = tally.to_json();
        Ok(Json(out))
    }
}

/// The metrics of each sample: the requested ones (checked against the sample), else the defaults.
fn plan(
    requested: Option<&[Metric]>,
    samples: &[Sample],
    batch: bool,
    evaluator: &crate::eval::rag::Evaluator,
) -> Result<Vec<Vec<Metric>>, GatewayError> {
    let mut plans = Vec::with_capacity(samples.len());
    for (i, sample) in samples.iter().enumerate() {
        let metrics = match requested {
            Some(m) => {
                if m.contains(&Metric::ContextRecall) && sample.reference.is_none() {
                    let field = if batch {
                        format!("items[{i}].reference")
                    } else {
                        "reference".to_owned()
                    };
                    return Err(GatewayError::invalid(
                        format!("`{field}` is required for the context_recall metric"),
                        Some(&field),
                    ));
                }
                m.to_vec()
            }
            None => evaluator.default_metrics(sample.reference.is_some()),
        };
        plans.push(metrics);
    }
    Ok(plans)
}

/// Prompt overhead of one judge call beyond the sample's text (instructions, system message, JSON).
const PROMPT_OVERHEAD_TOKENS: u64 = 400;

/// What admission reserves: every planned judge call with the whole sample as its input and the
/// judge's output limit as its reply, an upper bound (cached judgments and short replies settle lower).
fn estimate(judge: &str, samples: &[Sample], plans: &[Vec<Metric>]) -> Estimate {
    let mut input = 0_u64;
    let mut output = 0_u64;
    for (sample, metrics) in samples.iter().zip(plans) {
        let text = crate::usage::count_text(judge, &sample.question)
            + crate::usage::count_text(judge, &sample.answer)
            + sample
                .contexts
                .iter()
                .map(|c| crate::usage::count_text(judge, c))
                .sum::<u64>()
            + sample
                .reference
                .as_deref()
                .map_or(0, |r| crate::usage::count_text(judge, r));
        let calls: u64 = metrics.iter().map(|m| m.judge_calls()).sum();
        input = input.saturating_add(calls.saturating_mul(text + PROMPT_OVERHEAD_TOKENS));
        output = output.saturating_add(calls.saturating_mul(u64::from(JUDGE_MAX_TOKENS)));
    }
    Estimate {
        input_tokens: input,
        max_output_tokens: Some(output),
    }
}

/// The judge model: the request's `judge_model`, else the configured one.
fn judge_model(body: &Map<String, Value>, default: Option<&str>) -> Result<String, GatewayError> {
    match body.get("judge_model") {
        None | Some(Value::Null) => default.map(str::to_owned).ok_or_else(|| {
            GatewayError::invalid(
                "no judge model: set [evaluation] judge_model in the config or `judge_model` in the request",
                Some("judge_model"),
            )
        }),
        Some(Value::String(m)) if !m.trim().is_empty() => Ok(m.clone()),
        Some(_) => Err(GatewayError::invalid(
            "`judge_model` must be a model name",
            Some("judge_model"),
        )),
    }
}

/// The samples of the body: the body itself, or each of `items`.
fn samples(
    body: &Map<String, Value>,
    batch: bool,
    limits: &Limits,
) -> Result<Vec<Sample>, GatewayError> {
    if !batch {
        let sample = parse_sample(&Value::Object(body.clone()), "", limits.max_contexts)?;
        check_size(&sample, None, limits.max_sample_bytes)?;
        return Ok(vec![sample]);
    }
    let items = body
        .get("items")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| GatewayError::invalid("`items` must be a non-empty array", Some("items")))?;
    if items.len() > limits.max_batch {
        return Err(GatewayError::invalid(
            format!(
                "`items` holds {} samples; at most {} per request",
                items.len(),
                limits.max_batch
            ),
            Some("items"),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let sample = parse_sample(item, &format!("items[{i}]."), limits.max_contexts)?;
            check_size(
                &sample,
                Some(&format!("items[{i}]")),
                limits.max_sample_bytes,
            )?;
            Ok(sample)
        })
        .collect()
}

/// A sample larger than `max_sample_bytes` is a 400 naming it (`items[i]`; the body itself: no field).
fn check_size(sample: &Sample, field: Option<&str>, max: usize) -> Result<(), GatewayError> {
    let bytes = sample.bytes();
    if bytes <= max {
        return Ok(());
    }
    let what = field.map_or_else(|| "the sample".to_owned(), |f| format!("`{f}`"));
    Err(GatewayError::invalid(
        format!(
            "{what} is {bytes} bytes (question, contexts, answer and reference); at most {max}"
        ),
        field,
    ))
}

/// The `metrics` field: known names, deduplicated; `None` when absent (defaults apply).
fn parse_metrics(v: Option<&Value>) -> Result<Option<Vec<Metric>>, GatewayError> {
    let bad = || {
        GatewayError::invalid(
            format!(
                "`metrics` must be a non-empty array of metric names ({})",
                Metric::names()
            ),
            Some("metrics"),
        )
    };
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let names = v.as_array().filter(|a| !a.is_empty()).ok_or_else(bad)?;
    let mut metrics = Vec::with_capacity(names.len());
    for name in names {
        let name = name.as_str().ok_or_else(bad)?;
        let metric = Metric::parse(name).ok_or_else(|| {
            GatewayError::invalid(
                format!(
                    "`metrics`: unknown metric `{name}` (known: {})",
                    Metric::names()
                ),
                Some("metrics"),
            )
        })?;
        if !metrics.contains(&metric) {
            metrics.push(metric);
        }
    }
    Ok(Some(metrics))
}

/// One sample, every field checked; `prefix` names where it sits (`items[3].`).
pub fn parse_sample(v: &Value, prefix: &str, max_contexts: usize) -> Result<Sample, GatewayError> {
    let field = |name: &str| format!("{prefix}{name}");
    let Value::Object(obj) = v else {
        let name = prefix.trim_end_matches('.');
        return Err(GatewayError::invalid(
            format!("`{name}` must be an object"),
            Some(name),
        ));
    };
    if !prefix.is_empty()
        && let Some(key) = obj.keys().find(|k| !SAMPLE_FIELDS.contains(&k.as_str()))
    {
        let f = field(key);
        return Err(GatewayError::invalid(
            format!("unknown field `{f}`"),
            Some(&f),
        ));
    }
    let text = |name: &str, required_non_empty: bool| -> Result<Option<String>, GatewayError> {
        let f = field(name);
        match obj.get(name) {
            None | Some(Value::Null) if !required_non_empty => Ok(None),
            Some(Value::String(s)) if !(required_non_empty && s.trim().is_empty()) => {
                Ok(Some(s.clone()))
            }
            _ => Err(GatewayError::invalid(
                format!("`{f}` must be a non-empty string"),
                Some(&f),
            )),
        }
    };
    let question = text("question", true)?.unwrap_or_default();
    let answer = text("answer", true)?.unwrap_or_default();
    let reference = text("reference", false)?;
    let contexts_field = field("contexts");
    let contexts = obj
        .get("contexts")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            GatewayError::invalid(
                format!("`{contexts_field}` must be a non-empty array of strings"),
                Some(&contexts_field),
            )
        })?;
    if contexts.len() > max_contexts {
        return Err(GatewayError::invalid(
            format!(
                "`{contexts_field}` holds {} chunks; at most {max_contexts}",
                contexts.len()
            ),
            Some(&contexts_field),
        ));
    }
    let contexts = contexts
        .iter()
        .enumerate()
        .map(|(i, c)| {
            c.as_str().map(str::to_owned).ok_or_else(|| {
                let f = format!("{contexts_field}[{i}]");
                GatewayError::invalid(format!("`{f}` must be a string"), Some(&f))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Sample {
        question,
        contexts,
        answer,
        reference,
    })
}
