use super::*;

fn spec(id: u64, prompt: u32, output: u32) -> SeqSpec {
    SeqSpec {
        id,
        prompt_tokens: prompt,
        output_tokens: output,
        prefix: Arc::from(Vec::new()),
        adapter: None,
    }
}

/// Runs the engine until it is idle; returns every event with the time its step ended.
fn run(engine: &mut Engine, mut now: Duration) -> Vec<(Duration, EngineEvent)> {
    let mut events = Vec::new();
    let mut out = Vec::new();
    while let Some(end) = engine.start_step(now) {
        now = end;
        engine.finish_step(&mut out);
        events.extend(out.drain(..).map(|e| (now, e)));
    }
    events
}

fn first_token_at(events: &[(Duration, EngineEvent)], id: u64) -> Duration {
    events
        .iter()
        .find(|(_, e)| matches!(e, EngineEvent::FirstToken { id: i, .. } if *i == id))
        .map(|(t, _)| *t)
        .unwrap_or_else(|| panic!("request {id} never got a first token"))
}

fn finished_at(events: &[(Duration, EngineEvent)], id: u64) -> Duration {
    events
        .iter()
        .find(|(_, e)| matches!(e, EngineEvent::Finished { id: i } if *i == id))
        .map(|(t, _)| *t)
        .unwrap_or_else(|| panic!("request {id} never finished"))
}

#[test]
fn one_request_takes_one_prefill_step_then_one_step_per_token() {
    let config = EngineConfig::default();
    let mut engine = Engine::new(config.clone());
    engine.submit(spec(1, 1000, 3)).unwrap();
    let events = run(&mut engine, Duration::ZERO);
    let prefill = config.step_time(1000, 0);
    assert_eq!(first_token_at(&events, 1), prefill);
    assert_eq!(
        finished_at(&events, 1),
        prefill + config.step_time(0, 1) * 2
    );
    let state = engine.state();
    assert_eq!(state.counters.generation_tokens, 3);
    assert_eq!(state.counters.prompt_tokens, 1000);
    assert_eq!(
        state.kv_used_blocks, 0,
        "a finished request gives its blocks back"
    );
}

#[test]
fn long_prompts_are_prefilled_in_chunks_of_the_token_budget() {
    let config = EngineConfig::default();
    let mut engine = Engine::new(config.clone());
    engine.submit(spec(1, 20_000, 1)).unwrap();
    let events = run(&mut engine, Duration::ZERO);
    // 8192 + 8192 + 3616 tokens: three steps.
    let expected = config.step_time(8192, 0) * 2 + config.step_time(20_000 - 2 * 8192, 0);
    assert_eq!(first_token_at(&events, 1), expected);
}

