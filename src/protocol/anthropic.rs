//! Anthropic Messages API wire format (version `2023-06-01`): request, response, stream event and error types.
//!
//! Like the OpenAI types, these keep what Sluice does not interpret: unknown request fields land in `extra`,
//! per-block fields such as `cache_control` or `citations` land in the block's `extra`, and content blocks
//! and block deltas of types invented after this was written are kept whole as JSON (`Other`), so a request
//! or response passed through re-serialises unchanged.
//!
//! A known block type whose body does not match its shape (say a `text` block without `text`) also lands in
//! `Other`: the translation code treats it as an unknown block rather than failing the whole body.
//!
//! [`StreamEvent`] has no such fallback: an event of a new type fails to parse, and the stream reader skips
//! it by its SSE `event:` name (as Anthropic advises), while a malformed event of a known type stays an error.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Unknown fields carried through unchanged.
pub type Extra = Map<String, Value>;

/// `POST /v1/messages` request body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MessagesRequest {
    /// Model name.
    pub model: String,
    /// Output token limit; required by the API, so parsing fails without it.
    pub max_tokens: u32,
    /// The conversation, alternating `user` and `assistant`.
    pub messages: Vec<Message>,
    /// System prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<SystemPrompt>,
    /// Strings that stop generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_sequences: Option<Vec<String>>,
    /// Whether to stream server-sent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Sampling temperature (0 to 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Sample only from the top K options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    /// How the model should use the tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// Request metadata (`user_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// Everything else (`thinking`, `service_tier`, …), forwarded unchanged.
    #[serde(flatten)]
    pub extra: Extra,
}

impl MessagesRequest {
    /// True when the client asked for a stream.
    #[must_use]
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }
}

/// The `system` field: a string or a list of text blocks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum SystemPrompt {
    /// Plain text.
    Text(String),
    /// Text blocks (which may carry `cache_control`).
    Blocks(Vec<ContentBlock>),
}

/// One message of the conversation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Message {
    /// `user` or `assistant`.
    pub role: String,
    /// Text or content blocks.
    pub content: MessageContent,
}

/// Message content: a string or a list of content blocks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Content blocks.
    Blocks(Vec<ContentBlock>),
}

impl MessageContent {
    /// The content as blocks; a string becomes one text block (none when empty).
    #[must_use]
    pub fn into_blocks(self) -> Vec<ContentBlock> {
        match self {
            Self::Text(text) if text.is_empty() => Vec::new(),
            Self::Text(text) => vec![ContentBlock::text(text)],
            Self::Blocks(blocks) => blocks,
        }
    }
}

/// A content block of a message, a system prompt, a tool result or a response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    /// Text.
    Text {
        /// The text.
        text: String,
        /// Other fields (`cache_control`, `citations`), forwarded unchanged.
        #[serde(flatten)]
        extra: Extra,
    },
    /// An image.
    Image {
        /// `{type: base64, media_type, data}` or `{type: url, url}`.
        source: Value,
        /// Other fields (`cache_control`), forwarded unchanged.
        #[serde(flatten)]
        extra: Extra,
    },
    /// A tool call made by the assistant.
    ToolUse {
        /// Call id, echoed by the tool result.
        id: String,
        /// Tool name.
        name: String,
        /// Arguments, a JSON object.
        input: Value,
        /// Other fields (`cache_control`), forwarded unchanged.
        #[serde(flatten)]
        extra: Extra,
    },
    /// The result of a tool call, sent in a user message.
    ToolResult {
        /// The call this answers.
        tool_use_id: String,
        /// The result.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<ToolResultContent>,
        /// True when the tool failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        is_error: Option<bool>,
        /// Other fields (`cache_control`), forwarded unchanged.
        #[serde(flatten)]
        extra: Extra,
    },
    /// Extended thinking.
    Thinking {
        /// The reasoning text.
        thinking: String,
        /// Signature that lets the API verify the block when it is sent back.
        #[serde(default)]
        signature: String,
    },
    /// Thinking the API returned encrypted.
    RedactedThinking {
        /// Opaque data.
        data: String,
    },
    /// Any other block (`document`, `server_tool_use`, …), kept as JSON.
    #[serde(untagged)]
    Other(Value),
}

