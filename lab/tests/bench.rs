//! The bake-off on loopback: each contender on its own fresh fleet with the same load, one table;
//! a router that cannot start is a row saying why; real peer routers when installed.

use std::path::PathBuf;
use std::time::Duration;

use inferpick_lab::bench::peer::{self, PeerKind};
use inferpick_lab::bench::{self, BenchConfig, BenchReport, Contender};
use inferpick_lab::workload::Workload;

fn config(contenders: &[Contender]) -> BenchConfig {
    BenchConfig {
        workload: Workload::load("chat").unwrap(),
        pods: 2,
        load: 0.8,
        duration: Duration::from_secs(3),
        seed: 1,
        kv_events: true,
        contenders: contenders.to_vec(),
        sglang_router: Err("not used".into()),
        vllm_router: Err("not used".into()),
    }
}

/// Every contender named ran, in order, completed requests without failures, and its pods'
/// finished requests add up to what the load generator saw completed.
fn assert_all_ran(report: &BenchReport, contenders: &[Contender]) {
    let text = report.text();
    let names: Vec<&str> = report.rows.iter().map(|r| r.contender.as_str()).collect();
    let want: Vec<String> = contenders.iter().map(|c| c.name()).collect();
    assert_eq!(names, want, "{text}");
    for row in &report.rows {
        let run = row
            .run
            .as_ref()
            .unwrap_or_else(|| panic!("{} did not run:\n{text}", row.contender));
        assert!(run.completed > 0, "{text}");
        assert_eq!(run.failed, 0, "{text}");
        assert_eq!(row.requests_per_pod.len(), 2, "{text}");
        assert_eq!(
            row.requests_per_pod.iter().sum::<u64>(),
            run.completed,
            "{text}"
        );
        assert!(row.prefix_hit_ratio.is_some(), "{text}");
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{} ", row.contender)))
            .unwrap_or_else(|| panic!("no line for {}:\n{text}", row.contender));
        assert!(line.contains(&run.completed.to_string()), "{line}");
    }
    // The same requests at the same times for every contender.
    let sent: Vec<u64> = report
        .rows
        .iter()
        .filter_map(|r| r.run.as_ref())
        .map(|r| r.requests)
        .collect();
    assert!(sent.windows(2).all(|w| w[0] == w[1]), "{sent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inferpick_and_round_robin_each_drive_a_fresh_fleet() {
    let contenders = [Contender::Inferpick, Contender::RoundRobin];
    let report = bench::run(&config(&contenders), |_| {}).await.unwrap();
    assert_all_ran(&report, &contenders);
    let rr = &report.rows[1].requests_per_pod;
    assert!(rr[0].abs_diff(rr[1]) <= 1, "round robin alternates: {rr:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_that_cannot_start_is_a_row_saying_why() {
    let mut config = config(&[Contender::SglangCacheAware, Contender::VllmCacheAware]);
    config.sglang_router = Ok(PathBuf::from("/bin/false"));
    config.vllm_router = Err("vllm-router is not on PATH".into());
    let report = bench::run(&config, |_| {}).await.unwrap();
    let text = report.text();
    let why: Vec<&str> = report
        .rows
        .iter()
        .map(|r| r.not_run.as_deref().unwrap_or("ran"))
        .collect();
    assert!(
        why[0].starts_with("sglang-router --policy cache_aware: exited (exit status: 1)"),
        "{text}"
    );
    assert_eq!(why[1], "vllm-router is not on PATH", "{text}");
    assert!(
        text.contains("not run: vllm-cache-aware: vllm-router is not on PATH"),
        "{text}"
    );
}

/// The peer routers, when installed (`INFERPICK_SGLANG_ROUTER`/`INFERPICK_VLLM_ROUTER` or PATH);
/// skipped otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_peer_routers_route_the_emulated_fleet() {
    let path = std::env::var_os("PATH");
    let given = |var: &str| std::env::var_os(var).map(PathBuf::from);
    let sglang = peer::find(
        PeerKind::Sglang,
        given("INFERPICK_SGLANG_ROUTER").as_deref(),
        path.as_deref(),
    );
    let vllm = peer::find(
        PeerKind::Vllm,
        given("INFERPICK_VLLM_ROUTER").as_deref(),
        path.as_deref(),
    );
    let mut contenders = Vec::new();
    if sglang.is_ok() {
        contenders.push(Contender::SglangCacheAware);
    }
    if vllm.is_ok() {
        contenders.extend([Contender::VllmCacheAware, Contender::VllmKvAware]);
    }
    if contenders.is_empty() {
        eprintln!("skipped: neither sglang-router nor vllm-router is installed");
        return;
    }
    let mut config = config(&contenders);
    (config.sglang_router, config.vllm_router) = (sglang, vllm);
    let report = bench::run(&config, |_| {}).await.unwrap();
    assert_all_ran(&report, &contenders);
}
