//! The picker's configuration: flags (each also `INFERPICK_<FLAG>`), over an optional YAML file.
//!
//! Everything is validated in one place and every problem is reported at once, each naming where it
//! came from (`FILE: staleness.max_report_age: …` or `--policy: …`). The file is parsed into a YAML
//! value and walked by hand rather than deserialized straight into structs, because serde stops at
//! the first error and the contract asks for all of them.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_norway::{Mapping, Value};

use crate::scheduler::{Policy, RewriteTarget, Saturation, SchedulerConfig};
use crate::table::{DEFAULT_MAX_ENDPOINTS, TableConfig};
use crate::tls::TlsFiles;
use crate::trust::{self, Cidr};

/// Command-line flags of `inferpick-picker` (CONTRACTS.md). Unset flags fall back to the file, then
/// to the defaults shown.
#[derive(Debug, Clone, Default, PartialEq, clap::Parser)]
#[command(
    name = "inferpick-picker",
    version,
    about = "inferpick's picker: ingests load reports from agents and decides which endpoint serves each LLM request"
)]
pub struct Args {
    /// YAML config file; flags override it. Re-read on SIGHUP and when it changes.
    #[arg(long, env = "INFERPICK_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// HTTP API and /metrics [default: 0.0.0.0:9000]
    #[arg(long, env = "INFERPICK_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Envoy ext_proc (the Gateway API Inference Extension's endpoint-picker protocol) and gRPC
    /// health, or `off` [default: 0.0.0.0:9002]
    #[arg(long, env = "INFERPICK_GRPC_LISTEN", value_name = "ADDR|off")]
    pub grpc_listen: Option<String>,
    /// ext_proc: how many fallbacks to append to the destination header and `envoy.lb` metadata
    /// (0 = the primary alone, what an ORIGINAL_DST cluster needs) [default: 0]
    #[arg(long, env = "INFERPICK_EXTPROC_FALLBACKS", value_name = "N")]
    pub extproc_fallbacks: Option<String>,
    /// If set, POST /v1/reports requires `Authorization: Bearer <token>`; re-read when it changes.
    #[arg(long, env = "INFERPICK_REPORT_TOKEN_FILE", value_name = "PATH")]
    pub report_token_file: Option<PathBuf>,
    /// If set, pick, authz and done calls require `Authorization: Bearer <token>`.
    #[arg(long, env = "INFERPICK_PICK_TOKEN_FILE", value_name = "PATH")]
    pub pick_token_file: Option<PathBuf>,
    /// An endpoint whose last report arrived longer ago is not picked [default: 1s]
    #[arg(long, env = "INFERPICK_MAX_REPORT_AGE", value_name = "DURATION")]
    pub max_report_age: Option<String>,
    /// An endpoint silent this long is dropped from the table [default: 60s]
    #[arg(long, env = "INFERPICK_FORGET_AFTER", value_name = "DURATION")]
    pub forget_after: Option<String>,
    /// Scheduling profile: inferpick, gie, least-request, round-robin, random [default: inferpick]
    #[arg(long, env = "INFERPICK_POLICY", value_name = "NAME")]
    pub policy: Option<String>,
    /// Peers allowed to push reports for endpoints other than their own IP (proxies, meshes); any
    /// other peer may only report for its own address [default: none]
    #[arg(long, env = "INFERPICK_TRUSTED_PROXIES", value_name = "CIDR[,CIDR…]")]
    pub trusted_proxies: Option<String>,
    /// Most endpoints the table holds; a report for a new endpoint beyond it is refused with 503
    /// table_full [default: 10000]
    #[arg(long, env = "INFERPICK_MAX_ENDPOINTS", value_name = "N")]
    pub max_endpoints: Option<String>,
    /// PEM certificate chain: with --tls-key, the HTTP listener serves HTTPS and the gRPC listener TLS
    #[arg(long, env = "INFERPICK_TLS_CERT", value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long, env = "INFERPICK_TLS_KEY", value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
    /// A client that has not sent a whole request head within this is disconnected, a body not
    /// read within it gets 408, an idle connection is closed after it [default: 10s]
    #[arg(long, env = "INFERPICK_REQUEST_TIMEOUT", value_name = "DURATION")]
    pub request_timeout: Option<String>,
    /// On SIGTERM, keep serving this long with /readyz at 503 so load balancers stop sending new
    /// requests [default: 2s]
    #[arg(long, env = "INFERPICK_SHUTDOWN_DELAY", value_name = "DURATION")]
    pub shutdown_delay: Option<String>,
    /// After the shutdown delay, wait at most this long for requests and ext_proc streams in
    /// flight before exiting [default: 30s]
    #[arg(long, env = "INFERPICK_DRAIN_TIMEOUT", value_name = "DURATION")]
    pub drain_timeout: Option<String>,
}

