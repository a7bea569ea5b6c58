//! `bench`: the bake-off. Every contender — inferpick through the built-in gateway, nginx and
//! Envoy, round robin, and the peer routers a user installed (SGLang's `sglang-router`, vLLM's
//! `vllm-router`) — fronts a fresh, identical emulated fleet (the demo's: emulators, agents and a
//! picker, same engine profile), and the lab's load generator drives each with the same requests
//! at the same times (same workload, seed and rate). One table compares them ([`table`]).
//!
//! A contender that cannot start (a program not installed, a router that exits or never reports
//! its workers healthy) is a row saying why, not the end of the bake-off.

mod args;
pub mod peer;
pub mod table;

use std::path::{Path, PathBuf};
use std::time::Duration;

use inferpick_schema::EngineKind;

pub use args::{BenchArgs, command};
pub use table::{BenchReport, BenchRow};

use crate::demo::{self, DEMO_MODEL, DemoGateway, Fleet, GatewayKind};
use crate::load::{self, Api, LoadConfig};
use crate::workload::Workload;
use peer::{PeerKind, PeerRouter};

/// Who routes the requests in one row of the bake-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Contender {
    /// The built-in gateway, round robin over the pods (the baseline).
    RoundRobin,
    /// The built-in gateway asking the picker.
    Inferpick,
    /// nginx asking the picker (`deploy/gateways/nginx/`), when nginx is installed.
    InferpickNginx,
    /// Envoy asking the picker over ext_proc (`deploy/gateways/envoy/`), when Envoy is installed.
    InferpickEnvoy,
    /// `sglang-router --policy cache_aware`.
    SglangCacheAware,
    /// `sglang-router --policy round_robin`.
    SglangRoundRobin,
    /// `vllm-router --policy cache_aware`.
    VllmCacheAware,
    /// `vllm-router --policy kv_aware`, subscribed to the engines' KV events.
    VllmKvAware,
}

impl Contender {
    /// Every contender, in the order the bake-off runs them.
    pub const ALL: [Contender; 8] = [
        Contender::RoundRobin,
        Contender::Inferpick,
        Contender::InferpickNginx,
        Contender::InferpickEnvoy,
        Contender::SglangCacheAware,
        Contender::SglangRoundRobin,
        Contender::VllmCacheAware,
        Contender::VllmKvAware,
    ];

    /// Its `--contenders` name.
    pub fn name(self) -> String {
        use clap::ValueEnum as _;
        self.to_possible_value()
            .map_or_else(String::new, |v| v.get_name().to_string())
    }

    /// What fronts the fleet, in words (the table's `route` column).
    pub fn route(self) -> &'static str {
        match self {
            Contender::RoundRobin => "built-in gateway, round robin",
            Contender::Inferpick => "built-in gateway → picker",
            Contender::InferpickNginx => "nginx → picker",
            Contender::InferpickEnvoy => "Envoy ext_proc → picker",
            Contender::SglangCacheAware => "sglang-router cache_aware",
            Contender::SglangRoundRobin => "sglang-router round_robin",
            Contender::VllmCacheAware => "vllm-router cache_aware",
            Contender::VllmKvAware => "vllm-router kv_aware + KV events",
        }
    }

    /// The peer router and its `--policy`, for the peers' rows.
    fn peer(self) -> Option<(PeerKind, &'static str)> {
        match self {
            Contender::SglangCacheAware => Some((PeerKind::Sglang, "cache_aware")),
            Contender::SglangRoundRobin => Some((PeerKind::Sglang, "round_robin")),
            Contender::VllmCacheAware => Some((PeerKind::Vllm, "cache_aware")),
            Contender::VllmKvAware => Some((PeerKind::Vllm, "kv_aware")),
            _ => None,
        }
    }
}

/// The bake-off's settings.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// What every contender is driven with.
    pub workload: Workload,
    /// Emulated pods per fleet.
    pub pods: u32,
    /// Offered load, a fraction of the fleet's capacity (as `demo` and `capacity` compute it).
    pub load: f64,
    /// How long each contender is driven.
    pub duration: Duration,
    /// Seed of arrivals and lengths, the same for every contender.
    pub seed: u64,
    /// Whether the engines publish KV events (the picker and vLLM's `kv_aware` follow them).
    pub kv_events: bool,
    /// Who runs, in order.
    pub contenders: Vec<Contender>,
    /// `sglang-router`, when given or found.
    pub sglang_router: Result<PathBuf, String>,
    /// `vllm-router`, when given or found.
    pub vllm_router: Result<PathBuf, String>,
}

