//! `demo`: a whole inferpick fleet on loopback — emulated engines, the real agent beside each, the
//! real picker, and a gateway (round robin, or inferpick through the picker) — then the same
//! open-loop workload through each policy, each on a fresh fleet, and the comparison
//! ([`report`]). With `--keep`, a fleet and gateway per policy are started and left serving for
//! other clients instead.
//!
//! With `--fault` a pod's GPU goes bad during each run ([`fault`]) and the report shows how
//! routing followed ([`shares`]).
//!
//! Everything runs in this process on ports the OS chose, so the demo needs nothing but `cargo`.

pub mod external;
pub mod fault;
pub mod gateway;
pub mod report;
pub mod shares;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use inferpick_schema::EngineKind;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::emulate::{self, Emulator, EmulatorConfig, Running};
use crate::engine::EngineConfig;
use crate::load::{self, Api, LoadConfig, LoadResult};
use crate::sim::{E2e, PolicyResult, SimReport, Ttft, capacity};
use crate::workload::Workload;
use fault::Fault;
use gateway::{Gateway, Route, RunningGateway};
use shares::FaultRun;

/// The demo's default workload (lab/workloads/demo.yaml): short chat, long prompts sharing a
/// system prompt or document, and LoRA adapters, with short answers so a laptop streams it in real time.
pub const DEMO_WORKLOAD: &str = include_str!("../../workloads/demo.yaml");

/// The base model the demo's emulators serve.
pub const DEMO_MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// Which gateway fronts the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GatewayKind {
    /// The lab's own reverse proxy (needs nothing installed).
    Builtin,
    /// Real nginx with `auth_request` (`deploy/gateways/nginx/`), if installed.
    Nginx,
    /// Real Envoy with ext_proc, the endpoint-picker protocol (`deploy/gateways/envoy/`), if installed.
    Envoy,
}

/// The demo's settings.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Emulated pods.
    pub pods: u32,
    /// How long each gateway is driven.
    pub duration: Duration,
    /// Offered load as a fraction of the fleet's capacity.
    pub load: f64,
    /// The workload.
    pub workload: Workload,
    /// Seed of arrivals and lengths (the same for both runs).
    pub seed: u64,
    /// Which gateway fronts the fleet in both runs.
    pub gateway: GatewayKind,
    /// The emulators publish their KV events, the agents relay them, and the picker tokenizes
    /// prompts with the emulators' tokenizer: token-exact prefix routing.
    pub kv_events: bool,
    /// Keep every request's record in the runs' results.
    pub keep_records: bool,
    /// Faults injected into each policy's run (see [`fault`]).
    pub faults: Vec<Fault>,
}

/// How often the demo's agents report: the picker knows a pod's state (and its GPU's) at most
/// this late.
pub const REPORT_INTERVAL: Duration = Duration::from_millis(100);

/// The policies the demo compares, in the order they run: each fronted by its own gateway on its
/// own fresh fleet.
pub const POLICIES: [&str; 2] = ["round-robin", "inferpick"];

/// The engine every pod runs for `workload`: the default profile with the workload's `pods`
/// settings (`max_loras`, `kv_tokens`).
pub fn engine_for(workload: &Workload) -> EngineConfig {
    let mut engine = EngineConfig::default();
    if let Some(m) = workload.pods.max_loras {
        engine.max_loras = m;
    }
    if let Some(k) = workload.pods.kv_tokens {
        engine.kv_tokens = k;
    }
    engine
}

/// The requests per second one pod completes for `workload`, as the demo measures it (and
/// `inferpick-lab capacity` prints it).
pub fn capacity_per_pod(workload: &Workload, seed: u64) -> f64 {
    capacity::per_pod(workload, &engine_for(workload), seed)
}

/// A gateway in front of the demo's fleet; stops when dropped.
#[derive(Debug)]
pub enum DemoGateway {
    /// The lab's reverse proxy.
    Builtin(RunningGateway),
    /// A real nginx or Envoy process.
    External(external::ExternalGateway),
}

impl DemoGateway {
    /// Where clients send requests.
    pub fn addr(&self) -> SocketAddr {
        match self {
            DemoGateway::Builtin(g) => g.addr,
            DemoGateway::External(g) => g.addr,
        }
    }

    /// Starts `kind` in front of `fleet`: asking its picker, or round robin when `smart` is false.
    pub async fn start(kind: GatewayKind, fleet: &Fleet, smart: bool) -> anyhow::Result<Self> {
        let endpoints = fleet.endpoints();
        if kind == GatewayKind::Builtin {
            let route = if smart {
                Route::Picker(format!("http://{}", fleet.picker))
            } else {
                Route::RoundRobin(endpoints)
            };
            return Ok(DemoGateway::Builtin(gateway::spawn(
                Gateway::new(route),
                local().await?,
            )?));
        }
        let program = external::find(kind)?;
        let (picker, grpc) = (fleet.picker, fleet.picker_grpc);
        let started = tokio::task::spawn_blocking(move || match kind {
            GatewayKind::Nginx => external::nginx(&program, smart.then_some(picker), &endpoints),
            _ => external::envoy(&program, smart.then_some(grpc), &endpoints),
        })
        .await??;
        Ok(DemoGateway::External(started))
    }
}

