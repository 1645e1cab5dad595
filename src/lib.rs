//! Sluice: a small, fast LLM gateway. OpenAI- and Anthropic-compatible API with true SSE streaming in
//! front of pluggable providers. See `app.rs` for the request path.

pub mod api;
pub mod app;
pub mod cache;
pub mod cli;
pub mod config;
pub mod control;
pub mod embed;
pub mod error;
pub mod eval;
pub mod middleware;
pub mod protocol;
pub mod provider;
pub mod request_log;
pub mod sessions;
pub mod shutdown;
pub mod state;
pub mod telemetry;
pub mod testkit;
pub mod usage;

pub use config::Config;
pub use error::GatewayError;
pub use state::AppState;

/// Start-up failures (bad config, unbindable address); never sent to clients.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The configuration cannot be used.
    #[error("configuration: {0}")]
    Config(String),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The state backend (key store, limits) could not be opened.
    #[error("state: {0}")]
    State(String),
    /// The server failed while running.
    #[error("server error: {0}")]
    Serve(#[from] std::io::Error),
}

impl From<config::ConfigError> for InitError {
    fn from(e: config::ConfigError) -> Self {
        Self::Config(e.to_string())
    }
}
