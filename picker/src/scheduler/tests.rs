//! Each profile's choices on hand-built tables.

use std::collections::HashMap;
use std::time::Duration;

use inferpick_schema::{Adapters, LoadReport, ModelEntry, PickRequest};

use super::*;
use crate::table::tests::{MODEL, report};
use crate::table::{DoneOutcome, Table, TableConfig};

/// The contract's code, HTTP status and metric outcome of a refusal, as the service maps them.
trait Contract {
    fn code(&self) -> &'static str;
    fn http_status(&self) -> u16;
    fn outcome(&self) -> &'static str;
}

impl Contract for PickError {
    fn code(&self) -> &'static str {
        crate::error::ApiError::Pick(self.clone()).code()
    }
    fn http_status(&self) -> u16 {
        crate::error::ApiError::Pick(self.clone()).status().as_u16()
    }
    fn outcome(&self) -> &'static str {
        crate::metrics::outcome(self)
    }
}

const NOW: Duration = Duration::from_secs(100);
const ADAPTER: &str = "sql-lora";

fn pod(address: &str, waiting: u32, running: u32, kv: f64) -> LoadReport {
    let mut r = report(address, 1);
    r.load.requests_waiting = Some(waiting);
    r.load.requests_running = Some(running);
    r.load.kv_cache_utilization = Some(kv);
    r
}

fn with_adapter(mut r: LoadReport, loaded: bool, slots_full: bool) -> LoadReport {
    r.models.push(ModelEntry {
        name: ADAPTER.into(),
        adapter_of: Some(MODEL.into()),
    });
    let mut running: Vec<String> = Vec::new();
    if loaded {
        running.push(ADAPTER.into());
    }
    if slots_full {
        running.extend(["a1", "a2", "a3", "a4"].into_iter().map(String::from));
    }
    running.truncate(4);
    r.load.adapters = Some(Adapters {
        running,
        waiting: vec![],
        max_loaded: Some(4),
    });
    r
}

fn table(reports: Vec<LoadReport>) -> Table {
    let t = Table::new(TableConfig::default());
    t.ingest_batch(reports, NOW).unwrap();
    t
}

/// A scheduler with a fixed seed, so each test replays the same draws.
fn sched(policy: Policy) -> Scheduler {
    Scheduler::new(
        policy,
        SchedulerConfig {
            seed: Some(7),
            ..SchedulerConfig::default()
        },
    )
}

fn req() -> PickRequest {
    PickRequest {
        model: Some(MODEL.into()),
        ..PickRequest::default()
    }
}

fn pick(s: &Scheduler, t: &Table, r: &PickRequest) -> String {
    s.pick(t, r, NOW).unwrap().endpoint.to_string()
}

const LOAD_AWARE: [Policy; 3] = [Policy::Inferpick, Policy::Gie, Policy::LeastRequest];

#[test]
fn least_loaded_wins() {
    for policy in LOAD_AWARE {
        let t = table(vec![
            pod("10.0.0.1:8000", 6, 20, 0.7),
            pod("10.0.0.2:8000", 0, 3, 0.1),
            pod("10.0.0.3:8000", 3, 12, 0.5),
        ]);
        let s = sched(policy);
        for _ in 0..3 {
            // Between reports the in-flight estimate grows; a few picks stay on the idle pod.
            assert_eq!(pick(&s, &t, &req()), "10.0.0.2:8000", "{policy}");
        }
    }
}

#[test]
fn loaded_adapter_wins_over_a_slightly_less_loaded_pod_without_it() {
    // GIE's queue scorer is min-max normalized, so for it "slightly" means an equal queue and a
    // little less KV; `inferpick` sees one waiting request less as well.
    for (policy, waiting) in [(Policy::Inferpick, (1, 0)), (Policy::Gie, (2, 2))] {
        for slots_full in [false, true] {
            let t = table(vec![
                with_adapter(pod("10.0.0.1:8000", waiting.0, 8, 0.30), true, false),
                with_adapter(pod("10.0.0.2:8000", waiting.1, 7, 0.28), false, slots_full),
            ]);
            let r = PickRequest {
                model: Some(ADAPTER.into()),
                ..PickRequest::default()
            };
            assert_eq!(
                pick(&sched(policy), &t, &r),
                "10.0.0.1:8000",
                "{policy} slots_full={slots_full}"
            );
        }
    }
    // A base-model request does not care about adapters: the less loaded pod wins.
    let t = table(vec![
        with_adapter(pod("10.0.0.1:8000", 1, 8, 0.30), true, false),
        with_adapter(pod("10.0.0.2:8000", 0, 7, 0.28), false, true),
    ]);
    assert_eq!(pick(&sched(Policy::Inferpick), &t, &req()), "10.0.0.2:8000");
}

#[test]
fn stale_or_not_ready_endpoints_are_never_picked() {
    for policy in Policy::ALL {
        let t = Table::new(TableConfig::default());
        // Idle but stale: its report arrived 2 s ago, past the 1 s bound.
        t.ingest(
            pod("10.0.0.1:8000", 0, 0, 0.0),
            NOW - Duration::from_secs(2),
        )
        .unwrap();
        let mut down = pod("10.0.0.2:8000", 0, 0, 0.0);
        down.engine.ready = false;
        t.ingest(down, NOW).unwrap();
        t.ingest(pod("10.0.0.3:8000", 4, 30, 0.7), NOW).unwrap();
        let s = sched(policy);
        for _ in 0..30 {
            let p = s.pick(&t, &req(), NOW).unwrap();
            assert_eq!(&*p.endpoint, "10.0.0.3:8000", "{policy}");
            assert!(
                p.fallbacks.is_empty(),
                "{policy}: no fallback may be stale or not ready"
            );
        }
    }
}

#[test]
fn a_burst_between_two_reports_spreads_over_the_pool() {
    for policy in [Policy::Inferpick, Policy::LeastRequest] {
        let t = table(
            (1..=5)
                .map(|i| pod(&format!("10.0.0.{i}:8000"), 0, 0, 0.1))
                .collect(),
        );
        let s = sched(policy);
        let mut counts: HashMap<String, usize> = HashMap::new();
        for _ in 0..100 {
            let r = PickRequest {
                prompt_tokens: Some(800),
                ..req()
            };
            *counts.entry(pick(&s, &t, &r)).or_default() += 1;
        }
        assert_eq!(counts.len(), 5, "{policy}: {counts:?}");
        assert!(
            counts.values().all(|&n| (15..=25).contains(&n)),
            "{policy}: {counts:?}"
        );
    }
}

