use super::*;
use kv::KvReceiver;

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
        kv_events: Some(KvDelivery::default()),
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

/// An engine of `kv_tokens` that journals its prefix cache.
fn journaled_engine(kv_tokens: u64) -> Engine {
    let mut engine = Engine::new(EngineConfig {
        kv_tokens,
        ..EngineConfig::default()
    });
    engine.keep_kv_journal(inferpick_schema::KvLimits::MAX_KEYS);
    engine
}

fn engine_keys(engine: &Engine) -> Vec<u64> {
    let mut keys: Vec<u64> = engine
        .cached_blocks()
        .into_iter()
        .flat_map(|g| g.stored)
        .collect();
    keys.sort_unstable();
    keys
}

#[test]
fn events_keep_the_picker_in_step_with_the_cache_and_a_loss_costs_a_reset() {
    // A small cache, so that later prompts evict earlier ones.
    let mut engine = journaled_engine(16 * 300);
    let mirror = kv::KvMirror::default();
    let mut publisher = kv::KvPublisher::new("10.0.0.1:8000".into(), 3);
    let lossless = KvDelivery::default();
    let deliver = |p: &mut kv::KvPublisher, delivery: KvDelivery| {
        while let Some(msg) = p.arrive(delivery) {
            let ack = mirror.receive(msg, Duration::ZERO).unwrap();
            p.acked(&ack);
        }
    };
    assert_eq!(
        publisher.build(&mut engine, &[], Duration::ZERO, lossless),
        1
    );
    deliver(&mut publisher, lossless);
    assert_eq!(mirror.blocks("10.0.0.1:8000", None), Some(vec![]));
    let mut out = Vec::new();
    let mut now = Duration::ZERO;
    for id in 0..6u64 {
        let tokens: Vec<u32> = (0..1600).map(|t| (id * 7 + t) as u32 % 5000 + 1).collect();
        let keys =
            inferpick_schema::kv::block_keys(inferpick_schema::kv::BASE_ROOT, &tokens, 16, 100);
        engine
            .submit(SeqSpec {
                id,
                prompt_tokens: 1600,
                output_tokens: 2,
                prefix: keys.into(),
                adapter: None,
            })
            .unwrap();
        while let Some(end) = engine.start_step(now) {
            now = end;
            engine.finish_step(&mut out);
        }
        publisher.build(&mut engine, &[], now, lossless);
        deliver(&mut publisher, lossless);
        assert_eq!(
            mirror.blocks("10.0.0.1:8000", None).unwrap(),
            engine_keys(&engine),
            "after prompt {id}"
        );
    }
    assert!(publisher.counts.keys > 300, "evictions were sent too");
    // Lose a message: the next one is out of order, the picker asks for a resync, and the reset
    // after it restores the exact state.
    assert!(engine.reset_prefix_cache());
    publisher.build(&mut engine, &[], now, lossless);
    let all_lost = KvDelivery {
        loss: 1.0,
        ..lossless
    };
    deliver(&mut publisher, all_lost);
    assert_eq!(publisher.counts.lost, 1);
    let tokens: Vec<u32> = (0..320).collect();
    let keys = inferpick_schema::kv::block_keys(inferpick_schema::kv::BASE_ROOT, &tokens, 16, 20);
    engine
        .submit(SeqSpec {
            id: 99,
            prompt_tokens: 320,
            output_tokens: 2,
            prefix: keys.into(),
            adapter: None,
        })
        .unwrap();
    while let Some(end) = engine.start_step(now) {
        now = end;
        engine.finish_step(&mut out);
    }
    publisher.build(&mut engine, &[], now, lossless);
    deliver(&mut publisher, lossless);
    assert_eq!(mirror.blocks("10.0.0.1:8000", None), None, "out of step");
    assert!(publisher.reset_due());
    publisher.build(&mut engine, &[], now, lossless);
    deliver(&mut publisher, lossless);
    assert_eq!(publisher.counts.resets, 2);
    assert_eq!(
        mirror.blocks("10.0.0.1:8000", None).unwrap(),
        engine_keys(&engine)
    );
}

#[test]
fn a_reset_larger_than_one_message_is_split() {
    let max = inferpick_schema::KvLimits::MAX_KEYS;
    // One prompt of more blocks than one message may carry.
    let mut engine = journaled_engine(16 * (max as u64 + 20_000));
    let tokens: Vec<u32> = (0..(16 * (max as u32 + 100)))
        .map(|t| t % 30_000 + 1)
        .collect();
    let keys =
        inferpick_schema::kv::block_keys(inferpick_schema::kv::BASE_ROOT, &tokens, 16, usize::MAX);
    engine
        .submit(SeqSpec {
            id: 1,
            prompt_tokens: tokens.len() as u32,
            output_tokens: 1,
            prefix: keys.into(),
            adapter: None,
        })
        .unwrap();
    let mut now = Duration::ZERO;
    let mut out = Vec::new();
    while let Some(end) = engine.start_step(now) {
        now = end;
        engine.finish_step(&mut out);
    }
    let mirror = kv::KvMirror::default();
    let mut publisher = kv::KvPublisher::new("10.0.0.2:8000".into(), 1);
    assert_eq!(
        publisher.build(&mut engine, &[], now, KvDelivery::default()),
        2
    );
    while let Some(msg) = publisher.arrive(KvDelivery::default()) {
        assert!(msg.key_count() <= max);
        msg.validate().unwrap();
        publisher.acked(&mirror.receive(msg, now).unwrap());
    }
    assert_eq!(
        mirror.blocks("10.0.0.2:8000", None).unwrap().len(),
        max + 100
    );
}

#[test]
fn a_simulation_with_lossy_events_runs_and_is_deterministic() {
    let mut c = config("shared-prefix", 4, 0.8, 40);
    c.kv_events = Some(KvDelivery {
        delay: Duration::from_millis(50),
        loss: 0.2,
    });
    let a = run_policy(&c, SimPolicy::Picker(Policy::Inferpick));
    assert_eq!(a, run_policy(&c, SimPolicy::Picker(Policy::Inferpick)));
    assert!(a.completed > 0);
    assert!(a.prefix_hit_ratio.unwrap() > 0.3, "{a:?}");
}

#[test]
fn the_cached_prefix_text_is_the_prompt_text() {
    let c = config("shared-prefix", 2, 0.5, 10);
    let mut run = Run::new(&c, SimPolicy::Picker(Policy::Inferpick));
    let reqs: Vec<_> = Generator::new(&c.workload, 2, 1.0, Duration::from_secs(60), 1, 16)
        .take(300)
        .collect();
    for r in &reqs {
        assert_eq!(
            run.short_prompt_text(r),
            crate::workload::prompt_text(r, false)
        );
    }
}
