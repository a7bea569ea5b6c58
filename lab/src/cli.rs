//! The command line: the subcommands and flags of CONTRACTS.md. Every flag also reads
//! `INFERPICK_<FLAG>` from the environment.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use inferpick_schema::EngineKind;

use crate::demo::fault::Fault;
use crate::demo::{self, DemoConfig, GatewayKind};
use crate::emulate::{self, Emulator, EmulatorConfig};
use crate::engine::EngineConfig;
use crate::load::{self, Api, LoadConfig};
use crate::sim::kv::KvDelivery;
use crate::sim::{self, SimConfig, SimPolicy, capacity};
use crate::workload::Workload;

/// An emulated LLM fleet, a simulator that runs inferpick's real scheduler, a load generator,
/// and a demo that compares inferpick with round robin on your machine.
#[derive(Debug, Parser)]
#[command(name = "inferpick-lab", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Discrete-event simulation of a fleet with the picker's real scheduler; prints a comparison.
    Sim(SimArgs),
    /// One emulated model server: OpenAI API and `/metrics` in the chosen engine's dialect.
    Emulate(EmulateArgs),
    /// Open-loop load generator: streams completions and measures TTFT, latency and errors.
    Load(LoadArgs),
    /// Emulated pods + real agents + a real picker + gateways on loopback: the same workload
    /// through round robin and through inferpick, compared.
    Demo(DemoArgs),
    /// Prints a workload's capacity per pod and the rate at a load, exactly, as the demo and
    /// `sim` compute them (to drive another router at the demo's rate).
    Capacity(CapacityArgs),
    /// The bake-off: inferpick (built-in gateway, nginx, Envoy), round robin and the peer routers
    /// installed (sglang-router, vllm-router), each on a fresh identical fleet with the same load.
    Bench(crate::bench::BenchArgs),
    /// Writes the lab's tokenizer (a word-level `tokenizer.json` over a generated vocabulary), for
    /// the picker to tokenize as the emulator does.
    Tokenizer(TokenizerArgs),
}

/// `demo`: flags.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Emulated pods.
    #[arg(long, env = "INFERPICK_PODS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub pods: u32,
    /// How long each policy is driven.
    #[arg(long, env = "INFERPICK_DURATION", default_value = "40s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Which gateway fronts the fleet: `builtin` (needs nothing), `nginx` or `envoy` (the real programs, when installed).
    #[arg(long, env = "INFERPICK_GATEWAY", value_enum, default_value = "builtin")]
    pub gateway: GatewayKind,
    /// Skip the comparison: start a fresh fleet and gateway per policy, print their base URLs
    /// at once, and serve until Ctrl-C (to point other clients at).
    #[arg(long, env = "INFERPICK_KEEP", conflicts_with = "json")]
    pub keep: bool,
    /// Offered load as a fraction of the fleet's capacity.
    #[arg(long, env = "INFERPICK_LOAD", default_value = "0.8", value_parser = parse_load)]
    pub load: f64,
    /// Workload [default: the demo's: chat, shared long prompts and LoRA adapters].
    #[arg(long, env = "INFERPICK_WORKLOAD")]
    pub workload: Option<String>,
    /// Seed of arrivals and lengths (the same for both policies).
    #[arg(long, env = "INFERPICK_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Whether the emulated engines publish their KV events (relayed by the agents; the picker
    /// then routes on exact cached tokens); `off` leaves the picker its approximate prefix index.
    #[arg(long, env = "INFERPICK_KV_EVENTS", value_enum, default_value = "on")]
    pub kv_events: Switch,
    /// Also write the results as JSON to this file (each policy's run in full).
    #[arg(long, env = "INFERPICK_JSON")]
    pub json: Option<PathBuf>,
    /// With `--json`: also write every request's record.
    #[arg(long, env = "INFERPICK_JSON_REQUESTS", requires = "json")]
    pub json_requests: bool,
    /// A fault injected into each policy's run, at a time from its start (repeatable):
    /// `pod-N:throttle=SPEED@TIME` (0 < SPEED ≤ 1), `pod-N:lost@TIME` or `pod-N:recover@TIME`,
    /// e.g. `pod-2:throttle=0.5@20s`; pods count from 0.
    #[arg(
        long = "fault",
        value_name = "SPEC",
        env = "INFERPICK_FAULTS",
        value_delimiter = ',',
        conflicts_with = "keep"
    )]
    pub faults: Vec<Fault>,
}

