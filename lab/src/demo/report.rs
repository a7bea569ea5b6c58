//! What the demo prints and writes: the comparison table with its exact capacity and rate, the
//! verdict (a tie within [`TIE`] is called one), `demo --json`'s document, and the base URLs
//! `demo --keep` leaves serving.

use std::fmt::Write as _;

use serde::Serialize;

use super::shares::{self, FaultRun};
use super::{DEMO_MODEL, DemoConfig, DemoOutcome, KeptPolicy, REPORT_INTERVAL};
use crate::load::LoadResult;
use crate::sim::{PolicyResult, ms};

/// TTFT p99s within this fraction of each other are a tie: closer than one run's noise.
pub const TIE: f64 = 0.02;

/// Above this fraction of failed requests (neither completed nor shed) a policy's latency, taken
/// over the requests it served, cannot rank it.
pub const FAILED_FOR_NO_VERDICT: f64 = 0.01;

/// How inferpick's TTFT p99 compares with round robin's, in words; no verdict when either lost
/// requests.
pub fn verdict(round_robin: &PolicyResult, inferpick: &PolicyResult) -> String {
    for r in [round_robin, inferpick] {
        let failed = r.requests.saturating_sub(r.completed + r.shed);
        if failed as f64 > FAILED_FOR_NO_VERDICT * r.requests as f64 {
            return format!(
                "no verdict: {} failed {failed} of {} requests; the latency of the rest cannot \
                 rank the policies (see the failures above).",
                r.policy, r.requests
            );
        }
    }
    let (ip, rr) = (inferpick.ttft_ms.p99, round_robin.ttft_ms.p99);
    let ratio = ip / rr.max(1e-9);
    let word = if (ratio - 1.0).abs() <= TIE {
        format!("inferpick ties round robin (within {:.0}%)", TIE * 100.0)
    } else if ratio < 1.0 {
        "inferpick beats round robin".into()
    } else {
        "inferpick trails round robin".into()
    };
    format!(
        "{word} on TTFT p99: {} vs {} ({ratio:.2}×), at {:.0} vs {:.0} output tokens/s.",
        ms(ip),
        ms(rr),
        inferpick.throughput_tokens_per_s,
        round_robin.throughput_tokens_per_s
    )
}

/// The capacity and rate, exactly (shortest round-tripping decimals), and how to drive a peer
/// router at the same rate.
pub fn capacity_line(config: &DemoConfig, capacity_per_pod: f64, rate: f64) -> String {
    format!(
        "capacity {capacity_per_pod} requests/s per pod × {} pods; load {} → {rate} requests/s \
         (`inferpick-lab capacity` with the same --workload, --pods, --load and --seed prints it; \
         `inferpick-lab load --rate {rate}` drives another router at it)",
        config.pods, config.load
    )
}

/// The demo's printed result: heading, table, errors, capacity and verdict.
pub fn text(config: &DemoConfig, outcome: &DemoOutcome) -> String {
    let heading = format!(
        "inferpick demo · workload {} · {} pods · {:.1} requests/s offered ({:.0}% of capacity) · {} per policy",
        config.workload.name,
        config.pods,
        outcome.rate,
        config.load * 100.0,
        humantime::format_duration(config.duration)
    );
    let mut out = format!("\n{}", outcome.report.table(&heading));
    for r in &outcome.runs {
        for (kind, count) in &r.errors {
            let example = r.error_examples.get(kind).map_or("", String::as_str);
            let _ = writeln!(out, "failed through {}: {count} × {kind}: {example}", r.url);
        }
    }
    let _ = writeln!(
        out,
        "\n{}",
        capacity_line(config, outcome.capacity_per_pod, outcome.rate)
    );
    if let [rr, ip] = &outcome.report.results[..] {
        let _ = writeln!(out, "{}", verdict(rr, ip));
    }
    for run in &outcome.faults {
        let _ = write!(out, "\n{}", shares::text(run, REPORT_INTERVAL));
    }
    out
}

