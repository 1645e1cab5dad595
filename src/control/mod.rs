//! Access and cost control: virtual keys, rate limits, concurrency limits and budgets, in one place
//! between authentication and the provider call.
//!
//! The data path:
//!
//! 1. `middleware::auth` calls [`Control::authenticate`]: the key from `Authorization: Bearer` or
//!    `x-api-key` is hashed and looked up in the in-memory [`KeyIndex`] (no I/O), giving a [`Caller`].
//! 2. The handler parses the body, then [`Control::admit`] checks the model against the key (403) and
//!    every limit of the key and of the model at once (one [`limiter::Limiter::admit`]: one Redis script
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
pub mod sqlite;
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
    /// The memory backend's spend ledger.
    ledger: Option<SpendLedger>,
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
    /// Metric families, shared with the limiter (fail-over counts).
    pub metrics: metrics::ControlMetrics,
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
            metrics: parts.metrics,
            tasks: parts.tasks,
            warned: Arc::default(),
            ledger: None,
        };
        control.index.replace(control.config_keys.iter().cloned());
        control
    }

    /// Writes settled spend to durable storage (memory backend; Redis holds its own). Called by
    /// `app::serve` after the last connection and task ended, so no settlement comes later.
    pub async fn flush_spend(&self) {
        if let Some(ledger) = &self.ledger {
            ledger.flush().await;
        }
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

// === Start-up ===

/// Builds access control from the config: the key store and limiter of the configured backend, the
/// stored keys loaded, and the background loops (key reload; spend ledger) on `tasks`, stopping with
/// `shutdown`.
pub async fn build(
    config: &crate::config::Config,
    tasks: &tokio_util::task::TaskTracker,
    shutdown: &crate::shutdown::Shutdown,
) -> Result<Arc<Control>, String> {
    let metrics = metrics::ControlMetrics::default();
    metrics.backend_up.set(1);
    let model_limits = config
        .models
        .iter()
        .filter(|(_, m)| !m.limits.is_empty())
        .map(|(name, m)| (name.clone(), m.limits))
        .collect();
    let (store, limiter, ledger): (
        Arc<dyn store::KeyStore>,
        Arc<dyn limiter::Limiter>,
        Option<SpendLedger>,
    ) = match config.state.backend {
        config::Backend::Memory => {
            let path = config.state.path.clone();
            let sqlite = tokio::task::spawn_blocking(move || sqlite::SqliteStore::open(&path))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("{}: {e}", config.state.path.display()))?;
            let limiter = Arc::new(limiter::MemoryLimiter::new());
            limiter.load_spend(
                sqlite
                    .load_spend()
                    .await
                    .map_err(|e| format!("cannot read the spend ledger: {e}"))?,
            );
            let spend_ledger = SpendLedger {
                limiter: Arc::clone(&limiter),
                sqlite: sqlite.clone(),
            };
            spawn_spend_ledger(&spend_ledger, config.state.sync_interval, tasks, shutdown);
            (Arc::new(sqlite), limiter, Some(spend_ledger))
        }
        config::Backend::Redis => {
            // Connects lazily: the gateway starts while Redis is down and fails over meanwhile.
            let conn = redis::connection(&config.state).map_err(|e| e.to_string())?;
            let primary = redis::RedisLimiter::new(
                conn.clone(),
                &config.state,
                redis::LEASE_TTL,
                tasks,
                shutdown.signalled(),
            );
            let limiter = redis::Failover::new(
                primary,
                limiter::MemoryLimiter::new(),
                config.state.on_redis_error,
                metrics.clone(),
            );
            (
                Arc::new(redis::RedisKeyStore::new(conn, &config.state)),
                Arc::new(limiter),
                None,
            )
        }
    };
    let mut control = Control::new(ControlParts {
        required: config.auth.required,
        config_keys: config.config_keys.clone(),
        store,
        limiter,
        model_limits,
        tasks: tasks.clone(),
        metrics,
    });
    control.ledger = ledger;
    let control = Arc::new(control);
    match (control.reload().await, config.state.backend) {
        (Ok(()), _) => {}
        (Err(e), config::Backend::Memory) => return Err(format!("cannot load API keys: {e}")),
        // Redis down at start: config keys work now, stored keys once the reload loop reaches it.
        (Err(e), config::Backend::Redis) => {
            tracing::warn!(error = %e, "Redis unreachable at start: only config keys until it answers");
        }
    }
    spawn_key_reload(&control, config.state.sync_interval, tasks, shutdown);
    Ok(control)
}

/// Reloads the key index whenever the store's version changes (a key created, changed or revoked,
/// possibly by another replica).
fn spawn_key_reload(
    control: &Arc<Control>,
    every: std::time::Duration,
    tasks: &tokio_util::task::TaskTracker,
    shutdown: &crate::shutdown::Shutdown,
) {
    let control = Arc::clone(control);
    let stop = shutdown.signalled();
    tasks.spawn(async move {
        let mut seen = None;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            match control.store.version().await {
                Ok(version) if seen != Some(version) => match control.reload().await {
                    Ok(()) => seen = Some(version),
                    Err(e) => tracing::warn!(error = %e, "could not reload API keys"),
                },
                Ok(_) => {}
                Err(e) => {
                    control
                        .metrics
                        .backend_errors
                        .get_or_create(&metrics::BackendLabels { op: "keys" })
                        .inc();
                    tracing::warn!(error = %e, "could not check API keys for changes");
                }
            }
        }
    });
}