impl ContentBlock {
    /// A text block without extra fields.
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text {
            text: text.into(),
            extra: Extra::new(),
        }
    }

    /// A tool call block without extra fields.
    pub fn tool_use(id: impl Into<String>, name: impl Into<String>, input: Value) -> Self {
        Self::ToolUse {
            id: id.into(),
            name: name.into(),
            input,
            extra: Extra::new(),
        }
    }

    /// The `type` of the block, as on the wire.
    pub fn kind(&self) -> &str {
        match self {
            Self::Text { .. } => "text",
            Self::Image { .. } => "image",
            Self::ToolUse { .. } => "tool_use",
            Self::ToolResult { .. } => "tool_result",
            Self::Thinking { .. } => "thinking",
            Self::RedactedThinking { .. } => "redacted_thinking",
            Self::Other(value) => value
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("unknown"),
        }
    }
}

/// The `content` of a tool result: a string or a list of blocks (text, image).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ToolResultContent {
    /// Plain text.
    Text(String),
    /// Content blocks.
    Blocks(Vec<ContentBlock>),
}

/// A tool definition.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Tool {
    /// Tool name.
    pub name: String,
    /// What the tool does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON schema of the input; absent on server tools (`web_search`, …), which have a `type` in `extra`.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub input_schema: Value,
    /// Other fields (`type`, `cache_control`, …), forwarded unchanged.
    #[serde(flatten)]
    pub extra: Extra,
}

/// How the model should use tools.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model decides.
    Auto {
        /// Allow at most one tool call.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disable_parallel_tool_use: Option<bool>,
    },
    /// The model must call some tool.
    Any {
        /// Allow at most one tool call.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disable_parallel_tool_use: Option<bool>,
    },
    /// The model must call the named tool.
    Tool {
        /// Tool name.
        name: String,
        /// Allow at most one tool call.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disable_parallel_tool_use: Option<bool>,
    },
    /// The model must not call tools.
    None,
}

/// Non-streaming response, and the `message` of a `message_start` event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MessagesResponse {
    /// Message id (`msg_…`).
    #[serde(default)]
    pub id: String,
    /// Always `message`.
    #[serde(rename = "type", default = "message_type")]
    pub kind: String,
    /// Always `assistant`.
    #[serde(default = "assistant_role")]
    pub role: String,
    /// Model that produced the response.
    #[serde(default)]
    pub model: String,
    /// Generated content (empty in `message_start`).
    #[serde(default)]
    pub content: Vec<ContentBlock>,
    /// `end_turn`, `max_tokens`, `stop_sequence`, `tool_use`, `pause_turn`, `refusal`; null while streaming.
    #[serde(default)]
    pub stop_reason: Option<String>,
    /// The stop sequence that matched, if any.
    #[serde(default)]
    pub stop_sequence: Option<String>,
    /// Token usage.
    #[serde(default)]
    pub usage: Usage,
}

fn message_type() -> String {
    "message".to_owned()
}

fn assistant_role() -> String {
    "assistant".to_owned()
}

impl MessagesResponse {
    /// An empty assistant message, as sent in `message_start`.
    pub fn new(id: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            kind: message_type(),
            role: assistant_role(),
            model: model.into(),
            content: Vec::new(),
            stop_reason: None,
            stop_sequence: None,
            usage: Usage::default(),
        }
    }
}

/// Token usage of a call; `message_delta` may omit `input_tokens`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens not read from or written to the cache.
    #[serde(default)]
    pub input_tokens: u64,
    /// Output tokens.
    #[serde(default)]
    pub output_tokens: u64,
    /// Input tokens written to the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_tokens: Option<u64>,
    /// Input tokens read from the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_input_tokens: Option<u64>,
}

