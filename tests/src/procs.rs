//! An inferpick fleet of real processes on loopback: `inferpick-lab emulate` engines, one
//! `inferpick-agent` per engine, and `inferpick-picker` replicas that every agent pushes to. Unlike
//! [`crate::fleet`], each part can be killed (SIGKILL, like a crash or an OOM kill) and a picker
//! restarted on the same port.
//!
//! Every process binds what it is given (`127.0.0.1:0` unless a restart needs the same port) and
//! says where it listens in its log; the helpers read the address from there. Every child is a
//! [`ChildGuard`]: stopped on drop, its log printed when the test fails.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use inferpick_schema::{Decision, ErrorBody, PickRequest};
use serde_json::Value;

use crate::bins::{AGENT, LAB, PICKER};
use crate::fleet::PickOutcome;
use crate::{ChildGuard, ScratchDir, wait_until_async_every};

/// How long a process gets to say it is listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How often logs and tables are polled: finely, since tests measure when things happened.
const POLL: Duration = Duration::from_millis(5);

/// What to start.
#[derive(Debug, Clone)]
pub struct ProcSpec {
    /// How many emulated engines (each with its agent).
    pub engines: usize,
    /// The model every engine serves.
    pub model: String,
    /// One entry per picker replica: its extra flags (`--listen` and `--grpc-listen` are set).
    pub pickers: Vec<Vec<String>>,
    /// The agents' `--interval`.
    pub interval: Duration,
    /// Further push targets for every agent (`http://host:port`), e.g. a slow stand-in.
    pub extra_push_targets: Vec<String>,
}

impl Default for ProcSpec {
    fn default() -> Self {
        Self {
            engines: 3,
            model: "loopback/model".to_owned(),
            pickers: vec![Vec::new()],
            interval: Duration::from_millis(100),
            extra_push_targets: Vec::new(),
        }
    }
}

/// An emulated engine process.
#[derive(Debug)]
pub struct EngineProc {
    /// Where it serves (the endpoint its agent reports).
    pub addr: SocketAddr,
    child: Option<ChildGuard>,
}

impl EngineProc {
    /// Starts `inferpick-lab emulate --engine vllm` on `127.0.0.1:0`.
    pub async fn start(dir: &Path, name: &str, model: &str) -> anyhow::Result<Self> {
        let mut command = Command::new(LAB.path()?);
        command.args([
            "emulate",
            "--listen",
            "127.0.0.1:0",
            "--engine",
            "vllm",
            "--model",
            model,
        ]);
        let mut child = ChildGuard::spawn(name, command, dir)?;
        let addr = wait_for_log(&mut child, "the emulator's address", |line| {
            let rest = line.split_once(" at http://")?.1;
            rest.split_whitespace().next()?.parse().ok()
        })
        .await?;
        Ok(Self {
            addr,
            child: Some(child),
        })
    }

    /// SIGKILLs the engine.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        kill(&mut self.child)
    }
}

/// An agent process.
#[derive(Debug)]
pub struct AgentProc {
    /// Its own listener (`/metrics`, `/readyz`, `GET /v1/report`).
    pub listen: SocketAddr,
    /// The endpoint it reports.
    pub endpoint: String,
    child: Option<ChildGuard>,
}

impl AgentProc {
    /// Starts an agent scraping `engine_url` (a vLLM dialect) for `endpoint`, pushing to every
    /// URL in `pickers` every `interval`, listening on `127.0.0.1:0`.
    pub async fn start(
        dir: &Path,
        name: &str,
        engine_url: &str,
        endpoint: &str,
        pickers: &[String],
        interval: Duration,
    ) -> anyhow::Result<Self> {
        Self::start_with(dir, name, engine_url, endpoint, pickers, interval, &[]).await
    }

