//! The `inferpick` profile: predicted seconds to first token on each endpoint, as of now.
//!
//! cost = (queued prefill tokens + w × this prompt's uncached tokens) / prefill throughput
//!      + the prefill this picker routed there that is not plausibly done yet
//!      + running requests × per-request batch slowdown
//!      + a KV pressure term k/(1−k) that grows without bound as the cache fills
//!      + an adapter penalty when the LoRA adapter is not loaded
//!      − a session-affinity credit.
//! The weight w is 1 plus the pool's mean waiting requests, at most `miss_weight_max_waiting`:
//! under queueing a cache miss's prefill also delays every request queued behind it, and the
//! cache it did not use is capacity the pool needs; without it a busy pool of multi-turn
//! conversations moves them off the pods that hold their history as queues fluctuate, recomputes
//! that history and overloads itself.
//! Routed prefill drains at the throughput it was costed at, whatever reports arrive meanwhile (a
//! report shows a routed request as one more running request, not the prefill it still carries),
//! so a burst between two reports spreads instead of herding. Throughput is the endpoint's own
//! (its hardware class's unless its own differs clearly, throttling included, never below the
//! floor scaled by its GPUs' relative speed), and the batch slowdown scales with its decode step
//! cost against an H100's. Prefix and session credit apply only to endpoints
//! that are not overloaded relative to the pool (imbalance guard), so affinity cannot cause a death
//! spiral.

use std::time::Duration;

use rand::Rng;
use rand::rngs::SmallRng;

use super::{Parts, Policy, Profile, Reads, best_rest};
use crate::scheduler::candidates::{AdapterState, Candidate};
use crate::scheduler::request::ResolvedRequest;
use crate::scheduler::saturation::LoadSignals;

/// The constants of the `inferpick` cost. Defaults are calibrated for an 8B model on one H100
/// (roughly 10–20k prefill tokens/s, 10–30 ms decode steps).
#[derive(Debug, Clone, PartialEq)]
pub struct CostModel {
    /// Prompt tokens assumed per waiting request, and for requests that send neither prompt nor estimate.
    pub default_prompt_tokens: u64,
    /// Characters per token, to estimate a prompt's tokens from its text.
    pub chars_per_token: f64,
    /// Prefill throughput assumed until an endpoint has shown more (tokens/s).
    pub prefill_floor_tokens_per_second: f64,
    /// A routed prompt stays in its endpoint's backlog for this fraction of its costed prefill
    /// time. Below 1 because the throughput is measured over steps that also decode; at 1 or above
    /// a sustained load can make the backlog outgrow what the endpoints actually hold.
    pub routed_prefill_drain_ratio: f64,
    /// Uncached prompt tokens weigh 1 plus the pool's mean waiting requests, at most this many:
    /// under queueing a cache miss delays the requests behind it too. 0 weighs them 1.
    pub miss_weight_max_waiting: f64,
    /// Time-to-first-token slowdown per running request (seconds): decode steps share the batch.
    pub seconds_per_running_request: f64,
    /// Scale of the KV pressure term `k/(1−k)` (seconds).
    pub kv_pressure_seconds: f64,
    /// Cost of loading an adapter into a free slot (seconds).
    pub adapter_load_seconds: f64,
    /// Cost of waiting for an adapter slot when every slot is busy (seconds).
    pub adapter_slot_wait_seconds: f64,
    /// Credit for the endpoint that served this session before (seconds).
    pub session_affinity_seconds: f64,
    /// Imbalance guard: an endpoint loses prefix/session credit when its load exceeds both
    /// `ratio × pool minimum` and `pool minimum + requests`.
    pub prefix_imbalance_ratio: f64,
    /// See [`prefix_imbalance_ratio`](Self::prefix_imbalance_ratio).
    pub prefix_imbalance_requests: u64,
    /// How many near-best endpoints are sampled (power of k choices).
    pub power_of_k: usize,
    /// Near-best: cost within `best × (1 + ratio)` or `best + seconds`, whichever is wider.
    pub near_best_ratio: f64,
    /// See [`near_best_ratio`](Self::near_best_ratio).
    pub near_best_seconds: f64,
    /// Pools larger than this are scored on a random window of this many ready endpoints, plus
    /// every endpoint the prefix index or the session names; the near-best sample is drawn from
    /// those. Shedding is still decided on the whole pool. 0 scores every endpoint. 64 by
    /// default: in the lab's 1,000-pod runs (`chat`, `mixed`, `shared-prefix`, load 0.85) it
    /// routes as well as 128 (TTFT p50 and p99 within 1%) at about 20% less time per pick.
    pub scan_limit: usize,
}

impl Default for CostModel {
    fn default() -> Self {
        Self {
            default_prompt_tokens: 512,
            chars_per_token: 4.0,
            prefill_floor_tokens_per_second: 8_000.0,
            routed_prefill_drain_ratio: 0.75,
            miss_weight_max_waiting: 4.0,
            seconds_per_running_request: 0.002,
            kv_pressure_seconds: 0.15,
            adapter_load_seconds: 0.1,
            adapter_slot_wait_seconds: 2.0,
            session_affinity_seconds: 0.05,
            prefix_imbalance_ratio: 1.5,
            prefix_imbalance_requests: 8,
            power_of_k: 2,
            near_best_ratio: 0.1,
            near_best_seconds: 0.005,
            scan_limit: 64,
        }
    }
}

