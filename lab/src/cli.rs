//! The command line: the subcommands and flags of CONTRACTS.md. Every flag also reads
//! `INFERPICK_<FLAG>` from the environment.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use inferpick_schema::EngineKind;

use crate::demo::{self, DemoConfig, GatewayKind};
use crate::emulate::{self, Emulator, EmulatorConfig};
use crate::engine::EngineConfig;
use crate::load::{self, LoadConfig};
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
    /// Leave everything running afterwards and print the URLs (Ctrl-C stops it).
    #[arg(long, env = "INFERPICK_KEEP")]
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
}

/// `load`: flags.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Base URL of an OpenAI-compatible server or gateway; requests go to `<url>/v1/completions`.
    #[arg(long, env = "INFERPICK_URL")]
    pub url: String,
    /// Built-in workload or a YAML workload file (its classes set prompt and output lengths).
    #[arg(long, env = "INFERPICK_WORKLOAD", default_value = "chat")]
    pub workload: String,
    /// Requests per second, in all.
    #[arg(long, env = "INFERPICK_RATE", value_parser = parse_load)]
    pub rate: f64,
    /// How long to send requests.
    #[arg(long, env = "INFERPICK_DURATION", default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Model name for base-model requests [default: the first model of `<url>/v1/models`].
    #[arg(long, env = "INFERPICK_MODEL")]
    pub model: Option<String>,
    /// Seed of arrivals and lengths.
    #[arg(long, env = "INFERPICK_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Also write the results as JSON to this file.
    #[arg(long, env = "INFERPICK_JSON")]
    pub json: Option<PathBuf>,
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

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 100ms or 10m: {e}"))
}

