//! The OpenAI-compatible HTTP surface of an emulated server: `/v1/completions`,
//! `/v1/chat/completions` (streaming SSE and not, `n` choices per prompt, batches of prompts),
//! `/v1/models`, `/metrics`, `/health`, what peer routers ask a worker ([`peers`]), and the
//! lab's faults on command ([`fault`]).

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use super::request::{Api, Prompt, parse};
use super::{EmulateError, Emulator, Progress, exposition, fault, peers};

/// The emulator's routes; any other path gets a JSON 404 in OpenAI's error shape.
pub fn router(emulator: Emulator) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { StatusCode::OK }))
        .merge(peers::routes())
        .merge(fault::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            emulator.clone(),
            fault::gate,
        ))
        .with_state(emulator)
}

/// An error in the shape of vLLM's OpenAI server (and OpenAI's):
/// `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    pub(super) message: String,
}

impl ApiError {
    pub(super) fn bad(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "BadRequestError",
            message: message.into(),
        }
    }

    /// What vLLM answers when its engine died (`EngineDeadError`, a 500).
    pub(super) fn engine_dead() -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "EngineDeadError",
            message: EmulateError::Lost.to_string(),
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
            EmulateError::Lost => Self::engine_dead(),
        }
    }
}

impl ApiError {
    fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": null,
            "code": self.status.as_u16(),
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

async fn not_found(method: Method, uri: Uri) -> Response {
    ApiError {
        status: StatusCode::NOT_FOUND,
        kind: "NotFoundError",
        message: format!("{method} {}: no such route", uri.path()),
    }
    .into_response()
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        kind: "MethodNotAllowedError",
        message: format!("{method} {}: method not allowed", uri.path()),
    }
    .into_response()
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

/// One choice being generated: its progress, and whether its prompt counts in `usage` (each
/// prompt counts once however many choices it has).
struct Choice {
    rx: UnboundedReceiver<Progress>,
    counts_prompt: bool,
}

/// What every chunk and response of one request shares.
struct Head {
    rid: String,
    model: String,
    api: Api,
    prompt_tokens: u32,
}

/// A request whose choices are all submitted.
struct Started {
    head: Head,
    choices: Vec<Choice>,
    stream: bool,
    /// A stream ends with `usage` (`stream_options.include_usage`).
    usage_in_stream: bool,
}

async fn generate(em: Emulator, body: Bytes, api: Api) -> Response {
    match start(&em, &body, api) {
        Ok(s) if s.stream => stream_response(s.head, s.choices, s.usage_in_stream),
        Ok(s) => whole_response(s.head, s.choices).await,
        Err(e) => e.into_response(),
    }
}

/// Parses a request and submits every choice of every prompt (`n` per prompt, in the order of
/// their indexes).
fn start(em: &Emulator, body: &Bytes, api: Api) -> Result<Started, ApiError> {
    let p = parse(body, api)?;
    let adapter = (p.model != em.config().model).then_some(p.model.as_str());
    let mut choices = Vec::new();
    let mut prompt_tokens = 0;
    let mut first = None;
    for prompt in &p.prompts {
        let ids = match prompt {
            Prompt::Text(text) => em.tokenize(text)?,
            Prompt::Tokens(ids) => ids.clone(),
        };
        for j in 0..p.n {
            let (seq, tokens, rx) = em.submit_ids(ids.clone(), p.max_tokens, adapter)?;
            first.get_or_insert(seq);
            if j == 0 {
                prompt_tokens += tokens;
            }
            choices.push(Choice {
                rx,
                counts_prompt: j == 0,
            });
        }
    }
    let prefix = match api {
        Api::Completions => "cmpl",
        Api::Chat => "chatcmpl",
    };
    let head = Head {
        rid: em.response_id(prefix, first.unwrap_or_default()),
        model: p.model.clone(),
        api,
        prompt_tokens,
    };
    Ok(Started {
        head,
        choices,
        stream: p.stream,
        usage_in_stream: p.usage_in_stream,
    })
}

async fn whole_response(head: Head, choices: Vec<Choice>) -> Response {
    let (mut completion, mut cached) = (0, 0);
    let mut out = Vec::with_capacity(choices.len());
    for (index, mut choice) in choices.into_iter().enumerate() {
        let mut n = 0;
        loop {
            match choice.rx.recv().await {
                Some(Progress::Cached(c)) if choice.counts_prompt => cached += c,
                Some(Progress::Cached(_)) => {}
                Some(Progress::Tokens(t)) => n = t,
                Some(Progress::Done) => break,
                Some(Progress::Failed) => return ApiError::engine_dead().into_response(),
                None => {
                    return ApiError {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        kind: "ServiceUnavailableError",
                        message: "the engine stopped".into(),
                    }
                    .into_response();
                }
            }
        }
        completion += n;
        let text: String = (0..n).map(token_text).collect();
        out.push(match head.api {
            Api::Completions => {
                json!({"index": index, "text": text, "logprobs": null, "finish_reason": "length"})
            }
            Api::Chat => json!({"index": index, "logprobs": null, "finish_reason": "length",
                                "message": {"role": "assistant", "content": text}}),
        });
    }
    let object = match head.api {
        Api::Completions => "text_completion",
        Api::Chat => "chat.completion",
    };
    axum::Json(json!({
        "id": head.rid, "object": object, "created": created(), "model": head.model,
        "choices": out,
        "usage": usage_of(head.prompt_tokens, completion, cached),
    }))
    .into_response()
}

/// A streamed chunk of choice `index`: tokens `from..to`, and the finish reason when `finish`.
fn chunk(head: &Head, index: usize, from: u32, to: u32, finish: bool) -> Value {
    let text: String = (from..to).map(token_text).collect();
    let reason = if finish { json!("length") } else { Value::Null };
    match head.api {
        Api::Completions => json!({
            "id": head.rid, "object": "text_completion", "created": created(), "model": head.model,
            "choices": [{"index": index, "text": text, "logprobs": null, "finish_reason": reason}],
        }),
        Api::Chat => {
            let delta = if from == 0 && !finish {
                json!({"role": "assistant", "content": text})
            } else {
                json!({"content": text})
            };
            json!({
                "id": head.rid, "object": "chat.completion.chunk", "created": created(), "model": head.model,
                "choices": [{"index": index, "delta": delta, "logprobs": null, "finish_reason": reason}],
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

/// Where a streamed response stands.
struct Streaming {
    head: Head,
    events: futures::stream::SelectAll<BoxStream<'static, (usize, Progress)>>,
    sent: Vec<u32>,
    cached: Vec<u32>,
    counts_prompt: Vec<bool>,
    done: Vec<bool>,
    usage: bool,
    over: bool,
}

impl Streaming {
    /// The bytes one event of choice `i` (or the end of all, `None`) adds to the stream.
    fn step(&mut self, event: Option<(usize, Progress)>) -> Vec<u8> {
        let mut out = Vec::new();
        match event {
            Some((i, Progress::Tokens(n))) if n > self.sent[i] => {
                // One event per token, as engines stream.
                for t in self.sent[i]..n {
                    out.extend_from_slice(&sse(&chunk(&self.head, i, t, t + 1, false)));
                }
                self.sent[i] = n;
            }
            Some((_, Progress::Tokens(_))) => {}
            Some((i, Progress::Cached(c))) => self.cached[i] = c,
            Some((i, Progress::Done)) => self.finish(i, &mut out),
            // vLLM's stream sends the error as an event; its server then exits, so no `[DONE]`.
            Some((_, Progress::Failed)) => {
                out.extend_from_slice(&sse(&ApiError::engine_dead().body()));
                self.over = true;
            }
            None => (0..self.done.len()).for_each(|i| self.finish(i, &mut out)),
        }
        if !self.over && self.done.iter().all(|d| *d) {
            self.over = true;
            if self.usage {
                let mut u = chunk(&self.head, 0, 0, 0, false);
                u["choices"] = json!([]);
                let cached = (0..self.cached.len())
                    .filter(|i| self.counts_prompt[*i])
                    .map(|i| self.cached[i])
                    .sum();
                u["usage"] = usage_of(self.head.prompt_tokens, self.sent.iter().sum(), cached);
                out.extend_from_slice(&sse(&u));
            }
            out.extend_from_slice(b"data: [DONE]\n\n");
        }
        out
    }

    fn finish(&mut self, i: usize, out: &mut Vec<u8>) {
        if !self.done[i] {
            self.done[i] = true;
            let sent = self.sent[i];
            out.extend_from_slice(&sse(&chunk(&self.head, i, sent, sent, true)));
        }
    }
}

fn stream_response(head: Head, choices: Vec<Choice>, usage: bool) -> Response {
    let count = choices.len();
    let counts_prompt = choices.iter().map(|c| c.counts_prompt).collect();
    let events = futures::stream::select_all(choices.into_iter().enumerate().map(|(i, c)| {
        futures::stream::unfold(c.rx, move |mut rx| async move {
            rx.recv().await.map(|p| ((i, p), rx))
        })
        .boxed()
    }));
    let st = Streaming {
        head,
        events,
        sent: vec![0; count],
        cached: vec![0; count],
        counts_prompt,
        done: vec![false; count],
        usage,
        over: false,
    };
    let body = futures::stream::unfold(st, |mut st| async move {
        if st.over {
            return None;
        }
        let event = st.events.next().await;
        let bytes = st.step(event);
        Some((Ok::<_, std::io::Error>(Bytes::from(bytes)), st))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
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
