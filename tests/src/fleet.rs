//! An inferpick fleet in this process, on loopback: emulated model servers (`inferpick-lab`), one
//! agent per server (`inferpick-agent`, with a fake GPU where asked), picker replicas
//! (`inferpick-picker`) that every agent pushes to, and the calls a gateway makes through it.
//!
//! Everything binds `127.0.0.1:0`, runs on the caller's tokio runtime, and stops when the
//! [`Fleet`] is dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use inferpick_agent::gpu::GpuSource;
use inferpick_lab::emulate::{self, Emulator, EmulatorConfig};
use inferpick_lab::engine::EngineConfig;
use inferpick_schema::{Decision, EngineKind, ErrorBody, Gpu, PickRequest};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{ScratchDir, free_port, wait_until_async};

/// One model-server pod: an emulated engine and its agent.
#[derive(Debug, Clone)]
pub struct PodSpec {
    /// The engine dialect the emulator speaks (and the agent is told).
    pub engine: EngineKind,
    /// The base model it serves.
    pub model: String,
    /// The GPU its agent reports, if any (a fake NVML).
    pub gpu: Option<Gpu>,
    /// More flags for its agent (`--kv-events=…`).
    pub agent_args: Vec<String>,
    /// The emulator publishes its KV events (with a replay socket) and the agent follows them.
    pub kv_events: bool,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// The pods.
    pub pods: Vec<PodSpec>,
    /// Picker replicas.
    pub pickers: usize,
    /// The YAML config file every picker reads (`listen` and `grpc_listen` are overridden).
    pub picker_config: String,
    /// Size and speed of every emulated engine.
    pub engine: EngineConfig,
    /// The agents' scrape and push period.
    pub interval: Duration,
    /// Also start an agent whose engine never answers (its scrapes fail).
    pub agent_without_engine: bool,
    /// Also push every report to a port nobody listens on (those pushes fail).
    pub dead_push_target: bool,
    /// Also push every report to these pickers (`http://host:port`), e.g. one the test restarts.
    pub extra_push_targets: Vec<String>,
}

impl Default for FleetSpec {
    fn default() -> Self {
        Self {
            pods: Vec::new(),
            pickers: 1,
            picker_config: String::new(),
            engine: EngineConfig::default(),
            interval: Duration::from_millis(100),
            agent_without_engine: false,
            dead_push_target: false,
            extra_push_targets: Vec::new(),
        }
    }
}

/// A GPU that always reads the same.
#[derive(Debug)]
struct FixedGpu(Gpu);

impl GpuSource for FixedGpu {
    fn read(&self) -> Vec<Gpu> {
        vec![self.0.clone()]
    }
}

/// A spawned server and the signal that stops it; dropping it stops the server.
#[derive(Debug)]
struct Task {
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<()>,
}

impl Task {
    fn spawn<F>(name: String, serve: impl FnOnce(oneshot::Receiver<()>) -> F) -> Self
    where
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        let future = serve(stopped);
        let handle = tokio::spawn(async move {
            if let Err(e) = future.await {
                eprintln!("{name} stopped with an error: {e}");
            }
        });
        Self {
            stop: Some(stop),
            handle,
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.handle.abort();
    }
}

/// A running agent.
#[derive(Debug)]
pub struct AgentHandle {
    /// Its `/metrics` address.
    pub metrics: SocketAddr,
    /// The endpoint it reports (`ip:port` of its engine).
    pub endpoint: String,
    _task: Task,
}

/// A running picker replica.
#[derive(Debug)]
pub struct PickerHandle {
    /// Its HTTP address (API and `/metrics`).
    pub addr: SocketAddr,
    _task: Task,
}

/// The fleet; everything stops when it is dropped.
#[derive(Debug)]
pub struct Fleet {
    /// The emulated engines, in the order of [`FleetSpec::pods`].
    pub engines: Vec<emulate::Running>,
    /// The agents: one per engine, then the one without an engine if asked.
    pub agents: Vec<AgentHandle>,
    /// The picker replicas.
    pub pickers: Vec<PickerHandle>,
    http: reqwest::Client,
    _dir: ScratchDir,
}

/// What a pick ended in.
#[derive(Debug)]
pub enum PickOutcome {
    /// Routed: the decision.
    Routed(Decision),
    /// Refused: HTTP status and the error body.
    Refused(u16, ErrorBody),
}

impl Fleet {
    /// Starts pickers, emulators and agents, and waits until every picker has a ready entry for
    /// every emulated endpoint.
    pub async fn start(spec: FleetSpec) -> anyhow::Result<Self> {
        Self::start_with_adapters(spec, &[]).await
    }

