//! A pod's capacity for a workload: the request rate one engine completes when it is never idle.
//!
//! Measured, not computed: one engine is kept saturated (twice `max_num_seqs` requests queued,
//! a new one submitted whenever one finishes) with the workload's request mix for 120 simulated
//! seconds, and the completion rate over the last 90 is its capacity. LoRA adapters are ignored
//! (the base model's capacity), since a router that keeps adapters apart loses nothing to them.
//! `--load 0.85` then means an offered rate of 0.85 × pods × this.

use std::sync::Arc;
use std::time::Duration;

use crate::engine::{Engine, EngineConfig, EngineEvent, SeqSpec};
use crate::workload::{Generator, Workload};

const RUN: Duration = Duration::from_secs(120);
const WARMUP: Duration = Duration::from_secs(30);

/// Rounds of [`per_pod`]'s fixed point for conversation workloads.
const ROUNDS: usize = 4;
/// [`per_pod`]'s fixed point stops once a round moves the estimate by less than this fraction.
const SETTLED: f64 = 0.02;

/// Requests per second one saturated pod completes for `workload`.
///
/// Only the requests' lengths and prefixes are used, in the order they come, drawn at a given
/// rate. For most workloads that rate changes nothing. For multi-turn conversations it does: a
/// conversation's later (longer) turns come a think time after its first, so the faster requests
/// arrive the more conversations are open at once and the less of their history stays cached. So
/// the rate is the capacity itself, found as a fixed point from the workload's own rate: a pod
/// driven at `--load 1` then holds as many open conversations as the measurement did.
pub fn per_pod(workload: &Workload, engine: &EngineConfig, seed: u64) -> f64 {
    let native = workload.arrival.rate_per_pod();
    let mut capacity = saturated(workload, engine, seed, native);
    if !workload.classes.iter().any(|c| c.conversation.is_some()) {
        return capacity;
    }
    for _ in 0..ROUNDS {
        let next = saturated(workload, engine, seed, capacity);
        let settled = (next - capacity).abs() <= SETTLED * capacity;
        capacity = next;
        if settled {
            break;
        }
    }
    capacity
}

/// The completion rate of one engine kept saturated with `workload`'s requests drawn at `rate`.
fn saturated(workload: &Workload, engine: &EngineConfig, seed: u64, rate: f64) -> f64 {
    let mut requests = Generator::new(
        workload,
        1,
        rate,
        Duration::from_secs(1_000_000),
        seed ^ 0xca9a_c1f7,
        engine.block_tokens,
    );
    let mut e = Engine::new(engine.clone());
    let mut submit = |e: &mut Engine| {
        if let Some(r) = requests.next() {
            // Requests that can never fit are skipped here as they are refused in the run.
            let _ = e.submit(SeqSpec {
                id: r.id,
                prompt_tokens: r.prompt_tokens,
                output_tokens: r.output_tokens,
                prefix: Arc::clone(&r.prefix),
                adapter: None,
            });
        }
    };
    for _ in 0..engine.max_num_seqs * 2 {
        submit(&mut e);
    }
    let mut now = Duration::ZERO;
    let mut out = Vec::new();
    let mut done_after_warmup = 0u64;
    while now < RUN {
        let Some(end) = e.start_step(now) else { break };
        now = end;
        e.finish_step(&mut out);
        for ev in out.drain(..) {
            if let EngineEvent::Finished { .. } = ev {
                if now >= WARMUP {
                    done_after_warmup += 1;
                }
                submit(&mut e);
            }
        }
    }
    done_after_warmup as f64 / (RUN - WARMUP).as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorter_requests_mean_more_capacity() {
        let engine = EngineConfig::default();
        let chat = per_pod(&Workload::load("chat").unwrap(), &engine, 1);
        let mixed = per_pod(&Workload::load("mixed").unwrap(), &engine, 1);
        assert!(chat > 1.0 && chat < 100.0, "{chat}");
        let slow = EngineConfig {
            prefill_per_token: engine.prefill_per_token * 2,
            ..engine.clone()
        };
        let chat_slow = per_pod(&Workload::load("chat").unwrap(), &slow, 1);
        assert!(chat_slow < chat * 0.9, "{chat_slow} vs {chat}");
        assert!(mixed > 0.5, "{mixed}");
    }

    #[test]
    fn conversations_are_measured_at_the_rate_they_will_be_driven() {
        let engine = EngineConfig::default();
        let workload = Workload::load("multi-turn").unwrap();
        let native = saturated(&workload, &engine, 1, workload.arrival.rate_per_pod());
        let capacity = per_pod(&workload, &engine, 1);
        // Driven at its capacity, more conversations are open at once than at the workload's
        // own rate: less history stays cached and fewer requests complete.
        assert!(capacity < native * 0.95, "{capacity} vs {native}");
        let again = saturated(&workload, &engine, 1, capacity);
        assert!(
            (again - capacity).abs() <= 0.1 * capacity,
            "not a fixed point: {again} at {capacity}"
        );
    }
}
