//! `[auth]` and `[state]`: who may call, and where limits, spend and keys live.

use std::time::Duration;

use serde::Deserialize;

use super::keys::{Budget, Limits};

/// `[auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Require a virtual key on every API route (`/healthz`, `/readyz` and `/metrics` stay open). With
    /// `false`, calls without a key are served anonymously (no per-key limits); calls with a key are
    /// still checked.
    pub required: bool,
    /// Keys declared in the file (read-only through the admin API).
    pub keys: Vec<ConfigKey>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            required: true,
            keys: Vec::new(),
        }
    }
}

/// `[[auth.keys]]`: a key declared in the config file. The secret itself never is: give its SHA-256
/// (`printf %s "$KEY" | sha256sum`) or the name of an environment variable holding it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigKey {
    /// Name; also the key id (`cfg_<name>`).
    pub name: String,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: Option<String>,
    /// Environment variable holding the secret.
    pub secret_env: Option<String>,
    /// Models it may call; empty means all.
    #[serde(default)]
    pub models: Vec<String>,
    /// Its limits.
    #[serde(default)]
    pub limits: Limits,
    /// Its budget.
    pub budget: Option<Budget>,
    /// Cache switches for its calls.
    #[serde(default)]
    pub cache: Option<crate::cache::CachePolicy>,
}

/// Backend of shared state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// This process only, with SQLite for keys and spend. Nothing to install.
    Memory,
    /// Redis, shared by every replica.
    Redis,
}

/// What to do when Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// Keep serving, with limits counted in this process alone (counted in a metric).
    FailOpen,
    /// Refuse calls that need a limit or budget check (503) until Redis is back.
    FailClosed,
}

/// `[state]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// `memory` or `redis`.
    pub backend: Backend,
    /// SQLite file for keys and the spend ledger (memory backend; the redis backend keeps both in
    /// Redis). Created if missing.
    pub path: std::path::PathBuf,
    /// Redis URL (`redis://host:port/db`); no password here, see `redis_password_env`.
    pub redis_url: String,
    /// Environment variable holding the Redis password, if any.
    pub redis_password_env: Option<String>,
    /// Prefix of every Redis key Sluice writes.
    pub redis_prefix: String,
    /// Bound on each Redis operation.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// When Redis is unreachable.
    pub on_redis_error: FailurePolicy,
    /// How often keys are reloaded when they changed (revocation delay across replicas) and spend is
    /// written to the SQLite ledger (memory backend: the most a crash can lose).
    #[serde(with = "humantime_serde")]
    pub sync_interval: Duration,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Memory,
            path: "sluice-state.db".into(),
            redis_url: "redis://127.0.0.1:6379".to_owned(),
            redis_password_env: None,
            redis_prefix: "sluice:".to_owned(),
            redis_timeout: Duration::from_millis(250),
            on_redis_error: FailurePolicy::FailOpen,
            sync_interval: Duration::from_secs(1),
        }
    }
}
