//! `--gpu-state-url`: GPUs read over HTTP instead of NVML, for emulated fleets and tests. The URL
//! answers a JSON array of the report's `gpus[]` entries; what it answers is checked by the
//! schema's rules, and a bad or late answer reports no GPUs for that interval.

use std::sync::Mutex;
use std::time::Duration;

use inferpick_schema::{
    AgentInfo, EndpointInfo, EngineKind, EngineStatus, Gpu, Load, LoadReport, SCHEMA_VERSION,
};
use reqwest::{Client, Url};

use super::GpuSource;
use crate::engine::error_chain;

/// Most bytes of one answer (16 GPUs with every field take about 8 KB).
const BODY_CAP: usize = 256 << 10;

/// GPUs as the server at a URL describes them.
pub struct StateUrlSource {
    client: Client,
    url: Url,
    timeout: Duration,
    /// The runtime that drives the fetches: [`GpuSource::read`] is called off it.
    runtime: tokio::runtime::Handle,
    /// The last failure logged, so that a server that stays down is logged once.
    last_error: Mutex<Option<String>>,
}

impl StateUrlSource {
    /// A source reading `url`, each read bounded by `timeout`. Call it on the runtime that is to
    /// drive the reads.
    pub fn new(url: Url, timeout: Duration) -> Self {
        let client = Client::builder()
            .connect_timeout(timeout)
            .pool_max_idle_per_host(1)
            .build()
            .expect("a plain HTTP client builds");
        StateUrlSource {
            client,
            url,
            timeout,
            runtime: tokio::runtime::Handle::current(),
            last_error: Mutex::new(None),
        }
    }

