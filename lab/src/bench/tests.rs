//! The bake-off's flags, its program lookup, and its table.

use std::collections::BTreeMap;
use std::path::Path;

use clap::Parser as _;

use super::peer::{self, PeerKind};
use super::*;
use crate::cli::{Cli, Command};
use crate::load::{Latency, LoadResult};

fn bench_args(args: &[&str]) -> Result<BenchArgs, clap::Error> {
    let cli = Cli::try_parse_from(
        ["inferpick-lab", "bench"]
            .into_iter()
            .chain(args.iter().copied()),
    )?;
    match cli.command {
        Command::Bench(b) => Ok(b),
        other => panic!("not bench: {other:?}"),
    }
}

#[test]
fn flags_parse_into_a_bake_off() {
    let args = bench_args(&[
        "--workload",
        "shared-prefix",
        "--pods",
        "2",
        "--load",
        "0.5",
        "--duration",
        "3s",
        "--seed",
        "9",
        "--contenders",
        "inferpick,round-robin",
        "--kv-events",
        "off",
    ])
    .unwrap();
    let config = args.config().unwrap();
    assert_eq!(config.workload.name, "shared-prefix");
    assert_eq!((config.pods, config.load, config.seed), (2, 0.5, 9));
    assert_eq!(config.duration, Duration::from_secs(3));
    assert_eq!(
        config.contenders,
        [Contender::Inferpick, Contender::RoundRobin]
    );
    assert!(!config.kv_events);
}

#[test]
fn every_contender_runs_by_default_in_order_on_the_demo_workload() {
    let config = bench_args(&[]).unwrap().config().unwrap();
    assert_eq!(config.contenders, Contender::ALL);
    assert_eq!(config.workload.name, "demo");
    assert_eq!((config.pods, config.load), (4, 0.8));
    assert_eq!(config.duration, Duration::from_secs(60));
    assert!(config.kv_events);
}

