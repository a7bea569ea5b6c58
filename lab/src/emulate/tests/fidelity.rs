//! Where clients notice an OpenAI server's details, over raw HTTP: tool-call histories, content
//! parts, token-id and batched prompts, `n`, cached tokens, unique ids, and JSON 404s.

use serde_json::{Value, json};

use super::{Server, start};
use crate::emulate::EngineKind;

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// Posts `body` to `path`; the status and the JSON answer.
async fn post(s: &Server, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", s.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// The `data:` events of a streamed answer, parsed, and whether it ended with `[DONE]`.
async fn stream(s: &Server, path: &str, body: Value) -> (Vec<Value>, bool) {
    let text = reqwest::Client::new()
        .post(format!("{}{path}", s.base))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect();
    let done = events.last() == Some(&"[DONE]");
    let chunks = events
        .iter()
        .filter(|e| **e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    (chunks, done)
}

#[tokio::test]
async fn a_tool_call_history_and_content_parts_are_accepted() {
    let s = start(EngineKind::Vllm).await;
    let (status, r) = post(
        &s,
        "/v1/chat/completions",
        json!({"model": MODEL, "max_tokens": 2, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "a b"}, {"type": "text", "text": "c"}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "lookup", "arguments": "d"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "e f"},
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    // a b c, the call's name and arguments, the tool's answer: one token per word.
    assert_eq!(r["usage"]["prompt_tokens"], 7, "{r}");
    assert_eq!(r["choices"][0]["message"]["content"], "Hello world");
    let (status, r) = post(
        &s,
        "/v1/chat/completions",
        json!({"model": MODEL, "messages": [{"role": "user", "content": null}]}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("messages[0].content"),
        "{r}"
    );
}

#[tokio::test]
async fn token_id_prompts_reach_the_prefix_cache_as_they_are() {
    let s = start(EngineKind::Vllm).await;
    let shared: Vec<u32> = (1..=48).collect();
    let mut first = shared.clone();
    first.extend([900, 901]);
    let (status, r) = post(
        &s,
        "/v1/completions",
        json!({"model": MODEL, "prompt": first, "max_tokens": 1}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["usage"]["prompt_tokens"], 50);
    assert_eq!(r["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    // The same leading ids as text: the cache holds the ids, whatever form they came in.
    let mut text = crate::tokenizer::text_of(&shared);
    text.push_str(" zz");
    let (_, r) = post(
        &s,
        "/v1/completions",
        json!({"model": MODEL, "prompt": text, "max_tokens": 1}),
    )
    .await;
    assert_eq!(r["usage"]["prompt_tokens_details"]["cached_tokens"], 48);
    let (status, r) = post(
        &s,
        "/v1/completions",
        json!({"model": MODEL, "prompt": [7, 40_000], "max_tokens": 1}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(r["error"]["message"].as_str().unwrap().contains("40000"));
}

#[tokio::test]
async fn a_batch_of_prompts_gets_a_choice_each_and_n_multiplies_them() {
    let s = start(EngineKind::Vllm).await;
    for prompt in [json!(["a b", "c d e"]), json!([[1, 2], [3, 4, 5]])] {
        let (status, r) = post(
            &s,
            "/v1/completions",
            json!({"model": MODEL, "prompt": prompt, "max_tokens": 3, "n": 2}),
        )
        .await;
        assert_eq!(status, 200, "{r}");
        let choices = r["choices"].as_array().unwrap();
        let indexes: Vec<u64> = choices
            .iter()
            .map(|c| c["index"].as_u64().unwrap())
            .collect();
        assert_eq!(indexes, [0, 1, 2, 3], "{r}");
        assert!(choices.iter().all(|c| c["text"] == "Hello world world"));
        // Each prompt counts once, each choice's tokens count.
        assert_eq!(r["usage"]["prompt_tokens"], 5, "{r}");
        assert_eq!(r["usage"]["completion_tokens"], 12, "{r}");
    }
}

#[tokio::test]
async fn n_choices_stream_interleaved_with_their_indexes() {
    let s = start(EngineKind::Vllm).await;
    let (chunks, done) = stream(
        &s,
        "/v1/chat/completions",
        json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 2,
               "max_tokens": 3, "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await;
    assert!(done);
    for index in [0, 1] {
        let mine: Vec<&Value> = chunks
            .iter()
            .filter(|c| c["choices"][0]["index"] == index)
            .collect();
        let content: String = mine
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, "Hello world world", "choice {index}");
        assert_eq!(mine[0]["choices"][0]["delta"]["role"], "assistant");
        let finished = mine
            .iter()
            .filter(|c| c["choices"][0]["finish_reason"] == "length")
            .count();
        assert_eq!(finished, 1, "choice {index}");
    }
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 6);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
}

#[tokio::test]
async fn response_ids_differ_across_requests_and_pods() {
    let (a, b) = (start(EngineKind::Vllm).await, start(EngineKind::Vllm).await);
    let body = json!({"model": MODEL, "prompt": "x", "max_tokens": 1});
    let mut ids = Vec::new();
    for s in [&a, &a, &b] {
        let (_, r) = post(s, "/v1/completions", body.clone()).await;
        ids.push(r["id"].as_str().unwrap().to_string());
    }
    assert!(ids.iter().all(|id| id.starts_with("cmpl-")), "{ids:?}");
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "{ids:?}"
    );
}

#[tokio::test]
async fn unknown_paths_and_methods_get_openai_shaped_json() {
    let s = start(EngineKind::Vllm).await;
    let r = reqwest::get(format!("{}/v1/embeddingz", s.base))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], 404);
    assert_eq!(v["error"]["type"], "NotFoundError");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/embeddingz")
    );
    let r = reqwest::get(format!("{}/v1/completions", s.base))
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], 405);
}
