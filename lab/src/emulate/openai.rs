//! The OpenAI-compatible HTTP surface of an emulated server: `/v1/completions`,
//! `/v1/chat/completions` (streaming SSE and not), `/v1/models`, `/metrics`, `/health`.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::stream;
use serde_json::{Value, json};

use super::{EmulateError, Emulator, Progress, Submission, exposition};

/// The emulator's routes.
pub fn router(emulator: Emulator) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { StatusCode::OK }))
        .with_state(emulator)
}

/// An error in vLLM's OpenAI-server shape.
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn bad(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "BadRequestError",
            message: message.into(),
        }
    }
}

impl From<EmulateError> for ApiError {
    fn from(e: EmulateError) -> Self {
        match e {
            EmulateError::UnknownModel(_) => Self {
                status: StatusCode::NOT_FOUND,
                kind: "NotFoundError",
                message: e.to_string(),
            },
            EmulateError::TooLong(_) | EmulateError::Tokenize(_) => Self::bad(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "object": "error",
            "message": self.message,
            "type": self.kind,
            "param": null,
            "code": self.status.as_u16(),
        });
        (self.status, axum::Json(body)).into_response()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Completions,
    Chat,
}

/// The parts of a request body the emulator uses.
struct Parsed {
    model: String,
    prompt: String,
    max_tokens: u32,
    stream: bool,
    usage_in_stream: bool,
}

fn parse(body: &Bytes, api: Api) -> Result<Parsed, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("request body is not valid JSON: {e}")))?;
    let model = v
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad("model: required, a string"))?
        .to_string();
    let prompt = match api {
        Api::Completions => match v.get("prompt") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) if parts.iter().all(Value::is_string) => parts
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(""),
            _ => {
                return Err(ApiError::bad(
                    "prompt: required, a string or a list of strings",
                ));
            }
        },
        Api::Chat => {
            let messages = v
                .get("messages")
                .and_then(Value::as_array)
                .filter(|m| !m.is_empty())
                .ok_or_else(|| ApiError::bad("messages: required, a non-empty list"))?;
            let mut text = String::new();
            for (i, m) in messages.iter().enumerate() {
                match m.get("content") {
                    Some(Value::String(s)) => text.push_str(s),
                    Some(Value::Array(parts)) => {
                        for p in parts {
                            if let Some(t) = p.get("text").and_then(Value::as_str) {
                                text.push_str(t);
                            }
                        }
                    }
                    _ => {
                        return Err(ApiError::bad(format!(
                            "messages[{i}].content: required, a string or a list of parts"
                        )));
                    }
                }
            }
            text
        }
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
        prompt,
        max_tokens,
        stream,
        usage_in_stream,
    })
}

async fn completions(State(em): State<Emulator>, body: Bytes) -> Response {
    generate(em, body, Api::Completions).await
}

async fn chat_completions(State(em): State<Emulator>, body: Bytes) -> Response {
    generate(em, body, Api::Chat).await
}

/// The text of output token `i` (a short word, so counts can be checked).
fn token_text(i: u32) -> &'static str {
    if i == 0 { "Hello" } else { " world" }
}

fn created() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn generate(em: Emulator, body: Bytes, api: Api) -> Response {
    let p = match parse(&body, api) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let adapter = if p.model == em.config().model {
        None
    } else {
        Some(p.model.clone())
    };
    let (id, prompt_tokens, rx) = match em.submit(Submission {
        prompt: p.prompt,
        max_tokens: p.max_tokens,
        adapter,
    }) {
        Ok(x) => x,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let rid = match api {
        Api::Completions => format!("cmpl-{id}"),
        Api::Chat => format!("chatcmpl-{id}"),
    };
    if p.stream {
        stream_response(rx, rid, p.model, api, prompt_tokens, p.usage_in_stream)
    } else {
        whole_response(rx, rid, p.model, api, prompt_tokens).await
    }
}

async fn whole_response(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Progress>,
    rid: String,
    model: String,
    api: Api,
    prompt_tokens: u32,
) -> Response {
    let mut n = 0;
    let mut cached = 0;
    loop {
        match rx.recv().await {
            Some(Progress::Cached(c)) => cached = c,
            Some(Progress::Tokens(t)) => n = t,
            Some(Progress::Done) => break,
            None => {
                return (StatusCode::SERVICE_UNAVAILABLE, "the engine stopped").into_response();
            }
        }
    }
    let text: String = (0..n).map(token_text).collect();
    let usage = usage_of(prompt_tokens, n, cached);
    let body = match api {
        Api::Completions => json!({
            "id": rid, "object": "text_completion", "created": created(), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": "length"}],
            "usage": usage,
        }),
        Api::Chat => json!({
            "id": rid, "object": "chat.completion", "created": created(), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}],
            "usage": usage,
        }),
    };
    axum::Json(body).into_response()
}

