//! The endpoints SGLang's and vLLM's routers read from a worker, in the shapes they parse.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::start;
use crate::emulate::{EngineKind, Submission};

async fn get(base: &str, path: &str) -> Value {
    let r = reqwest::get(format!("{base}{path}")).await.unwrap();
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().await.unwrap()
}

async fn post(base: &str, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn sglang_load_follows_the_engine() {
    let s = start(EngineKind::Sglang).await;
    let idle = get(&s.base, "/get_load").await;
    assert_eq!(
        idle,
        json!([{"dp_rank": 0, "num_reqs": 0, "num_waiting_reqs": 0, "num_tokens": 0}])
    );
    let (_, _, rx) = s
        .emulator()
        .submit(Submission {
            prompt: "a ".repeat(64),
            max_tokens: 100_000,
            adapter: None,
        })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let load = get(&s.base, "/get_load").await;
        if load[0]["num_reqs"] == 1 && load[0]["num_tokens"].as_u64().unwrap() >= 64 {
            break;
        }
        assert!(Instant::now() < deadline, "never loaded: {load}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(rx);
}

#[tokio::test]
async fn sglang_server_and_model_info_name_the_served_model() {
    let s = start(EngineKind::Sglang).await;
    for path in ["/get_server_info", "/server_info"] {
        let info = get(&s.base, path).await;
        assert_eq!(
            info["served_model_name"],
            "meta-llama/Llama-3.1-8B-Instruct"
        );
        assert_eq!(info["model_path"], "meta-llama/Llama-3.1-8B-Instruct");
        assert_eq!(info["dp_size"], 1);
        assert_eq!(info["page_size"], 16);
        assert!(info["max_total_num_tokens"].as_u64().unwrap() > 0);
    }
    for path in ["/get_model_info", "/model_info"] {
        let info = get(&s.base, path).await;
        assert_eq!(info["model_path"], "meta-llama/Llama-3.1-8B-Instruct");
        assert_eq!(info["is_generation"], true);
    }
    assert!(get(&s.base, "/version").await["version"].is_string());
}

#[tokio::test]
async fn vllm_tokenize_and_detokenize_round_trip() {
    let s = start(EngineKind::Vllm).await;
    let text = crate::tokenizer::text_of(&[3, 1, 4, 1, 5]);
    let (status, t) = post(&s.base, "/tokenize", json!({"model": "m", "prompt": text})).await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["tokens"], json!([3, 1, 4, 1, 5]));
    assert_eq!(t["count"], 5);
    assert!(t["max_model_len"].as_u64().unwrap() > 0);
    let (_, chat) = post(
        &s.base,
        "/tokenize",
        json!({"messages": [{"role": "user", "content": text}]}),
    )
    .await;
    assert_eq!(chat["tokens"], t["tokens"]);
    let (status, d) = post(&s.base, "/detokenize", json!({"tokens": [3, 1, 4, 1, 5]})).await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["prompt"], text);
    let (status, e) = post(&s.base, "/tokenize", json!({"model": "m"})).await;
    assert_eq!(status, 400);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("prompt")
    );
}
