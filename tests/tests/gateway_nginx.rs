//! Real nginx with `deploy/gateways/nginx/` in front of a fleet: `auth_request` asks the picker,
//! `proxy_pass` follows its choice, refusals reach the client, and the picker going away is handled
//! as the config says (fail open or closed).

#[path = "gateways/common.rs"]
mod common;

use std::net::SocketAddr;

use common::*;
use inferpick_tests::tool::NGINX;
use inferpick_tests::{ChildGuard, free_port};

fn start_nginx(s: &Setup, failure: Failure) -> Option<(ChildGuard, SocketAddr)> {
    let nginx = NGINX.or_skip("gateway_nginx")?;
    let prefix = s.dir.path().to_path_buf();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
        .parse()
        .unwrap();
    let fallback: String = s
        .endpoints()
        .iter()
        .map(|e| format!("server {e}; "))
        .collect();
    let file = match failure {
        Failure::Open => "nginx-fail-open.conf",
        Failure::Closed => "nginx-fail-closed.conf",
    };
    let vars = [
        ("PREFIX", prefix.display().to_string()),
        ("LISTEN", listen.to_string()),
        ("PICKER", s.picker.addr.to_string()),
        ("FALLBACK_SERVERS", fallback),
    ];
    s.dir
        .write(file, render(&gateway_file(&format!("nginx/{file}")), &vars))
        .unwrap();
    s.dir
        .write(
            "inferpick-locations.conf",
            gateway_file("nginx/inferpick-locations.conf"),
        )
        .unwrap();
    let conf = prefix.join(file);
    let child = ChildGuard::spawn(
        "nginx",
        command(
            &nginx,
            &[
                "-p",
                prefix.to_str().unwrap(),
                "-c",
                conf.to_str().unwrap(),
                "-g",
                "daemon off;",
            ],
        ),
        &prefix,
    )
    .unwrap();
    Some((child, listen))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_fail_open_routes_streams_sheds_and_survives_the_picker() {
    let mut s = setup().await;
    let Some((mut nginx, addr)) = start_nginx(&s, Failure::Open) else {
        return;
    };
    wait_for_port(addr, &mut nginx).await;
    routes_where_the_picker_says(&s, addr).await;
    streams_intact(&s, addr).await;
    in_flight_closes_when_streams_end(&s, addr, "http").await;
    survives_the_picker_going_away(&mut s, addr, Failure::Open).await;
    sheds_only_sheddable_work_when_saturated(&s, addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_fail_closed_refuses_while_the_picker_is_down() {
    let mut s = setup().await;
    let Some((mut nginx, addr)) = start_nginx(&s, Failure::Closed) else {
        return;
    };
    wait_for_port(addr, &mut nginx).await;
    survives_the_picker_going_away(&mut s, addr, Failure::Closed).await;
}
