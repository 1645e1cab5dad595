//! The built-in deterministic mock provider: no network, no keys. Replies are a pure function of the
//! request (same prompt, same reply), with configurable length, time to first token, per-token delay and
//! injected failures. It is the default of a first run and a load-test target.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::StreamExt;
use serde_json::{Value, json};

use super::{CallContext, ChunkStream, Provider};
use crate::config::{FailureMode, MockProviderConfig};
use crate::error::GatewayError;
use crate::protocol::openai::{
    ChatChunk, ChatCompletion, ChatMessage, ChatRequest, Choice, ChunkChoice, Delta,
    EmbeddingsRequest, EmbeddingsResponse, EmbeddingsUsage, Usage, finish, unix_now,
};

const WORDS: [&str; 16] = [
    "Sluice",
    "is",
    "relaying",
    "this",
    "deterministic",
    "mock",
    "reply",
    "so",
    "you",
    "can",
    "test",
    "streaming",
    "without",
    "any",
    "provider",
    "keys",
];

/// Default embedding width.
const EMBEDDING_DIMENSIONS: usize = 16;

/// The mock provider.
pub struct Mock {
    name: String,
    config: MockProviderConfig,
    calls: AtomicU64,
}

/// A reply decided up front: tokens, finish reason, usage.
struct Reply {
    id: String,
    created: u64,
    model: String,
    tokens: Vec<String>,
    finish_reason: &'static str,
    usage: Usage,
    fail: Option<FailureMode>,
}

impl Mock {
    /// A mock provider with these settings.
    pub fn new(name: &str, config: MockProviderConfig) -> Self {
        Self {
            name: name.to_owned(),
            config,
            calls: AtomicU64::new(0),
        }
    }

    fn plan(&self, req: &ChatRequest) -> Reply {
        let call = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let fail = (self.config.fail_every > 0 && call.is_multiple_of(self.config.fail_every))
            .then_some(self.config.failure_mode);
        let limit = req.output_limit().unwrap_or(u32::MAX);
        let n = self.config.output_tokens.min(limit) as usize;
        let last_user = req
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(ChatMessage::text_content)
            .unwrap_or_default();
        let offset = usize::try_from(fnv1a(last_user.as_bytes()) % WORDS.len() as u64).unwrap_or(0);
        let tokens: Vec<String> = (0..n)
            .map(|i| {
                let word = WORDS[(offset + i) % WORDS.len()];
                if i == 0 {
                    word.to_owned()
                } else {
                    format!(" {word}")
                }
            })
            .collect();
        let prompt_tokens = req
            .messages
            .iter()
            .map(|m| count_tokens(&m.text_content()) + 3)
            .sum::<u64>()
            + 3;
        Reply {
            id: format!("chatcmpl-mock-{call}"),
            created: unix_now(),
            model: req.model.clone(),
            finish_reason: if self.config.output_tokens > limit {
                finish::LENGTH
            } else {
                finish::STOP
            },
            usage: Usage::new(prompt_tokens, tokens.len() as u64),
            tokens,
            fail,
        }
    }

    fn injected(&self) -> GatewayError {
        // An injected panic, to test that panics become 500s and the server stays up.
        assert!(
            self.config.failure_mode != FailureMode::Panic,
            "injected mock panic"
        );
        GatewayError::UpstreamFailed {
            provider: self.name.clone(),
            message: "injected mock failure".to_owned(),
        }
    }
}