#[test]
fn full_kv_cache_preempts_the_newest_request() {
    let config = EngineConfig {
        kv_tokens: 64 * 16,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(config);
    // Each needs 20 blocks to start and 40 by its end: three fit at first, not at the end.
    for id in 1..=3 {
        engine.submit(spec(id, 320, 320)).unwrap();
    }
    let events = run(&mut engine, Duration::ZERO);
    let state = engine.state();
    assert!(state.counters.preemptions > 0, "{state:?}");
    for id in 1..=3 {
        finished_at(&events, id);
    }
    assert!(
        finished_at(&events, 3) > finished_at(&events, 1),
        "the newest request was the one preempted"
    );
    assert_eq!(state.kv_used_blocks, 0);
    assert_eq!(state.counters.generation_tokens, 3 * 320);
}

#[test]
fn a_cached_prefix_shortens_time_to_first_token() {
    let config = EngineConfig::default();
    let mut engine = Engine::new(config);
    let prefix: Arc<[u64]> = (0..250).collect::<Vec<u64>>().into();
    let with_prefix = |id| SeqSpec {
        prefix: Arc::clone(&prefix),
        ..spec(id, 4200, 2)
    };
    engine.submit(with_prefix(1)).unwrap();
    let cold = run(&mut engine, Duration::ZERO);
    let cold_ttft = first_token_at(&cold, 1);
    let start = finished_at(&cold, 1);
    engine.submit(with_prefix(2)).unwrap();
    let warm = run(&mut engine, start);
    let warm_ttft = first_token_at(&warm, 2) - start;
    assert!(
        warm_ttft * 4 < cold_ttft,
        "warm {warm_ttft:?} vs cold {cold_ttft:?}"
    );
    assert!(warm.iter().any(|(_, e)| matches!(
        e,
        EngineEvent::FirstToken {
            id: 2,
            cached_tokens: 4000
        }
    )));
    let c = engine.state().counters;
    assert_eq!((c.prefix_queries, c.prefix_hits), (8400, 4000));
}

#[test]
fn a_request_for_an_unloaded_adapter_waits_for_a_free_slot() {
    let config = EngineConfig {
        max_loras: 1,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(config.clone());
    let lora = |id, adapter, output| SeqSpec {
        adapter: Some(adapter),
        ..spec(id, 100, output)
    };
    engine.submit(lora(1, 7, 50)).unwrap();
    engine.submit(lora(2, 8, 5)).unwrap();
    engine.submit(spec(3, 100, 5)).unwrap();
    let state = engine.state();
    assert_eq!(state.waiting, 3);
    let events = run(&mut engine, Duration::ZERO);
    assert!(
        first_token_at(&events, 2) > finished_at(&events, 1),
        "adapter 8 had to wait until adapter 7's request left its slot"
    );
    assert!(
        first_token_at(&events, 3) < finished_at(&events, 1),
        "a base-model request behind it is not held up"
    );
    assert_eq!(engine.state().counters.lora_loads, 2);
    assert!(
        first_token_at(&events, 1) >= config.lora_load,
        "the first step paid the load"
    );
}

#[test]
fn state_reports_waiting_adapters_and_kv_use() {
    let config = EngineConfig {
        max_loras: 1,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(config);
    let lora = |id, adapter| SeqSpec {
        adapter: Some(adapter),
        ..spec(id, 160, 100)
    };
    engine.submit(lora(1, 1)).unwrap();
    engine.submit(lora(2, 2)).unwrap();
    let mut out = Vec::new();
    let end = engine.start_step(Duration::ZERO).unwrap();
    engine.finish_step(&mut out);
    engine.start_step(end).unwrap();
    let state = engine.state();
    assert_eq!((state.running, state.waiting), (1, 1));
    assert_eq!(state.adapters_running, vec![1]);
    assert_eq!(state.adapters_waiting, vec![2]);
    assert_eq!(
        state.kv_used_blocks, 11,
        "10 prompt blocks and one for the first decoded token"
    );
}

#[test]
fn requests_that_can_never_fit_are_refused() {
    let config = EngineConfig {
        kv_tokens: 1600,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(config);
    let err = engine.submit(spec(1, 1500, 200)).unwrap_err();
    assert_eq!(
        err,
        SubmitError::TooLong {
            needed: 1700,
            capacity: 1600
        }
    );
    assert!(!engine.has_work());
}

#[test]
fn predicted_ttft_grows_with_the_queue_and_shrinks_with_a_cached_prefix() {
    let mut engine = Engine::new(EngineConfig::default());
    let probe = spec(99, 2000, 10);
    let idle = engine.predict_ttft(&probe, Duration::ZERO);
    for id in 0..10 {
        engine.submit(spec(id, 3000, 100)).unwrap();
    }
    let busy = engine.predict_ttft(&probe, Duration::ZERO);
    assert!(busy > idle * 5, "idle {idle:?} busy {busy:?}");
    let events = run(&mut engine, Duration::ZERO);
    let last = events.last().unwrap().0;
    let prediction_error = idle.abs_diff(EngineConfig::default().step_time(2000, 0));
    assert!(
        prediction_error < Duration::from_millis(1),
        "{prediction_error:?}"
    );
    assert!(last > Duration::ZERO);
}

#[test]
fn cancelled_requests_free_their_memory() {
    let mut engine = Engine::new(EngineConfig::default());
    engine.submit(spec(1, 500, 1000)).unwrap();
    engine.submit(spec(2, 500, 1000)).unwrap();
    let mut out = Vec::new();
    let end = engine.start_step(Duration::ZERO).unwrap();
    engine.cancel(1);
    engine.finish_step(&mut out);
    assert_eq!(engine.state().running, 1);
    engine.cancel(2);
    assert!(!engine.has_work());
    assert_eq!(engine.state().kv_used_blocks, 0);
    assert!(engine.start_step(end).is_none());
}

#[test]
fn requests_are_found_by_id_before_and_after_the_first_lookup() {
    let mut engine = Engine::new(EngineConfig::default());
    let mut out = Vec::new();
    engine.submit(spec(10, 100, 5)).unwrap();
    engine.submit(spec(11, 100, 50)).unwrap();
    let mut now = Duration::ZERO;
    for _ in 0..3 {
        now = engine.start_step(now).unwrap();
        engine.finish_step(&mut out);
    }
    // The first lookup by id indexes what is there; later submissions and removals keep it.
    assert_eq!(engine.generated(10), Some(3));
    assert_eq!(engine.generated(99), None);
    engine.submit(spec(12, 100, 50)).unwrap();
    assert_eq!(engine.generated(12), Some(0));
    while engine.generated(10).is_some() {
        now = engine.start_step(now).unwrap();
        engine.finish_step(&mut out);
    }
    assert!(out.contains(&EngineEvent::Finished { id: 10 }));
    assert!(engine.generated(11).is_some_and(|n| n > 3));
    engine.cancel(11);
    assert_eq!(engine.generated(11), None);
    assert!(engine.generated(12).is_some());
}

#[test]
fn profiles_override_defaults_and_name_bad_keys() {
    let dir = std::env::temp_dir().join(format!("inferpick-lab-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.yaml");
    std::fs::write(&good, "kv_tokens: 100000\nstep_base: 5ms\n").unwrap();
    let c = EngineConfig::load(&good).unwrap();
    assert_eq!(c.kv_tokens, 100_000);
    assert_eq!(c.step_base, Duration::from_millis(5));
    assert_eq!(c.max_num_seqs, 256);
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "kv_tokns: 100000\n").unwrap();
    let err = EngineConfig::load(&bad).unwrap_err().to_string();
    assert!(
        err.contains("bad.yaml") && err.contains("kv_tokns"),
        "{err}"
    );
    std::fs::write(&bad, "step_base: fast\n").unwrap();
    let err = EngineConfig::load(&bad).unwrap_err().to_string();
    assert!(err.contains("step_base") && err.contains("fast"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn at_half_speed_every_step_takes_twice_as_long() {
    let config = EngineConfig::default();
    let full = run_one(&config, 1.0);
    let half = run_one(&config, 0.5);
    assert_eq!(full[0].0, config.step_time(1000, 0));
    assert_eq!(full.len(), half.len());
    for ((t_full, e_full), (t_half, e_half)) in full.iter().zip(&half) {
        assert_eq!(e_full, e_half, "the same work in the same order");
        assert_eq!(*t_half, *t_full * 2, "{e_half:?}");
    }
    let mut engine = Engine::new(config.clone());
    engine.set_speed(0.5);
    let predicted = engine.predict_ttft(&spec(9, 1000, 1), Duration::ZERO);
    assert_eq!(predicted, half[0].0, "the oracle sees the throttle too");
}

/// One 1000-token prompt with 3 output tokens on an engine running at `speed`.
fn run_one(config: &EngineConfig, speed: f64) -> Vec<(Duration, EngineEvent)> {
    let mut engine = Engine::new(config.clone());
    engine.set_speed(speed);
    assert_eq!(engine.speed(), speed);
    engine.submit(spec(1, 1000, 3)).unwrap();
    run(&mut engine, Duration::ZERO)
}
