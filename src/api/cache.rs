//! The cache step of chat and text completions, between admission and the route.
//!
//! A request that may be cached (deterministic sampling or `x-sluice-cache-force`, one choice, not a
//! session turn, the tier on for its model and key) is looked up in the exact tier, then — chat only,
//! when the semantic tier is on for it — in the semantic tier. A hit never reaches the upstream
//! (`x-sluice-cache: hit` or `semantic-hit` with `x-sluice-cache-similarity`): the call records no
//! usage and no cost, and the cost of the original call is counted in `sluice_cache_saved_usd_total`.
//! Otherwise the reply is stored when it completes (`miss`); errors, cut streams and unfinished
//! choices are never stored. `Cache-Control: no-cache` skips the lookup (`bypass`), `no-store` the
//! storing; `x-sluice-cache-ttl` sets how long this reply is kept (at most `cache.max_ttl`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use http::HeaderValue;

use crate::cache::config::CachePolicy;
use crate::cache::key::{
    CacheKey, cacheable, chat_key, request_key, semantic_scope, semantic_text,
};
use crate::cache::reply::{Body, CachedReply};
use crate::cache::semantic::tier::Outcome;
use crate::cache::{CACHE_HEADER, Cache, LookupLabels, NewEntry, SIMILARITY_HEADER};
use crate::error::GatewayError;
use crate::protocol::openai::{ChatCompletion, ChatRequest, Completion, CompletionRequest};
use crate::provider::{CallContext, ChunkStream, CompletionStream, Route};
use crate::sessions::service::price_of;
use crate::state::AppState;
use crate::telemetry::call::Call;

/// Most chunks of a stream kept for the cache; a longer stream is not stored.
const MAX_CACHED_CHUNKS: usize = 20_000;

/// A reply found in the cache.
pub struct Hit {
    /// The stored reply.
    pub reply: Arc<CachedReply>,
    /// The similarity of the two prompts, on a semantic hit.
    pub similarity: Option<f32>,
}

/// What the semantic tier looks up for a request.
struct SemanticQuery {
    scope: CacheKey,
    text: String,
}

/// What the cache does for one call.
pub struct Plan {
    cache: Option<Arc<Cache>>,
    /// The exact key, when the reply may be read from or stored in the cache.
    key: Option<CacheKey>,
    /// Whether the exact tier is looked up (it can be off while the semantic tier is on).
    exact: bool,
    semantic: Option<SemanticQuery>,
    /// The semantic entry to store with the reply (after a semantic miss).
    entry: Option<NewEntry>,
    no_cache: bool,
    no_store: bool,
    tenant: String,
    model: Arc<str>,
    ttl: Duration,
}

impl Plan {
    /// The plan without a key, and whether the semantic tier is on for this model and key.
    fn base(
        state: &AppState,
        ctx: &CallContext,
        route: &Route,
    ) -> Result<(Self, bool), GatewayError> {
        if let Some(problem) = &ctx.cache.invalid {
            return Err(GatewayError::invalid(problem.clone(), None));
        }
        let cache = state.cache.clone();
        let key_policy = match &ctx.caller {
            crate::control::Caller::Key(k) => k.cache.unwrap_or_default(),
            crate::control::Caller::Anonymous => CachePolicy::default(),
        };
        let ttl = ctx
            .cache
            .ttl
            .or(key_policy.ttl)
            .or(route.cache.ttl)
            .zip(cache.as_ref())
            .map_or_else(
                || cache.as_ref().map_or(Duration::ZERO, |c| c.config.ttl),
                |(ttl, c)| ttl.min(c.config.max_ttl),
            );
        let exact = CachePolicy::resolve(route.cache.exact, key_policy.exact, true);
        let semantic_on = cache
            .as_ref()
            .and_then(|c| c.semantic.as_ref())
            .is_some_and(|s| {
                CachePolicy::resolve(route.cache.semantic, key_policy.semantic, s.config.enabled)
            });
        let plan = Self {
            exact,
            semantic: None,
            key: None,
            entry: None,
            no_cache: ctx.cache.no_cache,
            no_store: ctx.cache.no_store,
            tenant: ctx.caller.key_id().unwrap_or("anonymous").to_owned(),
            model: Arc::clone(&route.model),
            ttl,
            // Kept only when a tier is on for this model and key.
            cache: cache.filter(|_| exact || semantic_on),
        };
        Ok((plan, semantic_on))
    }