/// Rough whitespace token count; the mock only needs to be deterministic.
fn count_tokens(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn chunk(reply: &Reply, delta: Delta, finish_reason: Option<&str>) -> ChatChunk {
    ChatChunk {
        id: reply.id.clone(),
        object: "chat.completion.chunk".to_owned(),
        created: reply.created,
        model: reply.model.clone(),
        choices: vec![ChunkChoice {
            index: 0,
            delta,
            finish_reason: finish_reason.map(str::to_owned),
            ..ChunkChoice::default()
        }],
        usage: None,
        extra: serde_json::Map::new(),
    }
}

async fn pause(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

impl Provider for Mock {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "mock"
    }

    fn chat(
        &self,
        req: ChatRequest,
        _ctx: CallContext,
    ) -> BoxFuture<'_, Result<ChatCompletion, GatewayError>> {
        Box::pin(async move {
            let reply = self.plan(&req);
            if reply.fail.is_some() {
                return Err(self.injected());
            }
            pause(
                self.config.ttft
                    + self.config.token_delay
                        * u32::try_from(reply.tokens.len()).unwrap_or(u32::MAX),
            )
            .await;
            Ok(ChatCompletion {
                id: reply.id,
                object: "chat.completion".to_owned(),
                created: reply.created,
                model: reply.model,
                choices: vec![Choice {
                    index: 0,
                    message: ChatMessage::text("assistant", reply.tokens.concat()),
                    finish_reason: Some(reply.finish_reason.to_owned()),
                    extra: serde_json::Map::new(),
                }],
                usage: Some(reply.usage),
                extra: serde_json::Map::new(),
            })
        })
    }

    fn chat_stream(
        &self,
        req: ChatRequest,
        _ctx: CallContext,
    ) -> BoxFuture<'_, Result<ChunkStream, GatewayError>> {
        Box::pin(async move {
            let reply = self.plan(&req);
            if matches!(reply.fail, Some(FailureMode::Error | FailureMode::Panic)) {
                return Err(self.injected());
            }
            let (ttft, delay) = (self.config.ttft, self.config.token_delay);
            let break_at =
                (reply.fail == Some(FailureMode::MidStream)).then_some(reply.tokens.len() / 2);
            let injected = self.injected();
            Ok(async_stream::stream! {
                pause(ttft).await;
                let role = Delta { role: Some("assistant".to_owned()), content: Some(String::new()), ..Delta::default() };
                yield Ok(chunk(&reply, role, None));
                for (i, token) in reply.tokens.iter().enumerate() {
                    if break_at == Some(i) {
                        yield Err(injected);
                        return;
                    }
                    if i > 0 {
                        pause(delay).await;
                    }
                    yield Ok(chunk(&reply, Delta { content: Some(token.clone()), ..Delta::default() }, None));
                }
                yield Ok(chunk(&reply, Delta::default(), Some(reply.finish_reason)));
                let mut last = chunk(&reply, Delta::default(), None);
                last.choices.clear();
                last.usage = Some(reply.usage);
                yield Ok(last);
            }
            .boxed())
        })
    }

    fn embeddings(
        &self,
        req: EmbeddingsRequest,
        _ctx: CallContext,
    ) -> BoxFuture<'_, Result<EmbeddingsResponse, GatewayError>> {
        Box::pin(async move {
            let dims = req.extra.get("dimensions").and_then(Value::as_u64).map_or(
                EMBEDDING_DIMENSIONS,
                |d| {
                    usize::try_from(d)
                        .unwrap_or(EMBEDDING_DIMENSIONS)
                        .clamp(1, 4096)
                },
            );
            let inputs = req.inputs();
            let tokens: u64 = inputs.iter().map(|t| count_tokens(t).max(1)).sum();
            let data = inputs
                .iter()
                .enumerate()
                .map(|(index, text)| json!({"object": "embedding", "index": index, "embedding": embed(text, dims)}))
                .collect();
            Ok(EmbeddingsResponse {
                object: "list".to_owned(),
                data,
                model: req.model,
                usage: Some(EmbeddingsUsage {
                    prompt_tokens: tokens,
                    total_tokens: tokens,
                }),
                extra: serde_json::Map::new(),
            })
        })
    }
}

/// A deterministic unit vector derived from the text.
fn embed(text: &str, dims: usize) -> Vec<f32> {
    let mut state = fnv1a(text.as_bytes()) | 1;
    let raw: Vec<f32> = (0..dims)
        .map(|_| {
            // xorshift64: cheap, deterministic, good enough to spread the values.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            #[expect(
                clippy::cast_precision_loss,
                reason = "a pseudo-random value in [-1, 1) needs no precision"
            )]
            let v = (state >> 11) as f32 / (1u64 << 53) as f32;
            v * 2.0 - 1.0
        })
        .collect();
    let norm = raw
        .iter()
        .map(|v| v * v)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    raw.into_iter().map(|v| v / norm).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str, max_tokens: Option<u32>) -> ChatRequest {
        ChatRequest {
            model: "m".to_owned(),
            messages: vec![ChatMessage::text("user", text)],
            max_tokens,
            ..ChatRequest::default()
        }
    }

    #[tokio::test]
    async fn same_prompt_same_reply() {
        let mock = Mock::new("mock", MockProviderConfig::default());
        let a = mock
            .chat(request("hello", None), CallContext::default())
            .await
            .unwrap();
        let b = mock
            .chat(request("hello", None), CallContext::default())
            .await
            .unwrap();
        assert_eq!(a.choices[0].message, b.choices[0].message);
        assert_eq!(a.usage.unwrap().completion_tokens, 16);
    }

    #[tokio::test]
    async fn max_tokens_caps_the_reply() {
        let mock = Mock::new("mock", MockProviderConfig::default());
        let r = mock
            .chat(request("hello", Some(3)), CallContext::default())
            .await
            .unwrap();
        assert_eq!(r.usage.unwrap().completion_tokens, 3);
        assert_eq!(r.choices[0].finish_reason.as_deref(), Some("length"));
    }

    #[tokio::test]
    async fn stream_matches_non_stream() {
        let mock = Mock::new("mock", MockProviderConfig::default());
        let whole = mock
            .chat(request("hi", None), CallContext::default())
            .await
            .unwrap();
        let chunks: Vec<ChatChunk> = mock
            .chat_stream(request("hi", None), CallContext::default())
            .await
            .unwrap()
            .map(Result::unwrap)
            .collect()
            .await;
        let text: String = chunks
            .iter()
            .filter_map(|c| c.choices.first()?.delta.content.clone())
            .collect();
        assert_eq!(text, whole.choices[0].message.text_content());
        assert!(chunks.last().unwrap().is_usage_only());
    }

    #[tokio::test]
    async fn failures_are_injected_every_nth_call() {
        let config = MockProviderConfig {
            fail_every: 2,
            ..MockProviderConfig::default()
        };
        let mock = Mock::new("mock", config);
        assert!(
            mock.chat(request("a", None), CallContext::default())
                .await
                .is_ok()
        );
        assert!(
            mock.chat(request("a", None), CallContext::default())
                .await
                .is_err()
        );
        assert!(
            mock.chat(request("a", None), CallContext::default())
                .await
                .is_ok()
        );
    }

    #[test]
    fn embeddings_are_unit_vectors() {
        let v = embed("x", 8);
        let norm: f32 = v.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
        assert_eq!(v, embed("x", 8));
        assert_ne!(v, embed("y", 8));
    }
}
