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
//! 3. Per route (`Router::layer`, so `MatchedPath` is visible), for the API, admin and fallback routes
//!    (health probes and `/metrics` skip it):
//!    `observe` (OTel server span with the client's W3C trace context; the request id for log lines,
//!    `telemetry::request_scope`; an `Arc<Call>` record; wraps the body
//!    and, at its last byte or on disconnect, writes metrics, access log, span attributes and the request
//!    log; cost and overhead headers on non-streaming responses) →
//!    `DefaultBodyLimit(server.max_body_bytes)` (413 through the JSON extractor) →
//!    `/admin/*` only: `require_admin` (the admin key) →
//!    `/v1/messages` only: `anthropic_error_shape` (wraps the auth layer, so its 401 is Anthropic-shaped) →
//!    `/v1/*` only: `auth::authenticate` (virtual key → `Caller`; 401) →
//!    handler. A model-calling handler parses the body, then runs, in order: `api::sessions::join`
//!    (session history in front of the new messages; turn lock) → `api::admit` (403 model permission,
//!    404 model, every limit and budget at once; `x-ratelimit-*` headers) → `provider::Route`
//!    (timeouts, upstream attempt span, chunk observation) → `Provider`.
//!
//! Request extensions: `MatchedPath` (axum) and the `x-request-id` header are read by `observe`, which
//! inserts `Arc<Call>`; `auth` inserts `Caller` (and the key id into the call). The `CallContext`
//! extractor takes the call, the caller, the request id and `x-sluice-session-id`. Response extensions:
//! `GatewayError` (inserted by its `IntoResponse`) is read by `anthropic_error_shape` and `observe`.
//! The call record settles the admission (real tokens, exact cost, concurrency slot) when it finishes,
//! in a task after the body's last byte.
//!
//! A response cache goes between `api::admit` and the route.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
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
    let observed = api::api_routes(&state)
        .merge(api::admin_routes(&state))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(middleware::observe::Layer::new(state.clone()))
                .layer(DefaultBodyLimit::max(max_body)),
        );
    // Probes and scrapes stay out of the access log and the request metrics.
    let routes = observed
        .merge(api::open_routes(state.metrics_on_main_listener))
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

/// The router of the separate metrics listener (`telemetry.metrics.listen`).
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(api::metrics::get_metrics))
        .with_state(state)
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

/// Serves on already-bound listeners until shutdown, then drains: in-flight requests run for the grace
/// period, open streams are then ended, and after a short hard stop the function returns regardless.
/// Background tasks are awaited last, then settled spend is written to the ledger. `metrics` is the separate metrics listener, if configured.
pub async fn serve(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    state: AppState,
) -> std::io::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, "sluice listening");
    let shutdown = state.shutdown.clone();
    let tasks = state.tasks.clone();
    if let Some(metrics) = metrics {
        tracing::info!(addr = %metrics.local_addr()?, "metrics listening");
        let router = metrics_router(state.clone());
        let stop = shutdown.signalled();
        tasks.spawn(async move {
            if let Err(e) = axum::serve(metrics, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "metrics listener failed");
            }
        });
    }
    let control = std::sync::Arc::clone(&state.control);
    let app = build_router(state);
    // Nagle's algorithm would hold back small SSE writes until the previous segment is acknowledged
    // (up to the peer's 40 ms delayed ACK): every event is written as soon as it exists.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
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
    // Every call has settled by now (connections closed, detached upstream reads done).
    control.flush_spend().await;
    tracing::info!("sluice stopped");
    Ok(())
}
