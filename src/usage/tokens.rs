//! Token counts for calls whose upstream reports no usage, and for streams cut off before their usage chunk.
//!
//! Text is counted with OpenAI's tokenizers (tiktoken-rs, whose BPE files are compiled in, so nothing is
//! downloaded): `o200k_base` for GPT-4o, GPT-4.1, GPT-4.5, GPT-5, the o-series and gpt-oss;
//! `cl100k_base` for older OpenAI models and, as an approximation, for every other vendor. Counts for
//! OpenAI models are what OpenAI bills for text; counts for Claude, Gemini, Mistral, Llama and the
//! others are **estimates** (their tokenizers differ, by tens of percent on some text), see [`is_estimate`].
//!
//! Count a stream's output once, on the concatenated text: counting each delta separately over-counts,
//! because a token can span two deltas.
//!
//! Costs (release build, measured): loading `o200k_base` takes ~150 ms and ~45 MB, `cl100k_base`
//! ~50 ms and ~25 MB, once per process, on first use; call [`warm_up`] at start-up to pay that before
//! the first request. Counting is CPU-bound, ~20–50 ms per MB of prose and up to ~0.5 s for a
//! pathological MB (one long run of a single character), so count large bodies off the async
//! executor (`spawn_blocking`). Input the tokenizer's regex gives up on (a run of about a million
//! whitespace characters) is estimated at characters/4 instead of panicking.

use std::collections::HashSet;
use std::sync::LazyLock;

use serde_json::Value;
use tiktoken_rs::CoreBPE;

use crate::protocol::openai::ChatMessage;

/// Tokens OpenAI adds around every message (`<|start|>{role}<|message|>…<|end|>`).
const TOKENS_PER_MESSAGE: u64 = 3;
/// Extra token for a message that carries a `name`.
const TOKENS_PER_NAME: u64 = 1;
/// Tokens that prime the reply (`<|start|>assistant<|message|>`), once per request.
const REPLY_PRIMING: u64 = 3;

/// Model families tokenized with `o200k_base` (name, or name followed by a non-alphanumeric character).
const O200K_FAMILIES: &[&str] = &[
    "gpt-4o",
    "chatgpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "gpt-5",
    "o1",
    "o3",
    "o4",
    "gpt-oss",
    "codex-mini",
];

/// Older OpenAI model families tokenized with `cl100k_base` (counted exactly).
const CL100K_FAMILIES: &[&str] = &[
    "gpt-4",
    "gpt-3.5",
    "gpt-35",
    "text-embedding-3",
    "text-embedding-ada-002",
    "davinci-002",
    "babbage-002",
];

static O200K: LazyLock<Option<CoreBPE>> = LazyLock::new(|| tiktoken_rs::o200k_base().ok());
static CL100K: LazyLock<Option<CoreBPE>> = LazyLock::new(|| tiktoken_rs::cl100k_base().ok());

/// A BPE vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `o200k_base`: GPT-4o and later OpenAI models.
    O200kBase,
    /// `cl100k_base`: GPT-4, GPT-3.5, OpenAI embeddings; the approximation for other vendors.
    Cl100kBase,
}

impl Encoding {
    /// The encoding used to count `model`'s tokens (a provider prefix such as `openai/` is ignored).
    pub fn for_model(model: &str) -> Self {
        if in_families(&base_name(model), O200K_FAMILIES) {
            Self::O200kBase
        } else {
            Self::Cl100kBase
        }
    }

    /// Tokens in `text`. Special-token markers such as `<|endoftext|>` in the text are counted as
    /// plain text, not as the control token. If the vocabulary could not be loaded, or its regex gives
    /// up on the text, this is a characters/4 estimate instead.
    pub fn count(self, text: &str) -> u64 {
        if text.is_empty() {
            return 0;
        }
        let bpe = match self {
            Self::O200kBase => O200K.as_ref(),
            Self::Cl100kBase => CL100K.as_ref(),
        };
        // `encode` with no special token allowed is `encode_ordinary` that returns the regex error
        // (fancy-regex gives up on very long whitespace runs) instead of panicking on it.
        match bpe.map(|bpe| bpe.encode(text, &HashSet::new())) {
            Some(Ok((tokens, _))) => to_u64(tokens.len()),
            Some(Err(_)) | None => estimate_by_chars(text),
        }
    }
}

/// Tokens in `text` for `model`; exact for OpenAI models, an estimate for other vendors.
pub fn count_text(model: &str, text: &str) -> u64 {
    Encoding::for_model(model).count(text)
}

