//! The picker's front, the same for every transport: authenticate a caller, decide (counting the
//! outcome), close a decision. HTTP and ext_proc both call it; neither calls the other. Requests
//! from a gateway become pick requests in [`crate::openai`].

use http::HeaderMap;
use http::header::AUTHORIZATION;
use inferpick_schema::PickRequest;

use crate::error::ApiError;
use crate::scheduler::{Pick, PickError};
use crate::state::{AppState, Scope};
use crate::table::DoneOutcome;

/// A prompt longer than this may take milliseconds to tokenize: its pick runs with the runtime
/// told that this thread blocks, so other picks move to other threads meanwhile.
const LONG_PROMPT_BYTES: usize = 16 << 10;

/// Runs the scheduler and counts the outcome.
pub fn decide(state: &AppState, request: &PickRequest, explain: bool) -> Result<Pick, ApiError> {
    let scheduler = state.scheduler();
    let now = state.now();
    let pick = || {
        if explain {
            scheduler.pick_explained(state.table(), request, now)
        } else {
            scheduler.pick(state.table(), request, now)
        }
    };
    let long = request
        .prompt
        .as_ref()
        .is_some_and(|p| p.len() > LONG_PROMPT_BYTES)
        && !scheduler.config().tokenizers.is_empty();
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    let result = if long && multi_thread {
        tokio::task::block_in_place(pick)
    } else {
        pick()
    };
    // The picker's clock is monotonic: the pick's `now` is also when it started.
    let seconds = state.now().saturating_sub(now).as_secs_f64();
    // Only models the table knows become label values: unknown names are the client's to choose.
    match &result {
        Ok(p) => state
            .metrics()
            .decision(&p.model, "routed", scheduler.policy(), seconds),
        Err(e) => {
            // Shed and no-endpoint name a model some endpoint lists, except when the table is
            // empty: then the name is the client's.
            let model = match e {
                PickError::Shed { model, .. } => model.as_str(),
                PickError::NoReadyEndpoint { model, .. }
                    if !state.table().snapshot().is_empty() =>
                {
                    model.as_str()
                }
                _ => "",
            };
            state.metrics().decision(
                model,
                crate::metrics::outcome(e),
                scheduler.policy(),
                seconds,
            );
        }
    }
    Ok(result?)
}

/// Counts a request refused before the scheduler saw it (bad body, size, type) as `invalid`.
pub fn refuse_invalid(state: &AppState, e: ApiError) -> ApiError {
    if matches!(
        e,
        ApiError::InvalidRequest(_)
            | ApiError::PayloadTooLarge { .. }
            | ApiError::UnsupportedMediaType(_)
    ) {
        state
            .metrics()
            .decision("", "invalid", state.scheduler().policy(), 0.0);
    }
    e
}

/// Checks `Authorization: Bearer <token>` when `scope` has a token configured.
pub fn authorize(state: &AppState, headers: &HeaderMap, scope: Scope) -> Result<(), ApiError> {
    state.with_token(scope, |expected| {
        let Some(expected) = expected else {
            return Ok(());
        };
        let Some(value) = headers.get(AUTHORIZATION) else {
            return Err(ApiError::Unauthorized(
                "missing Authorization: Bearer <token> header".into(),
            ));
        };
        let given = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        match given {
            Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => Ok(()),
            Some(_) => Err(ApiError::Unauthorized("wrong bearer token".into())),
            None => Err(ApiError::Unauthorized(
                "Authorization header is not `Bearer <token>`".into(),
            )),
        }
    })
}

/// Compares without an early exit, so timing does not reveal how much of a token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Closes decision `id` (a request finished), counting it under `source` (`http`, `extproc`);
/// `cached_tokens`, when the engine's usage said it, is compared with what the pick predicted.
pub fn done(
    state: &AppState,
    id: uuid::Uuid,
    source: &'static str,
    cached_tokens: Option<u32>,
) -> DoneOutcome {
    let (outcome, predicted) = state.table().close(id.as_u128(), state.now());
    let metrics = state.metrics();
    metrics.done(source, matches!(outcome, DoneOutcome::Closed));
    if let (Some(predicted), Some(actual)) = (predicted, cached_tokens) {
        metrics.prefix_prediction(predicted, actual);
    }
    outcome
}
