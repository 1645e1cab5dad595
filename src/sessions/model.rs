//! What a session is: its record, its turns, and which turns each call sent upstream.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::protocol::openai::{ChatMessage, Usage};

/// One conversation kept by Sluice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// `sess_<uuid v7>`.
    pub id: String,
    /// Always `session`.
    pub object: String,
    /// Key id of the creator (`anonymous` when auth is off); only it can see or use the session.
    pub owner: String,
    /// Default model for turns that do not name one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// System prompt, always sent first and never dropped by truncation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Free-form caller data.
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms of the last change.
    pub updated_at: i64,
    /// Unix ms after which the session is gone (refreshed on every turn by `ttl_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Idle lifetime in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<i64>,
    /// The turns, oldest first.
    #[serde(default)]
    pub turns: Vec<Turn>,
    /// Sums over the turns.
    #[serde(default)]
    pub totals: Totals,
}

/// Sums over a session's turns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Turns stored.
    pub turns: u64,
    /// Messages stored (all turns).
    pub messages: u64,
    /// Bytes of stored message JSON.
    pub bytes: u64,
    /// Input tokens billed over all turns.
    pub input_tokens: u64,
    /// Output tokens over all turns.
    pub output_tokens: u64,
    /// Cost over all turns (decimal string).
    pub cost_usd: String,
}

/// One exchange: what the caller added (a user message, or tool results) and the assistant's reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    /// 0-based position.
    pub index: u64,
    /// The request that made it.
    pub request_id: String,
    /// Public model used.
    pub model: String,
    /// Unix ms.
    pub created_at: i64,
    /// Messages the caller sent in this turn (after the stored history), in order.
    pub input: Vec<ChatMessage>,
    /// The assistant's reply (text and/or tool calls); `None` when the call failed before any output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<ChatMessage>,
    /// Usage of the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Exact cost (decimal string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<String>,
    /// The client left before the reply ended (stored only with `sessions.keep_cut_turns`).
    #[serde(default)]
    pub cut: bool,
    /// Which stored turns went upstream with this call.
    pub sent: SentWindow,
}

/// Which earlier turns a call sent upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentWindow {
    /// Index of the oldest stored turn sent (turns before it were dropped or summarised).
    pub first_turn: u64,
    /// Turns left out to fit the context window.
    pub dropped_turns: u64,
    /// Whether the left-out turns were replaced by a summary message.
    pub summarized: bool,
    /// Estimated input tokens of what was sent.
    pub input_tokens: u64,
}

impl Turn {
    /// The turn's messages in conversation order: its input, then its output.
    pub fn messages(&self) -> impl Iterator<Item = &ChatMessage> {
        self.input.iter().chain(self.output.iter())
    }
}
