//! Admin API for production debugging: `GET /admin/requests` (filtered, newest first) and
//! `GET /admin/requests/{id}` (one request with its timeline). Guarded by `middleware::admin`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::GatewayError;
use crate::request_log::{RequestFilter, RequestLog};
use crate::state::AppState;

/// Query string of `GET /admin/requests`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestsQuery {
    /// Only this public model.
    pub model: Option<String>,
    /// Only this HTTP status.
    pub status: Option<u16>,
    /// Unix milliseconds, or a duration back from now (`15m`, `2h`).
    pub since: Option<String>,
    /// Most rows to return (default 50, at most 1000).
    pub limit: Option<u32>,
}

fn log(state: &AppState) -> Result<RequestLog, GatewayError> {
    state.obs.request_log.clone().ok_or_else(|| {
        GatewayError::Unsupported(
            "the request log is disabled (request_log.enabled = false)".to_owned(),
        )
    })
}

fn parse_since(since: &str) -> Result<i64, GatewayError> {
    if let Ok(ms) = since.parse::<i64>() {
        return Ok(ms);
    }
    let ago = humantime::parse_duration(since).map_err(|_| {
        GatewayError::invalid(
            "`since` must be unix milliseconds or a duration such as 15m or 2h",
            Some("since"),
        )
    })?;
    let then = SystemTime::now().checked_sub(ago).unwrap_or(UNIX_EPOCH);
    Ok(i64::try_from(
        then.duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis(),
    )
    .unwrap_or(0))
}

/// Lists recorded requests.
pub async fn list_requests(
    State(state): State<AppState>,
    Query(query): Query<RequestsQuery>,
) -> Result<Json<Value>, GatewayError> {
    let log = log(&state)?;
    let filter = RequestFilter {
        model: query.model,
        status: query.status,
        since_ms: query.since.as_deref().map(parse_since).transpose()?,
        limit: query.limit.unwrap_or(50).clamp(1, 1000),
    };
    let rows = log
        .query_async(filter)
        .await
        .map_err(|e| GatewayError::Internal(format!("request log query: {e}")))?;
    Ok(Json(json!({"object": "list", "data": rows})))
}

/// One recorded request with its timeline.
pub async fn get_request(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, GatewayError> {
    let log = log(&state)?;
    let record = log
        .get_async(id.clone())
        .await
        .map_err(|e| GatewayError::Internal(format!("request log lookup: {e}")))?;
    match record {
        Some(r) => {
            let mut v =
                serde_json::to_value(r).map_err(|e| GatewayError::Internal(e.to_string()))?;
            // Online RAG evaluation scores of this request, when it was sampled.
            if let Some(rag) = state.rag.stored(id).await {
                v["rag"] = rag;
            }
            Ok(Json(v))
        }
        None => Err(GatewayError::NotFound(format!(
            "no recorded request with id `{id}`"
        ))),
    }
}

/// Query string of `DELETE /admin/cache`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeQuery {
    /// Only replies of this public model.
    pub model: Option<String>,
    /// Only replies of this key id (`anonymous` for calls without a key).
    pub key: Option<String>,
}

fn cache(state: &AppState) -> Result<&std::sync::Arc<crate::cache::Cache>, GatewayError> {
    state.cache.as_ref().ok_or_else(|| {
        GatewayError::Unsupported(
            "the response cache is disabled (cache.enabled = false)".to_owned(),
        )
    })
}

/// `GET /admin/cache`: what the cache holds in this process, and its settings.
pub async fn cache_stats(State(state): State<AppState>) -> Result<Json<Value>, GatewayError> {
    Ok(Json(json!(cache(&state)?.stats())))
}

/// `DELETE /admin/cache?model=&key=`: drops the replies (and semantic entries) of a model, of a key,
/// of both, or all of them (no filter) — here, in Redis and on every replica sharing it.
pub async fn purge_cache(
    State(state): State<AppState>,
    Query(q): Query<PurgeQuery>,
) -> Result<Json<Value>, GatewayError> {
    let purge = crate::cache::shared::Purge {
        tenant: q.key,
        model: q.model,
    };
    let report = cache(&state)?
        .purge(purge.clone())
        .await
        .map_err(|e| GatewayError::StateUnavailable(format!("cache purge incomplete: {e}")))?;
    tracing::info!(model = ?purge.model, key = ?purge.tenant, ?report, "cache purged");
    Ok(Json(json!({ "purged": report })))
}
