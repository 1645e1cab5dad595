//! The evaluator: the requested metrics of one sample, run concurrently (judge calls are bounded by
//! [`Judges`]), each giving a score (`null` when undefined for the sample), or an error naming what went
//! wrong, plus every intermediate the score was computed from, so it can be audited.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::Metric;
use super::config::{EvaluationConfig, HASHING_EMBEDDER};
use super::judge::{JudgeError, Judges, Kind, Tally, rating, verdict};
use super::metrics;
use crate::embed::Embedder;
use crate::state::AppState;

/// One retrieval-augmented answer to evaluate.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct Sample {
    /// The user's question.
    pub question: String,
    /// The retrieved chunks, in retrieval order (rank 1 first).
    pub contexts: Vec<String>,
    /// The generated answer.
    pub answer: String,
    /// A reference (ground-truth) answer, if known (context recall needs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

impl Sample {
    /// Bytes of its text: question, contexts, answer and reference (what `max_sample_bytes` bounds).
    pub fn bytes(&self) -> usize {
        self.question.len()
            + self.contexts.iter().map(String::len).sum::<usize>()
            + self.answer.len()
            + self.reference.as_ref().map_or(0, String::len)
    }
}

/// The outcome of the metrics of one sample.
#[derive(Debug, Default)]
pub struct Evaluation {
    /// Score per metric that ran to the end (`None`: undefined for this sample, e.g. no statements).
    pub scores: BTreeMap<Metric, Option<f64>>,
    /// Error per metric that could not be computed.
    pub errors: BTreeMap<Metric, JudgeError>,
    /// Intermediates per metric (statements, verdicts, reasons, generated questions).
    pub details: BTreeMap<Metric, Value>,
}

impl Evaluation {
    /// `{scores, errors, details}` as the API returns them.
    pub fn to_json(&self) -> Value {
        let scores: serde_json::Map<String, Value> = self
            .scores
            .iter()
            .map(|(m, s)| (m.as_str().to_owned(), json!(s)))
            .collect();
        let errors: serde_json::Map<String, Value> = self
            .errors
            .iter()
            .map(|(m, e)| (m.as_str().to_owned(), Value::String(e.to_string())))
            .collect();
        let details: serde_json::Map<String, Value> = self
            .details
            .iter()
            .map(|(m, d)| (m.as_str().to_owned(), d.clone()))
            .collect();
        json!({"scores": scores, "errors": errors, "details": details})
    }
}

/// Evaluates samples with a judge model and an optional embedder.
pub struct Evaluator {
    /// The judge machinery (cache, bound, timeout).
    pub judges: Judges,
    embedder: Option<Arc<dyn Embedder>>,
    /// The embedder again when it calls a configured model: it must be bound to the state.
    provider_embedder: Option<Arc<crate::embed::provider::ProviderEmbedder>>,
    /// The configured judge model, used when a request names none.
    pub default_judge: Option<String>,
    questions_per_answer: usize,
}

impl Evaluator {
    /// Builds the evaluator of `[evaluation]`; call [`Evaluator::bind`] once the state exists.
    pub fn new(config: &EvaluationConfig) -> Self {
        let provider_embedder = config
            .embedding_model
            .as_deref()
            .filter(|m| *m != HASHING_EMBEDDER)
            .map(|model| {
                Arc::new(crate::embed::provider::ProviderEmbedder::new(
                    model,
                    config.embedding_dims,
                ))
            });
        let embedder: Option<Arc<dyn Embedder>> =
            match (&provider_embedder, config.embedding_model.as_deref()) {
                (Some(p), _) => Some(Arc::clone(p) as Arc<dyn Embedder>),
                (None, Some(_)) => Some(Arc::new(crate::embed::hashing::HashingEmbedder::new(
                    config.embedding_dims,
                ))),
                (None, None) => None,
            };
        Self {
            judges: Judges::new(
                config.max_judge_calls,
                config.judge_timeout,
                config.cache_entries,
                config.cache_bytes,
                config.cache_ttl,
            ),
            embedder,
            provider_embedder,
            default_judge: config.judge_model.clone(),
            questions_per_answer: config.questions_per_answer,
        }
    }

