//! Real Envoy with `deploy/gateways/envoy/envoy-ext-proc-*.yaml` in front of a fleet: the Gateway
//! API Inference Extension's endpoint-picker protocol over ext_proc, in its streaming mode
//! (`FULL_DUPLEX_STREAMED`, as GIE gateways configure it; the fail-closed config) and in
//! `BUFFERED` mode (the fail-open config: Envoy can only fail open while it holds the body). Requests reach
//! the endpoint the picker chose, streams pass through intact, saturation sheds priority −1 with
//! an immediate 429, and the picker going away is handled as the config says.

#[path = "gateways/common.rs"]
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use inferpick_tests::tool::ENVOY;
use inferpick_tests::{ChildGuard, free_port};

async fn start_envoy(s: &Setup, failure: Failure) -> Option<(ChildGuard, SocketAddr)> {
    let envoy = ENVOY.or_skip("gateway_envoy_extproc")?;
    let listen = free_port().unwrap();
    let admin = free_port().unwrap();
    let file = match failure {
        Failure::Open => "envoy-ext-proc-fail-open.yaml",
        Failure::Closed => "envoy-ext-proc-fail-closed.yaml",
    };
    let mut vars = vec![
        ("LISTEN_PORT", listen.to_string()),
        ("ADMIN_PORT", admin.to_string()),
        ("PICKER_HOST", s.picker.grpc.ip().to_string()),
        ("PICKER_GRPC_PORT", s.picker.grpc.port().to_string()),
    ];
    if failure == Failure::Open {
        let fallback = s.endpoints()[0];
        vars.push(("FALLBACK_HOST", fallback.ip().to_string()));
        vars.push(("FALLBACK_PORT", fallback.port().to_string()));
    }
    let yaml = render(&gateway_file(&format!("envoy/{file}")), &vars);
    let config = s.dir.write(file, yaml).unwrap();
    let base_id = u32::from(listen).to_string();
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
    let http = reqwest::Client::new();
    let start = std::time::Instant::now();
    loop {
        if let Err(e) = child.check_running() {
            panic!("envoy exited: {e}");
        }
        if http
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

/// The fail-closed config is the protocol's streaming mode (FULL_DUPLEX_STREAMED both ways).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_ext_proc_full_duplex_routes_streams_closes_sheds_and_fails_closed() {
    let mut s = setup().await;
    let Some((_envoy, addr)) = start_envoy(&s, Failure::Closed).await else {
        return;
    };
    routes_where_the_picker_says(&s, addr).await;
    streams_intact(&s, addr).await;
    in_flight_closes_when_streams_end(&s, addr, "extproc").await;
    sheds_only_sheddable_work_when_saturated(&s, addr).await;
    survives_the_picker_going_away(&mut s, addr, Failure::Closed).await;
}

/// The fail-open config is the protocol's BUFFERED mode (responses STREAMED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_ext_proc_buffered_routes_streams_closes_and_fails_open() {
    let mut s = setup().await;
    let Some((_envoy, addr)) = start_envoy(&s, Failure::Open).await else {
        return;
    };
    routes_where_the_picker_says(&s, addr).await;
    streams_intact(&s, addr).await;
    in_flight_closes_when_streams_end(&s, addr, "extproc").await;
    survives_the_picker_going_away(&mut s, addr, Failure::Open).await;
}
