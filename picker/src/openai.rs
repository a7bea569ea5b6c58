//! OpenAI requests and refusals, the same on every path an LLM client's request takes to the
//! picker: Envoy ext_authz (`/v1/authz`), Envoy ext_proc and the lab's built-in gateway.
//!
//! [`pick_request`] reads an OpenAI completions or chat body and the gateway headers of the
//! contract into a [`PickRequest`]; [`error_body`] writes a refusal as OpenAI clients parse it
//! (`{"error": {"message", "type", "param", "code"}}`), so the SDKs show the picker's message.
//! The picker's own JSON API (`/v1/pick`) takes a `PickRequest` as it is and answers refusals in
//! its own shape; it does not come through here.

use http::HeaderMap;
use inferpick_schema::{ChatMessage, PickRequest};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// The gateway's model header; it wins over `model` in the body.
pub const MODEL_HEADER: &str = "x-gateway-model-name";
/// A named objective from the picker's config.
pub const OBJECTIVE_HEADER: &str = "x-gateway-inference-objective";
/// An integer priority; negative is sheddable.
pub const PRIORITY_HEADER: &str = "x-inferpick-priority";
/// The session affinity key.
pub const SESSION_HEADER: &str = "x-session-id";
/// The candidate endpoints, comma-separated.
pub const SUBSET_HEADER: &str = "x-gateway-destination-endpoint-subset";

/// The pick request for an OpenAI request: its gateway headers and its body.
///
/// A body that is not a JSON object (none, or not JSON at all) contributes nothing: the engine
/// judges it. A JSON object whose known fields have the wrong shape is refused, naming the field.
/// Read from the body: `model` (a base model or an adapter's name), chat `messages` (string
/// content, text parts, or none), completions `prompt` (text, texts, token ids, lists of token
/// ids), `max_tokens` / `max_completion_tokens` (the latter wins), and `n`.
///
/// `max_tokens` in the result is the output the request asks for in all: per choice, times
/// `n` choices, times the prompts of a batch. A batch is routed by its first prompt.
pub fn pick_request(headers: &HeaderMap, body: &[u8]) -> Result<PickRequest, ApiError> {
    let mut request = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(body)) => body_request(&body)?,
        _ => PickRequest::default(),
    };
    if let Some(model) = header(headers, MODEL_HEADER)? {
        request.model = Some(model.to_string());
    }
    request.objective = header(headers, OBJECTIVE_HEADER)?.map(str::to_string);
    request.priority = header(headers, PRIORITY_HEADER)?
        .map(|p| {
            p.parse::<i32>()
                .map_err(|_| invalid(format!("{PRIORITY_HEADER}: {p:?} is not an integer")))
        })
        .transpose()?;
    request.session = header(headers, SESSION_HEADER)?.map(str::to_string);
    request.candidates = header(headers, SUBSET_HEADER)?.map(split_list);
    Ok(request)
}

/// A comma-separated list, blanks dropped.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect()
}

/// A header's trimmed value; `None` when absent or blank.
fn header<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()).filter(|s| !s.is_empty()))
            .map_err(|_| invalid(format!("{name}: not visible ASCII"))),
    }
}

fn invalid(message: String) -> ApiError {
    ApiError::InvalidRequest(message)
}

/// A field that is absent or `null`.
fn field<'b>(body: &'b Map<String, Value>, name: &str) -> Option<&'b Value> {
    body.get(name).filter(|v| !v.is_null())
}

/// The fields of an OpenAI body.
fn body_request(body: &Map<String, Value>) -> Result<PickRequest, ApiError> {
    let model = match field(body, "model") {
        None => None,
        Some(Value::String(m)) => Some(m.clone()),
        Some(_) => return Err(invalid("model: expected a string".into())),
    };
    let messages = field(body, "messages")
        .map(messages)
        .transpose()?
        .filter(|m| !m.is_empty());
    let prompt = field(body, "prompt").map(prompt).transpose()?;
    let per_choice = match field(body, "max_completion_tokens") {
        Some(v) => Some(count(v, "max_completion_tokens")?),
        None => field(body, "max_tokens")
            .map(|v| count(v, "max_tokens"))
            .transpose()?,
    };
    let choices = match field(body, "n") {
        None => 1,
        Some(v) => match count(v, "n")? {
            0 => return Err(invalid("n: must be at least 1".into())),
            n => n,
        },
    };
    let sequences = prompt.as_ref().map_or(1, |p| p.sequences);
    let chat_text = messages.as_deref().and_then(chat_text);
    let (text, token_ids) = match prompt {
        Some(p) => (p.text, p.token_ids),
        None => (chat_text, None),
    };
    Ok(PickRequest {
        model,
        prompt: text,
        messages,
        prompt_token_ids: token_ids,
        max_tokens: per_choice.map(|t| t.saturating_mul(choices).saturating_mul(sequences)),
        ..PickRequest::default()
    })
}

/// A non-negative integer that fits a `u32`.
fn count(v: &Value, name: &str) -> Result<u32, ApiError> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| invalid(format!("{name}: {v} is not a non-negative integer")))
}

