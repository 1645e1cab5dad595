//! The provider layer: the only code that talks to upstreams.
//!
//! [`Provider`] is the one trait every upstream kind implements (OpenAI-compatible HTTP, Anthropic HTTP,
//! the in-process mock). [`Providers`] maps public model names to a [`Route`]: provider, upstream model
//! name and timeouts. Handlers call `Route` methods only; `Route` applies the phase timeouts
//! (first byte, idle between events, total) uniformly, so each provider implements only its wire format.
//!
//! Stream contract: a stream returned by [`Route::chat_stream`] has already produced its first event, so
//! failures before the first byte surface as `Err` (an HTTP error), and failures after it as an `Err` item
//! (an SSE error event). Dropping the stream drops the upstream request (client disconnect cancels it),
//! unless `on_client_disconnect = "finish"`, where a tracked task reads the upstream to its end.

pub mod anthropic;
mod compat;
pub mod http_client;
pub mod mock;
pub mod openai;
pub mod sse_decode;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::{Instant, Sleep};
use tokio_util::task::TaskTracker;

use crate::config::{Config, DisconnectPolicy, ProviderConfig, Timeouts};
use crate::error::GatewayError;
use crate::protocol::openai::{
    ChatChunk, ChatCompletion, ChatRequest, Completion, CompletionRequest, EmbeddingsRequest,
    EmbeddingsResponse,
};
use crate::telemetry::call::{Call, ObservedChunk, ObservedResponse};
use crate::usage::Price;

/// A stream of chat chunks from a provider.
pub type ChunkStream = BoxStream<'static, Result<ChatChunk, GatewayError>>;
/// A stream of text completion chunks from a provider.
pub type CompletionStream = BoxStream<'static, Result<Completion, GatewayError>>;

/// Per-call data a provider forwards upstream, and the call record the route fills in.
#[derive(Clone)]
pub struct CallContext {
    /// The request id, sent upstream as `x-request-id`.
    pub request_id: Option<HeaderValue>,
    /// The request's record (timings, usage, errors).
    pub call: Arc<Call>,
    /// Who is calling (set by the auth layer).
    pub caller: crate::control::Caller,
    /// The session named by `x-sluice-session-id`, if any.
    pub session_id: Option<String>,
    /// `Cache-Control` directives of the request.
    pub cache: crate::cache::Directives,
}

impl Default for CallContext {
    fn default() -> Self {
        Self {
            request_id: None,
            call: Call::detached(),
            caller: crate::control::Caller::Anonymous,
            session_id: None,
            cache: crate::cache::Directives::default(),
        }
    }
}

impl CallContext {
    /// Headers every upstream request carries: `x-request-id` and the W3C `traceparent` of the
    /// upstream-attempt span.
    pub fn upstream_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(id) = &self.request_id {
            headers.insert(HeaderName::from_static("x-request-id"), id.clone());
        }
        self.call.inject_trace_context(&mut headers);
        headers
    }
}

/// One upstream kind. Implementations translate to their wire format and back; nothing else.
pub trait Provider: Send + Sync + 'static {
    /// Provider name from the config (`[providers.NAME]`).
    fn name(&self) -> &str;

    /// `openai`, `anthropic` or `mock`.
    fn kind(&self) -> &'static str;

    /// A non-streaming chat completion.
    fn chat(
        &self,
        req: ChatRequest,
        ctx: CallContext,
    ) -> BoxFuture<'_, Result<ChatCompletion, GatewayError>>;

    /// A streaming chat completion; resolves once the upstream accepted the request. The stream always
    /// ends with a usage-only chunk when the upstream reports usage.
    fn chat_stream(
        &self,
        req: ChatRequest,
        ctx: CallContext,
    ) -> BoxFuture<'_, Result<ChunkStream, GatewayError>>;

    /// A legacy text completion. Default: translated to a chat call.
    fn completion(
        &self,
        req: CompletionRequest,
        ctx: CallContext,
    ) -> BoxFuture<'_, Result<Completion, GatewayError>> {
        Box::pin(async move {
            let chat = compat::completion_to_chat(req)?;
            Ok(compat::chat_to_completion(self.chat(chat, ctx).await?))
        })
    }

    /// A streaming legacy text completion. Default: translated to a chat stream.
    fn completion_stream(
        &self,
        req: CompletionRequest,
        ctx: CallContext,
    ) -> BoxFuture<'_, Result<CompletionStream, GatewayError>> {
        Box::pin(async move {
            let chat = compat::completion_to_chat(req)?;
            let stream = self.chat_stream(chat, ctx).await?;
            Ok(stream.map(|r| r.map(compat::chunk_to_completion)).boxed())
        })
    }

    /// Embeddings. Default: not supported by this provider.
    fn embeddings(
        &self,
        req: EmbeddingsRequest,
        _ctx: CallContext,
    ) -> BoxFuture<'_, Result<EmbeddingsResponse, GatewayError>> {
        let kind = self.kind();
        Box::pin(async move {
            Err(GatewayError::Unsupported(format!(
                "model `{}` is served by a `{kind}` provider, which has no embeddings API",
                req.model
            )))
        })
    }
}

