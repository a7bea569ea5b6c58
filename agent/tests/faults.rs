//! The engine failing in every way the agent must survive: each turns into a report that says
//! `ready: false` with a clear error, the agent keeps its schedule, and it recovers.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use inferpick_schema::{Gpu, testing};

const VLLM: &str = "vllm:num_requests_waiting{model_name=\"m\"} 4\nvllm:kv_cache_usage_perc{model_name=\"m\"} 0.25\n";

async fn expect_not_ready(agent: &Agent, says: &str) {
    let r = agent
        .wait_for_report(Duration::from_secs(10), says, |r| {
            !r.engine.ready && r.engine.error.as_deref().is_some_and(|e| e.contains(says))
        })
        .await;
    assert_eq!(
        r.load,
        inferpick_schema::Load::default(),
        "a failed scrape reports no load"
    );
}

#[tokio::test]
async fn engine_unreachable() {
    let agent = Agent::start("http://127.0.0.1:1/metrics", &["--interval", "50ms"]).await;
    expect_not_ready(&agent, "cannot reach http://127.0.0.1:1/metrics").await;
    let resp = reqwest::get(format!("http://{}/readyz", agent.addr))
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let resp = reqwest::get(format!("http://{}/healthz", agent.addr))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    agent.stop().await;
}

#[tokio::test]
async fn engine_hanging_times_out_and_the_agent_keeps_its_schedule() {
    let engine = FakeEngine::start(Behavior::Hang).await;
    let agent = Agent::start(&engine.url(), &["--interval", "100ms"]).await;
    expect_not_ready(&agent, "did not answer within 80ms").await;
    let t0 = Instant::now();
    let first = agent.report().await.unwrap().seq;
    agent
        .wait_for_report(Duration::from_secs(10), "5 more reports", |r| {
            r.seq >= first + 5
        })
        .await;
    // Five 100 ms periods; a scrape that blocked on the engine would take 10 s.
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "reports fell behind: {:?}",
        t0.elapsed()
    );
    agent.stop().await;
}

#[tokio::test]
async fn engine_errors_garbage_and_oversize_bodies_are_named_then_recovered_from() {
    let engine = FakeEngine::start(Behavior::Serve(VLLM.into())).await;
    let agent = Agent::start(&engine.url(), &["--interval", "50ms"]).await;
    let ready = agent
        .wait_for_report(Duration::from_secs(10), "ready", |r| r.engine.ready)
        .await;
    assert_eq!(ready.load.requests_waiting, Some(4));
    assert_eq!(
        ready.models[0].name, "served-model",
        "models come from /v1/models"
    );
    let resp = reqwest::get(format!("http://{}/readyz", agent.addr))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    engine.set(Behavior::Status(500, "engine exploded"));
    expect_not_ready(&agent, "answered HTTP 500").await;
    engine.set(Behavior::Status(501, "{\"error\":{\"code\":501,\"message\":\"This server does not support metrics endpoint. Start it with `--metrics`\"}}"));
    expect_not_ready(&agent, "started with --metrics").await;
    engine.set(Behavior::Serve("<html>502 Bad Gateway</html>".into()));
    expect_not_ready(&agent, "not a Prometheus exposition: line 1").await;
    engine.set(Behavior::Serve("go_goroutines 7\n".into()));
    expect_not_ready(&agent, "no known engine's metrics").await;
    engine.set(Behavior::Huge(9 << 20));
    expect_not_ready(&agent, "more than 8388608 bytes").await;

    engine.set(Behavior::Serve(VLLM.into()));
    let back = agent
        .wait_for_report(Duration::from_secs(10), "ready again", |r| r.engine.ready)
        .await;
    assert_eq!(back.load.kv_cache_utilization, Some(0.25));

    let metrics = reqwest::get(format!("http://{}/metrics", agent.addr))
        .await
        .unwrap();
    assert_eq!(
        metrics.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = metrics.text().await.unwrap();
    for result in [
        "ok",
        "http_error",
        "parse_error",
        "unrecognized",
        "too_large",
    ] {
        assert!(
            text.contains(&format!(
                "inferpick_agent_scrapes_total{{result=\"{result}\"}}"
            )),
            "no {result} scrapes counted:\n{text}"
        );
    }
    agent.stop().await;
}

#[tokio::test]
async fn models_listed_after_a_loading_503_reach_the_report_at_the_next_scrape() {
    let engine = FakeEngine::start(Behavior::Serve(VLLM.into())).await;
    engine.models_loading_for(1);
    let t0 = Instant::now();
    let agent = Agent::start(&engine.url(), &["--interval", "100ms"]).await;
    // The first read is refused; the names must not wait for the next regular listing, 5 s on.
    agent
        .wait_for_report(
            Duration::from_secs(2),
            "the model /v1/models lists once loaded",
            |r| r.models.iter().any(|m| m.name == "served-model"),
        )
        .await;
    eprintln!(
        "served-model listed {:?} after the agent started, after {} reads of /v1/models",
        t0.elapsed(),
        engine.models_reads()
    );
    assert!(engine.models_reads() >= 2);
    agent.stop().await;
}

struct FakeGpus;

impl inferpick_agent::gpu::GpuSource for FakeGpus {
    fn read(&self) -> Vec<Gpu> {
        vec![testing::gpu(0)]
    }
}

#[tokio::test]
async fn gpus_from_the_source_reach_the_report_and_metrics() {
    let engine = FakeEngine::start(Behavior::Serve(VLLM.into())).await;
    let agent = Agent::start_with_gpus(
        &engine.url(),
        &["--interval", "50ms"],
        Some(Arc::new(FakeGpus)),
    )
    .await;
    let r = agent
        .wait_for_report(Duration::from_secs(10), "a GPU", |r| !r.gpus.is_empty())
        .await;
    assert_eq!(r.gpus, vec![testing::gpu(0)]);
    let text = reqwest::get(format!("http://{}/metrics", agent.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!(
        "inferpick_gpu_utilization_ratio{{endpoint=\"10.0.0.1:8000\",gpu=\"0\",uuid=\"{}\"}} 0.87",
        testing::gpu(0).uuid
    );
    assert!(text.contains(&series), "no {series} in\n{text}");
    agent.stop().await;
}
