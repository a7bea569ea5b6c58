//! The agent's own HTTP endpoints: `/metrics`, `/healthz`, `/readyz`, `GET /v1/report`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use inferpick_schema::{ErrorBody, LoadReport};
use tokio::sync::watch;

use crate::metrics::{AgentMetrics, OPENMETRICS};

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    /// The agent's registry.
    pub metrics: Arc<AgentMetrics>,
    /// The latest report (none before the first scrape).
    pub latest: watch::Receiver<Option<Arc<LoadReport>>>,
}

/// The agent's routes. Every request is bounded in time, so a slow client cannot hold a task.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/report", get(report))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(10),
        ))
        .with_state(state)
}

async fn metrics(State(s): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, OPENMETRICS)], s.metrics.render()).into_response()
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        axum::Json(ErrorBody {
            error: code.to_string(),
            message,
        }),
    )
        .into_response()
}

async fn readyz(State(s): State<AppState>) -> Response {
    let latest = s.latest.borrow().clone();
    match latest {
        Some(r) if r.engine.ready => "ready\n".into_response(),
        Some(r) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            r.engine
                .error
                .clone()
                .unwrap_or_else(|| "engine not ready".into()),
        ),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "no scrape has finished yet".into(),
        ),
    }
}

async fn report(State(s): State<AppState>) -> Response {
    let latest = s.latest.borrow().clone();
    match latest {
        Some(r) => axum::Json(r.as_ref().clone()).into_response(),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_report",
            "no scrape has finished yet".into(),
        ),
    }
}
