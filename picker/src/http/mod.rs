//! The HTTP API of CONTRACTS.md: routes, body limits, authentication and the JSON error shape.

mod endpoints;
mod error;
mod kv;
mod ops;
mod pick;
mod reports;

use std::task::Poll;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::routing::{any, get, post};
use http::HeaderMap;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};

pub use crate::error::ApiError;
pub use error::ERROR_FORMAT;

use crate::state::AppState;

/// Largest `POST /v1/reports` body (contract: 1 MiB).
pub const MAX_REPORTS_BODY: usize = 1 << 20;
/// Largest `POST /v1/kv-events` body: a message of 65,536 block keys with room to spare.
pub const MAX_KV_EVENTS_BODY: usize = 4 << 20;
/// Largest pick or authz body: prompts can be long.
pub const MAX_PICK_BODY: usize = 4 << 20;
/// Largest `POST /v1/done` body.
pub const MAX_DONE_BODY: usize = 64 << 10;

/// Every route of the picker.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/reports", post(reports::reports))
        .route("/v1/kv-events", post(kv::kv_events))
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

/// An agent's push (`/v1/reports`, `/v1/kv-events`): authorized with the report token, JSON, at
/// most `limit` bytes. A refusal goes through `refused` with its metric result (`unauthorized`,
/// `invalid`, `too_large`, `timeout`), which counts and logs it.
async fn read_push(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    refused: impl Fn(&'static str, ApiError) -> ApiError,
) -> Result<Bytes, ApiError> {
    crate::front::authorize(state, headers, crate::state::Scope::Report)
        .map_err(|e| refused("unauthorized", e))?;
    require_json(headers).map_err(|e| refused("invalid", e))?;
    read_body(state, headers, body, limit)
        .await
        .map_err(|e| match e {
            ApiError::PayloadTooLarge { .. } => refused("too_large", e),
            ApiError::RequestTimeout(_) => refused("timeout", e),
            e => refused("invalid", e),
        })
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
    let read = axum::body::to_bytes(body, limit);
    tokio::pin!(read);
    // A pick's body usually comes in the same segment as its head and is there at the first
    // poll: only a body still on its way needs the timer (and the settings, for its length).
    let read = match futures::poll!(read.as_mut()) {
        Poll::Ready(read) => read,
        Poll::Pending => {
            let timeout = state.settings().request_timeout;
            tokio::time::timeout(timeout, read)
                .await
                .map_err(|_| ApiError::RequestTimeout(timeout))?
        }
    };
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
    let essence = text.split(';').next().unwrap_or("").trim().as_bytes();
    let suffix = b"+json";
    if essence.eq_ignore_ascii_case(b"application/json")
        || (essence.len() >= suffix.len()
            && essence[essence.len() - suffix.len()..].eq_ignore_ascii_case(suffix))
    {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(text.to_string()))
    }
}

#[cfg(test)]
mod tests;
