//! The agent's settings, resolved and checked once from [`Args`] and the downward-API environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use inferpick_schema::report::check_address;
use reqwest::Url;

use crate::cli::{Args, EngineChoice};
use crate::gpu::GpuSpec;
use crate::push::TargetSpec;

/// Everything the agent runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The engine's metrics URL.
    pub engine_url: Url,
    /// Dialect choice.
    pub engine: EngineChoice,
    /// `host:port` gateways send traffic to.
    pub endpoint: String,
    /// Pod identity.
    pub pod: Option<String>,
    /// Pod namespace.
    pub namespace: Option<String>,
    /// Node name.
    pub node: Option<String>,
    /// Push targets.
    pub pickers: Vec<TargetSpec>,
    /// Scrape and push period.
    pub interval: Duration,
    /// Bound on one scrape.
    pub scrape_timeout: Duration,
    /// Bound on one push to one target.
    pub push_timeout: Duration,
    /// Bearer token file.
    pub token_file: Option<PathBuf>,
    /// `--ca-file`, loaded: https pushes trust only these CAs (`None`: the system's roots).
    pub ca_roots: Option<Arc<rustls::RootCertStore>>,
    /// Own listener: bound on reading a request head, answering a request, and idling.
    pub request_timeout: Duration,
    /// GPU selection.
    pub gpu: GpuSpec,
    /// `--gpu-state-url`: GPUs read from this URL instead of NVML.
    pub gpu_state_url: Option<Url>,
    /// Bound on one read of `gpu_state_url`.
    pub gpu_state_timeout: Duration,
    /// `--tensor-parallel-size`.
    pub tensor_parallel_size: Option<u32>,
    /// kubelet pod-resources socket.
    pub pod_resources_socket: PathBuf,
    /// Own HTTP listener.
    pub listen: SocketAddr,
    /// The engine's KV-event stream to follow (`None`: `--kv-events off`).
    pub kv_events: Option<crate::kv::subscribe::Source>,
    /// Bound on the KV mirror, in blocks.
    pub kv_max_blocks: usize,
}

/// A `tcp://host:port` ZeroMQ endpoint, or why not.
fn zmq_endpoint(value: &str) -> Result<String, String> {
    let rest = value
        .strip_prefix("tcp://")
        .ok_or_else(|| format!("{value:?}: only tcp://host:port endpoints are supported"))?;
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(value.to_string())
        }
        _ => Err(format!("{value:?} is not tcp://host:port")),
    }
}

