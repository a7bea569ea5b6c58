//! Normalization of a [`Reading`] into the schema's [`Load`]: counters become per-second rates
//! between scrapes, gauges are range-checked, models from labels and adapters are merged.
//!
//! A counter that went down means the engine restarted: that interval's rate is dropped (absent),
//! never negative, and the next interval measures from the new value.

use std::time::Duration;

use inferpick_schema::{Load, ModelEntry};

use crate::dialect::{Counters, Reading};

/// Counter state carried from one scrape to the next.
#[derive(Debug, Default)]
pub struct Rates {
    prev: Option<(Duration, Counters)>,
    /// The last hit ratio measured over an interval that had queries.
    last_hit_ratio: Option<f64>,
}

impl Rates {
    /// Forgets every previous counter (after a failed scrape or a change of engine).
    pub fn reset(&mut self) {
        *self = Rates::default();
    }

    /// Normalizes `reading`, taken at `at` on the agent's monotonic clock.
    pub fn normalize(&mut self, reading: &Reading, at: Duration) -> Load {
        let now = reading.counters;
        let (prompt_rate, generation_rate) = match self.prev {
            Some((then, before)) if at > then => {
                let secs = (at - then).as_secs_f64();
                let rate = |n: Option<f64>, b: Option<f64>| delta(n, b).map(|d| d / secs);
                let hit_ratio = match (
                    delta(now.prefix_hits, before.prefix_hits),
                    delta(now.prefix_queries, before.prefix_queries),
                    delta(now.cached_prompt_tokens, before.cached_prompt_tokens),
                    delta(now.prompt_tokens, before.prompt_tokens),
                ) {
                    (Some(h), Some(q), _, _) if q > 0.0 => Some(h / q),
                    (_, _, Some(c), Some(p)) if c + p > 0.0 => Some(c / (c + p)),
                    _ => None,
                };
                if let Some(r) = hit_ratio {
                    self.last_hit_ratio = Some(r.clamp(0.0, 1.0));
                }
                (
                    rate(now.prompt_tokens, before.prompt_tokens),
                    rate(now.generation_tokens, before.generation_tokens),
                )
            }
            _ => (None, None),
        };
        self.prev = Some((at, now));
        Load {
            requests_waiting: count(reading.requests_waiting),
            requests_running: count(reading.requests_running),
            kv_cache_utilization: ratio(reading.kv_cache_utilization),
            kv_cache_capacity_tokens: reading
                .kv_cache_capacity_tokens
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(|v| v.round() as u64),
            kv_block_size_tokens: count(reading.kv_block_size_tokens),
            prefix_cache_hit_ratio: ratio(reading.prefix_cache_hit_ratio).or(self.last_hit_ratio),
            prompt_tokens_per_second: prompt_rate,
            generation_tokens_per_second: generation_rate,
            adapters: reading.adapters.clone(),
        }
    }
}

/// Increase of a counter; `None` when either side is missing or the counter was reset.
fn delta(now: Option<f64>, before: Option<f64>) -> Option<f64> {
    let d = now? - before?;
    (d.is_finite() && d >= 0.0).then_some(d)
}

fn count(v: Option<f64>) -> Option<u32> {
    v.filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| v.round().min(u32::MAX as f64) as u32)
}

/// A 0..1 ratio; engines that round past the ends are clamped rather than dropped.
fn ratio(v: Option<f64>) -> Option<f64> {
    v.filter(|v| v.is_finite()).map(|v| v.clamp(0.0, 1.0))
}

/// The models an endpoint serves: what `/v1/models` said (when it answered), else the metrics'
/// labels, plus the LoRA adapters the metrics name, attached to the only base model.
pub fn merge_models(listed: Option<&[ModelEntry]>, reading: &Reading) -> Vec<ModelEntry> {
    let mut models: Vec<ModelEntry> = match listed {
        Some(l) if !l.is_empty() => l.to_vec(),
        _ => reading.models.clone(),
    };
    let bases: Vec<&str> = models
        .iter()
        .filter(|m| m.adapter_of.is_none())
        .map(|m| m.name.as_str())
        .collect();
    let base = (bases.len() == 1).then(|| bases[0].to_string());
    if let Some(adapters) = &reading.adapters {
        for name in adapters.running.iter().chain(&adapters.waiting) {
            if !models.iter().any(|m| &m.name == name) {
                models.push(ModelEntry {
                    name: name.clone(),
                    adapter_of: base.clone(),
                });
            }
        }
    }
    models.truncate(inferpick_schema::Limits::MAX_MODELS);
    models
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(prompt: f64, hits: f64, queries: f64) -> Reading {
        Reading {
            requests_waiting: Some(2.0),
            counters: Counters {
                prompt_tokens: Some(prompt),
                prefix_hits: Some(hits),
                prefix_queries: Some(queries),
                ..Counters::default()
            },
            ..Reading::default()
        }
    }

    #[test]
    fn counters_become_rates() {
        let mut r = Rates::default();
        let first = r.normalize(&reading(1000.0, 0.0, 0.0), Duration::from_millis(0));
        assert_eq!(
            first.prompt_tokens_per_second, None,
            "no rate from one sample"
        );
        let second = r.normalize(&reading(1500.0, 30.0, 100.0), Duration::from_millis(500));
        assert_eq!(second.prompt_tokens_per_second, Some(1000.0));
        assert_eq!(second.prefix_cache_hit_ratio, Some(0.3));
        assert_eq!(second.requests_waiting, Some(2));
    }

    #[test]
    fn a_counter_going_down_is_a_restart_not_a_negative_rate() {
        let mut r = Rates::default();
        r.normalize(&reading(1000.0, 10.0, 10.0), Duration::from_secs(1));
        let after = r.normalize(&reading(20.0, 0.0, 0.0), Duration::from_secs(2));
        assert_eq!(after.prompt_tokens_per_second, None);
        let next = r.normalize(&reading(120.0, 0.0, 0.0), Duration::from_secs(3));
        assert_eq!(next.prompt_tokens_per_second, Some(100.0));
    }

    #[test]
    fn hit_ratio_holds_over_intervals_without_queries() {
        let mut r = Rates::default();
        r.normalize(&reading(0.0, 0.0, 0.0), Duration::from_secs(1));
        r.normalize(&reading(0.0, 5.0, 10.0), Duration::from_secs(2));
        let idle = r.normalize(&reading(0.0, 5.0, 10.0), Duration::from_secs(3));
        assert_eq!(idle.prefix_cache_hit_ratio, Some(0.5));
    }

    #[test]
    fn llamacpp_style_cached_tokens_give_the_ratio() {
        let mut r = Rates::default();
        let mut a = Reading::default();
        a.counters.prompt_tokens = Some(100.0);
        a.counters.cached_prompt_tokens = Some(0.0);
        r.normalize(&a, Duration::from_secs(1));
        a.counters.prompt_tokens = Some(400.0);
        a.counters.cached_prompt_tokens = Some(100.0);
        let l = r.normalize(&a, Duration::from_secs(2));
        assert_eq!(l.prefix_cache_hit_ratio, Some(0.25));
    }

    #[test]
    fn out_of_range_gauges_are_clamped_or_dropped() {
        let mut r = Rates::default();
        let reading = Reading {
            requests_waiting: Some(-1.0),
            requests_running: Some(f64::NAN),
            kv_cache_utilization: Some(1.0000001),
            ..Reading::default()
        };
        let l = r.normalize(&reading, Duration::ZERO);
        assert_eq!(l.requests_waiting, None);
        assert_eq!(l.requests_running, None);
        assert_eq!(l.kv_cache_utilization, Some(1.0));
    }
}