    /// Connects the judge (and a provider embedder) to the gateway.
    pub fn bind(&self, state: &AppState) {
        self.judges.bind(state);
        if let Some(p) = &self.provider_embedder {
            p.bind(state);
        }
    }

    /// Whether an embedder is configured (answer relevancy needs one).
    pub fn has_embedder(&self) -> bool {
        self.embedder.is_some()
    }

    /// Metrics run when a request names none: every metric the sample and configuration allow, except
    /// groundedness (an alternative to faithfulness, asked for explicitly).
    pub fn default_metrics(&self, has_reference: bool) -> Vec<Metric> {
        Metric::ALL
            .into_iter()
            .filter(|m| match m {
                Metric::ContextRecall => has_reference,
                Metric::AnswerRelevancy => self.embedder.is_some(),
                Metric::Groundedness => false,
                _ => true,
            })
            .collect()
    }

    /// Runs `metrics` on `sample` with judge `model`; judge usage goes to `tally`.
    pub async fn evaluate(
        &self,
        model: &str,
        sample: &Sample,
        metrics: &[Metric],
        tally: &Tally,
    ) -> Evaluation {
        let run = |metric: Metric| async move {
            let mut details = json!({});
            let result = match metric {
                Metric::Faithfulness => self.faithfulness(model, sample, tally, &mut details).await,
                Metric::AnswerRelevancy => {
                    self.answer_relevancy(model, sample, tally, &mut details)
                        .await
                }
                Metric::ContextPrecision => {
                    self.context_precision(model, sample, tally, &mut details)
                        .await
                }
                Metric::ContextRelevance => {
                    self.context_relevance(model, sample, tally, &mut details)
                        .await
                }
                Metric::ContextRecall => {
                    self.context_recall(model, sample, tally, &mut details)
                        .await
                }
                Metric::Groundedness => self.groundedness(model, sample, tally, &mut details).await,
            };
            (metric, result, details)
        };
        let outcomes = futures_util::future::join_all(metrics.iter().map(|m| run(*m))).await;
        let mut evaluation = Evaluation::default();
        for (metric, result, details) in outcomes {
            // A NaN or infinite score is a failure to say so, never a silent null.
            let result = result.and_then(|score| match score {
                Some(s) if !s.is_finite() => Err(malformed("the score is not a finite number")),
                score => Ok(score),
            });
            match result {
                Ok(score) => {
                    evaluation.scores.insert(metric, score);
                }
                Err(e) => {
                    evaluation.errors.insert(metric, e);
                }
            }
            if details.as_object().is_some_and(|d| !d.is_empty()) {
                evaluation.details.insert(metric, details);
            }
        }
        evaluation
    }

    async fn faithfulness(
        &self,
        model: &str,
        s: &Sample,
        tally: &Tally,
        details: &mut Value,
    ) -> Result<Option<f64>, JudgeError> {
        let statements: Vec<String> = self
            .judges
            .ask(
                model,
                Kind::Statements,
                &json!({"question": s.question, "answer": s.answer}),
                tally,
                |reply| {
                    Ok(list(reply, "statements", 0)?
                        .iter()
                        .filter_map(|v| v.as_str().map(str::trim).filter(|t| !t.is_empty()))
                        .map(str::to_owned)
                        .collect())
                },
            )
            .await?;
        details["statements"] = json!(statements);
        if statements.is_empty() {
            return Ok(None);
        }
        let (verdicts, shown) = self
            .judges
            .ask(
                model,
                Kind::Faithfulness,
                &json!({"context": joined(&s.contexts), "statements": statements}),
                tally,
                |reply| {
                    let labels = statements.iter().map(|t| Value::from(t.as_str()));
                    verdicts(reply, "text", labels, "faithfulness")
                },
            )
            .await?;
        details["statements"] = Value::Array(shown);
        Ok(metrics::ratio(&verdicts))
    }

