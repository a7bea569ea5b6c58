//! What every gateway test proves, with the real gateway in front of an in-process fleet (three
//! emulated model servers with real agents) and a picker the test can stop and start again:
//! requests reach the endpoint the picker chose (counted on the emulators), a streamed completion
//! arrives intact, a saturated pool sheds priority −1 with 429 and serves priority 0, and while the
//! picker is down the gateway fails open or closed as configured, until the picker is back.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use inferpick_lab::engine::EngineConfig;
use inferpick_schema::EngineKind;
use inferpick_tests::fleet::{Fleet, FleetSpec, PodSpec};
use inferpick_tests::{ChildGuard, ScratchDir, free_port, repo_root, wait_until_async};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// How the gateway behaves while the picker cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Round robin over the model servers.
    Open,
    /// 503.
    Closed,
}

/// A picker in this process on a fixed port, which the test stops and starts again.
pub struct Picker {
    pub addr: SocketAddr,
    /// ext_proc (gRPC).
    pub grpc: SocketAddr,
    config: std::path::PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Picker {
    pub async fn start(dir: &ScratchDir, config_yaml: &str) -> Self {
        let config = dir.write("controlled-picker.yaml", config_yaml).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
            .parse()
            .unwrap();
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
            .parse()
            .unwrap();
        let mut p = Picker {
            addr,
            grpc,
            config,
            stop: None,
            task: None,
        };
        p.restart().await;
        p
    }

    pub async fn kill(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    pub async fn restart(&mut self) {
        use clap::Parser;
        let args = inferpick_picker::Args::try_parse_from([
            "inferpick-picker".to_owned(),
            format!("--config={}", self.config.display()),
            format!("--listen={}", self.addr),
            format!("--grpc-listen={}", self.grpc),
        ])
        .unwrap();
        let settings = inferpick_picker::Settings::from_args(args).unwrap();
        let listener = TcpListener::bind(self.addr).await.unwrap();
        let (tx, rx) = oneshot::channel();
        self.stop = Some(tx);
        self.task = Some(tokio::spawn(async move {
            inferpick_picker::run(settings, listener, async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
        }));
    }
}

impl Drop for Picker {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// The fleet, the controlled picker, and a scratch directory for the gateway.
pub struct Setup {
    pub fleet: Fleet,
    pub picker: Picker,
    pub dir: ScratchDir,
    pub http: reqwest::Client,
}

/// Picker config: saturated as soon as every endpoint has one request waiting, so tests can
/// saturate the pool with a few long requests.
const PICKER_CONFIG: &str = "saturation: { queue_depth_threshold: 1, kv_cache_threshold: 0.8 }\n";

pub async fn setup() -> Setup {
    setup_with_adapters(&[]).await
}

/// [`setup`], where pod `i` also serves the LoRA adapters `adapters[i]`.
pub async fn setup_with_adapters(adapters: &[Vec<String>]) -> Setup {
    let dir = ScratchDir::new("gateway").unwrap();
    let picker = Picker::start(&dir, PICKER_CONFIG).await;
    let pod = |engine| PodSpec {
        engine,
        model: MODEL.into(),
        gpu: None,
        agent_args: Vec::new(),
        kv_events: false,
    };
    let fleet = Fleet::start_with_adapters(
        FleetSpec {
            pods: vec![
                pod(EngineKind::Vllm),
                pod(EngineKind::Sglang),
                pod(EngineKind::Vllm),
            ],
            picker_config: PICKER_CONFIG.into(),
            // One sequence at a time, so a few long requests make a queue.
            engine: EngineConfig {
                max_num_seqs: 2,
                ..EngineConfig::default()
            },
            extra_push_targets: vec![format!("http://{}", picker.addr)],
            ..FleetSpec::default()
        },
        adapters,
    )
    .await
    .unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let s = Setup {
        fleet,
        picker,
        dir,
        http,
    };
    s.wait_until_picker_routes().await;
    s
}

impl Setup {
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.fleet.engines.iter().map(|e| e.addr).collect()
    }

    fn finished(&self) -> Vec<u64> {
        self.fleet
            .engines
            .iter()
            .map(|e| e.emulator.state().counters.finished)
            .collect()
    }

    /// Waits until the controlled picker has every endpoint ready.
    pub async fn wait_until_picker_routes(&self) {
        let wanted: Vec<String> = self.endpoints().iter().map(ToString::to_string).collect();
        let url = format!("http://{}/v1/endpoints", self.picker.addr);
        wait_until_async(
            Duration::from_secs(20),
            "the controlled picker to have every endpoint ready",
            || async {
                let table: serde_json::Value = self
                    .http
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                for w in &wanted {
                    let ready = table["endpoints"].as_array().is_some_and(|es| {
                        es.iter()
                            .any(|e| e["address"] == w.as_str() && e["state"] == "ready")
                    });
                    if !ready {
                        return Err(format!("{w} not ready"));
                    }
                }
                Ok(())
            },
        )
        .await
        .unwrap();
    }

    /// A completion through `gateway`: status, body, and the Retry-After header.
    pub async fn complete(
        &self,
        gateway: SocketAddr,
        headers: &[(&str, &str)],
        max_tokens: u32,
        stream: bool,
    ) -> (u16, String, Option<String>) {
        let mut req = self
            .http
            .post(format!("http://{gateway}/v1/completions"))
            .header("content-type", "application/json")
            .header("x-gateway-model-name", MODEL)
            .body(serde_json::json!({"model": MODEL, "prompt": "Where is New York?", "max_tokens": max_tokens, "stream": stream}).to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let retry = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        (status, resp.text().await.unwrap(), retry)
    }
}

/// Requests pinned to one candidate with the subset header land on that emulator and no other;
/// unpinned requests land where the picker's routed counters say.
pub async fn routes_where_the_picker_says(s: &Setup, gateway: SocketAddr) {
    for (i, endpoint) in s.endpoints().iter().enumerate() {
        let before = s.finished();
        for _ in 0..3 {
            let (status, body, _) = s
                .complete(
                    gateway,
                    &[(
                        "x-gateway-destination-endpoint-subset",
                        &endpoint.to_string(),
                    )],
                    4,
                    false,
                )
                .await;
            assert_eq!(status, 200, "pinned to {endpoint}: {body}");
        }
        let after = s.finished();
        for (j, (b, a)) in before.iter().zip(&after).enumerate() {
            let want = if i == j { 3 } else { 0 };
            assert_eq!(
                a - b,
                want,
                "emulator {j} served {} requests pinned to emulator {i}",
                a - b
            );
        }
    }
    let before = s.finished();
    let n = 12;
    for _ in 0..n {
        let (status, body, _) = s.complete(gateway, &[], 4, false).await;
        assert_eq!(status, 200, "{body}");
    }
    let served: u64 = s.finished().iter().zip(&before).map(|(a, b)| a - b).sum();
    assert_eq!(
        served, n,
        "every request through the gateway reached an emulator of the pool"
    );
}

/// A streamed completion passes through the gateway event by event, ending with `[DONE]`.
pub async fn streams_intact(s: &Setup, gateway: SocketAddr) {
    let (status, body, _) = s.complete(gateway, &[], 16, true).await;
    assert_eq!(status, 200, "{body}");
    let events: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{body}");
    let chunks: Vec<serde_json::Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert!(!text.is_empty(), "no text streamed: {body}");
    let direct = s
        .http
        .post(format!("http://{}/v1/completions", s.endpoints()[0]))
        .json(&serde_json::json!({"model": MODEL, "prompt": "Where is New York?", "max_tokens": 16, "stream": true}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let direct_events = direct.lines().filter(|l| l.starts_with("data: ")).count();
    assert_eq!(
        events.len(),
        direct_events,
        "the gateway changed the event stream:\n{body}\n--- direct ---\n{direct}"
    );
}

/// With every endpoint queueing, priority −1 is shed with 429 and Retry-After, priority 0 is served.
/// Returns the 429's body.
pub async fn sheds_only_sheddable_work_when_saturated(s: &Setup, gateway: SocketAddr) -> String {
    // Fill every engine: two running and two waiting long requests each, sent straight to them.
    let background = saturate(s).await;
    let (status, body, retry) = s
        .complete(gateway, &[("x-inferpick-priority", "-1")], 1, false)
        .await;
    assert_eq!(status, 429, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|_| panic!("not the picker's JSON error: {body}"));
    // The picker's shape, or OpenAI's (`{"error": {"code": …}}`) where the gateway asks for it.
    let code = error["error"].get("code").unwrap_or(&error["error"]);
    assert_eq!(code, "shed", "{body}");
    assert!(retry.is_some(), "429 without Retry-After");
    let shed = body;
    let (status, body, _) = s
        .complete(gateway, &[("x-inferpick-priority", "0")], 1, false)
        .await;
    assert_eq!(status, 200, "priority 0 must be served: {body}");
    for b in background {
        b.abort();
    }
    shed
}

/// Picker down: fail open (served by a model server) or closed (503); back up: routed again.
pub async fn survives_the_picker_going_away(s: &mut Setup, gateway: SocketAddr, failure: Failure) {
    s.picker.kill().await;
    let before: u64 = s.finished().iter().sum();
    let (status, body, _) = s.complete(gateway, &[], 2, false).await;
    match failure {
        Failure::Open => {
            assert_eq!(
                status, 200,
                "fail-open gateway refused while the picker was down: {body}"
            );
            assert_eq!(s.finished().iter().sum::<u64>(), before + 1);
        }
        Failure::Closed => {
            assert_eq!(
                status, 503,
                "fail-closed gateway answered while the picker was down: {body}"
            );
            assert_eq!(
                s.finished().iter().sum::<u64>(),
                before,
                "a fail-closed gateway sent work blindly"
            );
        }
    }
    s.picker.restart().await;
    s.wait_until_picker_routes().await;
    let pinned = s.endpoints()[1].to_string();
    let before = s.finished();
    let (status, body, _) = s
        .complete(
            gateway,
            &[("x-gateway-destination-endpoint-subset", &pinned)],
            2,
            false,
        )
        .await;
    assert_eq!(
        status, 200,
        "routing did not come back with the picker: {body}"
    );
    assert_eq!(
        s.finished()[1],
        before[1] + 1,
        "the restarted picker's choice was not followed"
    );
}

/// Fills `{{NAME}}` placeholders; panics on any left over, so templates and tests stay in step.
pub fn render(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    assert!(!out.contains("{{"), "unfilled placeholder in:\n{out}");
    out
}

pub fn gateway_file(path: &str) -> String {
    std::fs::read_to_string(repo_root().join("deploy/gateways").join(path)).unwrap()
}

/// Polls until something accepts TCP connections on `addr`.
pub async fn wait_for_port(addr: SocketAddr, child: &mut ChildGuard) {
    let what = format!("{} to listen on {addr}", child.name());
    let start = std::time::Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if let Err(e) = child.check_running() {
            panic!("{what}: {e}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn command(program: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// The value of one series on the controlled picker's `/metrics` (0 when absent).
pub async fn picker_metric(s: &Setup, series: &str) -> f64 {
    let text = s
        .http
        .get(format!("http://{}/metrics", s.picker.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// Every request through the gateway closes its decision once its response ends (the picker
/// counts closings by where they came from).
pub async fn in_flight_closes_when_streams_end(s: &Setup, gateway: SocketAddr, source: &str) {
    let series = format!("inferpick_picker_done_total{{source=\"{source}\",result=\"closed\"}}");
    let before = picker_metric(s, &series).await;
    for stream in [false, true, false, true] {
        let (status, body, _) = s.complete(gateway, &[], 3, stream).await;
        assert_eq!(status, 200, "{body}");
    }
    let start = std::time::Instant::now();
    while picker_metric(s, &series).await < before + 4.0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "decisions not closed: {series} went from {before} to {}",
            picker_metric(s, &series).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts Envoy with `deploy/gateways/envoy/<file>` (`fail-open` or `fail-closed` variant by
/// `failure`), filling every placeholder the file has, and waits for its admin `/ready`.
/// `None` when Envoy is not installed (the test is skipped, or fails with INFERPICK_REQUIRE_E2E=1).
pub async fn start_envoy(
    s: &Setup,
    test: &str,
    stem: &str,
    failure: Failure,
) -> Option<(ChildGuard, SocketAddr)> {
    let envoy = inferpick_tests::tool::ENVOY.or_skip(test)?;
    let (listen, admin) = (free_port().unwrap(), free_port().unwrap());
    let variant = match failure {
        Failure::Open => "fail-open",
        Failure::Closed => "fail-closed",
    };
    let file = format!("{stem}-{variant}.yaml");
    let fallback = s.endpoints()[0];
    let template = gateway_file(&format!("envoy/{file}"));
    let vars: Vec<(&str, String)> = [
        ("LISTEN_PORT", listen.to_string()),
        ("ADMIN_PORT", admin.to_string()),
        ("PICKER_HOST", s.picker.addr.ip().to_string()),
        ("PICKER_PORT", s.picker.addr.port().to_string()),
        ("PICKER_GRPC_PORT", s.picker.grpc.port().to_string()),
        ("FALLBACK_HOST", fallback.ip().to_string()),
        ("FALLBACK_PORT", fallback.port().to_string()),
    ]
    .into_iter()
    .filter(|(k, _)| template.contains(&format!("{{{{{k}}}}}")))
    .collect();
    let config = s.dir.write(&file, render(&template, &vars)).unwrap();
    let base_id = listen.to_string();
    let mut child = ChildGuard::spawn(
        "envoy",
        command(
            &envoy,
            &[
                "-c",
                config.to_str().unwrap(),
                "--base-id",
                &base_id,
                "-l",
                "warning",
            ],
        ),
        s.dir.path(),
    )
    .unwrap();
    let ready = format!("http://127.0.0.1:{admin}/ready");
    let start = std::time::Instant::now();
    loop {
        if let Err(e) = child.check_running() {
            panic!("envoy exited: {e}");
        }
        if s.http
            .get(&ready)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "envoy not ready after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some((child, format!("127.0.0.1:{listen}").parse().unwrap()))
}

/// Every engine busy with long requests sent straight to it, until the picker sheds priority −1.
/// The returned tasks keep them busy; abort them to end the saturation.
pub async fn saturate(s: &Setup) -> Vec<tokio::task::JoinHandle<()>> {
    let mut background = Vec::new();
    for endpoint in s.endpoints() {
        for _ in 0..4 {
            let http = s.http.clone();
            background.push(tokio::spawn(async move {
                let _ = http
                    .post(format!("http://{endpoint}/v1/completions"))
                    .json(&serde_json::json!({"model": MODEL, "prompt": "long", "max_tokens": 600}))
                    .send()
                    .await;
            }));
        }
    }
    let pick = format!("http://{}/v1/pick", s.picker.addr);
    wait_until_async(
        Duration::from_secs(20),
        "the picker to see the pool saturated",
        || async {
            let r = s
                .http
                .post(&pick)
                .json(&serde_json::json!({"model": MODEL, "priority": -1}))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if r.status() == 429 {
                Ok(())
            } else {
                Err(format!("pick answered {}", r.status()))
            }
        },
    )
    .await
    .unwrap();
    background
}
