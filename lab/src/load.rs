//! `load`: an open-loop load generator. Requests leave at the workload's arrival times whatever
//! the server does (so a slow server builds a queue, as real users do), stream their answers, and
//! are measured: time to first token from the first streamed token event, end-to-end latency,
//! output tokens, and errors by HTTP status.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;

use crate::sim::{E2e, Samples, Ttft};
use crate::workload::{Generator, Request, Workload, adapter_name, prompt_text};

/// What to send where.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Base URL of an OpenAI-compatible server or gateway (`http://127.0.0.1:8080`); requests go to
    /// `<url>/v1/completions`. A URL that already ends in `/completions` is used as is.
    pub url: String,
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
}

/// What a load run measured; `load --json` writes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadResult {
    /// Where the load went.
    pub url: String,
    /// Workload name.
    pub workload: String,
    /// Offered requests per second.
    pub rate: f64,
    /// Seconds during which requests were sent.
    pub duration_s: f64,
    /// Requests sent.
    pub requests: u64,
    /// Requests answered in full.
    pub completed: u64,
    /// Failed requests by HTTP status (`"429"`, `"503"`) or by `connect`, `timeout`, `stream`.
    pub errors: BTreeMap<String, u64>,
    /// Output tokens received per second of the run.
    pub throughput_tokens_per_s: f64,
    /// Time to first token of completed requests.
    pub ttft_ms: Ttft,
    /// End-to-end latency of completed requests.
    pub e2e_ms: E2e,
    /// Completed requests per second within TTFT ≤ 2 s and ≤ 100 ms per output token.
    pub goodput: f64,
}

#[derive(Debug, Default)]
struct Tally {
    samples: Samples,
    completed: u64,
    tokens: u64,
    errors: BTreeMap<String, u64>,
}

/// One request's outcome.
enum Outcome {
    Done {
        ttft: Duration,
        e2e: Duration,
        tokens: u32,
    },
    Failed(String),
}

fn endpoint(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if url.ends_with("/completions") {
        url.to_string()
    } else {
        format!("{url}/v1/completions")
    }
}