    async fn answer_relevancy(
        &self,
        model: &str,
        s: &Sample,
        tally: &Tally,
        details: &mut Value,
    ) -> Result<Option<f64>, JudgeError> {
        let embedder = self.embedder.as_ref().ok_or_else(|| {
            JudgeError::Unavailable(
                "answer_relevancy needs an embeddings model: set [evaluation] embedding_model"
                    .to_owned(),
            )
        })?;
        let (questions, noncommittal): (Vec<String>, bool) =
            self.judges
                .ask(
                    model,
                    Kind::AnswerQuestions,
                    &json!({"answer": s.answer, "n": self.questions_per_answer}),
                    tally,
                    |reply| {
                        let questions = list(reply, "questions", 0)?
                            .iter()
                            .filter_map(|v| v.as_str().map(str::trim).filter(|t| !t.is_empty()))
                            .map(str::to_owned)
                            .take(self.questions_per_answer)
                            .collect();
                        let noncommittal = match reply.get("noncommittal") {
                            None | Some(Value::Null) => false,
                            Some(v) => verdict(v)
                                .ok_or_else(|| malformed("`noncommittal` is not 0 or 1"))?,
                        };
                        Ok((questions, noncommittal))
                    },
                )
                .await?;
        details["noncommittal"] = json!(u8::from(noncommittal));
        details["embedder"] = json!(embedder.id());
        if questions.is_empty() {
            details["generated_questions"] = json!([]);
            return Ok(metrics::answer_relevancy(&[], noncommittal));
        }
        let mut texts = Vec::with_capacity(questions.len() + 1);
        texts.push(s.question.clone());
        texts.extend(questions.iter().cloned());
        let vectors = embedder
            .embed(&texts)
            .await
            .map_err(|e| JudgeError::Embedding(e.to_string()))?;
        let cosines = relevancy_cosines(&vectors, texts.len())?;
        details["generated_questions"] = questions
            .iter()
            .zip(&cosines)
            .map(|(q, c)| json!({"question": q, "cosine": c}))
            .collect();
        Ok(metrics::answer_relevancy(&cosines, noncommittal))
    }

    async fn context_precision(
        &self,
        model: &str,
        s: &Sample,
        tally: &Tally,
        details: &mut Value,
    ) -> Result<Option<f64>, JudgeError> {
        if s.contexts.is_empty() {
            return Ok(None);
        }
        let (against, text) = match &s.reference {
            Some(r) => ("reference", r.as_str()),
            None => ("answer", s.answer.as_str()),
        };
        details["judged_against"] = json!(against);
        let (verdicts, shown) = self
            .judges
            .ask(
                model,
                Kind::ContextUsefulness,
                &json!({"question": s.question, "answer": text, "contexts": indexed(&s.contexts)}),
                tally,
                |reply| {
                    verdicts(
                        reply,
                        "index",
                        (0..s.contexts.len()).map(Value::from),
                        "usefulness",
                    )
                },
            )
            .await?;
        details["chunks"] = Value::Array(shown);
        Ok(metrics::average_precision(&verdicts))
    }

    async fn context_relevance(
        &self,
        model: &str,
        s: &Sample,
        tally: &Tally,
        details: &mut Value,
    ) -> Result<Option<f64>, JudgeError> {
        if s.contexts.is_empty() {
            return Ok(None);
        }
        let (ratings, shown) = self
            .judges
            .ask(
                model,
                Kind::ContextRelevance,
                &json!({"question": s.question, "contexts": indexed(&s.contexts)}),
                tally,
                |reply| ratings(reply, s.contexts.len(), |i| json!({"index": i})),
            )
            .await?;
        details["chunks"] = shown;
        Ok(metrics::normalized_mean(&ratings, 3.0))
    }

