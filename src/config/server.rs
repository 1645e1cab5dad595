//! `[server]` and `[log]`: listener, body limit, timeouts, SSE keep-alive, shutdown, disconnect policy.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// `[server]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Largest accepted request body (413 beyond).
    pub max_body_bytes: usize,
    /// Interval of SSE keep-alive comments while the upstream is silent.
    #[serde(with = "humantime_serde")]
    pub sse_keepalive: Duration,
    /// How long in-flight requests may run after a shutdown signal.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// What happens to the upstream call when a streaming client leaves.
    pub on_client_disconnect: DisconnectPolicy,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 10 * 1024 * 1024,
            sse_keepalive: Duration::from_secs(15),
            shutdown_grace: Duration::from_secs(30),
            on_client_disconnect: DisconnectPolicy::Cancel,
        }
    }
}

impl ServerConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.max_body_bytes == 0 {
            return Err("server.max_body_bytes must be greater than 0".to_owned());
        }
        if self.sse_keepalive.is_zero() {
            return Err("server.sse_keepalive must be greater than 0".to_owned());
        }
        Ok(())
    }
}

/// What to do with the upstream call when a streaming client disconnects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectPolicy {
    /// Drop the upstream request at once (default): nobody pays for tokens nobody reads.
    Cancel,
    /// Keep reading the upstream to its end, for exact accounting.
    Finish,
}

/// `[log]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter directives; `RUST_LOG` overrides.
    pub filter: String,
    /// Output format.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable, for terminals.
    Text,
    /// One JSON object per line.
    Json,
}