    /// The plan of a chat request (`/v1/chat/completions`, `/v1/messages`); session turns are never
    /// cached (their history is the session's).
    pub fn chat(
        state: &AppState,
        ctx: &CallContext,
        route: &Route,
        req: &ChatRequest,
        in_session: bool,
    ) -> Result<Self, GatewayError> {
        let (mut plan, semantic_on) = Self::base(state, ctx, route)?;
        let Some(cache) = plan.cache.clone() else {
            return Ok(plan);
        };
        if in_session || cacheable(req, ctx.cache.force).is_err() {
            return Ok(plan);
        }
        plan.key = Some(chat_key(&plan.tenant, req));
        plan.semantic = cache
            .semantic
            .as_ref()
            .filter(|_| semantic_on)
            .and_then(|tier| {
                let text = semantic_text(
                    req,
                    tier.config.max_turns,
                    tier.config.max_query_chars,
                    ctx.cache.force,
                )
                .ok()?;
                Some(SemanticQuery {
                    scope: semantic_scope(&plan.tenant, tier.embedder_id(), req),
                    text,
                })
            });
        Ok(plan)
    }

    /// The plan of a text completion (`/v1/completions`): exact tier only.
    pub fn completion(
        state: &AppState,
        ctx: &CallContext,
        route: &Route,
        req: &CompletionRequest,
    ) -> Result<Self, GatewayError> {
        let (mut plan, _) = Self::base(state, ctx, route)?;
        let deterministic = req
            .extra
            .get("temperature")
            .and_then(serde_json::Value::as_f64)
            == Some(0.0);
        let one = |field: &str| {
            req.extra
                .get(field)
                .and_then(serde_json::Value::as_u64)
                .is_none_or(|n| n <= 1)
        };
        if plan.exact && (deterministic || ctx.cache.force) && one("n") && one("best_of") {
            plan.key = Some(request_key(&plan.tenant, "completion", req));
        } else {
            plan.cache = None;
        }
        Ok(plan)
    }

    /// The cached reply, unless the request may not be answered from the cache. On a hit, the call
    /// is marked as served from the cache.
    pub async fn lookup(&mut self, call: &Call) -> Option<Hit> {
        let cache = self.cache.clone()?;
        let key = self.key?;
        if self.no_cache {
            // A regenerate right after a semantic hit teaches that entry a higher threshold.
            if let (Some(q), Some(tier)) = (&self.semantic, &cache.semantic)
                && tier.regenerated(&q.scope.0, &q.text)
            {
                cache.metrics.learned.inc();
            }
            return None;
        }
        if self.exact {
            let started = Instant::now();
            let found = cache.get(&self.tenant, &self.model, &key).await;
            cache.observe_lookup("exact", started);
            if let Some(reply) = found {
                return Some(self.hit(&cache, call, reply, None));
            }
        }
        let (Some(query), Some(tier)) = (&self.semantic, &cache.semantic) else {
            return None;
        };
        let started = Instant::now();
        let lookup = tier.lookup(&query.scope.0, &query.text).await;
        cache.observe_lookup("semantic", started);
        let lookup = match lookup {
            Ok(lookup) => lookup,
            Err(e) => {
                cache
                    .metrics
                    .errors
                    .get_or_create(&crate::cache::OpLabels { op: "embed" })
                    .inc();
                tracing::warn!(error = %e, "semantic cache: could not embed the prompt");
                count(&cache, "semantic", "miss");
                return None;
            }
        };
        let found = match lookup.outcome {
            Outcome::Hit {
                key, similarity, ..
            } => cache
                .get(&self.tenant, &self.model, &key)
                .await
                .map(|reply| (reply, similarity)),
            Outcome::Miss(reason) => {
                if reason != "no_candidate" {
                    cache
                        .metrics
                        .rejections
                        .get_or_create(&crate::cache::ReasonLabels { reason })
                        .inc();
                }
                None
            }
        };
        if let Some((reply, similarity)) = found {
            return Some(self.hit(&cache, call, reply, Some(similarity)));
        }
        count(&cache, "semantic", "miss");
        self.entry = Some(NewEntry {
            scope: query.scope.0,
            text: query.text.clone(),
            vector: lookup.vector,
        });
        None
    }

