//! `POST /v1/pick`, `ANY /v1/authz[/…]` (headers in, destination header out) and `POST /v1/done`.
//!
//! These are the picker's hot path: the handlers borrow the request's headers instead of having
//! axum clone them, and a decision is written straight from the scheduler's [`Pick`].

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, StatusCode, Uri};
use inferpick_schema::{DoneRequest, PickRequest, decode_json};
use serde::Serialize;

use super::error::ErrorFormat;
use super::{MAX_DONE_BODY, MAX_PICK_BODY, read_body, require_json};
use crate::error::ApiError;
use crate::front::{authorize, decide, refuse_invalid};
use crate::openai;
use crate::scheduler::Pick;
use crate::state::{AppState, Scope};

/// The primary endpoint, for `proxy_pass http://$var` and ORIGINAL_DST clusters.
pub const DESTINATION: HeaderName = HeaderName::from_static("x-gateway-destination-endpoint");
/// Fallback endpoints, comma-separated, best first.
pub const FALLBACKS: HeaderName = HeaderName::from_static("x-inferpick-fallbacks");
/// The decision id, for `POST /v1/done`.
pub const DECISION_ID: HeaderName = HeaderName::from_static("x-inferpick-decision-id");

/// `?explain=…`, read as axum's `Query` extractor reads it; a request without a query string
/// (nearly all of them) has nothing to parse.
fn explain_flag(uri: &Uri) -> Result<bool, ApiError> {
    if uri.query().is_none() {
        return Ok(false);
    }
    // Cannot fail: any query string decodes into a map of strings.
    let Query(query) = Query::<HashMap<String, String>>::try_from_uri(uri)
        .map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    match query.get("explain").map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(other) => Err(ApiError::InvalidRequest(format!(
            "explain: {other:?} is not a boolean (use explain=true)"
        ))),
    }
}

/// Decodes a pick body. `serde_json` alone first: `decode_json`'s field paths cost a third of
/// the decode (430 ns against 270 ns for a 700-byte chat request, measured) and only matter in
/// the error message, so a body it refuses is decoded again by `decode_json` for its verdict.
fn decode_pick(bytes: &[u8]) -> Result<PickRequest, ApiError> {
    serde_json::from_slice(bytes)
        .or_else(|_| decode_json(bytes).map_err(|e| ApiError::InvalidRequest(e.to_string())))
}

pub(super) async fn pick(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    authorize(&state, headers, Scope::Pick)?;
    let request = async {
        let explain = explain_flag(&parts.uri)?;
        require_json(headers)?;
        let bytes = read_body(&state, headers, body, MAX_PICK_BODY).await?;
        Ok::<_, ApiError>((decode_pick(&bytes)?, explain))
    }
    .await;
    let (request, explain) = request.map_err(|e| refuse_invalid(&state, e))?;
    Ok(decision_response(decide(&state, &request, explain)?))
}

/// A [`Decision`](inferpick_schema::Decision) borrowed from a [`Pick`]: the same fields in the
/// same order, so it serializes to the same bytes without copying each string first.
#[derive(Serialize)]
struct DecisionView<'p> {
    endpoint: &'p str,
    fallbacks: Fallbacks<'p>,
    decision_id: &'p str,
    model: &'p str,
    pod: Option<&'p str>,
    policy: &'static str,
}

struct Fallbacks<'p>(&'p [Arc<str>]);

impl Serialize for Fallbacks<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|f| &**f))
    }
}

