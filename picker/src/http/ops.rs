//! `/metrics`, `/healthz`, `/readyz`, and the JSON 404 for everything else.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, StatusCode, Uri};

use super::ApiError;
use crate::state::AppState;

/// The content type Prometheus expects for the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The classic Prometheus text format.
pub const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// OpenMetrics (what Prometheus asks for), unless the client accepts only `text/plain`
/// (`curl -H 'Accept: text/plain' … | promtool check metrics`).
pub(super) async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("text/plain") && !accept.contains("openmetrics") && !accept.contains("*/*") {
        (
            [(CONTENT_TYPE, PROMETHEUS_TEXT)],
            state.render_metrics_classic(),
        )
            .into_response()
    } else {
        ([(CONTENT_TYPE, OPENMETRICS)], state.render_metrics()).into_response()
    }
}

pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

pub(super) async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    // A state exists only once the configuration is loaded, so the one way to be unready is to
    // be shutting down.
    if state.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n",
        )
    }
}

pub(super) async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_string())
}
