//! Synthetic load reports pushed from a test (no engine, no agent), and readings from a picker's
//! `/metrics` exposition: a series' value and quantiles of a histogram.

use std::time::{SystemTime, UNIX_EPOCH};

use inferpick_schema::LoadReport;
use inferpick_schema::testing::ReportBuilder;

/// One synthetic agent: the identity it reports under and its sequence number.
#[derive(Debug, Clone)]
pub struct SynthAgent {
    /// The endpoint it reports (`ip:port`; nothing needs to listen there).
    pub address: String,
    /// The model it serves.
    pub model: String,
    /// Added to this machine's clock in `sent_at_ms`, to play an agent with a skewed clock.
    pub clock_skew_ms: i64,
    started_at_ms: u64,
    seq: u64,
}

impl SynthAgent {
    /// An agent for `address` serving `model`, started now.
    pub fn new(address: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            model: model.into(),
            clock_skew_ms: 0,
            started_at_ms: now_ms(),
            seq: 0,
        }
    }

    /// The next report: `seq` one higher, `sent_at_ms` this machine's clock plus the skew, a
    /// ready engine with `waiting` queued requests, 2 running, a quarter of its KV cache in use.
    pub fn next_report(&mut self, waiting: u32) -> LoadReport {
        self.seq += 1;
        let mut report = ReportBuilder::new(&self.address)
            .seq(self.seq)
            .started_at_ms(self.started_at_ms)
            .sent_at_ms(now_ms().saturating_add_signed(self.clock_skew_ms))
            .models(&[&self.model])
            .waiting(waiting)
            .running(2)
            .kv_utilization(0.25)
            .build();
        // Rates too, so cost-based policies see a working engine, not an unknown one.
        report.load.kv_block_size_tokens = Some(16);
        report.load.prefix_cache_hit_ratio = Some(0.0);
        report.load.prompt_tokens_per_second = Some(1000.0);
        report.load.generation_tokens_per_second = Some(500.0);
        report
    }
}

/// This machine's wall clock in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The value of the series written exactly `series` (`name{label="v"}` as exposed) in a
/// Prometheus or OpenMetrics text; `None` when absent.
pub fn series_value(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (name, rest) = line.split_once(' ')?;
        (name == series).then(|| rest.split_whitespace().next()?.parse().ok())?
    })
}

/// A histogram's cumulative buckets: `(upper bound, count)`, ascending, `+Inf` last.
#[derive(Debug, Clone, PartialEq)]
pub struct Buckets(pub Vec<(f64, f64)>);

impl Buckets {
    /// The buckets of histogram `name` (unlabelled) in an exposition text.
    pub fn parse(exposition: &str, name: &str) -> Option<Self> {
        let prefix = format!("{name}_bucket{{le=\"");
        let buckets: Vec<(f64, f64)> = exposition
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(&prefix)?;
                let (le, rest) = rest.split_once("\"}")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, rest.split_whitespace().next()?.parse().ok()?))
            })
            .collect();
        (!buckets.is_empty()).then_some(Self(buckets))
    }

    /// What was observed between `earlier` and `self` (two readings of the same histogram).
    pub fn since(&self, earlier: &Self) -> Self {
        Self(
            self.0
                .iter()
                .map(|&(le, count)| {
                    let before = earlier
                        .0
                        .iter()
                        .find(|(l, _)| *l == le)
                        .map_or(0.0, |(_, c)| *c);
                    (le, count - before)
                })
                .collect(),
        )
    }

    /// How many observations.
    pub fn count(&self) -> f64 {
        self.0.last().map_or(0.0, |(_, c)| *c)
    }

    /// The upper bound of the bucket holding quantile `q` (0..1): an upper estimate, within a
    /// factor of the bucket width. `None` without observations or when it falls in `+Inf`.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        self.0
            .iter()
            .find(|(_, count)| *count >= rank)
            .map(|(le, _)| *le)
            .filter(|le| le.is_finite())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# TYPE d histogram
d_bucket{le=\"0.001\"} 10
d_bucket{le=\"0.002\"} 90
d_bucket{le=\"0.004\"} 99
d_bucket{le=\"0.008\"} 100
d_bucket{le=\"+Inf\"} 100
d_count 100
r_total{result=\"accepted\"} 42
";

    #[test]
    fn reads_a_series_and_bucket_quantiles() {
        assert_eq!(
            series_value(TEXT, "r_total{result=\"accepted\"}"),
            Some(42.0)
        );
        assert_eq!(series_value(TEXT, "r_total{result=\"invalid\"}"), None);
        let buckets = Buckets::parse(TEXT, "d").unwrap();
        assert_eq!(buckets.count(), 100.0);
        assert_eq!(buckets.quantile(0.5), Some(0.002));
        assert_eq!(buckets.quantile(0.99), Some(0.004));
        assert_eq!(buckets.quantile(1.0), Some(0.008));
    }

    #[test]
    fn since_subtracts_an_earlier_reading() {
        let later = Buckets::parse(TEXT, "d").unwrap();
        let earlier = Buckets(vec![
            (0.001, 10.0),
            (0.002, 90.0),
            (0.004, 90.0),
            (0.008, 90.0),
            (f64::INFINITY, 90.0),
        ]);
        let delta = later.since(&earlier);
        assert_eq!(delta.count(), 10.0);
        assert_eq!(delta.quantile(0.5), Some(0.004));
    }

    #[test]
    fn synthetic_reports_validate_and_carry_the_skew() {
        let mut agent = SynthAgent::new("127.0.0.1:40001", "m");
        agent.clock_skew_ms = -3_600_000;
        let first = agent.next_report(0);
        let second = agent.next_report(3);
        assert_eq!(second.seq, first.seq + 1);
        first.validate().unwrap();
        assert!(now_ms() - first.sent_at_ms >= 3_599_000);
    }
}