/// `capacity`: flags.
#[derive(Debug, Args)]
pub struct CapacityArgs {
    /// Built-in workload or a YAML workload file [default: the demo's].
    #[arg(long, env = "INFERPICK_WORKLOAD")]
    pub workload: Option<String>,
    /// Pods in the fleet.
    #[arg(long, env = "INFERPICK_PODS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub pods: u32,
    /// Offered load, a fraction of the fleet's capacity.
    #[arg(long, env = "INFERPICK_LOAD", default_value = "0.8", value_parser = parse_load)]
    pub load: f64,
    /// Seed of the requests capacity is measured with (the demo's and `sim`'s `--seed`).
    #[arg(long, env = "INFERPICK_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Print only the rate at `--load`, in requests per second (for `load --rate`).
    #[arg(long)]
    pub rate_only: bool,
}

/// `load`: flags.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Base URL of an OpenAI-compatible server or gateway (`http://host:port` or
    /// `http://host:port/v1`); requests go to its `/v1/completions` or `/v1/chat/completions`.
    #[arg(long, env = "INFERPICK_URL")]
    pub url: String,
    /// Built-in workload or a YAML workload file (its classes set prompt and output lengths).
    #[arg(long, env = "INFERPICK_WORKLOAD", default_value = "chat")]
    pub workload: String,
    /// Requests per second, in all.
    #[arg(long, env = "INFERPICK_RATE", value_parser = parse_rate)]
    pub rate: f64,
    /// How long to send requests.
    #[arg(long, env = "INFERPICK_DURATION", default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Model name for base-model requests [default: the one base model the server lists at /v1/models].
    #[arg(long, env = "INFERPICK_MODEL")]
    pub model: Option<String>,
    /// Which API to speak: `chat`, `completions`, or `auto` (the URL's endpoint if it names one,
    /// else chat for the `chat` and conversation workloads, completions for the others).
    #[arg(long, env = "INFERPICK_API", value_enum, default_value = "auto")]
    pub api: ApiChoice,
    /// Seed of arrivals and lengths.
    #[arg(long, env = "INFERPICK_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Exit with status 1 when more than this fraction of the requests failed.
    #[arg(long, env = "INFERPICK_MAX_ERROR_RATE", default_value_t = 0.01, value_parser = parse_fraction)]
    pub max_error_rate: f64,
    /// Also write the results as JSON to this file.
    #[arg(long, env = "INFERPICK_JSON")]
    pub json: Option<PathBuf>,
    /// With `--json`: also write every request's record (`records`).
    #[arg(long, env = "INFERPICK_JSON_REQUESTS", requires = "json")]
    pub json_requests: bool,
}

/// `load --api`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ApiChoice {
    /// The URL's endpoint if it names one, else the workload's.
    Auto,
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completions,
}

impl ApiChoice {
    /// The API to speak to `url` with `workload`; an explicit choice that contradicts the
    /// endpoint the URL names is an error.
    pub fn resolve(self, url: &str, workload: &Workload) -> anyhow::Result<Api> {
        let asked = match self {
            ApiChoice::Auto => None,
            ApiChoice::Chat => Some(Api::Chat),
            ApiChoice::Completions => Some(Api::Completions),
        };
        match (asked, Api::of_url(url)) {
            (Some(a), Some(u)) if a != u => anyhow::bail!(
                "--api {} but --url {url} names the {} endpoint; give the base URL",
                a.name(),
                u.name()
            ),
            (Some(a), _) => Ok(a),
            (None, Some(u)) => Ok(u),
            (None, None) => Ok(Api::of_workload(workload)),
        }
    }
}

