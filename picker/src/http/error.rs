//! The JSON error shape: `{"error": CODE, "message": …}` with the error's status and headers.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::header::{CONNECTION, RETRY_AFTER, WWW_AUTHENTICATE};
use inferpick_schema::ErrorBody;

use crate::error::ApiError;
use crate::scheduler::PickError;

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
