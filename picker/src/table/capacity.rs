//! The prefill capacity estimator: how many prompt tokens per second an endpoint can take.
//!
//! A slow moving average of the prompt rate over the report intervals in which the engine had
//! requests waiting (only then is the rate bounded by capacity rather than demand), each sample
//! capped so that a few long prompts finishing in one interval cannot make the endpoint look
//! several times faster. Unknown until the endpoint has queued. The rate is of tokens the engine
//! computed: engines count a prompt's cached tokens as prompt tokens, which on a workload whose
//! prompts mostly hit the prefix cache would make an endpoint look several times faster than it
//! prefills, and the cost model would then undervalue both queues and cache hits.

/// Weight of one busy interval's prompt rate in the estimate.
const WEIGHT: f64 = 0.05;
/// A busy interval's rate counts at most this multiple of the current estimate.
const SAMPLE_CAP: f64 = 2.0;
/// Prefill rate assumed before an estimate exists, to cap the first samples (tokens/s).
const FIRST_CAP: f64 = 20_000.0;

/// The prompt tokens per second the engine computed: its prompt rate less the share its prefix
/// cache served (engines count a prompt's cached tokens as prompt tokens too).
pub(crate) fn computed_prompt_rate(load: &inferpick_schema::Load) -> Option<f64> {
    let hit = load
        .prefix_cache_hit_ratio
        .filter(|h| h.is_finite())
        .map_or(0.0, |h| h.clamp(0.0, 1.0));
    load.prompt_tokens_per_second.map(|r| r * (1.0 - hit))
}

/// The estimate after a report that observed `observed` tokens/s with `waiting` queued.
pub(crate) fn next(previous: Option<f64>, observed: Option<f64>, waiting: u32) -> Option<f64> {
    match observed {
        Some(o) if waiting > 0 && o.is_finite() && o > 0.0 => {
            let base = previous.unwrap_or(FIRST_CAP);
            let sample = o.min(base * SAMPLE_CAP);
            Some(match previous {
                Some(p) => p + WEIGHT * (sample - p),
                None => sample,
            })
        }
        _ => previous,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_prompt_tokens_are_not_counted_as_computed() {
        let load = |rate: Option<f64>, hit: Option<f64>| inferpick_schema::Load {
            prompt_tokens_per_second: rate,
            prefix_cache_hit_ratio: hit,
            ..Default::default()
        };
        assert_eq!(
            computed_prompt_rate(&load(Some(10_000.0), Some(0.75))),
            Some(2_500.0)
        );
        assert_eq!(
            computed_prompt_rate(&load(Some(10_000.0), None)),
            Some(10_000.0)
        );
        // A nonsense ratio is clamped or ignored, never a negative or NaN rate.
        assert_eq!(
            computed_prompt_rate(&load(Some(10_000.0), Some(1.5))),
            Some(0.0)
        );
        assert_eq!(
            computed_prompt_rate(&load(Some(10_000.0), Some(f64::NAN))),
            Some(10_000.0)
        );
        assert_eq!(computed_prompt_rate(&load(None, Some(0.5))), None);
    }

    #[test]
    fn a_burst_of_finished_prompts_barely_moves_the_estimate() {
        assert_eq!(
            next(None, Some(50_000.0), 0),
            None,
            "idle: demand, not capacity"
        );
        let first = next(None, Some(15_000.0), 3).unwrap();
        assert_eq!(first, 15_000.0);
        // Eight times the estimate in one interval counts as twice it, at a twentieth's weight.
        let after = next(Some(first), Some(120_000.0), 3).unwrap();
        assert!((15_000.0..16_000.0).contains(&after), "{after}");
        assert_eq!(next(Some(first), Some(f64::NAN), 3), Some(first));
    }
}