#[test]
fn a_newer_report_replaces_the_inflight_estimate() {
    let t = table(vec![
        pod("10.0.0.1:8000", 0, 0, 0.1),
        pod("10.0.0.2:8000", 0, 0, 0.1),
    ]);
    let s = sched(Policy::LeastRequest);
    for _ in 0..10 {
        pick(&s, &t, &req());
    }
    let snap = t.snapshot();
    let total: u64 = snap.iter().map(|e| e.inflight().requests).sum();
    assert_eq!(total, 10);
    let mut r = pod("10.0.0.1:8000", 0, 5, 0.1);
    r.seq = 2;
    t.ingest(r, NOW).unwrap();
    assert_eq!(
        t.snapshot()
            .get("10.0.0.1:8000")
            .unwrap()
            .inflight()
            .requests,
        0
    );
    assert_eq!(
        t.snapshot()
            .get("10.0.0.2:8000")
            .unwrap()
            .inflight()
            .requests,
        5
    );
}

#[test]
fn done_feedback_lowers_the_estimate() {
    let t = table(vec![pod("10.0.0.1:8000", 0, 0, 0.1)]);
    let s = sched(Policy::Inferpick);
    let p = s
        .pick(
            &t,
            &PickRequest {
                prompt_tokens: Some(300),
                ..req()
            },
            NOW,
        )
        .unwrap();
    let e = t.snapshot().get("10.0.0.1:8000").unwrap().clone();
    assert_eq!(e.inflight().prompt_tokens, 300);
    t.done(p.decision_id.as_u128(), NOW);
    assert_eq!(e.inflight().requests, 0);
    assert_eq!(e.inflight().prompt_tokens, 0);
}

fn saturated_pool() -> Table {
    table(vec![
        pod("10.0.0.1:8000", 7, 40, 0.5),
        pod("10.0.0.2:8000", 2, 40, 0.85),
    ])
}

#[test]
fn shed_only_negative_priority_and_only_when_saturated() {
    for policy in [Policy::Inferpick, Policy::Gie] {
        let s = sched(policy);
        let sheddable = PickRequest {
            priority: Some(-1),
            ..req()
        };
        match s.pick(&saturated_pool(), &sheddable, NOW) {
            Err(e @ PickError::Shed { .. }) => {
                assert_eq!((e.code(), e.http_status()), ("shed", 429));
                let PickError::Shed { retry_after, .. } = e else {
                    unreachable!()
                };
                assert!(retry_after >= Duration::from_secs(1));
            }
            other => panic!("{policy}: expected shed, got {other:?}"),
        }
        // Priority 0 and positive are never shed by the picker.
        for p in [0, 10] {
            s.pick(
                &saturated_pool(),
                &PickRequest {
                    priority: Some(p),
                    ..req()
                },
                NOW,
            )
            .unwrap_or_else(|e| panic!("{policy} priority {p}: {e}"));
        }
        // One unsaturated pod: nothing is shed.
        let t = table(vec![
            pod("10.0.0.1:8000", 7, 40, 0.5),
            pod("10.0.0.2:8000", 1, 10, 0.3),
        ]);
        assert_eq!(pick(&s, &t, &sheddable), "10.0.0.2:8000", "{policy}");
    }
    // Baselines do not shed.
    for policy in [Policy::LeastRequest, Policy::RoundRobin, Policy::Random] {
        let r = PickRequest {
            priority: Some(-1),
            ..req()
        };
        sched(policy).pick(&saturated_pool(), &r, NOW).unwrap();
    }
}

#[test]
fn inflight_decisions_saturate_the_pool_for_inferpick() {
    let t = table(vec![pod("10.0.0.1:8000", 0, 0, 0.1)]);
    let s = sched(Policy::Inferpick);
    for _ in 0..5 {
        pick(&s, &t, &req());
    }
    let r = PickRequest {
        priority: Some(-5),
        ..req()
    };
    assert_eq!(s.pick(&t, &r, NOW).unwrap_err().code(), "shed");
}

#[test]
fn objectives_set_priority() {
    let mut config = SchedulerConfig::default();
    config.objectives.insert("batch".into(), -1);
    config.objectives.insert("chat".into(), 10);
    let s = Scheduler::new(Policy::Inferpick, config);
    let batch = PickRequest {
        objective: Some("batch".into()),
        ..req()
    };
    assert_eq!(
        s.pick(&saturated_pool(), &batch, NOW).unwrap_err().code(),
        "shed"
    );
    let chat = PickRequest {
        objective: Some("chat".into()),
        ..req()
    };
    assert_eq!(s.pick(&saturated_pool(), &chat, NOW).unwrap().priority, 10);
    let unknown = PickRequest {
        objective: Some("nope".into()),
        ..req()
    };
    let err = s.pick(&saturated_pool(), &unknown, NOW).unwrap_err();
    assert_eq!(err.code(), "invalid_request");
    assert!(
        err.to_string().contains("objective: \"nope\"") && err.to_string().contains("batch, chat"),
        "{err}"
    );
}

#[test]
fn candidates_and_exclude_are_honoured() {
    for policy in Policy::ALL {
        let t = table(
            (1..=4)
                .map(|i| pod(&format!("10.0.0.{i}:8000"), 0, i, 0.1))
                .collect(),
        );
        let s = sched(policy);
        for _ in 0..20 {
            let r = PickRequest {
                candidates: Some(vec!["10.0.0.3:8000".into(), "10.0.0.4:8000".into()]),
                exclude: Some(vec!["10.0.0.3:8000".into()]),
                ..req()
            };
            let p = s.pick(&t, &r, NOW).unwrap();
            assert_eq!(&*p.endpoint, "10.0.0.4:8000", "{policy}");
            assert!(p.fallbacks.is_empty());
        }
        let none = PickRequest {
            exclude: Some((1..=4).map(|i| format!("10.0.0.{i}:8000")).collect()),
            ..req()
        };
        let err = s.pick(&t, &none, NOW).unwrap_err();
        assert_eq!(err.code(), "no_ready_endpoint", "{policy}");
        assert!(
            err.to_string().contains("4 left out by candidates/exclude"),
            "{err}"
        );
    }
}

