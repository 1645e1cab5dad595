//! Fitting a conversation into the model's context window: the built-in table of window sizes
//! (`context_windows.toml`), dropping the oldest turns first without ever splitting a tool call from its
//! results, and the optional summary that stands in for what was dropped.
//!
//! Turns are dropped in *groups*: a turn whose input starts with `tool` messages answers the tool calls
//! of the turn before it, so it belongs to that turn's group, and a group is kept or dropped whole. The
//! newest groups stay; the oldest go first, until the system prompt, the kept turns and the new input
//! fit with the output reserve. The summary request is only built here; the gateway makes the call.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::ops::Range;
use std::slice;
use std::sync::LazyLock;

use serde::Deserialize;

use super::model::{SentWindow, Turn};
use crate::protocol::openai::ChatMessage;

/// The built-in table of context windows, as shipped in the binary.
const BUILTIN_TOML: &str = include_str!("context_windows.toml");

/// Context window and output cap of a model, in tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextSize {
    /// Tokens the model accepts in one call: input and output together, or the input limit for vendors
    /// that list input and output limits separately (Gemini), which makes fitting conservative there.
    pub context: u64,
    /// The most output tokens one call may produce; `None` when the vendor publishes no separate cap.
    #[serde(default)]
    pub max_output: Option<u64>,
}

/// The context window of `model`: `configured` when set (configuration always wins), else the
/// built-in table's entry, else `None` (the caller then uses its configured default).
///
/// The lookup is the price table's: case-insensitive, provider prefixes (`openai/`, `groq/`, `models/`,
/// Bedrock's `us.anthropic.`) stripped, dated snapshots (`gpt-4o-2024-08-06`,
/// `claude-sonnet-4-5-20250929`) falling back to their base entry.
pub fn context_window(model: &str, configured: Option<u64>) -> Option<u64> {
    configured.or_else(|| context_size(model).map(|size| size.context))
}

/// The built-in context window and output cap of `model`, if the table knows it.
pub fn context_size(model: &str) -> Option<ContextSize> {
    ContextTable::builtin().lookup(model).copied()
}

/// The version of the built-in context table (the `version` of `context_windows.toml`).
pub fn context_table_version() -> &'static str {
    &ContextTable::builtin().version
}

/// How many tokens one call may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowLimit {
    /// The model's context window (see [`context_window`]).
    pub context_tokens: u64,
    /// Tokens kept free for the reply (the request's output limit, or a configured default).
    pub reserve_output: u64,
}

impl WindowLimit {
    /// Whether `input` tokens leave room for the output reserve.
    fn admits(self, input: u64) -> bool {
        input.saturating_add(self.reserve_output) <= self.context_tokens
    }
}

/// A conversation fitted into a context window, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Fitted {
    /// The system prompt (if any), the kept turns' messages in order, then the new input.
    pub messages: Vec<ChatMessage>,
    /// What was sent, for the stored turn.
    pub sent: SentWindow,
    /// Indices of the stored turns left out (empty when none were).
    pub dropped: Range<u64>,
    /// Where a summary goes: right after the system prompt, or first without one.
    summary_at: usize,
}

/// Why a conversation cannot be fitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// Even the system prompt and the new input (with the turn holding the calls that the new input
    /// answers) leave no room for the output reserve: the caller answers 400
    /// `context_length_exceeded`.
    #[error(
        "the request needs {needed} tokens (messages and reserved output), more than the model's \
         context window of {limit}"
    )]
    TooLong {
        /// Tokens of the smallest request that could be sent, output reserve included.
        needed: u64,
        /// The context window.
        limit: u64,
    },
}

/// Fits `system`, the stored `history` and the `new_input` into `limit`, dropping the oldest turns.
///
/// The system prompt and the new input always stay, and the newest turns stay: whole groups (a turn
/// and the following turns whose input starts with `tool` results) are dropped oldest first until
/// `count(messages) + reserve_output <= context_tokens`, so a tool call and its results are never
/// split. When the new input starts with tool results, the group holding their call always stays.
///
/// `count` is the tokenizer, typically `|m| count_messages(model, m)`. Each message is counted once:
/// `count` is called on the system prompt, the new input and each turn's input and output separately,
/// and the sums are combined, which needs `count` to be additive over messages apart from a per-request
/// constant (`count(&[])`, the reply priming of [`count_messages`]), counted once.
///
/// [`count_messages`]: crate::usage::tokens::count_messages
pub fn fit(
    system: Option<&ChatMessage>,
    history: &[Turn],
    new_input: &[ChatMessage],
    limit: WindowLimit,
    count: &dyn Fn(&[ChatMessage]) -> u64,
) -> Result<Fitted, WindowError> {
    let counter = Counter::new(count);
    let mut used = counter
        .priming
        .saturating_add(system.map_or(0, |s| counter.messages(slice::from_ref(s))))
        .saturating_add(counter.messages(new_input));
    let mut keep_from = history.len();
    let mut groups = groups_newest_first(history);
    // Tool results at the head of the new input answer calls of the newest group: that group must stay.
    if starts_with_tool_result(new_input)
        && let Some((start, group)) = groups.next()
    {
        used = used.saturating_add(counter.turns(group));
        keep_from = start;
    }
    if !limit.admits(used) {
        return Err(WindowError::TooLong {
            needed: used.saturating_add(limit.reserve_output),
            limit: limit.context_tokens,
        });
    }
    for (start, group) in groups {
        let with_group = used.saturating_add(counter.turns(group));
        if !limit.admits(with_group) {
            break;
        }
        used = with_group;
        keep_from = start;
    }

    let (left_out, kept) = history.split_at(keep_from);
    let first_turn = kept.first().map_or_else(
        || history.last().map_or(0, |t| t.index.saturating_add(1)),
        |t| t.index,
    );
    let kept_messages: usize = kept
        .iter()
        .map(|t| t.input.len() + usize::from(t.output.is_some()))
        .sum();
    let mut messages =
        Vec::with_capacity(usize::from(system.is_some()) + kept_messages + new_input.len());
    messages.extend(system.cloned());
    messages.extend(kept.iter().flat_map(Turn::messages).cloned());
    messages.extend_from_slice(new_input);
    Ok(Fitted {
        messages,
        sent: SentWindow {
            first_turn,
            dropped_turns: to_u64(left_out.len()),
            summarized: false,
            input_tokens: used,
        },
        dropped: history.first().map_or(first_turn, |t| t.index)..first_turn,
        summary_at: usize::from(system.is_some()),
    })
}