/// Chat messages, each with its role and text (string content, or its text parts joined by
/// newlines, as engines join them; `None` without text, such as an assistant's tool calls).
fn messages(v: &Value) -> Result<Vec<ChatMessage>, ApiError> {
    let Value::Array(list) = v else {
        return Err(invalid("messages: expected a list of messages".into()));
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let Value::Object(m) = m else {
                return Err(invalid(format!("messages[{i}]: expected an object")));
            };
            let role = match field(m, "role") {
                None => "user".to_string(),
                Some(Value::String(r)) => r.clone(),
                Some(_) => return Err(invalid(format!("messages[{i}].role: expected a string"))),
            };
            let content = field(m, "content")
                .map(|c| content(c, i))
                .transpose()?
                .flatten();
            Ok(ChatMessage { role, content })
        })
        .collect()
}

/// One message's text: a string, or the texts of its `text` parts (other parts, such as images,
/// carry no text).
fn content(v: &Value, message: usize) -> Result<Option<String>, ApiError> {
    let parts = match v {
        Value::String(s) => return Ok(Some(s.clone())),
        Value::Array(parts) => parts,
        _ => {
            return Err(invalid(format!(
                "messages[{message}].content: expected a string, a list of content parts or null"
            )));
        }
    };
    let mut texts = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let at = || format!("messages[{message}].content[{j}]");
        let Value::Object(part) = part else {
            return Err(invalid(format!("{}: expected a content part object", at())));
        };
        if part.get("type").and_then(Value::as_str) != Some("text") {
            continue;
        }
        match part.get("text") {
            Some(Value::String(t)) => texts.push(t.as_str()),
            _ => return Err(invalid(format!("{}.text: expected a string", at()))),
        }
    }
    Ok((!texts.is_empty()).then(|| texts.join("\n")))
}

/// The text the approximate prefix index reads from a chat: each message's text on its own line.
fn chat_text(messages: &[ChatMessage]) -> Option<String> {
    let mut out = String::new();
    for text in messages.iter().filter_map(|m| m.content.as_deref()) {
        out.push_str(text);
        out.push('\n');
    }
    (!out.is_empty()).then_some(out)
}

/// A completions `prompt`: the first (or only) prompt as text or token ids, and how many
/// prompts the batch holds.
#[derive(Debug, PartialEq)]
struct Prompt {
    text: Option<String>,
    token_ids: Option<Vec<u32>>,
    sequences: u32,
}

const PROMPT_SHAPES: &str =
    "expected a string, a list of strings, a list of token ids or a list of lists of token ids";

fn prompt(v: &Value) -> Result<Prompt, ApiError> {
    let one = |text, token_ids| Prompt {
        text,
        token_ids,
        sequences: 1,
    };
    let list = match v {
        Value::String(s) => return Ok(one(Some(s.clone()), None)),
        Value::Array(list) => list,
        _ => return Err(invalid(format!("prompt: {PROMPT_SHAPES}"))),
    };
    let Some(first) = list.first() else {
        return Err(invalid("prompt: an empty list".into()));
    };
    let sequences = u32::try_from(list.len()).unwrap_or(u32::MAX);
    match first {
        Value::Number(_) => Ok(one(None, Some(token_ids(list, "prompt")?))),
        Value::String(s) => {
            if let Some(i) = list.iter().position(|p| !p.is_string()) {
                return Err(invalid(format!(
                    "prompt[{i}]: expected a string, as prompt[0]"
                )));
            }
            Ok(Prompt {
                text: Some(s.clone()),
                token_ids: None,
                sequences,
            })
        }
        Value::Array(ids) => {
            for (i, p) in list.iter().enumerate() {
                match p {
                    Value::Array(ids) => {
                        token_ids(ids, &format!("prompt[{i}]"))?;
                    }
                    _ => {
                        return Err(invalid(format!(
                            "prompt[{i}]: expected a list of token ids, as prompt[0]"
                        )));
                    }
                }
            }
            Ok(Prompt {
                text: None,
                token_ids: Some(token_ids(ids, "prompt[0]")?),
                sequences,
            })
        }
        _ => Err(invalid(format!("prompt: {PROMPT_SHAPES}"))),
    }
}

/// A non-empty list of token ids.
fn token_ids(list: &[Value], name: &str) -> Result<Vec<u32>, ApiError> {
    if list.is_empty() {
        return Err(invalid(format!("{name}: an empty list of token ids")));
    }
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            t.as_u64()
                .and_then(|t| u32::try_from(t).ok())
                .ok_or_else(|| invalid(format!("{name}[{i}]: {t} is not a token id")))
        })
        .collect()
}

/// The OpenAI error `type` for a refusal's HTTP status, as OpenAI's API names them.
pub fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    }
}

/// A refusal as OpenAI clients read it: `{"error": {"message", "type", "param": null, "code"}}`,
/// `code` being the picker's (`unknown_model`, `shed`, `no_ready_endpoint`, …).
pub fn error_body(status: u16, code: &str, message: &str) -> Vec<u8> {
    let body = serde_json::json!({
        "error": {
            "message": message,
            "type": error_type(status),
            "param": null,
            "code": code,
        }
    });
    serde_json::to_vec(&body).expect("a JSON value serializes")
}

/// [`error_body`] for one of the picker's refusals.
pub fn refusal_body(e: &ApiError) -> Vec<u8> {
    error_body(e.status().as_u16(), e.code(), &e.to_string())
}

#[cfg(test)]
mod tests;
