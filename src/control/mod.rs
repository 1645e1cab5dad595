//! Access and cost control: virtual keys, rate limits, concurrency limits and budgets, in one place
//! between authentication and the provider call.
//!
//! The data path:
//!
//! 1. `middleware::auth` calls [`Control::authenticate`]: the key from `Authorization: Bearer` or
//!    `x-api-key` is hashed and looked up in the in-memory [`KeyIndex`] (no I/O), giving a [`Caller`].
//! 2. The handler parses the body, then [`Control::admit`] checks the model against the key (403) and
//!    every limit of the key and of the model at once (one [`Limiter::admit`]: one Redis script
//!    round trip, or one mutex in memory). Tokens and budget are reserved from an estimate (prompt
//!    tokens + `max_tokens`, priced). The [`Admission`] rides on the call record.
//! 3. When the call is over (last byte of a stream, or the client left), the call record settles the
//!    admission with the real usage and exact cost: token reservations reconciled, spend recorded,
//!    the concurrency slot released.
//!
//! Keys are kept in [`store::KeyStore`] (SQLite, or Redis) and mirrored into the [`KeyIndex`], reloaded
//! when the store's version changes (every `state.sync_interval`): that is how a revocation on one
//! replica reaches the others.

mod admission;
pub mod config;
pub mod keys;
pub mod limiter;
pub mod metrics;
pub mod redis;
pub mod store;

pub use admission::{
    Admission, Decision, budget_bucket, format_reset, from_nanos, period_bucket, to_nanos,
};

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Milliseconds since the Unix epoch, wall clock.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No key (only when `auth.required = false`).
    Anonymous,
    /// A valid virtual key.
    Key(Arc<keys::VirtualKey>),
}

impl Caller {
    /// The key id, for logs and the request log.
    pub fn key_id(&self) -> Option<&str> {
        match self {
            Self::Anonymous => None,
            Self::Key(key) => Some(&key.id),
        }
    }
}

/// Every key, by the hash of its secret; what authentication reads.
#[derive(Default)]
pub struct KeyIndex {
    by_hash: RwLock<HashMap<keys::SecretHash, Arc<keys::VirtualKey>>>,
}

impl KeyIndex {
    /// Replaces the whole index.
    pub fn replace(&self, all: impl IntoIterator<Item = keys::VirtualKey>) {
        let map = all
            .into_iter()
            .filter_map(|k| Some((decode_hash(&k.hash)?, Arc::new(k))))
            .collect();
        *self
            .by_hash
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = map;
    }

    /// Adds or replaces one key.
    pub fn upsert(&self, key: keys::VirtualKey) {
        if let Some(hash) = decode_hash(&key.hash) {
            self.by_hash
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(hash, Arc::new(key));
        }
    }

    /// The key whose secret hashes to `hash`, compared in constant time.
    pub fn lookup(&self, hash: &keys::SecretHash) -> Option<Arc<keys::VirtualKey>> {
        let map = self
            .by_hash
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The map finds the candidate by hash; the final comparison does not stop at the first
        // differing byte, so response timing says nothing about how close a guess was.
        let (stored, key) = map.get_key_value(hash)?;
        keys::hashes_match(stored, hash).then(|| Arc::clone(key))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.by_hash
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Parses a hex SHA-256.
pub fn decode_hash(hex: &str) -> Option<keys::SecretHash> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0_u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// Hex of a SHA-256.
pub fn encode_hash(hash: &keys::SecretHash) -> String {
    use std::fmt::Write as _;
    hash.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

// === The facade ===

/// What the handler knows before the call, for the token and budget reservations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Estimate {
    /// Input tokens (counted with the model's tokenizer, or estimated).
    pub input_tokens: u64,
    /// `max_tokens` (or `max_completion_tokens`) of the request, if set. Without it only the input is
    /// reserved and the output is charged when the call settles.
    pub max_output_tokens: Option<u64>,
}

impl Estimate {
    /// Tokens to reserve.
    pub fn tokens(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.max_output_tokens.unwrap_or(0))
    }
}

/// Access control: keys, limits and budgets.
pub struct Control {
    required: bool,
    index: KeyIndex,
    config_keys: Vec<keys::VirtualKey>,
    store: Arc<dyn store::KeyStore>,
    limiter: Arc<dyn limiter::Limiter>,
    model_limits: HashMap<String, keys::Limits>,
    /// Metric families.
    pub metrics: metrics::ControlMetrics,
    tasks: tokio_util::task::TaskTracker,
    /// Budget buckets whose soft threshold was already reported.
    warned: Arc<std::sync::Mutex<std::collections::HashSet<Arc<str>>>>,
}

/// The parts [`Control::new`] is built from.
pub struct ControlParts {
    /// `auth.required`.
    pub required: bool,
    /// Keys declared in the config file.
    pub config_keys: Vec<keys::VirtualKey>,
    /// Where keys are stored.
    pub store: Arc<dyn store::KeyStore>,
    /// Where limits and spend live.
    pub limiter: Arc<dyn limiter::Limiter>,
    /// Per-model limits.
    pub model_limits: HashMap<String, keys::Limits>,
    /// Background work (settlement on a remote backend) is tracked here.
    pub tasks: tokio_util::task::TaskTracker,
}

/// How a presented secret is carried.
fn presented_secret(headers: &http::HeaderMap) -> Option<Result<&str, ()>> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION) {
        let parsed = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|s| !s.is_empty());
        return Some(parsed.ok_or(()));
    }
    let value = headers.get("x-api-key")?;
    Some(
        value
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(()),
    )
}