    /// [`AgentProc::start`] with further flags (`--ca-file`, `--token-file`, …).
    pub async fn start_with(
        dir: &Path,
        name: &str,
        engine_url: &str,
        endpoint: &str,
        pickers: &[String],
        interval: Duration,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(AGENT.path()?);
        command.args([
            format!("--engine-url={engine_url}"),
            "--engine=vllm".to_owned(),
            format!("--endpoint={endpoint}"),
            format!("--picker={}", pickers.join(",")),
            format!("--interval={}ms", interval.as_millis()),
            "--gpu=none".to_owned(),
            "--listen=127.0.0.1:0".to_owned(),
            format!("--pod={name}"),
            "--namespace=procs".to_owned(),
            "--node=loopback".to_owned(),
            "--log-format=json".to_owned(),
        ]);
        command.args(extra);
        let mut child = ChildGuard::spawn(name, command, dir)?;
        let listen = wait_for_log(&mut child, "the agent's listen address", |line| {
            let entry = json_log(line, "inferpick-agent started")?;
            entry["listen"].as_str()?.parse().ok()
        })
        .await?;
        Ok(Self {
            listen,
            endpoint: endpoint.to_owned(),
            child: Some(child),
        })
    }

    /// SIGKILLs the agent.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        kill(&mut self.child)
    }

    /// Everything the agent logged so far (empty once it was killed).
    pub fn log(&self) -> String {
        self.child.as_ref().map(ChildGuard::log).unwrap_or_default()
    }
}

/// A picker process, which can be killed and started again on the same address.
#[derive(Debug)]
pub struct PickerProc {
    /// Its HTTP address (API and `/metrics`).
    pub addr: SocketAddr,
    /// When its latest start logged "listening" (as seen by the test).
    pub listening_at: Instant,
    name: String,
    args: Vec<String>,
    starts: u32,
    child: Option<ChildGuard>,
}

impl PickerProc {
    /// Starts `inferpick-picker --listen <listen> --grpc-listen off <args>`; `listen` may have
    /// port 0.
    pub async fn start(
        dir: &Path,
        name: &str,
        listen: &str,
        args: &[String],
    ) -> anyhow::Result<Self> {
        let mut picker = Self {
            addr: listen.parse().context("the picker's listen address")?,
            listening_at: Instant::now(),
            name: name.to_owned(),
            args: args.to_vec(),
            starts: 0,
            child: None,
        };
        picker.spawn(dir).await?;
        Ok(picker)
    }

    async fn spawn(&mut self, dir: &Path) -> anyhow::Result<()> {
        let mut command = Command::new(PICKER.path()?);
        command
            .env("INFERPICK_LOG_FORMAT", "json")
            .arg(format!("--listen={}", self.addr))
            .arg("--grpc-listen=off")
            .args(&self.args);
        self.starts += 1;
        let log_name = format!("{}-start{}", self.name, self.starts);
        let mut child = ChildGuard::spawn(&log_name, command, dir)?;
        self.addr = wait_for_log(&mut child, "the picker to listen", |line| {
            json_log(line, "listening")?["http"].as_str()?.parse().ok()
        })
        .await?;
        self.listening_at = Instant::now();
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILLs the picker.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        kill(&mut self.child)
    }

    /// Starts the picker again on the address it had, with the same flags; returns when it logged
    /// "listening" ([`PickerProc::listening_at`]).
    pub async fn restart(&mut self, dir: &Path) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("{} is still running; kill it first", self.name);
        }
        self.spawn(dir).await
    }

    /// The process id of the running picker.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::id)
    }

    /// `http://<addr>`, for agents' `--picker`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The fleet; every process stops when it is dropped.
#[derive(Debug)]
pub struct Procs {
    /// The emulated engines.
    pub engines: Vec<EngineProc>,
    /// One agent per engine, in the same order.
    pub agents: Vec<AgentProc>,
    /// The picker replicas.
    pub pickers: Vec<PickerProc>,
    /// An HTTP client with a short timeout, for the helpers and the tests.
    pub http: reqwest::Client,
    // Declared last: the children stop before their log directory is removed.
    dir: ScratchDir,
}

