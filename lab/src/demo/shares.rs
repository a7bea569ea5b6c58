//! How routing followed a fault: each pod's share of the requests that arrived at the emulators
//! (served or refused) in 1 s windows, against the share its capacity now earns — its capacity
//! × speed over the fleet's (a lost pod earns none).

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::fault::{Fault, FaultAction};

/// The width of a timeline's windows.
pub const WINDOW: Duration = Duration::from_secs(1);

/// A window's share counts as settled within this fraction of the expected share.
pub const SETTLED_WITHIN: f64 = 0.2;

/// Shares after a fault are taken from this long after it (the target for settling).
pub const SETTLE_TIME: Duration = Duration::from_secs(5);

/// One policy's run with faults: requests per pod per window, and each fault's measures.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRun {
    /// The gateway policy.
    pub policy: String,
    /// Requests that arrived at each pod (inner index) in each 1 s window from the start.
    pub counts: Vec<Vec<u32>>,
    /// One entry per fault, in time order.
    pub faults: Vec<FaultShares>,
}

/// How the faulted pod's share moved.
#[derive(Debug, Clone, Serialize)]
pub struct FaultShares {
    /// The fault, as `--fault` takes it.
    pub fault: String,
    /// The faulted pod.
    pub pod: u32,
    /// When, from the start of the run.
    pub at_s: f64,
    /// The pod's share its capacity earns after the fault: capacity × speed / the fleet's.
    pub expected_share: f64,
    /// The pod's share in each window (`None`: no request arrived anywhere).
    pub timeline: Vec<Option<f64>>,
    /// Every pod's share from the previous fault (or the start) until this one.
    pub shares_before: Vec<f64>,
    /// Every pod's share from [`SETTLE_TIME`] after the fault until the next fault (or the
    /// end); empty when that span is empty.
    pub shares_after: Vec<f64>,
    /// From the fault to the end of the first window (starting at or after it) whose share is
    /// within [`SETTLED_WITHIN`] of the expected share; `None` if none was before the next fault.
    pub settled_after_s: Option<f64>,
    /// For a lost GPU: requests that still arrived at the pod after the fault plus one agent
    /// report interval, until the next fault (none should).
    pub routed_after_report: Option<u64>,
}

/// Measures `faults` over one run: `arrivals[pod]` are the times requests arrived at each pod
/// (from the run's start), `capacity[pod]` the requests per second each completes at full speed.
pub fn measure(
    policy: &str,
    faults: &[Fault],
    arrivals: &[Vec<Duration>],
    capacity: &[f64],
    duration: Duration,
    report_interval: Duration,
) -> FaultRun {
    let windows = (duration.as_secs_f64() / WINDOW.as_secs_f64())
        .ceil()
        .max(1.0) as usize;
    let mut counts = vec![vec![0u32; arrivals.len()]; windows];
    for (pod, times) in arrivals.iter().enumerate() {
        for t in times {
            let w = ((t.as_secs_f64() / WINDOW.as_secs_f64()) as usize).min(windows - 1);
            counts[w][pod] += 1;
        }
    }
    let mut order: Vec<&Fault> = faults.iter().collect();
    order.sort_by_key(|f| f.at);
    let mut speed = vec![1.0; arrivals.len()];
    let mut measured = Vec::new();
    for (i, f) in order.iter().enumerate() {
        speed[f.pod as usize] = match f.action {
            FaultAction::Throttle(s) => s,
            FaultAction::Lost => 0.0,
            FaultAction::Recover => 1.0,
        };
        // Faults at the same time all count in the capacity the pod's share is judged against.
        let mut fleet = speed.clone();
        for g in order[i + 1..].iter().take_while(|g| g.at == f.at) {
            fleet[g.pod as usize] = match g.action {
                FaultAction::Throttle(s) => s,
                FaultAction::Lost => 0.0,
                FaultAction::Recover => 1.0,
            };
        }
        let earned: Vec<f64> = capacity.iter().zip(&fleet).map(|(c, s)| c * s).collect();
        let total: f64 = earned.iter().sum();
        let expected = earned[f.pod as usize] / total.max(f64::MIN_POSITIVE);
        let before = order[..i]
            .iter()
            .map(|g| g.at)
            .filter(|&t| t < f.at)
            .max()
            .unwrap_or_default();
        let next = order[i..]
            .iter()
            .map(|g| g.at)
            .find(|&t| t > f.at)
            .unwrap_or(duration);
        let timeline = timeline(&counts, f.pod as usize);
        measured.push(FaultShares {
            fault: f.to_string(),
            pod: f.pod,
            at_s: f.at.as_secs_f64(),
            expected_share: expected,
            shares_before: shares(arrivals, before, f.at),
            shares_after: shares(arrivals, f.at + SETTLE_TIME, next),
            settled_after_s: settled(&timeline, f.at, next, expected),
            routed_after_report: (f.action == FaultAction::Lost).then(|| {
                arrivals[f.pod as usize]
                    .iter()
                    .filter(|&&t| t > f.at + report_interval && t < next)
                    .count() as u64
            }),
            timeline,
        });
    }
    FaultRun {
        policy: policy.to_string(),
        counts,
        faults: measured,
    }
}