/// A fleet on loopback. Dropping it stops everything.
#[derive(Debug)]
pub struct Fleet {
    /// The picker's HTTP address.
    pub picker: SocketAddr,
    /// The picker's ext_proc (gRPC) address.
    pub picker_grpc: SocketAddr,
    /// The emulated engines.
    pub emulators: Vec<Running>,
    /// Each agent's `/metrics` address.
    pub agents: Vec<SocketAddr>,
    /// Each emulator's KV-event sockets, in the order of `emulators` (empty without KV events),
    /// for other subscribers than the agents (a peer router's KV-aware policy).
    pub kv_events: Vec<crate::emulate::KvEndpoints>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // The picker and the agents stop on this signal (aborting them could orphan their loops).
        let _ = self.stop.send(true);
    }
}

fn stopped(rx: &watch::Receiver<bool>) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|s| *s).await;
    }
}

async fn local() -> anyhow::Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a loopback port")
}

impl Fleet {
    /// Starts a picker, `pods` emulators serving `adapters` (pod `i` speaks `kinds[i % len]`), and
    /// an agent for each, and waits until the picker sees every endpoint ready.
    pub async fn start(
        pods: u32,
        kinds: &[EngineKind],
        adapters: &[String],
        engine: EngineConfig,
        agent_interval: Duration,
        kv_events: bool,
    ) -> anyhow::Result<Fleet> {
        let (stop, rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let picker_listener = local().await?;
        let picker = picker_listener.local_addr()?;
        let picker_grpc = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let settings = inferpick_picker::Settings {
            grpc_listen: Some(picker_grpc),
            listen: picker,
            // Nothing balances across this picker: when the demo stops, stop at once.
            shutdown_delay: Duration::ZERO,
            tokenizers: if kv_events {
                lab_tokenizers()?
            } else {
                inferpick_picker::tokenize::Tokenizers::default()
            },
            ..inferpick_picker::Settings::default()
        };
        let shutdown = stopped(&rx);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = inferpick_picker::run(settings, picker_listener, shutdown).await {
                tracing::error!(error = %e, "picker stopped");
            }
        }));
        let mut fleet = Fleet {
            picker,
            picker_grpc,
            emulators: Vec::new(),
            agents: Vec::new(),
            kv_events: Vec::new(),
            stop,
            tasks,
        };
        for i in 0..pods {
            let kind = kinds[i as usize % kinds.len().max(1)];
            let emulator = Emulator::new(EmulatorConfig {
                tokenizer: crate::tokenizer::builtin(),
                kind,
                model: DEMO_MODEL.into(),
                adapters: adapters.to_vec(),
                engine: engine.clone(),
            });
            let mut kv_args = Vec::new();
            if kv_events {
                let kv = emulator
                    .publish_kv_events("tcp://127.0.0.1:0", Some("tcp://127.0.0.1:0"))
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?;
                kv_args.push(format!("--kv-events={}", kv.events));
                kv_args.extend(
                    kv.replay
                        .as_ref()
                        .map(|r| format!("--kv-events-replay={r}")),
                );
                fleet.kv_events.push(kv);
            }
            let running = emulate::spawn(emulator, local().await?)?;
            let addr = running.addr;
            fleet.emulators.push(running);
            let agent_listener = local().await?;
            let agent_addr = agent_listener.local_addr()?;
            let flags = [
                "inferpick-agent".to_string(),
                format!("--engine-url=http://{addr}/metrics"),
                format!("--engine={kind}"),
                format!("--endpoint={addr}"),
                format!("--picker=http://{picker}"),
                format!("--listen={agent_addr}"),
                format!("--interval={}", humantime::format_duration(agent_interval)),
                format!("--pod=emulator-{i}"),
                "--namespace=lab".into(),
                gpu_flag(addr),
            ];
            let args = inferpick_agent::Args::try_parse_from(flags.into_iter().chain(kv_args))
                .context("building the agent's flags")?;
            let config = inferpick_agent::Config::from_args(&args).map_err(|errors| {
                let all: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                anyhow::anyhow!("agent configuration: {}", all.join("; "))
            })?;
            let shutdown = stopped(&fleet.stop.subscribe());
            fleet.tasks.push(tokio::spawn(async move {
                if let Err(e) = inferpick_agent::serve(config, agent_listener, shutdown).await {
                    tracing::error!(error = %e, "agent stopped");
                }
            }));
            fleet.agents.push(agent_addr);
        }
        fleet.wait_ready(Duration::from_secs(20)).await?;
        Ok(fleet)
    }

    /// Stops the picker, the agents and the emulators, and waits for them.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for t in std::mem::take(&mut self.tasks) {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        for e in std::mem::take(&mut self.emulators) {
            e.stop().await;
        }
    }

    /// The emulators' addresses.
    pub fn endpoints(&self) -> Vec<String> {
        self.emulators.iter().map(|e| e.addr.to_string()).collect()
    }

    /// Polls the picker until every emulator is a ready endpoint.
    pub async fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + within;
        let want = self.endpoints();
        loop {
            let ready: Vec<String> = match client
                .get(format!("http://{}/v1/endpoints", self.picker))
                .send()
                .await
            {
                Ok(r) => r
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|v| v["endpoints"].as_array().cloned())
                    .unwrap_or_default()
                    .iter()
                    .filter(|e| e["state"] == "ready")
                    .filter_map(|e| e["address"].as_str().map(str::to_string))
                    .collect(),
                Err(_) => Vec::new(),
            };
            if want.iter().all(|w| ready.contains(w)) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "the picker at {} saw {} of {} endpoints ready after {:?}",
                    self.picker,
                    ready.len(),
                    want.len(),
                    within
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until no emulator has queued or running requests.
    pub async fn wait_idle(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        while self.emulators.iter().any(|e| {
            let s = e.emulator.state();
            s.running + s.waiting > 0
        }) {
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("the emulators were still busy after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

/// The agent's GPU source for the pod served at `addr`: the emulator's fake GPU state when the
/// agent can read GPUs from a URL (so a fault's GPU condition reaches the picker), else none.
fn gpu_flag(addr: SocketAddr) -> String {
    use clap::CommandFactory as _;
    let reads_url = inferpick_agent::Args::command()
        .get_arguments()
        .any(|a| a.get_long() == Some("gpu-state-url"));
    if reads_url {
        format!("--gpu-state-url=http://{addr}/lab/gpus")
    } else {
        "--gpu=none".into()
    }
}

/// What the demo measured.
#[derive(Debug)]
pub struct DemoOutcome {
    /// One row per gateway policy.
    pub report: SimReport,
    /// The raw load results, in the same order.
    pub runs: Vec<LoadResult>,
    /// Requests per second one pod completes (the capacity the load is a fraction of).
    pub capacity_per_pod: f64,
    /// Offered requests per second.
    pub rate: f64,
    /// With faults: how each policy's routing followed them, in the order of `runs`.
    pub faults: Vec<FaultRun>,
}

fn as_row(policy: &str, r: &LoadResult, prefix_hit_ratio: Option<f64>) -> PolicyResult {
    let (ttft, e2e) = (r.ttft_ms.unwrap_or_default(), r.e2e_ms.unwrap_or_default());
    PolicyResult {
        policy: policy.to_string(),
        requests: r.requests,
        completed: r.completed,
        shed: r.errors.get("429").copied().unwrap_or(0),
        throughput_tokens_per_s: r.throughput_tokens_per_s,
        ttft_ms: Ttft {
            p50: ttft.p50,
            p90: ttft.p90,
            p99: ttft.p99,
        },
        e2e_ms: E2e {
            p50: e2e.p50,
            p99: e2e.p99,
        },
        goodput: r.goodput,
        prefix_hit_ratio,
    }
}

/// A fresh fleet for one policy, with its gateway in front.
async fn fleet_for(
    config: &DemoConfig,
    policy: &str,
    progress: &mut impl FnMut(&str),
) -> anyhow::Result<(Fleet, DemoGateway)> {
    progress(&format!(
        "starting {} emulated vLLM pods, {} agents and a picker on loopback for {policy}…",
        config.pods, config.pods
    ));
    let fleet = Fleet::start(
        config.pods,
        &[EngineKind::Vllm],
        &config.workload.adapter_names(),
        engine_for(&config.workload),
        REPORT_INTERVAL,
        config.kv_events,
    )
    .await?;
    let gw = DemoGateway::start(config.gateway, &fleet, policy != "round-robin").await?;
    Ok((fleet, gw))
}

/// Runs the demo: the workload through round robin, then through inferpick, each on a fresh
/// fleet (so both start with cold caches and no adapter loaded, and see exactly the same
/// requests at the same times).
pub async fn run(
    config: &DemoConfig,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<DemoOutcome> {
    fault::check(&config.faults, config.pods, config.duration).map_err(anyhow::Error::msg)?;
    let capacity_per_pod = capacity_per_pod(&config.workload, config.seed);
    let rate = config.load * capacity_per_pod * f64::from(config.pods);
    let mut runs = Vec::new();
    let mut rows = Vec::new();
    let mut faults = Vec::new();
    for policy in POLICIES {
        let (fleet, gw) = fleet_for(config, policy, &mut progress).await?;
        progress(&format!(
            "driving {} through {policy} for {}: {rate} requests/s ({}% of the fleet's capacity)…",
            config.workload.name,
            humantime::format_duration(config.duration),
            config.load * 100.0
        ));
        let injection = (!config.faults.is_empty()).then(|| inject(&config.faults, &fleet));
        let result = load::run(LoadConfig {
            url: format!("http://{}", gw.addr()),
            api: Api::of_workload(&config.workload),
            workload: config.workload.clone(),
            rate,
            duration: config.duration,
            seed: config.seed,
            model: DEMO_MODEL.into(),
            timeout: Duration::from_secs(120),
            keep_records: config.keep_records,
        })
        .await;
        if let Some((start, task)) = injection {
            task.await??;
            let capacity = vec![capacity_per_pod; config.pods as usize];
            faults.push(shares::measure(
                policy,
                &config.faults,
                &fleet.arrivals_since(start),
                &capacity,
                config.duration,
                REPORT_INTERVAL,
            ));
        }
        rows.push(as_row(policy, &result, fleet.prefix_hit_ratio()));
        runs.push(result);
        drop(gw);
        fleet.shutdown().await;
    }
    Ok(DemoOutcome {
        report: SimReport {
            workload: config.workload.name.clone(),
            pods: config.pods,
            results: rows,
        },
        runs,
        capacity_per_pod,
        rate,
        faults,
    })
}

/// Starts recording every pod's arrivals and posting `faults` at their times from now; returns
/// the start and the task posting them.
fn inject(
    faults: &[Fault],
    fleet: &Fleet,
) -> (
    tokio::time::Instant,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    for e in &fleet.emulators {
        e.emulator.record_arrivals();
    }
    let start = tokio::time::Instant::now();
    let (faults, addrs) = (
        faults.to_vec(),
        fleet.emulators.iter().map(|e| e.addr).collect::<Vec<_>>(),
    );
    let task = tokio::spawn(async move { fault::inject(&faults, &addrs, start).await });
    (start, task)
}

/// One policy's fleet and gateway, left serving.
#[derive(Debug)]
pub struct KeptPolicy {
    /// `round-robin` or `inferpick`.
    pub policy: &'static str,
    /// Its fleet.
    pub fleet: Fleet,
    /// Its gateway.
    pub gateway: DemoGateway,
}

/// Starts a fresh fleet and gateway per policy and leaves them serving (`demo --keep`): other
/// clients can then drive each policy without one's warm caches helping the other.
pub async fn keep(
    config: &DemoConfig,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<Vec<KeptPolicy>> {
    let mut kept = Vec::new();
    for policy in POLICIES {
        let (fleet, gateway) = fleet_for(config, policy, &mut progress).await?;
        kept.push(KeptPolicy {
            policy,
            fleet,
            gateway,
        });
    }
    Ok(kept)
}

impl Fleet {
    /// When requests arrived at each pod, from `start` on.
    pub fn arrivals_since(&self, start: tokio::time::Instant) -> Vec<Vec<Duration>> {
        let start = start.into_std();
        self.emulators
            .iter()
            .map(|e| {
                e.emulator
                    .arrivals()
                    .iter()
                    .filter_map(|t| t.checked_duration_since(start))
                    .collect()
            })
            .collect()
    }

    /// The share of prompt tokens the engines' prefix caches served, over every emulator since
    /// the fleet started (`None` before any prompt).
    pub fn prefix_hit_ratio(&self) -> Option<f64> {
        let (hits, queries) = self.emulators.iter().fold((0, 0), |(h, q), e| {
            let c = e.emulator.state().counters;
            (h + c.prefix_hits, q + c.prefix_queries)
        });
        (queries > 0).then(|| hits as f64 / queries as f64)
    }
}

/// The picker's tokenizer for the demo's model: the emulators' own `tokenizer.json`, written where
/// the picker reads it (as an operator names a model's file in `tokenizers:`).
fn lab_tokenizers() -> anyhow::Result<inferpick_picker::tokenize::Tokenizers> {
    let dir = std::env::temp_dir().join(format!("inferpick-lab-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, crate::tokenizer::tokenizer_json().to_string())?;
    let tokenizer =
        inferpick_picker::tokenize::ModelTokenizer::load(&path).map_err(|e| anyhow::anyhow!(e))?;
    let mut tokenizers = inferpick_picker::tokenize::Tokenizers::default();
    tokenizers.insert(DEMO_MODEL.into(), tokenizer);
    Ok(tokenizers)
}
