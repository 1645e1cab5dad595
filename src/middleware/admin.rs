//! Admin API access: denied unless `admin.api_key_env` is configured; then `Authorization: Bearer <key>`
//! is required. The key is kept only as its SHA-256 and compared in constant time.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::GatewayError;
use crate::state::AppState;

/// SHA-256 of a key.
pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Lets a request through only with the admin key.
pub async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = state.admin_key_hash else {
        return GatewayError::Forbidden(
            "the admin API is disabled: set admin.api_key_env to enable it".to_owned(),
        )
        .into_response();
    };
    let presented = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(hash);
    match presented {
        Some(h) if bool::from(h.ct_eq(&expected)) => next.run(request).await,
        _ => GatewayError::Unauthorized(
            "a valid admin key is required (Authorization: Bearer ...)".to_owned(),
        )
        .into_response(),
    }
}
