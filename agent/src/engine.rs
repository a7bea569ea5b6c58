//! The HTTP side of talking to the engine: its `/metrics`, and the models it lists.
//!
//! Every call is bounded in time and in bytes read, so a hung or hostile engine costs the agent
//! one timeout and at most [`BODY_CAP`] bytes of memory.

use std::time::Duration;

use inferpick_schema::{EngineKind, ModelEntry};
use reqwest::{Client, StatusCode, Url};
use serde::Deserialize;

/// Most bytes of metrics the agent reads from an engine (a real vLLM exposition is 45–80 KB).
pub const BODY_CAP: usize = 8 << 20;
/// Most bytes of a `/v1/models` or `/info` answer.
const MODELS_CAP: usize = 1 << 20;

/// Why a scrape produced no exposition. The message is what the report's `engine.error` says.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScrapeError {
    /// Nothing answered at the address.
    #[error("cannot reach {url}: {cause}")]
    Unreachable {
        /// The URL.
        url: String,
        /// The connection error.
        cause: String,
    },
    /// The engine took longer than the scrape timeout.
    #[error("{url} did not answer within {timeout:?}")]
    Timeout {
        /// The URL.
        url: String,
        /// The bound.
        timeout: Duration,
    },
    /// The engine answered with an error status.
    #[error("{url} answered HTTP {status}{hint}: {excerpt:?}")]
    Status {
        /// The URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// Start of the body.
        excerpt: String,
        /// What to do about it, when known.
        hint: String,
    },
    /// More than [`BODY_CAP`] bytes.
    #[error(
        "{url} sent more than {cap} bytes of metrics; refusing it (the cap bounds the agent's memory)"
    )]
    TooLarge {
        /// The URL.
        url: String,
        /// The cap.
        cap: usize,
    },
    /// Not UTF-8 text.
    #[error("{url} sent metrics that are not UTF-8 text")]
    NotText {
        /// The URL.
        url: String,
    },
    /// Text, but not a Prometheus exposition.
    #[error("{url} is not a Prometheus exposition: {cause}")]
    Parse {
        /// The URL.
        url: String,
        /// The parser's complaint, with the line.
        cause: String,
    },
    /// A valid exposition with no engine's metrics in it.
    #[error(
        "{url} has no known engine's metrics (looked for vllm:, sglang:, sglang_, tgi_, nv_trt_llm_, \
         trtllm_, llamacpp:, lmdeploy: names); is this the engine's /metrics, or pass --engine"
    )]
    Unrecognized {
        /// The URL.
        url: String,
    },
    /// `--engine` named an engine whose metrics are not there.
    #[error("{url} has no {kind} metrics; is --engine {kind} right? (--engine auto detects it)")]
    WrongEngine {
        /// The URL.
        url: String,
        /// The engine asked for.
        kind: EngineKind,
    },
}

impl ScrapeError {
    /// The `result` label of `inferpick_agent_scrapes_total` for this failure.
    pub fn kind(&self) -> &'static str {
        match self {
            ScrapeError::Unreachable { .. } => "unreachable",
            ScrapeError::Timeout { .. } => "timeout",
            ScrapeError::Status { .. } => "http_error",
            ScrapeError::TooLarge { .. } => "too_large",
            ScrapeError::NotText { .. } | ScrapeError::Parse { .. } => "parse_error",
            ScrapeError::Unrecognized { .. } | ScrapeError::WrongEngine { .. } => "unrecognized",
        }
    }
}

/// An engine's HTTP endpoints.
#[derive(Debug, Clone)]
pub struct Engine {
    client: Client,
    metrics: Url,
    timeout: Duration,
}

#[derive(Deserialize)]
struct ModelList {
    data: Vec<ModelCard>,
}

#[derive(Deserialize)]
struct ModelCard {
    id: String,
    /// vLLM names the base model of a LoRA adapter here.
    #[serde(default)]
    parent: Option<String>,
}

#[derive(Deserialize)]
struct TgiInfo {
    model_id: String,
}

impl Engine {
    /// An engine whose metrics are at `metrics`, each call bounded by `timeout`.
    pub fn new(metrics: Url, timeout: Duration) -> Self {
        let client = Client::builder()
            .connect_timeout(timeout)
            .pool_max_idle_per_host(2)
            .build()
            .expect("a plain HTTP client builds");
        Engine {
            client,
            metrics,
            timeout,
        }
    }

