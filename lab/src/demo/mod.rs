//! `demo`: a whole inferpick fleet on loopback — emulated engines, the real agent beside each, the
//! real picker, and two built-in gateways (round robin, and inferpick through the picker) — then
//! the same open-loop workload through each gateway, and the comparison.
//!
//! Everything runs in this process on ports the OS chose, so the demo needs nothing but `cargo`.

pub mod external;
pub mod gateway;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use inferpick_schema::EngineKind;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::emulate::{self, Emulator, EmulatorConfig, Running};
use crate::engine::EngineConfig;
use crate::load::{self, LoadConfig, LoadResult};
use crate::sim::{E2e, PolicyResult, SimReport, Ttft, capacity};
use crate::workload::Workload;
use gateway::{Gateway, Route, RunningGateway};

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
                kv_args.extend(kv.replay.map(|r| format!("--kv-events-replay={r}")));
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
                "--gpu=none".into(),
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

/// What the demo measured, and the fleet if it is kept.
#[derive(Debug)]
pub struct DemoOutcome {
    /// One row per gateway policy.
    pub report: SimReport,
    /// The raw load results, in the same order.
    pub runs: Vec<LoadResult>,
    /// Offered requests per second.
    pub rate: f64,
    /// The fleet and gateways, still running.
    pub kept: (Fleet, Vec<(&'static str, DemoGateway)>),
}

fn as_row(policy: &str, r: &LoadResult, prefix_hit_ratio: Option<f64>) -> PolicyResult {
    PolicyResult {
        policy: policy.to_string(),
        requests: r.requests,
        completed: r.completed,
        shed: r.errors.get("429").copied().unwrap_or(0),
        throughput_tokens_per_s: r.throughput_tokens_per_s,
        ttft_ms: Ttft { ..r.ttft_ms },
        e2e_ms: E2e { ..r.e2e_ms },
        goodput: r.goodput,
        prefix_hit_ratio,
    }
}

/// Runs the demo: the fleet, both gateways, the workload through round robin then inferpick.
pub async fn run(
    config: &DemoConfig,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<DemoOutcome> {
    let mut engine = EngineConfig::default();
    if let Some(m) = config.workload.pods.max_loras {
        engine.max_loras = m;
    }
    if let Some(k) = config.workload.pods.kv_tokens {
        engine.kv_tokens = k;
    }
    let per_pod = capacity::per_pod(&config.workload, &engine, config.seed);
    let rate = config.load * per_pod * f64::from(config.pods);
    let adapters = config.workload.adapter_names();
    let mut runs = Vec::new();
    let mut rows = Vec::new();
    let mut last = None;
    // Each policy gets a fresh fleet, so both start with cold caches and no adapter loaded, and
    // sees exactly the same requests at the same times.
    for name in ["round-robin", "inferpick"] {
        progress(&format!(
            "starting {} emulated vLLM pods, {} agents and a picker on loopback…",
            config.pods, config.pods
        ));
        let fleet = Fleet::start(
            config.pods,
            &[EngineKind::Vllm],
            &adapters,
            engine.clone(),
            Duration::from_millis(100),
            config.kv_events,
        )
        .await?;
        let gw = DemoGateway::start(config.gateway, &fleet, name != "round-robin").await?;
        progress(&format!(
            "driving {} through {name} for {}: {:.1} requests/s ({:.0}% of the fleet's capacity)…",
            config.workload.name,
            humantime::format_duration(config.duration),
            rate,
            config.load * 100.0
        ));
        let result = load::run(LoadConfig {
            url: format!("http://{}", gw.addr()),
            workload: config.workload.clone(),
            rate,
            duration: config.duration,
            seed: config.seed,
            model: DEMO_MODEL.into(),
            timeout: Duration::from_secs(120),
        })
        .await;
        rows.push(as_row(name, &result, fleet.prefix_hit_ratio()));
        runs.push(result);
        if let Some((previous, gw)) = last.replace((fleet, gw)) {
            drop(gw);
            previous.shutdown().await;
        }
    }
    let (fleet, smart) = last.expect("two runs");
    let rr = DemoGateway::start(config.gateway, &fleet, false).await?;
    Ok(DemoOutcome {
        report: SimReport {
            workload: config.workload.name.clone(),
            pods: config.pods,
            results: rows,
        },
        runs,
        rate,
        kept: (fleet, vec![("round-robin", rr), ("inferpick", smart)]),
    })
}

impl Fleet {
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
