//! The built-in gateway in front of a real fleet (emulators, agents, picker) on loopback.

use std::time::Duration;

use inferpick_lab::demo::Fleet;
use inferpick_lab::demo::gateway::{self, Gateway, Route};
use inferpick_lab::engine::EngineConfig;
use inferpick_schema::EngineKind;
use serde_json::{Value, json};

fn fast_engine() -> EngineConfig {
    EngineConfig {
        step_base: Duration::from_millis(2),
        ..EngineConfig::default()
    }
}

async fn complete(
    client: &reqwest::Client,
    gw: std::net::SocketAddr,
    model: &str,
) -> reqwest::Response {
    client
        .post(format!("http://{gw}/v1/completions"))
        .json(&json!({"model": model, "prompt": "hello there", "max_tokens": 3, "stream": true}))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_takes_each_endpoint_in_turn() {
    let fleet = Fleet::start(
        2,
        &[EngineKind::Vllm],
        &[],
        fast_engine(),
        Duration::from_millis(100),
        false,
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = gateway::spawn(Gateway::new(Route::RoundRobin(fleet.endpoints())), listener).unwrap();
    let client = reqwest::Client::new();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = complete(&client, gw.addr, "meta-llama/Llama-3.1-8B-Instruct").await;
        assert_eq!(r.status(), 200);
        seen.push(
            r.headers()["x-inferpick-endpoint"]
                .to_str()
                .unwrap()
                .to_string(),
        );
        assert!(r.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    }
    let eps = fleet.endpoints();
    assert_eq!(
        seen,
        [
            eps[0].clone(),
            eps[1].clone(),
            eps[0].clone(),
            eps[1].clone()
        ]
    );
    drop(gw);
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_picker_gateway_routes_streams_and_passes_picker_errors_on_in_openai_shape() {
    let fleet = Fleet::start(
        2,
        &[EngineKind::Vllm],
        &["sql-lora".to_string()],
        fast_engine(),
        Duration::from_millis(100),
        false,
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = gateway::spawn(
        Gateway::new(Route::Picker(format!("http://{}", fleet.picker))),
        listener,
    )
    .unwrap();
    let client = reqwest::Client::new();
    let r = complete(&client, gw.addr, "sql-lora").await;
    assert_eq!(r.status(), 200);
    let endpoint = r.headers()["x-inferpick-endpoint"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(fleet.endpoints().contains(&endpoint), "{endpoint}");
    let text = r.text().await.unwrap();
    assert_eq!(text.matches("\"text\":\" world\"").count(), 2, "{text}");

    let r = complete(&client, gw.addr, "no-such-model").await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unknown_model", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no-such-model")),
        "{body}"
    );

    // Both answers came from the picker's decisions.
    let metrics = client
        .get(format!("http://{}/metrics", fleet.picker))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |outcome: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("inferpick_picker_decisions_total{"))
            .filter(|l| l.contains(&format!("outcome=\"{outcome}\"")))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum()
    };
    assert_eq!(count("routed"), 1.0, "{metrics}");
    assert_eq!(count("unknown_model"), 1.0, "{metrics}");
    drop(gw);
    fleet.shutdown().await;
}
