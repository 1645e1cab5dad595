//! The semantic tier: near-duplicate prompts answered from the cache, safe from false hits.
//!
//! - [`index`]: the bounded in-process vector index (per-entry TTL and threshold).
//! - [`guards`]: lexical guards — numbers, negations, entities, units, direction and language of the
//!   two prompts must agree, whatever the similarity.
//! - [`tier`]: the tier itself: which text is embedded, the scope it is compared in, the decision.
//! - [`eval`]: the labelled-pair evaluation of the matching rule (precision, recall, false-hit rate per kind
//!   and language, threshold sweeps); see `docs/CACHE_EVALUATION.md`.

pub mod eval;
pub mod guards;
pub mod index;
pub mod tier;
