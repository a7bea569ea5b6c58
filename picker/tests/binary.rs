//! Runs the real `inferpick-picker` binary on loopback: reports in, picks out, staleness, forgetting,
//! SIGTERM (readiness first, then a drain of what is in flight), and the exit status of a bad
//! configuration.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const BIN: &str = env!("CARGO_BIN_EXE_inferpick-picker");

/// Kills the child when the test ends, even on panic, and prints its log if the test failed.
struct Picker {
    child: Child,
    base: String,
    log: mpsc::Receiver<String>,
}

impl Drop for Picker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- picker log ---");
            while let Ok(line) = self.log.try_recv() {
                eprintln!("{line}");
            }
        }
    }
}

fn start(extra: &[&str]) -> Picker {
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--grpc-listen", "off"])
        .args(extra)
        .env("RUST_LOG", "info")
        .env_remove("INFERPICK_LOG_FORMAT")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start inferpick-picker");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut picker = Picker {
        child,
        base: String::new(),
        log: rx,
    };
    // The binary logs the address it bound; wait for that line.
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match picker.log.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                if let Some(rest) = line.split("http=").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap();
                    picker.base = format!("http://{addr}");
                    return picker;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("picker exited before listening"),
        }
    }
    panic!("picker did not log its address within 20 s");
}

fn report(address: &str, seq: u64) -> Value {
    json!({
        "schema_version": 1,
        "agent": {"id": format!("agent-{address}"), "version": "0.1.0", "started_at_ms": 1},
        "seq": seq, "sent_at_ms": 1, "interval_ms": 100,
        "endpoint": {"address": address, "pod": format!("pod-{address}")},
        "engine": {"kind": "vllm", "ready": true},
        "models": [{"name": MODEL}],
        "load": {"requests_waiting": 0, "requests_running": 1, "kv_cache_utilization": 0.1}
    })
}

async fn push(client: &reqwest::Client, base: &str, reports: Value) {
    let r = client
        .post(format!("{base}/v1/reports"))
        .json(&reports)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
}

