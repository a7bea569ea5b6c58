//! What a simulation run measured, per policy: the comparison table and the `--json` shape of
//! CONTRACTS.md.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

/// TTFT percentiles, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Ttft {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// End-to-end latency percentiles, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct E2e {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// One policy's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyResult {
    /// The policy's name.
    pub policy: String,
    /// Requests that arrived.
    pub requests: u64,
    /// Requests that finished.
    pub completed: u64,
    /// Requests the picker shed (429).
    pub shed: u64,
    /// Output tokens generated per second of the run.
    pub throughput_tokens_per_s: f64,
    /// Time to first token.
    pub ttft_ms: Ttft,
    /// Arrival to last token.
    pub e2e_ms: E2e,
    /// Requests per second meeting both SLOs (TTFT ≤ 2 s, time per output token ≤ 100 ms).
    pub goodput: f64,
    /// Prompt tokens the engines' prefix caches saved, over prompt tokens looked up (0 to 1);
    /// `None` where it was not measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_hit_ratio: Option<f64>,
}

/// The whole run, as `sim --json` writes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimReport {
    /// Workload name.
    pub workload: String,
    /// Pods simulated.
    pub pods: u32,
    /// One entry per policy, in the order asked.
    pub results: Vec<PolicyResult>,
}

/// Latency samples of one policy, collected as requests finish.
#[derive(Debug, Default)]
pub struct Samples {
    ttft: Vec<f64>,
    e2e: Vec<f64>,
    good: u64,
}

/// Service-level objectives of `goodput`.
pub const TTFT_SLO: Duration = Duration::from_secs(2);
/// Time per output token objective.
pub const TPOT_SLO: Duration = Duration::from_millis(100);

impl Samples {
    /// Records one finished (or cut-off) request.
    pub fn record(&mut self, ttft: Duration, e2e: Duration, output_tokens: u32, finished: bool) {
        self.ttft.push(ttft.as_secs_f64() * 1e3);
        self.e2e.push(e2e.as_secs_f64() * 1e3);
        let tpot = if output_tokens > 1 {
            e2e.saturating_sub(ttft) / (output_tokens - 1)
        } else {
            Duration::ZERO
        };
        if finished && ttft <= TTFT_SLO && tpot <= TPOT_SLO {
            self.good += 1;
        }
    }

    /// TTFT percentiles.
    pub fn ttft(&mut self) -> Ttft {
        Ttft {
            p50: percentile(&mut self.ttft, 0.50),
            p90: percentile(&mut self.ttft, 0.90),
            p99: percentile(&mut self.ttft, 0.99),
        }
    }

    /// End-to-end percentiles.
    pub fn e2e(&mut self) -> E2e {
        E2e {
            p50: percentile(&mut self.e2e, 0.50),
            p99: percentile(&mut self.e2e, 0.99),
        }
    }

    /// Requests that met both objectives.
    pub fn good(&self) -> u64 {
        self.good
    }
}

/// Nearest-rank percentile; 0 for no samples. Reorders `values`: the one at the rank is found by
/// selection, not by sorting them all (millions of samples in a large run).
pub fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    *values.select_nth_unstable_by(rank - 1, f64::total_cmp).1
}

impl SimReport {
    /// The comparison table: one row per policy, and each policy's TTFT p99 against round robin's.
    pub fn table(&self, heading: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{heading}");
        let _ = writeln!(
            s,
            "{:<14} {:>9} {:>9} {:>6} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>6} {:>8}",
            "policy",
            "requests",
            "completed",
            "shed",
            "tok/s",
            "ttft p50",
            "ttft p90",
            "ttft p99",
            "e2e p50",
            "e2e p99",
            "goodput",
            "hit %",
            "p99 vs rr"
        );
        let rr = self
            .results
            .iter()
            .find(|r| r.policy == "round-robin")
            .map(|r| r.ttft_ms.p99);
        for r in &self.results {
            let vs = match rr {
                Some(rr) if rr > 0.0 => format!("{:.2}×", r.ttft_ms.p99 / rr),
                _ => "-".into(),
            };
            let _ = writeln!(
                s,
                "{:<14} {:>9} {:>9} {:>6} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8.2} {:>6} {:>8}",
                r.policy,
                r.requests,
                r.completed,
                r.shed,
                r.throughput_tokens_per_s,
                ms(r.ttft_ms.p50),
                ms(r.ttft_ms.p90),
                ms(r.ttft_ms.p99),
                ms(r.e2e_ms.p50),
                ms(r.e2e_ms.p99),
                r.goodput,
                r.prefix_hit_ratio
                    .map_or("-".into(), |h| format!("{:.1}", h * 100.0)),
                vs
            );
        }
        s
    }
}

/// Milliseconds as a short human figure (`850ms`, `12.3s`).
pub fn ms(v: f64) -> String {
    if v < 1000.0 {
        format!("{v:.0}ms")
    } else {
        format!("{:.1}s", v / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 0.5), 50.0);
        assert_eq!(percentile(&mut v, 0.99), 99.0);
        assert_eq!(percentile(&mut [], 0.99), 0.0);
        assert_eq!(percentile(&mut [3.0], 0.01), 3.0);
    }

    #[test]
    fn percentiles_of_unordered_samples_are_those_of_the_sorted_ones() {
        // Scrambled, with repeats: the value at each rank is the sorted list's.
        let mut x = 1u64;
        let v: Vec<f64> = (0..10_001)
            .map(|_| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                ((x >> 33) % 3_000) as f64 / 7.0
            })
            .collect();
        let mut sorted = v.clone();
        sorted.sort_by(f64::total_cmp);
        for q in [0.0, 0.01, 0.5, 0.9, 0.99, 0.999, 1.0] {
            let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
            assert_eq!(percentile(&mut v.clone(), q), sorted[rank - 1], "q = {q}");
        }
    }

    #[test]
    fn goodput_counts_requests_within_both_objectives() {
        let mut s = Samples::default();
        s.record(
            Duration::from_millis(500),
            Duration::from_millis(5500),
            101,
            true,
        );
        s.record(Duration::from_secs(3), Duration::from_secs(4), 11, true);
        s.record(
            Duration::from_millis(100),
            Duration::from_secs(30),
            11,
            true,
        );
        assert_eq!(s.good(), 1);
    }

    #[test]
    fn json_has_the_contract_shape() {
        let report = SimReport {
            workload: "chat".into(),
            pods: 8,
            results: vec![PolicyResult {
                policy: "round-robin".into(),
                requests: 10,
                completed: 9,
                shed: 1,
                throughput_tokens_per_s: 100.0,
                ttft_ms: Ttft {
                    p50: 1.0,
                    p90: 2.0,
                    p99: 3.0,
                },
                e2e_ms: E2e { p50: 4.0, p99: 5.0 },
                goodput: 0.5,
                prefix_hit_ratio: Some(0.25),
            }],
        };
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(v["pods"], 8);
        let r = &v["results"][0];
        for key in [
            "policy",
            "requests",
            "completed",
            "shed",
            "throughput_tokens_per_s",
            "goodput",
            "prefix_hit_ratio",
        ] {
            assert!(r.get(key).is_some(), "{key}");
        }
        assert_eq!(r["ttft_ms"]["p99"], 3.0);
        assert_eq!(r["e2e_ms"]["p50"], 4.0);
        assert!(report.table("t").contains("1.00×"));
    }
}
