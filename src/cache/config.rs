//! `[cache]`, `[cache.semantic]`, and the per-model / per-key switches ([`CachePolicy`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[cache]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// The exact tier: serve repeated deterministic requests (`temperature` 0) from the cache. Also the
    /// master switch: off means no caching at all.
    pub enabled: bool,
    /// Most bytes of replies kept in this process.
    pub max_bytes: u64,
    /// How long a reply is served (default; per model `[models.X] cache.ttl`, per request
    /// `x-sluice-cache-ttl`).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Longest TTL a request may ask for with `x-sluice-cache-ttl`.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// With `state.backend = "redis"`: share replies (and semantic entries) between replicas through
    /// Redis.
    pub shared: bool,
    /// How often a replica reads the semantic entries and purges other replicas wrote to Redis.
    #[serde(with = "humantime_serde")]
    pub sync_interval: Duration,
    /// `[cache.semantic]`.
    pub semantic: SemanticConfig,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_bytes: 64 * 1024 * 1024,
            ttl: Duration::from_hours(1),
            max_ttl: Duration::from_hours(24),
            shared: true,
            sync_interval: Duration::from_millis(250),
            semantic: SemanticConfig::default(),
        }
    }
}

/// Which embedder the semantic tier uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbedderKind {
    /// No semantic tier.
    #[default]
    None,
    /// all-MiniLM-L6-v2 in process (cargo feature `local-embedder`; files in `model_dir`).
    Local,
    /// A configured embeddings model (`embedding_model`, `dimensions`).
    Model,
    /// The deterministic feature-hashing stand-in (lexical; tests and demos).
    Hashing,
}

/// `[cache.semantic]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SemanticConfig {
    /// The embedder; `none` turns the tier off.
    pub embedder: EmbedderKind,
    /// Default for every model and key (`[models.X] cache.semantic` and a key's `cache.semantic`
    /// override it).
    pub enabled: bool,
    /// `embedder = "local"`: directory with `model.safetensors` and `tokenizer.json`.
    pub model_dir: std::path::PathBuf,
    /// `embedder = "model"`: the embeddings model (a key of `[models]`).
    pub embedding_model: Option<String>,
    /// `embedder = "model"`: dimensions of its vectors.
    pub dimensions: usize,
    /// Cosine similarity an entry must reach; default: the embedder's measured default (see
    /// docs/CACHE_EVALUATION.md).
    pub threshold: Option<f32>,
    /// Numbers, negations, entities, units, direction and language of the two prompts must agree.
    pub guards: bool,
    /// Raise an entry's own threshold above the similarity that served it when the caller asks again
    /// right after with `Cache-Control: no-cache` (a regenerate).
    pub learn: bool,
    /// Most entries in the index (oldest evicted first).
    pub max_entries: usize,
    /// Longest prompt text (characters) looked up; longer prompts bypass the tier.
    pub max_query_chars: usize,
    /// Most user turns in a request for it to be looked up (longer conversations need
    /// `x-sluice-cache-force`).
    pub max_turns: usize,
}

impl Default for SemanticConfig {
    fn default() -> Self {
        Self {
            embedder: EmbedderKind::None,
            enabled: false,
            model_dir: "models/all-MiniLM-L6-v2".into(),
            embedding_model: None,
            dimensions: 0,
            threshold: None,
            guards: true,
            learn: true,
            max_entries: 100_000,
            max_query_chars: 2_000,
            max_turns: 1,
        }
    }
}

impl CacheConfig {
    /// Checks the values; `models` are the configured model names.
    pub fn validate<'a>(&self, mut models: impl Iterator<Item = &'a String>) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if self.max_bytes == 0 || self.ttl.is_zero() || self.sync_interval.is_zero() {
            return Err(
                "cache.max_bytes, cache.ttl and cache.sync_interval must be greater than 0"
                    .to_owned(),
            );
        }
        if self.max_ttl < self.ttl {
            return Err("cache.max_ttl must be at least cache.ttl".to_owned());
        }
        let s = &self.semantic;
        if let Some(t) = s.threshold
            && !(t > 0.0 && t <= 1.0)
        {
            return Err("cache.semantic.threshold must be in (0, 1]".to_owned());
        }
        if s.embedder != EmbedderKind::None && (s.max_entries == 0 || s.max_turns == 0) {
            return Err(
                "cache.semantic.max_entries and max_turns must be greater than 0".to_owned(),
            );
        }
        match s.embedder {
            EmbedderKind::Model => {
                let Some(model) = &s.embedding_model else {
                    return Err(
                        "cache.semantic.embedder = \"model\" needs embedding_model".to_owned()
                    );
                };
                if !models.any(|m| m == model) {
                    return Err(format!(
                        "cache.semantic.embedding_model: unknown model `{model}`"
                    ));
                }
                if s.dimensions == 0 {
                    return Err("cache.semantic.embedder = \"model\" needs dimensions".to_owned());
                }
            }
            EmbedderKind::Local if !cfg!(feature = "local-embedder") => {
                return Err("cache.semantic.embedder = \"local\" needs a build with the `local-embedder` cargo feature".to_owned());
            }
            _ => {}
        }
        Ok(())
    }
}

/// Cache switches of one model (`[models.X] cache`) or one virtual key (its `cache` field). Unset
/// fields follow the global config; an explicit `false` on the model or the key wins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CachePolicy {
    /// The exact tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<bool>,
    /// The semantic tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semantic: Option<bool>,
    /// TTL of replies stored for it.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
}

impl CachePolicy {
    /// Whether a tier is on: off when the model or the key says so, else on when either says so, else
    /// `default`.
    pub fn resolve(model: Option<bool>, key: Option<bool>, default: bool) -> bool {
        if model == Some(false) || key == Some(false) {
            return false;
        }
        model == Some(true) || key == Some(true) || default
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_off_wins_then_any_on_then_default() {
        assert!(!CachePolicy::resolve(Some(false), Some(true), true));
        assert!(!CachePolicy::resolve(Some(true), Some(false), true));
        assert!(CachePolicy::resolve(None, Some(true), false));
        assert!(CachePolicy::resolve(Some(true), None, false));
        assert!(CachePolicy::resolve(None, None, true));
        assert!(!CachePolicy::resolve(None, None, false));
    }

    #[test]
    fn validation_names_the_field() {
        let mut c = CacheConfig::default();
        c.semantic.embedder = EmbedderKind::Model;
        let models = ["emb".to_owned()];
        assert!(
            c.validate(models.iter())
                .unwrap_err()
                .contains("embedding_model")
        );
        c.semantic.embedding_model = Some("nope".to_owned());
        assert!(
            c.validate(models.iter())
                .unwrap_err()
                .contains("unknown model `nope`")
        );
        c.semantic.embedding_model = Some("emb".to_owned());
        assert!(
            c.validate(models.iter())
                .unwrap_err()
                .contains("dimensions")
        );
        c.semantic.dimensions = 8;
        assert!(c.validate(models.iter()).is_ok());
        c.semantic.threshold = Some(1.5);
        assert!(c.validate(models.iter()).unwrap_err().contains("threshold"));
    }
}
