//! The semantic tier: a prompt's user-visible text is embedded and compared with the stored prompts
//! of the same scope (tenant, model, parameters, tools, system prompt and embedder — see
//! `cache::key::semantic_scope`). A candidate is served only when its similarity reaches the entry's
//! own threshold AND the lexical guards agree ([`super::guards`]): numbers, negations, entities,
//! units, direction and requested language. A hit points at an exact-tier reply, so a reply is stored
//! once whichever tier finds it.
//!
//! Learning: when a caller asks again with `Cache-Control: no-cache` right after a semantic hit for
//! the same text (a "regenerate"), the entry's threshold is raised above the similarity that served
//! it, so that near-duplicate is not served from it again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::guards::{self, Decision, Signature};
use super::index::{Index, Scope};
use crate::cache::config::{EmbedderKind, SemanticConfig};
use crate::cache::key::CacheKey;
use crate::embed::{EmbedError, Embedder};

/// Threshold for an upstream embeddings model when none is configured: conservative, since no
/// upstream model could be measured here (docs/CACHE_EVALUATION.md); set `cache.semantic.threshold`
/// from your own evaluation (`examples/cache_eval`).
pub const DEFAULT_THRESHOLD_MODEL: f32 = 0.90;

/// How long a served semantic hit is remembered for learning from a regenerate.
const RECENT_TTL: Duration = Duration::from_mins(10);
/// Most served hits remembered for learning.
const RECENT_CAPACITY: u64 = 10_000;
/// How far above the similarity that served a rejected answer the entry's threshold goes.
const LEARN_MARGIN: f32 = 0.005;

/// What an index entry points at.
#[derive(Debug)]
pub struct EntryMeta {
    /// The exact-tier key of the stored reply.
    pub key: CacheKey,
    /// Tenant (purge by key).
    pub tenant: Arc<str>,
    /// Public model name (purge by model).
    pub model: Arc<str>,
    /// The stored prompt (its guard signature is computed when a lookup reaches the entry's
    /// threshold: a few microseconds, against about 1 KB per entry to keep it).
    pub text: Box<str>,
}

/// The outcome of a lookup.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Served from entry `entry`, whose reply is under `key`.
    Hit {
        /// Exact-tier key of the reply.
        key: CacheKey,
        /// Similarity of the two prompts.
        similarity: f32,
        /// The index entry.
        entry: u64,
    },
    /// Not served: `no_candidate`, `below_threshold`, or the guard that disagreed.
    Miss(&'static str),
}

/// A looked-up prompt: its vector and signature are kept to store the reply without embedding again.
pub struct Lookup {
    /// The prompt's vector.
    pub vector: Vec<f32>,
    /// The guards' view of the prompt.
    pub signature: Signature,
    /// What the tier decided.
    pub outcome: Outcome,
}

/// The semantic tier.
pub struct SemanticTier {
    embedder: Arc<dyn Embedder>,
    index: Index<Arc<EntryMeta>>,
    threshold: f32,
    guards: bool,
    learn: bool,
    /// Served hits: hash of (scope, text) → (entry, similarity).
    recent: moka::sync::Cache<[u8; 32], (u64, f32)>,
    /// The settings.
    pub config: SemanticConfig,
}

impl SemanticTier {
    /// The tier over `embedder`.
    pub fn new(config: &SemanticConfig, embedder: Arc<dyn Embedder>) -> Self {
        let threshold = config.threshold.unwrap_or(match config.embedder {
            EmbedderKind::Local => guards::DEFAULT_THRESHOLD_MINILM,
            EmbedderKind::Model => DEFAULT_THRESHOLD_MODEL,
            EmbedderKind::Hashing | EmbedderKind::None => guards::DEFAULT_THRESHOLD_HASHING,
        });
        Self {
            index: Index::new(embedder.dims(), config.max_entries),
            embedder,
            threshold,
            guards: config.guards,
            learn: config.learn,
            recent: moka::sync::Cache::builder()
                .max_capacity(RECENT_CAPACITY)
                .time_to_live(RECENT_TTL)
                .build(),
            config: config.clone(),
        }
    }

    /// The embedder's id (part of every scope).
    pub fn embedder_id(&self) -> &str {
        self.embedder.id()
    }

    /// The default threshold of new entries.
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// Entries in the index.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Bytes of vectors held.
    pub fn vector_bytes(&self) -> usize {
        self.index.vector_bytes()
    }

    /// Embeds one text.
    pub async fn embed(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        let texts = [text.to_owned()];
        let mut vectors = self.embedder.embed(&texts).await?;
        vectors
            .pop()
            .filter(|v| v.len() == self.embedder.dims())
            .ok_or_else(|| EmbedError::Malformed("no vector of the right size".to_owned()))
    }

    /// Embeds `text` and looks it up in `scope`.
    pub async fn lookup(&self, scope: &Scope, text: &str) -> Result<Lookup, EmbedError> {
        let vector = self.embed(text).await?;
        let signature = Signature::of(text);
        let outcome = self.decide(scope, &vector, &signature);
        if let Outcome::Hit {
            similarity, entry, ..
        } = &outcome
        {
            self.recent
                .insert(recent_key(scope, text), (*entry, *similarity));
        }
        Ok(Lookup {
            vector,
            signature,
            outcome,
        })
    }

