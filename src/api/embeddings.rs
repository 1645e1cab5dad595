//! `POST /v1/embeddings`.

use axum::Json;
use axum::extract::State;

use super::extract::OpenAiJson;
use crate::error::GatewayError;
use crate::protocol::openai::{EmbeddingsRequest, EmbeddingsResponse};
use crate::provider::CallContext;
use crate::state::AppState;
use crate::telemetry::call::{Operation, RequestParams};

/// Creates embeddings.
#[tracing::instrument(skip_all, fields(model = %req.model))]
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
    let route = state.providers.route(&req.model)?;
    Ok(Json(route.embeddings(req, ctx).await?))
}
