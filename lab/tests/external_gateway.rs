//! The demo's real gateways (`--gateway envoy|nginx`) keep running for as long as the demo holds
//! them, whichever thread started them.
//!
//! Envoy exits (status 0, nothing logged) when the thread that forked it ends; the demo used to
//! start it on a pooled blocking thread, which tokio retires after 10 s idle, so the gateway died
//! in the middle of the run and about half of the requests failed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use inferpick_lab::demo::GatewayKind;
use inferpick_lab::demo::external;

/// The program, or `None` (with one line saying so) when it is not installed and the e2e tests are
/// not required.
fn program(kind: GatewayKind) -> Option<PathBuf> {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin");
    let found = external::find(kind).or_else(|e| {
        let name = if kind == GatewayKind::Envoy {
            "envoy"
        } else {
            "nginx"
        };
        let p = venv.join(name);
        if p.is_file() { Ok(p) } else { Err(e) }
    });
    match found {
        Ok(p) => Some(p),
        Err(e) if std::env::var("INFERPICK_REQUIRE_E2E").is_ok_and(|v| v == "1") => {
            panic!("INFERPICK_REQUIRE_E2E=1 but {e}")
        }
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

/// One HTTP/1.1 request through the gateway; the status code it answered with.
fn status(addr: SocketAddr) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /v1/models HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split(' ').nth(1)?.parse().ok()
}

fn keeps_answering_after_its_starting_thread_ended(kind: GatewayKind) {
    let Some(program) = program(kind) else { return };
    // Round robin to a port nothing listens on: every request is answered by the gateway itself.
    let endpoints = vec!["127.0.0.1:9".to_string()];
    let starter = std::thread::spawn(move || match kind {
        GatewayKind::Envoy => external::envoy(&program, None, &endpoints),
        _ => external::nginx(&program, None, &endpoints),
    });
    let gateway = starter
        .join()
        .expect("the starting thread did not panic")
        .expect("the gateway starts");
    // The thread that started it has ended. The gateway must answer every request for as long as
    // it is held; two seconds is many times what Envoy took to go away when this was broken.
    let until = Instant::now() + Duration::from_secs(2);
    let mut answered = 0;
    while Instant::now() < until {
        let code = status(gateway.addr);
        assert!(
            code.is_some_and(|c| (200..600).contains(&c)),
            "{kind:?} stopped answering after its starting thread ended (request {answered}: {code:?})"
        );
        answered += 1;
    }
}

#[test]
fn envoy_keeps_answering_after_its_starting_thread_ended() {
    keeps_answering_after_its_starting_thread_ended(GatewayKind::Envoy);
}

#[test]
fn nginx_keeps_answering_after_its_starting_thread_ended() {
    keeps_answering_after_its_starting_thread_ended(GatewayKind::Nginx);
}
