//! The real binary's `--once` on every engine's fixture, served by a static HTTP server.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

fn once(url: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_inferpick-agent"))
        .args([
            "--once",
            "--engine-url",
            url,
            "--endpoint",
            "10.0.0.1:8000",
            "--gpu",
            "none",
        ])
        .env_remove("POD_IP")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn once_prints_the_normalized_report_for_every_engine() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/metrics");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let Some(stem) = name.strip_suffix(".expected.json") else {
            continue;
        };
        let want: Value = serde_json::from_str(&fixture(&name)).unwrap();
        let engine = FakeEngine::start(Behavior::Serve(fixture(&format!("{stem}.prom")))).await;
        let url = engine.url();
        let out = tokio::task::spawn_blocking(move || once(&url))
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{stem}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: inferpick_schema::LoadReport = serde_json::from_slice(&out.stdout).unwrap();
        report.validate().unwrap();
        assert_eq!(report.engine.kind.as_str(), want["engine"], "{stem}");
        assert!(report.engine.ready);
        let load = serde_json::to_value(&report.load).unwrap();
        for field in [
            "requests_waiting",
            "requests_running",
            "kv_cache_utilization",
            "kv_cache_capacity_tokens",
            "adapters",
        ] {
            assert_eq!(load[field], want["load"][field], "{stem}: {field}");
        }
        checked += 1;
    }
    assert!(checked >= 9);
}

#[test]
fn once_failure_is_one_line_on_stderr_and_exit_1() {
    let out = once("http://127.0.0.1:1/metrics");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("inferpick-agent: cannot reach http://127.0.0.1:1/metrics"),
        "{err}"
    );
}

#[test]
fn bad_flags_exit_64_naming_each_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_inferpick-agent"))
        .args(["--once", "--engine-url", "ftp://x", "--endpoint", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("--engine-url") && err.contains("--endpoint"),
        "{err}"
    );
}

#[test]
fn an_unreadable_ca_file_stops_the_agent_at_startup_naming_the_file() {
    let out = Command::new(env!("CARGO_BIN_EXE_inferpick-agent"))
        .args([
            "--endpoint",
            "10.0.0.1:8000",
            "--listen",
            "127.0.0.1:0",
            "--picker",
            "https://127.0.0.1:9",
            "--ca-file",
            "/nonexistent/picker-ca.pem",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("--ca-file") && err.contains("/nonexistent/picker-ca.pem"),
        "{err}"
    );
}