    /// [`Fleet::start`], where pod `i` also serves the LoRA adapters `adapters[i]` of its model
    /// (listed in its `/v1/models`, so the picker routes them to it alone).
    pub async fn start_with_adapters(
        spec: FleetSpec,
        adapters: &[Vec<String>],
    ) -> anyhow::Result<Self> {
        let dir = ScratchDir::new("fleet")?;
        let config = dir.write("picker.yaml", &spec.picker_config)?;
        let mut pickers = Vec::new();
        for i in 0..spec.pickers {
            let args = inferpick_picker::Args::try_parse_from([
                "inferpick-picker".to_owned(),
                format!("--config={}", config.display()),
                "--listen=127.0.0.1:0".to_owned(),
                "--grpc-listen=off".to_owned(),
            ])?;
            let settings = inferpick_picker::Settings::from_args(args)
                .map_err(|e| anyhow::anyhow!("picker config: {e}"))?;
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let task = Task::spawn(format!("picker {i}"), |stop| async move {
                inferpick_picker::run(settings, listener, async move {
                    let _ = stop.await;
                })
                .await
                .map_err(|e| e.to_string())
            });
            pickers.push(PickerHandle { addr, _task: task });
        }
        let mut push_targets: Vec<String> = pickers
            .iter()
            .map(|p| format!("http://{}", p.addr))
            .collect();
        push_targets.extend(spec.extra_push_targets.iter().cloned());
        if spec.dead_push_target {
            push_targets.push(format!("http://127.0.0.1:{}", free_port()?));
        }

        let mut engines = Vec::new();
        let mut agents = Vec::new();
        for (i, pod) in spec.pods.iter().enumerate() {
            let emulator = Emulator::new(EmulatorConfig {
                tokenizer: inferpick_lab::tokenizer::builtin(),
                kind: pod.engine,
                model: pod.model.clone(),
                adapters: adapters.get(i).cloned().unwrap_or_default(),
                engine: spec.engine.clone(),
            });
            let mut agent_args = pod.agent_args.clone();
            if pod.kv_events {
                let kv = emulator
                    .publish_kv_events("tcp://127.0.0.1:0", Some("tcp://127.0.0.1:0"))
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?;
                agent_args.push(format!("--kv-events={}", kv.events));
                agent_args.extend(kv.replay.map(|r| format!("--kv-events-replay={r}")));
            }
            let running = emulate::spawn(emulator, TcpListener::bind("127.0.0.1:0").await?)?;
            let endpoint = running.addr.to_string();
            let gpu = pod
                .gpu
                .clone()
                .map(|g| Arc::new(FixedGpu(g)) as Arc<dyn GpuSource>);
            agents.push(
                start_agent(
                    &endpoint,
                    Some(pod.engine),
                    &push_targets,
                    spec.interval,
                    gpu,
                    &agent_args,
                )
                .await?,
            );
            engines.push(running);
        }
        if spec.agent_without_engine {
            let endpoint = format!("127.0.0.1:{}", free_port()?);
            agents
                .push(start_agent(&endpoint, None, &push_targets, spec.interval, None, &[]).await?);
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let fleet = Self {
            engines,
            agents,
            pickers,
            http,
            _dir: dir,
        };
        fleet.wait_until_routable(Duration::from_secs(20)).await?;
        Ok(fleet)
    }

    /// `host:port` of every agent's `/metrics`.
    pub fn agent_targets(&self) -> Vec<String> {
        self.agents.iter().map(|a| a.metrics.to_string()).collect()
    }

    /// `host:port` of every picker (API and `/metrics`).
    pub fn picker_targets(&self) -> Vec<String> {
        self.pickers.iter().map(|p| p.addr.to_string()).collect()
    }

    /// Waits until every picker lists every engine's endpoint as `ready`.
    pub async fn wait_until_routable(&self, timeout: Duration) -> anyhow::Result<()> {
        let wanted: Vec<String> = self.engines.iter().map(|e| e.addr.to_string()).collect();
        wait_until_async(
            timeout,
            "every picker to have every endpoint ready",
            || async {
                for picker in &self.pickers {
                    let table = self
                        .endpoints(picker.addr)
                        .await
                        .map_err(|e| e.to_string())?;
                    for endpoint in &wanted {
                        let state = table["endpoints"]
                            .as_array()
                            .and_then(|es| es.iter().find(|e| e["address"] == endpoint.as_str()))
                            .map(|e| e["state"].clone());
                        if state != Some(json!("ready")) {
                            return Err(format!("{endpoint} at picker {}: {state:?}", picker.addr));
                        }
                    }
                }
                Ok(())
            },
        )
        .await?;
        Ok(())
    }

    /// A picker's `GET /v1/endpoints`.
    pub async fn endpoints(&self, picker: SocketAddr) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(format!("http://{picker}/v1/endpoints"))
            .send()
            .await?;
        Ok(response.error_for_status()?.json().await?)
    }

