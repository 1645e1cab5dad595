//! `POST /v1/embeddings`.

use axum::Json;
use axum::extract::State;

use super::admit::admit;
use super::extract::OpenAiJson;
use crate::control::Estimate;
use crate::error::GatewayError;
use crate::protocol::openai::ChatMessage;
use crate::protocol::openai::{EmbeddingsRequest, EmbeddingsResponse};
use crate::provider::CallContext;
use crate::state::AppState;
use crate::telemetry::call::count_prompt;
use crate::telemetry::call::{Operation, RequestParams};

/// Creates embeddings.
#[tracing::instrument(level = "debug", skip_all, fields(model = %req.model))]
pub async fn create_embeddings(
    State(state): State<AppState>,
    ctx: CallContext,
    OpenAiJson(req): OpenAiJson<EmbeddingsRequest>,
) -> Result<Json<EmbeddingsResponse>, GatewayError> {
    let empty = match &req.input {
        serde_json::Value::String(s) => s.is_empty(),
        serde_json::Value::Array(a) => a.is_empty(),
        _ => true,
    };
    if empty {
        return Err(GatewayError::invalid(
            "`input` must be a non-empty string or array",
            Some("input"),
        ));
    }
    ctx.call.begin(
        Operation::Embeddings,
        &req.model,
        false,
        RequestParams::default(),
    );
    let route = admit(&state, &ctx, &req.model, || Estimate {
        input_tokens: req
            .inputs()
            .iter()
            .map(|text| count_prompt(&req.model, &[ChatMessage::text("user", text)]))
            .sum(),
        max_output_tokens: None,
    })
    .await?;
    Ok(Json(route.embeddings(req, ctx).await?))
}
