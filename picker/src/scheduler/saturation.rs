//! The one saturation rule: when an endpoint, and a pool, count as saturated. Shedding, the
//! `inferpick_picker_pool_saturation` gauge and explain all read it, so the dashboard shows what
//! sheds.

use std::collections::BTreeMap;
use std::time::Duration;

use super::candidates::Candidate;
use super::profile::Reads;
use crate::table::{EndpointState, Snapshot, duration_ns};

/// When an endpoint counts as saturated (GIE's saturation detector; thresholds from the config).
#[derive(Debug, Clone, PartialEq)]
pub struct Saturation {
    /// Waiting requests (plus routed in flight, for profiles that count it) at or above this
    /// saturate an endpoint.
    pub queue_depth_threshold: u32,
    /// KV cache utilization (plus the prompt tokens routed in flight, for profiles that count
    /// them) at or above this saturates an endpoint.
    pub kv_cache_threshold: f64,
}

impl Default for Saturation {
    fn default() -> Self {
        Self {
            queue_depth_threshold: 5,
            kv_cache_threshold: 0.8,
        }
    }
}

/// What the rule reads of one endpoint.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadSignals {
    pub(crate) waiting: u64,
    pub(crate) inflight_requests: u64,
    pub(crate) inflight_tokens: u64,
    pub(crate) kv: Option<f64>,
    pub(crate) kv_capacity_tokens: u64,
    pub(crate) arrived_ns: u64,
}

impl LoadSignals {
    pub(crate) fn of(c: &Candidate) -> Self {
        Self {
            waiting: c.waiting,
            inflight_requests: c.inflight_requests,
            inflight_tokens: c.inflight_tokens,
            kv: c.kv,
            kv_capacity_tokens: c.kv_capacity_tokens,
            arrived_ns: c.arrived_ns,
        }
    }

    /// KV utilization counting `extra_tokens` more (when capacity is known), at most 1.
    pub(crate) fn kv_with(&self, extra_tokens: u64) -> Option<f64> {
        let kv = self.kv?;
        let added = if self.kv_capacity_tokens > 0 {
            extra_tokens as f64 / self.kv_capacity_tokens as f64
        } else {
            0.0
        };
        Some((kv + added).min(1.0))
    }
}

impl Saturation {
    /// Whether one endpoint is saturated as `reads` sees it at `now_ns`: its queue or its KV cache
    /// at the threshold — counting what this picker routed there since the report when the
    /// profile reads that — or, for profiles that say so, its metrics too old to trust.
    pub(crate) fn endpoint(&self, load: LoadSignals, reads: Reads, now_ns: u64) -> bool {
        let (routed, routed_tokens) = if reads.inflight {
            (load.inflight_requests, load.inflight_tokens)
        } else {
            (0, 0)
        };
        load.waiting + routed >= u64::from(self.queue_depth_threshold)
            || load
                .kv_with(routed_tokens)
                .is_some_and(|k| k >= self.kv_cache_threshold)
            || reads
                .saturated_after
                .is_some_and(|d| now_ns.saturating_sub(load.arrived_ns) > duration_ns(d))
    }

    /// Whether every candidate is saturated.
    pub(crate) fn pool(&self, cands: &[Candidate], reads: Reads, now_ns: u64) -> bool {
        cands
            .iter()
            .all(|c| self.endpoint(LoadSignals::of(c), reads, now_ns))
    }

    /// Per model, the fraction of its ready endpoints that are saturated, by the same rule.
    pub(crate) fn by_model<'s>(
        &self,
        snapshot: &'s Snapshot,
        reads: Reads,
        now: Duration,
    ) -> BTreeMap<&'s str, f64> {
        let now_ns = duration_ns(now);
        let mut pools: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for e in snapshot.iter() {
            if e.state(now, snapshot.max_report_age) != EndpointState::Ready {
                continue;
            }
            let load = &e.report.load;
            let inflight = e.inflight();
            let signals = LoadSignals {
                waiting: load.requests_waiting.unwrap_or(0).into(),
                inflight_requests: inflight.requests,
                inflight_tokens: inflight.prompt_tokens,
                kv: load.kv_cache_utilization,
                kv_capacity_tokens: load.kv_cache_capacity_tokens.unwrap_or(0),
                arrived_ns: duration_ns(e.arrived_at),
            };
            let saturated = self.endpoint(signals, reads, now_ns);
            for m in &e.report.models {
                let p = pools.entry(m.name.as_str()).or_default();
                p.0 += 1;
                p.1 += u64::from(saturated);
            }
        }
        pools
            .into_iter()
            .map(|(model, (ready, saturated))| (model, saturated as f64 / ready as f64))
            .collect()
    }
}