#[test]
fn fallbacks_are_distinct_best_first() {
    let t = table(
        (1..=6)
            .map(|i| pod(&format!("10.0.0.{i}:8000"), i, 0, 0.1))
            .collect(),
    );
    let p = sched(Policy::LeastRequest)
        .pick(
            &t,
            &PickRequest {
                fallbacks: Some(3),
                ..req()
            },
            NOW,
        )
        .unwrap();
    assert_eq!(&*p.endpoint, "10.0.0.1:8000");
    let f: Vec<&str> = p.fallbacks.iter().map(|f| &**f).collect();
    assert_eq!(f, ["10.0.0.2:8000", "10.0.0.3:8000", "10.0.0.4:8000"]);
    let too_many = PickRequest {
        fallbacks: Some(17),
        ..req()
    };
    assert_eq!(
        sched(Policy::Inferpick)
            .pick(&t, &too_many, NOW)
            .unwrap_err()
            .code(),
        "invalid_request"
    );
    for policy in [Policy::RoundRobin, Policy::Random] {
        let p = sched(policy)
            .pick(
                &t,
                &PickRequest {
                    fallbacks: Some(5),
                    ..req()
                },
                NOW,
            )
            .unwrap();
        let mut all: Vec<&str> = p.fallbacks.iter().map(|f| &**f).collect();
        all.push(&p.endpoint);
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 6, "{policy}");
    }
}

#[test]
fn round_robin_takes_each_in_turn() {
    let t = table(
        (1..=3)
            .map(|i| pod(&format!("10.0.0.{i}:8000"), 0, 0, 0.0))
            .collect(),
    );
    let s = sched(Policy::RoundRobin);
    let seq: Vec<String> = (0..6).map(|_| pick(&s, &t, &req())).collect();
    assert_eq!(seq[0..3], seq[3..6]);
    let mut first = seq[0..3].to_vec();
    first.sort();
    first.dedup();
    assert_eq!(first.len(), 3);
}

fn eight_idle_pods() -> Table {
    table(
        (1..=8)
            .map(|i| pod(&format!("10.0.0.{i}:8000"), 0, 0, 0.0))
            .collect(),
    )
}

/// 40 picks on eight idle pods: each chosen endpoint and decision id.
fn forty_picks(s: &Scheduler) -> Vec<(String, uuid::Uuid)> {
    let t = eight_idle_pods();
    (0..40)
        .map(|_| {
            let p = s.pick(&t, &req(), NOW).unwrap();
            (p.endpoint.to_string(), p.decision_id)
        })
        .collect()
}

#[test]
fn same_seed_same_choices_but_never_the_same_decision_ids() {
    for policy in Policy::ALL {
        let (a, b) = (forty_picks(&sched(policy)), forty_picks(&sched(policy)));
        let endpoints =
            |r: &[(String, uuid::Uuid)]| r.iter().map(|p| p.0.clone()).collect::<Vec<_>>();
        assert_eq!(endpoints(&a), endpoints(&b), "{policy}");
        let ids: std::collections::HashSet<uuid::Uuid> = a.iter().chain(&b).map(|p| p.1).collect();
        assert_eq!(
            ids.len(),
            80,
            "{policy}: decision ids do not follow the seed"
        );
    }
    let t = eight_idle_pods();
    let s = sched(Policy::Random);
    let seen: std::collections::HashSet<String> = (0..40).map(|_| pick(&s, &t, &req())).collect();
    assert!(seen.len() > 1, "the random stream advances with every pick");
}

#[test]
fn replicas_built_from_one_config_draw_differently() {
    // Two replicas with the production config (no seed): their random choices must not move
    // in lockstep, or they herd onto the same endpoints.
    let config = SchedulerConfig::default();
    let a = forty_picks(&Scheduler::new(Policy::Random, config.clone()));
    let b = forty_picks(&Scheduler::new(Policy::Random, config));
    let same = a.iter().zip(&b).filter(|(x, y)| x.0 == y.0).count();
    // Independent uniform draws over 8 endpoints agree 5 times in 40 on average; lockstep is 40.
    assert!(
        same < 20,
        "{same} of 40 picks identical: replicas share a seed"
    );
    let ids: std::collections::HashSet<uuid::Uuid> = a.iter().chain(&b).map(|p| p.1).collect();
    assert_eq!(ids.len(), 80, "decision ids repeat across replicas");
}

fn long_prompt(prefix: char, user: &str) -> String {
    format!(
        "{}{user}",
        std::iter::repeat_n(prefix, 64 * 40).collect::<String>()
    )
}

