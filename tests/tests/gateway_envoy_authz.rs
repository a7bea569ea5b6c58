//! Real Envoy with `deploy/gateways/envoy/envoy-ext-authz-*.yaml` in front of a fleet: ext_authz
//! asks the picker's `/v1/authz` (body included), an ORIGINAL_DST cluster follows the
//! `x-gateway-destination-endpoint` header, refusals reach the client, and the picker going away
//! is handled as the config says.

#[path = "gateways/common.rs"]
mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_ext_authz_fail_open_routes_streams_sheds_and_survives_the_picker() {
    let mut s = setup().await;
    let Some((_envoy, addr)) =
        start_envoy(&s, "gateway_envoy_authz", "envoy-ext-authz", Failure::Open).await
    else {
        return;
    };
    routes_where_the_picker_says(&s, addr).await;
    streams_intact(&s, addr).await;
    survives_the_picker_going_away(&mut s, addr, Failure::Open).await;
    sheds_only_sheddable_work_when_saturated(&s, addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_ext_authz_fail_closed_refuses_while_the_picker_is_down() {
    let mut s = setup().await;
    let Some((_envoy, addr)) = start_envoy(
        &s,
        "gateway_envoy_authz",
        "envoy-ext-authz",
        Failure::Closed,
    )
    .await
    else {
        return;
    };
    survives_the_picker_going_away(&mut s, addr, Failure::Closed).await;
}