    fn hit(
        &self,
        cache: &Cache,
        call: &Call,
        reply: Arc<CachedReply>,
        similarity: Option<f32>,
    ) -> Hit {
        let (tier, outcome) = if similarity.is_some() {
            ("semantic", "semantic-hit")
        } else {
            ("exact", "hit")
        };
        count(cache, tier, "hit");
        call.served_from_cache(&self.model, outcome);
        if let Some(cost) = reply.cost_usd.and_then(|c| f64::try_from(c).ok()) {
            cache
                .metrics
                .saved_usd
                .get_or_create(&crate::cache::ModelLabels {
                    model: crate::telemetry::metrics::Label(Arc::clone(&self.model)),
                })
                .inc_by(cost);
        }
        Hit { reply, similarity }
    }

    fn storing(&self) -> Option<(Arc<Cache>, CacheKey)> {
        if self.no_store {
            return None;
        }
        Some((self.cache.clone()?, self.key?))
    }

    fn reply(
        &self,
        body: Body,
        usage: Option<&crate::protocol::openai::Usage>,
        route: &Route,
    ) -> CachedReply {
        CachedReply::new(
            body,
            &self.model,
            &self.tenant,
            self.ttl,
            price_of(route.price.as_ref(), usage),
        )
    }

    /// Stores a whole chat reply when every choice finished.
    pub async fn store_chat(&mut self, route: &Route, reply: &ChatCompletion) {
        let Some((cache, key)) = self.storing() else {
            return;
        };
        if reply.choices.is_empty() || reply.choices.iter().any(|c| c.finish_reason.is_none()) {
            return;
        }
        let stored = self.reply(
            Body::Chat {
                completion: reply.clone(),
                chunks: None,
            },
            reply.usage.as_ref(),
            route,
        );
        cache.put(key, stored, self.entry.take()).await;
    }

    /// Keeps the chunks of a chat stream as they pass and stores them when it ends normally (an
    /// error or a client that leaves stores nothing).
    pub fn record_chat_stream(&mut self, route: &Route, inner: ChunkStream) -> ChunkStream {
        let Some((cache, key)) = self.storing() else {
            return inner;
        };
        let entry = self.entry.take();
        let (model, tenant, ttl, price) = (
            Arc::clone(&self.model),
            self.tenant.clone(),
            self.ttl,
            route.price,
        );
        record(
            inner,
            move |chunks: Vec<crate::protocol::openai::ChatChunk>| async move {
                let finished = chunks
                    .iter()
                    .any(|c| c.choices.iter().any(|c| c.finish_reason.is_some()));
                if !finished {
                    return;
                }
                let usage = chunks.iter().rev().find_map(|c| c.usage);
                let reply = CachedReply::new(
                    CachedReply::chat_stream(chunks),
                    &model,
                    &tenant,
                    ttl,
                    price_of(price.as_ref(), usage.as_ref()),
                );
                cache.put(key, reply, entry).await;
            },
        )
    }

    /// Stores a whole text completion when every choice finished.
    pub async fn store_text(&mut self, route: &Route, reply: &Completion) {
        let Some((cache, key)) = self.storing() else {
            return;
        };
        if reply.choices.is_empty() || reply.choices.iter().any(|c| c.finish_reason.is_none()) {
            return;
        }
        let stored = self.reply(
            Body::Text {
                chunks: vec![reply.clone()],
                streamed: false,
            },
            reply.usage.as_ref(),
            route,
        );
        cache.put(key, stored, None).await;
    }

