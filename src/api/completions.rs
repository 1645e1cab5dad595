//! `POST /v1/completions` (legacy text completions).

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures_util::stream::StreamExt;

use super::admit::admit;
use super::extract::OpenAiJson;
use super::sse;
use crate::control::Estimate;
use crate::error::GatewayError;
use crate::protocol::openai::{ChatMessage, CompletionRequest};
use crate::provider::CallContext;
use crate::state::AppState;
use crate::telemetry::call::count_prompt;
use crate::telemetry::call::{Operation, RequestParams};

/// Creates a text completion.
#[tracing::instrument(level = "debug", skip_all, fields(model = %req.model, stream = req.is_stream()))]
pub async fn create_completion(
    State(state): State<AppState>,
    ctx: CallContext,
    OpenAiJson(req): OpenAiJson<CompletionRequest>,
) -> Result<Response, GatewayError> {
    if req.prompt.is_null() {
        return Err(GatewayError::invalid(
            "`prompt` is required",
            Some("prompt"),
        ));
    }
    let params = RequestParams {
        max_tokens: req.max_tokens,
        ..RequestParams::default()
    };
    ctx.call.begin(
        Operation::TextCompletion,
        &req.model,
        req.is_stream(),
        params,
    );
    let route = admit(&state, &ctx, &req.model, || Estimate {
        input_tokens: req.prompt_text().map_or(0, |p| {
            count_prompt(&req.model, &[ChatMessage::text("user", p)])
        }),
        max_output_tokens: req.max_tokens.map(u64::from),
    })
    .await?;
    let mut cache = super::cache::Plan::completion(&state, &ctx, route, &req)?;
    if let Some(hit) = cache.lookup(&ctx.call).await {
        return Ok(super::cache::render_text(&state, &hit, &req));
    }
    let call = std::sync::Arc::clone(&ctx.call);
    if !req.is_stream() {
        let reply = route.completion(req, ctx).await?;
        cache.store_text(route, &reply).await;
        return Ok(cache.mark(&call, Json(reply).into_response()));
    }
    let wants_usage = req.wants_usage();
    if let Some(prompt) = req.prompt_text() {
        ctx.call.keep_prompt(&[ChatMessage::text("user", prompt)]);
    }
    let stream = route.completion_stream(req, ctx).await?;
    let stream = cache.record_text_stream(route, stream);
    let stream = stream.filter(move |item| {
        let keep = wants_usage || !matches!(item, Ok(chunk) if chunk.is_usage_only());
        std::future::ready(keep)
    });
    Ok(cache.mark(&call, sse::openai(&state, stream)))
}