/// The `inferpick` profile.
#[derive(Debug)]
pub(crate) struct Inferpick {
    cost: CostModel,
}

impl Inferpick {
    pub(crate) fn new(cost: CostModel) -> Self {
        Self { cost }
    }
}

impl Profile for Inferpick {
    fn policy(&self) -> Policy {
        Policy::Inferpick
    }

    fn reads(&self) -> Reads {
        Reads {
            inflight: true,
            prefix: true,
            session: true,
            window: true,
            saturated_after: None,
            sheds: true,
        }
    }

    fn score(
        &self,
        cands: &mut [Candidate],
        request: &ResolvedRequest<'_>,
        mut parts: Option<&mut Vec<Parts>>,
    ) {
        let m = &self.cost;
        let floor = m.prefill_floor_tokens_per_second;
        let (min_load, waiting_sum) = cands
            .iter()
            .fold((u64::MAX, 0), |(l, w), c| (l.min(c.load()), w + c.waiting));
        let min_load = if cands.is_empty() { 0 } else { min_load };
        let mean_waiting = waiting_sum as f64 / cands.len().max(1) as f64;
        let miss_weight = 1.0 + mean_waiting.min(m.miss_weight_max_waiting);
        for c in cands.iter_mut() {
            let load = c.load();
            let overloaded = load > min_load + m.prefix_imbalance_requests
                && load as f64 > min_load as f64 * m.prefix_imbalance_ratio;
            // The guard protects against trusting a guess: cached tokens the engine's own KV
            // events report are a fact, and the queue terms already price the load.
            let credit = if overloaded && !c.cached_exact {
                0.0
            } else {
                f64::from(c.cached_tokens)
            };
            let uncached = (request.prompt_tokens as f64 - credit).max(0.0);
            let queued = (c.waiting * m.default_prompt_tokens) as f64;
            // Its own rate: endpoints of one hardware class share one (see `table::capacity`),
            // so only real differences in speed move work between them.
            let throughput = c.prefill_tokens_per_second.max(floor * c.prior_scale);
            c.ask_prefill_seconds = m.routed_prefill_drain_ratio * uncached / throughput;
            let prefill =
                (queued + miss_weight * uncached) / throughput + c.prefill_backlog_seconds;
            let batch = c.running as f64 * m.seconds_per_running_request * c.decode_scale;
            let pressure = LoadSignals::of(c)
                .kv_with(c.inflight_tokens + request.prompt_tokens)
                .map_or(0.0, |k| {
                    let k = k.min(0.99);
                    m.kv_pressure_seconds * k / (1.0 - k)
                });
            let adapter = match c.adapter {
                AdapterState::NotAdapter | AdapterState::Unknown | AdapterState::Loaded => 0.0,
                AdapterState::NotLoaded { waiting: true, .. } => m.adapter_load_seconds / 2.0,
                AdapterState::NotLoaded {
                    running_below_max: true,
                    ..
                } => m.adapter_load_seconds,
                AdapterState::NotLoaded { .. } => m.adapter_slot_wait_seconds,
            };
            let session = if c.session_hit && !overloaded {
                m.session_affinity_seconds
            } else {
                0.0
            };
            if let Some(p) = parts.as_deref_mut() {
                p.push([prefill, batch, pressure, adapter, session]);
            }
            c.cost = prefill + batch + pressure + adapter - session;
        }
    }

    /// The lowest cost among `power_of_k` endpoints sampled from the near-best.
    fn choose(
        &self,
        cands: &[Candidate],
        n: usize,
        _request: &ResolvedRequest<'_>,
        rng: &mut SmallRng,
    ) -> Vec<usize> {
        let m = &self.cost;
        let best = cands.iter().map(|c| c.cost).fold(f64::INFINITY, f64::min);
        let bound = best + (best.abs() * m.near_best_ratio).max(m.near_best_seconds);
        let mut near: Vec<usize> = Vec::with_capacity(cands.len());
        near.extend((0..cands.len()).filter(|&i| cands[i].cost <= bound));
        if near.is_empty() {
            // Only when costs are not comparable (the scheduler turns NaN into +inf first).
            near = (0..cands.len()).collect();
        }
        let k = m.power_of_k.max(1).min(near.len());
        for i in 0..k {
            let j = rng.random_range(i..near.len());
            near.swap(i, j);
        }
        let first = near[..k]
            .iter()
            .copied()
            .min_by(|&a, &b| cands[a].cost.total_cmp(&cands[b].cost))
            .unwrap_or(0);
        best_rest(cands, first, n)
    }

    fn retry_after(&self, cands: &[Candidate]) -> Duration {
        let best = cands.iter().map(|c| c.cost).fold(f64::INFINITY, f64::min);
        Duration::from_secs(best.ceil().clamp(1.0, 30.0) as u64)
    }

    fn part_names(&self) -> &'static [&'static str] {
        &[
            "prefill_s",
            "batch_s",
            "kv_pressure_s",
            "adapter_s",
            "session_credit_s",
        ]
    }

    fn routed_prefill(&self, chosen: &Candidate) -> Option<f64> {
        Some(chosen.ask_prefill_seconds)
    }
}