/// Input tokens of a chat request's `messages`, by OpenAI's published rule: 3 tokens per message plus
/// its role, text content and `name` (+1), the names and arguments of its tool calls, and 3 tokens that
/// prime the reply.
///
/// Not counted: tool definitions (`tools`), images, audio and files in content parts, and the framing
/// of tool calls, so the count is a lower bound when those are present. For non-OpenAI models it is
/// an estimate (see [`is_estimate`]).
pub fn count_messages(model: &str, messages: &[ChatMessage]) -> u64 {
    let encoding = Encoding::for_model(model);
    let per_message = messages.iter().map(|message| {
        let mut tokens = TOKENS_PER_MESSAGE + encoding.count(&message.role);
        if let Some(content) = &message.content {
            tokens += encoding.count(&content.joined_text());
        }
        if let Some(name) = message.extra.get("name").and_then(Value::as_str) {
            tokens += encoding.count(name) + TOKENS_PER_NAME;
        }
        for call in message.tool_calls.iter().flatten() {
            tokens +=
                encoding.count(&call.function.name) + encoding.count(&call.function.arguments);
        }
        tokens
    });
    REPLY_PRIMING + per_message.sum::<u64>()
}

/// True when counts for `model` are an approximation (not an OpenAI model, so not its own tokenizer).
pub fn is_estimate(model: &str) -> bool {
    let name = base_name(model);
    !in_families(&name, O200K_FAMILIES) && !in_families(&name, CL100K_FAMILIES)
}

/// Loads both vocabularies now rather than on the first count; returns false if one failed to load
/// (counts then fall back to characters/4).
pub fn warm_up() -> bool {
    O200K.is_some() && CL100K.is_some()
}

