//! A streamed chat reply assembled back into one message, as the chunks pass: text fragments joined,
//! tool calls rebuilt from their indexed fragments (id and name from the first, arguments
//! concatenated), the final usage kept. Sessions store the reply of a streamed turn this way.

use super::openai::{ChatChunk, ChatMessage, FunctionCall, MessageContent, ToolCall, Usage};

/// Assembles the first choice of a chat stream.
#[derive(Debug, Default)]
pub struct ChatAssembler {
    role: Option<String>,
    content: String,
    saw_content: bool,
    tool_calls: Vec<ToolCall>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
}

impl ChatAssembler {
    /// An empty assembler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one chunk (only choice 0 is assembled).
    pub fn push(&mut self, chunk: &ChatChunk) {
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        for choice in chunk.choices.iter().filter(|c| c.index == 0) {
            let delta = &choice.delta;
            if let Some(role) = &delta.role {
                self.role.get_or_insert_with(|| role.clone());
            }
            if let Some(text) = &delta.content {
                self.saw_content = true;
                self.content.push_str(text);
            }
            for fragment in delta.tool_calls.iter().flatten() {
                let at = usize::try_from(fragment.index).unwrap_or(usize::MAX);
                // Indexes arrive in order; a gap (never seen in practice) is filled with empty calls
                // rather than trusting an index to size a vector.
                if at > self.tool_calls.len() {
                    continue;
                }
                if at == self.tool_calls.len() {
                    self.tool_calls.push(ToolCall {
                        id: String::new(),
                        kind: "function".to_owned(),
                        function: FunctionCall::default(),
                        extra: super::openai::Extra::new(),
                    });
                }
                let call = &mut self.tool_calls[at];
                if let Some(id) = &fragment.id {
                    call.id.clone_from(id);
                }
                if let Some(kind) = &fragment.kind {
                    call.kind.clone_from(kind);
                }
                if let Some(function) = &fragment.function {
                    if let Some(name) = &function.name {
                        call.function.name.push_str(name);
                    }
                    if let Some(arguments) = &function.arguments {
                        call.function.arguments.push_str(arguments);
                    }
                }
            }
            if let Some(reason) = &choice.finish_reason {
                self.finish_reason = Some(reason.clone());
            }
        }
    }

    /// Whether anything of a reply arrived (text or a tool call).
    pub fn is_empty(&self) -> bool {
        !self.saw_content && self.tool_calls.is_empty()
    }

    /// The final usage, if the stream carried one.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The finish reason of choice 0.
    pub fn finish_reason(&self) -> Option<&str> {
        self.finish_reason.as_deref()
    }

    /// The assembled assistant message.
    pub fn message(&self) -> ChatMessage {
        ChatMessage {
            role: self.role.clone().unwrap_or_else(|| "assistant".to_owned()),
            content: (self.saw_content || self.tool_calls.is_empty())
                .then(|| MessageContent::Text(self.content.clone())),
            tool_calls: (!self.tool_calls.is_empty()).then(|| self.tool_calls.clone()),
            ..ChatMessage::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(json: serde_json::Value) -> ChatChunk {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn text_and_tool_calls_are_rebuilt() {
        let mut a = ChatAssembler::new();
        for c in [
            serde_json::json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Let me "}}]}),
            serde_json::json!({"choices": [{"index": 0, "delta": {"content": "check."}}]}),
            serde_json::json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"ci"}}]}}]}),
            serde_json::json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "ty\":\"Paris\"}"}}]}}]}),
            serde_json::json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 1, "id": "call_2", "function": {"name": "get_time", "arguments": "{}"}}]}}]}),
            serde_json::json!({"choices": [{"index": 1, "delta": {"content": "other choice"}}]}),
            serde_json::json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
            serde_json::json!({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}),
        ] {
            a.push(&chunk(c));
        }
        let m = a.message();
        assert_eq!(m.role, "assistant");
        assert_eq!(m.text_content(), "Let me check.");
        let calls = m.tool_calls.unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].id, "call_1");
        assert_eq!(calls[0].function.name, "get_weather");
        assert_eq!(calls[0].function.arguments, r#"{"city":"Paris"}"#);
        assert_eq!(calls[1].function.name, "get_time");
        assert_eq!(a.finish_reason(), Some("tool_calls"));
        assert_eq!(a.usage().unwrap().completion_tokens, 4);
    }

    #[test]
    fn a_reply_with_only_tool_calls_has_no_content_and_an_empty_stream_is_empty() {
        let mut a = ChatAssembler::new();
        assert!(a.is_empty());
        a.push(&chunk(serde_json::json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}]}}]})));
        assert!(!a.is_empty());
        assert!(a.message().content.is_none());
        // An index that skips ahead is ignored rather than trusted.
        a.push(&chunk(serde_json::json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 7, "id": "x"}]}}]})));
        assert_eq!(a.message().tool_calls.unwrap().len(), 1);
    }
}