/// One public model: where it goes and how long each phase may take.
#[derive(Clone)]
pub struct Route {
    /// Public model name.
    pub model: Arc<str>,
    /// Model name sent upstream.
    pub upstream_model: Arc<str>,
    /// The provider.
    pub provider: Arc<dyn Provider>,
    /// Phase timeouts.
    pub timeouts: Timeouts,
    /// Price of the model, if known (config override, or the built-in table).
    pub price: Option<Price>,
    /// The model's cache switches (`[models.X] cache`).
    pub cache: crate::cache::CachePolicy,
    disconnect: DisconnectPolicy,
    tasks: TaskTracker,
}

impl Route {
    /// Non-streaming chat within the total timeout.
    pub async fn chat(
        &self,
        mut req: ChatRequest,
        ctx: CallContext,
    ) -> Result<ChatCompletion, GatewayError> {
        (*self.upstream_model).clone_into(&mut req.model);
        let call = self.attempt(&ctx);
        self.whole(call, self.provider.chat(req, ctx)).await
    }

    /// Streaming chat; see the module docs for the first-event contract.
    pub async fn chat_stream(
        &self,
        mut req: ChatRequest,
        ctx: CallContext,
    ) -> Result<ChunkStream, GatewayError> {
        (*self.upstream_model).clone_into(&mut req.model);
        let call = self.attempt(&ctx);
        self.open(self.provider.chat_stream(req, ctx), call).await
    }

    /// Non-streaming text completion within the total timeout.
    pub async fn completion(
        &self,
        mut req: CompletionRequest,
        ctx: CallContext,
    ) -> Result<Completion, GatewayError> {
        (*self.upstream_model).clone_into(&mut req.model);
        let call = self.attempt(&ctx);
        self.whole(call, self.provider.completion(req, ctx)).await
    }

    /// Streaming text completion.
    pub async fn completion_stream(
        &self,
        mut req: CompletionRequest,
        ctx: CallContext,
    ) -> Result<CompletionStream, GatewayError> {
        (*self.upstream_model).clone_into(&mut req.model);
        let call = self.attempt(&ctx);
        self.open(self.provider.completion_stream(req, ctx), call)
            .await
    }

    /// Embeddings within the total timeout.
    pub async fn embeddings(
        &self,
        mut req: EmbeddingsRequest,
        ctx: CallContext,
    ) -> Result<EmbeddingsResponse, GatewayError> {
        (*self.upstream_model).clone_into(&mut req.model);
        let call = self.attempt(&ctx);
        self.whole(call, self.provider.embeddings(req, ctx)).await
    }

    /// A non-streaming call within the total timeout, its response recorded on the call.
    async fn whole<T: ObservedResponse>(
        &self,
        call: Arc<Call>,
        upstream: impl Future<Output = Result<T, GatewayError>>,
    ) -> Result<T, GatewayError> {
        let result = self.within_total(upstream).await;
        if let Ok(response) = &result {
            call.response(response);
        }
        result
    }