/// `emulate`: flags.
#[derive(Debug, Args)]
pub struct EmulateArgs {
    /// Address to listen on.
    #[arg(long, env = "INFERPICK_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: String,
    /// Whose `/metrics` dialect to speak: vllm, sglang, tgi, triton-trtllm, trtllm-serve, llamacpp, lmdeploy.
    #[arg(long, env = "INFERPICK_ENGINE", default_value = "vllm")]
    pub engine: EngineKind,
    /// The base model's name.
    #[arg(
        long,
        env = "INFERPICK_MODEL",
        default_value = "meta-llama/Llama-3.1-8B-Instruct"
    )]
    pub model: String,
    /// Comma list of LoRA adapters served on top of the base model.
    #[arg(long, env = "INFERPICK_ADAPTERS", value_delimiter = ',')]
    pub adapters: Vec<String>,
    /// YAML engine profile (kv_tokens, max_num_seqs, step_base, prefill_per_token, …);
    /// unset keys keep the defaults (Llama-3.1-8B on one H100).
    #[arg(long, env = "INFERPICK_PROFILE")]
    pub profile: Option<PathBuf>,
    /// A Hugging Face `tokenizer.json` to tokenize prompts with [default: the lab's own, as
    /// `inferpick-lab tokenizer` writes it].
    #[arg(long, env = "INFERPICK_TOKENIZER")]
    pub tokenizer: Option<PathBuf>,
    /// Publish the prefix cache's KV events as vLLM does (`--kv-events-config` with the zmq
    /// publisher) on a ZeroMQ PUB socket bound here, e.g. `tcp://127.0.0.1:5557`; an agent follows
    /// them with its own `--kv-events`.
    #[arg(long, env = "INFERPICK_KV_EVENTS")]
    pub kv_events: Option<String>,
    /// With `--kv-events`: the ROUTER socket that replays missed batches, e.g. `tcp://127.0.0.1:5558`.
    #[arg(long, env = "INFERPICK_KV_EVENTS_REPLAY", requires = "kv_events")]
    pub kv_events_replay: Option<String>,
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// A fraction from 0 to 1.
fn parse_fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not a fraction from 0 to 1"))
    }
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 100ms or 10m: {e}"))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!(
            "{s:?}: the rate is requests per second, a positive number like 12.5"
        )),
    }
}

pub(crate) fn parse_load(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!(
            "{s:?}: the load is a positive fraction of capacity, like 0.85"
        )),
    }
}

/// `tokenizer`: flags.
#[derive(Debug, Args)]
pub struct TokenizerArgs {
    /// Where to write the `tokenizer.json`.
    #[arg(long)]
    pub out: PathBuf,
}

/// `sim`: flags.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Built-in workload (chat, shared-prefix, multi-lora, mixed, bursty) or a YAML workload file.
    #[arg(long, env = "INFERPICK_WORKLOAD", default_value = "chat")]
    pub workload: String,
    /// Pods in the fleet [default: the workload's, 8 for the built-ins].
    #[arg(long, env = "INFERPICK_PODS", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub pods: Option<u32>,
    /// Comma list of policies: round-robin, random, least-request, gie, inferpick, oracle.
    #[arg(
        long,
        env = "INFERPICK_POLICIES",
        value_delimiter = ',',
        default_value = "round-robin,random,least-request,gie,inferpick,oracle"
    )]
    pub policies: Vec<SimPolicy>,
    /// Offered load as a fraction of the fleet's capacity (overrides the workload's rate). Capacity
    /// is the completion rate of one pod kept saturated with the workload's requests, times pods.
    #[arg(long, env = "INFERPICK_LOAD", value_parser = parse_load)]
    pub load: Option<f64>,
    /// Seed of arrivals, lengths and every random choice.
    #[arg(long, env = "INFERPICK_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Report period of every pod's agent (the picker's view is at most this old, plus the delay).
    #[arg(long, env = "INFERPICK_STALENESS", default_value = "100ms", value_parser = parse_duration)]
    pub staleness: Duration,
    /// Time from a report's production to its arrival at the picker.
    #[arg(long, env = "INFERPICK_REPORT_DELAY", default_value = "5ms", value_parser = parse_duration)]
    pub report_delay: Duration,
    /// Simulated time during which requests arrive [default: the workload's, 600s for the built-ins].
    #[arg(long, env = "INFERPICK_DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Also write the results as JSON to this file.
    #[arg(long, env = "INFERPICK_JSON")]
    pub json: Option<PathBuf>,
    /// YAML engine profile for every pod (as `emulate --profile`); the workload's `pods` section
    /// still sets `max_loras` and `kv_tokens`.
    #[arg(long, env = "INFERPICK_PROFILE")]
    pub profile: Option<PathBuf>,
    /// Whether the engines publish KV events to the picker (its exact prefix path); `off` leaves
    /// the picker its approximate prefix index, to compare.
    #[arg(long, env = "INFERPICK_KV_EVENTS", value_enum, default_value = "on")]
    pub kv_events: Switch,
    /// Time from a KV-event message's production to its arrival at the picker.
    #[arg(long, env = "INFERPICK_KV_EVENTS_DELAY", default_value = "50ms", value_parser = parse_duration)]
    pub kv_events_delay: Duration,
    /// Fraction of KV-event messages lost on the way (each loss costs a resync).
    #[arg(long, env = "INFERPICK_KV_EVENTS_LOSS", default_value_t = 0.0, value_parser = parse_fraction)]
    pub kv_events_loss: f64,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Sim(args) => sim_command(args),
        Command::Emulate(args) => runtime()?.block_on(emulate_command(args)),
        Command::Load(args) => runtime()?.block_on(load_command(args)),
        Command::Demo(args) => runtime()?.block_on(demo_command(args)),
        Command::Capacity(args) => capacity_command(args),
        Command::Bench(args) => runtime()?.block_on(crate::bench::command(args)),
        Command::Tokenizer(args) => {
            crate::tokenizer::write(&args.out)?;
            println!(
                "wrote {} ({} words and [UNK])",
                args.out.display(),
                crate::tokenizer::VOCAB_WORDS
            );
            Ok(())
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled, so a signal sent as soon as the caller says it is up stops it cleanly
/// (dropping the gateways and emulators it started) instead of killing it.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let term = async move {
            match term {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
    }
}