#[test]
fn bad_contender_lists_are_refused_by_name() {
    let e = bench_args(&["--contenders", "inferpick,nginx-plus"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("nginx-plus"), "{e}");
    let e = bench_args(&["--contenders", "inferpick,round-robin,inferpick"])
        .unwrap()
        .config()
        .unwrap_err()
        .to_string();
    assert_eq!(e, "--contenders names inferpick twice");
    let e = bench_args(&["--pods", "0"]).unwrap_err().to_string();
    assert!(e.contains("--pods"), "{e}");
}

#[test]
fn a_router_is_the_flag_given_else_found_on_path() {
    let dir = std::env::temp_dir().join(format!("inferpick-bench-find-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let program = dir.join("sglang-router");
    std::fs::write(&program, "").unwrap();
    let path = std::env::join_paths([Path::new("/nonexistent"), &dir]).unwrap();
    assert_eq!(
        peer::find(PeerKind::Sglang, None, Some(&path)),
        Ok(program.clone())
    );
    assert_eq!(
        peer::find(PeerKind::Sglang, Some(&program), None),
        Ok(program.clone())
    );
    let missing = peer::find(PeerKind::Vllm, None, Some(&path)).unwrap_err();
    assert_eq!(
        missing,
        "vllm-router is not on PATH (pip install vllm-router==0.1.17, or give --vllm-router PATH)"
    );
    let wrong = peer::find(PeerKind::Vllm, Some(&dir.join("nope")), Some(&path)).unwrap_err();
    assert!(
        wrong.starts_with("--vllm-router ") && wrong.ends_with("nope: no such file"),
        "{wrong}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn run_of(requests: u64, ttft: Option<Latency>, errors: &[(&str, u64)]) -> LoadResult {
    let failed = errors.iter().map(|(_, n)| n).sum();
    LoadResult {
        url: "http://127.0.0.1:1".into(),
        api: "chat".into(),
        model: "m".into(),
        workload: "chat".into(),
        rate: 10.0,
        duration_s: 3.0,
        requests,
        completed: requests - failed,
        failed,
        errors: errors.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
        error_examples: errors
            .iter()
            .map(|(k, _)| (k.to_string(), format!("why {k}")))
            .collect::<BTreeMap<_, _>>(),
        throughput_tokens_per_s: 1234.4,
        ttft_ms: ttft,
        e2e_ms: ttft.map(|l| Latency {
            p50: l.p50 * 10.0,
            p99: l.p99 * 10.0,
            ..l
        }),
        goodput: 9.5,
        records: None,
    }
}

fn report(rows: Vec<BenchRow>) -> BenchReport {
    BenchReport {
        workload: "chat".into(),
        pods: 2,
        load: 0.8,
        duration_s: 3.0,
        seed: 1,
        kv_events: true,
        capacity_per_pod: 6.25,
        rate: 10.0,
        rows,
    }
}

#[test]
fn the_table_has_a_line_per_contender_with_its_figures() {
    let ttft = Latency {
        mean: 60.0,
        p50: 50.0,
        p90: 90.0,
        p99: 1500.0,
    };
    let text = report(vec![
        BenchRow::measured(
            Contender::RoundRobin,
            run_of(30, Some(ttft), &[]),
            Some(0.25),
            vec![15, 15],
        ),
        BenchRow::measured(
            Contender::Inferpick,
            run_of(30, Some(ttft), &[("429", 2)]),
            Some(0.5),
            vec![20, 8],
        ),
    ])
    .text();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("bake-off · workload chat · 2 pods · load 0.8 → 10 requests/s (capacity 6.25 per pod) · 3s"),
        "{text}"
    );
    let header: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(header[..3], ["contender", "requests", "errors"]);
    let rr: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        rr,
        [
            "round-robin",
            "30",
            "0",
            "50ms",
            "90ms",
            "1.5s",
            "500ms",
            "15.0s",
            "1234",
            "9.50/s",
            "25",
            "15/15"
        ]
    );
    let ip: Vec<&str> = lines[3].split_whitespace().collect();
    assert_eq!(ip[..3], ["inferpick", "30", "2"]);
    assert_eq!(ip[10..], ["50", "20/8"]);
    assert!(
        text.contains("inferpick            built-in gateway → picker"),
        "{text}"
    );
    assert!(
        text.contains("failed through inferpick: 2 × 429: why 429"),
        "{text}"
    );
    let mut long = run_of(3, None, &[("400", 3)]);
    long.error_examples.insert("400".into(), "é".repeat(500));
    let text = report(vec![BenchRow::measured(
        Contender::SglangRoundRobin,
        long,
        None,
        vec![0, 0],
    )])
    .text();
    let line = text
        .lines()
        .find(|l| l.starts_with("failed through"))
        .unwrap();
    assert!(line.ends_with(&format!(": {}…", "é".repeat(160))), "{line}");
}

#[test]
fn a_contender_that_did_not_run_or_completed_nothing_says_so() {
    let text = report(vec![
        BenchRow::measured(
            Contender::VllmCacheAware,
            run_of(5, None, &[("404", 5)]),
            None,
            vec![0, 0],
        ),
        BenchRow::not_run(
            Contender::SglangCacheAware,
            "sglang-router is not on PATH".into(),
        ),
    ])
    .text();
    let lines: Vec<&str> = text.lines().collect();
    let failed: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        failed,
        [
            "vllm-cache-aware",
            "5",
            "5",
            "-",
            "-",
            "-",
            "-",
            "-",
            "1234",
            "9.50/s",
            "-",
            "0/0"
        ]
    );
    assert_eq!(lines[3], "sglang-cache-aware   not run (see below)");
    assert!(
        text.contains("not run: sglang-cache-aware: sglang-router is not on PATH"),
        "{text}"
    );
    let json = serde_json::to_value(report(vec![BenchRow::not_run(
        Contender::VllmKvAware,
        "no".into(),
    )]))
    .unwrap();
    assert_eq!(json["rows"][0]["contender"], "vllm-kv-aware");
    assert_eq!(json["rows"][0]["not_run"], "no");
    assert_eq!(json["rows"][0]["run"], serde_json::Value::Null);
}
