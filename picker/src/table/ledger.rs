//! The decision ledger: decisions still waiting for `done` feedback, each remembering the endpoint
//! (by id), the epoch and the work it added to that endpoint's counters, so that `done` takes out
//! exactly what the decision put in — unless a newer report already accounts for it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;

use super::counters::{Chunks, CounterCell, EndpointId, cell, saturating_sub};
use crate::hashing::KeyHashing;

/// What `done` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoneOutcome {
    /// The decision was open and its in-flight share was removed (or was already covered by a newer report).
    Closed,
    /// No open decision has this id (already closed, dropped for memory, or never made here).
    Unknown,
}

/// What one decision added to its endpoint.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Routed {
    /// The request's prompt tokens.
    pub(crate) prompt_tokens: u64,
    /// Its prefill, when the profile costs one: routed at `now_ns`, lasting `prefill_ns`.
    pub(crate) prefill: Option<(u64, u64)>,
    /// The cached prompt tokens the pick counted on, when it looked the prefix up.
    pub(crate) predicted: Option<Prediction>,
}

/// The prefix-cache hit a pick counted on, kept to compare with what the engine reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prediction {
    /// Leading prompt tokens the chosen endpoint was thought to hold.
    pub cached_tokens: u32,
    /// From its engine's KV events (else the approximate index).
    pub exact: bool,
}

/// A decision still open.
#[derive(Debug)]
struct Open {
    endpoint: EndpointId,
    epoch: u64,
    prompt_tokens: u64,
    /// Its share of the routed prefill backlog: when that backlog reached its end, and its length
    /// (nanoseconds).
    prefill: Option<(u64, u64)>,
    predicted: Option<Prediction>,
}

/// Open decisions by id, oldest first out when there are more than the cap.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    open: HashMap<u128, Open, KeyHashing>,
    order: VecDeque<u128>,
}

impl Ledger {
    /// Counts `routed` into the endpoint's counters `c` and keeps the decision open, dropping the
    /// oldest past `cap`.
    pub(crate) fn open(
        &mut self,
        decision: u128,
        endpoint: EndpointId,
        c: &CounterCell,
        routed: Routed,
        cap: usize,
    ) {
        let prefill = routed.prefill.filter(|&(_, n)| n > 0).map(|(now_ns, n)| {
            let grow = |b: u64| b.max(now_ns).saturating_add(n);
            let before = c
                .prefill_busy_until_ns
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| Some(grow(b)))
                .unwrap_or_else(|b| b);
            (grow(before), n)
        });
        let epoch = c.epoch.load(Ordering::Acquire);
        c.inflight_requests.fetch_add(1, Ordering::AcqRel);
        c.inflight_tokens
            .fetch_add(routed.prompt_tokens, Ordering::AcqRel);
        c.routed_total.fetch_add(1, Ordering::Relaxed);
        if let Some(p) = routed.predicted {
            c.routed_prompt_tokens
                .fetch_add(routed.prompt_tokens, Ordering::Relaxed);
            c.predicted_cached_tokens
                .fetch_add(u64::from(p.cached_tokens), Ordering::Relaxed);
        }
        self.open.insert(
            decision,
            Open {
                endpoint,
                epoch,
                prompt_tokens: routed.prompt_tokens,
                prefill,
                predicted: routed.predicted,
            },
        );
        self.order.push_back(decision);
        while self.open.len() > cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.open.remove(&old);
                }
                None => break,
            }
        }
        // Ids of decisions already closed by `done` stay in `order` until it is compacted; doing
        // so once they outnumber the open ones keeps memory with the open count (amortized O(1)).
        if self.order.len() > 2 * self.open.len() + 64 {
            let Self { open, order } = self;
            order.retain(|id| open.contains_key(id));
        }
    }

    /// Closes `decision` at `now_ns`: takes out of its endpoint's counters (found in `chunks`)
    /// what it put in and a newer report has not already accounted for.
    /// Closes `decision`; returns what was found and the prediction it was made with.
    pub(crate) fn close(
        &mut self,
        decision: u128,
        chunks: &Chunks,
        now_ns: u64,
    ) -> (DoneOutcome, Option<Prediction>) {
        let Some(open) = self.open.remove(&decision) else {
            return (DoneOutcome::Unknown, None);
        };
        let Some(c) = cell(chunks, open.endpoint) else {
            return (DoneOutcome::Closed, open.predicted);
        };
        // A finished request's prefill is over: take out what the backlog still holds of it.
        if let Some((end_ns, len_ns)) = open.prefill {
            let left = end_ns.saturating_sub(now_ns).min(len_ns);
            if left > 0 {
                saturating_sub(&c.prefill_busy_until_ns, left);
            }
        }
        // A newer report (or a reuse of the id) already counts, or no longer counts, this
        // request: nothing to undo.
        if c.epoch.load(Ordering::Acquire) == open.epoch {
            saturating_sub(&c.inflight_requests, 1);
            saturating_sub(&c.inflight_tokens, open.prompt_tokens);
        }
        (DoneOutcome::Closed, open.predicted)
    }

    /// Ids the ledger remembers, open or closed and not yet compacted away.
    #[cfg(test)]
    pub(crate) fn remembered(&self) -> usize {
        self.order.len()
    }

    /// How many decisions are open.
    pub(crate) fn len(&self) -> usize {
        self.open.len()
    }
}