/// Runs every contender on its own fresh fleet and measures it.
pub async fn run(
    config: &BenchConfig,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<BenchReport> {
    let capacity_per_pod = demo::capacity_per_pod(&config.workload, config.seed);
    let rate = config.load * capacity_per_pod * f64::from(config.pods);
    let scratch = demo::external::scratch("bench")?;
    let tokenizer = scratch.join("tokenizer.json");
    crate::tokenizer::write(&tokenizer)?;
    let rows = run_all(config, rate, &tokenizer, &mut progress).await;
    let _ = std::fs::remove_dir_all(&scratch);
    let rows = rows?;
    Ok(BenchReport {
        workload: config.workload.name.clone(),
        pods: config.pods,
        load: config.load,
        duration_s: config.duration.as_secs_f64(),
        seed: config.seed,
        kv_events: config.kv_events,
        capacity_per_pod,
        rate,
        rows,
    })
}

async fn run_all(
    config: &BenchConfig,
    rate: f64,
    tokenizer: &Path,
    progress: &mut impl FnMut(&str),
) -> anyhow::Result<Vec<BenchRow>> {
    let mut rows = Vec::new();
    for &contender in &config.contenders {
        rows.push(run_one(config, contender, rate, tokenizer, progress).await?);
    }
    Ok(rows)
}

/// What fronts one contender's fleet; stops when dropped.
enum Front {
    Gateway(DemoGateway),
    Peer(PeerRouter),
}

impl Front {
    fn url(&self) -> String {
        match self {
            Front::Gateway(g) => format!("http://{}", g.addr()),
            Front::Peer(p) => format!("http://{}", p.addr()),
        }
    }
}

async fn start_front(
    config: &BenchConfig,
    contender: Contender,
    fleet: &Fleet,
    tokenizer: &Path,
) -> anyhow::Result<Front> {
    let gateway = |kind, smart| async move {
        Ok(Front::Gateway(
            DemoGateway::start(kind, fleet, smart).await?,
        ))
    };
    match contender {
        Contender::RoundRobin => gateway(GatewayKind::Builtin, false).await,
        Contender::Inferpick => gateway(GatewayKind::Builtin, true).await,
        Contender::InferpickNginx => gateway(GatewayKind::Nginx, true).await,
        Contender::InferpickEnvoy => gateway(GatewayKind::Envoy, true).await,
        peer => {
            let (kind, policy) = peer.peer().expect("every other contender is a peer router");
            let program = match kind {
                PeerKind::Sglang => &config.sglang_router,
                PeerKind::Vllm => &config.vllm_router,
            }
            .as_ref()
            .map_err(|why| anyhow::anyhow!("{why}"))?;
            let router = PeerRouter::start(kind, program, policy, fleet, tokenizer).await?;
            Ok(Front::Peer(router))
        }
    }
}

/// One contender on a fresh fleet: its row, or an error when the fleet itself did not start.
async fn run_one(
    config: &BenchConfig,
    contender: Contender,
    rate: f64,
    tokenizer: &Path,
    progress: &mut impl FnMut(&str),
) -> anyhow::Result<BenchRow> {
    let name = contender.name();
    progress(&format!(
        "{name}: starting {} emulated vLLM pods, their agents and a picker…",
        config.pods
    ));
    let fleet = Fleet::start(
        config.pods,
        &[EngineKind::Vllm],
        &config.workload.adapter_names(),
        demo::engine_for(&config.workload),
        Duration::from_millis(100),
        config.kv_events,
    )
    .await?;
    let front = match start_front(config, contender, &fleet, tokenizer).await {
        Ok(f) => f,
        Err(e) => {
            progress(&format!("{name}: not run: {e:#}"));
            fleet.shutdown().await;
            return Ok(BenchRow::not_run(contender, format!("{e:#}")));
        }
    };
    progress(&format!(
        "{name}: driving {} through {} for {} at {rate} requests/s…",
        config.workload.name,
        contender.route(),
        humantime::format_duration(config.duration)
    ));
    let result = load::run(LoadConfig {
        url: front.url(),
        api: Api::of_workload(&config.workload),
        workload: config.workload.clone(),
        rate,
        duration: config.duration,
        seed: config.seed,
        model: DEMO_MODEL.into(),
        timeout: Duration::from_secs(120),
        keep_records: false,
    })
    .await;
    let per_pod = fleet
        .emulators
        .iter()
        .map(|e| e.emulator.state().counters.finished)
        .collect();
    let row = BenchRow::measured(contender, result, fleet.prefix_hit_ratio(), per_pod);
    drop(front);
    fleet.shutdown().await;
    Ok(row)
}

#[cfg(test)]
mod tests;