    async fn context_recall(
        &self,
        model: &str,
        s: &Sample,
        tally: &Tally,
        details: &mut Value,
    ) -> Result<Option<f64>, JudgeError> {
        let reference = s.reference.as_deref().ok_or_else(|| {
            JudgeError::Unavailable("context_recall needs a `reference` answer".to_owned())
        })?;
        let sentences = metrics::sentences(reference);
        if sentences.is_empty() {
            details["sentences"] = json!([]);
            return Ok(None);
        }
        let (verdicts, shown) = self
            .judges
            .ask(
                model,
                Kind::ContextRecall,
                &json!({"question": s.question, "context": joined(&s.contexts), "reference_sentences": sentences}),
                tally,
                |reply| {
                    let items = list(reply, "verdicts", sentences.len())?;
                    let mut verdicts = Vec::with_capacity(sentences.len());
                    let mut shown = Vec::with_capacity(sentences.len());
                    for (text, item) in sentences.iter().zip(items) {
                        let v = verdict(
                            item.get("attributed")
                                .or(item.get("verdict"))
                                .unwrap_or(item),
                        )
                        .ok_or_else(|| malformed("an attribution verdict is not 0 or 1"))?;
                        verdicts.push(v);
                        shown.push(
                            json!({"text": text, "attributed": u8::from(v), "reason": reason(item)}),
                        );
                    }
                    Ok((verdicts, shown))
                },
            )
            .await?;
        details["sentences"] = Value::Array(shown);
        Ok(metrics::ratio(&verdicts))
    }

    async fn groundedness(
        &self,
        model: &str,
        s: &Sample,
        tally: &Tally,
        details: &mut Value,
    ) -> Result<Option<f64>, JudgeError> {
        let sentences = metrics::sentences(&s.answer);
        if sentences.is_empty() {
            details["sentences"] = json!([]);
            return Ok(None);
        }
        let (ratings, shown) = self
            .judges
            .ask(
                model,
                Kind::Groundedness,
                &json!({"context": joined(&s.contexts), "sentences": sentences}),
                tally,
                |reply| {
                    ratings(
                        reply,
                        sentences.len(),
                        |i| json!({"text": sentences.get(i)}),
                    )
                },
            )
            .await?;
        details["sentences"] = shown;
        Ok(metrics::normalized_mean(&ratings, 3.0))
    }
}

/// Cosines between the question's vector (the first) and each generated question's, checked: one vector
/// per text, all of one dimension, none zero or non-finite, every cosine finite. A broken embedding is an
/// error of the metric, never a silent 0 (a zero vector) or null (NaN).
fn relevancy_cosines(vectors: &[Vec<f32>], texts: usize) -> Result<Vec<f64>, JudgeError> {
    let bad = |m: String| {
        Err(JudgeError::Embedding(format!(
            "answer_relevancy embeddings: {m}"
        )))
    };
    if vectors.len() != texts {
        return bad(format!(
            "the embedder returned {} vectors for {texts} texts",
            vectors.len()
        ));
    }
    let Some((first, rest)) = vectors.split_first() else {
        return bad("the embedder returned no vectors".to_owned());
    };
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    for (i, v) in vectors.iter().enumerate() {
        let what = if i == 0 {
            "the question".to_owned()
        } else {
            format!("generated question {i}")
        };
        if v.len() != first.len() {
            return bad(format!(
                "dimension mismatch: {what} has {} dimensions, the question {}",
                v.len(),
                first.len()
            ));
        }
        let n = norm(v);
        if !n.is_finite() {
            return bad(format!(
                "the vector of {what} is not finite (NaN or infinity)"
            ));
        }
        if n == 0.0 {
            return bad(format!("the vector of {what} is zero"));
        }
    }
    let first_norm = norm(first);
    let mut cosines = Vec::with_capacity(rest.len());
    for (i, v) in rest.iter().enumerate() {
        let dot: f64 = first
            .iter()
            .zip(v)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum();
        let c = dot / (first_norm * norm(v));
        if !c.is_finite() {
            return bad(format!(
                "the cosine of generated question {} is not finite",
                i + 1
            ));
        }
        cosines.push(c);
    }
    Ok(cosines)
}

fn malformed(what: &str) -> JudgeError {
    JudgeError::Malformed(what.to_owned())
}

/// The array `field` of a judge reply, with at least `min` entries.
fn list<'a>(reply: &'a Value, field: &str, min: usize) -> Result<&'a [Value], JudgeError> {
    let items = reply
        .get(field)
        .and_then(Value::as_array)
        .ok_or_else(|| JudgeError::Malformed(format!("the reply has no `{field}` list")))?;
    if items.len() < min {
        return Err(JudgeError::Malformed(format!(
            "{} entries in `{field}`, expected {min}",
            items.len()
        )));
    }
    Ok(items)
}

