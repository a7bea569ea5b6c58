//! Fakes for the agent's integration tests: an engine whose behaviour can be switched while the
//! agent runs, and pickers that record what they are sent.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use inferpick_schema::LoadReport;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the fake engine's `/metrics` does.
#[derive(Clone)]
pub enum Behavior {
    /// 200 with this exposition.
    Serve(String),
    /// This status with a short body.
    Status(u16, &'static str),
    /// Never answers.
    Hang,
    /// 200 with this many bytes of valid-looking metrics.
    Huge(usize),
}

/// A fake model server: `/metrics` as its [`Behavior`] says, `/v1/models` listing
/// `served-model` (after answering 503 to as many reads as [`FakeEngine::models_loading_for`] set).
pub struct FakeEngine {
    pub addr: SocketAddr,
    state: EngineState,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct EngineState {
    behavior: Arc<Mutex<Behavior>>,
    /// `/v1/models` reads still to be refused with 503.
    models_loading: Arc<AtomicUsize>,
    /// `/v1/models` reads so far.
    models_reads: Arc<AtomicUsize>,
}

impl FakeEngine {
    pub async fn start(behavior: Behavior) -> Self {
        let state = EngineState {
            behavior: Arc::new(Mutex::new(behavior)),
            models_loading: Arc::new(AtomicUsize::new(0)),
            models_reads: Arc::new(AtomicUsize::new(0)),
        };
        let app = Router::new()
            .route("/metrics", get(engine_metrics))
            .route("/v1/models", get(engine_models))
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeEngine { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/metrics", self.addr)
    }

    pub fn set(&self, behavior: Behavior) {
        *self.state.behavior.lock().unwrap() = behavior;
    }

    /// The next `reads` reads of `/v1/models` answer 503 "Loading model", as llama.cpp and vLLM
    /// do while the weights load.
    pub fn models_loading_for(&self, reads: usize) {
        self.state.models_loading.store(reads, Ordering::SeqCst);
    }

    /// How many times `/v1/models` has been read.
    pub fn models_reads(&self) -> usize {
        self.state.models_reads.load(Ordering::SeqCst)
    }
}

impl Drop for FakeEngine {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn engine_models(State(s): State<EngineState>) -> Response {
    s.models_reads.fetch_add(1, Ordering::SeqCst);
    let loading = s
        .models_loading
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if loading {
        let body = serde_json::json!({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}});
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    axum::Json(
        serde_json::json!({"object": "list", "data": [{"id": "served-model", "object": "model"}]}),
    )
    .into_response()
}

async fn engine_metrics(State(s): State<EngineState>) -> Response {
    let behavior = s.behavior.lock().unwrap().clone();
    match behavior {
        Behavior::Serve(text) => text.into_response(),
        Behavior::Status(code, body) => (StatusCode::from_u16(code).unwrap(), body).into_response(),
        Behavior::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Behavior::Huge(n) => {
            let line = "vllm:num_requests_waiting{model_name=\"m\"} 1\n";
            line.repeat(n / line.len() + 1).into_response()
        }
    }
}

/// Reports a fake picker received, with their Authorization header and arrival time.
pub type Received = Arc<Mutex<Vec<(LoadReport, Option<String>, Instant)>>>;

/// A fake picker that records every report and the Authorization header it came with.
pub struct FakePicker {
    pub addr: SocketAddr,
    pub received: Received,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct PickerState {
    received: Received,
    hang: bool,
}

impl FakePicker {
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// A picker that accepts connections but never answers a push.
    pub async fn start_hanging() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(hang: bool) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let app = picker_app(received.clone(), hang);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakePicker {
            addr,
            received,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// The last report received.
    pub fn last(&self) -> Option<LoadReport> {
        self.received
            .lock()
            .unwrap()
            .last()
            .map(|(r, _, _)| r.clone())
    }

    pub fn seqs(&self) -> Vec<u64> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|(r, _, _)| r.seq)
            .collect()
    }

    /// Stops answering: the port closes.
    pub fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for FakePicker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The fake picker's routes, recording into `received` (or never answering, with `hang`).
pub fn picker_app(received: Received, hang: bool) -> Router {
    Router::new()
        .route("/v1/reports", any(picker_reports))
        .with_state(PickerState { received, hang })
}

async fn picker_reports(
    State(s): State<PickerState>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    if s.hang {
        std::future::pending::<()>().await;
    }
    let report: LoadReport = serde_json::from_slice(&body).expect("the agent sends valid JSON");
    report.validate().expect("the agent sends valid reports");
    let auth = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string());
    s.received
        .lock()
        .unwrap()
        .push((report, auth, Instant::now()));
    StatusCode::NO_CONTENT
}

/// Polls `check` every 10 ms until it holds or `within` passes.
pub async fn wait_until(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A running in-process agent with the given extra flags; stopped on drop.
pub struct Agent {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: JoinHandle<Result<(), inferpick_agent::AgentError>>,
}

impl Agent {
    pub async fn start(engine_url: &str, extra: &[&str]) -> Self {
        Self::start_with_gpus(engine_url, extra, None).await
    }

    pub async fn start_with_gpus(
        engine_url: &str,
        extra: &[&str],
        gpus: Option<Arc<dyn inferpick_agent::gpu::GpuSource>>,
    ) -> Self {
        use clap::Parser;
        let mut argv = vec![
            "inferpick-agent",
            "--engine-url",
            engine_url,
            "--endpoint",
            "10.0.0.1:8000",
            "--gpu",
            "none",
        ];
        argv.extend_from_slice(extra);
        let args = inferpick_agent::Args::try_parse_from(argv).unwrap();
        let config = inferpick_agent::Config::from_args(&args).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(inferpick_agent::serve_with(
            config,
            listener,
            gpus,
            async move {
                let _ = rx.await;
            },
        ));
        Agent {
            addr,
            stop: Some(tx),
            task,
        }
    }

    pub async fn report(&self) -> Option<LoadReport> {
        let resp = reqwest::get(format!("http://{}/v1/report", self.addr))
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().await.ok()
    }

    /// Polls `/v1/report` until `check` holds for the latest report.
    pub async fn wait_for_report(
        &self,
        within: Duration,
        what: &str,
        check: impl Fn(&LoadReport) -> bool,
    ) -> LoadReport {
        let deadline = Instant::now() + within;
        loop {
            if let Some(r) = self.report().await
                && check(&r)
            {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for a report with {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Tells the agent to stop without waiting for it.
    pub fn signal_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    pub async fn stop(mut self) {
        self.signal_stop();
        (&mut self.task).await.unwrap().unwrap();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/metrics")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The agent binary, scraping `engine_url` for endpoint 10.0.0.1:8000 with no GPUs and its own
/// port OS-chosen, plus `extra` flags; stdout discarded, stderr as given. Killed on drop.
pub struct AgentProcess(pub Child);

impl AgentProcess {
    pub fn spawn(engine_url: &str, extra: &[&str], stderr: Stdio) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_inferpick-agent"));
        cmd.args(["--engine-url", engine_url, "--endpoint", "10.0.0.1:8000"])
            .args(["--gpu", "none", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(stderr);
        AgentProcess(cmd.spawn().expect("the agent binary starts"))
    }

    /// Polls for the exit status for up to `within`.
    pub async fn exited_within(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "still running after {within:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
