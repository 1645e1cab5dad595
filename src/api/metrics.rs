//! `GET /metrics`: the Prometheus/OpenMetrics exposition.

use axum::extract::State;
use axum::response::IntoResponse;
use http::header::CONTENT_TYPE;

use crate::state::AppState;
use crate::telemetry::metrics;

/// Renders every metric family.
pub async fn get_metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, metrics::CONTENT_TYPE)],
        state.obs.metrics.render(),
    )
}