/// One server-sent event of a streamed response; its `type` is also the SSE `event:` name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// First event: the message with empty content.
    MessageStart {
        /// The message so far.
        message: MessagesResponse,
    },
    /// A content block opens.
    ContentBlockStart {
        /// Block index in `content`.
        index: u32,
        /// The block with empty text or input.
        content_block: ContentBlock,
    },
    /// A piece of the open block.
    ContentBlockDelta {
        /// Block index in `content`.
        index: u32,
        /// What this event adds.
        delta: BlockDelta,
    },
    /// A content block is complete.
    ContentBlockStop {
        /// Block index in `content`.
        index: u32,
    },
    /// Top-level changes: stop reason and cumulative output usage.
    MessageDelta {
        /// Stop reason and sequence.
        delta: MessageDeltaBody,
        /// Usage so far (`output_tokens` at least).
        #[serde(default)]
        usage: Usage,
    },
    /// Last event of a successful stream.
    MessageStop,
    /// Keep-alive.
    Ping,
    /// The upstream failed mid-stream.
    Error {
        /// What went wrong.
        error: ErrorDetail,
    },
}

impl StreamEvent {
    /// The SSE `event:` name, which is the `type` of the data.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::MessageStart { .. } => "message_start",
            Self::ContentBlockStart { .. } => "content_block_start",
            Self::ContentBlockDelta { .. } => "content_block_delta",
            Self::ContentBlockStop { .. } => "content_block_stop",
            Self::MessageDelta { .. } => "message_delta",
            Self::MessageStop => "message_stop",
            Self::Ping => "ping",
            Self::Error { .. } => "error",
        }
    }
}

/// The `delta` of a `content_block_delta` event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BlockDelta {
    /// Text fragment of a text block.
    TextDelta {
        /// The fragment.
        text: String,
    },
    /// Fragment of the JSON input of a `tool_use` block.
    InputJsonDelta {
        /// The fragment (not valid JSON on its own).
        partial_json: String,
    },
    /// Fragment of a thinking block.
    ThinkingDelta {
        /// The fragment.
        thinking: String,
    },
    /// Signature of a thinking block, sent just before it closes.
    SignatureDelta {
        /// The signature.
        signature: String,
    },
    /// A citation added to a text block.
    CitationsDelta {
        /// The citation.
        citation: Value,
    },
    /// A delta type this code does not know, kept as JSON.
    #[serde(untagged)]
    Other(Value),
}

/// The `delta` of a `message_delta` event.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MessageDeltaBody {
    /// Why generation stopped.
    #[serde(default)]
    pub stop_reason: Option<String>,
    /// The stop sequence that matched, if any.
    #[serde(default)]
    pub stop_sequence: Option<String>,
}

/// Error response body: `{"type": "error", "error": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// Always `error`.
    #[serde(rename = "type", default = "error_type")]
    pub kind: String,
    /// What went wrong.
    pub error: ErrorDetail,
}

fn error_type() -> String {
    "error".to_owned()
}

impl ErrorBody {
    /// An error body of the given type (`invalid_request_error`, `overloaded_error`, …).
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: error_type(),
            error: ErrorDetail {
                kind: kind.into(),
                message: message.into(),
            },
        }
    }
}

