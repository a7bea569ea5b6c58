//! Added latency of each gateway path: the same gateway in front of the same fleet, once asking
//! the picker (nginx auth_request, nginx njs, Envoy ext_authz, Envoy ext_proc) and once proxying
//! straight to one model server, measured in the same run with the two interleaved.
//!
//! `cargo bench -p inferpick-tests --bench gateways` (needs nginx, its njs module and Envoy; a
//! missing one is skipped with one line). The upstream call is `GET /v1/models`, which the
//! emulated server answers at once, so the figures are the gateway's and the picker's work, not
//! the engine's.

#[path = "../tests/gateways/common.rs"]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use inferpick_tests::tool::{ENVOY, NGINX, nginx_njs_module};
use inferpick_tests::{ChildGuard, free_port};

const ROUNDS: usize = 2000;

struct Path {
    name: &'static str,
    via_picker: SocketAddr,
    direct: SocketAddr,
    _children: Vec<ChildGuard>,
}

/// nginx with `deploy/gateways/nginx/<file>` (and the files it includes) on one port and a plain
/// proxy to one model server on another. `njs_module` fills `{{NJS_MODULE}}` for the njs config.
fn nginx(
    s: &Setup,
    nginx: &std::path::Path,
    name: &'static str,
    file: &str,
    includes: &[&str],
    njs_module: Option<&std::path::Path>,
) -> Path {
    let prefix = s.dir.path().join(file.trim_end_matches(".conf"));
    std::fs::create_dir_all(&prefix).unwrap();
    let via: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
        .parse()
        .unwrap();
    let direct: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
        .parse()
        .unwrap();
    let template = gateway_file(&format!("nginx/{file}"));
    let vars: Vec<(&str, String)> = [
        (
            "NJS_MODULE",
            njs_module
                .map(|m| m.display().to_string())
                .unwrap_or_default(),
        ),
        ("PREFIX", prefix.display().to_string()),
        ("LISTEN", via.to_string()),
        ("PICKER", s.picker.addr.to_string()),
        ("FALLBACK_SERVERS", format!("server {};", s.endpoints()[0])),
    ]
    .into_iter()
    .filter(|(k, _)| template.contains(&format!("{{{{{k}}}}}")))
    .collect();
    let mut conf = render(&template, &vars);
    // The same nginx also serves the baseline: a plain proxy to one model server.
    let baseline = format!(
        "    upstream baseline {{ server {}; keepalive 16; }}\n    server {{\n        listen {direct};\n        \
         location / {{ proxy_pass http://baseline; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n    }}\n}}\n",
        s.endpoints()[0]
    );
    let end = conf.rfind('}').unwrap();
    conf.replace_range(end.., &baseline);
    std::fs::write(prefix.join("nginx.conf"), conf).unwrap();
    for include in includes {
        std::fs::write(
            prefix.join(include),
            gateway_file(&format!("nginx/{include}")),
        )
        .unwrap();
    }
    let child = ChildGuard::spawn(
        "nginx",
        command(
            nginx,
            &[
                "-p",
                prefix.to_str().unwrap(),
                "-c",
                "nginx.conf",
                "-g",
                "daemon off;",
            ],
        ),
        &prefix,
    )
    .unwrap();
    Path {
        name,
        via_picker: via,
        direct,
        _children: vec![child],
    }
}

fn envoy_direct_config(listen: u16, admin: u16, upstream: SocketAddr) -> String {
    format!(
        r#"admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
    - address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: direct
                route_config:
                  virtual_hosts:
                    - {{name: direct, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: upstream}}}}]}}
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
    - name: upstream
      type: STATIC
      load_assignment:
        cluster_name: upstream
        endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}]}}]
"#,
        upstream.ip(),
        upstream.port()
    )
}