fn chunk(rid: &str, model: &str, api: Api, from: u32, to: u32, finish: bool) -> Value {
    let text: String = (from..to).map(token_text).collect();
    let reason = if finish { json!("length") } else { Value::Null };
    match api {
        Api::Completions => json!({
            "id": rid, "object": "text_completion", "created": created(), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": reason}],
        }),
        Api::Chat => {
            let delta = if from == 0 {
                json!({"role": "assistant", "content": text})
            } else {
                json!({"content": text})
            };
            json!({
                "id": rid, "object": "chat.completion.chunk", "created": created(), "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": reason}],
            })
        }
    }
}

/// The `usage` object, with vLLM's `prompt_tokens_details.cached_tokens`.
fn usage_of(prompt_tokens: u32, completion_tokens: u32, cached_tokens: u32) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    })
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

fn stream_response(
    rx: tokio::sync::mpsc::UnboundedReceiver<Progress>,
    rid: String,
    model: String,
    api: Api,
    prompt_tokens: u32,
    usage: bool,
) -> Response {
    struct St {
        rx: tokio::sync::mpsc::UnboundedReceiver<Progress>,
        sent: u32,
        cached: u32,
        done: bool,
    }
    let st = St {
        rx,
        sent: 0,
        cached: 0,
        done: false,
    };
    let events = stream::unfold(st, move |mut st| {
        let (rid, model) = (rid.clone(), model.clone());
        async move {
            if st.done {
                return None;
            }
            match st.rx.recv().await {
                Some(Progress::Tokens(n)) if n > st.sent => {
                    // One event per token, as engines stream.
                    let mut out = Vec::new();
                    for i in st.sent..n {
                        out.extend_from_slice(&sse(&chunk(&rid, &model, api, i, i + 1, false)));
                    }
                    st.sent = n;
                    Some((Ok::<_, std::io::Error>(Bytes::from(out)), st))
                }
                Some(Progress::Tokens(_)) => Some((Ok(Bytes::new()), st)),
                Some(Progress::Cached(c)) => {
                    st.cached = c;
                    Some((Ok(Bytes::new()), st))
                }
                Some(Progress::Done) | None => {
                    st.done = true;
                    let mut out = sse(&chunk(&rid, &model, api, st.sent, st.sent, true)).to_vec();
                    if usage {
                        let mut u = chunk(&rid, &model, api, 0, 0, false);
                        u["choices"] = json!([]);
                        u["usage"] = usage_of(prompt_tokens, st.sent, st.cached);
                        out.extend_from_slice(&sse(&u));
                    }
                    out.extend_from_slice(b"data: [DONE]\n\n");
                    Some((Ok(Bytes::from(out)), st))
                }
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(events))
        .expect("static headers are valid")
}

async fn models(State(em): State<Emulator>) -> Response {
    let c = em.config();
    let created = created();
    let mut data = vec![json!({
        "id": c.model, "object": "model", "created": created, "owned_by": "vllm",
        "root": c.model, "parent": null, "max_model_len": c.engine.kv_tokens.min(131_072),
    })];
    data.extend(c.adapters.iter().map(|a| {
        json!({"id": a, "object": "model", "created": created, "owned_by": "vllm",
               "root": a, "parent": c.model})
    }));
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn metrics(State(em): State<Emulator>) -> Response {
    (
        [(header::CONTENT_TYPE, exposition::CONTENT_TYPE)],
        em.metrics(),
    )
        .into_response()
}