    /// Keeps the chunks of a text completion stream and stores them when it ends normally.
    pub fn record_text_stream(
        &mut self,
        route: &Route,
        inner: CompletionStream,
    ) -> CompletionStream {
        let Some((cache, key)) = self.storing() else {
            return inner;
        };
        let (model, tenant, ttl, price) = (
            Arc::clone(&self.model),
            self.tenant.clone(),
            self.ttl,
            route.price,
        );
        record(inner, move |chunks: Vec<Completion>| async move {
            let finished = chunks
                .iter()
                .any(|c| c.choices.iter().any(|c| c.finish_reason.is_some()));
            if !finished {
                return;
            }
            let usage = chunks.iter().rev().find_map(|c| c.usage);
            let reply = CachedReply::new(
                Body::Text {
                    chunks,
                    streamed: true,
                },
                &model,
                &tenant,
                ttl,
                price_of(price.as_ref(), usage.as_ref()),
            );
            cache.put(key, reply, None).await;
        })
    }

    /// Marks a response that did not come from the cache, and counts it (nothing when no tier is on
    /// for the call).
    pub fn mark(&self, call: &Call, response: Response) -> Response {
        let Some(cache) = &self.cache else {
            return response;
        };
        let status = if self.key.is_some() && !self.no_cache {
            "miss"
        } else {
            "bypass"
        };
        call.cache_outcome(status);
        count(cache, "exact", status);
        with_header(response, status)
    }
}

/// Passes a stream through, keeping its items; when it ends without an error, `done` gets them.
fn record<T, F, Fut>(
    mut inner: futures_util::stream::BoxStream<'static, Result<T, GatewayError>>,
    done: F,
) -> futures_util::stream::BoxStream<'static, Result<T, GatewayError>>
where
    T: Clone + Send + 'static,
    F: FnOnce(Vec<T>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    async_stream::stream! {
        let mut items = Vec::new();
        let mut keep = true;
        while let Some(item) = inner.next().await {
            match &item {
                Ok(chunk) if keep && items.len() < MAX_CACHED_CHUNKS => items.push(chunk.clone()),
                _ => keep = false,
            }
            let failed = item.is_err();
            yield item;
            if failed {
                break;
            }
        }
        if keep {
            done(items).await;
        }
    }
    .boxed()
}

fn count(cache: &Cache, tier: &'static str, result: &'static str) {
    cache
        .metrics
        .lookups
        .get_or_create(&LookupLabels { tier, result })
        .inc();
}

/// The response of a chat hit in OpenAI's shape: the completion, or its chunks as SSE.
pub fn render_chat(state: &AppState, hit: &Hit, req: &ChatRequest) -> Response {
    let response = if req.is_stream() {
        let wants_usage = req.wants_usage();
        let chunks = hit
            .reply
            .chat_chunks()
            .unwrap_or_default()
            .into_iter()
            .filter(move |c| wants_usage || !c.is_usage_only())
            .map(Ok::<_, GatewayError>);
        super::sse::openai(state, futures_util::stream::iter(chunks))
    } else {
        // Serialized from the cached entry itself: no copy of the reply per hit.
        match hit.reply.chat_completion() {
            Some(completion) => Json(completion).into_response(),
            None => Json(ChatCompletion::default()).into_response(),
        }
    };
    hit_headers(hit, response)
}

/// The response of a text completion hit.
pub fn render_text(state: &AppState, hit: &Hit, req: &CompletionRequest) -> Response {
    let response = if req.is_stream() {
        let wants_usage = req.wants_usage();
        let chunks = hit
            .reply
            .text_chunks()
            .unwrap_or_default()
            .into_iter()
            .filter(move |c| wants_usage || !c.is_usage_only())
            .map(Ok::<_, GatewayError>);
        super::sse::openai(state, futures_util::stream::iter(chunks))
    } else {
        Json(hit.reply.text_completion().unwrap_or_default()).into_response()
    };
    hit_headers(hit, response)
}

/// `x-sluice-cache` (and the similarity) on a hit's response.
pub fn hit_headers(hit: &Hit, response: Response) -> Response {
    match hit.similarity {
        Some(similarity) => {
            let mut response = with_header(response, "semantic-hit");
            if let Ok(v) = HeaderValue::from_str(&format!("{similarity:.4}")) {
                response.headers_mut().insert(SIMILARITY_HEADER, v);
            }
            response
        }
        None => with_header(response, "hit"),
    }
}

fn with_header(mut response: Response, status: &'static str) -> Response {
    response
        .headers_mut()
        .insert(CACHE_HEADER, HeaderValue::from_static(status));
    response
}
