//! The emulator's expositions and HTTP API; [`fidelity`] holds the tests of the OpenAI API's
//! finer points, [`peers`] those of the endpoints other routers read.

mod fault;
mod fidelity;
mod peers;

use std::collections::HashMap;

use super::*;
use crate::engine::Counters;

fn config(kind: EngineKind) -> EmulatorConfig {
    EmulatorConfig {
        tokenizer: crate::tokenizer::builtin(),
        kind,
        model: "meta-llama/Llama-3.1-8B-Instruct".into(),
        adapters: vec!["sql-lora".into(), "tweet-lora".into()],
        engine: EngineConfig {
            step_base: Duration::from_millis(2),
            ..EngineConfig::default()
        },
    }
}

/// One parsed sample: name, labels, value.
type Sample = (String, HashMap<String, String>, f64);

/// Every sample, and the `# TYPE` of every family.
fn parse(text: &str) -> (Vec<Sample>, HashMap<String, String>) {
    let mut samples = Vec::new();
    let mut types = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = HashMap::new();
        // The emulator's label values contain no `",`; a comma list stays inside quotes.
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once("=\"").unwrap();
            map.insert(k.to_string(), v.trim_end_matches('"').to_string());
        }
        samples.push((name.to_string(), map, value.parse::<f64>().unwrap()));
    }
    (samples, types)
}

fn value(samples: &[Sample], name: &str, label: Option<(&str, &str)>) -> f64 {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name && label.is_none_or(|(k, v)| l.get(k).map(String::as_str) == Some(v))
        })
        .unwrap_or_else(|| panic!("no sample {name} {label:?}"))
        .2
}

fn busy_state() -> (EngineState, AdapterNames, Observed) {
    let state = EngineState {
        waiting: 3,
        running: 17,
        kv_used_blocks: 620,
        kv_total_blocks: 1000,
        counters: Counters {
            prompt_tokens: 5000,
            generation_tokens: 1200,
            prefix_queries: 5000,
            prefix_hits: 2000,
            finished: 40,
            preemptions: 2,
            lora_loads: 1,
        },
        adapters_running: vec![0, 1],
        adapters_waiting: vec![],
    };
    let names = AdapterNames {
        running: vec!["sql-lora".into(), "tweet-lora".into()],
        waiting: vec![],
    };
    let mut ttft = Histogram::new(TTFT_BUCKETS);
    ttft.observe(0.3);
    let observed = Observed {
        model: "m".into(),
        block_tokens: 16,
        max_loras: 4,
        started_unix: 1.76e9,
        now_unix: 1.76e9 + 5.0,
        requests_received: 60,
        ttft,
        e2e: Histogram::new(E2E_BUCKETS),
        input_length: Histogram::new(TOKEN_BUCKETS),
        generated: Histogram::new(TOKEN_BUCKETS),
        lora_info: vec![
            ("sql-lora".into(), "".into(), 1.76e9 + 1.0),
            ("sql-lora,tweet-lora".into(), "".into(), 1.76e9 + 5.0),
        ],
    };
    (state, names, observed)
}

/// Every sample belongs to a family with HELP and TYPE, and counters follow the dialect's naming.
fn check_well_formed(text: &str) {
    let (samples, types) = parse(text);
    for (name, _, _) in &samples {
        let family = types
            .keys()
            .filter(|f| {
                name == *f
                    || name.strip_prefix(f.as_str()).is_some_and(|r| {
                        ["_total", "_created", "_bucket", "_sum", "_count"].contains(&r)
                    })
            })
            .max_by_key(|f| f.len())
            .unwrap_or_else(|| panic!("sample {name} has no # TYPE"));
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family} has no HELP"
        );
    }
}

#[test]
fn vllm_exposition_has_v1_names_labels_and_types() {
    let (s, n, o) = busy_state();
    let text = exposition::render(EngineKind::Vllm, &s, &n, &o);
    check_well_formed(&text);
    let (samples, types) = parse(&text);
    assert_eq!(
        value(
            &samples,
            "vllm:num_requests_waiting",
            Some(("model_name", "m"))
        ),
        3.0
    );
    assert_eq!(
        value(&samples, "vllm:num_requests_running", Some(("engine", "0"))),
        17.0
    );
    assert_eq!(value(&samples, "vllm:kv_cache_usage_perc", None), 0.62);
    assert_eq!(
        value(&samples, "vllm:prefix_cache_hits_total", None),
        2000.0
    );
    assert_eq!(
        value(&samples, "vllm:prefix_cache_queries_total", None),
        5000.0
    );
    assert_eq!(
        value(&samples, "vllm:generation_tokens_total", None),
        1200.0
    );
    assert_eq!(types["vllm:prompt_tokens"], "counter");
    assert_eq!(value(&samples, "vllm:prompt_tokens_created", None), 1.76e9);
    let info = samples
        .iter()
        .find(|(n, _, _)| n == "vllm:cache_config_info")
        .unwrap();
    assert_eq!(info.1["num_gpu_blocks"], "1000");
    assert_eq!(info.1["block_size"], "16");
    assert_eq!(info.1["num_cpu_blocks"], "None");
    let lora: Vec<_> = samples
        .iter()
        .filter(|(n, _, _)| n == "vllm:lora_requests_info")
        .collect();
    assert_eq!(lora.len(), 2, "every combination seen stays a series");
    let newest = lora.iter().max_by(|a, b| a.2.total_cmp(&b.2)).unwrap();
    assert_eq!(newest.1["running_lora_adapters"], "sql-lora,tweet-lora");
    assert_eq!(newest.1["max_lora"], "4");
    assert_eq!(
        value(
            &samples,
            "vllm:time_to_first_token_seconds_bucket",
            Some(("le", "0.5"))
        ),
        1.0
    );
    assert_eq!(
        value(&samples, "vllm:time_to_first_token_seconds_count", None),
        1.0
    );
}