/// The resolved configuration: flags over the file over the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// ext_proc listen address; `None` when `off`.
    pub grpc_listen: Option<SocketAddr>,
    /// ext_proc: fallbacks appended to the destination header.
    pub extproc_fallbacks: u32,
    /// Bearer token file for report pushes.
    pub report_token_file: Option<PathBuf>,
    /// Bearer token file for pick, authz and done.
    pub pick_token_file: Option<PathBuf>,
    /// Staleness bound.
    pub max_report_age: Duration,
    /// Silence after which an endpoint is dropped.
    pub forget_after: Duration,
    /// Scheduling profile.
    pub policy: Policy,
    /// Named objectives: name → priority.
    pub objectives: HashMap<String, i32>,
    /// Saturation thresholds.
    pub saturation: Saturation,
    /// Model rewrites.
    pub rewrites: HashMap<String, Vec<RewriteTarget>>,
    /// Peers that may report for endpoints other than themselves.
    pub trusted_proxies: Vec<Cidr>,
    /// Most endpoints in the table.
    pub max_endpoints: usize,
    /// TLS for both listeners; `None` serves plain text.
    pub tls: Option<TlsFiles>,
    /// Bound on reading a request head or body, and on an idle connection.
    pub request_timeout: Duration,
    /// How long the listeners keep serving after SIGTERM, readiness already down.
    pub shutdown_delay: Duration,
    /// How long requests and streams in flight may take to finish after that.
    pub drain_timeout: Duration,
    /// The config file, if any (watched for changes).
    pub config_file: Option<PathBuf>,
    /// The flags, kept so a reload re-applies them over the new file.
    pub args: Args,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9000)),
            grpc_listen: Some(SocketAddr::from(([0, 0, 0, 0], 9002))),
            extproc_fallbacks: 0,
            report_token_file: None,
            pick_token_file: None,
            max_report_age: Duration::from_secs(1),
            forget_after: Duration::from_secs(60),
            policy: Policy::Inferpick,
            objectives: HashMap::new(),
            saturation: Saturation::default(),
            rewrites: HashMap::new(),
            trusted_proxies: Vec::new(),
            max_endpoints: DEFAULT_MAX_ENDPOINTS,
            tls: None,
            request_timeout: Duration::from_secs(10),
            shutdown_delay: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(30),
            config_file: None,
            args: Args::default(),
        }
    }
}

/// One invalid setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The file, or `flags`.
    pub source: String,
    /// Where in it (`staleness.max_report_age`, `--policy`).
    pub path: String,
    /// What is wrong, with the value.
    pub message: String,
}

/// Every problem found in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// All of them, in the order found.
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration ({} problem(s)):",
            self.issues.len()
        )?;
        for i in &self.issues {
            writeln!(f, "  {}: {}: {}", i.source, i.path, i.message)?;
        }
        Ok(())
    }
}

struct Issues {
    source: String,
    list: Vec<ConfigIssue>,
}

