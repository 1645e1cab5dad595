//! OpenAI wire format: the canonical request, response and chunk types every provider speaks through.
//!
//! Sluice interprets only the fields it needs (model, messages, streaming, token limits); every other field
//! a client sends lands in an `extra` map and is serialised back unchanged, so tools, `response_format`,
//! `seed`, `logprobs`, `reasoning_effort` and fields invented after this was written reach an
//! OpenAI-compatible upstream untouched.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Unknown fields carried through unchanged.
pub type Extra = Map<String, Value>;

/// `POST /v1/chat/completions` request body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChatRequest {
    /// Public model name (rewritten to the upstream name before the provider call).
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Whether the client asked for an SSE stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Streaming options (`include_usage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Legacy output token limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Output token limit (newer name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Everything else, forwarded unchanged.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ChatRequest {
    /// True when the client asked for a stream.
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// True when the client asked for the final usage chunk.
    pub fn wants_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage == Some(true))
    }

    /// The output token limit under either name.
    pub fn output_limit(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }
}

/// `stream_options` of a chat or completion request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StreamOptions {
    /// Ask for a final chunk carrying `usage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    /// Other stream options, forwarded unchanged.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One message of a conversation.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Text or content parts; absent on assistant messages that only call tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<MessageContent>,
    /// Tool calls made by the assistant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// The call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Everything else (`name`, `refusal`, `audio`, …), forwarded unchanged.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ChatMessage {
    /// A plain text message.
    pub fn text(role: &str, text: impl Into<String>) -> Self {
        Self {
            role: role.to_owned(),
            content: Some(MessageContent::Text(text.into())),
            ..Self::default()
        }
    }

    /// The text of the message, content parts of type `text` joined.
    pub fn text_content(&self) -> String {
        self.content
            .as_ref()
            .map(MessageContent::joined_text)
            .unwrap_or_default()
    }
}

/// Message content: a string or a list of typed parts (text, image_url, input_audio, file, …).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Content parts, kept as JSON so unknown part types survive the round trip.
    Parts(Vec<Value>),
}

impl MessageContent {
    /// All text in the content, parts of type `text` joined without separator.
    pub fn joined_text(&self) -> String {
        match self {
            Self::Text(t) => t.clone(),
            Self::Parts(parts) => parts
                .iter()
                .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect(),
        }
    }
}

/// A complete tool call on an assistant message.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ToolCall {
    /// Call id, echoed by the tool result.
    pub id: String,
    /// Always `function` today.
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    /// Function name and JSON-encoded arguments.
    pub function: FunctionCall,
    /// Unknown fields, forwarded unchanged.
    #[serde(flatten)]
    pub extra: Extra,
}

fn function_type() -> String {
    "function".to_owned()
}

/// Function name and arguments of a tool call.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FunctionCall {
    /// Function name.
    #[serde(default)]
    pub name: String,
    /// Arguments as a JSON string.
    #[serde(default)]
    pub arguments: String,
}

/// Token usage of a call.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens, cached ones included.
    pub prompt_tokens: u64,
    /// Output tokens.
    pub completion_tokens: u64,
    /// Sum of both.
    pub total_tokens: u64,
    /// Cached input tokens, when the upstream reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

impl Usage {
    /// Usage from input and output counts.
    pub fn new(prompt: u64, completion: u64) -> Self {
        Self {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: None,
        }
    }
}

/// Breakdown of input tokens.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PromptTokensDetails {
    /// Input tokens served from the provider's prompt cache.
    #[serde(default)]
    pub cached_tokens: u64,
}

/// Non-streaming chat completion response.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChatCompletion {
    /// Response id.
    pub id: String,
    /// Always `chat.completion`.
    #[serde(default = "chat_completion_object")]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// Model that produced the response, as the upstream named it.
    #[serde(default)]
    pub model: String,
    /// Choices.
    #[serde(default)]
    pub choices: Vec<Choice>,
    /// Token usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Unknown fields (`system_fingerprint`, `service_tier`, …), forwarded unchanged.
    #[serde(flatten)]
    pub extra: Extra,
}

fn chat_completion_object() -> String {
    "chat.completion".to_owned()
}

/// One choice of a non-streaming response.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Choice {
    /// Choice index.
    #[serde(default)]
    pub index: u32,
    /// The assistant message.
    pub message: ChatMessage,
    /// `stop`, `length`, `tool_calls`, `content_filter`.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Unknown fields (`logprobs`, …), forwarded unchanged.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One `chat.completion.chunk` of a stream.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChatChunk {
    /// Response id, the same on every chunk.
    #[serde(default)]
    pub id: String,
    /// Always `chat.completion.chunk`.
    #[serde(default = "chat_chunk_object")]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// Model name as the upstream sent it.
    #[serde(default)]
    pub model: String,
    /// Deltas; empty on the final usage chunk.
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    /// Usage; set only on the final chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Unknown fields, forwarded unchanged.
    #[serde(flatten)]
    pub extra: Extra,
}

fn chat_chunk_object() -> String {
    "chat.completion.chunk".to_owned()
}

impl ChatChunk {
    /// True for the final chunk that carries only usage (`choices: []`).
    pub fn is_usage_only(&self) -> bool {
        self.choices.is_empty() && self.usage.is_some()
    }
}

