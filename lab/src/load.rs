//! `load`: an open-loop load generator. Requests leave at the workload's arrival times whatever
//! the server does (so a slow server builds a queue, as real users do), stream their answers, and
//! are measured: time to first token from the first streamed token event, end-to-end latency,
//! output tokens, and errors by HTTP status. It speaks the completions or the chat API.

pub mod model;
mod report;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

pub use report::{Latency, LoadResult, RequestRecord};

use crate::sim::Samples;
use crate::tokenizer::text_of;
use crate::workload::{Generator, Request, Workload, adapter_name, prompt_text, prompt_token_ids};

/// Which OpenAI API requests are sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST /v1/completions` with a `prompt`.
    Completions,
    /// `POST /v1/chat/completions` with `messages`.
    Chat,
}

impl Api {
    /// The API a workload speaks: chat for the `chat` workload and for workloads of
    /// conversations (`multi-turn`, or a file with a `conversation` class), else completions.
    pub fn of_workload(w: &Workload) -> Api {
        if w.name == "chat" || w.classes.iter().any(|c| c.conversation.is_some()) {
            Api::Chat
        } else {
            Api::Completions
        }
    }

    /// The API a URL that names an endpoint (`…/v1/chat/completions`) asks for.
    pub fn of_url(url: &str) -> Option<Api> {
        let url = url.trim_end_matches('/');
        if url.ends_with("/chat/completions") {
            Some(Api::Chat)
        } else if url.ends_with("/completions") {
            Some(Api::Completions)
        } else {
            None
        }
    }

    /// Its name in summaries and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Api::Completions => "completions",
            Api::Chat => "chat",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Api::Completions => "v1/completions",
            Api::Chat => "v1/chat/completions",
        }
    }
}

/// What to send where.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Base URL of an OpenAI-compatible server or gateway (`http://127.0.0.1:8080`, or with
    /// `/v1`); requests go to its `/v1/completions` or `/v1/chat/completions`. A URL that
    /// already ends in `/completions` is used as is.
    pub url: String,
    /// Which API to speak.
    pub api: Api,
    /// What to send.
    pub workload: Workload,
    /// Requests per second, in all.
    pub rate: f64,
    /// How long requests keep being sent.
    pub duration: Duration,
    /// Seed of arrivals and lengths.
    pub seed: u64,
    /// Model name for base-model requests (adapter requests use `adapter-N`).
    pub model: String,
    /// A request that has not finished after this long counts as an error (`timeout`).
    pub timeout: Duration,
    /// Keep every request's record in the result.
    pub keep_records: bool,
}

/// One request's outcome.
enum Outcome {
    Done {
        ttft: Duration,
        e2e: Duration,
        tokens: u32,
    },
    /// Why (the error kind), in words, and after how long.
    Failed {
        kind: String,
        detail: String,
        after: Duration,
    },
}

fn failed(kind: &str, detail: impl Into<String>, sent: Instant) -> Outcome {
    Outcome::Failed {
        kind: kind.into(),
        detail: detail.into(),
        after: sent.elapsed(),
    }
}

fn endpoint(url: &str, api: Api) -> String {
    let url = url.trim_end_matches('/');
    if url.ends_with("/completions") {
        url.to_string()
    } else {
        format!("{}/{}", model::server_root(url), api.path())
    }
}

/// Runs the load and measures it.
pub async fn run(config: LoadConfig) -> LoadResult {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .expect("a client with default TLS-less settings builds");
    let target = Arc::new(endpoint(&config.url, config.api));
    let records = Arc::new(Mutex::new(Vec::new()));
    let generator = Generator::new(
        &config.workload,
        1,
        config.rate,
        config.duration,
        config.seed,
        16,
    );
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut examples = BTreeMap::new();
    for req in generator {
        tokio::time::sleep_until(start + req.at).await;
        let (client, target, records) = (client.clone(), Arc::clone(&target), Arc::clone(&records));
        let model = match req.adapter {
            Some(a) => adapter_name(a),
            None => config.model.clone(),
        };
        let (timeout, api) = (config.timeout, config.api);
        let sent_ms = start.elapsed().as_secs_f64() * 1e3;
        tasks.spawn(async move {
            let sent = Instant::now();
            let outcome =
                match tokio::time::timeout(timeout, one(&client, &target, api, &model, &req)).await
                {
                    Ok(o) => o,
                    Err(_) => failed("timeout", format!("no answer within {timeout:?}"), sent),
                };
            let failure = match &outcome {
                Outcome::Failed { kind, detail, .. } => Some((kind.clone(), detail.clone())),
                Outcome::Done { .. } => None,
            };
            let record = record_of(&req, model, sent_ms, outcome);
            records
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(record);
            failure
        });
        // Reap finished tasks so the set stays small on long runs.
        while let Some(done) = tasks.try_join_next() {
            keep_example(&mut examples, done);
        }
    }
    while let Some(done) = tasks.join_next().await {
        keep_example(&mut examples, done);
    }
    let elapsed = start
        .elapsed()
        .as_secs_f64()
        .max(config.duration.as_secs_f64());
    let mut records = std::mem::take(&mut *records.lock().unwrap_or_else(|e| e.into_inner()));
    records.sort_by(|a, b| a.sent_ms.total_cmp(&b.sent_ms));
    measure(config, records, examples, elapsed)
}