#[test]
fn prefix_affinity_prefers_the_pod_that_has_the_prefix() {
    for policy in [Policy::Inferpick, Policy::Gie] {
        let t = table(
            (1..=4)
                .map(|i| pod(&format!("10.0.0.{i}:8000"), 0, 2, 0.2))
                .collect(),
        );
        let s = sched(policy);
        let first = s
            .pick(
                &t,
                &PickRequest {
                    prompt: Some(long_prompt('s', "question one")),
                    ..req()
                },
                NOW,
            )
            .unwrap();
        // Refresh every pod's report so the first pick's in-flight share is closed again.
        let mut reports: Vec<LoadReport> = (1..=4)
            .map(|i| pod(&format!("10.0.0.{i}:8000"), 0, 2, 0.2))
            .collect();
        for r in &mut reports {
            r.seq = 2;
        }
        t.ingest_batch(reports, NOW).unwrap();
        let second = s
            .pick_explained(
                &t,
                &PickRequest {
                    prompt: Some(long_prompt('s', "another question")),
                    ..req()
                },
                NOW,
            )
            .unwrap();
        assert_eq!(second.endpoint, first.endpoint, "{policy}");
        let explain = second
            .explain
            .map(|e| serde_json::to_value(e).unwrap())
            .unwrap();
        let hit = explain["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["endpoint"] == *first.endpoint)
            .unwrap();
        assert_eq!(hit["cached_blocks"], 40, "{policy}");
    }
}

#[test]
fn imbalance_guard_drops_prefix_credit_on_an_overloaded_pod() {
    let t = table(vec![
        pod("10.0.0.1:8000", 0, 2, 0.2),
        pod("10.0.0.2:8000", 0, 2, 0.2),
    ]);
    let s = sched(Policy::Inferpick);
    let prompt = long_prompt('p', "x");
    let first = s
        .pick(
            &t,
            &PickRequest {
                prompt: Some(prompt.clone()),
                ..req()
            },
            NOW,
        )
        .unwrap();
    let other = if &*first.endpoint == "10.0.0.1:8000" {
        "10.0.0.2:8000"
    } else {
        "10.0.0.1:8000"
    };
    // The cached pod is now far busier than the pool minimum.
    let mut busy = pod(&first.endpoint, 30, 60, 0.5);
    busy.seq = 2;
    let mut idle = pod(other, 0, 2, 0.2);
    idle.seq = 2;
    t.ingest_batch(vec![busy, idle], NOW).unwrap();
    let p = s
        .pick_explained(
            &t,
            &PickRequest {
                prompt: Some(prompt),
                ..req()
            },
            NOW,
        )
        .unwrap();
    assert_eq!(&*p.endpoint, other);
}

#[test]
fn session_affinity_keeps_a_session_on_its_pod() {
    let t = table(
        (1..=4)
            .map(|i| pod(&format!("10.0.0.{i}:8000"), 0, 1, 0.1))
            .collect(),
    );
    let s = sched(Policy::Inferpick);
    let r = PickRequest {
        session: Some("user-42".into()),
        prompt_tokens: Some(100),
        ..req()
    };
    let first = pick(&s, &t, &r);
    for seq in 2..6 {
        let reports = (1..=4)
            .map(|i| {
                let mut p = pod(&format!("10.0.0.{i}:8000"), 0, 1, 0.1);
                p.seq = seq;
                p
            })
            .collect();
        t.ingest_batch(reports, NOW).unwrap();
        assert_eq!(pick(&s, &t, &r), first);
    }
}

#[test]
fn model_resolution_errors_map_to_contract_codes() {
    let s = sched(Policy::Inferpick);
    let empty = Table::new(TableConfig::default());
    let err = s.pick(&empty, &req(), NOW).unwrap_err();
    assert_eq!((err.code(), err.http_status()), ("no_ready_endpoint", 503));

    let t = table(vec![pod("10.0.0.1:8000", 0, 0, 0.0)]);
    let err = s
        .pick(
            &t,
            &PickRequest {
                model: Some("gpt-5".into()),
                ..req()
            },
            NOW,
        )
        .unwrap_err();
    assert_eq!(
        (err.code(), err.http_status(), err.outcome()),
        ("unknown_model", 404, "unknown_model")
    );
    // The only model in the table is used when the request names none.
    assert_eq!(
        s.pick(&t, &PickRequest::default(), NOW).unwrap().model,
        MODEL
    );

    let mut other = pod("10.0.0.2:8000", 0, 0, 0.0);
    other.models[0].name = "Qwen/Qwen3-8B".into();
    t.ingest(other, NOW).unwrap();
    let err = s.pick(&t, &PickRequest::default(), NOW).unwrap_err();
    assert_eq!(err.code(), "invalid_request");
    assert!(err.to_string().starts_with("model: required"), "{err}");
}

#[test]
fn rewrites_send_a_name_to_its_targets_by_weight() {
    let mut config = SchedulerConfig::default();
    config.rewrites.insert(
        "llama".into(),
        vec![RewriteTarget {
            model: MODEL.into(),
            weight: 100,
        }],
    );
    let s = Scheduler::new(Policy::Inferpick, config);
    let t = table(vec![pod("10.0.0.1:8000", 0, 0, 0.0)]);
    let p = s
        .pick(
            &t,
            &PickRequest {
                model: Some("llama".into()),
                ..PickRequest::default()
            },
            NOW,
        )
        .unwrap();
    assert_eq!(p.model, MODEL);
}

#[test]
fn explain_lists_every_endpoint_with_signals_and_score() {
    let t = Table::new(TableConfig::default());
    t.ingest(pod("10.0.0.1:8000", 1, 2, 0.3), NOW).unwrap();
    t.ingest(
        pod("10.0.0.2:8000", 0, 0, 0.0),
        NOW - Duration::from_secs(5),
    )
    .unwrap();
    for policy in Policy::ALL {
        let p = sched(policy).pick_explained(&t, &req(), NOW).unwrap();
        let e = p.explain.map(|e| serde_json::to_value(e).unwrap()).unwrap();
        assert_eq!(e["policy"], policy.as_str());
        let c = &e["candidates"][0];
        assert_eq!(c["endpoint"], "10.0.0.1:8000");
        assert_eq!(c["requests_waiting"], 1);
        assert_eq!(c["rank"], 0);
        assert!(c["score"].is_number());
        assert_eq!(e["excluded"][0]["reason"], "stale");
        match policy {
            Policy::Inferpick => assert!(c["parts"]["prefill_s"].as_f64().unwrap() > 0.0, "{c}"),
            Policy::Gie => assert_eq!(c["parts"]["queue"], 1.0, "{c}"),
            _ => assert!(c["parts"].as_object().unwrap().is_empty()),
        }
    }
    assert!(
        sched(Policy::Inferpick)
            .pick(&t, &req(), NOW)
            .unwrap()
            .explain
            .is_none()
    );
}

#[test]
fn policy_names_round_trip() {
    for p in Policy::ALL {
        assert_eq!(p.as_str().parse::<Policy>().unwrap(), p);
    }
    let err = "fastest".parse::<Policy>().unwrap_err().to_string();
    assert!(
        err.contains("\"fastest\"") && err.contains("least-request"),
        "{err}"
    );
}

/// `n` idle pods with the default model, `10.9.x.y:8000`.
fn large_pool(n: usize) -> Vec<LoadReport> {
    (0..n)
        .map(|i| pod(&format!("10.9.{}.{}:8000", i / 250, i % 250), 0, 2, 0.2))
        .collect()
}

#[test]
fn a_large_pool_keeps_prefix_affinity_outside_the_scanned_window() {
    let n = 4 * CostModel::default().scan_limit;
    let t = table(large_pool(n));
    let s = sched(Policy::Inferpick);
    let ask = |user: &str| PickRequest {
        prompt: Some(long_prompt('p', user)),
        ..req()
    };
    let first = s.pick(&t, &ask("first"), NOW).unwrap();
    // Each pick scans a random quarter of the pool; the pod holding the prefix is found anyway.
    for i in 0..6 {
        // Fresh reports close the previous picks' in-flight share, as in a real pool.
        let mut reports = large_pool(n);
        for r in &mut reports {
            r.seq = 2 + i;
        }
        t.ingest_batch(reports, NOW).unwrap();
        let next = s.pick(&t, &ask(&format!("follow-up {i}")), NOW).unwrap();
        assert_eq!(next.endpoint, first.endpoint, "pick {i}");
    }
}

#[test]
fn a_large_pool_is_shed_only_when_the_whole_pool_is_saturated() {
    let n = 4 * CostModel::default().scan_limit;
    let mut reports = large_pool(n);
    for r in &mut reports {
        r.load.requests_waiting = Some(9);
    }
    let free = reports[n / 2].endpoint.address.clone();
    reports[n / 2].load.requests_waiting = Some(0);
    let t = table(reports);
    let s = sched(Policy::Inferpick);
    let sheddable = PickRequest {
        priority: Some(-1),
        ..req()
    };
    // Most windows miss the one free pod; shedding must still look at the whole pool.
    for i in 0..20 {
        let p = s
            .pick(&t, &sheddable, NOW)
            .unwrap_or_else(|e| panic!("pick {i}: {e}"));
        assert_eq!(*p.endpoint, *free, "pick {i}");
        assert_eq!(t.done(p.decision_id.as_u128(), NOW), DoneOutcome::Closed);
    }
    // Once the free pod is busy too, the request is shed.
    let mut busy = pod(&free, 9, 2, 0.2);
    busy.seq = 2;
    t.ingest(busy, NOW).unwrap();
    assert!(matches!(
        s.pick(&t, &sheddable, NOW),
        Err(PickError::Shed { .. })
    ));
}

#[test]
fn a_large_pool_prefers_its_least_loaded_pods_and_explains_them_all() {
    let n = 4 * CostModel::default().scan_limit;
    let mut reports = large_pool(n);
    for (i, r) in reports.iter_mut().enumerate() {
        r.load.requests_waiting = Some(if i % 8 == 0 { 0 } else { 30 });
    }
    let t = table(reports);
    let s = sched(Policy::Inferpick);
    for i in 0..50 {
        let p = s.pick(&t, &req(), NOW).unwrap();
        let e = t.snapshot();
        let chosen = e.get(&p.endpoint).unwrap();
        assert_eq!(
            chosen.report.load.requests_waiting,
            Some(0),
            "pick {i} went to a busy pod"
        );
    }
    let explained = s.pick_explained(&t, &req(), NOW).unwrap();
    assert_eq!(
        explained
            .explain
            .map(|e| serde_json::to_value(e).unwrap())
            .unwrap()["candidates"]
            .as_array()
            .unwrap()
            .len(),
        n,
        "explain scores the whole pool"
    );
}

#[test]
fn a_large_pool_that_is_all_stale_names_every_endpoint_in_the_error() {
    let n = 4 * CostModel::default().scan_limit;
    let t = table(large_pool(n));
    let later = NOW + Duration::from_secs(5);
    match sched(Policy::Inferpick).pick(&t, &req(), later) {
        Err(PickError::NoReadyEndpoint { reason, .. }) => {
            assert!(
                reason.contains(&format!("{n} endpoint(s) serve it: {n} stale")),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_large_pool_with_few_ready_pods_offers_each_once() {
    let n = 4 * CostModel::default().scan_limit;
    let mut reports = large_pool(n);
    for (i, r) in reports.iter_mut().enumerate() {
        r.engine.ready = i % 100 == 7;
    }
    let ready = reports.iter().filter(|r| r.engine.ready).count();
    let t = table(reports);
    let s = sched(Policy::Inferpick);
    for i in 0..20 {
        let p = s
            .pick(
                &t,
                &PickRequest {
                    fallbacks: Some(16),
                    ..req()
                },
                NOW,
            )
            .unwrap();
        let mut all: Vec<&str> = std::iter::once(&p.endpoint)
            .chain(&p.fallbacks)
            .map(|a| &**a)
            .collect();
        assert_eq!(all.len(), ready, "pick {i}: every ready pod, once");
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), ready, "pick {i}: no pod twice");
    }
}

#[test]
fn one_pods_high_prompt_rate_does_not_draw_long_prompts_past_an_emptier_peer() {
    let mut fast = pod("10.0.0.1:8000", 3, 4, 0.2);
    fast.load.prompt_tokens_per_second = Some(80_000.0);
    let mut slow = pod("10.0.0.2:8000", 1, 4, 0.2);
    slow.load.prompt_tokens_per_second = Some(10_000.0);
    let t = table(vec![fast.clone(), slow.clone()]);
    // Each entry reads its class's estimate as of its own report: the next round sees both.
    for mut r in [fast, slow] {
        r.seq += 1;
        t.ingest(r, NOW).unwrap();
    }
    let s = sched(Policy::Inferpick);
    let long = PickRequest {
        prompt_tokens: Some(8_000),
        ..req()
    };
    // Of one hardware class, both are costed on the class's estimate: the pod with fewer queued
    // requests is sooner.
    for _ in 0..20 {
        let p = s.pick(&t, &long, NOW).unwrap();
        assert_eq!(&*p.endpoint, "10.0.0.2:8000");
        assert_eq!(t.done(p.decision_id.as_u128(), NOW), DoneOutcome::Closed);
    }
}

#[test]
fn prefill_routed_before_a_report_still_steers_the_next_pick() {
    let (a, b) = ("10.0.0.1:8000", "10.0.0.2:8000");
    let t = table(vec![pod(a, 0, 0, 0.1), pod(b, 0, 0, 0.1)]);
    let s = sched(Policy::Inferpick);
    let long = PickRequest {
        prompt_tokens: Some(8_000),
        ..req()
    };
    let first = s.pick(&t, &long, NOW).unwrap().endpoint.to_string();
    let other = if first == a { b } else { a };
    // The next reports show the routed request as one running request, and the other pod a
    // little busier; the first pod is still prefilling the long prompt.
    let later = NOW + Duration::from_millis(100);
    let mut shown = pod(&first, 0, 1, 0.1);
    shown.seq = 2;
    let mut busier = pod(other, 0, 3, 0.1);
    busier.seq = 2;
    t.ingest_batch(vec![shown, busier], later).unwrap();
    let second = s.pick(&t, &long, later).unwrap();
    assert_eq!(&*second.endpoint, other);
}

/// A pod serving each of `models` (base models), idle unless `waiting` says otherwise.
fn pod_of(address: &str, models: &[&str], waiting: u32) -> LoadReport {
    let mut r = pod(address, waiting, 0, 0.1);
    r.models = models
        .iter()
        .map(|m| ModelEntry {
            name: (*m).into(),
            adapter_of: None,
        })
        .collect();
    r
}

#[test]
fn round_robin_keeps_one_turn_per_model() {
    // Two models alternate over the same two pods: each model must still use both pods.
    let t = table(vec![
        pod_of("10.0.0.1:8000", &["a", "b"], 0),
        pod_of("10.0.0.2:8000", &["a", "b"], 0),
    ]);
    let s = sched(Policy::RoundRobin);
    let ask = |m: &str| PickRequest {
        model: Some(m.into()),
        ..PickRequest::default()
    };
    let mut by_model: HashMap<&str, Vec<String>> = HashMap::new();
    for _ in 0..4 {
        for m in ["a", "b"] {
            by_model.entry(m).or_default().push(pick(&s, &t, &ask(m)));
        }
    }
    for (m, picks) in by_model {
        let distinct: std::collections::HashSet<&String> = picks.iter().collect();
        assert_eq!(distinct.len(), 2, "model {m} went to {picks:?}");
        assert!(picks.windows(2).all(|w| w[0] != w[1]), "{m}: {picks:?}");
    }
}

#[test]
fn a_shed_recheck_keeps_the_rewrite_it_drew() {
    // "alias" is half m1 (every pod saturated) and half m2 (idle), over a pool large enough to be
    // scored on a window. A sheddable request drawn as m1 must be shed as m1, not redrawn: half of
    // them are shed, not a quarter.
    let n = 2 * CostModel::default().scan_limit;
    let mut reports: Vec<LoadReport> = (0..n)
        .map(|i| pod_of(&format!("10.1.{}.{}:8000", i / 200, i % 200), &["m1"], 9))
        .collect();
    reports
        .extend((0..n).map(|i| pod_of(&format!("10.2.{}.{}:8000", i / 200, i % 200), &["m2"], 0)));
    let t = table(reports);
    let mut config = SchedulerConfig {
        seed: Some(3),
        ..SchedulerConfig::default()
    };
    config.rewrites.insert(
        "alias".into(),
        ["m1", "m2"]
            .map(|m| RewriteTarget {
                model: m.into(),
                weight: 50,
            })
            .to_vec(),
    );
    let s = Scheduler::new(Policy::Inferpick, config);
    let r = PickRequest {
        model: Some("alias".into()),
        priority: Some(-1),
        ..PickRequest::default()
    };
    let mut shed = 0;
    for _ in 0..400 {
        match s.pick(&t, &r, NOW) {
            Ok(p) => assert_eq!(p.model, "m2", "m1 is saturated everywhere"),
            Err(PickError::Shed { model, .. }) => {
                assert_eq!(model, "m1");
                shed += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        (150..=250).contains(&shed),
        "{shed} of 400 shed: expected about half"
    );
}

#[test]
fn a_cost_that_is_not_a_number_still_picks() {
    let mut config = SchedulerConfig {
        seed: Some(1),
        ..SchedulerConfig::default()
    };
    config.cost.kv_pressure_seconds = f64::NAN;
    let s = Scheduler::new(Policy::Inferpick, config);
    let t = table(vec![
        pod("10.0.0.1:8000", 0, 0, 0.5),
        pod("10.0.0.2:8000", 0, 0, 0.5),
    ]);
    let p = s.pick_explained(&t, &req(), NOW).unwrap();
    assert_eq!(p.fallbacks.len(), 1);
}

#[test]
fn one_models_traffic_does_not_push_out_anothers_prefix_holders() {
    // 40 pods serve models a and b. An `a` prompt goes to pod 0; then the same prompt as `b` is
    // sent to 35 other pods, more than a block remembers holders for. `a`'s holder must remain.
    let addresses: Vec<String> = (0..40).map(|i| format!("10.3.0.{i}:8000")).collect();
    let t = table(
        addresses
            .iter()
            .map(|a| pod_of(a, &["a", "b"], 0))
            .collect(),
    );
    let s = sched(Policy::Inferpick);
    let prompt = long_prompt('p', "same question");
    let ask = |model: &str, only: Option<&String>| PickRequest {
        model: Some(model.into()),
        prompt: Some(prompt.clone()),
        candidates: only.map(|a| vec![a.clone()]),
        ..PickRequest::default()
    };
    assert_eq!(pick(&s, &t, &ask("a", Some(&addresses[0]))), addresses[0]);
    for a in &addresses[1..36] {
        pick(&s, &t, &ask("b", Some(a)));
    }
    let explained = s.pick_explained(&t, &ask("a", None), NOW).unwrap();
    let explain = serde_json::to_value(explained.explain.unwrap()).unwrap();
    let holder = explain["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["endpoint"] == addresses[0].as_str())
        .unwrap();
    assert!(holder["cached_blocks"].as_u64().unwrap() > 0, "{holder}");
    assert_eq!(explained.endpoint.as_ref(), addresses[0].as_str());
}

#[test]
fn gie_scores_a_waiting_adapter_with_a_free_slot_as_a_free_slot() {
    // GIE checks for room first: an adapter that waits on a server with a free slot scores 0.8.
    let mut r = with_adapter(pod("10.0.0.1:8000", 1, 2, 0.2), false, false);
    r.load.adapters = Some(Adapters {
        running: vec!["other".into()],
        waiting: vec![ADAPTER.into()],
        max_loaded: Some(4),
    });
    let t = table(vec![r]);
    let p = sched(Policy::Gie)
        .pick_explained(
            &t,
            &PickRequest {
                model: Some(ADAPTER.into()),
                ..PickRequest::default()
            },
            NOW,
        )
        .unwrap();
    let explain = serde_json::to_value(p.explain.unwrap()).unwrap();
    let c = &explain["candidates"][0];
    assert_eq!(c["adapter"], "waiting");
    assert_eq!(c["parts"]["lora"], 0.8, "{c}");
}

/// A KV-event message saying `address` holds `keys` (a reset, at `seq`).
fn kv(
    address: &str,
    seq: u64,
    keys: Vec<u64>,
    state: inferpick_schema::KvStreamState,
) -> inferpick_schema::KvEvents {
    inferpick_schema::KvEvents {
        schema_version: inferpick_schema::SCHEMA_VERSION,
        endpoint: address.into(),
        stream: format!("agent-{address}"),
        seq,
        state,
        block_size: 16,
        reset: true,
        cleared: false,
        groups: vec![inferpick_schema::KvGroup {
            adapter: None,
            stored: keys,
            removed: vec![],
        }],
    }
}

#[test]
fn exact_kv_blocks_route_to_the_holder_and_a_stale_stream_falls_back() {
    use inferpick_schema::KvStreamState::{Live, Stale};
    use inferpick_schema::kv::{BASE_ROOT, block_keys};
    let pods: Vec<LoadReport> = (1..=4)
        .map(|i| pod(&format!("10.0.0.{i}:8000"), 0, 2, 0.2))
        .collect();
    let t = table(pods);
    let prompt: Vec<u32> = (0..2048).collect();
    // 10.0.0.3 holds the first 100 blocks (1,600 tokens) by its engine's account.
    let keys = block_keys(BASE_ROOT, &prompt, 16, 100);
    assert!(
        !t.ingest_kv(kv("10.0.0.3:8000", 0, keys.clone(), Live), NOW)
            .unwrap()
            .refused
    );
    let s = sched(Policy::Inferpick);
    let ask = PickRequest {
        prompt_token_ids: Some(prompt.clone()),
        ..req()
    };
    for _ in 0..5 {
        let pick = s.pick_explained(&t, &ask, NOW).unwrap();
        assert_eq!(&*pick.endpoint, "10.0.0.3:8000");
        let explain = serde_json::to_value(pick.explain.unwrap()).unwrap();
        assert_eq!(explain["prefix_tokens"], 2048);
        let holder = explain["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["endpoint"] == "10.0.0.3:8000")
            .unwrap()
            .clone();
        assert_eq!(holder["cached_tokens"], 1600, "{holder}");
        assert_eq!(holder["cached_exact"], true, "{holder}");
    }
    // What the picker predicted for it, to set beside the engine's own hit ratio.
    let holder = t.snapshot().get("10.0.0.3:8000").unwrap().clone();
    assert_eq!(holder.routed_prefix_tokens(), (5 * 2048, 5 * 1600));
    // The stream goes stale: the endpoint is scored on the approximate index (which remembers
    // the picks above, so it still leads, but not exactly).
    t.ingest_kv(
        inferpick_schema::KvEvents {
            reset: false,
            groups: vec![],
            ..kv("10.0.0.3:8000", 1, vec![], Stale)
        },
        NOW,
    )
    .unwrap();
    let pick = s.pick_explained(&t, &ask, NOW).unwrap();
    let explain = serde_json::to_value(pick.explain.unwrap()).unwrap();
    assert!(
        explain["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["cached_exact"] == false),
        "{explain}"
    );
    // A live stream heard longer ago than kv_max_age falls back too.
    t.ingest_kv(kv("10.0.0.2:8000", 0, keys, Live), NOW)
        .unwrap();
    let later = NOW + TableConfig::default().kv_max_age + Duration::from_millis(1);
    let fresh: Vec<LoadReport> = (1..=4)
        .map(|i| {
            let mut r = pod(&format!("10.0.0.{i}:8000"), 0, 2, 0.2);
            r.seq = 2;
            r
        })
        .collect();
    t.ingest_batch(fresh, later).unwrap();
    let pick = s.pick_explained(&t, &ask, later).unwrap();
    let explain = serde_json::to_value(pick.explain.unwrap()).unwrap();
    let two = explain["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["endpoint"] == "10.0.0.2:8000")
        .unwrap()
        .clone();
    assert_eq!(two["cached_exact"], false, "{two}");
}

#[test]
fn kv_events_for_an_unknown_endpoint_ask_for_a_resync_and_bad_ones_name_the_field() {
    let t = table(vec![pod("10.0.0.1:8000", 0, 0, 0.1)]);
    let out = t
        .ingest_kv(
            kv(
                "10.0.0.9:8000",
                0,
                vec![1],
                inferpick_schema::KvStreamState::Live,
            ),
            NOW,
        )
        .unwrap();
    assert!(out.refused && out.ack.resync);
    let mut bad = kv(
        "10.0.0.1:8000",
        0,
        vec![1],
        inferpick_schema::KvStreamState::Live,
    );
    bad.block_size = 0;
    assert_eq!(t.ingest_kv(bad, NOW).unwrap_err().field, "block_size");
    assert_eq!(t.exact_blocks(), 0);
}

#[test]
fn a_text_prompt_is_tokenized_with_the_models_tokenizer_for_the_exact_index() {
    use inferpick_schema::kv::{BASE_ROOT, block_keys};
    let words: Vec<String> = (0..64).map(|i| format!("w{i}")).collect();
    let vocab: Vec<&str> = words.iter().map(String::as_str).collect();
    let tokenizer = crate::tokenize::tests::word_level(&vocab);
    let mut tokenizers = crate::tokenize::Tokenizers::default();
    tokenizers.insert(MODEL.into(), tokenizer);
    let s = Scheduler::new(
        Policy::Inferpick,
        SchedulerConfig {
            seed: Some(7),
            tokenizers,
            ..SchedulerConfig::default()
        },
    );
    let t = table(
        (1..=3)
            .map(|i| pod(&format!("10.0.0.{i}:8000"), 0, 1, 0.1))
            .collect(),
    );
    let ids: Vec<u32> = (0..320).map(|i| i % 64).collect();
    let text = ids
        .iter()
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    t.ingest_kv(
        kv(
            "10.0.0.2:8000",
            0,
            block_keys(BASE_ROOT, &ids, 16, 20),
            inferpick_schema::KvStreamState::Live,
        ),
        NOW,
    )
    .unwrap();
    let pick = s
        .pick_explained(
            &t,
            &PickRequest {
                prompt: Some(text),
                ..req()
            },
            NOW,
        )
        .unwrap();
    assert_eq!(&*pick.endpoint, "10.0.0.2:8000");
    let explain = serde_json::to_value(pick.explain.unwrap()).unwrap();
    assert_eq!(explain["prefix_tokens"], 320, "{explain}");
    // Read whole, the prompt's length is its token count, not a characters-per-token estimate.
    assert_eq!(explain["prompt_tokens"], 320, "{explain}");
    // A model without a tokenizer looks nothing up exactly.
    let s = sched(Policy::Inferpick);
    let pick = s
        .pick_explained(
            &t,
            &PickRequest {
                prompt: Some("w1 w2 w3".into()),
                ..req()
            },
            NOW,
        )
        .unwrap();
    assert_eq!(
        serde_json::to_value(pick.explain.unwrap()).unwrap()["prefix_tokens"],
        0
    );
}

#[test]
fn exact_cached_tokens_keep_their_credit_past_the_imbalance_guard() {
    use inferpick_schema::kv::{BASE_ROOT, block_keys};
    // The holder runs 12 requests, the other pod none: the guard would withdraw a guessed credit.
    let t = table(vec![
        pod("10.0.0.1:8000", 0, 12, 0.2),
        pod("10.0.0.2:8000", 0, 0, 0.2),
    ]);
    let prompt: Vec<u32> = (0..7000).collect();
    let keys = block_keys(BASE_ROOT, &prompt, 16, 375);
    t.ingest_kv(
        kv(
            "10.0.0.1:8000",
            0,
            keys,
            inferpick_schema::KvStreamState::Live,
        ),
        NOW,
    )
    .unwrap();
    let s = sched(Policy::Inferpick);
    let pick = s
        .pick(
            &t,
            &PickRequest {
                prompt_token_ids: Some(prompt),
                ..req()
            },
            NOW,
        )
        .unwrap();
    assert_eq!(&*pick.endpoint, "10.0.0.1:8000");
}

#[test]
fn under_queueing_a_cached_history_outweighs_a_slightly_shorter_queue() {
    use inferpick_schema::KvStreamState::Live;
    use inferpick_schema::kv::{BASE_ROOT, block_keys};
    // Every pod queues; the one holding the prompt's first 1,600 tokens queues 6 more. Costed
    // once, those tokens (0.2 s at the 8,000 tokens/s floor) are worth less than 6 requests'
    // prefill (0.38 s); weighed by the pool's queueing, keeping them wins.
    let pods: Vec<LoadReport> = (1..=4)
        .map(|i| {
            pod(
                &format!("10.0.0.{i}:8000"),
                if i == 3 { 10 } else { 4 },
                2,
                0.2,
            )
        })
        .collect();
    let t = table(pods);
    let prompt: Vec<u32> = (0..2048).collect();
    let keys = block_keys(BASE_ROOT, &prompt, 16, 100);
    t.ingest_kv(kv("10.0.0.3:8000", 0, keys, Live), NOW)
        .unwrap();
    let ask = PickRequest {
        prompt_token_ids: Some(prompt),
        ..req()
    };
    let weighed = |max: f64| {
        let mut config = SchedulerConfig {
            seed: Some(7),
            ..SchedulerConfig::default()
        };
        config.cost.miss_weight_max_waiting = max;
        Scheduler::new(Policy::Inferpick, config)
    };
    assert_eq!(pick(&weighed(4.0), &t, &ask), "10.0.0.3:8000");
    assert_ne!(pick(&weighed(0.0), &t, &ask), "10.0.0.3:8000");
}

fn on_gpu(
    mut r: LoadReport,
    name: &str,
    health: Option<inferpick_schema::GpuHealth>,
) -> LoadReport {
    r.gpus = vec![inferpick_schema::Gpu {
        uuid: format!("GPU-{}", r.endpoint.address),
        name: Some(name.into()),
        health,
        ..Default::default()
    }];
    r
}

#[test]
fn a_slower_gpu_is_costed_at_its_own_speed() {
    let mut h100 = on_gpu(
        pod("10.0.0.1:8000", 2, 4, 0.2),
        "NVIDIA H100 80GB HBM3",
        None,
    );
    h100.load.prompt_tokens_per_second = Some(16_000.0);
    let l4 = on_gpu(pod("10.0.0.2:8000", 0, 4, 0.2), "NVIDIA L4", None);
    let t = table(vec![h100, l4]);
    let s = sched(Policy::Inferpick);
    let long = PickRequest {
        prompt_tokens: Some(8_000),
        ..req()
    };
    // The L4 has no queue but prefills at an eighth of the H100's rate: the H100 is sooner.
    let p = s.pick_explained(&t, &long, NOW).unwrap();
    assert_eq!(&*p.endpoint, "10.0.0.1:8000", "{:?}", p.explain);
    let short = PickRequest {
        prompt_tokens: Some(50),
        ..req()
    };
    // A short prompt is sooner on the idle L4.
    let p = s.pick(&t, &short, NOW).unwrap();
    assert_eq!(&*p.endpoint, "10.0.0.2:8000");
}

#[test]
fn a_throttled_gpu_draws_less_and_a_failed_one_nothing() {
    use inferpick_schema::{GpuHealth, ThrottleReason};
    let h100 = "NVIDIA H100 80GB HBM3";
    let hot = GpuHealth {
        throttle: vec![ThrottleReason::HwThermal],
        sm_clock_mhz: Some(594),
        sm_clock_max_mhz: Some(1980),
        ..Default::default()
    };
    let lost = GpuHealth {
        lost: true,
        ..Default::default()
    };
    let t = table(vec![
        on_gpu(pod("10.0.0.1:8000", 1, 4, 0.2), h100, None),
        on_gpu(pod("10.0.0.2:8000", 1, 4, 0.2), h100, Some(hot)),
        on_gpu(pod("10.0.0.3:8000", 0, 0, 0.0), h100, Some(lost.clone())),
    ]);
    let s = sched(Policy::Inferpick);
    let long = PickRequest {
        prompt_tokens: Some(4_000),
        ..req()
    };
    for _ in 0..20 {
        let p = s.pick_explained(&t, &long, NOW).unwrap();
        assert_eq!(&*p.endpoint, "10.0.0.1:8000", "{:?}", p.explain);
        assert_eq!(t.done(p.decision_id.as_u128(), NOW), DoneOutcome::Closed);
    }
    let p = s.pick_explained(&t, &long, NOW).unwrap();
    let explain = serde_json::to_string(&p.explain).unwrap();
    assert!(explain.contains("gpu_failed"), "{explain}");
    // With every GPU failed, the refusal says so.
    let t = table(vec![on_gpu(
        pod("10.0.0.3:8000", 0, 0, 0.0),
        h100,
        Some(lost),
    )]);
    let err = s.pick(&t, &long, NOW).unwrap_err().to_string();
    assert!(err.contains("1 with a failed GPU"), "{err}");
}
