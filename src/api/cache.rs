//! The cache step of `POST /v1/chat/completions`, between admission and the route: a deterministic
//! request (see `cache::key::cacheable`) of a call outside a session is answered from the exact tier
//! when it can be (`x-sluice-cache: hit`), else its reply is stored when it completes (`miss`); a
//! request that cannot be cached, or carries `Cache-Control: no-cache`, is a `bypass` (`no-store` keeps
//! the reply out of the cache). A hit costs nothing upstream: the call records no usage.

use axum::Json;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use http::HeaderValue;

use crate::cache::key::{CacheKey, cacheable, chat_key};
use crate::cache::{CACHE_HEADER, Directives};
use crate::protocol::openai::{ChatCompletion, ChatRequest};
use crate::provider::{CallContext, ChunkStream};
use crate::state::AppState;
use crate::telemetry::call::Call;

/// Most chunks of a stream kept for the cache; a longer stream is not stored.
const MAX_CACHED_CHUNKS: usize = 20_000;

/// What the cache does for one call.
pub struct Plan {
    /// The key, when the reply may be read from or stored in the cache.
    key: Option<CacheKey>,
    directives: Directives,
    enabled: bool,
}

impl Plan {
    /// The plan for `req`; `in_session` calls are never cached (their history is the session's).
    pub fn new(state: &AppState, ctx: &CallContext, req: &ChatRequest, in_session: bool) -> Self {
        let enabled = state.cache.is_some();
        let key = (enabled && !in_session && cacheable(req, false).is_ok())
            .then(|| chat_key(ctx.caller.key_id().unwrap_or("anonymous"), req));
        Self {
            key,
            directives: ctx.cache,
            enabled,
        }
    }

    /// The cached reply, unless the request may not be answered from the cache.
    pub async fn lookup(
        &self,
        state: &AppState,
        ctx: &CallContext,
        req: &ChatRequest,
    ) -> Option<Response> {
        let (cache, key) = (state.cache.as_ref()?, self.key.as_ref()?);
        if self.directives.no_cache {
            return None;
        }
        let hit = cache.get(key).await?;
        let response = if req.is_stream() {
            let wants_usage = req.wants_usage();
            let chunks = hit
                .stream()
                .into_iter()
                .filter(move |c| wants_usage || !c.is_usage_only())
                .map(Ok::<_, crate::error::GatewayError>);
            super::sse::openai(state, futures_util::stream::iter(chunks))
        } else {
            Json(hit.completion.clone()).into_response()
        };
        Self::outcome(state, &ctx.call, "hit");
        Some(with_header(response, "hit"))
    }

    /// Counts the outcome and records it on the call (access log, request log).
    fn outcome(state: &AppState, call: &Call, result: &'static str) {
        call.cache_outcome(result);
        if let Some(cache) = state.cache.as_ref() {
            cache
                .metrics
                .lookups
                .get_or_create(&crate::cache::LookupLabels {
                    tier: "exact",
                    result,
                })
                .inc();
        }
    }

    fn storing(&self) -> Option<CacheKey> {
        self.key.filter(|_| !self.directives.no_store)
    }

    /// Stores a whole reply when every choice finished.
    pub async fn store_completion(&self, state: &AppState, reply: &ChatCompletion) {
        if let (Some(cache), Some(key)) = (state.cache.as_ref(), self.storing())
            && !reply.choices.is_empty()
            && reply.choices.iter().all(|c| c.finish_reason.is_some())
        {
            cache.put_completion(key, reply.clone()).await;
        }
    }

    /// Keeps the chunks of a stream as they pass and stores them when it ends normally (an error or a
    /// client that leaves stores nothing).
    pub fn record_stream(&self, state: &AppState, mut inner: ChunkStream) -> ChunkStream {
        let Some(key) = self.storing() else {
            return inner;
        };
        let state = state.clone();
        async_stream::stream! {
            let mut chunks = Vec::new();
            let mut keep = true;
            let mut finished = false;
            while let Some(item) = inner.next().await {
                match &item {
                    Ok(chunk) => {
                        finished |= chunk.choices.iter().any(|c| c.finish_reason.is_some());
                        if keep && chunks.len() < MAX_CACHED_CHUNKS {
                            chunks.push(chunk.clone());
                        } else {
                            keep = false;
                        }
                    }
                    Err(_) => keep = false,
                }
                let failed = item.is_err();
                yield item;
                if failed {
                    break;
                }
            }
            if keep && finished && let Some(cache) = state.cache.as_ref() {
                cache.put_stream(key, chunks).await;
            }
        }
        .boxed()
    }

    /// Marks a response that did not come from the cache, and counts it (nothing when the cache is
    /// off).
    pub fn mark(&self, state: &AppState, call: &Call, response: Response) -> Response {
        if !self.enabled {
            return response;
        }
        let status = if self.key.is_some() && !self.directives.no_cache {
            "miss"
        } else {
            "bypass"
        };
        Self::outcome(state, call, status);
        with_header(response, status)
    }
}

fn with_header(mut response: Response, status: &'static str) -> Response {
    response
        .headers_mut()
        .insert(CACHE_HEADER, HeaderValue::from_static(status));
    response
}
