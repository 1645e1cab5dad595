//! Online evaluation of live chat traffic, and [`Rag`], the evaluation part of the gateway state.
//!
//! A chat request opts in with a body extension that is removed before the upstream sees it:
//!
//! ```json
//! {"model": "...", "messages": [...], "sluice": {"rag": {"contexts": ["chunk 1", "chunk 2"]}}}
//! ```
//!
//! The question is the text of the last `user` message; the answer is the reply (streamed or not). A
//! fraction `[evaluation] sample_rate` of such requests is evaluated: when the answer is complete the
//! sample is offered to a bounded queue with `try_send` (never waiting; a full queue sheds it and counts
//! `sluice_rag_shed_total{reason="queue_full"}`; a sample over `max_sample_bytes` is shed as
//! `too_large`), and a worker on the task tracker evaluates at most `online_concurrency` at once. Only
//! choice 0 is evaluated. Scores go to `sluice_rag_score{metric,model,route}` and, when the request log is on, to its
//! `rag_scores` table ([`super::store`]).

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_util::stream::{Stream, StreamExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc, watch};

use super::config::EvaluationConfig;
use super::judge::Tally;
use super::rag::{Evaluator, Sample};
use super::store;
use super::store::ScoreStore;
use crate::error::GatewayError;
use crate::protocol::openai::{ChatCompletion, ChatRequest};
use crate::provider::ChunkStream;
use crate::state::AppState;
use crate::telemetry::call::Call;
use crate::telemetry::metrics::Label;

/// Limits of `POST /v1/evaluations/rag`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most samples per batch.
    pub max_batch: usize,
    /// Most contexts per sample.
    pub max_contexts: usize,
    /// Largest sample in bytes ([`Sample::bytes`]).
    pub max_sample_bytes: usize,
}

/// Why a sampled request was not evaluated: the `reason` label of `sluice_rag_shed_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ShedReason {
    /// The queue was full.
    QueueFull,
    /// The sample (question, contexts and answer) is larger than `max_sample_bytes`, or the streamed
    /// answer was cut at that cap.
    TooLarge,
}

impl ShedReason {
    /// Every reason: the label values are fixed.
    pub const ALL: [Self; 2] = [Self::QueueFull, Self::TooLarge];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::TooLarge => "too_large",
        }
    }
}

/// `reason` (`queue_full`, `too_large`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShedLabels {
    /// [`ShedReason::as_str`].
    pub reason: &'static str,
}

/// `metric`, `model`, `route`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScoreLabels {
    /// Metric name.
    pub metric: &'static str,
    /// Public model that produced the answer.
    pub model: Label,
    /// Matched route of the request.
    pub route: Label,
}

/// `metric`, `error` (the judge error kind).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Metric name.
    pub metric: &'static str,
    /// `malformed`, `timeout`, `rate_limited`, `failed`, `embedding`, `unavailable`.
    pub error: &'static str,
}

type Scores = Family<ScoreLabels, Histogram, fn() -> Histogram>;

fn score_histogram() -> Histogram {
    Histogram::new([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
}

/// The `sluice_rag_*` families.
#[derive(Clone)]
pub struct RagMetrics {
    /// `sluice_rag_score`: online scores per metric, model and route.
    pub score: Scores,
    /// `sluice_rag_null_scores_total`: online scores undefined for the sample (e.g. no statements).
    pub null_scores: Family<ErrorLabels, Counter>,
    /// `sluice_rag_metric_errors_total`: online metrics that failed, by judge error kind.
    pub errors: Family<ErrorLabels, Counter>,
    /// `sluice_rag_evaluations_total`: online samples evaluated.
    pub evaluations: Counter,
    /// `sluice_rag_shed_total{reason}`: sampled requests not evaluated because the queue was full or the
    /// sample too large.
    pub shed: Family<ShedLabels, Counter>,
}

impl Default for RagMetrics {
    fn default() -> Self {
        Self {
            score: Family::new_with_constructor(score_histogram as fn() -> Histogram),
            null_scores: Family::default(),
            errors: Family::default(),
            evaluations: Counter::default(),
            shed: Family::default(),
        }
    }
}

impl RagMetrics {
    /// Registers the families.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "rag_score",
            "Online RAG evaluation scores (0-1) per metric, model and route",
            self.score.clone(),
        );
        registry.register(
            "rag_null_scores",
            "Online RAG metrics undefined for the sample (e.g. an answer without statements)",
            self.null_scores.clone(),
        );
        registry.register(
            "rag_metric_errors",
            "Online RAG metrics that could not be computed, by judge error kind",
            self.errors.clone(),
        );
        registry.register(
            "rag_evaluations",
            "Online RAG samples evaluated",
            self.evaluations.clone(),
        );
        // Every reason is exported from the start (at 0), so a rate over it never starts from nothing.
        for reason in ShedReason::ALL {
            drop(self.shed.get_or_create(&ShedLabels {
                reason: reason.as_str(),
            }));
        }
        registry.register(
            "rag_shed",
            "Sampled RAG evaluations not evaluated: the queue was full or the sample too large",
            self.shed.clone(),
        );
    }

    /// Counts a sampled request that is not evaluated.
    pub fn shed(&self, reason: ShedReason) {
        self.shed
            .get_or_create(&ShedLabels {
                reason: reason.as_str(),
            })
            .inc();
    }
}