impl Issues {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.list.push(ConfigIssue {
            source: self.source.clone(),
            path: path.into(),
            message: message.into(),
        });
    }

    fn mapping<'v>(&mut self, v: &'v Value, path: &str, keys: &[&str]) -> Option<&'v Mapping> {
        let Value::Mapping(m) = v else {
            self.push(
                path,
                format!("expected a mapping with keys {}", keys.join(", ")),
            );
            return None;
        };
        for k in m.keys() {
            match k.as_str() {
                Some(k) if keys.contains(&k) => {}
                _ => self.push(
                    join(path, &key_text(k)),
                    format!("unknown key (expected one of {})", keys.join(", ")),
                ),
            }
        }
        Some(m)
    }

    fn string(&mut self, v: &Value, path: &str) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            other => {
                self.push(path, format!("{}: expected a string", show(other)));
                None
            }
        }
    }

    fn int(&mut self, v: &Value, path: &str, lo: i64, hi: i64) -> Option<i64> {
        match v.as_i64() {
            Some(n) if (lo..=hi).contains(&n) => Some(n),
            Some(n) => {
                self.push(path, format!("{n}: must be within {lo}..{hi}"));
                None
            }
            None => {
                self.push(path, format!("{}: expected an integer", show(v)));
                None
            }
        }
    }
}

fn key_text(k: &Value) -> String {
    k.as_str().map_or_else(|| show(k), str::to_string)
}

fn show(v: &Value) -> String {
    serde_norway::to_string(v).map_or_else(|_| format!("{v:?}"), |s| s.trim().to_string())
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// `key`'s value in `m`; an explicit `null` counts as absent.
fn get<'v>(m: &'v Mapping, key: &str) -> Option<&'v Value> {
    m.get(key).filter(|v| !v.is_null())
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d.is_zero() => Err(format!("{text:?}: must be longer than zero")),
        Ok(d) => Ok(d),
        Err(e) => Err(format!(
            "{text:?} is not a duration ({e}); write e.g. 500ms, 1s, 2m"
        )),
    }
}

/// A duration that may be zero (`0s` turns the step off).
fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration ({e}); write e.g. 0s, 500ms, 2s"))
}

fn parse_count(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{text:?}: expected a count of at least 1")),
    }
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{text:?} is not an address (write IP:PORT, e.g. 0.0.0.0:9000)"))
}

fn parse_grpc(text: &str) -> Result<Option<SocketAddr>, String> {
    if text.trim() == "off" {
        Ok(None)
    } else {
        parse_addr(text).map(Some)
    }
}

impl Settings {
    /// Resolves `args` over the file it names (if any) over the defaults.
    pub fn from_args(args: Args) -> Result<Settings, ConfigError> {
        let mut s = Settings {
            config_file: args.config.clone(),
            args: args.clone(),
            ..Settings::default()
        };
        let mut issues = Vec::new();
        if let Some(path) = &args.config {
            let mut file = Issues {
                source: path.display().to_string(),
                list: Vec::new(),
            };
            match std::fs::read_to_string(path) {
                Ok(text) => s.apply_file(&text, &mut file),
                Err(e) => file.push(".", format!("cannot read the config file: {e}")),
            }
            issues.extend(file.list);
        }
        let mut flags = Issues {
            source: "flags".into(),
            list: Vec::new(),
        };
        s.apply_flags(&args, &mut flags);
        s.check(&mut flags);
        issues.extend(flags.list);
        if issues.is_empty() {
            Ok(s)
        } else {
            Err(ConfigError { issues })
        }
    }

    /// Reads the same file again with the same flags (config reload).
    pub fn reload(&self) -> Result<Settings, ConfigError> {
        Settings::from_args(self.args.clone())
    }

    /// The table's part.
    pub fn table_config(&self) -> TableConfig {
        TableConfig {
            max_report_age: self.max_report_age,
            forget_after: self.forget_after,
            max_endpoints: self.max_endpoints,
            ..TableConfig::default()
        }
    }

    /// The scheduler's part.
    pub fn scheduler_config(&self) -> SchedulerConfig {
        SchedulerConfig {
            objectives: self.objectives.clone(),
            rewrites: self.rewrites.clone(),
            saturation: self.saturation.clone(),
            ..SchedulerConfig::default()
        }
    }

