//! Real nginx with `deploy/gateways/nginx/` in front of a fleet: `auth_request` asks the picker,
//! `proxy_pass` follows its choice, refusals reach the client as OpenAI errors, and the picker
//! going away is handled as the config says (fail open or closed).

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

const TEST: &str = "gateway_nginx";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_fail_open_routes_streams_sheds_and_survives_the_picker() {
    let mut s = setup().await;
    let Some((_nginx, addr)) = start_nginx(&s, TEST, Asks::AuthRequest, Failure::Open).await else {
        return;
    };
    routes_where_the_picker_says(&s, addr).await;
    streams_intact(&s, addr).await;
    in_flight_closes_when_streams_end(&s, addr, "http").await;
    unknown_model_is_an_openai_error(&s, addr).await;
    survives_the_picker_going_away(&mut s, addr, Failure::Open).await;
    let shed = openai_error_body(&sheds_only_sheddable_work_when_saturated(&s, addr).await);
    assert_eq!(shed["type"], "rate_limit_error", "{shed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_fail_closed_refuses_as_openai_while_the_picker_is_down() {
    let mut s = setup().await;
    let Some((_nginx, addr)) = start_nginx(&s, TEST, Asks::AuthRequest, Failure::Closed).await
    else {
        return;
    };
    picker_down_is_an_openai_503(&mut s, addr).await;
    survives_the_picker_going_away(&mut s, addr, Failure::Closed).await;
}

/// A model no pod serves, named in x-gateway-model-name: 404 as an OpenAI error carrying the
/// picker's message, which names the model.
async fn unknown_model_is_an_openai_error(s: &Setup, gateway: SocketAddr) {
    let resp = s
        .http
        .post(format!("http://{gateway}/v1/completions"))
        .header("x-gateway-model-name", "no-such-model")
        .json(&serde_json::json!({"model": "no-such-model", "prompt": "hi", "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let error = openai_error(resp).await;
    assert_unknown_model(&error, "no-such-model");
}