/// One choice delta of a chunk.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChunkChoice {
    /// Choice index.
    #[serde(default)]
    pub index: u32,
    /// What this chunk adds.
    #[serde(default)]
    pub delta: Delta,
    /// Set on the last delta of the choice.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Unknown fields (`logprobs`, …), forwarded unchanged.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Incremental message content.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Delta {
    /// Set on the first delta.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Text fragment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Tool call fragments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
    /// Unknown fields (`refusal`, `reasoning_content`, …), forwarded unchanged.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A fragment of a tool call in a stream.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ToolCallDelta {
    /// Which tool call of the message this fragment belongs to.
    pub index: u32,
    /// Set on the first fragment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Set on the first fragment.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name (first fragment) and a piece of the arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionCallDelta>,
}

/// Name and argument fragment of a streamed tool call.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FunctionCallDelta {
    /// Set on the first fragment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A piece of the JSON arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// `POST /v1/completions` request (legacy text completions).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CompletionRequest {
    /// Public model name.
    pub model: String,
    /// A string, an array of strings, or token arrays.
    #[serde(default)]
    pub prompt: Value,
    /// Whether the client asked for an SSE stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Streaming options (`include_usage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Output token limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Everything else, forwarded unchanged.
    #[serde(flatten)]
    pub extra: Extra,
}

impl CompletionRequest {
    /// True when the client asked for a stream.
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// True when the client asked for the final usage chunk.
    pub fn wants_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage == Some(true))
    }

    /// The prompt as text: a string, or the first string of an array.
    pub fn prompt_text(&self) -> Option<String> {
        match &self.prompt {
            Value::String(s) => Some(s.clone()),
            Value::Array(items) if items.len() == 1 => items[0].as_str().map(str::to_owned),
            _ => None,
        }
    }
}

/// A `text_completion` response or stream chunk (the shape is the same).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Completion {
    /// Response id.
    #[serde(default)]
    pub id: String,
    /// Always `text_completion`.
    #[serde(default = "text_completion_object")]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// Model name as the upstream sent it.
    #[serde(default)]
    pub model: String,
    /// Choices.
    #[serde(default)]
    pub choices: Vec<CompletionChoice>,
    /// Usage (final chunk of a stream, or the response).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Unknown fields, forwarded unchanged.
    #[serde(flatten)]
    pub extra: Extra,
}

fn text_completion_object() -> String {
    "text_completion".to_owned()
}

impl Completion {
    /// True for the final chunk that carries only usage.
    pub fn is_usage_only(&self) -> bool {
        self.choices.is_empty() && self.usage.is_some()
    }
}

/// One choice of a text completion.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CompletionChoice {
    /// Generated text (a fragment, when streaming).
    #[serde(default)]
    pub text: String,
    /// Choice index.
    #[serde(default)]
    pub index: u32,
    /// Log probabilities, when asked for.
    #[serde(default)]
    pub logprobs: Option<Value>,
    /// `stop` or `length`.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// `POST /v1/embeddings` request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EmbeddingsRequest {
    /// Public model name.
    pub model: String,
    /// A string, an array of strings, or token arrays.
    pub input: Value,
    /// Everything else (`dimensions`, `encoding_format`, `user`), forwarded unchanged.
    #[serde(flatten)]
    pub extra: Extra,
}

impl EmbeddingsRequest {
    /// The inputs as text; token arrays are rendered as their JSON.
    pub fn inputs(&self) -> Vec<String> {
        match &self.input {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .collect(),
            other => vec![other.to_string()],
        }
    }
}

/// `POST /v1/embeddings` response.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EmbeddingsResponse {
    /// Always `list`.
    #[serde(default = "list_object")]
    pub object: String,
    /// Embedding objects, forwarded unchanged (float arrays or base64 strings).
    #[serde(default)]
    pub data: Vec<Value>,
    /// Model name as the upstream sent it.
    #[serde(default)]
    pub model: String,
    /// Token usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<EmbeddingsUsage>,
    /// Unknown fields, forwarded unchanged.
    #[serde(flatten)]
    pub extra: Extra,
}

fn list_object() -> String {
    "list".to_owned()
}

/// Usage of an embeddings call.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EmbeddingsUsage {
    /// Input tokens.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Same as `prompt_tokens`.
    #[serde(default)]
    pub total_tokens: u64,
}

/// Finish reasons Sluice produces itself.
pub mod finish {
    /// The model stopped naturally.
    pub const STOP: &str = "stop";
    /// The output token limit was reached.
    pub const LENGTH: &str = "length";
    /// The model called tools.
    pub const TOOL_CALLS: &str = "tool_calls";
    /// Output was withheld by a safety filter.
    pub const CONTENT_FILTER: &str = "content_filter";
}

/// Current Unix time in seconds, for `created` fields Sluice fills itself.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let body = json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}
                ], "name": "alice"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "42"}
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": "auto", "response_format": {"type": "json_object"}, "seed": 7, "logprobs": true,
            "n": 2, "stop": ["\n"], "user": "u1", "reasoning_effort": "low", "temperature": 0.5
        });
        let req: ChatRequest = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(req.extra.len(), 9, "{:?}", req.extra.keys());
        let back = serde_json::to_value(&req).unwrap();
        // `content: null` is dropped on the way back; everything else is identical.
        let mut expected = body;
        expected["messages"][1]
            .as_object_mut()
            .unwrap()
            .remove("content");
        assert_eq!(back, expected);
    }

    #[test]
    fn usage_only_chunk_is_recognised() {
        let chunk: ChatChunk = serde_json::from_value(json!({
            "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
        }))
        .unwrap();
        assert!(chunk.is_usage_only());
        assert_eq!(chunk.usage, Some(Usage::new(3, 4)));
    }
}