#[test]
fn sglang_tgi_and_lmdeploy_expositions() {
    let (s, n, o) = busy_state();
    let text = exposition::render(EngineKind::Sglang, &s, &n, &o);
    check_well_formed(&text);
    let (samples, _) = parse(&text);
    assert_eq!(value(&samples, "sglang:num_queue_reqs", None), 3.0);
    assert_eq!(value(&samples, "sglang:num_running_reqs", None), 17.0);
    assert_eq!(value(&samples, "sglang:token_usage", None), 0.62);
    assert_eq!(
        value(&samples, "sglang:max_total_num_tokens", None),
        16000.0
    );
    assert_eq!(value(&samples, "sglang:cache_hit_rate", None), 0.4);

    let text = exposition::render(EngineKind::Tgi, &s, &n, &o);
    check_well_formed(&text);
    let (samples, types) = parse(&text);
    assert_eq!(value(&samples, "tgi_queue_size", None), 3.0);
    assert_eq!(value(&samples, "tgi_batch_current_size", None), 17.0);
    let used = value(&samples, "tgi_batch_current_max_tokens", None);
    let total = value(&samples, "tgi_batch_max_total_tokens", None);
    assert_eq!(used / total, 0.62);
    assert_eq!(types["tgi_request_input_length"], "histogram");
    assert!(
        samples
            .iter()
            .all(|(_, l, _)| !l.contains_key("model_name")),
        "TGI has no model label"
    );

    let text = exposition::render(EngineKind::Lmdeploy, &s, &n, &o);
    check_well_formed(&text);
    let (samples, _) = parse(&text);
    assert_eq!(value(&samples, "lmdeploy:num_requests_waiting", None), 3.0);
    assert_eq!(value(&samples, "lmdeploy:gpu_cache_usage_perc", None), 0.62);
}

#[test]
fn triton_trtllm_serve_and_llamacpp_expositions() {
    let (s, n, o) = busy_state();
    let text = exposition::render(EngineKind::TritonTrtllm, &s, &n, &o);
    check_well_formed(&text);
    let (samples, _) = parse(&text);
    assert_eq!(
        value(
            &samples,
            "nv_trt_llm_request_metrics",
            Some(("request_type", "waiting"))
        ),
        3.0
    );
    assert_eq!(
        value(
            &samples,
            "nv_trt_llm_request_metrics",
            Some(("request_type", "scheduled"))
        ),
        17.0
    );
    assert_eq!(
        value(
            &samples,
            "nv_trt_llm_kv_cache_block_metrics",
            Some(("kv_cache_block_type", "fraction"))
        ),
        0.62
    );
    assert_eq!(
        value(
            &samples,
            "nv_trt_llm_kv_cache_block_metrics",
            Some(("kv_cache_block_type", "max"))
        ),
        1000.0
    );
    assert!(
        samples
            .iter()
            .all(|(_, l, _)| l.get("version").map(String::as_str) == Some("1"))
    );

    let text = exposition::render(EngineKind::TrtllmServe, &s, &n, &o);
    check_well_formed(&text);
    let (samples, _) = parse(&text);
    assert_eq!(value(&samples, "trtllm_num_requests_waiting", None), 3.0);
    assert_eq!(value(&samples, "trtllm_kv_cache_utilization", None), 0.62);
    assert_eq!(
        value(&samples, "trtllm_kv_cache_max_blocks", None)
            * value(&samples, "trtllm_kv_cache_tokens_per_block", None),
        16000.0
    );

    let text = exposition::render(EngineKind::Llamacpp, &s, &n, &o);
    check_well_formed(&text);
    let (samples, types) = parse(&text);
    assert_eq!(value(&samples, "llamacpp:requests_deferred", None), 3.0);
    assert_eq!(value(&samples, "llamacpp:requests_processing", None), 17.0);
    assert_eq!(
        value(&samples, "llamacpp:prompt_tokens_cached_total", None),
        2000.0
    );
    assert_eq!(
        types["llamacpp:n_tokens_max"], "counter",
        "typed counter upstream, though a maximum"
    );
    assert!(
        !text.contains("kv_cache"),
        "llama.cpp no longer exports KV usage"
    );
}

struct Server {
    running: Option<Running>,
    base: String,
}