/// Keeps the first failure of each kind, to show what went wrong.
fn keep_example(
    examples: &mut BTreeMap<String, String>,
    done: Result<Option<(String, String)>, tokio::task::JoinError>,
) {
    if let Ok(Some((kind, detail))) = done {
        examples.entry(kind).or_insert(detail);
    }
}

fn record_of(req: &Request, model: String, sent_ms: f64, outcome: Outcome) -> RequestRecord {
    let millis = |d: Duration| d.as_secs_f64() * 1e3;
    let (outcome, ttft_ms, e2e_ms, output_tokens) = match outcome {
        Outcome::Done { ttft, e2e, tokens } => {
            ("ok".into(), Some(millis(ttft)), millis(e2e), tokens)
        }
        Outcome::Failed { kind, after, .. } => (kind, None, millis(after), 0),
    };
    RequestRecord {
        id: req.id,
        sent_ms,
        class: req.class,
        model,
        prompt_tokens: req.prompt_tokens,
        max_tokens: req.output_tokens,
        outcome,
        ttft_ms,
        e2e_ms,
        output_tokens,
    }
}

/// The run's figures from its requests' records.
fn measure(
    config: LoadConfig,
    records: Vec<RequestRecord>,
    error_examples: BTreeMap<String, String>,
    elapsed_s: f64,
) -> LoadResult {
    let mut errors = BTreeMap::new();
    let mut samples = Samples::default();
    let (mut ttft, mut e2e, mut tokens) = (Vec::new(), Vec::new(), 0u64);
    for r in &records {
        match r.ttft_ms {
            Some(first) if r.outcome == "ok" => {
                ttft.push(first);
                e2e.push(r.e2e_ms);
                tokens += u64::from(r.output_tokens);
                let ms = |v: f64| Duration::from_secs_f64(v / 1e3);
                samples.record(ms(first), ms(r.e2e_ms), r.output_tokens, true);
            }
            _ => *errors.entry(r.outcome.clone()).or_default() += 1,
        }
    }
    let completed = ttft.len() as u64;
    let window = config.duration.as_secs_f64();
    LoadResult {
        url: config.url,
        api: config.api.name().into(),
        model: config.model,
        workload: config.workload.name,
        rate: config.rate,
        duration_s: window,
        requests: records.len() as u64,
        completed,
        failed: records.len() as u64 - completed,
        errors,
        error_examples,
        throughput_tokens_per_s: tokens as f64 / elapsed_s,
        ttft_ms: Latency::of(ttft),
        e2e_ms: Latency::of(e2e),
        goodput: samples.good() as f64 / window,
        records: config.keep_records.then_some(records),
    }
}

/// The body of one request: a completion of the prompt, or a chat whose system message is the
/// request's shared prefix (system prompt, documents, conversation so far) and whose user message
/// is the rest. Either way the emulator sees the same token ids.
fn body(api: Api, model: &str, req: &Request) -> Value {
    match api {
        Api::Completions => json!({
            "model": model,
            "prompt": prompt_text(req, true),
            "max_tokens": req.output_tokens,
            "stream": true,
        }),
        Api::Chat => {
            let ids = prompt_token_ids(req, true);
            // A user message is never empty (routers such as SGLang's refuse one): when the
            // prefix is the whole prompt, its last token goes to the user.
            let split = req.prefix_tokens.len().min(ids.len().saturating_sub(1));
            let mut messages = Vec::new();
            if split > 0 {
                messages.push(json!({"role": "system", "content": text_of(&ids[..split])}));
            }
            messages.push(json!({"role": "user", "content": text_of(&ids[split..])}));
            json!({
                "model": model,
                "messages": messages,
                "max_tokens": req.output_tokens,
                "stream": true,
            })
        }
    }
}

/// The message of an error answer (OpenAI's `{"error": {"message"}}`, vLLM's older
/// `{"message"}`), else its first 200 characters.
fn error_detail(status: reqwest::StatusCode, text: &str) -> String {
    let message = serde_json::from_str::<Value>(text).ok().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("error"))
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let text = message.unwrap_or_else(|| text.chars().take(200).collect());
    format!("HTTP {status}: {}", text.trim())
}

