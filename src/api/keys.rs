//! Admin API for virtual keys: `POST /admin/keys` (the secret is returned once), `GET /admin/keys`,
//! `GET /admin/keys/{id}` (with the current period's spend), `PATCH /admin/keys/{id}`,
//! `DELETE /admin/keys/{id}` (revokes; the record stays for the audit trail). Guarded by
//! `middleware::admin`. Keys declared in the config file are listed but read-only here.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::OpenAiJson;
use crate::control::keys::{Budget, Limits, VirtualKey, generate_secret};
use crate::control::{encode_hash, unix_ms};
use crate::error::GatewayError;
use crate::state::AppState;

/// Longest key name.
const MAX_NAME_CHARS: usize = 128;
/// Largest metadata, as JSON.
const MAX_METADATA_BYTES: usize = 16 * 1024;

/// Body of `POST /admin/keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Operator's name for the key.
    pub name: String,
    /// Models it may call; empty or absent means all.
    #[serde(default)]
    pub models: Vec<String>,
    /// Rate limits.
    #[serde(default)]
    pub limits: Limits,
    /// Spend cap.
    pub budget: Option<Budget>,
    /// Unix ms after which it is refused.
    pub expires_at: Option<i64>,
    /// Free-form data.
    #[serde(default)]
    pub metadata: BTreeMap<String, Value>,
    /// Cache switches (`exact`, `semantic`, `ttl`).
    pub cache: Option<crate::cache::CachePolicy>,
}

/// Body of `PATCH /admin/keys/{id}`: fields present are replaced; `budget: null` and
/// `expires_at: null` remove them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    /// New name.
    pub name: Option<String>,
    /// New model list.
    pub models: Option<Vec<String>>,
    /// New limits (the whole set).
    pub limits: Option<Limits>,
    /// New budget, or `null` for none.
    #[serde(default, deserialize_with = "double_option")]
    pub budget: Option<Option<Budget>>,
    /// New expiry, or `null` for none.
    #[serde(default, deserialize_with = "double_option")]
    pub expires_at: Option<Option<i64>>,
    /// New metadata (the whole map).
    pub metadata: Option<BTreeMap<String, Value>>,
    /// New cache switches; `null` removes them.
    #[serde(default, deserialize_with = "double_option")]
    pub cache: Option<Option<crate::cache::CachePolicy>>,
}

/// Present-but-null vs absent.
#[expect(
    clippy::option_option,
    reason = "PATCH semantics: absent keeps, null removes, a value replaces"
)]
fn double_option<'de, T, D>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(de).map(Some)
}

fn unavailable(e: &crate::control::limiter::BackendError) -> GatewayError {
    tracing::warn!(error = %e, "key store unavailable");
    GatewayError::StateUnavailable("the key store is unavailable; retry shortly".to_owned())
}

fn validate(
    state: &AppState,
    name: &str,
    models: &[String],
    budget: Option<&Budget>,
    expires_at: Option<i64>,
    metadata: &BTreeMap<String, Value>,
) -> Result<(), GatewayError> {
    if name.trim().is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(GatewayError::invalid(
            format!("`name` must be 1 to {MAX_NAME_CHARS} characters"),
            Some("name"),
        ));
    }
    if let Some(model) = models.iter().find(|m| state.providers.route(m).is_err()) {
        return Err(GatewayError::invalid(
            format!("unknown model `{model}` in `models`"),
            Some("models"),
        ));
    }
    if let Some(b) = budget
        && (b.usd <= rust_decimal::Decimal::ZERO || !(0.0..=1.0).contains(&b.soft_threshold))
    {
        return Err(GatewayError::invalid(
            "`budget.usd` must be greater than 0 and `budget.soft_threshold` within 0..1",
            Some("budget"),
        ));
    }
    if expires_at.is_some_and(|t| t <= unix_ms()) {
        return Err(GatewayError::invalid(
            "`expires_at` (unix milliseconds) must be in the future",
            Some("expires_at"),
        ));
    }
    if serde_json::to_vec(metadata).map_or(0, |v| v.len()) > MAX_METADATA_BYTES {
        return Err(GatewayError::invalid(
            format!("`metadata` must be at most {MAX_METADATA_BYTES} bytes of JSON"),
            Some("metadata"),
        ));
    }
    Ok(())
}

