//! `GET /v1/endpoints`: the table as JSON.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::state::AppState;

pub(super) async fn endpoints(State(state): State<AppState>) -> Json<Value> {
    let now = state.now();
    let snap = state.table().snapshot();
    let mut list: Vec<_> = snap.iter().collect();
    list.sort_by(|a, b| a.address.cmp(&b.address));
    let endpoints: Vec<Value> = list
        .into_iter()
        .map(|e| {
            let kv = state.table().kv_stream(e, now);
            json!({
                "address": &*e.address,
                "pod": e.report.endpoint.pod,
                "state": e.state(now, snap.max_report_age).as_str(),
                "age_ms": e.age(now).as_secs_f64() * 1e3,
                "inflight": e.inflight(),
                "routed_total": e.routed_total(),
                // Its own prefill estimate (tokens/s at full clock), `null` until it has queued.
                "peak_prompt_tokens_per_second": e.learned.prefill,
                // Why it is `gpu_failed`: which GPU and what.
                "gpu_failure": e.gpu_failure.as_deref(),
                "hardware": {
                    "label": e.hardware.label,
                    "compute": e.hardware.compute,
                    "bandwidth": e.hardware.bandwidth,
                },
                // What picks read: the rate, where it comes from, the throttle, the decode scale.
                "capacity": {
                    "prefill_tokens_per_second": e.capacity.prefill_tokens_per_second,
                    "prefill_source": e.capacity.prefill_source,
                    "prior_scale": e.capacity.prior_scale,
                    "decode_scale": e.capacity.decode_scale,
                    "speed": e.capacity.speed,
                    "decode_seconds_per_step": e.learned.decode.seconds_per_step(),
                    "decode_seconds_per_sequence": e.learned.decode.seconds_per_sequence(),
                },
                // Which prefix index picks use for it: `exact` while its KV-event stream is live,
                // else `approximate` (and `kv_events` says why).
                "prefix_index": match &kv {
                    Some(s) if s.routing => "exact",
                    _ => "approximate",
                },
                "kv_events": kv,
                "report": &*e.report,
            })
        })
        .collect();
    Json(json!({
        "max_report_age_ms": snap.max_report_age.as_secs_f64() * 1e3,
        "policy": state.scheduler().policy().as_str(),
        "endpoints": endpoints,
    }))
}
