//! Legacy text completions served through a chat-only provider (Anthropic, mock): the prompt becomes one
//! user message, the reply text becomes `choices[0].text`.

use crate::error::GatewayError;
use crate::protocol::openai::{
    ChatChunk, ChatCompletion, ChatMessage, ChatRequest, Completion, CompletionChoice,
    CompletionRequest,
};

/// A completion request as a one-message chat request.
pub fn completion_to_chat(req: CompletionRequest) -> Result<ChatRequest, GatewayError> {
    let prompt = req.prompt_text().ok_or_else(|| {
        GatewayError::invalid(
            "this model's provider only supports a single string `prompt` (no token arrays or batches)",
            Some("prompt"),
        )
    })?;
    let mut extra = req.extra;
    // Fields that only exist for text completions.
    for key in ["echo", "best_of", "suffix"] {
        extra.remove(key);
    }
    Ok(ChatRequest {
        model: req.model,
        messages: vec![ChatMessage::text("user", prompt)],
        stream: req.stream,
        stream_options: req.stream_options,
        max_tokens: req.max_tokens,
        extra,
        ..ChatRequest::default()
    })
}

/// A chat response as a text completion.
pub fn chat_to_completion(resp: ChatCompletion) -> Completion {
    Completion {
        id: resp.id,
        object: "text_completion".to_owned(),
        created: resp.created,
        model: resp.model,
        choices: resp
            .choices
            .into_iter()
            .map(|c| CompletionChoice {
                text: c.message.text_content(),
                index: c.index,
                logprobs: None,
                finish_reason: c.finish_reason,
            })
            .collect(),
        usage: resp.usage,
        extra: serde_json::Map::new(),
    }
}

/// A chat chunk as a text completion chunk.
pub fn chunk_to_completion(chunk: ChatChunk) -> Completion {
    Completion {
        id: chunk.id,
        object: "text_completion".to_owned(),
        created: chunk.created,
        model: chunk.model,
        choices: chunk
            .choices
            .into_iter()
            .map(|c| CompletionChoice {
                text: c.delta.content.unwrap_or_default(),
                index: c.index,
                logprobs: None,
                finish_reason: c.finish_reason,
            })
            .collect(),
        usage: chunk.usage,
        extra: serde_json::Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn batch_prompts_are_refused_with_the_field_named() {
        let req: CompletionRequest =
            serde_json::from_value(json!({"model": "m", "prompt": ["a", "b"]})).unwrap();
        let err = completion_to_chat(req).unwrap_err();
        assert_eq!(err.openai_body()["error"]["param"], "prompt");
    }

    #[test]
    fn prompt_becomes_a_user_message() {
        let req: CompletionRequest = serde_json::from_value(
            json!({"model": "m", "prompt": "Say hi", "max_tokens": 5, "echo": false}),
        )
        .unwrap();
        let chat = completion_to_chat(req).unwrap();
        assert_eq!(chat.messages, vec![ChatMessage::text("user", "Say hi")]);
        assert_eq!(chat.max_tokens, Some(5));
        assert!(chat.extra.is_empty());
    }
}