/// One sampled request waiting for evaluation.
struct Job {
    request_id: String,
    model: Label,
    route: Label,
    sample: Sample,
}

/// The evaluation part of the gateway state: the evaluator (API and online), the online sampler and
/// where online scores go.
pub struct Rag {
    /// The evaluator.
    pub evaluator: Evaluator,
    /// Limits of the API.
    pub limits: Limits,
    /// The `sluice_rag_*` metrics.
    pub metrics: RagMetrics,
    sampler: Option<Sampler>,
    store: Option<ScoreStore>,
    capture: store::Capture,
    /// Online samples finished (evaluated, stored); tests wait on it.
    evaluated: watch::Sender<u64>,
}

struct Sampler {
    judge: String,
    rate: f64,
    concurrency: usize,
    tx: mpsc::Sender<Job>,
    rx: Mutex<Option<mpsc::Receiver<Job>>>,
}

impl Rag {
    /// Builds the evaluation state from `[evaluation]`; online scores are stored in the request log's
    /// database when the log is enabled, under its retention and `capture_bodies` ([`store`]).
    pub fn new(
        config: &EvaluationConfig,
        request_log: &crate::request_log::RequestLogConfig,
        registry: &mut Registry,
    ) -> Result<Self, String> {
        let metrics = RagMetrics::default();
        metrics.register(registry);
        let sampler = config
            .judge_model
            .clone()
            .filter(|_| config.sample_rate > 0.0)
            .map(|judge| {
                let (tx, rx) = mpsc::channel(config.queue_capacity);
                Sampler {
                    judge,
                    rate: config.sample_rate,
                    concurrency: config.online_concurrency,
                    tx,
                    rx: Mutex::new(Some(rx)),
                }
            });
        let store = match (request_log.enabled, &sampler) {
            (true, Some(_)) => {
                let path = request_log.path.as_path();
                Some(
                    store::ScoreStore::open(path, config.max_stored, request_log.retention_age)
                        .map_err(|e| {
                            format!("evaluation: rag_scores table in {}: {e}", path.display())
                        })?,
                )
            }
            _ => None,
        };
        Ok(Self {
            evaluator: Evaluator::new(config),
            limits: Limits {
                max_batch: config.max_batch,
                max_contexts: config.max_contexts,
                max_sample_bytes: config.max_sample_bytes,
            },
            metrics,
            sampler,
            store,
            capture: store::Capture {
                details: request_log.capture_bodies,
                max_details_bytes: request_log.max_body_bytes,
            },
            evaluated: watch::Sender::new(0),
        })
    }

    /// Connects the evaluator to the gateway and starts the online worker (once).
    pub fn start(&self, state: &AppState) {
        self.evaluator.bind(state);
        let Some(sampler) = &self.sampler else {
            return;
        };
        let Some(rx) = sampler
            .rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let weak = state.downgrade();
        let stop = state.shutdown.signalled();
        let concurrency = sampler.concurrency;
        state.tasks.spawn(async move {
            worker(rx, weak, stop, concurrency).await;
        });
    }

    /// Takes the `sluice.rag` extension out of a chat request (it never goes upstream) and, when the
    /// request is sampled, returns the hook that evaluates its answer. A malformed extension is a 400.
    pub fn hook(&self, req: &mut ChatRequest) -> Result<Option<Hook>, GatewayError> {
        let Some(contexts) = take_contexts(req, self.limits.max_contexts)? else {
            return Ok(None);
        };
        let Some(sampler) = &self.sampler else {
            return Ok(None);
        };
        if !sampled(sampler.rate) {
            return Ok(None);
        }
        let question = req
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(crate::protocol::openai::ChatMessage::text_content)
            .unwrap_or_default();
        let given = question.len() + contexts.iter().map(String::len).sum::<usize>();
        // What is left of `max_sample_bytes` for the answer; nothing left: shed now, collect nothing.
        let Some(answer_budget) = self
            .limits
            .max_sample_bytes
            .checked_sub(given)
            .filter(|b| *b > 0)
        else {
            self.metrics.shed(ShedReason::TooLarge);
            return Ok(None);
        };
        Ok(Some(Hook {
            question,
            contexts,
            answer_budget,
            model: Label(Arc::from(req.model.as_str())),
        }))
    }