/// `fitted` with `summary` standing in for the dropped turns, right after the system prompt (first when
/// there is none); `sent.summarized` becomes true. A second call replaces the summary.
///
/// The summary's role is set to `system`: it is context the gateway supplies, not something the user
/// said (a `user` message would be answered, and Anthropic merges consecutive user messages into one) nor
/// something the assistant said (Anthropic rejects a conversation that starts with an assistant
/// message); translations to Anthropic fold every system message into its `system` parameter, in order.
///
/// `sent.input_tokens` is left as fitted: it does not include the summary, so fit with a limit that
/// leaves room for one (or re-count the messages) when the estimate must be exact.
pub fn with_summary(mut fitted: Fitted, mut summary: ChatMessage) -> Fitted {
    "system".clone_into(&mut summary.role);
    if fitted.sent.summarized
        && let Some(slot) = fitted.messages.get_mut(fitted.summary_at)
    {
        *slot = summary;
    } else {
        fitted.messages.insert(fitted.summary_at, summary);
        fitted.sent.summarized = true;
    }
    fitted
}

/// What the summarising model is told.
const SUMMARY_INSTRUCTIONS: &str = "You summarise the earlier part of a conversation between a user \
and an AI assistant, so that the assistant can continue the conversation without seeing those \
messages. Write a few sentences of plain prose. Keep every name, number, date, identifier, decision, \
commitment and open question exactly as stated; leave out greetings and small talk. Add nothing that \
is not in the transcript, and do not answer or continue the conversation.";

/// The request (messages only) asking a model to summarise the `dropped` turns in a few sentences,
/// keeping names, numbers and decisions: a system instruction, then the turns as a plain transcript in
/// a user message. The gateway sends it and passes the reply to [`with_summary`].
pub fn summary_prompt(dropped: &[Turn]) -> Vec<ChatMessage> {
    // Tool results name their call by id only; the transcript names the function instead.
    let mut tool_names: HashMap<&str, &str> = HashMap::new();
    let mut transcript = String::from("Summarise this conversation:\n");
    for message in dropped.iter().flat_map(Turn::messages) {
        let text = message.text_content();
        let calls = message.tool_calls.as_deref().unwrap_or_default();
        if message.role == "tool" {
            let name = message
                .tool_call_id
                .as_deref()
                .and_then(|id| tool_names.get(id).copied())
                .unwrap_or("a tool call");
            let _ = write!(transcript, "\nresult of {name}: {text}");
        } else if !text.is_empty() || calls.is_empty() {
            let _ = write!(transcript, "\n{}: {text}", message.role);
        }
        for call in calls {
            tool_names.insert(&call.id, &call.function.name);
            let _ = write!(
                transcript,
                "\n{} called {}({})",
                message.role, call.function.name, call.function.arguments
            );
        }
    }
    vec![
        ChatMessage::text("system", SUMMARY_INSTRUCTIONS),
        ChatMessage::text("user", transcript),
    ]
}

/// Token counts through the caller's tokenizer, with the per-request constant counted once.
struct Counter<'a> {
    count: &'a dyn Fn(&[ChatMessage]) -> u64,
    /// `count(&[])`: what every call of `count` adds once (OpenAI's reply priming).
    priming: u64,
}

impl<'a> Counter<'a> {
    fn new(count: &'a dyn Fn(&[ChatMessage]) -> u64) -> Self {
        Self {
            count,
            priming: count(&[]),
        }
    }

    /// Tokens of `messages` without the per-request constant.
    fn messages(&self, messages: &[ChatMessage]) -> u64 {
        if messages.is_empty() {
            return 0;
        }
        (self.count)(messages).saturating_sub(self.priming)
    }

    /// Tokens of the turns' messages without the per-request constant: the count stored with a turn
    /// when it has one, else counted now.
    fn turns(&self, turns: &[Turn]) -> u64 {
        turns.iter().fold(0, |sum, turn| {
            sum.saturating_add(turn.tokens.unwrap_or_else(|| self.turn(turn)))
        })
    }

