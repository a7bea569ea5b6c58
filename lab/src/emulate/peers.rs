//! What other routers ask of a worker besides the OpenAI API, in the shapes they parse, so that
//! SGLang's router (sgl-router / SGLang Model Gateway) and vLLM's router can front emulated pods:
//!
//! - `GET /get_load`: SGLang's per-data-parallel-rank load, a list of
//!   `{dp_rank, num_reqs, num_waiting_reqs, num_tokens}` (its power-of-two policy reads it).
//! - `GET /server_info` and `/get_server_info`, `GET /model_info` and `/get_model_info`: what the
//!   SGLang router reads when it registers a worker (`served_model_name`, `model_path`, `dp_size`,
//!   …); without them it names the worker's model `unknown`.
//! - `POST /tokenize` and `/detokenize`: vLLM's, `{"prompt"}` or `{"messages"}` to
//!   `{"count", "max_model_len", "tokens", "token_strs"}`, and `{"tokens"}` to `{"prompt"}`.
//! - `GET /version`: `{"version"}`, as vLLM and SGLang answer it.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::Emulator;
use super::openai::ApiError;
use super::request::chat_text;

/// The routes, merged into the emulator's router.
pub(super) fn routes() -> Router<Emulator> {
    Router::new()
        .route("/get_load", get(load))
        .route("/server_info", get(server_info))
        .route("/get_server_info", get(server_info))
        .route("/model_info", get(model_info))
        .route("/get_model_info", get(model_info))
        .route("/version", get(version))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
}

/// The longest prompt plus output the emulated engine can hold.
fn max_model_len(em: &Emulator) -> u64 {
    em.config().engine.kv_tokens.min(131_072)
}

async fn load(State(em): State<Emulator>) -> Response {
    let s = em.state();
    let block = u64::from(em.config().engine.block_tokens);
    axum::Json(json!([{
        "dp_rank": 0,
        "num_reqs": s.running + s.waiting,
        "num_waiting_reqs": s.waiting,
        "num_tokens": s.kv_used_blocks * block,
    }]))
    .into_response()
}

async fn server_info(State(em): State<Emulator>) -> Response {
    let c = em.config();
    let s = em.state();
    axum::Json(json!({
        "model_path": c.model,
        "served_model_name": c.model,
        "tokenizer_path": null,
        "tp_size": 1,
        "dp_size": 1,
        "context_length": max_model_len(&em),
        "max_total_num_tokens": c.engine.kv_tokens,
        "max_running_requests": c.engine.max_num_seqs,
        "page_size": c.engine.block_tokens,
        "disable_radix_cache": false,
        "enable_lora": !c.adapters.is_empty(),
        "max_loras_per_batch": c.engine.max_loras,
        "version": env!("CARGO_PKG_VERSION"),
        "internal_states": [{
            "waiting_queue_size": s.waiting,
            "running_queue_size": s.running,
        }],
    }))
    .into_response()
}

async fn model_info(State(em): State<Emulator>) -> Response {
    axum::Json(json!({
        "model_path": em.config().model,
        "tokenizer_path": null,
        "is_generation": true,
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
    }))
    .into_response()
}

async fn version() -> Response {
    axum::Json(json!({"version": env!("CARGO_PKG_VERSION")})).into_response()
}

fn body_json(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("request body is not valid JSON: {e}")))
}

async fn tokenize(State(em): State<Emulator>, body: Bytes) -> Response {
    let run = || -> Result<Response, ApiError> {
        let v = body_json(&body)?;
        let text = match (v.get("prompt"), v.get("messages")) {
            (Some(Value::String(p)), _) => p.clone(),
            (None, Some(_)) => chat_text(v.get("messages"))?,
            _ => {
                return Err(ApiError::bad(
                    "prompt: required, a string (or messages: a list of chat messages)",
                ));
            }
        };
        let tokens = em.tokenize(&text)?;
        Ok(axum::Json(json!({
            "count": tokens.len(),
            "max_model_len": max_model_len(&em),
            "tokens": tokens,
            "token_strs": null,
        }))
        .into_response())
    };
    run().unwrap_or_else(IntoResponse::into_response)
}

async fn detokenize(State(em): State<Emulator>, body: Bytes) -> Response {
    let run = || -> Result<Response, ApiError> {
        let v = body_json(&body)?;
        let ids: Vec<u32> = v
            .get("tokens")
            .and_then(Value::as_array)
            .and_then(|t| {
                t.iter()
                    .map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
                    .collect()
            })
            .ok_or_else(|| ApiError::bad("tokens: required, a list of token ids"))?;
        let prompt = em
            .config()
            .tokenizer
            .decode(&ids, false)
            .map_err(|e| ApiError::bad(format!("tokens: {e}")))?;
        Ok(axum::Json(json!({"prompt": prompt})).into_response())
    };
    run().unwrap_or_else(IntoResponse::into_response)
}