    /// The online evaluation of `request_id`, if stored.
    pub async fn stored(&self, request_id: String) -> Option<Value> {
        let store = self.store.clone()?;
        tokio::task::spawn_blocking(move || store.get(&request_id))
            .await
            .ok()?
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "rag_scores lookup failed");
                None
            })
    }

    /// Waits until `n` online samples have been evaluated (tests, tooling); false on timeout.
    pub async fn wait_evaluated(&self, n: u64, timeout: std::time::Duration) -> bool {
        let mut rx = self.evaluated.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|v| *v >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn offer(&self, job: Job) {
        let Some(sampler) = &self.sampler else {
            return;
        };
        if sampler.tx.try_send(job).is_err() {
            self.metrics.shed(ShedReason::QueueFull);
        }
    }
}

/// A sampled request: evaluates its answer once the answer is complete.
pub struct Hook {
    question: String,
    contexts: Vec<String>,
    /// Longest answer that keeps the sample within `max_sample_bytes`.
    answer_budget: usize,
    model: Label,
}

impl Hook {
    /// A non-streaming reply is complete: queue the evaluation of its first choice (`index` 0).
    pub fn answered(self, state: &AppState, call: &Call, reply: &ChatCompletion) {
        let answer = reply
            .choices
            .iter()
            .find(|c| c.index == 0)
            .map(|c| c.message.text_content())
            .unwrap_or_default();
        if answer.len() > self.answer_budget {
            state.rag.metrics.shed(ShedReason::TooLarge);
            return;
        }
        self.submit(state, call, answer);
    }

    /// Wraps a chat stream: when it ends normally, the streamed text of choice 0 is evaluated. A stream
    /// cut by an error or a client disconnect is not, nor one whose answer outgrew `max_sample_bytes`
    /// (collection stops there, and the sample is shed as `too_large`).
    pub fn watch(self, state: &AppState, call: Arc<Call>, stream: ChunkStream) -> ChunkStream {
        Watched {
            inner: stream,
            text: String::new(),
            failed: false,
            truncated: false,
            pending: Some((self, state.clone(), call)),
        }
        .boxed()
    }

    fn submit(self, state: &AppState, call: &Call, answer: String) {
        if answer.trim().is_empty() {
            return;
        }
        state.rag.offer(Job {
            request_id: call.request_id().to_owned(),
            model: self.model,
            route: Label(Arc::from(call.route())),
            sample: Sample {
                question: self.question,
                contexts: self.contexts,
                answer,
                reference: None,
            },
        });
    }
}

struct Watched {
    inner: ChunkStream,
    text: String,
    failed: bool,
    /// The answer outgrew its budget: collection stopped, the sample will be shed.
    truncated: bool,
    pending: Option<(Hook, AppState, Arc<Call>)>,
}

impl Stream for Watched {
    type Item = Result<crate::protocol::openai::ChatChunk, GatewayError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = std::task::ready!(self.inner.poll_next_unpin(cx));
        match &item {
            Some(Ok(chunk)) if !self.truncated => {
                // With `n` > 1 the choices interleave: only choice 0 is the answer evaluated.
                if let Some(text) = chunk
                    .choices
                    .iter()
                    .find(|c| c.index == 0)
                    .and_then(|c| c.delta.content.as_deref())
                {
                    let budget = self.pending.as_ref().map_or(0, |(h, ..)| h.answer_budget);
                    if self.text.len() + text.len() <= budget {
                        self.text.push_str(text);
                    } else {
                        // A sample with a hole is not the answer: stop collecting, shed it at the end.
                        self.truncated = true;
                        self.text = String::new();
                    }
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) => self.failed = true,
            None => {
                if !self.failed
                    && let Some((hook, state, call)) = self.pending.take()
                {
                    if self.truncated {
                        state.rag.metrics.shed(ShedReason::TooLarge);
                    } else {
                        let text = std::mem::take(&mut self.text);
                        hook.submit(&state, &call, text);
                    }
                }
            }
        }
        Poll::Ready(item)
    }
}