    /// Records the upstream attempt on the call; returns the call for the outcome.
    fn attempt(&self, ctx: &CallContext) -> Arc<Call> {
        ctx.call.upstream_attempt(
            &self.model,
            self.provider.name(),
            &self.upstream_model,
            self.price,
        );
        Arc::clone(&ctx.call)
    }

    fn timeout_error(&self, phase: &'static str) -> GatewayError {
        GatewayError::UpstreamTimeout {
            provider: self.provider.name().to_owned(),
            phase,
        }
    }

    async fn within_total<T>(
        &self,
        call: impl Future<Output = Result<T, GatewayError>>,
    ) -> Result<T, GatewayError> {
        tokio::time::timeout(self.timeouts.total, call)
            .await
            .unwrap_or_else(|_| Err(self.timeout_error("total")))
    }

    /// Opens a stream: waits (within the first-byte timeout) for the first event, then guards the rest
    /// with the idle and total timeouts.
    async fn open<T: ObservedChunk + Send + 'static>(
        &self,
        open: impl Future<Output = Result<BoxStream<'static, Result<T, GatewayError>>, GatewayError>>,
        call: Arc<Call>,
    ) -> Result<BoxStream<'static, Result<T, GatewayError>>, GatewayError> {
        let started = Instant::now();
        let first = tokio::time::timeout(self.timeouts.first_byte, async {
            let mut stream = open.await?;
            let first = stream.next().await;
            Ok::<_, GatewayError>((first, stream))
        })
        .await
        .unwrap_or_else(|_| Err(self.timeout_error("first byte")))?;
        let (first, rest) = match first {
            (Some(Err(e)), _) => return Err(e),
            (None, _) => {
                return Err(GatewayError::UpstreamFailed {
                    provider: self.provider.name().to_owned(),
                    message: "the upstream ended the stream without sending anything".to_owned(),
                });
            }
            (Some(Ok(first)), rest) => (first, rest),
        };
        call.chunk(&first);
        let ctx_call = Arc::clone(&call);
        let guarded = Guarded {
            inner: rest,
            idle: self.timeouts.idle,
            idle_timer: Box::pin(tokio::time::sleep(self.timeouts.idle)),
            deadline: Box::pin(tokio::time::sleep_until(started + self.timeouts.total)),
            provider: Arc::from(self.provider.name()),
            done: false,
            call,
        };
        let stream = futures_util::stream::once(async move { Ok(first) }).chain(guarded);
        Ok(match self.disconnect {
            DisconnectPolicy::Cancel => stream.boxed(),
            DisconnectPolicy::Finish => {
                ctx_call.finish_after_upstream();
                detach(stream.boxed(), &self.tasks)
            }
        })
    }
}

/// `on_client_disconnect = "finish"`: a tracked task drives the upstream stream into a small bounded
/// channel; if the client goes away the task keeps reading (and discarding) until the upstream ends.
fn detach<T: Send + 'static>(
    mut upstream: BoxStream<'static, Result<T, GatewayError>>,
    tasks: &TaskTracker,
) -> BoxStream<'static, Result<T, GatewayError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(32);
    tasks.spawn(async move {
        let mut client_gone = false;
        while let Some(item) = upstream.next().await {
            if !client_gone && tx.send(item).await.is_err() {
                client_gone = true;
            }
        }
    });
    tokio_stream_from(rx).boxed()
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

pin_project_lite::pin_project! {
    /// Applies the idle (between events) and total timeouts to an upstream stream, and records every
    /// chunk, error and the end on the call. A timeout becomes a final `Err` item, then the stream ends.
    struct Guarded<T> {
        inner: BoxStream<'static, Result<T, GatewayError>>,
        idle: Duration,
        idle_timer: Pin<Box<Sleep>>,
        deadline: Pin<Box<Sleep>>,
        provider: Arc<str>,
        done: bool,
        call: Arc<Call>,
    }
}

impl<T: ObservedChunk> Stream for Guarded<T> {
    type Item = Result<T, GatewayError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.as_mut().poll_guarded(cx);
        if let Poll::Ready(item) = &polled {
            let call = &self.call;
            match item {
                Some(Ok(chunk)) => call.chunk(chunk),
                Some(Err(error)) => call.fail(error),
                None => call.upstream_done(),
            }
        }
        polled
    }
}