impl Control {
    /// Builds the control and loads the config keys into the index (call [`Control::reload`] to add the
    /// stored ones).
    pub fn new(parts: ControlParts) -> Self {
        let control = Self {
            required: parts.required,
            index: KeyIndex::default(),
            config_keys: parts.config_keys,
            store: parts.store,
            limiter: parts.limiter,
            model_limits: parts.model_limits,
            metrics: metrics::ControlMetrics::default(),
            tasks: parts.tasks,
            warned: Arc::default(),
        };
        control.index.replace(control.config_keys.iter().cloned());
        control.metrics.backend_up.set(1);
        control
    }

    /// Whether every API call needs a key.
    pub fn required(&self) -> bool {
        self.required
    }

    /// The key store.
    pub fn store(&self) -> &Arc<dyn store::KeyStore> {
        &self.store
    }

    /// The key index.
    pub fn index(&self) -> &KeyIndex {
        &self.index
    }

    /// The config-declared key with this id.
    pub fn config_key(&self, id: &str) -> Option<&keys::VirtualKey> {
        self.config_keys.iter().find(|k| k.id == id)
    }

    /// Config keys followed by stored keys.
    pub async fn all_keys(&self) -> Result<Vec<keys::VirtualKey>, limiter::BackendError> {
        let mut all = self.config_keys.clone();
        all.extend(self.store.list().await?);
        Ok(all)
    }

    /// Reloads the index from the config keys and the store.
    pub async fn reload(&self) -> Result<(), limiter::BackendError> {
        let all = self.all_keys().await?;
        self.index.replace(all);
        Ok(())
    }

    /// Who is calling, from `Authorization: Bearer <key>` or `x-api-key: <key>`.
    pub fn authenticate(&self, headers: &http::HeaderMap) -> Result<Caller, GatewayError> {
        let fail = |reason: &'static str, message: &str| {
            self.metrics
                .auth_failures
                .get_or_create(&metrics::AuthFailureLabels { reason })
                .inc();
            Err(GatewayError::Unauthorized(message.to_owned()))
        };
        let secret = match presented_secret(headers) {
            None if self.required => {
                return fail(
                    "missing",
                    "missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`",
                );
            }
            Some(Err(())) if self.required => {
                return fail(
                    "malformed",
                    "malformed API key header: expected `Authorization: Bearer <key>` or `x-api-key: <key>`",
                );
            }
            None | Some(Err(())) => return Ok(Caller::Anonymous),
            Some(Ok(secret)) => secret,
        };
        let Some(key) = self.index.lookup(&keys::hash_secret(secret)) else {
            // Open mode: SDKs always send some key; one Sluice does not know is no key at all.
            return if self.required {
                fail("unknown", "invalid API key")
            } else {
                Ok(Caller::Anonymous)
            };
        };
        match key.unusable(unix_ms()) {
            Some("revoked") => fail("revoked", "this API key was revoked"),
            Some(_) => fail("expired", "this API key has expired"),
            None => Ok(Caller::Key(key)),
        }
    }
}

use crate::error::GatewayError;
