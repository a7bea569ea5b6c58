//! `POST /v1/reports`: one `LoadReport` or an array of them.

use std::net::SocketAddr;

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use http::{HeaderMap, StatusCode};
use inferpick_schema::decode_reports;

use super::{ApiError, MAX_REPORTS_BODY, read_push};
use crate::state::AppState;
use crate::table::{IngestError, IngestOutcome};
use crate::trust::check_origin;

pub(super) async fn reports(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let metrics = state.metrics();
    let sender = peer.as_ref().map(|Extension(ConnectInfo(p))| *p);
    let refused = |result: &'static str| {
        move |e: ApiError| {
            metrics.report_refused(result, sender, &e);
            e
        }
    };
    let bytes = read_push(&state, &headers, body, MAX_REPORTS_BODY, |result, e| {
        refused(result)(e)
    })
    .await?;
    let reports = decode_reports(&bytes)
        .map_err(|e| refused("invalid")(ApiError::InvalidRequest(e.to_string())))?;
    // Served through `serve`, every request carries its TCP peer; a router used without one
    // (embedded elsewhere) cannot tell who sends, so it refuses rather than trusts.
    let Some(Extension(ConnectInfo(peer))) = peer else {
        return Err(refused("forbidden")(ApiError::Forbidden(
            "the sender's address is unknown, so its reports cannot be checked".into(),
        )));
    };
    // Validated before the origin check, so a malformed report is a 400 naming its field
    // (an address that is not host:port included) rather than a 403.
    for (i, r) in reports.iter().enumerate() {
        r.validate().map_err(|source| {
            let e = IngestError::Invalid {
                index: Some(i),
                address: r.endpoint.address.clone(),
                source,
            };
            refused("invalid")(ApiError::InvalidRequest(e.to_string()))
        })?;
    }
    let trusted = &state.settings().trusted_proxies;
    for (i, r) in reports.iter().enumerate() {
        if let Err(e) = check_origin(peer, &r.endpoint.address, trusted) {
            let at = if reports.len() > 1 {
                format!("[{i}].")
            } else {
                String::new()
            };
            return Err(refused("forbidden")(ApiError::Forbidden(format!(
                "{at}{e}"
            ))));
        }
    }
    let outcomes = state
        .table()
        .ingest_batch(reports, state.now())
        .map_err(|e| match e {
            IngestError::TableFull { .. } => {
                refused("table_full")(ApiError::TableFull(e.to_string()))
            }
            IngestError::Invalid { .. } => {
                refused("invalid")(ApiError::InvalidRequest(e.to_string()))
            }
        })?;
    let (mut accepted, mut restarted, mut ignored) = (0, 0, 0);
    for o in outcomes {
        match o {
            IngestOutcome::Added | IngestOutcome::Updated => accepted += 1,
            IngestOutcome::Restarted => restarted += 1,
            IngestOutcome::OutOfOrder | IngestOutcome::Superseded => ignored += 1,
        }
    }
    for (result, n) in [
        ("accepted", accepted),
        ("restarted", restarted),
        ("ignored", ignored),
    ] {
        if n > 0 {
            metrics.reports(result, n);
        }
    }
    Ok(StatusCode::NO_CONTENT)
}
