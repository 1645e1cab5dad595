//! `POST /v1/evaluations/rag`: RAG quality scores of one sample or a batch, judged by a configured model.
//!
//! Body: `{question, contexts[], answer, reference?, metrics?, judge_model?}`, or a batch
//! `{items: [{question, contexts[], answer, reference?}], metrics?, judge_model?}`. Every client mistake
//! is a 400 naming the field; a judge failure is a per-metric error in a 200 answer, never a 5xx.

use axum::Json;
use axum::extract::State;
use futures_util::stream::{self, StreamExt};
use serde_json::{Map, Value, json};

use super::extract::OpenAiJson;
use crate::error::GatewayError;
use crate::eval::Metric;
use crate::eval::judge::Tally;
use crate::eval::online::Limits;
use crate::eval::rag::Sample;
use crate::provider::CallContext;
use crate::state::AppState;

/// Samples of one batch evaluated at once (judge calls are bounded separately).
const BATCH_CONCURRENCY: usize = 4;

const SAMPLE_FIELDS: [&str; 4] = ["question", "contexts", "answer", "reference"];
const REQUEST_FIELDS: [&str; 3] = ["metrics", "judge_model", "items"];

/// Evaluates one sample or a batch.
#[tracing::instrument(skip_all)]
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
    state.control.permit(&ctx.caller, &judge)?;
    state.providers.route(&judge)?;
    let requested = parse_metrics(body.get("metrics"))?;
    let samples = samples(&body, batch, &rag.limits)?;
    let mut plans = Vec::with_capacity(samples.len());
    for (i, sample) in samples.iter().enumerate() {
        let metrics = match &requested {
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
                m.clone()
            }
            None => rag.evaluator.default_metrics(sample.reference.is_some()),
        };
        plans.push(metrics);
    }
    let tally = Tally::default();
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
        return Ok(vec![parse_sample(
            &Value::Object(body.clone()),
            "",
            limits.max_contexts,
        )?]);
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
        .map(|(i, item)| parse_sample(item, &format!("items[{i}]."), limits.max_contexts))
        .collect()
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