/// The JSON response `Json(pick.into_decision())` gives, written from the pick itself: 200 ns
/// against 380 ns per decision (measured), the difference being the strings copied into a
/// `Decision` and a body buffer grown twice. An explained pick, rare and large, still goes
/// through `Decision`.
fn decision_response(pick: Pick) -> Response {
    if pick.explain.is_some() {
        return Json(pick.into_decision()).into_response();
    }
    let mut id = uuid::Uuid::encode_buffer();
    let view = DecisionView {
        endpoint: &pick.endpoint,
        fallbacks: Fallbacks(&pick.fallbacks),
        decision_id: pick.decision_id.hyphenated().encode_lower(&mut id),
        model: &pick.model,
        pod: pick.pod.as_deref(),
        policy: pick.policy.as_str(),
    };
    let mut body = Vec::with_capacity(256);
    match serde_json::to_writer(&mut body, &view) {
        Ok(()) => {
            let mut response = Response::new(Body::from(body));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        // Strings into a Vec: cannot fail, but answer as `Json` would if it did.
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `/v1/authz`: refusals in the picker's shape, or in OpenAI's when the gateway asks for it
/// with `x-inferpick-error-format: openai` (its clients are LLM clients, who get the body).
pub(super) async fn authz(State(state): State<AppState>, request: Request) -> Response {
    let format = match ErrorFormat::of(request.headers()) {
        Ok(format) => format,
        Err(e) => return refuse_invalid(&state, e).into_response(),
    };
    authz_decision(&state, request)
        .await
        .unwrap_or_else(|e| format.respond(e))
}

async fn authz_decision(state: &AppState, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    authorize(state, headers, Scope::Pick)?;
    let request = async {
        let bytes = read_body(state, headers, body, MAX_PICK_BODY).await?;
        openai::pick_request(headers, &bytes)
    }
    .await
    .map_err(|e| refuse_invalid(state, e))?;
    let pick = decide(state, &request, false)?;
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
    request: Request,
) -> Result<StatusCode, ApiError> {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    authorize(&state, headers, Scope::Pick)?;
    require_json(headers)?;
    let bytes = read_body(&state, headers, body, MAX_DONE_BODY).await?;
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
    crate::front::done(&state, id, "http", done.cached_tokens);
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::Policy;

    fn pick(fallbacks: &[&str], pod: Option<&str>, policy: Policy) -> Pick {
        Pick {
            endpoint: "10.0.0.7:8000".into(),
            fallbacks: fallbacks.iter().map(|f| Arc::from(*f)).collect(),
            decision_id: uuid::Uuid::from_u128(0x0193_a1b2_c3d4_7e5f_8a9b_0c1d_2e3f_4a5b),
            model: "llama-3.1-8b/\"quoted\" \u{e9}\n".into(),
            pod: pod.map(str::to_string),
            policy,
            priority: 0,
            explain: None,
        }
    }

    #[tokio::test]
    async fn a_decision_is_written_byte_for_byte_as_json_of_decision_would_write_it() {
        let cases = [
            pick(&[], None, Policy::Inferpick),
            pick(&["10.0.0.8:8000"], Some("vllm-0"), Policy::Gie),
            pick(
                &["10.0.0.8:8000", "[fd00::1]:8000"],
                Some("pod \"x\""),
                Policy::RoundRobin,
            ),
        ];
        for p in cases {
            let expected = Json(p.clone().into_decision()).into_response();
            let written = decision_response(p);
            assert_eq!(written.status(), expected.status());
            assert_eq!(written.headers(), expected.headers());
            let body = |r: Response| axum::body::to_bytes(r.into_body(), usize::MAX);
            let (written, expected) = (body(written).await.unwrap(), body(expected).await.unwrap());
            assert_eq!(written, expected, "{}", String::from_utf8_lossy(&written));
        }
    }

    #[test]
    fn a_body_serde_json_refuses_gets_decode_json_verdict() {
        // Trailing bytes: serde_json::from_slice refuses them, decode_json (what the contract
        // was written against) does not.
        let trailing = decode_pick(br#"{"model":"m"} x"#).unwrap();
        assert_eq!(trailing.model.as_deref(), Some("m"));
        let ApiError::InvalidRequest(message) =
            decode_pick(br#"{"model":"m","max_tokens":-1}"#).unwrap_err()
        else {
            panic!("not invalid_request");
        };
        let expected = decode_json::<PickRequest>(br#"{"model":"m","max_tokens":-1}"#)
            .unwrap_err()
            .to_string();
        assert_eq!(message, expected);
        assert!(message.contains("max_tokens"), "{message}");
    }
}