impl Procs {
    /// Starts pickers, then engines, then agents, and waits until every picker has every engine's
    /// endpoint ready.
    pub async fn start(spec: ProcSpec) -> anyhow::Result<Self> {
        let dir = ScratchDir::new("procs")?;
        let mut pickers = Vec::new();
        for (i, args) in spec.pickers.iter().enumerate() {
            pickers.push(
                PickerProc::start(dir.path(), &format!("picker-{i}"), "127.0.0.1:0", args).await?,
            );
        }
        let mut targets: Vec<String> = pickers.iter().map(PickerProc::url).collect();
        targets.extend(spec.extra_push_targets.iter().cloned());
        let mut engines = Vec::new();
        let mut agents = Vec::new();
        for i in 0..spec.engines {
            let engine = EngineProc::start(dir.path(), &format!("engine-{i}"), &spec.model).await?;
            let endpoint = engine.addr.to_string();
            agents.push(
                AgentProc::start(
                    dir.path(),
                    &format!("agent-{i}"),
                    &format!("http://{endpoint}/metrics"),
                    &endpoint,
                    &targets,
                    spec.interval,
                )
                .await?,
            );
            engines.push(engine);
        }
        let procs = Self {
            engines,
            agents,
            pickers,
            http: crate::http_client(Duration::from_secs(5)),
            dir,
        };
        for i in 0..procs.pickers.len() {
            procs.wait_until_whole(i, START_TIMEOUT).await?;
        }
        Ok(procs)
    }

    /// The directory holding every process's log, for further processes a test starts.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The engines' endpoints (`ip:port`).
    pub fn endpoints(&self) -> Vec<String> {
        self.engines.iter().map(|e| e.addr.to_string()).collect()
    }

    /// SIGKILLs picker `i` and starts it again on the same address.
    pub async fn restart_picker(&mut self, i: usize) -> anyhow::Result<()> {
        let picker = &mut self.pickers[i];
        picker.kill()?;
        picker.restart(self.dir.path()).await
    }

    /// Picker `i`'s `GET /v1/endpoints`.
    pub async fn table(&self, i: usize) -> anyhow::Result<Value> {
        table(&self.http, self.pickers[i].addr).await
    }

    /// Picker `i`'s view: endpoint address → state (`ready`, `stale`, `not_ready`).
    pub async fn states(&self, i: usize) -> anyhow::Result<BTreeMap<String, String>> {
        Ok(states(&self.table(i).await?))
    }

    /// Waits until picker `i` lists every engine's endpoint as ready; returns how long that took
    /// (to within a few milliseconds).
    pub async fn wait_until_whole(&self, i: usize, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let wanted = self.endpoints();
        wait_until_async_every(
            timeout,
            POLL,
            "every endpoint ready at the picker",
            || async {
                let states = self.states(i).await.map_err(|e| format!("{e:#}"))?;
                match wanted
                    .iter()
                    .find(|e| states.get(*e).map(String::as_str) != Some("ready"))
                {
                    Some(missing) => Err(format!("{missing}: {:?}", states.get(missing))),
                    None => Ok(()),
                }
            },
        )
        .await?;
        Ok(started.elapsed())
    }

    /// `POST /v1/pick` on picker `i`.
    pub async fn pick(&self, i: usize, request: &PickRequest) -> anyhow::Result<PickOutcome> {
        pick(&self.http, self.pickers[i].addr, request).await
    }

    /// Agent `i`'s latest report's `seq`.
    pub async fn agent_seq(&self, i: usize) -> anyhow::Result<u64> {
        agent_seq(&self.http, self.agents[i].listen).await
    }
}

