//! `POST /v1/pick`, `ANY /v1/authz[/…]` (headers in, destination header out) and `POST /v1/done`.

use std::collections::HashMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use inferpick_schema::{Decision, DoneRequest, PickRequest, decode_json};

use super::{MAX_DONE_BODY, MAX_PICK_BODY, read_body, require_json};
use crate::error::ApiError;
use crate::front::{authorize, authz_request, decide, refuse_invalid};
use crate::state::{AppState, Scope};

/// The primary endpoint, for `proxy_pass http://$var` and ORIGINAL_DST clusters.
pub const DESTINATION: HeaderName = HeaderName::from_static("x-gateway-destination-endpoint");
/// Fallback endpoints, comma-separated, best first.
pub const FALLBACKS: HeaderName = HeaderName::from_static("x-inferpick-fallbacks");
/// The decision id, for `POST /v1/done`.
pub const DECISION_ID: HeaderName = HeaderName::from_static("x-inferpick-decision-id");

fn explain_flag(query: &HashMap<String, String>) -> Result<bool, ApiError> {
    match query.get("explain").map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(other) => Err(ApiError::InvalidRequest(format!(
            "explain: {other:?} is not a boolean (use explain=true)"
        ))),
    }
}

pub(super) async fn pick(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Decision>, ApiError> {
    authorize(&state, &headers, Scope::Pick)?;
    let request = async {
        let explain = explain_flag(&query)?;
        require_json(&headers)?;
        let bytes = read_body(&state, &headers, body, MAX_PICK_BODY).await?;
        let request: PickRequest =
            decode_json(&bytes).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
        Ok::<_, ApiError>((request, explain))
    }
    .await;
    let (request, explain) = request.map_err(|e| refuse_invalid(&state, e))?;
    Ok(Json(decide(&state, &request, explain)?.into_decision()))
}

pub(super) async fn authz(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Pick)?;
    let request = async {
        let bytes = read_body(&state, &headers, body, MAX_PICK_BODY).await?;
        authz_request(&headers, &bytes)
    }
    .await
    .map_err(|e| refuse_invalid(&state, e))?;
    let pick = decide(&state, &request, false)?;
    let value = |s: &str| {
        HeaderValue::from_str(s).map_err(|_| {
            ApiError::InvalidRequest(format!("endpoint {s:?} cannot be a header value"))
        })
    };
    let fallbacks: Vec<&str> = pick.fallbacks.iter().map(|f| &**f).collect();
    let mut response = StatusCode::OK.into_response();
    let h = response.headers_mut();
    h.insert(DESTINATION, value(&pick.endpoint)?);
    h.insert(FALLBACKS, value(&fallbacks.join(","))?);
    h.insert(DECISION_ID, value(&pick.decision_id.to_string())?);
    Ok(response)
}

pub(super) async fn done(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    authorize(&state, &headers, Scope::Pick)?;
    require_json(&headers)?;
    let bytes = read_body(&state, &headers, body, MAX_DONE_BODY).await?;
    let done: DoneRequest =
        decode_json(&bytes).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let id = uuid::Uuid::parse_str(&done.decision_id).map_err(|_| {
        ApiError::InvalidRequest(format!(
            "decision_id: {:?} is not a decision id (a UUID from a decision)",
            done.decision_id
        ))
    })?;
    if let Some(ttft) = done.ttft_ms
        && !(ttft.is_finite() && ttft >= 0.0)
    {
        return Err(ApiError::InvalidRequest(format!(
            "ttft_ms: {ttft}: must be a finite, non-negative number"
        )));
    }
    // An unknown id is not an error: the decision may have been closed already or dropped for memory.
    crate::front::done(&state, id, "http");
    Ok(StatusCode::NO_CONTENT)
}