/// `demo --json`'s document.
#[derive(Debug, Serialize)]
pub struct DemoJson<'a> {
    /// Workload name.
    pub workload: &'a str,
    /// Emulated pods per fleet.
    pub pods: u32,
    /// `builtin`, `nginx` or `envoy`.
    pub gateway: String,
    /// Whether the engines published KV events.
    pub kv_events: bool,
    /// Seconds each policy was driven.
    pub duration_s: f64,
    /// Seed of arrivals and lengths.
    pub seed: u64,
    /// Offered load, a fraction of capacity.
    pub load: f64,
    /// Requests per second one pod completes.
    pub capacity_per_pod: f64,
    /// Offered requests per second.
    pub rate: f64,
    /// The comparison's rows (the `sim --json` shape).
    pub results: &'a [PolicyResult],
    /// Each policy's load run in full (means, percentiles, errors, and records when asked).
    pub runs: &'a [LoadResult],
    /// The verdict line.
    pub verdict: Option<String>,
    /// With `--fault`: per policy, requests per pod per second and each fault's measures.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub faults: &'a [FaultRun],
}

/// The document `demo --json` writes.
pub fn json<'a>(config: &'a DemoConfig, outcome: &'a DemoOutcome) -> DemoJson<'a> {
    use clap::ValueEnum as _;
    DemoJson {
        workload: &config.workload.name,
        pods: config.pods,
        gateway: config
            .gateway
            .to_possible_value()
            .map_or_else(String::new, |v| v.get_name().to_string()),
        kv_events: config.kv_events,
        duration_s: config.duration.as_secs_f64(),
        seed: config.seed,
        load: config.load,
        capacity_per_pod: outcome.capacity_per_pod,
        rate: outcome.rate,
        results: &outcome.report.results,
        runs: &outcome.runs,
        verdict: match &outcome.report.results[..] {
            [rr, ip] => Some(verdict(rr, ip)),
            _ => None,
        },
        faults: &outcome.faults,
    }
}

/// The base URLs of the kept policies (`http://host:port/v1`, what OpenAI clients take as
/// `base_url`), one line each that starts with two spaces and the policy's name, then the
/// fleets' own addresses.
pub fn urls(kept: &[KeptPolicy]) -> String {
    let mut out = format!("serving until Ctrl-C; OpenAI base URLs (model {DEMO_MODEL}):\n");
    for k in kept {
        let addr = k.gateway.addr();
        let _ = writeln!(
            out,
            "  {:<12} http://{addr}/v1   (server root http://{addr})",
            k.policy
        );
    }
    out.push_str("fleets (a fresh one per policy):\n");
    for k in kept {
        let f = &k.fleet;
        let _ = writeln!(
            out,
            "  {}: picker http://{}/v1/endpoints · engines {}",
            k.policy,
            f.picker,
            f.endpoints().join(" ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{E2e, Ttft};

    fn row(policy: &str, p99: f64) -> PolicyResult {
        PolicyResult {
            policy: policy.into(),
            requests: 100,
            completed: 100,
            shed: 0,
            throughput_tokens_per_s: 500.0,
            ttft_ms: Ttft {
                p50: 10.0,
                p90: 20.0,
                p99,
            },
            e2e_ms: E2e::default(),
            goodput: 1.0,
            prefix_hit_ratio: None,
        }
    }

    #[test]
    fn within_two_percent_is_a_tie_not_a_win() {
        let rr = row("round-robin", 79.0);
        let same = verdict(&rr, &row("inferpick", 79.0));
        assert!(same.starts_with("inferpick ties round robin"), "{same}");
        let close = verdict(&rr, &row("inferpick", 77.8));
        assert!(close.starts_with("inferpick ties"), "{close}");
        let better = verdict(&rr, &row("inferpick", 60.0));
        assert!(
            better.starts_with("inferpick beats round robin"),
            "{better}"
        );
        let worse = verdict(&rr, &row("inferpick", 95.0));
        assert!(worse.starts_with("inferpick trails round robin"), "{worse}");
    }

    #[test]
    fn a_policy_that_lost_requests_gets_no_verdict() {
        let rr = row("round-robin", 900.0);
        let lossy = PolicyResult {
            completed: 90,
            ..row("inferpick", 60.0)
        };
        let v = verdict(&rr, &lossy);
        assert!(
            v.starts_with("no verdict: inferpick failed 10 of 100"),
            "{v}"
        );
        // Shed requests are answers, not failures.
        let shedding = PolicyResult {
            completed: 90,
            shed: 10,
            ..row("inferpick", 60.0)
        };
        assert!(verdict(&rr, &shedding).starts_with("inferpick beats"));
    }
}
