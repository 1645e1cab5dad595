//! The route table: paths to handlers, nothing else.

pub mod admin;
pub mod admit;
pub mod cache;
pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod evaluations;
pub mod extract;
pub mod health;
pub mod keys;
pub mod messages;
pub mod metrics;
pub mod models;
pub mod sessions;
pub mod sse;

use axum::Router;
use axum::routing::{get, post};

use crate::middleware;
use crate::state::AppState;

/// Routes that take traffic, behind authentication. `/v1/messages` answers errors (401 included) in
/// Anthropic's shape, so its shape layer wraps the auth layer.
pub fn api_routes(state: &AppState) -> Router<AppState> {
    let auth =
        || axum::middleware::from_fn_with_state(state.clone(), middleware::auth::authenticate);
    Router::new()
        .route("/v1/chat/completions", post(chat::create_chat_completion))
        .route("/v1/completions", post(completions::create_completion))
        .route("/v1/embeddings", post(embeddings::create_embeddings))
        .route(
            "/v1/evaluations/rag",
            post(evaluations::create_rag_evaluation),
        )
        .route("/v1/models", get(models::list_models))
        .route("/v1/models/{model}", get(models::get_model))
        .route(
            "/v1/sessions",
            post(sessions::create_session).get(sessions::list_sessions),
        )
        .route(
            "/v1/sessions/{id}",
            get(sessions::get_session)
                .patch(sessions::update_session)
                .delete(sessions::delete_session),
        )
        .route_layer(auth())
        .merge(
            Router::new()
                .route("/v1/messages", post(messages::create_message))
                .route_layer(auth())
                .layer(axum::middleware::map_response(
                    messages::anthropic_error_shape,
                )),
        )
}

/// Routes that are always open (health probes; `/metrics` unless it has its own listener).
pub fn open_routes(metrics: bool) -> Router<AppState> {
    let router = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    if metrics {
        router.route("/metrics", get(metrics::get_metrics))
    } else {
        router
    }
}

/// Admin routes, behind the admin key.
pub fn admin_routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/admin/requests", get(admin::list_requests))
        .route("/admin/requests/{id}", get(admin::get_request))
        .route(
            "/admin/cache",
            get(admin::cache_stats).delete(admin::purge_cache),
        )
        .route("/admin/keys", post(keys::create_key).get(keys::list_keys))
        .route(
            "/admin/keys/{id}",
            get(keys::get_key)
                .patch(keys::update_key)
                .delete(keys::revoke_key),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::admin::require_admin,
        ))
}
