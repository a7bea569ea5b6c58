//! The HTTP API of CONTRACTS.md: routes, body limits, authentication and the JSON error shape.

mod endpoints;
mod error;
mod ops;
pub(crate) mod pick;
mod reports;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::routing::{any, get, post};
use http::HeaderMap;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};

pub use error::ApiError;

use crate::service::{AppState, Scope};

/// Largest `POST /v1/reports` body (contract: 1 MiB).
pub const MAX_REPORTS_BODY: usize = 1 << 20;
/// Largest pick or authz body: prompts can be long.
pub const MAX_PICK_BODY: usize = 4 << 20;
/// Largest `POST /v1/done` body.
pub const MAX_DONE_BODY: usize = 64 << 10;

/// Every route of the picker.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/reports", post(reports::reports))
        .route("/v1/pick", post(pick::pick))
        .route("/v1/authz", any(pick::authz))
        .route("/v1/authz/{*rest}", any(pick::authz))
        .route("/v1/done", post(pick::done))
        .route("/v1/endpoints", get(endpoints::endpoints))
        .route("/metrics", get(ops::metrics))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .fallback(ops::not_found)
        .with_state(state)
}

/// Reads the whole body, refusing more than `limit` bytes with 413 and a body that has not
/// arrived within the request timeout with 408.
async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let timeout = state.settings().request_timeout;
    let read = tokio::time::timeout(timeout, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| ApiError::RequestTimeout(timeout))?;
    read.map_err(|e| {
        let inner = e.into_inner();
        if inner
            .downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            ApiError::PayloadTooLarge { limit }
        } else {
            ApiError::InvalidRequest(format!("could not read the request body: {inner}"))
        }
    })
}

/// Refuses a declared content type that is not JSON (no declared type is accepted).
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or("");
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(text.to_string()))
    }
}

/// Checks `Authorization: Bearer <token>` when `scope` has a token configured.
pub(crate) fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    scope: Scope,
) -> Result<(), ApiError> {
    let Some(expected) = state.token(scope) else {
        return Ok(());
    };
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Err(ApiError::Unauthorized(
            "missing Authorization: Bearer <token> header".into(),
        ));
    };
    let given = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match given {
        Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::Unauthorized("wrong bearer token".into())),
        None => Err(ApiError::Unauthorized(
            "Authorization header is not `Bearer <token>`".into(),
        )),
    }
}

/// Compares without an early exit, so timing does not reveal how much of a token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests;