/// The memory backend's durable spend: settled spend is written to SQLite every `state.sync_interval`
/// and by [`Control::flush_spend`] after the server stopped, so a crash loses at most one interval and
/// a graceful stop nothing.
#[derive(Clone)]
pub struct SpendLedger {
    limiter: Arc<limiter::MemoryLimiter>,
    sqlite: sqlite::SqliteStore,
}

impl SpendLedger {
    /// Writes what changed since the last flush.
    pub async fn flush(&self) {
        let rows = self.limiter.take_dirty_spend();
        if !rows.is_empty()
            && let Err(e) = self.sqlite.save_spend(rows).await
        {
            tracing::warn!(error = %e, "could not write the spend ledger");
        }
    }
}

fn spawn_spend_ledger(
    ledger: &SpendLedger,
    every: std::time::Duration,
    tasks: &tokio_util::task::TaskTracker,
    shutdown: &crate::shutdown::Shutdown,
) {
    let ledger = ledger.clone();
    let stop = shutdown.signalled();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => ledger.flush().await,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::keys::{VirtualKey, hash_secret};
    use super::*;

    fn key(id: &str, secret: &str) -> VirtualKey {
        VirtualKey {
            id: id.to_owned(),
            name: id.to_owned(),
            prefix: String::new(),
            hash: encode_hash(&hash_secret(secret)),
            models: vec!["m".to_owned()],
            limits: keys::Limits::default(),
            budget: None,
            expires_at: None,
            revoked_at: None,
            metadata: std::collections::BTreeMap::new(),
            cache: None,
            created_at: 0,
            source: "api".to_owned(),
        }
    }

    fn control(required: bool) -> Control {
        Control::new(ControlParts {
            required,
            config_keys: vec![key("k1", "sk-one-0123456789")],
            store: Arc::new(store::MemoryKeyStore::default()),
            limiter: Arc::new(limiter::MemoryLimiter::new()),
            model_limits: HashMap::new(),
            tasks: tokio_util::task::TaskTracker::new(),
            metrics: metrics::ControlMetrics::default(),
        })
    }

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn hashes_round_trip_and_reject_garbage() {
        let h = hash_secret("x");
        assert_eq!(decode_hash(&encode_hash(&h)), Some(h));
        assert_eq!(decode_hash("zz"), None);
        assert_eq!(decode_hash(&"g".repeat(64)), None);
    }

    #[test]
    fn the_index_finds_only_the_exact_hash() {
        let index = KeyIndex::default();
        index.replace([key("a", "sk-a-0123456789")]);
        assert_eq!(
            index.lookup(&hash_secret("sk-a-0123456789")).unwrap().id,
            "a"
        );
        let mut near = hash_secret("sk-a-0123456789");
        near[31] ^= 1;
        assert!(index.lookup(&near).is_none());
        assert!(index.lookup(&hash_secret("sk-a-012345678")).is_none());
        // Keys without a valid stored hash are never indexed.
        let mut broken = key("b", "sk-b");
        broken.hash = "nope".to_owned();
        index.upsert(broken);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn keys_are_read_from_either_header_and_bearer_is_case_insensitive() {
        let c = control(true);
        for pairs in [
            vec![("authorization", "Bearer sk-one-0123456789")],
            vec![("authorization", "bearer   sk-one-0123456789 ")],
            vec![("x-api-key", "sk-one-0123456789")],
        ] {
            let caller = c.authenticate(&headers(&pairs)).unwrap();
            assert_eq!(caller.key_id(), Some("k1"), "{pairs:?}");
        }
        // Authorization wins over x-api-key: a wrong bearer is not rescued by a right x-api-key.
        let both = headers(&[
            ("authorization", "Bearer wrong"),
            ("x-api-key", "sk-one-0123456789"),
        ]);
        assert!(c.authenticate(&both).is_err());
        for pairs in [
            vec![],
            vec![("authorization", "Token sk-one-0123456789")],
            vec![("x-api-key", " ")],
        ] {
            let err = c.authenticate(&headers(&pairs)).unwrap_err();
            assert_eq!(err.status(), http::StatusCode::UNAUTHORIZED, "{pairs:?}");
        }
    }

    #[test]
    fn open_mode_serves_unknown_keys_anonymously_but_still_checks_known_ones() {
        let c = control(false);
        assert!(matches!(
            c.authenticate(&headers(&[("authorization", "Bearer unused")]))
                .unwrap(),
            Caller::Anonymous
        ));
        assert!(matches!(
            c.authenticate(&headers(&[])).unwrap(),
            Caller::Anonymous
        ));
        let caller = c
            .authenticate(&headers(&[("x-api-key", "sk-one-0123456789")]))
            .unwrap();
        assert_eq!(caller.key_id(), Some("k1"));
        assert!(c.permit(&caller, "m").is_ok());
        assert_eq!(
            c.permit(&caller, "other").unwrap_err().status(),
            http::StatusCode::FORBIDDEN
        );
    }
}
