//! Real Envoy with `deploy/gateways/envoy/envoy-ext-proc-*.yaml` in front of a fleet: the Gateway
//! API Inference Extension's endpoint-picker protocol over ext_proc, in its streaming mode
//! (`FULL_DUPLEX_STREAMED`, as GIE gateways configure it; the fail-closed config) and in
//! `BUFFERED` mode (the fail-open config: Envoy can only fail open while it holds the body). Requests reach
//! the endpoint the picker chose, streams pass through intact, saturation sheds priority −1 with
//! an immediate 429, and the picker going away is handled as the config says.

#[path = "gateways/common.rs"]
mod common;

use common::*;

/// The fail-closed config is the protocol's streaming mode (FULL_DUPLEX_STREAMED both ways).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_ext_proc_full_duplex_routes_streams_closes_sheds_and_fails_closed() {
    let mut s = setup().await;
    let Some((_envoy, addr)) = start_envoy(
        &s,
        "gateway_envoy_extproc",
        "envoy-ext-proc",
        Failure::Closed,
    )
    .await
    else {
        return;
    };
    routes_where_the_picker_says(&s, addr).await;
    streams_intact(&s, addr).await;
    in_flight_closes_when_streams_end(&s, addr, "extproc").await;
    sheds_only_sheddable_work_when_saturated(&s, addr).await;
    survives_the_picker_going_away(&mut s, addr, Failure::Closed).await;
}

/// The fail-open config is the protocol's BUFFERED mode (responses STREAMED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_ext_proc_buffered_routes_streams_closes_and_fails_open() {
    let mut s = setup().await;
    let Some((_envoy, addr)) =
        start_envoy(&s, "gateway_envoy_extproc", "envoy-ext-proc", Failure::Open).await
    else {
        return;
    };
    routes_where_the_picker_says(&s, addr).await;
    streams_intact(&s, addr).await;
    in_flight_closes_when_streams_end(&s, addr, "extproc").await;
    survives_the_picker_going_away(&mut s, addr, Failure::Open).await;
}