/// Runs the load and measures it.
pub async fn run(config: LoadConfig) -> LoadResult {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .expect("a client with default TLS-less settings builds");
    let target = Arc::new(endpoint(&config.url));
    let tally = Arc::new(Mutex::new(Tally::default()));
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
    let mut requests = 0u64;
    for req in generator {
        tokio::time::sleep_until(start + req.at).await;
        requests += 1;
        let (client, target, tally) = (client.clone(), Arc::clone(&target), Arc::clone(&tally));
        let model = match req.adapter {
            Some(a) => adapter_name(a),
            None => config.model.clone(),
        };
        let timeout = config.timeout;
        tasks.spawn(async move {
            let outcome =
                match tokio::time::timeout(timeout, one(&client, &target, &model, &req)).await {
                    Ok(o) => o,
                    Err(_) => Outcome::Failed("timeout".into()),
                };
            let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
            match outcome {
                Outcome::Done { ttft, e2e, tokens } => {
                    t.completed += 1;
                    t.tokens += u64::from(tokens);
                    t.samples.record(ttft, e2e, tokens, true);
                }
                Outcome::Failed(why) => *t.errors.entry(why).or_default() += 1,
            }
        });
        // Reap finished tasks so the set stays small on long runs.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start
        .elapsed()
        .as_secs_f64()
        .max(config.duration.as_secs_f64());
    let mut t = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
    let window = config.duration.as_secs_f64();
    LoadResult {
        url: config.url,
        workload: config.workload.name,
        rate: config.rate,
        duration_s: window,
        requests,
        completed: t.completed,
        errors: t.errors,
        throughput_tokens_per_s: t.tokens as f64 / elapsed,
        ttft_ms: t.samples.ttft(),
        e2e_ms: t.samples.e2e(),
        goodput: t.samples.good() as f64 / window,
    }
}

/// Sends one streaming completion and times it.
async fn one(client: &reqwest::Client, url: &str, model: &str, req: &Request) -> Outcome {
    let body = serde_json::json!({
        "model": model,
        "prompt": prompt_text(req, true),
        "max_tokens": req.output_tokens,
        "stream": true,
    });
    let sent = Instant::now();
    let resp = match client
        .post(url)
        // Gateways that cannot read the body (nginx auth_request) learn the model from this header.
        .header("x-gateway-model-name", model)
        .header("x-inferpick-priority", req.priority.to_string())
        .json(&body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "request failed");
            return Outcome::Failed("connect".into());
        }
    };
    if !resp.status().is_success() {
        return Outcome::Failed(resp.status().as_u16().to_string());
    }
    let mut ttft = None;
    let mut tokens = 0u32;
    let mut buf = Vec::new();
    let mut stream = resp.bytes_stream();
    let mut done = false;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return Outcome::Failed("stream".into());
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
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
                return Outcome::Failed("stream".into());
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
        _ => Outcome::Failed("stream".into()),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl LoadResult {
    /// A short human summary.
    pub fn summary(&self) -> String {
        use crate::sim::ms;
        let errors: Vec<String> = self
            .errors
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        format!(
            "{} requests to {} ({} at {:.1}/s for {:.0}s): {} completed, errors [{}]\n\
             TTFT p50 {} p90 {} p99 {} · e2e p50 {} p99 {} · {:.0} output tokens/s · goodput {:.2}/s",
            self.requests,
            self.url,
            self.workload,
            self.rate,
            self.duration_s,
            self.completed,
            errors.join(", "),
            ms(self.ttft_ms.p50),
            ms(self.ttft_ms.p90),
            ms(self.ttft_ms.p99),
            ms(self.e2e_ms.p50),
            ms(self.e2e_ms.p99),
            self.throughput_tokens_per_s,
            self.goodput
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulate::{self, Emulator, EmulatorConfig};
    use crate::engine::EngineConfig;
    use inferpick_schema::EngineKind;

    #[test]
    fn the_endpoint_is_derived_from_a_base_url() {
        assert_eq!(endpoint("http://h:1"), "http://h:1/v1/completions");
        assert_eq!(endpoint("http://h:1/"), "http://h:1/v1/completions");
        assert_eq!(
            endpoint("http://h:1/v1/chat/completions"),
            "http://h:1/v1/chat/completions"
        );
    }

    fn tiny() -> Workload {
        Workload::parse(
            "name: tiny\narrival: { process: poisson, rate_per_pod: 1 }\nclasses:\n  - { prompt_tokens: { uniform: [20, 200] }, output_tokens: { uniform: [3, 12] } }\n  - { weight: 0.5, prompt_tokens: { fixed: 50 }, output_tokens: { fixed: 4 }, adapters: { count: 1 } }\n",
            "tiny",
        )
        .unwrap()
    }

    #[tokio::test]
    async fn measures_an_emulator_and_counts_errors_by_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        // The emulator serves the base model only: adapter requests get 404s.
        let server = emulate::spawn(
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
        .unwrap();
        let result = run(LoadConfig {
            url: format!("http://{}", server.addr),
            workload: tiny(),
            rate: 40.0,
            duration: Duration::from_secs(1),
            seed: 3,
            model: "base".into(),
            timeout: Duration::from_secs(10),
        })
        .await;
        server.stop().await;
        assert!(result.requests > 10, "{result:?}");
        let not_found = result.errors.get("404").copied().unwrap_or(0);
        assert!(not_found > 0, "{result:?}");
        assert_eq!(result.completed + not_found, result.requests, "{result:?}");
        assert!(result.ttft_ms.p50 > 0.0 && result.ttft_ms.p50 <= result.e2e_ms.p50);
        assert!(result.throughput_tokens_per_s > 0.0);
        let v = serde_json::to_value(&result).unwrap();
        assert!(v["errors"]["404"].as_u64().unwrap() > 0);
        assert!(result.summary().contains("404"));
    }

    #[tokio::test]
    async fn a_dead_server_gives_connect_errors() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let result = run(LoadConfig {
            url: format!("http://{addr}"),
            workload: tiny(),
            rate: 20.0,
            duration: Duration::from_millis(300),
            seed: 1,
            model: "base".into(),
            timeout: Duration::from_secs(5),
        })
        .await;
        assert_eq!(result.completed, 0);
        assert_eq!(result.errors.get("connect").copied(), Some(result.requests));
    }
}
