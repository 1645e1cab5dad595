//! Configuration: TOML (embedded default or `--config`), `SLUICE_*` environment overrides, strict parsing,
//! then validation into the runtime [`Config`].
//!
//! Two passes on purpose: the file is first parsed alone with `toml`, whose errors carry the line and
//! column of the bad key; then figment merges the environment on top and the result is validated. A typo
//! in the file is reported as `config/sluice.toml: TOML parse error at line 12, column 1 ... unknown field`.

mod providers;
mod server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

pub use providers::{
    FailureMode, HttpProviderConfig, MockProviderConfig, ModelConfig, ProviderConfig, Timeouts,
};
pub use server::{DisconnectPolicy, LogConfig, LogFormat, ServerConfig};

pub use crate::control::config::{AuthConfig, Backend, ConfigKey, FailurePolicy, StateConfig};
pub use crate::request_log::RequestLogConfig;
pub use crate::telemetry::TelemetryConfig;

/// The default configuration, compiled into the binary.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/sluice.toml");

/// Prefix of environment overrides; `__` separates nesting levels (`SLUICE_SERVER__LISTEN`).
pub const ENV_PREFIX: &str = "SLUICE_";

/// A configuration that cannot be used, with a message naming the file, field and line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or has an unknown or mistyped field.
    #[error("{origin}: {message}")]
    Parse {
        /// File name or `embedded default`.
        origin: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// An environment override is malformed.
    #[error("environment override: {0}")]
    Env(String),
    /// The values parse but do not make a working gateway.
    #[error("{origin}: {message}")]
    Invalid {
        /// File name or `embedded default`.
        origin: String,
        /// What is wrong, naming the field.
        message: String,
    },
}

/// Configuration as written: every section optional, every struct strict.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Listener, limits, timeouts, shutdown.
    #[serde(default)]
    pub server: ServerConfig,
    /// Named providers.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Public model name -> provider.
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Metrics and trace export.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The request log.
    #[serde(default)]
    pub request_log: RequestLogConfig,
    /// Admin API access.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Virtual keys required, and keys declared in the file.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Where limits, spend and keys live.
    #[serde(default)]
    pub state: StateConfig,
    /// Conversation sessions.
    #[serde(default)]
    pub sessions: crate::sessions::config::SessionsConfig,
    /// Response caching.
    #[serde(default)]
    pub cache: crate::cache::CacheConfig,
    /// RAG evaluation.
    #[serde(default)]
    pub evaluation: crate::eval::EvaluationConfig,
}

/// `[admin]`: the admin API is denied unless a key is configured.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Name of the environment variable holding the admin key (sent as `Authorization: Bearer`).
    pub api_key_env: Option<String>,
}

/// Validated configuration: every model names an existing provider, every referenced key is present.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listener, limits, timeouts, shutdown.
    pub server: ServerConfig,
    /// Named providers.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Public model name -> provider.
    pub models: BTreeMap<String, ModelConfig>,
    /// Logging.
    pub log: LogConfig,
    /// Metrics and trace export.
    pub telemetry: TelemetryConfig,
    /// The request log.
    pub request_log: RequestLogConfig,
    /// The admin key (read from the environment variable `admin.api_key_env`), if configured.
    pub admin_key: Option<secrecy::SecretString>,
    /// `[auth]`.
    pub auth: AuthConfig,
    /// Keys declared in `[[auth.keys]]`, resolved (secrets hashed).
    pub config_keys: Vec<crate::control::keys::VirtualKey>,
    /// `[state]`.
    pub state: StateConfig,
    /// `[sessions]`.
    pub sessions: crate::sessions::config::SessionsConfig,
    /// `[cache]`.
    pub cache: crate::cache::CacheConfig,
    /// `[evaluation]`.
    pub evaluation: crate::eval::EvaluationConfig,
    /// Where the configuration came from, for messages.
    pub origin: String,
}

