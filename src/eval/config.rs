//! `[evaluation]`: the judge and embedding models of RAG evaluation, and the online sampler.

use std::time::Duration;

use serde::Deserialize;

/// The special `embedding_model` value naming the built-in lexical stand-in embedder (tests, CI).
pub const HASHING_EMBEDDER: &str = "hashing";

/// Upper bound of `queue_capacity`.
pub const MAX_QUEUE_CAPACITY: usize = 1_000_000;
/// Upper bound of `online_concurrency` and `max_judge_calls`.
pub const MAX_CONCURRENCY: usize = 10_000;
/// Upper bound of `questions_per_answer`.
pub const MAX_QUESTIONS: usize = 20;
/// Upper bound of `max_batch`.
pub const MAX_BATCH: usize = 10_000;
/// Upper bound of `max_contexts`.
pub const MAX_CONTEXTS: usize = 10_000;
/// Upper bound of `embedding_dims`.
pub const MAX_EMBEDDING_DIMS: usize = 65_536;
/// Upper bound of `max_sample_bytes` (64 MiB).
pub const MAX_SAMPLE_BYTES: usize = 64 * 1024 * 1024;
/// Upper bound of `cache_entries`.
pub const MAX_CACHE_ENTRIES: u64 = 100_000_000;

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
    /// Judge replies cached (by a hash of model, caller key and prompt); 0 disables the cache.
    pub cache_entries: u64,
    /// Bytes of judge replies cached at most (with `cache_entries`, whichever bound is hit first).
    pub cache_bytes: u64,
    /// How long a cached judge reply is reused.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Questions generated from an answer for answer relevancy (Ragas uses 3).
    pub questions_per_answer: usize,
    /// Most samples in one `POST /v1/evaluations/rag` batch.
    pub max_batch: usize,
    /// Most contexts per sample.
    pub max_contexts: usize,
    /// Largest sample, in bytes of question, contexts, answer and reference together: a larger one is
    /// a 400 from the API and is shed (`reason="too_large"`) online.
    pub max_sample_bytes: usize,
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
            cache_bytes: 64 * 1024 * 1024,
            cache_ttl: Duration::from_hours(1),
            questions_per_answer: 3,
            max_batch: 64,
            max_contexts: 64,
            max_sample_bytes: 256 * 1024,
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
        // Upper bounds keep a typo (an extra few zeros) a config error instead of a semaphore or channel
        // that panics at start-up (tokio caps permits at `usize::MAX >> 3`) or memory reserved for
        // nothing.
        for (name, value, max) in [
            ("queue_capacity", self.queue_capacity, MAX_QUEUE_CAPACITY),
            (
                "online_concurrency",
                self.online_concurrency,
                MAX_CONCURRENCY,
            ),
            ("max_judge_calls", self.max_judge_calls, MAX_CONCURRENCY),
            (
                "questions_per_answer",
                self.questions_per_answer,
                MAX_QUESTIONS,
            ),
            ("max_batch", self.max_batch, MAX_BATCH),
            ("max_contexts", self.max_contexts, MAX_CONTEXTS),
            ("embedding_dims", self.embedding_dims, MAX_EMBEDDING_DIMS),
            ("max_sample_bytes", self.max_sample_bytes, MAX_SAMPLE_BYTES),
        ] {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
            if value > max {
                return Err(format!("{name} must be at most {max}"));
            }
        }
        if self.cache_entries > MAX_CACHE_ENTRIES {
            return Err(format!("cache_entries must be at most {MAX_CACHE_ENTRIES}"));
        }
        if self.max_stored == 0 {
            return Err(
                "max_stored must be at least 1 (set sample_rate = 0 to store nothing)".to_owned(),
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn check(f: impl FnOnce(&mut EvaluationConfig)) -> Result<(), String> {
        let mut c = EvaluationConfig::default();
        f(&mut c);
        c.validate(|_| true)
    }

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(check(|_| {}), Ok(()));
    }

    #[test]
    fn huge_sizes_are_config_errors_not_start_up_panics() {
        // Past tokio's permit cap (usize::MAX >> 3): Semaphore::new / mpsc::channel would panic.
        let huge = usize::MAX >> 2;
        let cases: [(&str, Result<(), String>); 6] = [
            ("queue_capacity", check(|c| c.queue_capacity = huge)),
            ("online_concurrency", check(|c| c.online_concurrency = huge)),
            ("max_judge_calls", check(|c| c.max_judge_calls = huge)),
            (
                "questions_per_answer",
                check(|c| c.questions_per_answer = huge),
            ),
            ("max_sample_bytes", check(|c| c.max_sample_bytes = huge)),
            ("max_batch", check(|c| c.max_batch = huge)),
        ];
        for (name, result) in cases {
            let err = result.unwrap_err();
            assert!(err.starts_with(&format!("{name} must be at most")), "{err}");
        }
        let err = check(|c| c.cache_entries = u64::MAX).unwrap_err();
        assert!(err.starts_with("cache_entries must be at most"), "{err}");
        // The bounds themselves are accepted.
        assert_eq!(
            check(|c| {
                c.queue_capacity = MAX_QUEUE_CAPACITY;
                c.max_judge_calls = MAX_CONCURRENCY;
                c.cache_entries = MAX_CACHE_ENTRIES;
            }),
            Ok(())
        );
    }

    #[test]
    fn zero_sizes_are_config_errors() {
        let err = check(|c| c.max_stored = 0).unwrap_err();
        assert!(err.starts_with("max_stored must be at least 1"), "{err}");
        let err = check(|c| c.max_sample_bytes = 0).unwrap_err();
        assert!(
            err.starts_with("max_sample_bytes must be at least 1"),
            "{err}"
        );
    }
}
