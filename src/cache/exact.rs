//! The exact tier, in process: whole replies keyed by [`super::key::chat_key`], bounded by bytes (moka,
//! TinyLFU eviction) with a TTL. A streamed reply is stored as its chunks, so a streaming hit replays
//! the same chunk structure and usage; a non-streaming hit of a streamed reply gets it assembled, and a
//! streaming hit of a non-streamed one gets it split into role, content, finish and usage chunks.

use std::sync::Arc;
use std::time::Duration;

use super::key::CacheKey;
use crate::protocol::assemble::ChatAssembler;
use crate::protocol::openai::{ChatChunk, ChatCompletion, Choice, ChunkChoice, Delta};

/// A stored reply.
#[derive(Debug, Clone)]
pub struct CachedReply {
    /// The reply as one completion.
    pub completion: ChatCompletion,
    /// The chunks as streamed, when it was streamed.
    pub chunks: Option<Vec<ChatChunk>>,
    /// Approximate size in memory (JSON bytes), the weight against `max_bytes`.
    pub bytes: u32,
}

impl CachedReply {
    /// The reply as stream chunks: the stored ones, or the completion split up.
    pub fn stream(&self) -> Vec<ChatChunk> {
        if let Some(chunks) = &self.chunks {
            return chunks.clone();
        }
        let c = &self.completion;
        let chunk = |choices: Vec<ChunkChoice>, usage| ChatChunk {
            id: c.id.clone(),
            object: "chat.completion.chunk".to_owned(),
            created: c.created,
            model: c.model.clone(),
            choices,
            usage,
            ..ChatChunk::default()
        };
        let mut out = Vec::with_capacity(3);
        out.push(chunk(
            c.choices
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
                                .map(|(i, call)| crate::protocol::openai::ToolCallDelta {
                                    index: u32::try_from(i).unwrap_or(u32::MAX),
                                    id: Some(call.id.clone()),
                                    kind: Some(call.kind.clone()),
                                    function: Some(crate::protocol::openai::FunctionCallDelta {
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
                .collect(),
            None,
        ));
        out.push(chunk(
            c.choices
                .iter()
                .map(|choice| ChunkChoice {
                    index: choice.index,
                    finish_reason: choice.finish_reason.clone(),
                    ..ChunkChoice::default()
                })
                .collect(),
            None,
        ));
        if c.usage.is_some() {
            out.push(chunk(Vec::new(), c.usage));
        }
        out
    }
}

fn size_of<T: serde::Serialize>(value: &T) -> u32 {
    serde_json::to_vec(value).map_or(u32::MAX, |v| u32::try_from(v.len()).unwrap_or(u32::MAX))
}

/// The in-process exact tier.
pub struct ExactCache {
    entries: moka::future::Cache<CacheKey, Arc<CachedReply>>,
    /// Metric families.
    pub metrics: super::CacheMetrics,
}

impl ExactCache {
    /// A cache holding at most `max_bytes` of replies, each for `ttl`.
    pub fn new(max_bytes: u64, ttl: Duration) -> Self {
        Self {
            entries: moka::future::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_, reply: &Arc<CachedReply>| reply.bytes)
                .time_to_live(ttl)
                .build(),
            metrics: super::CacheMetrics::default(),
        }
    }

    /// The reply stored under `key`.
    pub async fn get(&self, key: &CacheKey) -> Option<Arc<CachedReply>> {
        self.entries.get(key).await
    }

    /// Stores a whole (non-streamed) reply.
    pub async fn put_completion(&self, key: CacheKey, completion: ChatCompletion) {
        let bytes = size_of(&completion);
        let reply = CachedReply {
            completion,
            chunks: None,
            bytes,
        };
        self.insert(key, reply).await;
    }

    async fn insert(&self, key: CacheKey, reply: CachedReply) {
        self.entries.insert(key, Arc::new(reply)).await;
        self.entries.run_pending_tasks().await;
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.metrics.entries.set(gauge(self.entries.entry_count()));
        self.metrics.bytes.set(gauge(self.entries.weighted_size()));
    }

    /// Stores a streamed reply (all its chunks, in order).
    pub async fn put_stream(&self, key: CacheKey, chunks: Vec<ChatChunk>) {
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
                extra: crate::protocol::openai::Extra::new(),
            }],
            usage: assembler.usage(),
            ..ChatCompletion::default()
        };
        let bytes = size_of(&chunks).saturating_add(size_of(&completion));
        let reply = CachedReply {
            completion,
            chunks: Some(chunks),
            bytes,
        };
        self.insert(key, reply).await;
    }

    /// Entries (approximate until moka's pending work runs).
    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }
}