fn envoy(s: &Setup, envoy: &std::path::Path, name: &'static str, file: &str) -> Path {
    let (listen, admin) = (free_port().unwrap(), free_port().unwrap());
    let vars = [
        ("LISTEN_PORT", listen.to_string()),
        ("ADMIN_PORT", admin.to_string()),
        ("PICKER_HOST", "127.0.0.1".to_string()),
        ("PICKER_PORT", s.picker.addr.port().to_string()),
        ("PICKER_GRPC_PORT", s.picker.grpc.port().to_string()),
    ];
    let text = gateway_file(&format!("envoy/{file}"));
    let vars: Vec<_> = vars
        .into_iter()
        .filter(|(k, _)| text.contains(&format!("{{{{{k}}}}}")))
        .collect();
    let via = s
        .dir
        .write(&format!("via-{listen}.yaml"), render(&text, &vars))
        .unwrap();
    let (dl, da) = (free_port().unwrap(), free_port().unwrap());
    let direct = s
        .dir
        .write(
            &format!("direct-{dl}.yaml"),
            envoy_direct_config(dl, da, s.endpoints()[0]),
        )
        .unwrap();
    let spawn = |config: &std::path::Path, port: u16| {
        ChildGuard::spawn(
            &format!("envoy-{port}"),
            command(
                envoy,
                &[
                    "-c",
                    config.to_str().unwrap(),
                    "--base-id",
                    &port.to_string(),
                    "-l",
                    "error",
                ],
            ),
            s.dir.path(),
        )
        .unwrap()
    };
    Path {
        name,
        via_picker: format!("127.0.0.1:{listen}").parse().unwrap(),
        direct: format!("127.0.0.1:{dl}").parse().unwrap(),
        _children: vec![spawn(&via, listen), spawn(&direct, dl)],
    }
}

async fn get(http: &reqwest::Client, addr: SocketAddr) -> Duration {
    let t = Instant::now();
    let r = http
        .get(format!("http://{addr}/v1/models"))
        .header("x-gateway-model-name", MODEL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{addr}: {}", r.text().await.unwrap());
    r.bytes().await.unwrap();
    t.elapsed()
}

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let s = setup().await;
    let mut paths = Vec::new();
    if let Some(n) = NGINX.or_skip("gateways bench") {
        paths.push(nginx(
            &s,
            &n,
            "nginx auth_request",
            "nginx-fail-open.conf",
            &["inferpick-locations.conf"],
            None,
        ));
        if let Some(module) = nginx_njs_module("gateways bench") {
            paths.push(nginx(
                &s,
                &n,
                "nginx njs",
                "nginx-njs-fail-open.conf",
                &["inferpick-njs-locations.conf", "inferpick.js"],
                Some(&module),
            ));
        }
    }
    if let Some(e) = ENVOY.or_skip("gateways bench") {
        paths.push(envoy(
            &s,
            &e,
            "Envoy ext_authz",
            "envoy-ext-authz-fail-closed.yaml",
        ));
        paths.push(envoy(
            &s,
            &e,
            "Envoy ext_proc (full duplex)",
            "envoy-ext-proc-fail-closed.yaml",
        ));
    }
    let http = reqwest::Client::new();
    println!(
        "added latency per request, {ROUNDS} sequential GET /v1/models per path, interleaved (µs)"
    );
    println!(
        "| gateway path | direct p50 | direct p99 | via picker p50 | via picker p99 | added p50 | added p99 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for p in &paths {
        for addr in [p.via_picker, p.direct] {
            let start = Instant::now();
            while http
                .get(format!("http://{addr}/v1/models"))
                .header("x-gateway-model-name", MODEL)
                .send()
                .await
                .map(|r| r.status() != 200)
                .unwrap_or(true)
            {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "{} at {addr} never answered 200",
                    p.name
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let (mut via, mut direct) = (Vec::with_capacity(ROUNDS), Vec::with_capacity(ROUNDS));
        for _ in 0..ROUNDS {
            via.push(get(&http, p.via_picker).await);
            direct.push(get(&http, p.direct).await);
        }
        via.sort();
        direct.sort();
        let (d50, d99, v50, v99) = (
            quantile(&direct, 0.5),
            quantile(&direct, 0.99),
            quantile(&via, 0.5),
            quantile(&via, 0.99),
        );
        println!(
            "| {} | {d50:.0} | {d99:.0} | {v50:.0} | {v99:.0} | {:.0} | {:.0} |",
            p.name,
            v50 - d50,
            v99 - d99
        );
    }
}
