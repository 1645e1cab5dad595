//! `GET /v1/models` and `GET /v1/models/{model}`: OpenAI-shaped, or Anthropic-shaped when the client sends
//! `anthropic-version` (as the Anthropic SDKs do). A key restricted to some models sees only those.

use axum::Json;
use axum::extract::{Path, State};
use http::HeaderMap;
use serde_json::{Value, json};

use crate::control::Caller;
use crate::error::GatewayError;
use crate::provider::CallContext;
use crate::provider::ModelInfo;
use crate::state::AppState;

fn is_anthropic(headers: &HeaderMap) -> bool {
    headers.contains_key("anthropic-version")
}

fn render(m: &ModelInfo, anthropic: bool) -> Value {
    if anthropic {
        json!({"type": "model", "id": m.id, "display_name": m.id, "created_at": "1970-01-01T00:00:00Z"})
    } else {
        json!({"id": m.id, "object": "model", "created": 0, "owned_by": m.owned_by})
    }
}

/// Whether the caller's key may use `model` (every model for anonymous callers).
fn visible(ctx: &CallContext, model: &str) -> bool {
    match &ctx.caller {
        Caller::Key(key) => key.allows_model(model),
        Caller::Anonymous => true,
    }
}

/// Lists the configured public models the caller's key may use.
pub async fn list_models(
    State(state): State<AppState>,
    ctx: CallContext,
    headers: HeaderMap,
) -> Json<Value> {
    let anthropic = is_anthropic(&headers);
    let data: Vec<Value> = state
        .providers
        .models()
        .filter(|m| visible(&ctx, &m.id))
        .map(|m| render(&m, anthropic))
        .collect();
    if anthropic {
        let first = data.first().map(|m| m["id"].clone());
        let last = data.last().map(|m| m["id"].clone());
        Json(json!({"data": data, "has_more": false, "first_id": first, "last_id": last}))
    } else {
        Json(json!({"object": "list", "data": data}))
    }
}

/// One model, or 404 `model_not_found`.
pub async fn get_model(
    State(state): State<AppState>,
    ctx: CallContext,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> Result<Json<Value>, GatewayError> {
    let info = state
        .providers
        .models()
        .find(|m| m.id == model && visible(&ctx, &m.id))
        .ok_or(GatewayError::ModelNotFound(model))?;
    Ok(Json(render(&info, is_anthropic(&headers))))
}
