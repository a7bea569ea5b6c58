//! The bake-off's result: a row per contender (its load run, the engines' prefix-cache hit rate,
//! and the requests each pod finished), the table `bench` prints and the document `--json` writes.

use std::fmt::Write as _;

use serde::Serialize;

use super::Contender;
use crate::load::{Latency, LoadResult};
use crate::sim::ms;

/// One contender's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    /// Its `--contenders` name.
    pub contender: String,
    /// What fronted the fleet, in words.
    pub route: String,
    /// Why it did not run (`null` when it did).
    pub not_run: Option<String>,
    /// Its load run in full (`null` when it did not run).
    pub run: Option<LoadResult>,
    /// The share of prompt tokens the engines' prefix caches served, over the fleet.
    pub prefix_hit_ratio: Option<f64>,
    /// Requests each pod finished, in pod order.
    pub requests_per_pod: Vec<u64>,
}

impl BenchRow {
    /// A contender that ran.
    pub fn measured(
        contender: Contender,
        run: LoadResult,
        prefix_hit_ratio: Option<f64>,
        requests_per_pod: Vec<u64>,
    ) -> BenchRow {
        BenchRow {
            contender: contender.name(),
            route: contender.route().into(),
            not_run: None,
            run: Some(run),
            prefix_hit_ratio,
            requests_per_pod,
        }
    }

    /// A contender that could not start, and why.
    pub fn not_run(contender: Contender, why: String) -> BenchRow {
        BenchRow {
            contender: contender.name(),
            route: contender.route().into(),
            not_run: Some(why),
            run: None,
            prefix_hit_ratio: None,
            requests_per_pod: Vec::new(),
        }
    }
}

/// The whole bake-off; `bench --json` writes it.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Workload name.
    pub workload: String,
    /// Emulated pods per fleet.
    pub pods: u32,
    /// Offered load, a fraction of capacity.
    pub load: f64,
    /// Seconds each contender was driven.
    pub duration_s: f64,
    /// Seed of arrivals and lengths.
    pub seed: u64,
    /// Whether the engines published KV events.
    pub kv_events: bool,
    /// Requests per second one pod completes (what `capacity` prints).
    pub capacity_per_pod: f64,
    /// Offered requests per second, the same for every contender.
    pub rate: f64,
    /// A row per contender, in the order they ran.
    pub rows: Vec<BenchRow>,
}

/// The table's columns: name, then right-aligned figures.
const HEADER: [&str; 12] = [
    "contender",
    "requests",
    "errors",
    "ttft p50",
    "ttft p90",
    "ttft p99",
    "e2e p50",
    "e2e p99",
    "tok/s",
    "goodput",
    "hit %",
    "per pod",
];

fn line(cells: &[String]) -> String {
    let mut out = format!("{:<20}", cells[0]);
    for (i, c) in cells[1..].iter().enumerate() {
        // The last column (requests per pod) is left-aligned: its width varies with the pods.
        if i + 2 == cells.len() {
            let _ = write!(out, "  {c}");
        } else {
            let _ = write!(out, " {c:>9}");
        }
    }
    out.trim_end().to_string()
}

/// A measured row's cells.
fn cells(name: &str, run: &LoadResult, hit: Option<f64>, per_pod: &[u64]) -> Vec<String> {
    let lat =
        |l: Option<Latency>, f: fn(&Latency) -> f64| l.as_ref().map_or("-".into(), |l| ms(f(l)));
    vec![
        name.to_string(),
        run.requests.to_string(),
        run.failed.to_string(),
        lat(run.ttft_ms, |l| l.p50),
        lat(run.ttft_ms, |l| l.p90),
        lat(run.ttft_ms, |l| l.p99),
        lat(run.e2e_ms, |l| l.p50),
        lat(run.e2e_ms, |l| l.p99),
        format!("{:.0}", run.throughput_tokens_per_s),
        format!("{:.2}/s", run.goodput),
        hit.map_or("-".into(), |h| format!("{:.0}", h * 100.0)),
        per_pod
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("/"),
    ]
}

/// At most [`EXAMPLE_CHARS`] characters of a failure's message: a refusal may quote the whole
/// request back, prompt included.
fn shortened(message: &str) -> String {
    match message.char_indices().nth(EXAMPLE_CHARS) {
        Some((end, _)) => format!("{}…", &message[..end]),
        None => message.to_string(),
    }
}

/// How much of a failure's message the table shows (`--json` keeps it whole).
const EXAMPLE_CHARS: usize = 160;

impl BenchReport {
    /// The printed result: heading, a line per contender, what each contender's route was, then
    /// every failure by kind and every contender that did not run, with why.
    pub fn text(&self) -> String {
        let mut out = format!(
            "bake-off · workload {} · {} pods · load {} → {} requests/s (capacity {} per pod) · {} per contender · seed {} · KV events {}\n",
            self.workload,
            self.pods,
            self.load,
            self.rate,
            self.capacity_per_pod,
            humantime::format_duration(std::time::Duration::from_secs_f64(self.duration_s)),
            self.seed,
            if self.kv_events { "on" } else { "off" }
        );
        let header: Vec<String> = HEADER.iter().map(|h| h.to_string()).collect();
        let _ = writeln!(out, "{}", line(&header));
        for r in &self.rows {
            let row = match &r.run {
                Some(run) => line(&cells(
                    &r.contender,
                    run,
                    r.prefix_hit_ratio,
                    &r.requests_per_pod,
                )),
                None => format!("{:<20} not run (see below)", r.contender),
            };
            let _ = writeln!(out, "{row}");
        }
        out.push('\n');
        for r in &self.rows {
            let _ = writeln!(out, "{:<20} {}", r.contender, r.route);
        }
        for r in &self.rows {
            if let Some(run) = &r.run {
                for (kind, count) in &run.errors {
                    let example = run.error_examples.get(kind).map_or("", String::as_str);
                    let example = shortened(example);
                    let _ = writeln!(
                        out,
                        "failed through {}: {count} × {kind}: {example}",
                        r.contender
                    );
                }
            }
            if let Some(why) = &r.not_run {
                let _ = writeln!(out, "not run: {}: {why}", r.contender);
            }
        }
        out
    }
}
