//! The picker's front, the same for every transport: authenticate a caller, turn a gateway's
//! headers and body into a pick request, decide (counting the outcome), close a decision. HTTP and
//! ext_proc both call it; neither calls the other.

use http::HeaderMap;
use http::header::AUTHORIZATION;
use inferpick_schema::{ChatMessage, PickRequest};

use crate::error::ApiError;
use crate::scheduler::{Pick, PickError};
use crate::state::{AppState, Scope};
use crate::table::DoneOutcome;

/// A prompt longer than this may take milliseconds to tokenize: its pick runs with the runtime
/// told that this thread blocks, so other picks move to other threads meanwhile.
const LONG_PROMPT_BYTES: usize = 16 << 10;

/// Runs the scheduler and counts the outcome.
pub fn decide(state: &AppState, request: &PickRequest, explain: bool) -> Result<Pick, ApiError> {
    let scheduler = state.scheduler();
    let now = state.now();
    let pick = || {
        if explain {
            scheduler.pick_explained(state.table(), request, now)
        } else {
            scheduler.pick(state.table(), request, now)
        }
    };
    let long = request
        .prompt
        .as_ref()
        .is_some_and(|p| p.len() > LONG_PROMPT_BYTES)
        && !scheduler.config().tokenizers.is_empty();
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    let result = if long && multi_thread {
        tokio::task::block_in_place(pick)
    } else {
        pick()
    };
    // The picker's clock is monotonic: the pick's `now` is also when it started.
    let seconds = state.now().saturating_sub(now).as_secs_f64();
    // Only models the table knows become label values: unknown names are the client's to choose.
    match &result {
        Ok(p) => state
            .metrics()
            .decision(&p.model, "routed", scheduler.policy(), seconds),
        Err(e) => {
            // Shed and no-endpoint name a model some endpoint lists, except when the table is
            // empty: then the name is the client's.
            let model = match e {
                PickError::Shed { model, .. } => model.as_str(),
                PickError::NoReadyEndpoint { model, .. }
                    if !state.table().snapshot().is_empty() =>
                {
                    model.as_str()
                }
                _ => "",
            };
            state.metrics().decision(
                model,
                crate::metrics::outcome(e),
                scheduler.policy(),
                seconds,
            );
        }
    }
    Ok(result?)
}

/// Counts a request refused before the scheduler saw it (bad body, size, type) as `invalid`.
pub fn refuse_invalid(state: &AppState, e: ApiError) -> ApiError {
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
pub fn authz_request(headers: &HeaderMap, body: &[u8]) -> Result<PickRequest, ApiError> {
    // An OpenAI body, when the gateway sends one (Envoy ext_authz with_request_body, ext_proc).
    let json = serde_json::from_slice::<serde_json::Value>(body).ok();
    let model = match header(headers, "x-gateway-model-name")? {
        Some(m) => Some(m.to_string()),
        None => json
            .as_ref()
            .and_then(|v| v.get("model")?.as_str().map(str::to_string)),
    };
    let prompt = json.as_ref().and_then(openai_prompt);
    let messages = json.as_ref().and_then(openai_messages);
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
        messages,
        max_tokens,
        ..PickRequest::default()
    })
}

/// A chat body's messages, each with its text (string content, or its text parts joined by
/// newlines; `None` for a message without text).
fn openai_messages(body: &serde_json::Value) -> Option<Vec<ChatMessage>> {
    use serde_json::Value;
    let Some(Value::Array(messages)) = body.get("messages") else {
        return None;
    };
    let messages: Vec<ChatMessage> = messages
        .iter()
        .map(|m| ChatMessage {
            role: m
                .get("role")
                .and_then(Value::as_str)
                .unwrap_or("user")
                .to_string(),
            content: match m.get("content") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Array(parts)) => Some(
                    parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join("\n"),
                ),
                _ => None,
            },
        })
        .collect();
    (!messages.is_empty()).then_some(messages)
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

/// Checks `Authorization: Bearer <token>` when `scope` has a token configured.
pub fn authorize(state: &AppState, headers: &HeaderMap, scope: Scope) -> Result<(), ApiError> {
    state.with_token(scope, |expected| {
        let Some(expected) = expected else {
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
    })
}

/// Compares without an early exit, so timing does not reveal how much of a token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Closes decision `id` (a request finished), counting it under `source` (`http`, `extproc`);
/// `cached_tokens`, when the engine's usage said it, is compared with what the pick predicted.
pub fn done(
    state: &AppState,
    id: uuid::Uuid,
    source: &'static str,
    cached_tokens: Option<u32>,
) -> DoneOutcome {
    let (outcome, predicted) = state.table().close(id.as_u128(), state.now());
    let metrics = state.metrics();
    metrics.done(source, matches!(outcome, DoneOutcome::Closed));
    if let (Some(predicted), Some(actual)) = (predicted, cached_tokens) {
        metrics.prefix_prediction(predicted, actual);
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn authz_reads_model_prompt_and_max_tokens_from_openai_bodies() {
        let chat = br#"{"model":"m","max_completion_tokens":64,"messages":[
            {"role":"system","content":"You are terse."},
            {"role":"user","content":[{"type":"text","text":"Hi"}]}]}"#;
        let r = authz_request(&HeaderMap::new(), chat).unwrap();
        assert_eq!(r.model.as_deref(), Some("m"));
        assert_eq!(r.prompt.as_deref(), Some("You are terse.\nHi\n"));
        assert_eq!(r.max_tokens, Some(64));
        let messages = r.messages.unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[1].role, "user");
        assert_eq!(messages[1].content.as_deref(), Some("Hi"));
        let tool = br#"{"messages":[{"role":"assistant","content":null,"tool_calls":[]}]}"#;
        let r = authz_request(&HeaderMap::new(), tool).unwrap();
        assert_eq!(r.messages.unwrap()[0].content, None);

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