async fn emulate_command(args: EmulateArgs) -> anyhow::Result<()> {
    let engine = match &args.profile {
        Some(path) => EngineConfig::load(path)?,
        None => EngineConfig::default(),
    };
    let tokenizer = match &args.tokenizer {
        Some(path) => std::sync::Arc::new(crate::tokenizer::load(Some(path))?),
        None => crate::tokenizer::builtin(),
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    let emulator = Emulator::new(EmulatorConfig {
        tokenizer,
        kind: args.engine,
        model: args.model,
        adapters: args
            .adapters
            .into_iter()
            .filter(|a| !a.is_empty())
            .collect(),
        engine,
    });
    let kv = match &args.kv_events {
        Some(events) => Some(
            emulator
                .publish_kv_events(events, args.kv_events_replay.as_deref())
                .await
                .map_err(|e| anyhow::anyhow!(e))?,
        ),
        None => None,
    };
    let running = emulate::spawn(emulator, listener)?;
    if let Some(kv) = kv {
        eprintln!(
            "publishing KV events on {}{}",
            kv.events,
            kv.replay
                .map(|r| format!(" (replay {r})"))
                .unwrap_or_default()
        );
    }
    let stop = shutdown_signal();
    eprintln!(
        "emulating {} at http://{} (model {}; /v1/completions, /v1/chat/completions, /v1/models, /metrics; for peer routers /get_load, /get_server_info, /get_model_info, /tokenize, /detokenize)",
        args.engine,
        running.addr,
        running.emulator.config().model
    );
    stop.await;
    running.stop().await;
    Ok(())
}

fn sim_command(args: SimArgs) -> anyhow::Result<()> {
    let workload = Workload::load(&args.workload)?;
    let mut engine = match &args.profile {
        Some(path) => EngineConfig::load(path)?,
        None => EngineConfig::default(),
    };
    // Capacity is measured with the engine the pods will run.
    if let Some(m) = workload.pods.max_loras {
        engine.max_loras = m;
    }
    if let Some(k) = workload.pods.kv_tokens {
        engine.kv_tokens = k;
    }
    let pods = args.pods.unwrap_or(workload.pods.count);
    let capacity = capacity::per_pod(&workload, &engine, args.seed);
    let rate_per_pod = match args.load {
        Some(load) => load * capacity,
        None => workload.arrival.rate_per_pod(),
    };
    if args.staleness.is_zero() {
        anyhow::bail!("--staleness must be above zero");
    }
    let config = SimConfig {
        duration: args.duration.unwrap_or(workload.duration()),
        workload,
        pods,
        rate_per_pod,
        seed: args.seed,
        staleness: args.staleness,
        report_delay: args.report_delay,
        engine,
        kv_events: (args.kv_events == Switch::On).then_some(KvDelivery {
            delay: args.kv_events_delay,
            loss: args.kv_events_loss,
        }),
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = std::time::Instant::now();
    let report = sim::run(&config, &args.policies, threads);
    let heading = format!(
        "workload {} · {} pods · load {:.2} ({:.2} req/s per pod, capacity {:.2}) · {} simulated · staleness {} · seed {} · {:.1}s wall",
        config.workload.name,
        pods,
        rate_per_pod / capacity,
        rate_per_pod,
        capacity,
        humantime::format_duration(config.duration),
        humantime::format_duration(config.staleness),
        config.seed,
        started.elapsed().as_secs_f64()
    );
    print!("{}", report.table(&heading));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn load_command(args: LoadArgs) -> anyhow::Result<()> {
    let workload = Workload::load(&args.workload)?;
    let api = args.api.resolve(&args.url, &workload)?;
    let model = match args.model {
        Some(m) => m,
        None => load::model::choose(&args.url).await?,
    };
    let result = load::run(LoadConfig {
        url: args.url,
        api,
        workload,
        rate: args.rate,
        duration: args.duration,
        seed: args.seed,
        model,
        timeout: Duration::from_secs(600),
        keep_records: args.json_requests,
    })
    .await;
    println!("{}", result.summary());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&result)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if result.requests == 0 {
        anyhow::bail!(
            "no request was sent: {}/s for {} makes no arrival; raise --rate or --duration",
            args.rate,
            humantime::format_duration(args.duration)
        );
    }
    if result.error_rate() > args.max_error_rate {
        anyhow::bail!(
            "{} of {} requests failed ({:.1}%), above --max-error-rate {}",
            result.failed,
            result.requests,
            result.error_rate() * 100.0,
            args.max_error_rate
        );
    }
    Ok(())
}

/// The workload `demo` and `capacity` use: `--workload`, else the demo's own.
pub(crate) fn demo_workload(name: Option<&str>) -> anyhow::Result<Workload> {
    Ok(match name {
        Some(w) => Workload::load(w)?,
        None => Workload::parse(demo::DEMO_WORKLOAD, "lab/workloads/demo.yaml")?,
    })
}

async fn demo_command(args: DemoArgs) -> anyhow::Result<()> {
    let config = DemoConfig {
        pods: args.pods,
        duration: args.duration,
        load: args.load,
        workload: demo_workload(args.workload.as_deref())?,
        seed: args.seed,
        gateway: args.gateway,
        kv_events: args.kv_events == Switch::On,
        keep_records: args.json_requests,
        faults: args.faults,
    };
    if args.keep {
        let stop = shutdown_signal();
        let kept = demo::keep(&config, |line| eprintln!("{line}")).await?;
        print!("{}", demo::report::urls(&kept));
        let rate = config.load
            * demo::capacity_per_pod(&config.workload, config.seed)
            * f64::from(config.pods);
        println!(
            "drive each at the demo's rate: inferpick-lab load --url <base URL> --workload {} --rate {rate}",
            args.workload
                .as_deref()
                .unwrap_or("lab/workloads/demo.yaml")
        );
        stop.await;
        for k in kept {
            drop(k.gateway);
            k.fleet.shutdown().await;
        }
        return Ok(());
    }
    let outcome = demo::run(&config, |line| eprintln!("{line}")).await?;
    print!("{}", demo::report::text(&config, &outcome));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&demo::report::json(&config, &outcome))?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn capacity_command(args: CapacityArgs) -> anyhow::Result<()> {
    let workload = demo_workload(args.workload.as_deref())?;
    let per_pod = demo::capacity_per_pod(&workload, args.seed);
    let fleet = per_pod * f64::from(args.pods);
    let rate = args.load * fleet;
    if args.rate_only {
        println!("{rate}");
    } else {
        println!(
            "workload {} · seed {}\ncapacity per pod: {per_pod} requests/s\ncapacity of {} pods: {fleet} requests/s\nrate at load {}: {rate} requests/s",
            workload.name, args.seed, args.pods, args.load
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
