//! The JSON error shapes: the picker's `{"error": CODE, "message": …}`, and OpenAI's for `/v1/authz`
//! asked by a gateway whose clients are LLM clients; both with the error's status and headers.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::header::{CONNECTION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue};
use inferpick_schema::ErrorBody;

use crate::error::ApiError;
use crate::scheduler::PickError;

/// The request header with which a gateway asks for refusals in OpenAI's shape.
pub const ERROR_FORMAT: &str = "x-inferpick-error-format";

/// The shape of a refusal's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorFormat {
    /// `{"error": CODE, "message": …}`, the picker API's own.
    Picker,
    /// `{"error": {"message", "type", "param", "code"}}`, what OpenAI clients read.
    OpenAi,
}

impl ErrorFormat {
    /// The format `x-inferpick-error-format` asks for (`openai`; the picker's when absent).
    pub fn of(headers: &HeaderMap) -> Result<Self, ApiError> {
        let Some(value) = headers.get(ERROR_FORMAT) else {
            return Ok(ErrorFormat::Picker);
        };
        match value.to_str().map(str::trim) {
            Ok(v) if v.eq_ignore_ascii_case("openai") => Ok(ErrorFormat::OpenAi),
            Ok(v) if v.eq_ignore_ascii_case("inferpick") => Ok(ErrorFormat::Picker),
            _ => Err(ApiError::InvalidRequest(format!(
                "{ERROR_FORMAT}: {value:?} is not a known format (openai or inferpick)"
            ))),
        }
    }

    /// `e` as a response in this format.
    pub fn respond(self, e: ApiError) -> Response {
        match self {
            ErrorFormat::Picker => e.into_response(),
            ErrorFormat::OpenAi => {
                let body = crate::openai::refusal_body(&e);
                let mut response = (e.status(), body).into_response();
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                with_headers(response, &e)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code().to_string(),
            message: self.to_string(),
        };
        with_headers((self.status(), Json(body)).into_response(), &self)
    }
}

/// The headers an error carries, whatever the body's shape.
fn with_headers(mut response: Response, e: &ApiError) -> Response {
    let headers = response.headers_mut();
    match e {
        ApiError::Pick(PickError::Shed { retry_after, .. }) => {
            headers.insert(RETRY_AFTER, retry_after.as_secs().max(1).into());
        }
        ApiError::Unauthorized(_) => {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // The rest of the body may still be on its way: the connection cannot be reused.
        ApiError::RequestTimeout(_) => {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        _ => {}
    }
    response
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn with_format(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(ERROR_FORMAT, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn the_format_header_chooses_the_shape_and_an_unknown_one_is_refused() {
        assert_eq!(
            ErrorFormat::of(&HeaderMap::new()).unwrap(),
            ErrorFormat::Picker
        );
        assert_eq!(
            ErrorFormat::of(&with_format("OpenAI")).unwrap(),
            ErrorFormat::OpenAi
        );
        assert_eq!(
            ErrorFormat::of(&with_format("inferpick")).unwrap(),
            ErrorFormat::Picker
        );
        let Err(ApiError::InvalidRequest(m)) = ErrorFormat::of(&with_format("xml")) else {
            panic!("an unknown format was accepted");
        };
        assert!(m.contains(ERROR_FORMAT) && m.contains("xml"), "{m}");
    }

    async fn body(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn a_shed_keeps_status_and_retry_after_in_either_shape() {
        let shed = || {
            ApiError::Pick(PickError::Shed {
                model: "m".into(),
                priority: -1,
                retry_after: Duration::from_secs(3),
            })
        };
        let message = shed().to_string();
        let openai = ErrorFormat::OpenAi.respond(shed());
        assert_eq!(openai.status(), 429);
        assert_eq!(openai.headers()[RETRY_AFTER], "3");
        assert_eq!(openai.headers()[CONTENT_TYPE], "application/json");
        let v = body(openai).await;
        assert_eq!(v["error"]["code"], "shed");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["message"], message.as_str());

        let picker = ErrorFormat::Picker.respond(shed());
        assert_eq!(picker.status(), 429);
        assert_eq!(picker.headers()[RETRY_AFTER], "3");
        assert_eq!(
            body(picker).await,
            serde_json::json!({"error": "shed", "message": message})
        );
    }
}
