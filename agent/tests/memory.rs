//! An engine that keeps sending bodies over the cap must not grow the agent's memory.

mod common;

use std::time::Duration;

use common::*;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_expositions_keep_memory_bounded() {
    let engine = FakeEngine::start(Behavior::Huge(64 << 20)).await;
    let agent = Agent::start(
        &engine.url(),
        &["--interval", "100ms", "--scrape-timeout", "90ms"],
    )
    .await;
    let warm = agent
        .wait_for_report(Duration::from_secs(20), "a refused scrape", |r| {
            r.engine.error.is_some()
        })
        .await
        .seq;
    let before = rss_bytes();
    agent
        .wait_for_report(Duration::from_secs(30), "20 more refused scrapes", |r| {
            r.seq >= warm + 20
        })
        .await;
    let grown = rss_bytes().saturating_sub(before);
    // Each scrape may hold up to the 8 MiB cap while it reads; nothing may accumulate.
    assert!(
        grown < 48 << 20,
        "RSS grew by {} MiB over 20 oversize scrapes",
        grown >> 20
    );
    agent.stop().await;
}