impl<T> Guarded<T> {
    fn poll_guarded(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<T, GatewayError>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        // The deadline is checked first so that an upstream that never pauses still ends on time.
        if this.deadline.as_mut().poll(cx).is_ready() {
            *this.done = true;
            return Poll::Ready(Some(Err(GatewayError::UpstreamTimeout {
                provider: this.provider.to_string(),
                phase: "total",
            })));
        }
        if let Poll::Ready(item) = this.inner.poll_next_unpin(cx) {
            if item.is_none() {
                *this.done = true;
            } else {
                let next = Instant::now() + *this.idle;
                this.idle_timer.as_mut().reset(next);
            }
            return Poll::Ready(item);
        }
        if this.idle_timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        *this.done = true;
        Poll::Ready(Some(Err(GatewayError::UpstreamTimeout {
            provider: this.provider.to_string(),
            phase: "idle",
        })))
    }
}

/// What `/v1/models` lists about a model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// Public name.
    pub id: String,
    /// Provider name.
    pub owned_by: String,
}

/// All configured routes, by public model name. Built once at start-up.
pub struct Providers {
    routes: BTreeMap<String, Route>,
}

impl Providers {
    /// Builds one provider (one pooled HTTP client) per `[providers.*]` entry and a route per model.
    pub fn from_config(config: &Config, tasks: &TaskTracker) -> Result<Self, crate::InitError> {
        let prices = crate::usage::PriceTable::builtin();
        let mut built: BTreeMap<&str, Arc<dyn Provider>> = BTreeMap::new();
        for (name, p) in &config.providers {
            let provider: Arc<dyn Provider> = match p {
                ProviderConfig::Openai(h) => Arc::new(openai::OpenAi::new(name, h)?),
                ProviderConfig::Anthropic(h) => Arc::new(anthropic::Anthropic::new(name, h)?),
                ProviderConfig::Mock(m) => Arc::new(mock::Mock::new(name, m.clone())),
            };
            built.insert(name, provider);
        }
        let mut routes = BTreeMap::new();
        for (model, m) in &config.models {
            let provider = built.get(m.provider.as_str()).cloned().ok_or_else(|| {
                crate::InitError::Config(format!("models.{model}: unknown provider {}", m.provider))
            })?;
            let timeouts = config
                .providers
                .get(&m.provider)
                .map(ProviderConfig::timeouts)
                .unwrap_or_default();
            let upstream = m.upstream.as_deref().unwrap_or(model);
            let price =
                match &m.price {
                    Some(p) => Some(p.clone().validate(model).map_err(|e| {
                        crate::InitError::Config(format!("models.{model}.price: {e}"))
                    })?),
                    None => prices
                        .lookup(upstream)
                        .or_else(|| prices.lookup(model))
                        .copied(),
                };
            if price.is_none()
                && !matches!(
                    config.providers.get(&m.provider),
                    Some(ProviderConfig::Mock(_))
                )
            {
                tracing::warn!(
                    model,
                    upstream,
                    "no price known for this model: its cost is not tracked (set models.{model}.price)"
                );
            }
            routes.insert(
                model.clone(),
                Route {
                    model: Arc::from(model.as_str()),
                    upstream_model: Arc::from(m.upstream.as_deref().unwrap_or(model)),
                    provider,
                    timeouts,
                    price,
                    cache: m.cache,
                    disconnect: config.server.on_client_disconnect,
                    tasks: tasks.clone(),
                },
            );
        }
        Ok(Self { routes })
    }

    /// The route of a public model name, or 404 `model_not_found`.
    pub fn route(&self, model: &str) -> Result<&Route, GatewayError> {
        self.routes
            .get(model)
            .ok_or_else(|| GatewayError::ModelNotFound(model.to_owned()))
    }

    /// Every public model, sorted by name.
    pub fn models(&self) -> impl Iterator<Item = ModelInfo> + '_ {
        self.routes.values().map(|r| ModelInfo {
            id: r.model.to_string(),
            owned_by: r.provider.name().to_owned(),
        })
    }
}
