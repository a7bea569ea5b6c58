//! Pushing the mirror's changes to every picker: `POST /v1/kv-events`, one ordered stream of
//! [`KvEvents`] per picker target.
//!
//! Each target has its own task, cursor into the change log and `seq`. Its first message, and the
//! first after the picker asked for a resync (`resync: true`, a `next_seq` other than the one
//! expected, or `409`) or after a failed push (the picker may or may not have applied it), is a
//! reset carrying the whole mirror. A message goes at least once per report interval (an empty one
//! says the stream's state), and at once when [`SEND_SOON`] changes are waiting. Targets, clients
//! and backoff are the reports' ([`crate::push`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use inferpick_schema::kv::{KvAck, KvEvents, KvLimits};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::metrics::PushLabels;
use super::mirror::{Cursor, KvState};
use crate::engine::error_chain;
use crate::metrics::AgentMetrics;
use crate::push::{self, Backoff, Clients, StartTarget, Target, TargetSpec, TokenFile};

/// The path KV events are POSTed to, beside the reports' on the same picker.
pub const KV_EVENTS_PATH: &str = "/v1/kv-events";
/// Pending changes that send a message before the interval is up.
pub const SEND_SOON: usize = KvLimits::MAX_KEYS / 4;
/// Most messages one wake-up sends (a large reset spans several); the rest follow at the next.
pub const MAX_BURST: usize = 64;

/// What every target's task shares.
pub struct Context {
    /// The mirror.
    pub state: Arc<Mutex<KvState>>,
    /// The agent's metrics.
    pub metrics: Arc<AgentMetrics>,
    /// Bumped when the mirror changes.
    pub changed: watch::Receiver<u64>,
    /// This endpoint's address, as in its reports.
    pub endpoint: String,
    /// This agent start's stream id.
    pub stream: String,
    /// Bearer token for pushes.
    pub token: Option<Arc<TokenFile>>,
    /// The report interval.
    pub interval: Duration,
}

/// Starts one push task per picker target (and per address of a `dns+` name).
pub fn spawn(
    specs: &[TargetSpec],
    clients: Clients,
    context: Arc<Context>,
) -> Result<Vec<JoinHandle<()>>, reqwest::Error> {
    let specs: Vec<TargetSpec> = specs.iter().map(|s| s.with_path(KV_EVENTS_PATH)).collect();
    let start: StartTarget = Arc::new(move |target| tokio::spawn(run(target, context.clone())));
    push::spawn_targets(&specs, clients, start, || Box::pin(std::future::pending()))
}

/// Why a push did not land.
enum Failure {
    /// `409`: the picker does not follow this stream's order; it needs a reset.
    Conflict,
    /// Anything else.
    Other(String),
}

async fn run(target: Target, cx: Arc<Context>) {
    let mut cursor = Cursor::default();
    let mut seq = 0u64;
    let mut backoff = Backoff::new(cx.interval);
    let mut tick = tokio::time::interval(cx.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut changed = cx.changed.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = changed.changed() => {
                if r.is_err() {
                    return;
                }
                let pending = cx.state.lock().expect("kv state lock").pending(&cursor);
                if pending < SEND_SOON {
                    continue;
                }
            }
        }
        if !backoff.ready() {
            continue;
        }
        for _ in 0..MAX_BURST {
            let draft = {
                let state = cx.state.lock().expect("kv state lock");
                state.next_message(&mut cursor, &cx.metrics.kv)
            };
            let Some(draft) = draft else {
                break;
            };
            seq += 1;
            let message = KvEvents {
                schema_version: inferpick_schema::SCHEMA_VERSION,
                endpoint: cx.endpoint.clone(),
                stream: cx.stream.clone(),
                seq,
                state: draft.state,
                block_size: draft.block_size,
                reset: draft.reset,
                cleared: draft.cleared,
                groups: draft.groups,
            };
            let body = Bytes::from(serde_json::to_vec(&message).expect("a message serializes"));
            let token = cx.token.as_ref().and_then(|t| t.current());
            let result = post(&target, body, token).await;
            let outcome = match &result {
                Ok(ack) if ack.resync || ack.next_seq != seq + 1 => "resync",
                Ok(_) => "ok",
                Err(Failure::Conflict) => "conflict",
                Err(Failure::Other(_)) => "error",
            };
            cx.metrics
                .kv
                .pushes
                .get_or_create(&PushLabels {
                    target: target.label.clone(),
                    result: outcome,
                })
                .inc();
            match result {
                Ok(ack) => {
                    let after = backoff.succeeded();
                    if after > 0 {
                        tracing::info!(target = %target.label, after, "KV-event push works again");
                    }
                    if outcome == "resync" {
                        tracing::info!(target = %target.label, seq, next_seq = ack.next_seq, "picker asked for a KV resync; sending a reset");
                        cursor.force_reset();
                    }
                }
                Err(Failure::Conflict) => {
                    tracing::info!(target = %target.label, seq, "picker answered 409 to KV events; sending a reset");
                    cursor.force_reset();
                }
                Err(Failure::Other(e)) => {
                    // Whether the picker applied it is unknown: start it over.
                    cursor.force_reset();
                    let (failures, wait, log) = backoff.failed();
                    if log {
                        tracing::warn!(target = %target.label, failures, backoff = ?wait, "KV-event push failed: {e}");
                    }
                    break;
                }
            }
            let more = cx.state.lock().expect("kv state lock").has_more(&cursor);
            if !more {
                break;
            }
        }
    }
}

async fn post(target: &Target, body: Bytes, token: Option<Arc<str>>) -> Result<KvAck, Failure> {
    let started = Instant::now();
    let mut req = target
        .client
        .post(target.url.clone())
        .header("content-type", "application/json")
        .body(body);
    if let Some(token) = &token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.map_err(|e| {
        Failure::Other(if e.is_timeout() {
            format!("timed out after {:?}", started.elapsed())
        } else {
            error_chain(&e)
        })
    })?;
    let status = resp.status();
    if status == reqwest::StatusCode::CONFLICT {
        return Err(Failure::Conflict);
    }
    let text = resp
        .bytes()
        .await
        .map_err(|e| Failure::Other(error_chain(&e)))?;
    if !status.is_success() {
        return Err(Failure::Other(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&text[..text.len().min(200)])
        )));
    }
    serde_json::from_slice(&text)
        .map_err(|e| Failure::Other(format!("HTTP {status} but the answer is not a KvAck: {e}")))
}
