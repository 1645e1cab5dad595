//! OpenAI-compatible upstreams (OpenAI, vLLM, Ollama, llama.cpp server, Groq, OpenRouter, ...).
//!
//! Requests are forwarded with every field the client sent; only `model` is rewritten and, for streams,
//! `stream_options.include_usage` is switched on so Sluice always learns the usage (the API layer drops
//! the extra chunk when the client did not ask for it).

use futures_util::future::BoxFuture;
use futures_util::stream::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::http_client::{self, Endpoint};
use super::sse_decode::{error_in_stream, events};
use super::{CallContext, ChunkStream, CompletionStream, Provider};
use crate::InitError;
use crate::config::HttpProviderConfig;
use crate::error::GatewayError;
use crate::protocol::openai::{
    ChatChunk, ChatCompletion, ChatRequest, Completion, CompletionRequest, EmbeddingsRequest,
    EmbeddingsResponse, StreamOptions,
};

/// An OpenAI-compatible provider.
pub struct OpenAi {
    name: String,
    chat: Endpoint,
    completions: Endpoint,
    embeddings: Endpoint,
    client: reqwest::Client,
    first_byte_timeout: std::time::Duration,
    stream_usage: bool,
}

impl OpenAi {
    /// Builds the provider and its pooled client.
    pub fn new(name: &str, config: &HttpProviderConfig) -> Result<Self, InitError> {
        let auth = http_client::api_key(name, config)?
            .map(|key| (http::header::AUTHORIZATION, format!("Bearer {key}")));
        Ok(Self {
            name: name.to_owned(),
            chat: Endpoint::new(name, &config.base_url, "chat/completions")?,
            completions: Endpoint::new(name, &config.base_url, "completions")?,
            embeddings: Endpoint::new(name, &config.base_url, "embeddings")?,
            client: http_client::build(name, config, auth)?,
            first_byte_timeout: config.first_byte_timeout,
            stream_usage: config.stream_usage,
        })
    }

    async fn send(
        &self,
        endpoint: &Endpoint,
        body: &impl Serialize,
        ctx: &CallContext,
    ) -> Result<reqwest::Response, GatewayError> {
        let request = self
            .client
            .post(endpoint.url())
            .json(body)
            .headers(ctx.upstream_headers());
        http_client::send(&self.name, request, self.first_byte_timeout).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        endpoint: &Endpoint,
        body: &impl Serialize,
        ctx: &CallContext,
    ) -> Result<T, GatewayError> {
        let response = self.send(endpoint, body, ctx).await?;
        http_client::read_json(&self.name, response).await
    }

    /// Opens an SSE stream and decodes each `data:` payload as `T` until `[DONE]`.
    async fn stream<T>(
        &self,
        endpoint: &Endpoint,
        body: &impl Serialize,
        ctx: &CallContext,
    ) -> Result<futures_util::stream::BoxStream<'static, Result<T, GatewayError>>, GatewayError>
    where
        T: DeserializeOwned + StreamItem + Send + 'static,
    {
        let response = self.send(endpoint, body, ctx).await?;
        let provider = self.name.clone();
        let mut events = events(&self.name, response.bytes_stream()).boxed();
        Ok(async_stream::stream! {
            let mut finished = false;
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(e) => { yield Err(e); return; }
                };
                if event.data == "[DONE]" {
                    return;
                }
                // One parse per event: an in-stream `{"error": ..}` lands in the chunk's `extra`.
                match serde_json::from_str::<T>(&event.data) {
                    Ok(item) => {
                        if let Some(error) = item.error() {
                            yield Err(error_in_stream(&provider, error));
                            return;
                        }
                        finished |= item.finishes();
                        yield Ok(item);
                    }
                    Err(e) => {
                        yield Err(malformed(&provider, &e));
                        return;
                    }
                }
            }
            // The connection closed cleanly without `[DONE]`. Accept it only if the reply was complete.
            if !finished {
                yield Err(GatewayError::UpstreamFailed {
                    provider: provider.clone(),
                    message: "the upstream closed the stream before the reply was complete".to_owned(),
                });
            }
        }
        .boxed())
    }
}

fn malformed(provider: &str, e: &serde_json::Error) -> GatewayError {
    GatewayError::UpstreamFailed {
        provider: provider.to_owned(),
        message: format!("the upstream sent a malformed chunk: {e}"),
    }
}

/// What the stream reader needs to know about an upstream chunk type.
trait StreamItem {
    /// True if the chunk completes the reply (a finish reason or the final usage).
    fn finishes(&self) -> bool;
    /// The error object of an in-stream `{"error": ..}` event.
    fn error(&self) -> Option<&Value>;
}

impl StreamItem for ChatChunk {
    fn finishes(&self) -> bool {
        self.usage.is_some() || self.choices.iter().any(|c| c.finish_reason.is_some())
    }

    fn error(&self) -> Option<&Value> {
        self.extra.get("error").filter(|e| !e.is_null())
    }
}

impl StreamItem for Completion {
    fn finishes(&self) -> bool {
        self.usage.is_some() || self.choices.iter().any(|c| c.finish_reason.is_some())
    }

    fn error(&self) -> Option<&Value> {
        self.extra.get("error").filter(|e| !e.is_null())
    }
}

fn ask_for_usage(options: &mut Option<StreamOptions>) {
    options
        .get_or_insert_with(StreamOptions::default)
        .include_usage = Some(true);
}

impl Provider for OpenAi {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "openai"
    }

    fn chat(
        &self,
        req: ChatRequest,
        ctx: CallContext,
    ) -> BoxFuture<'_, Result<ChatCompletion, GatewayError>> {
        Box::pin(async move { self.call(&self.chat, &req, &ctx).await })
    }

    fn chat_stream(
        &self,
        mut req: ChatRequest,
        ctx: CallContext,
    ) -> BoxFuture<'_, Result<ChunkStream, GatewayError>> {
        Box::pin(async move {
            if self.stream_usage {
                ask_for_usage(&mut req.stream_options);
            }
            self.stream(&self.chat, &req, &ctx).await
        })
    }

    fn completion(
        &self,
        req: CompletionRequest,
        ctx: CallContext,
    ) -> BoxFuture<'_, Result<Completion, GatewayError>> {
        Box::pin(async move { self.call(&self.completions, &req, &ctx).await })
    }

    fn completion_stream(
        &self,
        mut req: CompletionRequest,
        ctx: CallContext,
    ) -> BoxFuture<'_, Result<CompletionStream, GatewayError>> {
        Box::pin(async move {
            if self.stream_usage {
                ask_for_usage(&mut req.stream_options);
            }
            self.stream(&self.completions, &req, &ctx).await
        })
    }

    fn embeddings(
        &self,
        req: EmbeddingsRequest,
        ctx: CallContext,
    ) -> BoxFuture<'_, Result<EmbeddingsResponse, GatewayError>> {
        Box::pin(async move { self.call(&self.embeddings, &req, &ctx).await })
    }
}