/// 0–3 ratings from the `scores` list of a reply, one per item, with what to show for each.
fn ratings(
    reply: &Value,
    n: usize,
    label: impl Fn(usize) -> Value,
) -> Result<(Vec<f64>, Value), JudgeError> {
    let items = list(reply, "scores", n)?;
    let mut ratings = Vec::with_capacity(n);
    let mut shown = Vec::with_capacity(n);
    for (i, item) in items.iter().take(n).enumerate() {
        let r = rating(item.get("score").unwrap_or(item), 3.0)
            .ok_or_else(|| malformed("a score is not a number from 0 to 3"))?;
        ratings.push(r);
        let mut entry = label(i);
        entry["score"] = json!(r);
        entry["reason"] = json!(reason(item));
        shown.push(entry);
    }
    Ok((ratings, Value::Array(shown)))
}

/// The binary verdicts of a judge reply (`verdicts`, one per label, in order), each shown for audit
/// with its label under `key` and the judge's reason.
fn verdicts(
    reply: &Value,
    key: &str,
    labels: impl ExactSizeIterator<Item = Value>,
    what: &str,
) -> Result<(Vec<bool>, Vec<Value>), JudgeError> {
    let items = list(reply, "verdicts", labels.len())?;
    let mut verdicts = Vec::with_capacity(labels.len());
    let mut shown = Vec::with_capacity(labels.len());
    for (label, item) in labels.zip(items) {
        let v = verdict(item.get("verdict").unwrap_or(item))
            .ok_or_else(|| malformed(&format!("a {what} verdict is not 0 or 1")))?;
        verdicts.push(v);
        let mut row = json!({"verdict": u8::from(v), "reason": reason(item)});
        row[key] = label;
        shown.push(row);
    }
    Ok((verdicts, shown))
}

fn reason(item: &Value) -> Option<&str> {
    item.get("reason").and_then(Value::as_str)
}

fn joined(contexts: &[String]) -> String {
    contexts.join("\n\n")
}

fn indexed(contexts: &[String]) -> Value {
    contexts
        .iter()
        .enumerate()
        .map(|(index, text)| json!({"index": index, "text": text}))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(vectors: &[Vec<f32>], texts: usize) -> String {
        relevancy_cosines(vectors, texts).unwrap_err().to_string()
    }

    #[test]
    fn cosines_of_sound_vectors() {
        let c = relevancy_cosines(&[vec![1.0, 0.0], vec![1.0, 0.0], vec![0.0, 2.0]], 3).unwrap();
        assert_eq!(c, [1.0, 0.0]);
        // Not normalised by the embedder: still a cosine.
        let c = relevancy_cosines(&[vec![3.0, 4.0], vec![6.0, 8.0]], 2).unwrap();
        assert!((c[0] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn broken_embeddings_are_errors_not_zero_or_null() {
        let e = err(&[vec![1.0, 0.0], vec![0.0, 0.0]], 2);
        assert!(e.contains("generated question 1 is zero"), "{e}");
        let e = err(&[vec![0.0, 0.0], vec![1.0, 0.0]], 2);
        assert!(e.contains("the question is zero"), "{e}");
        let e = err(&[vec![1.0, 0.0], vec![1.0, 0.0, 0.0]], 2);
        assert!(e.contains("dimension mismatch"), "{e}");
        let e = err(&[vec![1.0, 0.0], vec![f32::NAN, 1.0]], 2);
        assert!(e.contains("not finite"), "{e}");
        let e = err(&[vec![1.0, 0.0], vec![f32::INFINITY, 1.0]], 2);
        assert!(e.contains("not finite"), "{e}");
        let e = err(&[vec![1.0, 0.0]], 2);
        assert!(e.contains("1 vectors for 2 texts"), "{e}");
        let e = relevancy_cosines(&[vec![1.0], vec![1.0]], 2).map(|_| ());
        assert!(e.is_ok());
        assert_eq!(
            relevancy_cosines(&[vec![1.0, 0.0], vec![0.0, 0.0]], 2)
                .unwrap_err()
                .kind(),
            "embedding"
        );
    }
}
