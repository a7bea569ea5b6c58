//! The `gie` profile: the Gateway API Inference Extension's default scheduling, reproduced from its
//! documented behaviour — weighted scorers (queue 2, KV cache 2, prefix 3, LoRA affinity 1), highest
//! total wins, ties at random — and its saturation detector (metrics older than 200 ms count as
//! saturated). It reads the engines' reported queues only: GIE does not count its own decisions
//! between metric polls.

use std::time::Duration;

use rand::rngs::SmallRng;

use super::{Parts, Policy, Profile, Reads, lowest_cost};
use crate::scheduler::candidates::{AdapterState, Candidate};
use crate::scheduler::request::ResolvedRequest;

const QUEUE_WEIGHT: f64 = 2.0;
const KV_WEIGHT: f64 = 2.0;
const PREFIX_WEIGHT: f64 = 3.0;
const LORA_WEIGHT: f64 = 1.0;

/// The `gie` profile.
#[derive(Debug)]
pub(crate) struct Gie {
    /// An endpoint whose metrics are older than this counts as saturated (GIE uses 200 ms).
    stale_after: Duration,
}

impl Gie {
    pub(crate) fn new(stale_after: Duration) -> Self {
        Self { stale_after }
    }
}

/// GIE's LoRA affinity: 1 when the adapter is active, 0.8 when the server has room for one more
/// adapter (counting those waiting to load), 0.6 when requests already wait for it, else 0.
fn lora(adapter: AdapterState) -> f64 {
    match adapter {
        AdapterState::NotAdapter | AdapterState::Loaded => 1.0,
        AdapterState::Unknown
        | AdapterState::NotLoaded {
            loaded_or_waiting_below_max: true,
            ..
        } => 0.8,
        AdapterState::NotLoaded { waiting: true, .. } => 0.6,
        AdapterState::NotLoaded { .. } => 0.0,
    }
}

impl Profile for Gie {
    fn policy(&self) -> Policy {
        Policy::Gie
    }

    fn reads(&self) -> Reads {
        Reads {
            inflight: false,
            prefix: true,
            session: false,
            window: false,
            saturated_after: Some(self.stale_after),
            sheds: true,
        }
    }

    /// Fills `cost` with the negated weighted score (so lower is better, like every profile).
    fn score(
        &self,
        cands: &mut [Candidate],
        request: &ResolvedRequest<'_>,
        mut parts: Option<&mut Vec<Parts>>,
    ) {
        let qmin = cands.iter().map(|c| c.waiting).min().unwrap_or(0);
        let qmax = cands.iter().map(|c| c.waiting).max().unwrap_or(0);
        // The share of the prompt's looked-up head that the endpoint holds, as GIE's prefix scorer.
        let approx = request.blocks.len() as f64 * request.tokens_per_block;
        let exact = request.tokens.len() as f64;
        for c in cands.iter_mut() {
            let queue = if qmax > qmin {
                (qmax - c.waiting) as f64 / (qmax - qmin) as f64
            } else {
                1.0
            };
            let kv = 1.0 - c.kv.unwrap_or(0.0);
            let looked_up = if c.cached_exact { exact } else { approx };
            let prefix = if looked_up > 0.0 {
                (f64::from(c.cached_tokens) / looked_up).min(1.0)
            } else {
                0.0
            };
            let lora = lora(c.adapter);
            let total =
                QUEUE_WEIGHT * queue + KV_WEIGHT * kv + PREFIX_WEIGHT * prefix + LORA_WEIGHT * lora;
            if let Some(p) = parts.as_deref_mut() {
                p.push([queue, kv, prefix, lora, total]);
            }
            c.cost = -total;
        }
    }

    /// The highest score, ties at random.
    fn choose(
        &self,
        cands: &[Candidate],
        n: usize,
        _request: &ResolvedRequest<'_>,
        rng: &mut SmallRng,
    ) -> Vec<usize> {
        lowest_cost(cands, n, rng)
    }

    fn part_names(&self) -> &'static [&'static str] {
        &["queue", "kv_cache", "prefix", "lora", "total"]
    }

    fn score_is(&self) -> &'static str {
        "negated weighted score (lower is better)"
    }
}
