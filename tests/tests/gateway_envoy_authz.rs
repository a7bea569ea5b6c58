//! Real Envoy with `deploy/gateways/envoy/envoy-ext-authz-*.yaml` in front of a fleet: ext_authz
//! asks the picker's `/v1/authz` (body included), an ORIGINAL_DST cluster follows the
//! `x-gateway-destination-endpoint` header, refusals reach the client, and the picker going away
//! is handled as the config says.

#[path = "gateways/common.rs"]
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use inferpick_tests::tool::ENVOY;
use inferpick_tests::{ChildGuard, free_port};

async fn start_envoy(s: &Setup, failure: Failure) -> Option<(ChildGuard, SocketAddr)> {
    let envoy = ENVOY.or_skip("gateway_envoy_authz")?;
    let listen = free_port().unwrap();
    let admin = free_port().unwrap();
    let fallback = s.endpoints()[0];
    let file = match failure {
        Failure::Open => "envoy-ext-authz-fail-open.yaml",
        Failure::Closed => "envoy-ext-authz-fail-closed.yaml",
    };
    let mut vars = vec![
        ("LISTEN_PORT", listen.to_string()),
        ("ADMIN_PORT", admin.to_string()),
        ("PICKER_HOST", s.picker.addr.ip().to_string()),
        ("PICKER_PORT", s.picker.addr.port().to_string()),
    ];
    if failure == Failure::Open {
        vars.push(("FALLBACK_HOST", fallback.ip().to_string()));
        vars.push(("FALLBACK_PORT", fallback.port().to_string()));
    }
    let config = s
        .dir
        .write(file, render(&gateway_file(&format!("envoy/{file}")), &vars))
        .unwrap();
    let base_id = (listen as u32).to_string();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_ext_authz_fail_open_routes_streams_sheds_and_survives_the_picker() {
    let mut s = setup().await;
    let Some((_envoy, addr)) = start_envoy(&s, Failure::Open).await else {
        return;
    };
    routes_where_the_picker_says(&s, addr).await;
    streams_intact(&s, addr).await;
    survives_the_picker_going_away(&mut s, addr, Failure::Open).await;
    sheds_only_sheddable_work_when_saturated(&s, addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_ext_authz_fail_closed_refuses_while_the_picker_is_down() {
    let mut s = setup().await;
    let Some((_envoy, addr)) = start_envoy(&s, Failure::Closed).await else {
        return;
    };
    survives_the_picker_going_away(&mut s, addr, Failure::Closed).await;
}
