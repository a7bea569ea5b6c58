//! Reading an OpenAI request body as vLLM reads it: the prompts (a completions `prompt` may be a
//! string, a list of strings, token ids or lists of token ids; chat `content` may be a string, a
//! list of typed parts, or null on an assistant turn that called tools), `n`, the token limit and
//! the streaming options. Every refusal names the field.

use axum::body::Bytes;
use serde_json::Value;

use super::openai::ApiError;

/// Which OpenAI endpoint a body was posted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Api {
    /// `/v1/completions`.
    Completions,
    /// `/v1/chat/completions`.
    Chat,
}

/// One prompt of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Prompt {
    /// Text, tokenized by the emulator.
    Text(String),
    /// Token ids, given to the engine as they are.
    Tokens(Vec<u32>),
}

/// The parts of a request body the emulator uses.
#[derive(Debug)]
pub(super) struct Parsed {
    pub model: String,
    /// One for chat; one per entry of a completions batch.
    pub prompts: Vec<Prompt>,
    /// Choices per prompt.
    pub n: u32,
    pub max_tokens: u32,
    pub stream: bool,
    pub usage_in_stream: bool,
}

/// The most choices one prompt may ask for.
const MAX_N: u64 = 128;

pub(super) fn parse(body: &Bytes, api: Api) -> Result<Parsed, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("request body is not valid JSON: {e}")))?;
    let model = v
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad("model: required, a string"))?
        .to_string();
    let prompts = match api {
        Api::Completions => completion_prompts(v.get("prompt"))?,
        Api::Chat => vec![Prompt::Text(chat_text(v.get("messages"))?)],
    };
    let n = match v.get("n") {
        None | Some(Value::Null) => 1,
        Some(x) => x
            .as_u64()
            .filter(|n| (1..=MAX_N).contains(n))
            .ok_or_else(|| ApiError::bad(format!("n: must be an integer from 1 to {MAX_N}")))?
            as u32,
    };
    let max_key = ["max_completion_tokens", "max_tokens"]
        .into_iter()
        .find(|k| v.get(*k).is_some_and(|x| !x.is_null()));
    let max_tokens = match max_key {
        Some(k) => v[k]
            .as_u64()
            .filter(|n| (1..=1_000_000).contains(n))
            .ok_or_else(|| ApiError::bad(format!("{k}: must be an integer from 1 to 1000000")))?
            as u32,
        None if api == Api::Completions => 16,
        None => 256,
    };
    let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let usage_in_stream = v
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Parsed {
        model,
        prompts,
        n,
        max_tokens,
        stream,
        usage_in_stream,
    })
}

const PROMPT_SHAPES: &str = "prompt: required, a string, a list of strings, a list of token ids, or a list of lists of token ids";

/// The prompts of a completions body: a batch when `prompt` is a list of prompts.
fn completion_prompts(prompt: Option<&Value>) -> Result<Vec<Prompt>, ApiError> {
    let items = match prompt {
        Some(Value::String(s)) => return Ok(vec![Prompt::Text(s.clone())]),
        Some(Value::Array(items)) if !items.is_empty() => items,
        _ => return Err(ApiError::bad(PROMPT_SHAPES)),
    };
    if items.iter().all(Value::is_number) {
        return Ok(vec![Prompt::Tokens(token_ids(items, "prompt")?)]);
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => Ok(Prompt::Text(s.clone())),
            Value::Array(ids) if !ids.is_empty() => {
                token_ids(ids, &format!("prompt[{i}]")).map(Prompt::Tokens)
            }
            _ => Err(ApiError::bad(format!(
                "prompt[{i}]: a string or a non-empty list of token ids ({PROMPT_SHAPES})"
            ))),
        })
        .collect()
}

fn token_ids(items: &[Value], field: &str) -> Result<Vec<u32>, ApiError> {
    items
        .iter()
        .enumerate()
        .map(|(i, t)| {
            t.as_u64()
                .and_then(|t| u32::try_from(t).ok())
                .ok_or_else(|| ApiError::bad(format!("{field}[{i}]: {t} is not a token id")))
        })
        .collect()
}

