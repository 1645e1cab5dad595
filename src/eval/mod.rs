//! RAG quality evaluation: faithfulness, answer relevancy, context precision / relevance / recall and
//! TruLens-style groundedness, judged by an LLM reached through Sluice's own provider layer.
//!
//! - [`metrics`]: the pure formulas (ratios with null, rank-weighted average precision, normalisation,
//!   bootstrap confidence intervals, AUC). No I/O.
//! - [`judge`]: prompts per judgment, lenient JSON extraction, the [`judge::Judge`] that calls a
//!   configured model at temperature 0 as an internal, recorded call, with a bounded cache of replies.
//! - [`rag`]: the evaluator: runs the requested metrics of one sample, keeps every intermediate
//!   (statements, verdicts, reasons) and reports a per-metric error instead of a score when a judgment
//!   fails.
//! - [`online`]: samples live chat traffic that carries its retrieved contexts, evaluates it off the
//!   request path through a bounded queue, exports `sluice_rag_*` metrics and stores scores next to the
//!   request log ([`store`]).
//! - [`report`]: the self-contained HTML report of `sluice eval rag`; [`cli`]: the command itself.
//!
//! Definitions and citations: `docs/RAG_EVALUATION.md`.

pub mod cli;
pub mod config;
pub mod judge;
pub mod metrics;
pub mod online;
pub mod rag;
pub mod report;
pub mod store;

pub use config::EvaluationConfig;

/// One evaluation metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Ragas faithfulness: supported statements ÷ statements of the answer.
    Faithfulness,
    /// Ragas answer relevancy: mean cosine between the question and questions generated from the answer.
    AnswerRelevancy,
    /// Ragas context precision: rank-weighted average precision of per-chunk usefulness verdicts.
    ContextPrecision,
    /// TruLens context relevance: mean 0–3 relevance of each chunk to the question, normalised.
    ContextRelevance,
    /// Ragas context recall: reference sentences attributable to the contexts ÷ reference sentences.
    ContextRecall,
    /// TruLens groundedness: mean 0–3 support of each answer sentence by the contexts, normalised.
    Groundedness,
}

impl Metric {
    /// Every metric, in report order.
    pub const ALL: [Self; 6] = [
        Self::Faithfulness,
        Self::AnswerRelevancy,
        Self::ContextPrecision,
        Self::ContextRelevance,
        Self::ContextRecall,
        Self::Groundedness,
    ];

    /// The wire name (`faithfulness`, `answer_relevancy`, ...), also the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Faithfulness => "faithfulness",
            Self::AnswerRelevancy => "answer_relevancy",
            Self::ContextPrecision => "context_precision",
            Self::ContextRelevance => "context_relevance",
            Self::ContextRecall => "context_recall",
            Self::Groundedness => "groundedness",
        }
    }

    /// The metric of a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// Every wire name, comma-separated, for error messages.
    pub fn names() -> String {
        Self::ALL
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Metric {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
