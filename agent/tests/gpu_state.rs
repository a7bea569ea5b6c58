//! `--gpu-state-url` and `--tensor-parallel-size` through the running agent: the GPUs a state
//! server describes reach the report and `/metrics` at the next interval, a GPU going bad is
//! reported as such, and an answer that breaks the schema reports no GPUs rather than stopping
//! the agent.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use common::*;

/// A GPU state server whose answer the test swaps; it accepts connections once this returns.
async fn gpu_state_server(answer: Arc<Mutex<String>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route(
        "/lab/gpus",
        get(move || {
            let body = answer.lock().unwrap().clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/lab/gpus")
}

fn gpu(health: &str) -> String {
    format!(
        r#"[{{"uuid": "GPU-emulated-0", "index": 0, "name": "NVIDIA H100 80GB HBM3",
             "memory_used_bytes": 10, "memory_total_bytes": 80, "health": {health}}}]"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpus_from_a_state_url_reach_the_report_and_the_metrics() {
    let engine = FakeEngine::start(Behavior::Serve(fixture("vllm-0.8.prom"))).await;
    let answer = Arc::new(Mutex::new(gpu(
        r#"{"sm_clock_mhz": 1980, "sm_clock_max_mhz": 1980}"#,
    )));
    let url = gpu_state_server(answer.clone()).await;
    let agent = Agent::start(
        &engine.url(),
        &[
            "--interval",
            "20ms",
            "--gpu-state-url",
            &url,
            "--tensor-parallel-size",
            "2",
        ],
    )
    .await;
    let within = Duration::from_secs(10);

    let healthy = agent
        .wait_for_report(within, "the served GPU", |r| r.gpus.len() == 1)
        .await;
    assert_eq!(healthy.engine.tensor_parallel_size, Some(2));
    assert_eq!(healthy.gpus[0].uuid, "GPU-emulated-0");
    assert_eq!(healthy.gpus[0].health.as_ref().unwrap().fatal(), None);

    // The emulator throttles the GPU to half its clock.
    *answer.lock().unwrap() =
        gpu(r#"{"throttle": ["hw-slowdown"], "sm_clock_mhz": 990, "sm_clock_max_mhz": 1980}"#);
    let throttled = agent
        .wait_for_report(within, "a throttled GPU", |r| {
            r.gpus
                .first()
                .and_then(|g| g.health.as_ref())
                .is_some_and(|h| !h.throttle.is_empty())
        })
        .await;
    assert_eq!(throttled.gpus[0].health.as_ref().unwrap().speed(), 0.5);
    let metrics = reqwest::get(format!("http://{}/metrics", agent.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "inferpick_gpu_sm_clock_ratio{endpoint=\"10.0.0.1:8000\",gpu=\"0\",uuid=\"GPU-emulated-0\"} 0.5",
        "inferpick_gpu_throttle_active{endpoint=\"10.0.0.1:8000\",gpu=\"0\",uuid=\"GPU-emulated-0\",reason=\"hw-slowdown\"} 1.0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }

    // Then it is lost.
    *answer.lock().unwrap() = gpu(r#"{"lost": true}"#);
    let lost = agent
        .wait_for_report(within, "a lost GPU", |r| {
            r.gpus
                .first()
                .and_then(|g| g.health.as_ref())
                .is_some_and(|h| h.lost)
        })
        .await;
    assert!(
        lost.gpus[0]
            .health
            .as_ref()
            .unwrap()
            .fatal()
            .unwrap()
            .contains("GPU lost")
    );

    // An answer that breaks the schema: no GPUs, and the agent goes on reporting.
    *answer.lock().unwrap() = r#"[{"uuid": "GPU-x", "utilization_percent": 250}]"#.into();
    let without = agent
        .wait_for_report(within, "no GPUs", |r| r.gpus.is_empty())
        .await;
    assert!(without.engine.ready);
    *answer.lock().unwrap() = gpu("{}");
    agent
        .wait_for_report(within, "the GPU again", |r| r.gpus.len() == 1)
        .await;
    agent.stop().await;
}
