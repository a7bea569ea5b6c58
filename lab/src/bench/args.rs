//! `bench`'s flags, and the command that runs them.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use super::peer::{self, PeerKind};
use super::{BenchConfig, Contender};
use crate::cli::{Switch, demo_workload, parse_duration, parse_load};

/// `bench`: flags.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Built-in workload or a YAML workload file [default: the demo's].
    #[arg(long, env = "INFERPICK_WORKLOAD")]
    pub workload: Option<String>,
    /// Emulated pods in each contender's fleet.
    #[arg(long, env = "INFERPICK_PODS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub pods: u32,
    /// Offered load as a fraction of the fleet's capacity (as `capacity` prints it).
    #[arg(long, env = "INFERPICK_LOAD", default_value = "0.8", value_parser = parse_load)]
    pub load: f64,
    /// How long each contender is driven.
    #[arg(long, env = "INFERPICK_DURATION", default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Seed of arrivals and lengths (the same for every contender).
    #[arg(long, env = "INFERPICK_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Comma list of contenders, run in this order: round-robin, inferpick, inferpick-nginx,
    /// inferpick-envoy, sglang-cache-aware, sglang-round-robin, vllm-cache-aware, vllm-kv-aware.
    #[arg(
        long,
        env = "INFERPICK_CONTENDERS",
        value_enum,
        value_delimiter = ',',
        default_value = "round-robin,inferpick,inferpick-nginx,inferpick-envoy,sglang-cache-aware,sglang-round-robin,vllm-cache-aware,vllm-kv-aware"
    )]
    pub contenders: Vec<Contender>,
    /// SGLang's router program [default: `sglang-router` on PATH].
    #[arg(long, env = "INFERPICK_SGLANG_ROUTER")]
    pub sglang_router: Option<PathBuf>,
    /// vLLM's router program [default: `vllm-router` on PATH].
    #[arg(long, env = "INFERPICK_VLLM_ROUTER")]
    pub vllm_router: Option<PathBuf>,
    /// Whether the engines publish KV events (the picker and `vllm-kv-aware` route on them).
    #[arg(long, env = "INFERPICK_KV_EVENTS", value_enum, default_value = "on")]
    pub kv_events: Switch,
    /// Also write the results as JSON to this file (every contender's run in full).
    #[arg(long, env = "INFERPICK_JSON")]
    pub json: Option<PathBuf>,
}

impl BenchArgs {
    /// The bake-off these flags ask for; a contender named twice is an error.
    pub fn config(&self) -> anyhow::Result<BenchConfig> {
        for (i, c) in self.contenders.iter().enumerate() {
            if self.contenders[..i].contains(c) {
                anyhow::bail!("--contenders names {} twice", c.name());
            }
        }
        let path = std::env::var_os("PATH");
        Ok(BenchConfig {
            workload: demo_workload(self.workload.as_deref())?,
            pods: self.pods,
            load: self.load,
            duration: self.duration,
            seed: self.seed,
            kv_events: self.kv_events == Switch::On,
            contenders: self.contenders.clone(),
            sglang_router: peer::find(
                PeerKind::Sglang,
                self.sglang_router.as_deref(),
                path.as_deref(),
            ),
            vllm_router: peer::find(PeerKind::Vllm, self.vllm_router.as_deref(), path.as_deref()),
        })
    }
}

/// Runs `bench`: progress on stderr, the table on stdout, `--json` to its file. Fails when no
/// contender could run.
pub async fn command(args: BenchArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let report = super::run(&config, |line| eprintln!("{line}")).await?;
    print!("{}", report.text());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if report.rows.iter().all(|r| r.run.is_none()) {
        anyhow::bail!("no contender ran");
    }
    Ok(())
}
