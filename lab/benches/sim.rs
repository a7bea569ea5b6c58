//! Simulator speed: simulated seconds per wall second for each policy on the same fleet and
//! workload, printed as a ratio against `round-robin` measured in the same run (these machines
//! are shared and noisy, so absolute times say little).
//!
//! `cargo bench -p inferpick-lab --bench sim` (set `INFERPICK_BENCH_PODS`, default 200).

use std::time::{Duration, Instant};

use inferpick_lab::engine::EngineConfig;
use inferpick_lab::sim::{SimConfig, SimPolicy, capacity, run_policy};
use inferpick_lab::workload::Workload;

fn main() {
    let pods: u32 = std::env::var("INFERPICK_BENCH_PODS")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(200);
    let workload = Workload::load("chat").expect("built-in");
    let engine = EngineConfig::default();
    let per_pod = capacity::per_pod(&workload, &engine, 1);
    let config = SimConfig {
        workload,
        pods,
        rate_per_pod: 0.85 * per_pod,
        seed: 1,
        staleness: Duration::from_millis(100),
        report_delay: Duration::from_millis(5),
        duration: Duration::from_secs(30),
        engine,
        kv_events: Some(Default::default()),
    };
    let time = |policy: SimPolicy| {
        let mut runs: Vec<Duration> = (0..3)
            .map(|_| {
                let t = Instant::now();
                let r = run_policy(&config, policy);
                assert!(r.completed > 0);
                t.elapsed()
            })
            .collect();
        runs.sort();
        runs[1]
    };
    let baseline = time(SimPolicy::Picker("round-robin".parse().expect("policy")));
    println!(
        "chat, load 0.85, {pods} pods × {}s simulated (median of 3)",
        config.duration.as_secs()
    );
    for policy in SimPolicy::ALL {
        let t = time(policy);
        println!(
            "{:<14} {:>8.2}s wall  {:>7.1} simulated s per wall s  {:>5.2}× round-robin's time",
            policy.to_string(),
            t.as_secs_f64(),
            config.duration.as_secs_f64() / t.as_secs_f64(),
            t.as_secs_f64() / baseline.as_secs_f64()
        );
    }
}
