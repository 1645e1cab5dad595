//! `[evaluation]`: the judge and embedding models of RAG evaluation, and the online sampler.

use std::time::Duration;

use serde::Deserialize;

/// The special `embedding_model` value naming the built-in lexical stand-in embedder (tests, CI).
pub const HASHING_EMBEDDER: &str = "hashing";

/// `[evaluation]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluationConfig {
    /// Model (a configured public name) that judges. Unset: `POST /v1/evaluations/rag` needs a
    /// `judge_model` in the request, and online sampling is off.
    pub judge_model: Option<String>,
    /// Embeddings model (a configured public name) for answer relevancy, or `"hashing"` for the
    /// deterministic lexical stand-in (tests only: it measures word overlap, not meaning). Unset: answer
    /// relevancy reports an error instead of a score.
    pub embedding_model: Option<String>,
    /// Dimensions of `embedding_model`'s vectors.
    pub embedding_dims: usize,
    /// Fraction (0–1) of chat requests carrying `sluice.rag.contexts` that are evaluated online.
    pub sample_rate: f64,
    /// Online evaluations waiting for the worker; when full, new ones are shed (and counted).
    pub queue_capacity: usize,
    /// Online evaluations running at once.
    pub online_concurrency: usize,
    /// Judge calls in flight at once, across online and API evaluations.
    pub max_judge_calls: usize,
    /// Longest one judge call may take before its metric fails with `judge timed out`.
    #[serde(with = "humantime_serde")]
    pub judge_timeout: Duration,
    /// Judge replies cached (by a hash of model and prompt); 0 disables the cache.
    pub cache_entries: u64,
    /// How long a cached judge reply is reused.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Questions generated from an answer for answer relevancy (Ragas uses 3).
    pub questions_per_answer: usize,
    /// Most samples in one `POST /v1/evaluations/rag` batch.
    pub max_batch: usize,
    /// Most contexts per sample.
    pub max_contexts: usize,
    /// Keep at most this many online score rows in the request log database.
    pub max_stored: u64,
}

impl Default for EvaluationConfig {
    fn default() -> Self {
        Self {
            judge_model: None,
            embedding_model: None,
            embedding_dims: 1536,
            sample_rate: 0.0,
            queue_capacity: 256,
            online_concurrency: 2,
            max_judge_calls: 8,
            judge_timeout: Duration::from_mins(1),
            cache_entries: 10_000,
            cache_ttl: Duration::from_hours(1),
            questions_per_answer: 3,
            max_batch: 64,
            max_contexts: 64,
            max_stored: 1_000_000,
        }
    }
}

impl EvaluationConfig {
    /// Checks ranges and that the named models are configured.
    pub fn validate(&self, is_model: impl Fn(&str) -> bool) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.sample_rate) {
            return Err("sample_rate must be between 0 and 1".to_owned());
        }
        for (name, value) in [
            ("queue_capacity", self.queue_capacity),
            ("online_concurrency", self.online_concurrency),
            ("max_judge_calls", self.max_judge_calls),
            ("questions_per_answer", self.questions_per_answer),
            ("max_batch", self.max_batch),
            ("max_contexts", self.max_contexts),
            ("embedding_dims", self.embedding_dims),
        ] {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.judge_timeout.is_zero() {
            return Err("judge_timeout must be greater than 0".to_owned());
        }
        if let Some(m) = self.judge_model.as_deref().filter(|m| !is_model(m)) {
            return Err(format!("judge_model: unknown model `{m}`"));
        }
        if let Some(m) = self
            .embedding_model
            .as_deref()
            .filter(|m| *m != HASHING_EMBEDDER && !is_model(m))
        {
            return Err(format!(
                "embedding_model: unknown model `{m}` (or \"{HASHING_EMBEDDER}\")"
            ));
        }
        if self.sample_rate > 0.0 && self.judge_model.is_none() {
            return Err("sample_rate > 0 needs a judge_model".to_owned());
        }
        Ok(())
    }
}
