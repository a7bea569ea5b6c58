//! The metric names of CONTRACTS.md ("Metrics"): what dashboards and alerts may read.

/// Which process exports a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exporter {
    /// `inferpick-agent`, `:9400/metrics`.
    Agent,
    /// `inferpick-picker`, `:9000/metrics`.
    Picker,
}

/// The Prometheus type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A gauge (also used for info metrics, which Prometheus stores as a gauge of 1).
    Gauge,
    /// A counter; its name already ends in `_total`.
    Counter,
    /// A histogram, stored as `_bucket`, `_sum` and `_count` series.
    Histogram,
}

/// One metric family of the contract.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// The family's name as Prometheus stores it (counters with `_total`).
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
    /// Who exports it.
    pub exporter: Exporter,
}

const fn m(name: &'static str, kind: Kind, exporter: Exporter) -> Metric {
    Metric {
        name,
        kind,
        exporter,
    }
}

use Exporter::{Agent, Picker};
use Kind::{Counter, Gauge, Histogram};

/// Every metric family of CONTRACTS.md, and the extensions the README lists.
pub const METRICS: &[Metric] = &[
    m("inferpick_endpoint_requests_waiting", Gauge, Agent),
    m("inferpick_endpoint_requests_running", Gauge, Agent),
    m("inferpick_endpoint_kv_cache_utilization", Gauge, Agent),
    m("inferpick_endpoint_kv_cache_capacity_tokens", Gauge, Agent),
    m("inferpick_endpoint_prefix_cache_hit_ratio", Gauge, Agent),
    m("inferpick_endpoint_prompt_tokens_per_second", Gauge, Agent),
    m(
        "inferpick_endpoint_generation_tokens_per_second",
        Gauge,
        Agent,
    ),
    m("inferpick_endpoint_adapters_running", Gauge, Agent),
    m("inferpick_endpoint_ready", Gauge, Agent),
    m("inferpick_gpu_memory_used_bytes", Gauge, Agent),
    m("inferpick_gpu_memory_total_bytes", Gauge, Agent),
    m("inferpick_gpu_utilization_ratio", Gauge, Agent),
    m("inferpick_gpu_temperature_celsius", Gauge, Agent),
    m("inferpick_gpu_power_watts", Gauge, Agent),
    // GPU health (the agent's extensions of the contract).
    m("inferpick_gpu_lost", Gauge, Agent),
    m("inferpick_gpu_fatal", Gauge, Agent),
    m("inferpick_gpu_sm_clock_ratio", Gauge, Agent),
    m("inferpick_gpu_throttle_active", Gauge, Agent),
    m("inferpick_gpu_xid_errors", Gauge, Agent),
    m("inferpick_gpu_ecc_uncorrectable_errors", Gauge, Agent),
    m("inferpick_gpu_retired_pages_pending", Gauge, Agent),
    m("inferpick_gpu_remapped_rows_pending", Gauge, Agent),
    m("inferpick_gpu_remapped_rows_failed", Gauge, Agent),
    m("inferpick_gpu_pcie_link_width_ratio", Gauge, Agent),
    m("inferpick_gpu_pcie_link_generation_ratio", Gauge, Agent),
    m("inferpick_agent_scrapes_total", Counter, Agent),
    m("inferpick_agent_scrape_duration_seconds", Histogram, Agent),
    m("inferpick_agent_pushes_total", Counter, Agent),
    m("inferpick_agent_push_duration_seconds", Histogram, Agent),
    m("inferpick_agent_info", Gauge, Agent),
    m("inferpick_picker_decisions_total", Counter, Picker),
    m(
        "inferpick_picker_decision_duration_seconds",
        Histogram,
        Picker,
    ),
    m("inferpick_picker_reports_total", Counter, Picker),
    m("inferpick_picker_endpoints", Gauge, Picker),
    m("inferpick_picker_report_age_seconds", Gauge, Picker),
    m("inferpick_picker_inflight_estimate", Gauge, Picker),
    m("inferpick_picker_routed_total", Counter, Picker),
    m("inferpick_picker_pool_saturation", Gauge, Picker),
    m("inferpick_picker_info", Gauge, Picker),
    // Token-exact prefix routing (the picker's extensions of the contract).
    m("inferpick_picker_kv_events_total", Counter, Picker),
    m("inferpick_picker_kv_blocks_total", Counter, Picker),
    m("inferpick_picker_kv_index_blocks", Gauge, Picker),
    m("inferpick_picker_kv_stream_live", Gauge, Picker),
    m(
        "inferpick_picker_prefix_prediction_error_tokens",
        Histogram,
        Picker,
    ),
    m(
        "inferpick_picker_prefix_predicted_tokens_total",
        Counter,
        Picker,
    ),
    m(
        "inferpick_picker_prefix_actual_tokens_total",
        Counter,
        Picker,
    ),
    m(
        "inferpick_picker_routed_prompt_tokens_total",
        Counter,
        Picker,
    ),
    m(
        "inferpick_picker_predicted_cached_tokens_total",
        Counter,
        Picker,
    ),
];

/// Series names Prometheus itself records for every scrape target.
pub const SCRAPE_SERIES: &[&str] = &[
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_series_added",
];

/// The contract family a stored series name belongs to (`…_bucket` → its histogram), if any.
pub fn family_of(series: &str) -> Option<&'static Metric> {
    METRICS.iter().find(|metric| {
        series == metric.name
            || (metric.kind == Kind::Histogram
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| series.strip_suffix(suffix) == Some(metric.name)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_series_map_to_their_family() {
        let family = family_of("inferpick_picker_decision_duration_seconds_bucket").unwrap();
        assert_eq!(family.name, "inferpick_picker_decision_duration_seconds");
        assert!(family_of("inferpick_picker_decisions_total").is_some());
        assert!(family_of("inferpick_picker_decisions_total_bucket").is_none());
        assert!(family_of("inferpick_endpoint_queue").is_none());
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        for metric in METRICS {
            assert!(metric.name.starts_with("inferpick_"), "{}", metric.name);
            assert_eq!(
                metric.kind == Kind::Counter,
                metric.name.ends_with("_total"),
                "{}",
                metric.name
            );
        }
    }
}
