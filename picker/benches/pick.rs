//! `Scheduler::pick` at 10, 100, 1,000 and 10,000 endpoints for every profile, against round-robin
//! on the same table. Criterion measures the means; a second pass times single picks to print the
//! median and p99 that TESTING.md's targets are written in (`PICK_SIZES=1000` and
//! `PICK_POLICIES=inferpick,gie` narrow that pass, e.g. to profile one case; `PICK_SCAN_LIMIT=64`
//! sets the cost model's `scan_limit`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use inferpick_picker::scheduler::{Policy, Scheduler, SchedulerConfig};
use inferpick_picker::table::{Table, TableConfig};
use inferpick_schema::PickRequest;

mod fleet;
use fleet::{MODEL, report};

const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];
const NOW: Duration = Duration::from_secs(10);

/// The scheduler configuration measured: the defaults, with `PICK_SCAN_LIMIT` if set.
fn config() -> SchedulerConfig {
    let mut config = SchedulerConfig::default();
    if let Ok(n) = std::env::var("PICK_SCAN_LIMIT") {
        config.cost.scan_limit = n.parse().expect("PICK_SCAN_LIMIT: a count");
    }
    config
}

fn table(n: usize) -> Table {
    let t = Table::new(TableConfig::default());
    t.ingest_batch((0..n).map(|i| report(i, 1)).collect(), NOW)
        .unwrap();
    t
}

/// A chat-like request: a shared system prompt (16 blocks) and a short user part.
fn request(i: usize) -> PickRequest {
    PickRequest {
        model: Some(MODEL.into()),
        prompt: Some(format!(
            "{}user question number {i}",
            "You are a helpful assistant. ".repeat(36)
        )),
        max_tokens: Some(256),
        ..PickRequest::default()
    }
}

fn criterion_benches(c: &mut Criterion) {
    for n in SIZES {
        let mut group = c.benchmark_group(format!("pick/{n}"));
        group
            .sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        for policy in Policy::ALL {
            let t = table(n);
            let s = Scheduler::new(policy, config());
            let reqs: Vec<PickRequest> = (0..64).map(request).collect();
            let mut i = 0;
            group.bench_function(BenchmarkId::from_parameter(policy.as_str()), |b| {
                b.iter(|| {
                    i = (i + 1) % reqs.len();
                    black_box(s.pick(&t, &reqs[i], NOW).unwrap())
                })
            });
        }
        group.finish();
    }
}

/// Median and p99 of single picks, in µs.
fn percentiles(policy: Policy, n: usize, picks: usize) -> (f64, f64) {
    let t = table(n);
    let s = Scheduler::new(policy, config());
    let reqs: Vec<PickRequest> = (0..64).map(request).collect();
    for i in 0..picks / 10 {
        black_box(s.pick(&t, &reqs[i % 64], NOW).unwrap());
    }
    let mut times: Vec<f64> = (0..picks)
        .map(|i| {
            let start = Instant::now();
            black_box(s.pick(&t, &reqs[i % 64], NOW).unwrap());
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[times.len() * 99 / 100])
}

/// A comma-separated list from the environment (to profile one case), or `default`.
fn env_list(name: &str, default: &[String]) -> Vec<String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v.split(',').map(|s| s.trim().to_string()).collect(),
        _ => default.to_vec(),
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    criterion_benches(&mut c);
    c.final_summary();

    println!("\nsingle-pick latency (µs), ratio to round-robin on the same table");
    println!(
        "{:>7} {:>14} {:>9} {:>9} {:>10} {:>10}",
        "table", "policy", "p50", "p99", "p50/rr", "p99/rr"
    );
    let sizes = env_list("PICK_SIZES", &SIZES.map(|n| n.to_string()));
    let policies = env_list(
        "PICK_POLICIES",
        &Policy::ALL.map(|p| p.as_str().to_string()),
    );
    for n in sizes
        .iter()
        .map(|n| n.parse::<usize>().expect("PICK_SIZES: numbers"))
    {
        let picks = if n >= 10_000 { 3_000 } else { 20_000 };
        let rr = percentiles(Policy::RoundRobin, n, picks);
        for policy in policies
            .iter()
            .map(|p| p.parse::<Policy>().expect("PICK_POLICIES"))
        {
            let (p50, p99) = if policy == Policy::RoundRobin {
                rr
            } else {
                percentiles(policy, n, picks)
            };
            println!(
                "{n:>7} {:>14} {p50:>9.2} {p99:>9.2} {:>10.2} {:>10.2}",
                policy.as_str(),
                p50 / rr.0,
                p99 / rr.1
            );
        }
    }
}
