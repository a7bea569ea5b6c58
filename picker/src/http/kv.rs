//! `POST /v1/kv-events`: one endpoint's KV-cache changes, relayed by its agent from the engine's
//! KV events, for the token-exact prefix index. Authorized and origin-checked like a report.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::{Extension, Json};
use http::{HeaderMap, StatusCode};
use inferpick_schema::{KvAck, KvEvents, decode_json};

use super::{ApiError, MAX_KV_EVENTS_BODY, read_push};
use crate::state::AppState;
use crate::trust::check_origin;

/// Answers `200` with the ack when applied, `409` with it when the agent must send a reset.
pub(super) async fn kv_events(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<KvAck>), ApiError> {
    let metrics = state.metrics();
    let sender = peer.as_ref().map(|Extension(ConnectInfo(p))| *p);
    let refused = |result: &'static str| {
        move |e: ApiError| {
            metrics.kv_refused(result, sender, &e);
            e
        }
    };
    let bytes = read_push(&state, &headers, body, MAX_KV_EVENTS_BODY, |result, e| {
        refused(result)(e)
    })
    .await?;
    let msg: KvEvents = decode_json(&bytes)
        .map_err(|e| refused("invalid")(ApiError::InvalidRequest(e.to_string())))?;
    msg.validate().map_err(|e| {
        refused("invalid")(ApiError::InvalidRequest(format!(
            "{e} (KV events for {})",
            msg.endpoint
        )))
    })?;
    let Some(Extension(ConnectInfo(peer))) = peer else {
        return Err(refused("forbidden")(ApiError::Forbidden(
            "the sender's address is unknown, so its KV events cannot be checked".into(),
        )));
    };
    check_origin(peer, &msg.endpoint, &state.settings().trusted_proxies)
        .map_err(|e| refused("forbidden")(ApiError::Forbidden(e.to_string())))?;
    let outcome = state
        .table()
        .ingest_kv(msg, state.now())
        .map_err(|e| refused("invalid")(ApiError::InvalidRequest(e.to_string())))?;
    metrics.kv_applied(&outcome);
    let status = if outcome.refused {
        StatusCode::CONFLICT
    } else {
        StatusCode::OK
    };
    Ok((status, Json(outcome.ack)))
}
