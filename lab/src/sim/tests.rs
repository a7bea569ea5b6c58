use super::*;

fn config(workload: &str, pods: u32, load: f64, secs: u64) -> SimConfig {
    let workload = Workload::load(workload).unwrap();
    let engine = EngineConfig::default();
    let capacity = capacity::per_pod(&workload, &engine, 1);
    SimConfig {
        workload,
        pods,
        rate_per_pod: load * capacity,
        seed: 42,
        staleness: Duration::from_millis(100),
        report_delay: Duration::from_millis(5),
        duration: Duration::from_secs(secs),
        engine,
    }
}

#[test]
fn policy_names_parse_and_print() {
    for p in SimPolicy::ALL {
        assert_eq!(p.to_string().parse::<SimPolicy>().unwrap(), p);
    }
    let err = "fastest".parse::<SimPolicy>().unwrap_err();
    assert!(err.contains("fastest") && err.contains("oracle"), "{err}");
}

#[test]
fn runs_are_deterministic_for_a_seed() {
    let c = config("chat", 4, 0.7, 60);
    let a = run_policy(&c, SimPolicy::Picker(Policy::Inferpick));
    let b = run_policy(&c, SimPolicy::Picker(Policy::Inferpick));
    assert_eq!(a, b);
    let other = SimConfig { seed: 43, ..c };
    assert_ne!(a, run_policy(&other, SimPolicy::Picker(Policy::Inferpick)));
}

#[test]
fn at_low_load_everything_completes_and_throughput_matches_the_offer() {
    let c = config("chat", 4, 0.3, 120);
    let r = run_policy(&c, SimPolicy::Picker(Policy::RoundRobin));
    assert_eq!(r.completed, r.requests);
    assert_eq!(r.shed, 0);
    let offered = c.rate_per_pod * 4.0 * 275.0; // mean output of uniform 50..=500
    let ratio = r.throughput_tokens_per_s / offered;
    assert!((0.85..1.15).contains(&ratio), "{ratio}: {r:?}");
    assert!(r.ttft_ms.p50 > 0.0 && r.ttft_ms.p50 <= r.ttft_ms.p99);
    assert!(r.e2e_ms.p50 >= r.ttft_ms.p50);
}

#[test]
fn the_oracle_beats_round_robin_under_load() {
    let c = config("chat", 4, 0.85, 120);
    let report = run(
        &c,
        &[SimPolicy::Picker(Policy::RoundRobin), SimPolicy::Oracle],
        2,
    );
    let (rr, oracle) = (&report.results[0], &report.results[1]);
    assert_eq!(rr.policy, "round-robin");
    assert!(
        oracle.ttft_ms.p99 < rr.ttft_ms.p99,
        "oracle {:?} vs round robin {:?}",
        oracle.ttft_ms,
        rr.ttft_ms
    );
    assert!(report.table("chat").contains("oracle"));
}

#[test]
fn negative_priority_is_shed_only_when_the_pool_is_saturated() {
    let low = run_policy(
        &config("mixed", 4, 0.3, 60),
        SimPolicy::Picker(Policy::Inferpick),
    );
    assert_eq!(low.shed, 0, "{low:?}");
    let high = run_policy(
        &config("mixed", 4, 1.6, 60),
        SimPolicy::Picker(Policy::Inferpick),
    );
    assert!(high.shed > 0, "{high:?}");
}

#[test]
fn pod_addresses_are_distinct_host_ports() {
    assert_eq!(pod_address(0), "10.0.0.0:8000");
    assert_eq!(pod_address(999), "10.0.3.231:8000");
    inferpick_schema::report::check_address(&pod_address(70_000)).unwrap();
}

#[test]
fn pod_addresses_read_back_to_their_pod() {
    for i in (0..70_000).chain([(1 << 24) - 1]) {
        assert_eq!(pod_of(&pod_address(i)), Some(i), "{}", pod_address(i));
    }
    for other in [
        "10.0.0.1:8001",
        "11.0.0.1:8000",
        "10.0.0.01:8000",
        "10.0.+1.1:8000",
        "10.0.0.256:8000",
        "10.0.0.1.1:8000",
        "10.0..1:8000",
        "10.0.1:8000",
    ] {
        assert_eq!(pod_of(other), None, "{other}");
    }
}
