//! Why a request was refused, for every transport: its contract code, its HTTP status (a gateway
//! relays it to the client over HTTP and over ext_proc alike) and, for a shed, when to retry.

use http::StatusCode;

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
            ApiError::Pick(e) => pick_code(e).0,
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
            ApiError::Pick(e) => pick_code(e).1,
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

/// The contract's code and status of each scheduler refusal.
fn pick_code(e: &PickError) -> (&'static str, StatusCode) {
    match e {
        PickError::UnknownModel { .. } => ("unknown_model", StatusCode::NOT_FOUND),
        PickError::Shed { .. } => ("shed", StatusCode::TOO_MANY_REQUESTS),
        PickError::NoReadyEndpoint { .. } => ("no_ready_endpoint", StatusCode::SERVICE_UNAVAILABLE),
        PickError::InvalidRequest { .. } => ("invalid_request", StatusCode::BAD_REQUEST),
    }
}
