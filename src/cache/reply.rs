//! A stored reply and how it is played back. A chat reply keeps the chunks it was streamed as, so a
//! streaming hit replays the same chunk structure and usage; a non-streaming hit of a streamed reply
//! gets it assembled, and a streaming hit of a non-streamed one gets it split into role, content,
//! finish and usage chunks. Text completions (`/v1/completions`) are kept the same way.
//!
//! Replies are serialised (JSON) for the Redis tier; `bytes` (the JSON size) is the weight against
//! `cache.max_bytes` in process.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::protocol::assemble::ChatAssembler;
use crate::protocol::openai::{
    ChatChunk, ChatCompletion, Choice, ChunkChoice, Completion, CompletionChoice, Delta, Extra,
    FunctionCallDelta, ToolCallDelta,
};

/// What was stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    /// A chat completion (`/v1/chat/completions`, `/v1/messages`).
    Chat {
        /// The reply as one completion.
        completion: ChatCompletion,
        /// The chunks as streamed, when it was streamed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chunks: Option<Vec<ChatChunk>>,
    },
    /// A text completion (`/v1/completions`): the whole reply, or the chunks as streamed.
    Text {
        /// The chunks (one, when it was not streamed).
        chunks: Vec<Completion>,
        /// Whether `chunks` is a stream.
        streamed: bool,
    },
}

/// A stored reply with what the cache needs to know about it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedReply {
    /// The reply.
    pub body: Body,
    /// Public model name (purge by model, metric labels).
    pub model: String,
    /// The tenant (key id or `anonymous`): purge by key.
    pub tenant: String,
    /// How long it is served.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// What the original call cost, in USD (counted as saved on each hit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<rust_decimal::Decimal>,
    /// Approximate size in memory (the JSON size).
    #[serde(skip)]
    pub bytes: u32,
}

impl CachedReply {
    /// A reply with its weight computed.
    pub fn new(
        body: Body,
        model: &str,
        tenant: &str,
        ttl: Duration,
        cost_usd: Option<rust_decimal::Decimal>,
    ) -> Self {
        let mut reply = Self {
            body,
            model: model.to_owned(),
            tenant: tenant.to_owned(),
            ttl,
            cost_usd,
            bytes: 0,
        };
        reply.bytes = u32::try_from(reply.to_json().len()).unwrap_or(u32::MAX);
        reply
    }

    /// The JSON form (the Redis value).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses the JSON form.
    pub fn from_json(bytes: &[u8]) -> Option<Self> {
        let mut reply: Self = serde_json::from_slice(bytes).ok()?;
        reply.bytes = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        Some(reply)
    }

    /// A streamed chat reply (all its chunks, in order), assembled once for non-streaming hits.
    pub fn chat_stream(chunks: Vec<ChatChunk>) -> Body {
        let mut assembler = ChatAssembler::new();
        for chunk in &chunks {
            assembler.push(chunk);
        }
        let first = chunks.first();
        let completion = ChatCompletion {
            id: first.map(|c| c.id.clone()).unwrap_or_default(),
            object: "chat.completion".to_owned(),
            created: first.map_or(0, |c| c.created),
            model: first.map(|c| c.model.clone()).unwrap_or_default(),
            choices: vec![Choice {
                index: 0,
                message: assembler.message(),
                finish_reason: assembler.finish_reason().map(str::to_owned),
                extra: Extra::new(),
            }],
            usage: assembler.usage(),
            ..ChatCompletion::default()
        };
        Body::Chat {
            completion,
            chunks: Some(chunks),
        }
    }

    /// The chat reply as one completion (`None` for a text completion).
    pub fn chat_completion(&self) -> Option<&ChatCompletion> {
        match &self.body {
            Body::Chat { completion, .. } => Some(completion),
            Body::Text { .. } => None,
        }
    }

    /// The chat reply as stream chunks: the stored ones, or the completion split up.
    pub fn chat_chunks(&self) -> Option<Vec<ChatChunk>> {
        match &self.body {
            Body::Chat {
                chunks: Some(chunks),
                ..
            } => Some(chunks.clone()),
            Body::Chat { completion, .. } => Some(split_chat(completion)),
            Body::Text { .. } => None,
        }
    }

    /// The text completion as one reply (`None` for a chat reply).
    pub fn text_completion(&self) -> Option<Completion> {
        match &self.body {
            Body::Text { chunks, streamed } if *streamed => Some(assemble_text(chunks)),
            Body::Text { chunks, .. } => chunks.first().cloned(),
            Body::Chat { .. } => None,
        }
    }

    /// The text completion as stream chunks.
    pub fn text_chunks(&self) -> Option<Vec<Completion>> {
        match &self.body {
            Body::Text { chunks, streamed } if *streamed => Some(chunks.clone()),
            Body::Text { chunks, .. } => Some(split_text(chunks.first()?)),
            Body::Chat { .. } => None,
        }
    }
}

