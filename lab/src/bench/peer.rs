//! Peer routers as child processes in front of a fleet: SGLang's `sglang-router` (SGLang Model
//! Gateway) and vLLM's `vllm-router`, started with the fleet's emulators as their workers, ready
//! once their `/readiness` counts every worker healthy, and stopped (with their process group)
//! when dropped.
//!
//! Neither may download anything: SGLang's router looks a worker's tokenizer up on Hugging Face
//! by its model name, so `HF_ENDPOINT` points at a closed loopback port (it logs a warning and
//! routes on text, which its HTTP cache-aware policy does anyway); vLLM's tokenizes with the
//! lab's own `tokenizer.json` (`VLLM_ROUTER_TOKENIZER`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::demo::external::{self, ExternalGateway};
use crate::demo::{DEMO_MODEL, Fleet};

/// How long a router may take to report every worker healthy.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// Where Hugging Face lookups go: a loopback port nothing listens on, so they fail at once.
const NO_HUB: &str = "http://127.0.0.1:9";

/// Which peer router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    /// `sglang-router` (pip `sglang-router`).
    Sglang,
    /// `vllm-router` (pip `vllm-router`).
    Vllm,
}

impl PeerKind {
    /// The program's name on `PATH`, its flag, and the pip package the README installs.
    pub fn program(self) -> (&'static str, &'static str, &'static str) {
        match self {
            PeerKind::Sglang => ("sglang-router", "--sglang-router", "sglang-router==0.3.2"),
            PeerKind::Vllm => ("vllm-router", "--vllm-router", "vllm-router==0.1.17"),
        }
    }
}

/// The program for `kind`: `given` (its flag) if it is a file, else the first `PATH` entry
/// holding it; otherwise why not, with how to install it.
pub fn find(
    kind: PeerKind,
    given: Option<&Path>,
    path: Option<&std::ffi::OsStr>,
) -> Result<PathBuf, String> {
    let (name, flag, package) = kind.program();
    if let Some(p) = given {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(format!("{flag} {}: no such file", p.display()))
        };
    }
    path.map(|p| {
        std::env::split_paths(p)
            .map(|d| d.join(name))
            .collect::<Vec<_>>()
    })
    .unwrap_or_default()
    .into_iter()
    .find(|c| c.is_file())
    .ok_or_else(|| format!("{name} is not on PATH (pip install {package}, or give {flag} PATH)"))
}

/// A running peer router.
#[derive(Debug)]
pub struct PeerRouter {
    process: ExternalGateway,
}

impl PeerRouter {
    /// Where clients send requests.
    pub fn addr(&self) -> SocketAddr {
        self.process.addr
    }

    /// Starts `program` (a `kind` router) with `--policy policy` over `fleet`'s emulators, and
    /// waits until it reports them all healthy.
    pub async fn start(
        kind: PeerKind,
        program: &Path,
        policy: &str,
        fleet: &Fleet,
        tokenizer: &Path,
    ) -> anyhow::Result<PeerRouter> {
        let (name, _, _) = kind.program();
        let dir = external::scratch(name)?;
        let port = external::free_port()?;
        let cmd = command(kind, program, policy, fleet, tokenizer, port)?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let process = ExternalGateway::spawn(cmd, dir, addr)?;
        let router = PeerRouter { process };
        router
            .wait_ready(fleet.emulators.len())
            .await
            .with_context(|| format!("{name} --policy {policy}"))?;
        Ok(router)
    }

    /// Polls `/readiness` until it is 200 and counts `workers` healthy workers.
    async fn wait_ready(&self, workers: usize) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let url = format!("http://{}/readiness", self.addr());
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        let mut last = String::from("no answer");
        loop {
            if let Some(status) = self.process.exit_status() {
                bail!(
                    "exited ({status}) before it was ready:\n{}",
                    tail(&self.process.log())
                );
            }
            if let Ok(r) = client.get(&url).send().await {
                let status = r.status();
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                let healthy = body["healthy_workers"].as_u64().unwrap_or(0);
                if status.is_success() && healthy >= workers as u64 {
                    return Ok(());
                }
                last = format!("{status}, {healthy} of {workers} workers healthy");
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "not ready after {READY_WITHIN:?} ({last}):\n{}",
                    tail(&self.process.log())
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The last lines of a log, enough to say why a router stopped.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The command line for `kind` over `fleet` on `port`.
fn command(
    kind: PeerKind,
    program: &Path,
    policy: &str,
    fleet: &Fleet,
    tokenizer: &Path,
    port: u16,
) -> anyhow::Result<Command> {
    let mut cmd = Command::new(program);
    let workers: Vec<String> = fleet
        .endpoints()
        .iter()
        .map(|e| format!("http://{e}"))
        .collect();
    if kind == PeerKind::Sglang {
        cmd.arg("launch");
    }
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .arg("--worker-urls")
        .args(&workers)
        .args(["--policy", policy])
        // Their metrics listen on a fixed port by default; two routers at once would collide.
        .args(["--prometheus-host", "127.0.0.1"])
        .args(["--prometheus-port", &external::free_port()?.to_string()])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_ENDPOINT", NO_HUB);
    match kind {
        PeerKind::Sglang => {
            cmd.args(["--log-level", "warn"]);
        }
        PeerKind::Vllm => {
            cmd.args(["--log-level", "warning"])
                .env("VLLM_ROUTER_TOKENIZER", tokenizer);
        }
    }
    if policy == "kv_aware" {
        if fleet.kv_events.is_empty() {
            bail!("kv_aware needs the engines' KV events (--kv-events on)");
        }
        for (worker, kv) in workers.iter().zip(&fleet.kv_events) {
            cmd.args(["--kv-event-source", &format!("{worker}={}", kv.events)]);
            if let Some(replay) = &kv.replay {
                cmd.args(["--kv-event-replay-source", &format!("{worker}={replay}")]);
            }
        }
        let block = fleet
            .emulators
            .first()
            .map_or(16, |e| e.emulator.config().engine.block_tokens);
        cmd.args(["--kv-event-model", DEMO_MODEL])
            .args(["--kv-event-block-size", &block.to_string()]);
    }
    Ok(cmd)
}
