//! Semantic cache tier (issue 6): serve a stored reply for a prompt that means the same thing as a cached one.
//!
//! - [`guards`]: a lexical signature of a prompt and the agreement check (numbers, negation, entities, units,
//!   direction, polarity, scope, requested language) plus [`guards::decide`], the one matching rule that the
//!   request path uses and that the evaluation measures.
//! - [`eval`]: the labelled-pair evaluation (precision, recall, false-hit rate per kind and language, threshold
//!   sweeps); see `docs/CACHE_EVALUATION.md`.

pub mod eval;
pub mod guards;
