//! The native Anthropic Messages API: canonical (OpenAI-shaped) requests are translated to
//! `/v1/messages` and the responses and stream events back (`protocol::translate`), so OpenAI clients can
//! use Claude models unchanged.

use futures_util::future::BoxFuture;
use futures_util::stream::StreamExt;
use http::{HeaderName, HeaderValue};

use super::http_client::{self, Endpoint};
use super::sse_decode::events;
use super::{CallContext, ChunkStream, Provider};
use crate::InitError;
use crate::config::HttpProviderConfig;
use crate::error::GatewayError;
use crate::protocol::anthropic::{MessagesRequest, MessagesResponse, StreamEvent};
use crate::protocol::openai::{ChatCompletion, ChatRequest};
use crate::protocol::translate::{self, MessagesToChatStream};

/// The Anthropic provider.
pub struct Anthropic {
    name: String,
    messages: Endpoint,
    client: reqwest::Client,
    first_byte_timeout: std::time::Duration,
    default_max_tokens: u32,
    version: HeaderValue,
}

impl Anthropic {
    /// Builds the provider and its pooled client.
    pub fn new(name: &str, config: &HttpProviderConfig) -> Result<Self, InitError> {
        let auth = http_client::api_key(name, config)?
            .map(|key| (HeaderName::from_static("x-api-key"), key));
        let version = HeaderValue::from_str(&config.anthropic_version).map_err(|_| {
            InitError::Config(format!(
                "providers.{name}.anthropic_version: invalid header value"
            ))
        })?;
        Ok(Self {
            name: name.to_owned(),
            messages: Endpoint::new(name, &config.base_url, "messages")?,
            client: http_client::build(name, config, auth)?,
            first_byte_timeout: config.first_byte_timeout,
            default_max_tokens: config.default_max_tokens,
            version,
        })
    }

    async fn send(
        &self,
        body: &MessagesRequest,
        ctx: &CallContext,
    ) -> Result<reqwest::Response, GatewayError> {
        let request = self
            .client
            .post(self.messages.url())
            .header(
                HeaderName::from_static("anthropic-version"),
                self.version.clone(),
            )
            .json(body)
            .headers(ctx.upstream_headers());
        http_client::send(&self.name, request, self.first_byte_timeout).await
    }
}

impl Provider for Anthropic {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "anthropic"
    }

    fn chat(
        &self,
        req: ChatRequest,
        ctx: CallContext,
    ) -> BoxFuture<'_, Result<ChatCompletion, GatewayError>> {
        Box::pin(async move {
            let mut body =
                translate::chat_to_messages_request(&req, &req.model, self.default_max_tokens)?;
            body.stream = None;
            let response = self.send(&body, &ctx).await?;
            let message: MessagesResponse = http_client::read_json(&self.name, response).await?;
            Ok(translate::messages_response_to_chat(message))
        })
    }

    fn chat_stream(
        &self,
        req: ChatRequest,
        ctx: CallContext,
    ) -> BoxFuture<'_, Result<ChunkStream, GatewayError>> {
        Box::pin(async move {
            let mut body =
                translate::chat_to_messages_request(&req, &req.model, self.default_max_tokens)?;
            body.stream = Some(true);
            let response = self.send(&body, &ctx).await?;
            let provider = self.name.clone();
            let mut events = events(&self.name, response.bytes_stream()).boxed();
            Ok(async_stream::stream! {
                let mut state = MessagesToChatStream::new();
                let mut stopped = false;
                while let Some(event) = events.next().await {
                    let event = match event {
                        Ok(e) => e,
                        Err(e) => { yield Err(e); return; }
                    };
                    let parsed: StreamEvent = match serde_json::from_str(&event.data) {
                        Ok(p) => p,
                        // Event types added after this was written are skipped, as Anthropic advises.
                        Err(_) if !matches!(event.event.as_str(), "error" | "message_start" | "message_delta" | "message_stop" | "content_block_start" | "content_block_delta") => continue,
                        Err(e) => {
                            yield Err(GatewayError::UpstreamFailed { provider: provider.clone(), message: format!("the upstream sent a malformed event: {e}") });
                            return;
                        }
                    };
                    stopped |= matches!(parsed, StreamEvent::MessageStop);
                    match state.on_event(parsed) {
                        Ok(chunks) => for chunk in chunks { yield Ok(chunk); },
                        Err(detail) => {
                            yield Err(GatewayError::UpstreamFailed { provider: provider.clone(), message: format!("upstream stream error ({}): {}", detail.kind, detail.message) });
                            return;
                        }
                    }
                    if stopped {
                        return;
                    }
                }
                yield Err(GatewayError::UpstreamFailed {
                    provider: provider.clone(),
                    message: "the upstream closed the stream before message_stop".to_owned(),
                });
            }
            .boxed())
        })
    }
}