    /// Tokens of one turn's messages, counted now.
    fn turn(&self, turn: &Turn) -> u64 {
        let output = turn
            .output
            .as_ref()
            .map_or(0, |o| self.messages(slice::from_ref(o)));
        self.messages(&turn.input).saturating_add(output)
    }
}

/// The history's groups, newest first, each with the position of its first turn. A group is a turn
/// and the turns after it whose input starts with tool results (a leading orphan of tool results, with
/// no turn before it, is a group of its own).
fn groups_newest_first(history: &[Turn]) -> impl Iterator<Item = (usize, &[Turn])> {
    let mut end = history.len();
    std::iter::from_fn(move || {
        let rest = history.get(..end).filter(|rest| !rest.is_empty())?;
        let start = rest
            .iter()
            .rposition(|turn| !starts_with_tool_result(&turn.input))
            .unwrap_or(0);
        end = start;
        Some((start, rest.get(start..)?))
    })
}

/// True when the first message is a tool result (it answers a call made before it).
fn starts_with_tool_result(messages: &[ChatMessage]) -> bool {
    messages.first().is_some_and(|m| m.role == "tool")
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Why the context table was rejected (only a broken `context_windows.toml` can be).
#[derive(Debug, thiserror::Error)]
enum TableError {
    #[error("context table: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("context table: `{0}` has a zero context or an output cap above its context")]
    Invalid(String),
    #[error("context table lists `{0}` twice")]
    Duplicate(String),
    #[error("context alias `{alias}` points to unknown model `{target}`")]
    UnknownAliasTarget { alias: String, target: String },
}

/// The file format of `context_windows.toml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    version: String,
    models: HashMap<String, ContextSize>,
    #[serde(default)]
    aliases: HashMap<String, String>,
}

/// Context sizes, looked up by model name like prices.
#[derive(Debug, Default, PartialEq)]
struct ContextTable {
    version: String,
    models: HashMap<String, ContextSize>,
}

impl ContextTable {
    /// The built-in table, parsed once; a test parses the file, were it broken this would be an empty
    /// table (every model unknown) rather than a panic.
    fn builtin() -> &'static ContextTable {
        static BUILTIN: LazyLock<ContextTable> =
            LazyLock::new(|| ContextTable::from_toml(BUILTIN_TOML).unwrap_or_default());
        &BUILTIN
    }

    fn from_toml(text: &str) -> Result<ContextTable, TableError> {
        let raw: RawTable = toml::from_str(text)?;
        let mut models = HashMap::with_capacity(raw.models.len() + raw.aliases.len());
        for (name, size) in raw.models {
            if size.context == 0 || size.max_output.is_some_and(|out| out > size.context) {
                return Err(TableError::Invalid(name));
            }
            crate::usage::model_names::insert_new(&mut models, &name, size)
                .map_err(TableError::Duplicate)?;
        }
        for (alias, target) in raw.aliases {
            let size = *models.get(&target.to_ascii_lowercase()).ok_or_else(|| {
                TableError::UnknownAliasTarget {
                    alias: alias.clone(),
                    target: target.clone(),
                }
            })?;
            crate::usage::model_names::insert_new(&mut models, &alias, size)
                .map_err(TableError::Duplicate)?;
        }
        Ok(ContextTable {
            version: raw.version,
            models,
        })
    }

    /// The entry of `model`: the exact name, then without provider prefixes, then the longest entry
    /// the name extends at a snapshot separator (see `PriceTable::lookup`, whose rules these are).
    fn lookup(&self, model: &str) -> Option<&ContextSize> {
        crate::usage::model_names::lookup(&self.models, model)
    }
}

