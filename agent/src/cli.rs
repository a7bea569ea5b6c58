//! Command-line flags; every flag also reads `INFERPICK_<FLAG>` from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use inferpick_schema::EngineKind;

use crate::gpu::GpuSpec;

/// Which engine dialect to read: a fixed one, or detected from the metric names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineChoice {
    /// Detect from the exposition (and re-detect if the engine changes).
    Auto,
    /// Always this engine.
    Fixed(EngineKind),
}

impl std::str::FromStr for EngineChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "auto" {
            Ok(EngineChoice::Auto)
        } else {
            s.parse()
                .map(EngineChoice::Fixed)
                .map_err(|e| format!("{e}, or auto"))
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

const ABOUT: &str = "Sidecar for a model-server pod: scrapes the engine's Prometheus metrics and the \
pod's GPUs, normalizes them into one load report, and pushes it to every inferpick picker.";

const AFTER: &str = "Examples:\n  \
inferpick-agent --once --engine-url http://127.0.0.1:8000/metrics --endpoint 10.0.0.1:8000 --gpu none\n  \
inferpick-agent --picker dns+http://inferpick-picker-headless:9000 --token-file /var/run/inferpick/token\n  \
inferpick-agent --picker https://inferpick-picker:9000 --ca-file /etc/inferpick/ca.pem\n\n\
Engines: vllm, sglang, tgi, triton-trtllm, trtllm-serve, llamacpp (start llama-server with --metrics), lmdeploy.";

/// inferpick-agent's flags.
#[derive(Debug, Clone, Parser)]
#[command(name = "inferpick-agent", version, about = ABOUT, after_help = AFTER)]
pub struct Args {
    /// The engine's Prometheus endpoint; `/v1/models` is read from the same origin.
    #[arg(
        long,
        env = "INFERPICK_ENGINE_URL",
        default_value = "http://127.0.0.1:8000/metrics"
    )]
    pub engine_url: String,

    /// Engine dialect: auto, vllm, sglang, tgi, triton-trtllm, trtllm-serve, llamacpp, lmdeploy.
    #[arg(long, env = "INFERPICK_ENGINE", default_value = "auto")]
    pub engine: EngineChoice,

    /// The address gateways send this pod's traffic to [default: $POD_IP:8000].
    #[arg(long, env = "INFERPICK_ENDPOINT", value_name = "HOST:PORT")]
    pub endpoint: Option<String>,

    /// Pod name [default: $POD_NAME].
    #[arg(long, env = "INFERPICK_POD")]
    pub pod: Option<String>,

    /// Pod namespace [default: $POD_NAMESPACE].
    #[arg(long, env = "INFERPICK_NAMESPACE")]
    pub namespace: Option<String>,

    /// Node name [default: $NODE_NAME].
    #[arg(long, env = "INFERPICK_NODE")]
    pub node: Option<String>,

    /// Pickers to push to, comma-separated: `http://` or `https://` URLs; `dns+http://name:port`
    /// (or `dns+https://`) pushes to every address of name.
    #[arg(
        long,
        env = "INFERPICK_PICKER",
        value_delimiter = ',',
        value_name = "URL[,URL…]"
    )]
    pub picker: Vec<String>,

    /// Scrape and push period (50ms, 1s, …).
    #[arg(long, env = "INFERPICK_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub interval: Duration,

    /// How long one scrape may take [default: 80% of the interval].
    #[arg(long, env = "INFERPICK_SCRAPE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub scrape_timeout: Option<Duration>,

    /// Bearer token for pushes, read from this file and re-read when it changes.
    #[arg(long, env = "INFERPICK_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// PEM bundle of the CAs that sign the pickers' certificates: https pushes trust only these
    /// [default: the system's roots].
    #[arg(long, env = "INFERPICK_CA_FILE", value_name = "PATH")]
    pub ca_file: Option<PathBuf>,

    /// GPUs to report: auto (pod-resources API if its socket exists, else all), none, all, or a
    /// comma list of UUIDs or indexes.
    #[arg(long, env = "INFERPICK_GPU", default_value = "auto")]
    pub gpu: GpuSpec,

    /// Read the GPUs from this URL at every report instead of NVML: a JSON array of the report's
    /// `gpus[]` entries. For emulated fleets and tests (the lab's emulator serves `/lab/gpus`).
    #[arg(long, env = "INFERPICK_GPU_STATE_URL", value_name = "URL")]
    pub gpu_state_url: Option<String>,

    /// GPUs one model replica spans (the engine's tensor parallel size), reported to the pickers
    /// as a prior for this endpoint's speed; no engine's metrics say it.
    #[arg(long, env = "INFERPICK_TENSOR_PARALLEL_SIZE", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub tensor_parallel_size: Option<u32>,

    /// The kubelet pod-resources API socket.
    #[arg(
        long,
        env = "INFERPICK_POD_RESOURCES_SOCKET",
        default_value = "/var/lib/kubelet/pod-resources/kubelet.sock"
    )]
    pub pod_resources_socket: PathBuf,

    /// Where to serve /metrics, /healthz, /readyz and /v1/report.
    #[arg(long, env = "INFERPICK_LISTEN", default_value = "0.0.0.0:9400")]
    pub listen: SocketAddr,

    /// On the agent's own listener: a client that has not sent a whole request head within this
    /// is disconnected, a request is answered within it (or 408), idle connections are closed after it.
    #[arg(long, env = "INFERPICK_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// The engine's KV-cache event publisher (ZeroMQ): `tcp://host:port`, `auto` (vLLM's
    /// default tcp://127.0.0.1:5557, off until an event arrives) or `off`. Blocks it stores and
    /// evicts are pushed to every picker as keys of their token ids, for exact prefix routing.
    #[arg(
        long,
        env = "INFERPICK_KV_EVENTS",
        default_value = "auto",
        value_name = "tcp://HOST:PORT|auto|off"
    )]
    pub kv_events: String,

    /// The engine's KV-event replay socket (vLLM's `replay_endpoint`), asked for the batches of a
    /// gap in the sequence; without it a gap resets the pickers' view of this endpoint.
    #[arg(
        long,
        env = "INFERPICK_KV_EVENTS_REPLAY",
        value_name = "tcp://HOST:PORT"
    )]
    pub kv_events_replay: Option<String>,

    /// Most blocks mirrored from the engine's events (about 56 bytes each); past it the oldest
    /// are dropped and the pickers told.
    #[arg(
        long,
        env = "INFERPICK_KV_EVENTS_MAX_BLOCKS",
        default_value_t = 1_000_000
    )]
    pub kv_events_max_blocks: usize,

    /// Scrape once, print the report as JSON and exit (1 with one line on stderr on failure).
    #[arg(long, env = "INFERPICK_ONCE")]
    pub once: bool,

    /// Log format.
    #[arg(long, env = "INFERPICK_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}
