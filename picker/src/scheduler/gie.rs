//! The `gie` profile: the Gateway API Inference Extension's default scheduling, reproduced from its
//! documented behaviour — weighted scorers (queue 2, KV cache 2, prefix 3, LoRA affinity 1), highest
//! total wins, ties at random — and its saturation detector. It reads the engines' reported queues
//! only: GIE does not count its own decisions between metric polls.

use std::time::Duration;

use super::{AdapterState, Ask, Candidate, SchedulerConfig};
use crate::table::duration_ns;

const QUEUE_WEIGHT: f64 = 2.0;
const KV_WEIGHT: f64 = 2.0;
const PREFIX_WEIGHT: f64 = 3.0;
const LORA_WEIGHT: f64 = 1.0;

/// Fills `cost` with the negated weighted score (so lower is better, like every profile).
/// Each candidate's parts (queue, KV, prefix, LoRA, total) go to `parts` when given.
pub(super) fn score(cands: &mut [Candidate], ask: &Ask, mut parts: Option<&mut Vec<[f64; 5]>>) {
    let qmin = cands.iter().map(|c| c.waiting).min().unwrap_or(0);
    let qmax = cands.iter().map(|c| c.waiting).max().unwrap_or(0);
    let blocks = ask.blocks.len();
    for c in cands.iter_mut() {
        let queue = if qmax > qmin {
            (qmax - c.waiting) as f64 / (qmax - qmin) as f64
        } else {
            1.0
        };
        let kv = 1.0 - c.kv.unwrap_or(0.0);
        let prefix = if blocks > 0 {
            f64::from(c.cached_blocks) / blocks as f64
        } else {
            0.0
        };
        let lora = match c.adapter {
            AdapterState::NotAdapter | AdapterState::Loaded => 1.0,
            AdapterState::FreeSlot | AdapterState::Unknown => 0.8,
            AdapterState::Waiting => 0.6,
            AdapterState::SlotsFull => 0.0,
        };
        let total =
            QUEUE_WEIGHT * queue + KV_WEIGHT * kv + PREFIX_WEIGHT * prefix + LORA_WEIGHT * lora;
        if let Some(p) = parts.as_deref_mut() {
            p.push([queue, kv, prefix, lora, total]);
        }
        c.cost = -total;
    }
}

/// GIE's detector: an endpoint is saturated when its queue or KV use is at the threshold or its
/// metrics are older than `gie_stale_after`; the pool is saturated when every endpoint is.
pub(super) fn pool_saturated(cands: &[Candidate], config: &SchedulerConfig, now: Duration) -> bool {
    let s = &config.saturation;
    let now_ns = duration_ns(now);
    let stale_after_ns = duration_ns(config.gie_stale_after);
    cands.iter().all(|c| {
        c.waiting >= u64::from(s.queue_depth_threshold)
            || c.kv.is_some_and(|k| k >= s.kv_cache_threshold)
            || now_ns.saturating_sub(c.arrived_ns) > stale_after_ns
    })
}
