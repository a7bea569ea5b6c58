//! Faults on command: `POST /lab/degrade`'s validation and effect, `GET /lab/gpus` in each
//! condition, and a lost engine failing as a dead vLLM does.

use futures::StreamExt;
use inferpick_schema::{Gpu, ThrottleReason};
use serde_json::{Value, json};

use super::start;
use crate::emulate::{Degrade, EngineKind};

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

async fn degrade(base: &str, body: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/lab/degrade"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn gpus(base: &str) -> Vec<Gpu> {
    let r = reqwest::get(format!("{base}/lab/gpus")).await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn complete(base: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/completions"))
        .json(&json!({"model": MODEL, "prompt": "hello", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[test]
fn degrade_bodies_are_checked_and_errors_name_the_key() {
    let ok = |b: &str| Degrade::parse(b.as_bytes()).unwrap();
    let err = |b: &str| Degrade::parse(b.as_bytes()).unwrap_err();
    assert_eq!(ok(r#"{"speed": 0.5}"#).speed, Some(0.5));
    assert_eq!(ok(r#"{"speed": 1}"#).speed, Some(1.0));
    assert_eq!(
        ok(r#"{"lost": true, "speed": 1}"#),
        Degrade {
            speed: Some(1.0),
            lost: Some(true)
        }
    );
    for bad in [r#"{"speed": 0}"#, r#"{"speed": -1}"#, r#"{"speed": 1.5}"#] {
        let e = err(bad);
        assert!(e.starts_with("speed = ") && e.contains("at most 1"), "{e}");
    }
    assert!(err(r#"{"speed": "fast"}"#).contains("speed: expected a number"));
    assert!(err(r#"{"lost": "yes"}"#).contains("lost: expected true or false"));
    let unknown = err(r#"{"speed": 0.5, "temperature": 90}"#);
    assert!(
        unknown.starts_with("unknown key \"temperature\""),
        "{unknown}"
    );
    assert!(err("{}").contains("nothing to change"));
    assert!(err("[0.5]").contains("expected a JSON object"));
    assert!(err("speed=0.5").contains("not JSON"));
}

#[tokio::test]
async fn a_throttle_slows_the_engine_and_shows_in_the_gpu_state() {
    let s = start(EngineKind::Vllm).await;
    let healthy = gpus(&s.base).await;
    assert_eq!(healthy.len(), 1);
    let gpu = &healthy[0];
    assert!(
        gpu.uuid.starts_with("GPU-") && gpu.uuid.len() == 40,
        "{}",
        gpu.uuid
    );
    assert_eq!(gpu.name.as_deref(), Some("NVIDIA H100 80GB HBM3"));
    let health = gpu.health.as_ref().unwrap();
    assert!(health.throttle.is_empty() && !health.lost);
    assert_eq!(
        (health.sm_clock_mhz, health.sm_clock_max_mhz),
        (Some(1980), Some(1980))
    );
    assert_eq!(health.speed(), 1.0);

    let (status, body) = degrade(&s.base, r#"{"speed": 0.5}"#).await;
    assert_eq!(
        (status, &body),
        (200, &json!({"speed": 0.5, "lost": false}))
    );
    assert_eq!(s.emulator().lock().engine.speed(), 0.5);
    let throttled = gpus(&s.base).await;
    let health = throttled[0].health.as_ref().unwrap();
    assert_eq!(health.throttle, vec![ThrottleReason::HwThermal]);
    assert_eq!(health.sm_clock_mhz, Some(990));
    assert_eq!(health.speed(), 0.5, "the picker reads the throttle back");
    assert_eq!(throttled[0].uuid, gpu.uuid, "the same GPU");

    let (status, body) = degrade(&s.base, r#"{"speed": 2}"#).await;
    assert_eq!(status, 400);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("POST /lab/degrade: speed = 2"),
        "{message}"
    );
    assert_eq!(
        s.emulator().lock().engine.speed(),
        0.5,
        "a refused change changes nothing"
    );

    assert_eq!(degrade(&s.base, r#"{"speed": 1}"#).await.0, 200);
    assert_eq!(s.emulator().lock().engine.speed(), 1.0);
    assert!(
        gpus(&s.base).await[0]
            .health
            .as_ref()
            .unwrap()
            .throttle
            .is_empty()
    );
    let other = start(EngineKind::Vllm).await;
    assert_ne!(gpus(&other.base).await[0].uuid, gpu.uuid, "one GPU per pod");
}

#[tokio::test]
async fn a_lost_gpu_fails_requests_in_flight_and_new_ones_until_it_recovers() {
    let s = start(EngineKind::Vllm).await;
    s.emulator().record_arrivals();
    let client = reqwest::Client::new();
    // A stream long enough to be in flight when the GPU goes.
    let resp = client
        .post(format!("{}/v1/completions", s.base))
        .json(&json!({"model": MODEL, "prompt": "hi", "max_tokens": 100_000, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "), "a token came out first");

    let (status, body) = degrade(&s.base, r#"{"lost": true}"#).await;
    assert_eq!((status, &body), (200, &json!({"speed": 1.0, "lost": true})));
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("\"type\":\"EngineDeadError\""), "{rest}");
    assert!(
        !rest.contains("[DONE]"),
        "the stream does not end well: {rest}"
    );
    // The step in flight when the GPU went ends, and the engine drops everything with it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while s.emulator().state().running > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the engine still runs a request"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    let (status, body) = complete(&s.base).await;
    assert_eq!(status, 500);
    assert_eq!(body["error"]["type"], "EngineDeadError");
    let health = reqwest::get(format!("{}/health", s.base)).await.unwrap();
    assert_eq!(health.status(), 503);
    let metrics = reqwest::get(format!("{}/metrics", s.base)).await.unwrap();
    assert_eq!(
        metrics.status(),
        500,
        "a dead vLLM's server exits: no metrics"
    );
    let lost = gpus(&s.base).await;
    let health = lost[0].health.as_ref().unwrap();
    assert!(health.lost && health.fatal().unwrap().contains("GPU lost"));
    assert_eq!(lost[0].memory_total_bytes, None, "NVML reads nothing else");
    assert_eq!(
        s.emulator().arrivals().len(),
        2,
        "the refused request arrived too"
    );

    assert_eq!(degrade(&s.base, r#"{"lost": false}"#).await.0, 200);
    let (status, body) = complete(&s.base).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["text"], "Hello world");
    assert!(!gpus(&s.base).await[0].health.as_ref().unwrap().lost);
}