/// Tokens of `turn`'s messages without the per-request constant, to store with the turn.
pub fn turn_tokens(turn: &Turn, count: &dyn Fn(&[ChatMessage]) -> u64) -> u64 {
    Counter::new(count).turn(turn)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::protocol::openai::{FunctionCall, ToolCall};
    use crate::usage::tokens::count_messages;

    /// A tokenizer stand-in: 3 per request, 4 per message, 1 per byte of text, 2 per tool call.
    fn count(messages: &[ChatMessage]) -> u64 {
        3 + messages
            .iter()
            .map(|m| {
                let calls = m.tool_calls.as_ref().map_or(0, Vec::len);
                4 + to_u64(m.text_content().len()) + 2 * to_u64(calls)
            })
            .sum::<u64>()
    }

    fn turn(index: u64, input: Vec<ChatMessage>, output: Option<ChatMessage>) -> Turn {
        Turn {
            index,
            request_id: format!("req_{index}"),
            model: "gpt-4o".to_owned(),
            created_at: 0,
            input,
            output,
            usage: None,
            cost_usd: None,
            cut: false,
            sent: SentWindow::default(),
            tokens: None,
        }
    }

    /// A plain exchange of 16 tokens (two messages of 4 + 4 bytes).
    fn chat(index: u64) -> Turn {
        turn(
            index,
            vec![ChatMessage::text("user", format!("u{index:03}"))],
            Some(ChatMessage::text("assistant", format!("a{index:03}"))),
        )
    }

    fn calls(ids: &[&str]) -> ChatMessage {
        ChatMessage {
            role: "assistant".to_owned(),
            tool_calls: Some(
                ids.iter()
                    .map(|id| ToolCall {
                        id: (*id).to_owned(),
                        kind: "function".to_owned(),
                        function: FunctionCall {
                            name: format!("fn_{id}"),
                            arguments: "{}".to_owned(),
                        },
                        ..ToolCall::default()
                    })
                    .collect(),
            ),
            ..ChatMessage::default()
        }
    }

    fn result(id: &str, text: &str) -> ChatMessage {
        ChatMessage {
            tool_call_id: Some(id.to_owned()),
            ..ChatMessage::text("tool", text)
        }
    }

    fn limit(context_tokens: u64, reserve_output: u64) -> WindowLimit {
        WindowLimit {
            context_tokens,
            reserve_output,
        }
    }

    fn texts(messages: &[ChatMessage]) -> Vec<String> {
        messages.iter().map(ChatMessage::text_content).collect()
    }

    #[test]
    fn newest_turns_stay_and_oldest_go() {
        let history: Vec<Turn> = (0..5).map(chat).collect();
        let new = [ChatMessage::text("user", "next")];
        // 3 priming + 8 new input + 16 per turn: room for two turns.
        let fitted = fit(None, &history, &new, limit(3 + 8 + 2 * 16 + 15, 0), &count).unwrap();
        assert_eq!(
            texts(&fitted.messages),
            ["u003", "a003", "u004", "a004", "next"]
        );
        assert_eq!(fitted.dropped, 0..3);
        assert_eq!(
            fitted.sent,
            SentWindow {
                first_turn: 3,
                dropped_turns: 3,
                summarized: false,
                input_tokens: 3 + 8 + 32,
            }
        );
    }

    #[test]
    fn everything_stays_when_it_fits() {
        let history: Vec<Turn> = (0..3).map(chat).collect();
        let new = [ChatMessage::text("user", "next")];
        let fitted = fit(None, &history, &new, limit(1000, 100), &count).unwrap();
        assert_eq!(fitted.messages.len(), 7);
        assert_eq!(fitted.dropped, 0..0);
        assert_eq!((fitted.sent.first_turn, fitted.sent.dropped_turns), (0, 0));
        assert_eq!(fitted.sent.input_tokens, count(&fitted.messages));
    }

    #[test]
    fn fits_exactly_at_the_limit_and_one_token_more_drops_a_group() {
        let history: Vec<Turn> = (0..3).map(chat).collect();
        let system = ChatMessage::text("system", "s");
        let new = [ChatMessage::text("user", "q")];
        // 3 priming + 5 system + 5 new input + 3 * 16 turns + 10 reserved = 71.
        let all = fit(Some(&system), &history, &new, limit(71, 10), &count).unwrap();
        assert_eq!(all.sent.dropped_turns, 0);
        assert_eq!(all.sent.input_tokens, 61);
        assert_eq!(all.sent.input_tokens, count(&all.messages));

        let one_less = fit(Some(&system), &history, &new, limit(70, 10), &count).unwrap();
        assert_eq!(one_less.sent.dropped_turns, 1);
        assert_eq!(one_less.dropped, 0..1);
        assert_eq!(one_less.sent.input_tokens, 45);
        // The output reserve counts like the messages: one more reserved token drops the same group.
        let more_reserved = fit(Some(&system), &history, &new, limit(71, 11), &count).unwrap();
        assert_eq!(more_reserved, one_less);
    }

    #[test]
    fn the_system_prompt_is_first_and_never_dropped() {
        let history: Vec<Turn> = (0..4).map(chat).collect();
        let system = ChatMessage::text("system", "be brief");
        let new = [ChatMessage::text("user", "next")];
        for context in [3 + 12 + 8, 40, 60, 200] {
            let fitted = fit(Some(&system), &history, &new, limit(context, 0), &count).unwrap();
            assert_eq!(fitted.messages.first(), Some(&system), "{context}");
            assert_eq!(fitted.messages.last(), Some(&new[0]), "{context}");
            assert_eq!(
                fitted
                    .messages
                    .iter()
                    .filter(|m| m.role == "system")
                    .count(),
                1
            );
        }
        // Nothing of the history fits: the system prompt and the new input are sent alone.
        let bare = fit(Some(&system), &history, &new, limit(23, 0), &count).unwrap();
        assert_eq!(bare.messages, [system, new[0].clone()]);
        assert_eq!(bare.dropped, 0..4);
        assert_eq!((bare.sent.first_turn, bare.sent.dropped_turns), (4, 4));
    }

    #[test]
    fn tool_results_in_the_next_turn_stay_with_their_call() {
        let history = vec![
            chat(0),
            turn(
                1,
                vec![ChatMessage::text("user", "weather?")],
                Some(calls(&["c1", "c2"])),
            ),
            turn(
                2,
                vec![result("c1", "sunny"), result("c2", "warm")],
                Some(ChatMessage::text("assistant", "sunny and warm")),
            ),
        ];
        let new = [ChatMessage::text("user", "thanks")];
        let tokens_of = |turns: &[Turn]| {
            let messages: Vec<ChatMessage> =
                turns.iter().flat_map(Turn::messages).cloned().collect();
            count(&messages) - 3
        };
        let base = 3 + 10;
        // Room for turn 2 alone is not enough: turns 1 and 2 are one group.
        let context = base + tokens_of(&history[2..]) + 1;
        let fitted = fit(None, &history, &new, limit(context, 0), &count).unwrap();
        assert_eq!(fitted.messages, new);
        assert_eq!(fitted.dropped, 0..3);
        let context = base + tokens_of(&history[1..]);
        let fitted = fit(None, &history, &new, limit(context, 0), &count).unwrap();
        assert_eq!(fitted.dropped, 0..1);
        assert_eq!(fitted.messages.len(), 6);
        assert_eq!(fitted.messages[1], calls(&["c1", "c2"]));
    }

    #[test]
    fn new_input_of_tool_results_keeps_the_turn_with_its_call() {
        let history = vec![
            chat(0),
            chat(1),
            turn(
                2,
                vec![ChatMessage::text("user", "look it up")],
                Some(calls(&["c9"])),
            ),
        ];
        let new = [result("c9", "found it")];
        // 3 priming + 14 user + 6 call + 12 result: the two older turns cannot come along.
        let fitted = fit(None, &history, &new, limit(35 + 15, 0), &count).unwrap();
        assert_eq!(fitted.dropped, 0..2);
        assert_eq!(texts(&fitted.messages), ["look it up", "", "found it"]);
        assert_eq!(fitted.messages[1], calls(&["c9"]));
        // Without room for the call, the results cannot go alone.
        assert_eq!(fit(None, &history, &new, limit(35, 0), &count), Ok(fitted));
        let err = fit(None, &history, &new, limit(34, 0), &count).unwrap_err();
        assert_eq!(
            err,
            WindowError::TooLong {
                needed: 35,
                limit: 34
            }
        );
    }

    #[test]
    fn too_long_when_the_system_prompt_and_new_input_do_not_fit() {
        let system = ChatMessage::text("system", "s");
        let new = [ChatMessage::text("user", "q")];
        let history = [chat(0)];
        // 3 + 5 + 5 = 13 input tokens, 7 reserved.
        assert!(fit(Some(&system), &history, &new, limit(20, 7), &count).is_ok());
        let err = fit(Some(&system), &history, &new, limit(19, 7), &count).unwrap_err();
        assert_eq!(
            err,
            WindowError::TooLong {
                needed: 20,
                limit: 19
            }
        );
        assert!(err.to_string().contains("20 tokens"), "{err}");
        // A reserve larger than the window never fits, and does not overflow.
        let err = fit(None, &[], &new, limit(10, u64::MAX), &count).unwrap_err();
        assert_eq!(
            err,
            WindowError::TooLong {
                needed: u64::MAX,
                limit: 10
            }
        );
    }

    #[test]
    fn the_reply_priming_is_counted_once_with_the_real_tokenizer() {
        let tokenizer = |m: &[ChatMessage]| count_messages("gpt-4o", m);
        let history: Vec<Turn> = (0..6)
            .map(|i| {
                let mut t = chat(i);
                t.input
                    .push(ChatMessage::text("user", "and one more thing about Paris"));
                t
            })
            .collect();
        let system = ChatMessage::text("system", "You are a helpful assistant.");
        let new = [ChatMessage::text("user", "What did I ask first?")];
        for context in [40, 80, 120, 160, 1000] {
            let Ok(fitted) = fit(Some(&system), &history, &new, limit(context, 0), &tokenizer)
            else {
                continue;
            };
            assert_eq!(
                fitted.sent.input_tokens,
                count_messages("gpt-4o", &fitted.messages),
                "{context}"
            );
            assert!(fitted.sent.input_tokens <= context);
        }
    }

    #[test]
    fn turn_indices_are_the_stored_ones() {
        // A history that is a tail of the session (turns 10..14).
        let history: Vec<Turn> = (10..14).map(chat).collect();
        let new = [ChatMessage::text("user", "next")];
        let fitted = fit(None, &history, &new, limit(3 + 8 + 16, 0), &count).unwrap();
        assert_eq!(fitted.dropped, 10..13);
        assert_eq!(fitted.sent.first_turn, 13);
        assert_eq!(fitted.sent.dropped_turns, 3);
        let none = fit(None, &history, &new, limit(3 + 8, 0), &count).unwrap();
        assert_eq!(none.dropped, 10..14);
        assert_eq!(none.sent.first_turn, 14);
        let empty = fit(None, &[], &new, limit(3 + 8, 0), &count).unwrap();
        assert_eq!((empty.dropped, empty.sent.first_turn), (0..0, 0));
    }

    #[test]
    fn each_message_is_counted_once() {
        let calls_made = std::cell::Cell::new(0u64);
        let counted = std::cell::Cell::new(0u64);
        let counting = |m: &[ChatMessage]| {
            calls_made.set(calls_made.get() + 1);
            counted.set(counted.get() + to_u64(m.len()));
            count(m)
        };
        let history: Vec<Turn> = (0..50).map(chat).collect();
        let new = [ChatMessage::text("user", "next")];
        fit(None, &history, &new, limit(3 + 8 + 16 * 20, 0), &counting).unwrap();
        // Priming, new input, then 21 turns (20 kept and the one that did not fit) of two messages.
        assert_eq!(counted.get(), 1 + 21 * 2);
        assert_eq!(calls_made.get(), 2 + 21 * 2);
    }

    #[test]
    fn the_summary_goes_right_after_the_system_prompt() {
        let history: Vec<Turn> = (0..4).map(chat).collect();
        let system = ChatMessage::text("system", "sys");
        let new = [ChatMessage::text("user", "next")];
        let fitted = fit(
            Some(&system),
            &history,
            &new,
            limit(3 + 7 + 8 + 16, 0),
            &count,
        )
        .unwrap();
        let summarized = with_summary(
            fitted.clone(),
            ChatMessage::text("assistant", "The user said hello."),
        );
        assert!(summarized.sent.summarized);
        assert_eq!(
            texts(&summarized.messages),
            ["sys", "The user said hello.", "u003", "a003", "next"]
        );
        assert_eq!(summarized.messages[1].role, "system");
        assert_eq!(
            (&summarized.dropped, summarized.sent.input_tokens),
            (&fitted.dropped, fitted.sent.input_tokens)
        );
        // A second summary replaces the first.
        let again = with_summary(summarized, ChatMessage::text("system", "Second."));
        assert_eq!(
            texts(&again.messages),
            ["sys", "Second.", "u003", "a003", "next"]
        );

        // Without a system prompt the summary comes first.
        let bare = fit(None, &history, &new, limit(3 + 8 + 16, 0), &count).unwrap();
        let summarized = with_summary(bare, ChatMessage::text("system", "Earlier: hello."));
        assert_eq!(
            texts(&summarized.messages),
            ["Earlier: hello.", "u003", "a003", "next"]
        );
    }

    #[test]
    fn the_summary_prompt_carries_the_dropped_turns() {
        let dropped = vec![
            turn(
                0,
                vec![ChatMessage::text(
                    "user",
                    "I am Ada, order #4711 costs 42 EUR.",
                )],
                Some(calls(&["c1"])),
            ),
            turn(
                1,
                vec![result("c1", "shipped 2025-03-01")],
                Some(ChatMessage::text("assistant", "We agreed to refund it.")),
            ),
        ];
        let prompt = summary_prompt(&dropped);
        assert_eq!(prompt.len(), 2);
        assert_eq!(prompt[0].role, "system");
        let instructions = prompt[0].text_content();
        for word in ["few sentences", "name", "number", "decision"] {
            assert!(instructions.contains(word), "{word}");
        }
        assert_eq!(prompt[1].role, "user");
        assert_eq!(
            prompt[1].text_content(),
            "Summarise this conversation:\n\
             \nuser: I am Ada, order #4711 costs 42 EUR.\
             \nassistant called fn_c1({})\
             \nresult of fn_c1: shipped 2025-03-01\
             \nassistant: We agreed to refund it."
        );
    }

    // --- the context table ----------------------------------------------------------------------

    fn size(model: &str) -> (u64, Option<u64>) {
        let s = context_size(model).unwrap_or_else(|| panic!("{model} is not in the table"));
        (s.context, s.max_output)
    }

    #[test]
    fn the_builtin_table_parses() {
        let parsed = ContextTable::from_toml(BUILTIN_TOML).unwrap();
        assert!(parsed.models.len() > 80, "{}", parsed.models.len());
        assert_eq!(ContextTable::builtin(), &parsed);
        assert_eq!(context_table_version(), "2026-11-01");
        for (name, s) in &parsed.models {
            assert_eq!(name, &name.to_ascii_lowercase());
            assert!(s.context >= 4_096, "{name}");
            assert!(s.max_output.is_none_or(|out| out <= s.context), "{name}");
        }
    }

    #[test]
    fn every_vendor_is_covered() {
        for model in [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4.1",
            "gpt-4.1-mini",
            "gpt-4.1-nano",
            "o1",
            "o3",
            "o3-mini",
            "o4-mini",
            "gpt-5",
            "gpt-5-mini",
            "gpt-5-nano",
            "gpt-5.1",
            "claude-3-5-sonnet",
            "claude-3-5-haiku",
            "claude-3-7-sonnet",
            "claude-sonnet-4",
            "claude-opus-4",
            "claude-opus-4-1",
            "claude-sonnet-4-5",
            "claude-opus-4-5",
            "claude-haiku-4-5",
            "gemini-1.5-pro",
            "gemini-1.5-flash",
            "gemini-2.0-flash",
            "gemini-2.5-pro",
            "gemini-2.5-flash",
            "mistral-large-latest",
            "mistral-small-latest",
            "codestral-latest",
            "deepseek-chat",
            "deepseek-reasoner",
            "llama-3.1-8b-instant",
            "llama-3.3-70b-versatile",
        ] {
            assert!(context_size(model).is_some(), "{model}");
        }
    }

    #[test]
    fn lookup_strips_prefixes_and_snapshot_suffixes() {
        assert_eq!(size("gpt-4o"), (128_000, Some(16_384)));
        assert_eq!(size("openai/gpt-4o-2024-08-06"), size("gpt-4o"));
        assert_eq!(size("gpt-4o-2024-05-13"), (128_000, Some(4_096)));
        assert_eq!(size(" GPT-4.1-Mini "), (1_047_576, Some(32_768)));
        assert_eq!(
            size("azure/openai/gpt-5-2025-08-07"),
            (400_000, Some(128_000))
        );
        assert_eq!(size("o3-mini-2025-01-31"), size("o3-mini"));
        assert_eq!(size("gpt-4-0613"), (8_192, Some(8_192)));
        assert_eq!(size("gpt-4-1106-preview"), size("gpt-4-turbo"));
        assert_eq!(
            size("anthropic/claude-sonnet-4-5-20250929"),
            (200_000, Some(64_000))
        );
        assert_eq!(size("claude-3-5-sonnet-latest"), (200_000, Some(8_192)));
        assert_eq!(
            size("claude-3-5-sonnet@20240620"),
            size("claude-3-5-sonnet")
        );
        assert_eq!(
            size("us.anthropic.claude-3-5-sonnet-20240620-v1:0"),
            size("claude-3-5-sonnet")
        );
        assert_eq!(size("claude-opus-4-1-20250805"), (200_000, Some(32_000)));
        assert_eq!(
            size("models/gemini-2.5-flash-preview-05-20"),
            size("gemini-2.5-flash")
        );
        assert_eq!(size("gemini-1.5-pro-002"), (2_097_152, Some(8_192)));
        assert_eq!(size("mistral/mistral-large-latest"), (131_072, None));
        assert_eq!(size("mistral-large-2512").0, 262_144);
        assert_eq!(
            size("groq/llama-3.3-70b-versatile"),
            (131_072, Some(32_768))
        );
        assert_eq!(size("groq/openai/gpt-oss-120b"), size("gpt-oss-120b"));
        assert_eq!(size("deepseek/deepseek-chat"), (128_000, Some(8_192)));
    }

    #[test]
    fn configuration_wins_and_unknown_models_have_no_window() {
        assert_eq!(context_window("gpt-4o", None), Some(128_000));
        assert_eq!(context_window("gpt-4o", Some(32_000)), Some(32_000));
        assert_eq!(context_window("my-finetune", Some(4_096)), Some(4_096));
        for unknown in [
            "",
            "/",
            "my-finetune",
            "llama-9",
            // A newer version is a different model, not a snapshot of an older one.
            "claude-opus-4-9",
            "gpt-5.9",
            "gemini-9.0-pro",
            "-gpt-4o",
            "modèle-é-2024",
        ] {
            assert_eq!(context_window(unknown, None), None, "{unknown:?}");
        }
    }

    #[test]
    fn table_errors_are_reported() {
        let table = |text: &str| ContextTable::from_toml(text).map(|_| ());
        let dup = "version = \"x\"\n[models]\n\"a\" = { context = 10 }\n\"A\" = { context = 10 }";
        assert!(matches!(table(dup), Err(TableError::Duplicate(_))));
        let alias = "version = \"x\"\n[models]\n\"a\" = { context = 10 }\n[aliases]\n\"b\" = \"c\"";
        assert!(matches!(
            table(alias),
            Err(TableError::UnknownAliasTarget { .. })
        ));
        let zero = "version = \"x\"\n[models]\n\"a\" = { context = 0 }";
        assert!(matches!(table(zero), Err(TableError::Invalid(_))));
        let over = "version = \"x\"\n[models]\n\"a\" = { context = 10, max_output = 11 }";
        assert!(matches!(table(over), Err(TableError::Invalid(_))));
        let unknown = "version = \"x\"\n[models]\n\"a\" = { context = 10, input = 5 }";
        assert!(matches!(table(unknown), Err(TableError::Toml(_))));
    }

    // --- properties over random conversations with tool calls --------------------------------------

    /// One generated turn: tool calls in the reply (0 = text), a user message after any tool results,
    /// a tool exchange inside the input, text length, whether there is a reply at all.
    type TurnSpec = (usize, bool, bool, usize, bool);

    /// A conversation as a client of the OpenAI API would build it: tool results right after their
    /// call, at the head of the next turn's input; the new input may answer the last turn's calls.
    fn conversation(
        specs: &[TurnSpec],
        answer_last: bool,
        new_len: usize,
    ) -> (Vec<Turn>, Vec<ChatMessage>) {
        let mut pending: Vec<String> = Vec::new();
        let mut history = Vec::new();
        for (i, &(n_calls, user, inline, len, replied)) in specs.iter().enumerate() {
            let index = to_u64(i);
            let mut input: Vec<ChatMessage> = pending
                .drain(..)
                .map(|id| result(&id, &"r".repeat(len)))
                .collect();
            if inline {
                let id = format!("in{i}");
                input.push(ChatMessage::text("user", "x"));
                input.push(calls(&[&id]));
                input.push(result(&id, "inline"));
            }
            if user || input.is_empty() {
                input.push(ChatMessage::text("user", "u".repeat(len)));
            }
            let output = replied.then(|| {
                if n_calls == 0 {
                    ChatMessage::text("assistant", "a".repeat(len))
                } else {
                    pending = (0..n_calls).map(|k| format!("c{i}_{k}")).collect();
                    let ids: Vec<&str> = pending.iter().map(String::as_str).collect();
                    calls(&ids)
                }
            });
            history.push(turn(index, input, output));
        }
        let mut new: Vec<ChatMessage> = if answer_last {
            pending.iter().map(|id| result(id, "done")).collect()
        } else {
            Vec::new()
        };
        if new.is_empty() {
            new.push(ChatMessage::text("user", "q".repeat(new_len)));
        }
        (history, new)
    }

    fn all_messages<'a>(history: &'a [Turn], new: &'a [ChatMessage]) -> Vec<&'a ChatMessage> {
        history.iter().flat_map(Turn::messages).chain(new).collect()
    }

    fn call_ids(message: &ChatMessage) -> impl Iterator<Item = &str> {
        message.tool_calls.iter().flatten().map(|c| c.id.as_str())
    }

    proptest! {
        #[test]
        fn tool_pairs_are_never_split(
            specs in proptest::collection::vec(
                (0usize..3, any::<bool>(), any::<bool>(), 0usize..12, prop::bool::weighted(0.9)),
                0..10,
            ),
            system_len in proptest::option::of(0usize..10),
            answer_last in any::<bool>(),
            new_len in 0usize..10,
            context in 0u64..400,
            reserve in 0u64..40,
        ) {
            let (history, new) = conversation(&specs, answer_last, new_len);
            let system = system_len.map(|n| ChatMessage::text("system", "s".repeat(n)));
            let lim = limit(context, reserve);
            let outcome = fit(system.as_ref(), &history, &new, lim, &count);

            // The smallest request: system, new input and, when the new input answers calls, the
            // newest group.
            let required_from = if starts_with_tool_result(&new) {
                groups_newest_first(&history).next().map_or(history.len(), |(start, _)| start)
            } else {
                history.len()
            };
            let request = |from: usize| -> Vec<ChatMessage> {
                system.iter().cloned()
                    .chain(history[from..].iter().flat_map(Turn::messages).cloned())
                    .chain(new.iter().cloned())
                    .collect()
            };
            let minimum = count(&request(required_from));

            let fitted = match outcome {
                Err(WindowError::TooLong { needed, limit: l }) => {
                    prop_assert_eq!(l, context);
                    prop_assert_eq!(needed, minimum + reserve);
                    prop_assert!(needed > context);
                    return Ok(());
                }
                Ok(fitted) => fitted,
            };
            prop_assert!(minimum + reserve <= context);

            // Shape: system, a suffix of whole turns, the new input; the count is exact.
            let kept_from = usize::try_from(fitted.sent.dropped_turns).unwrap();
            prop_assert!(kept_from <= required_from);
            prop_assert_eq!(&fitted.messages, &request(kept_from));
            prop_assert_eq!(fitted.sent.input_tokens, count(&fitted.messages));
            prop_assert!(fitted.sent.input_tokens + reserve <= context);
            prop_assert_eq!(fitted.dropped.clone(), 0..to_u64(kept_from));
            prop_assert_eq!(fitted.sent.first_turn, to_u64(kept_from));
            prop_assert!(!fitted.sent.summarized);
            if let Some(system) = &system {
                prop_assert_eq!(&fitted.messages[0], system);
            }
            // As much as fits: the group before the kept ones would not have.
            if kept_from > 0 {
                let before = groups_newest_first(&history)
                    .find(|(start, _)| *start < kept_from)
                    .map(|(start, _)| start)
                    .unwrap();
                prop_assert!(count(&request(before)) + reserve > context);
            }

            // Tool pairs: every result follows its call, every call keeps all of its results.
            let everything = all_messages(&history, &new);
            for (at, message) in fitted.messages.iter().enumerate() {
                if let Some(id) = message.tool_call_id.as_deref() {
                    prop_assert!(
                        fitted.messages[..at].iter().any(|m| call_ids(m).any(|c| c == id)),
                        "result {} without its call", id
                    );
                }
                for id in call_ids(message) {
                    let results = |ms: &mut dyn Iterator<Item = &ChatMessage>| {
                        ms.filter(|m| m.tool_call_id.as_deref() == Some(id)).count()
                    };
                    prop_assert_eq!(
                        results(&mut fitted.messages.iter()),
                        results(&mut everything.iter().copied()),
                        "call {} lost results", id
                    );
                }
            }
        }

        #[test]
        fn lookup_never_panics(name in "[a-zA-Z0-9./:@_ -]{0,24}|\\PC{0,24}") {
            let _ = context_size(&name);
        }

        #[test]
        fn any_dated_snapshot_finds_its_base(
            base in proptest::sample::select(vec!["gpt-4o", "gpt-4.1-mini", "o3", "gemini-2.5-pro", "claude-opus-4-5"]),
            date in "20[0-9]{2}-?[01][0-9]-?[0-3][0-9]",
            sep in proptest::sample::select(vec!["-", "@"]),
        ) {
            let snapshot = format!("{base}{sep}{date}");
            prop_assert_eq!(context_size(&snapshot), context_size(base));
        }
    }

    #[test]
    fn a_stored_token_count_is_used_instead_of_counting_again() {
        let mut big = chat(0);
        // The stored count (as counted when the turn was stored) wins over the messages' own size.
        big.tokens = Some(1_000);
        let history = [big, chat(1)];
        let fitted = fit(
            None,
            &history,
            &[],
            WindowLimit {
                context_tokens: 200,
                reserve_output: 0,
            },
            &count,
        )
        .unwrap();
        assert_eq!(
            fitted.dropped,
            0..1,
            "the 1,000-token turn does not fit in 200"
        );
        let stored = turn_tokens(&chat(1), &count);
        assert_eq!(
            stored,
            count(&[
                ChatMessage::text("user", "u001"),
                ChatMessage::text("assistant", "a001")
            ]) - count(&[])
        );
    }
}