/// Removes `sluice` (whose only key is `rag`) from the request; the contexts, if the extension was
/// there. Any other key in `sluice` is a 400: it is a mistake, and would otherwise go upstream.
fn take_contexts(req: &mut ChatRequest, max: usize) -> Result<Option<Vec<String>>, GatewayError> {
    let Some(Value::Object(ext)) = req.extra.get_mut("sluice") else {
        return match req.extra.get("sluice") {
            None => Ok(None),
            Some(_) => Err(GatewayError::invalid(
                "`sluice` must be an object",
                Some("sluice"),
            )),
        };
    };
    if let Some(key) = ext.keys().find(|k| *k != "rag") {
        let f = format!("sluice.{key}");
        return Err(GatewayError::invalid(
            format!("unknown field `{f}` (known: `sluice.rag`)"),
            Some(&f),
        ));
    }
    let rag = ext.remove("rag");
    req.extra.remove("sluice");
    let Some(rag) = rag else {
        return Ok(None);
    };
    let bad = |m: &str, f: &str| Err(GatewayError::invalid(m.to_owned(), Some(f)));
    let Value::Object(mut rag) = rag else {
        return bad("`sluice.rag` must be an object", "sluice.rag");
    };
    if let Some(key) = rag.keys().find(|k| *k != "contexts") {
        let f = format!("sluice.rag.{key}");
        return Err(GatewayError::invalid(
            format!("unknown field `{f}`"),
            Some(&f),
        ));
    }
    let Some(Value::Array(items)) = rag.remove("contexts") else {
        return bad(
            "`sluice.rag.contexts` must be a non-empty array of strings",
            "sluice.rag.contexts",
        );
    };
    if items.is_empty() || items.len() > max {
        return Err(GatewayError::invalid(
            format!("`sluice.rag.contexts` must hold 1 to {max} strings"),
            Some("sluice.rag.contexts"),
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            if let Value::String(s) = v {
                Ok(s)
            } else {
                let f = format!("sluice.rag.contexts[{i}]");
                Err(GatewayError::invalid(
                    format!("`{f}` must be a string"),
                    Some(&f),
                ))
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// True with probability `rate`.
fn sampled(rate: f64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    let Ok(r) = getrandom::u64() else {
        return false;
    };
    #[expect(
        clippy::cast_precision_loss,
        reason = "53 bits of randomness are plenty"
    )]
    let u = (r >> 11) as f64 / (1u64 << 53) as f64;
    u < rate
}

async fn worker(
    mut rx: mpsc::Receiver<Job>,
    state: crate::state::WeakState,
    stop: tokio_util::sync::CancellationToken,
    concurrency: usize,
) {
    let permits = Arc::new(Semaphore::new(concurrency));
    loop {
        let job = tokio::select! {
            () = stop.cancelled() => break,
            job = rx.recv() => match job { Some(job) => job, None => break },
        };
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let Some(state) = state.upgrade() else { break };
        let tasks = state.tasks.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            // Shutdown does not wait for judges: an evaluation still running is abandoned.
            tokio::select! {
                () = evaluate(&state, job) => {}
                () = stop.cancelled() => {}
            }
            drop(permit);
        });
    }
}

async fn evaluate(state: &AppState, job: Job) {
    let rag = &state.rag;
    let Some(sampler) = &rag.sampler else { return };
    let metrics = rag.evaluator.default_metrics(false);
    // Online judge calls are the gateway's own, charged to no key (see docs/RAG_EVALUATION.md).
    let tally = Tally::for_caller(None);
    let evaluation = rag
        .evaluator
        .evaluate(&sampler.judge, &job.sample, &metrics, &tally)
        .await;
    for (metric, score) in &evaluation.scores {
        match score {
            Some(s) => rag
                .metrics
                .score
                .get_or_create(&ScoreLabels {
                    metric: metric.as_str(),
                    model: job.model.clone(),
                    route: job.route.clone(),
                })
                .observe(*s),
            None => {
                rag.metrics
                    .null_scores
                    .get_or_create(&ErrorLabels {
                        metric: metric.as_str(),
                        error: "null",
                    })
                    .inc();
            }
        }
    }
    for (metric, error) in &evaluation.errors {
        // The message may quote the judge provider's error body: only its kind at info, the redacted
        // text at debug.
        tracing::info!(request_id = %job.request_id, metric = metric.as_str(), error = error.kind(),
            "online RAG metric failed");
        tracing::debug!(request_id = %job.request_id, metric = metric.as_str(),
            error = %crate::request_log::redact(&error.to_string()), "online RAG metric failure detail");
        rag.metrics
            .errors
            .get_or_create(&ErrorLabels {
                metric: metric.as_str(),
                error: error.kind(),
            })
            .inc();
    }
    rag.metrics.evaluations.inc();
    if let Some(store) = rag.store.clone() {
        let mut result = evaluation.to_json();
        result["judge"] = tally.to_json();
        let (id, model, judge, capture) = (
            job.request_id,
            job.model.0.to_string(),
            sampler.judge.clone(),
            rag.capture,
        );
        // Redaction runs regexes over the details: on the blocking pool, with the write.
        let stored = tokio::task::spawn_blocking(move || {
            store.insert(&id, &model, &judge, &store::stored_result(result, capture))
        })
        .await;
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not store online RAG scores"),
            Err(e) => tracing::warn!(error = %e, "could not store online RAG scores"),
        }
    }
    rag.evaluated.send_modify(|n| *n += 1);
}
