//! THE stack. Everything a request passes, in order, is assembled here.
//!
//! Layers, outermost first:
//!
//! 1. Around the whole router (sees every request, matched or not):
//!    `CatchPanic` (a panic becomes a 500 in the OpenAI error shape) →
//!    `SetSensitiveRequestHeaders(Authorization, x-api-key)` (redacted from any debug output) →
//!    `SetRequestId(x-request-id)` (kept from the client or a new UUIDv7) →
//!    `PropagateRequestId` (echoed on the response).
//! 2. Routing: axum matches the path and inserts `MatchedPath`; unknown paths get 404, wrong methods 405,
//!    both in the OpenAI error shape.
//! 3. Per route (`Router::layer`, so `MatchedPath` is visible):
//!    `access_log` (span + one access record; logs the `GatewayError` a response carries) →
//!    `DefaultBodyLimit(server.max_body_bytes)` (413 through the JSON extractor) →
//!    `/v1/messages` only: `anthropic_error_shape` → handler → `provider::Route` → `Provider`.
//!
//! Request extensions: `MatchedPath` (axum) is read by `access_log`; the `x-request-id` header is read by
//! `access_log` and by the `CallContext` extractor (sent upstream). Response extensions: `GatewayError`
//! (inserted by its `IntoResponse`) is read by `anthropic_error_shape` and `access_log`.
//!
//! Later layers (auth, rate limits, sessions, cache, metrics) go into step 3 between the body limit and
//! the handler, in that order.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::response::{IntoResponse, Response};
use http::HeaderName;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use crate::error::GatewayError;
use crate::state::AppState;
use crate::{api, middleware};

/// How long `serve` waits for connections after the drain grace period before giving up.
const HARD_STOP_AFTER_GRACE: Duration = Duration::from_secs(5);

/// Builds the complete service: outer layers around the router.
pub fn build_router(state: AppState) -> Router {
    let x_request_id = HeaderName::from_static("x-request-id");
    let max_body = state.max_body_bytes;
    let routes = api::api_routes()
        .merge(api::open_routes())
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(axum::middleware::from_fn(middleware::trace::access_log))
                .layer(DefaultBodyLimit::max(max_body)),
        )
        .with_state(state);
    // Outer layers, applied to a router that already has its state, so they see every request.
    Router::new().fallback_service(routes).layer(
        ServiceBuilder::new()
            .layer(CatchPanicLayer::custom(panic_response))
            .layer(SetSensitiveRequestHeadersLayer::new([
                http::header::AUTHORIZATION,
                HeaderName::from_static("x-api-key"),
            ]))
            .layer(SetRequestIdLayer::new(x_request_id.clone(), UuidV7))
            .layer(PropagateRequestIdLayer::new(x_request_id)),
    )
}

async fn route_not_found(request: Request) -> GatewayError {
    GatewayError::RouteNotFound {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
    }
}

async fn method_not_allowed(request: Request) -> GatewayError {
    GatewayError::MethodNotAllowed {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
    }
}

fn panic_response(_payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    GatewayError::Internal("handler panicked".to_owned()).into_response()
}

/// Request ids: UUIDv7 (time-ordered, so logs sort by id).
#[derive(Clone, Copy)]
struct UuidV7;

impl MakeRequestId for UuidV7 {
    fn make_request_id<B>(&mut self, _request: &http::Request<B>) -> Option<RequestId> {
        http::HeaderValue::from_str(&uuid::Uuid::now_v7().to_string())
            .ok()
            .map(RequestId::new)
    }
}

/// Serves on an already-bound listener until shutdown, then drains: in-flight requests run for the grace
/// period, open streams are then ended, and after a short hard stop the function returns regardless.
/// Background tasks are awaited last.
pub async fn serve(listener: TcpListener, state: AppState) -> std::io::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, "sluice listening");
    let shutdown = state.shutdown.clone();
    let tasks = state.tasks.clone();
    let app = build_router(state);
    let server =
        axum::serve(listener, app).with_graceful_shutdown(shutdown.signalled().cancelled_owned());
    let hard_stop = async {
        shutdown.run_grace_timer().await;
        tokio::time::sleep(HARD_STOP_AFTER_GRACE).await;
    };
    tokio::select! {
        result = server => result?,
        () = hard_stop => tracing::warn!("connections still open after the drain grace period; stopping anyway"),
    }
    tasks.close();
    if tokio::time::timeout(HARD_STOP_AFTER_GRACE, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("background tasks still running at exit");
    }
    tracing::info!("sluice stopped");
    Ok(())
}