/// Type and message of an error.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorDetail {
    /// `invalid_request_error`, `authentication_error`, `rate_limit_error`, `api_error`, `overloaded_error`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// Human-readable message.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_round_trips_with_unknown_blocks_and_fields() {
        let body = json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "xyz"},
                    {"type": "text", "text": "calling"},
                    {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "42", "is_error": false},
                    {"type": "tool_result", "tool_use_id": "toolu_2",
                     "content": [{"type": "text", "text": "a"}]},
                    {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "d"}}
                ]}
            ],
            "tools": [
                {"name": "f", "description": "d", "input_schema": {"type": "object"}},
                {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
            ],
            "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": true},
            "stop_sequences": ["END"], "stream": true, "temperature": 0.2, "top_p": 0.9, "top_k": 5,
            "metadata": {"user_id": "u"},
            "thinking": {"type": "enabled", "budget_tokens": 2048}
        });
        let req: MessagesRequest = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(req.extra.len(), 1);
        assert!(req.is_stream());
        let MessageContent::Blocks(blocks) = &req.messages[2].content else {
            panic!("blocks")
        };
        assert_eq!(blocks[3].kind(), "document");
        assert!(matches!(blocks[3], ContentBlock::Other(_)));
        assert_eq!(serde_json::to_value(&req).unwrap(), body);
    }

    #[test]
    fn max_tokens_is_required() {
        let err = serde_json::from_value::<MessagesRequest>(json!({"model": "m", "messages": []}))
            .unwrap_err();
        assert!(err.to_string().contains("max_tokens"), "{err}");
    }

    #[test]
    fn tool_choice_shapes() {
        for (value, choice) in [
            (
                json!({"type": "auto"}),
                ToolChoice::Auto {
                    disable_parallel_tool_use: None,
                },
            ),
            (
                json!({"type": "any", "disable_parallel_tool_use": true}),
                ToolChoice::Any {
                    disable_parallel_tool_use: Some(true),
                },
            ),
            (
                json!({"type": "tool", "name": "f"}),
                ToolChoice::Tool {
                    name: "f".into(),
                    disable_parallel_tool_use: None,
                },
            ),
            (json!({"type": "none"}), ToolChoice::None),
        ] {
            assert_eq!(
                serde_json::from_value::<ToolChoice>(value.clone()).unwrap(),
                choice
            );
            assert_eq!(serde_json::to_value(&choice).unwrap(), value);
        }
    }

    #[test]
    fn response_serialises_null_stop_fields_like_the_api() {
        let mut resp = MessagesResponse::new("msg_1", "m");
        resp.content.push(ContentBlock::text("hi"));
        resp.usage = Usage {
            input_tokens: 3,
            output_tokens: 1,
            ..Usage::default()
        };
        assert_eq!(
            serde_json::to_value(&resp).unwrap(),
            json!({
                "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                "content": [{"type": "text", "text": "hi"}],
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 3, "output_tokens": 1}
            })
        );
    }

    #[test]
    fn stream_events_parse_and_name_themselves() {
        let events = [
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                "model": "m", "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 10, "output_tokens": 1, "cache_read_input_tokens": 4}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
            json!({"type": "content_block_delta", "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": "{\"a\""}}),
            json!({"type": "content_block_delta", "index": 2,
                "delta": {"type": "thinking_delta", "thinking": "so"}}),
            json!({"type": "content_block_delta", "index": 2,
                "delta": {"type": "signature_delta", "signature": "s"}}),
            json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "citations_delta", "citation": {"type": "char_location"}}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"output_tokens": 15}}),
            json!({"type": "message_stop"}),
            json!({"type": "ping"}),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ];
        for value in events {
            let event: StreamEvent = serde_json::from_value(value.clone()).unwrap();
            assert_eq!(event.name(), value["type"], "{event:?}");
            assert_eq!(serde_json::to_value(&event).unwrap()["type"], value["type"]);
            if let StreamEvent::ContentBlockDelta { delta, .. } = &event {
                assert!(!matches!(delta, BlockDelta::Other(_)), "{delta:?}");
            }
        }
        let delta: StreamEvent = serde_json::from_value(
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                "usage": {"output_tokens": 7}}),
        )
        .unwrap();
        let StreamEvent::MessageDelta { usage, .. } = delta else {
            panic!("message_delta")
        };
        assert_eq!(
            usage,
            Usage {
                input_tokens: 0,
                output_tokens: 7,
                ..Usage::default()
            }
        );
    }

    #[test]
    fn unknown_deltas_survive_but_unknown_events_do_not_parse() {
        assert!(serde_json::from_value::<StreamEvent>(json!({"type": "brand_new_event"})).is_err());
        // A known event with a broken body is an error too, not silently something else.
        assert!(
            serde_json::from_value::<StreamEvent>(json!({"type": "content_block_stop"})).is_err()
        );

        let delta = json!({"type": "content_block_delta", "index": 0, "delta": {"type": "new_delta", "y": 2}});
        let parsed: StreamEvent = serde_json::from_value(delta.clone()).unwrap();
        assert!(matches!(
            &parsed,
            StreamEvent::ContentBlockDelta {
                delta: BlockDelta::Other(_),
                ..
            }
        ));
        assert_eq!(serde_json::to_value(&parsed).unwrap(), delta);
    }

    #[test]
    fn error_body_shape() {
        let body = ErrorBody::new("invalid_request_error", "max_tokens: Field required");
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({"type": "error", "error": {"type": "invalid_request_error",
                "message": "max_tokens: Field required"}})
        );
    }
}
