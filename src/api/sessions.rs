//! `/v1/sessions`: create, read, list, update and delete conversation sessions. A session belongs to the
//! key that created it; any other key gets 404. Chat calls join a session with the header
//! `x-sluice-session-id` or the body field `session_id` (see `sessions::service`).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::OpenAiJson;
use crate::error::GatewayError;
use crate::provider::CallContext;
use crate::sessions::service::{CreateSession, Sessions, UpdateSession, owner_of};
use crate::state::AppState;

/// Header a chat call names its session with.
pub const SESSION_HEADER: &str = "x-sluice-session-id";

fn sessions(state: &AppState) -> Result<&std::sync::Arc<Sessions>, GatewayError> {
    state.sessions.as_ref().ok_or_else(|| {
        GatewayError::Unsupported("sessions are disabled (sessions.enabled = false)".to_owned())
    })
}

/// Creates a session.
pub async fn create_session(
    State(state): State<AppState>,
    ctx: CallContext,
    OpenAiJson(body): OpenAiJson<CreateSession>,
) -> Result<(StatusCode, Json<Value>), GatewayError> {
    let sessions = sessions(&state)?;
    let session = sessions
        .create(&owner_of(&ctx.caller), body, |m| {
            state.providers.route(m).is_ok()
        })
        .await?;
    Ok((StatusCode::CREATED, Json(json!(session))))
}

/// One session with its turns.
pub async fn get_session(
    State(state): State<AppState>,
    ctx: CallContext,
    Path(id): Path<String>,
) -> Result<Json<Value>, GatewayError> {
    let session = sessions(&state)?.get(&owner_of(&ctx.caller), &id).await?;
    Ok(Json(json!(session)))
}

/// Query of `GET /v1/sessions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Page size, 1–100 (default 20).
    pub limit: Option<usize>,
    /// Sessions older than this id (the last id of the previous page).
    pub after: Option<String>,
}

/// The caller's sessions, newest first, without their turns.
pub async fn list_sessions(
    State(state): State<AppState>,
    ctx: CallContext,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, GatewayError> {
    let page = sessions(&state)?
        .list(
            &owner_of(&ctx.caller),
            query.after.as_deref(),
            query.limit.unwrap_or(20),
        )
        .await?;
    Ok(Json(json!({
        "object": "list",
        "data": page.sessions,
        "has_more": page.has_more,
    })))
}

/// Changes a session's metadata or lifetime.
pub async fn update_session(
    State(state): State<AppState>,
    ctx: CallContext,
    Path(id): Path<String>,
    OpenAiJson(body): OpenAiJson<UpdateSession>,
) -> Result<Json<Value>, GatewayError> {
    let session = sessions(&state)?
        .update(&owner_of(&ctx.caller), &id, body)
        .await?;
    Ok(Json(json!(session)))
}

/// Deletes a session.
pub async fn delete_session(
    State(state): State<AppState>,
    ctx: CallContext,
    Path(id): Path<String>,
) -> Result<Json<Value>, GatewayError> {
    sessions(&state)?
        .delete(&owner_of(&ctx.caller), &id)
        .await?;
    Ok(Json(
        json!({ "id": id, "object": "session.deleted", "deleted": true }),
    ))
}

/// The session a chat call names: the header, else the body field `session_id` (removed from the
/// body either way, so it never reaches the upstream).
pub fn requested_session(
    ctx: &CallContext,
    extra: &mut crate::protocol::openai::Extra,
) -> Result<Option<String>, GatewayError> {
    let from_body = match extra.remove("session_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id),
        Some(_) => {
            return Err(GatewayError::invalid(
                "`session_id` must be a string",
                Some("session_id"),
            ));
        }
    };
    Ok(ctx.session_id.clone().or(from_body))
}

/// Joins a chat call to the session it names, if any: the request's messages become the fitted history
/// plus the new ones. Returns the turn to complete with the reply.
pub async fn join(
    state: &AppState,
    ctx: &CallContext,
    req: &mut crate::protocol::openai::ChatRequest,
) -> Result<Option<crate::sessions::service::TurnGuard>, GatewayError> {
    let Some(id) = requested_session(ctx, &mut req.extra)? else {
        return Ok(None);
    };
    let request_id = ctx
        .request_id
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let sessions = sessions(state)?;
    let summarizer = sessions
        .config()
        .summarize_with
        .as_deref()
        .and_then(|m| state.providers.route(m).ok());
    let upstream_model = |model: &str| {
        state
            .providers
            .route(model)
            .ok()
            .map(|r| r.upstream_model.to_string())
    };
    let guard = sessions
        .begin(
            &owner_of(&ctx.caller),
            &id,
            req,
            &request_id,
            upstream_model,
            summarizer,
        )
        .await?;
    Ok(Some(guard))
}