    /// `POST /v1/pick` on the picker replica `picker` (index).
    pub async fn pick(&self, picker: usize, request: &PickRequest) -> anyhow::Result<PickOutcome> {
        let addr = self.pickers.get(picker).context("no such picker")?.addr;
        let response = self
            .http
            .post(format!("http://{addr}/v1/pick"))
            .json(request)
            .send()
            .await?;
        let status = response.status().as_u16();
        if status == 200 {
            Ok(PickOutcome::Routed(response.json().await?))
        } else {
            let body: ErrorBody = response
                .json()
                .await
                .with_context(|| format!("status {status}"))?;
            Ok(PickOutcome::Refused(status, body))
        }
    }

    /// A non-streaming completion of `max_tokens` tokens on `endpoint` (`ip:port`); returns the
    /// response's `usage.prompt_tokens_details.cached_tokens`.
    pub async fn complete(
        &self,
        endpoint: &str,
        model: &str,
        prompt: &str,
        max_tokens: u32,
    ) -> anyhow::Result<Option<u32>> {
        let response = self
            .http
            .post(format!("http://{endpoint}/v1/completions"))
            .json(&json!({"model": model, "prompt": prompt, "max_tokens": max_tokens}))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!(
                "completion on {endpoint}: {} {}",
                response.status(),
                response.text().await?
            );
        }
        // The engine's count of prompt tokens its prefix cache served, when it says.
        let body: Value = response.json().await?;
        Ok(body["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok()))
    }

    /// `POST /v1/done` for a decision.
    pub async fn done(&self, picker: usize, decision: &Decision) -> anyhow::Result<()> {
        self.done_with(picker, decision, None).await
    }

    /// `POST /v1/done` with the engine's count of cached prompt tokens, as a gateway that reads
    /// the response's usage reports it.
    pub async fn done_with(
        &self,
        picker: usize,
        decision: &Decision,
        cached_tokens: Option<u32>,
    ) -> anyhow::Result<()> {
        let addr = self.pickers.get(picker).context("no such picker")?.addr;
        self.http
            .post(format!("http://{addr}/v1/done"))
            .json(&json!({"decision_id": decision.decision_id, "cached_tokens": cached_tokens}))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// What a gateway does for one request: pick, send it to the chosen endpoint, report done.
    pub async fn route(
        &self,
        picker: usize,
        request: &PickRequest,
        max_tokens: u32,
    ) -> anyhow::Result<PickOutcome> {
        let outcome = self.pick(picker, request).await?;
        if let PickOutcome::Routed(decision) = &outcome {
            let prompt = request.prompt.as_deref().unwrap_or("Hello");
            let cached = self
                .complete(&decision.endpoint, &decision.model, prompt, max_tokens)
                .await?;
            self.done_with(picker, decision, cached).await?;
        }
        Ok(outcome)
    }
}

/// Starts an agent for `endpoint`; `engine` None means nothing serves there.
async fn start_agent(
    endpoint: &str,
    engine: Option<EngineKind>,
    push_targets: &[String],
    interval: Duration,
    gpu: Option<Arc<dyn GpuSource>>,
    extra: &[String],
) -> anyhow::Result<AgentHandle> {
    let mut args = vec![
        "inferpick-agent".to_owned(),
        format!("--engine-url=http://{endpoint}/metrics"),
        format!("--endpoint={endpoint}"),
        format!("--picker={}", push_targets.join(",")),
        format!("--interval={}ms", interval.as_millis()),
        "--gpu=none".to_owned(),
        "--pod=fleet-pod".to_owned(),
        "--namespace=fleet".to_owned(),
        "--node=loopback".to_owned(),
    ];
    if let Some(engine) = engine {
        args.push(format!("--engine={}", engine.as_str()));
    }
    args.extend(extra.iter().cloned());
    let args = inferpick_agent::Args::try_parse_from(args)?;
    let config = inferpick_agent::Config::from_args(&args).map_err(|errors| {
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("agent flags: {}", messages.join("; "))
    })?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let metrics = listener.local_addr()?;
    let task = Task::spawn(format!("agent for {endpoint}"), |stop| async move {
        inferpick_agent::serve_with(config, listener, gpu, async move {
            let _ = stop.await;
        })
        .await
        .map_err(|e| e.to_string())
    });
    Ok(AgentHandle {
        metrics,
        endpoint: endpoint.to_owned(),
        _task: task,
    })
}