/// Sends one streaming request and times it.
async fn one(client: &reqwest::Client, url: &str, api: Api, model: &str, req: &Request) -> Outcome {
    let sent = Instant::now();
    let resp = match client
        .post(url)
        // Gateways that cannot read the body (nginx auth_request) learn the model from this header.
        .header("x-gateway-model-name", model)
        .header("x-inferpick-priority", req.priority.to_string())
        .json(&body(api, model, req))
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return failed("connect", format!("POST {url}: {}", chain(&e)), sent),
    };
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return failed(status.as_str(), error_detail(status, &text), sent);
    }
    let mut ttft = None;
    let mut tokens = 0u32;
    let mut buf = Vec::new();
    let mut stream = resp.bytes_stream();
    let mut done = false;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return failed("stream", format!("the stream broke: {}", chain(&e)), sent),
        };
        buf.extend_from_slice(&chunk);
        // Server-sent events are separated by a blank line.
        while let Some(end) = find(&buf, b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            let Some(data) = event.strip_prefix(b"data: ") else {
                continue;
            };
            let data = &data[..data.len() - 2];
            if data == b"[DONE]" {
                done = true;
                continue;
            }
            let Ok(v) = serde_json::from_slice::<Value>(data) else {
                let shown = String::from_utf8_lossy(&data[..data.len().min(200)]).into_owned();
                return failed("stream", format!("an event is not JSON: {shown}"), sent);
            };
            let text = v["choices"][0]["text"]
                .as_str()
                .or_else(|| v["choices"][0]["delta"]["content"].as_str())
                .unwrap_or("");
            if !text.is_empty() {
                tokens += 1;
                ttft.get_or_insert_with(|| sent.elapsed());
            }
        }
    }
    match (done, ttft) {
        (true, Some(ttft)) => Outcome::Done {
            ttft,
            e2e: sent.elapsed(),
            tokens,
        },
        (false, _) => failed("stream", "the stream ended without [DONE]", sent),
        (true, None) => failed("stream", "the stream ended without a token", sent),
    }
}