impl Server {
    fn emulator(&self) -> &Emulator {
        &self
            .running
            .as_ref()
            .expect("running until dropped")
            .emulator
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.running.take());
    }
}

async fn start(kind: EngineKind) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = spawn(Emulator::new(config(kind)), listener).unwrap();
    let base = format!("http://{}", running.addr);
    Server {
        running: Some(running),
        base,
    }
}

#[tokio::test]
async fn completions_return_max_tokens_with_usage() {
    let s = start(EngineKind::Vllm).await;
    let client = reqwest::Client::new();
    let r: Value = client
        .post(format!("{}/v1/completions", s.base))
        .json(&json!({"model": "meta-llama/Llama-3.1-8B-Instruct", "prompt": "a ".repeat(100), "max_tokens": 5}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["usage"]["completion_tokens"], 5);
    assert_eq!(r["usage"]["prompt_tokens"], 100);
    assert_eq!(r["choices"][0]["text"], "Hello world world world world");
    assert_eq!(r["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn chat_streams_one_event_per_token_then_done() {
    let s = start(EngineKind::Sglang).await;
    let client = reqwest::Client::new();
    let body = client
        .post(format!("{}/v1/chat/completions", s.base))
        .json(
            &json!({"model": "sql-lora", "messages": [{"role": "user", "content": "hi there"}],
                      "max_tokens": 4, "stream": true, "stream_options": {"include_usage": true}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(body.headers()["content-type"], "text/event-stream");
    let text = body.text().await.unwrap();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Hello world world world");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "length")
    );
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 4);
}

#[tokio::test]
async fn models_metrics_and_errors() {
    let s = start(EngineKind::Vllm).await;
    let client = reqwest::Client::new();
    let models: Value = client
        .get(format!("{}/v1/models", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["meta-llama/Llama-3.1-8B-Instruct", "sql-lora", "tweet-lora"]
    );
    assert_eq!(
        models["data"][1]["parent"],
        "meta-llama/Llama-3.1-8B-Instruct"
    );
    let r = client
        .post(format!("{}/v1/completions", s.base))
        .json(&json!({"model": "nope", "prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let err: Value = r.json().await.unwrap();
    assert!(err["error"]["message"].as_str().unwrap().contains("nope"));
    assert_eq!(err["error"]["type"], "NotFoundError");
    assert_eq!(err["error"]["code"], 404);
    let r = client
        .post(format!("{}/v1/chat/completions", s.base))
        .json(&json!({"model": "sql-lora", "messages": [], "max_tokens": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("messages"));
    let m = client
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(m.headers()["content-type"], exposition::CONTENT_TYPE);
    let text = m.text().await.unwrap();
    assert!(text.contains("vllm:num_requests_waiting{engine=\"0\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 0.0"), "{text}");
}

#[tokio::test]
async fn true_state_shows_queued_and_running_requests() {
    let s = start(EngineKind::Vllm).await;
    let em = s.running.as_ref().unwrap().emulator.clone();
    let mut rxs = Vec::new();
    for _ in 0..3 {
        let (_, _, rx) = em
            .submit(Submission {
                prompt: "p".repeat(4000),
                max_tokens: 2000,
                adapter: None,
            })
            .unwrap();
        rxs.push(rx);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let st = em.state();
        if st.running == 3 && st.kv_used_blocks > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "never ran: {st:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(rxs);
    let deadline = Instant::now() + Duration::from_secs(5);
    while em.state().running > 0 {
        assert!(Instant::now() < deadline, "cancelled requests kept running");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(em.state().kv_used_blocks, 0);
}

use serde_json::{Value, json};

#[tokio::test]
async fn prompts_are_tokenized_and_shared_leading_blocks_are_reported_cached() {
    let s = start(EngineKind::Vllm).await;
    let client = reqwest::Client::new();
    let ask = |prompt: String, model: &'static str| {
        let client = client.clone();
        let url = format!("{}/v1/completions", s.base);
        async move {
            let r: Value = client
                .post(url)
                .json(&json!({"model": model, "prompt": prompt, "max_tokens": 2}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r["usage"].clone()
        }
    };
    // 48 shared words (3 blocks of 16 tokens), then different tails.
    let shared: Vec<u32> = (1..=48).collect();
    let mut first = shared.clone();
    first.extend([100, 101, 102, 103, 104]);
    let mut second = shared.clone();
    second.extend([
        200, 201, 202, 203, 204, 205, 206, 207, 208, 209, 210, 211, 212, 213, 214, 215, 216,
    ]);
    let text = crate::tokenizer::text_of;
    let u = ask(text(&first), "meta-llama/Llama-3.1-8B-Instruct").await;
    assert_eq!(u["prompt_tokens"], 53);
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 0);
    let u = ask(text(&second), "meta-llama/Llama-3.1-8B-Instruct").await;
    assert_eq!(u["prompt_tokens"], 65);
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 48);
    // The same tokens under an adapter are a different cache entry.
    let u = ask(text(&second), "sql-lora").await;
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 0);
}