    fn apply_flags(&mut self, a: &Args, is: &mut Issues) {
        let mut set = |flag: &str, r: Result<(), String>| {
            if let Err(e) = r {
                is.push(flag, e);
            }
        };
        if let Some(v) = &a.listen {
            set("--listen", parse_addr(v).map(|x| self.listen = x));
        }
        if let Some(v) = &a.grpc_listen {
            set("--grpc-listen", parse_grpc(v).map(|x| self.grpc_listen = x));
        }
        if let Some(v) = &a.extproc_fallbacks {
            set(
                "--extproc-fallbacks",
                v.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("{v:?}: expected a count (0, 1, 2, …)"))
                    .map(|x| self.extproc_fallbacks = x),
            );
        }
        if let Some(v) = &a.max_report_age {
            set(
                "--max-report-age",
                parse_duration(v).map(|x| self.max_report_age = x),
            );
        }
        if let Some(v) = &a.forget_after {
            set(
                "--forget-after",
                parse_duration(v).map(|x| self.forget_after = x),
            );
        }
        if let Some(v) = &a.policy {
            set(
                "--policy",
                v.parse::<Policy>()
                    .map_err(|e| e.to_string())
                    .map(|x| self.policy = x),
            );
        }
        if let Some(v) = &a.report_token_file {
            self.report_token_file = Some(v.clone());
        }
        if let Some(v) = &a.pick_token_file {
            self.pick_token_file = Some(v.clone());
        }
        if let Some(v) = &a.trusted_proxies {
            set(
                "--trusted-proxies",
                trust::parse_list(v).map(|x| self.trusted_proxies = x),
            );
        }
        if let Some(v) = &a.max_endpoints {
            set(
                "--max-endpoints",
                parse_count(v).map(|x| self.max_endpoints = x),
            );
        }
        for (flag, value, slot) in [
            (
                "--request-timeout",
                &a.request_timeout,
                &mut self.request_timeout,
            ),
            ("--drain-timeout", &a.drain_timeout, &mut self.drain_timeout),
        ] {
            if let Some(v) = value {
                set(flag, parse_duration(v).map(|x| *slot = x));
            }
        }
        if let Some(v) = &a.shutdown_delay {
            set(
                "--shutdown-delay",
                parse_duration_or_zero(v).map(|x| self.shutdown_delay = x),
            );
        }
        match (&a.tls_cert, &a.tls_key, &mut self.tls) {
            (None, None, _) => {}
            (cert, key, Some(tls)) => {
                if let Some(c) = cert {
                    tls.cert_file = c.clone();
                }
                if let Some(k) = key {
                    tls.key_file = k.clone();
                }
            }
            (Some(cert), Some(key), tls @ None) => {
                *tls = Some(TlsFiles {
                    cert_file: cert.clone(),
                    key_file: key.clone(),
                });
            }
            (Some(_), None, None) => is.push("--tls-cert", "needs --tls-key as well"),
            (None, Some(_), None) => is.push("--tls-key", "needs --tls-cert as well"),
        }
    }

    /// Rules that span settings, and token files that must be readable.
    fn check(&self, is: &mut Issues) {
        if self.forget_after < self.max_report_age {
            is.push(
                "forget_after",
                format!(
                    "{} is shorter than max_report_age {}: endpoints would be forgotten before they go stale",
                    humantime::format_duration(self.forget_after),
                    humantime::format_duration(self.max_report_age)
                ),
            );
        }
        for (name, file) in [
            ("report_token_file", &self.report_token_file),
            ("pick_token_file", &self.pick_token_file),
        ] {
            if let Some(path) = file
                && let Err(e) = read_token(path)
            {
                is.push(name, e);
            }
        }
        if let Some(tls) = &self.tls
            && let Err(e) = tls.server_config(&[])
        {
            is.push("tls", e);
        }
    }

    fn apply_file(&mut self, text: &str, is: &mut Issues) {
        let root: Value = match serde_norway::from_str(text) {
            Ok(Value::Null) => return,
            Ok(v) => v,
            Err(e) => {
                is.push(".", format!("not valid YAML: {e}"));
                return;
            }
        };
        let top = [
            "listen",
            "grpc_listen",
            "extproc_fallbacks",
            "auth",
            "staleness",
            "policy",
            "objectives",
            "saturation",
            "models",
            "limits",
            "tls",
            "lifecycle",
        ];
        let Some(m) = is.mapping(&root, "", &top) else {
            return;
        };
        if let Some(v) = get(m, "listen").and_then(|v| is.string(v, "listen")) {
            match parse_addr(&v) {
                Ok(a) => self.listen = a,
                Err(e) => is.push("listen", e),
            }
        }
        if let Some(v) = get(m, "grpc_listen").and_then(|v| is.string(v, "grpc_listen")) {
            match parse_grpc(&v) {
                Ok(a) => self.grpc_listen = a,
                Err(e) => is.push("grpc_listen", e),
            }
        }
        if let Some(n) =
            get(m, "extproc_fallbacks").and_then(|v| is.int(v, "extproc_fallbacks", 0, 16))
        {
            self.extproc_fallbacks = n as u32;
        }
        if let Some(auth) = get(m, "auth").and_then(|v| {
            is.mapping(
                v,
                "auth",
                &["report_token_file", "pick_token_file", "trusted_proxies"],
            )
        }) {
            if let Some(v) = get(auth, "trusted_proxies") {
                self.trusted_proxies = cidrs(v, is);
            }
            if let Some(p) =
                get(auth, "report_token_file").and_then(|v| is.string(v, "auth.report_token_file"))
            {
                self.report_token_file = Some(PathBuf::from(p));
            }
            if let Some(p) =
                get(auth, "pick_token_file").and_then(|v| is.string(v, "auth.pick_token_file"))
            {
                self.pick_token_file = Some(PathBuf::from(p));
            }
        }
        if let Some(st) = get(m, "staleness")
            .and_then(|v| is.mapping(v, "staleness", &["max_report_age", "forget_after"]))
        {
            for (key, slot) in [
                ("max_report_age", &mut self.max_report_age),
                ("forget_after", &mut self.forget_after),
            ] {
                let path = format!("staleness.{key}");
                if let Some(v) = get(st, key).and_then(|v| is.string(v, &path)) {
                    match parse_duration(&v) {
                        Ok(d) => *slot = d,
                        Err(e) => is.push(path, e),
                    }
                }
            }
        }
        if let Some(v) = get(m, "policy").and_then(|v| is.string(v, "policy")) {
            match v.parse::<Policy>() {
                Ok(p) => self.policy = p,
                Err(e) => is.push("policy", e.to_string()),
            }
        }
        if let Some(v) = get(m, "objectives") {
            self.objectives = objectives(v, is);
        }
        if let Some(sat) = get(m, "saturation").and_then(|v| {
            is.mapping(
                v,
                "saturation",
                &["queue_depth_threshold", "kv_cache_threshold"],
            )
        }) {
            if let Some(n) = get(sat, "queue_depth_threshold")
                .and_then(|v| is.int(v, "saturation.queue_depth_threshold", 1, 1_000_000))
            {
                self.saturation.queue_depth_threshold = n as u32;
            }
            if let Some(v) = get(sat, "kv_cache_threshold") {
                match v.as_f64() {
                    Some(x) if x > 0.0 && x <= 1.0 => self.saturation.kv_cache_threshold = x,
                    _ => is.push(
                        "saturation.kv_cache_threshold",
                        format!("{}: must be a number within (0, 1]", show(v)),
                    ),
                }
            }
        }
        if let Some(v) = get(m, "models") {
            self.rewrites = rewrites(v, is);
        }
        if let Some(limits) = get(m, "limits")
            .and_then(|v| is.mapping(v, "limits", &["max_endpoints", "request_timeout"]))
        {
            if let Some(n) = get(limits, "max_endpoints")
                .and_then(|v| is.int(v, "limits.max_endpoints", 1, i64::from(u32::MAX)))
            {
                self.max_endpoints = n as usize;
            }
            if let Some(v) =
                get(limits, "request_timeout").and_then(|v| is.string(v, "limits.request_timeout"))
            {
                match parse_duration(&v) {
                    Ok(d) => self.request_timeout = d,
                    Err(e) => is.push("limits.request_timeout", e),
                }
            }
        }
        if let Some(tls) =
            get(m, "tls").and_then(|v| is.mapping(v, "tls", &["cert_file", "key_file"]))
        {
            let cert = get(tls, "cert_file").and_then(|v| is.string(v, "tls.cert_file"));
            let key = get(tls, "key_file").and_then(|v| is.string(v, "tls.key_file"));
            match (cert, key) {
                (Some(cert), Some(key)) => {
                    self.tls = Some(TlsFiles {
                        cert_file: cert.into(),
                        key_file: key.into(),
                    });
                }
                (None, None) => {}
                (Some(_), None) => {
                    is.push("tls.key_file", "missing: give both cert_file and key_file")
                }
                (None, Some(_)) => {
                    is.push("tls.cert_file", "missing: give both cert_file and key_file")
                }
            }
        }
        if let Some(lc) = get(m, "lifecycle")
            .and_then(|v| is.mapping(v, "lifecycle", &["shutdown_delay", "drain_timeout"]))
        {
            if let Some(v) =
                get(lc, "shutdown_delay").and_then(|v| is.string(v, "lifecycle.shutdown_delay"))
            {
                match parse_duration_or_zero(&v) {
                    Ok(d) => self.shutdown_delay = d,
                    Err(e) => is.push("lifecycle.shutdown_delay", e),
                }
            }
            if let Some(v) =
                get(lc, "drain_timeout").and_then(|v| is.string(v, "lifecycle.drain_timeout"))
            {
                match parse_duration(&v) {
                    Ok(d) => self.drain_timeout = d,
                    Err(e) => is.push("lifecycle.drain_timeout", e),
                }
            }
        }
    }
}