/// A flag or environment value that cannot work; names the flag and the value.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {problem}")]
pub struct ConfigError {
    /// The flag (or variable) at fault.
    pub flag: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Config {
    /// Resolves `args`, reading `POD_IP`, `POD_NAME`, `POD_NAMESPACE` and `NODE_NAME` for what the
    /// flags leave unset. Every problem is reported, not only the first.
    pub fn from_args(args: &Args) -> Result<Self, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut fail = |flag, problem: String| errors.push(ConfigError { flag, problem });

        let engine_url = match Url::parse(&args.engine_url) {
            Ok(u) if u.scheme() == "http" => Some(u),
            Ok(u) => {
                fail(
                    "--engine-url",
                    format!("{u}: only http:// engine URLs are supported"),
                );
                None
            }
            Err(e) => {
                fail(
                    "--engine-url",
                    format!("{:?} is not a URL: {e}", args.engine_url),
                );
                None
            }
        };
        let endpoint = match args.endpoint.clone().or_else(|| {
            env("POD_IP").map(|ip| {
                if ip.contains(':') {
                    format!("[{ip}]:8000")
                } else {
                    format!("{ip}:8000")
                }
            })
        }) {
            Some(e) => match check_address(&e) {
                Ok(()) => Some(e),
                Err(p) => {
                    fail("--endpoint", p);
                    None
                }
            },
            None if args.once => Some("127.0.0.1:8000".to_string()),
            None => {
                fail(
                    "--endpoint",
                    "not set: pass --endpoint HOST:PORT or set POD_IP".into(),
                );
                None
            }
        };
        let mut pickers = Vec::new();
        for p in &args.picker {
            match p.parse::<TargetSpec>() {
                Ok(t) => pickers.push(t),
                Err(e) => fail("--picker", e),
            }
        }
        let ca_roots = match &args.ca_file {
            Some(path) => match crate::tls::load_ca_file(path) {
                Ok(roots) => Some(Arc::new(roots)),
                Err(problem) => {
                    fail("--ca-file", problem);
                    None
                }
            },
            None => None,
        };
        if args.request_timeout < Duration::from_millis(10) {
            fail(
                "--request-timeout",
                format!("{:?} is too short: at least 10ms", args.request_timeout),
            );
        }
        let interval_ok = args.interval >= Duration::from_millis(10);
        if !interval_ok {
            fail(
                "--interval",
                format!("{:?} is too short: at least 10ms", args.interval),
            );
        }
        // --once has no schedule to keep: give a slow engine a fair chance to answer.
        let scrape_timeout = args.scrape_timeout.unwrap_or(if args.once {
            Duration::from_secs(5)
        } else {
            args.interval.mul_f64(0.8).max(Duration::from_millis(20))
        });
        if interval_ok && !args.once && scrape_timeout > args.interval {
            fail(
                "--scrape-timeout",
                format!(
                    "{scrape_timeout:?} is longer than --interval {:?}: scrapes would fall behind",
                    args.interval
                ),
            );
        }
        let kv_replay = match &args.kv_events_replay {
            Some(r) => match zmq_endpoint(r) {
                Ok(r) => Some(r),
                Err(p) => {
                    fail("--kv-events-replay", p);
                    None
                }
            },
            None => None,
        };
        let kv_events = match args.kv_events.as_str() {
            "off" => None,
            "auto" => Some(crate::kv::subscribe::Source {
                endpoint: crate::kv::subscribe::VLLM_DEFAULT.to_string(),
                replay: kv_replay,
                auto: true,
            }),
            other => match zmq_endpoint(other) {
                Ok(endpoint) => Some(crate::kv::subscribe::Source {
                    endpoint,
                    replay: kv_replay,
                    auto: false,
                }),
                Err(p) => {
                    fail("--kv-events", format!("{p}; or auto, or off"));
                    None
                }
            },
        };
        let gpu_state_url = match args.gpu_state_url.as_deref().map(Url::parse) {
            None => None,
            Some(Ok(u)) if u.scheme() == "http" => Some(u),
            Some(Ok(u)) => {
                fail(
                    "--gpu-state-url",
                    format!("{u}: only http:// URLs are supported"),
                );
                None
            }
            Some(Err(e)) => {
                fail(
                    "--gpu-state-url",
                    format!(
                        "{:?} is not a URL: {e}",
                        args.gpu_state_url.as_deref().unwrap_or("")
                    ),
                );
                None
            }
        };
        if args.kv_events_max_blocks == 0 {
            fail(
                "--kv-events-max-blocks",
                "is 0: at least 1 (use --kv-events off to turn events off)".into(),
            );
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Config {
            engine_url: engine_url.expect("checked"),
            engine: args.engine,
            endpoint: endpoint.expect("checked"),
            pod: args.pod.clone().or_else(|| env("POD_NAME")),
            namespace: args.namespace.clone().or_else(|| env("POD_NAMESPACE")),
            node: args.node.clone().or_else(|| env("NODE_NAME")),
            pickers,
            interval: args.interval,
            scrape_timeout,
            push_timeout: (args.interval * 2)
                .clamp(Duration::from_millis(200), Duration::from_secs(2)),
            token_file: args.token_file.clone(),
            ca_roots,
            request_timeout: args.request_timeout,
            gpu: args.gpu.clone(),
            gpu_state_url,
            // A GPU state server that is slow must not make the GPUs lag a report behind.
            gpu_state_timeout: (args.interval / 2).max(Duration::from_millis(5)),
            tensor_parallel_size: args.tensor_parallel_size,
            pod_resources_socket: args.pod_resources_socket.clone(),
            listen: args.listen,
            kv_events: kv_events.filter(|_| !args.once),
            kv_max_blocks: args.kv_events_max_blocks,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, Vec<ConfigError>> {
        let mut argv = vec!["inferpick-agent"];
        argv.extend_from_slice(extra);
        Config::from_args(&Args::try_parse_from(argv).unwrap())
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = parse(&["--endpoint", "10.0.0.1:8000"]).unwrap();
        assert_eq!(c.engine_url.as_str(), "http://127.0.0.1:8000/metrics");
        assert_eq!(c.interval, Duration::from_millis(100));
        assert_eq!(c.scrape_timeout, Duration::from_millis(80));
        assert_eq!(c.listen.to_string(), "0.0.0.0:9400");
        assert_eq!(c.engine, EngineChoice::Auto);
        assert_eq!(c.gpu, GpuSpec::Auto);
        assert_eq!(c.request_timeout, Duration::from_secs(10));
        assert!(c.ca_roots.is_none());
    }

    #[test]
    fn a_bad_ca_file_is_a_startup_error_naming_the_file() {
        let errs = parse(&[
            "--endpoint",
            "10.0.0.1:8000",
            "--picker",
            "https://picker:9000",
            "--ca-file",
            "/nonexistent/picker-ca.pem",
        ])
        .unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].flag, "--ca-file");
        assert!(
            errs[0].to_string().contains("/nonexistent/picker-ca.pem"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_flag() {
        let errs = parse(&[
            "--engine-url",
            "not a url",
            "--endpoint",
            "10.0.0.1",
            "--picker",
            "ftp://x",
            "--interval",
            "1ms",
        ])
        .unwrap_err();
        let flags: Vec<_> = errs.iter().map(|e| e.flag).collect();
        assert_eq!(
            flags,
            ["--engine-url", "--endpoint", "--picker", "--interval"]
        );
        assert!(errs[1].to_string().contains("not host:port"), "{}", errs[1]);
    }

    #[test]
    fn kv_event_flags_are_checked() {
        let c = parse(&["--endpoint", "10.0.0.1:8000"]).unwrap();
        let source = c.kv_events.unwrap();
        assert!(source.auto);
        assert_eq!(source.endpoint, "tcp://127.0.0.1:5557");
        assert_eq!(c.kv_max_blocks, 1_000_000);
        let c = parse(&["--endpoint", "10.0.0.1:8000", "--kv-events", "off"]).unwrap();
        assert!(c.kv_events.is_none());
        let errs = parse(&[
            "--endpoint",
            "10.0.0.1:8000",
            "--kv-events",
            "ipc:///tmp/x",
            "--kv-events-replay",
            "tcp://host",
            "--kv-events-max-blocks",
            "0",
        ])
        .unwrap_err();
        let flags: Vec<_> = errs.iter().map(|e| e.flag).collect();
        assert_eq!(
            flags,
            [
                "--kv-events-replay",
                "--kv-events",
                "--kv-events-max-blocks"
            ]
        );
    }

    #[test]
    fn gpu_state_url_and_tensor_parallel_size_are_checked() {
        let c = parse(&[
            "--endpoint",
            "10.0.0.1:8000",
            "--gpu-state-url",
            "http://127.0.0.1:7000/lab/gpus",
            "--tensor-parallel-size",
            "2",
        ])
        .unwrap();
        assert_eq!(
            c.gpu_state_url.unwrap().as_str(),
            "http://127.0.0.1:7000/lab/gpus"
        );
        assert_eq!(c.gpu_state_timeout, Duration::from_millis(50));
        assert_eq!(c.tensor_parallel_size, Some(2));
        let c = parse(&["--endpoint", "10.0.0.1:8000"]).unwrap();
        assert_eq!((c.gpu_state_url, c.tensor_parallel_size), (None, None));
        let errs = parse(&[
            "--endpoint",
            "10.0.0.1:8000",
            "--gpu-state-url",
            "file:///x",
        ])
        .unwrap_err();
        assert_eq!(errs[0].flag, "--gpu-state-url");
        assert!(errs[0].to_string().contains("only http://"), "{}", errs[0]);
        for bad in ["0", "-1", "two"] {
            let flag = format!("--tensor-parallel-size={bad}");
            let err = Args::try_parse_from(["inferpick-agent", flag.as_str()])
                .unwrap_err()
                .to_string();
            assert!(err.contains("--tensor-parallel-size"), "{err}");
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn unknown_engine_names_the_choices() {
        let err = Args::try_parse_from(["inferpick-agent", "--engine", "vlm"]).unwrap_err();
        assert!(err.to_string().contains("triton-trtllm"), "{err}");
    }
}