    /// The decision for a prompt already embedded: the best candidates in order, the first that
    /// reaches its entry's threshold and passes the guards is served.
    pub fn decide(&self, scope: &Scope, vector: &[f32], signature: &Signature) -> Outcome {
        let candidates = self.index.search(scope, vector, 0.0);
        if candidates.is_empty() {
            return Outcome::Miss("no_candidate");
        }
        let mut reason = "below_threshold";
        for c in candidates {
            // The entry's own threshold (the tier's default, raised by learning). Below it (or NaN)
            // `decide` misses whatever the signatures say, so the stored one is not computed.
            if c.similarity
                .partial_cmp(&c.threshold)
                .is_none_or(std::cmp::Ordering::is_lt)
            {
                continue;
            }
            let stored = Signature::of(&c.payload.text);
            match guards::decide(c.similarity, c.threshold, &stored, signature, self.guards) {
                Decision::Hit => {
                    return Outcome::Hit {
                        key: c.payload.key,
                        similarity: c.similarity,
                        entry: c.id,
                    };
                }
                Decision::Blocked(mismatch) => reason = mismatch.as_str(),
                Decision::Miss => {}
            }
        }
        Outcome::Miss(reason)
    }

    /// Stores a prompt's vector pointing at the reply under `meta.key`.
    pub fn insert(&self, scope: Scope, vector: &[f32], meta: EntryMeta, ttl: Duration) {
        self.index.insert(
            scope,
            vector,
            self.threshold,
            Instant::now() + ttl,
            Arc::new(meta),
        );
    }

    /// A regenerate (`no-cache`) of `text` in `scope`: if it was just served from the tier, raises
    /// that entry's threshold above the similarity that served it. True when something was learned.
    pub fn regenerated(&self, scope: &Scope, text: &str) -> bool {
        if !self.learn {
            return false;
        }
        let key = recent_key(scope, text);
        let Some((entry, similarity)) = self.recent.get(&key) else {
            return false;
        };
        self.recent.invalidate(&key);
        self.index.raise_threshold(entry, similarity + LEARN_MARGIN)
    }

    /// Removes the entries matching `tenant` and `model` (each `None` = any); returns how many.
    pub fn purge(&self, tenant: Option<&str>, model: Option<&str>) -> usize {
        self.index.remove_if(|m| {
            tenant.is_none_or(|t| *m.tenant == *t) && model.is_none_or(|x| *m.model == *x)
        })
    }
}

fn recent_key(scope: &Scope, text: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(scope);
    h.update(text.as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::hashing::HashingEmbedder;

    fn tier(threshold: f32) -> SemanticTier {
        let config = SemanticConfig {
            embedder: EmbedderKind::Hashing,
            threshold: Some(threshold),
            ..SemanticConfig::default()
        };
        SemanticTier::new(&config, Arc::new(HashingEmbedder::new(256)))
    }

    fn meta(n: u8) -> EntryMeta {
        EntryMeta {
            key: CacheKey([n; 32]),
            tenant: Arc::from("t"),
            model: Arc::from("m"),
            text: "x".into(),
        }
    }

    #[tokio::test]
    async fn near_duplicate_hits_unrelated_misses_other_scope_misses() {
        let t = tier(0.8);
        let stored = t.embed("What is the capital of Austria?").await.unwrap();
        t.insert([1; 32], &stored, meta(7), Duration::from_mins(1));
        let hit = t
            .lookup(&[1; 32], "what is the capital of austria")
            .await
            .unwrap();
        assert!(
            matches!(hit.outcome, Outcome::Hit { key, .. } if key == CacheKey([7; 32])),
            "{:?}",
            hit.outcome
        );
        let miss = t
            .lookup(&[1; 32], "How do I reverse a list in Python?")
            .await
            .unwrap();
        assert_eq!(miss.outcome, Outcome::Miss("below_threshold"));
        let other = t
            .lookup(&[2; 32], "What is the capital of Austria?")
            .await
            .unwrap();
        assert_eq!(other.outcome, Outcome::Miss("no_candidate"));
    }

    #[tokio::test]
    async fn a_regenerate_raises_the_entry_threshold_above_the_served_similarity() {
        let t = tier(0.8);
        let stored = t.embed("What is the capital of Austria?").await.unwrap();
        // The entry carries the stored prompt, as the request path stores it.
        let mut entry = meta(7);
        entry.text = "What is the capital of Austria?".into();
        t.insert([1; 32], &stored, entry, Duration::from_mins(1));
        let query = "what's the capital of Austria";
        let first = t.lookup(&[1; 32], query).await.unwrap();
        assert!(
            matches!(first.outcome, Outcome::Hit { .. }),
            "{:?}",
            first.outcome
        );
        assert!(!t.regenerated(&[1; 32], "something else"));
        assert!(t.regenerated(&[1; 32], query));
        let again = t.lookup(&[1; 32], query).await.unwrap();
        assert_eq!(again.outcome, Outcome::Miss("below_threshold"));
        // The exact same text still hits (similarity 1 is above any learned threshold).
        let exact = t
            .lookup(&[1; 32], "What is the capital of Austria?")
            .await
            .unwrap();
        assert!(matches!(exact.outcome, Outcome::Hit { .. }));
    }

    #[tokio::test]
    async fn purge_by_tenant_and_model() {
        let t = tier(0.8);
        let v = t.embed("hello").await.unwrap();
        t.insert([1; 32], &v, meta(1), Duration::from_mins(1));
        let mut other = meta(2);
        other.model = Arc::from("m2");
        t.insert([1; 32], &v, other, Duration::from_mins(1));
        assert_eq!(t.purge(None, Some("m2")), 1);
        assert_eq!(t.purge(Some("nobody"), None), 0);
        assert_eq!(t.purge(Some("t"), None), 1);
        assert!(t.is_empty());
    }
}
