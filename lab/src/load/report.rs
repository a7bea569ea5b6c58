//! What a load run measured, per request and in all: the summary `load` prints, the `--json`
//! document, and the failure rate `load` exits non-zero above.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::sim::{ms, percentile};

/// Latency of completed requests, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
}

impl Latency {
    /// The latency of `values`; `None` when there are none.
    pub fn of(mut values: Vec<f64>) -> Option<Latency> {
        if values.is_empty() {
            return None;
        }
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        Some(Latency {
            mean,
            p50: percentile(&mut values, 0.50),
            p90: percentile(&mut values, 0.90),
            p99: percentile(&mut values, 0.99),
        })
    }

    fn line(this: Option<Latency>) -> String {
        match this {
            Some(l) => format!(
                "mean {} p50 {} p90 {} p99 {}",
                ms(l.mean),
                ms(l.p50),
                ms(l.p90),
                ms(l.p99)
            ),
            None => "none completed".into(),
        }
    }
}

/// One request, as `load --json-requests` writes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestRecord {
    /// The workload's request id.
    pub id: u64,
    /// When it was sent, milliseconds after the run started.
    pub sent_ms: f64,
    /// Index of the workload class it was drawn from.
    pub class: usize,
    /// The model (or adapter) it named.
    pub model: String,
    /// Prompt tokens sent.
    pub prompt_tokens: u32,
    /// Output tokens asked for.
    pub max_tokens: u32,
    /// `ok`, or why it failed: an HTTP status (`"429"`), `connect`, `timeout` or `stream`.
    pub outcome: String,
    /// Time to the first token, when one came.
    pub ttft_ms: Option<f64>,
    /// Time to the last token, or to the failure.
    pub e2e_ms: f64,
    /// Output tokens received.
    pub output_tokens: u32,
}

/// What a load run measured; `load --json` writes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadResult {
    /// Where the load went.
    pub url: String,
    /// `completions` or `chat`.
    pub api: String,
    /// The model base-model requests named.
    pub model: String,
    /// Workload name.
    pub workload: String,
    /// Offered requests per second.
    pub rate: f64,
    /// Seconds during which requests were sent.
    pub duration_s: f64,
    /// Requests sent.
    pub requests: u64,
    /// Requests answered in full.
    pub completed: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Failed requests by HTTP status (`"429"`, `"503"`) or by `connect`, `timeout`, `stream`.
    pub errors: BTreeMap<String, u64>,
    /// The first failure of each kind, in words (the server's error message where it gave one).
    pub error_examples: BTreeMap<String, String>,
    /// Output tokens received per second of the run.
    pub throughput_tokens_per_s: f64,
    /// Time to first token of completed requests (`null` when none completed).
    pub ttft_ms: Option<Latency>,
    /// End-to-end latency of completed requests (`null` when none completed).
    pub e2e_ms: Option<Latency>,
    /// Completed requests per second within TTFT ≤ 2 s and ≤ 100 ms per output token.
    pub goodput: f64,
    /// Every request, in the order they were sent (with `--json-requests`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records: Option<Vec<RequestRecord>>,
}

impl LoadResult {
    /// Failed requests over requests sent (0 when none were sent).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.failed as f64 / self.requests as f64
        }
    }

    /// A short human summary, with a line per kind of failure.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "{} requests to {} ({} API, model {}; {} at {}/s for {:.0}s): {} completed, {} failed ({:.1}%)\n\
             TTFT {} · e2e {}\n\
             {:.0} output tokens/s · goodput {:.2}/s",
            self.requests,
            self.url,
            self.api,
            self.model,
            self.workload,
            self.rate,
            self.duration_s,
            self.completed,
            self.failed,
            self.error_rate() * 100.0,
            Latency::line(self.ttft_ms),
            Latency::line(self.e2e_ms),
            self.throughput_tokens_per_s,
            self.goodput
        );
        for (kind, count) in &self.errors {
            let example = self.error_examples.get(kind).map_or("", String::as_str);
            let _ = write!(out, "\nfailed: {count} × {kind}: {example}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_has_a_mean_and_nearest_rank_percentiles() {
        let l = Latency::of((1..=100).map(f64::from).collect()).unwrap();
        assert_eq!((l.mean, l.p50, l.p90, l.p99), (50.5, 50.0, 90.0, 99.0));
        assert_eq!(Latency::of(Vec::new()), None);
    }
}