/// A whole chat completion as role/content, finish and usage chunks.
fn split_chat(c: &ChatCompletion) -> Vec<ChatChunk> {
    let chunk = |choices: Vec<ChunkChoice>, usage| ChatChunk {
        id: c.id.clone(),
        object: "chat.completion.chunk".to_owned(),
        created: c.created,
        model: c.model.clone(),
        choices,
        usage,
        ..ChatChunk::default()
    };
    let content = c
        .choices
        .iter()
        .map(|choice| ChunkChoice {
            index: choice.index,
            delta: Delta {
                role: Some(choice.message.role.clone()),
                content: choice
                    .message
                    .content
                    .as_ref()
                    .map(|_| choice.message.text_content()),
                tool_calls: choice.message.tool_calls.as_ref().map(|calls| {
                    calls
                        .iter()
                        .enumerate()
                        .map(|(i, call)| ToolCallDelta {
                            index: u32::try_from(i).unwrap_or(u32::MAX),
                            id: Some(call.id.clone()),
                            kind: Some(call.kind.clone()),
                            function: Some(FunctionCallDelta {
                                name: Some(call.function.name.clone()),
                                arguments: Some(call.function.arguments.clone()),
                            }),
                        })
                        .collect()
                }),
                ..Delta::default()
            },
            ..ChunkChoice::default()
        })
        .collect();
    let finish = c
        .choices
        .iter()
        .map(|choice| ChunkChoice {
            index: choice.index,
            finish_reason: choice.finish_reason.clone(),
            ..ChunkChoice::default()
        })
        .collect();
    let mut out = vec![chunk(content, None), chunk(finish, None)];
    if c.usage.is_some() {
        out.push(chunk(Vec::new(), c.usage));
    }
    out
}

/// A whole text completion as text and usage chunks.
fn split_text(c: &Completion) -> Vec<Completion> {
    let mut out = vec![Completion {
        usage: None,
        ..c.clone()
    }];
    if c.usage.is_some() {
        out.push(Completion {
            choices: Vec::new(),
            ..c.clone()
        });
    }
    out
}

/// Text completion chunks joined into one reply (text concatenated per choice index).
fn assemble_text(chunks: &[Completion]) -> Completion {
    let mut choices: Vec<CompletionChoice> = Vec::new();
    for chunk in chunks {
        for piece in &chunk.choices {
            let at = if let Some(at) = choices.iter().position(|c| c.index == piece.index) {
                at
            } else {
                choices.push(CompletionChoice {
                    index: piece.index,
                    ..CompletionChoice::default()
                });
                choices.len() - 1
            };
            let slot = &mut choices[at];
            slot.text.push_str(&piece.text);
            if piece.finish_reason.is_some() {
                slot.finish_reason.clone_from(&piece.finish_reason);
            }
        }
    }
    choices.sort_by_key(|c| c.index);
    let first = chunks.first();
    Completion {
        id: first.map(|c| c.id.clone()).unwrap_or_default(),
        object: "text_completion".to_owned(),
        created: first.map_or(0, |c| c.created),
        model: first.map(|c| c.model.clone()).unwrap_or_default(),
        choices,
        usage: chunks.iter().rev().find_map(|c| c.usage),
        extra: Extra::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_chunk(index: u32, text: &str, finish: Option<&str>) -> Completion {
        Completion {
            id: "cmpl-1".to_owned(),
            object: "text_completion".to_owned(),
            model: "m".to_owned(),
            choices: vec![CompletionChoice {
                index,
                text: text.to_owned(),
                finish_reason: finish.map(str::to_owned),
                ..CompletionChoice::default()
            }],
            ..Completion::default()
        }
    }

    #[test]
    fn text_chunks_assemble_per_choice_and_round_trip_through_json() {
        let chunks = vec![
            text_chunk(0, "Hel", None),
            text_chunk(1, "A", None),
            text_chunk(0, "lo", Some("stop")),
            text_chunk(1, "B", Some("length")),
        ];
        let reply = CachedReply::new(
            Body::Text {
                chunks,
                streamed: true,
            },
            "m",
            "key_1",
            Duration::from_mins(1),
            None,
        );
        let back = CachedReply::from_json(&reply.to_json()).unwrap();
        assert_eq!(back.bytes, reply.bytes);
        let whole = back.text_completion().unwrap();
        assert_eq!(whole.choices.len(), 2);
        assert_eq!(whole.choices[0].text, "Hello");
        assert_eq!(whole.choices[0].finish_reason.as_deref(), Some("stop"));
        assert_eq!(whole.choices[1].text, "AB");
        assert_eq!(back.text_chunks().unwrap().len(), 4);
        assert!(back.chat_completion().is_none());
    }
}
