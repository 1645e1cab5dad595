//! `POST /v1/messages`: the Anthropic Messages API in front of any provider. The request is translated to
//! the canonical chat request, the response (or chunk stream) back into Anthropic's shape; errors on this
//! route are rendered in Anthropic's error shape by [`anthropic_error_shape`].

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures_util::stream::StreamExt;

use super::admit::admit;
use super::extract::OpenAiJson;
use super::sessions;
use super::sse;
use crate::control::Estimate;
use crate::error::GatewayError;
use crate::protocol::anthropic::MessagesRequest;
use crate::protocol::translate::{self, ChatToMessagesStream};
use crate::provider::CallContext;
use crate::sessions::service::{price_of, record_stream};
use crate::state::AppState;
use crate::telemetry::call::count_prompt;
use crate::telemetry::call::{Operation, RequestParams};

/// Creates a message.
#[tracing::instrument(level = "debug", skip_all, fields(model = %req.model, stream = req.stream.unwrap_or(false)))]
pub async fn create_message(
    State(state): State<AppState>,
    ctx: CallContext,
    OpenAiJson(mut req): OpenAiJson<MessagesRequest>,
) -> Result<Response, GatewayError> {
    if req.messages.is_empty() {
        return Err(GatewayError::invalid(
            "messages: at least one message is required",
            Some("messages"),
        ));
    }
    let stream = req.stream.unwrap_or(false);
    let params = RequestParams {
        temperature: req.temperature,
        top_p: req.top_p,
        max_tokens: Some(req.max_tokens),
    };
    let body_session = req.extra.remove("session_id");
    let mut chat = translate::messages_to_chat_request(req)?;
    if let Some(id) = body_session {
        chat.extra.insert("session_id".to_owned(), id);
    }
    // A session turn, as on /v1/chat/completions: stored in OpenAI's message shape.
    let turn = sessions::join(&state, &ctx, &mut chat).await?;
    ctx.call.begin(Operation::Chat, &chat.model, stream, params);
    let route = admit(&state, &ctx, &chat.model, || Estimate {
        input_tokens: count_prompt(&chat.model, &chat.messages),
        max_output_tokens: chat.output_limit().map(u64::from),
    })
    .await?;
    let mut cache = super::cache::Plan::chat(&state, &ctx, route, &chat, turn.is_some())?;
    if let Some(hit) = cache.lookup(&ctx.call).await {
        return Ok(render_hit(&state, &hit, &route.model, stream));
    }
    let call = std::sync::Arc::clone(&ctx.call);
    if !stream {
        let reply = route.chat(chat, ctx).await?;
        cache.store_chat(route, &reply).await;
        if let Some(turn) = turn {
            let usage = reply.usage;
            let cost = price_of(route.price.as_ref(), usage.as_ref());
            let output = reply.choices.first().map(|c| c.message.clone());
            turn.complete(output, usage, cost, false).await;
        }
        let response = Json(translate::chat_to_messages_response(reply)).into_response();
        return Ok(cache.mark(&call, response));
    }
    let model = route.model.clone();
    ctx.call.keep_prompt(&chat.messages);
    let mut chunks = route.chat_stream(chat, ctx).await?;
    chunks = match turn {
        Some(turn) => record_stream(turn, chunks, route.price),
        None => cache.record_chat_stream(route, chunks),
    };
    let events = async_stream::stream! {
        let mut state = ChatToMessagesStream::new(&model);
        while let Some(item) = chunks.next().await {
            match item {
                Ok(chunk) => for event in state.on_chunk(&chunk) { yield Ok(event); },
                Err(e) => { yield Err(e); return; }
            }
        }
        for event in state.finish() { yield Ok(event); }
    };
    Ok(cache.mark(&call, sse::anthropic(&state, events)))
}

/// A cache hit in Anthropic's shape: the message, or the events of its chunks.
fn render_hit(state: &AppState, hit: &super::cache::Hit, model: &str, stream: bool) -> Response {
    let response = if stream {
        let chunks = hit.reply.chat_chunks().unwrap_or_default();
        let mut translator = ChatToMessagesStream::new(model);
        let mut events: Vec<_> = chunks.iter().flat_map(|c| translator.on_chunk(c)).collect();
        events.extend(translator.finish());
        sse::anthropic(
            state,
            futures_util::stream::iter(events.into_iter().map(Ok::<_, GatewayError>)),
        )
    } else {
        let completion = hit.reply.chat_completion().cloned().unwrap_or_default();
        Json(translate::chat_to_messages_response(completion)).into_response()
    };
    super::cache::hit_headers(hit, response)
}

/// Route layer of `/v1/messages`: re-renders any [`GatewayError`] response (extractor, body limit, handler,
/// later auth and rate limits) in Anthropic's error shape.
pub async fn anthropic_error_shape(mut response: Response) -> Response {
    match response.extensions_mut().remove::<GatewayError>() {
        Some(error) => error.into_anthropic_response(),
        None => response,
    }
}