/// Pod `pod`'s share of each window's requests.
fn timeline(counts: &[Vec<u32>], pod: usize) -> Vec<Option<f64>> {
    counts
        .iter()
        .map(|w| {
            let all: u32 = w.iter().sum();
            (all > 0).then(|| f64::from(w[pod]) / f64::from(all))
        })
        .collect()
}

/// Every pod's share of the requests that arrived in `[from, to)`; empty when none did.
fn shares(arrivals: &[Vec<Duration>], from: Duration, to: Duration) -> Vec<f64> {
    let per_pod: Vec<usize> = arrivals
        .iter()
        .map(|times| times.iter().filter(|&&t| t >= from && t < to).count())
        .collect();
    let all: usize = per_pod.iter().sum();
    if all == 0 {
        return Vec::new();
    }
    per_pod.iter().map(|&n| n as f64 / all as f64).collect()
}

/// Seconds from `at` to the end of the first window starting at or after it, and ending by
/// `next`, whose share is within [`SETTLED_WITHIN`] of `expected`.
fn settled(timeline: &[Option<f64>], at: Duration, next: Duration, expected: f64) -> Option<f64> {
    let w = WINDOW.as_secs_f64();
    let first = (at.as_secs_f64() / w).ceil() as usize;
    (first..timeline.len())
        .take_while(|&i| (i + 1) as f64 * w <= next.as_secs_f64() + 1e-9)
        .find(|&i| timeline[i].is_some_and(|s| (s - expected).abs() <= SETTLED_WITHIN * expected))
        .map(|i| (i + 1) as f64 * w - at.as_secs_f64())
}

fn percent(share: f64) -> String {
    format!("{:.0}%", share * 100.0)
}

