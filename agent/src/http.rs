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

/// The one-sentence reason `/readyz` and the last report give once the agent is stopping.
pub const SHUTTING_DOWN: &str = "agent shutting down";

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    /// The agent's registry.
    pub metrics: Arc<AgentMetrics>,
    /// The latest report (none before the first scrape).
    pub latest: watch::Receiver<Option<Arc<LoadReport>>>,
    /// True from the moment the agent is told to stop: `/readyz` fails at once.
    pub stopping: watch::Receiver<bool>,
    /// Bound on answering one request.
    pub request_timeout: Duration,
}

const ROUTES: &str = "GET /metrics, /healthz, /readyz, /v1/report";

/// The agent's routes. Every request is bounded in time, so a slow client cannot hold a task;
/// unknown paths and methods get a JSON error naming the routes.
pub fn router(state: AppState) -> Router {
    let timeout = state.request_timeout;
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/report", get(report))
        .fallback(|uri: axum::http::Uri| async move {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no route {}; the agent serves {ROUTES}", uri.path()),
            )
        })
        .method_not_allowed_fallback(
            |method: axum::http::Method, uri: axum::http::Uri| async move {
                error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("{method} {}: the agent serves {ROUTES}", uri.path()),
                )
            },
        )
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
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
    if *s.stopping.borrow() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            SHUTTING_DOWN.into(),
        );
    }
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