    /// The metrics URL.
    pub fn url(&self) -> &Url {
        &self.metrics
    }

    /// Fetches the exposition text.
    pub async fn scrape(&self) -> Result<String, ScrapeError> {
        let body = self.get(self.metrics.clone(), BODY_CAP).await?;
        String::from_utf8(body).map_err(|_| ScrapeError::NotText {
            url: self.metrics.to_string(),
        })
    }

    /// The models the engine lists at `/v1/models` (or TGI's `/info`); `None` when it lists none.
    /// Both reads together take at most the scrape timeout: the listing runs beside every scrape
    /// while the engine has listed no names, and a hanging engine must not stretch the interval.
    pub async fn models(&self) -> Option<Vec<ModelEntry>> {
        tokio::time::timeout(self.timeout, self.list_models())
            .await
            .ok()
            .flatten()
    }

    async fn list_models(&self) -> Option<Vec<ModelEntry>> {
        let at = |path: &str| {
            let mut u = self.metrics.clone();
            u.set_path(path);
            u.set_query(None);
            u
        };
        if let Ok(body) = self.get(at("/v1/models"), MODELS_CAP).await
            && let Ok(list) = serde_json::from_slice::<ModelList>(&body)
        {
            let models: Vec<ModelEntry> = list
                .data
                .into_iter()
                .filter(|c| {
                    !c.id.is_empty() && c.id.len() <= inferpick_schema::Limits::MAX_STRING_BYTES
                })
                .map(|c| ModelEntry {
                    adapter_of: c.parent.filter(|p| *p != c.id && !p.is_empty()),
                    name: c.id,
                })
                .collect();
            return (!models.is_empty()).then_some(models);
        }
        let body = self.get(at("/info"), MODELS_CAP).await.ok()?;
        let info: TgiInfo = serde_json::from_slice(&body).ok()?;
        Some(vec![ModelEntry {
            name: info.model_id,
            adapter_of: None,
        }])
    }

    async fn get(&self, url: Url, cap: usize) -> Result<Vec<u8>, ScrapeError> {
        let shown = url.to_string();
        let timeout = self.timeout;
        let fetch = async {
            let mut resp = self
                .client
                .get(url)
                .header("accept", "text/plain;version=0.0.4, */*;q=0.1")
                .send()
                .await
                .map_err(|e| ScrapeError::Unreachable {
                    url: shown.clone(),
                    cause: error_chain(&e),
                })?;
            let status = resp.status();
            if resp.content_length().is_some_and(|n| n > cap as u64) && status.is_success() {
                return Err(ScrapeError::TooLarge {
                    url: shown.clone(),
                    cap,
                });
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| ScrapeError::Unreachable {
                url: shown.clone(),
                cause: error_chain(&e),
            })? {
                if body.len() + chunk.len() > cap {
                    if !status.is_success() {
                        break;
                    }
                    return Err(ScrapeError::TooLarge {
                        url: shown.clone(),
                        cap,
                    });
                }
                body.extend_from_slice(&chunk);
            }
            if !status.is_success() {
                return Err(status_error(&shown, status, &body));
            }
            Ok(body)
        };
        tokio::time::timeout(timeout, fetch)
            .await
            .unwrap_or(Err(ScrapeError::Timeout {
                url: shown,
                timeout,
            }))
    }
}

fn status_error(url: &str, status: StatusCode, body: &[u8]) -> ScrapeError {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)])
        .trim()
        .to_string();
    let hint = if status == StatusCode::NOT_IMPLEMENTED && text.contains("metrics") {
        " (llama.cpp serves /metrics only when llama-server is started with --metrics)".to_string()
    } else {
        String::new()
    };
    ScrapeError::Status {
        url: url.to_string(),
        status: status.as_u16(),
        excerpt: text,
        hint,
    }
}

/// An error and its causes on one line: reqwest's own message alone says only "error sending
/// request", so that generic head is replaced by what caused it.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    if out.starts_with("error sending request")
        && let Some(cause) = e.source()
    {
        return error_chain(cause);
    }
    let mut source = e.source();
    while let Some(s) = source {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        source = s.source();
    }
    out
}