fn cidrs(v: &Value, is: &mut Issues) -> Vec<Cidr> {
    let Value::Sequence(items) = v else {
        is.push(
            "auth.trusted_proxies",
            "expected a list of CIDRs, e.g. [10.0.0.0/8]",
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("auth.trusted_proxies[{i}]");
        if let Some(text) = is.string(item, &path) {
            match text.parse() {
                Ok(c) => out.push(c),
                Err(e) => is.push(path, e),
            }
        }
    }
    out
}

fn objectives(v: &Value, is: &mut Issues) -> HashMap<String, i32> {
    let mut out = HashMap::new();
    let Value::Sequence(items) = v else {
        is.push("objectives", "expected a list of { name, priority }");
        return out;
    };
    for (i, item) in items.iter().enumerate() {
        let path = format!("objectives[{i}]");
        let Some(o) = is.mapping(item, &path, &["name", "priority"]) else {
            continue;
        };
        let name = match get(o, "name") {
            Some(n) => is.string(n, &format!("{path}.name")),
            None => {
                is.push(format!("{path}.name"), "missing");
                None
            }
        };
        let priority = match get(o, "priority") {
            Some(p) => is.int(
                p,
                &format!("{path}.priority"),
                i64::from(i32::MIN),
                i64::from(i32::MAX),
            ),
            None => {
                is.push(format!("{path}.priority"), "missing");
                None
            }
        };
        if let (Some(name), Some(priority)) = (name, priority) {
            if name.is_empty() {
                is.push(format!("{path}.name"), "empty");
            } else if out.insert(name.clone(), priority as i32).is_some() {
                is.push(format!("{path}.name"), format!("{name:?} is defined twice"));
            }
        }
    }
    out
}

fn rewrites(v: &Value, is: &mut Issues) -> HashMap<String, Vec<RewriteTarget>> {
    let mut out = HashMap::new();
    let Value::Sequence(items) = v else {
        is.push(
            "models",
            "expected a list of { name, targets: [{ model, weight }] }",
        );
        return out;
    };
    for (i, item) in items.iter().enumerate() {
        let path = format!("models[{i}]");
        let Some(m) = is.mapping(item, &path, &["name", "targets"]) else {
            continue;
        };
        let name = get(m, "name").and_then(|n| is.string(n, &format!("{path}.name")));
        if get(m, "name").is_none() {
            is.push(format!("{path}.name"), "missing");
        }
        let mut targets = Vec::new();
        match get(m, "targets") {
            Some(Value::Sequence(ts)) if !ts.is_empty() => {
                for (j, t) in ts.iter().enumerate() {
                    let tpath = format!("{path}.targets[{j}]");
                    let Some(t) = is.mapping(t, &tpath, &["model", "weight"]) else {
                        continue;
                    };
                    let model = match get(t, "model") {
                        Some(v) => is.string(v, &format!("{tpath}.model")),
                        None => {
                            is.push(format!("{tpath}.model"), "missing");
                            None
                        }
                    };
                    let weight = match get(t, "weight") {
                        Some(w) => is.int(w, &format!("{tpath}.weight"), 1, 1_000_000),
                        None => Some(1),
                    };
                    if let (Some(model), Some(weight)) = (model, weight) {
                        targets.push(RewriteTarget {
                            model,
                            weight: weight as u32,
                        });
                    }
                }
            }
            _ => is.push(
                format!("{path}.targets"),
                "expected a non-empty list of { model, weight }",
            ),
        }
        if let Some(name) = name
            && !targets.is_empty()
            && out.insert(name.clone(), targets).is_some()
        {
            is.push(format!("{path}.name"), format!("{name:?} is defined twice"));
        }
    }
    out
}

/// Reads a bearer token file: the token is the file's content without surrounding whitespace.
pub fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("token file {} is empty", path.display()));
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "inferpick-picker-config-{name}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_contract_example_file_loads() {
        let d = scratch("example");
        let token = write(&d, "token", "s3cret\n");
        let file = write(
            &d,
            "picker.yaml",
            &format!(
                r#"
listen: 0.0.0.0:9000
grpc_listen: 0.0.0.0:9002
auth: {{ report_token_file: {}, pick_token_file: null }}
staleness: {{ max_report_age: 1s, forget_after: 60s }}
policy: inferpick
objectives:
  - {{ name: chat, priority: 10 }}
  - {{ name: batch, priority: -1 }}
saturation: {{ queue_depth_threshold: 5, kv_cache_threshold: 0.8 }}
models:
  - {{ name: llama, targets: [{{ model: meta-llama/Llama-3.1-8B-Instruct, weight: 100 }}] }}
"#,
                token.display()
            ),
        );
        let s = Settings::from_args(Args {
            config: Some(file),
            ..Args::default()
        })
        .unwrap();
        assert_eq!(s.objectives["batch"], -1);
        assert_eq!(s.rewrites["llama"][0].weight, 100);
        assert_eq!(s.report_token_file.as_deref(), Some(token.as_path()));
        assert_eq!(read_token(&token).unwrap(), "s3cret");
        assert_eq!(s.scheduler_config().objectives["chat"], 10);
    }

    #[test]
    fn flags_override_the_file() {
        let d = scratch("override");
        let file = write(
            &d,
            "p.yaml",
            "policy: gie\nstaleness: { max_report_age: 2s }\n",
        );
        let args = Args::parse_from([
            "inferpick-picker",
            "--config",
            file.to_str().unwrap(),
            "--policy",
            "round-robin",
        ]);
        let s = Settings::from_args(args).unwrap();
        assert_eq!(s.policy, Policy::RoundRobin);
        assert_eq!(s.max_report_age, Duration::from_secs(2));
        assert_eq!(s.listen, "0.0.0.0:9000".parse().unwrap());
    }

    #[test]
    fn every_problem_is_reported_with_file_and_path() {
        let d = scratch("bad");
        let file = write(
            &d,
            "bad.yaml",
            "listen: nowhere\nstaleness: { max_report_age: fast, max_age: 1s }\npolicy: fastest\nsaturation: { kv_cache_threshold: 1.5 }\nobjectives: [{ name: chat, priority: high }]\nmodels: [{ name: llama, targets: [] }]\ncolour: blue\n",
        );
        let args = Args::parse_from([
            "inferpick-picker",
            "--config",
            file.to_str().unwrap(),
            "--forget-after",
            "soon",
        ]);
        let err = Settings::from_args(args).unwrap_err();
        let text = err.to_string();
        let paths: Vec<&str> = err.issues.iter().map(|i| i.path.as_str()).collect();
        for p in [
            "listen",
            "staleness.max_report_age",
            "staleness.max_age",
            "policy",
            "saturation.kv_cache_threshold",
            "objectives[0].priority",
            "models[0].targets",
            "colour",
            "--forget-after",
        ] {
            assert!(paths.contains(&p), "{p} missing from {text}");
        }
        assert!(
            text.contains(&format!("{}: colour: unknown key", file.display())),
            "{text}"
        );
        assert!(text.contains("\"fast\" is not a duration"), "{text}");
    }

    #[test]
    fn unreadable_token_files_and_crossed_durations_are_errors() {
        let args = Args::parse_from([
            "inferpick-picker",
            "--report-token-file",
            "/nonexistent/token",
            "--max-report-age",
            "10s",
            "--forget-after",
            "5s",
        ]);
        let err = Settings::from_args(args).unwrap_err();
        let paths: Vec<&str> = err.issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["forget_after", "report_token_file"], "{err}");
    }

    #[test]
    fn hardening_settings_come_from_flags_and_the_file() {
        let d = scratch("hardening");
        let file = write(
            &d,
            "p.yaml",
            "auth: { trusted_proxies: [10.0.0.0/8, \"fd00::/64\"] }\nlimits: { max_endpoints: 500, request_timeout: 3s }\nlifecycle: { shutdown_delay: 0s, drain_timeout: 5s }\n",
        );
        let s = Settings::from_args(Args::parse_from([
            "p",
            "--config",
            file.to_str().unwrap(),
            "--request-timeout",
            "300ms",
        ]))
        .unwrap();
        assert_eq!(s.trusted_proxies.len(), 2);
        assert_eq!(s.max_endpoints, 500);
        assert_eq!(s.table_config().max_endpoints, 500);
        assert_eq!(s.request_timeout, Duration::from_millis(300));
        assert_eq!(s.shutdown_delay, Duration::ZERO);
        assert_eq!(s.drain_timeout, Duration::from_secs(5));
        let defaults = Settings::default();
        assert_eq!(
            (
                defaults.max_endpoints,
                defaults.request_timeout,
                defaults.shutdown_delay,
                defaults.drain_timeout
            ),
            (
                10_000,
                Duration::from_secs(10),
                Duration::from_secs(2),
                Duration::from_secs(30)
            )
        );
        assert!(defaults.trusted_proxies.is_empty() && defaults.tls.is_none());
    }

    #[test]
    fn bad_hardening_settings_are_each_named() {
        let d = scratch("bad-hardening");
        let file = write(
            &d,
            "p.yaml",
            "auth: { trusted_proxies: [10.0.0.1/8] }\nlimits: { max_endpoints: 0, request_timeout: never, idle: 1s }\ntls: { cert_file: /nonexistent/cert.pem }\nlifecycle: { drain_timeout: 0s }\n",
        );
        let err = Settings::from_args(Args::parse_from([
            "p",
            "--config",
            file.to_str().unwrap(),
            "--trusted-proxies",
            "everyone",
            "--max-endpoints",
            "lots",
            "--shutdown-delay",
            "later",
        ]))
        .unwrap_err();
        let paths: Vec<&str> = err.issues.iter().map(|i| i.path.as_str()).collect();
        for p in [
            "auth.trusted_proxies[0]",
            "limits.max_endpoints",
            "limits.request_timeout",
            "limits.idle",
            "tls.key_file",
            "lifecycle.drain_timeout",
            "--trusted-proxies",
            "--max-endpoints",
            "--shutdown-delay",
        ] {
            assert!(paths.contains(&p), "{p} missing from {err}");
        }
        let err = Settings::from_args(Args::parse_from(["p", "--tls-cert", "/x.pem"])).unwrap_err();
        assert!(
            err.to_string().contains("--tls-cert: needs --tls-key"),
            "{err}"
        );
        let err = Settings::from_args(Args::parse_from([
            "p",
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ]))
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot read certificates from /nonexistent/cert.pem"),
            "{err}"
        );
    }

    #[test]
    fn grpc_listen_can_be_off() {
        let s = Settings::from_args(Args::parse_from([
            "p",
            "--grpc-listen",
            "off",
            "--extproc-fallbacks",
            "2",
        ]))
        .unwrap();
        assert_eq!(s.grpc_listen, None);
        assert_eq!(s.extproc_fallbacks, 2);
    }
}
