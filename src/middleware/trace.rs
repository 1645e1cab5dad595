//! The request span (method, matched route, request id) and one structured access record per request.
//! Errors are logged here, once, from the `GatewayError` the response carries in its extensions.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::error::GatewayError;

/// Wraps a request in its span and writes the access record when the response head is ready.
pub async fn access_log(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let span = tracing::info_span!("request", %method, route = %route, request_id = %request_id);
    let response = next.run(request).instrument(span.clone()).await;
    let _entered = span.enter();
    let status = response.status().as_u16();
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let streaming = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    match response.extensions().get::<GatewayError>() {
        Some(error) if error.status().is_server_error() => {
            tracing::error!(status, latency_ms, error.kind = error.kind(), error.message = %error, detail = ?internal_detail(error), "request failed");
        }
        Some(error) => {
            tracing::info!(status, latency_ms, error.kind = error.kind(), error.message = %error, "request rejected");
        }
        None => tracing::info!(status, latency_ms, streaming, "request served"),
    }
    response
}

fn internal_detail(error: &GatewayError) -> Option<&str> {
    match error {
        GatewayError::Internal(detail) => Some(detail),
        _ => None,
    }
}