/// An error with its causes (`error sending request: … : Connection refused`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text.push_str(": ");
            text.push_str(&c_text);
        }
        cause = c.source();
    }
    text
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulate::{self, Emulator, EmulatorConfig, Running};
    use crate::engine::EngineConfig;
    use inferpick_schema::EngineKind;

    #[test]
    fn the_endpoint_is_derived_from_a_base_url_for_the_api() {
        use Api::{Chat, Completions};
        assert_eq!(
            endpoint("http://h:1", Completions),
            "http://h:1/v1/completions"
        );
        assert_eq!(
            endpoint("http://h:1/", Chat),
            "http://h:1/v1/chat/completions"
        );
        assert_eq!(
            endpoint("http://h:1/v1", Chat),
            "http://h:1/v1/chat/completions"
        );
        assert_eq!(
            endpoint("http://h:1/v1/chat/completions", Chat),
            "http://h:1/v1/chat/completions"
        );
        assert_eq!(Api::of_url("http://h:1/v1/chat/completions"), Some(Chat));
        assert_eq!(Api::of_url("http://h:1/v1/completions/"), Some(Completions));
        assert_eq!(Api::of_url("http://h:1/v1"), None);
    }

    #[test]
    fn chat_and_conversation_workloads_speak_chat() {
        let api = |name: &str| Api::of_workload(&Workload::load(name).unwrap());
        assert_eq!(api("chat"), Api::Chat);
        assert_eq!(api("multi-turn"), Api::Chat);
        assert_eq!(api("shared-prefix"), Api::Completions);
    }

    #[test]
    fn no_chat_request_has_an_empty_user_message() {
        let workload = Workload::load("multi-turn").unwrap();
        let requests =
            crate::workload::Generator::new(&workload, 1, 50.0, Duration::from_secs(30), 1, 16);
        let mut n = 0;
        for req in requests {
            let b = body(Api::Chat, "m", &req);
            let user = b["messages"].as_array().unwrap().last().unwrap();
            assert_eq!(user["role"], "user");
            assert!(!user["content"].as_str().unwrap().is_empty(), "{b}");
            n += 1;
        }
        assert!(n > 100, "{n}");
    }

    #[test]
    fn error_details_read_the_message_of_either_error_shape() {
        let s = reqwest::StatusCode::NOT_FOUND;
        let d = error_detail(s, r#"{"error": {"message": "no model x", "type": "t"}}"#);
        assert_eq!(d, "HTTP 404 Not Found: no model x");
        assert!(error_detail(s, r#"{"message": "old"}"#).ends_with(": old"));
        assert!(error_detail(s, "plain").ends_with(": plain"));
    }

    fn tiny() -> Workload {
        Workload::parse(
            "name: tiny\narrival: { process: poisson, rate_per_pod: 1 }\nclasses:\n  - { prompt_tokens: { uniform: [20, 200] }, output_tokens: { uniform: [3, 12] } }\n  - { weight: 0.5, prompt_tokens: { fixed: 50 }, output_tokens: { fixed: 4 }, adapters: { count: 1 } }\n",
            "tiny",
        )
        .unwrap()
    }

    /// An emulator serving the base model only: adapter requests get 404s.
    async fn base_only() -> Running {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        emulate::spawn(
            Emulator::new(EmulatorConfig {
                tokenizer: crate::tokenizer::builtin(),
                kind: EngineKind::Vllm,
                model: "base".into(),
                adapters: vec![],
                engine: EngineConfig {
                    step_base: Duration::from_millis(2),
                    ..EngineConfig::default()
                },
            }),
            listener,
        )
        .unwrap()
    }

    fn config(url: String, api: Api, rate: f64, keep_records: bool) -> LoadConfig {
        LoadConfig {
            url,
            api,
            workload: tiny(),
            rate,
            duration: Duration::from_secs(1),
            seed: 3,
            model: "base".into(),
            timeout: Duration::from_secs(10),
            keep_records,
        }
    }

    #[tokio::test]
    async fn measures_an_emulator_and_counts_errors_by_status() {
        let server = base_only().await;
        let result = run(config(
            format!("http://{}", server.addr),
            Api::Completions,
            40.0,
            false,
        ))
        .await;
        server.stop().await;
        assert!(result.requests > 10, "{result:?}");
        let not_found = result.errors.get("404").copied().unwrap_or(0);
        assert!(not_found > 0, "{result:?}");
        assert_eq!(result.completed + not_found, result.requests, "{result:?}");
        assert_eq!(result.failed, not_found);
        let (ttft, e2e) = (result.ttft_ms.unwrap(), result.e2e_ms.unwrap());
        assert!(ttft.p50 > 0.0 && ttft.p50 <= e2e.p50 && ttft.p90 <= ttft.p99);
        assert!(ttft.mean > 0.0 && e2e.mean >= ttft.mean);
        assert!(result.throughput_tokens_per_s > 0.0);
        assert!(
            result.error_examples["404"].contains("does not exist"),
            "{result:?}"
        );
        let v = serde_json::to_value(&result).unwrap();
        assert!(v["errors"]["404"].as_u64().unwrap() > 0);
        assert!(v.get("records").is_none(), "records only when asked");
        let summary = result.summary();
        assert!(
            summary.contains("× 404") && summary.contains("does not exist"),
            "{summary}"
        );
    }

    #[tokio::test]
    async fn speaks_chat_and_keeps_every_request_when_asked() {
        let server = base_only().await;
        let url = format!("http://{}/v1", server.addr);
        let result = run(config(url, Api::Chat, 30.0, true)).await;
        server.stop().await;
        assert_eq!(result.api, "chat");
        let records = result.records.as_ref().unwrap();
        assert_eq!(records.len() as u64, result.requests);
        let ok: Vec<_> = records.iter().filter(|r| r.outcome == "ok").collect();
        assert_eq!(ok.len() as u64, result.completed);
        assert!(!ok.is_empty());
        for r in &ok {
            assert_eq!(r.output_tokens, r.max_tokens, "{r:?}");
            assert!(r.ttft_ms.unwrap() <= r.e2e_ms);
        }
        assert!(records.windows(2).all(|w| w[0].sent_ms <= w[1].sent_ms));
        let v = serde_json::to_value(&result).unwrap();
        assert_eq!(
            v["records"].as_array().unwrap().len() as u64,
            result.requests
        );
    }

    #[tokio::test]
    async fn a_dead_server_gives_connect_errors() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let mut c = config(format!("http://{addr}"), Api::Completions, 20.0, false);
        c.duration = Duration::from_millis(300);
        let result = run(c).await;
        assert_eq!(result.completed, 0);
        assert_eq!(result.errors.get("connect").copied(), Some(result.requests));
        let why = &result.error_examples["connect"];
        assert!(why.contains("refused"), "the cause is named: {why}");
        assert_eq!(result.error_rate(), 1.0);
        assert_eq!(result.ttft_ms, None);
        assert!(
            result.summary().contains("none completed"),
            "{}",
            result.summary()
        );
    }
}
