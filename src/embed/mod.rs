//! Text embedders, behind one trait: used by the semantic cache (`crate::cache`) and by RAG evaluation
//! (answer relevancy).
//!
//! - [`hashing::HashingEmbedder`]: a small deterministic stand-in (feature hashing of words and
//!   character trigrams). No model, no network: for tests, CI and as a last resort. It measures
//!   lexical overlap, not meaning.
//! - [`provider::ProviderEmbedder`]: any embeddings model configured in `[models]`, called through
//!   Sluice's own provider layer (so the call is limited, traced and costed like any other).
//! - `minilm::MiniLm` (cargo feature `local-embedder`): all-MiniLM-L6-v2 run in process with candle,
//!   from `model.safetensors` + `tokenizer.json` in a directory (`scripts/fetch-minilm` fetches them).
//!
//! Vectors are L2-normalised, so cosine similarity is a dot product ([`cosine`]).

pub mod hashing;
#[cfg(feature = "local-embedder")]
pub mod minilm;
pub mod provider;

use futures_util::future::BoxFuture;

/// Why texts could not be embedded.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The embeddings call failed (upstream error, timeout, limit).
    #[error("embedding call failed: {0}")]
    Call(String),
    /// The embedder returned something unusable (wrong count, wrong dimensions, not numbers).
    #[error("embedder returned an unusable reply: {0}")]
    Malformed(String),
    /// The local model could not run.
    #[error("local embedder failed: {0}")]
    Local(String),
}

/// Turns texts into L2-normalised vectors of [`Embedder::dims`] floats.
pub trait Embedder: Send + Sync + 'static {
    /// Identifies the vector space (model and dimensions): vectors of different ids are never compared.
    fn id(&self) -> &str;

    /// Dimensions of every vector.
    fn dims(&self) -> usize;

    /// One normalised vector per text, in order.
    fn embed<'a>(&'a self, texts: &'a [String])
    -> BoxFuture<'a, Result<Vec<Vec<f32>>, EmbedError>>;
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in v {
            *x /= norm;
        }
    }
}

/// Cosine similarity of two normalised vectors (their dot product); 0 when the lengths differ.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The local embedder (all-MiniLM-L6-v2) from `dir`; needs the `local-embedder` cargo feature.
#[cfg(not(feature = "local-embedder"))]
pub fn local(dir: &std::path::Path) -> Result<std::sync::Arc<dyn Embedder>, String> {
    Err(format!(
        "the local embedder ({}) needs a build with the `local-embedder` cargo feature",
        dir.display()
    ))
}

/// The local embedder (all-MiniLM-L6-v2) from `dir` ([`minilm::MiniLm`]).
#[cfg(feature = "local-embedder")]
pub fn local(dir: &std::path::Path) -> Result<std::sync::Arc<dyn Embedder>, String> {
    minilm::MiniLm::load(dir)
        .map(|m| std::sync::Arc::new(m) as std::sync::Arc<dyn Embedder>)
        .map_err(|e| e.to_string())
}