async fn pick(client: &reqwest::Client, base: &str) -> (u16, Value) {
    let r = client
        .post(format!("{base}/v1/pick"))
        .json(&json!({"model": MODEL}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn state_of(client: &reqwest::Client, base: &str, address: &str) -> Option<String> {
    let t: Value = client
        .get(format!("{base}/v1/endpoints"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    t["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == address)
        .map(|e| e["state"].as_str().unwrap().to_string())
}

const A: &str = "127.0.0.1:18001";
const B: &str = "127.0.0.1:18002";

#[tokio::test]
async fn a_silent_endpoint_leaves_decisions_then_the_table() {
    let picker = start(&["--max-report-age", "300ms", "--forget-after", "1500ms"]);
    let base = picker.base.clone();
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    push(&client, &base, json!([report(A, 1), report(B, 1)])).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let (status, d) = pick(&client, &base).await;
        assert_eq!(status, 200, "{d}");
        seen.insert(d["endpoint"].as_str().unwrap().to_string());
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        [A, B],
        "both fresh endpoints take picks"
    );

    // A's agent keeps pushing every 100 ms; B's went silent. Poll until B is stale.
    let mut seq = 2;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tick.tick().await;
        push(&client, &base, report(A, seq)).await;
        seq += 1;
        if state_of(&client, &base, B).await.as_deref() == Some("stale") {
            break;
        }
        assert!(Instant::now() < deadline, "B never went stale");
    }
    for _ in 0..20 {
        let (status, d) = pick(&client, &base).await;
        assert_eq!(
            (status, d["endpoint"].as_str().unwrap()),
            (200, A),
            "a stale endpoint was picked"
        );
    }
    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(
        metrics.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(
        metrics
            .text()
            .await
            .unwrap()
            .contains("inferpick_picker_endpoints{state=\"stale\"} 1")
    );

    // Keep A alive until B is forgotten entirely.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        tick.tick().await;
        push(&client, &base, report(A, seq)).await;
        seq += 1;
        if state_of(&client, &base, B).await.is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "B was never forgotten");
    }

    // Everyone silent: nothing fresh to pick.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = pick(&client, &base).await;
        if status == 503 {
            assert_eq!(body["error"], "no_ready_endpoint");
            break;
        }
        assert!(Instant::now() < deadline, "A never went stale");
        tick.tick().await;
    }
}

#[test]
fn sigterm_stops_the_picker_cleanly() {
    let mut picker = start(&[]);
    let status = Command::new("kill")
        .args(["-TERM", &picker.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(exit) = picker.child.try_wait().unwrap() {
            assert!(exit.success(), "exit status {exit}");
            break;
        }
        assert!(Instant::now() < deadline, "picker did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_bad_configuration_exits_64_naming_every_problem() {
    let dir = std::env::temp_dir().join(format!("inferpick-picker-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("picker.yaml");
    std::fs::write(
        &file,
        "policy: fastest\nstaleness: { max_report_age: soon }\nextra_key: 1\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["--config", file.to_str().unwrap(), "--listen", "nowhere"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for says in [
        "policy: unknown policy \"fastest\"",
        "staleness.max_report_age",
        "extra_key: unknown key",
        "--listen",
    ] {
        assert!(err.contains(says), "{says:?} missing from {err}");
    }
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--config",
        "--listen",
        "--grpc-listen",
        "--extproc-fallbacks",
        "--report-token-file",
        "--pick-token-file",
        "--max-report-age",
        "--forget-after",
        "--policy",
        "--trusted-proxies",
        "--max-endpoints",
        "--tls-cert",
        "--tls-key",
        "--request-timeout",
        "--shutdown-delay",
        "--drain-timeout",
        "INFERPICK_MAX_REPORT_AGE",
        "INFERPICK_TRUSTED_PROXIES",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

#[tokio::test]
async fn sigterm_drops_readiness_first_then_drains_a_request_in_flight_and_exits_0() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut picker = start(&[
        "--shutdown-delay",
        "1s",
        "--drain-timeout",
        "10s",
        "--max-report-age",
        "60s",
        "--forget-after",
        "120s",
    ]);
    let base = picker.base.clone();
    let addr = base.trim_start_matches("http://").to_string();
    let client = reqwest::Client::new();
    push(&client, &base, report(A, 1)).await;

    // A pick whose body is half sent when SIGTERM arrives.
    let body = json!({"model": MODEL}).to_string();
    let (first, rest) = body.split_at(body.len() / 2);
    let mut in_flight = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/pick HTTP/1.1\r\nhost: picker\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{first}",
        body.len()
    );
    in_flight.write_all(head.as_bytes()).await.unwrap();
    let status = Command::new("kill")
        .args(["-TERM", &picker.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    // Readiness drops while the listener still serves.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    loop {
        tick.tick().await;
        let r = client.get(format!("{base}/readyz")).send().await;
        if r.as_ref().is_ok_and(|r| r.status() == 503) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never answered 503: {r:?}"
        );
    }
    // Then it stops accepting connections...
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(&addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting 5 s after SIGTERM"
        );
        tick.tick().await;
    }
    assert!(
        picker.child.try_wait().unwrap().is_none(),
        "exited with a request in flight"
    );
    // ...and the request in flight still completes.
    in_flight.write_all(rest.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), in_flight.read_to_end(&mut response))
        .await
        .expect("the in-flight request was answered")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(A), "{response}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = picker.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "picker did not exit after draining"
        );
        tick.tick().await;
    };
    assert!(exit.success(), "exit status {exit}");
    // Every line, up to the end of stderr (the reader stops at EOF).
    let mut lines = Vec::new();
    while let Ok(line) = picker.log.recv_timeout(Duration::from_secs(5)) {
        lines.push(line);
    }
    let log = lines.join("\n");
    for step in [
        "shutdown signal received",
        "/readyz now answers 503",
        "stopped accepting connections",
        "drained",
    ] {
        assert!(log.contains(step), "{step:?} missing from the log:\n{log}");
    }
    assert!(
        lines
            .last()
            .is_some_and(|l| l.trim_end().ends_with("stopped")),
        "{log}"
    );
}

/// Sends one keep-alive `GET /healthz` on `conn` and reads its response head and body.
async fn healthz_on(conn: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: picker\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    // The body is small and fixed-length: the response is whole once the blank line and the
    // body after it are in.
    while !String::from_utf8_lossy(&got).contains("\r\n\r\nok") {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, conn.read(&mut buf))
            .await
            .expect("a response within 5 s")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn at_the_connection_cap_a_new_client_waits_until_one_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let picker = start(&["--max-connections", "2", "--request-timeout", "60s"]);
    let addr = picker.base.trim_start_matches("http://").to_string();
    // Two idle keep-alive connections, each shown to be accepted by an answer.
    let mut first = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(healthz_on(&mut first).await.starts_with("HTTP/1.1 200"));
    let mut second = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(healthz_on(&mut second).await.starts_with("HTTP/1.1 200"));
    // The listener says it is at its cap.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let line = picker
            .log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the picker logs that it is at the connection cap");
        if line.contains("at the connection cap") {
            assert!(line.contains("cap=2"), "{line}");
            break;
        }
    }

    // A third client connects (the kernel's backlog completes the handshake) and asks...
    let mut third = tokio::net::TcpStream::connect(&addr).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: picker\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    // ...and is not answered while the two stay open, though they still are.
    let mut buf = [0u8; 4096];
    let waited = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(waited.is_err(), "answered past the cap: {waited:?}");
    assert!(healthz_on(&mut second).await.starts_with("HTTP/1.1 200"));

    // One closes: the third is accepted and answered.
    drop(first);
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut response))
        .await
        .expect("answered once a connection closed")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}
