//! One error type for every route, rendered as `{"error": CODE, "message": …}` with its status.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{CONNECTION, RETRY_AFTER, WWW_AUTHENTICATE};
use inferpick_schema::ErrorBody;

use crate::scheduler::PickError;

/// Why a request was refused. A refused request changes nothing.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the message names the field at fault.
    #[error("{0}")]
    InvalidRequest(String),
    /// 401.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the sender may not do this (a report for another pod's address).
    #[error("{0}")]
    Forbidden(String),
    /// 408: the request body did not arrive in time.
    #[error("the request body did not arrive within {}", humantime::format_duration(*.0))]
    RequestTimeout(std::time::Duration),
    /// 503: the table is at `--max-endpoints` and the request would add endpoints.
    #[error("{0}")]
    TableFull(String),
    /// 413.
    #[error("request body over the {limit}-byte limit")]
    PayloadTooLarge {
        /// The limit, bytes.
        limit: usize,
    },
    /// 415.
    #[error("content type {0:?} is not JSON: send application/json")]
    UnsupportedMediaType(String),
    /// 404 for a path the picker does not serve.
    #[error("no such route: {0}")]
    NotFound(String),
    /// The scheduler's refusals (400, 404, 429, 503).
    #[error(transparent)]
    Pick(#[from] PickError),
}

impl ApiError {
    /// The contract's error code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::TableFull(_) => "table_full",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::NotFound(_) => "not_found",
            ApiError::Pick(e) => e.code(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TableFull(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Pick(e) => {
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }
}

impl ApiError {
    /// When a shed request may be retried.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            ApiError::Pick(PickError::Shed { retry_after, .. }) => Some(*retry_after),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code().to_string(),
            message: self.to_string(),
        };
        let mut response = (self.status(), Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::Pick(PickError::Shed { retry_after, .. }) => {
                headers.insert(RETRY_AFTER, retry_after.as_secs().max(1).into());
            }
            ApiError::Unauthorized(_) => {
                headers.insert(WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
            }
            // The rest of the body may still be on its way: the connection cannot be reused.
            ApiError::RequestTimeout(_) => {
                headers.insert(CONNECTION, http::HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}