/// Creates a key; the only response that ever contains its secret.
pub async fn create_key(
    State(state): State<AppState>,
    OpenAiJson(body): OpenAiJson<CreateKey>,
) -> Result<(StatusCode, Json<Value>), GatewayError> {
    validate(
        &state,
        &body.name,
        &body.models,
        body.budget.as_ref(),
        body.expires_at,
        &body.metadata,
    )?;
    let secret = generate_secret()
        .map_err(|e| GatewayError::Internal(format!("no randomness for a key: {e}")))?;
    let key = VirtualKey {
        id: format!("key_{}", uuid::Uuid::now_v7().simple()),
        name: body.name,
        prefix: secret.prefix,
        hash: encode_hash(&secret.hash),
        models: body.models,
        limits: body.limits,
        budget: body.budget,
        expires_at: body.expires_at,
        revoked_at: None,
        metadata: body.metadata,
        cache: body.cache,
        created_at: unix_ms(),
        source: "api".to_owned(),
    };
    state
        .control
        .store()
        .put(&key)
        .await
        .map_err(|e| unavailable(&e))?;
    state.control.index().upsert(key.clone());
    tracing::info!(key_id = %key.id, name = %key.name, "API key created");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "key": key, "secret": secret.secret })),
    ))
}

/// Lists every key (config-declared first), revoked ones included.
pub async fn list_keys(State(state): State<AppState>) -> Result<Json<Value>, GatewayError> {
    let keys = state
        .control
        .all_keys()
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(Json(json!({ "object": "list", "data": keys })))
}

async fn find(state: &AppState, id: &str) -> Result<VirtualKey, GatewayError> {
    if let Some(key) = state.control.config_key(id) {
        return Ok(key.clone());
    }
    state
        .control
        .store()
        .get(id)
        .await
        .map_err(|e| unavailable(&e))?
        .ok_or_else(|| GatewayError::NotFound(format!("no API key with id `{id}`")))
}

/// One key, with the spend of its current budget period.
pub async fn get_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, GatewayError> {
    let key = find(&state, &id).await?;
    let mut body = serde_json::to_value(&key)
        .map_err(|e| GatewayError::Internal(format!("key serialisation: {e}")))?;
    if let Some(spend) = state
        .control
        .spend_of(&key)
        .await
        .map_err(|e| unavailable(&e))?
        && let Value::Object(map) = &mut body
    {
        map.insert("spend".to_owned(), spend);
    }
    Ok(Json(body))
}

fn read_only(key: &VirtualKey) -> Result<(), GatewayError> {
    if key.source == "config" {
        return Err(GatewayError::invalid(
            format!(
                "key `{}` is declared in the config file; change it there",
                key.id
            ),
            None,
        ));
    }
    Ok(())
}

/// Changes a key's name, models, limits, budget, expiry or metadata.
pub async fn update_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
    OpenAiJson(body): OpenAiJson<UpdateKey>,
) -> Result<Json<VirtualKey>, GatewayError> {
    let mut key = find(&state, &id).await?;
    read_only(&key)?;
    if key.revoked_at.is_some() {
        return Err(GatewayError::invalid(
            format!("key `{id}` is revoked; create a new one"),
            None,
        ));
    }
    if let Some(name) = body.name {
        key.name = name;
    }
    if let Some(models) = body.models {
        key.models = models;
    }
    if let Some(limits) = body.limits {
        key.limits = limits;
    }
    if let Some(budget) = body.budget {
        key.budget = budget;
    }
    if let Some(expires_at) = body.expires_at {
        key.expires_at = expires_at;
    }
    if let Some(metadata) = body.metadata {
        key.metadata = metadata;
    }
    if let Some(cache) = body.cache {
        key.cache = cache;
    }
    validate(
        &state,
        &key.name,
        &key.models,
        key.budget.as_ref(),
        key.expires_at,
        &key.metadata,
    )?;
    state
        .control
        .store()
        .put(&key)
        .await
        .map_err(|e| unavailable(&e))?;
    state.control.index().upsert(key.clone());
    tracing::info!(key_id = %key.id, "API key updated");
    Ok(Json(key))
}

/// Revokes a key: refused on this replica at once, on the others within `state.sync_interval`.
pub async fn revoke_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<VirtualKey>, GatewayError> {
    let mut key = find(&state, &id).await?;
    read_only(&key)?;
    if key.revoked_at.is_none() {
        key.revoked_at = Some(unix_ms());
        state
            .control
            .store()
            .put(&key)
            .await
            .map_err(|e| unavailable(&e))?;
        state.control.index().upsert(key.clone());
        tracing::info!(key_id = %key.id, "API key revoked");
    }
    Ok(Json(key))
}