fn percents(shares: &[f64]) -> String {
    if shares.is_empty() {
        return "n/a".into();
    }
    shares
        .iter()
        .map(|&s| percent(s))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The measures of one policy's run, a few lines per fault: the expected share, the shares
/// before and after, how long the pod's share took to settle, a lost pod's late requests, and
/// the faulted pod's timeline (`|` marks the fault, `·` a window without requests).
pub fn text(run: &FaultRun, report_interval: Duration) -> String {
    let mut out = String::new();
    for f in &run.faults {
        let settled = match f.settled_after_s {
            Some(s) => format!(
                "within {:.0}% of it {s:.1} s after the fault",
                SETTLED_WITHIN * 100.0
            ),
            None => format!(
                "never within {:.0}% of it before the next fault",
                SETTLED_WITHIN * 100.0
            ),
        };
        let _ = writeln!(
            out,
            "{} through {}: pod-{} should get {} of requests; its 1 s share was {settled}",
            f.fault,
            run.policy,
            f.pod,
            percent(f.expected_share)
        );
        let _ = writeln!(
            out,
            "  shares per pod before: {} · from {} s after: {}",
            percents(&f.shares_before),
            SETTLE_TIME.as_secs(),
            percents(&f.shares_after)
        );
        if let Some(n) = f.routed_after_report {
            let _ = writeln!(
                out,
                "  {n} requests reached pod-{} after the fault + one report interval ({})",
                f.pod,
                humantime::format_duration(report_interval)
            );
        }
        let fault_window = (f.at_s / WINDOW.as_secs_f64()).ceil() as usize;
        let mut line = format!("  pod-{} share per {} s (%):", f.pod, WINDOW.as_secs());
        for (i, s) in f.timeline.iter().enumerate() {
            if i == fault_window {
                line.push_str(" |");
            }
            match s {
                Some(s) => {
                    let _ = write!(line, " {:.0}", s * 100.0);
                }
                None => line.push_str(" ·"),
            }
        }
        let _ = writeln!(out, "{line}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// `per_window[w]` requests to each pod in window `w`, spread evenly across the window.
    fn arrivals(per_window: &[[u32; 4]]) -> Vec<Vec<Duration>> {
        let mut out = vec![Vec::new(); 4];
        for (w, counts) in per_window.iter().enumerate() {
            for (pod, &n) in counts.iter().enumerate() {
                for k in 0..n {
                    out[pod].push(at(w as f64 + (f64::from(k) + 0.5) / f64::from(n)));
                }
            }
        }
        out
    }

    #[test]
    fn a_throttled_pods_share_is_judged_against_its_new_capacity() {
        let fault: Fault = "pod-2:throttle=0.5@2s".parse().unwrap();
        // Even until 2 s; then pod 2 keeps its share one window, then gets 1 in 10.
        let mut windows = vec![[7, 7, 7, 7]; 3];
        windows.extend(vec![[12, 12, 4, 12]; 8]);
        let run = measure(
            "inferpick",
            std::slice::from_ref(&fault),
            &arrivals(&windows),
            &[10.0; 4],
            at(11.0),
            at(0.1),
        );
        let f = &run.faults[0];
        assert!((f.expected_share - 0.5 / 3.5).abs() < 1e-12);
        assert_eq!(f.shares_before, vec![0.25; 4]);
        assert_eq!(f.shares_after, vec![0.3, 0.3, 0.1, 0.3]);
        // Window 2 (the first after the fault) is still even, and 10% is not within 20% of 14.3%.
        assert_eq!(f.settled_after_s, None);
        assert_eq!(f.routed_after_report, None);
        assert_eq!(run.counts.len(), 11);
        assert_eq!(f.timeline[0], Some(0.25));
        // With 5 of 35 (14%) from window 3 on, it settles when window 3 ends.
        let mut close = vec![[7, 7, 7, 7]; 3];
        close.extend(vec![[10, 10, 5, 10]; 8]);
        let run = measure(
            "x",
            &[fault],
            &arrivals(&close),
            &[10.0; 4],
            at(11.0),
            at(0.1),
        );
        assert_eq!(run.faults[0].settled_after_s, Some(2.0));
        let text = text(&run, at(0.1));
        assert!(text.contains("pod-2 should get 14% of requests"), "{text}");
        assert!(
            text.contains("share per 1 s (%): 25 25 | 25 14 14"),
            "{text}"
        );
    }

    #[test]
    fn a_lost_pod_counts_what_still_reached_it_after_one_report() {
        let faults: Vec<Fault> = ["pod-3:lost@2s", "pod-3:recover@6s"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let mut a = arrivals(&[[5, 5, 5, 5]; 8]);
        // Pod 3 got requests up to 2.05 s (inside the report interval) and one at 3.5 s.
        a[3].retain(|t| *t < at(2.0) || *t >= at(6.0));
        a[3].extend([at(2.05), at(3.5)]);
        let run = measure("inferpick", &faults, &a, &[10.0; 4], at(8.0), at(0.1));
        let lost = &run.faults[0];
        assert_eq!(lost.expected_share, 0.0);
        assert_eq!(lost.routed_after_report, Some(1), "only the one at 3.5 s");
        assert_eq!(
            lost.settled_after_s,
            Some(3.0),
            "window 4 is the first without any"
        );
        let back = &run.faults[1];
        assert_eq!(back.expected_share, 0.25);
        assert_eq!(back.routed_after_report, None);
        assert!(text(&run, at(0.1)).contains("1 requests reached pod-3 after the fault"));
    }
}