/// Roughly four characters per token, rounded up: the fallback when no vocabulary is available.
fn estimate_by_chars(text: &str) -> u64 {
    to_u64(text.chars().count().div_ceil(4))
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// The model name lower-cased, without provider prefixes (`azure/openai/gpt-4o` -> `gpt-4o`).
fn base_name(model: &str) -> String {
    let name = model.trim();
    name.rsplit_once('/')
        .map_or(name, |(_, base)| base)
        .to_ascii_lowercase()
}

/// True when `name` is one of `families` or continues one after a non-alphanumeric character
/// (`gpt-4o-mini`, `gpt-5.1` and `o3-pro` do; `o30` and `gpt-4o`, for the family `gpt-4`, do not).
fn in_families(name: &str, families: &[&str]) -> bool {
    families.iter().any(|family| {
        name.strip_prefix(family).is_some_and(|rest| {
            rest.chars()
                .next()
                .is_none_or(|c| !c.is_ascii_alphanumeric())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::openai::{FunctionCall, MessageContent, ToolCall};
    use serde_json::json;

    #[test]
    fn vocabularies_load_from_the_crate_without_network() {
        assert!(warm_up());
    }

    #[test]
    fn hello_world_is_two_tokens() {
        assert_eq!(count_text("gpt-4o", "hello world"), 2);
        assert_eq!(count_text("gpt-4", "hello world"), 2);
        assert_eq!(Encoding::O200kBase.count("hello world"), 2);
        assert_eq!(Encoding::Cl100kBase.count("hello world"), 2);
    }

    #[test]
    fn known_counts() {
        // Examples from OpenAI's tiktoken documentation and cookbook.
        assert_eq!(Encoding::Cl100kBase.count("tiktoken is great!"), 6);
        assert_eq!(Encoding::Cl100kBase.count(""), 0);
        assert_eq!(Encoding::O200kBase.count(""), 0);
    }

    #[test]
    fn encodings_differ_where_they_should() {
        // Non-English text is where o200k is markedly denser than cl100k.
        let text = "Привет, как дела? Это проверка токенизатора.";
        assert!(Encoding::O200kBase.count(text) < Encoding::Cl100kBase.count(text));
    }

    #[test]
    fn models_map_to_encodings() {
        for model in [
            "gpt-4o",
            "gpt-4o-mini-2024-07-18",
            "chatgpt-4o-latest",
            "gpt-4.1-nano",
            "gpt-5",
            "gpt-5.1-codex",
            "o1",
            "o3-mini",
            "o4-mini",
            "openai/gpt-oss-120b",
            "azure/GPT-4o",
        ] {
            assert_eq!(Encoding::for_model(model), Encoding::O200kBase, "{model}");
            assert!(!is_estimate(model), "{model}");
        }
        for model in [
            "gpt-4",
            "gpt-4-turbo",
            "gpt-4-0613",
            "gpt-3.5-turbo",
            "gpt-35-turbo",
            "text-embedding-3-small",
        ] {
            assert_eq!(Encoding::for_model(model), Encoding::Cl100kBase, "{model}");
            assert!(!is_estimate(model), "{model}");
        }
        for model in [
            "claude-sonnet-4-5",
            "gemini-2.5-pro",
            "mistral-large-latest",
            "deepseek-chat",
            "llama-3.3-70b-versatile",
            "o10-future",
            "",
        ] {
            assert_eq!(Encoding::for_model(model), Encoding::Cl100kBase, "{model}");
            assert!(is_estimate(model), "{model}");
        }
    }

    #[test]
    fn other_vendors_are_counted_with_cl100k() {
        let text = "The quick brown fox jumps over the lazy dog.";
        assert_eq!(
            count_text("claude-3-5-haiku", text),
            Encoding::Cl100kBase.count(text)
        );
        assert_eq!(count_text("claude-3-5-haiku", text), 10);
    }

    #[test]
    fn special_token_markers_are_plain_text() {
        let text = "<|endoftext|>";
        assert!(count_text("gpt-4o", text) > 1);
        assert!(count_text("gpt-4", text) > 1);
    }

    #[test]
    fn very_long_whitespace_does_not_panic() {
        // fancy-regex gives up on a run this long (tiktoken-rs's `encode_ordinary` would panic):
        // the count falls back to the characters/4 estimate.
        let text = format!("a{}b", " ".repeat(1_000_000));
        assert_eq!(count_text("gpt-4o", &text), 250_001);
        assert!(count_text("gpt-4", &text) > 0);
    }

    proptest::proptest! {
        #[test]
        fn counting_never_panics_and_is_at_most_one_token_per_byte(
            text in "\\PC{0,64}|[ \t\r\n]{0,64}",
            model in proptest::sample::select(vec!["gpt-4o", "gpt-4", "claude-sonnet-4-5"]),
        ) {
            let n = count_text(model, &text);
            proptest::prop_assert!(n <= text.len() as u64);
            proptest::prop_assert_eq!(n == 0, text.is_empty());
        }
    }

    #[test]
    fn the_chars_fallback_rounds_up() {
        assert_eq!(estimate_by_chars(""), 0);
        assert_eq!(estimate_by_chars("abc"), 1);
        assert_eq!(estimate_by_chars("abcd"), 1);
        assert_eq!(estimate_by_chars("abcde"), 2);
        assert_eq!(estimate_by_chars("ééééé"), 2);
    }

    /// The example conversation of OpenAI's cookbook "How to count tokens with tiktoken", which reports
    /// 129 prompt tokens for gpt-3.5-turbo / gpt-4 (cl100k) and 124 for gpt-4o / gpt-4o-mini (o200k),
    /// the numbers the API returned.
    fn cookbook_messages() -> Vec<ChatMessage> {
        let named = |name: &str, content: &str| {
            let mut m = ChatMessage::text("system", content);
            m.extra.insert("name".to_owned(), json!(name));
            m
        };
        vec![
            ChatMessage::text(
                "system",
                "You are a helpful, pattern-following assistant that translates corporate jargon into plain English.",
            ),
            named(
                "example_user",
                "New synergies will help drive top-line growth.",
            ),
            named(
                "example_assistant",
                "Things working well together will increase revenue.",
            ),
            named(
                "example_user",
                "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage.",
            ),
            named(
                "example_assistant",
                "Let's talk later when we're less busy about how to do better.",
            ),
            ChatMessage::text(
                "user",
                "This late pivot means we don't have time to boil the ocean for the client deliverable.",
            ),
        ]
    }

    #[test]
    fn messages_match_the_cookbook() {
        let messages = cookbook_messages();
        assert_eq!(count_messages("gpt-4-0613", &messages), 129);
        assert_eq!(count_messages("gpt-3.5-turbo", &messages), 129);
        assert_eq!(count_messages("gpt-4o", &messages), 124);
        assert_eq!(count_messages("gpt-4o-mini", &messages), 124);
    }

    #[test]
    fn empty_conversation_is_the_reply_priming() {
        assert_eq!(count_messages("gpt-4o", &[]), 3);
    }

    #[test]
    fn one_message_overhead() {
        // 3 (message) + "user" (1) + "hello world" (2) + 3 (priming).
        assert_eq!(
            count_messages("gpt-4o", &[ChatMessage::text("user", "hello world")]),
            9
        );
    }

    #[test]
    fn content_parts_and_tool_calls_are_counted() {
        let parts = ChatMessage {
            role: "user".to_owned(),
            content: Some(MessageContent::Parts(vec![
                json!({"type": "text", "text": "hello"}),
                json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}),
                json!({"type": "text", "text": " world"}),
            ])),
            ..ChatMessage::default()
        };
        assert_eq!(count_messages("gpt-4o", &[parts]), 9);

        let call = ChatMessage {
            role: "assistant".to_owned(),
            content: None,
            tool_calls: Some(vec![ToolCall {
                id: "call_1".to_owned(),
                kind: "function".to_owned(),
                function: FunctionCall {
                    name: "get_weather".to_owned(),
                    arguments: r#"{"city":"Paris"}"#.to_owned(),
                },
                ..ToolCall::default()
            }]),
            ..ChatMessage::default()
        };
        let expected = 3
            + 3
            + count_text("gpt-4o", "assistant")
            + count_text("gpt-4o", "get_weather")
            + count_text("gpt-4o", r#"{"city":"Paris"}"#);
        assert_eq!(count_messages("gpt-4o", &[call]), expected);
    }

    #[test]
    fn concatenated_output_is_counted_once() {
        // A stream's deltas, counted after concatenation, equal the count of the whole text.
        let deltas = ["The quick br", "own fox jum", "ps over the lazy dog."];
        let whole: String = deltas.concat();
        assert_eq!(
            count_text("gpt-4o", &whole),
            count_text("gpt-4o", "The quick brown fox jumps over the lazy dog.")
        );
        let per_delta: u64 = deltas.iter().map(|d| count_text("gpt-4o", d)).sum();
        assert!(per_delta > count_text("gpt-4o", &whole));
    }
}