impl Config {
    /// Loads `path` (or the embedded default), applies `SLUICE_*` overrides from the process environment
    /// and validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        // Only `SLUICE_<SECTION>__<KEY>` names are config overrides; other `SLUICE_*` variables
        // (`SLUICE_CONFIG`, key variables named by `api_key_env`) are not.
        Self::load_with_env(
            path,
            Env::prefixed(ENV_PREFIX)
                .filter(|key| key.as_str().contains("__"))
                .split("__"),
        )
    }

    /// Parses a TOML string without environment overrides (tests, `check-config` of inline text).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_sources(text, "inline config", None)
    }

    fn load_with_env(path: Option<&Path>, env: Env) -> Result<Self, ConfigError> {
        let (text, origin) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?;
                (text, p.display().to_string())
            }
            None => (
                DEFAULT_CONFIG.to_owned(),
                "embedded default config".to_owned(),
            ),
        };
        Self::from_sources(&text, &origin, Some(env))
    }

    fn from_sources(text: &str, origin: &str, env: Option<Env>) -> Result<Self, ConfigError> {
        // Pass 1: the file alone, for errors with line numbers.
        let from_file: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        // Pass 2: environment on top. Only re-extract when an override exists, so the common case keeps
        // pass 1's result (and its precise errors).
        let raw = match env {
            Some(env) if env.iter().next().is_some() => Figment::from(Toml::string(text))
                .merge(env)
                .extract::<RawConfig>()
                .map_err(|e| ConfigError::Env(e.to_string()))?,
            _ => from_file,
        };
        raw.validate(origin)
    }
}