/// The text a chat body's `messages` make: each message's text, then a newline (whitespace, so
/// the tokens of consecutive messages stay apart).
pub(super) fn chat_text(messages: Option<&Value>) -> Result<String, ApiError> {
    let messages = messages
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::bad("messages: required, a non-empty list"))?;
    let mut text = String::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad(format!("messages[{i}].role: required, a string")))?;
        match m.get("content") {
            Some(Value::String(s)) => text.push_str(s),
            Some(Value::Array(parts)) => push_parts(&mut text, parts, i)?,
            // An assistant turn that only called tools has no content.
            None | Some(Value::Null) if role == "assistant" => {}
            _ => {
                return Err(ApiError::bad(format!(
                    "messages[{i}].content: required, a string or a list of parts"
                )));
            }
        }
        push_tool_calls(&mut text, m.get("tool_calls"));
        text.push('\n');
    }
    Ok(text)
}

/// The text of content parts, a newline apart; a text-only model refuses other kinds.
fn push_parts(text: &mut String, parts: &[Value], i: usize) -> Result<(), ApiError> {
    for (j, p) in parts.iter().enumerate() {
        let kind = p.get("type").and_then(Value::as_str).unwrap_or("text");
        match (kind, p.get("text").and_then(Value::as_str)) {
            ("text", Some(t)) => {
                if j > 0 {
                    text.push('\n');
                }
                text.push_str(t);
            }
            ("text", None) => {
                return Err(ApiError::bad(format!(
                    "messages[{i}].content[{j}].text: required, a string"
                )));
            }
            (other, _) => {
                return Err(ApiError::bad(format!(
                    "messages[{i}].content[{j}]: parts of type {other:?} are not supported by this text-only model"
                )));
            }
        }
    }
    Ok(())
}

/// A tool call's name and arguments, which a chat template renders into the prompt.
fn push_tool_calls(text: &mut String, calls: Option<&Value>) {
    for call in calls.and_then(Value::as_array).into_iter().flatten() {
        for key in ["name", "arguments"] {
            if let Some(s) = call
                .pointer(&format!("/function/{key}"))
                .and_then(Value::as_str)
            {
                text.push('\n');
                text.push_str(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn completion(body: Value) -> Result<Parsed, ApiError> {
        parse(&Bytes::from(body.to_string()), Api::Completions)
    }

    #[test]
    fn completions_prompts_are_strings_token_ids_or_batches_of_either() {
        let p = |prompt: Value| completion(json!({"model": "m", "prompt": prompt}));
        assert_eq!(
            p(json!("a b")).unwrap().prompts,
            [Prompt::Text("a b".into())]
        );
        assert_eq!(
            p(json!([5, 6, 7])).unwrap().prompts,
            [Prompt::Tokens(vec![5, 6, 7])]
        );
        assert_eq!(
            p(json!([[1, 2], [3]])).unwrap().prompts,
            [Prompt::Tokens(vec![1, 2]), Prompt::Tokens(vec![3])]
        );
        assert_eq!(
            p(json!(["x", "y"])).unwrap().prompts,
            [Prompt::Text("x".into()), Prompt::Text("y".into())]
        );
        let err = p(json!([1, -2])).unwrap_err().message;
        assert!(err.contains("prompt[1]") && err.contains("-2"), "{err}");
        let err = p(json!([])).unwrap_err().message;
        assert!(err.contains("token ids"), "{err}");
        let err = p(json!(["x", 3])).unwrap_err().message;
        assert!(err.contains("prompt[1]"), "{err}");
    }

    #[test]
    fn n_defaults_to_one_and_is_bounded() {
        let n = |n: Value| completion(json!({"model": "m", "prompt": "x", "n": n}));
        assert_eq!(n(Value::Null).unwrap().n, 1);
        assert_eq!(n(json!(2)).unwrap().n, 2);
        assert!(n(json!(0)).unwrap_err().message.starts_with("n:"));
    }

    #[test]
    fn chat_text_reads_parts_and_tool_call_turns_and_names_bad_messages() {
        let text = chat_text(Some(&json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null,
             "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ])))
        .unwrap();
        assert_eq!(text, "be brief\na\nb\n\nf\n{}\n42\n");
        let err = chat_text(Some(&json!([{"role": "user", "content": null}])))
            .unwrap_err()
            .message;
        assert!(err.starts_with("messages[0].content"), "{err}");
        let err = chat_text(Some(&json!([{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "x"}}]}])))
        .unwrap_err()
        .message;
        assert!(err.contains("image_url"), "{err}");
    }
}
