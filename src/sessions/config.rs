//! `[sessions]`: limits, lifetimes and the context-window policy of conversation sessions.

use std::time::Duration;

use serde::Deserialize;

/// `[sessions]`. The backend follows `state.backend`: SQLite at `path` with `memory`, Redis with `redis`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// Serve `/v1/sessions` and accept `x-sluice-session-id`.
    pub enabled: bool,
    /// SQLite file of the sessions (memory backend).
    pub path: std::path::PathBuf,
    /// Idle lifetime of a session when the caller gives none; every turn restarts it.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Longest lifetime a caller may ask for.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Live sessions per key; creating one more gets 429.
    pub max_sessions_per_key: u64,
    /// Turns per session; one more gets 400 (start a new session).
    pub max_turns: u64,
    /// Bytes of stored messages per session; a turn that would pass it gets 400.
    pub max_session_bytes: u64,
    /// Bytes of the messages a caller adds in one turn.
    pub max_turn_bytes: u64,
    /// Context window for models the built-in table does not know and the config does not size.
    pub default_context_tokens: u64,
    /// Tokens kept free for the reply when the request sets no `max_tokens`.
    pub reserve_output_tokens: u64,
    /// Model (a configured public name) that summarises the turns that no longer fit: one system message
    /// replaces them. Unset: the oldest turns are simply left out. Costs one extra call per turn once a
    /// conversation outgrows the window.
    pub summarize_with: Option<String>,
    /// Longest summary, in tokens (kept free in the window when `summarize_with` is set).
    pub summary_max_tokens: u64,
    /// Keep a turn whose client left mid-stream (marked `cut`, with what was generated); `false` drops it.
    pub keep_cut_turns: bool,
    /// Longest a turn may hold the session (a crashed replica's hold expires after it).
    #[serde(with = "humantime_serde")]
    pub turn_lease: Duration,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "sluice-sessions.db".into(),
            default_ttl: Duration::from_hours(24),
            max_ttl: Duration::from_hours(30 * 24),
            max_sessions_per_key: 1000,
            max_turns: 1000,
            max_session_bytes: 8 * 1024 * 1024,
            max_turn_bytes: 1024 * 1024,
            default_context_tokens: 8192,
            reserve_output_tokens: 1024,
            summarize_with: None,
            summary_max_tokens: 300,
            keep_cut_turns: true,
            turn_lease: Duration::from_mins(15),
        }
    }
}

impl SessionsConfig {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if self.default_ttl.is_zero() || self.default_ttl > self.max_ttl {
            return Err("sessions.default_ttl must be > 0 and <= sessions.max_ttl".to_owned());
        }
        if self.max_sessions_per_key == 0 || self.max_turns == 0 {
            return Err("sessions.max_sessions_per_key and max_turns must be > 0".to_owned());
        }
        if self.reserve_output_tokens >= self.default_context_tokens {
            return Err(
                "sessions.reserve_output_tokens must be below default_context_tokens".to_owned(),
            );
        }
        if self.turn_lease.is_zero() {
            return Err("sessions.turn_lease must be > 0".to_owned());
        }
        Ok(())
    }
}
