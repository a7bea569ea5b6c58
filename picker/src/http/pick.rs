//! `POST /v1/pick`, `ANY /v1/authz[/…]` (headers in, destination header out) and `POST /v1/done`.

use std::collections::HashMap;
use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use inferpick_schema::{Decision, DoneRequest, PickRequest, decode_json};

use super::{ApiError, MAX_DONE_BODY, MAX_PICK_BODY, authorize, read_body, require_json};
use crate::scheduler::Pick;
use crate::service::{AppState, Scope};

/// The primary endpoint, for `proxy_pass http://$var` and ORIGINAL_DST clusters.
pub const DESTINATION: HeaderName = HeaderName::from_static("x-gateway-destination-endpoint");
/// Fallback endpoints, comma-separated, best first.
pub const FALLBACKS: HeaderName = HeaderName::from_static("x-inferpick-fallbacks");
/// The decision id, for `POST /v1/done`.
pub const DECISION_ID: HeaderName = HeaderName::from_static("x-inferpick-decision-id");

/// Runs the scheduler and counts the outcome.
pub(crate) fn decide(
    state: &AppState,
    request: &PickRequest,
    explain: bool,
) -> Result<Pick, ApiError> {
    let scheduler = state.scheduler();
    let started = Instant::now();
    let now = state.now();
    let result = if explain {
        scheduler.pick_explained(state.table(), request, now)
    } else {
        scheduler.pick(state.table(), request, now)
    };
    let seconds = started.elapsed().as_secs_f64();
    // Only models the table knows become label values: unknown names are the client's to choose.
    match &result {
        Ok(p) => state
            .metrics()
            .decision(&p.model, "routed", scheduler.policy(), seconds),
        Err(e) => {
            // Shed and no-endpoint name a model some endpoint lists, except when the table is
            // empty: then the name is the client's.
            let model = match e {
                crate::scheduler::PickError::Shed { model, .. } => model.as_str(),
                crate::scheduler::PickError::NoReadyEndpoint { model, .. }
                    if !state.table().snapshot().is_empty() =>
                {
                    model.as_str()
                }
                _ => "",
            };
            state
                .metrics()
                .decision(model, e.outcome(), scheduler.policy(), seconds);
        }
    }
    Ok(result?)
}

fn refuse_invalid(state: &AppState, e: ApiError) -> ApiError {
    if matches!(
        e,
        ApiError::InvalidRequest(_)
            | ApiError::PayloadTooLarge { .. }
            | ApiError::UnsupportedMediaType(_)
    ) {
        state
            .metrics()
            .decision("", "invalid", state.scheduler().policy(), 0.0);
    }
    e
}

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

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()).filter(|s| !s.is_empty()))
            .map_err(|_| ApiError::InvalidRequest(format!("{name}: not visible ASCII"))),
    }
}

/// Builds a pick request from the gateway's headers (and `model` from a JSON body, if any).
pub(crate) fn authz_request(headers: &HeaderMap, body: &[u8]) -> Result<PickRequest, ApiError> {
    // An OpenAI body, when the gateway sends one (Envoy ext_authz with_request_body, ext_proc).
    let json = serde_json::from_slice::<serde_json::Value>(body).ok();
    let model = match header(headers, "x-gateway-model-name")? {
        Some(m) => Some(m.to_string()),
        None => json
            .as_ref()
            .and_then(|v| v.get("model")?.as_str().map(str::to_string)),
    };
    let prompt = json.as_ref().and_then(openai_prompt);
    let max_tokens = json.as_ref().and_then(|v| {
        let n = v
            .get("max_tokens")
            .or_else(|| v.get("max_completion_tokens"))?;
        u32::try_from(n.as_u64()?).ok()
    });
    let priority = header(headers, "x-inferpick-priority")?
        .map(|p| {
            p.parse::<i32>().map_err(|_| {
                ApiError::InvalidRequest(format!("x-inferpick-priority: {p:?} is not an integer"))
            })
        })
        .transpose()?;
    let candidates = header(headers, "x-gateway-destination-endpoint-subset")?.map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect()
    });
    Ok(PickRequest {
        model,
        priority,
        objective: header(headers, "x-gateway-inference-objective")?.map(str::to_string),
        session: header(headers, "x-session-id")?.map(str::to_string),
        candidates,
        prompt,
        max_tokens,
        ..PickRequest::default()
    })
}

/// The prompt text of an OpenAI completions (`prompt`) or chat (`messages[].content`) body.
fn openai_prompt(body: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    fn text(v: &Value, out: &mut String) {
        match v {
            Value::String(s) => out.push_str(s),
            // Completions take a list of prompts; chat content may be a list of typed parts.
            Value::Array(items) => items.iter().for_each(|i| match i {
                Value::Object(part) => {
                    if let Some(t) = part.get("text") {
                        text(t, out);
                    }
                }
                other => text(other, out),
            }),
            _ => {}
        }
    }
    let mut out = String::new();
    if let Some(p) = body.get("prompt") {
        text(p, &mut out);
    } else if let Some(Value::Array(messages)) = body.get("messages") {
        for m in messages {
            if let Some(c) = m.get("content") {
                text(c, &mut out);
                out.push('\n');
            }
        }
    }
    (!out.is_empty()).then_some(out)
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
    let outcome = state.table().done(id.as_u128(), state.now());
    state
        .metrics()
        .done("http", matches!(outcome, crate::table::DoneOutcome::Closed));
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod body_tests {
    use super::*;

    #[test]
    fn authz_reads_model_prompt_and_max_tokens_from_openai_bodies() {
        let chat = br#"{"model":"m","max_completion_tokens":64,"messages":[
            {"role":"system","content":"You are terse."},
            {"role":"user","content":[{"type":"text","text":"Hi"}]}]}"#;
        let r = authz_request(&HeaderMap::new(), chat).unwrap();
        assert_eq!(r.model.as_deref(), Some("m"));
        assert_eq!(r.prompt.as_deref(), Some("You are terse.\nHi\n"));
        assert_eq!(r.max_tokens, Some(64));

        let completion = br#"{"model":"m","prompt":["a","b"],"max_tokens":7}"#;
        let r = authz_request(&HeaderMap::new(), completion).unwrap();
        assert_eq!(r.prompt.as_deref(), Some("ab"));
        assert_eq!(r.max_tokens, Some(7));

        let mut headers = HeaderMap::new();
        headers.insert(
            "x-gateway-model-name",
            HeaderValue::from_static("header-wins"),
        );
        let r = authz_request(&headers, b"not json").unwrap();
        assert_eq!(r.model.as_deref(), Some("header-wins"));
        assert_eq!(r.prompt, None);
    }
}
