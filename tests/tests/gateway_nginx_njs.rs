//! Real nginx with its JavaScript module (`deploy/gateways/nginx/nginx-njs-*.conf`, `inferpick.js`)
//! in front of a fleet: the picker sees each request's body, so requests sharing a long prompt
//! prefix stay on one pod and an adapter named only in `model` reaches the pod serving it, as
//! behind Envoy. Refusals reach the client as OpenAI errors with the picker's message, decisions
//! are closed, and the picker going away is handled as the config says.

#[path = "gateways/common.rs"]
mod common;
#[path = "gateways/nginx.rs"]
mod nginx;

use std::net::SocketAddr;

use common::*;
use nginx::{
    Asks, assert_unknown_model, openai_error, openai_error_body, picker_down_is_an_openai_503,
    start_nginx,
};
use serde_json::json;

const TEST: &str = "gateway_nginx_njs";
/// A LoRA adapter of [`MODEL`] that only pod [`ADAPTER_POD`] serves.
const ADAPTER: &str = "sql-lora";
const ADAPTER_POD: usize = 2;

/// The gateway fleet, with pod [`ADAPTER_POD`] also serving [`ADAPTER`].
async fn setup_with_adapter() -> Setup {
    let mut adapters = vec![Vec::new(); ADAPTER_POD + 1];
    adapters[ADAPTER_POD] = vec![ADAPTER.to_string()];
    setup_with_adapters(&adapters).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn njs_fail_open_routes_on_the_body_closes_sheds_and_survives_the_picker() {
    let mut s = setup_with_adapter().await;
    let Some((_nginx, addr)) = start_nginx(&s, TEST, Asks::Njs, Failure::Open).await else {
        return;
    };
    routes_where_the_picker_says(&s, addr).await;
    streams_intact(&s, addr).await;
    in_flight_closes_when_streams_end(&s, addr, "http").await;
    shared_prefixes_stay_on_one_pod(&s, addr).await;
    adapters_named_in_the_body_reach_their_pod(&s, addr).await;
    unknown_model_is_an_openai_error_with_the_pickers_message(&s, addr).await;
    survives_the_picker_going_away(&mut s, addr, Failure::Open).await;
    let shed = openai_error_body(&sheds_only_sheddable_work_when_saturated(&s, addr).await);
    assert_eq!(shed["type"], "rate_limit_error", "{shed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn njs_fail_closed_refuses_as_openai_while_the_picker_is_down() {
    let mut s = setup().await;
    let Some((_nginx, addr)) = start_nginx(&s, TEST, Asks::Njs, Failure::Closed).await else {
        return;
    };
    picker_down_is_an_openai_503(&mut s, addr).await;
    survives_the_picker_going_away(&mut s, addr, Failure::Closed).await;
}

/// Completions requests per emulator so far.
fn finished(s: &Setup) -> Vec<u64> {
    s.fleet
        .engines
        .iter()
        .map(|e| e.emulator.state().counters.finished)
        .collect()
}

/// POSTs `body` to `/v1/completions` through the gateway, with no gateway header: whatever the
/// picker learns, it learns from the body.
async fn post(s: &Setup, gateway: SocketAddr, body: &serde_json::Value) -> reqwest::Response {
    s.http
        .post(format!("http://{gateway}/v1/completions"))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Sends one completion and returns the emulator that served it.
async fn served_by(s: &Setup, gateway: SocketAddr, body: serde_json::Value) -> usize {
    let before = finished(s);
    let resp = post(s, gateway, &body).await;
    let status = resp.status();
    assert_eq!(status, 200, "{}", resp.text().await.unwrap());
    let after = finished(s);
    let served: Vec<usize> = (0..after.len()).filter(|&i| after[i] > before[i]).collect();
    assert_eq!(served.len(), 1, "one request, served by {served:?}");
    served[0]
}

/// Three long prompts (about 2,000 tokens each), each asked five times with a different question:
/// every group's requests land on the pod that served its first.
async fn shared_prefixes_stay_on_one_pod(s: &Setup, gateway: SocketAddr) {
    for group in 0..3 {
        let prefix: String = (0..1000)
            .map(|i| format!("policy{group} clause{i} "))
            .collect();
        let mut pods = Vec::new();
        for question in 0..5 {
            let prompt = format!("{prefix}\nQuestion {question}: what does clause {question} say?");
            let body = json!({"model": MODEL, "prompt": prompt, "max_tokens": 2});
            pods.push(served_by(s, gateway, body).await);
        }
        assert!(
            pods.iter().all(|p| *p == pods[0]),
            "prefix group {group} was spread over pods {pods:?}"
        );
    }
}

/// An adapter named only in the body's `model` reaches the one pod serving it, chat and
/// completions alike.
async fn adapters_named_in_the_body_reach_their_pod(s: &Setup, gateway: SocketAddr) {
    for i in 0..4 {
        let body = json!({"model": ADAPTER, "prompt": format!("SELECT {i}"), "max_tokens": 2});
        assert_eq!(served_by(s, gateway, body).await, ADAPTER_POD);
    }
    let before = finished(s);
    let resp = s
        .http
        .post(format!("http://{gateway}/v1/chat/completions"))
        .json(&json!({"model": ADAPTER, "max_tokens": 2,
                      "messages": [{"role": "user", "content": [{"type": "text", "text": "SELECT 1"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    assert_eq!(finished(s)[ADAPTER_POD], before[ADAPTER_POD] + 1);
}

/// A model no pod serves, named only in the body: 404, an OpenAI error carrying the picker's
/// message (which names the model).
async fn unknown_model_is_an_openai_error_with_the_pickers_message(s: &Setup, gateway: SocketAddr) {
    let before = finished(s);
    let resp = post(
        s,
        gateway,
        &json!({"model": "no-such-model", "prompt": "hi"}),
    )
    .await;
    assert_eq!(resp.status(), 404);
    let error = openai_error(resp).await;
    assert_unknown_model(&error, "no-such-model");
    assert_eq!(
        finished(s),
        before,
        "a refused request reached a model server"
    );
}