fn parse_load(s: &str) -> Result<f64, String> {
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
        "emulating {} at http://{} (model {}; /v1/completions, /v1/chat/completions, /v1/models, /metrics)",
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

/// The first model a server lists at `/v1/models`.
pub async fn first_model(url: &str) -> anyhow::Result<String> {
    let base = url.trim_end_matches('/');
    let base = base
        .strip_suffix("/v1/completions")
        .or_else(|| base.strip_suffix("/v1/chat/completions"))
        .unwrap_or(base);
    let v: serde_json::Value = reqwest::get(format!("{base}/v1/models"))
        .await
        .with_context(|| format!("GET {base}/v1/models"))?
        .json()
        .await
        .with_context(|| format!("GET {base}/v1/models: not JSON"))?;
    v["data"][0]["id"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("GET {base}/v1/models lists no model; pass --model"))
}

async fn load_command(args: LoadArgs) -> anyhow::Result<()> {
    let workload = Workload::load(&args.workload)?;
    let model = match args.model {
        Some(m) => m,
        None => first_model(&args.url).await?,
    };
    let result = load::run(LoadConfig {
        url: args.url,
        workload,
        rate: args.rate,
        duration: args.duration,
        seed: args.seed,
        model,
        timeout: Duration::from_secs(600),
    })
    .await;
    println!("{}", result.summary());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&result)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn demo_command(args: DemoArgs) -> anyhow::Result<()> {
    let workload = match &args.workload {
        Some(w) => Workload::load(w)?,
        None => Workload::parse(demo::DEMO_WORKLOAD, "lab/workloads/demo.yaml")?,
    };
    let config = DemoConfig {
        pods: args.pods,
        duration: args.duration,
        load: args.load,
        workload,
        seed: args.seed,
        gateway: args.gateway,
        kv_events: args.kv_events == Switch::On,
    };
    let outcome = demo::run(&config, |line| eprintln!("{line}")).await?;
    let heading = format!(
        "inferpick demo · workload {} · {} pods · {:.1} requests/s offered ({:.0}% of capacity) · {} per policy",
        config.workload.name,
        config.pods,
        outcome.rate,
        config.load * 100.0,
        humantime::format_duration(config.duration)
    );
    println!();
    print!("{}", outcome.report.table(&heading));
    for r in &outcome.runs {
        let errors: u64 = r.errors.values().sum();
        if errors > 0 {
            println!("errors through {}: {:?}", r.url, r.errors);
        }
    }
    if let [rr, ip] = &outcome.report.results[..] {
        let verdict = if ip.ttft_ms.p99 < rr.ttft_ms.p99 {
            "inferpick beats round robin"
        } else {
            "inferpick does not beat round robin"
        };
        println!(
            "\n{verdict} on TTFT p99: {} vs {} ({:.2}×), at {:.0} vs {:.0} output tokens/s.",
            crate::sim::ms(ip.ttft_ms.p99),
            crate::sim::ms(rr.ttft_ms.p99),
            ip.ttft_ms.p99 / rr.ttft_ms.p99.max(1e-9),
            ip.throughput_tokens_per_s,
            rr.throughput_tokens_per_s
        );
    }
    if args.keep {
        let (fleet, gateways) = &outcome.kept;
        let stop = shutdown_signal();
        println!("\nstill running (Ctrl-C stops everything):");
        for (name, gw) in gateways {
            println!("  gateway ({name}):  http://{}/v1/completions", gw.addr());
        }
        println!(
            "  picker:   http://{}/v1/endpoints  http://{}/metrics",
            fleet.picker, fleet.picker
        );
        for (i, (e, a)) in fleet.emulators.iter().zip(&fleet.agents).enumerate() {
            println!(
                "  pod {i}:    engine http://{}/metrics   agent http://{a}/metrics",
                e.addr
            );
        }
        stop.await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("inferpick-lab").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sim_flags_parse() {
        let cli = parse(&[
            "sim",
            "--workload",
            "mixed",
            "--pods",
            "16",
            "--policies",
            "oracle,inferpick",
            "--load",
            "0.85",
            "--seed",
            "7",
            "--staleness",
            "50ms",
            "--duration",
            "2m",
            "--json",
            "out.json",
        ])
        .unwrap();
        let Command::Sim(s) = cli.command else {
            panic!("not sim")
        };
        assert_eq!(
            s.policies,
            [SimPolicy::Oracle, "inferpick".parse().unwrap()]
        );
        assert_eq!(s.load, Some(0.85));
        assert_eq!(s.staleness, Duration::from_millis(50));
        assert_eq!(s.duration, Some(Duration::from_secs(120)));
        assert_eq!(s.pods, Some(16));
    }

    #[test]
    fn bad_values_name_the_flag_and_the_value() {
        let err = parse(&["sim", "--policies", "inferpick,fastest"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("fastest") && err.contains("--policies"),
            "{err}"
        );
        let err = parse(&["sim", "--load=0"]).unwrap_err().to_string();
        assert!(err.contains("--load") && err.contains("\"0\""), "{err}");
        let err = parse(&["sim", "--staleness", "soon"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("soon"), "{err}");
        let err = parse(&["emulate", "--engine", "ollama"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("ollama") && err.contains("vllm"), "{err}");
        assert!(
            parse(&["load", "--rate", "5"]).is_err(),
            "--url is required"
        );
    }

    #[test]
    fn emulate_load_and_demo_flags_parse() {
        let Command::Emulate(e) = parse(&[
            "emulate",
            "--listen",
            "127.0.0.1:0",
            "--engine",
            "triton-trtllm",
            "--model",
            "m",
            "--adapters",
            "a,b",
        ])
        .unwrap()
        .command
        else {
            panic!("not emulate")
        };
        assert_eq!(e.engine, EngineKind::TritonTrtllm);
        assert_eq!(e.adapters, ["a", "b"]);
        let Command::Load(l) = parse(&[
            "load",
            "--url",
            "http://x",
            "--rate",
            "2.5",
            "--duration",
            "10s",
        ])
        .unwrap()
        .command
        else {
            panic!("not load")
        };
        assert_eq!((l.rate, l.duration), (2.5, Duration::from_secs(10)));
        let Command::Demo(d) = parse(&["demo", "--pods", "2", "--keep"]).unwrap().command else {
            panic!("not demo")
        };
        assert!(d.keep);
        assert_eq!(d.gateway, GatewayKind::Builtin);
    }
}
