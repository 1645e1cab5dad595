//! `[providers.*]` and `[models.*]`: provider kinds, upstream URLs, key env var names, timeouts, model map.
//!
//! Upstream URLs come only from here, never from a request (no caller-chosen URLs, no SSRF). Keys are
//! referenced by the *name* of an environment variable and read at start-up.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// One provider entry, tagged by `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProviderConfig {
    /// Any OpenAI-compatible server.
    Openai(HttpProviderConfig),
    /// The native Anthropic Messages API.
    Anthropic(HttpProviderConfig),
    /// The built-in deterministic mock.
    Mock(MockProviderConfig),
}

impl ProviderConfig {
    /// The `kind` string.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Openai(_) => "openai",
            Self::Anthropic(_) => "anthropic",
            Self::Mock(_) => "mock",
        }
    }

    /// Timeouts of calls to this provider.
    pub fn timeouts(&self) -> Timeouts {
        match self {
            Self::Openai(h) | Self::Anthropic(h) => h.timeouts(),
            Self::Mock(_) => Timeouts::default(),
        }
    }

    pub(super) fn validate(&self, name: &str) -> Result<(), String> {
        match self {
            Self::Openai(h) | Self::Anthropic(h) => h.validate(name),
            Self::Mock(_) => Ok(()),
        }
    }
}

/// Settings of an HTTP provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProviderConfig {
    /// Base URL including the version path, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// Name of the environment variable that holds the API key (none for keyless local servers).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// TCP + TLS connect timeout.
    #[serde(default = "defaults::connect", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// From sending the request to the first stream event; for non-streaming calls, to the response
    /// headers, which upstreams send after the whole generation.
    #[serde(default = "defaults::first_byte", with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// Longest silence between two stream events.
    #[serde(default = "defaults::idle", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Whole-call deadline.
    #[serde(default = "defaults::total", with = "humantime_serde")]
    pub total_timeout: Duration,
    /// Static extra headers sent upstream (e.g. OpenRouter's `HTTP-Referer`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// OpenAI-compatible only: ask for `stream_options.include_usage` (turn off for servers that reject it).
    #[serde(default = "defaults::yes")]
    pub stream_usage: bool,
    /// Anthropic only: `max_tokens` sent when the client gave none (Anthropic requires it).
    #[serde(default = "defaults::max_tokens")]
    pub default_max_tokens: u32,
    /// Anthropic only: the `anthropic-version` header.
    #[serde(default = "defaults::anthropic_version")]
    pub anthropic_version: String,
}

impl HttpProviderConfig {
    /// The timeouts of this provider.
    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            connect: self.connect_timeout,
            first_byte: self.first_byte_timeout,
            idle: self.idle_timeout,
            total: self.total_timeout,
        }
    }

    fn validate(&self, name: &str) -> Result<(), String> {
        let url = reqwest::Url::parse(&self.base_url)
            .map_err(|e| format!("providers.{name}.base_url: not a URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "providers.{name}.base_url: scheme must be http or https"
            ));
        }
        if let Some(var) = &self.api_key_env {
            match std::env::var(var) {
                Ok(v) if !v.is_empty() => {}
                _ => {
                    return Err(format!(
                        "providers.{name}.api_key_env: environment variable {var} is not set"
                    ));
                }
            }
        }
        for (field, d) in [
            ("connect_timeout", self.connect_timeout),
            ("first_byte_timeout", self.first_byte_timeout),
            ("idle_timeout", self.idle_timeout),
            ("total_timeout", self.total_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("providers.{name}.{field} must be greater than 0"));
            }
        }
        for header in self.headers.keys() {
            http::HeaderName::try_from(header.as_str())
                .map_err(|_| format!("providers.{name}.headers: invalid header name `{header}`"))?;
        }
        Ok(())
    }
}

/// Settings of the built-in mock provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MockProviderConfig {
    /// Output tokens per reply (capped by the request's `max_tokens`).
    #[serde(default = "defaults::mock_tokens")]
    pub output_tokens: u32,
    /// Delay before the first token.
    #[serde(default, with = "humantime_serde")]
    pub ttft: Duration,
    /// Delay between tokens.
    #[serde(default, with = "humantime_serde")]
    pub token_delay: Duration,
    /// Fail every Nth call (0 = never).
    #[serde(default)]
    pub fail_every: u64,
    /// How injected failures look.
    #[serde(default)]
    pub failure_mode: FailureMode,
}

impl Default for MockProviderConfig {
    fn default() -> Self {
        Self {
            output_tokens: defaults::mock_tokens(),
            ttft: Duration::ZERO,
            token_delay: Duration::ZERO,
            fail_every: 0,
            failure_mode: FailureMode::Error,
        }
    }
}

/// How the mock provider fails when told to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// An upstream error before the first byte (HTTP 502).
    #[default]
    Error,
    /// The stream breaks after half its tokens.
    MidStream,
    /// The handler panics: exercises the panic safety net (a 500 in the error shape, server stays up).
    Panic,
}

/// `[models.NAME]`: where a public model name goes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Provider name (a key of `[providers]`).
    pub provider: String,
    /// Model name sent upstream; defaults to the public name.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Price per million tokens, overriding the built-in table.
    #[serde(default)]
    pub price: Option<crate::usage::PriceConfig>,
    /// Limits for every caller together (protects the upstream's quota): `rpm`, `tpm`,
    /// `max_concurrent`.
    #[serde(default)]
    pub limits: crate::control::keys::Limits,
    /// Context window in tokens, for fitting session history (default: the built-in table, then
    /// `sessions.default_context_tokens`).
    #[serde(default)]
    pub context_window: Option<u64>,
    /// Cache switches and TTL for this model (`exact`, `semantic`, `ttl`).
    #[serde(default)]
    pub cache: crate::cache::CachePolicy,
}

/// Per-phase timeouts of an upstream call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP + TLS connect.
    pub connect: Duration,
    /// Until the first event (streaming) or the whole body (non-streaming).
    pub first_byte: Duration,
    /// Between two stream events.
    pub idle: Duration,
    /// The whole call.
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: defaults::connect(),
            first_byte: defaults::first_byte(),
            idle: defaults::idle(),
            total: defaults::total(),
        }
    }
}

mod defaults {
    use std::time::Duration;

    pub fn connect() -> Duration {
        Duration::from_secs(10)
    }
    pub fn first_byte() -> Duration {
        Duration::from_mins(5)
    }
    pub fn idle() -> Duration {
        Duration::from_mins(2)
    }
    pub fn total() -> Duration {
        Duration::from_mins(10)
    }
    pub fn yes() -> bool {
        true
    }
    pub fn max_tokens() -> u32 {
        4096
    }
    pub fn anthropic_version() -> String {
        "2023-06-01".to_owned()
    }
    pub fn mock_tokens() -> u32 {
        16
    }
}
