//! What a session is: its record, its turns, and which turns each call sent upstream.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
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
    /// Tokens of this turn's messages (input and output, without the per-request priming), counted
    /// once when it was stored so later turns fit the window without tokenizing the history again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
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

/// A new session id: `sess_` and a UUIDv7 in simple form (time-ordered, 32 hex digits).
pub fn new_id() -> String {
    format!("sess_{}", uuid::Uuid::now_v7().simple())
}

/// A turn or total that cannot be counted: a cost that is not a non-negative decimal number, or a
/// message that cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidTurn(pub String);

/// What one turn adds to its session's [`Totals`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TurnTotals {
    /// Messages (input and output).
    pub messages: u64,
    /// Bytes of the messages' JSON, each message encoded on its own.
    pub bytes: u64,
    /// `usage.prompt_tokens`.
    pub input_tokens: u64,
    /// `usage.completion_tokens`.
    pub output_tokens: u64,
    /// `cost_usd`, zero when absent; normalised (no trailing zeros).
    pub cost_usd: Decimal,
}

/// A cost as stored: digits with an optional fraction (`0.3`, `12`, `0.00000015`, as [`Decimal`] prints
/// a non-negative number), or the empty string (a session without turns), which is zero. Signs,
/// exponents and separators are refused: the Redis store adds these strings digit by digit.
pub fn parse_cost(cost: &str) -> Result<Decimal, InvalidTurn> {
    if cost.is_empty() {
        return Ok(Decimal::ZERO);
    }
    let invalid = || InvalidTurn(format!("cost {cost:?} is not a plain non-negative decimal"));
    let (int, frac) = cost.split_once('.').unwrap_or((cost, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !digits(frac) {
        return Err(invalid());
    }
    // Exact: a string with more digits than a Decimal holds is refused, not rounded.
    Decimal::from_str_exact(cost)
        .map(|d| d.normalize())
        .map_err(|_| invalid())
}

impl Turn {
    /// What this turn adds to the totals.
    pub fn totals(&self) -> Result<TurnTotals, InvalidTurn> {
        let mut messages = 0_u64;
        let mut bytes = 0_u64;
        for message in self.messages() {
            let json = serde_json::to_vec(message).map_err(|e| {
                InvalidTurn(format!("turn {}: cannot encode a message: {e}", self.index))
            })?;
            messages += 1;
            bytes += u64::try_from(json.len()).unwrap_or(u64::MAX);
        }
        let (input_tokens, output_tokens) = self
            .usage
            .as_ref()
            .map_or((0, 0), |u| (u.prompt_tokens, u.completion_tokens));
        let cost_usd = self
            .cost_usd
            .as_deref()
            .map_or(Ok(Decimal::ZERO), parse_cost)?;
        Ok(TurnTotals {
            messages,
            bytes,
            input_tokens,
            output_tokens,
            cost_usd,
        })
    }
}

impl Totals {
    /// Adds one turn's share (`turns` + 1); the cost is summed exactly and normalised (`0.1` + `0.2` is
    /// `0.3`). Fails, changing nothing, when the stored cost is not a decimal or the sum overflows.
    pub fn add(&mut self, turn: &TurnTotals) -> Result<(), InvalidTurn> {
        let cost = parse_cost(&self.cost_usd)?
            .checked_add(turn.cost_usd)
            .ok_or_else(|| InvalidTurn(format!("cost total {} overflows", self.cost_usd)))?;
        self.turns = self.turns.saturating_add(1);
        self.messages = self.messages.saturating_add(turn.messages);
        self.bytes = self.bytes.saturating_add(turn.bytes);
        self.input_tokens = self.input_tokens.saturating_add(turn.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(turn.output_tokens);
        self.cost_usd = cost.normalize().to_string();
        Ok(())
    }
}

impl Session {
    /// Whether the session is live at `now_ms` (`expires_at` unset or later).
    pub fn is_live(&self, now_ms: i64) -> bool {
        self.expires_at.is_none_or(|at| at > now_ms)
    }

    /// Checks that the turns are numbered 0, 1, 2, … in order, as stores keep them.
    pub fn check_turn_order(&self) -> Result<(), InvalidTurn> {
        for (position, turn) in self.turns.iter().enumerate() {
            if u64::try_from(position).ok() != Some(turn.index) {
                return Err(InvalidTurn(format!(
                    "session {}: turn {position} has index {}",
                    self.id, turn.index
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::openai::Usage;

    fn turn(cost: Option<&str>) -> Turn {
        Turn {
            index: 0,
            request_id: "req_1".to_owned(),
            model: "m".to_owned(),
            created_at: 1,
            input: vec![ChatMessage::text("user", "hi")],
            output: Some(ChatMessage::text("assistant", "hello")),
            usage: Some(Usage::new(7, 3)),
            cost_usd: cost.map(str::to_owned),
            cut: false,
            sent: SentWindow::default(),
            tokens: None,
        }
    }

    #[test]
    fn new_ids_are_prefixed_and_time_ordered() {
        let a = new_id();
        let b = new_id();
        assert!(a.starts_with("sess_") && a.len() == 5 + 32, "{a}");
        assert!(a < b, "{a} then {b}");
    }

    #[test]
    fn turn_totals_count_messages_bytes_tokens_and_cost() {
        let t = turn(Some("0.000000150")).totals().unwrap();
        let bytes = r#"{"role":"user","content":"hi"}"#.len()
            + r#"{"role":"assistant","content":"hello"}"#.len();
        assert_eq!(
            t,
            TurnTotals {
                messages: 2,
                bytes: bytes as u64,
                input_tokens: 7,
                output_tokens: 3,
                cost_usd: Decimal::new(15, 8),
            }
        );
        let mut bare = turn(None);
        bare.output = None;
        bare.usage = None;
        assert_eq!(bare.totals().unwrap().messages, 1);
        assert_eq!(bare.totals().unwrap().cost_usd, Decimal::ZERO);
    }

    #[test]
    fn costs_add_exactly_and_bad_ones_are_refused() {
        let mut totals = Totals::default();
        totals.add(&turn(Some("0.1")).totals().unwrap()).unwrap();
        totals.add(&turn(Some("0.20")).totals().unwrap()).unwrap();
        assert_eq!(totals.cost_usd, "0.3");
        assert_eq!(totals.turns, 2);
        assert_eq!(totals.input_tokens, 14);
        for bad in [
            "-0.1",
            "abc",
            "1e3",
            " 1",
            "+1",
            ".5",
            "1.",
            "1_0",
            "0.12345678901234567890123456789",
        ] {
            assert!(turn(Some(bad)).totals().is_err(), "{bad}");
        }
        let mut broken = Totals {
            cost_usd: "x".to_owned(),
            ..Totals::default()
        };
        assert!(broken.add(&TurnTotals::default()).is_err());
        assert_eq!(broken.turns, 0, "nothing changes on failure");
    }
}