    /// One answer, decoded and checked, or what was wrong with it.
    pub async fn fetch(&self) -> Result<Vec<Gpu>, String> {
        let body = tokio::time::timeout(self.timeout, self.get())
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)))?;
        let gpus: Vec<Gpu> = inferpick_schema::decode_json(&body)
            .map_err(|e| format!("not a JSON array of GPUs: {e}"))?;
        check(gpus)
    }

    async fn get(&self) -> Result<Vec<u8>, String> {
        let mut resp = self
            .client
            .get(self.url.clone())
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| error_chain(&e))? {
            if body.len() + chunk.len() > BODY_CAP {
                return Err(format!("more than {BODY_CAP} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Logs a failure when it differs from the last one, and the recovery after one.
    fn log(&self, outcome: Result<(), &str>) {
        let mut last = self.last_error.lock().expect("log lock");
        match outcome {
            Err(e) if last.as_deref() != Some(e) => {
                tracing::warn!(
                    "GPU state from {}: {e}; no GPUs reported while it lasts",
                    self.url
                );
                *last = Some(e.to_string());
            }
            Ok(()) if last.is_some() => {
                tracing::info!("GPU state from {} read again", self.url);
                *last = None;
            }
            _ => {}
        }
    }
}

impl GpuSource for StateUrlSource {
    fn read(&self) -> Vec<Gpu> {
        match self.runtime.block_on(self.fetch()) {
            Ok(gpus) => {
                self.log(Ok(()));
                gpus
            }
            Err(e) => {
                self.log(Err(&e));
                Vec::new()
            }
        }
    }
}

/// `gpus` if a report may carry them, else the first rule they break: the schema checks GPUs as
/// part of a report, so they are checked inside a report that is valid otherwise.
fn check(gpus: Vec<Gpu>) -> Result<Vec<Gpu>, String> {
    let report = LoadReport {
        schema_version: SCHEMA_VERSION,
        agent: AgentInfo {
            id: "gpu-state".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            started_at_ms: 0,
        },
        seq: 1,
        sent_at_ms: 0,
        interval_ms: 1,
        endpoint: EndpointInfo {
            address: "127.0.0.1:1".into(),
            pod: None,
            namespace: None,
            node: None,
        },
        engine: EngineStatus {
            kind: EngineKind::Unknown,
            ready: true,
            error: None,
            scrape_ms: None,
            tensor_parallel_size: None,
        },
        models: Vec::new(),
        load: Load::default(),
        gpus,
    };
    report.validate().map_err(|e| e.to_string())?;
    Ok(report.gpus)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::get;
    use inferpick_schema::{GpuHealth, ThrottleReason};

    use super::*;

    /// What the test server answers next: a status and a body, or nothing ever.
    type Answer = Arc<Mutex<Option<(StatusCode, String)>>>;

    /// A GPU state server on a port of its own; it accepts connections as soon as this returns.
    async fn server(answer: Answer) -> Url {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route(
            "/lab/gpus",
            get(move || {
                let answer = answer.lock().unwrap().clone();
                async move {
                    match answer {
                        Some(a) => a,
                        None => std::future::pending().await,
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Url::parse(&format!("http://{addr}/lab/gpus")).unwrap()
    }

    fn gpu_json(extra: &str) -> String {
        format!(
            r#"[{{"uuid": "GPU-emulated-0", "index": 0, "name": "NVIDIA H100 80GB HBM3"{extra}}}]"#
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_the_gpus_served_and_rejects_what_breaks_the_schema() {
        let answer: Answer = Arc::new(Mutex::new(None));
        let url = server(answer.clone()).await;
        let source = Arc::new(StateUrlSource::new(url, Duration::from_millis(300)));
        let set = |status: u16, body: String| {
            *answer.lock().unwrap() = Some((StatusCode::from_u16(status).unwrap(), body));
        };

        set(
            200,
            gpu_json(
                r#", "health": {"throttle": ["hw-thermal"], "sm_clock_mhz": 990,
                    "sm_clock_max_mhz": 1980, "xid_errors": [79]}"#,
            ),
        );
        let gpus = source.fetch().await.unwrap();
        assert_eq!(gpus.len(), 1);
        assert_eq!(gpus[0].uuid, "GPU-emulated-0");
        let h: &GpuHealth = gpus[0].health.as_ref().unwrap();
        assert_eq!(h.throttle, vec![ThrottleReason::HwThermal]);
        assert_eq!(h.speed(), 0.5);
        assert!(h.fatal().unwrap().contains("XID 79"));
        // The blocking read the sampler calls, off the runtime.
        let s = source.clone();
        let read = tokio::task::spawn_blocking(move || s.read()).await.unwrap();
        assert_eq!(read, gpus);

        for (status, body, says) in [
            (
                200,
                gpu_json(r#", "utilization_percent": 150"#),
                "gpus[0].utilization_percent",
            ),
            (200, r#"[{"uuid": ""}]"#.to_string(), "gpus[0].uuid"),
            (
                200,
                gpu_json(&format!(
                    r#", "health": {{"xid_errors": {:?}}}"#,
                    (1..=17).collect::<Vec<u32>>()
                )),
                "gpus[0].health.xid_errors",
            ),
            (
                200,
                r#"{"uuid": "GPU-1"}"#.to_string(),
                "not a JSON array of GPUs",
            ),
            (200, r#"[{"index": 0}]"#.to_string(), "uuid"),
            (500, "broken".to_string(), "HTTP 500"),
        ] {
            set(status, body.clone());
            let err = source.fetch().await.unwrap_err();
            assert!(err.contains(says), "{body}: {err}");
            let s = source.clone();
            let read = tokio::task::spawn_blocking(move || s.read()).await.unwrap();
            assert_eq!(read, vec![], "{body}: GPUs reported from a bad answer");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_that_does_not_answer_costs_one_timeout() {
        let url = server(Arc::new(Mutex::new(None))).await;
        let source = StateUrlSource::new(url, Duration::from_millis(50));
        let err = source.fetch().await.unwrap_err();
        assert_eq!(err, "no answer within 50ms");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_listening_is_an_error_not_a_crash() {
        let source = StateUrlSource::new(
            Url::parse("http://127.0.0.1:1/lab/gpus").unwrap(),
            Duration::from_millis(200),
        );
        let err = source.fetch().await.unwrap_err();
        assert!(!err.is_empty());
    }
}
