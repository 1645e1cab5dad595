//! `POST /v1/chat/completions`: stream or not, through the model's route.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures_util::stream::StreamExt;

use super::admit::admit;
use super::cache;
use super::extract::OpenAiJson;
use super::sessions;
use super::sse;
use crate::control::Estimate;
use crate::error::GatewayError;
use crate::protocol::openai::ChatRequest;
use crate::provider::CallContext;
use crate::sessions::service::{price_of, record_stream};
use crate::state::AppState;
use crate::telemetry::call::count_prompt;
use crate::telemetry::call::{Operation, RequestParams};

/// Creates a chat completion.
#[tracing::instrument(level = "debug", skip_all, fields(model = %req.model, stream = req.is_stream()))]
pub async fn create_chat_completion(
    State(state): State<AppState>,
    ctx: CallContext,
    OpenAiJson(mut req): OpenAiJson<ChatRequest>,
) -> Result<Response, GatewayError> {
    if req.messages.is_empty() {
        return Err(GatewayError::invalid(
            "`messages` must contain at least one message",
            Some("messages"),
        ));
    }
    let rag = state.rag.hook(&mut req)?;
    // A session turn: the history goes in front of the new messages (before admission, so token
    // limits count it).
    let turn = sessions::join(&state, &ctx, &mut req).await?;
    let params = RequestParams {
        temperature: req.temperature,
        top_p: req.top_p,
        max_tokens: req.output_limit(),
    };
    ctx.call
        .begin(Operation::Chat, &req.model, req.is_stream(), params);
    let route = admit(&state, &ctx, &req.model, || Estimate {
        input_tokens: count_prompt(&req.model, &req.messages),
        max_output_tokens: req.output_limit().map(u64::from),
    })
    .await?;
    // The cache (deterministic calls outside sessions): a hit never reaches the upstream.
    let mut cache = cache::Plan::chat(&state, &ctx, route, &req, turn.is_some())?;
    if let Some(hit) = cache.lookup(&ctx.call).await {
        return Ok(cache::render_chat(&state, &hit, &req));
    }
    let call = std::sync::Arc::clone(&ctx.call);
    if !req.is_stream() {
        let reply = route.chat(req, ctx).await?;
        if let Some(rag) = rag {
            rag.answered(&state, &call, &reply);
        }
        cache.store_chat(route, &reply).await;
        if let Some(turn) = turn {
            let usage = reply.usage;
            let cost = price_of(route.price.as_ref(), usage.as_ref());
            let output = reply.choices.first().map(|c| c.message.clone());
            turn.complete(output, usage, cost, false).await;
        }
        return Ok(cache.mark(&call, Json(reply).into_response()));
    }
    let wants_usage = req.wants_usage();
    ctx.call.keep_prompt(&req.messages);
    let mut stream = route.chat_stream(req, ctx).await?;
    if let Some(rag) = rag {
        stream = rag.watch(&state, std::sync::Arc::clone(&call), stream);
    }
    let stream = match turn {
        Some(turn) => record_stream(turn, stream, route.price),
        None => cache.record_chat_stream(route, stream),
    };
    // Sluice always asks upstream for usage; the extra chunk goes to the client only if it asked.
    let stream = stream.filter(move |item| {
        let keep = wants_usage || !matches!(item, Ok(chunk) if chunk.is_usage_only());
        std::future::ready(keep)
    });
    Ok(cache.mark(&call, sse::openai(&state, stream)))
}