/// An agent's latest report (`GET /v1/report` on its listener).
pub async fn agent_report(http: &reqwest::Client, agent: SocketAddr) -> anyhow::Result<Value> {
    let url = format!("http://{agent}/v1/report");
    let response = http.get(&url).send().await?.error_for_status()?;
    Ok(response.json().await?)
}

/// An agent's latest report's `seq`.
pub async fn agent_seq(http: &reqwest::Client, agent: SocketAddr) -> anyhow::Result<u64> {
    agent_report(http, agent).await?["seq"]
        .as_u64()
        .context("the agent's report has no seq")
}

/// A server's `GET /metrics` text.
pub async fn metrics(http: &reqwest::Client, addr: SocketAddr) -> anyhow::Result<String> {
    let response = http.get(format!("http://{addr}/metrics")).send().await?;
    Ok(response.error_for_status()?.text().await?)
}

/// A picker's `GET /v1/endpoints`.
pub async fn table(http: &reqwest::Client, picker: SocketAddr) -> anyhow::Result<Value> {
    let response = http
        .get(format!("http://{picker}/v1/endpoints"))
        .send()
        .await?;
    Ok(response.error_for_status()?.json().await?)
}

/// Endpoint address → state, from a `GET /v1/endpoints` answer.
pub fn states(table: &Value) -> BTreeMap<String, String> {
    table["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e["address"].as_str()?.to_owned(),
                e["state"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// One endpoint's entry in a `GET /v1/endpoints` answer.
pub fn entry<'a>(table: &'a Value, endpoint: &str) -> Option<&'a Value> {
    table["endpoints"]
        .as_array()?
        .iter()
        .find(|e| e["address"] == endpoint)
}

/// `POST /v1/pick` on the picker at `picker`.
pub async fn pick(
    http: &reqwest::Client,
    picker: SocketAddr,
    request: &PickRequest,
) -> anyhow::Result<PickOutcome> {
    let response = http
        .post(format!("http://{picker}/v1/pick"))
        .json(request)
        .send()
        .await?;
    let status = response.status().as_u16();
    if status == 200 {
        Ok(PickOutcome::Routed(response.json::<Decision>().await?))
    } else {
        let body: ErrorBody = response
            .json()
            .await
            .with_context(|| format!("pick answered {status} without an error body"))?;
        Ok(PickOutcome::Refused(status, body))
    }
}

/// A process's resident set size, from `/proc/<pid>/status`.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no VmRSS line in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

/// SIGKILLs the child in `slot`, leaving the slot empty.
fn kill(slot: &mut Option<ChildGuard>) -> anyhow::Result<()> {
    let child = slot.take().context("the process is not running")?;
    let name = child.name().to_owned();
    child
        .kill()
        .with_context(|| format!("cannot kill {name}"))?;
    Ok(())
}

/// The fields of a JSON log line (tracing's JSON format) whose message is `message`.
fn json_log(line: &str, message: &str) -> Option<Value> {
    let entry: Value = serde_json::from_str(line).ok()?;
    let fields = entry.get("fields")?;
    (fields["message"] == message).then(|| fields.clone())
}

/// Waits until a line of `child`'s log gives a value through `parse`; fails at once, with the
/// log, when the child exits first.
async fn wait_for_log<T>(
    child: &mut ChildGuard,
    what: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> anyhow::Result<T> {
    let what = format!("{} ({})", what, child.name());
    // Ok(Err(_)) ends the wait early: the child exited, so the value will never come.
    let outcome = wait_until_async_every(START_TIMEOUT, POLL, &what, || {
        let probe = match child.log().lines().find_map(&parse) {
            Some(value) => Ok(Ok(value)),
            None => match child.check_running() {
                Err(exited) => Ok(Err(exited)),
                Ok(()) => Err("not in the log yet"),
            },
        };
        std::future::ready(probe)
    })
    .await;
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(exited)) => bail!("waiting for {what}: {exited}"),
        Err(timeout) => bail!("{timeout}; the log:\n{}", child.log()),
    }
}
