//! Parse + normalize of an ~80 KB vLLM exposition, against a plain line split of the same bytes.
//!
//! `cargo bench -p inferpick-agent --bench parse` prints criterion's figures, then the ratio of the
//! two medians measured in this run (the machines are shared and noisy; only ratios compare).

use std::fmt::Write;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use inferpick_agent::dialect;
use inferpick_agent::expo::Exposition;
use inferpick_agent::rates::Rates;

/// A vLLM V1 exposition of about 80 KB: the scheduler gauges and counters of two DP engines plus
/// the latency histograms that make up most of a real one's size.
fn vllm_exposition() -> String {
    let base = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/metrics/vllm-v1-dp2.prom"
    ))
    .unwrap();
    let mut text = base;
    let families = [
        "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds",
        "vllm:request_inference_time_seconds",
        "vllm:request_prefill_time_seconds",
        "vllm:request_decode_time_seconds",
        "vllm:time_per_output_token_seconds",
        "vllm:inter_token_latency_seconds",
        "vllm:request_prompt_tokens",
        "vllm:request_generation_tokens",
        "vllm:iteration_tokens_total",
        "vllm:request_max_num_generation_tokens",
        "vllm:request_params_max_tokens",
    ];
    let mut i = 0;
    while text.len() < 80 * 1024 {
        let family = families[i % families.len()];
        let engine = (i / families.len()) % 2;
        let _ = writeln!(
            text,
            "# HELP {family} Histogram of {family}.\n# TYPE {family} histogram"
        );
        for le in [
            "0.3", "0.5", "0.8", "1.0", "1.5", "2.0", "2.5", "5.0", "10.0", "15.0", "20.0", "30.0",
            "40.0", "50.0", "60.0", "+Inf",
        ] {
            let _ = writeln!(
                text,
                "{family}_bucket{{engine=\"{engine}\",le=\"{le}\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"}} {}.0",
                i * 7 + 3
            );
        }
        let _ = writeln!(
            text,
            "{family}_count{{engine=\"{engine}\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"}} 812.0"
        );
        let _ = writeln!(
            text,
            "{family}_sum{{engine=\"{engine}\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"}} 1021.5"
        );
        i += 1;
    }
    text
}

fn parse_and_normalize(text: &str, rates: &mut Rates) -> Option<u32> {
    let expo = Exposition::parse(text).unwrap();
    let d = dialect::detect(&expo).unwrap();
    let load = rates.normalize(&d.read(&expo), Duration::from_secs(1));
    load.requests_waiting
}

fn median_ns(group: &str, name: &str) -> Option<f64> {
    let dir = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").into());
    let path = format!("{dir}/criterion/{group}/{name}/new/estimates.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn main() {
    let text = vllm_exposition();
    let mut c = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(3));
    {
        let mut g = c.benchmark_group("vllm_80kb");
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function("line_split", |b| {
            b.iter(|| {
                black_box(&text)
                    .split('\n')
                    .filter(|l| !l.is_empty())
                    .count()
            })
        });
        let mut rates = Rates::default();
        g.bench_function("parse_normalize", |b| {
            b.iter(|| parse_and_normalize(black_box(&text), &mut rates))
        });
        g.finish();
    }
    c.final_summary();
    if let (Some(split), Some(parse)) = (
        median_ns("vllm_80kb", "line_split"),
        median_ns("vllm_80kb", "parse_normalize"),
    ) {
        println!(
            "\nparse+normalize of a {} KB vLLM exposition: {:.1} µs (median); line split: {:.1} µs; ratio {:.1}x",
            text.len() / 1024,
            parse / 1e3,
            split / 1e3,
            parse / split
        );
    }
}
