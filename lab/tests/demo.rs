//! The demo on loopback: `--keep` serves a fresh fleet per policy at OpenAI base URLs, a short
//! comparison reports each policy's run and the exact rate it drove, and a lost pod's emulator
//! refuses requests while the picker routes around it.

use std::time::Duration;

use inferpick_lab::demo::fault::{self, Fault};
use inferpick_lab::demo::{self, DEMO_MODEL, DemoConfig, DemoGateway, Fleet, GatewayKind, report};
use inferpick_lab::engine::EngineConfig;
use inferpick_lab::workload::Workload;
use inferpick_schema::EngineKind;
use serde_json::{Value, json};

fn config(duration: Duration, load: f64) -> DemoConfig {
    DemoConfig {
        pods: 1,
        duration,
        load,
        workload: Workload::parse(demo::DEMO_WORKLOAD, "demo.yaml").unwrap(),
        seed: 1,
        gateway: GatewayKind::Builtin,
        kv_events: false,
        keep_records: true,
        faults: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_serves_a_fresh_fleet_per_policy_at_openai_base_urls() {
    let kept = demo::keep(&config(Duration::ZERO, 0.8), |_| {})
        .await
        .unwrap();
    let policies: Vec<&str> = kept.iter().map(|k| k.policy).collect();
    assert_eq!(policies, demo::POLICIES);
    assert_ne!(kept[0].fleet.picker, kept[1].fleet.picker);
    let urls = report::urls(&kept);
    let client = reqwest::Client::new();
    for (i, k) in kept.iter().enumerate() {
        let base = format!("http://{}/v1", k.gateway.addr());
        let line = format!("  {:<12} {base}   ", k.policy);
        assert_eq!(
            urls.matches(&format!("  {} ", k.policy)).count(),
            1,
            "{urls}"
        );
        assert!(urls.contains(&line), "{urls}");
        let r: Value = client
            .post(format!("{base}/chat/completions"))
            .json(&json!({"model": DEMO_MODEL, "max_tokens": 2,
                          "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["choices"][0]["message"]["content"], "Hello world", "{r}");
        // Only this policy's fleet served it: the fleets share no engine.
        let served = |j: usize| -> u64 {
            kept[j]
                .fleet
                .emulators
                .iter()
                .map(|e| e.emulator.state().counters.finished)
                .sum()
        };
        assert_eq!(served(i), 1, "policy {}", k.policy);
        if i == 0 {
            assert_eq!(served(1), 0, "the other fleet is untouched");
        }
    }
    for k in kept {
        drop(k.gateway);
        k.fleet.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_demo_reports_each_run_and_the_exact_rate() {
    let config = config(Duration::from_secs(2), 0.5);
    let outcome = demo::run(&config, |_| {}).await.unwrap();
    let expected = 0.5 * demo::capacity_per_pod(&config.workload, 1);
    assert_eq!(outcome.rate, expected);
    let text = report::text(&config, &outcome);
    assert!(text.contains(&format!("→ {expected} requests/s")), "{text}");
    let doc = serde_json::to_value(report::json(&config, &outcome)).unwrap();
    assert_eq!(doc["rate"], json!(expected));
    assert_eq!(doc["results"].as_array().unwrap().len(), 2);
    for run in doc["runs"].as_array().unwrap() {
        let requests = run["requests"].as_u64().unwrap();
        assert!(requests > 0, "{run}");
        // On a loaded machine the picker may refuse a few (its endpoint's report came late).
        let (completed, failed) = (
            run["completed"].as_u64().unwrap(),
            run["failed"].as_u64().unwrap(),
        );
        assert!(completed > 0 && completed + failed == requests, "{run}");
        assert!(run["ttft_ms"]["mean"].as_f64().unwrap() > 0.0, "{run}");
        assert!(run["e2e_ms"]["p90"].as_f64().unwrap() > 0.0, "{run}");
        assert_eq!(
            run["records"].as_array().unwrap().len() as u64,
            requests,
            "{run}"
        );
    }
    assert!(doc["verdict"].as_str().unwrap().starts_with("inferpick "));
    assert!(doc.get("faults").is_none(), "no faults, no fault section");
}

/// The state the picker shows for `address` (`ready`, `not-ready`, …).
async fn picker_state(client: &reqwest::Client, fleet: &Fleet, address: &str) -> String {
    let v: Value = client
        .get(format!("http://{}/v1/endpoints", fleet.picker))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let endpoints = v["endpoints"].as_array().unwrap();
    let e = endpoints.iter().find(|e| e["address"] == address).unwrap();
    e["state"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_pod_refuses_requests_and_the_picker_routes_around_it() {
    let fleet = Fleet::start(
        2,
        &[EngineKind::Vllm],
        &[],
        EngineConfig::default(),
        demo::REPORT_INTERVAL,
        false,
    )
    .await
    .unwrap();
    let addrs: Vec<_> = fleet.emulators.iter().map(|e| e.addr).collect();
    let lost: Fault = "pod-1:lost@0s".parse().unwrap();
    fault::inject(&[lost], &addrs, tokio::time::Instant::now())
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let body = json!({"model": DEMO_MODEL, "prompt": "hello", "max_tokens": 2});
    let r = client
        .post(format!("http://{}/v1/completions", addrs[1]))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "EngineDeadError", "{v}");

    // Within a few reports the picker no longer counts the lost pod as ready…
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let lost_addr = addrs[1].to_string();
    while picker_state(&client, &fleet, &lost_addr).await == "ready" {
        assert!(tokio::time::Instant::now() < deadline, "still ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // …and sends it nothing more: every request goes to the healthy pod and is served.
    fleet.emulators[1].emulator.record_arrivals();
    let gw = DemoGateway::start(GatewayKind::Builtin, &fleet, true)
        .await
        .unwrap();
    for _ in 0..8 {
        let r = client
            .post(format!("http://{}/v1/completions", gw.addr()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-inferpick-endpoint"], addrs[0].to_string());
    }
    assert!(fleet.emulators[1].emulator.arrivals().is_empty());
    drop(gw);
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_with_a_fault_injects_it_in_each_run_and_reports_the_shares() {
    let config = DemoConfig {
        faults: vec!["pod-0:throttle=0.5@1s".parse().unwrap()],
        ..config(Duration::from_secs(2), 0.3)
    };
    let outcome = demo::run(&config, |_| {}).await.unwrap();
    let policies: Vec<&str> = outcome.faults.iter().map(|f| f.policy.as_str()).collect();
    assert_eq!(policies, demo::POLICIES);
    for (run, load) in outcome.faults.iter().zip(&outcome.runs) {
        assert_eq!(run.counts.len(), 2, "one window per second");
        // A loaded machine's picker may refuse a few before they reach the pod.
        let arrived = u64::from(run.counts.iter().flatten().sum::<u32>());
        assert!(
            arrived > 0 && arrived <= load.requests,
            "{arrived} of {}",
            load.requests
        );
        let f = &run.faults[0];
        assert_eq!((f.pod, f.at_s, f.expected_share), (0, 1.0, 1.0));
    }
    let text = report::text(&config, &outcome);
    assert!(
        text.contains("pod-0:throttle=0.5@1s through inferpick: pod-0 should get 100%"),
        "{text}"
    );
    let doc = serde_json::to_value(report::json(&config, &outcome)).unwrap();
    assert_eq!(
        doc["faults"][1]["faults"][0]["fault"],
        "pod-0:throttle=0.5@1s"
    );
}