impl RawConfig {
    /// Checks cross-references and resolves secrets from the environment.
    pub fn validate(self, origin: &str) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            message,
        };
        self.server.validate().map_err(invalid)?;
        self.request_log
            .validate()
            .map_err(|e| invalid(format!("request_log: {e}")))?;
        self.telemetry
            .otel
            .validate()
            .map_err(|e| invalid(format!("telemetry.otel: {e}")))?;
        for (name, model) in &self.models {
            if let Some(price) = &model.price {
                price
                    .clone()
                    .validate(name)
                    .map_err(|e| invalid(format!("models.{name}.price: {e}")))?;
            }
        }
        if self.models.is_empty() {
            return Err(invalid(
                "no models configured: add a [models.NAME] table".to_owned(),
            ));
        }
        for (name, provider) in &self.providers {
            provider.validate(name).map_err(invalid)?;
        }
        for (name, model) in &self.models {
            if !self.providers.contains_key(&model.provider) {
                return Err(invalid(format!(
                    "models.{name}.provider: unknown provider `{}` (configured: {})",
                    model.provider,
                    self.providers
                        .keys()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let admin_key = match &self.admin.api_key_env {
            None => None,
            Some(var) => match std::env::var(var) {
                Ok(key) if key.len() >= 16 => Some(secrecy::SecretString::from(key)),
                _ => {
                    return Err(invalid(format!(
                        "admin.api_key_env: environment variable {var} is not set or shorter than 16 characters"
                    )));
                }
            },
        };
        let config_keys = resolve_config_keys(&self.auth.keys, &self.models).map_err(invalid)?;
        if self.state.sync_interval.is_zero() {
            return Err(invalid(
                "state.sync_interval must be greater than 0".to_owned(),
            ));
        }
        if self.state.redis_timeout.is_zero() {
            return Err(invalid(
                "state.redis_timeout must be greater than 0".to_owned(),
            ));
        }
        self.sessions
            .validate()
            .map_err(|e| invalid(format!("sessions: {e}")))?;
        if let Some(model) = self
            .sessions
            .summarize_with
            .as_ref()
            .filter(|m| !self.models.contains_key(*m))
        {
            return Err(invalid(format!(
                "sessions.summarize_with: unknown model `{model}`"
            )));
        }
        self.cache.validate(self.models.keys()).map_err(invalid)?;
        self.evaluation
            .validate(|m| self.models.contains_key(m))
            .map_err(|e| invalid(format!("evaluation.{e}")))?;
        Ok(Config {
            evaluation: self.evaluation,
            cache: self.cache,
            sessions: self.sessions,
            config_keys,
            auth: self.auth,
            state: self.state,
            server: self.server,
            providers: self.providers,
            models: self.models,
            log: self.log,
            telemetry: self.telemetry,
            request_log: self.request_log,
            admin_key,
            origin: origin.to_owned(),
        })
    }
}

/// Turns `[[auth.keys]]` into stored-form keys: id `cfg_<name>`, the SHA-256 given or computed from the
/// environment variable, models that exist.
fn resolve_config_keys(
    keys: &[ConfigKey],
    models: &BTreeMap<String, ModelConfig>,
) -> Result<Vec<crate::control::keys::VirtualKey>, String> {
    let mut out: Vec<crate::control::keys::VirtualKey> = Vec::with_capacity(keys.len());
    for key in keys {
        let at = format!("auth.keys `{}`", key.name);
        if key.name.is_empty()
            || !key
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "auth.keys: name {:?} must be non-empty letters, digits, `-` or `_`",
                key.name
            ));
        }
        let hash = match (&key.secret_sha256, &key.secret_env) {
            (Some(hex), None) => {
                let hex = hex.trim().to_ascii_lowercase();
                crate::control::decode_hash(&hex)
                    .ok_or_else(|| format!("{at}: secret_sha256 must be 64 hex digits"))?;
                hex
            }
            (None, Some(var)) => match std::env::var(var) {
                Ok(secret) if secret.len() >= 16 => {
                    crate::control::encode_hash(&crate::control::keys::hash_secret(&secret))
                }
                _ => {
                    return Err(format!(
                        "{at}: environment variable {var} is not set or shorter than 16 characters"
                    ));
                }
            },
            _ => {
                return Err(format!(
                    "{at}: set exactly one of secret_sha256 or secret_env"
                ));
            }
        };
        if let Some(model) = key.models.iter().find(|m| !models.contains_key(*m)) {
            return Err(format!("{at}: unknown model `{model}`"));
        }
        if let Some(budget) = &key.budget
            && (budget.usd <= rust_decimal::Decimal::ZERO
                || !(0.0..=1.0).contains(&budget.soft_threshold))
        {
            return Err(format!(
                "{at}: budget.usd must be > 0 and budget.soft_threshold within 0..1"
            ));
        }
        let id = format!("cfg_{}", key.name);
        if out.iter().any(|k| k.id == id || k.hash == hash) {
            return Err(format!("{at}: duplicate name or secret"));
        }
        out.push(crate::control::keys::VirtualKey {
            id,
            name: key.name.clone(),
            prefix: String::new(),
            hash,
            models: key.models.clone(),
            limits: key.limits,
            budget: key.budget.clone(),
            expires_at: None,
            revoked_at: None,
            metadata: BTreeMap::new(),
            cache: key.cache,
            created_at: 0,
            source: "config".to_owned(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid_and_offline() {
        let config = Config::from_toml(DEFAULT_CONFIG).unwrap();
        assert_eq!(config.server.listen.port(), 8080);
        assert!(
            config
                .providers
                .values()
                .all(|p| matches!(p, ProviderConfig::Mock(_)))
        );
        assert!(config.models.contains_key("mock-gpt"));
    }

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let text = "[server]\nlisten = \"127.0.0.1:1\"\nlisten_backlog = 5\n";
        let err = Config::from_toml(text).unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("listen_backlog"), "{err}");
    }

    #[test]
    fn unknown_provider_field_is_named() {
        let text = "[providers.a]\nkind = \"openai\"\nbase_url = \"http://x/v1\"\napi_key = \"sk-secret\"\n\
                    [models.m]\nprovider = \"a\"\n";
        let err = Config::from_toml(text).unwrap_err().to_string();
        assert!(err.contains("api_key"), "{err}");
        assert!(
            !err.contains("sk-secret"),
            "the secret must not be echoed: {err}"
        );
    }

    #[test]
    fn model_must_name_a_provider() {
        let text = "[providers.mock]\nkind = \"mock\"\n[models.m]\nprovider = \"nope\"\n";
        let err = Config::from_toml(text).unwrap_err().to_string();
        assert!(err.contains("models.m.provider"), "{err}");
    }

    #[test]
    #[expect(
        clippy::result_large_err,
        reason = "figment's Jail API returns its own error type"
    )]
    fn env_override_applies() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SLUICE_SERVER__LISTEN", "127.0.0.1:9999");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.server.listen.port(), 9999);
            Ok(())
        });
    }

    #[test]
    #[expect(
        clippy::result_large_err,
        reason = "figment's Jail API returns its own error type"
    )]
    fn bad_env_override_is_reported() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SLUICE_SERVER__MAX_BODY_BYTES", "lots");
            let err = Config::load(None).unwrap_err().to_string().to_lowercase();
            assert!(err.contains("max_body_bytes"), "{err}");
            Ok(())
        });
    }
}
