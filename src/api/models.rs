//! `GET /v1/models` and `GET /v1/models/{model}`: OpenAI-shaped, or Anthropic-shaped when the client sends
//! `anthropic-version` (as the Anthropic SDKs do).

use axum::Json;
use axum::extract::{Path, State};
use http::HeaderMap;
use serde_json::{Value, json};

use crate::error::GatewayError;
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

/// Lists the configured public models.
pub async fn list_models(State(state): State<AppState>, headers: HeaderMap) -> Json<Value> {
    let anthropic = is_anthropic(&headers);
    let data: Vec<Value> = state
        .providers
        .models()
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
    headers: HeaderMap,
    Path(model): Path<String>,
) -> Result<Json<Value>, GatewayError> {
    let info = state
        .providers
        .models()
        .find(|m| m.id == model)
        .ok_or(GatewayError::ModelNotFound(model))?;
    Ok(Json(render(&info, is_anthropic(&headers))))
}
